"""A MariaDB server of a test's own, on loopback or inside a network namespace.

The database-outage test stops and starts it under load; the high-availability
lab runs it on the database host of its namespaces, where both load balancers
reach it over the lab's network. It is started and stopped by its PID, never
through a service manager. It borrows the end-to-end harness (tests/e2e/sipp.py),
which the e2e and ha conftest files put on ``sys.path``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

import sipp


def server_binary(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/local/sbin")
    if found is None:
        pytest.fail(f"{name} (Debian package mariadb-server) is required", pytrace=False)
    return found


class PrivateMariaDB:
    """A MariaDB server of the test's own, so that stopping it disturbs nothing else.

    Its datadir is under the test's directory, its socket file its own; root
    has no password. It listens on ``host:port`` (a free port on 127.0.0.1 by
    default). With ``namespace`` it runs inside that network namespace, out of
    the test's TCP reach, so the test talks to it through its socket file
    (a file, hence reachable from every namespace).
    """

    def __init__(
        self,
        directory: Path,
        socket_dir: Path,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        namespace: str | None = None,
    ) -> None:
        self.directory = directory
        self.datadir = directory / "data"
        self.socket = socket_dir / "mariadb.sock"
        self.error_log = directory / "mariadb.err"
        self.host = host
        self.port = port if port is not None else sipp.free_tcp_port(host)
        self.namespace = namespace
        self.process: subprocess.Popen[bytes] | None = None
        # Small InnoDB files: the default redo log alone is 96 MiB.
        self.options = [
            "--no-defaults",
            f"--datadir={self.datadir}",
            "--user=root",
            "--skip-name-resolve",
            "--innodb-buffer-pool-size=16M",
            "--innodb-log-file-size=4M",
        ]

    def install(self) -> None:
        done = subprocess.run(
            [
                server_binary("mariadb-install-db"),
                *self.options,
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
            ],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=60,
            check=False,
        )
        if done.returncode:
            output = (done.stdout + done.stderr).decode(errors="replace")
            pytest.fail(f"mariadb-install-db failed ({done.returncode})\n{output[-4000:]}")

    def connect(self, database: str | None = None, timeout: int = 2):  # type: ignore[no-untyped-def]
        import MySQLdb

        if self.namespace is None:
            where: dict[str, object] = {"host": self.host, "port": self.port}
        else:
            where = {"unix_socket": str(self.socket)}
        return MySQLdb.connect(
            **where,
            user="root",
            password="",
            connect_timeout=timeout,
            **({"database": database} if database else {}),
        )

    def command(self) -> list[str]:
        """mariadbd and its options (in the namespace, if any)."""
        prefix = [] if self.namespace is None else ["ip", "netns", "exec", self.namespace]
        return [
            *prefix,
            server_binary("mariadbd"),
            *self.options,
            f"--port={self.port}",
            f"--socket={self.socket}",
            f"--bind-address={self.host}",
            f"--pid-file={self.directory / 'mariadbd.pid'}",
            f"--log-error={self.error_log}",
        ]

    def start(self, timeout: float = 30.0) -> None:
        """Start mariadbd and wait until it takes connections."""
        __tracebackhide__ = True
        with open(self.directory / "mariadbd.out", "ab") as out:
            self.process = subprocess.Popen(
                self.command(), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(Exception):
                self.connect().close()
                return
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"mariadbd did not start on {self.host}:{self.port}\n{self.log()}")
            time.sleep(0.05)

    def stop(self, grace: float = 30.0) -> None:
        """SIGTERM mariadbd by its PID (a clean shutdown), SIGKILL after ``grace`` seconds."""
        if self.process is not None:
            sipp.terminate(self.process, grace)
            self.process = None

    def kill(self) -> None:
        """SIGKILL mariadbd by its PID (a crash) and reap it."""
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait()
            self.process = None

    def log(self) -> str:
        return sipp.log_tail(self.error_log, 4000)

    def execute(self, *statements: str, database: str | None = None) -> list[tuple[object, ...]]:
        """Run ``statements`` in one connection (autocommit); return the last one's rows."""
        connection = self.connect(database)
        try:
            connection.autocommit(True)
            cursor = connection.cursor()
            for statement in statements:
                cursor.execute(statement)
            return list(cursor.fetchall())
        finally:
            connection.close()

    def create_database(self, name: str) -> str:
        """An empty database; returns its URL for sipha."""
        self.execute(f"CREATE DATABASE {name}")
        return f"mysql://root@{sipp.join_hostport(self.host, self.port)}/{name}"

    def allow_root_from(self, hosts: str) -> None:
        """Let root in without a password from ``hosts`` (a MariaDB host pattern such as '10.0.0.%')."""
        self.execute(
            f"CREATE USER IF NOT EXISTS 'root'@'{hosts}'",
            f"GRANT ALL PRIVILEGES ON *.* TO 'root'@'{hosts}'",
        )
