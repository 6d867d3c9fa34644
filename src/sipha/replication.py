"""Dialog replication between the two nodes of a pair (OpenSIPS clusterer, Kamailio DMQ).

Theory of operation: the active node streams the state of every call it
relays, ringing ones included, to the passive node, which keeps the latest
state of each as a *warm copy* and takes every call over from it the moment it
becomes active, without waiting for the database (the table is reconciled
behind, see :mod:`sipha.ha`). Each node listens on its ``[ha] node_address``
and connects to its peer's; a node sends on the connection it opened and
receives on the one it accepted, so each direction is one ordered TCP stream,
and only the configured peer's address is accepted.

The sender (:class:`Outbox`) coalesces changes for a few milliseconds and then
sends the latest state of each dialog changed meanwhile. When its link comes
up, or when its node becomes active, it first sends every live dialog (a
snapshot); the receiver (:class:`WarmCopy`) replaces its copy with each
snapshot, so a link that dropped for a while cannot leave stale calls behind.
Endings are remembered for a while (tombstones), so that at takeover a table
row of a call that ended just before is removed rather than restored. Both
ends say who they are every second; a receiver that hears nothing for a few
seconds treats the link as lost, and a warm copy not refreshed for
:data:`TRUST_SECONDS` is no longer trusted at takeover (the table is).

Wire format, one JSON array per line::

    ["hello", ROLE]        the sender's role, "active" or "passive", every second
    ["sync"]               a snapshot begins: the receiver starts a new copy
    ["d", BRANCH, *ROW]    a dialog's latest state: the dialog table's columns
                           (DIALOG_COLUMNS), and the branch of a ringing call
    ["x", ENTRY, ID]       a dialog ended
    ["synced"]             the snapshot is complete
"""

from __future__ import annotations

import contextlib
import json
import socket
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from twisted.application import internet, service
from twisted.internet import endpoints, protocol, task
from twisted.protocols.basic import LineOnlyReceiver

from sipha.dialog import Dialog, DialogState
from sipha.dialog_store import dialog_from_row, dialog_row
from sipha.logs import Log
from sipha.store import DIALOG_COLUMNS, DialogRow

log = Log(namespace="sipha.replication")

_Key = tuple[int, int]

#: Seconds changes are gathered before they go out (the most a crash can lose).
FLUSH_DELAY = 0.02
#: Seconds between two hellos; a receiver gives the link up after LINK_TIMEOUT of silence.
HELLO_INTERVAL = 1.0
LINK_TIMEOUT = 3.5
#: Seconds a warm copy stays trusted after the last word from the active node.
TRUST_SECONDS = 15.0
#: Seconds an ended call is remembered (its row may still be in the table).
TOMBSTONE_SECONDS = 120.0
#: Lines of a snapshot written per reactor turn: signalling goes on meanwhile.
SNAPSHOT_CHUNK = 500


def _line(*fields: Any) -> bytes:
    return json.dumps(fields, separators=(",", ":")).encode()


def encode_dialog(dialog: Dialog) -> bytes:
    return _line("d", dialog.branch, *dialog_row(dialog).values())


class Outbox:
    """What the active node has to tell its peer; a :class:`~sipha.dialog.DialogObserver`.

    Changes are kept only while ``enabled`` (active, with a link); ``wake`` is
    called when the first one is queued, so the edge can schedule a flush.
    """

    def __init__(self, live: Iterable[Dialog], wake: Callable[[], None] = lambda: None):
        self.live = live
        self.wake = wake
        self.enabled = False
        self._pending: dict[_Key, Dialog | None] = {}

    def changed(self, dialog: Dialog) -> None:
        self._put((dialog.h_entry, dialog.h_id), dialog)

    def deleted(self, dialog: Dialog) -> None:
        self._put((dialog.h_entry, dialog.h_id), None)

    def _put(self, key: _Key, dialog: Dialog | None) -> None:
        if self.enabled:
            if not self._pending:
                self.wake()
            self._pending[key] = dialog

    def take(self) -> list[bytes]:
        """The lines for every change since the last call: each dialog's state now."""
        pending, self._pending = self._pending, {}
        return [
            _line("x", *key)
            if dialog is None or dialog.state is DialogState.DELETED
            else encode_dialog(dialog)
            for key, dialog in pending.items()
        ]

    def snapshot(self) -> Iterator[bytes]:
        """Every live dialog between ``sync`` and ``synced``, each as it is when its turn comes."""
        self._pending.clear()  # the snapshot carries them
        yield _line("sync")
        for dialog in self.live:
            if dialog.state is not DialogState.DELETED:
                yield encode_dialog(dialog)
        yield _line("synced")


class ReplicationError(ValueError):
    """A line that is not the protocol's."""


class WarmCopy:
    """The passive node's copy of the active node's calls, as rows and branches.

    ``clock`` gives ``seconds()``. ``peer_role`` is what the peer said last.
    """

    def __init__(self, clock: Any):
        self.clock = clock
        self.rows: dict[_Key, tuple[DialogRow, str | None]] = {}
        self.tombstones: OrderedDict[_Key, float] = OrderedDict()
        self.peer_role: str | None = None
        self.heard_at: float | None = None
        self.synced_at: float | None = None
        self._next: dict[_Key, tuple[DialogRow, str | None]] | None = None

    def receive(self, line: bytes) -> tuple[str, Any] | None:
        """Apply one line; returns ``("hello", role)`` and ``("x", key)`` for the edge to act on."""
        try:
            fields = json.loads(line)
            kind = fields[0]
        except (ValueError, TypeError, IndexError, KeyError):
            raise ReplicationError(f"not a replication line: {line[:80]!r}") from None
        now = self.clock.seconds()
        self.heard_at = now
        if kind == "hello" and len(fields) == 2 and fields[1] in ("active", "passive"):
            self.peer_role = fields[1]
            return "hello", self.peer_role
        if kind == "d" and len(fields) == 2 + len(DIALOG_COLUMNS):
            try:
                row = DialogRow(**dict(zip(DIALOG_COLUMNS, fields[2:], strict=True)))
            except TypeError as error:
                raise ReplicationError(f"bad dialog: {error}") from None
            target = self.rows if self._next is None else self._next
            target[row.key] = (row, fields[1])
        elif kind == "x" and len(fields) == 3:
            key = (fields[1], fields[2])
            self.rows.pop(key, None)
            if self._next is not None:
                self._next.pop(key, None)
            self._bury(key, now)
            return "x", key
        elif kind == "sync" and len(fields) == 1:
            self._next = {}
        elif kind == "synced" and len(fields) == 1 and self._next is not None:
            self.rows, self._next = self._next, None
            self.synced_at = now
        else:
            raise ReplicationError(f"unexpected replication line: {line[:80]!r}")
        return None

    def _bury(self, key: _Key, now: float) -> None:
        tombstones = self.tombstones
        tombstones[key] = now
        tombstones.move_to_end(key)
        while tombstones and next(iter(tombstones.values())) < now - TOMBSTONE_SECONDS:
            tombstones.popitem(last=False)

    def link_lost(self) -> None:
        """The link went down: a snapshot in progress is incomplete, so it is dropped."""
        self._next = None

    def trusted(self) -> bool:
        """Is the copy complete and recent enough to take the calls over from?"""
        if self.synced_at is None or self.heard_at is None:
            return False
        return self.clock.seconds() - self.heard_at <= TRUST_SECONDS

    def take(self) -> tuple[list[Dialog], set[_Key]]:
        """The dialogs to take over (empty unless trusted) and the keys of calls that ended.

        The copy is emptied: from now on this node owns the calls.
        """
        dialogs: list[Dialog] = []
        if self.trusted():
            for row, branch in self.rows.values():
                try:
                    dialog = dialog_from_row(row)
                except (TypeError, ValueError) as error:
                    log.warn("replicated dialog {key} skipped: {error}", key=row.key, error=error)
                    continue
                dialog.branch = branch
                dialogs.append(dialog)
        ended = set(self.tombstones)
        self.rows.clear()
        self.tombstones.clear()
        self._next = None
        self.synced_at = None
        return dialogs, ended

    def status(self) -> dict[str, Any]:
        return {
            "dialogs": len(self.rows),
            "synced": self.synced_at is not None,
            "trusted": self.trusted(),
            "peer_role": self.peer_role,
            "heard_ago": None if self.heard_at is None else self.clock.seconds() - self.heard_at,
        }


# -- the Twisted edge -------------------------------------------------------------------------


class _Receiving(LineOnlyReceiver):
    """The connection the peer opened: its lines go into the warm copy."""

    delimiter = b"\n"
    MAX_LENGTH = 1 << 20
    factory: _ReceiverFactory

    def connectionMade(self) -> None:  # noqa: N802
        link = self.factory.link
        host = self.transport.getPeer().host  # type: ignore[union-attr]
        if host != link.peer:
            log.warn("replication: refused a connection from {host}, not the peer", host=host)
            self.transport.abortConnection()  # type: ignore[union-attr]
            return
        link.receiving(self)

    def lineReceived(self, line: bytes) -> None:  # noqa: N802
        self.factory.link.received(self, line)

    def lineLengthExceeded(self, line: bytes) -> None:  # noqa: N802
        log.warn("replication: a line of more than {size} bytes; link closed", size=self.MAX_LENGTH)
        self.transport.abortConnection()  # type: ignore[union-attr]

    def connectionLost(self, reason: Any = None) -> None:  # noqa: N802
        self.factory.link.receiving_lost(self)


class _ReceiverFactory(protocol.ServerFactory):
    protocol = _Receiving
    noisy = False

    def __init__(self, link: ReplicationLink):
        self.link = link


class _Sending(protocol.Protocol):
    """The connection this node opened to the peer: it only writes."""

    factory: _SenderFactory

    def connectionMade(self) -> None:  # noqa: N802
        sock = self.transport.getHandle()  # type: ignore[union-attr]
        # Data the peer does not acknowledge within 5 s ends the connection.
        tcp_user_timeout = getattr(socket, "TCP_USER_TIMEOUT", 18)
        sock.setsockopt(socket.IPPROTO_TCP, tcp_user_timeout, 5000)
        self.factory.link.sending(self)

    def connectionLost(self, reason: Any = None) -> None:  # noqa: N802
        self.factory.link.sending_lost(self)


class _SenderFactory(protocol.Factory):
    protocol = _Sending
    noisy = False

    def __init__(self, link: ReplicationLink):
        self.link = link


class ReplicationLink(service.MultiService):
    """Both ends of the link to the peer: the listener, and the connection out with retries.

    ``role()`` tells this node's role; ``on_peer_role(role)`` is called with
    each hello of the peer, ``on_peer_ended(key)`` with each call it says ended.
    """

    def __init__(
        self,
        reactor: Any,
        node_address: str,
        peer: str,
        port: int,
        outbox: Outbox,
        warm: WarmCopy,
        role: Callable[[], str],
        on_peer_role: Callable[[str], None],
        on_peer_ended: Callable[[tuple[int, int]], None],
    ):
        super().__init__()
        self.reactor = reactor
        self.node_address = node_address
        self.peer = peer
        self.port = port
        self.outbox = outbox
        self.warm = warm
        self.role = role
        self.on_peer_role = on_peer_role
        self.on_peer_ended = on_peer_ended
        self.out: _Sending | None = None
        self.inbound: _Receiving | None = None
        self._flush_call: Any = None
        self._snapshot: Any = None
        outbox.wake = self._schedule_flush
        server = internet.TCPServer(
            port, _ReceiverFactory(self), interface=node_address, reactor=reactor
        )
        server.setServiceParent(self)
        endpoint_type = (
            endpoints.TCP6ClientEndpoint if ":" in peer else endpoints.TCP4ClientEndpoint
        )
        endpoint = endpoint_type(reactor, peer, port, timeout=2, bindAddress=(node_address, 0))
        client = internet.ClientService(
            endpoint,
            _SenderFactory(self),
            retryPolicy=internet.backoffPolicy(initialDelay=0.2, maxDelay=1.0),
            clock=reactor,
        )
        client.setServiceParent(self)
        hello = internet.TimerService(HELLO_INTERVAL, self._hello)
        hello.clock = reactor
        hello.setServiceParent(self)

    # -- sending ---------------------------------------------------------------------------

    def sending(self, connection: _Sending) -> None:
        log.info("replication: connected to {peer}:{port}", peer=self.peer, port=self.port)
        self.out = connection
        self.announce()

    def sending_lost(self, connection: _Sending) -> None:
        if self.out is connection:
            self.out = None
            self.outbox.enabled = False
            log.info("replication: connection to {peer} lost", peer=self.peer)

    def announce(self) -> None:
        """Say this node's role; an active node then sends its calls from scratch."""
        if self.out is None:
            return
        role = self.role()
        self._write([_line("hello", role)])
        self.outbox.enabled = role == "active"
        if self.outbox.enabled:
            self._send_snapshot()

    def stop_streaming(self) -> None:
        """The node became passive: what is pending goes out, then the peer hears so."""
        self.flush()
        self._stop_snapshot()
        self.outbox.enabled = False
        self._write([_line("hello", "passive")])

    def _send_snapshot(self) -> None:
        self._stop_snapshot()
        lines = self.outbox.snapshot()

        def chunks() -> Iterator[None]:
            while True:
                chunk = [line for _, line in zip(range(SNAPSHOT_CHUNK), lines, strict=False)]
                if not chunk:
                    return
                self._write(chunk)
                yield None

        cooperator = task.Cooperator(scheduler=lambda f: self.reactor.callLater(0, f))
        self._snapshot = cooperator.cooperate(chunks())

    def _stop_snapshot(self) -> None:
        snapshot, self._snapshot = self._snapshot, None
        if snapshot is not None:
            with contextlib.suppress(task.TaskDone):
                snapshot.stop()

    def _schedule_flush(self) -> None:
        if self._flush_call is None:
            self._flush_call = self.reactor.callLater(FLUSH_DELAY, self.flush)

    def flush(self) -> None:
        if self._flush_call is not None and self._flush_call.active():
            self._flush_call.cancel()
        self._flush_call = None
        self._write(self.outbox.take())

    def _write(self, lines: list[bytes]) -> None:
        if self.out is not None and lines:
            self.out.transport.write(b"\n".join(lines) + b"\n")  # type: ignore[union-attr]

    def _hello(self) -> None:
        self._write([_line("hello", self.role())])
        heard = self.warm.heard_at
        if (
            self.inbound is not None
            and heard is not None
            and self.reactor.seconds() - heard > LINK_TIMEOUT
        ):
            log.warn(
                "replication: nothing from {peer} for {s} s; link closed",
                peer=self.peer,
                s=LINK_TIMEOUT,
            )
            self.inbound.transport.abortConnection()  # type: ignore[union-attr]

    # -- receiving -------------------------------------------------------------------------

    def receiving(self, connection: _Receiving) -> None:
        if self.inbound is not None:
            self.inbound.transport.abortConnection()  # type: ignore[union-attr]
        self.inbound = connection
        self.warm.heard_at = self.reactor.seconds()

    def received(self, connection: _Receiving, line: bytes) -> None:
        try:
            event = self.warm.receive(line)
        except ReplicationError as error:
            log.warn("replication: {error}", error=error)
            return
        if event is None:
            return
        kind, value = event
        if kind == "hello":
            self.on_peer_role(value)
        else:
            self.on_peer_ended(value)

    def receiving_lost(self, connection: _Receiving) -> None:
        if self.inbound is connection:
            self.inbound = None
            self.warm.link_lost()

    def status(self) -> dict[str, Any]:
        return {
            "peer": self.peer,
            "port": self.port,
            "sending": self.out is not None,
            "receiving": self.inbound is not None,
            **self.warm.status(),
        }

    def stopService(self) -> Any:  # noqa: N802
        if self._flush_call is not None and self._flush_call.active():
            self._flush_call.cancel()
        self._stop_snapshot()
        for connection in (self.out, self.inbound):
            if connection is not None:
                connection.transport.loseConnection()  # type: ignore[union-attr]
        return super().stopService()
