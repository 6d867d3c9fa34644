"""A MySQL URL with several hosts, on real MariaDB servers: failover, failback, conflicts.

Two private servers of the test's own (tests/dbserver.py) stand for two
cluster nodes; they do not replicate, which is what lets the test tell by the
rows which server a write went to. A listening socket that never answers
stands for a host that hangs.
"""

from __future__ import annotations

import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.logger import LogLevel, globalLogPublisher

sys.path.insert(0, str(Path(__file__).parent / "e2e"))
sys.path.insert(0, str(Path(__file__).parent / "unit"))

from prometheus_client import generate_latest
from proxykit import CONFIG, make_proxy

import sipp
from dbkit import execute, mariadb_connect, mariadb_database
from dbserver import PrivateMariaDB
from sipha.config import parse_config
from sipha.control import Control
from sipha.dbcluster import CHECK_TIMEOUT, FAILBACK_CHECKS
from sipha.metrics import counters, registry
from sipha.store import Database
from test_store import a_dialog


async def until(condition: Callable[[], object], timeout: float) -> float:
    """Seconds until ``condition()`` held; fails the test past ``timeout``."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            pytest.fail(f"not within {timeout} s")
        await deferLater(reactor, 0.05)
    return time.monotonic() - started


@pytest.fixture
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[PrivateMariaDB]]:
    """Two MariaDB servers on loopback, each with an empty database ``sipha``."""
    started = []
    try:
        for name in ("a", "b"):
            directory = tmp_path_factory.mktemp(f"mariadb-{name}")
            server = PrivateMariaDB(directory, directory)
            started.append(server)
            server.install()
            server.start()
            server.create_database("sipha")
        yield started
    finally:
        for server in started:
            server.stop()


@pytest.fixture
def events() -> Iterator[list[dict]]:
    """Every log event while the test runs."""
    seen: list[dict] = []
    globalLogPublisher.addObserver(seen.append)
    yield seen
    globalLogPublisher.removeObserver(seen.append)


def rows_on(server: PrivateMariaDB) -> list[tuple]:
    return server.execute("SELECT hash_id, state FROM dialog", database="sipha")


@pytest_twisted.ensureDeferred
async def test_writes_move_to_the_next_host_when_the_first_dies_and_come_back(
    servers: list[PrivateMariaDB], events: list[dict]
) -> None:
    first, second = servers
    database = Database(f"mysql://root@127.0.0.1:{first.port},127.0.0.1:{second.port}/sipha")
    database.start()
    try:
        await until(lambda: database.connected, 5)
        await database.create_schema()
        await database.write_dialogs([a_dialog(3)])
        assert rows_on(first) == [(42, 3)]

        first.stop()
        with pytest.raises(database.pool.dbapi.OperationalError):
            await database.write_dialogs([a_dialog(4)])  # the connection to it is gone
        left_after = await until(lambda: database.status()["host"].endswith(str(second.port)), 2)
        await database.create_schema()
        await database.write_dialogs([a_dialog(4)])
        assert rows_on(second) == [(42, 4)]
        status = database.status()
        assert status["failovers"] == 1
        assert status["last_failover"]["reason"].startswith(f"127.0.0.1:{first.port}: ")
        assert [h["state"] for h in status["hosts"]] == ["down", "up"]
        assert left_after < 1.5

        first.start()
        await until(lambda: database.status()["host"].endswith(str(first.port)), 15)
        assert database.status()["reason"].endswith(f"passed {FAILBACK_CHECKS} checks in a row")
        await database.write_dialogs([a_dialog(3)])
        assert rows_on(first) == [(42, 3)]
    finally:
        database.close()
    # An outage is one line of sipha's, never a traceback.
    assert not [e for e in events if e.get("log_failure") is not None]
    assert not [e for e in events if e.get("log_level") in (LogLevel.error, LogLevel.critical)]


@pytest_twisted.ensureDeferred
async def test_a_host_that_stops_answering_is_left_within_a_check_timeout() -> None:
    with mariadb_database() as url, socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)  # connections complete in the kernel; no greeting ever comes
        port = silent.getsockname()[1]
        database = Database(url.replace("127.0.0.1:3306", f"127.0.0.1:{port},127.0.0.1:3306"))
        database.start()
        try:
            took = await until(lambda: database.status()["host"] == "127.0.0.1:3306", 5)
            assert took < CHECK_TIMEOUT + 1
            assert database.status()["hosts"][0]["state"] == "down"
            await database.create_schema()
            await database.write_dialogs([a_dialog(3)])
        finally:
            database.close()


@pytest_twisted.ensureDeferred
async def test_a_transaction_rolled_back_by_a_deadlock_is_run_again() -> None:
    """InnoDB's deadlock victim gets 1213, as a Galera write-set conflict does at COMMIT."""
    with mariadb_database() as url:
        execute(
            url,
            "CREATE TABLE t (k INT PRIMARY KEY, v INT NOT NULL) ENGINE=InnoDB",
            "INSERT INTO t VALUES " + ", ".join(f"({k}, 0)" for k in range(1, 40)),
        )
        other = mariadb_connect(url.rsplit("/", 1)[1])
        other.cursor().execute("UPDATE t SET v = v + 1 WHERE k >= 2")  # the heavier side
        attempts = []

        def interaction(cursor) -> None:
            attempts.append(1)
            cursor.execute("UPDATE t SET v = v + 1 WHERE k = 1")
            if len(attempts) == 1:
                # The other side now waits for row 1, and this one for row 2: a deadlock,
                # and InnoDB rolls back the lighter transaction, this one.
                threading.Thread(target=finish_other).start()
                time.sleep(0.3)
            cursor.execute("UPDATE t SET v = v + 1 WHERE k = 2")

        def finish_other() -> None:
            other.cursor().execute("UPDATE t SET v = v + 1 WHERE k = 1")
            other.commit()

        database = Database(url)
        try:
            await database.pool.runInteraction(interaction)
            assert len(attempts) == 2
            assert database.status()["conflicts_retried"] == 1
            rows = await database.pool.runQuery("SELECT k, v FROM t WHERE k <= 2 ORDER BY k")
            assert [tuple(row) for row in rows] == [(1, 2), (2, 2)]  # each side's, once
        finally:
            database.close()
            other.close()


@pytest_twisted.ensureDeferred
async def test_counters_and_metrics_name_the_host_in_use() -> None:
    with mariadb_database() as url:
        dead = sipp.free_tcp_port()  # nothing listens there
        database = Database(url.replace("127.0.0.1:3306", f"127.0.0.1:{dead},127.0.0.1:3306"))
        core, _, _ = make_proxy()
        helpers = core.helpers
        control = Control(
            parse_config(CONFIG), database, helpers.dispatcher, helpers.balancer, core.dialogs
        )
        control.core = core
        database.start()
        try:
            await until(lambda: database.status()["host"] == "127.0.0.1:3306", 3)
            reported = counters(control)["database"]
            assert (reported["host"], reported["failovers"]) == ("127.0.0.1:3306", 1)
            page = generate_latest(registry(control)).decode()
        finally:
            database.close()
    for line in (
        'sipha_database_host_in_use{host="127.0.0.1:3306"} 1.0',
        f'sipha_database_host_in_use{{host="127.0.0.1:{dead}"}} 0.0',
        f'sipha_database_host_state{{host="127.0.0.1:{dead}",state="down"}} 1.0',
        f'sipha_database_host_state{{host="127.0.0.1:{dead}",state="up"}} 0.0',
        'sipha_database_host_state{host="127.0.0.1:3306",state="up"} 1.0',
        "sipha_database_failovers_total 1.0",
        "sipha_database_conflicts_retried_total 0.0",
    ):
        assert line in page.splitlines(), page
