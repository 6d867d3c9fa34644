"""Coverage-guided fuzzing of the whole sans-IO core: ProxyCore.receive and the route.

Run by hand, never by the test suite (see README, "Fuzzing")::

    python3 fuzz/seed.py core /tmp/sipha-core
    python3 fuzz/fuzz_core.py -dict=fuzz/sip.dict -max_total_time=600 -timeout=5 /tmp/sipha-core

An input is up to four messages (separated by two NULs) for a fresh core
(tests/unit/proxykit's fake clock and wire, the reference route, two
destinations), all as datagrams or all as one TCP stream framed the way the
transport edge frames it; then the clock runs past every timer. A message
whose first byte is odd comes from a media server. ``$BRANCH`` and ``$RR`` in
a message stand for the branch and the Record-Route of the last request sipha
relayed, so that answers, ACKs and BYEs of a call reach its transactions and
dialog. Nothing may escape the core, and what it sends must be SIP.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "unit"))

with atheris.instrument_imports(include=["sipha"]):
    from proxykit import CALLER, TCP_IN, UDP_IN, Wire, make_proxy

    from sipha.message import ParseError, StreamFramer
    from sipha.transaction import Peer

TCP_CALLER = Peer("tcp", CALLER.host, CALLER.port)
MEDIA_SERVER = Peer("udp", "127.0.0.1", 5071)
SEPARATOR = b"\0\0"
_BRANCH = re.compile(rb"^Via: SIP/2\.0/\w+ 127\.0\.0\.1:5060;branch=([^;\r\n]+)", re.M)
_RECORD_ROUTE = re.compile(rb"^Record-Route: ([^\r\n]+)", re.M)


def fill(message: bytes, relayed: dict[bytes, bytes]) -> bytes:
    """Put the branch and Record-Route sipha last relayed in ``message``."""
    for placeholder, value in relayed.items():
        message = message.replace(placeholder, value)
    return message


def check(wire: Wire, relayed: dict[bytes, bytes]) -> None:
    """What the core sent is SIP; remember the branch and Record-Route of what it relayed."""
    for sent in wire.take():
        first_line = sent.data.partition(b"\r\n")[0].decode("utf-8", "surrogateescape")
        assert first_line.startswith("SIP/2.0 ") or first_line.endswith(" SIP/2.0"), first_line
        for placeholder, pattern in ((b"$BRANCH", _BRANCH), (b"$RR", _RECORD_ROUTE)):
            if found := pattern.search(sent.data):
                relayed[placeholder] = found[1]


def test_one_input(data: bytes) -> None:
    provider = atheris.FuzzedDataProvider(data)
    over_tcp = provider.ConsumeBool()
    messages = provider.ConsumeBytes(provider.remaining_bytes()).split(SEPARATOR)[:4]
    core, clock, wire = make_proxy()
    relayed: dict[bytes, bytes] = {}
    framer = StreamFramer(core.max_message_size)
    for message in messages:
        from_media_server = bool(message) and message[0] % 2 == 1
        message = fill(message[1:], relayed)
        if over_tcp:
            try:
                for framed in framer.feed(message):
                    core.receive(framed, TCP_CALLER, TCP_IN)
            except ParseError as error:
                core.reject(error, TCP_CALLER, TCP_IN)
                break  # the connection is closed
        else:
            core.receive(message, MEDIA_SERVER if from_media_server else CALLER, UDP_IN)
        check(wire, relayed)
    clock.advance(40)
    clock.advance(4000)
    check(wire, relayed)


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
