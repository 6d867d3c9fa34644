"""SIP/SIPS URIs, name-addrs and comma lists (RFC 3261 §19.1, §20.10, §7.3.1)."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sipha import uri
from sipha.uri import (
    URI,
    NameAddr,
    URIError,
    format_host_port,
    name_addr_tag,
    parse_name_addr,
    parse_uri,
    split_comma_list,
    split_host_port,
)

# -- parse_uri ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("sip:biloxi.com", URI("sip", None, "biloxi.com")),
        ("sip:bob@biloxi.com", URI("sip", "bob", "biloxi.com")),
        ("sip:bob@biloxi.com:5070", URI("sip", "bob", "biloxi.com", 5070)),
        # The password stays part of the user: routing never needs it apart.
        (
            "sip:alice:secretword@atlanta.com;transport=tcp",
            URI("sip", "alice:secretword", "atlanta.com", None, {"transport": "tcp"}),
        ),
        (
            "sips:alice@atlanta.com?subject=project%20x&priority=urgent",
            URI("sips", "alice", "atlanta.com", None, {}, "subject=project%20x&priority=urgent"),
        ),
        (
            "sip:+1-212-555-1212:1234@gateway.com;user=phone",
            URI("sip", "+1-212-555-1212:1234", "gateway.com", None, {"user": "phone"}),
        ),
        # §19.1.1: ';' is legal in the user part, before the '@'.
        ("sip:alice;day=tuesday@atlanta.com", URI("sip", "alice;day=tuesday", "atlanta.com")),
        (
            "sip:atlanta.com;method=REGISTER?to=alice%40atlanta.com",
            URI("sip", None, "atlanta.com", None, {"method": "REGISTER"}, "to=alice%40atlanta.com"),
        ),
        ("sip:p1.example.com;lr", URI("sip", None, "p1.example.com", None, {"lr": None})),
        (
            "sip:proxy;lr;maddr=192.0.2.1;transport=UDP",
            URI("sip", None, "proxy", None, {"lr": None, "maddr": "192.0.2.1", "transport": "UDP"}),
        ),
        ("sip:[2001:db8::1]", URI("sip", None, "2001:db8::1")),
        (
            "sip:bob@[2001:db8::1]:5070;transport=tcp",
            URI("sip", "bob", "2001:db8::1", 5070, {"transport": "tcp"}),
        ),
        # Scheme, host and parameter names are case-insensitive; the user is not (§19.1.4).
        (
            "SIP:Bob@BiLoxi.COM;Transport=TCP",
            URI("sip", "Bob", "biloxi.com", None, {"transport": "TCP"}),
        ),
        ("  sip:bob@biloxi.com  ", URI("sip", "bob", "biloxi.com")),
        ("sip:bob@192.0.2.4:5060", URI("sip", "bob", "192.0.2.4", 5060)),
    ],
)
def test_parse_uri(text: str, expected: URI) -> None:
    assert parse_uri(text) == expected


@pytest.mark.parametrize(
    ("text", "transport", "port", "loose"),
    [
        ("sip:a.example.com", "udp", 5060, False),
        ("sips:a.example.com", "tls", 5061, False),
        ("sip:a.example.com;transport=tcp", "tcp", 5060, False),
        ("sip:a.example.com;transport=TLS", "tls", 5061, False),
        ("sips:a.example.com;transport=tcp", "tcp", 5061, False),
        ("sip:a.example.com:5080;lr", "udp", 5080, True),
        ("sips:a.example.com:5081;lr=on", "tls", 5081, True),
        ("sip:a.example.com;transport", "udp", 5060, False),
    ],
)
def test_uri_transport_port_and_lr(text: str, transport: str, port: int, loose: bool) -> None:
    """Defaults of §18.1.1 and §19.1.2: udp/5060 for sip, tls/5061 for sips."""
    uri = parse_uri(text)
    assert uri.transport == transport
    assert uri.effective_port == port
    assert uri.loose_router is loose


@pytest.mark.parametrize(
    "text",
    [
        "sip:bob@biloxi.com",
        "sips:alice:pw@atlanta.com:5061;transport=tcp;lr?subject=x",
        "sip:[2001:db8::1]:5060;maddr=[2001:db8::2]",
        "sip:alice;day=tuesday@atlanta.com",
        "sip:host;flag;x=1",
    ],
)
def test_uri_str_round_trip(text: str) -> None:
    assert str(parse_uri(text)) == text


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("tel:+1-201-555-0123", "unsupported URI scheme 'tel'"),
        ("http://example.com/", "unsupported URI scheme 'http'"),
        ("mailto:bob@biloxi.com", "unsupported URI scheme 'mailto'"),
        ("biloxi.com", "no scheme"),
        ("", "no scheme"),
        ("sip:", "bad host ''"),
        ("sip:bob@", "bad host ''"),
        ("sip:bob@:5060", "bad host ''"),
        ("sip:bob@bi<loxi.com", "bad host"),
        ("sip:biloxi.com:", "empty port"),
        ("sip:biloxi.com:0", "bad port '0'"),
        ("sip:biloxi.com:65536", "bad port '65536'"),
        ("sip:biloxi.com:50x", "bad port '50x'"),
        ("sip:biloxi.com:-1", "bad port '-1'"),
        ("sip:2001:db8::1", "bad port"),
        ("sip:[2001:db8::1", "unterminated IPv6 reference"),
        ("sip:[2001:db8::g]", "bad IPv6 address '2001:db8::g'"),
        ("sip:[192.0.2.1]", "bad IPv6 address"),
        ("sip:[2001:db8::1]5060", "junk after IPv6 reference"),
        # Digits outside ASCII pass str.isdigit() but are no port.
        ("sip:biloxi.com:\u0665\u0660\u0666\u0660", "bad port"),
        ("sip:biloxi.com:\u00b2", "bad port"),
    ],
)
def test_parse_uri_errors(text: str, message: str) -> None:
    with pytest.raises(URIError, match=message):
        parse_uri(text)


def test_uri_error_messages_are_bounded() -> None:
    """An error quotes a short excerpt of the input, never all of it."""
    with pytest.raises(URIError) as info:
        parse_uri("sip:[" + "1" * 10_000)
    assert len(str(info.value)) < 200


# -- split_host_port ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("example.com", ("example.com", None)),
        ("Example.COM:5060", ("example.com", 5060)),
        ("192.0.2.1:1", ("192.0.2.1", 1)),
        ("192.0.2.1:65535", ("192.0.2.1", 65535)),
        ("[2001:db8::1]", ("2001:db8::1", None)),
        ("[2001:db8::1]:5061", ("2001:db8::1", 5061)),
        ("[::1]:5060", ("::1", 5060)),
    ],
)
def test_split_host_port(text: str, expected: tuple[str, int | None]) -> None:
    assert split_host_port(text) == expected


@pytest.mark.parametrize(
    ("host", "port", "expected"),
    [
        ("example.com", None, "example.com"),
        ("example.com", 5060, "example.com:5060"),
        ("2001:db8::1", None, "[2001:db8::1]"),
        ("2001:db8::1", 5060, "[2001:db8::1]:5060"),
    ],
)
def test_format_host_port(host: str, port: int | None, expected: str) -> None:
    assert format_host_port(host, port) == expected
    assert split_host_port(expected) == (host, port)


# -- parse_name_addr ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("<sip:bob@biloxi.com>", NameAddr("", "sip:bob@biloxi.com", {})),
        ("Bob <sip:bob@biloxi.com>", NameAddr("Bob", "sip:bob@biloxi.com", {})),
        (
            '"Bob" <sips:bob@biloxi.com>;tag=a6c85cf',
            NameAddr('"Bob"', "sips:bob@biloxi.com", {"tag": "a6c85cf"}),
        ),
        (
            "Alice Liddell <sip:alice@atlanta.com>;tag=1928301774",
            NameAddr("Alice Liddell", "sip:alice@atlanta.com", {"tag": "1928301774"}),
        ),
        # URI parameters stay inside the brackets, header parameters outside.
        ("<sip:p1.example.com;lr>", NameAddr("", "sip:p1.example.com;lr", {})),
        (
            "<sip:alice@pc33.atlanta.com;transport=tcp>;expires=3600;q=0.7",
            NameAddr(
                "", "sip:alice@pc33.atlanta.com;transport=tcp", {"expires": "3600", "q": "0.7"}
            ),
        ),
        # Quoted display names may hold ',', '<', '>', ';' and escaped quotes.
        (
            '"Doe, John" <sip:john@example.com>;tag=x',
            NameAddr('"Doe, John"', "sip:john@example.com", {"tag": "x"}),
        ),
        (
            '"a<b>c" <sip:c@example.com>;tag=1',
            NameAddr('"a<b>c"', "sip:c@example.com", {"tag": "1"}),
        ),
        (
            '"<sip:fake@evil.example>" <sip:real@example.com>',
            NameAddr('"<sip:fake@evil.example>"', "sip:real@example.com", {}),
        ),
        (
            r'"J Rosenberg \"<\"" <sip:jdrosen@example.com>;tag=98asjd8',
            NameAddr(r'"J Rosenberg \"<\""', "sip:jdrosen@example.com", {"tag": "98asjd8"}),
        ),
        # §20.10: without brackets the first ';' starts the header parameters.
        ("sip:bob@biloxi.com;tag=1", NameAddr("", "sip:bob@biloxi.com", {"tag": "1"}, False)),
        ("sip:bob@biloxi.com ; tag = 1", NameAddr("", "sip:bob@biloxi.com", {"tag": "1"}, False)),
        ("tel:+12015550123;tag=9", NameAddr("", "tel:+12015550123", {"tag": "9"}, False)),
        ("  <sip:x@y>  ;Tag=Z", NameAddr("", "sip:x@y", {"tag": "Z"})),
    ],
)
def test_parse_name_addr(text: str, expected: NameAddr) -> None:
    assert parse_name_addr(text) == expected


@pytest.mark.parametrize(
    ("text", "tag"),
    [
        ("<sip:bob@biloxi.com>", None),
        ("<sip:bob@biloxi.com;tag=inside-uri>", None),
        ("<sip:bob@biloxi.com>;tag=314159", "314159"),
        ("sip:bob@biloxi.com;tag=314159", "314159"),
        ('"tag=no" <sip:bob@biloxi.com>', None),
    ],
)
def test_name_addr_tag(text: str, tag: str | None) -> None:
    assert parse_name_addr(text).tag == tag


@pytest.mark.parametrize(
    "text",
    [
        "<sip:bob@biloxi.com>",
        '"Bob, B." <sip:bob@biloxi.com>;tag=1',
        "Bob <sip:bob@biloxi.com;lr>;expires=60;flag",
        "sip:bob@biloxi.com;tag=1",
    ],
)
def test_name_addr_str_round_trip(text: str) -> None:
    assert str(parse_name_addr(text)) == text


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("<sip:bob@biloxi.com", "unterminated '<'"),
        ('"Bob <sip:bob@biloxi.com>', "unterminated quoted"),
        ("<>", "no URI"),
        ("Bob <biloxi.com>", "no URI"),
        ("", "no URI"),
        (";tag=1", "no URI"),
        ("bob", "no URI"),
    ],
)
def test_parse_name_addr_errors(text: str, message: str) -> None:
    with pytest.raises(URIError, match=message):
        parse_name_addr(text)


def test_name_addr_parsed_uri() -> None:
    uri = parse_name_addr('"Bob" <sip:bob@[2001:db8::5]:5070;transport=tcp>;tag=1').parsed_uri()
    assert uri == URI("sip", "bob", "2001:db8::5", 5070, {"transport": "tcp"})
    with pytest.raises(URIError, match="unsupported URI scheme 'tel'"):
        parse_name_addr("<tel:+12015550123>").parsed_uri()


# -- split_comma_list -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("", [""]),
        ("a", ["a"]),
        ("  a  ", ["a"]),
        ("a, b,c", ["a", "b", "c"]),
        ("a,,b, ,", ["a", "b"]),
        (
            "SIP/2.0/UDP a;branch=1, SIP/2.0/TCP b:5060;branch=2",
            ["SIP/2.0/UDP a;branch=1", "SIP/2.0/TCP b:5060;branch=2"],
        ),
        ('"Doe, John" <sip:j@x>, <sip:k@y>', ['"Doe, John" <sip:j@x>', "<sip:k@y>"]),
        ('"a \\", b" <sip:j@x>, c', ['"a \\", b" <sip:j@x>', "c"]),
        ("<sip:a@x?h=1,2>, <sip:b@y>", ["<sip:a@x?h=1,2>", "<sip:b@y>"]),
        ('"<", <sip:a@x>', ['"<"', "<sip:a@x>"]),  # a quoted '<' opens no brackets
        ("x>, y", ["x>", "y"]),  # a stray '>' does not hide the next comma
        ('"unterminated, quote', ['"unterminated, quote']),
    ],
)
def test_split_comma_list(value: str, expected: list[str]) -> None:
    assert split_comma_list(value) == expected


# -- fast paths -----------------------------------------------------------------------
# The usual shapes take one regex match; everything else takes the general code.
# Both must give the same result, or the same error, for every input.

_NEVER = re.compile(r"(?!)")
_FAST_PATHS = ("_PLAIN_URI", "_PLAIN_TAGGED")


def outcome(parse: Callable[[str], Any], text: str) -> object:
    try:
        return parse(text)
    except URIError as exc:
        return f"URIError: {exc}"


def general_outcome(parse: Callable[[str], Any], text: str) -> object:
    """What ``parse`` gives with every fast path of sipha.uri turned off."""
    with pytest.MonkeyPatch.context() as patch:
        for name in _FAST_PATHS:
            patch.setattr(uri, name, _NEVER)
        return outcome(parse, text)


def assert_same_as_general(
    parse: Callable[[str], Any], fast_path: re.Pattern[str], text: str, plain: bool
) -> None:
    assert (fast_path.fullmatch(text) is not None) == plain
    assert outcome(parse, text) == general_outcome(parse, text)


@pytest.mark.parametrize(
    ("text", "plain"),
    [
        ("sip:fs@127.0.0.1:5071", True),
        ("sip:127.0.0.1:5060;lr;ftag=from-1;did=abc.1", True),
        ("sips:Bob@Biloxi.COM;Transport=TCP", True),
        ("sip:@h", True),
        ("sip:h;lr ", True),
        ("sip:h; LR ;x = 1", True),
        ("SIP:h", False),
        (" sip:h", False),
        ("sip:h ", False),
        ("sip:h:65536", False),
        ("sip:h:0;lr", False),
        ("sip:h:", False),
        ("sip:u@[2001:db8::1]:5060;lr", False),
        ("sip:alice:secret@h", False),
        ("sip:u;x=1@h", False),
        ("sip:a@b@c", False),
        ("sip:h;x=a@b", False),
        ("sip:u@h;x=a@[::1]", False),
        ("sip:h?subject=x", False),
        ("sip:h;lr?subject=x@y", False),
        ("tel:+1555", False),
    ],
)
def test_parse_uri_fast_path(text: str, plain: bool) -> None:
    assert_same_as_general(parse_uri, uri._PLAIN_URI, text, plain)


@pytest.mark.parametrize(
    ("text", "plain"),
    [
        ('"caller" <sip:alice@192.0.2.10:5062>;tag=from-1', True),
        ("<sip:service@127.0.0.1:5060>", True),
        ("Bob <sip:bob@h>;tag=1", True),
        ('"a<b;tag=2>" <sip:x@y>;tag=3', True),
        ('"tag=no" <sip:bob@biloxi.com>', True),
        ("<sip:bob@h;tag=inside-uri>", True),
        ("<sip:x>;tag=a=b", True),
        ("< sip:x >;tag=1", True),
        ('"a\\"<b" <sip:x>;tag=1', False),
        (' "a<b:" <sip>;tag=1', False),
        ('"unterminated <sip:x>;tag=1', False),
        ("<sip:x>;TAG=1", False),
        ("<sip:x> ; tag = 1", False),
        ("<sip:x>;tag=1;tag=2", False),
        ("<sip:x>;tag=1;x", False),
        ("<sip:x>;tag=", False),
        ("<sip:x>;tag", False),
        ("<sip:x>;tag=1 ", False),
        ("<sip:x", False),
        ("<x>;tag=1", False),
        ("sip:bob@h;tag=1", False),
        ("<sip:a>;tag=1, <sip:b>;tag=2", False),
    ],
)
def test_name_addr_tag_fast_path(text: str, plain: bool) -> None:
    assert_same_as_general(name_addr_tag, uri._PLAIN_TAGGED, text, plain)
    assert outcome(name_addr_tag, text) == outcome(lambda t: parse_name_addr(t).tag, text)


_TRICKY = st.lists(
    st.sampled_from([*'"<>;=:@?[] \t\\,.aZ09', "sip:", "tag", "TAG", "lr", "::1", "5060", "65536"]),
    max_size=20,
).map("".join)


@settings(max_examples=500, deadline=None)
@given(text=st.one_of(_TRICKY, _TRICKY.map("sip:".__add__), _TRICKY.map("<sip:".__add__)))
def test_fast_paths_agree_with_general_code(text: str) -> None:
    for parse in (parse_uri, name_addr_tag):
        assert outcome(parse, text) == general_outcome(parse, text)
    assert outcome(name_addr_tag, text) == outcome(lambda t: parse_name_addr(t).tag, text)


def test_user_part_may_hold_a_question_mark_and_headers_still_follow_the_host() -> None:
    """§25.1 user-unreserved includes '?': only a '?' after the host starts headers."""
    assert parse_uri("sip:alice?x@atlanta.com;lr?subject=hi") == URI(
        "sip", "alice?x", "atlanta.com", None, {"lr": None}, "subject=hi"
    )


def test_ipv6_addresses_have_one_spelling() -> None:
    assert split_host_port("[2001:DB8:0:0::1]:5060") == ("2001:db8::1", 5060)
    assert parse_uri("sip:[2001:DB8::1]").host == parse_uri("sip:[2001:db8:0::1]").host
