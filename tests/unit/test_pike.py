"""What a hostile source gets: pike's limit, scanners dropped, bounds, nothing kept for a refusal."""

from __future__ import annotations

import pytest
from proxykit import CALLER, CONFIG, UDP_IN, invite, make_proxy
from twisted.internet.task import Clock
from twisted.logger import capturedLogs, formatEvent

from sipha import logs
from sipha.message import Response
from sipha.pike import Pike, TrustedSources
from sipha.transaction import Peer

FLOODER = Peer("udp", "203.0.113.9", 5060)


def flood(pike: Pike, address: str, count: int) -> int:
    """Send ``count`` messages from ``address``; returns how many were allowed."""
    return sum(pike.allow(address) for _ in range(count))


def test_a_source_over_the_density_is_limited_until_a_quiet_unit():
    clock = Clock()
    pike = Pike(clock, sampling_time_unit=2, reqs_density_per_unit=30)
    assert flood(pike, "203.0.113.9", 100) == 30
    assert flood(pike, "203.0.113.10", 30) == 30  # another source is not affected
    clock.advance(2)  # the flood goes on in the next unit: still limited
    assert flood(pike, "203.0.113.9", 5) == 0
    clock.advance(2)  # it sent 5 in the last unit, under the density
    assert flood(pike, "203.0.113.9", 30) == 30
    assert [s["source"] for s in pike.limited()] == []
    assert pike.refused == 75


def test_limited_sources_are_listed_with_what_they_lost():
    clock = Clock()
    pike = Pike(clock, reqs_density_per_unit=10)
    flood(pike, "203.0.113.9", 15)
    (source,) = pike.limited()
    assert (source["source"], source["refused"]) == ("203.0.113.9", 5)


def test_an_ipv6_source_is_its_slash_64():
    pike = Pike(Clock(), reqs_density_per_unit=10)
    assert flood(pike, "2001:db8::1", 6) + flood(pike, "2001:db8::2", 6) == 10
    assert flood(pike, "2001:db8:0:1::1", 10) == 10  # another /64


def test_trusted_sources_are_never_counted():
    trusted = TrustedSources(["198.51.100.0/24"])
    trusted.update(["192.0.2.21", "media.example.net"])
    pike = Pike(Clock(), reqs_density_per_unit=1, trusted=trusted)
    assert flood(pike, "198.51.100.7", 100) == 100
    assert flood(pike, "192.0.2.21", 100) == 100
    assert flood(pike, "192.0.2.22", 100) == 1
    trusted.update(["192.0.2.22"])  # a media server added by a reload
    pike.retrust()
    assert flood(pike, "192.0.2.22", 100) == 100


def test_memory_is_bounded_and_quiet_sources_are_forgotten():
    clock = Clock()
    pike = Pike(clock, reqs_density_per_unit=5, remove_latency=60, max_sources=100)
    for n in range(1000):  # a flood from spoofed addresses
        pike.allow(f"10.0.{n // 256}.{n % 256}")
    assert len(pike._sources) <= 100
    clock.advance(61)
    pike.expire()
    assert len(pike._sources) == 0


@pytest.mark.parametrize(("action", "answered"), [("drop", False), ("reply", True)])
def test_the_core_refuses_a_limited_source_before_routing_it(action, answered):
    core, _, wire = make_proxy(CONFIG + f'reqs_density_per_unit = 3\naction = "{action}"\n')
    for n in range(5):
        core.receive(invite(method="OPTIONS", call_id=f"scan-{n}"), FLOODER, UDP_IN)
    sent = wire.take()
    assert [s.message.status for s in sent[:3]] == [405, 405, 405]
    refused = sent[3:]
    if answered:
        assert [(s.message.status, s.message.reason) for s in refused] == [
            (503, "Rate Limited")
        ] * 2
        assert refused[0].message.get("retry-after") == "5"
    else:
        assert refused == []
    assert core.stats["pike_refused"] == 2
    core.receive(invite(call_id="customer"), CALLER, UDP_IN)  # trusted network: served
    assert wire.take()


def test_a_scanner_is_dropped_without_an_answer():
    core, _, wire = make_proxy()
    core.receive(invite(extra="User-Agent: friendly-scanner"), CALLER, UDP_IN)
    core.receive(invite(call_id="x", extra="User-Agent: SIPVicious 0.3"), CALLER, UDP_IN)
    assert wire.take() == []
    assert core.stats["scanners_dropped"] == 2
    core.receive(invite(call_id="y", extra="User-Agent: Linphone"), CALLER, UDP_IN)
    assert wire.take()


def test_a_rejected_request_leaves_no_transaction_behind():
    core, _, wire = make_proxy()
    for _ in range(2):  # the request, then its retransmission
        core.receive(invite(method="SUBSCRIBE"), CALLER, UDP_IN)
    first, again = wire.take()
    assert isinstance(first.message, Response)
    assert (first.message.status, first.data) == (405, again.data)
    assert core.layer.servers == {}


@pytest.mark.parametrize(
    ("bound", "calls", "held"),
    [("dialogs", 10, "10 calls held"), ("transactions", 100, "100 transactions")],
)
def test_past_a_bound_a_new_call_gets_503_and_the_log_says_so(
    bound: str, calls: int, held: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(logs, "THROTTLE_INTERVAL", 0.0)  # the other case's line was just now
    core, _, wire = make_proxy(CONFIG.replace("[pike]", f"[limits]\n{bound} = {calls}\n[pike]"))
    with capturedLogs() as events:
        for n in range(calls + 1):
            core.receive(invite(call_id=f"call-{n}", branch=f"z9hG4bK-{n}"), CALLER, UDP_IN)
    last = wire.take()[-1].message
    assert (last.status, last.reason) == (503, "Too Busy")
    assert core.stats["refused_at_bound"] == 1
    warnings = [formatEvent(e) for e in events if e.get("log_namespace") == "sipha.proxy"]
    assert len(warnings) == 1
    assert held in warnings[0]
    assert "new requests get 503" in warnings[0]
