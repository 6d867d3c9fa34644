"""OPTIONS health probes for the dispatcher and the load balancer.

A :class:`Prober` asks its module which destinations are due
(``probe_targets()``), sends each an OPTIONS through sipha's own transaction
layer with its own timeout, and reports every final reply or timeout back
(``probe_result(uri, code)``); the module owns the state machine and the
threshold. The prober runs as a ``TimerService`` (a LoopingCall) on the
injected clock, so tests drive it with ``task.Clock``.
"""

from __future__ import annotations

import itertools
from collections import Counter
from typing import Any, Protocol

from twisted.application.internet import TimerService

from sipha.destinations import ProbePolicy
from sipha.logs import Log
from sipha.message import Response, make_request
from sipha.transaction import ClientTransaction

log = Log(namespace="sipha.probing")


class Probed(Protocol):
    """The part of the dispatcher and the load balancer that probing drives."""

    probe_policy: ProbePolicy

    def probe_targets(self) -> list[str]: ...
    def probe_result(self, uri: str, code: int | None) -> Any: ...


class Prober:
    """Probe ``module``'s destinations every ``interval`` seconds.

    A destination with a probe still in flight is skipped, so a slow server is
    never sent a second probe before the first has been answered or timed out.
    ``local`` is the listener probes leave from (the node's own address in a
    pair, ``[ha] node_address``); None lets the core choose, as for calls.
    While not ``active`` (a passive node with no address of its own) no round
    is sent: its probes would leave from the virtual IP and their replies
    would reach the other node.
    """

    def __init__(
        self,
        name: str,
        core: Any,
        module: Probed,
        *,
        interval: float,
        method: str = "OPTIONS",
        from_uri: str = "sip:prober@localhost",
        timeout: float | None = None,
        local: Any = None,
    ):
        self.name = name
        self.core = core
        self.module = module
        self.interval = interval
        self.method = method
        self.from_uri = from_uri
        self.local = local
        self.active = True
        # A probe must be decided before the next one is due.
        self.timeout = min(timeout or core.layer.timers.fr_timer, interval)
        #: Destinations with a probe in flight.
        self.pending: set[str] = set()
        #: Probe outcomes by destination: ``(uri, "ok" | "failed")``.
        self.results: Counter[tuple[str, str]] = Counter()
        self._sequence = itertools.count(1)

    def service(self, clock: Any = None) -> TimerService:
        timer = TimerService(self.interval, self.probe_all)
        if clock is not None:
            timer.clock = clock
        return timer

    def probe_all(self) -> None:
        """One round. It never raises: an exception would stop the LoopingCall for good."""
        if not self.active:
            return
        try:
            for uri in self.module.probe_targets():
                if uri not in self.pending:
                    self.probe(uri)
        except Exception:
            log.failure("{name} probing round failed", name=self.name)

    def probe(self, uri: str) -> None:
        n = next(self._sequence)
        request = make_request(
            self.method,
            uri,
            from_uri=self.from_uri,
            from_tag=f"{self.name}-{n}",
            to_uri=uri,
            call_id=f"{self.name}-probe-{n}-{self.core.instance_id}@sipha",
        )
        self.pending.add(uri)
        self.core.send_request(request, uri, _ProbeUser(self, uri), self.timeout, local=self.local)

    def _result(self, uri: str, code: int | None) -> None:
        self.pending.discard(uri)
        accepted = code is not None and code in self.module.probe_policy.reply_codes
        self.results[(uri, "ok" if accepted else "failed")] += 1
        change = self.module.probe_result(uri, code)
        if change is not None:
            log.info(
                "{name}: {uri} is now {state} (probe {outcome})",
                name=self.name,
                uri=uri,
                state=change,
                outcome=code or "timeout",
            )


class _ProbeUser:
    """Client-transaction user for one probe: final reply or timeout goes to the prober."""

    __slots__ = ("prober", "uri")

    def __init__(self, prober: Prober, uri: str):
        self.prober = prober
        self.uri = uri

    def on_response(self, transaction: ClientTransaction, response: Response) -> None:
        if response.status >= 200:
            self.prober._result(self.uri, response.status)

    def on_timeout(self, transaction: ClientTransaction | None) -> None:
        self.prober._result(self.uri, None)
