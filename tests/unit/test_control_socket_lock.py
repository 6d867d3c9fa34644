"""Who may serve the control socket: the lock is the kernel's, so a killed sipha lets go at once.

Each sipha here is a child process running the control service alone on the
reactor (``SERVE``), so that it can be killed like a real one; the test talks
to it as ``sipha-ctl`` does. Every child is ended by its PID and reaped.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from sipha import ctl
from sources import sipha_env

#: A sipha reduced to its control service, on the socket given as argument.
SERVE = """
import sys
from unittest.mock import Mock

from twisted.internet import reactor

from sipha.config import parse_config
from sipha.control_server import ControlService

config = parse_config(f"[control]\\nsocket = {sys.argv[1]!r}\\n")
ControlService(Mock(config=config), reactor).startService()
print("serving", flush=True)
reactor.run()
"""


class Children:
    """Control services in child processes, ended by PID and reaped at the end."""

    def __init__(self) -> None:
        self.processes: list[subprocess.Popen[str]] = []

    def start(self, path: Path) -> subprocess.Popen[str]:
        env = sipha_env()
        process = subprocess.Popen(
            [sys.executable, "-c", SERVE, str(path)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.processes.append(process)
        return process

    def serving(self, path: Path) -> subprocess.Popen[str]:
        """A child that has started serving ``path``; one that exits fails the test."""
        process = self.start(path)
        assert process.stdout is not None
        line = process.stdout.readline()  # "serving", or "" once it exited
        if line != "serving\n":
            _, error = process.communicate(timeout=10)
            pytest.fail(f"the control service did not start:\n{error}")
        return process

    def end(self) -> None:
        for process in self.processes:
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
            for stream in (process.stdout, process.stderr):
                if stream is not None:
                    stream.close()


@pytest.fixture
def children() -> Iterator[Children]:
    started = Children()
    yield started
    started.end()


def assert_served(path: Path) -> None:
    """A control service answers on ``path``; any reply will do, an unknown command's."""
    with pytest.raises(ctl.ReplyError, match="unknown command 'ping'"):
        ctl.call(path, "ping", timeout=5)


def kill_and_leave_unreaped(process: subprocess.Popen[str]) -> None:
    """SIGKILL ``process`` and wait until it is dead, but a zombie: its PID stays taken."""
    os.kill(process.pid, signal.SIGKILL)
    exited = os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOWAIT)
    assert exited.si_code == os.CLD_KILLED


def is_zombie(process: subprocess.Popen[str]) -> bool:
    return os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None


def test_a_killed_sipha_not_yet_reaped_leaves_the_socket_to_the_next(
    children: Children, tmp_path: Path
) -> None:
    """The supervisor restarts sipha before it reaps the killed one: the new one must serve."""
    path = tmp_path / "control.sock"
    killed = children.serving(path)
    assert_served(path)
    kill_and_leave_unreaped(killed)
    assert path.exists()  # the socket file it could not remove

    children.serving(path)

    assert_served(path)
    assert is_zombie(killed)  # never reaped meanwhile


def test_a_second_sipha_on_a_served_socket_stops_with_one_line(
    children: Children, tmp_path: Path
) -> None:
    path = tmp_path / "control.sock"
    children.serving(path)

    second = children.start(path)
    _, error = second.communicate(timeout=30)

    assert second.returncode == 1
    assert error == f"sipha: another sipha serves the control socket {path}\n"
    assert_served(path)  # by the first one still


def test_a_socket_served_without_the_lock_is_left_alone(children: Children, tmp_path: Path) -> None:
    """Something answering on the socket without holding the lock is not a stale file."""
    path = tmp_path / "control.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as other:
        other.bind(os.fspath(path))
        other.listen()

        second = children.start(path)
        _, error = second.communicate(timeout=30)

        assert second.returncode == 1
        assert error == f"sipha: another process serves the control socket {path}\n"
        assert path.exists()
