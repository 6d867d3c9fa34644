"""SIP/SIPS URIs, name-addrs and comma lists (RFC 3261 §19.1, §20.10, §7.3.1)."""

from __future__ import annotations

import contextlib
import re
import time
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
    check_name_addrs,
    check_request_uri,
    comma_items,
    format_host_port,
    name_addr_tag,
    name_addr_uri,
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
        ("sip:bob@192.0.2.4:5060", URI("sip", "bob", "192.0.2.4", 5060)),
        # §25.1: escapes anywhere, the characters of user-unreserved and telephone-subscriber.
        (
            "sip:%61lice%20x@h.example;%6C%72;k%65y=v%61l",
            URI("sip", "%61lice%20x", "h.example", None, {"%6c%72": None, "k%65y": "v%61l"}),
        ),
        ("sip:*97#@pbx.example", URI("sip", "*97#", "pbx.example")),
        ("sip:a&b=c+d$e,f;g?h/i@h", URI("sip", "a&b=c+d$e,f;g?h/i", "h")),
        ("sip:u:p&w=+$,d@h", URI("sip", "u:p&w=+$,d", "h")),
        ("sip:example.com.", URI("sip", None, "example.com.")),
        ("sip:a-b.c--d.example", URI("sip", None, "a-b.c--d.example")),
        ("sip:h;p=[x]/y:z&+$", URI("sip", None, "h", None, {"p": "[x]/y:z&+$"})),
        ("sip:h?a=b&c=&d=[e]/f?g:h+$", URI("sip", None, "h", None, {}, "a=b&c=&d=[e]/f?g:h+$")),
        # RFC 5118 §4.3, §4.9: a port-like group inside the brackets is the address's.
        ("sip:[2001:db8::10:5070]", URI("sip", None, "2001:db8::10:5070")),
        ("sip:[::ffff:192.0.2.40]:5060", URI("sip", None, "::ffff:c000:228", 5060)),
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
    ("text", "problem"),
    [
        ("sip:bob@biloxi.com", None),
        ("SIPS:bob@biloxi.com:5061;transport=tcp", None),
        ("sip:[2001:db8::1]:5060", None),
        ("tel:+1-201-555-0123", None),  # an absoluteURI: the core answers 416
        ("soap.beep://192.0.2.1:3002", None),
        ("urn:service:sos", None),
        # §19.1.1: no headers in a Request-URI (RFC 4475 §3.1.2.11).
        ("sip:bob@biloxi.com?subject=x", "headers not allowed"),
        ("sip:bob@biloxi.com:99999", "bad port '99999'"),
        ("sip:bob@[2001:db8:::1]", "bad IPv6 address"),
        ("sip:2001:db8::10", "IPv6 address without brackets"),  # RFC 5118 §4.2
        ("<sip:bob@biloxi.com>", "URI in <>"),  # RFC 4475 §3.1.2.7
        ("tel:+1 555", "white space in URI"),
        ("tel:<x>", "bad URI 'tel:<x>'"),
        ("1tel:x", "bad URI scheme '1tel'"),
        ("nothing", "no scheme"),
    ],
)
def test_check_request_uri(text: str, problem: str | None) -> None:
    if problem is None:
        check_request_uri(text)
    else:
        with pytest.raises(URIError, match=re.escape(problem)):
            check_request_uri(text)


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
        ("sip:biloxi.com:" + "5" * 5000, "bad port"),  # int() refuses thousands of digits
        ("sip:2001:db8::1", "IPv6 address without brackets"),
        # §25.1 hostname, userinfo, parameters, headers; white space and <> anywhere.
        ("sip:-biloxi.com", "bad host '-biloxi.com'"),
        ("sip:biloxi-.com", "bad host 'biloxi-.com'"),
        ("sip:biloxi..com", "bad host 'biloxi..com'"),
        ("sip:biloxi.123", "bad host 'biloxi.123'"),
        ("sip:bi_loxi.com", "bad host 'bi_loxi.com'"),
        ("sip:192.0.2.256", "bad host '192.0.2.256'"),
        ("sip:@biloxi.com", "bad user part ''"),
        ("sip:a@b@c", "more than one '@'"),
        ("sip:b%zzob@biloxi.com", "bad user part 'b%zzob'"),
        ("sip:bob<@biloxi.com", "bad user part"),
        ("sip:bob@biloxi.com;", "empty URI parameter"),
        ("sip:bob@biloxi.com;;lr", "empty URI parameter"),
        ("sip:bob@biloxi.com;lr=", "bad URI parameter 'lr='"),
        ("sip:bob@biloxi.com?", "bad URI headers ''"),
        ("sip:bob@biloxi.com?a", "bad URI headers 'a'"),
        ("sip:bob@biloxi.com; lr", "white space in URI"),
        (" sip:bob@biloxi.com", "white space in URI"),
        ("<sip:bob@biloxi.com>", "URI in <>"),
        ("s<ip:bob@biloxi.com", "bad URI scheme 's<ip'"),
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
        # §25.1 display-name = *(token LWS) / quoted-string; it may touch the '<' (RFC 4475
        # §3.1.1.6). Parameter values: token, host or quoted-string.
        ("caller<sip:x@y>", NameAddr("caller", "sip:x@y", {})),
        ("a.b-c! d%e\t*f <sip:x@y>", NameAddr("a.b-c! d%e\t*f", "sip:x@y", {})),
        (
            '<sip:x@y>;+sip.instance="<urn:uuid:1;2>";q=0.5;v6=[2001:db8::1]',
            NameAddr(
                "",
                "sip:x@y",
                {"+sip.instance": '"<urn:uuid:1;2>"', "q": "0.5", "v6": "[2001:db8::1]"},
            ),
        ),
        ('"\u00e9\\\x01" <sip:x@y>', NameAddr('"\u00e9\\\x01"', "sip:x@y", {})),
        ("<urn:service:sos>", NameAddr("", "urn:service:sos", {})),
        ("<sip:x@y?Route=%3Csip:z%3E>", NameAddr("", "sip:x@y?Route=%3Csip:z%3E", {})),
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
        # RFC 4475 §3.1.2.13-15 and §25.1's rules for name-addr and addr-spec.
        ("sip:x@y?Route=%3Csip:z%3E", "URI with '\\?' or ',' outside <>"),
        ("Bob < sip:bob@biloxi.com >", "white space inside <>"),
        ("Bob <sip:bob@biloxi.com >", "white space inside <>"),
        ("Doe, John <sip:j@x>", "display name neither tokens nor quoted"),
        ("\u00e9 <sip:j@x>", "display name neither tokens nor quoted"),
        ('"a"b <sip:j@x>', "no <URI> after the display name"),
        ('"a\\\u00e9" <sip:j@x>', "display name neither tokens nor quoted|unterminated"),
        ('"a\x01" <sip:j@x>', "unterminated quoted display name"),
        ("<sip:j@x>;;tag=1", "empty parameter"),
        ("<sip:j@x>;tag=1;", "empty parameter"),
        ("<sip:j@x>;tag=a b", "bad parameter 'tag=a b'"),
        ("<sip:j@x>;x=<y>", "bad parameter 'x=<y>'"),
        ("<sip:j@x> junk", "junk before the parameters 'junk'"),
        ("<sip:j@-x>", "bad host '-x'"),
        ("<sip:j@x:port>", "bad port 'port'"),
        ("<tel:+1 555>", "white space in URI"),
        ("<tel:<1>>", "unterminated '<'|bad URI"),
    ],
)
def test_parse_name_addr_errors(text: str, message: str) -> None:
    with pytest.raises(URIError, match=message):
        parse_name_addr(text)


@pytest.mark.parametrize(
    ("value", "bracketed", "problem"),
    [
        ("<sip:p1.example.com;lr>, <sip:p2.example.com;lr>", True, None),
        ('"Proxy, one" <sip:p1.example.com;lr>;x=1', True, None),
        ("<sip:a@h>;expires=60, sip:b@h;q=0.5, <tel:+1555>", False, None),
        ("sip:p1.example.com;lr", True, "URI without <> in 'sip:p1.example.com;lr'"),
        ("<sip:a@h>, , <sip:b@h>", False, "empty list element"),
        ("<sip:a@h>,", False, "empty list element"),
        ("", False, "empty list element"),
        ("<sip:a@h>;;", False, "empty parameter"),
        ("<sip:a b@h>", False, "white space in URI"),
    ],
)
def test_check_name_addrs(value: str, bracketed: bool, problem: str | None) -> None:
    """Contact, Route and Record-Route: each element a name-addr (an addr-spec for Contact)."""
    if problem is None:
        check_name_addrs(value, bracketed=bracketed)
    else:
        with pytest.raises(URIError, match=re.escape(problem)):
            check_name_addrs(value, bracketed=bracketed)


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
    if "," in value:  # (without one, the value is its own single element)
        assert [item.strip() for item in comma_items(value) if item.strip()] == expected


@pytest.mark.parametrize(
    ("value", "items"),
    [
        ("", [""]),
        ("a", ["a"]),
        (",", ["", ""]),
        ("a,,b, ", ["a", "", "b", " "]),
        ('"x,y", <sip:a,b@h>,', ['"x,y"', " <sip:a,b@h>", ""]),
        ('"open, <', ['"open, <']),
    ],
)
def test_comma_items_keep_the_empty_ones(value: str, items: list[str]) -> None:
    """RFC 4475 §3.1.2.1: an empty element is a defect, so it must be seen."""
    assert comma_items(value) == items


# -- fast paths -----------------------------------------------------------------------
# The usual shapes take small regex matches and a set of URIs already seen; everything
# else takes the grammar. Both must give the same result, or the same error, for every
# input.

_NEVER = re.compile(r"(?!)")
_FAST_PATHS = ("_PLAIN_SIP_URI", "_PLAIN_NAME_ADDR", "_PLAIN_TAGGED")


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
        patch.setattr(uri, "_PLAIN_URIS", {})
        patch.setattr(uri, "_TAGGED_VALUES", {})
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
        ("sip:a-b.c--d.example:65535", True),
        ("sip:@h", False),
        ("sip:h;lr ", False),
        ("SIP:h", False),
        (" sip:h", False),
        ("sip:h:65536", False),
        ("sip:h:05060", False),
        ("sip:h:0;lr", False),
        ("sip:h:", False),
        ("sip:h.example.", False),
        ("sip:%61@h", False),
        ("sip:u@[2001:db8::1]:5060;lr", False),
        ("sip:alice:secret@h", False),
        ("sip:u;x=1@h", False),
        ("sip:a@b@c", False),
        ("sip:h;x=a@b", False),
        ("sip:h?subject=x", False),
        ("tel:+1555", False),
    ],
)
def test_parse_uri_fast_path(text: str, plain: bool) -> None:
    assert_same_as_general(parse_uri, uri._PLAIN_SIP_URI, text, plain)
    assert_same_as_general(check_request_uri, uri._PLAIN_SIP_URI, text, plain)


@pytest.mark.parametrize(
    ("text", "plain"),
    [
        ('"caller" <sip:alice@192.0.2.10:5062>;tag=from-1', True),
        ("<sip:service@127.0.0.1:5060>", True),
        ("Bob <sip:bob@h>;tag=1", True),
        ("Bob<sip:bob@h>;tag=1", True),
        ('"a<b;tag=2>" <sip:x@y>;tag=3', True),
        ('"tag=no" <sip:bob@biloxi.com>', True),
        ("<sip:bob@h;tag=inside-uri>", True),
        # The shape is plain, the URI is not: the grammar decides.
        ("< sip:x >;tag=1", True),
        ("<x>;tag=1", True),
        ("<tel:+1555>;tag=1", True),
        ("<sip:x>;tag=a=b", False),
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
        ("sip:bob@h;tag=1", False),
        ("Caller, The <sip:x>", False),
        ("<sip:a>;tag=1, <sip:b>;tag=2", False),
    ],
)
def test_name_addr_tag_fast_path(text: str, plain: bool) -> None:
    assert_same_as_general(name_addr_tag, uri._PLAIN_TAGGED, text, plain)
    assert_tag_is_parse_name_addrs(text)


def assert_tag_is_parse_name_addrs(text: str) -> None:
    """A tag name_addr_tag accepts is the one parse_name_addr reads (which checks no tag)."""
    tag = outcome(name_addr_tag, text)
    if not (isinstance(tag, str) and tag.startswith("URIError")):
        assert tag == parse_name_addr(text).tag


def contacts(text: str) -> None:
    check_name_addrs(text, bracketed=False)


def routes(text: str) -> None:
    check_name_addrs(text, bracketed=True)


_TRICKY = st.lists(
    st.sampled_from(
        [
            *'"<>;=:@?[] \t\\,.%aZ09-',
            "sip:",
            "sips:",
            "tel:",
            "tag",
            "TAG",
            "lr",
            "::1",
            "%41",
            "5060",
            "65536",
            "h.example",
            "192.0.2.1",
            "[2001:db8::1]",
        ]
    ),
    max_size=20,
).map("".join)


@settings(max_examples=500, deadline=None)
@given(text=st.one_of(_TRICKY, _TRICKY.map("sip:".__add__), _TRICKY.map("<sip:".__add__)))
def test_fast_paths_agree_with_general_code(text: str) -> None:
    parsers = (parse_uri, check_request_uri, name_addr_tag, name_addr_uri, parse_name_addr)
    for parse in (*parsers, contacts, routes):
        general = general_outcome(parse, text)
        assert outcome(parse, text) == general
        assert outcome(parse, text) == general  # now from what was remembered
    assert_tag_is_parse_name_addrs(text)


def test_uris_seen_are_remembered_within_bounds(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only plain SIP URIs that passed are kept, not long ones, and never beyond the limit."""
    monkeypatch.setattr(uri, "_PLAIN_URIS", {})
    for n in range(uri.MEMO_LIMIT + 10):
        check_request_uri(f"sip:user{n}@h.example")
    assert 0 < len(uri._PLAIN_URIS) <= uri.MEMO_LIMIT
    long = f"sip:{'u' * 300}@h.example"
    check_request_uri(long)
    assert long not in uri._PLAIN_URIS
    for text in ("sip:u@-h", "sip:u@h?x=y", "sips:U@[::1]"):
        with contextlib.suppress(URIError):
            check_request_uri(text)
        assert text not in uri._PLAIN_URIS


@pytest.mark.parametrize(
    "text",
    [
        "sip:" + "a." * 100_000 + "1",
        "sip:" + "a" * 200_000 + ":",
        "sip:h;" + "a=b;" * 50_000 + ";",
        "sip:" + "%4" * 100_000,
        "<" + ":" * 200_000,
        "a " * 100_000 + "<",
        '"' + "\\a" * 100_000,
        "<sip:h>" + " ;a = b" * 30_000 + ";",
        "sip:" + "1." * 100_000 + "a",
    ],
)
def test_no_input_makes_the_grammar_backtrack_for_long(text: str) -> None:
    """Linear time: a quadratic pattern would take seconds on these, a linear one milliseconds."""
    started = time.perf_counter()
    for parse in (parse_uri, check_request_uri, name_addr_tag, contacts, routes, split_comma_list):
        outcome(parse, text)
    assert time.perf_counter() - started < 1.0


def test_user_part_may_hold_a_question_mark_and_headers_still_follow_the_host() -> None:
    """§25.1 user-unreserved includes '?': only a '?' after the host starts headers."""
    assert parse_uri("sip:alice?x@atlanta.com;lr?subject=hi") == URI(
        "sip", "alice?x", "atlanta.com", None, {"lr": None}, "subject=hi"
    )


def test_ipv6_addresses_have_one_spelling() -> None:
    assert split_host_port("[2001:DB8:0:0::1]:5060") == ("2001:db8::1", 5060)
    assert parse_uri("sip:[2001:DB8::1]").host == parse_uri("sip:[2001:db8:0::1]").host
