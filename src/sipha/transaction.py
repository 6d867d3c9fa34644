"""RFC 3261 §17 transactions, as seen from a stateful proxy (with RFC 6026's Accepted state).

Theory of operation: the :class:`TransactionLayer` owns two tables, server and
client transactions, keyed as §17.2.3 and §17.1.3 say. The transport edge hands
it every parsed message; it absorbs retransmissions and ACKs that belong to a
transaction and passes everything new to its user (the proxy core). Timers run
on an injected clock (``callLater``/``seconds``, i.e. ``IReactorTime``), so a
test drives them with ``twisted.internet.task.Clock``. Nothing here imports the
reactor or touches a socket: sending is a callable given to the layer.

Each transaction keeps at most two timers: one for retransmission (A, E, G)
and one for its deadline (B/F as the proxy's ``fr_timer``/``fr_inv_timer``,
D, H, I, J, K, L, M), re-armed in place rather than re-created.
"""

from __future__ import annotations

import enum
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

from sipha.message import BRANCH_COOKIE, Request, Response, make_response


class Peer(NamedTuple):
    """A remote transport address: ``("udp", "127.0.0.1", 5071)``.

    ``name`` is the host name the address was found for (DNS), "" for an
    address given as such: TLS verifies the peer's certificate against it
    (RFC 5922), not against the address.
    """

    transport: str
    host: str
    port: int
    name: str = ""

    @property
    def reliable(self) -> bool:
        return self.transport != "udp"


class Clock(Protocol):
    def seconds(self) -> float: ...
    def callLater(self, delay: float, f: Callable[..., Any], *a: Any) -> Any: ...  # noqa: N802


#: ``send(data, peer, local)``: the transport edge writes bytes to a peer from a listener.
Send = Callable[[bytes, Peer, Any], None]


@dataclass(frozen=True, slots=True)
class TimerSettings:
    t1: float = 0.5
    t2: float = 4.0
    t4: float = 5.0
    fr_timer: float = 2.0
    fr_inv_timer: float = 30.0


class State(enum.Enum):
    CALLING = "calling"
    TRYING = "trying"
    PROCEEDING = "proceeding"
    COMPLETED = "completed"
    CONFIRMED = "confirmed"
    ACCEPTED = "accepted"
    TERMINATED = "terminated"


class _Timers:
    """A transaction's two timer slots on the injected clock."""

    __slots__ = ("clock", "retransmit", "deadline")

    def __init__(self, clock: Clock):
        self.clock = clock
        self.retransmit: Any = None
        self.deadline: Any = None

    def set_retransmit(self, delay: float, f: Callable[[], None]) -> None:
        self.retransmit = _rearm(self.clock, self.retransmit, delay, f)

    def set_deadline(self, delay: float, f: Callable[[], None]) -> None:
        self.deadline = _rearm(self.clock, self.deadline, delay, f)

    def stop_retransmit(self) -> None:
        if self.retransmit is not None and self.retransmit.active():
            self.retransmit.cancel()
        self.retransmit = None

    def stop(self) -> None:
        self.stop_retransmit()
        if self.deadline is not None and self.deadline.active():
            self.deadline.cancel()
        self.deadline = None


def _rearm(clock: Clock, call: Any, delay: float, f: Callable[[], None]) -> Any:
    if call is not None and call.active():
        if call.func == f:
            call.reset(delay)  # cheaper than a new timer, and the common case
            return call
        call.cancel()
    return clock.callLater(delay, f)


def server_key(request: Request, method: str | None = None) -> tuple[Any, ...]:
    """§17.2.3: branch + sent-by + method (ACK matches INVITE), with the RFC 2543 fallback."""
    via = request.top_via
    method = method or ("INVITE" if request.method == "ACK" else request.method)
    branch = via.branch
    if branch and branch.startswith(BRANCH_COOKIE):
        return (branch, via.host, via.port, method)
    return ("2543", request.call_id, request.cseq, request.from_tag, via.host, via.port, method)


def _response_peer(request: Request, source: Peer) -> Peer:
    """Where responses go: the connection for streams, the Via for datagrams (§18.2.2)."""
    if source.reliable:
        return source
    host, port = request.top_via.response_target("udp")
    if host == source.host and port == source.port:
        return source  # the usual case (received and rport): no new Peer
    return Peer("udp", host, port)


class ServerTransaction:
    """The proxy's server side of one request (§17.2.1 INVITE, §17.2.2 non-INVITE)."""

    __slots__ = (
        "layer",
        "key",
        "request",
        "is_invite",
        "source",
        "peer",
        "local",
        "state",
        "last_response",
        "timers",
        "user",
        "_to_tag",
        "_interval",
    )

    def __init__(
        self,
        layer: TransactionLayer,
        key: tuple[Any, ...],
        request: Request,
        source: Peer,
        local: Any,
    ):
        self.layer = layer
        self.key = key
        #: Until the final reply; then only what retransmissions need is kept.
        self.request: Request | None = request
        self.is_invite = request.method == "INVITE"
        self.source = source
        self.peer = _response_peer(request, source)
        self.local = local
        self.state = State.PROCEEDING if self.is_invite else State.TRYING
        self.last_response: bytes | None = None
        self.timers = _Timers(layer.clock)
        self.user: Any = None
        self._to_tag: str | None = None
        self._interval = layer.timers.t1

    @property
    def to_tag(self) -> str:
        """One To tag for every reply this transaction generates itself."""
        if self._to_tag is None:
            self._to_tag = self.layer.make_tag(self.key)
        return self._to_tag

    def reply(
        self, status: int, reason: str | None = None, extra: tuple[tuple[str, str], ...] = ()
    ) -> None:
        """Answer with a locally generated response (nothing once a final reply went out)."""
        if self.request is not None:
            to_tag = self.to_tag if status > 100 else None  # a 100 carries none (§8.2.6.2)
            self.send_response(
                make_response(self.request, status, reason, to_tag=to_tag, extra=extra)
            )

    def send_response(self, response: Response) -> None:
        status = response.status
        state = self.state
        if state in (State.COMPLETED, State.CONFIRMED, State.TERMINATED):
            return  # a final reply went out already; later ones are not ours to send
        if state is State.ACCEPTED:
            if 200 <= status < 300:  # RFC 6026: 2xx retransmissions pass through
                self._send(response.serialize(), status)
            return
        data = response.serialize()
        self._send(data, status)
        if status < 200:
            self.last_response = data
            if state is State.TRYING:
                self.state = State.PROCEEDING
            return
        # A final reply: the request is not needed any more, and thousands of
        # transactions linger for 32 s after theirs.
        self.request = None
        timers = self.layer.timers
        if self.is_invite and status < 300:
            # RFC 6026: absorb INVITE retransmissions, pass 2xx retransmissions.
            self.state = State.ACCEPTED
            self.last_response = None
            self.timers.set_deadline(64 * timers.t1, self.terminate)
            return
        self.state = State.COMPLETED
        self.last_response = data
        if not self.is_invite:
            self.timers.set_deadline(0 if self.source.reliable else 64 * timers.t1, self.terminate)
            return
        if not self.source.reliable:
            self.timers.set_retransmit(timers.t1, self._timer_g)
        self.timers.set_deadline(64 * timers.t1, self.terminate)  # Timer H

    def _send(self, data: bytes, status: int) -> None:
        self.layer.responses_sent[status] += 1
        self.layer.send(data, self.peer, self.local)

    def _transmit(self) -> None:
        assert self.last_response is not None
        self.layer.send(self.last_response, self.peer, self.local)

    def _timer_g(self) -> None:
        self._transmit()
        self._interval = min(2 * self._interval, self.layer.timers.t2)
        self.timers.set_retransmit(self._interval, self._timer_g)

    def receive_retransmission(self) -> None:
        """A retransmitted request: re-send the last response, if it is worth sending."""
        if self.state in (State.PROCEEDING, State.COMPLETED) and self.last_response:
            self._transmit()

    def receive_ack(self) -> None:
        if self.state is State.COMPLETED and self.is_invite:
            self.state = State.CONFIRMED
            self.timers.stop_retransmit()
            t4 = 0 if self.source.reliable else self.layer.timers.t4
            self.timers.set_deadline(t4, self.terminate)  # Timer I

    def terminate(self) -> None:
        """Leave the table; dropping the user breaks the transaction-context cycle."""
        self.state = State.TERMINATED
        self.timers.stop()
        self.user = None
        if self.layer.servers.get(self.key) is self:
            del self.layer.servers[self.key]


class ClientUser(Protocol):
    """What a client transaction reports to: the proxy's branch, or a prober."""

    def on_response(self, transaction: ClientTransaction, response: Response) -> None: ...
    def on_timeout(self, transaction: ClientTransaction) -> None: ...


class _IgnoreReplies:
    """A user that wants no reports: a CANCEL's 200 or timeout changes nothing."""

    def on_response(self, transaction: ClientTransaction, response: Response) -> None:
        pass

    def on_timeout(self, transaction: ClientTransaction | None) -> None:
        pass


IGNORE_REPLIES = _IgnoreReplies()


class ClientTransaction:
    """One request sent downstream (§17.1.1 INVITE, §17.1.2 non-INVITE).

    ``fr_timer`` bounds the wait for any reply and ``fr_inv_timer`` the wait
    for a final reply to an INVITE once a provisional came (re-armed on each),
    as in OpenSIPS's tm; a non-INVITE that got a provisional is bounded by
    Timer F (64*T1 from its start).
    """

    __slots__ = (
        "layer",
        "key",
        "request",
        "is_invite",
        "data",
        "peer",
        "local",
        "user",
        "state",
        "timers",
        "started",
        "provisional",
        "_interval",
        "final",
        "cancel_sent",
        "timeout",
    )

    def __init__(
        self,
        layer: TransactionLayer,
        request: Request,
        peer: Peer,
        local: Any,
        user: ClientUser,
        timeout: float | None = None,
        branch: str | None = None,
    ):
        """``branch`` is the top Via's, when the caller has it at hand (no parsing then)."""
        self.layer = layer
        self.timeout = timeout if timeout is not None else layer.timers.fr_timer
        #: Until a final reply; then only what retransmissions need is kept.
        self.request: Request | None = request
        self.is_invite = request.method == "INVITE"
        self.key = (branch or request.top_via.branch, request.method)
        #: What this transaction (re)transmits: the request, after a non-2xx final its ACK.
        self.data = request.serialize()
        self.peer = peer
        self.local = local
        self.user = user
        self.state = State.CALLING if self.is_invite else State.TRYING
        self.timers = _Timers(layer.clock)
        self.started = layer.clock.seconds()
        self.provisional = False
        self.final: int | None = None
        self.cancel_sent = False
        self._interval = layer.timers.t1

    def start(self) -> None:
        self.layer.clients[self.key] = self
        self._transmit()
        if not self.peer.reliable:
            self.timers.set_retransmit(self._interval, self._retransmit)
        self.timers.set_deadline(self.timeout, self._timeout)

    def _retransmit(self) -> None:
        self._transmit()
        self._interval = min(2 * self._interval, self.layer.timers.t2)
        self.timers.set_retransmit(self._interval, self._retransmit)

    def _timeout(self) -> None:
        if self.state not in (State.CALLING, State.TRYING, State.PROCEEDING):
            return
        user = self.user
        if self.is_invite and self.provisional:
            # The user CANCELs a ringing branch; stay to ACK the 487 it will send.
            self.timers.set_deadline(64 * self.layer.timers.t1, self.terminate)
        else:
            self.terminate()
        user.on_timeout(self)

    def stop_retransmissions(self) -> None:
        """Used when a CANCEL makes further INVITE retransmissions pointless."""
        self.timers.stop_retransmit()

    def receive_response(self, response: Response) -> None:
        status = response.status
        timers = self.layer.timers
        if status < 200:
            if self.state not in (State.CALLING, State.TRYING, State.PROCEEDING):
                return
            self.state = State.PROCEEDING
            self.provisional = True
            if self.is_invite:
                self.timers.stop_retransmit()
                self.timers.set_deadline(timers.fr_inv_timer, self._timeout)
            else:
                if not self.peer.reliable and self.timers.retransmit is not None:
                    self._interval = timers.t2
                f_left = 64 * timers.t1 - (self.layer.clock.seconds() - self.started)
                self.timers.set_deadline(max(f_left, self.timeout), self._timeout)
            self.user.on_response(self, response)
            return
        if self.is_invite:
            self._final_invite(response)
            return
        if self.state is State.COMPLETED or self.state is State.TERMINATED:
            return  # retransmitted final
        self.state = State.COMPLETED
        self.final = status
        self._let_go(b"")
        self.timers.stop_retransmit()
        self.timers.set_deadline(0 if self.peer.reliable else timers.t4, self.terminate)  # K
        self.user.on_response(self, response)

    def _final_invite(self, response: Response) -> None:
        status = response.status
        timers = self.layer.timers
        if status < 300:
            first = self.state is not State.ACCEPTED
            if self.state is State.COMPLETED:
                return
            self.state = State.ACCEPTED
            self.final = self.final or status
            if first:
                self._let_go(b"")
                self.timers.stop_retransmit()
                self.timers.set_deadline(64 * timers.t1, self.terminate)  # Timer M
            # Every 2xx, retransmissions included, goes up to the user (RFC 6026).
            self.user.on_response(self, response)
            return
        if self.state in (State.COMPLETED, State.ACCEPTED):
            if self.state is State.COMPLETED:
                self._transmit()  # retransmitted final: ACK it again
            return
        if self.state is State.TERMINATED:
            return
        self.state = State.COMPLETED
        self.final = status
        self.timers.stop_retransmit()
        assert self.request is not None
        # The hop-by-hop ACK for a non-2xx final reply (§17.1.1.3), kept for its retransmissions.
        self._let_go(build_ack(self.request, response).serialize())
        self._transmit()
        self.timers.set_deadline(0 if self.peer.reliable else 32.0, self.terminate)  # D
        self.user.on_response(self, response)

    def _let_go(self, data: bytes) -> None:
        """A final reply came: keep only ``data`` to send again, not the request."""
        self.request = None
        self.data = data

    def _transmit(self) -> None:
        self.layer.send(self.data, self.peer, self.local)

    def terminate(self) -> None:
        """Leave the table; dropping the user breaks the transaction-context cycle."""
        self.state = State.TERMINATED
        self.timers.stop()
        self.user = IGNORE_REPLIES
        if self.layer.clients.get(self.key) is self:
            del self.layer.clients[self.key]


def _same_hop_request(invite: Request, method: str, to: str, to_tag: str | None) -> Request:
    """A request on the INVITE's hop: same R-URI, top Via, From, Call-ID, Route, CSeq number.

    Both the ACK for a non-2xx reply (§17.1.1.3) and a CANCEL (§9.1) are built so.
    """
    headers: list[tuple[str, str, str]] = []
    has_via = False
    for key, name, value in invite.headers:
        if key == "via":
            if not has_via:
                headers.append((key, name, value.split(",")[0].strip()))
                has_via = True
        elif key in ("from", "call-id", "route", "max-forwards"):
            headers.append((key, name, value))
    headers.append(("to", "To", to))
    headers.append(("cseq", "CSeq", f"{invite.cseq} {method}"))
    request = Request(method, invite.uri, headers)
    request.call_id, request.cseq, request.cseq_method = invite.call_id, invite.cseq, method
    request.from_tag, request.to_tag = invite.from_tag, to_tag
    return request


def build_ack(invite: Request, response: Response) -> Request:
    """ACK for a non-2xx final reply; its To carries the reply's tag."""
    return _same_hop_request(invite, "ACK", response.get("to") or "", response.to_tag)


def build_cancel(invite: Request, reason: str | None = None) -> Request:
    """CANCEL for a pending INVITE branch, optionally with a Reason (RFC 3326)."""
    cancel = _same_hop_request(invite, "CANCEL", invite.get("to") or "", invite.to_tag)
    if reason:
        cancel.append("Reason", reason)
    return cancel


class TransactionLayer:
    """Transaction tables, timers and the send callable shared by every transaction."""

    def __init__(
        self,
        clock: Clock,
        send: Send,
        timers: TimerSettings,
        make_tag: Callable[[tuple[Any, ...]], str],
    ):
        self.clock = clock
        self.send = send
        self.timers = timers
        self.make_tag = make_tag
        self.servers: dict[tuple[Any, ...], ServerTransaction] = {}
        #: Responses sent upstream (relayed or generated here), by status code.
        self.responses_sent: Counter[int] = Counter()
        self.clients: dict[tuple[Any, ...], ClientTransaction] = {}

    def clear(self, keep: Callable[[ServerTransaction | ClientTransaction], bool]) -> None:
        """End every transaction but those ``keep`` says, silently (the node became passive)."""
        transactions: list[ServerTransaction | ClientTransaction] = [
            *self.servers.values(),
            *self.clients.values(),
        ]
        for transaction in transactions:
            if not keep(transaction):
                transaction.terminate()

    def find_server(self, request: Request, method: str | None = None) -> ServerTransaction | None:
        return self.servers.get(server_key(request, method))

    def new_server(self, request: Request, source: Peer, local: Any) -> ServerTransaction:
        key = server_key(request)
        transaction = ServerTransaction(self, key, request, source, local)
        self.servers[key] = transaction
        return transaction

    def match_response(self, response: Response) -> ClientTransaction | None:
        """§17.1.3: the top Via's branch and the CSeq method select the client transaction."""
        return self.clients.get((response.top_via.branch, response.cseq_method))
