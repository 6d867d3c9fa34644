"""OPTIONS probes through the proxy's own transactions, on a fake clock."""

from __future__ import annotations

from proxykit import UDP_IN, make_proxy, reply

from sipha.destinations import ProbePolicy
from sipha.probing import Prober
from sipha.transaction import Peer


class Module:
    """A stand-in for the dispatcher's probing interface: records the results."""

    probe_policy = ProbePolicy()

    def __init__(self, targets: list[str]) -> None:
        self.targets = targets
        self.results: list[tuple[str, int | None]] = []

    def probe_targets(self) -> list[str]:
        return list(self.targets)

    def probe_result(self, uri: str, code: int | None) -> str | None:
        self.results.append((uri, code))
        return None


def test_each_round_probes_every_target_and_reports_replies_and_timeouts():
    core, clock, wire = make_proxy()
    module = Module(["sip:127.0.0.1:5071", "sip:127.0.0.1:5072"])
    prober = Prober("dispatcher", core, module, interval=5, from_uri="sip:dispatcher@localhost")
    service = prober.service(clock)
    service.startService()
    probes = wire.take()
    assert [(s.message.method, s.peer.port) for s in probes] == [
        ("OPTIONS", 5071),
        ("OPTIONS", 5072),
    ]
    options = probes[0].message
    assert options.uri == "sip:127.0.0.1:5071"
    assert options.get("from").startswith("<sip:dispatcher@localhost>;tag=")
    assert options.top_via.host == "127.0.0.1"
    core.receive(reply(options, 200), Peer("udp", "127.0.0.1", 5071), UDP_IN)
    clock.advance(2)  # fr_timer: 5072 never answered, only retransmissions went out
    assert {s.peer.port for s in wire.take()} == {5072}
    assert module.results == [("sip:127.0.0.1:5071", 200), ("sip:127.0.0.1:5072", None)]
    assert prober.results == {("sip:127.0.0.1:5071", "ok"): 1, ("sip:127.0.0.1:5072", "failed"): 1}
    clock.advance(3)
    assert len([s for s in wire.take() if s.message.method == "OPTIONS"]) == 2
    service.stopService()


def test_a_destination_with_a_probe_in_flight_is_not_probed_again():
    core, _, wire = make_proxy()
    module = Module(["sip:127.0.0.1:5071"])
    prober = Prober("lb", core, module, interval=1, timeout=10)
    assert prober.timeout == 1  # never longer than the interval
    prober.probe_all()
    prober.probe_all()
    assert len(wire.take()) == 1


def test_a_failing_round_does_not_stop_probing():
    core, clock, _ = make_proxy()

    class Broken(Module):
        def probe_targets(self) -> list[str]:
            raise RuntimeError("boom")

    prober = Prober("lb", core, Broken([]), interval=5)
    service = prober.service(clock)
    service.startService()
    clock.advance(5)
    assert service._loop.running
    service.stopService()
