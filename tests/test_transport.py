"""The Twisted edge with real sockets: a stream to a client that sipha has no connection with."""

from __future__ import annotations

import socket

import pytest_twisted
from twisted.internet import reactor, task

from sipha.config import ListenAddress
from sipha.transaction import Peer
from sipha.transport import Transports

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
