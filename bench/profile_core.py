"""Run the sans-IO proxy core through whole calls, without sockets, and time it.

This isolates sipha's own per-call cost (parsing, transactions, dialogs,
balancing, serializing) from the kernel and from sipp, so a profiler shows
where the hot path spends its time:

    python3 bench/profile_core.py --calls 20000
    python3 bench/profile_core.py --calls 20000 --replicate
    python3 -m cProfile -s cumtime bench/profile_core.py --calls 5000 | head -40
    py-spy record -o core.svg -- python3 bench/profile_core.py --calls 20000
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import deque
from pathlib import Path

from twisted.internet.task import Clock

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "unit"))

from proxykit import CALLER, UDP_IN, invite, reply

from sipha.config import parse_config
from sipha.message import parse_message
from sipha.replication import Outbox
from sipha.service import build_core, tune_garbage_collector
from sipha.transaction import Peer

CONFIG = """
[proxy]
listen = ["udp:127.0.0.1:5060"]
[[load_balancer.destination]]
group_id = 1
dst_uri = "sip:127.0.0.1:5071"
resources = "pstn=100000"
[[load_balancer.destination]]
group_id = 1
dst_uri = "sip:127.0.0.1:5072"
resources = "pstn=100000"
[pike]
trusted = ["192.0.2.0/24"]
"""

SDP = b"v=0\r\no=x 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 6000 RTP/AVP 0\r\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20000)
    parser.add_argument(
        "--rate",
        type=float,
        default=2000.0,
        help="calls per second of the simulated clock, which advances between calls",
    )
    parser.add_argument("--hold", type=float, default=1.0, help="seconds from ACK to BYE")
    parser.add_argument(
        "--replicate",
        action="store_true",
        help="stream every call to a passive node (encoded, not sent): flushed once the"
        " call is up and once it is over, as with calls longer than the flush delay",
    )
    args = parser.parse_args()
    calls = args.calls
    tune_garbage_collector()  # as the service does
    # A clock of its own, advanced 1/rate between calls: the timers fire and the
    # transactions and calls end as they would at that rate, so the garbage
    # collector and the timer wheel see as many objects alive as in a live run.
    clock = Clock()
    outbox: list[tuple[bytes, Peer]] = []
    core = build_core(
        parse_config(CONFIG), clock, lambda data, peer, local: outbox.append((data, peer))
    )
    in_core = 0.0
    stream = Outbox(core.dialogs)
    stream.enabled = args.replicate
    core.dialogs.observers = (stream,)

    def feed(data: bytes, source: Peer, flush: bool = False) -> None:
        nonlocal in_core
        t0 = time.perf_counter()
        core.receive(data, source, UDP_IN)
        if flush:
            stream.take()
        in_core += time.perf_counter() - t0

    def elapse(seconds: float) -> None:
        """The timers due meanwhile fire: the core's work too."""
        nonlocal in_core
        t0 = time.perf_counter()
        clock.advance(seconds)
        in_core += time.perf_counter() - t0

    def set_up(n: int) -> tuple[str, str, Peer]:
        call_id = f"call-{n}@192.0.2.10"
        # Each call's own tags, as callers and media servers write them.
        feed(
            invite(call_id=call_id, from_tag=f"{n}caller", branch=f"z9hG4bK-i{n}", body=SDP),
            CALLER,
        )
        data, peer = outbox[-1]
        outbox.clear()
        forwarded = parse_message(data)
        for status in (100, 180, 200):
            feed(reply(forwarded, status, to_tag=f"{n}callee"), peer)
        route = forwarded.get("record-route")
        assert route is not None
        feed(
            invite(
                method="ACK",
                uri="sip:fs@127.0.0.1:5071",
                call_id=call_id,
                from_tag=f"{n}caller",
                to_tag=f"{n}callee",
                branch=f"z9hG4bK-a{n}",
                routes=(route,),
            ),
            CALLER,
            flush=True,
        )
        outbox.clear()
        return call_id, route, peer

    def hang_up(n: int, call_id: str, route: str, peer: Peer) -> None:
        feed(
            invite(
                method="BYE",
                uri="sip:fs@127.0.0.1:5071",
                call_id=call_id,
                cseq=2,
                from_tag=f"{n}caller",
                to_tag=f"{n}callee",
                branch=f"z9hG4bK-b{n}",
                routes=(route,),
            ),
            CALLER,
        )
        bye = parse_message(outbox[-1][0])
        feed(reply(bye, 200, to_tag=f"{n}callee"), peer, flush=True)
        outbox.clear()

    held = int(args.rate * args.hold)  # calls up at once
    in_progress: deque[tuple[int, str, str, Peer]] = deque()
    started = time.process_time()
    for n in range(calls):
        in_progress.append((n, *set_up(n)))
        if len(in_progress) > held:
            hang_up(*in_progress.popleft())
        elapse(1 / args.rate)
    while in_progress:
        hang_up(*in_progress.popleft())
    elapsed = time.process_time() - started
    print(
        f"{calls} calls: {in_core / calls * 1e6:.0f} µs per call inside the core "
        f"({in_core / calls / 7 * 1e6:.1f} µs per message, 7 messages in per call); "
        f"{elapsed / calls * 1e6:.0f} µs per call with the test's own message building"
    )


if __name__ == "__main__":
    main()
