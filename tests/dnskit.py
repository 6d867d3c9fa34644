"""A DNS server for tests: a zone served by ``twisted.names`` on the loopback, in this process.

The zone's records can be changed while it serves, and it counts the queries
it answers, so tests see what a resolver asked and when.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from twisted.internet import defer
from twisted.names import authority, dns, server

ZONE = "sipha.test"


class Zone(authority.FileAuthority):
    """An authority for ``sipha.test`` whose records a test sets: ``zone.set(name, *records)``."""

    def __init__(self, negative_ttl: int = 30) -> None:
        self.negative_ttl = negative_ttl
        super().__init__(ZONE)

    def loadFile(self, filename: str) -> None:  # noqa: N802 (FileAuthority's name)
        soa = dns.Record_SOA(
            mname=f"ns.{ZONE}", rname=f"admin.{ZONE}", minimum=self.negative_ttl, ttl=3600
        )
        self.soa = (filename.encode(), soa)
        self.records: dict[bytes, list[Any]] = {filename.encode(): [soa]}

    def set(self, name: str, *records: Any) -> None:
        """Give ``name`` these records (none: the name no longer exists)."""
        key = name.lower().encode()
        if records:
            self.records[key] = list(records)
        else:
            self.records.pop(key, None)


class _CountingFactory(server.DNSServerFactory):
    def __init__(self, zone: Zone) -> None:
        super().__init__(authorities=[zone])
        self.queries: Counter[tuple[str, str]] = Counter()
        self.silent = False

    def handleQuery(self, message: dns.Message, protocol: Any, address: Any) -> Any:  # noqa: N802
        for query in message.queries:
            self.queries[(query.name.name.decode(), dns.QUERY_TYPES[query.type])] += 1
        if self.silent:
            return defer.succeed(None)  # a name server that stopped answering
        return super().handleQuery(message, protocol, address)


class DNSServer:
    """The zone on 127.0.0.1, UDP, on a port of the kernel's choosing."""

    def __init__(self, reactor: Any, zone: Zone) -> None:
        self.zone = zone
        self.factory = _CountingFactory(zone)
        self.factory.noisy = False
        protocol = dns.DNSDatagramProtocol(self.factory)
        protocol.noisy = False
        self.port = reactor.listenUDP(0, protocol, interface="127.0.0.1")
        self.address = ("127.0.0.1", self.port.getHost().port)

    @property
    def queries(self) -> Counter[tuple[str, str]]:
        """Questions asked so far, by (name, type)."""
        return self.factory.queries

    def stop_answering(self) -> None:
        self.factory.silent = True

    def stop(self) -> defer.Deferred[None]:
        return defer.maybeDeferred(self.port.stopListening)
