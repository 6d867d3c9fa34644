"""The replication stream's two ends, sans-IO: what the active node sends, what the passive keeps."""

from __future__ import annotations

import json

import pytest
from proxykit import CALLER, UDP_IN, Sent, invite, make_proxy, reply
from twisted.internet.task import Clock

from sipha.dialog import DialogState
from sipha.proxy import ProxyCore
from sipha.replication import TOMBSTONE_SECONDS, TRUST_SECONDS, Outbox, ReplicationError, WarmCopy
from sipha.store import DIALOG_COLUMNS


def streaming_core() -> tuple[ProxyCore, Outbox, list[int]]:
    core, _, _ = make_proxy()
    wakes: list[int] = []
    outbox = Outbox(core.dialogs, wake=lambda: wakes.append(1))
    outbox.enabled = True
    core.dialogs.observers = (outbox,)
    return core, outbox, wakes


def ring(core: ProxyCore, n: int, answer: bool = False) -> Sent:
    """A call through ``core``, ringing or answered; returns its INVITE as forwarded."""
    core.receive(invite(call_id=f"call-{n}", branch=f"z9hG4bK-{n}"), CALLER, UDP_IN)
    sent = core.send.sent[-1]  # type: ignore[attr-defined]
    core.receive(reply(sent.message, 180), sent.peer, UDP_IN)
    if answer:
        core.receive(reply(sent.message, 200), sent.peer, UDP_IN)
    return sent


def kinds(lines: list[bytes]) -> list[str]:
    return [json.loads(line)[0] for line in lines]


def row(line: bytes) -> dict[str, object]:
    """A dialog line's columns by name."""
    return dict(zip(DIALOG_COLUMNS, json.loads(line)[2:], strict=True))


def test_changes_are_coalesced_to_each_dialogs_latest_state():
    core, outbox, wakes = streaming_core()
    ring(core, 1, answer=True)
    ring(core, 2)
    lines = outbox.take()
    assert wakes == [1]  # one flush scheduled for all of it
    assert kinds(lines) == ["d", "d"]
    states = {row(line)["callid"]: row(line)["state"] for line in lines}
    assert states == {"call-1": DialogState.CONFIRMED_NA, "call-2": DialogState.EARLY}
    assert outbox.take() == []


def test_a_ringing_call_carries_its_branch_and_an_ended_one_is_a_deletion():
    core, outbox, _ = streaming_core()
    sent = ring(core, 1)
    (line,) = outbox.take()
    assert json.loads(line)[1] == sent.message.top_via.branch
    core.receive(reply(sent.message, 486), sent.peer, UDP_IN)
    assert kinds(outbox.take()) == ["x"]


def test_nothing_is_kept_while_disabled():
    core, outbox, wakes = streaming_core()
    outbox.enabled = False
    ring(core, 1)
    assert (outbox.take(), wakes) == ([], [])


def test_a_snapshot_replaces_the_copy_and_skips_calls_that_ended_meanwhile():
    warm = WarmCopy(Clock())
    earlier, earlier_outbox, _ = streaming_core()
    ring(earlier, 9, answer=True)
    for line in earlier_outbox.snapshot():
        warm.receive(line)
    core, outbox, _ = streaming_core()
    for n in (1, 2, 3):
        ring(core, n, answer=True)
    snapshot = outbox.snapshot()
    lines = [next(snapshot)]
    ended = next(d for d in core.dialogs if d.call_id == "call-2")
    core.dialogs.end(ended, "bye")  # while the snapshot is being written
    lines.extend(snapshot)
    assert kinds(lines) == ["sync", "d", "d", "synced"]
    for line in lines:
        warm.receive(line)
    assert sorted(r.callid for r, _ in warm.rows.values()) == ["call-1", "call-3"]
    assert warm.trusted()


def test_a_snapshot_cut_by_a_lost_link_leaves_the_old_copy():
    core, outbox, _ = streaming_core()
    ring(core, 1, answer=True)
    warm = WarmCopy(Clock())
    for line in outbox.snapshot():
        warm.receive(line)
    ring(core, 2)
    lines = list(outbox.snapshot())
    for line in lines[:-1]:  # no "synced"
        warm.receive(line)
    warm.link_lost()
    assert [r.callid for r, _ in warm.rows.values()] == ["call-1"]


def test_takeover_from_a_current_copy_and_not_from_a_stale_one():
    core, outbox, _ = streaming_core()
    ring(core, 1, answer=True)
    ring(core, 2)
    clock = Clock()
    warm = WarmCopy(clock)
    for line in outbox.snapshot():
        warm.receive(line)
    dialogs, ended = warm.take()
    assert sorted((d.call_id, d.state) for d in dialogs) == [
        ("call-1", DialogState.CONFIRMED_NA),
        ("call-2", DialogState.EARLY),
    ]
    assert next(d for d in dialogs if d.call_id == "call-2").branch
    assert ended == set()
    assert warm.rows == {}  # it was taken

    for line in outbox.snapshot():
        warm.receive(line)
    clock.advance(TRUST_SECONDS + 1)  # the active node went silent long ago
    assert not warm.trusted()
    assert warm.take() == ([], set())


def test_endings_are_remembered_for_a_while():
    clock = Clock()
    warm = WarmCopy(clock)
    assert warm.receive(b'["x",1,2]') == ("x", (1, 2))
    clock.advance(TOMBSTONE_SECONDS / 2)
    warm.receive(b'["x",3,4]')
    clock.advance(TOMBSTONE_SECONDS / 2 + 1)
    warm.receive(b'["x",5,6]')
    assert list(warm.tombstones) == [(3, 4), (5, 6)]


def test_hello_tells_the_peers_role():
    warm = WarmCopy(Clock())
    assert warm.receive(b'["hello","active"]') == ("hello", "active")
    assert warm.receive(b'["sync"]') is None
    assert warm.peer_role == "active"


@pytest.mark.parametrize(
    "line",
    [b"not json", b"[]", b'["d",null,1]', b'["hello","boss"]', b'["synced"]', b"{}", b'["x",1]'],
)
def test_a_line_that_is_not_the_protocol_is_refused(line):
    with pytest.raises(ReplicationError):
        WarmCopy(Clock()).receive(line)
