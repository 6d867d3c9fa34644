"""The replication link over real TCP on loopback: two nodes, 127.0.0.1 and 127.0.0.2."""

from __future__ import annotations

import socket
import sys
from collections.abc import Callable
from pathlib import Path

import pytest_twisted
from twisted.internet import reactor, task

sys.path.insert(0, str(Path(__file__).parent / "unit"))

from proxykit import CALLER, UDP_IN, invite, make_proxy, reply

from sipha.replication import Outbox, ReplicationLink, WarmCopy


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.2", 0))
        return int(sock.getsockname()[1])


class End:
    """One node's end of the link, with a proxy core whose dialogs it streams."""

    def __init__(self, address: str, peer: str, port: int, role: str) -> None:
        self.core, _, self.wire = make_proxy()
        self.role = role
        self.peer_roles: list[str] = []
        self.peer_ended: list[tuple[int, int]] = []
        self.outbox = Outbox(self.core.dialogs)
        self.core.dialogs.observers = (self.outbox,)
        self.warm = WarmCopy(reactor)
        self.link = ReplicationLink(
            reactor,
            address,
            peer,
            port,
            self.outbox,
            self.warm,
            role=lambda: self.role,
            on_peer_role=self.peer_roles.append,
            on_peer_ended=self.peer_ended.append,
        )

    def call(self, n: int) -> None:
        self.core.receive(invite(call_id=f"call-{n}", branch=f"z9hG4bK-{n}"), CALLER, UDP_IN)
        sent = self.wire.sent[-1]
        self.core.receive(reply(sent.message, 200), sent.peer, UDP_IN)


async def until(condition: Callable[[], object], timeout: float = 5.0) -> None:
    for _ in range(int(timeout / 0.02)):
        if condition():
            return
        await task.deferLater(reactor, 0.02, lambda: None)
    raise AssertionError("condition not met in time")


@pytest_twisted.ensureDeferred
async def test_the_active_node_streams_its_calls_and_the_passive_keeps_them():
    port = free_port()
    active = End("127.0.0.1", "127.0.0.2", port, "active")
    passive = End("127.0.0.2", "127.0.0.1", port, "passive")
    active.call(1)  # before the link is up: the snapshot carries it
    active.link.startService()
    passive.link.startService()
    try:
        await until(lambda: passive.warm.synced_at is not None)
        assert set(passive.peer_roles) == {"active"}  # a hello each second
        assert set(active.peer_roles) == {"passive"}
        active.call(2)
        await until(lambda: len(passive.warm.rows) == 2)
        assert passive.warm.trusted()
        assert active.warm.rows == {}  # a passive node streams nothing

        # The active node becomes passive: it says so, and sends nothing more.
        active.role = "passive"
        active.link.stop_streaming()
        await until(lambda: passive.peer_roles[-1] == "passive")
        active.call(3)
        await task.deferLater(reactor, 0.2, lambda: None)
        assert len(passive.warm.rows) == 2
        status = passive.link.status()
        assert (status["receiving"], status["sending"], status["dialogs"]) == (True, True, 2)
    finally:
        await active.link.stopService()
        await passive.link.stopService()


@pytest_twisted.ensureDeferred
async def test_only_the_configured_peer_may_connect():
    port = free_port()
    node = End("127.0.0.2", "127.0.0.3", port, "passive")  # its peer never shows up
    node.link.startService()
    try:
        stranger = socket.create_connection(("127.0.0.2", port), timeout=2)
        stranger.sendall(b'["hello","active"]\n["sync"]\n["synced"]\n')
        await task.deferLater(reactor, 0.3, lambda: None)
        try:
            closed = stranger.recv(1) == b""
        except ConnectionResetError:
            closed = True
        stranger.close()
        assert closed
        assert (node.warm.peer_role, node.warm.synced_at) == (None, None)
    finally:
        await node.link.stopService()
