"""A timer wheel: the proxy's many timers on one reactor call.

At a few thousand calls per second the transaction layer sets, re-arms and
cancels tens of thousands of timers a second, and nearly all of them are
cancelled or re-armed before they fire. Twisted's ``callLater`` keeps each
one in a heap ordered by a Python-level comparison and makes an object of a
dozen attributes for it. Here a timer is a small object in a bucket per
tick: set, re-armed and cancelled in constant time, and only the earliest
bucket has a call on the underlying clock.

A cancelled or re-armed timer leaves its bucket at once and lets go of what
it would have called: a call's dialog timer is due hours ahead, and the
call's objects must not wait that long to be freed.

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
from collections.abc import Callable
from typing import Any, Final

from sipha.logs import Log

log = Log(namespace="sipha.wheel")
#: Ticks per second: a power of two, so whole and half seconds are exact ticks.
TICKS_PER_SECOND: Final = 64
#: Timers due further ahead than this fire at a whole second (see the module's doc).
FINE_SECONDS: Final = 120.0


class Timer:
    """One pending call; its ``slot`` is the tick of the bucket it is in (0: none)."""

    __slots__ = ("wheel", "slot", "func", "args")

    def __init__(self, wheel: TimerWheel, func: Callable[..., Any], args: tuple[Any, ...]):
        self.wheel = wheel
        self.slot = 0
        self.func: Callable[..., Any] | None = func
        self.args = args

    def active(self) -> bool:
        return self.func is not None

    def cancel(self) -> None:
        self.wheel._remove(self)
        self.func = None
        self.args = ()

    def reset(self, delay: float) -> None:
        """Fire ``delay`` seconds from now instead."""
        self.wheel._place(self, delay)


class TimerWheel:
    """Buckets of timers per tick, and a heap of the ticks that have a bucket.

    A bucket is a dict used as an ordered set: a timer leaves it in constant
    time. One emptied that way goes too; its tick stays in the heap until due.
    """

    def __init__(self, clock: Any):
        self.clock = clock
        self._buckets: dict[int, dict[Timer, None]] = {}
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
        if delay > FINE_SECONDS:
            slot = -(-slot // TICKS_PER_SECOND) * TICKS_PER_SECOND
        if slot == timer.slot:
            return  # already in that bucket
        self._remove(timer)
        timer.slot = slot
        bucket = self._buckets.get(slot)
        if bucket is not None:
            bucket[timer] = None
            return
        self._buckets[slot] = {timer: None}
        heapq.heappush(self._slots, slot)
        if not self._firing and (self._call_slot is None or slot < self._call_slot):
            self._schedule(slot)

    def _remove(self, timer: Timer) -> None:
        bucket = self._buckets.get(timer.slot)
        if bucket is not None and timer in bucket:
            del bucket[timer]
            if not bucket:
                del self._buckets[timer.slot]
        timer.slot = 0

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
                # Out of the table before it runs: what its timers do to timers
                # (cancel one of them, set one for now) changes the table only.
                for timer in self._buckets.pop(slot, None) or ():
                    func, args = timer.func, timer.args
                    if func is None or timer.slot != slot:
                        continue  # cancelled or re-armed by a timer that ran before it
                    timer.func, timer.args, timer.slot = None, (), 0
                    try:
                        func(*args)
                    except Exception:
                        # One broken timer must not take its bucket-mates with it.
                        log.failure("timer {func} failed", func=func)
        finally:
            self._firing = False
            if self._slots:
                self._schedule(self._slots[0])
