"""The stateful proxy core (RFC 3261 §16): bytes in, routing decisions carried out, bytes out.

:class:`ProxyCore` receives every message from the transport edge. Requests
are validated (§16.3), matched against server transactions (retransmissions
and non-2xx ACKs are absorbed there), then given to the route, whose decision
it carries out; only an OPTIONS addressed to sipha itself is answered before
the route, whatever the route is (health checks). A :class:`ProxyContext`
ties one server transaction to the client transactions it forwards to, one
at a time: when a branch times out without any reply or answers 5xx, the
next target takes the call (serial failover); the caller sees only the final
outcome. A response that matches no client transaction but carries sipha's
Via on top is forwarded statelessly (§16.7 step 1, §16.11): after a takeover
the other node of the pair holds the transactions, and the answer must still
reach the caller. Likewise a CANCEL for a ringing call taken over, and the ACK
of its final non-2xx reply, go statelessly on the branch the other node used
(§16.10), so the media server matches them to its INVITE.

In a pair, a passive node's core takes nothing in but on its own address
(``node_listener``, where probe replies and health checks arrive): the
virtual IP's traffic is the active node's.

Sans-IO: the clock and the ``send`` callable are injected; nothing here knows
about sockets or the reactor.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import re
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Final, Protocol, TypeVar

from twisted.logger import LogLevel

from sipha.dialog import Dialog, Dialogs
from sipha.logs import Log
from sipha.message import (
    BRANCH_COOKIE,
    ParseError,
    Request,
    Response,
    Via,
    make_request,
    make_response,
    parse_message,
)
from sipha.pike import Pike
from sipha.routing import ALLOWED_METHODS, DROP, Relay, Reply, Route, RouteHelpers
from sipha.transaction import (
    IGNORE_REPLIES,
    ClientTransaction,
    Clock,
    Peer,
    Send,
    ServerTransaction,
    State,
    TimerSettings,
    TransactionLayer,
    build_cancel,
)
from sipha.uri import (
    URI,
    URIError,
    format_host_port,
    is_ip_address,
    name_addr_uri,
    parse_uri,
    remember,
    split_comma_list,
)
from sipha.wheel import TimerWheel

log = Log(namespace="sipha.proxy")

_NO_ANSWER: Final = 'SIP;cause=480;text="NO_ANSWER"'
#: Seconds a caller refused for overload is asked to wait (Retry-After).
SHED_RETRY_AFTER: Final = 5
#: The answer to an OPTIONS for sipha itself (RFC 3261 §11.2): the methods the
#: reference route takes and OPTIONS, which only sipha itself takes; SDP bodies;
#: and no extensions (an empty Supported is valid, §20.37).
OWN_OPTIONS_ANSWER = Reply(
    200,
    "OK",
    (
        ("Allow", f"{ALLOWED_METHODS}, OPTIONS"),
        ("Accept", "application/sdp"),
        ("Supported", ""),
    ),
)


#: Where a request goes, and the listener it leaves from.
Hop = tuple[Peer, Any]
#: Called with the hops of a target, best first; none when it cannot be reached.
Located = Callable[[list[Hop]], None]


class Locator(Protocol):
    """Finds the servers for a URI whose host is a name (RFC 3263), at the Twisted edge.

    ``done`` gets the transport addresses to try, best first: at once when
    the answers are known, later when they take a DNS query; none when the
    name cannot be resolved (the locator logs and counts that).
    """

    #: Locations that found no address, for the counters.
    failures: int

    def locate(self, uri: URI, done: Callable[[list[Peer]], None]) -> None: ...


class Outcome(Protocol):
    """What becomes of a request of sipha's own (:meth:`ProxyCore.send_request`).

    ``on_timeout(None)``: no address of the target could be tried at all.
    """

    def on_response(self, transaction: ClientTransaction, response: Response) -> None: ...
    def on_timeout(self, transaction: ClientTransaction | None) -> None: ...


def _bad_extension(required: list[str]) -> Reply:
    """420 naming the option tags sipha does not support: all of them, it has none."""
    return Reply(420, "Bad Extension", (("Unsupported", ", ".join(required)),))


def _digest(*parts: object) -> str:
    return hashlib.md5(
        "\x00".join(map(str, parts)).encode("utf-8", "surrogateescape"), usedforsecurity=False
    ).hexdigest()


def _crc(text: object) -> str:
    return format(zlib.crc32(str(text).encode("utf-8", "surrogateescape")), "08x")


class ProxyCore:
    """The proxy as one object: feed it messages with :meth:`receive`.

    ``listeners`` are sipha's own addresses (objects with ``transport``,
    ``host`` and ``port``); they decide what "a Route to me" is, and which
    address goes into Via and Record-Route on each outbound transport.
    ``node_listener`` is the node's own address in a pair: it is appended to
    them, but carries only sipha's own requests (probes) and OPTIONS to
    sipha itself.
    """

    def __init__(
        self,
        clock: Clock,
        send: Send,
        listeners: Sequence[Any],
        route: Route,
        timers: TimerSettings,
        *,
        node_listener: Any = None,
        pike: Pike | None = None,
        pike_reply: bool = False,
        scanners: Sequence[str] = (),
        max_transactions: int = 200_000,
        max_dialogs: int = 100_000,
        max_message_size: int = 65535,
        dialog_timeout: float = 43200.0,
        helpers_factory: Any = None,
        locator: Locator | None = None,
    ):
        self.clock = clock
        self.send = send
        #: Resolves destinations given by name; without one, only addresses are reached.
        self.locator = locator
        self.listeners = list(listeners)
        self.node_listener = node_listener
        if node_listener is not None:
            self.listeners.append(node_listener)
        #: Set while the node is the passive one of a pair: see :meth:`set_passive`.
        self.passive = False
        # Ringing calls taken over: (Call-ID, From tag) -> (peer, listener, branch, until).
        self._adopted: dict[tuple[str, str], tuple[Peer, Any, str, float]] = {}
        self.route = route
        #: Per-source limiting (None: off); limited requests are answered 503 if ``pike_reply``.
        self.pike = pike
        self.pike_reply = pike_reply
        self.scanners = tuple(agent.lower() for agent in scanners)
        self.max_transactions = max_transactions
        self.max_dialogs = max_dialogs
        self.max_message_size = max_message_size
        # Transaction and dialog timers share one wheel: one reactor call for all.
        wheel = TimerWheel(clock)
        self.layer = TransactionLayer(wheel, send, timers, lambda key: _digest(*key)[:10])
        # Counters for metrics: events, requests in by method, responses in by code.
        self.stats: Counter[str] = Counter()
        self.requests_received: Counter[str] = Counter()
        self.responses_received: Counter[int] = Counter()
        self.helpers: RouteHelpers = helpers_factory(self)
        self.dialogs = Dialogs(
            wheel,
            dialog_timeout,
            is_local=self.is_local_uri,
            ack_timeout=64 * timers.t1 + timers.t4,
            on_end=self._dialog_ended,
        )
        self._local = {(lst.host, lst.port) for lst in self.listeners}
        self._socket_texts: dict[Any, str] = {}
        self._own_uri_prefixes = tuple(
            f"sip:{format_host_port(lst.host, lst.port)};" for lst in self.listeners
        )
        #: Set by the transport edge while its receive queue is backed up.
        self.shedding = False
        # URIs already looked at (contacts, destinations recur from call to call).
        self._local_uris: dict[str, bool] = {}
        self._hops: dict[str, tuple[Hop, ...] | URI] = {}
        # Branches of sipha's own requests: unique per process and start time.
        self.instance_id = _digest(id(self), clock.seconds())[:8]
        self._branches = 0

    # -- what the route helpers ask -----------------------------------------------
    def is_local(self, uri: URI) -> bool:
        return (uri.host, uri.effective_port) in self._local

    def is_local_uri(self, uri: str) -> bool:
        """The same for a URI as text; sipha's own Record-Route URIs need no parsing."""
        if uri.startswith(self._own_uri_prefixes):
            return True
        return _memoized(self._local_uris, uri, self._parse_is_local)

    def _parse_is_local(self, uri: str) -> bool:
        try:
            return self.is_local(parse_uri(uri))
        except URIError:
            return False

    def has_invite_transaction(self, cancel: Request) -> bool:
        return self.layer.find_server(cancel, "INVITE") is not None

    def socket_text(self, listener: Any) -> str:
        """``udp:127.0.0.1:5060`` for a listener, one string shared by every dialog."""
        text = self._socket_texts.get(listener)
        if text is None:
            text = self._socket_texts[listener] = str(listener)
        return text

    def listener_for(self, transport: str, host: str) -> Any:
        """The listener that sends to ``host`` over ``transport``: same transport and family."""
        v6 = ":" in host
        for listener in self.listeners:
            if listener.transport == transport and (":" in listener.host) == v6:
                return listener
        return None

    def message_counts(self) -> tuple[int, int]:
        """Messages handled so far, and messages refused unparsed (pike, passive)."""
        worked = (
            sum(self.requests_received.values())
            + sum(self.responses_received.values())
            + self.stats["parse_errors"]
        )
        return worked, self.stats["pike_refused"] + self.stats["dropped_while_passive"]

    # -- the node's role in a pair -------------------------------------------------
    def set_passive(self, passive: bool) -> None:
        """Passive: take nothing in but on the node's own address, and forget every call.

        The transactions of calls stop without a word (their timers, their
        retransmissions); the node's own (probes) go on.
        """
        self.passive = passive
        if passive:
            self.layer.clear(keep=lambda transaction: transaction.local == self.node_listener)
            self._adopted.clear()

    def adopt_branches(self, dialogs: Iterable[Dialog]) -> None:
        """Ringing calls taken over: where their INVITE went, and on which branch.

        This node has no transaction for them, so a CANCEL from the caller and
        the ACK of the final non-2xx reply that follows are forwarded
        statelessly (§16.10, §16.11) on the other node's branch, until the
        call could no longer be ringing (its dialog's ``timeout_at``) and its
        final reply retransmitted (64*T1 more).
        """
        now = self.clock.seconds()
        linger = 64 * self.layer.timers.t1
        self._adopted = {k: v for k, v in self._adopted.items() if v[3] > now}
        for dialog in dialogs:
            if dialog.destination and dialog.branch:
                adopt = functools.partial(
                    self._adopt,
                    (dialog.call_id, dialog.from_tag),
                    dialog.branch,
                    dialog.timeout_at + linger,
                )
                self.locate(dialog.destination, None, adopt)

    def _adopt(self, key: tuple[str, str], branch: str, until: float, hops: list[Hop]) -> None:
        """The other node's branch went to the destination's first address (for a name, most likely)."""
        if hops:
            self._adopted[key] = (*hops[0], branch, until)

    def _adopted_branch(self, request: Request) -> tuple[Peer, Any, str, float] | None:
        adopted = self._adopted.get((request.call_id, request.from_tag or ""))
        if adopted is None or adopted[3] <= self.clock.seconds():
            return None
        return adopted

    # -- input ---------------------------------------------------------------------
    def receive(self, data: bytes, source: Peer, local: Any) -> None:
        """Handle one datagram or one framed stream message."""
        if self.passive and local != self.node_listener:
            self.stats["dropped_while_passive"] += 1
            return
        if data[:1] in (b"\r", b"\n", b"") and not data.strip(b"\r\n"):
            return  # keep-alive (a message is not copied to find out)
        if self.pike is not None and not self.pike.allow(source.host):
            self._limit(data, source, local)
            return
        try:
            message = parse_message(data, stream=source.reliable, max_size=self.max_message_size)
        except ParseError as error:
            self.reject(error, source, local)
            return
        if isinstance(message, Response):
            self.responses_received[message.status] += 1
            self._on_response(message, local)
        else:
            self.requests_received[message.method] += 1
            self._on_request(message, source, local)

    def _limit(self, data: bytes, source: Peer, local: Any) -> None:
        """A message from a source over pike's density: dropped, or a request answered 503."""
        self.stats["pike_refused"] += 1
        log.throttled(
            LogLevel.warn,
            "{source} sends more than pike allows: its messages are {what}",
            source=source.host,
            what="answered 503" if self.pike_reply else "dropped",
        )
        if not self.pike_reply:
            return
        try:
            message = parse_message(data, stream=source.reliable, max_size=self.max_message_size)
        except ParseError:
            return
        if isinstance(message, Request) and message.method != "ACK":
            retry = (("Retry-After", str(SHED_RETRY_AFTER)),)
            self._reply_statelessly(message, source, local, 503, "Rate Limited", retry)

    def reject(self, error: ParseError, source: Peer, local: Any) -> None:
        """A malformed message: its status and reason to a request that can be answered.

        Responses and ACKs are dropped, as nothing answers them, and so is a
        request without a readable top Via: there is nowhere to send an answer.
        The transport edge calls this too, before it closes a stream it
        cannot frame.
        """
        self.stats["parse_errors"] += 1
        request = error.request
        try:
            via = None if request is None or request.method == "ACK" else request.top_via
        except ParseError:
            via = None
        if request is None or via is None:
            log.debug(
                "dropped unparseable message from {source}: {reason}",
                source=source,
                reason=error.reason,
            )
            return
        # §18.2.1 and RFC 3581, as for any request: the answer goes where it came from.
        via.params["received"] = source.host
        if "rport" in via.params:
            via.params["rport"] = str(source.port)
        log.throttled(
            LogLevel.info,
            "rejected request from {source}: {status} {reason}",
            source=source,
            status=error.status,
            reason=error.reason,
            call_id=request.call_id,
        )
        self._reply_statelessly(request, source, local, error.status, error.reason)

    def _reply_statelessly(
        self,
        request: Request,
        source: Peer,
        local: Any,
        status: int,
        reason: str | None,
        headers: tuple[tuple[str, str], ...] = (),
    ) -> None:
        """A reply with no transaction behind it: nothing retransmitted, nothing kept."""
        response = make_response(
            request, status, reason, to_tag=_digest(source, request.call_id)[:10], extra=headers
        )
        peer = source if source.reliable else Peer("udp", *request.top_via.response_target("udp"))
        self.layer.responses_sent[status] += 1
        self.send(response.serialize(), peer, local)

    def _on_response(self, response: Response, local: Any) -> None:
        transaction = self.layer.match_response(response)
        if transaction is not None:
            transaction.receive_response(response)
        elif self._is_own_via(response.top_via):
            self._forward_response_statelessly(response, local)
        else:
            self.stats["responses_dropped"] += 1

    def _is_own_via(self, via: Via) -> bool:
        """Did sipha write this Via? Its sent-by is a listener's (always with the port)."""
        return (via.host, via.port) in self._local

    def _forward_response_statelessly(self, response: Response, local: Any) -> None:
        """A response to a request this node holds no transaction for, sent on by its Via.

        §16.7 step 1 and §16.11: the typical one is a media server's 200
        retransmitted to the virtual IP after the other node of the pair, which
        relayed the INVITE, died. Every status goes on, 100 too, as a stateless
        proxy's would: the caller's request did reach a UAS, so its
        retransmissions may stop.
        """
        response.pop_first("via")
        if not response.has("via"):
            self.stats["responses_dropped"] += 1  # to a request of sipha's own (a probe, a BYE)
            return
        try:
            hop = self._response_hop(response.top_via)
        except ParseError:  # only the top Via was checked on arrival
            hop = None
        if hop is None:
            self.stats["responses_dropped"] += 1
            return
        self.stats["responses_forwarded_statelessly"] += 1
        self.layer.responses_sent[response.status] += 1
        self.send(response.serialize(), *hop)
        if response.cseq_method == "INVITE":
            self._taken_over_call_answered(response, local)

    def _taken_over_call_answered(self, response: Response, local: Any) -> None:
        """A ringing call taken over gets its answer: its dialog is up, or over."""
        dialog = self.dialogs.find(response.call_id, response.from_tag or "")
        if dialog is None:
            return
        if response.status < 200:
            self.dialogs.provisional(dialog, response)
        elif response.status < 300:
            self.dialogs.answered(dialog, response, self.socket_text(local))
        else:
            self.dialogs.failed(dialog)

    def _response_hop(self, via: Via) -> tuple[Peer, Any] | None:
        """Where a response goes by its Via (§18.2.2, RFC 3581), and the listener it leaves from."""
        transport = via.transport.lower()
        host, port = via.response_target(transport)
        if _not_a_host(host):
            return None  # a forged Via naming a broadcast or multicast address (RFC 4475 3.3.10)
        local = self.listener_for(transport, host)
        return None if local is None else (Peer(transport, host, port), local)

    def _on_request(self, request: Request, source: Peer, local: Any) -> None:
        if self.scanners and self._from_scanner(request):
            self.stats["scanners_dropped"] += 1
            return
        via = request.top_via
        rport = "rport" in via.params and via.params["rport"] is None
        if via.host != source.host or rport:
            # RFC 3261 §18.2.1 and RFC 3581: remember where the request came from.
            via.params["received"] = source.host
            if rport:
                via.params["rport"] = str(source.port)
            request.replace_top_via(via)
        if request.method == "ACK":
            server = self.layer.find_server(request)
            if server is not None and server.state in (State.COMPLETED, State.CONFIRMED):
                server.receive_ack()
                return
        else:
            server = self.layer.find_server(request)
            if server is not None:
                server.receive_retransmission()
                return
        if request.method == "OPTIONS" and self._addressed_to_sipha(request):
            self._answer_options(request, source, local)
            return
        if local == self.node_listener:
            self.stats["requests_dropped"] += 1  # calls come to the virtual IP
            return
        if self._adopted and request.method in ("CANCEL", "ACK") and not request.has("route"):
            adopted = self._adopted_branch(request)
            if adopted is not None and not self.has_invite_transaction(request):
                self._forward_on_adopted_branch(request, adopted)
                return
        if self.shedding and request.method == "INVITE" and request.to_tag is None:
            # §21.5.4; stateless, so that refusing costs next to nothing.
            self.stats["calls_shed"] += 1
            retry = (("Retry-After", str(SHED_RETRY_AFTER)),)
            self._reply_statelessly(request, source, local, 503, "Overloaded", retry)
            return
        if request.method not in ("ACK", "CANCEL") and self._full(request):
            self.stats["refused_at_bound"] += 1
            log.throttled(
                LogLevel.warn,
                "at the [limits] bounds ({transactions} transactions, {dialogs} calls held):"
                " new requests get 503",
                transactions=len(self.layer.servers),
                dialogs=len(self.dialogs),
            )
            retry = (("Retry-After", str(SHED_RETRY_AFTER)),)
            self._reply_statelessly(request, source, local, 503, "Too Busy", retry)
            return
        did = _route_did(request) if request.to_tag is not None else None
        loop_key = self._loop_key(request)
        rejection = self._validate(request, loop_key)
        self.helpers.source = source
        decision = rejection or self.route(request, self.helpers)
        if decision is DROP:
            self.stats["requests_dropped"] += 1
            return
        if isinstance(decision, Reply):
            if request.method != "ACK":
                # Stateless: a retransmission is answered the same again, and a
                # rejected request (a scanner's, a flood's) leaves nothing behind.
                self._reply_statelessly(
                    request, source, local, decision.status, decision.reason, decision.headers
                )
            return
        assert isinstance(decision, Relay)
        if request.to_tag is not None:
            dialog = self.dialogs.match(request, did)
            if dialog is not None:
                self.dialogs.in_dialog(dialog, request)
            elif request.method == "BYE":
                self.dialogs.orphan_bye(request)
        if request.method == "ACK":
            self._forward_ack(request, decision, loop_key)
        elif request.method == "CANCEL":
            self._cancel(request, source, local)
        else:
            self._relay(request, source, local, decision, loop_key)

    def _from_scanner(self, request: Request) -> bool:
        """A known SIP scanner (sipvicious and the like): dropped without a word."""
        agent = request.get("user-agent")
        if agent is None:
            return False
        agent = agent.lower()
        return any(name in agent for name in self.scanners)

    def _full(self, request: Request) -> bool:
        """Would this request make sipha hold more transactions, or calls, than its bounds?"""
        if len(self.layer.servers) >= self.max_transactions:
            return True
        return (
            request.method == "INVITE"
            and request.to_tag is None
            and len(self.dialogs) >= self.max_dialogs
        )

    def _forward_on_adopted_branch(
        self, request: Request, adopted: tuple[Peer, Any, str, float]
    ) -> None:
        """A CANCEL, or the ACK of a non-2xx, of a call taken over while it rang (§16.11)."""
        peer, local, branch, _ = adopted
        if not self.helpers.max_forwards(request):
            self.stats["requests_dropped"] += 1
            return
        request.insert("Via", self.via_for(local, branch))
        self.stats["requests_forwarded"] += 1
        self.send(request.serialize(), peer, local)

    def _addressed_to_sipha(self, request: Request) -> bool:
        """An out-of-dialog request for sipha itself: its Request-URI is a listener, no user.

        Such an OPTIONS is sipha's to answer as a UAS (RFC 3261 §11.2), even
        with Max-Forwards 0 (§16.3 step 3 lets the final recipient answer it):
        keepalived's ``vrrp_script``, ``sipsak -s sip:VIP`` and monitoring ask
        it whether sipha is alive, whatever the route would do with it.
        """
        if request.to_tag is not None:
            return False
        try:
            uri = parse_uri(request.uri)
        except URIError:
            return False
        return not uri.user and self.is_local(uri)

    def _answer_options(self, request: Request, source: Peer, local: Any) -> None:
        """200 with what sipha takes, or 420 for a Require it cannot meet (§8.2.2.3).

        Stateless: the answer has nothing to retransmit, and a retransmitted
        OPTIONS gets it again.
        """
        required = request.get_all("require")
        answer = _bad_extension(required) if required else OWN_OPTIONS_ANSWER
        self._reply_statelessly(
            request, source, local, answer.status, answer.reason, answer.headers
        )

    def _dialog_ended(self, dialog: Dialog, reason: str) -> None:
        """A call that outlived ``default_timeout`` is hung up: BYE to both ends."""
        if reason != "timeout":
            return
        log.info("dialog {call_id} timed out: sending BYE both ways", call_id=dialog.call_id)
        for request in dialog_byes(dialog):
            self.send_request(request, None, IGNORE_REPLIES)

    def _validate(self, request: Request, loop_key: str) -> Reply | None:
        """§16.3: URI scheme (416), Proxy-Require (420) and loops (482)."""
        if request.method == "ACK":
            return None
        scheme = request.uri.partition(":")[0].lower()
        if scheme not in ("sip", "sips"):
            return Reply(416)
        required = request.get_all("proxy-require")
        if required:
            return _bad_extension(required)
        if self._looped(request, loop_key):
            return Reply(482)
        return None

    def _loop_key(self, request: Request) -> str:
        """The §16.6 step 8 loop-detection part of the branch: the same for a looped copy."""
        routes = ",".join(request.get_all("route"))
        text = f"{request.uri}\x00{request.from_tag}\x00{request.call_id}\x00{request.cseq}\x00{routes}"
        return _crc(text)

    def _looped(self, request: Request, loop_key: str) -> bool:
        ours = f"{BRANCH_COOKIE}{loop_key}."
        for value in request.get_all("via"):
            sent_by, _, params = value.partition(";")
            if ours not in params:
                continue
            try:
                via_host = sent_by.split()[-1]
            except IndexError:
                continue
            for listener in self.listeners:
                if via_host == format_host_port(listener.host, listener.port):
                    return True
        return False

    # -- forwarding ----------------------------------------------------------------
    def locate(self, target: str | None, request: Request | None, done: Located) -> None:
        """Every hop for a target URI, or for the request's own next hop, best first.

        An address is one hop, known at once (and remembered: destinations
        and contacts recur from call to call). A name is the locator's to
        resolve (RFC 3263: NAPTR, SRV, A/AAAA), which may take a DNS round
        trip: ``done`` is called when the answer comes, with every address
        sipha has a listener for, in the order they are to be tried.
        """
        where = self._next_hop_uri(request) if target is None else target
        found = _memoized(self._hops, where, self._hops_or_name) if where else ()
        if isinstance(found, tuple):
            done(list(found))
        elif self.locator is None:
            done([])
        else:
            self.locator.locate(found, lambda peers: done(self._reachable(peers)))

    def _next_hop_uri(self, request: Request | None) -> str | None:
        """§16.6 step 7: a loose router in the top Route, else the Request-URI (a strict router)."""
        assert request is not None, "a target, or a request to take it from"
        routes = request.get_all("route")
        if routes:
            try:
                top = name_addr_uri(routes[0])
                if parse_uri(top).loose_router:
                    return top
            except URIError:
                return None
        return request.uri

    def _hops_or_name(self, target: str) -> tuple[Hop, ...] | URI:
        """The hop for an address (none without a listener for it), or the URI of a name."""
        try:
            uri = parse_uri(target)
        except URIError:
            return ()
        host = uri.params.get("maddr") or uri.host
        if not is_ip_address(host):
            return uri
        local = self.listener_for(uri.transport, host)
        if local is None:
            log.warn("cannot reach {target}: no listener for its transport", target=target)
            return ()
        return ((Peer(uri.transport, host, uri.effective_port), local),)

    def _reachable(self, peers: Iterable[Peer]) -> list[Hop]:
        hops = []
        for peer in peers:
            local = self.listener_for(peer.transport, peer.host)
            if local is not None:
                hops.append((peer, local))
        return hops

    def send_request(
        self,
        request: Request,
        target: str | None,
        user: Outcome,
        timeout: float | None = None,
        local: Any = None,
    ) -> None:
        """Send a request of sipha's own (a probe, a BYE) statefully.

        ``target`` is the next hop; None means the request's own Route or R-URI.
        ``local`` is the listener to send from when it suits the hop's
        transport and family (a probe from the node's own address). The
        target's addresses are tried in turn, as for a relayed request;
        ``user.on_timeout(None)`` says that none could be tried at all.
        """
        self.locate(target, request, _OwnRequest(self, request, user, timeout, local).send)

    def next_branch_id(self) -> str:
        """A branch part no other transaction of this process run has used."""
        self._branches += 1
        return f"{self.instance_id}{self._branches:x}"

    def via_for(self, local: Any, branch: str) -> str:
        return (
            f"SIP/2.0/{local.transport.upper()} "
            f"{format_host_port(local.host, local.port)};branch={branch}"
        )

    def _forward_ack(self, request: Request, decision: Relay, loop_key: str) -> None:
        """An end-to-end ACK (for a 2xx) is forwarded statelessly (§16.11), to the first address."""
        targets = iter(decision.targets) if decision.targets is not None else None

        def send(hops: list[Hop]) -> None:
            if not hops:
                self.stats["requests_dropped"] += 1
                return
            peer, local = hops[0]
            branch = f"{BRANCH_COOKIE}{loop_key}.{_crc(request.top_via.branch)}.a"
            request.insert("Via", self.via_for(local, branch))
            self.stats["requests_forwarded"] += 1
            self.send(request.serialize(), peer, local)

        self.locate(next(targets, None) if targets else None, request, send)

    def _cancel(self, cancel: Request, source: Peer, local: Any) -> None:
        invite = self.layer.find_server(cancel, "INVITE")
        server = self.layer.new_server(cancel, source, local)
        server.reply(200)
        if invite is not None and isinstance(invite.user, ProxyContext):
            invite.user.cancel()

    def _relay(
        self, request: Request, source: Peer, local: Any, decision: Relay, loop_key: str
    ) -> None:
        server = self.layer.new_server(request, source, local)
        if request.method == "INVITE":
            server.reply(100)
        context = ProxyContext(self, server, decision, loop_key)
        server.user = context
        context.start()


class ProxyContext:
    """One request being proxied: its server transaction and its branches (§16.7)."""

    __slots__ = (
        "core",
        "server",
        "record_route",
        "path",
        "targets",
        "target",
        "hops",
        "locating",
        "waiting",
        "branch_prefix",
        "branches",
        "best",
        "finished",
        "cancelled",
        "dialog",
    )

    def __init__(self, core: ProxyCore, server: ServerTransaction, decision: Relay, loop_key: str):
        self.core = core
        self.server = server
        self.record_route = decision.record_route and self.request.to_tag is None
        self.path = decision.path and self.request.method == "REGISTER"
        self.targets: Iterator[str | None] = (
            iter(decision.targets) if decision.targets is not None else iter([None])
        )
        self.target: str | None = None
        #: The addresses of ``target`` not tried yet.
        self.hops: list[Hop] = []
        #: Set while the target's addresses are asked for, and (``waiting``)
        #: when the answer takes a DNS query: the branch waits for it.
        self.locating = False
        self.waiting = False
        # Unique per process run: sipha's instance id and a counter.
        self.branch_prefix = f"{BRANCH_COOKIE}{loop_key}.{core.next_branch_id()}."
        self.branches: list[ClientTransaction] = []
        self.best: Response | None = None
        self.finished = False
        self.cancelled = False
        self.dialog: Dialog | None = None
        if self.request.method == "INVITE" and self.request.to_tag is None:
            binding: Any = decision.targets if hasattr(decision.targets, "release") else None
            self.dialog = core.dialogs.create(self.request, core.socket_text(server.local), binding)
            if self.dialog is not None and binding is not None:
                self.dialog.lb_group = getattr(binding, "group", None)
                self.dialog.lb_resources = tuple(getattr(binding, "resources", ()))

    @property
    def request(self) -> Request:
        """The request being proxied, which the server transaction keeps until its final reply."""
        request = self.server.request
        assert request is not None, "the request is gone once the final reply went out"
        return request

    def start(self) -> None:
        if not self.next_branch():
            self._finish(Reply(503))

    def next_branch(self) -> bool:
        """Forward to the next address that can be reached; False when none is left.

        A target's addresses are tried in turn before the next target: a name
        may have several (RFC 3263: SRV records by priority and weight,
        several A records), and one that times out or answers 503 hands the
        request to the next (§4.3). When a name's addresses take a DNS query,
        the branch is sent once they come (True meanwhile).
        """
        while not self.hops:
            target = next(self.targets, _NO_TARGET)
            if target is _NO_TARGET:
                return False
            self.target = target
            self.locating = True
            self.core.locate(target, self.request, self._located)
            if self.locating:
                self.waiting = True
                return True
        self._fork(self.target, *self.hops.pop(0))
        return True

    def _located(self, hops: list[Hop]) -> None:
        self.hops, self.locating = hops, False
        if not hops and log.debugging and not self.finished:
            log.debug(
                "no address for {target}",
                target=self.target or self.request.uri,
                call_id=self.request.call_id,
            )
        if not self.waiting:
            return
        # The DNS answer came: go on, unless the caller gave up meanwhile or
        # the node turned passive (which ends every transaction silently).
        self.waiting = False
        if self.finished or self.server.state is State.TERMINATED:
            return
        if not self.next_branch():
            self._finish()

    def _fork(self, target: str | None, peer: Peer, local: Any) -> None:
        incoming = self.request
        out = Request(incoming.method, incoming.uri, list(incoming.headers), incoming.body)
        out.call_id, out.cseq, out.cseq_method = (
            incoming.call_id,
            incoming.cseq,
            incoming.cseq_method,
        )
        out.from_tag, out.to_tag = incoming.from_tag, incoming.to_tag
        if self.record_route:
            for index, entry in enumerate(self._record_route(local)):
                out.insert("Record-Route", entry, index)
        if self.path:
            # Before any Path already there (RFC 3327 §5.2), like Record-Route.
            keys = [key for key, _, _ in out.headers]
            first = keys.index("path") if "path" in keys else len(keys)
            out.insert("Path", _path_entry(local, self.server.source), first)
        branch = f"{self.branch_prefix}{len(self.branches)}"
        out.insert("Via", self.core.via_for(local, branch))
        if self.dialog is not None:
            self.core.dialogs.forked(self.dialog, target, branch)
        transaction = ClientTransaction(self.core.layer, out, peer, local, self, branch=branch)
        self.branches.append(transaction)
        if log.debugging:
            log.debug("{method} to {peer}", method=out.method, peer=peer, call_id=out.call_id)
        self.core.stats["requests_forwarded"] += 1
        transaction.start()

    def _record_route(self, outbound: Any) -> list[str]:
        """Our Record-Route entries: one, or two with ``r2=on`` when in and out differ (§16.6)."""
        ftag = f";ftag={self.request.from_tag}" if self.request.from_tag else ""
        if self.dialog is not None:
            ftag += f";did={self.dialog.did}"
        inbound = self.server.local
        if inbound == outbound:
            return [f"<{_rr_uri(inbound)};lr{ftag}>"]
        return [f"<{_rr_uri(outbound)};r2=on;lr{ftag}>", f"<{_rr_uri(inbound)};r2=on;lr{ftag}>"]

    # -- branch events (ClientUser) ------------------------------------------------
    def on_response(self, branch: ClientTransaction, response: Response) -> None:
        response.pop_first("via")
        if not response.has("via"):
            return  # addressed to sipha itself: nothing to forward
        status = response.status
        if status < 200:
            if self.cancelled and branch.is_invite:
                self._send_cancel(branch)
            if status > 100 and not self.finished:
                if self.dialog is not None:
                    self.core.dialogs.provisional(self.dialog, response)
                self.server.send_response(response)
            return
        if status < 300:
            self.finished = True
            if self.dialog is not None:
                self.core.dialogs.answered(
                    self.dialog, response, self.core.socket_text(branch.local)
                )
            self.server.send_response(response)
            return
        if self.finished:
            return
        self._remember(response)
        if status != 503:
            self.hops = []  # only a 503 hands over to the target's next address (RFC 3263 §4.3)
        if not self.cancelled and 500 <= status < 600 and self.next_branch():
            return
        self._finish()

    def on_timeout(self, branch: ClientTransaction) -> None:
        if self.finished:
            return
        if branch.provisional and branch.is_invite:
            self._send_cancel(branch, _NO_ANSWER)
        elif not self.cancelled and self.next_branch():
            return
        self._finish()

    def cancel(self) -> None:
        """The caller CANCELled: cancel branches that rang, give up on the rest (§16.10)."""
        if self.finished or self.cancelled:
            return
        self.cancelled = True
        for branch in self.branches:
            if branch.final is not None:
                continue  # answered already: nothing to cancel
            if branch.provisional:
                self._send_cancel(branch)
            else:
                # A CANCEL may not precede a provisional reply; one is sent if
                # the branch rings later (see on_response).
                branch.stop_retransmissions()
        if not any(branch.provisional and branch.final is None for branch in self.branches):
            self._finish()

    def _send_cancel(self, branch: ClientTransaction, reason: str | None = None) -> None:
        if branch.cancel_sent:
            return
        branch.cancel_sent = True
        assert branch.request is not None, "only a branch without a final reply is cancelled"
        cancel = build_cancel(branch.request, reason)
        ClientTransaction(
            self.core.layer, cancel, branch.peer, branch.local, IGNORE_REPLIES
        ).start()

    def _remember(self, response: Response) -> None:
        """Keep the best final reply so far (§16.7 step 6): 6xx wins, then the lowest class."""
        best = self.best
        if (
            best is None
            or response.status >= 600
            or (best.status < 600 and response.status // 100 < best.status // 100)
        ):
            self.best = response

    def _finish(self, local: Reply | None = None) -> None:
        """Send the one final non-2xx reply upstream; the call's dialog is over."""
        self.finished = True
        if self.dialog is not None:
            self.core.dialogs.failed(self.dialog)
        best = self.best
        if local is not None:
            self.server.reply(local.status, local.reason)
        elif self.cancelled:
            self.server.reply(487)
        elif best is None:
            self.server.reply(408)
        elif best.status == 503:
            # §16.7 step 6: a 503 from downstream means that server is
            # overloaded, not that sipha is; the caller gets 500.
            self.server.reply(500, "Service Unavailable Downstream")
        else:
            self.server.send_response(best)


class _OwnRequest:
    """A request of sipha's own sent to its target's addresses in turn.

    As a relayed request's branches are (RFC 3263 §4.3): the next address on
    a timeout or a 503; the last outcome goes to the user. So a probe of a
    destination published in DNS succeeds while one of its servers answers.
    """

    __slots__ = ("core", "request", "user", "timeout", "local", "hops")

    def __init__(
        self, core: ProxyCore, request: Request, user: Outcome, timeout: float | None, local: Any
    ):
        self.core = core
        self.request = request
        self.user = user
        self.timeout = timeout
        self.local = local
        self.hops: list[Hop] = []

    def send(self, hops: list[Hop]) -> None:
        self.hops = hops
        self._next(None)

    def _next(self, last: ClientTransaction | None) -> None:
        if not self.hops:
            self.user.on_timeout(last)
            return
        peer, local = self.hops.pop(0)
        wanted = self.local
        if (
            wanted is not None
            and wanted.transport == peer.transport
            and wanted.family == local.family
        ):
            local = wanted
        if last is not None:
            self.request.pop_first("via")  # the last attempt's
        branch = f"{BRANCH_COOKIE}{self.core.next_branch_id()}"
        self.request.insert("Via", self.core.via_for(local, branch))
        ClientTransaction(self.core.layer, self.request, peer, local, self, self.timeout).start()

    def on_response(self, transaction: ClientTransaction, response: Response) -> None:
        if response.status == 503 and self.hops:
            self._next(transaction)
        else:
            self.user.on_response(transaction, response)

    def on_timeout(self, transaction: ClientTransaction) -> None:
        self._next(transaction)


def _not_a_host(host: str) -> bool:
    """An address no response may go to: broadcast, multicast, unspecified."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False  # a name
    return ip.is_multicast or ip.is_unspecified or ip == ipaddress.IPv4Address("255.255.255.255")


_NO_TARGET: Any = object()


_T = TypeVar("_T")


def _memoized(memo: dict[str, _T], key: str, compute: Callable[[str], _T]) -> _T:
    """``compute(key)``, remembered in ``memo`` (see :func:`sipha.uri.remember`)."""
    if key in memo:
        return memo[key]
    value = compute(key)
    remember(memo, key, value)
    return value


def _route_did(request: Request) -> str | None:
    """The ``did`` parameter of the top Route: sipha's own dialog id, if it is there."""
    route = request.get("route")
    if route is None or "did=" not in route:
        return None
    # Not parsed: a wrong guess only costs the look-up, which checks the Call-ID too.
    found = _DID_PARAM.search(split_comma_list(route)[0])
    return found[1] if found else None


_DID_PARAM: Final = re.compile(r";\s*did\s*=\s*([^;>?\s]+)", re.IGNORECASE)


def dialog_byes(dialog: Dialog) -> list[Request]:
    """BYE to the callee and to the caller of a dialog sipha ends itself."""
    to_callee = make_request(
        "BYE",
        dialog.callee_contact or dialog.destination or dialog.to_uri,
        from_uri=dialog.from_uri,
        from_tag=dialog.from_tag,
        to_uri=dialog.to_uri,
        to_tag=dialog.to_tag,
        call_id=dialog.call_id,
        cseq=dialog.caller_cseq + 1,
        routes=dialog.callee_route_set,
    )
    to_caller = make_request(
        "BYE",
        dialog.caller_contact or dialog.from_uri,
        from_uri=dialog.to_uri,
        from_tag=dialog.to_tag or "",
        to_uri=dialog.from_uri,
        to_tag=dialog.from_tag,
        call_id=dialog.call_id,
        cseq=dialog.callee_cseq + 1,
        routes=dialog.caller_route_set,
    )
    return [to_callee, to_caller]


def _rr_uri(listener: Any) -> str:
    transport = "" if listener.transport == "udp" else f";transport={listener.transport}"
    return f"sip:{format_host_port(listener.host, listener.port)}{transport}"


def _path_entry(outbound: Any, source: Peer) -> str:
    """sipha's Path: the listener the REGISTER leaves from, and where the client is.

    The listener is the virtual IP, which both nodes of a pair hold in turn,
    so the registration outlives a failover. ``received`` is the client's
    source address as a URI (``;`` and ``=`` escaped, as OpenSIPS and
    Kamailio write it), whose transport says how to reach it again.
    """
    received = f"sip:{format_host_port(source.host, source.port)}"
    if source.transport != "udp":
        received += f"%3Btransport%3D{source.transport}"
    return f"<{_rr_uri(outbound)};lr;received={received}>"


class OverloadGuard:
    """When to refuse new calls: once datagrams wait ``high`` seconds to be read, or the
    receive queue overflows, until they wait less than ``low`` again.

    Once sipha reads datagrams more slowly than they come, every message waits
    longer, and past T1 the callers' retransmissions add to the load until
    nearly every call fails. Refusing new calls early keeps the ones in
    progress going. A burst that sipha drains well within T1 is left alone.

    Both signals count in proportion to the messages that were work since the
    last reading: a flood that pike refuses unparsed fills the queue, but it
    drains some hundred times faster than calls do, and refusing customers'
    calls for it would do the flood's work for it.
    """

    def __init__(self, high: float, low: float):
        self.high = high
        self.low = low
        self.overloaded = False
        self._worked = self._refused = self._dropped = 0

    def update(self, waited: float, dropped: int = 0, worked: int = 0, refused: int = 0) -> bool:
        """Take a new reading; True while new calls should be refused.

        ``waited`` is how long the oldest datagram waiting has waited; ``dropped``,
        ``worked`` and ``refused`` are running totals of datagrams the kernel dropped,
        of messages handled and of messages refused unparsed
        (:meth:`ProxyCore.message_counts`).
        """
        new_worked, new_refused = worked - self._worked, refused - self._refused
        overflowed = dropped > self._dropped
        self._worked, self._refused, self._dropped = worked, refused, dropped
        backlog = max(waited, self.high) if overflowed else waited
        if new_refused > 0:
            backlog = backlog * new_worked / (new_worked + new_refused)
        if backlog >= self.high:
            self.overloaded = True
        elif backlog <= self.low:
            self.overloaded = False
        return self.overloaded
