"""Locating SIP servers by name (RFC 3263) with ``twisted.names``: NAPTR, SRV, then A/AAAA.

The proxy core is sans-IO: for a URI whose host is a name it asks its
locator for the transport addresses to try, best first, and tries them in
turn, the next one on a timeout or a 503 (see ``ProxyContext.next_branch``).
:class:`DNSLocator` is that locator, on the Twisted edge; no blocking
resolver runs in the reactor thread.

The procedure (RFC 3263 §4): a URI with a port is looked up by A/AAAA
(its ``transport``, else UDP; TLS for ``sips:``). Without a port, an
explicit ``transport`` is looked up by its SRV name (``_sip._tcp.HOST``);
otherwise NAPTR records say which transports the domain offers and their
SRV names, in order and preference, and without NAPTR records every SRV
name of a transport sipha listens on is asked (UDP, TCP, then TLS). SRV
targets come by priority, and within a priority in a random order weighted
as RFC 2782 says, so a pool's servers share its calls by their weights.
With no SRV record at all, the host's own A/AAAA records on the default
port. Only the families sipha has listeners for are asked (A for IPv4,
AAAA for IPv6), and names in /etc/hosts are answered from it.

Every answer is kept for its TTL, and a negative one (no such name, no such
record) for its zone's SOA minimum (RFC 2308); at most ``cache_size``
record sets, the least recently used going first. A query that fails (no
answer in time, a server failure) is remembered for ``FAILURE_TTL`` seconds,
so calls do not each wait out a dead name server, and meanwhile a record
set past its TTL keeps being used (RFC 8767, serve-stale): destinations
stay reachable through a name server outage. A name that yields no address
is logged once, until it resolves again, and counted (``failures``).
"""

from __future__ import annotations

import random
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime, IResolver
from twisted.names import client, dns, hosts, resolve
from twisted.names.error import DNSNameError

from sipha.logs import Log
from sipha.transaction import Peer
from sipha.uri import URI, is_ip_address

log = Log(namespace="sipha.locator")

#: Seconds a negative answer is kept when its zone gives no SOA to say how long.
NEGATIVE_TTL = 30.0
#: Seconds a failed query is remembered (and a stale record set used again).
FAILURE_TTL = 5.0

#: NAPTR services (RFC 3263 §4.1) and SRV prefixes by transport.
_NAPTR_SERVICES = {b"SIP+D2U": "udp", b"SIP+D2T": "tcp", b"SIPS+D2T": "tls"}
_SRV_PREFIX = {"udp": "_sip._udp", "tcp": "_sip._tcp", "tls": "_sips._tcp"}
_PREFERENCE = ("udp", "tcp", "tls")


def make_resolver(
    reactor: Any, nameservers: Sequence[tuple[str, int]], retry_time: float, retries: int
) -> IResolver:
    """/etc/hosts, then the name servers: ``nameservers``, or those of /etc/resolv.conf.

    Each query is sent ``retries + 1`` times, ``retry_time`` seconds apart,
    each time to every name server in turn.
    """
    timeouts = (retry_time,) * (retries + 1)
    if nameservers:
        servers = client.Resolver(servers=list(nameservers), timeout=timeouts, reactor=reactor)
    else:
        servers = client.Resolver(resolv="/etc/resolv.conf", timeout=timeouts, reactor=reactor)
    return resolve.ResolverChain([hosts.Resolver(b"/etc/hosts"), servers])


def stop_resolver(resolver: IResolver) -> None:
    """Stop the periodic re-reading of /etc/resolv.conf, if the resolver has one."""
    for each in getattr(resolver, "resolvers", ()):
        call = getattr(each, "_parseCall", None)
        if call is not None and call.active():
            call.cancel()


@dataclass(slots=True)
class _Answer:
    """One record set (the payloads of one name and type), or why there is none."""

    records: tuple[Any, ...]
    expires: float
    error: str | None = None


@dataclass(slots=True)
class _Lookup:
    """One location in progress: what went wrong on the way, for the log line."""

    errors: list[str] = field(default_factory=list)


class DNSLocator:
    """RFC 3263 server location on a ``twisted.names`` resolver, with a bounded TTL cache.

    ``transports`` are those sipha listens on ("udp", "tcp", "tls"), and
    ``ipv4``/``ipv6`` whether it has listeners of that family: nothing is
    asked that could not be used.
    """

    def __init__(
        self,
        resolver: IResolver,
        clock: IReactorTime,
        *,
        transports: Iterable[str],
        ipv4: bool = True,
        ipv6: bool = False,
        cache_size: int = 1000,
        rng: random.Random | None = None,
    ):
        self.resolver = resolver
        self.clock = clock
        wanted = set(transports)
        self.transports = tuple(t for t in _PREFERENCE if t in wanted)
        self.families = (dns.A,) * ipv4 + (dns.AAAA,) * ipv6
        self.cache_size = cache_size
        self.rng = rng or random.Random()
        self._cache: OrderedDict[tuple[str, int], _Answer] = OrderedDict()
        self._failing: set[str] = set()
        #: Locations that found no address at all.
        self.failures = 0
        self._queries = {
            dns.NAPTR: resolver.lookupNamingAuthorityPointer,
            dns.SRV: resolver.lookupService,
            dns.A: resolver.lookupAddress,
            dns.AAAA: resolver.lookupIPV6Address,
        }

    def locate(self, uri: URI, done: Callable[[list[Peer]], None]) -> None:
        """Call ``done`` with ``uri``'s addresses, best first: at once when all answers are cached."""
        lookup = _Lookup()
        host = uri.params.get("maddr") or uri.host
        located = defer.ensureDeferred(self._locate(uri, host, lookup))
        if not is_ip_address(host):
            located.addCallback(lambda peers: [peer._replace(name=host) for peer in peers])
        located.addCallback(self._report, host, lookup)
        located.addCallback(done)
        located.addErrback(lambda failure: log.failure("locating {uri}", failure, uri=str(uri)))

    async def _locate(self, uri: URI, host: str, lookup: _Lookup) -> list[Peer]:
        secure = uri.scheme == "sips"
        explicit = (uri.params.get("transport") or "").lower()
        if secure and explicit == "tcp":
            explicit = "tls"  # sips: over TCP is TLS
        fallback = explicit or ("tls" if secure else self.transports[0])
        if fallback not in self.transports:
            return []
        if uri.port is not None:
            return await self._at(host, fallback, uri.port, lookup)
        if explicit:
            services = [(explicit, f"{_SRV_PREFIX[explicit]}.{host}")]
        else:
            services = await self._naptr(host, secure, lookup) or [
                (t, f"{_SRV_PREFIX[t]}.{host}") for t in self.transports if (t == "tls") == secure
            ]
        peers: list[Peer] = []
        any_srv = False
        for transport, name in services:
            answer = await self._query(name, dns.SRV, lookup)
            any_srv = any_srv or bool(answer.records)
            for record in _srv_order(answer.records, self.rng):
                peers += await self._at(str(record.target), transport, record.port, lookup)
        if any_srv:
            return list(dict.fromkeys(peers))
        return await self._at(host, fallback, 5061 if fallback == "tls" else 5060, lookup)

    async def _naptr(self, host: str, secure: bool, lookup: _Lookup) -> list[tuple[str, str]]:
        """The domain's SIP services that sipha can use, as (transport, SRV name), best first."""
        answer = await self._query(host, dns.NAPTR, lookup)
        services = []
        for record in sorted(answer.records, key=lambda r: (r.order, r.preference)):
            transport = _NAPTR_SERVICES.get(record.service.string.upper())
            if (
                transport in self.transports
                and (transport == "tls") == secure
                and record.flags.string.lower() == b"s"
            ):
                services.append((transport, str(record.replacement)))
        return services

    async def _at(self, host: str, transport: str, port: int, lookup: _Lookup) -> list[Peer]:
        if is_ip_address(host):
            return [Peer(transport, host, port)]
        peers = []
        for family in self.families:
            answer = await self._query(host, family, lookup)
            peers += [Peer(transport, _address(record), port) for record in answer.records]
        return peers

    async def _query(self, name: str, kind: int, lookup: _Lookup) -> _Answer:
        """One record set, from the cache while its TTL lasts, else from the name servers."""
        key = (name.lower().rstrip("."), kind)
        now = self.clock.seconds()
        cached = self._cache.get(key)
        if cached is not None and cached.expires > now:
            self._cache.move_to_end(key)
            if cached.error:
                lookup.errors.append(cached.error)
            return cached
        try:
            answers, authority, _ = await self._queries[kind](key[0])
        except DNSNameError as error:  # no such name: a negative answer (the reply is its argument)
            reply = error.args[0] if error.args else None
            answer = _Answer((), now + _negative_ttl(getattr(reply, "authority", ())))
        except Exception as error:
            reason = f"{dns.QUERY_TYPES.get(kind, kind)} {key[0]}: {_describe(error)}"
            lookup.errors.append(reason)
            if cached is not None and cached.records:
                answer = _Answer(cached.records, now + FAILURE_TTL)  # serve stale
            else:
                answer = _Answer((), now + FAILURE_TTL, reason)
        else:
            mine = [rr for rr in answers if rr.type == kind]
            if mine:
                ttl = min(rr.ttl for rr in mine)
                answer = _Answer(tuple(rr.payload for rr in mine), now + ttl)
            else:
                answer = _Answer((), now + _negative_ttl(authority))
        self._remember(key, answer)
        return answer

    def _remember(self, key: tuple[str, int], answer: _Answer) -> None:
        self._cache[key] = answer
        self._cache.move_to_end(key)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)

    def _report(self, peers: list[Peer], host: str, lookup: _Lookup) -> list[Peer]:
        """Log a name once when it stops resolving, and once when it resolves again."""
        if peers:
            if host in self._failing:
                self._failing.discard(host)
                log.info("{host} resolves again", host=host)
            return peers
        self.failures += 1
        if host not in self._failing:
            if len(self._failing) >= self.cache_size:
                self._failing.clear()  # bounded, whatever names requests bring
            self._failing.add(host)
            reason = "; ".join(dict.fromkeys(lookup.errors)) or "no NAPTR, SRV, A or AAAA record"
            log.warn("cannot resolve {host}: {reason}", host=host, reason=reason)
        return peers


def _srv_order(records: Iterable[Any], rng: random.Random) -> list[Any]:
    """RFC 2782: by priority, and within one, a random order weighted by the weights."""
    ordered = []
    by_priority: dict[int, list[Any]] = {}
    for record in records:
        if str(record.target) not in ("", "."):  # "." means no such service here
            by_priority.setdefault(record.priority, []).append(record)
    for priority in sorted(by_priority):
        # Weight 0 first, so that those get the small chance RFC 2782 gives them.
        left = sorted(by_priority[priority], key=lambda r: r.weight != 0)
        while left:
            pick = rng.randint(0, sum(r.weight for r in left))
            running = 0
            for index, record in enumerate(left):
                running += record.weight
                if running >= pick:
                    ordered.append(left.pop(index))
                    break
    return ordered


def _address(record: Any) -> str:
    return record.dottedQuad() if isinstance(record, dns.Record_A) else record._address


def _negative_ttl(authority: Iterable[Any]) -> float:
    """RFC 2308 §5: the SOA's TTL, at most its minimum; NEGATIVE_TTL without an SOA."""
    for rr in authority:
        if rr.type == dns.SOA:
            return float(min(rr.ttl, rr.payload.minimum))
    return NEGATIVE_TTL


def _describe(error: Exception) -> str:
    if isinstance(error, defer.TimeoutError):
        return "no answer from the name servers"
    return str(error) or type(error).__name__
