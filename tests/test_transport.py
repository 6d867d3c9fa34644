"""The Twisted edge with real sockets: a stream to a client that sipha has no connection with."""

from __future__ import annotations

import socket

import pytest_twisted
from twisted.internet import reactor, task

from sipha.config import ListenAddress
from sipha.transaction import Peer
from sipha.transport import UDP_SEND_BATCH, Transports

BYE = b"BYE sip:alice@127.0.0.1 SIP/2.0\r\nContent-Length: 0\r\n\r\n"


@pytest_twisted.ensureDeferred
async def test_a_request_to_a_tcp_client_opens_a_connection_from_the_listeners_address():
    """After a takeover the client's connection died with the other node: a new one is
    opened, from the address sipha's Via and Record-Route name (the virtual IP)."""
    client = socket.create_server(("127.0.0.1", 0))
    client.setblocking(False)
    port = client.getsockname()[1]
    with socket.socket() as probe:
        probe.bind(("127.0.0.2", 0))
        listener = ListenAddress("tcp", "127.0.0.2", probe.getsockname()[1])
    transports = Transports(reactor)
    transports.listen(listener, 65536)
    try:
        transports.send(BYE, Peer("tcp", "127.0.0.1", port), listener)
        for _ in range(250):
            try:
                connection, source = client.accept()
                break
            except BlockingIOError:
                await task.deferLater(reactor, 0.02, lambda: None)
        else:
            raise AssertionError("sipha never connected")
        with connection:
            assert source[0] == "127.0.0.2"
            connection.settimeout(5)
            assert connection.recv(len(BYE)) == BYE
    finally:
        client.close()
        await transports.stop()


def _receiver() -> socket.socket:
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 0))
    receiver.setblocking(False)
    return receiver


def _arrived(receiver: socket.socket) -> list[bytes]:
    datagrams = []
    while True:
        try:
            datagrams.append(receiver.recv(65535))
        except BlockingIOError:
            return datagrams


def _udp_pair() -> tuple[Transports, ListenAddress, socket.socket, Peer]:
    """sipha's UDP transports and a socket to send to, with its address as a peer."""
    transports = Transports(reactor)
    listener = transports.listen(ListenAddress("udp", "127.0.0.1", 0), 65536)
    receiver = _receiver()
    return transports, listener, receiver, Peer("udp", "127.0.0.1", receiver.getsockname()[1])


@pytest_twisted.ensureDeferred
async def test_datagrams_go_out_together_once_the_reactor_is_done_with_what_came_in():
    """Sent in the order given, after the handling of the messages that were ready."""
    transports, listener, receiver, peer = _udp_pair()
    try:
        for n in range(3):
            transports.send(b"datagram %d" % n, peer, listener)
        assert _arrived(receiver) == []
        await task.deferLater(reactor, 0, lambda: None)
        assert _arrived(receiver) == [b"datagram 0", b"datagram 1", b"datagram 2"]
    finally:
        receiver.close()
        await transports.stop()


@pytest_twisted.ensureDeferred
async def test_a_full_batch_of_datagrams_and_stopping_send_at_once():
    transports, listener, receiver, peer = _udp_pair()
    try:
        for n in range(UDP_SEND_BATCH - 1):
            transports.send(b"%d" % n, peer, listener)
        assert _arrived(receiver) == []  # held: the reactor has not turned
        transports.send(b"last", peer, listener)
        arrived = _arrived(receiver)
        assert len(arrived) == UDP_SEND_BATCH
        assert arrived[-1] == b"last"
        transports.send(b"at stop", peer, listener)
    finally:
        await transports.stop()
    try:
        assert _arrived(receiver) == [b"at stop"]
    finally:
        receiver.close()


class _EchoCore:
    """Answers each datagram to its sender, and notes what the sender had got by then."""

    def __init__(self, transports: Transports, sender: socket.socket):
        self.transports = transports
        self.sender = sender
        self.seen_by_sender: list[list[bytes]] = []

    def receive(self, data: bytes, peer: Peer, local: ListenAddress) -> None:
        if data == b"broken":
            raise ValueError("a message the core cannot handle")
        self.seen_by_sender.append(_arrived(self.sender))
        self.transports.send(b"re: " + data, peer, local)


@pytest_twisted.ensureDeferred
async def test_what_one_read_brings_is_answered_once_all_of_it_is_handled():
    """Every datagram waiting is handled in one turn, a broken one without stopping
    the others, and the answers leave together at its end."""
    transports, listener, sender, _ = _udp_pair()
    core = transports.core = _EchoCore(transports, sender)
    try:
        for data in (b"one", b"broken", b"two", b"three"):
            sender.sendto(data, (listener.host, listener.port))
        transports.udp[listener].doRead()  # the reactor's turn: the socket is readable
        assert core.seen_by_sender == [[], [], []]
        # Sent already: not left for a later turn of the reactor.
        assert _arrived(sender) == [b"re: one", b"re: two", b"re: three"]
    finally:
        sender.close()
        await transports.stop()
