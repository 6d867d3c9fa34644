"""The node's role in a load-balancer pair: active (it owns the calls) or passive (warm standby).

Theory of operation: the role follows the virtual IP. :class:`AddressWatch`
subscribes to the kernel's address changes (netlink) and, on each, asks the
kernel whether one of ``[ha] virtual_ip`` is local (a bind without
IP_FREEBIND succeeds only then), so a move of the VIP by keepalived or
heartbeat is seen within milliseconds; ``sipha-ctl ha active|passive`` sets
the role too, until the next change of the VIP. Without ``[ha] virtual_ip`` a
node is active unless told otherwise.

:class:`HighAvailability` carries the transitions out:

- **Becoming active** takes every call over. The calls of the warm copy (the
  other node's stream, :mod:`sipha.replication`) are restored at once, ringing
  ones included, with their load-balancer units; then, behind, every row of
  the dialog table is claimed and reconciled: a row of a call that ended
  meanwhile is deleted, a row the stream missed is restored, a call the stream
  had but the table lacked is written. A table that cannot be read is retried
  until it can; routing never waits for it.
- **Becoming passive** drops the calls from memory without a word on the wire:
  no BYE, no retransmission, no write; the load counters go back to zero and
  the timers stop. The other node owns the calls now.

The clock is injected; the proxy core, registry, balancer, store, warm copy
and link are the live objects the service hands over.
"""

from __future__ import annotations

import enum
import errno
import socket
import time
from collections.abc import Callable, Iterable, Sequence
from collections.abc import Set as AbstractSet
from typing import TYPE_CHECKING, Any

from twisted.internet import defer, task
from twisted.internet.interfaces import IReadDescriptor
from zope.interface import implementer

from sipha.dialog import Dialog, DialogState
from sipha.dialog_store import NO_DB, REALTIME
from sipha.logs import Log

if TYPE_CHECKING:
    from sipha.balancer import LoadBalancer
    from sipha.dialog_store import DialogStore
    from sipha.probing import Prober
    from sipha.proxy import ProxyCore
    from sipha.replication import ReplicationLink, WarmCopy

log = Log(namespace="sipha.ha")

_Key = tuple[int, int]

#: Seconds between two attempts to reconcile with a dialog table that cannot be read.
RECONCILE_RETRY = (0.5, 10.0)


class Role(enum.StrEnum):
    ACTIVE = "active"
    PASSIVE = "passive"


def is_local_address(address: str) -> bool:
    """Is ``address`` on one of this host's interfaces (in this network namespace)?"""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        try:
            probe.bind((address, 0))
        except OSError as error:
            if error.errno not in (errno.EADDRNOTAVAIL, errno.EINVAL):
                log.warn(
                    "cannot tell whether {address} is local: {error}", address=address, error=error
                )
            return False
    return True


class HighAvailability:
    """The role, its transitions, and the takeover's figures for ``sipha-ctl ha status``."""

    def __init__(
        self,
        clock: Any,
        core: ProxyCore,
        balancer: LoadBalancer,
        *,
        virtual_ips: Sequence[str] = (),
        store: DialogStore | None = None,
        probers: Iterable[Prober] = (),
        early_lifetime: float = 32.0,
        probe_while_passive: bool = False,
        tables_loaded: Callable[[], defer.Deferred[None]] | None = None,
        wait: Callable[[float], defer.Deferred[None]] | None = None,
    ):
        self.clock = clock
        self.core = core
        self.dialogs = core.dialogs
        self.balancer = balancer
        self.virtual_ips = tuple(virtual_ips)
        self.store = store
        self.probers = list(probers)
        #: Probes leave from the node's own address, not the VIP: they go on while passive.
        self.probe_while_passive = probe_while_passive
        #: How long a ringing call taken over may still ring (fr_inv_timer and some).
        self.early_lifetime = early_lifetime
        self.tables_loaded = tables_loaded
        #: ``wait(delay)`` before trying an unreadable table again: fires after the
        #: delay, or as soon as the database answers again (Database.wait).
        self.wait = wait or (lambda delay: task.deferLater(clock, delay, lambda: None))
        self.warm: WarmCopy | None = None
        self.link: ReplicationLink | None = None
        self.role: Role | None = None
        self.since = 0.0
        self.last_takeover: dict[str, Any] | None = None
        #: Fires when the latest reconciliation with the dialog table is over.
        self.reconciled: defer.Deferred[None] = defer.succeed(None)
        self._generation = 0  # bumped by every change of role: stale work stops
        self._peer_role: str | None = None
        self._conflict_logged = -1  # the generation "both nodes are active" was logged in

    def attach(self, warm: WarmCopy, link: ReplicationLink | None) -> None:
        """The warm copy and the replication link that feeds it (``[ha] peer``)."""
        self.warm = warm
        self.link = link

    # -- deciding the role --------------------------------------------------------------

    def vip_changed(self, present: bool) -> None:
        if present:
            self.set_role(Role.ACTIVE, "the virtual IP is on this host")
        else:
            self.set_role(Role.PASSIVE, "the virtual IP is not on this host")

    def set_role(self, role: Role | str, why: str) -> dict[str, Any]:
        """Become ``role`` (nothing happens if it is the role already); returns the status."""
        role = Role(role)
        if role is not self.role:
            self._generation += 1
            previous, self.role = self.role, role
            self.since = self.clock.seconds()
            log.info(
                "{role} ({why}){was}",
                role=role.value,
                why=why,
                was=f", was {previous.value}" if previous else "",
            )
            if role is Role.ACTIVE:
                self._become_active(why)
            else:
                self._become_passive()
        return self.status()

    def peer_said(self, role: str) -> None:
        """The other node's hello (every second, on the replication link): its role now."""
        previous, self._peer_role = self._peer_role, role
        if self.role is not Role.ACTIVE:
            return
        if role == Role.ACTIVE:
            if self._conflict_logged != self._generation:
                self._conflict_logged = self._generation
                log.error(
                    "both nodes are active: the other node says so too (VRRP split, or a slow"
                    " notify); each keeps to the dialog rows it owns"
                )
        elif previous == Role.ACTIVE:
            # It dropped its calls; rows it wrote while both were active are ours now.
            self._reconcile_later(self._generation, set(), set(), "the other node became passive")

    def peer_ended(self, key: _Key) -> None:
        """A call the other node saw end after this one took it over (both held the VIP)."""
        if self.role is Role.ACTIVE:
            dialog = self.dialogs.match_id(*key)
            if dialog is not None:
                self.dialogs.end(dialog, "ended")

    # -- becoming passive ---------------------------------------------------------------

    def _become_passive(self) -> None:
        if self.link is not None:
            self.link.stop_streaming()
        dropped = self.dialogs.drop_all()
        self.core.set_passive(True)
        if self.store is not None:
            self.store.suspend()
        for prober in self.probers:
            prober.active = self.probe_while_passive  # never from the VIP
        if dropped:
            log.info(
                "{count} calls dropped from memory: the other node carries them", count=dropped
            )

    # -- becoming active ----------------------------------------------------------------

    def _become_active(self, why: str) -> None:
        started = time.perf_counter()
        generation = self._generation
        self.core.set_passive(False)
        for prober in self.probers:
            prober.active = True
        warm: list[Dialog] = []
        ended: set[_Key] = set()
        if self.warm is not None:
            warm, ended = self.warm.take()
        now = self.clock.seconds()
        for dialog in warm:
            if dialog.state < DialogState.CONFIRMED_NA:
                dialog.timeout_at = now + self.early_lifetime
        restored = self.restore(warm)
        self.core.adopt_branches(d for d in warm if d.state < DialogState.CONFIRMED_NA)
        if self.store is not None:
            self.store.resume()
            self.store.taken_over(warm)
        if self.link is not None:
            self.link.announce()
        standby_ms = (time.perf_counter() - started) * 1000
        self.last_takeover = {
            "at": now,
            "reason": why,
            "from_standby": restored,
            "standby_ms": round(standby_ms, 1),
            "from_table": None,
            "calls_restored": restored,
            "duration_ms": None,
        }
        if warm:
            log.info(
                "{count} calls taken over from the standby copy in {ms:.1f} ms",
                count=restored,
                ms=standby_ms,
            )
        trusted = {(d.h_entry, d.h_id) for d in warm}
        self._reconcile_later(generation, trusted, ended, why, started)

    def restore(self, dialogs: Iterable[Dialog]) -> int:
        """Register dialogs taken over, each with its load-balancer units; returns how many.

        A call whose BYE passed while it was not known yet is ended at once,
        and not counted.
        """
        restored = 0
        for dialog in dialogs:
            if self.dialogs.match_id(dialog.h_entry, dialog.h_id) is not None:
                continue
            if dialog.lb_group is not None and dialog.destination:
                dialog.binding = self.balancer.restore(
                    dialog.lb_group, dialog.destination, dialog.lb_resources
                )
            restored += self.dialogs.restore(dialog)
        return restored

    def _reconcile_later(
        self,
        generation: int,
        trusted: AbstractSet[_Key],
        ended: AbstractSet[_Key],
        why: str,
        started: float | None = None,
    ) -> None:
        self.reconciled = defer.ensureDeferred(
            self._reconcile_until_done(generation, trusted, ended, why, started)
        )

    async def _reconcile_until_done(
        self,
        generation: int,
        trusted: AbstractSet[_Key],
        ended: AbstractSet[_Key],
        why: str,
        started: float | None,
    ) -> None:
        if self.tables_loaded is not None:
            await self.tables_loaded()
        delay, longest = RECONCILE_RETRY
        failed = False
        while generation == self._generation:
            try:
                restored = await self.reconcile(trusted, ended)
            except Exception as error:
                if not failed:
                    log.warn(
                        "dialog table: {error}; calls from it are restored as soon as it answers",
                        error=error,
                    )
                failed = True
                await self.wait(delay)
                delay = min(2 * delay, longest)
                continue
            if generation != self._generation:
                return  # the role changed while the table was read
            takeover = self.last_takeover
            if started is not None and takeover is not None:
                takeover["from_table"] = restored
                takeover["calls_restored"] += restored
                takeover["duration_ms"] = round((time.perf_counter() - started) * 1000, 1)
                log.info(
                    "takeover ({why}): {calls} calls in {ms:.0f} ms ({warm} from the standby"
                    " copy, {table} from the dialog table)",
                    why=why,
                    calls=takeover["calls_restored"],
                    ms=takeover["duration_ms"],
                    warm=takeover["from_standby"],
                    table=restored,
                )
            return

    async def reconcile(
        self, trusted: AbstractSet[_Key] = frozenset(), ended: AbstractSet[_Key] = frozenset()
    ) -> int:
        """Claim the dialog table and make memory and table agree; returns calls restored.

        ``trusted`` are live calls just taken over from a current warm copy:
        the table may lag behind them, so one it lacks is written. Any other
        answered live call whose row is gone, with no write of ours pending,
        ended on the other node and is dropped with its unit (this is what
        ``sipha-ctl dialogs reload`` does in db_mode 1). ``ended`` are calls
        the stream saw end: their rows are deleted, not restored.
        """
        store = self.store
        if store is None or store.mode == NO_DB:
            return 0
        live_before = {(d.h_entry, d.h_id): d for d in self.dialogs}
        rows = await store.load(self.clock.seconds())
        in_table = {(d.h_entry, d.h_id) for d in rows}
        if store.mode == REALTIME:
            for key, dialog in live_before.items():
                if key in in_table or dialog.state < DialogState.CONFIRMED_NA:
                    continue
                if key in trusted:
                    store.changed(dialog)
                elif not store.pending(dialog):
                    self.dialogs.end(dialog, "ended")
        store.discard(in_table & ended)
        restored = self.restore(d for d in rows if (d.h_entry, d.h_id) not in ended)
        log.info("restored {count} dialogs from the dialog table", count=restored)
        return restored

    # -- reporting ----------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """``sipha-ctl ha status``: role, virtual IP, since when, the last takeover."""
        return {
            "role": self.role.value if self.role else None,
            "virtual_ip": list(self.virtual_ips),
            "since": self.since,
            "last_takeover": dict(self.last_takeover) if self.last_takeover else None,
            "replication": self.link.status() if self.link is not None else None,
        }


# -- the Twisted edge: address changes from the kernel ----------------------------------------

#: Netlink multicast groups of IPv4 and IPv6 address changes (linux/rtnetlink.h).
RTMGRP_IPV4_IFADDR = 0x10
RTMGRP_IPV6_IFADDR = 0x100
#: Seconds between two checks besides netlink's (a lost netlink message, say).
CHECK_INTERVAL = 1.0


@implementer(IReadDescriptor)
class AddressWatch:
    """Calls ``changed(present)`` when one of ``addresses`` arrives on this host or leaves it.

    The netlink socket is only a wake-up: its messages are read and dropped,
    and the kernel is asked again (:func:`is_local_address`), so nothing of
    netlink's message format is parsed here. A check every second covers a
    wake-up lost to a full socket buffer.
    """

    def __init__(self, reactor: Any, addresses: Sequence[str], changed: Callable[[bool], None]):
        """``changed`` hears the state at :meth:`start`, then every change."""
        self.reactor = reactor
        self.addresses = tuple(addresses)
        self.changed = changed
        self.present: bool | None = None
        self._socket: socket.socket | None = None
        self._loop = task.LoopingCall(self.check)
        self._loop.clock = reactor

    def start(self) -> None:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
        sock.setblocking(False)
        sock.bind((0, RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR))
        self._socket = sock
        self.reactor.addReader(self)
        self._loop.start(CHECK_INTERVAL, now=True)

    def stop(self) -> None:
        if self._loop.running:
            self._loop.stop()
        if self._socket is not None:
            self.reactor.removeReader(self)
            self._socket.close()
            self._socket = None

    def check(self) -> None:
        present = any(is_local_address(a) for a in self.addresses)
        if present != self.present:
            self.present = present
            self.changed(present)

    # IReadDescriptor
    def fileno(self) -> int:
        return self._socket.fileno() if self._socket is not None else -1

    def doRead(self) -> None:  # noqa: N802
        assert self._socket is not None
        for _ in range(1000):  # bounded: a storm of changes cannot hold the reactor
            try:
                self._socket.recv(65536)
            except BlockingIOError:
                break
            except OSError:  # ENOBUFS: messages were lost; the check below covers them
                continue
        self.check()

    def connectionLost(self, reason: Any) -> None:  # noqa: N802
        pass

    def logPrefix(self) -> str:  # noqa: N802
        return "AddressWatch"
