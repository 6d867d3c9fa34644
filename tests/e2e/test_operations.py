"""Operating a running sipha: sipha-ctl, /metrics, JSON logs and the SSH Manhole.

Each test runs a real ``twistd -n sipha`` with sipp media servers and sipp
callers; calls that must be up while sipha is looked at are held with sipp's
``-d`` pause and started in the background. Probing is off, so the media
servers see only the calls of the test.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

import sipp
from sources import sipha_env

REPO = sipp.REPO
NO_PROBES: Mapping[str, Mapping[str, object]] = {
    "load_balancer": {"probing_interval": 0},
    "dispatcher": {"ping_interval": 0},
}


def ctl_command() -> list[str]:
    """The installed console script, else the module (the same code)."""
    script = Path(sys.executable).with_name("sipha-ctl")
    return [str(script)] if script.exists() else [sys.executable, "-m", "sipha.ctl"]


def ctl(*args: str, socket_path: Path | None = None) -> subprocess.CompletedProcess[str]:
    where = ["--socket", str(socket_path)] if socket_path is not None else []
    return subprocess.run(
        [*ctl_command(), *where, *args],
        capture_output=True,
        text=True,
        timeout=30,
        env=sipha_env(),
        check=False,
    )


def ctl_json(proxy: sipp.SiphaProxy, *args: str) -> Any:
    result = ctl(*args, "--json", socket_path=proxy.directory / "control.sock")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def start(
    sipha_proxy: Callable[..., sipp.SiphaProxy],
    servers: list[sipp.MediaServer],
    **sections: Mapping[str, object],
) -> sipp.SiphaProxy:
    port = sipp.free_port()
    return sipha_proxy(
        listen=[f"udp:127.0.0.1:{port}", f"tcp:127.0.0.1:{port}"],
        destinations=[s.uri for s in servers],
        sections={**NO_PROBES, **sections},
    )


def loads(proxy: sipp.SiphaProxy) -> dict[str, int]:
    """Load-balancer units in use by destination URI, as sipha-ctl reports them."""
    return {
        d["uri"]: d["resources"][0]["load"]
        for d in ctl_json(proxy, "destinations")["load_balancer"]
    }


def wait_for(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.1)
    return value


# --------------------------------------------------------------------------- sipha-ctl


def test_ctl_matches_calls_in_progress_and_disabling_drains(
    sipha_proxy, media_server, background_caller
) -> None:
    fs1, fs2 = media_server(sipp.free_port()), media_server(sipp.free_port())
    proxy = start(sipha_proxy, [fs1, fs2])
    held = background_caller(
        "uac.xml", proxy.address, calls=4, rate=100, limit=4, hold_ms=4000, timeout=30
    )

    dialogs = wait_for(
        lambda: (
            [d for d in ctl_json(proxy, "dialogs") if d["state"] == "confirmed"]
            if len(ctl_json(proxy, "dialogs")) == 4
            else None
        ),
        5,
        "4 dialogs up",
    )
    assert len(dialogs) == 4
    assert sorted(d["destination"] for d in dialogs) == sorted([fs1.uri, fs2.uri] * 2)
    assert loads(proxy) == {fs1.uri: 2, fs2.uri: 2}

    socket_path = proxy.directory / "control.sock"
    table = ctl("destinations", socket_path=socket_path)
    assert table.returncode == 0, table.stderr
    for uri in (fs1.uri, fs2.uri):
        assert re.search(
            rf"^\d+\s+1\s+{re.escape(uri)}\s+enabled\s+pstn=2/32\s", table.stdout, re.M
        ), table.stdout
        assert re.search(rf"^1\s+{re.escape(uri)}\s+active\s", table.stdout, re.M), table.stdout
    listing = ctl("dialogs", socket_path=socket_path)
    assert listing.returncode == 0, listing.stderr
    assert listing.stdout.startswith("4 dialogs\n")
    for dialog in dialogs:
        assert re.search(
            rf"^{re.escape(dialog['call_id'])}\s+confirmed\s+"
            rf"{re.escape(dialog['destination'])}\s",
            listing.stdout,
            re.M,
        )

    # Drain FS1: its calls stay up, new calls all go to FS2.
    drained = ctl("disable", fs1.uri, socket_path=socket_path)
    assert drained.returncode == 0, drained.stderr
    state = ctl_json(proxy, "destinations")
    assert [(d["uri"], d["enabled"], d["reason"]) for d in state["load_balancer"]] == [
        (fs1.uri, False, "operator"),
        (fs2.uri, True, None),
    ]
    assert [d["state"] for d in state["dispatcher"]] == ["inactive", "active"]
    more = background_caller(
        "uac.xml", proxy.address, calls=2, rate=100, limit=2, hold_ms=1500, timeout=30
    )
    wait_for(lambda: loads(proxy) == {fs1.uri: 2, fs2.uri: 4}, 5, "2 more calls on FS2 only")
    more.wait()
    held.wait()
    assert sipp.wait_for_total([fs1, fs2], 6) == 6
    assert (fs1.calls_completed, fs2.calls_completed) == (2, 4)
    assert ctl_json(proxy, "dialogs") == []
    assert loads(proxy) == {fs1.uri: 0, fs2.uri: 0}

    counters = ctl_json(proxy, "counters")
    assert counters["requests_received"]["INVITE"] == 6
    assert counters["requests_received"]["BYE"] == 6
    assert ctl("enable", fs1.uri, socket_path=socket_path).returncode == 0
    assert ctl_json(proxy, "destinations")["load_balancer"][0]["enabled"] is True

    proxy.stop()
    stopped = ctl("destinations", socket_path=socket_path)
    assert stopped.returncode == 3
    assert (
        stopped.stderr == f"sipha-ctl: sipha is not running: no control socket at {socket_path}\n"
    )


def test_ctl_ends_a_call_with_bye_both_ways(sipha_proxy, media_server, background_caller) -> None:
    fs1 = media_server(sipp.free_port())
    proxy = start(sipha_proxy, [fs1])
    held = background_caller(
        "uac.xml", proxy.address, calls=2, rate=100, limit=2, hold_ms=5000, timeout=30
    )
    dialogs = wait_for(
        lambda: (
            (found := ctl_json(proxy, "dialogs"))
            and len(found) == 2
            and all(d["state"] == "confirmed" for d in found)
            and found
        ),
        5,
        "2 calls up",
    )
    ended = ctl(
        "dialogs", "end", dialogs[0]["call_id"], socket_path=proxy.directory / "control.sock"
    )
    assert (ended.returncode, ended.stdout) == (0, "1 dialog(s) ended\n"), ended.stderr
    assert [d["call_id"] for d in ctl_json(proxy, "dialogs")] == [dialogs[1]["call_id"]]
    assert loads(proxy) == {fs1.uri: 1}
    # The media server got its BYE (its scenario completes the call) long before the hold ends.
    assert sipp.wait_for_total([fs1], 1, timeout=2) == 1
    result = held.wait(check=False)
    assert (result.successful, result.failed) == (1, 1), result.describe()  # the caller got a BYE
    again = ctl(
        "dialogs", "end", dialogs[0]["call_id"], socket_path=proxy.directory / "control.sock"
    )
    assert (again.returncode, again.stderr) == (
        1,
        f"sipha-ctl: no dialog with Call-ID {dialogs[0]['call_id']}\n",
    )


def test_ctl_finds_sipha_without_being_told(
    sipha_proxy, media_server, tmp_path, monkeypatch
) -> None:
    """With ``[control] socket = ""`` (the sample config), sipha-ctl needs no arguments."""
    from sipha.ctl import default_socket_path

    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    (tmp_path / "run").mkdir()
    default = default_socket_path()
    if default.exists() and ctl("destinations", socket_path=default).returncode != 3:
        pytest.skip(f"another sipha serves {default}")
    fs1 = media_server(sipp.free_port())
    start(sipha_proxy, [fs1], control={"socket": ""})
    result = ctl("destinations", "--json")
    assert result.returncode == 0, result.stderr
    assert [d["uri"] for d in json.loads(result.stdout)["load_balancer"]] == [fs1.uri]


def test_sipha_restarted_before_the_killed_one_is_reaped_comes_up(
    sipha_proxy, media_server, sipp_caller
) -> None:
    """A supervisor restarts sipha right after a SIGKILL, before it has reaped the process.

    The killed sipha is a zombie meanwhile: its PID still looks alive, so a
    PID lock would keep the new one from serving the control socket.
    """
    fs1 = media_server(sipp.free_port())
    proxy = start(sipha_proxy, [fs1])
    killed = proxy.process
    assert killed is not None
    os.kill(killed.pid, signal.SIGKILL)
    try:
        exited = os.waitid(os.P_PID, killed.pid, os.WEXITED | os.WNOWAIT)  # dead, not reaped
        assert exited.si_code == os.CLD_KILLED

        proxy.start()  # the same command on the same config, as systemd would

        assert [d["uri"] for d in ctl_json(proxy, "destinations")["load_balancer"]] == [fs1.uri]
        sipp_caller("options_self.xml", proxy.address)
        assert os.waitid(os.P_PID, killed.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    finally:
        killed.wait()


def test_a_second_sipha_on_the_same_control_socket_stops_with_one_line(
    sipha_proxy, media_server, tmp_path
) -> None:
    """twistd prints the reason as one line, and the running sipha goes on serving."""
    fs1 = media_server(sipp.free_port())
    first = start(sipha_proxy, [fs1])
    socket_path = first.directory / "control.sock"
    port = sipp.free_port()
    (tmp_path / "second").mkdir()
    second = sipp.SiphaProxy(
        tmp_path / "second",
        [f"udp:127.0.0.1:{port}"],
        [fs1.uri],
        sections={"control": {"socket": str(socket_path)}},
    )

    ran = subprocess.run(
        second.command,
        capture_output=True,
        text=True,
        timeout=30,
        env=sipha_env(),
        check=False,
    )

    assert ran.returncode == 1, ran.stdout
    assert f"sipha: another sipha serves the control socket {socket_path}\n" in ran.stdout
    assert "Traceback" not in ran.stdout
    assert ctl_json(first, "destinations")["load_balancer"][0]["uri"] == fs1.uri


# --------------------------------------------------------------------------- metrics and logs


_SAMPLE = re.compile(r"^([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)$")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


class Samples(dict[tuple[str, frozenset[tuple[str, str]]], float]):
    """One scrape: ``samples("sipha_dialogs", state="confirmed")``, labels in any order."""

    def __call__(self, name: str, default: float | None = None, **labels: object) -> float:
        key = (name, frozenset((k, str(v)) for k, v in labels.items()))
        if default is None:
            return self[key]
        return self.get(key, default)

    def total(self, name: str) -> float:
        return sum(value for (metric, _), value in self.items() if metric == name)


def scrape(port: int) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        assert response.headers["Content-Type"].startswith("text/plain; version=")
        text = response.read().decode()
    samples = Samples()
    for line in text.splitlines():
        if line and not line.startswith("#"):
            match = _SAMPLE.match(line)
            assert match, line
            labels = frozenset(_LABEL.findall(match[2] or ""))
            samples[(match[1], labels)] = float(match[3])
    return samples


def test_metrics_follow_the_calls_and_logs_are_json_lines(
    sipha_proxy, media_server, background_caller
) -> None:
    fs1, fs2 = media_server(sipp.free_port()), media_server(sipp.free_port())
    port = sipp.free_tcp_port()
    proxy = start(
        sipha_proxy,
        [fs1, fs2],
        metrics={"listen": f"tcp:{port}:interface=127.0.0.1"},
        log={"format": "json"},
    )
    before = scrape(port)
    assert before("sipha_requests_received_total", 0, method="INVITE") == 0
    assert before("sipha_dialogs", state="confirmed") == 0
    assert before("sipha_lb_destination_up", group=1, uri=fs1.uri) == 1

    calls = background_caller(
        "uac.xml", proxy.address, calls=4, rate=100, limit=4, hold_ms=3000, timeout=30
    )
    during = wait_for(
        lambda: (m := scrape(port))("sipha_dialogs", state="confirmed") == 4 and m,
        5,
        "4 confirmed dialogs in /metrics",
    )
    assert during("sipha_requests_received_total", method="INVITE") == 4
    assert during("sipha_requests_received_total", method="ACK") == 4
    assert during("sipha_requests_received_total", 0, method="BYE") == 0
    for fs in (fs1, fs2):
        labels = {"group": 1, "uri": fs.uri, "resource": "pstn"}
        assert during("sipha_lb_load", **labels) == 2
        assert during("sipha_lb_capacity", **labels) == 32
    assert during("sipha_responses_received_total", code=200) == 4
    assert during("sipha_responses_sent_total", code=100) == 4
    assert during("sipha_dialog_store_queue") == 0
    assert during("sipha_dialog_store_connected") == 1
    assert during("sipha_transactions", kind="server") >= 0

    # A request sipha cannot parse: counted, answered 400, logged with its Call-ID.
    call_id = "bad-cseq-1@sipha.test"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(2)
        sock.bind(("127.0.0.1", 0))
        via = f"127.0.0.1:{sock.getsockname()[1]}"
        bad = (
            f"OPTIONS sip:x@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP {via};branch=z9hG4bKx1\r\n"
            "From: <sip:a@127.0.0.1>;tag=1\r\nTo: <sip:x@127.0.0.1>\r\n"
            f"Call-ID: {call_id}\r\nCSeq: x OPTIONS\r\nContent-Length: 0\r\n\r\n"
        )
        sock.sendto(bad.encode(), sipp.split_hostport(proxy.address))
        assert sock.recv(65535).startswith(b"SIP/2.0 400 Bad CSeq")

    calls.wait()
    after = wait_for(
        lambda: (m := scrape(port))("sipha_dialogs", state="confirmed") == 0 and m,
        5,
        "no dialogs left in /metrics",
    )
    assert after("sipha_requests_received_total", method="BYE") == 4
    assert after("sipha_requests_received_total", method="INVITE") == 4
    assert after("sipha_responses_received_total", code=200) == 8  # INVITEs and BYEs
    assert after("sipha_parse_errors_total") == 1
    assert after.total("sipha_lb_load") == 0

    lines = proxy.log_path.read_text().splitlines()
    events = [json.loads(line) for line in lines]  # every line is one JSON object
    assert any(e.get("text", "").startswith("sipha listening on udp:") for e in events)
    rejected = [e for e in events if e.get("text", "").startswith("rejected request")]
    assert len(rejected) == 1
    assert rejected[0]["call_id"] == call_id
    assert rejected[0]["level"] == "info"
    assert rejected[0]["text"].endswith(f"[Call-ID {call_id}]")


# --------------------------------------------------------------------------- Manhole


def ssh_keygen(path: Path) -> Path:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "test", "-f", str(path)],
        check=True,
        timeout=30,
    )
    return path


def ssh_command(key: Path, port: int, *extra: str) -> list[str]:
    return [
        "ssh",
        "-i",
        str(key),
        "-p",
        str(port),
        "-o",
        "BatchMode=yes",
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        "UserKnownHostsFile=/dev/null",
        "-o",
        "LogLevel=ERROR",
        "-o",
        "ConnectTimeout=5",
        *extra,
        "operator@127.0.0.1",
    ]


class Session:
    """An interactive ssh -tt session: type lines, wait for output."""

    ANSI = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]")

    def __init__(self, command: list[str]):
        self.process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        self.output = bytearray()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        while chunk := self.process.stdout.read1(4096):
            self.output += chunk

    @property
    def text(self) -> str:
        return self.ANSI.sub(b"", bytes(self.output)).decode(errors="replace")

    def type(self, line: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(line.encode() + b"\r")
        self.process.stdin.flush()

    def expect(self, pattern: str, timeout: float = 5) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while not (match := re.search(pattern, self.text)):
            if time.monotonic() > deadline or self.process.poll() is not None:
                pytest.fail(f"no {pattern!r} from the Manhole; got:\n{self.text[-3000:]}")
            time.sleep(0.05)
        return match

    def close(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(OSError):
                self.type("\x04")
            try:
                self.process.wait(timeout=3)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.mark.skipif(shutil.which("ssh") is None, reason="needs the OpenSSH client (openssh-client)")
def test_manhole_over_ssh_reads_live_state_and_refuses_a_wrong_key(
    sipha_proxy, media_server, tmp_path
) -> None:
    key = ssh_keygen(tmp_path / "operator")
    stranger = ssh_keygen(tmp_path / "stranger")
    authorized = tmp_path / "authorized_keys"
    authorized.write_text(Path(f"{key}.pub").read_text())
    fs1, fs2 = media_server(sipp.free_port()), media_server(sipp.free_port())
    port = sipp.free_tcp_port()
    proxy = start(
        sipha_proxy,
        [fs1, fs2],
        manhole={
            "enabled": True,
            "listen": f"tcp:{port}:interface=127.0.0.1",
            "authorized_keys": str(authorized),
        },
    )
    # The host key was generated beside the database, for the next start.
    assert (proxy.directory / "manhole_host_key").stat().st_mode & 0o777 == 0o600

    assert (
        ctl("lb", "disable", fs2.uri, socket_path=proxy.directory / "control.sock").returncode == 0
    )
    session = Session(ssh_command(key, port, "-tt"))
    try:
        session.expect(r">>> ")
        session.type('print("count=%d" % len(balancer.list()))')
        session.expect(r"count=2\b")
        session.type('print("enabled=%s" % [d["enabled"] for d in balancer.list()])')
        session.expect(r"enabled=\[True, False\]")
        session.type(f'print("load=%s" % balancer.load("{fs1.uri}"))')
        session.expect(r"load=\{'pstn': 0\}")
        session.type("help()")
        session.expect(r"end_dialog\(call_id\)")
    finally:
        session.close()

    refused = subprocess.run(
        ssh_command(stranger, port, "-T"),
        capture_output=True,
        text=True,
        timeout=20,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    assert refused.returncode == 255
    assert "Permission denied" in refused.stderr
