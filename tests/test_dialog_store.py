"""Dialog rows on a real MariaDB and on SQLite, written by the store in real time (db_mode 1)."""

from __future__ import annotations

from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.task import deferLater

from dbkit import execute, query
from sipha.dialog import Dialog, DialogState
from sipha.dialog_store import DialogStore
from sipha.store import Database

START = 1_700_000_000
COLUMNS = (
    "hash_entry, hash_id, callid, to_tag, state, caller_cseq, callee_cseq, caller_route_set,"
    " callee_contact, start_time, timeout, vars, profiles"
)


class Binding:
    """The load balancer's hold on the call: unit(s) on destination id 10."""

    destination_id = 10

    def release(self) -> None:
        pass


def call(n: int, **fields: object) -> Dialog:
    dialog = Dialog(
        7,
        n,
        f"call-{n}@a",
        "sip:alice@a",
        f"ft{n}",
        "sip:bob@b",
        to_tag=f"tt{n}",
        caller_cseq=1,
        callee_cseq=0,
        caller_contact="sip:alice@10.0.0.1",
        callee_contact="sip:bob@10.0.0.2",
        caller_route_set=["<sip:10.0.0.9;lr>"],
        caller_sock="udp:127.0.0.1:5060",
        callee_sock="udp:127.0.0.1:5060",
        state=DialogState.CONFIRMED_NA,
        start_time=START + 0.3,
        timeout_at=START + 43200.3,
    )
    for name, value in fields.items():
        setattr(dialog, name, value)
    return dialog


async def opened(url: str) -> Database:
    database = Database(url)
    await database.create_schema()
    return database


@pytest_twisted.ensureDeferred
async def test_rows_follow_the_calls_and_come_back_at_start_without_the_expired_ones(db_url):
    database = await opened(db_url)
    try:
        store = DialogStore(database, reactor)
        balanced = call(
            1,
            destination="sip:127.0.0.1:5071",
            lb_group=1,
            lb_resources=("pstn",),
            binding=Binding(),
        )
        plain = call(2)
        store.changed(balanced)
        store.changed(plain)
        await store.drained()
        assert query(db_url, f"SELECT {COLUMNS} FROM dialog ORDER BY hash_id") == [
            (
                7,
                1,
                "call-1@a",
                "tt1",
                3,
                "1",
                "0",
                "<sip:10.0.0.9;lr>",
                "sip:bob@10.0.0.2",
                START,
                START + 43201,
                "lb_group#1|lb_dst#sip:127.0.0.1:5071|",
                "lbXpstn#A|",
            ),
            (
                7,
                2,
                "call-2@a",
                "tt2",
                3,
                "1",
                "0",
                "<sip:10.0.0.9;lr>",
                "sip:bob@10.0.0.2",
                START,
                START + 43201,
                None,
                None,
            ),
        ]

        balanced.state = DialogState.CONFIRMED
        balanced.callee_cseq = 4
        store.changed(balanced)  # an upsert: the same row, updated
        store.deleted(plain)
        await store.drained()
        assert query(db_url, "SELECT hash_id, state, callee_cseq FROM dialog") == [(1, 4, "4")]
        assert store.stats["written"] == 4

        # Rows another run left behind: one expired, one ended, one still up.
        execute(
            db_url,
            *(
                "INSERT INTO dialog (hash_entry, hash_id, callid, from_uri, from_tag, to_uri, to_tag,"
                " caller_cseq, callee_cseq, caller_ping_cseq, callee_ping_cseq, caller_contact,"
                " callee_contact, caller_sock, callee_sock, state, start_time, timeout)"
                f" VALUES (9, {n}, 'old-{n}', 'sip:a@a', 'f', 'sip:b@b', 't', '1', '1', 0, 0,"
                f" 'sip:a@h', 'sip:b@h', 'udp:127.0.0.1:5060', 'udp:127.0.0.1:5060', {state},"
                f" {START}, {timeout})"
                for n, state, timeout in (
                    (1, 4, START + 100),
                    (2, 5, START + 9999),
                    (3, 4, START + 101),
                )
            ),
        )
        await store.stop()

        restarted = DialogStore(database, reactor)
        loaded = await restarted.load(now=START + 100)
        assert [(d.h_entry, d.h_id, d.state, d.timeout_at) for d in loaded] == [
            (7, 1, DialogState.CONFIRMED, START + 43201),
            (9, 3, DialogState.CONFIRMED, START + 101),
        ]
        back = loaded[0]
        assert (back.call_id, back.to_tag, back.callee_cseq, back.caller_route_set) == (
            "call-1@a",
            "tt1",
            4,
            ["<sip:10.0.0.9;lr>"],
        )
        assert (back.lb_group, back.destination, back.lb_resources) == (
            1,
            "sip:127.0.0.1:5071",
            ("pstn",),
        )
        assert query(db_url, "SELECT hash_entry, hash_id FROM dialog ORDER BY hash_id") == [
            (7, 1),
            (9, 3),
        ]

        restarted.deleted(loaded[1])  # a restored call ends: its row goes
        await restarted.drained()
        assert query(db_url, "SELECT hash_entry, hash_id FROM dialog") == [(7, 1)]
        await restarted.stop()
    finally:
        database.close()


@pytest_twisted.ensureDeferred
async def test_a_row_the_table_refuses_is_dropped_alone(db_url):
    database = await opened(db_url)
    try:
        store = DialogStore(database, reactor)
        for n in (1, 2, 3):
            contact = "sip:" + "x" * 300 + "@h" if n == 2 else "sip:bob@h"
            store.changed(call(n, callee_contact=contact))
        await store.drained()
        written = [row[0] for row in query(db_url, "SELECT hash_id FROM dialog ORDER BY hash_id")]
        # MariaDB's strict mode refuses a contact over 255 characters; SQLite takes it.
        assert written == ([1, 3] if db_url.startswith("mysql") else [1, 2, 3])
        assert store.stats["queued"] == store.stats["in_flight"] == 0
        await store.stop()
    finally:
        database.close()


@pytest.mark.parametrize("engine", ["sqlite", "mysql"])
@pytest_twisted.ensureDeferred
async def test_a_database_that_never_answers_holds_up_neither_the_store_nor_its_stop(
    engine, tmp_path: Path
):
    # A directory is no SQLite file; nothing listens on port 1.
    url = f"sqlite:///{tmp_path}" if engine == "sqlite" else "mysql://root@127.0.0.1:1/sipha"
    database = Database(url)
    try:
        store = DialogStore(database, reactor, retry_min=0.05, retry_max=0.1)
        store.changed(call(1))
        await deferLater(reactor, 0.5)
        stats = store.stats
        assert (stats["connected"], stats["queued"] + stats["in_flight"]) == (False, 1)
        assert stats["written"] == 0
        assert stats["errors"] >= 2
        await store.stop(timeout=0.5)
    finally:
        database.close()
