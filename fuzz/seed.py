"""Write a seed corpus for a fuzzer: the unit tests' torture cases, and a whole call.

python3 fuzz/seed.py parser DIRECTORY
python3 fuzz/seed.py core DIRECTORY
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "unit"))

from proxykit import invite
from test_torture import CASES

#: A call for fuzz_core.py: INVITE from the caller, 200 from the media server to the
#: branch sipha used, then ACK and BYE through sipha's Record-Route.
CALL = [
    b"0" + invite(),
    b"1SIP/2.0 200 OK\r\n"
    b"Via: SIP/2.0/UDP 127.0.0.1:5060;branch=$BRANCH\r\n"
    b"Via: SIP/2.0/UDP 192.0.2.10:5062;branch=z9hG4bK-caller-1;received=192.0.2.10\r\n"
    b"Record-Route: $RR\r\n"
    b'From: "caller" <sip:alice@192.0.2.10:5062>;tag=from-1\r\n'
    b"To: <sip:service@127.0.0.1:5060>;tag=uas-1\r\nCall-ID: call-1@192.0.2.10\r\n"
    b"CSeq: 1 INVITE\r\nContact: <sip:fs@127.0.0.1:5071>\r\nContent-Length: 0\r\n\r\n",
    b"0" + invite(method="ACK", uri="sip:fs@127.0.0.1:5071", to_tag="uas-1", routes=("$RR",)),
    b"0"
    + invite(method="BYE", uri="sip:fs@127.0.0.1:5071", to_tag="uas-1", cseq=2, routes=("$RR",)),
]


def seeds(harness: str) -> list[bytes]:
    """Inputs as each harness reads them: its flags first (all off), then the messages."""
    if harness == "parser":
        return [b"\0\0" + case.data for case in CASES]
    return [b"\0" + b"\0\0".join(CALL), *(b"\0" + b"0" + case.data for case in CASES)]


def main() -> None:
    harness, directory = sys.argv[1], Path(sys.argv[2])
    directory.mkdir(parents=True, exist_ok=True)
    written = seeds(harness)
    for data in written:
        (directory / hashlib.sha1(data).hexdigest()).write_bytes(data)
    print(f"{len(written)} seeds for fuzz_{harness}.py in {directory}")


if __name__ == "__main__":
    main()
