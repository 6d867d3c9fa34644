"""Databases for tests: an SQLite file, or a MariaDB database created and dropped per test.

MariaDB is expected on 127.0.0.1:3306 as root without a password (``run-tests``
starts it); when it does not answer the test fails, it is never skipped.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

MARIADB = {"host": "127.0.0.1", "port": 3306, "user": "root", "password": ""}


def mariadb_connect(database: str | None = None):  # type: ignore[no-untyped-def]
    import MySQLdb

    try:
        return MySQLdb.connect(**MARIADB, **({"database": database} if database else {}))
    except MySQLdb.OperationalError as error:
        pytest.fail(f"MariaDB must answer on 127.0.0.1:3306 (run ./run-tests): {error}")


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
    connection = mariadb_connect(url.rsplit("/", 1)[1])
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
    connection = mariadb_connect(url.rsplit("/", 1)[1])
    try:
        cursor = connection.cursor()
        cursor.execute(statement)
        return list(cursor.fetchall())
    finally:
        connection.close()
