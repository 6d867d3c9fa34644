"""The destination tables on a real MariaDB and on SQLite, through adbapi."""

from __future__ import annotations

import pytest_twisted
from twisted.logger import formatEvent, globalLogPublisher

from dbkit import execute
from sipha.store import DIALOG_COLUMNS, Database, DialogRow, DispatcherRow, LoadBalancerRow

# The reference deployment's statements, verbatim (opensipsctl's addgw for the dispatcher).
REFERENCE_ROWS = (
    "insert into load_balancer (group_id, dst_uri, resources, description) "
    "values (1,'sip:127.0.0.1:5071', 'pstn=32', 'FS1')",
    "insert into load_balancer (group_id, dst_uri, resources, description) "
    "values (1,'sip:127.0.0.1:5072', 'pstn=32', 'FS2')",
    "INSERT INTO dispatcher (setid, destination, flags, description) "
    "VALUES (1, 'sip:127.0.0.1:5071', 0, 'FS1')",
    "INSERT INTO dispatcher (setid, destination, flags, description) "
    "VALUES (1, 'sip:127.0.0.1:5072', 1, 'FS2')",
)


@pytest_twisted.ensureDeferred
async def test_schema_is_created_on_an_empty_database_and_reference_rows_read_back(db_url):
    database = Database(db_url)
    try:
        await database.create_schema()
        await database.create_schema()  # a second start finds the tables there
        assert await database.load_balancer_rows() == []
        execute(db_url, *REFERENCE_ROWS)
        assert await database.load_balancer_rows() == [
            LoadBalancerRow(1, 1, "sip:127.0.0.1:5071", "pstn=32", 2, "FS1"),
            LoadBalancerRow(2, 1, "sip:127.0.0.1:5072", "pstn=32", 2, "FS2"),
        ]
        assert await database.dispatcher_rows() == [
            DispatcherRow(1, 1, "sip:127.0.0.1:5071", 0, 1, 0, "", "FS1"),
            DispatcherRow(2, 1, "sip:127.0.0.1:5072", 1, 1, 0, "", "FS2"),
        ]
    finally:
        database.close()


def test_shipped_schema_splits_into_statements():
    for url in ("sqlite:///:memory:", "mysql://root@127.0.0.1/x"):
        database = Database(url)
        statements = database.schema()
        assert [s.split("(")[0].split()[-1] for s in statements if "TABLE" in s] == [
            "dispatcher",
            "load_balancer",
            "dialog",
        ]
        database.close()


def opensips_statements(database: Database) -> list[str]:
    """The schema as OpenSIPS makes it: its dialog index on (hash_entry, hash_id) is not UNIQUE."""
    return [
        s.replace("UNIQUE KEY hash_idx", "KEY hash_idx").replace(
            "CREATE UNIQUE INDEX", "CREATE INDEX"
        )
        for s in database.schema()
    ]


def a_dialog(state: int) -> DialogRow:
    return DialogRow(
        hash_entry=7,
        hash_id=42,
        callid="c@x",
        from_uri="sip:a@x",
        from_tag="f",
        to_uri="sip:b@y",
        to_tag="t",
        caller_cseq="1",
        callee_cseq="0",
        caller_route_set=None,
        callee_route_set=None,
        caller_contact="sip:a@x",
        callee_contact="sip:b@y",
        caller_sock="udp:127.0.0.1:5060",
        callee_sock="udp:127.0.0.1:5060",
        state=state,
        start_time=1,
        timeout=2,
    )


def insert(state: int) -> str:
    """A dialog row written by hand, as the mysql or sqlite3 client would."""
    row = a_dialog(state)
    values = [getattr(row, column) for column in DIALOG_COLUMNS]
    text = ", ".join(
        "NULL" if v is None else f"'{v}'" if isinstance(v, str) else str(v) for v in values
    )
    return f"INSERT INTO dialog ({', '.join(DIALOG_COLUMNS)}) VALUES ({text})"


@pytest_twisted.ensureDeferred
async def test_an_opensips_dialog_table_gets_the_unique_key_sipha_writes_by(db_url):
    database = Database(db_url)
    try:
        execute(db_url, *opensips_statements(database))
        await database.create_schema()
        await database.write_dialogs([a_dialog(3)])
        await database.write_dialogs([a_dialog(4)])  # an update, not a second row
        assert [(row.key, row.state) for row in await database.dialog_rows()] == [((7, 42), 4)]
    finally:
        database.close()


@pytest_twisted.ensureDeferred
async def test_a_dialog_table_that_cannot_be_keyed_is_reported_and_the_rest_still_loads(db_url):
    database = Database(db_url)
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    try:
        # Two rows with one id, as a table without the key may come to hold.
        execute(db_url, *opensips_statements(database), *REFERENCE_ROWS, *map(insert, [3, 4]))
        await database.create_schema()
        assert len(await database.load_balancer_rows()) == 2
    finally:
        globalLogPublisher.removeObserver(events.append)
        database.close()
    errors = [formatEvent(e) for e in events if e.get("log_namespace") == "sipha.store"]
    assert len(errors) == 1
    assert "no UNIQUE index on (hash_entry, hash_id)" in errors[0]
