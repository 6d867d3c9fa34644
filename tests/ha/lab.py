"""A high-availability lab in network namespaces: the sipha pair, keepalived, MariaDB, sipp.

One Ethernet segment (a Linux bridge in a "switch" namespace, a veth to each
host) carries 198.18.0.0/24, a part of the benchmarking range::

    lb1     198.18.0.11   sipha + keepalived (priority 150)
    lb2     198.18.0.12   sipha + keepalived (priority 100)
    VIP     198.18.0.100  moved between lb1 and lb2 by keepalived (VRRP)
    fs1     198.18.0.21   sipp media server (rings 3 s, then answers)
    fs2     198.18.0.22   sipp media server
    db      198.18.0.30   mariadbd, the shared dialog table
    caller  198.18.0.40   sipp caller, calling sip:service@VIP

Every host is a namespace named ``sipha-ha<PID>-<host>``, so runs never meet.
keepalived runs the shipped etc/keepalived/keepalived.conf and sipha-notify
with only addresses and paths changed (the shipped files use 192.0.2.0/24; the
lab keeps the last octet). sipha is the working tree's, as ``twistd -n sipha``;
``sipha-ctl`` is the working tree's too, through a wrapper that logs every call
(so the lab can tell which roles keepalived asked for). Every process is
started here and stopped by its PID; :meth:`Lab.close` deletes the namespaces.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

import sipp
from dbserver import PrivateMariaDB
from sources import sipha_env

REPO = Path(__file__).resolve().parents[2]
ETC = REPO / "etc"

NET = "198.18.0."
PREFIX = 24
VIP = NET + "100"
HOSTS = {
    "lb1": NET + "11",
    "lb2": NET + "12",
    "fs1": NET + "21",
    "fs2": NET + "22",
    "db": NET + "30",
    "caller": NET + "40",
}
NODES = ("lb1", "lb2")
MEDIA_SERVERS = ("fs1", "fs2")
SIP_PORT = 5060
DATABASE = "sipha_lab"
#: The network the shipped keepalived and heartbeat files are written for.
DOC_NET = "192.0.2."

#: How often the VIP is looked for while it moves.
VIP_POLL = 0.02


class LabError(AssertionError):
    """The lab could not be brought into the state a test needs."""


@dataclass
class Record:
    """What a test measured and every expectation it checked, failed or not.

    A failover test checks many things at once (calls, 503s, counters on both
    nodes, the table); seeing them all tells far more than the first failure.
    """

    figures: dict[str, object] = field(default_factory=dict)
    checks: list[tuple[bool, str]] = field(default_factory=list)

    def check(self, ok: object, what: str, details: object = "") -> bool:
        self.checks.append((bool(ok), what if ok else f"{what} -- got {details}"))
        return bool(ok)

    def verify(self, context: str = "") -> None:
        """Fail the test listing every failed check (and the figures) when any failed."""
        __tracebackhide__ = True
        failed = [what for ok, what in self.checks if not ok]
        if failed:
            lines = [f"{len(failed)} of {len(self.checks)} checks failed:"]
            lines += [f"  FAIL {what}" for what in failed]
            lines.append(f"figures: {self.figures}")
            pytest.fail("\n".join(lines) + ("\n" + context if context else ""), pytrace=False)


def _run(
    *command: str, check: bool = True, timeout: float = 10
) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
    )
    if check and done.returncode:
        raise LabError(f"$ {shlex.join(command)} -> {done.returncode}\n{done.stderr}")
    return done


def require_root_and_tools() -> None:
    """Fail (never skip) when the lab cannot be built, as run-tests provides all of it."""
    __tracebackhide__ = True
    if os.geteuid() != 0:
        pytest.fail("the HA lab needs root (network namespaces); run ./run-tests as root")
    for tool, package in (
        ("keepalived", "keepalived"),
        ("ip", "iproute2"),
        ("timeout", "coreutils"),
    ):
        if shutil.which(tool) is None and shutil.which(tool, path="/usr/sbin:/sbin") is None:
            pytest.fail(f"{tool} (Debian package {package}) is required; run ./run-tests")
    sipp.sipp_binary()


def substitute(text: str, replacements: dict[str, str]) -> str:
    """``text`` with each key replaced; a key that does not occur is an error (the file changed)."""
    for old, new in replacements.items():
        if old not in text:
            raise LabError(f"{old!r} no longer occurs in the shipped file; update the lab")
        text = text.replace(old, new)
    return text


# --------------------------------------------------------------------------- network


class Network:
    """The namespaces, the bridge and the veths; the VIP as seen on each host."""

    def __init__(self, tag: str, hosts: dict[str, str]) -> None:
        self.tag = tag
        self.hosts = hosts
        self.namespaces: list[str] = []

    def name(self, host: str) -> str:
        return f"{self.tag}-{host}"

    def exec(self, host: str, *command: str) -> list[str]:
        """``command`` run inside ``host``'s namespace."""
        return ["ip", "netns", "exec", self.name(host), *command]

    def _add(self, host: str) -> str:
        name = self.name(host)
        _run("ip", "netns", "add", name)
        self.namespaces.append(name)
        _run("ip", "-n", name, "link", "set", "lo", "up")
        return name

    def create(self) -> None:
        switch = self._add("switch")
        # No STP: a port forwards the moment it is up.
        _run("ip", "-n", switch, "link", "add", "br0", "type", "bridge", "stp_state", "0")
        _run("ip", "-n", switch, "link", "set", "br0", "up")
        for host, address in self.hosts.items():
            name = self._add(host)
            port = f"v-{host}"
            _run(
                "ip", "-n", switch, "link", "add", port, "type", "veth",
                "peer", "name", "eth0", "netns", name,
            )  # fmt: skip
            _run("ip", "-n", switch, "link", "set", port, "master", "br0", "up")
            _run("ip", "-n", name, "addr", "add", f"{address}/{PREFIX}", "dev", "eth0")
            _run("ip", "-n", name, "link", "set", "eth0", "up")

    def delete(self) -> None:
        """Delete every namespace made (their processes must be stopped first)."""
        while self.namespaces:
            _run("ip", "netns", "delete", self.namespaces.pop(), check=False)

    def addresses(self, host: str) -> set[str]:
        done = _run("ip", "-n", self.name(host), "-o", "-4", "addr", "show", "dev", "eth0")
        found = set()
        for line in done.stdout.splitlines():
            fields = line.split()
            if "inet" in fields:
                found.add(fields[fields.index("inet") + 1].partition("/")[0])
        return found

    def vip_holders(self) -> list[str]:
        return [node for node in NODES if VIP in self.addresses(node)]

    def set_link(self, host: str, up: bool) -> None:
        _run("ip", "-n", self.name(host), "link", "set", "eth0", "up" if up else "down")

    def drop_vip(self, host: str) -> None:
        """Forget a VIP a crashed node still had: a rebooted host comes back without it."""
        if VIP in self.addresses(host):
            _run("ip", "-n", self.name(host), "addr", "del", f"{VIP}/{PREFIX}", "dev", "eth0")

    def wait_for_vip(self, host: str, timeout: float) -> float | None:
        """Poll every 20 ms until the VIP is on ``host``; the monotonic time it was seen, or None."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if VIP in self.addresses(host):
                return time.monotonic()
            time.sleep(VIP_POLL)
        return None


# --------------------------------------------------------------------------- processes


class Daemon:
    """A long-running process of the lab inside a host's namespace, its output in a log file."""

    def __init__(
        self, name: str, command: Sequence[str], log: Path, env: dict[str, str] | None = None
    ) -> None:
        self.name = name
        self.command = list(command)
        self.log_path = log
        self.env = env
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Daemon:
        with self.log_path.open("ab") as log:
            log.write(f"\n=== {time.strftime('%H:%M:%S')} $ {shlex.join(self.command)}\n".encode())
            log.flush()
            self.process = subprocess.Popen(
                self.command, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=self.env
            )
        return self

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL it by its PID and reap it: a crash."""
        if self.running:
            assert self.process is not None
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self, grace: float = 10.0) -> int | None:
        """SIGTERM it by its PID, SIGKILL after ``grace`` seconds."""
        if self.process is None:
            return None
        return sipp.terminate(self.process, grace)

    def log(self, limit: int = sipp.LOG_TAIL) -> str:
        return sipp.log_tail(self.log_path, limit)


class Keepalived(Daemon):
    """keepalived in the foreground; its VRRP child is found by its own pid file."""

    def __init__(self, name: str, command: Sequence[str], log: Path, vrrp_pidfile: Path) -> None:
        super().__init__(name, command, log, env={**os.environ})
        self.vrrp_pidfile = vrrp_pidfile

    def _child(self) -> int | None:
        """The VRRP child's PID, if it is still a keepalived process."""
        with contextlib.suppress(OSError, ValueError):
            pid = int(self.vrrp_pidfile.read_text().split()[0])
            if Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].endswith(b"keepalived"):
                return pid
        return None

    def kill(self) -> None:
        """SIGKILL the VRRP child first: a crashed host resigns nothing and keeps its addresses."""
        child = self._child()
        if child is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGKILL)
        super().kill()

    def stop(self, grace: float = 10.0) -> int | None:
        status = super().stop(grace)
        child = self._child()
        if child is not None:  # left behind by a parent that was killed
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGKILL)
        return status


# --------------------------------------------------------------------------- sipp


def _bound_in_namespace(pid: int, port: int) -> bool:
    """Whether ``pid`` has a UDP socket on ``port``, read from its own namespace's table."""
    inodes = sipp.socket_inodes(pid)
    with contextlib.suppress(OSError), open(f"/proc/{pid}/net/udp") as table:
        next(table, None)
        for line in table:
            fields = line.split()
            bound = len(fields) > 9 and int(fields[1].rpartition(":")[2], 16) == port
            if bound and fields[9] in inodes:
                return True
    return False


class LabMediaServer:
    """A sipp UAS on ``host``:5060 (uas_ha.xml: 180, 3 s of ringing, 200), answering probes."""

    def __init__(self, lab: Lab, host: str, scenario: str = "uas_ha.xml") -> None:
        self.host = host
        self.address = HOSTS[host]
        self.files = sipp.SippFiles.under(lab.directory / host, f"{host}-uas")
        self.command = lab.network.exec(
            host,
            sipp.sipp_binary(),
            "-sf", str(sipp.scenario_path(scenario)),
            "-i", self.address,
            "-p", str(SIP_PORT),
            "-t", "u1",
            "-aa",
            "-nostdin",
            *self.files.trace_args(stats_interval=0.25, trace_msg=False),
        )  # fmt: skip
        self.daemon = Daemon(host, self.command, self.files.stdout)

    @property
    def uri(self) -> str:
        return f"sip:{self.address}:{SIP_PORT}"

    def start(self, timeout: float = 5.0) -> None:
        self.daemon.start()
        assert self.daemon.pid is not None
        pid = self.daemon.pid
        if not sipp.wait_until(lambda: _bound_in_namespace(pid, SIP_PORT), timeout):
            raise LabError(f"sipp on {self.host} did not bind\n{self.daemon.log()}")

    @property
    def completed(self) -> int:
        return sipp.counter(sipp.read_stats(self.files.stats), "SuccessfulCall(C)")


@dataclass
class CallOutcome:
    """What the caller saw, and when each 503 arrived (UNIX time)."""

    result: sipp.SippResult
    refused_at: list[float]

    @property
    def successful(self) -> int:
        return self.result.successful

    @property
    def failed(self) -> int:
        return self.result.failed

    def refused_after(self, moment: float) -> int:
        return sum(1 for at in self.refused_at if at >= moment)


def received_statuses(messages: str) -> list[tuple[float, int]]:
    """(UNIX time, status) of every response in a sipp -trace_msg file."""
    found = []
    for block in messages.split("----------------------------------------------- ")[1:]:
        head, _, rest = block.partition("\n")
        if not rest.lstrip().startswith(("UDP message received", "TCP message received")):
            continue
        with contextlib.suppress(ValueError, IndexError):
            stamp = datetime.strptime(head.strip(), "%Y-%m-%d %H:%M:%S.%f").timestamp()
            first = rest.split("\n\n", 1)[1].lstrip("\n").split("\n", 1)[0]
            if first.startswith("SIP/2.0 "):
                found.append((stamp, int(first.split()[1])))
    return found


# --------------------------------------------------------------------------- sipha nodes


class Node:
    """One load balancer: its sipha, its keepalived and its sipha-ctl, all by the shipped files."""

    def __init__(self, lab: Lab, host: str) -> None:
        self.lab = lab
        self.host = host
        self.address = HOSTS[host]
        self.peer = HOSTS[NODES[1 - NODES.index(host)]]
        self.directory = lab.directory / host
        self.directory.mkdir(parents=True, exist_ok=True)
        self.config = self.directory / "sipha.toml"
        self.ctl_path = self.directory / "sipha-ctl"
        self.ctl_log = self.directory / "sipha-ctl.log"
        self.sipha = Daemon(
            f"sipha {host}",
            lab.network.exec(
                host,
                *sipp.twistd_command(),
                "-n",
                "--pidfile=",
                "sipha",
                "--config",
                str(self.config),
            ),
            self.directory / "sipha.log",
            env=sipha_env(PYTHONUNBUFFERED="1"),
        )
        self.keepalived_conf = self.directory / "keepalived.conf"
        self.keepalived = Keepalived(
            f"keepalived {host}",
            lab.network.exec(
                host,
                shutil.which("keepalived") or "/usr/sbin/keepalived",
                "--dont-fork",
                "--log-console",
                "--log-detail",
                "--no-syslog",
                "--vrrp",
                f"--config-id={host}",
                f"--use-file={self.keepalived_conf}",
                f"--pid={self.directory / 'keepalived.pid'}",
                f"--vrrp_pid={self.directory / 'keepalived-vrrp.pid'}",
                f"--checkers_pid={self.directory / 'keepalived-checkers.pid'}",
            ),
            self.directory / "keepalived.log",
            self.directory / "keepalived-vrrp.pid",
        )
        # The notify script runs with keepalived's environment.
        assert self.keepalived.env is not None
        self.keepalived.env["SIPHA_CTL"] = str(self.ctl_path)

    def write_files(self, db_url: str, media_servers: Sequence[LabMediaServer]) -> None:
        resources = f"pstn={self.lab.capacity}"
        self.config.write_text(
            sipp.sipha_config(
                self.directory,
                [f"udp:{VIP}:{SIP_PORT}"],
                [
                    sipp.Destination(server.uri, resources=resources, dispatcher=False)
                    for server in media_servers
                ],
                sections={
                    "ha": {
                        "virtual_ip": VIP,
                        "node_address": self.address,
                        "peer": self.peer,
                        "replication_port": 5566,
                    },
                    "database": {"url": db_url},
                    "dialog": {"db_mode": 1},
                    "load_balancer": {"probing_interval": 1},
                    "dispatcher": {"ping_interval": 0},
                },
            )
        )
        self.ctl_path.write_text(
            "#!/bin/sh\n"
            "# sipha-ctl of the working tree; every call is logged for the lab.\n"
            f"PYTHONPATH={shlex.quote(str(REPO / 'src'))} "
            f'{shlex.quote(sys.executable)} -m sipha.ctl "$@"\n'
            "status=$?\n"
            f'echo "$(date +%s.%N) $* -> $status" >> {shlex.quote(str(self.ctl_log))}\n'
            'exit "$status"\n'
        )
        self.ctl_path.chmod(0o755)
        notify = self.directory / "sipha-notify"
        shutil.copyfile(ETC / "keepalived" / "sipha-notify", notify)
        notify.chmod(0o755)
        shipped = (ETC / "keepalived" / "keepalived.conf").read_text()
        self.keepalived_conf.write_text(
            substitute(
                shipped,
                {
                    "/usr/local/bin/sipha-ctl": str(self.ctl_path),
                    "/etc/sipha/sipha.toml": str(self.config),
                    "/etc/keepalived/sipha-notify": str(notify),
                    DOC_NET: NET,
                },
            )
        )

    # -- sipha-ctl

    def ctl(self, *args: str, timeout: float = 5.0) -> subprocess.CompletedProcess[str]:
        """Run the lab's sipha-ctl (the control socket is a file: no namespace needed)."""
        try:
            return subprocess.run(
                [
                    str(self.ctl_path),
                    "--config",
                    str(self.config),
                    "--timeout",
                    str(timeout),
                    *args,
                ],
                capture_output=True,
                text=True,
                timeout=timeout + 10,
                stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired as error:
            return subprocess.CompletedProcess(error.cmd, 124, "", "sipha-ctl hung")

    def ctl_json(self, *args: str, timeout: float = 5.0) -> Any:
        """sipha's JSON answer to ``args``, or None when it gave none."""
        done = self.ctl("--json", *args, timeout=timeout)
        if done.returncode:
            return None
        try:
            return json.loads(done.stdout)
        except ValueError:
            return None

    def ha_status(self) -> dict[str, Any] | None:
        status = self.ctl_json("ha", "status", timeout=2)
        return status if isinstance(status, dict) else None

    def role(self) -> str | None:
        status = self.ha_status()
        return None if status is None else status.get("role")

    def dialogs(self) -> int | None:
        """Dialogs this sipha holds, in any state; None when it does not answer."""
        counters = self.ctl_json("counters")
        if not isinstance(counters, dict):
            return None
        return sum(int(count) for count in counters.get("dialogs", {}).values())

    def requests_received(self, method: str) -> int | None:
        counters = self.ctl_json("counters")
        if not isinstance(counters, dict):
            return None
        return int(counters.get("requests_received", {}).get(method, 0))

    def load(self) -> dict[str, int] | None:
        """Load-balancer units in use, by destination URI."""
        listing = self.ctl_json("destinations")
        if not isinstance(listing, dict):
            return None
        return {
            row["uri"]: sum(int(resource["load"]) for resource in row["resources"])
            for row in listing.get("load_balancer", [])
        }

    def idle(self) -> bool:
        """No dialog and no load-balancer unit held."""
        load = self.load()
        return self.dialogs() == 0 and load is not None and not any(load.values())

    def ctl_calls(self, since: float = 0.0) -> list[str]:
        """The role commands (``ha active``/``ha passive``) run through this node's sipha-ctl."""
        calls = []
        with contextlib.suppress(FileNotFoundError):
            for line in self.ctl_log.read_text().splitlines():
                stamp, _, rest = line.partition(" ")
                with contextlib.suppress(ValueError):
                    if float(stamp) >= since and (" ha active" in rest or " ha passive" in rest):
                        calls.append(rest)
        return calls

    def resource(self, action: str) -> subprocess.CompletedProcess[str]:
        """Run the shipped heartbeat resource script (etc/heartbeat/resource.d/sipha) for this node."""
        return subprocess.run(
            [str(ETC / "heartbeat" / "resource.d" / "sipha"), action],
            capture_output=True,
            text=True,
            timeout=30,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "SIPHA_CTL": str(self.ctl_path), "SIPHA_CONFIG": str(self.config)},
        )

    # -- processes

    def start_sipha(self, timeout: float = 20.0) -> None:
        """Start sipha and wait until it answers on its control socket."""
        self.sipha.start()
        deadline = time.monotonic() + timeout
        while self.ctl("counters", timeout=1).returncode != 0:
            if not self.sipha.running:
                raise LabError(f"sipha on {self.host} exited at start\n{self.sipha.log()}")
            if time.monotonic() > deadline:
                raise LabError(
                    f"sipha on {self.host} did not answer in {timeout}s\n{self.sipha.log()}"
                )
            time.sleep(0.1)

    def start_keepalived(self) -> None:
        self.keepalived.start()

    def crash(self) -> None:
        """The host dies: its link goes down, then sipha and keepalived are SIGKILLed."""
        self.lab.network.set_link(self.host, up=False)
        self.sipha.kill()
        self.keepalived.kill()

    @property
    def link_up(self) -> bool:
        done = _run("ip", "-n", self.lab.network.name(self.host), "-o", "link", "show", "eth0")
        return ",UP" in done.stdout or "<UP" in done.stdout

    def revive(self) -> None:
        """The host comes back: link up, without the VIP it had when it died."""
        if not self.link_up:
            self.lab.network.drop_vip(self.host)
            self.lab.network.set_link(self.host, up=True)

    def stop(self) -> None:
        self.keepalived.stop()
        self.sipha.stop()

    def logs(self) -> list[tuple[str, Path]]:
        return [
            (f"sipha {self.host}", self.sipha.log_path),
            (f"keepalived {self.host}", self.keepalived.log_path),
            (f"sipha-ctl calls {self.host}", self.ctl_log),
        ]


# --------------------------------------------------------------------------- the lab


class Lab:
    """The whole pair in namespaces; :meth:`open` builds it, :meth:`close` takes it all down.

    The database is one MariaDB on the host ``db``; a subclass may run another
    (galera.py: a Galera cluster) by overriding ``hosts`` and the ``*database*``
    methods.
    """

    hosts = HOSTS
    #: Load-balancer units (pstn) of each media server.
    capacity = 32

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.network = Network(f"sipha-ha{os.getpid()}", self.hosts)
        self.media_servers = [LabMediaServer(self, host) for host in MEDIA_SERVERS]
        self.nodes = {host: Node(self, host) for host in NODES}
        self.callers: list[sipp.Caller] = []
        self.db_url = ""

    def open(self, keepalived: bool = True) -> Lab:
        """Build the network, start MariaDB, the media servers, both sipha and both keepalived.

        ``keepalived=False`` leaves the VIP to another engine (heartbeat_lab.py).
        """
        self.network.create()
        self.db_url = self.open_database()
        for server in self.media_servers:
            server.start()
        for node in self.nodes.values():
            node.write_files(self.db_url, self.media_servers)
            node.start_sipha()
        if keepalived:
            for node in self.nodes.values():
                node.start_keepalived()
        return self

    def close(self) -> None:
        """Stop every process by its PID, then delete the namespaces; never raises."""
        for caller in self.callers:
            with contextlib.suppress(Exception):
                caller.stop()
        for node in self.nodes.values():
            with contextlib.suppress(Exception):
                node.stop()
        for server in self.media_servers:
            with contextlib.suppress(Exception):
                server.daemon.stop()
        with contextlib.suppress(Exception):
            self.close_database()
        self.network.delete()

    # -- the database

    def open_database(self) -> str:
        """Start the database the nodes share; returns the URL sipha is given."""
        self.database = PrivateMariaDB(
            self.directory / "db",
            self.directory / "db",
            host=HOSTS["db"],
            port=3306,
            namespace=self.network.name("db"),
        )
        self.database.directory.mkdir(parents=True, exist_ok=True)
        self.database.install()
        self.database.start()
        self.database.allow_root_from(NET + "%")
        return self.database.create_database(DATABASE)

    def close_database(self) -> None:
        self.database.stop()

    def database_logs(self) -> list[tuple[str, Path]]:
        return [("mariadb", self.database.error_log)]

    @contextlib.contextmanager
    def opened(self, keepalived: bool = True) -> Iterator[Lab]:
        try:
            yield self.open(keepalived)
        finally:
            self.close()

    # -- state

    def baseline(self, timeout: float = 30.0) -> None:
        """Both nodes up and healthy, lb1 holding the VIP and active, lb2 passive."""
        for node in self.nodes.values():
            node.revive()
            if not node.sipha.running:
                node.start_sipha()
            if not node.keepalived.running:
                node.start_keepalived()
        if not sipp.wait_until(
            lambda: self.network.vip_holders() == ["lb1"], timeout, interval=0.1
        ):
            raise LabError(
                f"the VIP is on {self.network.vip_holders() or 'no node'}, not on lb1 alone,"
                f" {timeout}s after both nodes were up\n{self.describe()}"
            )
        roles = {"lb1": "active", "lb2": "passive"}
        if not sipp.wait_until(
            lambda: all(self.nodes[h].role() == r for h, r in roles.items()), 5, interval=0.2
        ):
            raise LabError(
                f"roles are lb1 {self.nodes['lb1'].role()!r}, lb2 {self.nodes['lb2'].role()!r},"
                f" not active/passive with the VIP on lb1\n{self.describe()}"
            )

    def holder(self) -> str | None:
        holders = self.network.vip_holders()
        return holders[0] if len(holders) == 1 else None

    def completed_calls(self) -> int:
        return sum(server.completed for server in self.media_servers)

    def dialog_rows(self) -> list[tuple[Any, ...]]:
        return self.database.execute(
            "SELECT callid, state FROM dialog ORDER BY callid", database=DATABASE
        )

    def wait_until(self, condition: Callable[[], object], timeout: float) -> bool:
        return sipp.wait_until(condition, timeout, interval=0.1)

    # -- calls

    def call(self, calls: int, rate: float, hold_ms: int, timeout: float = 90) -> sipp.Caller:
        """Start sipp in the caller's namespace: ``calls`` calls to sip:service@VIP, each held ``hold_ms``.

        The INVITE is retransmitted over the VIP's outage (sipp's T1 doubling,
        up to 64*T1), and a call waits up to 30 s for any expected message.
        """
        number = len(self.callers) + 1
        directory = self.directory / "caller"
        files = sipp.SippFiles.under(directory, f"caller-{number}")
        command = self.network.exec(
            "caller",
            sipp.sipp_binary(),
            f"{VIP}:{SIP_PORT}",
            "-sf", str(sipp.scenario_path("uac_ha.xml")),
            "-s", "service",
            "-m", str(calls),
            "-r", f"{rate:g}",
            "-t", "u1",
            "-i", HOSTS["caller"],
            "-p", str(SIP_PORT + number),
            "-d", str(hold_ms),
            "-nostdin",
            "-timeout", f"{round(timeout)}s",
            "-timeout_error",
            "-recv_timeout", "30000ms",
            *files.trace_args(stats_interval=1, trace_msg=True),
        )  # fmt: skip
        caller = sipp.Caller(command, files, directory, calls, timeout)
        caller.name = f"caller-{number}"
        self.callers.append(caller)
        return caller

    @staticmethod
    def outcome(caller: sipp.Caller) -> CallOutcome:
        result = caller.wait(check=False)
        refused = [at for at, status in received_statuses(result.messages) if status == 503]
        return CallOutcome(result, refused)

    # -- reporting

    def logs(self) -> list[tuple[str, Path]]:
        # The media servers' error logs only list the probes -aa answered.
        found = [entry for node in self.nodes.values() for entry in node.logs()]
        found += [(f"sipp {caller.name} errors", caller.files.errors) for caller in self.callers]
        return found + self.database_logs()

    def describe(self) -> str:
        """The state of both nodes and the end of their logs, for failure messages."""
        parts = []
        for node in self.nodes.values():
            parts.append(
                f"--- {node.host}: sipha {'running' if node.sipha.running else 'down'},"
                f" keepalived {'running' if node.keepalived.running else 'down'},"
                f" addresses {sorted(self.network.addresses(node.host))},"
                f" ha status {node.ha_status()}"
            )
            parts.append(f"--- keepalived {node.host} ---\n{node.keepalived.log(3000)}")
            parts.append(f"--- sipha {node.host} ---\n{node.sipha.log(3000)}")
        return "\n".join(parts)


# --------------------------------------------------------------------------- judging a failover


def takeover(node: Node, since: float, timeout: float = 5.0) -> dict[str, Any] | None:
    """The ``last_takeover`` of ``node``'s ``ha status`` once it is later than ``since``."""
    found: dict[str, Any] | None = None

    def arrived() -> bool:
        nonlocal found
        status = node.ha_status() or {}
        last = status.get("last_takeover")
        if isinstance(last, dict) and float(last.get("at") or 0) >= since - 1:
            found = last
            return True
        return False

    sipp.wait_until(arrived, timeout, interval=0.2)
    return found


def states(node: Node) -> dict[str, int] | None:
    """Dialogs by state on ``node`` (ringing: early; answered: confirmed...)."""
    counters = node.ctl_json("counters")
    return counters.get("dialogs") if isinstance(counters, dict) else None


def failover(
    record: Record, lab: Lab, fail: Callable[[], object], *, to: str, timeout: float = 15.0
) -> float:
    """Run ``fail()`` and measure how long the VIP takes to reach ``to``; record it."""
    record.figures["at_failure"] = states(lab.nodes["lb1"] if to == "lb2" else lab.nodes["lb2"])
    wall = time.time()
    start = time.monotonic()
    fail()
    seen = lab.network.wait_for_vip(to, timeout)
    outage = None if seen is None else round(seen - start, 2)
    record.figures["vip_outage_s"] = outage
    record.check(seen is not None, f"the VIP reached {to} within {timeout:g} s")
    last = takeover(lab.nodes[to], wall) if seen is not None else None
    record.figures["takeover_ms"] = None if last is None else last.get("duration_ms")
    record.figures["calls_restored"] = None if last is None else last.get("calls_restored")
    record.check(
        last is not None, f"`ha status` on {to} reports the takeover", lab.nodes[to].ha_status()
    )
    return wall


def judge_calls(
    record: Record, lab: Lab, caller: sipp.Caller, expected: int, before: int, since: float
) -> None:
    """All ``expected`` calls completed on both ends, and no 503 after ``since``."""
    outcome = lab.outcome(caller)
    lab.wait_until(lambda: lab.completed_calls() - before >= expected, 10)
    completed = lab.completed_calls() - before
    record.figures["calls_completed"] = f"{outcome.successful}/{expected}"
    record.figures["refused_503"] = len(outcome.refused_at)
    record.check(
        outcome.successful == expected and outcome.failed == 0,
        f"the caller completed {expected} of {expected} calls",
        f"{outcome.successful} successful, {outcome.failed} failed\n{outcome.result.errors[-3000:]}",
    )
    record.check(
        completed == expected,
        f"the media servers completed {expected} calls",
        completed,
    )
    record.check(
        outcome.refused_after(since) == 0,
        "no 503 reached the caller after the failure",
        f"{outcome.refused_after(since)} 503s",
    )


def judge_idle(record: Record, lab: Lab, host: str, when: str, timeout: float = 5.0) -> None:
    node = lab.nodes[host]
    idle = lab.wait_until(node.idle, timeout)
    record.check(
        idle,
        f"{host} holds no dialog and no load-balancer unit {when}",
        f"dialogs {states(node)}, load {node.load()}",
    )


def judge_table(record: Record, lab: Lab) -> None:
    empty = lab.wait_until(lambda: not lab.dialog_rows(), 5)
    record.check(empty, "the dialog table is empty at the end", lab.dialog_rows())
