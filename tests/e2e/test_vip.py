"""The standby of a pair binds the virtual IP before it owns it (inside a network namespace).

In the reference deployment the passive load balancer listens on the VIP
while the active one holds it, which OpenSIPS needs ``net.ipv4.ip_nonlocal_bind``
for. sipha binds with ``IP_FREEBIND`` instead. The test runs sipha in a
network namespace of its own, on an address (198.18.0.10, a benchmarking
range) that no interface has; then "takes over" by adding the address, and a
request sent inside the namespace is answered. The namespace is deleted at
the end, with everything in it.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest

import sipp
from sipha import ctl
from sipp import sipha_config, twistd_command
from sources import sipha_env

VIP = "198.18.0.10"


def in_namespace(namespace: str, *command: str) -> list[str]:
    return sipp.in_namespace(namespace, command)


OPTIONS = (
    f"OPTIONS sip:{VIP}:5060 SIP/2.0\r\n"
    f"Via: SIP/2.0/UDP {VIP}:5099;branch=z9hG4bK-vip-1\r\n"
    f"From: <sip:probe@{VIP}>;tag=1\r\nTo: <sip:{VIP}>\r\n"
    "Call-ID: vip-1\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
)

ASK = f"""
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("{VIP}", 5099))
s.settimeout(3)
s.sendto({OPTIONS.encode()!r}, ("{VIP}", 5060))
print(s.recvfrom(65535)[0].split(b"\\r\\n")[0].decode())
"""


@pytest.fixture
def sipha_in(namespace: str, tmp_path: Path) -> Iterator[Callable[..., Path]]:
    """Start sipha inside ``namespace`` on the VIP; returns its log. Stopped by PID at the end."""
    started: list[subprocess.Popen[bytes]] = []

    def start(sections: Mapping[str, Mapping[str, object]] | None = None) -> Path:
        config = tmp_path / "sipha.toml"
        listen = [f"udp:{VIP}:5060", f"tcp:{VIP}:5060"]
        config.write_text(sipha_config(tmp_path, listen, [], sections=sections))
        log = tmp_path / "sipha.log"
        with log.open("wb") as output:
            started.append(
                subprocess.Popen(
                    in_namespace(
                        namespace,
                        *twistd_command(),
                        "-n",
                        "--pidfile=",
                        "sipha",
                        "--config",
                        str(config),
                    ),
                    stdout=output,
                    stderr=subprocess.STDOUT,
                    env=sipha_env(),
                )
            )
        deadline = time.monotonic() + 15
        while "sipha 0" not in log.read_text(errors="replace"):  # "sipha <version> started"
            assert started[-1].poll() is None, log.read_text(errors="replace")
            assert time.monotonic() < deadline, log.read_text(errors="replace")
            time.sleep(0.1)
        return log

    yield start
    for sipha in started:
        sipha.send_signal(signal.SIGTERM)
        try:
            sipha.wait(timeout=10)
        except subprocess.TimeoutExpired:
            sipha.kill()
            sipha.wait()
        assert sipha.returncode in (0, -signal.SIGTERM)


def ask(namespace: str) -> str:
    """The first line of sipha's answer to an OPTIONS for the VIP, asked from the VIP."""
    answer = subprocess.run(
        in_namespace(namespace, sys.executable, "-c", ASK),
        capture_output=True,
        text=True,
        timeout=10,
    )
    assert answer.returncode == 0, answer.stderr
    return answer.stdout.strip()


def test_standby_binds_the_virtual_ip_before_owning_it(
    namespace: str, sipha_in: Callable[..., Path]
) -> None:
    log = sipha_in()
    assert f"listening on tcp:{VIP}:5060" in log.read_text()
    # The VIP arrives (heartbeat's IPaddr2 or keepalived would do this).
    subprocess.run(
        in_namespace(namespace, "ip", "addr", "add", f"{VIP}/32", "dev", "lo"), check=True
    )
    # An OPTIONS for the VIP itself is sipha's to answer: the health check of the pair.
    assert ask(namespace) == "SIP/2.0 200 OK"


def role_after(change: list[str], namespace: str, socket: Path, wanted: str) -> float:
    """Seconds from the end of ``ip addr`` ``change`` until sipha says it is ``wanted``."""
    subprocess.run(in_namespace(namespace, "ip", "addr", *change), check=True)
    changed = time.monotonic()
    for _ in range(400):  # 2 s at most
        if ctl.call(socket, "ha.status", timeout=2)["role"] == wanted:
            return time.monotonic() - changed
        time.sleep(0.005)
    raise AssertionError(f"sipha did not become {wanted} within 2 s")


def test_the_role_follows_the_virtual_ip_within_100_ms(
    namespace: str, sipha_in: Callable[..., Path], tmp_path: Path
) -> None:
    """keepalived or heartbeat moves the VIP; sipha sees it at once (netlink), no hook needed."""
    node = "198.18.0.11"
    subprocess.run(
        in_namespace(namespace, "ip", "addr", "add", f"{node}/32", "dev", "lo"), check=True
    )
    sipha_in({"ha": {"virtual_ip": VIP, "node_address": node}})
    socket = tmp_path / "control.sock"
    status = ctl.call(socket, "ha.status")
    assert (status["role"], status["virtual_ip"]) == ("passive", [VIP])

    vip = [f"{VIP}/32", "dev", "lo"]
    assert role_after(["add", *vip], namespace, socket, "active") < 0.1
    assert ask(namespace) == "SIP/2.0 200 OK"
    assert role_after(["del", *vip], namespace, socket, "passive") < 0.1

    # The same transitions on command, as keepalived's notify script gives them.
    assert ctl.main(["--socket", str(socket), "ha", "active"]) == 0
    assert ctl.call(socket, "ha.status")["role"] == "active"
    assert ctl.main(["--socket", str(socket), "--json", "ha", "passive"]) == 0
    assert ctl.call(socket, "ha.status")["role"] == "passive"
