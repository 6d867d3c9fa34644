"""Sources pike limits, dropped by the kernel: an nftables set, as fail2ban keeps for other daemons.

Python reads a few hundred thousand datagrams a second at most; a flood
sent faster fills the receive queue, and the kernel then drops customers'
datagrams with the flood's. With ``[pike] nftables = true`` sipha keeps its
own table (``inet sipha_<port>``: two sets, one rule per family in an input
chain) and puts each source pike limits into it for ``remove_latency``
seconds, so its packets to sipha's ports are dropped before any socket sees
them. When the entry expires and the source still floods, pike limits it
again within one sampling unit. Needs CAP_NET_ADMIN and the ``nft`` command;
without them sipha says so once and limits in the process only. The table is
removed when sipha stops (and replaced at start, if a killed sipha left it).

``nft`` runs as a child process, never in the reactor's way: additions are
gathered and sent in one batch every half second.
"""

from __future__ import annotations

import ipaddress
import shutil
from collections.abc import Sequence
from typing import Any

from twisted.internet import defer, protocol

from sipha.logs import Log

log = Log(namespace="sipha.nftables")

#: Seconds additions are gathered before one ``nft`` run sends them.
BATCH_DELAY = 0.5


class _Feed(protocol.ProcessProtocol):
    """Runs ``nft -f -`` on a script; its Deferred fires with (exit code, stderr)."""

    def __init__(self, script: str):
        self.script = script.encode()
        self.errors = b""
        self.done: defer.Deferred[tuple[int, str]] = defer.Deferred()

    def connectionMade(self) -> None:  # noqa: N802
        self.transport.write(self.script)  # type: ignore[union-attr]
        self.transport.closeStdin()  # type: ignore[union-attr]

    def errReceived(self, data: bytes) -> None:  # noqa: N802
        self.errors += data

    def processEnded(self, reason: Any) -> None:  # noqa: N802
        code = getattr(reason.value, "exitCode", 1)
        self.done.callback((code or 0, self.errors.decode(errors="replace").strip()))


class KernelBlocklist:
    """The nftables table that drops limited sources; ``add`` takes pike's source keys."""

    def __init__(self, reactor: Any, ports: Sequence[int], timeout: float, name: str):
        self.reactor = reactor
        self.ports = sorted(set(ports))
        self.timeout = max(1, round(timeout))
        self.table = name
        self.nft = shutil.which("nft")
        self.working = False
        self.added = 0
        #: Sources in the kernel's set now, and until when (the reactor's clock).
        self.listed: dict[str, float] = {}
        self._pending: set[str] = set()
        self._flush_call: Any = None

    def _run(self, script: str) -> defer.Deferred[tuple[int, str]]:
        assert self.nft is not None
        feed = _Feed(script)
        self.reactor.spawnProcess(feed, self.nft, [self.nft, "-f", "-"], env=None)
        return feed.done

    async def start(self) -> None:
        """Create the table; one line and no kernel dropping if that cannot be done."""
        if self.nft is None:
            log.error("[pike] nftables: the nft command is not installed; limiting in sipha only")
            return
        ports = ", ".join(map(str, self.ports))
        code, errors = await self._run(
            f"table inet {self.table}\ndelete table inet {self.table}\n"
            f"table inet {self.table} {{\n"
            "  set limited4 { type ipv4_addr; flags timeout; }\n"
            "  set limited6 { type ipv6_addr; flags interval, timeout; }\n"
            "  chain input {\n"
            "    type filter hook input priority filter - 10; policy accept;\n"
            f"    ip saddr @limited4 meta l4proto {{ udp, tcp }} th dport {{ {ports} }} drop\n"
            f"    ip6 saddr @limited6 meta l4proto {{ udp, tcp }} th dport {{ {ports} }} drop\n"
            "  }\n}\n"
        )
        if code != 0:
            log.error(
                "[pike] nftables: cannot create table inet {table} ({errors}); limiting in"
                " sipha only (needs CAP_NET_ADMIN)",
                table=self.table,
                errors=errors,
            )
            return
        self.working = True
        log.info(
            "[pike] nftables: limited sources are dropped by the kernel (table inet {table})",
            table=self.table,
        )

    def add(self, source: str) -> None:
        """Drop ``source`` (an address, or an IPv6 /64) in the kernel for the timeout."""
        if self.working and source not in self._pending:
            self._pending.add(source)
            if self._flush_call is None:
                self._flush_call = self.reactor.callLater(BATCH_DELAY, self._flush)

    def _flush(self) -> None:
        self._flush_call = None
        pending, self._pending = self._pending, set()
        until = self.reactor.seconds() + self.timeout
        now = self.reactor.seconds()
        self.listed = {s: t for s, t in self.listed.items() if t > now}
        self.listed.update(dict.fromkeys(pending, until))
        lines = []
        for source in pending:
            family = "6" if ipaddress.ip_network(source, strict=False).version == 6 else "4"
            lines.append(
                f"add element inet {self.table} limited{family}"
                f" {{ {source} timeout {self.timeout}s }}\n"
            )
        self.added += len(lines)
        self._run("".join(lines)).addCallback(self._flushed, len(lines))

    def until(self, source: str) -> float | None:
        """When ``source`` leaves the kernel's set, if it is in it."""
        until = self.listed.get(source)
        return until if until is not None and until > self.reactor.seconds() else None

    def _flushed(self, result: tuple[int, str], count: int) -> None:
        code, errors = result
        if code != 0:
            log.warn(
                "[pike] nftables: adding {count} sources failed: {errors}",
                count=count,
                errors=errors,
            )

    async def stop(self) -> None:
        if self._flush_call is not None and self._flush_call.active():
            self._flush_call.cancel()
        if self.working:
            self.working = False
            await self._run(f"delete table inet {self.table}\n")
