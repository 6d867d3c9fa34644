"""A flood from one source while a customer places calls from another.

The flood is as fast as one Python sender goes, for 20 s (bounded in count
too): valid OPTIONS, malformed INVITEs and random bytes, from 127.0.0.2. The
customer calls at 50 calls per second from 127.0.0.3 (a trunk: pike's density
is set for it), the media servers are on 127.0.0.1. Pike refuses the flood
unparsed and puts its source into sipha's nftables set, so the kernel drops
the rest of it (``[pike] nftables``): a sender far faster than Python reads
would otherwise fill the receive queue, and the kernel would drop the
customer's datagrams with the flood's. Everything runs in a network namespace
of the test's own, so the nftables table goes with it.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import sipp
from sipha import ctl

FLOOD_SECONDS = 20
CALL_RATE = 50

FLOODER = r"""
import os, random, socket, sys, time
host, port, seconds, limit = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
options = (
    "OPTIONS sip:{0}:{1} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.2:5999;branch=z9hG4bK-f{2}\r\n"
    "From: <sip:flood@127.0.0.2>;tag=f\r\nTo: <sip:{0}>\r\nCall-ID: flood-{2}\r\n"
    "CSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
)
broken = "INVITE sip:x@{0} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.2:5999;branch=z9hG4bK-b{2}\r\nCSeq: x\r\n\r\n"
random.seed(1)
batch = [
    message
    for n in range(100)
    for message in (
        options.format(host, port, n).encode(),
        broken.format(host, port, n).encode(),
        os.urandom(random.randrange(20, 1200)),
    )
]
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind(("127.0.0.2", 0))
sent, deadline = 0, time.monotonic() + seconds
while sent < limit and time.monotonic() < deadline:
    for message in batch:
        try:
            sock.sendto(message, (host, port))
        except OSError:
            pass
    sent += len(batch)
print(sent)
"""


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_a_flood_from_one_source_leaves_the_customers_calls_alone(
    sipha_proxy, media_server, background_caller, namespace
):
    servers = [media_server(port, namespace=namespace) for port in (5071, 5072)]
    port = 5060
    proxy = sipha_proxy(
        listen=[f"udp:127.0.0.1:{port}"],
        destinations=[server.uri for server in servers],
        namespace=namespace,
        sections={
            "pike": {"reqs_density_per_unit": 1000, "nftables": True},
            "load_balancer": {"probing_interval": 1},
            "dispatcher": {"ping_interval": 1},
        },
    )
    assert proxy.process is not None
    control = proxy.directory / "control.sock"
    time.sleep(2)  # a round of probes: every destination up
    baseline_rss, baseline_lines = rss_kib(proxy.process.pid), len(proxy.log().splitlines())

    calls = FLOOD_SECONDS * CALL_RATE
    caller = background_caller(
        "uac.xml",
        proxy.address,
        calls=calls,
        rate=CALL_RATE,
        source="127.0.0.3",
        timeout=FLOOD_SECONDS + 60,
        recv_timeout=30,
        namespace=namespace,
    )
    flood = [sys.executable, "-c", FLOODER, "127.0.0.1", str(port), str(FLOOD_SECONDS), "20000000"]
    flooder = subprocess.Popen(
        sipp.in_namespace(namespace, flood), stdout=subprocess.PIPE, text=True
    )
    try:
        time.sleep(FLOOD_SECONDS / 2)
        limited = [source["source"] for source in ctl.call(control, "pike")]
        kernel = subprocess.run(
            sipp.in_namespace(namespace, ["nft", "list", "set", "inet", "sipha_5060", "limited4"]),
            capture_output=True,
            text=True,
            check=False,
        ).stdout
        sent, _ = flooder.communicate(timeout=FLOOD_SECONDS + 30)
    finally:
        sipp.terminate(flooder, 5)  # type: ignore[arg-type]
    result = caller.wait(check=False)
    time.sleep(5)  # the flood's remains drain; memory settles

    def calls_up() -> int:
        return sum(ctl.call(control, "counters")["dialogs"].values())

    # A call whose ACK was lost is dropped 64*T1 + T4 after its 200 (37 s).
    no_calls_left = sipp.wait_until(lambda: calls_up() == 0, timeout=40, interval=0.5)
    counters = ctl.call(control, "counters")
    destinations = ctl.call(control, "destinations")
    rss = rss_kib(proxy.process.pid)
    lines = len(proxy.log().splitlines()) - baseline_lines
    print(
        f"\nflood: {int(sent)} datagrams in {FLOOD_SECONDS} s;"
        f" calls {result.successful}/{calls}, {result.retransmissions} retransmissions;"
        f" pike refused {counters['pike_refused']}; parse errors {counters['parse_errors']};"
        f" RSS {baseline_rss} -> {rss} KiB; {lines} log lines"
    )

    assert "dropped by the kernel" in proxy.log()
    assert result.successful >= 0.99 * calls, result.describe()
    assert limited == ["127.0.0.2"]
    assert "127.0.0.2" in kernel
    assert counters["pike_refused"] > 0
    assert all(d["enabled"] for d in destinations["load_balancer"]), destinations
    assert all(d["state"] == "active" for d in destinations["dispatcher"]), destinations
    assert lines < 300, proxy.log()[-5000:]
    assert rss - baseline_rss < 40_000  # KiB: nothing is kept for the flood
    assert no_calls_left, counters["dialogs"]
