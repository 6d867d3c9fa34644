"""Two sipha nodes on one dialog table: takeover, silent passivity, the stream, ownership.

Each node is the real proxy core, dialog store, replication ends and role
logic on the shared database (SQLite and MariaDB), with a fake wire instead
of sockets; the replication stream is carried from one node's outbox to the
other's warm copy by hand, line by line, as the TCP link would.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import reactor

sys.path.insert(0, str(Path(__file__).parent / "unit"))

from proxykit import CALLER, CONFIG, UDP_IN, Wire, invite, reply

from sipha.config import parse_config
from sipha.control import Control
from sipha.dialog import ENDED_KEPT, DialogState
from sipha.dialog_store import REALTIME, DialogStore
from sipha.ha import HighAvailability
from sipha.message import Request, Response
from sipha.replication import Outbox, WarmCopy
from sipha.service import build_core, build_modules
from sipha.store import Database
from sipha.transaction import Peer

FS1 = Peer("udp", "127.0.0.1", 5071)


class Node:
    """One sipha's core, store, replication ends, role and control, on the shared database."""

    def __init__(self, url: str, name: str) -> None:
        config = parse_config(CONFIG)
        self.wire = Wire()
        self.dispatcher, self.balancer = build_modules(config)
        self.core = build_core(config, reactor, self.wire, (self.dispatcher, self.balancer))
        self.database = Database(url, owner=name)
        self.store = DialogStore(self.database, reactor, REALTIME, live=self.core.dialogs)
        self.outbox = Outbox(self.core.dialogs)
        self.warm = WarmCopy(reactor)
        self.core.dialogs.observers = (self.store, self.outbox)
        self.ha = HighAvailability(reactor, self.core, self.balancer, store=self.store)
        self.ha.attach(self.warm, None)
        self.control = Control(
            config, self.database, self.dispatcher, self.balancer, self.core.dialogs, self.store
        )
        self.control.ha = self.ha

    def stream_to(self, other: Node, snapshot: bool = False) -> None:
        """What the link would carry from this node to ``other`` now."""
        lines = list(self.outbox.snapshot()) if snapshot else self.outbox.take()
        for line in lines:
            other.warm.receive(line)

    def load(self) -> int:
        """Units in use on every media server."""
        return sum(r["load"] for d in self.balancer.list() for r in d["resources"])

    async def rows(self) -> list[tuple[str, int, str]]:
        rows = await self.database.pool.runQuery(
            "SELECT callid, state, owner FROM dialog ORDER BY callid"
        )
        return [tuple(row) for row in rows]

    async def settle(self) -> None:
        """Let the takeover's table step and the writes it queued finish."""
        await self.ha.reconciled
        await self.store.drained()

    async def close(self) -> None:
        self.ha.set_role("passive", "the test is over")
        await self.ha.reconciled
        await self.store.stop()
        self.database.close()


def in_dialog(method: str, cseq: int) -> bytes:
    """The caller's ``method`` in answered call 1, along the Record-Route sipha wrote."""
    return invite(
        method=method,
        call_id="call-1",
        uri="sip:fs@127.0.0.1:5071",
        to_tag="uas-1",
        cseq=cseq,
        branch=f"z9hG4bK-{method.lower()}",
        routes=("<sip:127.0.0.1:5060;lr>",),
    )


def call(node: Node, n: int, answer: bool) -> tuple[Request, Peer]:
    """A call from the caller through ``node``: ringing, and answered if asked.

    Returns the INVITE as the media server got it, and that media server.
    """
    node.core.receive(invite(call_id=f"call-{n}", branch=f"z9hG4bK-c{n}"), CALLER, UDP_IN)
    sent = node.wire.take()[-1]
    forwarded = sent.message
    assert isinstance(forwarded, Request)
    node.core.receive(reply(forwarded, 180), sent.peer, UDP_IN)
    if answer:
        node.core.receive(reply(forwarded, 200), sent.peer, UDP_IN)
    node.wire.take()
    return forwarded, sent.peer


@pytest_twisted.async_yield_fixture
async def nodes(db_url: str) -> AsyncIterator[tuple[Node, Node]]:
    """lb1 active and streaming, lb2 passive, on one database; both closed at the end."""
    first, second = Node(db_url, "lb1"), Node(db_url, "lb2")
    await first.database.create_schema()
    first.ha.set_role("active", "test")
    second.ha.set_role("passive", "test")
    first.outbox.enabled = True
    try:
        yield first, second
    finally:
        await first.close()
        await second.close()


@pytest_twisted.ensureDeferred
async def test_passive_node_takes_over_from_the_table_alone(nodes):
    active, standby = nodes
    call(active, 1, answer=True)
    await active.store.drained()

    standby.ha.set_role("active", "the virtual IP is on this host")  # no stream at all
    await standby.settle()

    assert [d.call_id for d in standby.core.dialogs] == ["call-1"]
    assert standby.load() == 1
    takeover = standby.ha.status()["last_takeover"]
    assert (takeover["from_standby"], takeover["from_table"]) == (0, 1)
    assert await standby.rows() == [("call-1", 3, "lb2")]  # the row is the new owner's


@pytest_twisted.ensureDeferred
async def test_becoming_passive_drops_the_calls_without_a_word(nodes):
    active, _ = nodes
    call(active, 1, answer=True)
    call(active, 2, answer=False)
    await active.store.drained()
    assert active.load() == 2

    active.ha.set_role("passive", "the virtual IP left this host")

    assert len(active.core.dialogs) == 0
    assert active.load() == 0
    assert active.core.layer.servers == {}
    assert active.core.layer.clients == {}
    await active.store.drained()
    assert active.wire.take() == []  # no BYE, no CANCEL, no retransmission
    assert await active.rows() == [("call-1", 3, "lb1")]  # the row stays for the other node
    # Nothing arrives on the virtual IP any more; were it to, it is not ours.
    active.core.receive(invite(call_id="call-3"), CALLER, UDP_IN)
    assert active.wire.take() == []


@pytest_twisted.ensureDeferred
async def test_ringing_and_answered_calls_cross_a_takeover_from_the_stream(nodes):
    active, standby = nodes
    active.stream_to(standby, snapshot=True)
    call(active, 1, answer=True)
    ringing, _ = call(active, 2, answer=False)
    cancelled, media_server = call(active, 3, answer=False)
    active.stream_to(standby)
    active.store.suspend()  # it dies before its dialog row is written: the stream has it
    standby.ha.set_role("active", "the virtual IP is on this host")
    assert {d.call_id: d.state for d in standby.core.dialogs} == {
        "call-1": DialogState.CONFIRMED_NA,
        "call-2": DialogState.EARLY,
        "call-3": DialogState.EARLY,
    }
    assert standby.load() == 3

    # The media server's 200 for the ringing call reaches the caller, and the call is up.
    standby.core.receive(reply(ringing, 200), FS1, UDP_IN)
    (answer,) = standby.wire.take()
    assert isinstance(answer.message, Response)
    assert answer.message.status == 200
    assert answer.peer == CALLER

    # The caller CANCELs the third: it goes to the media server on the INVITE's branch.
    cancel = invite(method="CANCEL", call_id="call-3", branch="z9hG4bK-c3")
    standby.core.receive(cancel, CALLER, UDP_IN)
    (forwarded,) = standby.wire.take()
    assert forwarded.peer == media_server
    assert forwarded.message.top_via.branch == cancelled.top_via.branch
    standby.core.receive(reply(cancelled, 487), FS1, UDP_IN)
    (busy,) = standby.wire.take()
    assert (busy.peer, busy.message.status) == (CALLER, 487)
    ack = invite(method="ACK", call_id="call-3", branch="z9hG4bK-c3", to_tag="uas-1")
    standby.core.receive(ack, CALLER, UDP_IN)
    (acked,) = standby.wire.take()
    assert (acked.peer, acked.message.top_via.branch) == (
        media_server,
        cancelled.top_via.branch,
    )

    await standby.settle()
    assert standby.load() == 2
    assert await standby.rows() == [("call-1", 3, "lb2"), ("call-2", 3, "lb2")]
    assert standby.ha.status()["last_takeover"]["from_standby"] == 3


@pytest_twisted.ensureDeferred
async def test_a_call_that_ended_just_before_the_takeover_is_not_restored(nodes):
    active, standby = nodes
    active.stream_to(standby, snapshot=True)
    call(active, 1, answer=True)
    await active.store.drained()
    bye = in_dialog("BYE", cseq=2)
    active.store.suspend()  # it dies before the row's deletion is written
    active.core.receive(bye, CALLER, UDP_IN)
    active.stream_to(standby)
    assert await active.rows() == [("call-1", 3, "lb1")]

    standby.ha.set_role("active", "the virtual IP is on this host")
    await standby.settle()

    assert len(standby.core.dialogs) == 0
    assert standby.load() == 0
    assert await standby.rows() == []


@pytest.mark.parametrize("ended_kept", [ENDED_KEPT, 0], ids=["remembered", "forgotten"])
@pytest_twisted.ensureDeferred
async def test_a_call_taken_over_that_ends_before_the_table_is_read_stays_ended(
    nodes, ended_kept: int, monkeypatch: pytest.MonkeyPatch
):
    """Its BYE comes while the table is read (or while the database is away): the row, still
    there, must not bring the call back as a phantom holding a unit for 12 hours. Even once
    the call has dropped out of the calls remembered as over, its deletion, queued, wins."""
    monkeypatch.setattr("sipha.dialog.ENDED_KEPT", ended_kept)
    active, standby = nodes
    active.stream_to(standby, snapshot=True)
    call(active, 1, answer=True)
    await active.store.drained()
    active.stream_to(standby)
    active.store.suspend()

    standby.ha.set_role("active", "the virtual IP is on this host")  # the table is being read
    bye = in_dialog("BYE", cseq=2)
    standby.core.receive(bye, CALLER, UDP_IN)
    await standby.settle()

    assert len(standby.core.dialogs) == 0
    assert standby.load() == 0
    assert await standby.rows() == []


@pytest_twisted.ensureDeferred
async def test_a_node_never_changes_rows_another_node_took_over(nodes):
    first, second = nodes
    call(first, 1, answer=True)
    await first.store.drained()
    second.ha.set_role("active", "VRRP split: both nodes hold the virtual IP")
    await second.settle()
    assert await second.rows() == [("call-1", 3, "lb2")]

    # The first node still believes it carries the call: its ACK and its BYE
    # would write and delete the row, which is not its own any more.
    ack = in_dialog("ACK", cseq=1)
    first.core.receive(ack, CALLER, UDP_IN)
    await first.store.drained()
    assert await second.rows() == [("call-1", 3, "lb2")]
    bye = in_dialog("BYE", cseq=2)
    first.core.receive(bye, CALLER, UDP_IN)
    await first.store.drained()
    assert await second.rows() == [("call-1", 3, "lb2")]
