#!/usr/bin/env python3
"""Calls per second, latency and memory of sipha beside Kamailio, on one machine.

    python3 bench/run.py [--quick] [--stores memory,sqlite,mariadb]
                         [--proxies sipha,kamailio,direct] [--builds source,compiled]
                         [--db-url URL]

sipha runs on bench/sipha.toml, Kamailio on bench/kamailio.cfg, each pinned to
CPU 0; sipp (a Record-Route aware caller, tests/sipp/uac.xml, and two media
servers, tests/sipp/uas.xml with -aa) runs on CPU 1. For each proxy and dialog
store the call rate is doubled from 100 CPS until a step fails, then bisected;
a step holds when no call fails and sipp placed at least 95 % of the calls per
second asked of it. "direct" is sipp calling a media server with no proxy in
between: the most this harness can measure. sipha is measured as each build:
its sources, and a wheel whose core is compiled with mypyc (SIPHA_COMPILE=1).
Then sipha's RSS with long calls in progress, and a profile of its core.
bench/RESULTS.md gets the tables; bench/README says more.

The benchmark installs nothing: it says what is missing and stops.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import importlib.metadata
import itertools
import os
import platform
import re
import resource
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
# The end-to-end tests' sipp helpers (standard library only) read sipp's files.
sys.path.insert(1, str(Path(__file__).resolve().parent.parent / "tests" / "e2e"))
sys.path.insert(2, str(Path(__file__).resolve().parent.parent / "tests"))

from procs import (
    HOST,
    BenchError,
    Process,
    SippCounters,
    counter,
    cpu_by_pid,
    cpu_seconds,
    percentile,
    pids_named,
    port_free,
    read_rtt,
    read_stat_rows,
    rss_bytes,
    sip_answers,
    stamp,
    stop_all,
    udp_bound,
    udp_receive_errors,
    udp_socket,
    wait_for,
)
from report import write_report

from sipp import read_stats

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"
SCENARIOS = REPO / "tests" / "sipp"

PROXY_CORE, SIPP_CORE = 0, 1
SIPHA_PORT, KAMAILIO_PORT = 15060, 15062
MEDIA_PORTS = (15070, 15071)
CALLER_PORTS = (15080, 15081)
HOLD_MS = 1000
#: sipp gives up on a call after this long without an expected message.
RECV_TIMEOUT_MS = 10000
#: Kamailio's TLSF allocator: the Debian build's default (qm, with memory
#: debugging compiled in) costs it about twice the CPU per call.
KAMAILIO_ALLOCATOR = "tlsf"
#: RFC 3261 Timer M/L (64*T1): how long sipha keeps an answered INVITE's
#: transactions; the memory phase waits this out before reading RSS.
TRANSACTION_LINGER = 32 + 8
MARIADB = {"host": HOST, "port": 3306, "user": "root", "password": ""}
#: sipp's socket buffers (-buff_size; its default of 64 KiB drops datagrams in
#: the bursts of a few thousand CPS, which then looks like a proxy failure).
#: The kernel caps it at net.core.rmem_max/wmem_max and doubles it.
SIPP_BUFFER = 8388608


@dataclass(frozen=True)
class Plan:
    """How long and how often to measure; ``--quick`` shrinks it."""

    quick: bool
    step_seconds: int
    latency_seconds: int
    runs: int
    refinements: int
    memory_levels: tuple[int, ...]
    start_rate: int = 100
    max_rate: int = 25600

    @classmethod
    def make(cls, quick: bool, runs: int | None) -> Plan:
        if quick:
            return cls(True, 4, 8, runs or 1, 3, (0, 2000, 10000))
        return cls(False, 10, 20, runs or 3, 5, (0, 10000, 50000))


@dataclass(frozen=True)
class Store:
    """Where sipha keeps dialogs: its [dialog] db_mode and the kind of database."""

    key: str
    label: str
    db_mode: int


STORES = {
    "memory": Store("memory", "memory", 0),
    "sqlite": Store("sqlite", "SQLite", 1),
    "mariadb": Store("mariadb", "MariaDB real-time", 1),
}

#: sipha's builds: the pure-Python sources, and the wheel with the core compiled by mypyc.
BUILDS = ("source", "compiled")


# --------------------------------------------------------------------------- results


@dataclass
class Step:
    """One sipp caller run at one rate against one target."""

    rate: int
    seconds: int
    placed: int = 0
    ok: int = 0
    media_failed: int = 0
    retransmissions: int = 0
    achieved: float = 0.0
    invite_180: tuple[float | None, float | None] = (None, None)
    invite_200: tuple[float | None, float | None] = (None, None)
    samples: int = 0
    wall: float = 0.0
    proxy_cpu: float | None = None
    steady_cpu: float | None = None
    sipp_cpu: float = 0.0
    db_cpu: float | None = None
    other_cpu: float = 0.0
    proxy_drops: int | None = None
    udp_drops: int = 0
    returncode: int | None = None
    dialog_rows: int | None = None
    log_errors: int | None = None
    note: str = ""

    @property
    def failed(self) -> int:
        """Calls placed that did not complete: failed, timed out or still open at the end."""
        return self.placed - self.ok

    @property
    def held(self) -> bool:
        return (self.placed > 0 and self.failed == 0 and self.media_failed == 0
                and self.achieved >= 0.95 * self.rate)  # fmt: skip

    @property
    def cpu_percent(self) -> float | None:
        """% of one CPU while calls flow (else over the whole step, tail included)."""
        if self.steady_cpu is not None:
            return 100 * self.steady_cpu
        return None if self.proxy_cpu is None else 100 * self.proxy_cpu / self.wall

    @property
    def cpu_us_per_call(self) -> float | None:
        if self.proxy_cpu is None or not self.ok:
            return None
        return 1e6 * self.proxy_cpu / self.ok


@dataclass
class Run:
    best: int
    steps: list[Step]


@dataclass
class TargetResult:
    """The rate search (one or more runs) and the latency step of one proxy setting."""

    key: str
    label: str
    proxy: str
    store: str
    build: str
    runs: list[Run] = field(default_factory=list)
    latency: Step | None = None
    receive_buffer: int | None = None

    @property
    def best(self) -> int | None:
        return statistics.median_low(run.best for run in self.runs) if self.runs else None

    @property
    def saturation(self) -> Step | None:
        """The step at the median maximum: its CPU per call is the cost at saturation."""
        best = self.best
        for run in self.runs:
            if run.best == best:
                return next((s for s in run.steps if s.rate == best and s.held), None)
        return None


@dataclass
class MemoryResult:
    build: str
    rate: int
    samples: list[tuple[int, int]] = field(default_factory=list)  # (calls in progress, RSS)
    failed: int = 0
    note: str = ""


@dataclass
class Profile:
    """Where the core's time goes in one build: bench/profile_core.py under py-spy."""

    build: str
    summary: str  # profile_core.py's own figure: µs per call inside the core
    samples: int = 0
    hot: list[tuple[str, float, float]] = field(default_factory=list)  # name, self %, total %


@dataclass
class Results:
    """Everything measured so far; the report is rewritten from it after each phase."""

    command: str
    plan: Plan
    environment: dict[str, str]
    started: datetime
    workdir: Path
    targets: list[TargetResult] = field(default_factory=list)
    memory: list[MemoryResult] = field(default_factory=list)
    profiles: list[Profile] = field(default_factory=list)
    rtt_resolution_ms: float | None = None
    finished: datetime | None = None
    problem: str = ""


# --------------------------------------------------------------------------- processes


def pinned(core: int, argv: list[str]) -> list[str]:
    return ["taskset", "-c", str(core), *argv]


def twistd_command() -> list[str]:
    """twistd of this interpreter, so that the sipha measured is the working tree's."""
    twistd = Path(sys.executable).parent / "twistd"
    if twistd.exists():
        return [str(twistd)]
    return [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


def sipha_env(source: Path = REPO / "src") -> dict[str, str]:
    """Environment that makes twistd find sipha (and its dropin) in ``source`` first."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(source), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    return env


#: What building a wheel takes from the working tree.
PROJECT_FILES = ("pyproject.toml", "hatch_build.py", "README.rst")


def snapshot_source(workdir: Path) -> tuple[Path, str]:
    """Copy src/ into the work directory; every sipha of the run starts from the copy.

    The working tree may change while an hour-long run goes on; the copy keeps
    all runs and stores on the same code. Returns the copy and a digest of it.
    """
    tree = workdir / "tree"
    copy = tree / "src"
    shutil.copytree(REPO / "src", copy, dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "dropin.cache"))  # fmt: skip
    for name in PROJECT_FILES:
        shutil.copyfile(REPO / name, tree / name)
    digest = hashlib.sha256()
    for path in sorted(p for p in copy.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(copy)).encode() + b"\0" + path.read_bytes())
    return copy, digest.hexdigest()[:12]


def build_compiled(source: Path, workdir: Path) -> Path:
    """The compiled build of the snapshot, installed into a folder of the work directory."""
    tree, wheels, target = source.parent, workdir / "wheel", workdir / "compiled"
    print("building the compiled core (SIPHA_COMPILE=1 pip wheel) ...", flush=True)
    env = {**os.environ, "SIPHA_COMPILE": "1", "PIP_ROOT_USER_ACTION": "ignore"}

    def pip(*args: str) -> None:
        argv = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q", *args]
        done = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
        if done.returncode:
            raise BenchError(f"pip {args[0]} failed:\n{done.stdout}{done.stderr}")

    pip("wheel", "--no-deps", "--wheel-dir", str(wheels), str(tree))
    pip("install", "--no-deps", "--target", str(target), *map(str, wheels.glob("sipha-*.whl")))
    return target


class MediaServer:
    """sipp answering calls (tests/sipp/uas.xml, -aa for the proxies' OPTIONS probes)."""

    def __init__(self, port: int, directory: Path, scenario: Path) -> None:
        self.port = port
        self.directory = directory
        self.scenario = scenario
        self.generation = 0
        self.process: Process | None = None

    @property
    def stats(self) -> Path:
        return self.directory / f"media-{self.port}-{self.generation}.csv"

    def start(self) -> None:
        self.generation += 1
        argv = pinned(SIPP_CORE, [
            "sipp", "-sf", str(self.scenario), "-aa", "-i", HOST, "-p", str(self.port),
            "-t", "u1", "-nostdin", "-buff_size", str(SIPP_BUFFER),
            "-trace_stat", "-stf", str(self.stats), "-fd", "100ms",
            "-trace_err", "-error_file",
            str(self.directory / f"media-{self.port}-{self.generation}-errors.log"),
        ])  # fmt: skip
        log = self.directory / f"media-{self.port}-{self.generation}.log"
        self.process = Process(f"media server :{self.port}", argv, log,
                               cwd=self.directory).start()  # fmt: skip
        wait_for(lambda: udp_bound(self.port), 10, f"sipp to bind :{self.port}", self.process)

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
            self.process = None

    def counters(self) -> SippCounters:
        return SippCounters.of(read_stat_rows(self.stats))

    def pids(self) -> list[int]:
        return [self.process.pid] if self.process is not None and self.process.running() else []


class Target:
    """What the caller calls: a proxy process, or a media server directly."""

    key = ""
    label = ""
    proxy = ""
    store = ""
    build = "-"
    port = 0

    def start(self, directory: Path) -> None:
        """Start the proxy and return once it answers SIP."""

    def stop(self) -> None:
        """Stop the proxy."""

    def pids(self) -> list[int]:
        return []

    def dialog_rows(self) -> int | None:
        return None

    def log(self) -> Path | None:
        """The proxy's log, whose new error lines each step counts."""
        return None


class ProxyProcess(Target):
    """A proxy the benchmark runs as a process of its own, with its log."""

    process: Process | None = None

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop(grace=15)
            self.process = None

    def log(self) -> Path | None:
        return self.process.log if self.process is not None else None


class Sipha(ProxyProcess):
    proxy = "sipha"
    port = SIPHA_PORT

    def __init__(self, store: Store, databases: Databases, source: Path, build: str) -> None:
        self.store_spec = store
        self.source = source
        self.build = build
        compiled = build == "compiled"
        self.key = f"sipha-{'compiled-' if compiled else ''}{store.key}"
        self.label = f"sipha{' compiled' if compiled else ''}, dialogs in {store.label}"
        self.store = store.label
        self.databases = databases
        self.process: Process | None = None
        self.url = ""
        self._database: contextlib.ExitStack | None = None

    def start(self, directory: Path) -> None:
        text = (BENCH / "sipha.toml").read_text()
        text, count = re.subn(r"(?m)^db_mode\s*=\s*\d+", f"db_mode = {self.store_spec.db_mode}",
                              text)  # fmt: skip
        text, sockets = re.subn(r'(?m)^socket\s*=\s*".*"$', f'socket = "{directory / "control.sock"}"',
                                text)  # fmt: skip
        if count != 1 or sockets != 1:
            raise BenchError("bench/sipha.toml must set [dialog] db_mode and [control] socket once")
        config = directory / "sipha.toml"
        config.write_text(text)
        self._database = contextlib.ExitStack()
        self.url = self._database.enter_context(self.databases.fresh(self.store_spec, directory))
        argv = pinned(PROXY_CORE, [*twistd_command(), "-n", "--pidfile=", "sipha",
                                   "--config", str(config), "--db-url", self.url])  # fmt: skip
        self.process = Process("sipha", argv, directory / "sipha.log", cwd=directory,
                               env=sipha_env(self.source)).start()  # fmt: skip
        wait_for(lambda: sip_answers(self.port) is not None, 30, "sipha to answer OPTIONS",
                 self.process, interval=0.2)  # fmt: skip
        time.sleep(1.0)  # the destination tables are read just after the sockets open

    def stop(self) -> None:
        super().stop()
        if self._database is not None:
            self._database.close()
            self._database = None

    def pids(self) -> list[int]:
        return self.process.tree() if self.process is not None else []

    def dialog_rows(self) -> int | None:
        return count_dialog_rows(self.url) if self.store_spec.db_mode else None


class Kamailio(ProxyProcess):
    key = "kamailio"
    label = "Kamailio, dialogs in memory"
    proxy = "Kamailio"
    store = "memory"
    port = KAMAILIO_PORT

    def __init__(self) -> None:
        self.process: Process | None = None
        self._pids: list[int] = []

    def start(self, directory: Path) -> None:
        rundir = directory / "kamailio-run"
        rundir.mkdir(parents=True, exist_ok=True)
        argv = pinned(PROXY_CORE, [
            "kamailio", "-f", str(BENCH / "kamailio.cfg"), "-DD", "-E", "-m", "4096", "-M", "32",
            "-x", KAMAILIO_ALLOCATOR, "-Y", str(rundir),
            "-A", f'DISPATCHER_LIST="{BENCH / "dispatcher.list"}"',
        ])  # fmt: skip
        self.process = Process("kamailio", argv, directory / "kamailio.log",
                               cwd=directory).start()  # fmt: skip
        wait_for(lambda: sip_answers(self.port) is not None, 30, "Kamailio to answer OPTIONS",
                 self.process, interval=0.2)  # fmt: skip
        time.sleep(0.5)
        self._pids = self.process.tree()

    def pids(self) -> list[int]:
        return self._pids


class Direct(Target):
    """No proxy: the caller calls the first media server, to find sipp's own ceiling."""

    key = "direct"
    label = "sipp to sipp, no proxy"
    proxy = "none (harness ceiling)"
    store = "-"
    port = MEDIA_PORTS[0]


class Databases:
    """Fresh dialog databases for sipha: an SQLite file, or a MariaDB database made and dropped."""

    def __init__(self, urls: list[str]) -> None:
        self.sqlite_url = next((u for u in urls if u.startswith("sqlite:///")), None)
        self.mysql_url = next((u for u in urls if u.startswith("mysql://")), None)
        self.counter = 0

    @contextlib.contextmanager
    def fresh(self, store: Store, directory: Path) -> Iterator[str]:
        self.counter += 1
        if store.key == "mariadb":
            if self.mysql_url:
                yield self.mysql_url
                return
            name = f"sipha_bench_{os.getpid()}_{self.counter}"
            connection = mariadb_connect()
            connection.cursor().execute(f"CREATE DATABASE {name}")
            try:
                yield f"mysql://root@{HOST}:{MARIADB['port']}/{name}"
            finally:
                connection.cursor().execute(f"DROP DATABASE IF EXISTS {name}")
                connection.close()
            return
        if store.key == "sqlite" and self.sqlite_url:
            yield self.sqlite_url
            return
        # "memory" still gets a database: its destination tables stay empty, so
        # sipha routes on the config file's lists like the other stores.
        yield f"sqlite:///{directory / f'{store.key}-{self.counter}.sqlite'}"


def mariadb_connect() -> Any:
    """A connection to the local MariaDB server as root (MySQLdb is imported only if needed)."""
    import MySQLdb

    return MySQLdb.connect(**MARIADB)


def count_dialog_rows(url: str) -> int | None:
    """Rows in sipha's dialog table right now, or None when it cannot be read."""
    try:
        if url.startswith("sqlite:///"):
            connection = sqlite3.connect(url[len("sqlite:///") :], timeout=2)
            try:
                return int(connection.execute("SELECT COUNT(*) FROM dialog").fetchone()[0])
            finally:
                connection.close()
        match = re.fullmatch(r"mysql://([^:@/]+)(?::([^@/]*))?@([^:/]+)(?::(\d+))?/(\w+)", url)
        if not match:
            return None
        import MySQLdb

        user, password, host, port, name = match.groups()
        connection = MySQLdb.connect(host=host, port=int(port or 3306), user=user,
                                     password=password or "", database=name)  # fmt: skip
        try:
            cursor = connection.cursor()
            cursor.execute("SELECT COUNT(*) FROM dialog")
            return int(cursor.fetchone()[0])
        finally:
            connection.close()
    except Exception:
        return None


# --------------------------------------------------------------------------- sessions and steps


class Session:
    """A target and both media servers, running for one series of steps."""

    def __init__(self, target: Target, directory: Path, scenarios: Path) -> None:
        self.target = target
        self.directory = directory
        self.uac = scenarios / "uac.xml"
        directory.mkdir(parents=True, exist_ok=True)
        self.media = [MediaServer(port, directory, scenarios / "uas.xml") for port in MEDIA_PORTS]

    def __enter__(self) -> Session:
        try:
            for server in self.media:
                server.start()
            self.target.start(self.directory)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.target.stop()
        for server in self.media:
            server.stop()

    def restart_media(self) -> None:
        """Fresh media servers, so calls a failed step left half-done do not spill into the next."""
        for server in self.media:
            server.stop()
            server.start()

    def settle(self, timeout: float = 30.0) -> None:
        """Wait until the proxy is idle again (at most ``timeout`` s), so steps do not overlap."""
        time.sleep(1.0)
        pids = self.target.pids()
        deadline = time.monotonic() + timeout
        while pids and time.monotonic() < deadline:
            before = cpu_seconds(pids)
            time.sleep(0.5)
            if cpu_seconds(pids) - before < 0.05:
                break


@dataclass
class _Snapshot:
    proxy_cpu: float
    media_cpu: float
    db_cpu: float
    everyone: dict[int, float]
    udp_errors: int
    proxy_drops: int | None
    at: float

    @classmethod
    def take(cls, session: Session, db_pids: list[int]) -> _Snapshot:
        sock = udp_socket(session.target.port) if session.target.pids() else None
        return cls(
            proxy_cpu=cpu_seconds(session.target.pids()),
            media_cpu=cpu_seconds(pid for server in session.media for pid in server.pids()),
            db_cpu=cpu_seconds(db_pids),
            everyone=cpu_by_pid(),
            udp_errors=udp_receive_errors(),
            proxy_drops=sock[1] if sock else None,
            at=time.monotonic(),
        )


#: Lines of a proxy log that report trouble: Kamailio's "ERROR:"/"CRITICAL:",
#: twistd's "[namespace#error]"/"#critical]"/"#warn]" and tracebacks.
_LOG_ERROR = re.compile(rb"\b(ERROR|CRITICAL|ALERT):|#(error|critical|warn)\]|^Traceback", re.M)


def count_log_errors(log: Path, start: int) -> int:
    """Error lines the proxy logged after byte ``start`` of its log."""
    with log.open("rb") as stream:
        stream.seek(start)
        return len(_LOG_ERROR.findall(stream.read()))


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def placement_time(rows: list[dict[str, str]], placed: int) -> float:
    """Seconds sipp took to place ``placed`` calls, interpolated between statistics rows."""
    start = stamp(rows[0]["StartTime"])
    previous = (0.0, 0)
    for row in rows:
        at, count = stamp(row["CurrentTime"]) - start, counter(row, "OutgoingCall(C)")
        if count >= placed:
            t0, c0 = previous
            return t0 + (at - t0) * (placed - c0) / max(1, count - c0)
        previous = (at, count)
    return stamp(rows[-1]["CurrentTime"]) - start


def run_step(session: Session, rate: int, seconds: int, tag: str,
             probe: Callable[[], int | None] | None = None,
             stop_on_failure: bool = False) -> Step:  # fmt: skip
    """Place ``rate * seconds`` calls at ``rate`` CPS and measure the proxy meanwhile.

    With ``stop_on_failure`` the caller is stopped at its first failed call:
    the step has failed already, and the rest would only deepen the overload
    the next step has to wait out.
    """
    directory = session.directory / tag
    directory.mkdir(parents=True, exist_ok=True)
    calls = rate * seconds
    stats = directory / "caller.csv"
    argv = pinned(SIPP_CORE, [
        "sipp", f"{HOST}:{session.target.port}", "-sf", str(session.uac), "-s", "1000",
        "-i", HOST, "-p", str(CALLER_PORTS[0]), "-t", "u1",
        "-r", str(rate), "-rp", "1000", "-m", str(calls), "-l", str(max(100, 4 * rate)),
        "-d", str(HOLD_MS), "-nostdin", "-buff_size", str(SIPP_BUFFER),
        "-timeout", f"{seconds + 40}s", "-timeout_error", "-recv_timeout", str(RECV_TIMEOUT_MS),
        "-trace_stat", "-stf", str(stats), "-fd", "100ms",
        "-trace_err", "-error_file", str(directory / "caller-errors.log"),
        # -rtt_freq: sipp writes response times in batches of this many; a
        # batch still open at exit is lost, so it divides the number of calls.
        "-trace_rtt", "-rtt_freq", str(rate),
    ])  # fmt: skip
    step = Step(rate=rate, seconds=seconds)
    db_pids = pids_named("mariadbd", "mysqld") if session.target.store.startswith("MariaDB") else []
    media_before = [server.counters() for server in session.media]
    log = session.target.log()
    log_start = log.stat().st_size if log is not None else 0
    before = _Snapshot.take(session, db_pids)
    children_before = _children_cpu()
    caller = Process(f"sipp caller {rate} CPS", argv, directory / "caller.log",
                     cwd=session.directory).start()  # fmt: skip
    assert caller.popen is not None
    started = time.monotonic()
    probed = probe is None
    checked = 0.0
    # The proxy's CPU while calls flow: from when the first BYEs arrive (hold +
    # a margin) to the last call placed, without the start and the tail.
    pids = session.target.pids()
    window = (HOLD_MS / 1000 + 0.5, float(seconds))
    steady: list[tuple[float, float]] = []
    while caller.popen.poll() is None:
        elapsed = time.monotonic() - started
        if pids and window[0] <= elapsed <= window[1]:
            steady.append((elapsed, cpu_seconds(pids)))
        if not probed and elapsed >= seconds / 2:
            step.dialog_rows = probe() if probe is not None else None
            probed = True
        if stop_on_failure and elapsed - checked >= 0.5:
            checked = elapsed
            if counter(read_stats(stats), "FailedCall(C)"):
                step.note = f"stopped at the first failed call, {elapsed:.1f} s in"
                caller.stop(grace=5)
                break
        if elapsed > seconds + 70:
            step.note = "sipp ignored its -timeout and was killed"
            caller.stop(grace=2)
            break
        time.sleep(0.1)
    step.returncode = caller.popen.returncode
    if len(steady) >= 2 and steady[-1][0] - steady[0][0] >= 1.0:
        (t0, cpu0), (t1, cpu1) = steady[0], steady[-1]
        step.steady_cpu = (cpu1 - cpu0) / (t1 - t0)
    step.sipp_cpu = _children_cpu() - children_before
    after = _Snapshot.take(session, db_pids)
    caller.stop()
    step.wall = after.at - before.at
    if session.target.pids():
        step.proxy_cpu = after.proxy_cpu - before.proxy_cpu
        if before.proxy_drops is not None and after.proxy_drops is not None:
            step.proxy_drops = after.proxy_drops - before.proxy_drops
    step.sipp_cpu += after.media_cpu - before.media_cpu
    step.db_cpu = after.db_cpu - before.db_cpu if db_pids else None
    step.udp_drops = after.udp_errors - before.udp_errors
    if log is not None:
        step.log_errors = count_log_errors(log, log_start)
    # Anything else that ran meanwhile (other processes share these CPUs);
    # processes that came and went during the step are not seen.
    ours = {os.getpid(), *session.target.pids(), *db_pids}
    ours.update(pid for server in session.media for pid in server.pids())
    step.other_cpu = sum(after.everyone[pid] - before.everyone[pid]
                         for pid in after.everyone.keys() & before.everyone.keys()
                         if pid not in ours)  # fmt: skip

    # The media servers finish their calls (timewait 500 ms) after the caller exits.
    media_after = [server.counters() for server in session.media]
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        time.sleep(0.7)
        latest = [server.counters() for server in session.media]
        if latest == media_after:
            break
        media_after = latest
    for old, new in zip(media_before, media_after, strict=True):
        delta = new - old
        step.media_failed += delta.failed
        step.retransmissions += delta.retransmissions

    rows = read_stat_rows(stats)
    if rows:
        last = rows[-1]
        step.placed = counter(last, "OutgoingCall(C)")
        step.ok = counter(last, "SuccessfulCall(C)")
        step.retransmissions += counter(last, "Retransmissions(C)")
        if step.placed:
            step.achieved = step.placed / max(1e-3, placement_time(rows, step.placed))
    rtt = session.directory / f"uac_{caller.pid}_rtt.csv"
    if rtt.exists():
        rtt = rtt.rename(directory / "rtt.csv")
    times = read_rtt(rtt)
    invite_180, invite_200 = times.get(1, []), times.get(2, [])
    step.samples = len(invite_200)
    step.invite_180 = (percentile(invite_180, 0.5), percentile(invite_180, 0.99))
    step.invite_200 = (percentile(invite_200, 0.5), percentile(invite_200, 0.99))
    return step


def rtt_resolution(directory: Path) -> float | None:
    """The smallest non-zero gap between distinct response times sipp wrote (its clock step)."""
    values: set[float] = set()
    for path in directory.rglob("rtt.csv"):
        for series in read_rtt(path).values():
            values.update(series)
        if len(values) > 50:
            break
    ordered = sorted(values)
    gaps = [b - a for a, b in itertools.pairwise(ordered) if b > a]
    return min(gaps) if gaps else None


# --------------------------------------------------------------------------- phases


def fmt_ms(value: float | None) -> str:
    return "-" if value is None else f"{value:g}"


def describe(label: str, step: Step) -> str:
    cpu = (
        ""
        if step.cpu_percent is None
        else (f", proxy CPU {step.cpu_percent:.0f} % = {step.cpu_us_per_call or 0:.0f} µs/call")
    )
    return (
        f"  {label}: {step.rate:>6} CPS -> {step.achieved:8.1f} achieved, {step.ok} ok, "
        f"{step.failed} failed (+{step.media_failed} at media servers), "
        f"{step.retransmissions} retrans, INVITE->180 p50/p99 {fmt_ms(step.invite_180[0])}/"
        f"{fmt_ms(step.invite_180[1])} ms, ->200 {fmt_ms(step.invite_200[0])}/"
        f"{fmt_ms(step.invite_200[1])} ms{cpu}, sipp CPU {100 * step.sipp_cpu / step.wall:.0f} %"
        f"  {'held' if step.held else 'FAILED' + (' ' + step.note if step.note else '')}"
    )


def round_rate(rate: float) -> int:
    return max(10, int(round(rate / 10) * 10))


def find_max(measure: Callable[[int], Step], plan: Plan) -> int:
    """Double the rate until a step fails, then bisect between the last hold and that failure."""
    low, high, rate = 0, None, plan.start_rate
    while rate <= plan.max_rate:
        if measure(rate).held:
            low, rate = rate, rate * 2
        else:
            high = rate
            break
    if high is None:
        return low
    for _ in range(plan.refinements):
        middle = round_rate((low + high) / 2)
        if middle <= low or middle >= high:
            break
        if measure(middle).held:
            low = middle
        else:
            high = middle
    return low


def bench_rates(make: Callable[[], Target], plan: Plan, results: Results,
                half_rate: Callable[[TargetResult], int | None]) -> TargetResult:  # fmt: skip
    """The rate search ``plan.runs`` times, each on a fresh proxy, then the latency step."""
    template = make()
    result = TargetResult(template.key, template.label, template.proxy, template.store,
                          template.build)  # fmt: skip
    results.targets.append(result)
    print(f"\n== {result.label} ==", flush=True)
    for number in range(1, plan.runs + 1):
        target = make()
        steps: list[Step] = []
        run = Run(0, steps)
        result.runs.append(run)
        with Session(target, results.workdir / target.key / f"run{number}",
                     results.workdir / "scenarios") as session:  # fmt: skip
            if result.receive_buffer is None and target.pids():
                sock = udp_socket(target.port)
                result.receive_buffer = sock[0] if sock else None

            def measure(rate: int, session: Session = session, steps: list[Step] = steps,
                        label: str = f"run {number}") -> Step:  # fmt: skip
                step = run_step(session, rate, plan.step_seconds, f"{rate}cps",
                                stop_on_failure=True)  # fmt: skip
                steps.append(step)
                print(describe(label, step), flush=True)
                if not step.held:
                    session.restart_media()
                session.settle()
                return step

            run.best = find_max(measure, plan)
        print(f"  run {number}: highest rate that held: {run.best} CPS", flush=True)
    rate = half_rate(result)
    if rate:
        target = make()
        with Session(target, results.workdir / target.key / "latency",
                     results.workdir / "scenarios") as session:  # fmt: skip
            result.latency = run_step(session, rate, plan.latency_seconds, f"{rate}cps",
                                      target.dialog_rows)  # fmt: skip
            print(describe("latency", result.latency), flush=True)
    print(f"  {result.label}: {result.best} CPS (median of {len(result.runs)})", flush=True)
    return result


def bench_memory(plan: Plan, rate: int, databases: Databases, workdir: Path,
                 source: Path, build: str) -> MemoryResult:  # fmt: skip
    """sipha's RSS with 0 and more answered calls held open (dialogs in memory)."""
    result = MemoryResult(build=build, rate=rate)
    levels = plan.memory_levels
    ramp = sum(b - a for a, b in itertools.pairwise(levels)) / rate
    hold_s = int(ramp + TRANSACTION_LINGER * len(levels) + 300)
    print(f"\n== sipha ({build}) memory: {', '.join(map(str, levels))} calls in progress, "
          f"placed at {rate} CPS and held {hold_s} s ==", flush=True)  # fmt: skip
    target = Sipha(STORES["memory"], databases, source, build)
    callers: list[Process] = []
    with Session(target, workdir / f"memory-{build}", workdir / "scenarios") as session:
        try:
            warm = run_step(session, 100, 2, "warmup")
            print(describe("warm-up", warm), flush=True)
            time.sleep(TRANSACTION_LINGER)
            assert target.process is not None
            result.samples.append((0, rss_bytes(target.process.pid)))
            print(f"  0 calls in progress: RSS {result.samples[-1][1] / 2**20:.1f} MiB", flush=True)
            for index, (low, high) in enumerate(itertools.pairwise(levels)):
                calls = high - low
                stats = session.directory / f"hold-{index}.csv"
                argv = pinned(SIPP_CORE, [
                    "sipp", f"{HOST}:{SIPHA_PORT}", "-sf", str(session.uac), "-s", "1000",
                    "-i", HOST, "-p", str(CALLER_PORTS[index % len(CALLER_PORTS)]),
                    "-t", "u1", "-r", str(rate), "-m", str(calls), "-l", str(calls + 10),
                    "-d", str(hold_s * 1000), "-nostdin", "-buff_size", str(SIPP_BUFFER),
                    "-timeout", f"{hold_s + 60}s",
                    "-recv_timeout", str(RECV_TIMEOUT_MS), "-trace_stat", "-stf", str(stats),
                    "-fd", "1s", "-trace_err", "-error_file",
                    str(session.directory / f"hold-{index}-errors.log"),
                ])  # fmt: skip
                caller = Process(f"sipp holding {calls} calls", argv,
                                 session.directory / f"hold-{index}.log",
                                 cwd=session.directory).start()  # fmt: skip
                callers.append(caller)

                def placed(stats: Path = stats, calls: int = calls) -> bool:
                    rows = read_stat_rows(stats)
                    return bool(rows) and counter(rows[-1], "OutgoingCall(C)") >= calls

                wait_for(placed, calls / rate * 3 + 60, f"{calls} calls to be placed", caller,
                         interval=0.5)  # fmt: skip
                time.sleep(TRANSACTION_LINGER)
                in_progress = failed = 0
                for number, _held in enumerate(callers):
                    rows = read_stat_rows(session.directory / f"hold-{number}.csv")
                    if rows:
                        in_progress += counter(rows[-1], "CurrentCall")
                        failed += counter(rows[-1], "FailedCall(C)")
                result.failed = failed
                result.samples.append((in_progress, rss_bytes(target.process.pid)))
                print(f"  {in_progress} calls in progress ({failed} failed): RSS "
                      f"{result.samples[-1][1] / 2**20:.1f} MiB", flush=True)  # fmt: skip
                gone = [held.name for held in callers if not held.running()]
                if gone:
                    result.note = f"{', '.join(gone)} exited before the end"
        finally:
            for caller in callers:
                caller.stop()
    return result


# --------------------------------------------------------------------------- profile

PROFILE_CALLS = 20000
#: The frames of bench/profile_core.py that hand each message to the core and advance
#: its clock (the timers fire there): samples outside them (imports, building the
#: test's messages) are not the core's.
CORE_FRAMES = ("main.<locals>.feed (", "main.<locals>.elapse (")
PROFILE_ROWS = 25


def profile_core(source: Path, build: str, workdir: Path) -> Profile:
    """bench/profile_core.py on ``build``, on the proxy's CPU: timed, then under py-spy.

    py-spy sees the functions of both builds alike: Python frames of the sources,
    the C functions mypyc made of them (``CPyDef_module___function``). It stops
    the process for every native sample, so the time per call is read without it.
    """
    core = [sys.executable, str(BENCH / "profile_core.py"), "--calls", str(PROFILE_CALLS)]
    raw = workdir / f"profile-{build}.txt"
    spy = ["py-spy", "record", "--native", "--rate", "500", "--format", "raw", "--output", str(raw)]
    print(f"\n== profile of the {build} core: {' '.join(core[1:])} ==", flush=True)
    outputs = []
    for argv in (core, [*spy, "--", *core]):
        done = subprocess.run(pinned(PROXY_CORE, argv), capture_output=True, text=True,
                              env=sipha_env(source), timeout=900, check=False)  # fmt: skip
        if done.returncode:
            raise BenchError(f"{argv[0]} bench/profile_core.py failed:\n{done.stderr[-2000:]}")
        outputs.append(done.stdout)
    summary = next((line for line in outputs[0].splitlines() if "µs per call" in line), "?")
    print(f"  {summary}", flush=True)
    return _hot_functions(Profile(build, summary), raw)


def _hot_functions(profile: Profile, raw: Path) -> Profile:
    """The functions with the most samples of their own, with their share inside the core."""
    own: dict[str, int] = {}
    within: dict[str, int] = {}
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = [_frame_name(frame) for frame in stack.split(";")]
        at = next((i for i, name in enumerate(frames) if name.startswith(CORE_FRAMES)), None)
        if at is None:
            continue
        samples = int(count)
        profile.samples += samples
        core = frames[at + 1 :] or frames[at:]
        own[core[-1]] = own.get(core[-1], 0) + samples
        # A function inlined from a header (Py_DECREF) shows between its caller's frames.
        for name in {name for name in core[:-1] if not name.endswith(".h)")} | {core[-1]}:
            within[name] = within.get(name, 0) + samples
    ranked = sorted(own, key=own.__getitem__, reverse=True)[:PROFILE_ROWS]
    total = max(1, profile.samples)
    profile.hot = [(name, 100 * own[name] / total, 100 * within[name] / total) for name in ranked]
    return profile


def _frame_name(frame: str) -> str:
    """``function (file:line)`` -> ``function (file)``: one row per function, not per line."""
    name, _, where = frame.removesuffix(")").partition(" (")
    return f"{name} ({Path(where.rsplit(':', 1)[0]).name})" if where else name


# --------------------------------------------------------------------------- setup checks


def _first_line(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    lines = [line.strip() for line in (out.stdout + out.stderr).splitlines() if line.strip()]
    return lines[0] if lines else "?"


def other_benchmarks() -> list[int]:
    """PIDs of other running ``bench/run.py`` processes (not this one nor its parents)."""
    mine = {os.getpid(), os.getppid()}
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and int(entry.name) not in mine:
            with contextlib.suppress(OSError):
                argv = Path(entry.path, "cmdline").read_bytes().split(b"\0")
                if any(arg.endswith(b"bench/run.py") for arg in argv[1:2]) and b"python" in argv[0]:
                    found.append(int(entry.name))
    return found


def check_setup(args: argparse.Namespace, stores: list[Store], proxies: list[str]) -> list[str]:
    """Everything missing, each with what to do about it; the benchmark installs nothing."""
    problems = []
    for pid in other_benchmarks():
        problems.append(f"another bench/run.py is running (PID {pid}); two runs on one machine "
                        "measure each other: wait for it to end (its report says how long)")  # fmt: skip
    if shutil.which("sipp") is None:
        problems.append("sipp is missing: as root, apt-get install -y sip-tester")
    for tool, package in (("taskset", "util-linux"), ("ss", "iproute2")):
        if shutil.which(tool) is None:
            problems.append(f"{tool} is missing: as root, apt-get install -y {package}")
    if "kamailio" in proxies and shutil.which("kamailio") is None:
        problems.append("kamailio is missing: as root, apt-get install -y kamailio "
                        "(or leave it out: --proxies sipha,direct)")  # fmt: skip
    if not args.skip_profile and shutil.which("py-spy") is None:
        problems.append("py-spy is missing: python3 -m pip install py-spy "
                        "(or leave the profile out: --skip-profile)")  # fmt: skip
    if "compiled" in args.build_list and shutil.which("gcc") is None:
        problems.append("the compiled build needs a C compiler: as root, apt-get install -y gcc "
                        "python3-dev (or leave it out: --builds source)")  # fmt: skip
    cores = os.sched_getaffinity(0)
    if not {PROXY_CORE, SIPP_CORE} <= cores:
        problems.append(f"CPUs {PROXY_CORE} and {SIPP_CORE} must both be usable; this process "
                        f"may use {sorted(cores)}")  # fmt: skip
    if "sipha" in proxies:
        check = subprocess.run([*twistd_command(), "sipha", "--config", str(BENCH / "sipha.toml"),
                                "--check-config"], capture_output=True, text=True,
                               env=sipha_env(), check=False)  # fmt: skip
        if check.returncode != 0:
            problems.append("twistd sipha cannot start on bench/sipha.toml: "
                            + (check.stderr or check.stdout).strip()[-500:])  # fmt: skip
    if (
        "sipha" in proxies
        and any(store.key == "mariadb" for store in stores)
        and not any(url.startswith("mysql://") for url in args.db_url)
    ):
        try:
            mariadb_connect().close()
        except ImportError:
            problems.append("MySQLdb is missing: python3 -m pip install mysqlclient")
        except Exception as error:
            problems.append(f"MariaDB must answer on {HOST}:3306 as root without a password "
                            f"(./run-tests starts one), or drop mariadb from --stores: {error}")  # fmt: skip
    ports = [*MEDIA_PORTS, *CALLER_PORTS]
    if "sipha" in proxies:
        ports.append(SIPHA_PORT)
    if "kamailio" in proxies:
        ports.append(KAMAILIO_PORT)
    busy = [port for port in sorted(ports) if not port_free(port)]
    if busy:
        problems.append(f"UDP ports in use on {HOST}: {', '.join(map(str, busy))}")
    return problems


def environment(proxies: list[str], stores: list[Store], source: Path,
                digest: str) -> dict[str, str]:  # fmt: skip
    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    git = _first_line(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"])
    dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--", "src"],
                           capture_output=True, text=True, check=False).stdout.strip()  # fmt: skip
    sipha = subprocess.run([sys.executable, "-c", "import sipha; print(sipha.__version__)"],
                           capture_output=True, text=True, env=sipha_env(source),
                           check=False).stdout.strip()  # fmt: skip
    env = {
        "CPU": f"{cpu}, {os.cpu_count()} cores",
        "Kernel": f"Linux {platform.release()}",
        "Memory": f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.1f} GiB",
        "Load before start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "Python": platform.python_version(),
        "Twisted": importlib.metadata.version("twisted"),
        "sipha": f"{sipha or '?'}: src/ as it was at the start (sha256 {digest}: git {git}"
        f"{' with uncommitted changes' if dirty else ''})",
        "SIPp": _first_line(["sipp", "-v"]).removesuffix("."),
    }
    if "kamailio" in proxies:
        env["Kamailio"] = (_first_line(["kamailio", "-v"]).removeprefix("version: ")
                           + f", allocator -x {KAMAILIO_ALLOCATOR}")  # fmt: skip
    if "sipha" in proxies and any(store.key == "mariadb" for store in stores):
        with contextlib.suppress(Exception):
            connection = mariadb_connect()
            cursor = connection.cursor()
            cursor.execute("SELECT VERSION()")
            env["MariaDB"] = (
                f"{cursor.fetchone()[0]} (not pinned: it runs where the kernel puts it)"
            )
            connection.close()
    return env


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/run.py", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    parser.add_argument(
        "--quick",
        action="store_true",
        help="4 s steps, one run, fewer bisections, memory at 0/2000/10000 calls",
    )
    parser.add_argument(
        "--stores",
        default="memory,sqlite,mariadb",
        help="sipha's dialog stores to measure (default: %(default)s)",
    )
    parser.add_argument(
        "--proxies",
        default="sipha,kamailio,direct",
        help="what to measure: sipha, kamailio, direct (default: %(default)s)",
    )
    parser.add_argument(
        "--db-url",
        action="append",
        default=[],
        metavar="URL",
        help="use this database instead of a fresh one: sqlite:///PATH for "
        "the SQLite store, mysql://USER@HOST:PORT/DB for MariaDB "
        "(used as is, never created or dropped); may be repeated",
    )
    parser.add_argument("--runs", type=int, help="rate searches per target (default 3, quick 1)")
    parser.add_argument(
        "--max-rate", type=int, default=25600, help="never ask for more CPS (default %(default)s)"
    )
    parser.add_argument(
        "--builds",
        default=",".join(BUILDS),
        help="sipha's builds to measure: source, compiled (default: %(default)s)",
    )
    parser.add_argument("--skip-memory", action="store_true", help="leave out the RSS phase")
    parser.add_argument(
        "--skip-profile", action="store_true", help="leave out the profile of the core"
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        help="where logs and sipp files go (default: a new /tmp/sipha-bench-*)",
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=BENCH / "RESULTS.md",
        help="the Markdown report (default: bench/RESULTS.md)",
    )
    args = parser.parse_args(argv)
    args.store_list = [s for s in args.stores.split(",") if s]
    args.proxy_list = [p for p in args.proxies.split(",") if p]
    args.build_list = [b for b in args.builds.split(",") if b]
    for name in args.build_list:
        if name not in BUILDS:
            parser.error(f"--builds: unknown build {name!r} (source, compiled)")
    for name in args.store_list:
        if name not in STORES:
            parser.error(f"--stores: unknown store {name!r} (memory, sqlite, mariadb)")
    for name in args.proxy_list:
        if name not in ("sipha", "kamailio", "direct"):
            parser.error(f"--proxies: unknown {name!r} (sipha, kamailio, direct)")
    for url in args.db_url:
        if not url.startswith(("sqlite:///", "mysql://")):
            parser.error(f"--db-url: {url!r} is neither sqlite:///PATH nor mysql://...")
    return args


class Interrupted(KeyboardInterrupt):
    """A signal ended the run; like Ctrl-C, the processes are stopped and the report written."""


def _interrupt(signum: int, frame: object) -> None:
    raise Interrupted(signal.Signals(signum).name)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    plan = dataclasses.replace(Plan.make(args.quick, args.runs), max_rate=args.max_rate)
    stores = [STORES[name] for name in args.store_list]
    proxies = args.proxy_list
    problems = check_setup(args, stores, proxies)
    if problems:
        print("bench/run.py cannot run:", *(f"  - {p}" for p in problems), sep="\n",
              file=sys.stderr)  # fmt: skip
        return 2

    # This process polls /proc during every step: keep it off the proxy's CPU.
    os.sched_setaffinity(0, {SIPP_CORE})
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="sipha-bench-"))
    workdir = workdir.resolve()
    scenarios = workdir / "scenarios"
    scenarios.mkdir(parents=True, exist_ok=True)
    # Copies, so that sipp's -trace_rtt files (written next to the scenario) stay out of tests/.
    for name in ("uac.xml", "uas.xml"):
        shutil.copyfile(SCENARIOS / name, scenarios / name)
    source, digest = snapshot_source(workdir)
    command = "python3 bench/run.py" + "".join(f" {a}" for a in (argv or sys.argv[1:]))
    results = Results(command, plan, environment(proxies, stores, source, digest),
                      datetime.now(UTC), workdir)  # fmt: skip
    builds: dict[str, Path] = {}
    databases = Databases(args.db_url)
    print(f"sipha benchmark: logs and sipp files in {workdir}", flush=True)
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _interrupt)

    def half_of_sipha(result: TargetResult) -> int | None:
        """Latency is read at half of sipha's in-memory maximum (its own, for the DB stores)."""
        own = result.best
        if result.proxy == "sipha" and own:
            return round_rate(own / 2)
        sipha = next((t.best for t in results.targets if t.proxy == "sipha" and t.best), None)
        rate = sipha or own
        return round_rate(rate / 2) if rate else None

    def save() -> None:
        results.rtt_resolution_ms = rtt_resolution(workdir)
        write_report(args.output, results)

    try:
        for build in args.build_list:
            builds[build] = source if build == "source" else build_compiled(source, workdir)
        if "sipha" in proxies:
            for build, path in builds.items():
                for store in stores:
                    bench_rates(lambda store=store, path=path, build=build:
                                Sipha(store, databases, path, build),
                                plan, results, half_of_sipha)  # fmt: skip
                    save()
        if "kamailio" in proxies:
            bench_rates(Kamailio, plan, results, half_of_sipha)
            save()
        if "direct" in proxies:
            bench_rates(Direct, plan, results, half_of_sipha)
            save()
        if "sipha" in proxies and not args.skip_memory:
            for build, path in builds.items():
                memory = next((t for t in results.targets
                               if t.build == build and t.store == "memory"), None)  # fmt: skip
                best = memory.best if memory else None
                rate = min(500, round_rate(best / 2)) if best else 200
                results.memory.append(bench_memory(plan, rate, databases, workdir, path, build))
                save()
        if not args.skip_profile:
            for build, path in builds.items():
                results.profiles.append(profile_core(path, build, workdir))
                save()
    except KeyboardInterrupt as interrupt:
        how = interrupt.args[0] if isinstance(interrupt, Interrupted) else "Ctrl-C"
        results.problem = f"interrupted ({how}): the tables hold what was measured before"
        print(f"\n{results.problem}", file=sys.stderr)
    except BenchError as error:
        results.problem = str(error)
        print(f"\nbench/run.py: {error}", file=sys.stderr)
    finally:
        stop_all()
        results.finished = datetime.now(UTC)
        save()
    print(f"\nResults: {args.output}  (raw files: {workdir})")
    return 1 if results.problem else 0


if __name__ == "__main__":
    sys.exit(main())
