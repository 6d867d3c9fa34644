"""Destinations given by name (RFC 3263): the core asks its locator, then tries each address.

The locator here answers when the test says so, as DNS would after a round
trip, or at once, as from its cache. A name's addresses are tried in turn,
the next one on a timeout or a 503, before the balancer's next destination.
"""

from __future__ import annotations

from collections.abc import Callable

from proxykit import CALLER, UDP_IN, invite, make_proxy, reply

from sipha.destinations import ProbePolicy
from sipha.message import Request, Response
from sipha.probing import Prober
from sipha.transaction import Peer
from sipha.uri import URI

POOL_A, POOL_B, POOL_C = (Peer("udp", f"198.18.0.{n}", 5071) for n in (1, 2, 3))
FS2 = Peer("udp", "127.0.0.1", 5072)

CONFIG = """
[proxy]
listen = ["udp:127.0.0.1:5060", "tcp:127.0.0.1:5060"]
[[load_balancer.destination]]
group_id = 1
dst_uri = "sip:pool.sipha.test"
resources = "pstn=32"
[[load_balancer.destination]]
group_id = 1
dst_uri = "sip:127.0.0.1:5072"
resources = "pstn=32"
"""


class Locator:
    """Answers from ``names`` when :meth:`answer` is called, or at once with ``at_once``."""

    def __init__(self, names: dict[str, list[Peer]], *, at_once: bool = False) -> None:
        self.names = names
        self.at_once = at_once
        self.asked: list[tuple[str, Callable[[list[Peer]], None]]] = []
        self.failures = 0

    def locate(self, uri: URI, done: Callable[[list[Peer]], None]) -> None:
        if self.at_once:
            done(list(self.names.get(uri.host, [])))
        else:
            self.asked.append((uri.host, done))

    def answer(self) -> None:
        asked, self.asked = self.asked, []
        for host, done in asked:
            done(list(self.names.get(host, [])))


def sent_requests(wire) -> list[tuple[Peer, Request]]:
    return [(s.peer, s.message) for s in wire.take() if isinstance(s.message, Request)]


def statuses(wire) -> list[int]:
    return [s.message.status for s in wire.take() if isinstance(s.message, Response)]


def call(names: dict[str, list[Peer]], **options):
    locator = Locator(names, **options)
    core, clock, wire = make_proxy(CONFIG, locator)
    core.receive(invite(), CALLER, UDP_IN)
    return core, clock, wire, locator


def test_the_invite_waits_for_the_dns_answer_then_goes_to_the_first_address():
    core, _, wire, locator = call({"pool.sipha.test": [POOL_A, POOL_B]})
    assert statuses(wire) == [100]
    assert [host for host, _ in locator.asked] == ["pool.sipha.test"]
    locator.answer()
    ((peer, out),) = sent_requests(wire)
    assert (peer, out.method) == (POOL_A, "INVITE")
    assert core.helpers.balancer.load("sip:pool.sipha.test") == {"pstn": 1}


def test_cached_addresses_are_used_at_once():
    _, _, wire, _ = call({"pool.sipha.test": [POOL_A]}, at_once=True)
    assert [peer for peer, _ in sent_requests(wire)] == [POOL_A]


def test_an_address_that_times_out_hands_over_to_the_next_of_the_same_destination():
    core, clock, wire, locator = call({"pool.sipha.test": [POOL_A, POOL_B]})
    locator.answer()
    wire.take()
    clock.pump([0.5, 1.0, 0.5])  # fr_timer
    assert [peer for peer, _ in sent_requests(wire) if peer != POOL_A] == [POOL_B]
    # Still the pool's call: its unit stays where it was taken.
    assert core.helpers.balancer.load("sip:pool.sipha.test") == {"pstn": 1}
    clock.pump([0.5, 1.0, 0.5])
    assert [peer for peer, out in sent_requests(wire) if out.method == "INVITE"][-1] == FS2


def test_503_hands_over_to_the_next_address_and_other_5xx_to_the_next_destination():
    core, _, wire, locator = call({"pool.sipha.test": [POOL_A, POOL_B, POOL_C]})
    locator.answer()
    ((_, first),) = sent_requests(wire)
    core.receive(reply(first, 503, "Overloaded"), POOL_A, UDP_IN)
    (_, ack), (peer, second) = sent_requests(wire)
    assert (ack.method, peer, second.method) == ("ACK", POOL_B, "INVITE")
    core.receive(reply(second, 500, "Broken"), POOL_B, UDP_IN)
    (_, ack), (peer, third) = sent_requests(wire)
    assert (peer, third.method) == (FS2, "INVITE")  # not POOL_C: only a 503 says "try another"


def test_a_name_without_addresses_passes_to_the_next_destination():
    _, _, wire, locator = call({})
    locator.answer()
    assert [peer for peer, _ in sent_requests(wire)] == [FS2]


def test_a_caller_who_cancels_while_dns_is_asked_gets_487_and_nothing_is_sent_later():
    core, _, wire, locator = call({"pool.sipha.test": [POOL_A]})
    wire.take()
    core.receive(invite(method="CANCEL"), CALLER, UDP_IN)
    assert sorted(statuses(wire)) == [200, 487]
    locator.answer()
    assert sent_requests(wire) == []
    assert core.helpers.balancer.load("sip:pool.sipha.test") == {"pstn": 0}


def test_an_in_dialog_request_to_a_contact_by_name_is_located():
    locator = Locator({"alice.sipha.test": [POOL_A]}, at_once=True)
    core, _, wire = make_proxy(CONFIG, locator)
    bye = invite(
        method="BYE",
        uri="sip:alice@alice.sipha.test",
        to_tag="t",
        routes=("<sip:127.0.0.1:5060;lr>",),
    )
    core.receive(bye, CALLER, UDP_IN)
    assert [peer for peer, _ in sent_requests(wire)] == [POOL_A]


class Module:
    """The probing interface of a module with one destination given by name."""

    probe_policy = ProbePolicy()

    def __init__(self) -> None:
        self.results: list[int | None] = []

    def probe_targets(self) -> list[str]:
        return ["sip:pool.sipha.test"]

    def probe_result(self, uri: str, code: int | None) -> None:
        self.results.append(code)


def test_a_probe_of_a_destination_by_name_is_answered_by_any_of_its_servers():
    locator = Locator({"pool.sipha.test": [POOL_A, POOL_B]}, at_once=True)
    core, clock, wire = make_proxy(CONFIG, locator)
    module = Module()
    prober = Prober("lb", core, module, interval=5)
    prober.probe_all()
    assert [peer for peer, _ in sent_requests(wire)] == [POOL_A]
    clock.pump([0.5, 1.0, 0.5])  # the first server does not answer
    (options,) = [out for peer, out in sent_requests(wire) if peer == POOL_B]
    core.receive(reply(options, 200), POOL_B, UDP_IN)
    assert module.results == [200]
    assert prober.pending == set()


def test_a_probe_of_a_name_that_does_not_resolve_fails_at_once():
    core, _, wire = make_proxy(CONFIG, Locator({}, at_once=True))
    module = Module()
    Prober("lb", core, module, interval=5).probe_all()
    assert module.results == [None]
    assert sent_requests(wire) == []


def test_a_node_turned_passive_while_dns_is_asked_sends_nothing_when_it_answers():
    core, _, wire, locator = call({"pool.sipha.test": [POOL_A]})
    wire.take()
    core.set_passive(True)
    locator.answer()
    assert wire.take() == []
