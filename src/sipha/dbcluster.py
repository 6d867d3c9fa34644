"""The servers of a MySQL URL: which one sipha uses, why, and when it moves to another.

Theory of operation: ``[database] url`` names one host or several
(``mysql://USER:PASS@HOST1:PORT,HOST2:PORT/DB``), preferred in the order
written. Every host is checked every :data:`CHECK_INTERVAL` seconds, on a
connection of the check's own: it must answer, and a Galera node must also be
ready (``wsrep_ready`` ON), in the primary component and Synced
(``wsrep_local_state`` 4), since a donor, a joiner or a node cut off from the
others refuses or stalls writes. The host in use is left as soon as a check
fails, for the first host that passes; a query that fails for want of its
server brings the next check of its host forward, so a dead host is left
within milliseconds and one that stops answering within a check's timeout.
sipha goes back to an earlier host once it has passed :data:`FAILBACK_CHECKS`
checks in a row: both nodes of a load-balancer pair then write through the
same Galera node whenever they can, and writes through one node never
conflict at certification.

Those told (:meth:`Cluster.watch`, :meth:`Cluster.wait`) hear when the host
in use changes or answers again: a write queue then retries at once instead of
at the end of its backoff.

Nothing here does I/O: ``probe`` checks one host (in a thread, see
:mod:`sipha.store`) and the clock is injected.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.python.failure import Failure

from sipha.logs import Log

__all__ = [
    "CHECK_INTERVAL",
    "CHECK_TIMEOUT",
    "FAILBACK_CHECKS",
    "Cluster",
    "Host",
    "HostState",
    "NotSyncedError",
    "galera_problem",
]

log = Log(namespace="sipha.dbcluster")

#: Seconds between two checks of a host.
CHECK_INTERVAL = 1.0
#: Seconds a check may take to connect, and then to read each answer.
CHECK_TIMEOUT = 2
#: Checks in a row a preferred host must pass before sipha goes back to it.
FAILBACK_CHECKS = 5

#: ``wsrep_local_state`` of a Galera node that takes writes (1 joining, 2 donor, 3 joined).
SYNCED = "4"


class HostState(enum.StrEnum):
    UNKNOWN = "unknown"  # not checked yet
    UP = "up"
    DOWN = "down"  # does not answer, or refuses sipha
    NOT_SYNCED = "not synced"  # a Galera node that must not take writes now


class NotSyncedError(Exception):
    """A host answered, but as a Galera node that must not be written to now."""


def galera_problem(variables: Mapping[str, str]) -> str | None:
    """Why a server must not take writes, from its ``wsrep_%`` variables; None if it may.

    A server without Galera (``wsrep_on`` absent or OFF) may always.
    """
    if variables.get("wsrep_on", "OFF").upper() != "ON":
        return None
    status = variables.get("wsrep_cluster_status", "")
    if status != "Primary":
        return f"Galera node outside the primary component (wsrep_cluster_status {status})"
    if variables.get("wsrep_ready", "").upper() != "ON":
        return "Galera node not ready (wsrep_ready OFF)"
    state = variables.get("wsrep_local_state", "")
    if state != SYNCED:
        comment = variables.get("wsrep_local_state_comment", "")
        return f"Galera node not Synced (wsrep_local_state {state} {comment})".replace(" )", ")")
    return None


@dataclass(eq=False)
class Host:
    """One server of the URL and what its last check found."""

    host: str
    port: int
    state: HostState = HostState.UNKNOWN
    detail: str = "not checked yet"
    passed: int = 0  # checks passed in a row
    checking: bool = False

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


class Cluster:
    """The hosts, the one in use and why; checks them while started.

    ``probe(host)`` returns (or fires with) a short description of a usable
    host, and raises (or fails with) :class:`NotSyncedError` or any other error
    otherwise.
    """

    def __init__(
        self,
        hosts: Sequence[tuple[str, int]],
        clock: IReactorTime,
        probe: Callable[[Host], Deferred[str] | str],
    ):
        self.hosts = [Host(host, port) for host, port in hosts]
        self.clock = clock
        self.probe = probe
        self.in_use = self.hosts[0]
        self.reason = "the first host of database.url"
        self.since = clock.seconds()
        self.failovers = 0
        #: The last move away from a failed host: when, from, to, why.
        self.last_failover: dict[str, Any] | None = None
        self._watchers: list[Callable[[], None]] = []
        self._waiters: list[Callable[[], None]] = []
        self._loop = LoopingCall(self.check_all)
        self._loop.clock = clock

    @property
    def usable(self) -> bool:
        """Did the last check of the host in use pass?"""
        return self.in_use.state is HostState.UP

    def start(self) -> None:
        self._loop.start(CHECK_INTERVAL, now=True)

    def stop(self) -> None:
        if self._loop.running:
            self._loop.stop()

    def watch(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` whenever the host in use changes or answers again."""
        self._watchers.append(callback)

    def wait(self, delay: float) -> Deferred[None]:
        """A Deferred that fires after ``delay`` seconds, or as soon as the database answers."""
        done: Deferred[None] = Deferred()

        def fire() -> None:
            if timer.active():
                timer.cancel()
            else:
                self._waiters.remove(fire)
            done.callback(None)

        timer = self.clock.callLater(delay, fire)
        self._waiters.append(fire)
        return done

    # -- checks -------------------------------------------------------------------------

    def check_all(self) -> None:
        for host in self.hosts:
            self._check(host)

    def suspect(self) -> None:
        """A query on the host in use failed for want of its server: check it now."""
        self._check(self.in_use)

    def _check(self, host: Host) -> None:
        if host.checking:
            return
        host.checking = True
        done = maybeDeferred(self.probe, host)
        done.addCallbacks(self._passed, self._failed, (host,), None, (host,))

    def _passed(self, detail: str, host: Host) -> None:
        host.checking = False
        back = host is self.in_use and host.state is not HostState.UP
        host.state, host.detail = HostState.UP, detail
        host.passed += 1
        if back:
            log.info("database {host} answers ({detail})", host=host.address, detail=detail)
            self._tell()
        self._decide()

    def _failed(self, failure: Failure, host: Host) -> None:
        host.checking = False
        lost = host is self.in_use and host.state is not HostState.DOWN
        not_synced = failure.check(NotSyncedError) is not None
        host.state = HostState.NOT_SYNCED if not_synced else HostState.DOWN
        host.detail = describe(failure.value)
        host.passed = 0
        if not self._decide() and lost:
            log.warn(
                "database {host}: {detail}{alone}",
                host=host.address,
                detail=host.detail,
                alone="; no other host of database.url takes writes" if len(self.hosts) > 1 else "",
            )

    def _decide(self) -> bool:
        """Leave a failed host in use, or go back to an earlier one; True if sipha moved."""
        current = self.in_use
        up = [host for host in self.hosts if host.state is HostState.UP]
        if current.state in (HostState.DOWN, HostState.NOT_SYNCED):
            if not up:
                return False
            why = f"{current.address}: {current.detail}"
            self.failovers += 1
            self.last_failover = {
                "at": self.clock.seconds(),
                "from": current.address,
                "to": up[0].address,
                "reason": why,
            }
            log.warn(
                "database: leaving {old} ({why}); using {new}",
                old=current.address,
                why=current.detail,
                new=up[0].address,
            )
            self._use(up[0], why)
            return True
        earlier = self.hosts[: self.hosts.index(current)]
        back = [host for host in earlier if host.passed >= FAILBACK_CHECKS]
        if not back:
            return False
        why = f"{back[0].address} passed {back[0].passed} checks in a row"
        log.info(
            "database: back to {new} ({why}), was {old}",
            new=back[0].address,
            why=why,
            old=current.address,
        )
        self._use(back[0], why)
        return True

    def _use(self, host: Host, why: str) -> None:
        self.in_use, self.reason, self.since = host, why, self.clock.seconds()
        self._tell()

    def _tell(self) -> None:
        waiters, self._waiters = self._waiters, []
        for fire in waiters:
            fire()
        for callback in self._watchers:
            callback()

    def status(self) -> dict[str, Any]:
        """The host in use and why, every host's last check, the failovers."""
        return {
            "host": self.in_use.address,
            "connected": self.usable,
            "reason": self.reason,
            "since": self.since,
            "failovers": self.failovers,
            "last_failover": dict(self.last_failover) if self.last_failover else None,
            "hosts": [
                {
                    "address": host.address,
                    "in_use": host is self.in_use,
                    "state": host.state.value,
                    "detail": host.detail,
                }
                for host in self.hosts
            ],
        }


def describe(error: BaseException) -> str:
    """A database error on one line: MySQLdb's ``(code, message)`` as ``message (code)``."""
    args = getattr(error, "args", ())
    if len(args) == 2 and isinstance(args[0], int):
        return f"{args[1]} ({args[0]})"
    return str(error) or type(error).__name__
