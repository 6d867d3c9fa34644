"""Load balancer, dispatcher, probes and destination tables, end to end.

A real sipha process routes sipp calls and registrations to sipp media
servers on free loopback ports.  Calls that must be concurrent are held
with sipp's ``-d`` pause and placed well within it, so the load balancer
sees every one of them at once and its choice is exact: relative load,
ties to the earlier row.  Probing is off wherever a test is not about it,
so media servers see only the traffic the test sends.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import time
from collections.abc import Callable, Mapping, Sequence

import pytest

import sipp
from dbkit import execute

Caller = Callable[..., sipp.SippResult]
ServerFactory = Callable[..., sipp.MediaServer]
ProxyFactory = Callable[..., sipp.SiphaProxy]

NO_PROBES: Mapping[str, Mapping[str, object]] = {
    "load_balancer": {"probing_interval": 0},
    "dispatcher": {"ping_interval": 0},
}

#: Calls are placed this fast and held this long: the last INVITE of a
#: batch goes out long before the first BYE, whatever the machine's load.
RATE = 100
HOLD_MS = 3000


def start_sipha(
    sipha_proxy: ProxyFactory,
    destinations: Sequence[sipp.MediaServer | sipp.Destination | str],
    *,
    fr_timer: float = 2.0,
    sections: Mapping[str, Mapping[str, object]] = NO_PROBES,
) -> sipp.SiphaProxy:
    """sipha on a free loopback port (UDP and TCP) in front of ``destinations``, in row order."""
    port = sipp.free_port()
    return sipha_proxy(
        listen=[f"udp:127.0.0.1:{port}", f"tcp:127.0.0.1:{port}"],
        destinations=[d.uri if isinstance(d, sipp.MediaServer) else d for d in destinations],
        fr_timer=fr_timer,
        sections=sections,
    )


def held_calls(
    sipp_caller: Caller, proxy: sipp.SiphaProxy, count: int, **options: object
) -> sipp.SippResult:
    """``count`` calls up at the same time, all of which must succeed unless check=False."""
    options = {"rate": RATE, "limit": count, "hold_ms": HOLD_MS, "timeout": 30} | options
    return sipp_caller("uac.xml", proxy.address, calls=count, **options)


def completed(servers: Sequence[sipp.MediaServer], total: int) -> list[int]:
    """Calls each server has completed, once ``total`` have between them.

    Read while the servers run: a stopped sipp forgets calls still in timewait.
    """
    done = sipp.wait_for_total(servers, total)
    counts = [server.calls_completed for server in servers]
    assert done == total, f"{done} of {total} calls completed on the media servers: {counts}"
    for server in servers:
        assert server.calls_failed == 0, f"{server!r} failed calls\n{server.stop().describe()}"
    return counts


# --------------------------------------------------------------------------- helpers

_TRACE_SEPARATOR = re.compile(r"^-{20,} .*\n", re.M)


def received_call_ids(messages: str, method: str) -> list[str]:
    """Call-IDs of the ``method`` requests in a -trace_msg log, retransmissions included."""
    found = []
    for block in _TRACE_SEPARATOR.split(messages):
        heading, _, text = block.partition("\n")
        text = text.lstrip("\r\n")
        if " message received " in heading and text.startswith(f"{method} "):
            match = re.search(r"^(?:Call-ID|i)[ \t]*:[ \t]*(.*?)\s*$", text, re.M | re.I)
            if match:
                found.append(match.group(1))
    return found


_MASK = 0xFFFFFFFF


def ds_get_hash(key: str) -> int:
    """OpenSIPS's ``ds_get_hash`` (spec section 2.4), written out from the C source.

    Kept independent of sipha's own copy, so both must agree with OpenSIPS.
    """
    data = [b - 256 if b >= 128 else b for b in key.encode()]
    h, p = 0, 0
    while p + 4 <= len(data):
        a, b, c, d = data[p : p + 4]
        v = ((a << 24) + (b << 16) + (c << 8) + d) & _MASK
        h = (h + (v ^ (v >> 3))) & _MASK
        p += 4
    v = 0
    for c in data[p:]:
        v = ((v << 8) + c) & _MASK
    h = (h + (v ^ (v >> 3))) & _MASK
    h = (h + (h >> 11) + (h >> 13) + (h >> 23)) & _MASK
    return h or 1


def reloads_done(proxy: sipp.SiphaProxy) -> int:
    """Modules reloaded so far, as sipha logs them (one line per module and reload)."""
    return len(re.findall(r"destinations from the (?:table|config)", proxy.log()))


def hangup(proxy: sipp.SiphaProxy) -> None:
    """``kill -HUP`` sipha and give it a moment to re-read both tables.

    The log line only shortens the wait; what the reload did is judged by
    the traffic that follows.
    """
    assert proxy.process is not None
    assert proxy.running, proxy.log()[-sipp.LOG_TAIL :]
    before = reloads_done(proxy)
    os.kill(proxy.process.pid, signal.SIGHUP)
    sipp.wait_until(lambda: reloads_done(proxy) >= before + 2, timeout=3)


def wait_for_tables(url: str, timeout: float = 10.0) -> None:
    """Wait until both destination tables exist, which sipha does at start."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            execute(url, "SELECT COUNT(*) FROM dispatcher", "SELECT COUNT(*) FROM load_balancer")
            return
        except Exception as error:
            if time.monotonic() > deadline:
                pytest.fail(f"sipha did not create the destination tables in {url}: {error}")
            time.sleep(0.1)


# --------------------------------------------------------------------------- load balancer


def test_long_calls_spread_evenly(
    sipha_proxy: ProxyFactory, media_server: ServerFactory, sipp_caller: Caller
) -> None:
    """42 calls up at once on four equal servers split 11/11/10/10.

    Relative load spreads them evenly, and ties go to the earlier row: 42
    rather than 40 calls, so that the order of the rows shows too.
    """
    servers = [media_server(sipp.free_port()) for _ in range(4)]
    proxy = start_sipha(sipha_proxy, servers)

    held_calls(sipp_caller, proxy, 42)

    assert completed(servers, 42) == [11, 11, 10, 10]


def test_unequal_capacities(
    sipha_proxy: ProxyFactory, media_server: ServerFactory, sipp_caller: Caller
) -> None:
    """Relative load fills 32/32/16/8 channels in proportion: 44 calls split 16/16/8/4.

    Absolute load (most free channels) would give 20/20/4/0 instead.
    """
    capacities = [32, 32, 16, 8]
    servers = [media_server(sipp.free_port()) for _ in capacities]
    proxy = start_sipha(
        sipha_proxy,
        [
            sipp.Destination(s.uri, resources=f"pstn={n}")
            for s, n in zip(servers, capacities, strict=True)
        ],
    )

    held_calls(sipp_caller, proxy, 44)

    assert completed(servers, 44) == [16, 16, 8, 4]


def test_capacity_exhausted_then_released(
    sipha_proxy: ProxyFactory, media_server: ServerFactory, sipp_caller: Caller
) -> None:
    """4 x 32 channels take 128 calls; the 129th gets 503, and every unit comes back after.

    The second batch of 128 only fits if neither the ended calls nor the
    refused one left a unit held.
    """
    servers = [media_server(sipp.free_port()) for _ in range(4)]
    proxy = start_sipha(sipha_proxy, servers)

    first = held_calls(sipp_caller, proxy, 129, hold_ms=4000, check=False)

    assert (first.successful, first.failed) == (128, 1), first.describe()
    refused = re.findall(r"received 'SIP/2\.0 (\d{3})", first.errors)
    assert refused == ["503"], first.describe()
    assert completed(servers, 128) == [32, 32, 32, 32]

    held_calls(sipp_caller, proxy, 128, hold_ms=4000)

    assert completed(servers, 256) == [64, 64, 64, 64]


# --------------------------------------------------------------------------- probing

PROBE_INTERVAL = 0.5
PROBE_TIMEOUT = 0.5  # fr_timer: an unanswered probe fails this fast
THRESHOLD = 2
#: A probe may be in flight when the server dies; then THRESHOLD more must time out.
OUT_OF_ROTATION = PROBE_INTERVAL + THRESHOLD * (PROBE_INTERVAL + PROBE_TIMEOUT) + 1.0
BACK_IN_ROTATION = PROBE_INTERVAL + PROBE_TIMEOUT + 1.0


def test_dead_server_leaves_and_rejoins_rotation(
    sipha_proxy: ProxyFactory, media_server: ServerFactory, sipp_caller: Caller
) -> None:
    """A media server that stops answering probes gets no calls; once it answers again it does.

    The stopped server's port is then held by a silent socket: it keeps the
    server dead to sipha (probes time out) and records whatever sipha still
    sends there, so "no call lands there" is seen, not inferred from
    failovers that would hide it.
    """
    servers = [media_server(sipp.free_port()) for _ in range(3)]
    probing = {
        "load_balancer": {"probing_interval": PROBE_INTERVAL, "probing_threshold": THRESHOLD},
        "dispatcher": {"ping_interval": 0},
    }
    proxy = start_sipha(sipha_proxy, servers, fr_timer=PROBE_TIMEOUT, sections=probing)
    held_calls(sipp_caller, proxy, 3, hold_ms=1000)
    assert completed(servers, 3) == [1, 1, 1]

    dead = servers[0]
    dead.stop()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sink:
        sink.bind((dead.ip, dead.port))
        sink.setblocking(False)
        time.sleep(OUT_OF_ROTATION)

        # Relative load would put the 1st and 4th of these on FS1 if it were still listed.
        held_calls(sipp_caller, proxy, 4, hold_ms=1000)

        received = []
        while True:
            try:
                received.append(sink.recv(65535))
            except BlockingIOError:
                break
    assert completed(servers[1:], 6) == [3, 3]
    methods = {data.split(b" ", 1)[0].decode(errors="replace") for data in received}
    assert "OPTIONS" in methods, "sipha stopped probing the dead server"
    assert "INVITE" not in methods, "sipha sent a call to a server that failed its probes"

    revived = media_server(dead.port)
    time.sleep(BACK_IN_ROTATION)
    held_calls(sipp_caller, proxy, 3, hold_ms=1000)

    assert completed([revived, *servers[1:]], 9) == [1, 4, 4]


# --------------------------------------------------------------------------- dispatcher


def test_registers_hashed_on_call_id(
    sipha_proxy: ProxyFactory, media_server: ServerFactory, sipp_caller: Caller
) -> None:
    """REGISTERs spread by ``hash(Call-ID) % 4``, the index OpenSIPS computes, and a Call-ID sticks.

    Matching OpenSIPS's index means a registration lands on the same media
    server as it did behind the proxy sipha replaces.
    """
    # sipp remembers a finished Call-ID for 33 s and drops what arrives for it
    # meanwhile; the repeated Call-ID below needs it forgotten at once.
    forget = ["-deadcall_wait", "0"]
    servers = [
        media_server(sipp.free_port(), "uas_register.xml", trace_msg=True, extra=forget)
        for _ in range(4)
    ]
    proxy = start_sipha(
        sipha_proxy, [sipp.Destination(s.uri, load_balancer=False) for s in servers]
    )

    sipp_caller("register.xml", proxy.address, calls=40, rate=RATE)
    # One Call-ID over and over; spaced beyond the registrar's 500 ms timewait,
    # which would otherwise take the next REGISTER for a stray retransmission.
    sticky = "sticky-registration@127.0.0.1"
    sipp_caller(
        "register.xml",
        proxy.address,
        calls=5,
        rate=1.25,
        limit=1,
        extra=["-cid_str", sticky, *forget],
    )

    completed(servers, 45)
    seen = [set(received_call_ids(server.stop().messages, "REGISTER")) for server in servers]
    distinct = [ids - {sticky} for ids in seen]
    assert sum(map(len, distinct)) == 40, distinct
    assert all(distinct), f"REGISTERs per server: {[len(ids) for ids in distinct]}"
    for index, ids in enumerate(distinct):
        for call_id in ids:
            assert ds_get_hash(call_id) % 4 == index, f"{call_id!r} went to server {index}"
    holders = [index for index, ids in enumerate(seen) if sticky in ids]
    assert holders == [ds_get_hash(sticky) % 4], f"{sticky!r} went to servers {holders}"


# --------------------------------------------------------------------------- tables


def test_destinations_from_the_tables(
    db_url: str,
    sipha_proxy: ProxyFactory,
    media_server: ServerFactory,
    sipp_caller: Caller,
) -> None:
    """With empty config lists, the reference deployment's INSERTs plus ``kill -HUP`` route traffic.

    sipp runs one scenario per process, so every "FS" is a call server
    (load_balancer row) beside a registrar (dispatcher row).
    """
    calls = [media_server(sipp.free_port()) for _ in range(3)]
    registrars = [media_server(sipp.free_port(), "uas_register.xml") for _ in range(3)]
    sections = {**NO_PROBES, "database": {"url": db_url}}
    proxy = start_sipha(sipha_proxy, [], sections=sections)
    wait_for_tables(db_url)

    # Nothing to route to yet: the tables are empty and so are the config lists.
    refused = sipp_caller("uac_fail.xml", proxy.address, trace_msg=True)
    assert re.search(r"^SIP/2\.0 503 ", refused.messages, re.M), refused.describe()

    def add(number: int) -> None:
        call, registrar = calls[number - 1], registrars[number - 1]
        execute(
            db_url,
            "insert into load_balancer (group_id, dst_uri, resources, description) values "
            f"(1,'sip:127.0.0.1:{call.port}', 'pstn=32', 'FS{number}');",
            "INSERT INTO dispatcher (setid, destination, flags, description) VALUES "
            f"(1,'sip:127.0.0.1:{registrar.port}',0,'FS{number}')",
        )

    add(1)
    add(2)
    hangup(proxy)
    held_calls(sipp_caller, proxy, 4, hold_ms=1000)
    sipp_caller("register.xml", proxy.address, calls=20, rate=RATE)

    assert completed(calls, 4) == [2, 2, 0]
    registered = completed(registrars, 20)
    assert registered[2] == 0
    assert all(registered[:2]), f"REGISTERs per registrar: {registered}"

    add(3)
    hangup(proxy)
    held_calls(sipp_caller, proxy, 6, hold_ms=1000)
    sipp_caller("register.xml", proxy.address, calls=30, rate=RATE)

    assert completed(calls, 10) == [4, 4, 2]
    assert completed(registrars, 50)[2] > 0
