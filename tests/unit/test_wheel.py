"""The timer wheel on a fake clock: when timers fire, and what the reactor sees of them."""

from __future__ import annotations

import sys

from twisted.internet.task import Clock

from sipha.wheel import Timer, TimerWheel


def make_wheel() -> tuple[TimerWheel, Clock, list[str]]:
    clock = Clock()
    return TimerWheel(clock), clock, []


def test_timer_fires_at_its_tick_with_its_arguments_and_not_before():
    wheel, clock, fired = make_wheel()
    timer = wheel.callLater(0.5, fired.append, "a")
    clock.advance(0.49)
    assert fired == []
    assert timer.active()
    clock.advance(0.01)
    assert fired == ["a"]
    assert not timer.active()


def test_due_time_is_rounded_up_to_the_next_tick():
    wheel, clock, fired = make_wheel()
    wheel.callLater(0.001, fired.append, "soon")
    clock.advance(0.001)
    assert fired == []
    clock.advance(1 / 64 - 0.001)
    assert fired == ["soon"]


def test_many_timers_share_one_reactor_call_for_the_earliest():
    wheel, clock, fired = make_wheel()
    for delay in (3.0, 1.0, 2.0, 1.0):
        wheel.callLater(delay, fired.append, str(delay))
    assert [call.getTime() for call in clock.getDelayedCalls()] == [1.0]
    clock.advance(1.0)
    assert fired == ["1.0", "1.0"]
    assert [call.getTime() for call in clock.getDelayedCalls()] == [2.0]
    clock.pump([1.0, 1.0])
    assert fired == ["1.0", "1.0", "2.0", "3.0"]
    assert clock.getDelayedCalls() == []


def test_cancelled_timer_does_not_fire():
    wheel, clock, fired = make_wheel()
    timer = wheel.callLater(1.0, fired.append, "x")
    timer.cancel()
    assert not timer.active()
    clock.advance(2.0)
    assert fired == []


def test_reset_moves_a_timer_later_or_sooner_and_it_fires_once():
    wheel, clock, fired = make_wheel()
    later = wheel.callLater(1.0, fired.append, "later")
    sooner = wheel.callLater(5.0, fired.append, "sooner")
    later.reset(3.0)
    sooner.reset(2.0)
    clock.advance(1.0)
    assert fired == []
    clock.advance(1.0)
    assert fired == ["sooner"]
    clock.advance(1.0)
    assert fired == ["sooner", "later"]
    later.reset(1.0)  # a fired timer is not re-armed
    clock.advance(5.0)
    assert fired == ["sooner", "later"]


def test_reset_back_to_an_earlier_bucket_still_fires_once():
    wheel, clock, fired = make_wheel()
    timer = wheel.callLater(1.0, fired.append, "x")
    timer.reset(2.0)
    timer.reset(1.0)
    clock.pump([1.0, 1.0, 1.0])
    assert fired == ["x"]


def test_timer_set_while_firing_runs_in_the_same_advance_when_due():
    wheel, clock, fired = make_wheel()

    def chain() -> None:
        fired.append("first")
        wheel.callLater(0, fired.append, "second")

    wheel.callLater(1.0, chain)
    clock.advance(1.0)
    assert fired == ["first", "second"]


def test_a_failing_timer_does_not_stop_the_others_in_its_tick():
    wheel, clock, fired = make_wheel()
    wheel.callLater(1.0, lambda: 1 / 0)
    wheel.callLater(1.0, fired.append, "survivor")
    clock.advance(1.0)
    assert fired == ["survivor"]
    wheel.callLater(1.0, fired.append, "next")
    clock.advance(1.0)
    assert fired == ["survivor", "next"]


def test_seconds_is_the_clocks():
    wheel, clock, _ = make_wheel()
    clock.advance(12.5)
    assert wheel.seconds() == 12.5


def test_a_cancelled_timer_lets_go_of_its_arguments_at_once():
    """A call's dialog timer is due hours ahead: the call must not live that long."""
    wheel, clock, fired = make_wheel()
    held = [object()]
    timer = wheel.callLater(43200, fired.append, held)
    timer.cancel()
    assert timer.args == ()
    assert sys.getrefcount(held) == 2  # the name here and getrefcount's argument
    clock.advance(43201)
    assert fired == []


def test_timers_due_hours_ahead_fire_at_the_next_whole_second():
    wheel, clock, fired = make_wheel()
    clock.advance(0.25)
    wheel.callLater(3600, fired.append, "late")
    wheel.callLater(3600.5, fired.append, "later")
    clock.advance(3600.5)
    assert fired == []
    clock.advance(0.25)
    assert fired == ["late", "later"]


def test_a_timer_rearmed_by_a_bucket_mate_fires_at_its_new_time():
    wheel, clock, fired = make_wheel()
    moved: list[Timer] = []
    wheel.callLater(1.0, lambda: moved[0].reset(1.0))
    moved.append(wheel.callLater(1.0, fired.append, "moved"))
    clock.advance(1.0)
    assert fired == []
    clock.advance(1.0)
    assert fired == ["moved"]
