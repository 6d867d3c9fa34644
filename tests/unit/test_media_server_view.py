"""What the media servers learn of the client behind sipha: its address, and a Path back to it.

A media server sees every request come from sipha. The client address header
(X-AUTH-IP) tells it who sent an initial request; a REGISTER's Path (RFC 3327)
makes the calls it later sends to the registered client come back through
sipha, which sends them to the address the client registered from.
"""

from __future__ import annotations

import pytest
from proxykit import CALLER, CONFIG, TCP_IN, UDP_IN, invite, make_proxy, reply

from sipha.message import Request, Response
from sipha.transaction import Peer

FS1 = Peer("udp", "127.0.0.1", 5071)
#: The client behind NAT: its Contact names an address nothing can reach.
NATTED = Peer("udp", "198.51.100.7", 40123)
NATTED_CONTACT = "<sip:alice@10.0.0.7:5060>"
REGISTER_PATH = "<sip:127.0.0.1:5060;lr;received=sip:198.51.100.7:40123>"


def relayed(wire) -> Request:
    """The one request sipha sent downstream, after the 100 it may have answered."""
    (request,) = [s.message for s in wire.take() if isinstance(s.message, Request)]
    return request


# --------------------------------------------------------------------------- client address


@pytest.mark.parametrize("method", ["INVITE", "REGISTER"])
def test_initial_requests_to_media_servers_carry_the_client_address(method):
    core, _, wire = make_proxy()
    core.receive(invite(method=method), CALLER, UDP_IN)
    assert relayed(wire).get_all("x-auth-ip") == [CALLER.host]


def test_a_forged_client_address_is_replaced():
    core, _, wire = make_proxy()
    forged = "X-AUTH-IP: 127.0.0.1\r\nx-auth-ip: 10.1.1.1"
    core.receive(invite(extra=forged), CALLER, UDP_IN)
    out = relayed(wire)
    assert out.get_all("x-auth-ip") == [CALLER.host]
    assert [name for key, name, _ in out.headers if key == "x-auth-ip"] == ["X-AUTH-IP"]


def test_header_names_and_port_come_from_the_config():
    config = (
        CONFIG
        + '[route]\nclient_address_header = "X-Real-IP"\nclient_port_header = "X-AUTH-PORT"\n'
    )
    core, _, wire = make_proxy(config)
    core.receive(invite(extra="X-AUTH-PORT: 1"), CALLER, UDP_IN)
    out = relayed(wire)
    assert (out.get_all("x-real-ip"), out.get_all("x-auth-port")) == (["192.0.2.10"], ["5062"])
    assert not out.has("x-auth-ip")


def test_no_client_address_header_when_turned_off():
    core, _, wire = make_proxy(CONFIG + '[route]\nclient_address_header = ""\n')
    core.receive(invite(extra="X-AUTH-IP: 10.1.1.1"), CALLER, UDP_IN)
    assert relayed(wire).get_all("x-auth-ip") == ["10.1.1.1"]  # passed on, not sipha's


def test_in_dialog_requests_are_left_alone():
    core, _, wire = make_proxy()
    core.receive(
        invite(method="BYE", to_tag="t", routes=("<sip:127.0.0.1:5060;lr>",)), CALLER, UDP_IN
    )
    assert not relayed(wire).has("x-auth-ip")


# --------------------------------------------------------------------------- Path


def register(
    core, *, source: Peer = NATTED, local=UDP_IN, supported: str = "path", extra: str = ""
) -> None:
    headers = [f"Supported: {supported}"] if supported else []
    headers += [extra] if extra else []
    via = f"Via: SIP/2.0/{source.transport.upper()} 10.0.0.7:5060;rport;branch=z9hG4bK-reg-1"
    request = invite(
        method="REGISTER", uri="sip:127.0.0.1:5060", via=via, extra="\r\n".join(headers)
    )
    core.receive(
        request.replace(b"<sip:alice@192.0.2.10:5062>", NATTED_CONTACT.encode()), source, local
    )


def test_register_of_a_client_that_supports_path_gets_ours_with_its_source_address():
    core, _, wire = make_proxy()
    register(core)
    out = relayed(wire)
    assert out.get_all("path") == [REGISTER_PATH]
    assert out.get_all("require") == ["path"]


def test_our_path_goes_before_the_paths_of_proxies_in_front_of_us():
    core, _, wire = make_proxy()
    register(core, extra="Path: <sip:edge.example.net;lr>")
    assert relayed(wire).get_all("path") == [REGISTER_PATH, "<sip:edge.example.net;lr>"]


def test_a_tcp_client_is_named_with_its_transport():
    core, _, wire = make_proxy()
    register(core, source=NATTED._replace(transport="tcp"), local=TCP_IN)
    out = relayed(wire)
    # Over UDP to the media server: the Path names the UDP listener.
    assert out.get_all("path") == [
        "<sip:127.0.0.1:5060;lr;received=sip:198.51.100.7:40123%3Btransport%3Dtcp>"
    ]


@pytest.mark.parametrize(
    ("mode", "supported", "path"),
    [
        ("supported", "", False),  # RFC 3327 §5.2: not unless the client supports it
        ("supported", "timer, PATH", True),
        ("always", "", True),  # OpenSIPS's add_path_received() whatever the client says
        ("off", "path", False),
    ],
)
def test_path_modes(mode, supported, path):
    core, _, wire = make_proxy(CONFIG + f'[route]\npath = "{mode}"\n')
    register(core, supported=supported)
    out = relayed(wire)
    assert out.has("path") is path
    assert out.get_all("require") == (["path"] if path else [])


def test_a_register_requiring_path_already_is_not_required_twice():
    core, _, wire = make_proxy()
    register(core, extra="Require: path")
    assert relayed(wire).get_all("require") == ["path"]


def test_only_register_gets_a_path():
    core, _, wire = make_proxy(CONFIG + '[route]\npath = "always"\n')
    core.receive(invite(extra="Supported: path"), CALLER, UDP_IN)
    assert not relayed(wire).has("path")


def call_from_the_registrar(core, route: str, *, method: str = "INVITE") -> bytes:
    """The media server calls the client registered through sipha: Route = the Path."""
    return invite(
        method=method,
        uri="sip:alice@10.0.0.7:5060",
        via="Via: SIP/2.0/UDP 127.0.0.1:5071;branch=z9hG4bK-fs-1",
        call_id="to-alice@127.0.0.1",
        routes=(route,),
    )


def test_a_call_from_the_registrar_reaches_the_client_where_it_registered_from():
    core, _, wire = make_proxy()
    core.receive(call_from_the_registrar(core, REGISTER_PATH), FS1, UDP_IN)
    sent = wire.take()
    assert [s.message.status for s in sent if isinstance(s.message, Response)] == [100]
    (out,) = [s for s in sent if isinstance(s.message, Request)]
    assert out.peer == NATTED
    message = out.message
    assert message.uri == "sip:alice@10.0.0.7:5060"
    assert not message.has("route")
    assert not message.has("x-auth-ip")  # it goes to the client, not to a media server
    assert message.get_all("record-route")  # in-dialog requests come through sipha too
    # The client answers; the media server gets it.
    core.receive(reply(message, 200, "OK"), NATTED, UDP_IN)
    (ok,) = wire.take()
    assert (ok.peer, ok.message.status) == (FS1, 200)


def test_a_request_for_a_tcp_client_goes_on_its_connection():
    core, _, wire = make_proxy()
    route = "<sip:127.0.0.1:5060;lr;received=sip:198.51.100.7:40123%3Btransport%3Dtcp>"
    core.receive(call_from_the_registrar(core, route, method="MESSAGE"), FS1, UDP_IN)
    (out,) = wire.take()
    # The transport edge reuses the connection the client opened from that port.
    assert (out.peer, out.local) == (NATTED._replace(transport="tcp"), TCP_IN)


@pytest.mark.parametrize(
    "route",
    [
        "<sip:127.0.0.1:5060;lr>",  # sipha's, without received: an ordinary initial INVITE
        "<sip:192.0.2.99:5060;lr;received=sip:198.51.100.7:40123>",  # another proxy's
        "<sip:127.0.0.1:5060;lr;received=junk>",
    ],
)
def test_other_preloaded_routes_are_not_paths(route):
    core, _, wire = make_proxy()
    core.receive(call_from_the_registrar(core, route), FS1, UDP_IN)
    out = [s for s in wire.take() if isinstance(s.message, Request)]
    assert [s.peer for s in out] == [FS1]  # load balanced, as before


def test_a_path_route_from_anyone_but_a_media_server_is_not_followed():
    """Else anyone could name any address in a Route and use sipha as an open relay."""
    core, _, wire = make_proxy()
    stranger = Peer("udp", "192.0.2.66", 5060)
    core.receive(call_from_the_registrar(core, REGISTER_PATH), stranger, UDP_IN)
    out = [s for s in wire.take() if isinstance(s.message, Request)]
    assert NATTED not in [s.peer for s in out]
