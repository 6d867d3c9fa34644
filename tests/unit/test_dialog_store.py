"""The dialog store's write queue: coalescing, order, outages, the bound, the db_modes.

The database is a small fake that holds each transaction until the test ends
it, which is what makes failures injectable; the clock is a ``Clock``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.logger import capturedLogs, formatEvent

from sipha.dialog import Dialog, DialogState
from sipha.dialog_store import (
    DialogStore,
    decode_pairs,
    dialog_from_row,
    dialog_row,
    encode_pairs,
)
from sipha.store import DialogRow


class OutageError(Exception):
    """What the fake raises for "database unreachable"."""


class RefusedError(Exception):
    """What the fake raises for a row the table will never take."""


class FakeDatabase:
    """Each transaction waits in ``pending`` until :meth:`finish`; ``rows`` is the table."""

    def __init__(self) -> None:
        self.pending: list[tuple[list[DialogRow | tuple[int, int]] | None, Deferred[None]]] = []
        self.rows: dict[tuple[int, int], DialogRow] = {}
        self.refuse: set[tuple[int, int]] = set()
        self.claims = 0
        self.down = False  # reads fail as in an outage

    def write_dialogs(self, writes: list[DialogRow | tuple[int, int]]) -> Deferred[None]:
        self.pending.append((list(writes), Deferred()))
        return self.pending[-1][1]

    def ping(self) -> Deferred[None]:
        self.pending.append((None, Deferred()))
        return self.pending[-1][1]

    def unreachable(self, error: BaseException) -> bool:
        return isinstance(error, OutageError)

    def claim_dialogs(self) -> Deferred[dict[str, int]]:
        self.claims += 1
        if self.down:
            return fail(OutageError("can't connect to server"))
        return succeed({})

    async def dialog_rows(self) -> list[DialogRow]:
        return list(self.rows.values())

    def finish(
        self, outage: bool = False, index: int = 0
    ) -> list[DialogRow | tuple[int, int]] | None:
        """End the oldest transaction (or the one at ``index``): committed, or failed as in an
        outage; returns its writes."""
        writes, done = self.pending.pop(index)
        if outage:
            done.errback(OutageError("server has gone away"))
        elif writes and any(isinstance(w, DialogRow) and w.key in self.refuse for w in writes):
            done.errback(RefusedError("data too long"))
        else:
            for write in writes or ():
                if isinstance(write, DialogRow):
                    self.rows[write.key] = write
                else:
                    self.rows.pop(write, None)
            done.callback(None)
        return writes


def call(n: int, state: DialogState = DialogState.CONFIRMED_NA) -> Dialog:
    return Dialog(
        1,
        n,
        f"call-{n}",
        "sip:a@x",
        f"ft{n}",
        "sip:b@y",
        to_tag=f"tt{n}",
        state=state,
        start_time=100.0,
        timeout_at=200.0,
    )


class Live:
    """A re-iterable view of a dict's dialogs, as ``Dialogs`` is."""

    def __init__(self, dialogs: dict[int, Dialog]) -> None:
        self.dialogs = dialogs

    def __iter__(self) -> Iterator[Dialog]:
        return iter(list(self.dialogs.values()))


def described(writes: list[DialogRow | tuple[int, int]] | None) -> list[str]:
    """``+n`` for the upsert of dialog n (``+n/4`` in state 4), ``-n`` for its deletion."""
    out = []
    for write in writes or ():
        if isinstance(write, DialogRow):
            out.append(f"+{write.hash_id}" + ("/4" if write.state == 4 else ""))
        else:
            out.append(f"-{write[1]}")
    return out


def make(mode: int = 1, **options) -> tuple[DialogStore, FakeDatabase, Clock]:
    database, clock = FakeDatabase(), Clock()
    return DialogStore(database, clock, mode, **options), database, clock


@contextmanager
def logged() -> Iterator[list[str]]:
    lines: list[str] = []
    with capturedLogs() as events:
        yield lines
    lines.extend(formatEvent(e) for e in events if e.get("log_namespace") == "sipha.dialog_store")


# -- mode 1 -------------------------------------------------------------------------------


def test_changes_in_one_turn_coalesce_and_are_written_in_first_change_order():
    store, database, clock = make()
    one, two = call(1), call(2)
    store.changed(one)
    store.changed(two)
    one.state = DialogState.CONFIRMED
    store.changed(one)  # the ACK: replaces its pending row, keeps its place
    assert database.pending == []  # nothing sent inside the signalling code path
    clock.advance(0)
    assert described(database.finish()) == ["+1/4", "+2"]
    assert store.stats["written"] == 2
    assert store.stats["queued"] == 0


def test_one_write_in_flight_and_what_changes_meanwhile_follows_it():
    store, database, clock = make()
    one, two = call(1), call(2)
    store.changed(one)
    clock.advance(0)
    store.changed(two)
    one.state = DialogState.CONFIRMED
    store.changed(one)
    clock.advance(0)
    assert len(database.pending) == 1
    assert store.stats == {
        "queued": 2,
        "written": 0,
        "errors": 0,
        "overflows": 0,
        "in_flight": 1,
        "connected": False,  # not until the database first answers
        "out_of_sync": False,
        "replayed": 0,
        "last_outage": None,
    }
    assert described(database.finish()) == ["+1"]
    assert store.stats["connected"] is True
    clock.advance(0)
    assert described(database.finish()) == ["+2", "+1/4"]


def test_a_write_gathers_the_changes_of_its_window_unless_a_batch_is_full():
    store, database, clock = make(gather=0.02, batch=3)
    one, two = call(1), call(2)
    store.changed(one)
    clock.advance(0.01)
    assert database.pending == []  # waiting for company
    store.changed(two)
    one.state = DialogState.CONFIRMED
    store.changed(one)
    clock.advance(0.01)
    assert described(database.finish()) == ["+1/4", "+2"]
    short = call(3)
    store.changed(short)
    store.deleted(short)  # a call over within the window is never written
    clock.advance(0.02)
    assert database.pending == []
    for n in (4, 5, 6):
        store.changed(call(n))
    clock.advance(0)  # a full batch does not wait
    assert described(database.finish()) == ["+4", "+5", "+6"]


def test_a_dialog_ended_before_its_write_costs_nothing_but_a_written_row_is_deleted():
    store, database, clock = make()
    short, long = call(1), call(2)
    store.changed(short)
    store.changed(long)
    store.deleted(short)
    clock.advance(0)
    assert described(database.finish()) == ["+2"]
    store.changed(long)
    store.deleted(long)  # its row exists: the update is replaced by the deletion
    clock.advance(0)
    assert described(database.finish()) == ["-2"]
    assert database.rows == {}


def test_a_deletion_while_the_row_is_being_written_is_written():
    store, database, clock = make()
    one = call(1)
    store.changed(one)
    clock.advance(0)
    store.deleted(one)
    database.finish()
    clock.advance(0)
    assert described(database.finish()) == ["-1"]
    assert database.rows == {}


def test_early_and_never_answered_dialogs_are_never_deleted_from_the_table():
    store, database, clock = make()
    store.deleted(call(7, DialogState.DELETED))
    clock.advance(0)
    assert database.pending == []


# -- outages ------------------------------------------------------------------------------


def test_an_outage_keeps_the_batch_at_the_head_retries_with_backoff_and_logs_twice():
    store, database, clock = make()
    one, two = call(1), call(2)
    with logged() as lines:
        store.changed(one)
        clock.advance(0)
        store.changed(two)
        one.state = DialogState.CONFIRMED
        store.changed(one)  # newer than the batch in flight
        delays = []
        for _ in range(6):
            database.finish(outage=True)
            assert not database.pending
            delay = clock.getDelayedCalls()[0].getTime() - clock.seconds()
            delays.append(delay)
            clock.advance(delay)
        assert delays == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0]
        assert store.stats["connected"] is False
        assert store.stats["errors"] == 6
        # The failed "+1" gave way to the newer "+1/4", which kept its place.
        assert described(database.finish()) == ["+2", "+1/4"]
        assert store.stats["connected"] is True
        clock.advance(0)
    assert [line for line in lines if "database" in line] == [
        "database unreachable: server has gone away; 2 dialog writes queued",
        "database back, dialog queue drained: 2 writes replayed after an outage of 17.5 s",
    ]
    assert sorted(database.rows) == [(1, 1), (1, 2)]
    assert store.stats["last_outage"] == {
        "began": 0.0,
        "seconds": 17.5,
        "queued": 2,
        "replayed": 2,
    }
    assert store.stats["replayed"] == 2


def test_after_recovery_the_backoff_starts_again_from_the_minimum():
    store, database, clock = make()
    store.changed(call(1))
    clock.advance(0)
    database.finish(outage=True)
    clock.advance(0.5)
    database.finish(outage=True)
    clock.advance(1.0)
    database.finish()
    store.changed(call(2))
    clock.advance(0)
    database.finish(outage=True)
    assert clock.getDelayedCalls()[0].getTime() - clock.seconds() == 0.5


def test_a_waiting_write_goes_at_once_when_the_database_answers_again():
    """Told that another host took over (or the server is back), the store skips its backoff."""
    store, database, clock = make()
    store.changed(call(1))
    clock.advance(0)
    for delay in (0.5, 1.0, 2.0):
        database.finish(outage=True)
        clock.advance(delay)
    database.finish(outage=True)  # the next try is 4 s away
    store.retry_now()
    clock.advance(0)
    assert described(database.finish()) == ["+1"]
    store.retry_now()  # nothing waits: nothing happens
    assert clock.getDelayedCalls() == []


def test_the_store_is_connected_only_once_the_database_answered():
    """A sipha started while the database is down says so from the start."""
    store, database, _ = make()
    assert store.stats["connected"] is False
    database.down = True
    with logged() as lines:
        loading = Deferred.fromCoroutine(store.load(now=500))
        assert loading.called
        loading.addErrback(lambda failure: failure.trap(OutageError))
        assert store.stats["connected"] is False
        database.down = False
        Deferred.fromCoroutine(store.load(now=500))
    assert store.stats["connected"] is True
    assert lines == [
        "database unreachable: can't connect to server; 0 dialog writes queued",
        "0 dialogs read from the database, 0 rows deleted",
        "database back, dialog queue drained: 0 writes replayed after an outage of 0.0 s",
    ]


def test_out_of_sync_every_live_dialog_is_pending():
    """The table may lack any of them until the resynchronisation: a reload must not end them."""
    store, _, _ = make(max_queue=1)
    store.changed(call(1))
    store.changed(call(2))  # past the bound
    assert store.stats["out_of_sync"] is True
    assert store.pending(call(3))


def test_the_end_of_a_call_taken_over_deletes_the_row_the_other_node_wrote():
    store, database, clock = make()
    taken, ringing = call(1), call(2, DialogState.EARLY)
    store.taken_over([taken, ringing])
    store.deleted(ringing)  # no row: nothing to delete
    store.deleted(taken)
    clock.advance(0)
    assert described(database.finish()) == ["-1"]


@pytest.mark.parametrize("deletion", ["queued", "in flight", "written meanwhile"])
def test_the_row_of_a_call_that_ended_here_is_not_read_back(deletion):
    """Its deletion was on its way when the table was read: the row is stale."""
    store, database, clock = make()
    ended, up, expired = call(1), call(2), call(3)
    for dialog in (ended, up, expired):
        database.rows[(1, dialog.h_id)] = dialog_row(dialog)
    database.rows[(1, 3)] = DialogRow(**{**_fields(database.rows[(1, 3)]), "timeout": 120})
    store.taken_over([ended, up])
    store.deleted(ended)
    if deletion != "queued":
        clock.advance(0)  # the deletion is sent
    result: list[list[Dialog]] = []
    Deferred.fromCoroutine(store.load(now=150)).addCallback(result.append)
    if deletion == "written meanwhile":
        assert described(database.finish()) == ["-1"]
    assert described(database.pending[-1][0]) == ["-3"]  # the load deletes the expired row
    database.finish(index=-1)
    [loaded] = result
    assert [d.h_id for d in loaded] == [2]
    clock.advance(0)
    while database.pending:  # whatever was sent, the stale row goes (again, once it is ours)
        database.finish()
        clock.advance(0)
    assert sorted(database.rows) == [(1, 2)]


def test_a_row_the_table_refuses_is_found_and_dropped_alone():
    store, database, clock = make()
    database.refuse.add((1, 2))
    with logged() as lines:
        for n in (1, 2, 3):
            store.changed(call(n))
        clock.advance(0)
        database.finish()  # the batch fails as a whole
        for _ in range(3):
            clock.advance(0)
            database.finish()
        clock.advance(0)
    assert database.pending == []
    assert sorted(database.rows) == [(1, 1), (1, 3)]
    assert lines == ["dialog 1:2 not written, the database refused it: data too long"]
    store.changed(call(4))
    clock.advance(0)
    assert described(database.finish()) == ["+4"]


# -- the bound ----------------------------------------------------------------------------


def test_past_the_bound_the_store_logs_once_stops_queuing_and_resynchronises_when_back():
    store, database, clock = make(max_queue=3)
    live = {n: call(n) for n in (1, 2, 3)}
    store.live = Live(live)
    for dialog in live.values():
        store.changed(dialog)
    clock.advance(0)
    database.finish()  # rows 1, 2 and 3 are in the table
    database.rows[(9, 9)] = dialog_row(Dialog(9, 9, "other-node", "a", "b", "c"))
    with logged() as lines:
        del live[1]
        store.deleted(call(1))
        clock.advance(0)
        database.finish(outage=True)  # the database goes away with "-1" in flight
        for n in (4, 5, 6, 7):
            live[n] = call(n)
            store.changed(live[n])
        assert store.stats["overflows"] == 1
        assert store.stats["queued"] == 0
        assert store.stats["out_of_sync"] is True
        del live[2]
        store.deleted(call(2))  # not queued: the resynchronisation will see it gone
        live[3].state = DialogState.CONFIRMED
        store.changed(live[3])
        clock.advance(0.5)
        assert database.finish(outage=True) is None  # a probe, not a write
        clock.advance(1.0)
        database.finish()  # the database answers
        clock.advance(0)
        writes = described(database.finish())
    assert sorted(writes) == sorted(["-1", "-2", "+3/4", "+4", "+5", "+6", "+7"])
    assert sorted(database.rows) == [(1, 3), (1, 4), (1, 5), (1, 6), (1, 7), (9, 9)]
    assert store.stats["out_of_sync"] is False
    assert len([line for line in lines if "queue full" in line]) == 1
    assert "3 dialogs, database unreachable for 0 s" in lines[1]
    assert lines[-1] == (
        "database back, dialog queue drained: 7 writes replayed after an outage of 1.5 s"
    )
    store.changed(live[4])  # queuing again
    clock.advance(0)
    assert described(database.finish()) == ["+4"]


def test_a_change_to_a_queued_dialog_never_counts_against_the_bound():
    store, database, clock = make(max_queue=2)
    one, two = call(1), call(2)
    for _ in range(5):
        store.changed(one)
        store.changed(two)
    assert store.stats["overflows"] == 0
    clock.advance(0)
    assert described(database.finish()) == ["+1", "+2"]


# -- the other modes ----------------------------------------------------------------------


@pytest.mark.parametrize(("mode", "follows"), [(0, False), (1, True), (2, True), (3, False)])
def test_only_modes_1_and_2_need_to_hear_of_each_change(mode, follows):
    """The service leaves the store out of the dialogs' observers otherwise."""
    store, _, _ = make(mode)
    assert store.follows_changes is follows


def test_mode_0_writes_nothing_and_loads_nothing():
    store, database, clock = make(0)
    store.changed(call(1))
    store.deleted(call(1))
    clock.advance(100)
    assert database.pending == []
    assert store.stop().called


def test_mode_2_coalesces_a_period_of_changes_and_deletes_at_once():
    store, database, clock = make(2, update_period=60)
    one, two, three = call(1), call(2), call(3)
    store.changed(one)
    clock.advance(30)
    store.changed(two)
    store.changed(three)
    one.state = DialogState.CONFIRMED
    store.changed(one)
    store.deleted(three)  # never written: nothing to do
    clock.advance(29)
    assert database.pending == []
    clock.advance(1)
    assert described(database.finish()) == ["+1/4", "+2"]
    store.changed(one)
    store.deleted(two)  # the row exists: deleted now, not in a minute
    clock.advance(0)
    assert described(database.finish()) == ["-2"]
    clock.advance(59)
    assert database.pending == []
    clock.advance(1)
    assert described(database.finish()) == ["+1/4"]


def test_mode_2_retries_what_was_due_without_waiting_for_the_next_period():
    store, database, clock = make(2, update_period=60)
    store.changed(call(1))
    clock.advance(60)
    database.finish(outage=True)
    store.changed(call(2))  # after the period: waits for the next one
    clock.advance(0.5)
    assert described(database.finish()) == ["+1"]
    clock.advance(0)
    assert database.pending == []
    clock.advance(59.5)
    assert described(database.finish()) == ["+2"]


def test_mode_3_writes_nothing_until_stop_then_every_live_dialog():
    store, database, clock = make(3)
    live = {n: call(n) for n in (1, 2)}
    store.live = Live(live)
    store.changed(live[1])
    store.changed(live[2])
    store.deleted(call(3))
    clock.advance(100)
    assert database.pending == []
    stopped = store.stop()
    clock.advance(0)
    assert described(database.finish()) == ["+1", "+2"]
    assert stopped.called


# -- stop, load ---------------------------------------------------------------------------


def test_stop_drains_the_queue_and_then_ignores_changes():
    store, database, clock = make(2)
    store.changed(call(1))
    stopped = store.stop()
    clock.advance(0)
    assert not stopped.called
    database.finish()
    assert stopped.called
    store.changed(call(2))
    clock.advance(100)
    assert database.pending == []
    assert clock.getDelayedCalls() == []


def test_stop_never_waits_past_its_timeout_for_a_database_that_is_away():
    store, database, clock = make()
    store.changed(call(1))
    clock.advance(0)
    database.finish(outage=True)
    clock.advance(0.5)
    database.finish(outage=True)  # the next retry is a second away
    with logged() as lines:
        stopped = store.stop(timeout=2)
        clock.advance(0)  # one last try, at once
        database.finish(outage=True)
        clock.advance(1)
        assert not stopped.called
        clock.advance(1)  # the last try hangs (a closed pool never answers)
        assert stopped.called
    assert lines == ["stopping: 1 dialog writes not saved"]
    assert clock.getDelayedCalls() == []


@pytest.mark.parametrize("mode", [1, 3])
def test_load_drops_expired_and_deleted_rows_and_marks_the_rest_as_written(mode):
    store, database, clock = make(mode)
    for n, state, timeout in ((1, 4, 1000), (2, 4, 500), (3, 5, 1000), (4, 3, 501)):
        row = dialog_row(call(n, DialogState(state)))
        database.rows[row.key] = DialogRow(**{**_fields(row), "timeout": timeout})
    result: list[list[Dialog]] = []
    Deferred.fromCoroutine(store.load(now=500)).addCallback(result.append)
    gone = ["-2", "-3"] if mode == 1 else ["-2", "-3", "-1", "-4"]  # mode 3 empties the table
    assert described(database.finish()) == gone
    [loaded] = result
    assert database.claims == 1  # every row is taken over before it is read
    assert [(d.h_id, d.state) for d in loaded] == [
        (1, DialogState.CONFIRMED),
        (4, DialogState.CONFIRMED_NA),
    ]
    store.deleted(loaded[0])  # a restored call that ends has its row deleted (mode 1)
    clock.advance(0)
    assert [described(writes) for writes, _ in database.pending] == ([["-1"]] if mode == 1 else [])


def _fields(row: DialogRow) -> dict[str, object]:
    return {name: getattr(row, name) for name in DialogRow.__dataclass_fields__}


# -- the row ------------------------------------------------------------------------------


def test_the_row_carries_the_load_balancer_binding_and_reads_back():
    class Binding:
        destination_id = 26

        def release(self) -> None:
            pass

    dialog = Dialog(
        5,
        77,
        "cid@h",
        "sip:alice@a",
        "ft",
        "sip:bob@b",
        to_tag="tt",
        caller_cseq=3,
        callee_cseq=9,
        caller_contact="sip:alice@10.0.0.1",
        callee_contact="sip:bob@10.0.0.2",
        caller_route_set=["<sip:p1;lr>", '"x, y" <sip:p2;lr>'],
        callee_route_set=[],
        caller_sock="udp:127.0.0.1:5060",
        callee_sock="udp:127.0.0.1:5060",
        state=DialogState.CONFIRMED,
        start_time=1000.4,
        timeout_at=44200.4,
        destination="sip:127.0.0.1:5071;transport=tcp",
        lb_group=1,
        lb_resources=("pstn", "transc"),
        binding=Binding(),
    )
    row = dialog_row(dialog)
    assert (row.caller_cseq, row.callee_cseq, row.start_time, row.timeout) == (
        "3",
        "9",
        1000,
        44201,
    )
    assert row.caller_route_set == '<sip:p1;lr>,"x, y" <sip:p2;lr>'
    assert row.profiles == "lbXpstn#1A|lbXtransc#1A|"
    assert row.vars == "lb_group#1|lb_dst#sip:127.0.0.1:5071;transport=tcp|"
    back = dialog_from_row(row)
    for name in (
        "h_entry",
        "h_id",
        "call_id",
        "to_tag",
        "caller_cseq",
        "caller_route_set",
        "callee_route_set",
        "state",
        "destination",
        "lb_group",
        "lb_resources",
    ):
        assert getattr(back, name) == getattr(dialog, name), name
    assert (back.start_time, back.timeout_at, back.binding) == (1000, 44201, None)


def test_a_call_not_placed_by_the_balancer_has_no_binding_in_its_row():
    row = dialog_row(call(1))
    assert (row.vars, row.profiles, row.to_tag) == (None, None, "tt1")
    back = dialog_from_row(row)
    assert (back.lb_group, back.destination, back.lb_resources) == (None, None, ())


@pytest.mark.parametrize("value", ["plain", "a|b#c\\d", "", "#|\\"])
def test_pairs_escape_opensips_separators(value):
    text = encode_pairs([("n#1", value), ("x", "y")])
    assert decode_pairs(text) == [("n#1", value), ("x", "y")]
