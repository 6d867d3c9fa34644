"""Refusing new calls while the receive queue is backed up, and only then."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest
from proxykit import CALLER, UDP_IN, invite, make_proxy, reply
from twisted.logger import formatEvent, globalLogPublisher

from sipha.config import parse_config
from sipha.message import Request, Response
from sipha.proxy import SHED_RETRY_AFTER, OverloadGuard
from sipha.service import SIPService
from sipha.transaction import Peer
from sipha.transport import SO_TIMESTAMPNS, receive_queue

FS1 = Peer("udp", "127.0.0.1", 5071)


def test_guard_refuses_past_high_and_takes_calls_again_only_under_low():
    guard = OverloadGuard(high=0.25, low=0.05)
    waits = (0.0, 0.249, 0.25, 0.1, 0.051, 0.05, 0.1, 0.5)
    assert [guard.update(waited) for waited in waits] == [
        False,
        False,
        True,
        True,
        True,
        False,
        False,
        True,
    ]


def test_a_new_call_gets_503_with_retry_after_while_calls_in_progress_go_on():
    core, _, wire = make_proxy()
    core.receive(invite(), CALLER, UDP_IN)
    forwarded = next(s.message for s in wire.take() if isinstance(s.message, Request))
    core.receive(reply(forwarded, 200), FS1, UDP_IN)
    route = forwarded.get("record-route")
    wire.take()

    core.shedding = True
    transactions = len(core.layer.servers)
    core.receive(invite(call_id="new@x", branch="z9hG4bK-new"), CALLER, UDP_IN)
    (refused,) = wire.take()
    assert len(core.layer.servers) == transactions  # stateless: refusing costs next to nothing
    assert isinstance(refused.message, Response)
    assert (refused.message.status, refused.message.get("retry-after")) == (
        503,
        str(SHED_RETRY_AFTER),
    )
    assert core.stats["calls_shed"] == 1
    bye = invite(method="BYE", cseq=2, to_tag="uas-1", branch="z9hG4bK-bye", routes=(route,))
    core.receive(bye, CALLER, UDP_IN)
    assert [s.message.method for s in wire.take()] == ["BYE"]

    core.shedding = False
    core.receive(invite(call_id="later@x", branch="z9hG4bK-later"), CALLER, UDP_IN)
    assert [getattr(s.message, "method", None) for s in wire.take()] == [None, "INVITE"]


@pytest.fixture
def udp_pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 0))
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    yield receiver, sender
    receiver.close()
    sender.close()


def test_an_overflowing_queue_counts_as_overload_until_it_stops_dropping():
    guard = OverloadGuard(high=0.25, low=0.05)
    assert guard.update(0.01, dropped=3)  # dropped since the start: full
    assert guard.update(0.01, dropped=9)  # still dropping, however fresh the head
    assert not guard.update(0.01, dropped=9)  # kept up since the last reading


def test_the_queue_says_how_long_its_oldest_datagram_waited(udp_pair):
    receiver, sender = udp_pair
    receiver.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    assert receive_queue(receiver, time.time()) == (0.0, 0)
    sender.sendto(b"first", receiver.getsockname())
    time.sleep(0.2)
    sender.sendto(b"second", receiver.getsockname())
    waited, dropped = receive_queue(receiver, time.time())
    assert 0.2 <= waited < 5
    assert dropped == 0
    assert receiver.recv(2048) == b"first"  # looking left it in the queue
    assert receive_queue(receiver, time.time())[0] < 0.2
    assert receiver.recv(2048) == b"second"
    assert receive_queue(receiver, time.time())[0] == 0.0


def test_the_queue_counts_what_the_kernel_dropped_for_lack_of_room(udp_pair):
    receiver, sender = udp_pair
    receiver.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1)  # the kernel's least
    for _ in range(50):
        sender.sendto(b"x" * 1000, receiver.getsockname())
    assert receive_queue(receiver, time.time())[1] > 0


class _Listener:
    def __init__(self, sock: socket.socket):
        self.socket = sock


class _Transports:
    """The service's transports, reduced to the one socket the watch reads."""

    def __init__(self, sock: socket.socket):
        self.udp = {"udp": _Listener(sock)}

    def receive_backlog(self) -> tuple[float, int]:
        return receive_queue(self.udp["udp"].socket, time.time())


def test_the_service_watch_turns_shedding_on_and_off_and_says_so(udp_pair):
    receiver, sender = udp_pair
    sip = SIPService(parse_config('[proxy]\nlisten = ["udp:127.0.0.1:5060"]\n'))
    sip.core, _, _ = make_proxy()
    sip.transports = _Transports(receiver)  # type: ignore[assignment]
    receiver.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    guard = OverloadGuard(high=0.1, low=0.05)
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    try:
        sip._watch_overload(guard)
        assert not sip.core.shedding
        for _ in range(10):
            sender.sendto(b"x" * 600, receiver.getsockname())
        sip._watch_overload(guard)
        assert not sip.core.shedding  # fresh datagrams: sipha keeps up
        time.sleep(0.1)
        sip._watch_overload(guard)
        assert sip.core.shedding
        receiver.setblocking(False)
        for _ in range(10):
            receiver.recv(2048)
        sip._watch_overload(guard)
        assert not sip.core.shedding
    finally:
        globalLogPublisher.removeObserver(events.append)
    said = [formatEvent(e) for e in events if e.get("log_namespace") == "sipha.service"]
    assert len(said) == 2
    assert "new calls get 503" in said[0]
    assert "0 dropped" in said[0]
    assert "taking new calls again" in said[1]


def test_a_queue_full_of_refused_flood_does_not_count_as_work():
    guard = OverloadGuard(high=0.25, low=0.05)
    assert guard.update(1.0, worked=10, refused=0)  # real work backs up
    assert not guard.update(1.0, worked=20, refused=10_000)  # nearly all refused unparsed
    assert not guard.update(1.0, dropped=5, worked=30, refused=20_000)  # the flood overflows it
    assert guard.update(1.0, dropped=5, worked=2030, refused=20_000)  # work again
