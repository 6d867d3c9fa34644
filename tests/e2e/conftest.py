"""Fixtures for end-to-end tests: sipha, sipp media servers and sipp callers.

Each test gets its own directory for configuration, logs and sipp traces,
and every process a fixture starts is stopped by PID at teardown.  When a
test fails, the logs of the processes it started are appended to the
report.  sipha is run as a separate twistd process and never imported.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from pathlib import Path

import pytest

# Tests import the harness as a plain module, whatever pytest's import mode.
if str(Path(__file__).parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).parent))

import sipp

LOGS = pytest.StashKey[list[tuple[str, Path]]]()


def _register_logs(node: pytest.Item, logs: list[tuple[str, Path]]) -> None:
    node.stash.setdefault(LOGS, []).extend(logs)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Append the logs of sipha and the media servers to a failed test's report."""
    report = yield
    if report.failed:
        for title, path in item.stash.get(LOGS, []):
            text = sipp.log_tail(path)
            if text.strip():
                report.sections.append((f"{title} ({path})", text))
    return report


@pytest.fixture
def sipha_proxy(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[Callable[..., sipp.SiphaProxy]]:
    """Factory starting sipha under twistd with a configuration written for the test.

    Call it as ``sipha_proxy(listen=[...], destinations=[...], fr_timer=...,
    sections={...})``; it returns once sipha answers OPTIONS.  Every proxy is
    stopped at teardown, and one that died during the test fails it.
    """
    proxies: list[sipp.SiphaProxy] = []

    def start(
        listen: Sequence[str] = ("udp:127.0.0.1:5060", "tcp:127.0.0.1:5060"),
        destinations: Sequence[str | sipp.Destination] = ("sip:127.0.0.1:5071",),
        *,
        fr_timer: float = 2.0,
        sections: Mapping[str, Mapping[str, object]] | None = None,
        ready_timeout: float = 10.0,
        namespace: str | None = None,
    ) -> sipp.SiphaProxy:
        __tracebackhide__ = True
        directory = tmp_path / f"sipha-{len(proxies) + 1}"
        directory.mkdir()
        proxy = sipp.SiphaProxy(
            directory,
            listen,
            destinations,
            fr_timer=fr_timer,
            sections=sections,
            namespace=namespace,
        )
        proxies.append(proxy)
        _register_logs(request.node, [(f"sipha log {directory.name}", proxy.log_path)])
        return proxy.start(ready_timeout)

    yield start

    # Exited on its own: neither running nor stopped by the test.
    died = [
        proxy
        for proxy in proxies
        if proxy.process is not None and not proxy.running and proxy.returncode is None
    ]
    for proxy in proxies:
        proxy.stop()
    if died:
        details = "\n".join(
            f"{proxy!r} exited with status {proxy.returncode}\n{proxy.log()[-sipp.LOG_TAIL :]}"
            for proxy in died
        )
        pytest.fail(f"sipha exited during the test\n{details}", pytrace=False)


@pytest.fixture
def media_server(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[Callable[..., sipp.MediaServer]]:
    """Factory starting a sipp media server (see sipp.MediaServer); stopped at teardown."""
    servers: list[sipp.MediaServer] = []

    def start(
        port: int,
        scenario: str | Path = "uas.xml",
        transport: str = "u1",
        *,
        ip: str = "127.0.0.1",
        stats_interval: float = 0.25,
        trace_msg: bool = False,
        extra: Sequence[str] = (),
        namespace: str | None = None,
    ) -> sipp.MediaServer:
        __tracebackhide__ = True
        server = sipp.MediaServer(
            port,
            scenario,
            transport,
            tmp_path,
            ip=ip,
            stats_interval=stats_interval,
            trace_msg=trace_msg,
            extra=extra,
            namespace=namespace,
        )
        servers.append(server)
        _register_logs(request.node, server.logs)
        return server.start()

    yield start

    for server in servers:
        if server.process is not None:
            server.stop()


@pytest.fixture
def namespace() -> Iterator[str]:
    """A network namespace of the test's own, loopback up; deleted with all in it."""
    if os.geteuid() != 0:
        pytest.fail("network namespaces need root (run ./run-tests as root, as CI does)")
    name = f"sipha-e2e-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(sipp.in_namespace(name, ["ip", "link", "set", "lo", "up"]), check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=False)


@pytest.fixture
def name_server(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[Callable[..., sipp.NameServer]]:
    """Factory starting a DNS server for ``sipha.test`` (see sipp.NameServer); stopped at teardown."""
    servers: list[sipp.NameServer] = []

    def start(records: Sequence[str]) -> sipp.NameServer:
        __tracebackhide__ = True
        server = sipp.NameServer(tmp_path, sipp.free_udp_port(), records)
        servers.append(server)
        _register_logs(request.node, [(f"DNS server {server.address}", server.log_path)])
        return server.start()

    yield start

    for server in servers:
        server.stop()


@pytest.fixture
def sipp_caller(tmp_path: Path) -> Callable[..., sipp.SippResult]:
    """sipp.run_caller with its trace files in the test's directory."""
    return functools.partial(sipp.run_caller, workdir=tmp_path)


@pytest.fixture
def background_caller(tmp_path: Path) -> Iterator[Callable[..., sipp.Caller]]:
    """sipp.start_caller with its trace files in the test's directory; stopped at teardown."""
    callers: list[sipp.Caller] = []

    def start(*args: object, **kwargs: object) -> sipp.Caller:
        caller = sipp.start_caller(*args, workdir=tmp_path, **kwargs)  # type: ignore[arg-type]
        callers.append(caller)
        return caller

    yield start

    for caller in callers:
        caller.stop()
