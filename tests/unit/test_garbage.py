"""Calls leave no reference cycles behind.

The service never runs a full collection of the cyclic garbage collector
automatically (a full pass over every call in progress stalls signalling for
tens of milliseconds, see ``sipha.service.tune_garbage_collector``). That is
only safe while what a call allocates is freed by reference counting alone;
these flows prove it for every way a call can end.
"""

from __future__ import annotations

import gc
import weakref
from collections import Counter
from collections.abc import Callable, Iterator

import pytest
from proxykit import CALLER, UDP_IN, invite, make_proxy, reply
from twisted.logger import formatEvent, globalLogPublisher

from sipha.dialog import Dialog
from sipha.message import Request, parse_message
from sipha.proxy import ProxyCore
from sipha.service import GC_YOUNG_THRESHOLD, collect_old_garbage, tune_garbage_collector
from sipha.transaction import Peer

FS1 = Peer("udp", "127.0.0.1", 5071)
FS2 = Peer("udp", "127.0.0.1", 5072)

Flow = Callable[[ProxyCore, Callable[[], list], Callable[[float], None]], None]


def _requests(sent: list) -> list[Request]:
    return [s.message for s in sent if isinstance(s.message, Request)]


def answered_and_hung_up(core, take, advance):
    core.receive(invite(), CALLER, UDP_IN)
    forwarded = _requests(take())[0]
    for status in (100, 180, 200):
        core.receive(reply(forwarded, status), FS1, UDP_IN)
    route = forwarded.get("record-route")
    take()
    core.receive(invite(method="ACK", to_tag="uas-1", routes=(route,)), CALLER, UDP_IN)
    core.receive(
        invite(method="BYE", cseq=2, to_tag="uas-1", branch="z9hG4bK-bye", routes=(route,)),
        CALLER,
        UDP_IN,
    )
    bye = _requests(take())[-1]
    core.receive(reply(bye, 200), FS1, UDP_IN)
    # The 2xx retransmitted after the ACK: forwarded again, then the call is over.
    core.receive(reply(forwarded, 200), FS1, UDP_IN)


def cancelled_while_ringing(core, take, advance):
    core.receive(invite(), CALLER, UDP_IN)
    forwarded = _requests(take())[0]
    core.receive(reply(forwarded, 180), FS1, UDP_IN)
    core.receive(invite(method="CANCEL"), CALLER, UDP_IN)
    cancel = _requests(take())[-1]
    core.receive(reply(cancel, 200), FS1, UDP_IN)
    core.receive(reply(forwarded, 487), FS1, UDP_IN)
    core.receive(invite(method="ACK", to_tag="uas-1"), CALLER, UDP_IN)


def cancelled_before_any_reply(core, take, advance):
    core.receive(invite(), CALLER, UDP_IN)
    core.receive(invite(method="CANCEL"), CALLER, UDP_IN)


def failed_over_then_busy(core, take, advance):
    core.receive(invite(), CALLER, UDP_IN)
    forwarded = _requests(take())[0]
    core.receive(reply(forwarded, 503), FS1, UDP_IN)
    retry = _requests(take())[-1]
    core.receive(reply(retry, 486), FS2, UDP_IN)
    core.receive(invite(method="ACK", to_tag="uas-1"), CALLER, UDP_IN)


def nobody_answers(core, take, advance):
    core.receive(invite(), CALLER, UDP_IN)
    advance(5)


def rings_too_long(core, take, advance):
    core.receive(invite(), CALLER, UDP_IN)
    forwarded = _requests(take())[0]
    core.receive(reply(forwarded, 180), FS1, UDP_IN)
    advance(31)
    core.receive(reply(forwarded, 487), FS1, UDP_IN)


def outlives_its_dialog_timeout(core, take, advance):
    core.receive(invite(), CALLER, UDP_IN)
    forwarded = _requests(take())[0]
    core.receive(reply(forwarded, 200), FS1, UDP_IN)
    take()
    advance(43200)
    advance(1)
    for bye in _requests(take()):
        core.receive(reply(bye, 200), FS1, UDP_IN)


def rejected_and_malformed(core, take, advance):
    core.receive(invite(max_forwards="0"), CALLER, UDP_IN)
    core.receive(b"INVITE sip:x SIP/2.0\r\nVia: nonsense\r\n\r\n", CALLER, UDP_IN)
    core.receive(b"SIP/2.0 200 OK\r\n\r\n", FS1, UDP_IN)


@pytest.fixture
def saved_garbage() -> Iterator[list[object]]:
    """Collection off, and everything the collector finds kept for inspection."""
    gc.collect()
    was_enabled = gc.isenabled()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        yield gc.garbage
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        if was_enabled:
            gc.enable()


@pytest.mark.parametrize(
    "flow",
    [
        answered_and_hung_up,
        cancelled_while_ringing,
        cancelled_before_any_reply,
        failed_over_then_busy,
        nobody_answers,
        rings_too_long,
        outlives_its_dialog_timeout,
        rejected_and_malformed,
    ],
)
def test_a_finished_call_is_freed_by_reference_counting(flow: Flow, saved_garbage):
    core, clock, wire = make_proxy()

    def advance(seconds: float) -> None:
        # Step by step: task.Clock schedules what fires during one advance
        # from the end of that advance.
        clock.pump([1.0] * int(seconds))

    # Warm up: the first call fills lazily made, long-lived caches.
    for call in range(3):
        flow(core, wire.take, advance)
        advance(100)
        wire.take()
        if call == 0:
            gc.collect()
            saved_garbage.clear()
    assert not core.layer.servers
    assert not core.layer.clients
    gc.collect()
    assert Counter(type(o).__name__ for o in saved_garbage) == Counter()


def _dialogs_of_the_call() -> int:
    """How many Dialog objects of the flows' call (invite()'s Call-ID) are alive."""
    call_id = parse_message(invite()).call_id
    gc.collect()
    return sum(1 for o in gc.get_objects() if type(o) is Dialog and o.call_id == call_id)


def test_an_ended_call_is_freed_at_once_not_when_its_lifetime_would_end():
    """Its dialog timer is due hours ahead: cancelled, it lets go of the call at once."""
    core, clock, wire = make_proxy()
    before = _dialogs_of_the_call()
    answered_and_hung_up(core, wire.take, clock.advance)
    assert _dialogs_of_the_call() == before + 1  # the BYE's transactions still hold it
    clock.pump([1.0] * 100)
    assert not core.layer.servers
    assert _dialogs_of_the_call() == before


def test_the_check_sees_a_cycle(saved_garbage):
    """The fixture does catch what reference counting leaves behind."""
    core, clock, wire = make_proxy()
    cancelled_while_ringing(core, wire.take, clock.advance)
    server = next(iter(core.layer.servers.values()))
    server.user.targets = iter([server.user])  # type: ignore[list-item]
    del server
    clock.pump([1.0] * 100)
    gc.collect()
    assert Counter(type(o).__name__ for o in saved_garbage)["ProxyContext"] == 1


class _Cycle:
    """An object that refers to itself: only the cyclic collector frees it."""

    def __init__(self) -> None:
        self.me = self


@pytest.fixture
def tuned_collector() -> Iterator[list[dict]]:
    """The service's collector settings, undone afterwards; yields the log events."""
    threshold = gc.get_threshold()
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    tune_garbage_collector()
    try:
        yield events
    finally:
        globalLogPublisher.removeObserver(events.append)
        gc.unfreeze()
        gc.set_threshold(*threshold)


def test_old_objects_wait_for_the_hourly_full_collection(tuned_collector):
    holder = [_Cycle()]
    gc.collect(0)  # the cycle survives one young collection: it is old now
    alive = weakref.ref(holder[0])
    holder.clear()  # garbage, but only a full collection can tell
    young = [[] for _ in range(20 * GC_YOUNG_THRESHOLD)]  # many young collections
    del young
    assert alive() is not None
    collect_old_garbage()
    assert alive() is None
    (event,) = [e for e in tuned_collector if e.get("log_namespace") == "sipha.service"]
    assert event["found"] >= 1
    assert "full collection" in formatEvent(event)
