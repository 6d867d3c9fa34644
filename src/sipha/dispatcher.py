"""OpenSIPS's dispatcher: destination sets, selection algorithms, probe state.

Theory of operation: destinations are grouped into sets; within a set they are
ordered by ``priority``, highest first, ties in row order (OpenSIPS 3.x), and
that order is what the hash and round-robin indices, the failover walk and
algorithm 8 use. With the default priority 0 it is plain row order, as in 1.7,
so a hash maps a key to the same destination OpenSIPS would for the same rows.

Hash algorithms (0-3) pick ``ds_get_hash(key) % sum(weights)`` over cumulative
weights and, when that destination is not usable, walk to the next usable
index, wrapping: a key keeps its destination while it is up, and only the keys
of a destination that goes down move. Random algorithms (6, 9) draw among the
usable destinations only (3.x), so an outage does not double the share of the
destination that follows it. A set whose weights are all 0 counts as equally
weighted. Unknown algorithm numbers, like in OpenSIPS, take the first entry
(which makes them behave like 8).

Sans-IO: probes are run by the caller, which asks :meth:`Dispatcher.probe_targets`
and reports each outcome to :meth:`Dispatcher.probe_result`.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from sipha.destinations import (
    ACTIVE,
    INACTIVE,
    PROBING,
    Health,
    ProbePolicy,
    check_rows,
    int_column,
    text_column,
    uri_column,
)
from sipha.message import Request
from sipha.uri import DEFAULT_PORTS, URIError, format_host, parse_name_addr, parse_uri

__all__ = ["STATES", "Dispatcher", "DispatcherRow", "ds_get_hash"]

#: State names by OpenSIPS 3.x number (the ``dispatcher.state`` column).
STATES = {ACTIVE: "active", INACTIVE: "inactive", PROBING: "probing"}
_STATE_NUMBERS = {name: number for number, name in STATES.items()}

_MASK = 0xFFFFFFFF


class DispatcherRow(Protocol):
    """A ``[[dispatcher.destination]]`` entry or a row of the ``dispatcher`` table.

    Only ``setid`` and ``destination`` are required: an absent or NULL column
    takes the table's default (weight 1, priority 0, state 0, empty text), so
    rows of every table version load alike. ``state`` also accepts 1.7's
    ``flags`` bits (1 inactive, 2 probing, inactive winning).
    """

    @property
    def setid(self) -> int: ...
    @property
    def destination(self) -> str: ...
    @property
    def weight(self) -> int: ...
    @property
    def priority(self) -> int: ...
    @property
    def state(self) -> int: ...
    @property
    def attrs(self) -> str: ...
    @property
    def description(self) -> str: ...


def ds_get_hash(x: str | bytes | None, y: str | bytes | None = None) -> int:
    """OpenSIPS's ``ds_get_hash``, bit for bit, so the same key lands on the same index.

    C semantics: bytes are signed chars, arithmetic is unsigned 32-bit. Text is
    hashed as the bytes it arrived as (the parser decodes with surrogateescape).
    """
    if x is None and y is None:
        return 0
    h = 0
    for part in (x, y):
        if part is None:
            continue
        data = part.encode("utf-8", "surrogateescape") if isinstance(part, str) else part
        chars = [b - 256 if b >= 128 else b for b in data]
        p = 0
        while p + 4 <= len(chars):
            a, b, c, d = chars[p : p + 4]
            v = ((a << 24) + (b << 16) + (c << 8) + d) & _MASK
            h = (h + (v ^ (v >> 3))) & _MASK
            p += 4
        v = 0
        for c in chars[p:]:
            v = ((v << 8) + c) & _MASK
        h = (h + (v ^ (v >> 3))) & _MASK
    h = (h + (h >> 11) + (h >> 13) + (h >> 23)) & _MASK
    return h or 1


def _uri_hash(text: str) -> int:
    """Hash user and host[:port] (the port only when not the scheme's default), as 1.7 does.

    A URI sipha cannot parse (``tel:``) is hashed whole instead of failing the
    request: the key still sticks to one destination.
    """
    try:
        uri = parse_uri(text)
    except URIError:
        return ds_get_hash(text)
    host = format_host(uri.host)
    if uri.port is not None and uri.port != DEFAULT_PORTS[uri.scheme]:
        host = f"{host}:{uri.port}"
    return ds_get_hash(uri.user or "", host)


def _header_uri(request: Request, name: str) -> str:
    value = request.get(name) or ""
    try:
        return parse_name_addr(value).uri
    except URIError:
        return value


_HASHES: dict[int, Callable[[Request], int]] = {
    0: lambda request: ds_get_hash(request.call_id.strip()),
    1: lambda request: _uri_hash(_header_uri(request, "from")),
    2: lambda request: _uri_hash(_header_uri(request, "to")),
    3: lambda request: _uri_hash(request.uri),
}


def _by_weight(weights: Sequence[int], r: int) -> int:
    """The index whose cumulative weight first exceeds ``r % sum(weights)``."""
    total = sum(weights)
    if total == 0:
        return r % len(weights)
    r %= total
    for i, weight in enumerate(weights):
        if r < weight:
            return i
        r -= weight
    raise AssertionError("unreachable: r < total")


@dataclass(eq=False, slots=True)
class _Destination:
    setid: int
    uri: str
    weight: int
    priority: int
    #: The state the row declares, to tell an operator's edit of the table on reload.
    declared: int
    attrs: str
    description: str
    health: Health

    @property
    def key(self) -> tuple[int, str]:
        return self.setid, self.uri.lower()


def _check_row(row: Any) -> _Destination:
    setid, uri = int_column(row, "setid"), uri_column(row, "destination")
    weight = int_column(row, "weight", 1)
    if weight < 0:
        raise ValueError(f"weight must be >= 0, got {weight}")
    flags = int_column(row, "state", ACTIVE)
    if not 0 <= flags <= 3:
        raise ValueError(f"state must be 0 (active), 1 (inactive) or 2 (probing), got {flags}")
    state = INACTIVE if flags & 1 else PROBING if flags & 2 else ACTIVE
    return _Destination(
        setid=setid,
        uri=uri,
        weight=weight,
        priority=int_column(row, "priority", 0),
        declared=state,
        attrs=text_column(row, "attrs"),
        description=text_column(row, "description"),
        health=Health(state),
    )


def _failover(entries: list[_Destination], chosen: int) -> Iterator[str]:
    """The chosen URI, then chosen+1, chosen+2 ... wrapping, each if still usable when asked."""
    yield entries[chosen].uri
    n = len(entries)
    for k in range(1, n):
        entry = entries[(chosen + k) % n]
        if entry.health.usable:
            yield entry.uri


class Dispatcher:
    """Destination sets with OpenSIPS's selection algorithms and probe states.

    ``probing_mode`` 1 probes every destination that is not inactive; 0 only
    those already probing (OpenSIPS ``ds_probing_mode``). ``rng`` drives the
    random algorithms, so tests can seed it.
    """

    def __init__(
        self,
        destinations: Iterable[DispatcherRow] = (),
        *,
        probing_threshold: int = 2,
        probing_mode: int = 1,
        reply_codes: Iterable[int] = (200,),
        rng: random.Random | None = None,
    ):
        if probing_mode not in (0, 1):
            raise ValueError(f"probing_mode must be 0 or 1, got {probing_mode}")
        self.probe_policy = ProbePolicy(probing_threshold, frozenset(reply_codes))
        self._probe_all = probing_mode == 1
        self._rng = rng or random.Random()
        self._sets: dict[int, list[_Destination]] = {}
        self._next: dict[int, int] = {}
        self.reload(destinations)

    def _entries(self) -> Iterator[_Destination]:
        for entries in self._sets.values():
            yield from entries

    def _matching(self, uri: str) -> Iterator[_Destination]:
        key = uri.lower()
        return (entry for entry in self._entries() if entry.uri.lower() == key)

    def reload(self, destinations: Iterable[DispatcherRow]) -> None:
        """Replace the destinations, keeping the runtime state of those that remain.

        "Remain" means the same set and URI (case-insensitive). When a row's own
        ``state`` differs from what it said at the last load, the operator edited
        the table and the new value wins over the runtime state. Every row is
        checked first; a bad or duplicate row raises ValueError naming it and
        the current list stays.
        """
        seen: set[tuple[int, str]] = set()

        def check(row: Any) -> _Destination:
            entry = _check_row(row)
            if entry.key in seen:
                raise ValueError(f"{entry.uri} appears twice in set {entry.setid}")
            seen.add(entry.key)
            return entry

        fresh = check_rows("dispatcher", destinations, check)
        old = {entry.key: entry for entry in self._entries()}
        sets: dict[int, list[_Destination]] = {}
        for entry in fresh:
            previous = old.get(entry.key)
            if previous is not None and previous.declared == entry.declared:
                entry.health = previous.health
            sets.setdefault(entry.setid, []).append(entry)
        for entries in sets.values():
            entries.sort(key=lambda entry: -entry.priority)
        self._sets = sets

    def select(self, request: Request, set_id: int, algorithm: int = 0) -> Iterator[str] | None:
        """Choose a destination of ``set_id`` for ``request`` (OpenSIPS ``ds_select_dst``).

        None when the set is unknown or nothing in it is usable (the caller
        answers 503). Otherwise an iterator: the chosen URI first, then the
        failover order, evaluated as it is consumed so that a destination that
        goes down meanwhile is skipped.
        """
        entries = self._sets.get(set_id)
        if not entries:
            return None
        usable = [entry for entry in entries if entry.health.usable]
        if not usable:
            return None
        n = len(entries)
        if algorithm in _HASHES:
            start = _by_weight([entry.weight for entry in entries], _HASHES[algorithm](request))
        elif algorithm == 4:
            start = self._next.get(set_id, 0) % n
        elif algorithm == 6:
            start = entries.index(self._rng.choice(usable))
        elif algorithm == 9:
            weights = [entry.weight for entry in usable]
            start = entries.index(usable[_by_weight(weights, self._rng.getrandbits(32))])
        else:
            start = 0
        chosen = next(i % n for i in range(start, start + n) if entries[i % n].health.usable)
        if algorithm == 4:
            self._next[set_id] = (chosen + 1) % n
        return _failover(entries, chosen)

    def set_state(self, set_id: int, uri: str, state: int | str) -> None:
        """The operator's ``ds_set_state``: 0/"active", 1/"inactive" or 2/"probing".

        Active clears both verdicts (3.x); inactive takes the destination out of
        selection and probing until set active again; probing takes it out until
        a probe succeeds. KeyError when the set has no such URI.
        """
        number = _STATE_NUMBERS.get(state.lower()) if isinstance(state, str) else state
        if number not in STATES or isinstance(number, bool):
            raise ValueError(f"unknown dispatcher state {state!r}")
        key = (set_id, uri.lower())
        entry = next((e for e in self._sets.get(set_id, ()) if e.key == key), None)
        if entry is None:
            raise KeyError(f"no destination {uri} in set {set_id}")
        entry.health.set(number)

    def probe_targets(self) -> list[str]:
        """The URIs to probe now, each once even when it is in several sets."""
        due: dict[str, str] = {}
        for entry in self._entries():
            if entry.health.due(self._probe_all):
                due.setdefault(entry.uri.lower(), entry.uri)
        return [*due.values()]

    def probe_result(self, uri: str, code: int | None) -> str | None:
        """Record a probe's final reply code (``None``: timeout) for every entry of ``uri``.

        Returns the new state name ("active" or "probing") when it changed, for
        the caller to log; None otherwise, and for a URI no longer listed.
        """
        change = None
        for entry in self._matching(uri):
            usable = self.probe_policy.record(entry.health, code)
            if usable is not None:
                change = STATES[entry.health.state]
        return change

    def list(self) -> list[dict[str, Any]]:
        """Every destination, set by set in selection order, for the control tools."""
        return [
            {
                "set": e.setid,
                "uri": e.uri,
                "state": STATES[e.health.state],
                "weight": e.weight,
                "priority": e.priority,
                "attrs": e.attrs,
                "description": e.description,
                "failures": e.health.failures,
            }
            for e in self._entries()
        ]
