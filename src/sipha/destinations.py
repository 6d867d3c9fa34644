"""What the dispatcher and the load balancer share about their destinations.

Both keep, per destination, the same two verdicts OpenSIPS keeps: the
operator's (*inactive*: out until the operator says otherwise) and the probes'
(*probing*: out after ``threshold`` failed probes in a row, back after one good
reply). They are kept apart so that a probe can never undo an operator's
decision. Both also load rows that come from the config file or from SQL, where
a column may be NULL or, like the 2.4+ dispatcher weight, text.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from sipha.config import check_sip_uri

T = TypeVar("T")

#: OpenSIPS 3.x dispatcher state numbers; the balancer uses the same three.
ACTIVE, INACTIVE, PROBING = 0, 1, 2


class Health:
    """The runtime state of one destination; never both inactive and probing."""

    __slots__ = ("inactive", "probing", "failures")

    def __init__(self, state: int = ACTIVE) -> None:
        self.inactive = state == INACTIVE
        self.probing = state == PROBING
        #: Consecutive failed probes, capped at the threshold (as ``ds_set_state`` does).
        self.failures = 0

    @property
    def state(self) -> int:
        return INACTIVE if self.inactive else PROBING if self.probing else ACTIVE

    @property
    def usable(self) -> bool:
        return not (self.inactive or self.probing)

    def set(self, state: int) -> None:
        """The operator's word: it replaces both verdicts and starts the count afresh."""
        self.inactive = state == INACTIVE
        self.probing = state == PROBING
        self.failures = 0

    def due(self, always: bool) -> bool:
        """Whether to probe now: never while inactive, else always or only while failing."""
        return not self.inactive and (always or self.probing)


@dataclass(frozen=True, slots=True)
class ProbePolicy:
    """Which replies count as alive, and how many failures in a row take a destination out.

    A threshold above one keeps a single lost probe from flapping a destination
    (sipha decision 2); any reply outside ``reply_codes``, and any timeout, is a
    failure (decision 3).
    """

    threshold: int = 2
    reply_codes: frozenset[int] = frozenset({200})

    def __post_init__(self) -> None:
        if self.threshold < 1:
            raise ValueError(f"probing threshold must be >= 1, got {self.threshold}")

    def record(self, health: Health, code: int | None) -> bool | None:
        """Apply one probe outcome (``None``: no reply); return the new ``usable`` if it changed.

        An inactive destination ignores it: a probe already in flight when the
        operator took the destination out must not bring it back.
        """
        if health.inactive:
            return None
        was = health.usable
        if code is not None and code in self.reply_codes:
            health.failures = 0
            health.probing = False
        else:
            health.failures = min(health.failures + 1, self.threshold)
            health.probing = health.probing or health.failures >= self.threshold
        return None if health.usable == was else health.usable


def int_column(row: Any, name: str, default: int | None = None) -> int:
    """An integer column; NULL or absent takes ``default`` (the table's), text is parsed."""
    value = getattr(row, name, None)
    if value is None:
        if default is None:
            raise ValueError(f"{name} is missing")
        return default
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            raise ValueError(f"{name} {value!r} is not an integer") from None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} {value!r} is not an integer")
    return value


def text_column(row: Any, name: str) -> str:
    """A free-text column; NULL or absent is empty (3.6+ allows NULL descriptions)."""
    value = getattr(row, name, None)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ValueError(f"{name} {value!r} is not text")
    return value


def uri_column(row: Any, name: str) -> str:
    value = getattr(row, name, None)
    if not isinstance(value, str):
        raise ValueError(f"{name} is missing" if value is None else f"{name} {value!r} is not text")
    try:
        check_sip_uri(value)
    except ValueError as exc:
        raise ValueError(f"{name} {value!r}: {exc}") from None
    return value


def check_rows(table: str, rows: Iterable[Any], check: Callable[[Any], T]) -> list[T]:
    """Check every row before anything changes, so one bad row refuses them all (decision 4).

    The error names the row by its position (1-based) and its id when it has one.
    """
    checked = []
    for n, row in enumerate(rows, 1):
        try:
            checked.append(check(row))
        except ValueError as exc:
            row_id = getattr(row, "id", None)
            label = f"{table} row {n}" + (f" (id {row_id})" if row_id is not None else "")
            raise ValueError(f"{label}: {exc}") from None
    return checked
