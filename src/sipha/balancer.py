"""OpenSIPS's load_balancer: per-destination resource capacities and live counters.

Theory of operation: each destination of a group declares capacities such as
``pstn=32;transc=10``. A call asks :meth:`LoadBalancer.start` for one unit of
each resource it needs and gets an :class:`Allocation`: iterating it yields the
destination to try, each step giving back the unit held on the previous one
(failover), and :meth:`Allocation.release` gives back the last one when the
call ends. Counters move only through allocations, so they cannot leak or go
below zero, whatever the order of failovers, releases and reloads.

Counters are kept per group and URI, not per row object, so a call still up
when a reload removes its destination, or removes and later restores it,
gives its unit back to the right counter.

Sans-IO: probes are run by the caller, which asks
:meth:`LoadBalancer.probe_targets` and reports to :meth:`LoadBalancer.probe_result`.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from sipha.config import parse_resources
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

__all__ = ["Allocation", "LoadBalancer", "LoadBalancerRow"]

_Key = tuple[int, str]


class LoadBalancerRow(Protocol):
    """A ``[[load_balancer.destination]]`` entry or a row of the ``load_balancer`` table.

    ``id`` may be absent (config entries have none): such a row takes its
    1-based position, so a config list and a table number alike. An absent or
    NULL ``probe_mode`` is 2 (sipha decision 2).
    """

    @property
    def group_id(self) -> int: ...
    @property
    def dst_uri(self) -> str: ...
    @property
    def resources(self) -> str: ...
    @property
    def probe_mode(self) -> int: ...
    @property
    def description(self) -> str: ...


@dataclass(eq=False, slots=True)
class _Destination:
    id: int
    group: int
    uri: str
    #: Capacity by resource, in the row's order; ``resize`` edits it until the next reload.
    capacity: dict[str, int]
    probe_mode: int
    description: str
    health: Health
    #: Units held by resource; shared with the counters table, see ``LoadBalancer._loads``.
    load: dict[str, int]
    #: ``(group, URI)``: what a destination is across reloads. Kept, not
    #: recomputed: every selection compares it with the call's tried ones.
    key: _Key = field(init=False)

    def __post_init__(self) -> None:
        self.key = (self.group, self.uri.lower())

    def availability(self, resources: Sequence[str], relative: bool) -> int:
        """OpenSIPS's free capacity: the scarcest requested resource, never below 0."""
        free = []
        for name in resources:
            limit, used = self.capacity[name], self.load.get(name, 0)
            if relative:
                free.append(100 - (100 * used) // limit if limit else 0)
            else:
                free.append(limit - used)
        return max(min(free), 0)

    def take(self, resources: Sequence[str]) -> None:
        for name in resources:
            self.load[name] = self.load.get(name, 0) + 1

    def give(self, resources: Sequence[str]) -> None:
        for name in resources:
            self.load[name] -= 1
            if not self.load[name]:
                del self.load[name]


def _check_row(row: Any, position: int) -> _Destination:
    row_id, group = int_column(row, "id", position), int_column(row, "group_id")
    uri = uri_column(row, "dst_uri")
    try:
        capacity = parse_resources(text_column(row, "resources"))
    except ValueError as exc:
        raise ValueError(f"resources {getattr(row, 'resources', None)!r}: {exc}") from None
    probe_mode = int_column(row, "probe_mode", 2)
    if probe_mode not in (0, 1, 2):
        raise ValueError(f"probe_mode must be 0, 1 or 2, got {probe_mode}")
    return _Destination(
        id=row_id,
        group=group,
        uri=uri,
        capacity=capacity,
        probe_mode=probe_mode,
        description=text_column(row, "description"),
        health=Health(),
        load={},
    )


def _resource_names(resources: Sequence[str] | str) -> tuple[str, ...]:
    """``"pstn;transc"`` or ``["pstn", "transc"]`` as names without duplicates."""
    if isinstance(resources, str):
        return _resource_text(resources)  # every call of a route asks the same
    return _checked_names(resources)


@functools.lru_cache(maxsize=256)
def _resource_text(resources: str) -> tuple[str, ...]:
    return _checked_names(resources)


def _checked_names(resources: Sequence[str] | str) -> tuple[str, ...]:
    items = resources.split(";") if isinstance(resources, str) else resources
    names = tuple(dict.fromkeys(item.strip() for item in items))
    for name in names:
        if not name or "=" in name or any(c.isspace() for c in name):
            raise ValueError(f"bad resource list {resources!r}: expected names like 'pstn;transc'")
    if not names:
        raise ValueError("no resource requested")
    return names


def _is_relative(algorithm: str | int) -> bool:
    """Relative or absolute; ``1`` and ``0`` are 1.7's numbers for them (sipha decision 1)."""
    text = str(algorithm).strip().lower()
    if text in ("relative", "1"):
        return True
    if text in ("absolute", "0"):
        return False
    raise ValueError(f"unknown load-balancing algorithm {algorithm!r}")


class Allocation:
    """One call's hold on the balancer: an iterator of the destinations to try, best first.

    Each ``next()`` gives back the unit(s) held on the previous destination and
    takes one unit of every requested resource on the best destination not yet
    tried by this call; StopIteration when none is left (the caller answers
    503). :meth:`release` gives back what is held and may be called any number
    of times, so every way a call can end may call it.
    """

    __slots__ = ("group", "resources", "_balancer", "_relative", "_tried", "_held")

    def __init__(
        self, balancer: LoadBalancer, group: int, resources: tuple[str, ...], relative: bool
    ):
        self.group = group
        self.resources = resources
        self._balancer = balancer
        self._relative = relative
        self._tried: tuple[_Key, ...] = ()  # a call tries a few at most: a tuple is smallest
        self._held: _Destination | None = None

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        self.release()
        chosen = self._balancer._best(self.group, self.resources, self._relative, self._tried)
        if chosen is None:
            raise StopIteration
        self._hold(chosen)
        return chosen.uri

    def _hold(self, destination: _Destination) -> None:
        self._tried += (destination.key,)
        destination.take(self.resources)
        self._held = destination

    def release(self) -> None:
        if self._held is not None:
            self._held.give(self.resources)
            self._held = None

    @property
    def destination(self) -> str | None:
        """The URI holding this call's unit(s), or None."""
        return None if self._held is None else self._held.uri

    @property
    def destination_id(self) -> int | None:
        """The row id of that destination: OpenSIPS's profile value (in hex) for the call."""
        return None if self._held is None else self._held.id

    def __repr__(self) -> str:
        return f"<Allocation group={self.group} {';'.join(self.resources)} at {self.destination}>"


class LoadBalancer:
    """Destinations with resource capacities, chosen by most free capacity.

    Selection (OpenSIPS ``load_balance``): among the destinations of the group
    that have every requested resource, are enabled and were not tried by this
    call, take the greatest availability, which must be above 0: absolute is
    ``max - load``, relative ``100 - (100 * load) // max``, the minimum over
    the requested resources. Ties go to the earlier destination in row order,
    so two equal destinations alternate A, B, A, B while calls are held.
    """

    def __init__(
        self,
        destinations: Iterable[LoadBalancerRow] = (),
        *,
        probing_threshold: int = 2,
        reply_codes: Iterable[int] = (200,),
    ):
        self.probe_policy = ProbePolicy(probing_threshold, frozenset(reply_codes))
        self._destinations: list[_Destination] = []
        # Counters by (group, URI): they outlive a reload that removes their
        # destination for as long as calls still hold units there.
        self._loads: dict[_Key, dict[str, int]] = {}
        self.reload(destinations)

    # -- configuration ----------------------------------------------------------------

    def reload(self, destinations: Iterable[LoadBalancerRow]) -> None:
        """Replace the destinations, keeping the state and counters of those that remain.

        "Remain" means the same group and URI (case-insensitive); capacities and
        the rest come from the new rows (a ``resize`` is forgotten, as in
        OpenSIPS). Every row is checked first; a bad or duplicate row raises
        ValueError naming it and the current list stays. Calls in flight keep
        their allocations.
        """
        seen_keys: set[_Key] = set()
        seen_ids: set[int] = set()
        positions = itertools.count(1)

        def check(row: Any) -> _Destination:
            destination = _check_row(row, next(positions))
            if destination.key in seen_keys:
                raise ValueError(f"{destination.uri} appears twice in group {destination.group}")
            if destination.id in seen_ids:
                raise ValueError(f"id {destination.id} appears twice")
            seen_keys.add(destination.key)
            seen_ids.add(destination.id)
            return destination

        fresh = check_rows("load_balancer", destinations, check)
        old = {destination.key: destination for destination in self._destinations}
        loads = {key: load for key, load in self._loads.items() if load}
        for destination in fresh:
            if destination.key in old:
                destination.health = old[destination.key].health
            destination.load = loads.setdefault(destination.key, {})
        self._destinations = fresh
        self._loads = loads

    def set_enabled(self, id_or_uri: int | str, enabled: bool) -> None:
        """The operator's ``lb_status``: disabled stays out, unprobed, until enabled again.

        Enabling also clears a probe failure. A URI acts on every group it is
        in. KeyError when nothing matches.
        """
        for destination in self._find(id_or_uri):
            destination.health.set(ACTIVE if enabled else INACTIVE)

    def resize(self, destination_id: int, resource: str, maximum: object) -> None:
        """The operator's ``lb_resize``: a new capacity now, in memory only (a reload resets it).

        ``maximum`` comes from the control socket's JSON as it is: checked here.
        """
        if isinstance(maximum, bool) or not isinstance(maximum, int) or maximum < 0:
            raise ValueError(f"capacity must be an integer >= 0, got {maximum!r}")
        (destination,) = self._find(destination_id)
        if resource not in destination.capacity:
            raise KeyError(f"destination {destination_id} has no resource {resource!r}")
        destination.capacity[resource] = maximum

    # -- calls ------------------------------------------------------------------------

    def start(
        self, group: int, resources: Sequence[str] | str, algorithm: str | int = "relative"
    ) -> Allocation | None:
        """Begin balancing one call; iterate the result for the destination(s) to try.

        None when a requested resource exists in no destination at all
        ("unknown resource", a configuration mistake rather than a full group).
        ValueError for a malformed resource list or algorithm.
        """
        names = _resource_names(resources)
        relative = _is_relative(algorithm)
        known = {name for destination in self._destinations for name in destination.capacity}
        if not known.issuperset(names):
            return None
        return Allocation(self, group, names, relative)

    def restore(self, group: int, uri: str, resources: Sequence[str] | str) -> Allocation | None:
        """Hold units for a call already up on ``uri`` (a dialog reloaded from the database).

        The units are taken even if the destination is full or disabled: the
        call exists, and the counter must say so. None when the group has no
        such URI any more.
        """
        names = _resource_names(resources)
        key = (group, uri.lower())
        destination = next((d for d in self._destinations if d.key == key), None)
        if destination is None:
            return None
        allocation = Allocation(self, group, names, True)
        allocation._hold(destination)
        return allocation

    def _best(
        self, group: int, resources: tuple[str, ...], relative: bool, tried: tuple[_Key, ...]
    ) -> _Destination | None:
        best, best_free = None, 0
        for destination in self._destinations:
            if (
                destination.group != group
                or destination.key in tried
                or not destination.health.usable
                or not all(name in destination.capacity for name in resources)
            ):
                continue
            free = destination.availability(resources, relative)
            if free > best_free:
                best, best_free = destination, free
        return best

    # -- probing ----------------------------------------------------------------------

    def probe_targets(self) -> list[str]:
        """The URIs to probe now, each once: probe_mode 2 always, 1 only while failing, 0 never."""
        due: dict[str, str] = {}
        for destination in self._destinations:
            if destination.probe_mode and destination.health.due(destination.probe_mode == 2):
                due.setdefault(destination.uri.lower(), destination.uri)
        return [*due.values()]

    def probe_result(self, uri: str, code: int | None) -> str | None:
        """Record a probe's final reply code (``None``: timeout) for every probed row of ``uri``.

        Returns "enabled" or "disabled" when that changed, for the caller to
        log; None otherwise, and for a URI no longer listed.
        """
        change = None
        for destination in self._matching(uri):
            if destination.probe_mode:
                usable = self.probe_policy.record(destination.health, code)
                if usable is not None:
                    change = "enabled" if usable else "disabled"
        return change

    # -- inspection -------------------------------------------------------------------

    def _matching(self, uri: str) -> Iterator[_Destination]:
        key = uri.lower()
        return (d for d in self._destinations if d.uri.lower() == key)

    def _find(self, id_or_uri: int | str) -> list[_Destination]:
        if isinstance(id_or_uri, str) and not id_or_uri.isdigit():
            found = list(self._matching(id_or_uri))
        else:
            found = [d for d in self._destinations if d.id == int(id_or_uri)]
        if not found:
            raise KeyError(f"no load-balancer destination {id_or_uri!r}")
        return found

    def load(self, id_or_uri: int | str) -> dict[str, int]:
        """Units held by resource; a URI in several groups sums them. KeyError when unknown."""
        totals: dict[str, int] = {}
        for destination in self._find(id_or_uri):
            for name in (*destination.capacity, *destination.load):
                totals[name] = totals.get(name, 0)
            for name, used in destination.load.items():
                totals[name] += used
        return totals

    def list(self) -> list[dict[str, Any]]:
        """Every destination in row order, for the control tools (``lb_list``)."""
        reasons = {INACTIVE: "operator", PROBING: "probes"}
        return [
            {
                "id": d.id,
                "group": d.group,
                "uri": d.uri,
                "enabled": d.health.usable,
                "reason": reasons.get(d.health.state),
                "probe_mode": d.probe_mode,
                "description": d.description,
                "failures": d.health.failures,
                "resources": [
                    {"name": name, "max": limit, "load": d.load.get(name, 0)}
                    for name, limit in d.capacity.items()
                ],
            }
            for d in self._destinations
        ]
