"""The destination tables on a real MariaDB and on SQLite, through adbapi."""

from __future__ import annotations

import pytest_twisted

from dbkit import execute
from sipha.store import Database, DispatcherRow, LoadBalancerRow

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
