"""SIP message parsing, serialization, replies and stream framing (RFC 3261 §7, §18, §20).

Raw bytes go in; the assertions are on the objects (or the bytes) that come out.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable
from itertools import pairwise

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sipha import message as message_module
from sipha.message import (
    COMPACT_FORMS,
    ParseError,
    Request,
    Response,
    StreamFramer,
    Via,
    make_response,
    parse_message,
    parse_via,
)

# -- sample messages ------------------------------------------------------------------

SDP = (
    b"v=0\r\n"
    b"o=alice 2890844526 2890844526 IN IP4 pc33.atlanta.com\r\n"
    b"s=-\r\n"
    b"c=IN IP4 pc33.atlanta.com\r\n"
    b"t=0 0\r\n"
    b"m=audio 49172 RTP/AVP 0\r\n"
    b"a=rtpmap:0 PCMU/8000\r\n"
)

#: RFC 3261 §24.2 F1, with a Content-Length that matches this SDP.
INVITE = (
    b"INVITE sip:bob@biloxi.com SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP pc33.atlanta.com;branch=z9hG4bK776asdhds\r\n"
    b"Max-Forwards: 70\r\n"
    b"To: Bob <sip:bob@biloxi.com>\r\n"
    b"From: Alice <sip:alice@atlanta.com>;tag=1928301774\r\n"
    b"Call-ID: a84b4c76e66710@pc33.atlanta.com\r\n"
    b"CSeq: 314159 INVITE\r\n"
    b"Contact: <sip:alice@pc33.atlanta.com>\r\n"
    b"Content-Type: application/sdp\r\n"
    b"Content-Length: %d\r\n"
    b"\r\n" % len(SDP)
) + SDP

RINGING = (
    b"SIP/2.0 180 Ringing\r\n"
    b"Via: SIP/2.0/UDP server10.biloxi.com;branch=z9hG4bK4b43c2ff8.1;received=192.0.2.3\r\n"
    b"Via: SIP/2.0/UDP bigbox3.site3.atlanta.com;branch=z9hG4bK77ef4c2312983.1;received=192.0.2.2\r\n"
    b"Via: SIP/2.0/UDP pc33.atlanta.com;branch=z9hG4bK776asdhds;received=192.0.2.1\r\n"
    b"To: Bob <sip:bob@biloxi.com>;tag=a6c85cf\r\n"
    b"From: Alice <sip:alice@atlanta.com>;tag=1928301774\r\n"
    b"Call-ID: a84b4c76e66710@pc33.atlanta.com\r\n"
    b"CSeq: 314159 INVITE\r\n"
    b"Contact: <sip:bob@192.0.2.4>\r\n"
    b"Content-Length: 0\r\n"
    b"\r\n"
)

#: The lines of a body-less request, to build variants from.
OPTIONS = (
    "OPTIONS sip:carol@chicago.com SIP/2.0",
    "Via: SIP/2.0/UDP pc33.atlanta.com;branch=z9hG4bKhjhs8ass877",
    "Max-Forwards: 70",
    "To: <sip:carol@chicago.com>",
    "From: Alice <sip:alice@atlanta.com>;tag=1928301774",
    "Call-ID: a84b4c76e66710",
    "CSeq: 63104 OPTIONS",
    "Accept: application/sdp",
    "Content-Length: 0",
)

#: INVITE with bare LF line ends in its head (the SDP keeps its CRLFs).
INVITE_LF = INVITE.partition(b"\r\n\r\n")[0].replace(b"\r\n", b"\n") + b"\n\n" + SDP


def sip(*lines: str, body: bytes = b"") -> bytes:
    """A message from its head lines: CRLF line ends, an empty line, then ``body``."""
    return "".join(f"{line}\r\n" for line in lines).encode("utf-8", "surrogateescape") + (
        b"\r\n" + body
    )


def options(*, drop: str = "", **replace: str) -> bytes:
    """OPTIONS without the header ``drop``, or with whole lines replaced by header key.

    Keys are the header names in lower case with '-' as '_' (``call_id=...``,
    ``from_=...``).
    """
    replace = {key.rstrip("_"): line for key, line in replace.items()}
    lines = []
    for line in OPTIONS:
        key = line.partition(":")[0].lower().replace("-", "_")
        if key == drop.lower().replace("-", "_"):
            continue
        lines.append(replace.get(key, line))
    return sip(*lines)


def parse_request(data: bytes, **kwargs: bool | int) -> Request:
    message = parse_message(data, **kwargs)  # type: ignore[arg-type]
    assert isinstance(message, Request)
    return message


def parse_response(data: bytes, **kwargs: bool | int) -> Response:
    message = parse_message(data, **kwargs)  # type: ignore[arg-type]
    assert isinstance(message, Response)
    return message


def assert_reason_phrase(reason: str) -> None:
    """§21 reason phrases: one line of text, and bounded however long the culprit was."""
    assert reason
    assert reason.isprintable(), reason
    assert len(reason) <= 512, reason


def comparable(message: Request | Response) -> tuple[object, ...]:
    """What a parse/serialize round trip must keep (Content-Length is always rewritten)."""
    start = (
        (message.method, message.uri)
        if isinstance(message, Request)
        else (message.status, message.reason)
    )
    headers = [h for h in message.headers if h[0] != "content-length"]
    core = (message.call_id, message.cseq, message.cseq_method, message.from_tag, message.to_tag)
    return start, headers, message.body, core, message.top_via


# -- start line and headers -----------------------------------------------------------


def test_parse_invite() -> None:
    """RFC 3261 §24.2 F1: every field a proxy routes on."""
    request = parse_request(INVITE)
    assert (request.method, request.uri) == ("INVITE", "sip:bob@biloxi.com")
    assert request.call_id == "a84b4c76e66710@pc33.atlanta.com"
    assert (request.cseq, request.cseq_method) == (314159, "INVITE")
    assert (request.from_tag, request.to_tag) == ("1928301774", None)
    assert request.top_via == Via("UDP", "pc33.atlanta.com", None, {"branch": "z9hG4bK776asdhds"})
    assert request.top_via.branch == "z9hG4bK776asdhds"
    assert request.get("Max-Forwards") == "70"
    assert request.get("content-type") == "application/sdp"
    assert request.body == SDP
    assert [name for _, name, _ in request.headers] == [
        "Via",
        "Max-Forwards",
        "To",
        "From",
        "Call-ID",
        "CSeq",
        "Contact",
        "Content-Type",
        "Content-Length",
    ]


def test_parse_response() -> None:
    response = parse_response(RINGING)
    assert (response.status, response.reason) == (180, "Ringing")
    assert (response.cseq, response.cseq_method) == (314159, "INVITE")
    assert (response.from_tag, response.to_tag) == ("1928301774", "a6c85cf")
    assert response.top_via.host == "server10.biloxi.com"
    assert len(response.get_all("via")) == 3
    assert response.body == b""


@pytest.mark.parametrize(
    ("start", "status", "reason"),
    [
        ("SIP/2.0 200 OK", 200, "OK"),
        ("SIP/2.0 100 Trying", 100, "Trying"),
        ("SIP/2.0 699 Custom", 699, "Custom"),
        ("SIP/2.0 183 Session Progress", 183, "Session Progress"),
        ("SIP/2.0 486 Busy  Here ", 486, "Busy  Here "),  # reason kept as sent
        ("SIP/2.0 200 ", 200, ""),
        ("SIP/2.0 200", 200, ""),  # RFC 4475 noreason
        ("SIP/2.0 200 \u6210\u529f", 200, "\u6210\u529f"),  # UTF-8 (§25.1)
    ],
)
def test_status_line(start: str, status: int, reason: str) -> None:
    response = parse_response(sip(start, *OPTIONS[1:]))
    assert (response.status, response.reason) == (status, reason)


@pytest.mark.parametrize(
    ("method", "uri"),
    [
        ("OPTIONS", "sip:carol@chicago.com"),
        ("REGISTER", "sips:registrar.biloxi.com"),
        ("NEWMETHOD", "sip:x@example.com;transport=tcp"),
        (
            "!interesting-Method0123456789_*+`.%'~",
            "sip:1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*:&it+has=1,weird!*pas$wo~d_too.(doesn't-it)@example.com",
        ),
        ("INVITE", "tel:+12015550123"),  # any scheme: routing decides what it accepts
    ],
)
def test_request_line(method: str, uri: str) -> None:
    """§7.1 and RFC 4475 §3.1.1.2: any token is a method; the URI is kept as text."""
    data = options(cseq=f"CSeq: 1 {method}").replace(
        b"OPTIONS sip:carol@chicago.com", f"{method} {uri}".encode()
    )
    request = parse_request(data)
    assert (request.method, request.uri, request.cseq_method) == (method, uri, method)


def test_header_names_are_case_insensitive() -> None:
    """§7.3.1: names compare case-insensitively; known names are written canonically."""
    data = sip(
        "OPTIONS sip:carol@chicago.com SIP/2.0",
        "vIa: SIP/2.0/UDP pc33.atlanta.com;branch=z9hG4bKx",
        "TO: <sip:carol@chicago.com>",
        "from: <sip:alice@atlanta.com>;tag=1",
        "CALL-ID: abc",
        "cseq: 1 OPTIONS",
        "MaX-fOrWaRdS: 0068",
        "X-Vendor-Thing: kept",
    )
    request = parse_request(data)
    assert request.call_id == "abc"
    for name in ("Max-Forwards", "max-forwards", "MAX-FORWARDS"):
        assert request.get(name) == "0068"
        assert request.has(name)
    assert request.get("x-vendor-thing") == request.get("X-VENDOR-THING") == "kept"
    assert not request.has("Subject")
    assert request.get("Subject") is None
    assert request.get_all("Subject") == []
    out = request.serialize()
    for line in (
        b"Via: ",
        b"To: ",
        b"From: ",
        b"Call-ID: abc\r\n",
        b"CSeq: ",
        b"Max-Forwards: 0068\r\n",
        b"X-Vendor-Thing: kept\r\n",
    ):
        assert b"\r\n" + line in out


COMPACT_MESSAGE = sip(
    "INVITE sip:bob@biloxi.com SIP/2.0",
    "v: SIP/2.0/UDP pc33.atlanta.com;branch=z9hG4bKnashds8",
    "f: Alice <sip:alice@atlanta.com>;tag=1928301774",
    "t: Bob <sip:bob@biloxi.com>",
    "i: a84b4c76e66710",
    "CSeq: 314159 INVITE",
    "m: <sip:alice@pc33.atlanta.com>",
    "c: application/sdp",
    "k: timer, 100rel",
    "s: lunch",
    "e: gzip",
    "o: presence",
    "r: <sip:carol@chicago.com>",
    "l: 4",
    body=b"test",
)


def test_compact_forms_are_expanded() -> None:
    """§7.3.3: compact names are read as, and written back as, the full names."""
    request = parse_request(COMPACT_MESSAGE)
    assert request.top_via.branch == "z9hG4bKnashds8"
    assert (request.call_id, request.from_tag, request.body) == (
        "a84b4c76e66710",
        "1928301774",
        b"test",
    )
    assert request.get("contact") == "<sip:alice@pc33.atlanta.com>"
    assert request.get_all("supported") == ["timer", "100rel"]
    assert request.serialize() == sip(
        "INVITE sip:bob@biloxi.com SIP/2.0",
        "Via: SIP/2.0/UDP pc33.atlanta.com;branch=z9hG4bKnashds8",
        "From: Alice <sip:alice@atlanta.com>;tag=1928301774",
        "To: Bob <sip:bob@biloxi.com>",
        "Call-ID: a84b4c76e66710",
        "CSeq: 314159 INVITE",
        "Contact: <sip:alice@pc33.atlanta.com>",
        "Content-Type: application/sdp",
        "Supported: timer, 100rel",
        "Subject: lunch",
        "Content-Encoding: gzip",
        "Event: presence",
        "Refer-To: <sip:carol@chicago.com>",
        "Content-Length: 4",
        body=b"test",
    )


@pytest.mark.parametrize(
    ("compact", "full"),
    # The headers whose values are checked (v f t i l m) are covered by
    # test_compact_forms_are_expanded.
    [(c, f) for c, f in sorted(COMPACT_FORMS.items()) if c not in "vftilm"],
)
def test_every_compact_form(compact: str, full: str) -> None:
    for spelling in (compact, compact.upper()):
        request = parse_request(sip(*OPTIONS, f"{spelling}: some value"))
        assert request.get(full) == "some value"
        assert not request.has(compact)
        name = next(n for k, n, _ in request.headers if k == full)
        assert name.lower() == full
        assert f"\r\n{name}: some value\r\n".encode() in request.serialize()


@pytest.mark.parametrize(
    ("lines", "name", "values"),
    [
        # §7.3.1: one line with a comma list and several lines are the same thing.
        (
            ["Via: SIP/2.0/UDP a;branch=z9hG4bK1, SIP/2.0/TCP b;branch=z9hG4bK2"],
            "via",
            ["SIP/2.0/UDP a;branch=z9hG4bK1", "SIP/2.0/TCP b;branch=z9hG4bK2"],
        ),
        (
            [
                "Via: SIP/2.0/UDP a;branch=z9hG4bK1,SIP/2.0/UDP b;branch=z9hG4bK2",
                "v: SIP/2.0/UDP c;branch=z9hG4bK3",
            ],
            "Via",
            [
                "SIP/2.0/UDP a;branch=z9hG4bK1",
                "SIP/2.0/UDP b;branch=z9hG4bK2",
                "SIP/2.0/UDP c;branch=z9hG4bK3",
            ],
        ),
        (
            [
                "Route: <sip:alice@atlanta.com>",
                "Subject: Lunch",
                "Route: <sip:bob@biloxi.com>, <sip:carol@chicago.com>",
            ],
            "route",
            ["<sip:alice@atlanta.com>", "<sip:bob@biloxi.com>", "<sip:carol@chicago.com>"],
        ),
        # Commas in a quoted display name or inside <...> do not separate values.
        (
            ['Contact: "Doe, John" <sip:j@x>;q=0.5, "a <,> b" <sip:k,l@y>, sip:z@w'],
            "contact",
            ['"Doe, John" <sip:j@x>;q=0.5', '"a <,> b" <sip:k,l@y>', "sip:z@w"],
        ),
        (
            ["Record-Route: <sip:p2.example.com;lr>, <sip:p1.example.com;lr>"],
            "record-route",
            ["<sip:p2.example.com;lr>", "<sip:p1.example.com;lr>"],
        ),
        (["Allow: INVITE, ACK,OPTIONS ,BYE"], "allow", ["INVITE", "ACK", "OPTIONS", "BYE"]),
        (["k: path, outbound", "Supported: gruu"], "supported", ["path", "outbound", "gruu"]),
        # Headers whose values may hold commas are never split.
        (["Subject: Lunch, then coffee"], "subject", ["Lunch, then coffee"]),
        (
            ['WWW-Authenticate: Digest realm="a, b", nonce="n"'],
            "www-authenticate",
            ['Digest realm="a, b", nonce="n"'],
        ),
        (["Date: Sat, 13 Nov 2010 23:29:00 GMT"], "date", ["Sat, 13 Nov 2010 23:29:00 GMT"]),
    ],
)
def test_get_all_splits_comma_lists(lines: list[str], name: str, values: list[str]) -> None:
    others = [line for line in OPTIONS[1:] if not line.lower().startswith(f"{name.lower()}:")]
    request = parse_request(sip(OPTIONS[0], *lines, *others))
    assert request.get_all(name) == values
    assert request.get(name) == lines[0].partition(":")[2].strip()


@pytest.mark.parametrize(
    ("data", "subject"),
    [
        (
            b"Subject: I know you're there,\r\n pick up the phone\r\n",
            "I know you're there, pick up the phone",
        ),
        (
            b"Subject: I know you're there,\r\n\t\t  pick up the phone\r\n",
            "I know you're there, pick up the phone",
        ),
        (b"Subject:\r\n Lunch\r\n", "Lunch"),
        (b"Subject: a\r\n b\r\n\tc\r\n   d\r\n", "a b c d"),
        (b"Subject: a\n b\n", "a b"),
    ],
)
def test_folded_headers_are_unfolded(data: bytes, subject: str) -> None:
    """§7.3.1: a line starting with SP or HT continues the previous header."""
    request = parse_request(sip(*OPTIONS[:-1]).removesuffix(b"\r\n") + data + b"\r\n")
    assert request.get("subject") == subject
    assert f"\r\nSubject: {subject}\r\n".encode() in request.serialize()


def test_folding_in_core_headers() -> None:
    """RFC 4475 wsinv: folded and spaced-out To, From, CSeq and Via still parse.

    The Via here has no LWS around its '/' separators, which sipha does not accept.
    """
    data = (
        b"INVITE sip:vivekg@chair-dnrc.example.com;unknownparam SIP/2.0\r\n"
        b"TO :\r\n"
        b" sip:vivekg@chair-dnrc.example.com ;   tag    = 1918181833n\r\n"
        b'from   : "J Rosenberg \\\\\\""       <sip:jdrosen@example.com>\r\n'
        b"  ;\r\n"
        b"  tag = 98asjd8\r\n"
        b"MaX-fOrWaRdS: 0068\r\n"
        b"Call-ID: wsinv.ndaksdj@192.0.2.1\r\n"
        b"Content-Length   : 5\r\n"
        b"cseq: 0009\r\n"
        b"  INVITE\r\n"
        b"Via  : SIP/2.0/UDP\r\n"
        b"    192.0.2.2;branch=390skdjuw\r\n"
        b"s :\r\n"
        b"NewFangledHeader:   newfangled value\r\n"
        b" continued newfangled value\r\n"
        b"UnknownHeaderWithUnusualValue: ;;,,;;,;\r\n"
        b"Route:\r\n"
        b" <sip:services.example.com;lr;unknownwith=value;unknown-no-value>\r\n"
        b"\r\n"
        b"v=0\r\n"
    )
    request = parse_request(data)
    assert (request.cseq, request.cseq_method) == (9, "INVITE")
    assert (request.from_tag, request.to_tag) == ("98asjd8", "1918181833n")
    assert request.top_via == Via("UDP", "192.0.2.2", None, {"branch": "390skdjuw"})
    assert request.get("subject") == ""
    assert request.get("newfangledheader") == "newfangled value continued newfangled value"
    assert request.get("unknownheaderwithunusualvalue") == ";;,,;;,;"
    assert request.get_all("route") == [
        "<sip:services.example.com;lr;unknownwith=value;unknown-no-value>"
    ]
    assert request.body == b"v=0\r\n"


def test_line_without_colon_is_malformed_even_after_its_name_was_seen() -> None:
    headers = OPTIONS[1:-1]
    parse_request(sip(OPTIONS[0], *headers, "Subject: first", ""))
    with pytest.raises(ParseError, match="Malformed header line 'Subject'"):
        parse_message(sip(OPTIONS[0], *headers, "Subject", ""))


_HEAD_LINES = [
    "Via: SIP/2.0/UDP h;branch=z9hG4bK1",
    " Via: SIP/2.0/UDP continued",
    "\tTo: <sip:continued@h>",
    "To : <sip:a@h>",
    "v:SIP/2.0/UDP g",
    "CSeq: 1 OPTIONS \r",
    "Subject:\r\r",
    "Subject",
    "\rSubject: lone CR",
    "X-New-Name: x",
    "Bad Name: x",
    ": no name",
    "",
]


@settings(max_examples=300, deadline=None)
@given(
    lines=st.lists(st.sampled_from(_HEAD_LINES), max_size=6),
    ends=st.lists(st.sampled_from(["\r\n", "\n"]), min_size=6, max_size=6),
)
def test_header_fast_path_agrees_with_general_code(lines: list[str], ends: list[str]) -> None:
    """Cached names take a fast path; its result and errors must be the general code's."""
    text = "OPTIONS sip:a@h SIP/2.0" + "".join(
        e + line for e, line in zip(ends, lines, strict=False)
    )

    def general() -> object:
        try:
            return message_module._parse_headers(message_module._header_lines(text))
        except ParseError as exc:
            return exc.reason

    def fast() -> object:
        try:
            return message_module._read_headers(text)
        except ParseError as exc:
            return exc.reason

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(message_module, "_NAMES", {})
        cold = fast()  # no name cached: the general code
        assert cold == general() == fast()


def test_no_cached_name_looks_like_a_continuation_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(message_module, "_NAMES", {})
    # An empty line and a continuation line make a name " Via" (not in a real head).
    message_module._parse_headers(message_module._header_lines("X\nSubject: a\n\n Via: a"))
    folded = message_module._read_headers("X\nSubject: a\n Via: b")
    assert folded == ([("subject", "Subject", "a Via: b")], None)


def test_bare_lf_line_ends() -> None:
    """§7.5 robustness: a message with LF line ends parses like its CRLF twin."""
    crlf, bare = parse_request(INVITE), parse_request(INVITE_LF)
    assert comparable(bare) == comparable(crlf)
    assert bare.serialize() == INVITE


def test_mixed_line_ends() -> None:
    """A CRLF start line followed by LF header lines: every header is still seen."""
    data = (
        b"OPTIONS sip:carol@chicago.com SIP/2.0\r\n"
        b"Via: SIP/2.0/UDP pc33.atlanta.com;branch=z9hG4bKhjhs8ass877\n"
        b"To: <sip:carol@chicago.com>\r\n"
        b"From: Alice <sip:alice@atlanta.com>;tag=1928301774\n"
        b"Call-ID: a84b4c76e66710\n"
        b"CSeq: 63104 OPTIONS\r\n"
        b"Content-Length: 0\n"
        b"\r\n"
    )
    request = parse_request(data)
    assert request.get("via") == "SIP/2.0/UDP pc33.atlanta.com;branch=z9hG4bKhjhs8ass877"
    assert request.from_tag == "1928301774"
    assert b"\n" not in request.serialize().replace(b"\r\n", b"")


def test_bare_lf_head_with_crlfcrlf_in_body() -> None:
    """The head ends at its own empty line, not at a blank line inside the body."""
    body = b"--b\r\nContent-Type: text/plain\r\n\r\nhi\r\n--b--\r\n"
    head = (
        "\n".join(OPTIONS[:-1])
        + f"\nContent-Type: multipart/mixed;boundary=b\nContent-Length: {len(body)}\n\n"
    )
    request = parse_request(head.encode() + body)
    assert request.body == body
    assert request.get("content-type") == "multipart/mixed;boundary=b"


@given(st.lists(st.sampled_from([b"a", b":", b"\r", b"\n", b"\r\n"]), max_size=24).map(b"".join))
def test_the_head_ends_at_the_first_empty_line_whatever_the_line_ends(data: bytes) -> None:
    """The head ends at the first line, read up to its LF, that is empty or a bare CR."""
    lines = data.split(b"\n")
    empty = next((i for i in range(1, len(lines) - 1) if lines[i] in (b"", b"\r")), None)
    head, body = message_module._split_head(data)
    if empty is None:
        assert (head, body) == (data.rstrip(b"\r\n"), b"")
    else:
        assert body == b"\n".join(lines[empty + 1 :])
        assert head == b"\n".join(lines[:empty]).removesuffix(b"\r")


def test_lower_case_version_and_leading_crlfs_are_read() -> None:
    """§7.1: the version is case-insensitive; §7.5: CRLFs before the start line are skipped."""
    data = sip(*OPTIONS)
    request = parse_request(b"\r\n\r\n" + data.replace(b" SIP/2.0\r\n", b" sip/2.0\r\n", 1))
    assert comparable(request) == comparable(parse_request(data))
    response = parse_response(sip("sip/2.0 200 OK", *OPTIONS[1:]))
    assert (response.status, response.reason) == (200, "OK")


def test_a_response_is_held_to_its_top_via_only() -> None:
    """Of a response, which is only relayed, the lists routing reads are not checked."""
    lines = [
        "SIP/2.0 200 OK",
        *OPTIONS[1:-1],
        "Via: odd",
        "Contact: <sip:bob@biloxi.com>;;",
        "Record-Route: sip:p1.example.com",
        "Content-Length: 0",
    ]
    response = parse_response(sip(*lines))
    assert response.get("contact") == "<sip:bob@biloxi.com>;;"
    request = sip(OPTIONS[0], *lines[1:])
    with pytest.raises(ParseError, match="Bad Via protocol 'odd'"):
        parse_message(request)


@pytest.mark.parametrize(
    ("via", "kept"),
    [
        (
            "SIP/2.0/UDP 10.0.0.2:5062;branch=z9hG4bKx",
            Via("UDP", "10.0.0.2", 5062, {"branch": "z9hG4bKx"}),
        ),
        ("SIP/2.0/UDP 10.0.0.2:5062;;branch=z9hG4bKx", Via("UDP", "10.0.0.2", 5062)),
        ("sip / 2.0 / tcp [2001:DB8::2];rport;;", Via("TCP", "2001:db8::2", None, {"rport": None})),
        ("SIP/2.0/UDP 10.0.0.2;rport=x;branch=z9hG4bKx", Via("UDP", "10.0.0.2")),
        ("SIP/2.0/UDP 10.0.0.2:0;branch=z9hG4bKx", None),
        ("SIP/2.0/UDP ;branch=z9hG4bKx", None),
        ("SIP/3.0/UDP 10.0.0.2", None),
        ("garbage", None),
    ],
)
def test_a_rejected_request_keeps_the_via_its_answer_needs(via: str, kept: Via | None) -> None:
    """The sent-by (and rport, RFC 3581) of a top Via broken further on says where the
    answer goes (RFC 4475 §3.1.2.1); without a sent-by there is nowhere to send one."""
    with pytest.raises(ParseError) as info:
        parse_message(options(via=f"Via: {via}", cseq="CSeq: x OPTIONS"))
    request = info.value.request
    assert request is not None
    if kept is None:
        with pytest.raises(ParseError):
            request.top_via  # noqa: B018
    else:
        assert request.top_via == kept


def test_message_without_empty_line() -> None:
    """A datagram cut right after the last header still parses, with no body."""
    request = parse_request(sip(*OPTIONS).removesuffix(b"\r\n\r\n"))
    assert request.body == b""
    assert request.cseq == 63104


# -- Via ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "via"),
    [
        (
            "SIP/2.0/UDP pc33.atlanta.com;branch=z9hG4bK776asdhds",
            Via("UDP", "pc33.atlanta.com", None, {"branch": "z9hG4bK776asdhds"}),
        ),
        (
            "SIP/2.0/UDP erlang.bell-telephone.com:5060;branch=z9hG4bK87asdks7",
            Via("UDP", "erlang.bell-telephone.com", 5060, {"branch": "z9hG4bK87asdks7"}),
        ),
        # §20.42: every parameter, in order; rport with and without a value (RFC 3581).
        (
            "SIP/2.0/UDP 192.0.2.1:5060;received=192.0.2.207;branch=z9hG4bK77asjd",
            Via("UDP", "192.0.2.1", 5060, {"received": "192.0.2.207", "branch": "z9hG4bK77asjd"}),
        ),
        (
            "SIP/2.0/UDP 192.0.2.1;rport;branch=z9hG4bKx",
            Via("UDP", "192.0.2.1", None, {"rport": None, "branch": "z9hG4bKx"}),
        ),
        (
            "SIP/2.0/UDP 10.0.0.1:5060;rport=5066;received=192.0.2.9;branch=z9hG4bKx",
            Via(
                "UDP",
                "10.0.0.1",
                5060,
                {"rport": "5066", "received": "192.0.2.9", "branch": "z9hG4bKx"},
            ),
        ),
        (
            "SIP/2.0/UDP 192.0.2.1;maddr=224.2.0.1;ttl=16;branch=z9hG4bKm",
            Via(
                "UDP", "192.0.2.1", None, {"maddr": "224.2.0.1", "ttl": "16", "branch": "z9hG4bKm"}
            ),
        ),
        (
            "SIP/2.0/UDP [2001:db8::1]:5060;branch=z9hG4bK6",
            Via("UDP", "2001:db8::1", 5060, {"branch": "z9hG4bK6"}),
        ),
        (
            "SIP/2.0/UDP [2001:db8::1];received=2001:db8::9;rport=1",
            Via("UDP", "2001:db8::1", None, {"received": "2001:db8::9", "rport": "1"}),
        ),
        # Transport and names are case-insensitive; the branch value is not.
        (
            "sip/2.0/tcp Host.Example.COM:5070;BRANCH=z9hG4bKAbC;Received=192.0.2.4",
            Via("TCP", "host.example.com", 5070, {"branch": "z9hG4bKAbC", "received": "192.0.2.4"}),
        ),
        (
            "SIP/2.0/TLS  client.example.com:5061 ; branch = z9hG4bKt ; alias",
            Via("TLS", "client.example.com", 5061, {"branch": "z9hG4bKt", "alias": None}),
        ),
        (
            "SIP/2.0/SCTP a.example.com;branch=z9hG4bKs",
            Via("SCTP", "a.example.com", None, {"branch": "z9hG4bKs"}),
        ),
        ("SIP/2.0/UDP a.example.com", Via("UDP", "a.example.com")),  # RFC 2543 peers: no branch
        # RFC 5118 §4.5: received with or without brackets; RFC 3261 §25.1 gen-values.
        (
            "SIP/2.0/UDP [2001:db8::9:1];received=[2001:db8::9:255];branch=z9hG4bKx",
            Via(
                "UDP",
                "2001:db8::9:1",
                None,
                {"received": "[2001:db8::9:255]", "branch": "z9hG4bKx"},
            ),
        ),
        (
            "SIP/2.0/UDP [2001:db8::9:1];received=2001:db8::9:255;branch=z9hG4bKx",
            Via(
                "UDP", "2001:db8::9:1", None, {"received": "2001:db8::9:255", "branch": "z9hG4bKx"}
            ),
        ),
        (
            'SIP/2.0/UDP h.example.com;x-quoted="a;b, c";x-v6=[::1];branch=z9hG4bKq',
            Via(
                "UDP",
                "h.example.com",
                None,
                {"x-quoted": '"a;b, c"', "x-v6": "[::1]", "branch": "z9hG4bKq"},
            ),
        ),
        (
            "SIP/2.0/UDP example.com.:5060;branch=z9hG4bKd",
            Via("UDP", "example.com.", 5060, {"branch": "z9hG4bKd"}),
        ),
    ],
)
def test_parse_via(text: str, via: Via) -> None:
    assert parse_via(text) == via
    assert parse_via(str(via)) == via


@pytest.mark.parametrize(
    "text",
    [
        "SIP/2.0/UDP pc33.atlanta.com;branch=z9hG4bK776asdhds",
        "SIP/2.0/UDP [2001:db8::1]:5060;branch=z9hG4bK6;rport;received=2001:db8::9",
        "SIP/2.0/TCP 192.0.2.1:5070;maddr=224.2.0.1;ttl=16;branch=z9hG4bKm;rport=5070",
    ],
)
def test_via_str_round_trip(text: str) -> None:
    assert str(parse_via(text)) == text


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "Bad Via protocol ''"),
        ("SIP/3.0/UDP host", "Bad Via protocol 'SIP/3.0/UDP'"),
        ("SIP/2.0 host", "Bad Via protocol 'SIP/2.0'"),
        ("HTTP/2.0/UDP host", "Bad Via protocol 'HTTP/2.0/UDP'"),
        ("SIP/2.0/UDP", "Bad Via sent-by: bad host ''"),
        ("SIP/2.0/UDP ;branch=z9hG4bKx", "Bad Via sent-by: bad host ''"),
        ("SIP/2.0/UDP host:0", "Bad Via sent-by: bad port '0'"),
        ("SIP/2.0/UDP host:99999;branch=z9hG4bKx", "Bad Via sent-by: bad port '99999'"),
        ("SIP/2.0/UDP [2001:db8::1;branch=z9hG4bKx", "Bad Via sent-by: unterminated IPv6"),
        (
            "SIP/2.0/UDP 2001:db8::1;branch=z9hG4bKx",
            "Bad Via sent-by: IPv6 address without brackets",
        ),
        ("SIP/2.0/UDP host:\u0665\u0660\u0666\u0660", "Bad Via sent-by: bad port"),
        ("SIP/2.0/UDP host;rport=", "Bad Via parameter 'rport='"),
        ("SIP/2.0/UDP host;rport=0", "Bad Via rport"),
        ("SIP/2.0/UDP host;rport=65536", "Bad Via rport"),
        ("SIP/2.0/UDP host;rport=abc", "Bad Via rport"),
        ("SIP/2.0/UDP host;rport=\u00b2", "Bad Via parameter"),
        # RFC 4475 §3.1.2.1: empty parameters and values.
        ("SIP/2.0/UDP host;;branch=z9hG4bKx", "Empty Via parameter"),
        ("SIP/2.0/UDP host;branch=z9hG4bKx;", "Empty Via parameter"),
        ("SIP/2.0/UDP host;branch=", "Bad Via parameter 'branch='"),
        ("SIP/2.0/UDP host;branch=a b", "Bad Via parameter 'branch=a b'"),
        # §25.1 via-params with a grammar of their own.
        ("SIP/2.0/UDP host;branch", "Bad Via branch"),
        ('SIP/2.0/UDP host;branch="z9hG4bKx"', "Bad Via branch"),
        ("SIP/2.0/UDP host;branch=z9hG4bK", "Bad Via branch"),  # RFC 4475 §3.2.1
        ("SIP/2.0/UDP host;received=host.example.com", "Bad Via received"),
        ("SIP/2.0/UDP host;received=192.0.2.256", "Bad Via received"),
        ("SIP/2.0/UDP host;received=[2001:db8:::192.0.2.1]", "Bad Via received"),
        ("SIP/2.0/UDP host;received", "Bad Via received"),
        ("SIP/2.0/UDP host;ttl=256", "Bad Via ttl"),
        ("SIP/2.0/UDP host;maddr=-bad-", "Bad Via maddr"),
        ("SIP/2.0/UDP host;rport=123456", "Bad Via rport"),
        # int() refuses numbers of thousands of digits with ValueError.
        pytest.param("SIP/2.0/UDP host;rport=" + "9" * 5000, "Bad Via rport", id="long-rport"),
        pytest.param("SIP/2.0/UDP host:" + "9" * 5000, "Bad Via sent-by: bad port", id="long-port"),
        ("SIP/2.0/UDP -host", "Bad Via sent-by: bad host '-host'"),
        ("SIP/2.0/UDP host.1", "Bad Via sent-by: bad host 'host.1'"),
        (
            "SIP/2.0/UDP [2001:db8:::192.0.2.1]",
            "Bad Via sent-by: bad IPv6 address",
        ),  # RFC 5118 §4.10
    ],
)
def test_parse_via_errors(text: str, reason: str) -> None:
    with pytest.raises(ParseError) as info:
        parse_via(text)
    assert info.value.reason.startswith(reason)
    assert_reason_phrase(info.value.reason)


def via_outcome(text: str) -> object:
    try:
        return parse_via(text)
    except ParseError as exc:
        return f"ParseError: {exc.reason}"


@pytest.mark.parametrize(
    ("text", "plain"),
    [
        ("SIP/2.0/UDP 192.0.2.10:5062;branch=z9hG4bK-caller-1", True),
        ("SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK.0;rport", True),
        ("SIP/2.0/UDP Host.Example.COM;BRANCH=z9hG4bKAbC;Received=192.0.2.4", True),
        ("SIP/2.0/UDP h:65535;rport=0", True),
        ("SIP/2.0/TCP a-b.c-d.example:5060;branch=z9hG4bK", True),
        ("SIP/2.0/udp Host.Example.COM;BRANCH=z9hG4bKAbC;Received=192.0.2.4", False),
        ("SIP/2.0/UDP h:5060;branch = x ; rport", False),
        ("SIP/2.0/UDP h;", False),
        ("SIP/2.0/UDP h;;branch=x", False),
        ('SIP/2.0/UDP h;branch="x"', False),
        ("SIP/2.0/UDP h;received=2001:db8::1", False),
        ("SIP/2.0/UDP a-.example", False),
        ("SIP/2.0/UDP 1.2.3.4.5", False),
        ("SIP/2.0/UDP example.com.", False),
        ("SIP/2.0/UDP h:5060 ;branch=x", False),
        ("SIP/2.0/UDP  h:5060;branch=x", False),
        (" SIP/2.0/UDP h", False),
        ("SIP/2.0/UDP h ", False),
        ("sip/2.0/udp h", False),
        ("SIP/2.0/U/DP h", False),
        ("SIP/3.0/UDP h", False),
        ("SIP/2.0/UDP h:0", False),
        ("SIP/2.0/UDP h:65536;branch=x", False),
        ("SIP/2.0/UDP h:05060", False),
        ("SIP/2.0/UDP h:", False),
        ("SIP/2.0/UDP [2001:db8::1]:5060;branch=x", False),
        ("SIP/2.0/UDP 2001:db8::1;branch=x", False),
        ("SIP/2.0/UDP h_1:5060", False),
        ("SIP/2.0/UDP h:5060;branch=x\nVia: SIP/2.0/UDP g", False),
    ],
)
def test_parse_via_fast_path(text: str, plain: bool) -> None:
    """The usual shape takes small regex matches, with the general code's result, the
    second time from the sent-by remembered."""
    assert (message_module._plain_via(text) is not None) == plain
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(message_module, "_PLAIN_SENT_BY", re.compile(r"(?!)"))
        patch.setattr(message_module, "_SENT_BYS", {})
        general = via_outcome(text)
    assert via_outcome(text) == general
    assert via_outcome(text) == general


@pytest.mark.parametrize(
    ("text", "transport", "target"),
    [
        # §18.2.2: sent-by, with 5060 when it has no port (5061 for TLS) ...
        ("SIP/2.0/UDP a.example.com", "udp", ("a.example.com", 5060)),
        ("SIP/2.0/TLS a.example.com", "tls", ("a.example.com", 5061)),
        ("SIP/2.0/UDP a.example.com:5070", "udp", ("a.example.com", 5070)),
        ("SIP/2.0/UDP [2001:db8::1]", "udp", ("2001:db8::1", 5060)),
        # ... the received address over the sent-by host ...
        ("SIP/2.0/UDP a.example.com:5070;received=192.0.2.1", "udp", ("192.0.2.1", 5070)),
        # ... rport over the sent-by port (RFC 3581 §4), but only with a value ...
        (
            "SIP/2.0/UDP a.example.com:5070;received=192.0.2.1;rport=6000",
            "udp",
            ("192.0.2.1", 6000),
        ),
        ("SIP/2.0/UDP a.example.com:5070;rport;received=192.0.2.1", "udp", ("192.0.2.1", 5070)),
        ("SIP/2.0/UDP a.example.com;rport", "udp", ("a.example.com", 5060)),
        ("SIP/2.0/UDP a.example.com;rport=6000", "udp", ("a.example.com", 6000)),
        # ... and maddr over everything else.
        (
            "SIP/2.0/UDP a.example.com:5070;maddr=224.2.0.1;received=192.0.2.1;ttl=1",
            "udp",
            ("224.2.0.1", 5070),
        ),
        (
            "SIP/2.0/UDP a.example.com;received=192.0.2.1;maddr=224.2.0.1;rport=6000",
            "udp",
            ("224.2.0.1", 6000),
        ),
    ],
)
def test_via_response_target(text: str, transport: str, target: tuple[str, int]) -> None:
    assert parse_via(text).response_target(transport) == target


# -- Content-Length and bodies --------------------------------------------------------


@pytest.mark.parametrize(
    ("length", "payload", "stream", "body"),
    [
        ("Content-Length: 4", b"test", False, b"test"),
        ("Content-Length: 4", b"test", True, b"test"),
        # §18.3: over UDP, bytes past Content-Length are discarded ...
        ("Content-Length: 4", b"test and more", False, b"test"),
        ("Content-Length: 0", b"\r\n\r\n", False, b""),
        ("l: 2", b"test", False, b"te"),
        ("Content-Length:   4  ", b"test", False, b"test"),
        ("Content-Length: 0004", b"test", False, b"test"),
        # ... and without it the body is the rest of the datagram.
        (None, b"test\r\n\r\nmore", False, b"test\r\n\r\nmore"),
        (None, b"", False, b""),
        # A body holding CRLFCRLF is still one body.
        ("Content-Length: 12", b"a\r\n\r\nb\r\n\r\ncd", True, b"a\r\n\r\nb\r\n\r\ncd"),
    ],
)
def test_content_length(length: str | None, payload: bytes, stream: bool, body: bytes) -> None:
    lines = [*OPTIONS[:-1], "Content-Type: text/plain"] + ([length] if length else [])
    assert parse_request(sip(*lines, body=payload), stream=stream).body == body


# -- malformed messages ---------------------------------------------------------------

#: (raw message, reason, status, start line is a request line, parse_message keywords)
MALFORMED: list[tuple[bytes, str, int, bool, dict[str, bool | int]]] = [
    # §8.1.1: the mandatory headers, each named.
    (options(drop="Call-ID"), "Missing Call-ID", 400, True, {}),
    (options(call_id="Call-ID:   "), "Missing Call-ID", 400, True, {}),
    (options(drop="CSeq"), "Missing CSeq", 400, True, {}),
    (options(drop="From"), "Missing From", 400, True, {}),
    (options(drop="To"), "Missing To", 400, True, {}),
    (options(drop="Via"), "Missing Via", 400, True, {}),
    # §20.16 CSeq: a 32-bit number and the method.
    (options(cseq="CSeq: OPTIONS"), "Bad CSeq", 400, True, {}),
    (options(cseq="CSeq: 1"), "Bad CSeq", 400, True, {}),
    (options(cseq="CSeq: -1 OPTIONS"), "Bad CSeq", 400, True, {}),
    (options(cseq="CSeq: 1.5 OPTIONS"), "Bad CSeq", 400, True, {}),
    (
        options(cseq="CSeq: 36893488147419103232 OPTIONS"),
        "Bad CSeq",
        400,
        True,
        {},
    ),  # RFC 4475 scalar02
    (options(cseq="CSeq: 1 OPT IONS"), "Bad CSeq", 400, True, {}),
    (options(cseq="CSeq: 1 OPTIONS;x"), "Bad CSeq", 400, True, {}),
    (options(cseq="CSeq: \u00b2 OPTIONS"), "Bad CSeq", 400, True, {}),
    (options(cseq="CSeq: \u0661 OPTIONS"), "Bad CSeq", 400, True, {}),
    # RFC 4475 mismatch01.
    (
        options(cseq="CSeq: 63104 INVITE"),
        "CSeq method does not match request method",
        400,
        True,
        {},
    ),
    (
        options(cseq="CSeq: 63104 options"),
        "CSeq method does not match request method",
        400,
        True,
        {},
    ),
    # A bad top Via, From or To.
    (options(via="Via: SIP/2.0/UDP"), "Bad Via sent-by", 400, True, {}),
    (options(via="Via: SIP/1.0/UDP pc33.atlanta.com"), "Bad Via protocol", 400, True, {}),
    (options(via="Via: SIP/2.0/UDP host;rport=0"), "Bad Via rport", 400, True, {}),
    (options(via="Via: ,"), "Empty Via value", 400, True, {}),
    (options(via="Via: "), "Bad Via protocol ''", 400, True, {}),
    (
        options(from_="From: <sip:alice@atlanta.com;tag=1"),
        "Bad From: unterminated '<'",
        400,
        True,
        {},
    ),
    (options(to="To: Carol"), "Bad To: no URI", 400, True, {}),
    (
        options(to='To: "Carol <sip:carol@chicago.com>'),
        "Bad To: unterminated quoted",
        400,
        True,
        {},
    ),  # RFC 4475 quotbal
    # Header lines.
    (
        sip(*OPTIONS, "this is no header"),
        "Malformed header line 'this is no header'",
        400,
        True,
        {},
    ),
    (sip(*OPTIONS, "Bad Name: x"), "Malformed header line 'Bad Name: x'", 400, True, {}),
    (sip(*OPTIONS, ": no name"), "Malformed header line ': no name'", 400, True, {}),
    (sip(*OPTIONS, "X-\xe9: x"), "Malformed header line", 400, True, {}),
    (
        sip(OPTIONS[0], " folded", *OPTIONS[1:]),
        "Continuation line before any header",
        400,
        True,
        {},
    ),
    # Content-Length (§20.14, §18.3).
    (options(content_length="Content-Length: 10"), "Content-Length exceeds body", 400, True, {}),
    (options(content_length="Content-Length: abc"), "Bad Content-Length", 400, True, {}),
    (options(content_length="Content-Length: -1"), "Bad Content-Length", 400, True, {}),
    (options(content_length="Content-Length: +1"), "Bad Content-Length", 400, True, {}),
    (options(content_length="Content-Length:"), "Bad Content-Length", 400, True, {}),
    (options(content_length="Content-Length: 0, 0"), "Bad Content-Length", 400, True, {}),
    (options(content_length="Content-Length: \u00b2"), "Bad Content-Length", 400, True, {}),
    (options(content_length="Content-Length: \u0660"), "Bad Content-Length", 400, True, {}),
    # RFC 4475 §3.3.9: two lengths, equal or not, are one too many (§7.3.1).
    (sip(*OPTIONS, "l: 4", body=b"test"), "More than one Content-Length header", 400, True, {}),
    (sip(*OPTIONS, "l: 0"), "More than one Content-Length header", 400, True, {}),
    pytest.param(
        options(content_length="Content-Length: " + "1" * 5000),
        "Content-Length exceeds body",
        400,
        True,
        {},
        id="long-content-length",
    ),
    (options(drop="Content-Length"), "Missing Content-Length", 400, True, {"stream": True}),
    # Oversize (§21.5.7).
    (sip(*OPTIONS, body=b"x" * 200), "Message Too Large", 513, True, {"max_size": 200}),
    # Start lines that are not a request line: no request to answer.
    (sip("SIP/2.0 2000 OK", *OPTIONS[1:]), "Bad status code '2000'", 400, False, {}),
    (
        sip("SIP/2.0 4294967301 Better Not Break", *OPTIONS[1:]),
        "Bad status code",
        400,
        False,
        {},
    ),  # RFC 4475 bigcode
    (sip("SIP/2.0 099 Too Low", *OPTIONS[1:]), "Bad status code '099'", 400, False, {}),
    (sip("SIP/2.0 700 Too High", *OPTIONS[1:]), "Bad status code '700'", 400, False, {}),
    (sip("SIP/2.0 2OO OK", *OPTIONS[1:]), "Bad status code '2OO'", 400, False, {}),
    (sip("SIP/2.0  200 OK", *OPTIONS[1:]), "Bad status code ''", 400, False, {}),
    (sip("SIP/2.0 \u00b2\u00b2\u00b2 OK", *OPTIONS[1:]), "Bad status code", 400, False, {}),
    (sip("SIP/2.0 \u0661\u0660\u0660 Trying", *OPTIONS[1:]), "Bad status code", 400, False, {}),
    (sip("SIP/2.0 200 OK", *OPTIONS[2:]), "Missing Via", 400, False, {}),
    (
        sip("SIP/2.0 200 OK", *OPTIONS[1:], body=b"x" * 200),
        "Message Too Large",
        513,
        False,
        {"max_size": 200},
    ),
    (b"", "Bad request line ''", 400, False, {}),
    (b"\r\n\r\n", "Bad request line ''", 400, False, {}),
    (b"\x00\xff\xfe garbage", "Bad request line", 400, False, {}),
    (sip("OPTIONS sip:carol@chicago.com", *OPTIONS[1:]), "Bad request line", 400, False, {}),
    (
        sip("OPTIONS sip:carol@chicago.com HTTP/1.1", *OPTIONS[1:]),
        "Bad request line",
        400,
        False,
        {},
    ),
    # A request line that ends in a SIP version can be answered (RFC 4475 §3.1.2.7-11, 16).
    (
        sip("OPTIONS sip:carol@chicago.com SIP/7.0", *OPTIONS[1:]),
        "Version SIP/7.0 Not Supported",
        505,
        True,
        {},
    ),
    (
        sip("OPTIONS sip:carol@chicago.com SIP/2.00", *OPTIONS[1:]),
        "Version SIP/2.00 Not Supported",
        505,
        True,
        {},
    ),
    (
        sip("OPTIONS  sip:carol@chicago.com SIP/2.0", *OPTIONS[1:]),
        "Request line elements not separated by one SP",
        400,
        True,
        {},
    ),
    (
        sip("OPTIONS\tsip:carol@chicago.com SIP/2.0", *OPTIONS[1:]),
        "Request line elements not separated by one SP",
        400,
        True,
        {},
    ),
    (
        sip(" OPTIONS sip:carol@chicago.com SIP/2.0", *OPTIONS[1:]),
        "Leading white space in request line",
        400,
        True,
        {},
    ),
    (
        sip("OPTIONS sip:carol@chicago.com SIP/2.0 ", *OPTIONS[1:]),
        "Trailing white space in request line",
        400,
        True,
        {},
    ),
    (
        sip("OPTIONS sip:carol@chicago.com; lr SIP/2.0", *OPTIONS[1:]),
        "White space in Request-URI",
        400,
        True,
        {},
    ),
    (
        sip("OPTIONS sip:carol@chicago.com;\tlr SIP/2.0", *OPTIONS[1:]),
        "Bad Request-URI: white space in URI",
        400,
        True,
        {},
    ),
    (
        sip("OPTIONS <sip:carol@chicago.com> SIP/2.0", *OPTIONS[1:]),
        "Bad Request-URI: URI in <>",
        400,
        True,
        {},
    ),
    (
        sip("OPTIONS sip:carol@chicago.com?Subject=x SIP/2.0", *OPTIONS[1:]),
        "Bad Request-URI: headers not allowed",
        400,
        True,
        {},
    ),
    (
        sip("OPT@ONS sip:carol@chicago.com SIP/2.0", *OPTIONS[1:]),
        "Bad request line",
        400,
        False,
        {},
    ),
    (
        b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n",
        "Bad request line 'GET / HTTP/1.1'",
        400,
        False,
        {},
    ),
]


@pytest.mark.parametrize(("data", "reason", "status", "is_request", "kwargs"), MALFORMED)
def test_malformed(
    data: bytes, reason: str, status: int, is_request: bool, kwargs: dict[str, bool | int]
) -> None:
    """Each rejection names its cause; a request comes back for the answer (§21.4.1).

    The second time as well: what the parser remembers of good values never
    lets a bad one through."""
    with pytest.raises(ParseError):
        parse_message(data, **kwargs)  # type: ignore[arg-type]
    with pytest.raises(ParseError) as info:
        parse_message(data, **kwargs)  # type: ignore[arg-type]
    error = info.value
    assert error.reason.startswith(reason), error.reason
    assert str(error) == error.reason
    assert_reason_phrase(error.reason)
    assert error.status == status
    if is_request:
        assert isinstance(error.request, Request)
        assert error.request.method == data.split()[0].decode()
    else:
        assert error.request is None


def test_malformed_request_keeps_the_headers_that_parsed() -> None:
    """A 400 to a broken request copies Via, From, To, Call-ID and CSeq (§8.2.6, §16.3)."""
    data = sip(
        "INVITE sip:bob@biloxi.com SIP/2.0",
        "Via: SIP/2.0/UDP pc33.atlanta.com;branch=z9hG4bK776asdhds;rport",
        "Via: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bKold",
        "To: Bob <sip:bob@biloxi.com>",
        "not a header line",
        "From: Alice <sip:alice@atlanta.com>;tag=1928301774",
        "Call-ID: a84b4c76e66710@pc33.atlanta.com",
        "CSeq: 314159 INVITE",
        "Content-Length: 0",
    )
    with pytest.raises(ParseError) as info:
        parse_message(data)
    request = info.value.request
    assert request is not None
    assert [k for k, _, _ in request.headers] == [
        "via",
        "via",
        "to",
        "from",
        "call-id",
        "cseq",
        "content-length",
    ]
    assert request.top_via.branch == "z9hG4bK776asdhds"
    response = parse_response(
        make_response(request, 400, info.value.reason, to_tag="t1").serialize()
    )
    assert response.reason == "Malformed header line 'not a header line'"
    assert response.get_all("via") == request.get_all("via")
    assert response.get("to") == "Bob <sip:bob@biloxi.com>;tag=t1"
    assert (response.call_id, response.cseq) == ("a84b4c76e66710@pc33.atlanta.com", 314159)
    assert response.from_tag == "1928301774"


def test_reply_to_malformed_in_dialog_request_keeps_its_to_tag() -> None:
    """A partly parsed request has not read its To tag yet; the reply must not add another."""
    data = options(to="To: <sip:carol@chicago.com>;tag=314159", cseq="CSeq: 63104 INVITE")
    with pytest.raises(ParseError) as info:
        parse_message(data)
    assert info.value.request is not None
    response = make_response(info.value.request, 400, info.value.reason, to_tag="new")
    assert response.get("to") == "<sip:carol@chicago.com>;tag=314159"
    assert response.to_tag == "314159"
    assert parse_response(response.serialize()).to_tag == "314159"


def test_oversize_request_is_answered_513() -> None:
    data = sip(*OPTIONS[:-1], "Content-Length: 300", body=b"x" * 300)
    assert parse_request(data).body == b"x" * 300
    with pytest.raises(ParseError) as info:
        parse_message(data, max_size=len(data) - 1)
    assert (info.value.status, info.value.reason) == (513, "Message Too Large")
    assert info.value.request is not None
    assert info.value.request.get("call-id") == "a84b4c76e66710"
    assert parse_request(data, max_size=len(data)).body == b"x" * 300


# -- serialize ------------------------------------------------------------------------

#: A message already in sipha's own spelling: serialize() gives back the same bytes.
CANONICAL = sip(
    "INVITE sip:bob@biloxi.example.com;transport=tcp SIP/2.0",
    "Via: SIP/2.0/TCP client.atlanta.example.com:5060;branch=z9hG4bK74bf9;received=192.0.2.101;rport=5066",
    "Via: SIP/2.0/UDP [2001:db8::9]:5070;branch=z9hG4bK2d4790.1, SIP/2.0/UDP h;branch=z9hG4bKx",
    "Max-Forwards: 69",
    'From: "Alice, the \\"first\\" <A>" <sip:alice@atlanta.example.com>;tag=9fxced76sl',
    "To: Bob <sip:bob@biloxi.example.com>",
    "Call-ID: 3848276298220188511@atlanta.example.com",
    "CSeq: 1 INVITE",
    'Contact: <sip:alice@client.atlanta.example.com;transport=tcp>;expires=60, "x,<y>" <sip:z@w>',
    "Record-Route: <sip:p1.example.com;lr>",
    "X-Odd-Header: ;;,,;;,;",
    "x-lower-case-unknown: Kept  As   Is",
    "Subject: caf\u00e9 and a raw \udcff byte",
    "Content-Type: application/sdp",
    f"Content-Length: {len(SDP)}",
    body=SDP,
)


@pytest.mark.parametrize("data", [INVITE, RINGING, CANONICAL, sip(*OPTIONS)])
def test_serialize_is_verbatim(data: bytes) -> None:
    """Headers sipha does not change go back on the wire exactly as they came."""
    assert parse_message(data).serialize() == data


@pytest.mark.parametrize(
    "data",
    [
        INVITE,
        RINGING,
        CANONICAL,
        COMPACT_MESSAGE,
        sip(*OPTIONS[:-1]),
        sip(*OPTIONS[:-1], "l: 3", body=b"abcdef"),
        sip(
            *[line for line in OPTIONS if not line.startswith("Call-ID")],
            "Subject: a,\r\n\tb",
            "cAlL-iD: x",
        ),
        sip(*OPTIONS[:-1], body=b"\r\n\r\nno length\x00\xff"),
        INVITE_LF,
    ],
)
def test_serialize_round_trip(data: bytes) -> None:
    message = parse_message(data)
    again = parse_message(message.serialize(), stream=True)
    assert comparable(again) == comparable(message)
    assert again.serialize() == message.serialize()


@pytest.mark.parametrize(
    ("lines", "old", "body"),
    [
        ([*OPTIONS[:-1]], b"", b"new body"),  # no Content-Length: one is added
        ([*OPTIONS[:-1], "Content-Length: 3"], b"old", b"new body"),
        ([*OPTIONS[:-1], "Content-Length: 5"], b"12345", b""),
    ],
)
def test_serialize_corrects_content_length(lines: list[str], old: bytes, body: bytes) -> None:
    message = parse_message(sip(*lines, body=old))
    assert message.body == old
    message.body = body
    out = message.serialize()
    assert re.findall(rb"\r\nContent-Length: (\d+)\r\n", out) == [str(len(body)).encode()]
    assert out.endswith(b"\r\n\r\n" + body)
    assert parse_message(out, stream=True).body == body


def test_serialize_writes_one_content_length_whatever_was_added() -> None:
    """A route may add a Content-Length: the wire still gets one, with the real size."""
    message = parse_message(sip(*OPTIONS))
    message.append("Content-Length", "99")
    message.body = b"new body"
    out = message.serialize()
    assert re.findall(rb"\r\nContent-Length: (\d+)\r\n", out) == [b"8"]
    assert parse_message(out, stream=True).body == b"new body"


def test_serialize_response_start_line() -> None:
    response = parse_response(RINGING)
    response.status, response.reason = 486, "Busy Here"
    assert response.serialize().startswith(b"SIP/2.0 486 Busy Here\r\nVia: ")


# -- changing headers -----------------------------------------------------------------


def test_insert_and_pop_via() -> None:
    """A proxy pushes its Via on the way out and pops it from responses (§16.6, §16.7)."""
    request = parse_request(INVITE)
    assert request.top_via.host == "pc33.atlanta.com"
    request.insert("via", "SIP/2.0/UDP proxy.example.com;branch=z9hG4bKp1")
    assert request.top_via.host == "proxy.example.com"
    assert request.headers[0] == ("via", "Via", "SIP/2.0/UDP proxy.example.com;branch=z9hG4bKp1")
    assert request.pop_first("via") == "SIP/2.0/UDP proxy.example.com;branch=z9hG4bKp1"
    assert request.top_via.host == "pc33.atlanta.com"
    assert request.serialize() == INVITE


def test_pop_first_keeps_the_rest_of_a_comma_list() -> None:
    request = parse_request(
        sip(
            OPTIONS[0],
            "Via: SIP/2.0/UDP a;branch=z9hG4bK1, SIP/2.0/UDP b;branch=z9hG4bK2",
            "Via: SIP/2.0/UDP c;branch=z9hG4bK3",
            *OPTIONS[2:],
        )
    )
    assert request.pop_first("Via") == "SIP/2.0/UDP a;branch=z9hG4bK1"
    assert request.top_via.host == "b"
    assert request.get_all("via") == [
        "SIP/2.0/UDP b;branch=z9hG4bK2",
        "SIP/2.0/UDP c;branch=z9hG4bK3",
    ]
    assert request.pop_first("via") == "SIP/2.0/UDP b;branch=z9hG4bK2"
    assert request.get_all("via") == ["SIP/2.0/UDP c;branch=z9hG4bK3"]
    assert request.pop_first("route") is None


@pytest.mark.parametrize(
    ("line", "host", "branch"),
    [
        # Media servers join the Vias they echo into one line (sipp's [last_Via:]).
        ("SIP/2.0/UDP a:5060;branch=z9hG4bK1, SIP/2.0/UDP b;branch=z9hG4bK2", "a", "z9hG4bK1"),
        ('SIP/2.0/UDP a;x="1,2";branch=z9hG4bK1, SIP/2.0/UDP b;branch=z9hG4bK2', "a", "z9hG4bK1"),
        ("SIP/2.0/UDP a ;branch=z9hG4bK1 , SIP/2.0/UDP b", "a", "z9hG4bK1"),
        # Under the top one, a Via is the next hop's to read: relayed as it came.
        ("SIP/2.0/UDP a;branch=z9hG4bK1, SIP/2.0/NOVEL", "a", "z9hG4bK1"),
        ("SIP/2.0/UDP a;branch=z9hG4bK1,,", "a", "z9hG4bK1"),
    ],
)
def test_a_response_reads_its_top_via_only(line: str, host: str, branch: str) -> None:
    response = parse_response(sip("SIP/2.0 200 OK", f"Via: {line}", *OPTIONS[2:]))
    assert (response.top_via.host, response.top_via.branch) == (host, branch)
    assert response.pop_first("via") is not None
    assert response.serialize().count(b"Via: ") == (line.count("SIP/2.0") > 1)


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        (",", "Empty Via value"),
        (" , SIP/2.0/UDP b;branch=z9hG4bK2", "Empty Via value"),
        ("SIP/2.0/NOVEL, SIP/2.0/UDP b;branch=z9hG4bK2", "Bad Via"),
        ('SIP/2.0/UDP a;x="1,2, SIP/2.0/UDP b', "Bad Via"),
    ],
)
def test_a_response_with_a_broken_top_via_is_refused(line: str, problem: str) -> None:
    with pytest.raises(ParseError, match=problem):
        parse_response(sip("SIP/2.0 200 OK", f"Via: {line}", *OPTIONS[2:]))


def test_replace_top_via() -> None:
    """§18.2.1 and RFC 3581: received/rport are written into the top Via only."""
    request = parse_request(
        sip(
            OPTIONS[0],
            "Via: SIP/2.0/UDP 10.0.0.1:5060;rport;branch=z9hG4bK1, SIP/2.0/UDP b;branch=z9hG4bK2",
            "Via: SIP/2.0/UDP c;branch=z9hG4bK3",
            *OPTIONS[2:],
        )
    )
    via = request.top_via
    via.params["received"] = "192.0.2.7"
    via.params["rport"] = "40000"
    request.replace_top_via(via)
    assert request.get_all("via") == [
        "SIP/2.0/UDP 10.0.0.1:5060;rport=40000;branch=z9hG4bK1;received=192.0.2.7",
        "SIP/2.0/UDP b;branch=z9hG4bK2",
        "SIP/2.0/UDP c;branch=z9hG4bK3",
    ]
    assert request.top_via.response_target("udp") == ("192.0.2.7", 40000)
    assert parse_request(request.serialize()).top_via == via


def test_set_remove_append() -> None:
    request = parse_request(sip(*OPTIONS, "Route: <sip:a;lr>", "Route: <sip:b;lr>"))
    request.set("max-forwards", "69")
    assert request.get("Max-Forwards") == "69"
    assert sum(k == "max-forwards" for k, _, _ in request.headers) == 1
    request.set("Record-Route", "<sip:p.example.com;lr>")
    assert request.headers[-1] == ("record-route", "Record-Route", "<sip:p.example.com;lr>")
    request.remove("ROUTE")
    assert request.get_all("route") == []
    request.append("x-custom-Header", "1")
    assert request.headers[-1] == ("x-custom-header", "x-custom-Header", "1")
    request.set("Via", "SIP/2.0/TCP other.example.com;branch=z9hG4bKz")
    assert request.top_via.host == "other.example.com"
    request.remove("via")
    with pytest.raises(ParseError, match="Missing Via"):
        request.top_via  # noqa: B018


# -- make_response --------------------------------------------------------------------


def test_make_response_copies_the_transaction_headers() -> None:
    """§8.2.6.2: Via (every one, in order), From, To, Call-ID and CSeq; nothing else."""
    vias = b"Via: SIP/2.0/UDP p1.example.com;branch=z9hG4bKp1, SIP/2.0/UDP p2;branch=z9hG4bKp2"
    request = parse_request(INVITE.replace(b"Via: ", vias + b"\r\nVia: "))
    assert len(request.get_all("via")) == 3
    response = make_response(request, 200, to_tag="a6c85cf")
    assert (response.status, response.reason) == (200, "OK")
    assert [k for k, _, _ in response.headers] == ["via", "via", "to", "from", "call-id", "cseq"]
    assert response.get_all("via") == request.get_all("via")
    assert response.get("from") == request.get("from")
    assert response.get("to") == "Bob <sip:bob@biloxi.com>;tag=a6c85cf"
    assert (response.call_id, response.cseq, response.cseq_method) == (
        request.call_id,
        request.cseq,
        request.cseq_method,
    )
    assert (response.from_tag, response.to_tag) == ("1928301774", "a6c85cf")
    assert response.body == b""
    assert comparable(parse_response(response.serialize())) == comparable(response)


@pytest.mark.parametrize(
    ("status", "request_to", "to_tag", "response_to"),
    [
        (100, "Bob <sip:bob@biloxi.com>", "t1", "Bob <sip:bob@biloxi.com>"),
        (180, "Bob <sip:bob@biloxi.com>", "t1", "Bob <sip:bob@biloxi.com>;tag=t1"),
        (200, "Bob <sip:bob@biloxi.com>", "t1", "Bob <sip:bob@biloxi.com>;tag=t1"),
        (487, "sip:bob@biloxi.com", "t1", "sip:bob@biloxi.com;tag=t1"),
        (200, "Bob <sip:bob@biloxi.com>", None, "Bob <sip:bob@biloxi.com>"),
        # In a dialog the To tag is already there (§12.2.1.1): keep it alone.
        (200, "Bob <sip:bob@biloxi.com>;tag=a6c85cf", "t1", "Bob <sip:bob@biloxi.com>;tag=a6c85cf"),
        (100, "Bob <sip:bob@biloxi.com>;tag=a6c85cf", "t1", "Bob <sip:bob@biloxi.com>;tag=a6c85cf"),
    ],
)
def test_make_response_to_tag(
    status: int, request_to: str, to_tag: str | None, response_to: str
) -> None:
    """§8.2.6.2: a To tag on every reply but 100 Trying when the request had none."""
    request = parse_request(options(to=f"To: {request_to}"))
    response = make_response(request, status, to_tag=to_tag)
    assert response.get("to") == response_to
    reparsed = parse_response(response.serialize())
    assert response.to_tag == reparsed.to_tag


@pytest.mark.parametrize(
    ("status", "reason", "expected"),
    [
        (100, None, "Trying"),
        (400, None, "Bad Request"),
        (483, None, "Too Many Hops"),
        (513, None, "Message Too Large"),
        (299, None, "Unknown"),
        (400, "Missing Call-ID", "Missing Call-ID"),
    ],
)
def test_make_response_reason(status: int, reason: str | None, expected: str) -> None:
    response = make_response(parse_request(sip(*OPTIONS)), status, reason)
    assert response.serialize().startswith(f"SIP/2.0 {status} {expected}\r\n".encode())


def test_make_response_extra_headers() -> None:
    request = parse_request(sip(*OPTIONS))
    response = make_response(
        request,
        503,
        extra=[("Retry-After", "30"), ("x-reason", "overload"), ("warning", '399 p "x"')],
    )
    assert response.headers[-3:] == [
        ("retry-after", "Retry-After", "30"),
        ("x-reason", "x-reason", "overload"),
        ("warning", "Warning", '399 p "x"'),
    ]
    out = response.serialize()
    assert out.endswith(
        b'Retry-After: 30\r\nx-reason: overload\r\nWarning: 399 p "x"\r\nContent-Length: 0\r\n\r\n'
    )
    assert response.get_all("accept") == []  # request-only headers are not copied


# -- StreamFramer ---------------------------------------------------------------------

BYE = sip(
    "BYE sip:alice@pc33.atlanta.com SIP/2.0",
    "Via: SIP/2.0/TCP 192.0.2.4;branch=z9hG4bKnashds10",
    "Max-Forwards: 70",
    "From: Bob <sip:bob@biloxi.com>;tag=a6c85cf",
    "To: Alice <sip:alice@atlanta.com>;tag=1928301774",
    "Call-ID: a84b4c76e66710",
    "CSeq: 231 BYE",
    "Content-Length: 0",
)

#: A body with CRLFCRLF in it: only Content-Length says where the message ends.
MULTIPART_BODY = b"--b\r\n\r\nfirst\r\n\r\n--b\r\n\r\nsecond\r\n--b--"
MULTIPART = sip(
    *OPTIONS[:-1],
    "Content-Type: multipart/mixed;boundary=b",
    f"l: {len(MULTIPART_BODY)}",
    body=MULTIPART_BODY,
)

STREAM = [INVITE, BYE, MULTIPART, RINGING]


def frame(chunks: Iterable[bytes], max_size: int = 65535) -> list[bytes]:
    framer = StreamFramer(max_size)
    return [message for chunk in chunks for message in framer.feed(chunk)]


def test_framer_several_messages_in_one_chunk() -> None:
    """§18.3: Content-Length cuts the stream; RFC 5626 CRLF keep-alives are skipped."""
    data = b"\r\n\r\n" + INVITE + BYE + b"\r\n" + MULTIPART + b"\r\n\r\n\r\n" + RINGING
    assert frame([data]) == STREAM
    assert [parse_message(m, stream=True).cseq for m in STREAM] == [314159, 231, 63104, 314159]
    assert parse_message(MULTIPART, stream=True).body == MULTIPART_BODY


@pytest.mark.parametrize("message", STREAM)
def test_framer_every_split_point(message: bytes) -> None:
    data = message + BYE
    for cut in range(len(data) + 1):
        assert frame([data[:cut], data[cut:]]) == [message, BYE], cut


def test_framer_one_byte_at_a_time() -> None:
    data = b"\r\n".join(STREAM)
    framer = StreamFramer()
    out = []
    for i in range(len(data)):
        out.extend(framer.feed(data[i : i + 1]))
    assert out == STREAM


def test_framer_keeps_a_partial_message() -> None:
    framer = StreamFramer()
    assert list(framer.feed(b"\r\n\r\n")) == []  # a keep-alive alone
    assert list(framer.feed(b"\r\n" + INVITE[:-1])) == []
    assert list(framer.feed(INVITE[-1:] + b"\r\n" + BYE[:10])) == [INVITE]
    assert list(framer.feed(BYE[10:])) == [BYE]
    assert list(framer.feed(b"\r\n")) == []


def test_framer_tolerates_bare_lf_line_ends_as_the_parser_does() -> None:
    head, body = INVITE.split(b"\r\n\r\n", 1)
    bare = head.replace(b"\r\n", b"\n") + b"\n\n" + body
    assert frame([bare + BYE]) == [bare, BYE]
    assert parse_message(frame([bare])[0], stream=True).body == parse_message(INVITE).body


def test_framer_compact_content_length() -> None:
    data = sip(*OPTIONS[:-1], "l:  4", body=b"abcd")
    assert frame([data + BYE]) == [data, BYE]


def test_framer_without_content_length_frames_an_empty_body() -> None:
    """The parser, not the framer, rejects the message (and a 400 can be sent back)."""
    data = sip(*OPTIONS[:-1])
    assert frame([data + BYE]) == [data, BYE]
    with pytest.raises(ParseError, match="Missing Content-Length"):
        parse_message(data, stream=True)


#: A whole head with a Via: a framing error in it can be answered before the close.
HEAD = "INVITE sip:x@example.com SIP/2.0\r\nVia: SIP/2.0/TCP 192.0.2.4;branch=z9hG4bKf\r\n"


@pytest.mark.parametrize(
    ("chunks", "max_size", "reason", "status", "answerable"),
    [
        # A head with no empty line in sight: the stream cannot be resynchronised.
        ([b"INVITE sip:x SIP/2.0\r\n" + b"X: y\r\n" * 20], 100, "Message Too Large", 513, False),
        ([b"INVITE sip:x SIP/2.0\r\n", b"X: y\r\n" * 20], 100, "Message Too Large", 513, False),
        ([b"\x00" * 101], 100, "Message Too Large", 513, False),
        # A whole head: the body is not waited for.
        ([f"{HEAD}Content-Length: 101\r\n\r\n".encode()], 150, "Message Too Large", 513, True),
        (
            [f"{HEAD}Content-Length: 10485760\r\n\r\n".encode(), b"x" * 1000],
            65535,
            "Message Too Large",
            513,
            True,
        ),
        (
            [f"{HEAD}Content-Length: {'9' * 5000}\r\n\r\n".encode()],
            65535,
            "Message Too Large",
            513,
            True,
        ),
        ([f"{HEAD}l: x\r\n\r\n".encode()], 65535, "Bad Content-Length", 400, True),
        ([f"{HEAD}Content-Length: -1\r\n\r\n".encode()], 65535, "Bad Content-Length", 400, True),
        (
            [f"{HEAD}Content-Length: \u00b2\r\n\r\n".encode()],
            65535,
            "Bad Content-Length",
            400,
            True,
        ),
        # RFC 4475 §3.3.9: which of two lengths frames the body? Neither.
        (
            [f"{HEAD}Content-Length: 4\r\nl: 4\r\n\r\nbody".encode()],
            65535,
            "More than one Content-Length header",
            400,
            True,
        ),
        # No Via: a whole head, but nowhere to send an answer.
        (
            [b"INVITE sip:x SIP/2.0\r\nContent-Length: 101\r\n\r\n"],
            100,
            "Message Too Large",
            513,
            False,
        ),
        (
            [b"SIP/2.0 200 OK\r\n" + HEAD.encode().partition(b"\r\n")[2] + b"l: -1\r\n\r\n"],
            100,
            "Bad Content-Length",
            400,
            False,
        ),
    ],
)
def test_framer_errors(
    chunks: list[bytes], max_size: int, reason: str, status: int, answerable: bool
) -> None:
    with pytest.raises(ParseError) as info:
        frame(chunks, max_size)
    assert (info.value.reason, info.value.status) == (reason, status)
    request = info.value.request
    if answerable:
        assert request is not None
        assert request.top_via.host == "192.0.2.4"
        response = make_response(request, status, reason)
        assert response.get("via") == "SIP/2.0/TCP 192.0.2.4;branch=z9hG4bKf"
    elif request is not None:
        with pytest.raises(ParseError, match="Missing Via"):
            request.top_via  # noqa: B018


def test_framer_looks_at_each_byte_once() -> None:
    """A sender trickling a head or a body byte by byte costs linear time, not quadratic."""
    head = b"INVITE sip:x SIP/2.0\r\nX-A: " + b"a" * 200_000 + b"\r\nContent-Length: 100000\r\n\r\n"
    data = head + b"b" * 100_000
    framer = StreamFramer(max_size=len(data))
    started = time.perf_counter()
    out = [message for i in range(len(data)) for message in framer.feed(data[i : i + 1])]
    assert time.perf_counter() - started < 2.0
    assert out == [data]


def test_framer_accepts_a_message_of_exactly_max_size() -> None:
    assert frame([INVITE], max_size=len(INVITE)) == [INVITE]
    with pytest.raises(ParseError, match="Message Too Large"):
        frame([INVITE], max_size=len(INVITE) - 1)


# -- properties -----------------------------------------------------------------------

FUZZ = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

#: Bytes that matter to the grammar, so that mutations hit the interesting cases.
SPECIAL = [bytes([b]) for b in b'\r\n \t:;,=<>"\\@[]/?0123456789\x00\x80\xff'] + [
    b"\r\n",
    b"\r\n ",
    b"\n",
    b"\n\n",
    b"\r\n\r\n",
    b", ",
    b" ,",
    b";tag=",
    b";rport",
    # U+00B2, U+0661 and U+2028: digits and a line break to str, not to the SIP grammar.
    b"\xc2\xb2",
    b"\xd9\xa1",
    b"\xe2\x80\xa8",
]


#: Numbers, with characters str.isdigit() takes for digits: int() rejects U+00B2, reads U+0661.
NUMBER = st.text(alphabet="0123456789\u00b2\u0661", min_size=1, max_size=11)

#: The numbers a parser converts: status code, CSeq, Content-Length, ports, rport.
NUMERIC_FIELD = re.compile(
    rb"(?<=^SIP/2\.0 )\d+|(?<=CSeq: )\d+|(?<=Content-Length: )\d+|(?<=l: )\d+|(?<=rport=)\d+|(?<=:)\d+(?=;)"
)

#: The headers whose values the parser reads, in full and compact spelling.
CORE = ("Via", "v", "From", "f", "To", "t", "Call-ID", "i", "CSeq", "Content-Length", "l")

#: Pieces of header values: with them a replaced value often gets past the first checks.
PIECE = st.sampled_from(
    [
        "SIP/2.0/UDP ",
        "SIP/2.0/TCP ",
        "sip/2.0/tls ",
        "SIP / 2.0 / UDP ",
        "host.example.com",
        "[2001:db8::1]",
        "[::1",
        "192.0.2.1",
        ":5060",
        ";branch=z9hG4bK1",
        ";rport",
        ";rport=",
        ";received=192.0.2.9",
        ";maddr=224.2.0.1",
        ";ttl=1",
        ";lr",
        ";tag=",
        ";tag=1",
        "<sip:alice@atlanta.com>",
        "sip:bob@biloxi.com",
        "sips:",
        "tel:+1",
        '"Doe, <J>" ',
        '"',
        "\\",
        "<",
        ">",
        ",",
        ";",
        ":",
        "=",
        "@",
        "?",
        " ",
        "-",
        "\t",
        "\r\n ",
        "\n\t",
        " INVITE",
        " OPTIONS",
        " ACK",
        "\u00e9",
        "\udcff",
    ]
)

VALUE = st.lists(st.one_of(NUMBER, PIECE), max_size=5).map("".join)

START_LINE = st.one_of(
    st.builds("SIP/2.0 {} {}".format, NUMBER, VALUE),
    st.builds("{} {} SIP/2.0".format, st.sampled_from(["INVITE", "ACK", "OPTIONS", "X"]), VALUE),
)


@st.composite
def mutated(
    draw: st.DrawFn, seeds: tuple[bytes, ...] = (INVITE, RINGING, COMPACT_MESSAGE, CANONICAL)
) -> bytes:
    """A valid message after a few random byte, line, value and number edits, or a cut."""
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, 6))):
        at = draw(st.integers(0, len(data)))
        op = draw(
            st.sampled_from(
                [
                    "flip",
                    "insert",
                    "special",
                    "delete",
                    "line",
                    "truncate",
                    "value",
                    "number",
                    "start",
                ]
            )
        )
        if op == "flip" and at < len(data):
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif op == "special":
            data[at:at] = draw(st.sampled_from(SPECIAL))
        elif op == "delete":
            del data[at : at + draw(st.integers(1, 16))]
        elif op == "line":
            lines = bytes(data).split(b"\r\n")
            i = draw(st.integers(0, len(lines) - 1))
            j = draw(st.integers(0, len(lines) - 1))
            if draw(st.booleans()):
                lines.insert(j, lines[i])  # duplicate a line
            else:
                del lines[i]
            data = bytearray(b"\r\n".join(lines))
        elif op == "value":  # a core header gets a new value, in place or on top
            name = draw(st.sampled_from(CORE)).encode()
            line = name + b": " + draw(VALUE).encode("utf-8", "surrogateescape") + b"\r\n"
            found = re.search(rb"^" + name + rb":.*\r\n", data, re.MULTILINE | re.IGNORECASE)
            if found and draw(st.booleans()):
                data[found.start() : found.end()] = line
            else:
                start = data.find(b"\n") + 1
                data[start:start] = line
        elif op == "number":
            numbers = list(NUMERIC_FIELD.finditer(data))
            if numbers:
                found = draw(st.sampled_from(numbers))
                data[found.start() : found.end()] = draw(NUMBER).encode()
        elif op == "start":
            _, sep, rest = bytes(data).partition(b"\r\n")
            data = bytearray(draw(START_LINE).encode("utf-8", "surrogateescape") + sep + rest)
        elif op == "truncate":
            del data[at:]
    return bytes(data)


def check_rejection(error: ParseError) -> None:
    """A rejection can always be answered: a reason phrase, a status, a request or none."""
    assert_reason_phrase(error.reason)
    assert error.status in (400, 505, 513)
    assert error.request is None or isinstance(error.request, Request)
    if error.request is not None:
        make_response(error.request, error.status, error.reason, to_tag="x").serialize()


def check_parse(data: bytes, *, stream: bool) -> None:
    """The parser's contract: a message or a ParseError, and a message that round-trips."""
    try:
        message = parse_message(data, stream=stream)
    except ParseError as error:
        check_rejection(error)
        return
    again = parse_message(message.serialize(), stream=True, max_size=2 * len(data) + 100)
    assert comparable(again) == comparable(message)


@FUZZ
@given(data=st.binary(max_size=600), stream=st.booleans())
def test_parser_never_raises_anything_but_parse_error(data: bytes, stream: bool) -> None:
    check_parse(data, stream=stream)


@FUZZ
@given(data=mutated(), stream=st.booleans())
def test_parser_on_mutated_messages(data: bytes, stream: bool) -> None:
    check_parse(data, stream=stream)


@FUZZ
@given(
    data=st.one_of(
        st.binary(max_size=400),
        st.lists(st.sampled_from([*STREAM, b"\r\n", b"\r\n\r\n"]), max_size=5).map(b"".join),
        st.lists(mutated(), min_size=1, max_size=3).map(b"".join),
    ),
    draw=st.data(),
)
def test_framer_never_raises_anything_but_parse_error(data: bytes, draw: st.DataObject) -> None:
    """Any chunking of a stream yields the same messages as the stream in one piece."""
    cuts = draw.draw(st.lists(st.integers(0, len(data)), max_size=12), label="cuts")
    chunks = [data[a:b] for a, b in pairwise(sorted({0, len(data), *cuts}))]

    def run(pieces: list[bytes]) -> tuple[list[bytes], str | None]:
        framer = StreamFramer(max_size=2000)
        out: list[bytes] = []
        try:
            for piece in pieces:
                out.extend(framer.feed(piece))
        except ParseError as error:
            assert_reason_phrase(error.reason)
            return out, error.reason
        return out, None

    whole, chunked = run([data]), run(chunks)
    assert chunked == whole
    # Nothing is lost or invented: the stream is the messages, in order, between CRLFs.
    at = 0
    for message in whole[0]:
        while data[at : at + 1] in (b"\r", b"\n"):
            at += 1
        assert data.startswith(message, at)
        at += len(message)
        check_parse(message, stream=True)


@pytest.mark.parametrize(
    "text",
    [
        "SIP / 2.0 / UDP host.example:5070;branch=z9hG4bKx",
        "SIP/ 2.0 /UDP  host.example:5070 ;branch=z9hG4bKx",
        " sip/2.0/udp host.example:5070;branch=z9hG4bKx",
    ],
)
def test_via_with_white_space_around_slashes_is_read(text: str) -> None:
    """§25.1: SLASH is SWS "/" SWS, so a sent-protocol may be spaced out."""
    via = parse_via(text)
    assert (via.transport, via.host, via.port, via.branch) == (
        "UDP",
        "host.example",
        5070,
        "z9hG4bKx",
    )
