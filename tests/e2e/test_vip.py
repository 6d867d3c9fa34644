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

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sipp import sipha_config, twistd_command

VIP = "198.18.0.10"


def in_namespace(namespace: str, *command: str) -> list[str]:
    return ["ip", "netns", "exec", namespace, *command]


@pytest.fixture
def namespace() -> Iterator[str]:
    if os.geteuid() != 0:
        pytest.fail("network namespaces need root (run ./run-tests as root, as CI does)")
    name = f"sipha-vip-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(in_namespace(name, "ip", "link", "set", "lo", "up"), check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=False)


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


def test_standby_binds_the_virtual_ip_before_owning_it(namespace: str, tmp_path: Path) -> None:
    config = tmp_path / "sipha.toml"
    config.write_text(sipha_config(tmp_path, [f"udp:{VIP}:5060", f"tcp:{VIP}:5060"], []))
    log = tmp_path / "sipha.log"
    with log.open("wb") as output:
        sipha = subprocess.Popen(
            in_namespace(
                namespace, *twistd_command(), "-n", "--pidfile=", "sipha", "--config", str(config)
            ),
            stdout=output,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2] / "src")},
        )
    try:
        deadline = time.monotonic() + 15
        while f"listening on tcp:{VIP}:5060" not in log.read_text(errors="replace"):
            assert sipha.poll() is None, log.read_text(errors="replace")
            assert time.monotonic() < deadline, log.read_text(errors="replace")
            time.sleep(0.1)
        # The VIP arrives (heartbeat's IPaddr2 or keepalived would do this).
        subprocess.run(
            in_namespace(namespace, "ip", "addr", "add", f"{VIP}/32", "dev", "lo"), check=True
        )
        answer = subprocess.run(
            in_namespace(namespace, sys.executable, "-c", ASK),
            capture_output=True,
            text=True,
            timeout=10,
        )
        # An OPTIONS for the VIP itself is sipha's to answer: the health check of the pair.
        assert answer.stdout.strip() == "SIP/2.0 200 OK", answer.stderr
        assert sipha.poll() is None
    finally:
        sipha.send_signal(signal.SIGTERM)
        try:
            sipha.wait(timeout=10)
        except subprocess.TimeoutExpired:
            sipha.kill()
            sipha.wait()
