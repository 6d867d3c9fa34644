"""Processes, sockets and counters the benchmark reads from outside.

Everything here observes processes the way an operator would: /proc for CPU
time and RSS, ``ss`` and /proc/net for UDP sockets, sipp's own CSV files for
call counts and response times. Every process is started here, recorded,
and stopped by its own PID only.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

HOST = "127.0.0.1"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

#: Every process the benchmark started and has not yet stopped.
_started: list[Process] = []


class Process:
    """A child process with its output in a log file, stopped only by its own PID."""

    def __init__(self, name: str, argv: Sequence[str], log: Path, *, cwd: Path,
                 env: dict[str, str] | None = None) -> None:  # fmt: skip
        self.name = name
        self.argv = list(argv)
        self.log = log
        self.cwd = cwd
        self.env = env
        self.popen: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.popen is not None, f"{self.name} was never started"
        return self.popen.pid

    def start(self) -> Process:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("wb") as out:
            self.popen = subprocess.Popen(
                self.argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                cwd=self.cwd, env=self.env,
            )  # fmt: skip
        _started.append(self)
        return self

    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def tree(self) -> list[int]:
        """Its PID and its descendants' (Kamailio forks its workers)."""
        if not self.running():
            return []
        return [self.pid, *descendants(self.pid)]

    def stop(self, grace: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL after ``grace`` seconds; the children it leaves get the same."""
        if self.popen is None:
            return None
        children = descendants(self.pid) if self.running() else []
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid, signal.SIGKILL)
                self.popen.wait()
        deadline = time.monotonic() + grace
        while any(_alive(pid) for pid in children) and time.monotonic() < deadline:
            time.sleep(0.05)
        for pid in children:
            if _alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        if self in _started:
            _started.remove(self)
        return self.popen.returncode

    def tail(self, limit: int = 2000) -> str:
        try:
            return self.log.read_bytes()[-limit:].decode("utf-8", "replace")
        except FileNotFoundError:
            return ""


def stop_all() -> None:
    """Stop whatever the benchmark started and is still running, newest first."""
    for process in reversed(list(_started)):
        process.stop(grace=5.0)


def _alive(pid: int) -> bool:
    try:
        state = _stat_fields(pid)[0]
    except OSError:
        return False
    return state != "Z"


# --------------------------------------------------------------------------- /proc


def _stat_fields(pid: int) -> list[str]:
    """Fields of /proc/PID/stat after the command name (which may hold spaces)."""
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rindex(")") + 2 :].split()


def descendants(pid: int) -> list[int]:
    """PIDs of all living descendants of ``pid``."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                children.setdefault(int(_stat_fields(int(entry.name))[1]), []).append(
                    int(entry.name)
                )
    found: list[int] = []
    pending = [pid]
    while pending:
        for child in children.get(pending.pop(), []):
            found.append(child)
            pending.append(child)
    return found


def cpu_seconds(pids: Iterable[int]) -> float:
    """User plus system CPU time of ``pids`` (all their threads), in seconds."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = _stat_fields(pid)
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / CLOCK_TICKS


def rss_bytes(pid: int) -> int:
    """Resident set size from /proc/PID/status (VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise LookupError(f"no VmRSS for {pid}")


def pids_named(*names: str) -> list[int]:
    """PIDs whose command name is one of ``names`` (to read a database server's CPU)."""
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if Path(entry.path, "comm").read_text().strip() in names:
                    found.append(int(entry.name))
    return found


def cpu_by_pid() -> dict[int, float]:
    """CPU seconds of every process on the machine, to tell how busy the rest of it was."""
    times = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                fields = _stat_fields(int(entry.name))
                times[int(entry.name)] = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    return times


def udp_receive_errors() -> int:
    """Datagrams the kernel dropped for a full receive buffer, all sockets (/proc/net/snmp)."""
    lines = [line.split() for line in Path("/proc/net/snmp").read_text().splitlines()
             if line.startswith("Udp:")]  # fmt: skip
    header, values = lines[0], lines[1]
    return int(values[header.index("RcvbufErrors")])


def udp_socket(port: int) -> tuple[int, int] | None:
    """(receive buffer, drops) of the UDP socket bound to ``port``, read with ``ss -m``."""
    try:
        out = subprocess.run(
            ["ss", "-u", "-a", "-m", "-n", f"sport = :{port}"],
            capture_output=True, text=True, timeout=10, check=False,
        ).stdout  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(r"skmem:\(([^)]*)\)", out)
    if not match:
        return None
    fields = dict(re.findall(r"([a-z]+)(\d+)", match.group(1)))
    return int(fields.get("rb", 0)), int(fields.get("d", 0))


def udp_bound(port: int) -> bool:
    """Whether some socket is bound to UDP ``port`` on the loopback address."""
    wanted = f"0100007F:{port:04X}"
    with contextlib.suppress(OSError):
        for line in Path("/proc/net/udp").read_text().splitlines()[1:]:
            if line.split()[1] == wanted:
                return True
    return False


def port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def sip_answers(port: int, timeout: float = 0.3) -> str | None:
    """Status line of the answer to an OPTIONS with Max-Forwards 0, or None.

    Any SIP element answers that at once (483, or 200 when it answers OPTIONS
    itself) without involving a media server, so it tells when a proxy is up.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.bind((HOST, 0))
        local = f"{HOST}:{sock.getsockname()[1]}"
        request = "\r\n".join([
            f"OPTIONS sip:ping@{HOST}:{port} SIP/2.0",
            f"Via: SIP/2.0/UDP {local};branch=z9hG4bK{uuid.uuid4().hex}",
            f"From: <sip:bench@{local}>;tag={uuid.uuid4().hex[:8]}",
            f"To: <sip:ping@{HOST}:{port}>",
            f"Call-ID: {uuid.uuid4().hex}@{HOST}",
            "CSeq: 1 OPTIONS",
            "Max-Forwards: 0",
            "Content-Length: 0",
            "", "",
        ]).encode()  # fmt: skip
        try:
            sock.sendto(request, (HOST, port))
            data = sock.recv(65535)
        except OSError:
            return None
    line = data.split(b"\r\n", 1)[0].decode("latin-1")
    return line if line.startswith("SIP/2.0 ") else None


def wait_for(condition: Callable[[], object], timeout: float, what: str,
             process: Process | None = None, interval: float = 0.05) -> None:  # fmt: skip
    """Poll ``condition()`` until true; fail with ``what`` (and the process's log) otherwise."""
    deadline = time.monotonic() + timeout
    while not condition():
        if process is not None and not process.running():
            raise BenchError(f"{process.name} exited while waiting for {what}:\n{process.tail()}")
        if time.monotonic() > deadline:
            tail = f":\n{process.tail()}" if process is not None else ""
            raise BenchError(f"timed out after {timeout:g}s waiting for {what}{tail}")
        time.sleep(interval)


class BenchError(RuntimeError):
    """The benchmark cannot go on; the message says why."""


# --------------------------------------------------------------------------- sipp files


def read_stat_rows(path: Path) -> list[dict[str, str]]:
    """Every complete row of a sipp ``-trace_stat`` CSV, keyed by column name."""
    try:
        text = path.read_bytes().decode("latin-1")
    except FileNotFoundError:
        return []
    lines = text.split("\n")
    if len(lines) < 2:
        return []
    names = lines[0].rstrip("\r").split(";")
    rows = []
    for line in lines[1:-1]:  # the last one may be half written
        values = line.rstrip("\r").split(";")
        if len(values) == len(names):
            rows.append(dict(zip(names, values, strict=True)))
    return rows


def counter(row: dict[str, str], name: str) -> int:
    try:
        return int(row.get(name) or 0)
    except ValueError:
        return 0


def stamp(value: str) -> float:
    """Seconds since the epoch from a sipp time column (``date<TAB>time<TAB>epoch``)."""
    return float(value.split("\t")[-1])


def read_rtt(path: Path) -> dict[int, list[float]]:
    """Response times in ms from a sipp ``-trace_rtt`` file, by rtd number."""
    times: dict[int, list[float]] = {}
    with contextlib.suppress(FileNotFoundError), path.open() as lines:
        next(lines, None)
        for line in lines:
            parts = line.strip().split(";")
            if len(parts) == 3:
                with contextlib.suppress(ValueError):
                    # Whole ms: sipp's clock has no finer grain (some lines end in .001).
                    times.setdefault(int(parts[2]), []).append(float(round(float(parts[1]))))
    return times


def percentile(values: Sequence[float], fraction: float) -> float | None:
    """Nearest-rank percentile; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(fraction * len(ordered))))
    return ordered[rank - 1]


@dataclass
class SippCounters:
    """Cumulative counters of a long-running sipp (a media server)."""

    successful: int = 0
    failed: int = 0
    retransmissions: int = 0

    @classmethod
    def of(cls, rows: list[dict[str, str]]) -> SippCounters:
        if not rows:
            return cls()
        row = rows[-1]
        return cls(counter(row, "SuccessfulCall(C)"), counter(row, "FailedCall(C)"),
                   counter(row, "Retransmissions(C)"))  # fmt: skip

    def __sub__(self, other: SippCounters) -> SippCounters:
        return SippCounters(self.successful - other.successful, self.failed - other.failed,
                            self.retransmissions - other.retransmissions)  # fmt: skip
