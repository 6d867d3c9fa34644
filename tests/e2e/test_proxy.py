"""The core proxy end to end: a real sipha process between sipp callers and sipp media servers.

Every test starts its own sipha on free ports of the loopback (never 5060,
so a developer's sipha can keep running) with probing off, so that media
servers see only the traffic the test sends and dead destinations stay in
the rotation.
The sipp scenarios themselves are checked without sipha in
test_scenarios_direct.py; a failure here is sipha's.
"""

from __future__ import annotations

import contextlib
import random
import re
import socket
from collections.abc import Callable, Mapping, Sequence

import pytest

import sipp
from sources import BUILD

Caller = Callable[..., sipp.SippResult]
ServerFactory = Callable[..., sipp.MediaServer]
ProxyFactory = Callable[..., sipp.SiphaProxy]

TRANSPORTS = [pytest.param("u1", id="udp"), pytest.param("t1", id="tcp")]
_PROTOCOL = {"u1": "udp", "t1": "tcp"}

#: Probes would reach the media servers and, against dead destinations,
#: disable them before the failover under test happens.
NO_PROBES: Mapping[str, Mapping[str, object]] = {
    "load_balancer": {"probing_interval": 0},
    "dispatcher": {"ping_interval": 0},
}


def start_proxy(
    sipha_proxy: ProxyFactory,
    destinations: Sequence[sipp.MediaServer | sipp.Destination | str],
    *,
    host: str = "127.0.0.1",
    transports: Sequence[str] = ("udp", "tcp"),
    fr_timer: float = 2.0,
) -> sipp.SiphaProxy:
    """sipha on one free port of ``host`` (UDP and TCP), probing off, in front of ``destinations``."""
    port = sipp.free_port(host)
    return sipha_proxy(
        listen=[f"{proto}:{sipp.join_hostport(host, port)}" for proto in transports],
        destinations=[d.uri if isinstance(d, sipp.MediaServer) else d for d in destinations],
        fr_timer=fr_timer,
        sections=NO_PROBES,
    )


def dead_uri(host: str = "127.0.0.1") -> str:
    """A destination where nothing listens: requests to it go unanswered."""
    return f"sip:{sipp.join_hostport(host, sipp.free_port(host))}"


def stop_all(servers: Sequence[sipp.MediaServer]) -> list[sipp.SippResult]:
    """Stop the media servers; none of them may have failed a call."""
    results = [server.stop() for server in servers]
    for server, result in zip(servers, results, strict=True):
        assert result.failed == 0, f"{server!r} failed calls\n{result.describe()}"
    return results


def assert_next_call_succeeds(
    proxy: sipp.SiphaProxy, server: sipp.MediaServer, sipp_caller: Caller, done: int = 0
) -> None:
    """sipha still runs and still relays calls; ``done`` calls had completed before."""
    assert proxy.running, f"sipha died\n{proxy.log()[-sipp.LOG_TAIL :]}"
    sipp_caller("uac.xml", proxy.address)
    assert server.wait_for_calls(done + 1) == done + 1


# --------------------------------------------------------------------------- -trace_msg logs

_TRACE_SEPARATOR = re.compile(r"^-{20,} .*\n", re.M)


def traced(messages: str, direction: str) -> list[str]:
    """SIP messages of a -trace_msg log that sipp ``direction`` ("sent" or "received")."""
    found = []
    for block in _TRACE_SEPARATOR.split(messages):
        heading, _, text = block.partition("\n")
        if f" message {direction} " in heading:
            found.append(text.strip("\r\n") + "\r\n")
    return found


def header_values(message: str, name: str) -> list[str]:
    """Every value of header ``name`` in ``message``, comma-separated lists split up."""
    head = message.partition("\r\n\r\n")[0]
    values = []
    for line in re.findall(rf"^{re.escape(name)}[ \t]*:[ \t]*(.*?)\r?$", head, re.M | re.I):
        values += [value.strip() for value in re.split(r",(?=(?:[^<>]|<[^>]*>)*$)", line)]
    return values


def responses(messages: str, method: str) -> list[str]:
    """Responses sipp received to ``method`` requests."""
    return [
        message
        for message in traced(messages, "received")
        if message.startswith("SIP/2.0 ")
        and re.search(rf"^CSeq:[ \t]*\d+ {method}\r?$", message, re.M | re.I)
    ]


def status_of(response: str) -> int:
    return int(response.split(" ", 2)[1])


# --------------------------------------------------------------------------- calls


def test_calls_are_spread_over_four_media_servers(
    sipha_proxy: ProxyFactory, media_server: ServerFactory, sipp_caller: Caller
) -> None:
    """200 UDP calls all complete, and the load balancer gives every server a share.

    The balancer prefers the least loaded destination and the first one on a
    tie, so calls are held for a while: about 20 at once spread over all four.
    """
    servers = [media_server(sipp.free_port()) for _ in range(4)]
    proxy = start_proxy(sipha_proxy, servers)

    result = sipp_caller(
        "uac.xml", proxy.address, calls=200, rate=100, limit=50, hold_ms=200, timeout=30
    )

    assert (result.successful, result.failed) == (200, 0)
    assert f"({BUILD} core) started" in proxy.log()
    assert sipp.wait_for_total(servers, 200) == 200
    taken = [r.successful for r in stop_all(servers)]
    assert sum(taken) == 200
    assert all(count > 0 for count in taken), f"calls per media server: {taken}"


def test_tcp_caller_udp_media_servers(
    sipha_proxy: ProxyFactory, media_server: ServerFactory, sipp_caller: Caller
) -> None:
    """Calls cross from TCP to UDP, so sipha record-routes twice (RFC 3261 16.6 step 4)."""
    servers = [media_server(sipp.free_port()) for _ in range(2)]
    proxy = start_proxy(sipha_proxy, servers)

    result = sipp_caller(
        "uac.xml",
        proxy.address_for("tcp"),
        calls=100,
        rate=100,
        limit=50,
        transport="t1",
        timeout=30,
        trace_msg=True,
    )

    assert (result.successful, result.failed) == (100, 0)
    assert sipp.wait_for_total(servers, 100) == 100
    assert sum(r.successful for r in stop_all(servers)) == 100
    answer = next(r for r in responses(result.messages, "INVITE") if status_of(r) == 200)
    record_routes = header_values(answer, "Record-Route")
    assert len(record_routes) == 2, answer
    host_port = proxy.address_for("tcp")
    for entry in record_routes:
        assert entry.startswith(f"<sip:{host_port};"), entry
        assert {"r2=on", "lr"} <= set(entry.strip("<>").split(";")), entry
        assert ";ftag=" in entry, entry
    # The entry the media server sees first names the UDP side, the other one TCP.
    assert ["transport=tcp" in entry.lower() for entry in record_routes] == [False, True]


@pytest.mark.parametrize("caller_transport", TRANSPORTS)
def test_tcp_media_servers(
    caller_transport: str,
    sipha_proxy: ProxyFactory,
    media_server: ServerFactory,
    sipp_caller: Caller,
) -> None:
    """Destinations with ;transport=tcp are reached over TCP connections sipha opens."""
    servers = [media_server(sipp.free_port(), transport="t1") for _ in range(2)]
    proxy = start_proxy(sipha_proxy, servers)

    result = sipp_caller(
        "uac.xml",
        proxy.address_for(_PROTOCOL[caller_transport]),
        calls=30,
        rate=50,
        transport=caller_transport,
    )

    assert (result.successful, result.failed) == (30, 0)
    assert sipp.wait_for_total(servers, 30) == 30
    assert sum(r.successful for r in stop_all(servers)) == 30


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_cancel_while_ringing(
    transport: str, sipha_proxy: ProxyFactory, media_server: ServerFactory, sipp_caller: Caller
) -> None:
    """sipha answers the CANCEL, cancels the ringing branch and relays its 487."""
    servers = [media_server(sipp.free_port(), "uas_ring.xml") for _ in range(2)]
    proxy = start_proxy(sipha_proxy, servers)

    result = sipp_caller(
        "uac_cancel.xml",
        proxy.address_for(_PROTOCOL[transport]),
        calls=5,
        rate=20,
        transport=transport,
    )

    assert (result.successful, result.failed) == (5, 0)
    assert sipp.wait_for_total(servers, 5) == 5
    assert sum(r.successful for r in stop_all(servers)) == 5


# --------------------------------------------------------------------------- failover


@pytest.mark.parametrize("dead", ["closed", "silent"])
def test_failover_past_a_dead_destination(
    dead: str,
    sipha_proxy: ProxyFactory,
    media_server: ServerFactory,
    sipp_caller: Caller,
) -> None:
    """Calls that meet a dead destination first go on to the live one after fr_timer.

    "closed" has nothing listening; "silent" swallows every datagram, which
    also shows that sipha did try it before failing over.
    """
    live = media_server(sipp.free_port())
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sink:
        sink.bind(("127.0.0.1", 0))
        sink.setblocking(False)
        first = f"sip:127.0.0.1:{sink.getsockname()[1]}" if dead == "silent" else dead_uri()
        proxy = start_proxy(sipha_proxy, [first, live], fr_timer=1)

        # An INVITE that fails over waits about fr_timer for its 200.
        result = sipp_caller("uac.xml", proxy.address, calls=4, rate=10, recv_timeout=5, timeout=20)

        swallowed = []
        with contextlib.suppress(BlockingIOError):
            while True:
                swallowed.append(sink.recv(65535))

    assert (result.successful, result.failed) == (4, 0)
    assert live.wait_for_calls(4) == 4
    stop_all([live])
    if dead == "silent":
        assert any(data.startswith(b"INVITE ") for data in swallowed)


def test_all_destinations_dead(sipha_proxy: ProxyFactory, sipp_caller: Caller) -> None:
    """With no destination answering, the caller's final error comes once each had its fr_timer."""
    fr_timer = 1.0
    proxy = start_proxy(sipha_proxy, [dead_uri(), dead_uri()], fr_timer=fr_timer)

    result = sipp_caller("uac_fail.xml", proxy.address, recv_timeout=6, timeout=15, trace_msg=True)

    final = [r for r in responses(result.messages, "INVITE") if status_of(r) >= 200]
    assert final, result.describe()
    assert status_of(final[0]) in (408, 503), final[0]
    # Two destinations tried one after the other, plus a margin for the machine.
    assert result.response_time(1) < 2 * fr_timer + 1.0


# --------------------------------------------------------------------------- sipha's own answers


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize(
    "scenario",
    [
        pytest.param("options_maxfwd0.xml", id="483"),
        pytest.param("subscribe.xml", id="405"),
        pytest.param("options_self.xml", id="200"),
    ],
)
def test_answered_by_sipha_itself(
    scenario: str,
    transport: str,
    sipha_proxy: ProxyFactory,
    media_server: ServerFactory,
    sipp_caller: Caller,
) -> None:
    """Answers of sipha's own, never forwarded.

    Max-Forwards 0 gets 483, an initial SUBSCRIBE 405 with Allow, and an
    OPTIONS for sipha itself (a health check) 200 with Allow and Accept.
    """
    server = media_server(sipp.free_port())
    proxy = start_proxy(sipha_proxy, [server])

    sipp_caller(scenario, proxy.address_for(_PROTOCOL[transport]), calls=3, transport=transport)

    assert_next_call_succeeds(proxy, server, sipp_caller)
    assert server.stop().stats.get("IncomingCall(C)") == "1"


def _garbage() -> bytes:
    data = random.Random(3261).randbytes(600)
    return b"\x00" + data  # never a CRLF keep-alive


BROKEN_VIA_RESPONSE = (
    b"SIP/2.0 200 OK\r\n"
    b"Via: garbage\r\n"
    b"From: <sip:a@127.0.0.1>;tag=1\r\n"
    b"To: <sip:b@127.0.0.1>;tag=2\r\n"
    b"Call-ID: garbage-response\r\n"
    b"CSeq: 1 INVITE\r\n"
    b"Content-Length: 0\r\n"
    b"\r\n"
)


@pytest.mark.parametrize(
    "datagram",
    [pytest.param(_garbage(), id="random-bytes"), pytest.param(BROKEN_VIA_RESPONSE, id="response")],
)
def test_garbage_is_dropped(
    datagram: bytes,
    sipha_proxy: ProxyFactory,
    media_server: ServerFactory,
    sipp_caller: Caller,
) -> None:
    """Garbage is dropped without an answer, and sipha goes on relaying calls."""
    server = media_server(sipp.free_port())
    proxy = start_proxy(sipha_proxy, [server])

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(1.0)
        sock.sendto(datagram, sipp.split_hostport(proxy.address))
        try:
            reply = sock.recv(65535)
        except TimeoutError:
            reply = b""

    assert not reply, f"sipha answered garbage with {reply[:200]!r}"
    assert_next_call_succeeds(proxy, server, sipp_caller)
    assert server.stop().stats.get("IncomingCall(C)") == "1"


def test_response_relayed_by_the_other_node_reaches_the_caller(sipha_proxy: ProxyFactory) -> None:
    """A 200 for an INVITE sipha holds no transaction for goes on by its Via.

    After a takeover the media server retransmits its 200 to the virtual IP,
    now held by the node that never saw the INVITE: sipha's Via is on top (the
    other node wrote the same address), the caller's below it.
    """
    proxy = start_proxy(sipha_proxy, [dead_uri()])
    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as caller,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as media_server,
    ):
        caller.bind(("127.0.0.1", 0))
        caller.settimeout(2.0)
        caller_via = (
            f"SIP/2.0/UDP 192.0.2.10:5062;branch=z9hG4bK-c1;"
            f"received=127.0.0.1;rport={caller.getsockname()[1]}"
        )
        answer = (
            "SIP/2.0 200 OK\r\n"
            f"Via: SIP/2.0/UDP {proxy.address};branch=z9hG4bK-other-node.1.0\r\n"
            f"Via: {caller_via}\r\n"
            "From: <sip:caller@192.0.2.10>;tag=1\r\nTo: <sip:1000@127.0.0.1>;tag=2\r\n"
            "Call-ID: taken-over@192.0.2.10\r\nCSeq: 1 INVITE\r\n"
            "Contact: <sip:fs@127.0.0.1:5071>\r\nContent-Length: 0\r\n\r\n"
        )
        media_server.sendto(answer.encode(), sipp.split_hostport(proxy.address))
        relayed, source = caller.recvfrom(65535)

    text = relayed.decode()
    assert text.startswith("SIP/2.0 200 OK\r\n"), text
    assert header_values(text, "Via") == [caller_via]
    assert header_values(text, "Call-ID") == ["taken-over@192.0.2.10"]
    assert source == sipp.split_hostport(proxy.address)  # from sipha's own listener


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_broken_via_gets_400(
    transport: str, sipha_proxy: ProxyFactory, media_server: ServerFactory, sipp_caller: Caller
) -> None:
    """A request whose Via is broken after its sent-by is answered 400, with a reason."""
    server = media_server(sipp.free_port())
    proxy = start_proxy(sipha_proxy, [server])

    result = sipp_caller(
        "broken_via.xml",
        proxy.address_for(_PROTOCOL[transport]),
        transport=transport,
        trace_msg=True,
    )

    status_line = responses(result.messages, "OPTIONS")[0].partition("\r\n")[0]
    assert status_line == "SIP/2.0 400 Empty Via parameter"
    assert_next_call_succeeds(proxy, server, sipp_caller)
    assert server.stop().stats.get("IncomingCall(C)") == "1"


# --------------------------------------------------------------------------- registrations


def test_register_goes_to_the_dispatcher(
    sipha_proxy: ProxyFactory, media_server: ServerFactory, sipp_caller: Caller
) -> None:
    """REGISTERs go to dispatcher set 1 only, INVITEs to load-balancer group 1 only."""
    registrar = media_server(sipp.free_port(), "uas_register.xml", trace_msg=True)
    calls = media_server(sipp.free_port())
    proxy = start_proxy(
        sipha_proxy,
        [
            sipp.Destination(registrar.uri, load_balancer=False),
            sipp.Destination(calls.uri, dispatcher=False),
        ],
    )

    result = sipp_caller("register.xml", proxy.address, calls=20, rate=50)

    assert (result.successful, result.failed) == (20, 0)
    assert registrar.wait_for_calls(20) == 20
    assert_next_call_succeeds(proxy, calls, sipp_caller)
    received = registrar.stop()
    assert received.failed == 0
    registers = [m for m in traced(received.messages, "received") if m.startswith("REGISTER ")]
    call_ids = {header_values(m, "Call-ID")[0] for m in registers}
    assert len(call_ids) == 20
    assert calls.stop().stats.get("IncomingCall(C)") == "1"


# --------------------------------------------------------------------------- IPv6


def test_ipv6(sipha_proxy: ProxyFactory, media_server: ServerFactory, sipp_caller: Caller) -> None:
    """Calls over IPv6 loopback, bracketed addresses in every header."""
    try:
        sipp.free_udp_port("::1")
    except pytest.fail.Exception:
        pytest.skip("no IPv6 loopback on this machine")
    servers = [media_server(sipp.free_port("::1"), ip="::1") for _ in range(2)]
    proxy = start_proxy(sipha_proxy, servers, host="::1", transports=("udp",))

    result = sipp_caller("uac.xml", proxy.address, calls=10, rate=20)

    assert (result.successful, result.failed) == (10, 0)
    assert sipp.wait_for_total(servers, 10) == 10
    assert sum(r.successful for r in stop_all(servers)) == 10
