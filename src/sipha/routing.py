"""The route: what happens to each request, as a plain Python function.

A route takes the request and a :class:`RouteHelpers` (the functions an
opensips.cfg route calls: ``mf_process_maxfwd_header``, ``loose_route``,
``t_check_trans``, ``load_balance``, ``ds_select_dst``, ``add_path_received``,
and the source address, OpenSIPS's ``$si``/``$sp``) and returns a decision:
:class:`Reply`, :class:`Relay` or :data:`DROP`. The proxy core carries the
decision out statefully. :func:`reference_route` is the reference deployment's
route; a user route has the same signature and is named in the config
(``route.function = "package.module:function"``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Protocol
from urllib.parse import unquote

from sipha.dialog import DialogState
from sipha.message import Request
from sipha.transaction import Peer
from sipha.uri import URIError, name_addr_uri, parse_uri, split_comma_list

if TYPE_CHECKING:
    from sipha.balancer import Allocation, LoadBalancer
    from sipha.config import RouteConfig
    from sipha.dialog import Dialogs
    from sipha.dispatcher import Dispatcher

#: Methods sipha's reference route accepts, sent in ``Allow`` with a 405. Not
#: OPTIONS: the core answers an OPTIONS to sipha itself before any route, and an
#: OPTIONS the route sees (for a user, or for another host) gets this 405.
ALLOWED_METHODS: Final = "INVITE, ACK, CANCEL, BYE, REGISTER"

#: OpenSIPS maxfwd's ``max_limit``: larger values are lowered to this.
MAX_FORWARDS_LIMIT: Final = 256


# Reply and Relay write their __init__: compiled, it is native code, where the one a
# frozen @dataclass writes stays Python (one of each per request). Their eq and repr
# come from @dataclass; nothing changes a decision once the route has made it.
@dataclass(slots=True)
class Reply:
    """Answer the request here (statefully, so retransmissions are absorbed)."""

    status: int
    reason: str | None = None
    headers: tuple[tuple[str, str], ...] = ()

    def __init__(
        self, status: int, reason: str | None = None, headers: tuple[tuple[str, str], ...] = ()
    ) -> None:
        self.status = status
        self.reason = reason
        self.headers = headers


@dataclass(slots=True)
class Relay:
    """Forward the request statefully.

    ``targets`` are next-hop URIs (OpenSIPS's ``$du``), tried one after the
    other when a branch times out or answers 5xx; they are consumed lazily, so
    a generator can pick the next destination only when it is needed
    (``lb_next``). ``None`` means "where the request itself points" (its top
    Route, else its Request-URI), as for in-dialog requests.
    """

    targets: Iterable[str] | None = None
    record_route: bool = True
    #: A REGISTER gets a Path naming sipha with the client's source address
    #: (RFC 3327, OpenSIPS's ``add_path_received``), written when it is sent,
    #: like Record-Route: it names the listener the REGISTER leaves from.
    path: bool = False

    def __init__(
        self,
        targets: Iterable[str] | None = None,
        record_route: bool = True,
        path: bool = False,
    ) -> None:
        self.targets = targets
        self.record_route = record_route
        self.path = path


class _Drop:
    def __repr__(self) -> str:
        return "DROP"


#: Discard the request silently (an ACK or CANCEL that matches nothing).
DROP = _Drop()

Decision = Reply | Relay | _Drop
Route = Callable[[Request, "RouteHelpers"], Decision]


class ProxyState(Protocol):
    """What the helpers need to know of the running proxy."""

    @property
    def dialogs(self) -> Dialogs: ...
    def is_local_uri(self, uri: str) -> bool: ...
    def has_invite_transaction(self, cancel: Request) -> bool: ...


class RouteHelpers:
    """The functions a route calls; each one mirrors an OpenSIPS script function."""

    def __init__(
        self,
        proxy: ProxyState,
        settings: RouteConfig,
        max_forwards: int,
        balancer: LoadBalancer,
        dispatcher: Dispatcher,
    ):
        self.proxy = proxy
        self.settings = settings
        self.default_max_forwards = max_forwards
        self.balancer = balancer
        self.dispatcher = dispatcher
        #: Where the request being routed came from (OpenSIPS ``$proto``, ``$si``,
        #: ``$sp``): the proxy core sets it before it calls the route.
        self.source = Peer("udp", "", 0)

    def max_forwards(self, request: Request) -> bool:
        """``mf_process_maxfwd_header``: False when the request must get 483.

        Absent: add the configured value. Zero or unreadable: False. Otherwise
        decrement, first lowering anything above 256 (OpenSIPS's max_limit).
        """
        value = request.get("max-forwards")
        if value is None:
            request.insert("Max-Forwards", str(self.default_max_forwards))
            return True
        if not value.isdigit() or int(value) == 0:
            return False
        request.set("Max-Forwards", str(min(int(value), MAX_FORWARDS_LIMIT + 1) - 1))
        return True

    def loose_route(self, request: Request) -> bool:
        """Route processing of §16.4 and §16.12 for a request that sipha record-routed.

        True when the request was routed through sipha: its own Route entries
        (both, after a double Record-Route) are removed, a strict-routed
        Request-URI is restored from the last Route, and the request is left
        pointing at its next hop.
        """
        routes = request.get_all("route")
        via_strict = self.proxy.is_local_uri(request.uri)
        if via_strict:
            # The previous hop was a strict router: our own URI is in the
            # R-URI and the real target is the last Route (§16.4).
            if not routes:
                return False
            request.uri = name_addr_uri(routes[-1])
            routes = routes[:-1]
        removed = 0
        while routes and removed < 2:
            first = name_addr_uri(routes[0])
            if not self.proxy.is_local_uri(first):
                break
            routes.pop(0)
            removed += 1
            if removed == 1 and not _has_param(first, "r2"):
                break
        if not removed and not via_strict:
            return False
        if routes and not _has_param(name_addr_uri(routes[0]), "lr"):
            # The next hop is a strict router: it goes into the R-URI and the
            # R-URI becomes the last Route (§16.6 step 6).
            routes.append(f"<{request.uri}>")
            request.uri = name_addr_uri(routes.pop(0))
        request.remove("route")
        for index, route in enumerate(routes):
            request.insert("Route", route, index)
        return True

    def dialog_route(self, request: Request) -> str | None:
        """The next hop of an in-dialog request that did not come through our Route.

        A UA that ignores Record-Route (sipp's built-in scenarios do) sends
        ACK and BYE straight at sipha. If the request belongs to a dialog
        sipha relayed, it goes to the other party's contact, and a
        Request-URI naming sipha is replaced by that contact. Only the
        dialog's own parties are ever targets, so this relays nothing else.
        """
        dialog = self.proxy.dialogs.match(request)
        if dialog is None or dialog.state < DialogState.CONFIRMED_NA:
            return None
        if dialog.from_caller(request):
            target = dialog.callee_contact or dialog.destination
        else:
            target = dialog.caller_contact
        if not target:
            return None
        if self.proxy.is_local_uri(request.uri):
            request.uri = target
        return target

    def add_client_address(self, request: Request) -> None:
        """Tell the media server who the client is, which it cannot see behind sipha.

        ``[route] client_address_header`` (``X-AUTH-IP``, what FreeSWITCH's
        ``apply-proxy-acl`` reads) gets the source address, and
        ``client_port_header`` the source port. Every copy the client sent is
        removed first: a customer must not claim another address. OpenSIPS:
        ``remove_hf("X-AUTH-IP"); append_hf("X-AUTH-IP: $si\\r\\n")``.
        """
        source = self.source
        for name, value in (
            (self.settings.client_address_header, source.host),
            (self.settings.client_port_header, str(source.port)),
        ):
            if name:
                request.remove(name)
                request.append(name, value)

    def path(self, request: Request) -> bool:
        """Whether a REGISTER gets sipha's Path (``Relay(path=...)``), per ``[route] path``.

        RFC 3327 §5.2: a proxy SHOULD NOT add a Path unless the client said
        ``Supported: path`` ("supported"); "always" adds it anyway, as
        OpenSIPS's ``add_path_received()`` does, for clients that never say so
        but whose registrar stores the Path (FreeSWITCH does). A Path added is
        also required of the registrar (``Require: path``, §5.2): one that
        ignored it would send calls around sipha, where a client behind NAT
        cannot be reached.
        """
        mode = self.settings.path
        if mode == "off" or (mode == "supported" and not _lists(request, "supported", "path")):
            return False
        if not _lists(request, "require", "path"):
            request.append("Require", "path")
        return True

    def path_received(self, request: Request) -> str | None:
        """Where a request for a registered client goes: the ``received`` of sipha's top Route.

        A media server routes a request for a registered client by the
        registration's Path (RFC 3327 §5.3), whose entry for sipha carries
        the client's source address and transport (see :meth:`path`). That
        address, not the Contact, is how a client behind NAT, or one that
        takes requests only from where it registered, is reached (OpenSIPS's
        path module with ``use_received``). None for any other request, and
        for one that does not come from a media server: anyone else could
        name any address there and use sipha as an open relay.
        """
        route = request.get("route")
        if route is None or "received=" not in route or not self._from_media_server():
            return None
        try:
            top = name_addr_uri(split_comma_list(route)[0])
            received = parse_uri(top).params.get("received")
            if not received or not self.proxy.is_local_uri(top):
                return None
            received = unquote(received)
            parse_uri(received)
        except URIError:
            return None
        return received

    def _from_media_server(self) -> bool:
        """Did the request come from one of the destinations (a media server)?"""
        hosts = set()
        for entry in (*self.dispatcher.list(), *self.balancer.list()):
            try:
                hosts.add(parse_uri(entry["uri"]).host)
            except URIError:
                continue
        return self.source.host in hosts

    def transaction_exists(self, request: Request) -> bool:
        """``t_check_trans`` for a CANCEL: does it match a pending INVITE?"""
        return self.proxy.has_invite_transaction(request)

    def load_balance(
        self, request: Request, group: int, resource: str, algorithm: str = "relative"
    ) -> Allocation | None:
        """``load_balance(group, resource, algorithm)``: the call's allocation, or None.

        Iterating the allocation gives the least loaded destination, then the
        next one on failover (``lb_next``); the call's dialog releases it.
        None means the resource is unknown.
        """
        return self.balancer.start(group, resource, algorithm)

    def ds_select(self, request: Request, set_id: int, algorithm: int = 0) -> Iterator[str] | None:
        """``ds_select_dst(set, algorithm)``: next hops, first choice first, or None."""
        return self.dispatcher.select(request, set_id, algorithm)

    def _is_local(self, uri: str) -> bool:
        return self.proxy.is_local_uri(uri)


def _lists(request: Request, header: str, option: str) -> bool:
    """Does ``header`` (Supported, Require) list the option tag ``option``?"""
    return any(value.lower() == option for value in request.get_all(header))


def _has_param(uri: str, name: str) -> bool:
    """Does ``uri`` have the parameter? Parsed only if the name is in it at all."""
    return name in uri.lower() and name in _uri_params(uri)


def _uri_params(uri: str) -> dict[str, str | None]:
    try:
        return parse_uri(uri).params
    except URIError:
        return {}


def reference_route(request: Request, sip: RouteHelpers) -> Decision:
    """The reference deployment's route (DESIGN.md, steps 1-7)."""
    if not sip.max_forwards(request):
        return Reply(483)
    if request.to_tag is not None:
        if sip.loose_route(request):
            return Relay()
        target = sip.dialog_route(request)
        if target is not None:
            return Relay([target])
        # Neither routed through sipha nor part of a dialog it knows.
        return DROP if request.method == "ACK" else Reply(404, "Not Here")
    if request.method == "CANCEL":
        return Relay() if sip.transaction_exists(request) else DROP
    if request.method == "ACK":
        return DROP  # an initial ACK matches nothing we sent
    received = sip.path_received(request)
    if received is not None:
        # A media server's request for a client registered through sipha (Path).
        sip.loose_route(request)
        return Relay([received])
    settings = sip.settings
    if request.method == "INVITE":
        targets = sip.load_balance(
            request, settings.lb_group, settings.lb_resource, settings.lb_algorithm
        )
        if targets is None:
            return Reply(503)
        sip.add_client_address(request)
        return Relay(targets)
    if request.method == "REGISTER":
        registrars = sip.ds_select(request, settings.ds_set, settings.ds_algorithm)
        if registrars is None:
            return Reply(503)
        sip.add_client_address(request)
        return Relay(registrars, record_route=False, path=sip.path(request))
    return Reply(405, headers=(("Allow", ALLOWED_METHODS),))
