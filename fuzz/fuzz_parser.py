"""Coverage-guided fuzzing of the SIP parser and the TCP framer (atheris, libFuzzer).

Run by hand, never by the test suite (see README, "Fuzzing")::

    python3 fuzz/seed.py parser /tmp/sipha-parser
    python3 fuzz/fuzz_parser.py -dict=fuzz/sip.dict -max_total_time=600 -timeout=5 /tmp/sipha-parser

Checked on every input: nothing but ParseError escapes; a rejection can be
answered (a printable, bounded reason and a status sipha sends); a message
that parses is written back and read again the same; any chunking of a
stream frames the same messages. libFuzzer's -timeout catches hangs.
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports(include=["sipha"]):
    from sipha.message import ParseError, Request, StreamFramer, make_response, parse_message


def check_rejection(error: ParseError) -> None:
    assert error.status in (400, 505, 513), error.status
    assert error.reason.isprintable(), error.reason
    assert 0 < len(error.reason) <= 512, error.reason
    if error.request is not None:
        make_response(error.request, error.status, error.reason, to_tag="x").serialize()


def round_trip(data: bytes, stream: bool) -> None:
    try:
        message = parse_message(data, stream=stream)
    except ParseError as error:
        check_rejection(error)
        return
    again = parse_message(message.serialize(), stream=True, max_size=2 * len(data) + 100)
    start = (
        (message.method, message.uri)
        if isinstance(message, Request)
        else (message.status, message.reason)
    )
    start_again = (
        (again.method, again.uri) if isinstance(again, Request) else (again.status, again.reason)
    )
    assert start_again == start
    assert [h for h in again.headers if h[0] != "content-length"] == [
        h for h in message.headers if h[0] != "content-length"
    ]
    assert (again.body, again.call_id, again.cseq, again.from_tag, again.to_tag) == (
        message.body,
        message.call_id,
        message.cseq,
        message.from_tag,
        message.to_tag,
    )
    assert again.top_via == message.top_via


def frame(chunks: list[bytes]) -> tuple[list[bytes], str | None]:
    framer = StreamFramer(max_size=4000)
    out: list[bytes] = []
    try:
        for chunk in chunks:
            out.extend(framer.feed(chunk))
    except ParseError as error:
        check_rejection(error)
        return out, error.reason
    return out, None


def test_one_input(data: bytes) -> None:
    provider = atheris.FuzzedDataProvider(data)
    stream = provider.ConsumeBool()
    cuts = sorted(
        provider.ConsumeIntInRange(0, 4000) for _ in range(provider.ConsumeIntInRange(0, 4))
    )
    message = provider.ConsumeBytes(provider.remaining_bytes())
    round_trip(message, stream)
    pieces = [message[a:b] for a, b in zip([0, *cuts], [*cuts, len(message)], strict=True)]
    whole, chunked = frame([message]), frame(pieces)
    assert whole == chunked, (whole, chunked)
    for framed in whole[0]:
        round_trip(framed, True)


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
