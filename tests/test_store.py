"""The destination tables on a real MariaDB and on SQLite, through adbapi."""

from __future__ import annotations

import pytest_twisted
from twisted.logger import LogLevel, formatEvent, globalLogPublisher

from dbkit import execute, mariadb_database, query
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


#: The dialog table as OpenSIPS 1.7 makes it: an AUTO_INCREMENT id, a plain index on the did.
OPENSIPS_DIALOG = {
    "mysql": "CREATE TABLE dialog (id INT(10) UNSIGNED AUTO_INCREMENT PRIMARY KEY NOT NULL, {columns},"
    " KEY hash_idx (hash_entry, hash_id)) ENGINE=InnoDB",
    "sqlite": "CREATE TABLE dialog (id INTEGER PRIMARY KEY AUTOINCREMENT, {columns});"
    " CREATE INDEX hash_idx ON dialog (hash_entry, hash_id)",
}


def opensips_statements(database: Database) -> list[str]:
    """The schema as OpenSIPS makes it: sipha's destination tables, OpenSIPS's dialog table."""
    (ours,) = [s for s in database.schema() if "TABLE IF NOT EXISTS dialog" in s]
    body = ours[ours.index("(") + 1 : ours.rindex("PRIMARY KEY")].rstrip().rstrip(",")
    columns = ", ".join(
        line.strip().rstrip(",")
        for line in body.splitlines()
        if "owner" not in line and line.strip()
    )
    dialog = OPENSIPS_DIALOG[database.engine].format(columns=columns).split("; ")
    return [s for s in database.schema() if s != ours] + dialog


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
async def test_sipha_dialog_table_is_keyed_by_the_did_without_auto_increment(db_url):
    """A multi-primary cluster wants a primary key on every table, and no counter per node."""
    database = Database(db_url)
    try:
        await database.create_schema()
        if database.engine == "mysql":
            rows = query(
                db_url,
                "SELECT TABLE_NAME, COLUMN_NAME, COLUMN_KEY, EXTRA FROM information_schema.COLUMNS"
                " WHERE TABLE_SCHEMA = DATABASE() AND (COLUMN_KEY = 'PRI' OR EXTRA <> '')"
                " ORDER BY TABLE_NAME, ORDINAL_POSITION",
            )
            assert rows == [
                ("dialog", "hash_entry", "PRI", ""),
                ("dialog", "hash_id", "PRI", ""),
                ("dispatcher", "id", "PRI", "auto_increment"),
                ("load_balancer", "id", "PRI", "auto_increment"),
            ]
        else:
            primary = query(db_url, "SELECT name, pk FROM pragma_table_info('dialog') WHERE pk > 0")
            assert primary == [("hash_entry", 1), ("hash_id", 2)]
    finally:
        database.close()


@pytest_twisted.ensureDeferred
async def test_an_opensips_dialog_id_is_widened_as_every_upsert_uses_one_up():
    with mariadb_database() as url:
        database = Database(url)
        try:
            execute(url, *opensips_statements(database))
            await database.create_schema()
            for state in (3, 4, 4):
                await database.write_dialogs([a_dialog(state)])
            assert query(
                url,
                "SELECT c.COLUMN_TYPE, t.AUTO_INCREMENT FROM information_schema.COLUMNS c"
                " JOIN information_schema.TABLES t USING (TABLE_SCHEMA, TABLE_NAME)"
                " WHERE c.TABLE_SCHEMA = DATABASE() AND c.TABLE_NAME = 'dialog'"
                " AND c.COLUMN_NAME = 'id'",
            ) == [("bigint(20) unsigned", 4)]
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
    errors = [
        formatEvent(e)
        for e in events
        if e.get("log_namespace") == "sipha.store" and e["log_level"] is LogLevel.error
    ]
    assert len(errors) == 1
    assert "no UNIQUE index on (hash_entry, hash_id)" in errors[0]
