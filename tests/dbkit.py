"""Databases for tests: an SQLite file, or a MariaDB database created and dropped per test.

MariaDB is expected on 127.0.0.1:3306 as root without a password (``run-tests``
starts it); when it does not answer the test fails, it is never skipped.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest

MARIADB = {"host": "127.0.0.1", "port": 3306, "user": "root", "password": ""}


def mariadb_connect(database: str | None = None, **server: Any):  # type: ignore[no-untyped-def]
    """A connection to the shared MariaDB, or to the server ``server`` names (host, port...)."""
    import MySQLdb

    where = MARIADB | server
    try:
        return MySQLdb.connect(**where, **({"database": database} if database else {}))
    except MySQLdb.OperationalError as error:
        address = f"{where['host']}:{where['port']}"
        hint = " (run ./run-tests)" if address == "127.0.0.1:3306" else ""
        pytest.fail(f"MariaDB must answer on {address}{hint}: {error}")


def _url_connect(url: str):  # type: ignore[no-untyped-def]
    """A connection to the database of a ``mysql://`` URL, wherever its server listens.

    A test may run a MariaDB of its own on another port (the outage tests).
    """
    parts = urlsplit(url)
    server = {
        "host": parts.hostname or MARIADB["host"],
        "port": parts.port or MARIADB["port"],
        "user": unquote(parts.username or MARIADB["user"]),
        "password": unquote(parts.password or ""),
    }
    return mariadb_connect(parts.path.lstrip("/"), **server)


@contextmanager
def mariadb_database() -> Iterator[str]:
    """A fresh, empty database; yields its ``mysql://`` URL and drops it afterwards."""
    name = f"sipha_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    connection = mariadb_connect()
    connection.cursor().execute(f"CREATE DATABASE {name}")
    try:
        yield f"mysql://root@127.0.0.1:3306/{name}"
    finally:
        connection.cursor().execute(f"DROP DATABASE IF EXISTS {name}")
        connection.close()


def execute(url: str, *statements: str) -> None:
    """Run statements by hand, as an operator would with the mysql or sqlite3 client."""
    if url.startswith("sqlite:///"):
        import sqlite3

        with sqlite3.connect(url[len("sqlite:///") :]) as connection:
            for statement in statements:
                connection.execute(statement)
        return
    connection = _url_connect(url)
    cursor = connection.cursor()
    for statement in statements:
        cursor.execute(statement)
    connection.commit()
    connection.close()


def query(url: str, statement: str) -> list[tuple]:  # type: ignore[type-arg]
    """Read rows by hand, as an operator would with the mysql or sqlite3 client."""
    if url.startswith("sqlite:///"):
        import sqlite3

        connection = sqlite3.connect(url[len("sqlite:///") :])
        try:
            return connection.execute(statement).fetchall()
        finally:
            connection.close()
    connection = _url_connect(url)
    try:
        cursor = connection.cursor()
        cursor.execute(statement)
        return list(cursor.fetchall())
    finally:
        connection.close()
