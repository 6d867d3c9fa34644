"""Drive sipp callers, sipp media servers and a sipha process for end-to-end tests.

sipha is only ever exercised from the outside here: real SIP on loopback,
sipp on both ends.  Every process is started by this module, bounded in time
and stopped by its own PID; every trace file goes to a per-test directory.
Nothing here imports sipha.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest

from sources import sipha_env

SIPP = shutil.which("sipp")
SCENARIOS = Path(__file__).parent.parent / "sipp"
REPO = Path(__file__).resolve().parents[2]

#: How many bytes of a log go into an assertion message.
LOG_TAIL = 8000

_STOP_GRACE = 5.0
_TRANSPORTS = {"u1": "udp", "un": "udp", "t1": "tcp", "tn": "tcp"}
_handed_out: set[int] = set()
_run_counter = itertools.count(1)


def in_namespace(namespace: str | None, command: Sequence[str]) -> list[str]:
    """``command`` run inside network namespace ``namespace`` (as is when None)."""
    return ["ip", "netns", "exec", namespace, *command] if namespace else list(command)


def sipp_binary() -> str:
    """Return the sipp executable; a missing sipp is a broken test setup, not a skip."""
    __tracebackhide__ = True
    if SIPP is None:
        pytest.fail("sipp (Debian package sip-tester) is required", pytrace=False)
    return SIPP


def scenario_path(scenario: str | Path) -> Path:
    """Resolve a scenario name relative to tests/sipp/ and make sure it exists."""
    __tracebackhide__ = True
    path = Path(scenario)
    if not path.is_absolute() and not path.exists():
        path = SCENARIOS / path
    if not path.is_file():
        pytest.fail(f"no sipp scenario {scenario!r} in {SCENARIOS}", pytrace=False)
    return path


# --------------------------------------------------------------------------- ports


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _bindable(host: str, port: int, kind: socket.SocketKind) -> bool:
    with socket.socket(_family(host), kind) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _pick_port(host: str, kinds: Iterable[socket.SocketKind]) -> int:
    # Below Linux's ephemeral range (32768-60999), so that no outgoing
    # connection of a test can take the port between picking and binding.
    kinds = tuple(kinds)
    for _ in range(500):
        port = random.randrange(20000, 32000)
        if port in _handed_out:
            continue
        if all(_bindable(host, port, kind) for kind in kinds):
            _handed_out.add(port)
            return port
    pytest.fail(f"no free port on {host}", pytrace=False)


def free_udp_port(host: str = "127.0.0.1") -> int:
    """A UDP port nobody uses and no other call of this module has handed out."""
    return _pick_port(host, [socket.SOCK_DGRAM])


def free_tcp_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody uses and no other call of this module has handed out."""
    return _pick_port(host, [socket.SOCK_STREAM])


def free_port(host: str = "127.0.0.1") -> int:
    """A port free for both UDP and TCP, as a SIP listener on both needs."""
    return _pick_port(host, [socket.SOCK_DGRAM, socket.SOCK_STREAM])


def split_hostport(address: str) -> tuple[str, int]:
    """Split ``host:port`` or ``[v6]:port``."""
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def join_hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# --------------------------------------------------------------------------- stats


def read_stats(path: Path) -> dict[str, str]:
    """Last complete row of a sipp ``-trace_stat`` CSV, keyed by column name.

    The file may be written to while we read it, so a trailing partial line
    is ignored; only the head and the last 64 KiB are read since long runs
    append a row per dump interval.
    """
    try:
        with path.open("rb") as stream:
            header = stream.readline()
            size = stream.seek(0, os.SEEK_END)
            stream.seek(max(len(header), size - 65536))
            tail = stream.read()
    except FileNotFoundError:
        return {}
    if not header.endswith(b"\n"):
        return {}
    names = header.decode("latin-1").rstrip("\r\n").split(";")
    for line in reversed(tail.decode("latin-1").split("\n")[:-1]):
        values = line.rstrip("\r").split(";")
        if len(values) == len(names):
            return {name: value for name, value in zip(names, values, strict=True) if name}
    return {}


def counter(stats: Mapping[str, str], name: str) -> int:
    try:
        return int(stats.get(name) or 0)
    except ValueError:
        return 0


def log_tail(path: Path, limit: int = LOG_TAIL) -> str:
    """The end of a log file, as much as fits in an assertion message."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return ""
    text = data[-limit:].decode("utf-8", errors="replace")
    return text if len(data) <= limit else "[...]\n" + text


@dataclass
class SippResult:
    """Outcome of one sipp run: exit status, headline counters and raw output."""

    returncode: int
    successful: int
    failed: int
    retransmissions: int
    stdout: str
    stderr: str
    #: Last row of the -trace_stat CSV, by column name (e.g. "ResponseTime2(C)").
    stats: dict[str, str]
    #: Contents of the -trace_err file (unexpected messages, timeouts, warnings).
    errors: str = ""
    #: Contents of the -trace_msg file, when it was asked for.
    messages: str = ""
    command: list[str] = field(default_factory=list)

    @classmethod
    def collect(
        cls,
        returncode: int,
        stdout: str,
        stderr: str,
        files: SippFiles,
        command: list[str],
    ) -> SippResult:
        stats = read_stats(files.stats)
        return cls(
            returncode=returncode,
            successful=counter(stats, "SuccessfulCall(C)"),
            failed=counter(stats, "FailedCall(C)"),
            retransmissions=counter(stats, "Retransmissions(C)"),
            stdout=stdout,
            stderr=stderr,
            stats=stats,
            errors=log_tail(files.errors, 1 << 20),
            messages=log_tail(files.messages, 1 << 24),
            command=command,
        )

    def response_time(self, number: int) -> float:
        """Mean ResponseTime``number`` (an ``rtd`` of the scenario) of all calls, in seconds."""
        value = self.stats.get(f"ResponseTime{number}(C)", "")
        try:
            hours, minutes, seconds, micros = (int(part) for part in value.split(":"))
        except ValueError:
            raise LookupError(f"no ResponseTime{number}(C) in sipp's statistics") from None
        return hours * 3600 + minutes * 60 + seconds + micros / 1e6

    def describe(self) -> str:
        """Everything needed to understand a failed run, for assertion messages."""
        parts = [
            f"$ {' '.join(self.command)}",
            f"exit status {self.returncode}: {self.successful} successful, "
            f"{self.failed} failed, {self.retransmissions} retransmissions",
        ]
        # The first screen shows where in the scenario the calls stopped.
        screen = self.stdout.partition("Test Terminated")[0]
        for title, text in (
            ("error log", self.errors),
            ("stderr", self.stderr),
            ("scenario screen", screen),
            ("messages", self.messages),
        ):
            if text.strip():
                parts.append(f"--- sipp {title} ---\n{text[-LOG_TAIL:]}")
        return "\n".join(parts)


@dataclass(frozen=True)
class SippFiles:
    stats: Path
    errors: Path
    messages: Path
    stdout: Path
    stderr: Path

    @classmethod
    def under(cls, directory: Path, stem: str) -> SippFiles:
        directory.mkdir(parents=True, exist_ok=True)
        return cls(
            stats=directory / f"{stem}.stat.csv",
            errors=directory / f"{stem}.errors.log",
            messages=directory / f"{stem}.messages.log",
            stdout=directory / f"{stem}.stdout.log",
            stderr=directory / f"{stem}.stderr.log",
        )

    def trace_args(self, *, stats_interval: float, trace_msg: bool) -> list[str]:
        # Explicit file names everywhere: sipp's defaults land next to the
        # scenario file, i.e. inside the repository.
        args = [
            "-trace_stat",
            "-stf",
            str(self.stats),
            "-fd",
            f"{max(1, round(stats_interval * 1000))}ms",
            "-trace_err",
            "-error_file",
            str(self.errors),
        ]
        if trace_msg:
            args += ["-trace_msg", "-message_file", str(self.messages)]
        return args


def _workdir(workdir: Path | None) -> Path:
    return workdir if workdir is not None else Path(tempfile.mkdtemp(prefix="sipha-e2e-"))


# --------------------------------------------------------------------------- callers


def run_caller(
    scenario: str | Path,
    target: str = "127.0.0.1:5060",
    *,
    calls: int = 1,
    rate: float = 10,
    limit: int | None = None,
    transport: str = "u1",
    hold_ms: int = 0,
    local_port: int | None = None,
    source: str | None = None,
    timeout: float = 60,
    recv_timeout: float = 10,
    service: str = "1000",
    check: bool = True,
    trace_msg: bool = False,
    workdir: Path | None = None,
    extra: Sequence[str] = (),
) -> SippResult:
    """Run a sipp caller scenario to completion against ``target``.

    ``calls`` calls (-m) are placed at ``rate`` calls per second with at most
    ``limit`` (-l) at once, from ``source`` (-i, the target's host when None),
    each holding ``hold_ms`` (-d) where the scenario
    pauses.  sipp gives up after ``timeout`` seconds overall and a call after
    ``recv_timeout`` seconds without an expected message, so a silent proxy
    fails the test instead of hanging it.  With ``check`` (the default) any
    failed call fails the test with sipp's error log in the message; pass
    ``check=False`` when failures are the point and inspect the result.
    """
    __tracebackhide__ = True
    caller = start_caller(
        scenario,
        target,
        calls=calls,
        rate=rate,
        limit=limit,
        transport=transport,
        hold_ms=hold_ms,
        local_port=local_port,
        source=source,
        timeout=timeout,
        recv_timeout=recv_timeout,
        service=service,
        trace_msg=trace_msg,
        workdir=workdir,
        extra=extra,
    )
    return caller.wait(check=check)


class Caller:
    """A sipp caller running in the background (see :func:`start_caller`)."""

    def __init__(
        self, command: list[str], files: SippFiles, directory: Path, calls: int, timeout: float
    ) -> None:
        self.command = command
        self.files = files
        self.calls = calls
        self.timeout = timeout
        self.name = Path(command[3]).name
        with files.stdout.open("wb") as out, files.stderr.open("wb") as err:
            self.process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=out, stderr=err, cwd=directory
            )
        self.result: SippResult | None = None

    @property
    def stats(self) -> dict[str, str]:
        """The latest statistics row sipp has dumped (every second)."""
        return read_stats(self.files.stats)

    def wait(self, *, check: bool = True) -> SippResult:
        """Wait for sipp to finish; with ``check`` any failed call fails the test."""
        __tracebackhide__ = True
        if self.result is not None:
            return self.result
        try:
            # sipp enforces -timeout itself; this only catches a wedged sipp.
            returncode = self.process.wait(timeout=self.timeout + 15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            returncode = self.process.returncode
            killed = True
        else:
            killed = False
        files = self.files
        self.result = result = SippResult.collect(
            returncode,
            log_tail(files.stdout, 1 << 20),
            log_tail(files.stderr),
            files,
            self.command,
        )
        if killed:
            pytest.fail(f"sipp ignored its own -timeout and was killed\n{result.describe()}")
        if check and (returncode != 0 or result.failed or result.successful < self.calls):
            pytest.fail(f"sipp caller {self.name} failed\n{result.describe()}")
        return result

    def stop(self) -> None:
        """Stop sipp by its PID if it still runs (teardown of a failed test)."""
        if self.process.poll() is None:
            terminate(self.process, _STOP_GRACE)


def start_caller(
    scenario: str | Path,
    target: str = "127.0.0.1:5060",
    *,
    calls: int = 1,
    rate: float = 10,
    limit: int | None = None,
    transport: str = "u1",
    hold_ms: int = 0,
    local_port: int | None = None,
    source: str | None = None,
    timeout: float = 60,
    recv_timeout: float = 10,
    service: str = "1000",
    trace_msg: bool = False,
    workdir: Path | None = None,
    extra: Sequence[str] = (),
    namespace: str | None = None,
) -> Caller:
    """Start a sipp caller as :func:`run_caller` does, without waiting for it.

    For tests that look at sipha while calls are up (held with ``hold_ms``);
    :meth:`Caller.wait` collects the result.
    """
    __tracebackhide__ = True
    binary = sipp_binary()
    path = scenario_path(scenario)
    host = source or split_hostport(target)[0]
    directory = _workdir(workdir)
    files = SippFiles.under(directory, f"caller-{next(_run_counter)}-{path.stem}")
    port = local_port if local_port is not None else free_port(host)
    command = [
        binary,
        target,
        "-sf",
        str(path),
        "-s",
        service,
        "-m",
        str(calls),
        "-r",
        f"{rate:g}",
        "-t",
        transport,
        "-i",
        host,
        "-p",
        str(port),
        "-d",
        str(hold_ms),
        "-nostdin",
        "-timeout",
        f"{math.ceil(timeout)}s",
        "-timeout_error",
        "-recv_timeout",
        f"{max(1, round(recv_timeout * 1000))}ms",
        *files.trace_args(stats_interval=1, trace_msg=trace_msg),
    ]
    if limit is not None:
        command += ["-l", str(limit)]
    command += list(extra)
    return Caller(in_namespace(namespace, command), files, directory, calls, timeout)


# --------------------------------------------------------------------------- media servers


def socket_inodes(pid: int) -> set[str]:
    inodes = set()
    with contextlib.suppress(OSError):
        for entry in os.scandir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(entry.path)
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
    return inodes


def is_bound(pid: int, port: int, protocol: str) -> bool:
    """Whether process ``pid`` holds a socket bound to ``port`` (TCP: listening).

    Reads /proc instead of probing the port, which could steal the port from
    sipp while it starts or leave stray calls in its statistics; the tables of
    the process's own network namespace, so it works inside one too.
    """
    inodes = socket_inodes(pid)
    for table in (f"/proc/{pid}/net/{protocol}", f"/proc/{pid}/net/{protocol}6"):
        with contextlib.suppress(OSError), open(table) as lines:
            next(lines, None)
            for line in lines:
                fields = line.split()
                if len(fields) < 10:
                    continue
                if int(fields[1].rpartition(":")[2], 16) != port or fields[9] not in inodes:
                    continue
                if protocol == "udp" or fields[3] == "0A":
                    return True
    return False


class MediaServer:
    """A sipp UAS scenario running in the background on ``ip:port``.

    Always started with -aa so that sipha's OPTIONS probes get a 200.  sipp
    counts each probe as an incoming call, so completed calls are read from
    SuccessfulCall(C), which sipp updates once a call's final timewait is
    over, and dumps every ``stats_interval`` seconds.
    """

    def __init__(
        self,
        port: int,
        scenario: str | Path = "uas.xml",
        transport: str = "u1",
        tmp_path: Path | None = None,
        *,
        ip: str = "127.0.0.1",
        stats_interval: float = 0.25,
        trace_msg: bool = False,
        extra: Sequence[str] = (),
        namespace: str | None = None,
    ) -> None:
        self.port = port
        self.namespace = namespace
        self.ip = ip
        self.scenario = scenario_path(scenario)
        self.transport = transport
        self.stats_interval = stats_interval
        self.trace_msg = trace_msg
        self.extra = tuple(extra)
        self.workdir = _workdir(tmp_path)
        self.files = SippFiles.under(self.workdir, f"ms-{port}-{self.scenario.stem}")
        self.process: subprocess.Popen[bytes] | None = None
        self.result: SippResult | None = None
        self.command: list[str] = []

    def __repr__(self) -> str:
        return f"<MediaServer {self.scenario.name} on {self.uri}>"

    @property
    def address(self) -> str:
        return join_hostport(self.ip, self.port)

    @property
    def uri(self) -> str:
        """The destination URI to give sipha for this server."""
        suffix = ";transport=tcp" if _TRANSPORTS.get(self.transport) == "tcp" else ""
        return f"sip:{self.address}{suffix}"

    @property
    def logs(self) -> list[tuple[str, Path]]:
        """Log files worth showing when a test fails."""
        name = f"media server {self.address} ({self.scenario.name})"
        return [
            (f"{name} error log", self.files.errors),
            (f"{name} stderr", self.files.stderr),
        ]

    def start(self, timeout: float = 5.0) -> MediaServer:
        """Start sipp and wait until it listens, so that no early INVITE is lost."""
        __tracebackhide__ = True
        if self.process is not None:
            raise RuntimeError(f"{self!r} already started")
        self.command = [
            sipp_binary(),
            "-sf",
            str(self.scenario),
            "-i",
            self.ip,
            "-p",
            str(self.port),
            "-t",
            self.transport,
            "-aa",
            "-nostdin",
            *self.files.trace_args(stats_interval=self.stats_interval, trace_msg=self.trace_msg),
            *self.extra,
        ]
        self.command = in_namespace(self.namespace, self.command)
        with self.files.stdout.open("wb") as out, self.files.stderr.open("wb") as err:
            self.process = subprocess.Popen(
                self.command,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                cwd=self.workdir,
            )
        protocol = _TRANSPORTS.get(self.transport, "udp")
        deadline = time.monotonic() + timeout
        while not is_bound(self.process.pid, self.port, protocol):
            if self.process.poll() is not None:
                result = self.stop()
                pytest.fail(f"{self!r} exited at start\n{result.describe()}")
            if time.monotonic() > deadline:
                result = self.stop()
                pytest.fail(f"{self!r} did not bind within {timeout}s\n{result.describe()}")
            time.sleep(0.02)
        return self

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def stats(self) -> dict[str, str]:
        """The latest statistics row sipp has dumped."""
        return read_stats(self.files.stats)

    @property
    def calls_completed(self) -> int:
        return counter(self.stats, "SuccessfulCall(C)")

    @property
    def calls_failed(self) -> int:
        return counter(self.stats, "FailedCall(C)")

    def wait_for_calls(self, count: int, timeout: float = 10.0) -> int:
        """Wait until ``count`` calls have completed; return how many did."""
        deadline = time.monotonic() + timeout
        while (done := self.calls_completed) < count and time.monotonic() < deadline:
            if not self.running:
                break
            time.sleep(0.05)
        return done

    @property
    def calls_received(self) -> int:
        """Every incoming call sipp created, probes and unexpected requests included."""
        return counter(self.stats, "IncomingCall(C)")

    def stop(self, timeout: float = _STOP_GRACE) -> SippResult:
        """Stop sipp by its PID (SIGTERM, then SIGKILL) and return its statistics.

        sipp writes a last statistics row when terminated; calls still in
        their timewait are not counted.
        """
        if self.result is not None:
            return self.result
        if self.process is None:
            raise RuntimeError(f"{self!r} was never started")
        returncode = terminate(self.process, timeout)
        self.result = SippResult.collect(
            returncode,
            log_tail(self.files.stdout, 1 << 20),
            log_tail(self.files.stderr),
            self.files,
            self.command,
        )
        return self.result

    def __enter__(self) -> MediaServer:
        return self.start() if self.process is None else self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self.process is not None:
            self.stop()


def wait_until(condition: Callable[[], object], timeout: float, interval: float = 0.02) -> bool:
    """Poll ``condition`` until it is true or ``timeout`` seconds have passed."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)
    return True


def wait_for_total(servers: Sequence[MediaServer], count: int, timeout: float = 10.0) -> int:
    """Wait until ``servers`` have completed ``count`` calls between them; return the sum."""
    deadline = time.monotonic() + timeout
    while (done := sum(server.calls_completed for server in servers)) < count:
        if time.monotonic() > deadline or not all(server.running for server in servers):
            break
        time.sleep(0.05)
    return done


def terminate(process: subprocess.Popen[bytes], grace: float) -> int:
    """SIGTERM ``process`` (only it, by PID), SIGKILL it after ``grace`` seconds."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGKILL)
            process.wait()
    return process.returncode


# --------------------------------------------------------------------------- DNS


class NameServer:
    """``twistd dns`` (twisted.names) on 127.0.0.1 serving the test's zone, ``sipha.test``.

    ``records`` are entries of a twisted.names Python zone, written as calls,
    e.g. ``'SRV("_sip._udp.pool.sipha.test", 10, 0, 5071, "fs1.sipha.test")'``.
    Records without a ``ttl`` live 60 s; a name the zone lacks is NXDOMAIN.
    """

    def __init__(self, directory: Path, port: int, records: Sequence[str]) -> None:
        self.port = port
        self.directory = directory
        self.zone = directory / f"zone-{port}.py"
        self.log_path = directory / f"dns-{port}.log"
        entries = [
            'SOA("sipha.test", mname="ns.sipha.test", rname="admin.sipha.test",'
            " minimum=30, expire=60, ttl=60)",
            *records,
        ]
        self.zone.write_text("zone = [\n" + "".join(f"    {entry},\n" for entry in entries) + "]\n")
        self.command = [
            *twistd_command(),
            "-n",
            "--pidfile=",
            "dns",
            "--interface",
            "127.0.0.1",
            "--port",
            str(port),
            "--pyzone",
            str(self.zone),
        ]
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        """``HOST:PORT``, as ``[dns] nameservers`` takes it."""
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 10.0) -> NameServer:
        """Start twistd and wait until it holds its UDP port."""
        __tracebackhide__ = True
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                self.command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.directory,
            )
        process = self.process
        bound = wait_until(
            lambda: is_bound(process.pid, self.port, "udp") or process.poll() is not None, timeout
        )
        if process.poll() is not None:
            pytest.fail(f"twistd dns exited at start\n{log_tail(self.log_path)}")
        if not bound:
            self.stop()
            pytest.fail(f"twistd dns did not bind within {timeout}s\n{log_tail(self.log_path)}")
        return self

    def stop(self) -> None:
        if self.process is not None:
            terminate(self.process, _STOP_GRACE)


# --------------------------------------------------------------------------- raw SIP


def send_options(
    address: str,
    *,
    transport: str = "udp",
    max_forwards: int = 70,
    timeout: float = 1.0,
    extra_headers: Sequence[str] = (),
) -> str | None:
    """Send one OPTIONS to ``address`` and return the first response, or None.

    Sent from an ephemeral port on the same loopback address, with a Via
    that names it, so any SIP element can answer.  Used to probe readiness
    without sipp.
    """
    host, port = split_hostport(address)
    family = _family(host)
    proto = "TCP" if transport == "tcp" else "UDP"
    kind = socket.SOCK_STREAM if transport == "tcp" else socket.SOCK_DGRAM
    with socket.socket(family, kind) as sock:
        sock.settimeout(timeout)
        sock.bind((host, 0))
        local = join_hostport(host, sock.getsockname()[1])
        tag = uuid.uuid4().hex[:10]
        lines = [
            f"OPTIONS sip:ping@{join_hostport(host, port)} SIP/2.0",
            f"Via: SIP/2.0/{proto} {local};branch=z9hG4bK{uuid.uuid4().hex}",
            f"From: <sip:probe@{local}>;tag={tag}",
            f"To: <sip:ping@{join_hostport(host, port)}>",
            f"Call-ID: {uuid.uuid4().hex}@{host}",
            "CSeq: 1 OPTIONS",
            f"Max-Forwards: {max_forwards}",
            *extra_headers,
            "Content-Length: 0",
        ]
        request = ("\r\n".join(lines) + "\r\n\r\n").encode()
        try:
            if kind == socket.SOCK_DGRAM:
                # Not connected: an answer from another source port still counts.
                sock.sendto(request, (host, port))
                data = sock.recv(65535)
            else:
                sock.connect((host, port))
                sock.sendall(request)
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = sock.recv(65535)
                    if not chunk:
                        break
                    data += chunk
        except OSError:
            return None
    text = data.decode("utf-8", errors="replace")
    return text if text.startswith("SIP/2.0 ") else None


# --------------------------------------------------------------------------- sipha


@dataclass(frozen=True)
class Destination:
    """One media server, written to the load balancer and the dispatcher.

    Clearing ``load_balancer`` or ``dispatcher`` leaves it out of that table,
    so a test can tell which of the two a request was routed by.
    """

    uri: str
    group_id: int = 1
    resources: str = "pstn=32"
    description: str = ""
    load_balancer: bool = True
    dispatcher: bool = True


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # JSON string escapes are valid TOML basic strings
    if isinstance(value, Sequence):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")


def sipha_config(
    directory: Path,
    listen: Sequence[str],
    destinations: Sequence[str | Destination],
    *,
    fr_timer: float = 2.0,
    sections: Mapping[str, Mapping[str, object]] | None = None,
) -> str:
    """TOML text of a sipha configuration for one test.

    ``sections`` adds or overrides keys of top-level tables, e.g.
    ``{"proxy": {"probe_interval": 1}}``.
    """
    tables: dict[str, dict[str, object]] = {
        "proxy": {"listen": list(listen)},
        "timers": {"fr_timer": fr_timer},
        "database": {"url": f"sqlite:///{directory / 'sipha.sqlite'}"},
        # Its own control socket: several sipha processes may run at once.
        "control": {"socket": str(directory / "control.sock")},
    }
    for name, values in (sections or {}).items():
        tables.setdefault(name, {}).update(values)
    lines = ["# Written by the sipha end-to-end harness for a single test."]
    for name, values in tables.items():
        lines += ["", f"[{name}]"]
        lines += [f"{key} = {_toml_value(value)}" for key, value in values.items()]
    for number, entry in enumerate(destinations, start=1):
        dst = entry if isinstance(entry, Destination) else Destination(entry)
        description = dst.description or f"FS{number}"
        if dst.load_balancer:
            lines += [
                "",
                "[[load_balancer.destination]]",
                f"group_id = {dst.group_id}",
                f"dst_uri = {_toml_value(dst.uri)}",
                f"resources = {_toml_value(dst.resources)}",
                f"description = {_toml_value(description)}",
            ]
        if dst.dispatcher:
            lines += [
                "",
                "[[dispatcher.destination]]",
                f"setid = {dst.group_id}",
                f"destination = {_toml_value(dst.uri)}",
                f"description = {_toml_value(description)}",
            ]
    text = "\n".join(lines) + "\n"
    tomllib.loads(text)  # a typo here should fail here, not inside sipha
    return text


def sipha_listen_port(listen: str) -> tuple[str, int]:
    """The transport and port of a ``proto:host:port`` listen entry."""
    proto, _, address = listen.partition(":")
    return proto, split_hostport(address)[1]


def twistd_command() -> list[str]:
    """twistd of the running interpreter, so that the tested sipha is this one."""
    twistd = Path(sys.executable).parent / "twistd"
    if twistd.exists():
        return [str(twistd)]
    return [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


class SiphaProxy:
    """A ``twistd -n sipha`` process with its own configuration and log."""

    def __init__(
        self,
        directory: Path,
        listen: Sequence[str] = ("udp:127.0.0.1:5060", "tcp:127.0.0.1:5060"),
        destinations: Sequence[str | Destination] = ("sip:127.0.0.1:5071",),
        *,
        fr_timer: float = 2.0,
        sections: Mapping[str, Mapping[str, object]] | None = None,
        namespace: str | None = None,
    ) -> None:
        self.directory = directory
        self.namespace = namespace
        self.listen = tuple(listen)
        self.config = directory / "sipha.toml"
        self.log_path = directory / "sipha.log"
        self.config.write_text(
            sipha_config(directory, listen, destinations, fr_timer=fr_timer, sections=sections)
        )
        self.command = in_namespace(
            namespace,
            [*twistd_command(), "-n", "--pidfile=", "sipha", "--config", str(self.config)],
        )
        self.process: subprocess.Popen[bytes] | None = None
        self.returncode: int | None = None

    def __repr__(self) -> str:
        return f"<SiphaProxy {' '.join(self.listen)}>"

    def _listener(self, transport: str | None = None) -> tuple[str, str]:
        for entry in self.listen:
            proto, _, address = entry.partition(":")
            if transport is None or proto == transport:
                return proto, address
        raise LookupError(f"{self!r} has no {transport} listener")

    @property
    def address(self) -> str:
        """``host:port`` to aim callers at: the first UDP listener, else the first one."""
        try:
            return self._listener("udp")[1]
        except LookupError:
            return self._listener()[1]

    def address_for(self, transport: str) -> str:
        """``host:port`` of the listener for ``transport`` ("udp" or "tcp")."""
        return self._listener(transport)[1]

    def log(self) -> str:
        return log_tail(self.log_path, 1 << 20)

    def start(self, ready_timeout: float = 10.0) -> SiphaProxy:
        """Start twistd and wait until sipha answers an OPTIONS with anything."""
        __tracebackhide__ = True
        env = sipha_env(PYTHONUNBUFFERED="1")
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                self.command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.directory,
                env=env,
            )
        try:
            proto, address = self._listener("udp")
        except LookupError:
            proto, address = self._listener()
        deadline = time.monotonic() + ready_timeout
        while True:
            if self.process.poll() is not None:
                self.stop()
                pytest.fail(
                    f"sipha exited at start with status {self.returncode}\n"
                    f"--- sipha log ---\n{self.log()[-LOG_TAIL:]}"
                )
            if self.namespace is not None:
                # Out of reach from here: ready once the last listener is bound.
                last = sipha_listen_port(self.listen[-1])
                if is_bound(self.process.pid, last[1], "udp" if last[0] == "udp" else "tcp"):
                    return self
            # Max-Forwards: 0 gets an immediate answer (483, or 200 if sipha
            # answers OPTIONS itself) without involving any media server.
            elif send_options(address, transport=proto, max_forwards=0, timeout=0.2):
                return self
            if time.monotonic() > deadline:
                self.stop()
                pytest.fail(
                    f"sipha did not answer OPTIONS on {proto}:{address} within "
                    f"{ready_timeout}s\n--- sipha log ---\n{self.log()[-LOG_TAIL:]}"
                )
            time.sleep(0.1)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, grace: float = _STOP_GRACE) -> int | None:
        """SIGTERM sipha by its PID, SIGKILL after ``grace`` seconds; return its status."""
        if self.process is not None and self.returncode is None:
            self.returncode = terminate(self.process, grace)
        return self.returncode

    def ctl_json(self, *args: str) -> Any:
        """``sipha-ctl --json ARGS`` against this sipha's control socket (the working tree's)."""
        env = sipha_env()
        socket_path = self.directory / "control.sock"
        done = subprocess.run(
            [sys.executable, "-m", "sipha.ctl", "--socket", str(socket_path), "--json", *args],
            capture_output=True,
            text=True,
            timeout=30,
            env=env,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    def kill(self) -> None:
        """SIGKILL sipha by its PID (a crash: nothing is written on the way out) and reap it."""
        if self.process is not None and self.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.process.pid, signal.SIGKILL)
            self.returncode = self.process.wait()
