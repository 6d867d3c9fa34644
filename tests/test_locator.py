"""RFC 3263 server location against a DNS server on the loopback: NAPTR, SRV, A/AAAA, TTLs."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import AsyncIterator

import pytest
import pytest_twisted
from twisted.internet import defer, reactor, task
from twisted.logger import formatEvent, globalLogPublisher
from twisted.names import dns

from dnskit import DNSServer, Zone
from sipha.locator import FAILURE_TTL, NEGATIVE_TTL, DNSLocator, make_resolver, stop_resolver
from sipha.transaction import Peer
from sipha.uri import parse_uri

FS1, FS2, FS3 = "198.18.0.1", "198.18.0.2", "198.18.0.3"


def a(address: str, ttl: int = 300) -> dns.Record_A:
    return dns.Record_A(address, ttl=ttl)


def srv(priority: int, weight: int, port: int, target: str, ttl: int = 300) -> dns.Record_SRV:
    return dns.Record_SRV(priority, weight, port, target, ttl=ttl)


def naptr(order: int, service: bytes, replacement: str) -> dns.Record_NAPTR:
    return dns.Record_NAPTR(order, 10, b"s", service, b"", replacement, ttl=300)


class Lab:
    """A zone, its server, and a locator asking it, on a clock the test moves for TTLs."""

    def __init__(self, dns_server: DNSServer, **options: object) -> None:
        self.zone = dns_server.zone
        self.server = dns_server
        self.clock = task.Clock()
        self.resolver = make_resolver(reactor, [dns_server.address], 0.2, 0)
        options.setdefault("transports", ("udp", "tcp"))
        self.locator = DNSLocator(self.resolver, self.clock, **options)  # type: ignore[arg-type]
        self.zone.set("fs1.sipha.test", a(FS1))
        self.zone.set("fs2.sipha.test", a(FS2))
        self.zone.set("fs3.sipha.test", a(FS3))

    def locate(self, uri: str, names: bool = False) -> defer.Deferred[list[Peer]]:
        """The addresses of ``uri``; without the name each was found for unless ``names``."""
        found: defer.Deferred[list[Peer]] = defer.Deferred()
        self.locator.locate(
            parse_uri(uri),
            lambda peers: found.callback(peers if names else [p._replace(name="") for p in peers]),
        )
        return found


@pytest_twisted.async_yield_fixture
async def dns_server() -> AsyncIterator[DNSServer]:
    server = DNSServer(reactor, Zone(negative_ttl=100))
    yield server
    await server.stop()


@pytest.fixture
def lab(dns_server: DNSServer) -> Lab:
    lab = Lab(dns_server)
    yield lab
    stop_resolver(lab.resolver)


def udp(host: str, port: int = 5060) -> Peer:
    return Peer("udp", host, port)


@pytest_twisted.ensureDeferred
async def test_each_address_carries_the_name_it_was_found_for(lab: Lab) -> None:
    """TLS verifies the certificate against the URI's host name (RFC 5922), not the address."""
    assert await lab.locate("sip:fs1.sipha.test:5071;transport=tcp", names=True) == [
        Peer("tcp", FS1, 5071, "fs1.sipha.test")
    ]
    assert await lab.locate(f"sip:{FS2}:5072", names=True) == [udp(FS2, 5072)]


@pytest_twisted.ensureDeferred
async def test_srv_targets_come_by_priority(lab: Lab) -> None:
    lab.zone.set(
        "_sip._udp.pool.sipha.test",
        srv(20, 0, 5072, "fs2.sipha.test"),
        srv(10, 0, 5071, "fs1.sipha.test"),
    )
    assert await lab.locate("sip:pool.sipha.test") == [udp(FS1, 5071), udp(FS2, 5072)]


@pytest_twisted.ensureDeferred
async def test_naptr_order_decides_the_transports(lab: Lab) -> None:
    lab.zone.set(
        "pool.sipha.test",
        naptr(20, b"SIP+D2U", "_sip._udp.pool.sipha.test"),
        naptr(10, b"SIP+D2T", "_sip._tcp.pool.sipha.test"),
        naptr(5, b"SIPS+D2T", "_sips._tcp.pool.sipha.test"),  # no TLS listener: passed over
    )
    lab.zone.set("_sip._udp.pool.sipha.test", srv(10, 0, 5071, "fs1.sipha.test"))
    lab.zone.set("_sip._tcp.pool.sipha.test", srv(10, 0, 5072, "fs2.sipha.test"))
    lab.zone.set("_sips._tcp.pool.sipha.test", srv(10, 0, 5073, "fs3.sipha.test"))
    assert await lab.locate("sip:pool.sipha.test") == [Peer("tcp", FS2, 5072), udp(FS1, 5071)]


@pytest_twisted.ensureDeferred
async def test_without_naptr_every_transport_sipha_listens_on_is_asked(lab: Lab) -> None:
    lab.zone.set("_sip._tcp.pool.sipha.test", srv(10, 0, 5072, "fs2.sipha.test"))
    lab.zone.set("_sip._udp.pool.sipha.test", srv(10, 0, 5071, "fs1.sipha.test"))
    assert await lab.locate("sip:pool.sipha.test") == [udp(FS1, 5071), Peer("tcp", FS2, 5072)]


@pytest_twisted.ensureDeferred
async def test_srv_weights_share_the_first_choice(lab: Lab) -> None:
    lab.locator.rng = random.Random(3)
    lab.zone.set(
        "_sip._udp.pool.sipha.test",
        srv(10, 0, 5071, "fs1.sipha.test"),
        srv(10, 20, 5072, "fs2.sipha.test"),
        srv(10, 80, 5073, "fs3.sipha.test"),
    )
    firsts: Counter[str] = Counter()
    for _ in range(2000):
        peers = await lab.locate("sip:pool.sipha.test")
        assert sorted(peers) == [udp(FS1, 5071), udp(FS2, 5072), udp(FS3, 5073)]
        firsts[peers[0].host] += 1
    assert 1500 < firsts[FS3] < 1700  # 80 / 101
    assert 330 < firsts[FS2] < 470  # 20 / 101
    assert firsts[FS1] < 60  # weight 0: a small chance only


@pytest_twisted.ensureDeferred
async def test_a_name_without_srv_is_its_own_a_records_on_the_default_port(lab: Lab) -> None:
    lab.zone.set("fs.sipha.test", a(FS1), a(FS2))
    assert await lab.locate("sip:fs.sipha.test") == [udp(FS1), udp(FS2)]
    assert await lab.locate("sips:fs.sipha.test") == []  # no TLS listener


@pytest_twisted.ensureDeferred
async def test_a_port_or_a_transport_in_the_uri_narrows_the_lookup(lab: Lab) -> None:
    lab.zone.set("fs.sipha.test", a(FS1))
    lab.zone.set("_sip._tcp.fs.sipha.test", srv(10, 0, 5090, "fs2.sipha.test"))
    assert await lab.locate("sip:fs.sipha.test:5080;transport=tcp") == [Peer("tcp", FS1, 5080)]
    assert await lab.locate("sip:fs.sipha.test;transport=tcp") == [Peer("tcp", FS2, 5090)]
    asked = {kind for (_, kind) in lab.server.queries}
    assert "NAPTR" not in asked  # a port or a transport leaves no choice to NAPTR


@pytest_twisted.ensureDeferred
async def test_ipv6_only_with_an_ipv6_listener(dns_server: DNSServer) -> None:
    dns_server.zone.set("fs.sipha.test", a(FS1), dns.Record_AAAA("2001:db8::1", ttl=300))
    only_v4 = Lab(dns_server)
    both = Lab(dns_server, ipv6=True)
    try:
        assert await only_v4.locate("sip:fs.sipha.test:5060") == [udp(FS1)]
        assert ("fs.sipha.test", "AAAA") not in dns_server.queries
        assert await both.locate("sip:fs.sipha.test:5060") == [udp(FS1), udp("2001:db8::1")]
    finally:
        stop_resolver(only_v4.resolver)
        stop_resolver(both.resolver)


@pytest_twisted.ensureDeferred
async def test_answers_are_kept_for_their_ttl(lab: Lab) -> None:
    lab.zone.set("fs.sipha.test", a(FS1, ttl=60))
    assert await lab.locate("sip:fs.sipha.test:5060") == [udp(FS1)]
    lab.zone.set("fs.sipha.test", a(FS2, ttl=60))
    lab.clock.advance(59)
    assert await lab.locate("sip:fs.sipha.test:5060") == [udp(FS1)]
    assert lab.server.queries[("fs.sipha.test", "A")] == 1
    lab.clock.advance(1)
    assert await lab.locate("sip:fs.sipha.test:5060") == [udp(FS2)]
    assert lab.server.queries[("fs.sipha.test", "A")] == 2


@pytest_twisted.ensureDeferred
async def test_cached_answers_come_at_once(lab: Lab) -> None:
    """A call to a name pays no DNS round trip while the answers last."""
    lab.zone.set("fs.sipha.test", a(FS1))
    await lab.locate("sip:fs.sipha.test:5060")
    found: list[list[Peer]] = []
    lab.locator.locate(parse_uri("sip:fs.sipha.test:5060"), found.append)
    assert found == [[Peer("udp", FS1, 5060, "fs.sipha.test")]]


@pytest_twisted.ensureDeferred
async def test_a_missing_name_is_logged_once_counted_each_time_and_asked_again_after_soa_minimum(
    lab: Lab,
) -> None:
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    try:
        for _ in range(3):
            assert await lab.locate("sip:nowhere.sipha.test:5060") == []
        assert lab.server.queries[("nowhere.sipha.test", "A")] == 1  # the negative answer is kept
        lab.clock.advance(NEGATIVE_TTL)  # a "no such name" without an SOA
        lab.zone.set("nowhere.sipha.test", a(FS1))
        assert await lab.locate("sip:nowhere.sipha.test:5060") == [udp(FS1)]
    finally:
        globalLogPublisher.removeObserver(events.append)
    said = [formatEvent(e) for e in events if e.get("log_namespace") == "sipha.locator"]
    assert said == [
        "cannot resolve nowhere.sipha.test: no NAPTR, SRV, A or AAAA record",
        "nowhere.sipha.test resolves again",
    ]
    assert lab.locator.failures == 3


@pytest_twisted.ensureDeferred
async def test_no_record_of_a_type_is_kept_for_the_soa_minimum(lab: Lab) -> None:
    lab.zone.set("fs.sipha.test", a(FS1, ttl=1000))
    for _ in range(2):
        assert await lab.locate("sip:fs.sipha.test") == [udp(FS1)]
    lab.clock.advance(99)
    assert await lab.locate("sip:fs.sipha.test") == [udp(FS1)]
    assert lab.server.queries[("fs.sipha.test", "NAPTR")] == 1
    lab.clock.advance(1)  # the zone's SOA minimum, 100
    assert await lab.locate("sip:fs.sipha.test") == [udp(FS1)]
    assert lab.server.queries[("fs.sipha.test", "NAPTR")] == 2
    assert lab.server.queries[("fs.sipha.test", "A")] == 1


@pytest_twisted.ensureDeferred
async def test_while_the_name_servers_are_silent_stale_answers_are_used(lab: Lab) -> None:
    lab.zone.set("fs.sipha.test", a(FS1, ttl=10))
    assert await lab.locate("sip:fs.sipha.test:5060") == [udp(FS1)]
    lab.server.stop_answering()
    lab.clock.advance(11)
    assert await lab.locate("sip:fs.sipha.test:5060") == [udp(FS1)]  # after the query timed out
    asked = lab.server.queries[("fs.sipha.test", "A")]
    lab.clock.advance(FAILURE_TTL - 1)
    assert await lab.locate("sip:fs.sipha.test:5060") == [udp(FS1)]
    assert lab.server.queries[("fs.sipha.test", "A")] == asked  # not asked again meanwhile


@pytest_twisted.ensureDeferred
async def test_a_name_never_answered_fails_and_says_why(lab: Lab) -> None:
    lab.server.stop_answering()
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    try:
        assert await lab.locate("sip:fs.sipha.test:5060") == []
    finally:
        globalLogPublisher.removeObserver(events.append)
    said = [formatEvent(e) for e in events if e.get("log_namespace") == "sipha.locator"]
    assert said == [
        "cannot resolve fs.sipha.test: A fs.sipha.test: no answer from the name servers"
    ]


@pytest_twisted.ensureDeferred
async def test_the_cache_is_bounded(dns_server: DNSServer) -> None:
    lab = Lab(dns_server, cache_size=16)
    try:
        for n in range(40):
            lab.zone.set(f"fs{n}.sipha.test", a(FS1))
            assert await lab.locate(f"sip:fs{n}.sipha.test:5060") == [udp(FS1)]
        assert len(lab.locator._cache) == 16
        assert await lab.locate("sip:fs39.sipha.test:5060") == [udp(FS1)]
        assert lab.server.queries[("fs39.sipha.test", "A")] == 1  # the recent ones stay
    finally:
        stop_resolver(lab.resolver)
