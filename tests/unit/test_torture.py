"""RFC 4475 and RFC 5118 cases through the core: what sipha answers to each.

The messages are sipha's own, each written from RFC 3261 §25's grammar to break
(or, for the valid cases, to stretch) the rule its RFC 4475 or RFC 5118 case
is about; none is copied from the RFCs. Every one goes to the sans-IO core as
a datagram and as a TCP stream, framed as the transport frames one: a framing
error is answered if the request can be, then the connection is closed.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from proxykit import TCP_IN, UDP_IN, Sent, make_proxy, reply

from sipha.message import ParseError, StreamFramer, parse_message
from sipha.proxy import ProxyCore
from sipha.transaction import Peer

#: The caller, at the address its Via names: answers go there over UDP and TCP alike.
UDP_CALLER = Peer("udp", "192.0.2.20", 5062)
TCP_CALLER = Peer("tcp", "192.0.2.20", 5062)

#: The head sipha's own messages start from, by header: an INVITE a UA could send.
BASE = {
    "via": "Via: SIP/2.0/UDP 192.0.2.20:5062;branch=z9hG4bK-torture.1",
    "max-forwards": "Max-Forwards: 70",
    "from": 'From: "Caller" <sip:caller@example.net>;tag=ab12',
    "to": "To: <sip:bob@example.com>",
    "call-id": "Call-ID: torture.1@192.0.2.20",
    "cseq": "CSeq: 1 {method}",
    "contact": "Contact: <sip:caller@192.0.2.20:5062>",
}


def request(
    *extra: str,
    start: str = "INVITE sip:bob@example.com SIP/2.0",
    body: bytes = b"",
    length: str | None = None,
    **replace: str | None,
) -> bytes:
    """A request from BASE after its ``start`` line: whole header lines replaced (by key,
    '-' as '_'; None drops one), ``extra`` lines added, and a Content-Length for
    ``body`` unless ``length`` says."""
    method = start.split()[0] if start.split() else ""
    lines = [start]
    replace = {key.rstrip("_").replace("_", "-"): line for key, line in replace.items()}
    for key, line in BASE.items():
        new = replace.get(key, line.format(method=method))
        if new is not None:
            lines.append(new)
    lines.extend(extra)
    lines.append(f"Content-Length: {len(body) if length is None else length}")
    return "".join(f"{line}\r\n" for line in lines).encode("utf-8", "surrogateescape") + (
        b"\r\n" + body
    )


def response(start: str, *vias: str, cseq: str = "CSeq: 1 INVITE") -> bytes:
    lines = [start, *(f"Via: {via}" for via in vias), BASE["from"], f"{BASE['to']};tag=cd34"]
    lines += [BASE["call-id"], cseq, "Content-Length: 0"]
    return "".join(f"{line}\r\n" for line in lines).encode() + b"\r\n"


SDP_V6 = (
    b"v=0\r\no=caller 1 1 IN IP6 2001:db8::20\r\ns=-\r\nc=IN IP6 2001:db8::20\r\n"
    b"t=0 0\r\nm=audio 6000 RTP/AVP 0\r\nm=audio 6002 RTP/AVP 0\r\nc=IN IP4 192.0.2.20\r\n"
)
MULTIPART = (
    b"--boundary42\r\nContent-Type: application/sdp\r\n\r\nv=0\r\ns=-\r\n\r\n"
    b"--boundary42\r\nContent-Type: text/plain\r\n\r\nsee you\r\n\r\n--boundary42--\r\n"
)


@dataclass(frozen=True)
class Case:
    """One torture case: the rule at stake, sipha's message and its answer.

    ``answer`` is what the core sends, in order (a status line without
    ``SIP/2.0``, or ``relayed METHOD``), or ``dropped``; ``tcp`` overrides it
    for a stream, where a framing error also closes the connection.
    """

    section: str
    rule: str
    data: bytes
    answer: str
    tcp: str | None = None


#: A short tortuous INVITE: valid, with every kind of white space the grammar allows.
TORTUOUS = Case(
    "4475 3.1.1.1",
    "LWS, SWS, HCOLON, SLASH, SEMI, EQUAL, COMMA; folding; compact forms",
    (
        b"INVITE sip:bob@example.com;unknownparam SIP/2.0\r\n"
        b"tO  :\r\n   <sip:bob@example.com>   ;   x-p =  1\r\n"
        b'f: "A \\"quoted\\" name" <sip:caller@example.net> ; tag = ab12\r\n'
        b"MAX-forwards: 0070\r\ni: torture.1@192.0.2.20\r\n"
        b"cseq: 0001\r\n\tINVITE\r\n"
        b"v:  SIP /\r\n 2.0 / UDP\r\n   192.0.2.20 : 5062 ;\r\n branch = z9hG4bK-torture.1 ,\r\n"
        b"  SIP/2.0/TCP\tother.example.com;branch=z9hG4bKx\r\n"
        b"Subject:\r\nX-Unknown: ;;,,;;,\r\n"
        b'm: "Caller" <sip:caller@192.0.2.20:5062> ;expires = 60 , <sip:c2@192.0.2.21>\r\n'
        b"l: 0\r\n\r\n"
    ),
    "relayed INVITE",
)

CASES = [
    # -- RFC 4475 §3.1.1: valid messages, stretched --------------------------------------
    TORTUOUS,
    Case(
        "4475 3.1.1.2",
        "token (method, tag, extension name), word (Call-ID), user and password chars",
        request(
            "X-token.!%*_+`'~: \u00e9t\u00e9 \u2603",
            start="!odd-Method.42_*+`%'~ sip:1_user.~(x!y)&it's+a$/strange?,/;;*:&pass+w=1,rd!*$~_.(x)@example.com SIP/2.0",
            to='To: "ctrl \\\x07 \\\x00 \\\x7f" <sip:bob@example.com>',
            from_="From: tok1~` tok2'+_ tok3*%!.- <sip:caller@example.net>;x=\"\u0444\";tag=_t~1'+`*%!-.",
            call_id="Call-ID: odd.word%ZK-!.*_+'@word`~)(><:\\/\"][?}{",
            via="Via: SIP/2.0/UDP 192.0.2.20:5062;branch=z9hG4bK-.!%41*_+`'~",
        ),
        "405 Method Not Allowed",
    ),
    Case(
        "4475 3.1.1.3",
        "escaped (user, URI parameter names and values)",
        request(
            start="INVITE sip:sips%3Abob%40example.org@example.com SIP/2.0",
            to="To: sip:b%6Fb@example.com",
            from_="From: <sip:has%20spaces@example.net>;tag=ab12",
            contact="Contact: <sip:caller@192.0.2.20:5062;%6C%72;k%65y=v%61l%25%41>",
        ),
        "relayed INVITE",
    ),
    Case(
        "4475 3.1.1.4",
        "escaped %00 in a user part",
        request(
            start="REGISTER sip:example.com SIP/2.0",
            to="To: sip:zero-%00-zero@example.com",
            from_="From: sip:zero-%00-zero@example.com;tag=ab12",
            contact="Contact: <sip:%00@192.0.2.20>, <sip:%00%00@192.0.2.21>",
        ),
        "relayed REGISTER",
    ),
    Case(
        "4475 3.1.1.5",
        "'%' where it is no escape: in a token and a quoted string",
        request(
            "C%6Fntact: <sip:not-a-contact@192.0.2.21>",
            start="REG%49STER sip:example.com SIP/2.0",
            to='To: "%Q%49" <sip:bob@example.com>',
        ),
        "405 Method Not Allowed",
    ),
    Case(
        "4475 3.1.1.6",
        "name-addr: a display-name token touching LAQUOT",
        request(from_="From: caller<sip:caller@example.net>;tag=ab12"),
        "relayed INVITE",
    ),
    Case(
        "4475 3.1.1.7",
        "long values everywhere",
        request(
            *[f"Via: SIP/2.0/TCP hop{n}.example.com;branch=z9hG4bK{n}" for n in range(30)],
            f"X-Long: {'long ' * 800}",
            start="INVITE sip:bob@example.com SIP/2.0",
            to=f'To: "{"name " * 400}" <sip:bob@example.com>',
            from_=f"From: <sip:{'u' * 1000}@example.net>;tag={'t' * 500};{'p' * 300}={'v' * 300}",
            call_id=f"Call-ID: {'c' * 2000}",
        ),
        "relayed INVITE",
    ),
    Case(
        "4475 3.1.1.8",
        "§18.3: bytes past Content-Length end a datagram's message, begin a stream's next",
        request(body=b"v=0\r\n") + request(start="REGISTER sip:example.com SIP/2.0"),
        "relayed INVITE",
        tcp="relayed INVITE, relayed REGISTER",
    ),
    Case(
        "4475 3.1.1.9",
        "user-unreserved ';' and '=' in a user part",
        request(
            start="INVITE sip:bob;x=y%40z.example@example.com SIP/2.0",
            to="To: <sip:bob;x=y@example.com>",
        ),
        "relayed INVITE",
    ),
    Case(
        "4475 3.1.1.10",
        "other-transport tokens in Via",
        request(
            "Via: SIP/2.0/SCTP t2.example.com;branch=z9hG4bK2",
            "Via: SIP/2.0/TLS t3.example.com;branch=z9hG4bK3, SIP/2.0/NOVEL t4.example.com",
            start="INVITE sip:bob@example.com SIP/2.0",
        ),
        "relayed INVITE",
    ),
    Case(
        "4475 3.1.1.11",
        "a body with empty lines in it (multipart)",
        request(
            'Content-Type: multipart/mixed;boundary="boundary42"',
            body=MULTIPART,
        ),
        "relayed INVITE",
    ),
    # -- RFC 4475 §3.1.2: invalid messages ------------------------------------------------
    Case(
        "4475 3.1.2.1",
        "via-params: *( SEMI via-params ), no empty one; COMMA between via-parms",
        request(via="Via: SIP/2.0/UDP 192.0.2.20:5062;;branch=z9hG4bK-torture.1;,,"),
        "400 Empty Via parameter",
    ),
    Case(
        "4475 3.1.2.1",
        "contact-param: *( SEMI contact-params ), no empty one",
        request(contact="Contact: <sip:caller@192.0.2.20:5062>;;;"),
        "400 Bad Contact: empty parameter",
    ),
    Case(
        "4475 3.1.2.2",
        "Content-Length: no more than the datagram holds",
        request(body=b"v=0\r\n", length="400"),
        "400 Content-Length exceeds body",
        tcp="dropped",  # the stream waits for the rest, up to the transport's limits
    ),
    Case(
        "4475 3.1.2.3",
        "Content-Length = 1*DIGIT",
        request(body=b"v=0\r\n", length="-4"),
        "400 Bad Content-Length",
        tcp="400 Bad Content-Length, closed",
    ),
    Case(
        "4475 3.1.2.4",
        "CSeq: a 32-bit sequence number (§8.1.1.5)",
        request(
            "Expires: 100000000000000",
            cseq="CSeq: 4294967296 INVITE",
            max_forwards="Max-Forwards: 300",
        ),
        "400 Bad CSeq",
    ),
    Case(
        "4475 3.1.2.5",
        "a response with an overlarge CSeq",
        response(
            "SIP/2.0 503 Busy",
            "SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK1",
            cseq="CSeq: 99999999999 INVITE",
        ),
        "dropped",
    ),
    Case(
        "4475 3.1.2.6",
        "quoted-string: DQUOTE ... DQUOTE",
        request(to='To: "Bob <sip:bob@example.com>'),
        "400 Bad To: unterminated quoted display name in '\"Bob <sip:bob@example.com>'",
    ),
    Case(
        "4475 3.1.2.7",
        "Request-URI = SIP-URI / SIPS-URI / absoluteURI: no <>",
        request(start="INVITE <sip:bob@example.com> SIP/2.0"),
        "400 Bad Request-URI: URI in <> '<sip:bob@example.com>'",
    ),
    Case(
        "4475 3.1.2.8",
        "Request-URI: no white space in it",
        request(start="INVITE sip:bob@example.com; transport=udp SIP/2.0"),
        "400 White space in Request-URI",
    ),
    Case(
        "4475 3.1.2.9",
        "Request-Line = Method SP Request-URI SP SIP-Version CRLF: one SP",
        request(start="INVITE  sip:bob@example.com  SIP/2.0"),
        "400 Request line elements not separated by one SP",
    ),
    Case(
        "4475 3.1.2.9",
        "Request-Line: nothing before the Method",
        request(start="  INVITE sip:bob@example.com SIP/2.0"),
        "400 Leading white space in request line",
    ),
    Case(
        "4475 3.1.2.10",
        "Request-Line: nothing between SIP-Version and CRLF",
        request(start="INVITE sip:bob@example.com SIP/2.0 \t "),
        "400 Trailing white space in request line",
    ),
    Case(
        "4475 3.1.2.11",
        "§19.1.1: no headers in a Request-URI",
        request(start="INVITE sip:bob@example.com?Subject=hello%20there SIP/2.0"),
        "400 Bad Request-URI: headers not allowed",
    ),
    Case(
        "4475 3.1.2.12",
        "SIP-date: only GMT (Date is not read: liberal, as §3.1.2.12 allows)",
        request("Date: Sat, 13 Nov 2010 23:29:00 PST"),
        "relayed INVITE",
    ),
    Case(
        "4475 3.1.2.13",
        "§20.10: a URI with '?' must be in <>",
        request(
            start="REGISTER sip:example.com SIP/2.0",
            contact="Contact: sip:caller@192.0.2.20?Route=%3Csip:example.com%3E",
        ),
        "400 Bad Contact: URI with '?' or ',' outside <> in 'sip:caller@192.0.2.20?Route=%3Cs'",
    ),
    Case(
        "4475 3.1.2.14",
        "name-addr = [ display-name ] LAQUOT addr-spec RAQUOT: nothing inside <>",
        request(to="To: Bob < sip:bob@example.com >"),
        "400 Bad To: white space inside <> in 'Bob < sip:bob@example.com >'",
    ),
    Case(
        "4475 3.1.2.15",
        "display-name = *(token LWS) / quoted-string",
        request(from_="From: Caller, The <sip:caller@example.net>;tag=ab12"),
        "400 Bad From: display name neither tokens nor quoted in 'Caller, The <sip:caller@example.'",
    ),
    Case(
        "4475 3.1.2.16",
        "SIP-Version: SIP/2.0 only",
        request(start="INVITE sip:bob@example.com SIP/3.0"),
        "505 Version SIP/3.0 Not Supported",
    ),
    Case(
        "4475 3.1.2.17",
        "§8.1.1.5: the CSeq method is the request's",
        request(cseq="CSeq: 1 BYE"),
        "400 CSeq method does not match request method",
    ),
    Case(
        "4475 3.1.2.18",
        "the same with an unknown method",
        request(start="NOVEL sip:bob@example.com SIP/2.0", cseq="CSeq: 1 INVITE"),
        "400 CSeq method does not match request method",
    ),
    Case(
        "4475 3.1.2.19",
        "Status-Code = 3DIGIT",
        response("SIP/2.0 4294967499 Big", "SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK1"),
        "dropped",
    ),
    # -- RFC 4475 §3.2, §3.3, §3.4 ------------------------------------------------------
    Case(
        "4475 3.2.1",
        "§8.1.1.7: a branch is more than the magic cookie",
        request(via="Via: SIP/2.0/UDP 192.0.2.20:5062;branch=z9hG4bK"),
        "400 Bad Via branch",
    ),
    Case(
        "4475 3.3.1",
        "§8.1.1: Call-ID, From and To are mandatory",
        request(call_id=None, from_=None, to=None),
        "400 Missing Call-ID",
    ),
    Case(
        "4475 3.3.2",
        "absoluteURI of an unknown scheme",
        request(start="OPTIONS nobodyknows:opaque-stuff;x=1 SIP/2.0"),
        "416 Unsupported URI Scheme",
    ),
    Case(
        "4475 3.3.3",
        "absoluteURI of a registered scheme",
        request(start="OPTIONS soap.beep://192.0.2.30:3002 SIP/2.0"),
        "416 Unsupported URI Scheme",
    ),
    Case(
        "4475 3.3.4",
        "addr-spec = SIP-URI / SIPS-URI / absoluteURI in To, From, Contact",
        request(
            start="REGISTER sip:example.com SIP/2.0",
            to="To: isbn:1234567890",
            from_="From: <http://www.example.com>;tag=ab12",
            contact="Contact: <name:Someone_Else>",
        ),
        "relayed REGISTER",
    ),
    Case(
        "4475 3.3.5",
        "Proxy-Require: option tags sipha does not support",
        request(
            "Require: nobody-has-it",
            "Proxy-Require: no-proxy-has-it, nor-this",
            start="OPTIONS sip:bob@example.com SIP/2.0",
        ),
        "420 Bad Extension",
    ),
    Case(
        "4475 3.3.6",
        "an unknown Content-Type is the UAS's business",
        request("Content-Type: application/x-unheard-of", "Accept: text/x-none", body=b"?"),
        "relayed INVITE",
    ),
    Case(
        "4475 3.3.7",
        "an unknown Authorization scheme is the registrar's business",
        request("Authorization: Unheard realm=x, data=y", start="REGISTER sip:example.com SIP/2.0"),
        "relayed REGISTER",
    ),
    *[
        Case("4475 3.3.8", f"§7.3.1: one {name} header", data, f"400 More than one {name} header")
        for name, data in [
            ("Call-ID", request("Call-ID: torture.2@192.0.2.20")),
            ("CSeq", request("CSeq: 2 INVITE")),
            ("From", request("From: <sip:other@example.net>;tag=ef56")),
            ("To", request("To: <sip:other@example.com>")),
            ("Max-Forwards", request("Max-Forwards: 5")),
            ("Content-Type", request("Content-Type: text/plain", "Content-Type: text/html")),
        ]
    ],
    Case(
        "4475 3.3.9",
        "§7.3.1: one Content-Length (which one would frame the body?)",
        request("l: 4", body=b"body"),
        "400 More than one Content-Length header",
        tcp="400 More than one Content-Length header, closed",
    ),
    Case(
        "4475 3.3.10",
        "a stray response: only one with sipha's Via on top goes on",
        response(
            "SIP/2.0 200 OK",
            "SIP/2.0/UDP 192.0.2.30;branch=z9hG4bK1",
            "SIP/2.0/UDP 255.255.255.255;branch=z9hG4bK2",
        ),
        "dropped",
    ),
    Case(
        "4475 3.3.11",
        "Max-Forwards 0 (§16.3 step 3)",
        request(start="OPTIONS sip:bob@example.com SIP/2.0", max_forwards="Max-Forwards: 0"),
        "483 Too Many Hops",
    ),
    Case(
        "4475 3.3.12",
        "contact-params outside an addr-spec without <>",
        request(
            start="REGISTER sip:example.com SIP/2.0",
            contact="Contact: sip:caller@192.0.2.20;unknown",
        ),
        "relayed REGISTER",
    ),
    Case(
        "4475 3.3.13",
        "uri-parameters inside <>",
        request(
            start="REGISTER sip:example.com SIP/2.0",
            contact="Contact: <sip:caller@192.0.2.20;unknown>",
        ),
        "relayed REGISTER",
    ),
    Case(
        "4475 3.3.14",
        "headers in a Contact URI inside <>",
        request(
            start="REGISTER sip:example.com SIP/2.0",
            contact="Contact: <sip:caller@192.0.2.20?Route=%3Csip:example.com%3E>",
        ),
        "relayed REGISTER",
    ),
    Case(
        "4475 3.3.15",
        "an Accept the UAS cannot meet is the UAS's business",
        request("Accept: text/x-nothing"),
        "relayed INVITE",
    ),
    Case(
        "4475 3.4.1",
        "RFC 2543: no branch cookie, no tags, no Max-Forwards",
        request(
            via="Via: SIP/2.0/UDP 192.0.2.20:5062",
            from_="From: <sip:caller@example.net>",
            max_forwards=None,
            contact=None,
        ),
        "relayed INVITE",
    ),
    # -- RFC 5118 ------------------------------------------------------------------------
    Case(
        "5118 4.1",
        "IPv6reference = '[' IPv6address ']'",
        request(
            start="REGISTER sip:[2001:db8::10] SIP/2.0",
            to="To: sip:bob@[2001:db8::10]",
            via="Via: SIP/2.0/UDP [2001:db8::20]:5062;branch=z9hG4bK-v6",
            contact='Contact: "Caller" <sip:caller@[2001:db8::20]:5062>',
        ),
        "relayed REGISTER",
    ),
    Case(
        "5118 4.2",
        "an IPv6 address without its brackets",
        request(start="REGISTER sip:2001:db8::10 SIP/2.0"),
        "400 Bad Request-URI: IPv6 address without brackets in '2001:db8::10'",
    ),
    Case(
        "5118 4.3",
        "[2001:db8::10:5070] is an address, no port",
        request(start="REGISTER sip:[2001:db8::10:5070] SIP/2.0"),
        "relayed REGISTER",
    ),
    Case(
        "5118 4.4",
        "[2001:db8::10]:5070 is an address and a port",
        request(start="REGISTER sip:[2001:db8::10]:5070 SIP/2.0"),
        "relayed REGISTER",
    ),
    Case(
        "5118 4.5",
        "received with the brackets (RFC 5118's robustness) and without",
        request(
            "Via: SIP/2.0/UDP [2001:db8::30];received=2001:db8::30;branch=z9hG4bK3",
            start="REGISTER sip:example.com SIP/2.0",
            via="Via: SIP/2.0/UDP [2001:db8::20];received=[2001:db8::21];branch=z9hG4bK-v6",
        ),
        "relayed REGISTER",
    ),
    Case(
        "5118 4.6, 4.8",
        "IPv6 (and IPv4) addresses in an SDP body",
        request("Content-Type: application/sdp", body=SDP_V6),
        "relayed INVITE",
    ),
    Case(
        "5118 4.7",
        "IPv6 and IPv4 Vias",
        request("Via: SIP/2.0/UDP [2001:db8::30]:5062;branch=z9hG4bK3, SIP/2.0/UDP 192.0.2.31"),
        "relayed INVITE",
    ),
    Case(
        "5118 4.9",
        "IPv4-mapped IPv6 addresses",
        request(
            start="INVITE sip:bob@[::ffff:192.0.2.40] SIP/2.0",
            via="Via: SIP/2.0/UDP [::ffff:192.0.2.20]:5062;branch=z9hG4bK-v6",
            contact="Contact: <sip:caller@[::ffff:192.0.2.20]:5062>",
        ),
        "relayed INVITE",
    ),
    Case(
        "5118 4.10",
        "RFC 5954's IPv6address: '::' then the IPv4 part, not ':::'",
        request(start="INVITE sip:bob@[2001:db8:::192.0.2.40] SIP/2.0"),
        "400 Bad Request-URI: bad IPv6 address '2001:db8:::192.0.2.40'",
    ),
    Case(
        "5118 4.10",
        "the same, written right",
        request(start="INVITE sip:bob@[2001:db8::192.0.2.40] SIP/2.0"),
        "relayed INVITE",
    ),
    # -- RFC 3261 §25: more rules sipha holds requests to --------------------------------
    Case(
        "3261 §25",
        "hostname: no label ends in '-'",
        request(start="INVITE sip:bob@example-.com SIP/2.0"),
        "400 Bad Request-URI: bad host 'example-.com'",
    ),
    Case(
        "3261 §25",
        "escaped = '%' HEXDIG HEXDIG",
        request(start="INVITE sip:b%zzob@example.com SIP/2.0"),
        "400 Bad Request-URI: bad user part 'b%zzob'",
    ),
    Case(
        "3261 §25",
        "port = 1*DIGIT, and one sipha can send to",
        request(start="INVITE sip:bob@example.com:65536 SIP/2.0"),
        "400 Bad Request-URI: bad port '65536'",
    ),
    Case(
        "3261 §25",
        "Route = route-param *(COMMA route-param): name-addrs, no empty one",
        request("Route: <sip:p1.example.com;lr>, , <sip:p2.example.com;lr>"),
        "400 Bad Route: empty list element",
    ),
    Case(
        "3261 §25",
        "route-param = name-addr: in <>",
        request("Record-Route: sip:p1.example.com"),
        "400 Bad Record-Route: URI without <> in 'sip:p1.example.com'",
    ),
    Case(
        "3261 §25",
        "tag-param = 'tag' EQUAL token, once",
        request(from_="From: <sip:caller@example.net>;tag=ab12;tag=cd34"),
        "400 Bad From: more than one tag in '<sip:caller@example.net>;tag=ab1'",
    ),
    Case(
        "3261 §25",
        "callid: one word, no white space",
        request(call_id="Call-ID: torture 1@192.0.2.20"),
        "400 Bad Call-ID",
    ),
    Case(
        "3261 §25",
        "Max-Forwards = 1*DIGIT",
        request(max_forwards="Max-Forwards: seventy"),
        "400 Bad Max-Forwards",
    ),
    Case(
        "3261 §25",
        "Via without a sent-by: nowhere to send an answer",
        request(via="Via: SIP/2.0/UDP ;branch=z9hG4bK-torture.1"),
        "dropped",
    ),
    Case(
        "3261 §25",
        "no Via at all: nowhere to send an answer",
        request(via=None),
        "dropped",
    ),
    Case(
        "3261 §21.5.7",
        "a message over max_message_size",
        request(body=b"x" * 70000),
        "513 Message Too Large",
        tcp="513 Message Too Large, closed",
    ),
]


def over_udp(core: ProxyCore, data: bytes) -> str:
    core.receive(data, UDP_CALLER, UDP_IN)
    return ""


def over_tcp(core: ProxyCore, data: bytes) -> str:
    """As the transport edge does it: frame, hand over, and on a framing error answer
    (if the request can be) and close."""
    framer = StreamFramer(core.max_message_size)
    try:
        for message in framer.feed(
            data.replace(b"SIP/2.0/UDP 192.0.2.20", b"SIP/2.0/TCP 192.0.2.20")
        ):
            core.receive(message, TCP_CALLER, TCP_IN)
    except ParseError as error:
        core.reject(error, TCP_CALLER, TCP_IN)
        return "closed"
    return ""


def answer(sent: list[Sent], edge: str = "") -> str:
    """What the core sent, as Case.answer spells it (100 Trying left out)."""
    parts = []
    for item in sent:
        first = item.data.partition(b"\r\n")[0].decode()
        if first.startswith("SIP/2.0 "):
            if not first.startswith("SIP/2.0 100 "):
                parts.append(first.removeprefix("SIP/2.0 "))
        else:
            parts.append(f"relayed {first.partition(' ')[0]}")
    parts += [edge] if edge else []
    return ", ".join(parts) or "dropped"


@pytest.mark.parametrize("case", CASES, ids=[f"{c.section} {c.rule}"[:60] for c in CASES])
@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_torture_case(case: Case, transport: str) -> None:
    core, _, wire = make_proxy()
    edge = (over_udp if transport == "udp" else over_tcp)(core, case.data)
    sent = wire.take()
    expected = case.tcp if transport == "tcp" and case.tcp is not None else case.answer
    assert answer(sent, edge) == expected
    caller = UDP_CALLER if transport == "udp" else TCP_CALLER
    for item in sent:
        if item.data.startswith(b"SIP/2.0 "):
            assert item.peer == caller  # the Via's sent-by, or the connection


def test_relayed_request_keeps_the_stretched_values() -> None:
    """RFC 4475 §3.1.1: what parsed is forwarded as it came, folded lines unfolded."""
    core, _, wire = make_proxy()
    core.receive(TORTUOUS.data, UDP_CALLER, UDP_IN)
    forwarded = parse_message(wire.take()[-1].data)
    assert forwarded.get("to") == "<sip:bob@example.com>   ;   x-p =  1"
    assert forwarded.get("x-unknown") == ";;,,;;,"
    assert forwarded.cseq == 1
    assert forwarded.get_all("via")[1:] == [
        "SIP / 2.0 / UDP 192.0.2.20 : 5062 ; branch = z9hG4bK-torture.1",
        "SIP/2.0/TCP\tother.example.com;branch=z9hG4bKx",
    ]


@pytest.mark.parametrize("reason", ["= 2**3 * 5**2 \u3042\u3044 <\u0644>", ""])
def test_unusual_reason_phrases_go_back_unchanged(reason: str) -> None:
    """RFC 4475 §3.1.1.12 and 3.1.1.13: Reason-Phrase is any UTF-8 text, or none."""
    core, _, wire = make_proxy()
    core.receive(request(), UDP_CALLER, UDP_IN)
    forwarded = parse_message(wire.take()[-1].data)
    core.receive(reply(forwarded, 200, reason), Peer("udp", "127.0.0.1", 5071), UDP_IN)
    (sent,) = wire.take()
    assert sent.data.startswith(f"SIP/2.0 200 {reason}\r\n".encode())


@pytest.mark.parametrize(
    ("data", "status_line"),
    [
        # The route read these and raised URIError out of the core.
        (
            request(
                "Route: garbage", start="BYE sip:bob@192.0.2.30 SIP/2.0", to="To: <sip:b@x>;tag=1"
            ),
            b"SIP/2.0 400 Bad Route: no URI in 'garbage'",
        ),
        (
            request("Route: <sip:127.0.0.1:5060;lr>, junk", start="BYE sip:bob@192.0.2.30 SIP/2.0"),
            b"SIP/2.0 400 Bad Route: no URI in 'junk'",
        ),
        # int() raised ValueError: on thousands of digits, or on a superscript digit.
        (request(max_forwards="Max-Forwards: " + "7" * 5000), b"SIP/2.0 400 Bad Max-Forwards"),
        (request(max_forwards="Max-Forwards: \u00b2"), b"SIP/2.0 400 Bad Max-Forwards"),
        (request(length="7" * 5000), b"SIP/2.0 400 Content-Length exceeds body"),
        (
            request(via="Via: SIP/2.0/UDP 192.0.2.20:5062;branch=z9hG4bKr;rport=" + "7" * 5000),
            b"SIP/2.0 400 Bad Via rport",
        ),
    ],
    ids=[
        "route-garbage",
        "route-list-junk",
        "max-forwards-digits",
        "max-forwards-superscript",
        "content-length-digits",
        "rport-digits",
    ],
)
def test_what_escaped_the_core_is_answered(data: bytes, status_line: bytes) -> None:
    """Regressions: each of these raised out of ProxyCore.receive before."""
    core, _, wire = make_proxy()
    core.receive(data, UDP_CALLER, UDP_IN)
    (sent,) = wire.take()
    assert sent.data.partition(b"\r\n")[0] == status_line


# -- properties -----------------------------------------------------------------------

#: Pieces that the grammar cares about, for the core to be fed with.
PIECES = st.sampled_from(
    [
        b"\r\n",
        b"\r\n ",
        b" ",
        b"\t",
        b";",
        b";;",
        b",",
        b"<",
        b">",
        b'"',
        b"\\",
        b"%",
        b"%4",
        b"@",
        b":",
        b"[",
        b"]",
        b"?",
        b"=",
        b"\x00",
        b"\xff",
        b"SIP/2.0",
        b"z9hG4bK",
        b"tag=",
        b"Via: ",
        b"To: ",
        b"Contact: ",
        b"Route: ",
        b"Content-Length: 9\r\n",
        b"l: 0\r\n",
    ]
)


@st.composite
def mangled(draw: st.DrawFn) -> bytes:
    """A torture case with a few pieces put in, taken out or swapped."""
    data = bytearray(draw(st.sampled_from([case.data for case in CASES if len(case.data) < 4000])))
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(data)))
        if draw(st.booleans()):
            data[at:at] = draw(PIECES)
        else:
            del data[at : at + draw(st.integers(1, 8))]
    return bytes(data)


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(data=mangled(), transport=st.sampled_from(["udp", "tcp"]))
def test_the_core_takes_anything(data: bytes, transport: str) -> None:
    """Nothing escapes the core; what it sends is a SIP message with a printable first line."""
    core, _, wire = make_proxy()
    (over_udp if transport == "udp" else over_tcp)(core, data)
    for item in wire.take():
        first = item.data.partition(b"\r\n")[0].decode()
        assert first.isprintable(), first
        assert first.startswith("SIP/2.0 ") or first.endswith(" SIP/2.0")
