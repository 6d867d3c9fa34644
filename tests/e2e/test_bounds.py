"""Bounds on TCP: too many connections from one source, slow senders, idle connections.

sipha listens on 127.0.0.1; the hostile clients come from other loopback
addresses (127.0.0.2 and up), so that each is a source of its own while a
customer from 127.0.0.1 goes on placing calls.
"""

from __future__ import annotations

import select
import socket
import time
from contextlib import ExitStack

import sipp
from sipha import ctl

NO_PROBES = {"load_balancer": {"probing_interval": 0}, "dispatcher": {"ping_interval": 0}}


def limits(**values: float) -> dict[str, dict[str, float]]:
    return {**NO_PROBES, "limits": values}


def connect(source: str, address: str) -> socket.socket:
    host, port = sipp.split_hostport(address)
    sock = socket.socket()
    sock.bind((source, 0))
    sock.settimeout(5)
    sock.connect((host, port))
    return sock


def closed_among(sockets: list[socket.socket], within: float) -> int:
    """How many of ``sockets`` the other end closes within ``within`` seconds."""
    deadline = time.monotonic() + within
    open_ones, closed = list(sockets), 0
    while open_ones and (left := deadline - time.monotonic()) > 0:
        readable, _, _ = select.select(open_ones, [], [], left)
        for sock in readable:
            open_ones.remove(sock)
            closed += closed_by_peer(sock, within=1) is not None
    return closed


def closed_by_peer(sock: socket.socket, within: float) -> float | None:
    """Seconds until the other end closed ``sock`` (None if it stayed open ``within``)."""
    started = time.monotonic()
    sock.settimeout(within)
    try:
        data = sock.recv(1)
    except TimeoutError:
        return None
    except ConnectionResetError:
        data = b""
    assert data == b""
    return time.monotonic() - started


def test_connections_past_the_bounds_are_refused_and_sipha_keeps_serving(
    sipha_proxy, media_server, sipp_caller
):
    server = media_server(sipp.free_udp_port())
    port = sipp.free_port()
    proxy = sipha_proxy(
        listen=[f"udp:127.0.0.1:{port}", f"tcp:127.0.0.1:{port}"],
        destinations=[server.uri],
        sections=limits(tcp_connections=40, tcp_connections_per_source=10),
    )
    tcp = proxy.address_for("tcp")
    with ExitStack() as held:
        # One source opens more than its share: the excess is closed at once.
        flood = [held.enter_context(connect("127.0.0.2", tcp)) for _ in range(15)]
        assert closed_among(flood, within=0.5) == 5
        # Other sources fill the rest of the total bound (40), and no more.
        others = [
            held.enter_context(connect(f"127.0.0.{n}", tcp)) for n in (3, 4, 5, 6) for _ in range(8)
        ]
        assert closed_among(others, within=0.5) == 2  # 10 + 32 - 40
        # A customer still calls over TCP once a slot is free (the bound is reached
        # now), and over UDP at any time; sipha-ctl still answers.
        assert sipp_caller("uac.xml", proxy.address, calls=2).successful == 2
        status = ctl.call(proxy.directory / "control.sock", "counters")
        assert status["dialogs"] is not None
    # Everything closed: a TCP customer is served again.
    assert sipp.wait_until(
        lambda: sipp_caller("uac.xml", tcp, calls=1, transport="t1", check=False).successful == 1,
        timeout=10,
    )


def test_a_slow_sender_and_an_idle_connection_are_cut_off(sipha_proxy):
    port = sipp.free_port()
    proxy = sipha_proxy(
        listen=[f"udp:127.0.0.1:{port}", f"tcp:127.0.0.1:{port}"],
        destinations=[],
        sections=limits(tcp_idle_timeout=2, tcp_message_timeout=1),
    )
    tcp = proxy.address_for("tcp")
    with connect("127.0.0.2", tcp) as slow, connect("127.0.0.3", tcp) as idle:
        slow.sendall(b"INVITE sip:alice@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.2")
        slow_closed = closed_by_peer(slow, within=5)
        idle_closed = closed_by_peer(idle, within=5)
    assert slow_closed is not None
    assert 0.5 < slow_closed < 2.5  # tcp_message_timeout = 1 s
    assert idle_closed is not None  # tcp_idle_timeout = 2 s, counted from the connection
