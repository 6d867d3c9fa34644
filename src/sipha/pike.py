"""Per-source limiting, as OpenSIPS's pike module does it.

Theory of operation: every message from a source that is not trusted counts
against that source (an IPv4 address, or an IPv6 /64: one customer's
network). Time is cut into units of ``sampling_time_unit`` seconds; a source
that sends more than ``reqs_density_per_unit`` messages in one unit is
*limited* from then on, and stays limited for every following unit in which
it goes on sending more than that (what it sends while limited counts too),
so a flood is limited for as long as it lasts and released one quiet unit
after it stops. Limited messages are refused before they are even parsed, so
a flood costs next to nothing. A source not heard from for
``remove_latency`` seconds is forgotten; at most ``max_sources`` are
remembered (the oldest go first), so a spoofed flood from many addresses
cannot grow memory without bound.

Trusted sources are never counted: the media servers, the other load
balancer, the node itself, and the networks the operator lists. The clock is
injected; nothing here does I/O.
"""

from __future__ import annotations

import contextlib
import ipaddress
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

#: Sources remembered at most (each is a few hundred bytes).
MAX_SOURCES = 100_000


@dataclass(slots=True)
class _Source:
    unit: int  # the sampling unit ``count`` is for
    count: int  # messages in that unit
    limited: bool
    last_seen: float
    refused: int = 0  # messages refused since it was limited


class Pike:
    """Decides, message by message, whether a source may be served.

    ``trusted(address)`` says whether an address is never limited; it is
    asked once per address and the answer kept until :meth:`retrust`.
    """

    def __init__(
        self,
        clock: Any,
        *,
        sampling_time_unit: float = 2.0,
        reqs_density_per_unit: int = 200,
        remove_latency: float = 120.0,
        trusted: Callable[[str], bool] = lambda address: False,
        max_sources: int = MAX_SOURCES,
    ):
        self.clock = clock
        self.unit = sampling_time_unit
        self.density = reqs_density_per_unit
        self.remove_latency = remove_latency
        self.trusted = trusted
        self.max_sources = max_sources
        self.refused = 0
        #: Told each source that becomes limited (the kernel's blocklist listens).
        self.on_limited: Callable[[str], None] = lambda source: None
        self._sources: OrderedDict[str, _Source] = OrderedDict()
        self._keys: dict[str, str | None] = {}  # address -> source key, None if trusted

    def retrust(self) -> None:
        """The trusted addresses changed (destinations reloaded): ask again."""
        self._keys.clear()
        for key in [key for key in self._sources if self.trusted(key)]:
            del self._sources[key]

    def allow(self, address: str) -> bool:
        """Count one message from ``address``; False if its source is limited."""
        key = self._keys.get(address, "")
        if key == "":
            key = self._key(address)
        if key is None:
            return True
        now = self.clock.seconds()
        unit = int(now // self.unit)
        source = self._sources.get(key)
        if source is None:
            source = self._sources[key] = _Source(unit, 0, False, now)
            if len(self._sources) > self.max_sources:
                self._forget_oldest(now)
        else:
            self._sources.move_to_end(key)
            if unit != source.unit:
                # The last unit decides: over the density, limited; quiet, released.
                over = unit == source.unit + 1 and source.count > self.density
                source.limited, source.unit, source.count = over, unit, 0
                if not over:
                    source.refused = 0
        source.last_seen = now
        source.count += 1
        if source.count > self.density and not source.limited:
            source.limited = True
            self.on_limited(key)
        if source.limited:
            source.refused += 1
            self.refused += 1
            return False
        return True

    def _key(self, address: str) -> str | None:
        if len(self._keys) >= MAX_SOURCES:
            self._keys.clear()
        key: str | None = None
        if not self.trusted(address):
            key = address
            if ":" in address:
                with contextlib.suppress(ValueError):
                    key = str(ipaddress.IPv6Network((address, 64), strict=False))
        self._keys[address] = key
        return key

    def _forget_oldest(self, now: float) -> None:
        """Drop sources quiet for remove_latency; past the bound, the least recent too."""
        sources = self._sources
        while sources:
            key, oldest = next(iter(sources.items()))
            if now - oldest.last_seen < self.remove_latency and len(sources) <= self.max_sources:
                break
            del sources[key]

    def expire(self) -> None:
        """Forget the sources quiet for ``remove_latency`` (called now and then)."""
        self._forget_oldest(self.clock.seconds())

    def limited(self) -> list[dict[str, Any]]:
        """The sources limited now, for ``sipha-ctl pike``."""
        unit = int(self.clock.seconds() // self.unit)
        return [
            {"source": key, "refused": s.refused, "last_seen": s.last_seen}
            for key, s in self._sources.items()
            if s.limited and unit <= s.unit + 1
        ]


class TrustedSources:
    """The addresses pike never limits: the operator's networks and the pair's own hosts.

    ``update`` sets the hosts (media servers, the other node, the node
    itself), which change when the destination tables are reloaded.
    """

    def __init__(self, networks: Iterable[str] = ()):
        self.networks = [ipaddress.ip_network(network, strict=False) for network in networks]
        self.hosts: frozenset[str] = frozenset()

    def update(self, hosts: Iterable[str]) -> None:
        self.hosts = frozenset(str(ipaddress.ip_address(h)) for h in hosts if _is_ip(h))

    def __call__(self, address: str) -> bool:
        if address in self.hosts:
            return True
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in self.networks)


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True
