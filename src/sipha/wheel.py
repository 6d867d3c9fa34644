"""A timer wheel: the proxy's many timers on one reactor call.

At a few thousand calls per second the transaction layer sets, re-arms and
cancels tens of thousands of timers a second, and nearly all of them are
cancelled or re-armed before they fire. Twisted's ``callLater`` keeps each
one in a heap ordered by a Python-level comparison and makes an object of a
dozen attributes for it. Here a timer is a small object in a bucket per
tick: set, re-armed and cancelled in constant time, and only the earliest
bucket has a call on the underlying clock.

A cancelled timer lets go at once of what it would have called. One due
soon (a transaction's) stays in its bucket, skipped, until that tick comes;
one due more than :data:`FINE_SECONDS` ahead (a call's lifetime, hours)
leaves its bucket too, so that an ended call leaves nothing behind for hours.

:class:`TimerWheel` is itself a clock (``seconds``/``callLater``) whose
timers answer ``active``, ``cancel`` and ``reset`` like Twisted's
``DelayedCall``, so the sans-IO layers take it where they take a clock.
Timers fire at the first tick (1/64 s) at or after their due time; those
due more than :data:`FINE_SECONDS` ahead (a dialog's lifetime) at the first
whole second, so that they share few buckets.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Iterable
from typing import Any, Final

from sipha.logs import Log

log = Log(namespace="sipha.wheel")
#: Ticks per second: a power of two, so whole and half seconds are exact ticks.
TICKS_PER_SECOND: Final = 64
#: Timers due further ahead than this fire at a whole second (see the module's doc).
FINE_SECONDS: Final = 120.0


class Timer:
    """One pending call; ``slot`` is the tick it fires at, ``far`` says which table holds it."""

    __slots__ = ("wheel", "slot", "far", "func", "args")

    def __init__(self, wheel: TimerWheel, func: Callable[..., Any], args: tuple[Any, ...]):
        self.wheel = wheel
        self.slot = 0
        self.far = False
        self.func: Callable[..., Any] | None = func
        self.args = args

    def active(self) -> bool:
        return self.func is not None

    def cancel(self) -> None:
        if self.far:
            self.wheel._leave_far_bucket(self)
        self.func = None
        self.args = ()

    def reset(self, delay: float) -> None:
        """Fire ``delay`` seconds from now instead (a near bucket's old entry goes stale)."""
        self.wheel._place(self, delay)


class TimerWheel:
    """Buckets of timers per tick, and a heap of the ticks that have a bucket.

    Near timers are appended to a list per tick, the cheapest there is; far
    ones go in a dict per whole second, which a timer leaves in constant time.
    """

    def __init__(self, clock: Any):
        self.clock = clock
        self._near: dict[int, list[Timer]] = {}
        self._far: dict[int, dict[Timer, None]] = {}
        self._slots: list[int] = []
        self._call: Any = None
        self._call_slot: int | None = None
        self._firing = False

    def seconds(self) -> float:
        return self.clock.seconds()

    def callLater(self, delay: float, func: Callable[..., Any], *args: Any) -> Timer:  # noqa: N802
        timer = Timer(self, func, args)
        self._place(timer, delay)
        return timer

    def _place(self, timer: Timer, delay: float) -> None:
        slot = math.ceil((self.clock.seconds() + delay) * TICKS_PER_SECOND)
        far = delay > FINE_SECONDS
        if far:
            slot = -(-slot // TICKS_PER_SECOND) * TICKS_PER_SECOND
        if slot == timer.slot and far == timer.far:
            return  # already in that bucket
        if timer.far:
            self._leave_far_bucket(timer)
        timer.slot, timer.far = slot, far
        if far:
            far_bucket = self._far.get(slot)
            if far_bucket is not None:
                far_bucket[timer] = None
                return
            self._far[slot] = {timer: None}
        else:
            bucket = self._near.get(slot)
            if bucket is not None:
                bucket.append(timer)
                return
            self._near[slot] = [timer]
        heapq.heappush(self._slots, slot)
        if not self._firing and (self._call_slot is None or slot < self._call_slot):
            self._schedule(slot)

    def _leave_far_bucket(self, timer: Timer) -> None:
        """Out of its bucket; one left empty goes too (its tick stays in the heap until due)."""
        bucket = self._far.get(timer.slot)
        if bucket is not None and timer in bucket:
            del bucket[timer]
            if not bucket:
                del self._far[timer.slot]
        timer.far = False

    def _schedule(self, slot: int) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
        delay = max(0.0, slot / TICKS_PER_SECOND - self.clock.seconds())
        self._call = self.clock.callLater(delay, self._fire)
        self._call_slot = slot

    def _fire(self) -> None:
        """Run every bucket that is due, those filled meanwhile included."""
        self._call = self._call_slot = None
        # Tolerance: the clock may land a hair before the tick it was asked for.
        now = math.floor(self.clock.seconds() * TICKS_PER_SECOND + 1e-6)
        self._firing = True
        try:
            while self._slots and self._slots[0] <= now:
                slot = heapq.heappop(self._slots)
                # Out of the tables before they run: what a timer does to timers
                # (cancel a bucket-mate, set one for now) changes the tables only.
                self._run(slot, self._near.pop(slot, []))
                self._run(slot, self._far.pop(slot, {}))
        finally:
            self._firing = False
            if self._slots:
                self._schedule(self._slots[0])

    def _run(self, slot: int, timers: Iterable[Timer]) -> None:
        for timer in timers:
            func, args = timer.func, timer.args
            if func is None or timer.slot != slot:
                continue  # cancelled, or re-armed to another tick
            timer.func, timer.args, timer.far = None, (), False
            try:
                func(*args)
            except Exception:
                # One broken timer must not take its bucket-mates with it.
                log.failure("timer {func} failed", func=func)
