"""SIP messages: bytes in, Request/Response objects out, and back (RFC 3261 §7, §20).

The parser does what a proxy needs and no more: it splits the start line and the
header lines, expands compact names, unfolds continuation lines and reads the
fields every routing decision looks at (top Via, Call-ID, CSeq, From/To tags).
Those, the request line, and a request's Vias, Contact, Route and Record-Route
are held to RFC 3261's grammar (§25.1), and a single-value header may not come
twice: what sipha forwards, the next hop must read as sipha did. Every other
header stays an opaque string and is written back as it came.

Anything malformed raises :class:`ParseError` and nothing else, carrying the
partly parsed request (when there is one) so the caller can still answer
``400`` with a reason that names the problem, or ``505`` for another version.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable, Iterator
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Final

from sipha.uri import (
    GEN_VALUE,
    HOST,
    IPV4,
    IPV6,
    PLAIN_HOST,
    PLAIN_PORT,
    SWS,
    TOKEN,
    URIError,
    check_name_addrs,
    check_request_uri,
    comma_items,
    format_host_port,
    format_params,
    is_token,
    name_addr_tag,
    params_dict,
    parse_name_addr,
    plain_params,
    read_host,
    read_port,
    remember,
    split_comma_list,
    split_host_port,
)

SIP_VERSION: Final = "SIP/2.0"
BRANCH_COOKIE: Final = "z9hG4bK"

#: Compact header forms (RFC 3261 §7.3.3, RFC 3265, RFC 3515, RFC 4028 ...).
COMPACT_FORMS: Final = {
    "a": "accept-contact",
    "b": "referred-by",
    "c": "content-type",
    "d": "request-disposition",
    "e": "content-encoding",
    "f": "from",
    "i": "call-id",
    "j": "reject-contact",
    "k": "supported",
    "l": "content-length",
    "m": "contact",
    "n": "identity-info",
    "o": "event",
    "r": "refer-to",
    "s": "subject",
    "t": "to",
    "u": "allow-events",
    "v": "via",
    "x": "session-expires",
    "y": "identity",
}

#: How sipha writes header names it knows; others keep the sender's spelling.
CANONICAL_NAMES: Final = {
    name.lower(): name
    for name in (
        "Accept",
        "Accept-Contact",
        "Accept-Encoding",
        "Accept-Language",
        "Alert-Info",
        "Allow",
        "Allow-Events",
        "Authentication-Info",
        "Authorization",
        "Call-ID",
        "Call-Info",
        "Contact",
        "Content-Disposition",
        "Content-Encoding",
        "Content-Language",
        "Content-Length",
        "Content-Type",
        "CSeq",
        "Date",
        "Error-Info",
        "Event",
        "Expires",
        "From",
        "Identity",
        "Identity-Info",
        "In-Reply-To",
        "Max-Forwards",
        "Min-Expires",
        "MIME-Version",
        "Organization",
        "Priority",
        "Proxy-Authenticate",
        "Proxy-Authorization",
        "Proxy-Require",
        "Reason",
        "Record-Route",
        "Refer-To",
        "Referred-By",
        "Reject-Contact",
        "Reply-To",
        "Request-Disposition",
        "Require",
        "Retry-After",
        "Route",
        "Server",
        "Session-Expires",
        "Subject",
        "Supported",
        "Timestamp",
        "To",
        "Unsupported",
        "User-Agent",
        "Via",
        "Warning",
        "WWW-Authenticate",
    )
}


class ParseError(Exception):
    """A message that cannot be accepted.

    ``reason`` is short enough for a reason phrase. ``request`` is the partly
    parsed request when the start line was a request line (so a reply can be
    built); ``status`` is the code to answer with (400, 505 or 513).
    """

    def __init__(self, reason: str, request: Request | None = None, status: int = 400):
        super().__init__(reason)
        self.reason = reason
        self.request = request
        self.status = status


@dataclass(slots=True)
class Via:
    """One Via value (§20.42): ``SIP/2.0/UDP host:port;branch=...;rport``."""

    transport: str
    host: str
    port: int | None = None
    params: dict[str, str | None] = field(default_factory=dict)

    # Written out: compiled, it is native code; the one @dataclass writes stays Python.
    def __init__(
        self,
        transport: str,
        host: str,
        port: int | None = None,
        params: dict[str, str | None] | None = None,
    ) -> None:
        self.transport = transport
        self.host = host
        self.port = port
        self.params = {} if params is None else params

    @property
    def branch(self) -> str | None:
        return self.params.get("branch")

    def __str__(self) -> str:
        return (
            f"{SIP_VERSION}/{self.transport} {format_host_port(self.host, self.port)}"
            f"{format_params(self.params)}"
        )

    def response_target(self, transport: str) -> tuple[str, int]:
        """Where a response to this hop goes over an unreliable transport.

        RFC 3261 §18.2.2 with RFC 3581: ``maddr`` first, then ``received``
        (the source address), with ``rport`` naming the source port.
        """
        host = self.params.get("maddr") or self.params.get("received") or self.host
        if host[:1] == "[":
            host = host[1:-1]  # RFC 5118 §4.5: received=[2001:db8::9:255]
        rport = self.params.get("rport")
        if rport:
            port = int(rport)
        elif self.port is not None:
            port = self.port
        else:
            port = 5061 if transport == "tls" else 5060
        return host, port


#: via-params; an IPv6 address may stand without brackets (received, RFC 5118 §4.5).
_VIA_PARAMS = rf"(?:{SWS};{SWS}{TOKEN}(?:{SWS}={SWS}(?:{IPV6}|{GEN_VALUE}))?)*+"


def _via_parm(group: Callable[[str], str]) -> str:
    """via-parm (§25.1) with each part passed through ``group``: protocol name, version,
    transport, host, port, parameters. SLASH and COLON allow white space around them."""
    return (
        rf"{SWS}{group(TOKEN)}{SWS}/{SWS}{group(TOKEN)}{SWS}/{SWS}{group(TOKEN)}[ \t]++"
        rf"{group(HOST)}(?:{SWS}:{SWS}{group('[0-9]++')})?{group(_VIA_PARAMS)}{SWS}"
    )


_VIA: Final = re.compile(_via_parm(lambda part: f"({part})"))
_VIA_TEXT = _via_parm(lambda part: f"(?:{part})")
_VIA_ITEM: Final = re.compile(_VIA_TEXT)
_VIA_LIST: Final = re.compile(rf"{_VIA_TEXT}(?:,{_VIA_TEXT})*+")
_IPV4: Final = re.compile(IPV4)
_HOST: Final = re.compile(HOST)


#: A Via as nearly every hop writes it: no white space but the one SP, an upper-case
#: transport, token parameter values. Its sent-by, which each hop writes the same on
#: every message, is read once and remembered (bounded, as sipha.uri's memos).
_PLAIN_SENT_BY: Final = re.compile(rf"SIP/2\.0/([A-Z]++) ({PLAIN_HOST})(?::({PLAIN_PORT}))?")
_PLAIN_VIA_PARAMS: Final = re.compile(rf"(?:;{TOKEN}(?:={TOKEN})?)*+")
_SENT_BYS: dict[str, tuple[str, str, int | None]] = {}


def _plain_via(text: str) -> Via | None:
    """The Via of that usual shape, unchecked parameters aside; None for another."""
    sent_by = text.partition(";")[0]
    known = _SENT_BYS.get(sent_by)
    if known is None:
        found = _PLAIN_SENT_BY.fullmatch(sent_by)
        if found is None:
            return None
        port = found[3]
        known = (found[1], found[2].lower(), int(port) if port else None)
        remember(_SENT_BYS, sent_by, known)
    params = text[len(sent_by) :]
    if _PLAIN_VIA_PARAMS.fullmatch(params) is None:
        return None
    return Via(known[0], known[1], known[2], plain_params(params))


def parse_via(text: str) -> Via:
    """Parse one Via value; raise :class:`ParseError` naming the defect."""
    via = _plain_via(text) or _general_via(text)
    for param, value in via.params.items():
        if param in _CHECKED_VIA_PARAMS and not _via_param_ok(param, value):
            raise ParseError(f"Bad Via {param}")
    return via


def _general_via(text: str) -> Via:
    found = _VIA.fullmatch(text)
    if found is None:
        raise ParseError(_via_problem(text))
    name, version, transport, host, port, params = found.groups()
    if name.upper() != "SIP" or version != "2.0":
        raise ParseError(f"Bad Via protocol {f'{name}/{version}/{transport}'[:32]!r}")
    try:
        via = Via(transport.upper(), read_host(host), read_port(port), params_dict(params))
    except URIError as exc:
        raise ParseError(f"Bad Via sent-by: {exc}") from None
    branch = via.params.get("branch")
    if branch is not None and not is_token(branch):  # a quoted string or an address
        raise ParseError("Bad Via branch")
    return via


def _is_address(value: str | None) -> bool:
    """received (§18.2.1): an IPv4 or IPv6 address, the latter with or without brackets."""
    if value is None:
        return False
    if _IPV4.fullmatch(value):
        return True
    try:
        ipaddress.IPv6Address(value[1:-1] if value[:1] == "[" else value)
    except ValueError:
        return False
    return True


#: Via parameters with a grammar of their own (§25.1, RFC 3581 rport).
_CHECKED_VIA_PARAMS: Final = frozenset(("branch", "rport", "received", "maddr", "ttl"))


def _via_param_ok(name: str, value: str | None) -> bool:
    """Does the value of one of :data:`_CHECKED_VIA_PARAMS` follow its grammar?"""
    if name == "branch":  # more than the magic cookie (RFC 4475 §3.2.1)
        return value is not None and value != BRANCH_COOKIE
    if name == "rport":
        return value is None or (_is_number(value) and len(value) < 6 and 0 < int(value) < 65536)
    if name == "received":
        return _is_address(value)
    if value is None:
        return False
    if name == "maddr":
        return _HOST.fullmatch(value) is not None
    return _is_number(value) and len(value) < 4 and int(value) < 256  # ttl


_VIA_PROTOCOL: Final = re.compile(rf"{SWS}({TOKEN}){SWS}/{SWS}({TOKEN}){SWS}/{SWS}({TOKEN})")


def _via_problem(text: str) -> str:
    """Why ``text``, which the grammar refused, is no via-parm."""
    protocol = _VIA_PROTOCOL.match(text)
    if protocol is None:
        return f"Bad Via protocol {text.strip().partition(' ')[0][:32]!r}"
    name, version, transport = protocol.groups()
    if name.upper() != "SIP" or version != "2.0":
        return f"Bad Via protocol {f'{name}/{version}/{transport}'[:32]!r}"
    sent_by, semi, params = text[protocol.end() :].partition(";")
    try:
        split_host_port(re.sub(r"[ \t]*:[ \t]*", ":", sent_by.strip(" \t")))
    except URIError as exc:
        return f"Bad Via sent-by: {exc}"
    for item in params.split(";") if semi else ():
        if not item.strip(" \t"):
            return "Empty Via parameter"
        if not re.fullmatch(_VIA_PARAMS, f";{item}".rstrip(" \t")):
            return f"Bad Via parameter {item.strip()[:32]!r}"
    return f"Bad Via {text.strip()[:32]!r}"


_LIST_HEADERS: Final = frozenset(
    (
        "via",
        "route",
        "record-route",
        "contact",
        "allow",
        "supported",
        "require",
        "proxy-require",
        "unsupported",
        "accept",
        "accept-encoding",
        "allow-events",
    )
)


class Message:
    """Header list and body shared by requests and responses.

    ``headers`` is a list of ``(key, name, value)``: ``key`` is the lower-case
    full name used for look-ups, ``name`` the spelling written on the wire.
    """

    __slots__ = ("headers", "body", "call_id", "cseq", "cseq_method", "from_tag", "to_tag", "_via")

    def __init__(self, headers: list[tuple[str, str, str]], body: bytes = b""):
        self.headers = headers
        self.body = body
        self.call_id = ""
        self.cseq = 0
        self.cseq_method = ""
        self.from_tag: str | None = None
        self.to_tag: str | None = None
        self._via: Via | None = None

    # -- look-ups -----------------------------------------------------------------
    def get(self, name: str) -> str | None:
        """The first line of header ``name`` (case-insensitive, full name)."""
        key = name.lower()
        for k, _, value in self.headers:
            if k == key:
                return value
        return None

    def get_all(self, name: str) -> list[str]:
        """Every value of ``name``, comma lists split (§7.3.1)."""
        key = name.lower()
        values: list[str] = []
        for k, _, value in self.headers:
            if k == key:
                values.extend(split_comma_list(value) if k in _LIST_HEADERS else [value])
        return values

    def has(self, name: str) -> bool:
        key = name.lower()
        return any(k == key for k, _, _ in self.headers)

    @property
    def top_via(self) -> Via:
        """The parsed top Via; parsing validated it, so it is always there."""
        if self._via is None:
            first = self.get("via")
            if first is None:
                raise ParseError("Missing Via")
            values = split_comma_list(first)  # [] for "Via: ,"
            self._via = parse_via(values[0] if values else "")
        return self._via

    # -- changes ----------------------------------------------------------------
    def insert(self, name: str, value: str, index: int = 0) -> None:
        key = name.lower()
        self.headers.insert(index, (key, CANONICAL_NAMES.get(key, name), value))
        if key == "via":
            self._via = None

    def append(self, name: str, value: str) -> None:
        key = name.lower()
        self.headers.append((key, CANONICAL_NAMES.get(key, name), value))

    def set(self, name: str, value: str) -> None:
        """Replace the first line of ``name``, or append it."""
        key = name.lower()
        for i, (k, n, _) in enumerate(self.headers):
            if k == key:
                self.headers[i] = (k, n, value)
                break
        else:
            self.append(name, value)
        if key == "via":
            self._via = None

    def remove(self, name: str) -> None:
        key = name.lower()
        self.headers = [h for h in self.headers if h[0] != key]
        if key == "via":
            self._via = None

    def pop_first(self, name: str) -> str | None:
        """Remove and return the first value of a list header, keeping the others."""
        key = name.lower()
        for i, (k, n, value) in enumerate(self.headers):
            if k == key:
                values = split_comma_list(value)
                first = values.pop(0) if values else None
                if values:
                    self.headers[i] = (k, n, ", ".join(values))
                else:
                    del self.headers[i]
                if key == "via":
                    self._via = None
                return first
        return None

    def replace_top_via(self, via: Via) -> None:
        """Write back a changed top Via (received/rport), leaving the others as they were."""
        for i, (k, n, value) in enumerate(self.headers):
            if k == "via":
                rest = split_comma_list(value)[1:]
                self.headers[i] = (k, n, ", ".join([str(via), *rest]))
                self._via = via
                return

    # -- output -----------------------------------------------------------------
    def start_line(self) -> str:
        raise NotImplementedError

    def serialize(self) -> bytes:
        """Wire form; Content-Length always states the body's real size."""
        length = str(len(self.body))
        parts = [self.start_line()]
        seen_length = False
        for key, name, value in self.headers:
            if key == "content-length":
                if seen_length:
                    continue
                seen_length = True
                value = length
            # One join of the pieces: no string is built per line.
            parts += ("\r\n", name, ": ", value)
        if not seen_length:
            parts += ("\r\nContent-Length: ", length)
        parts.append("\r\n\r\n")
        return "".join(parts).encode("utf-8", "surrogateescape") + self.body


class Request(Message):
    __slots__ = ("method", "uri")

    def __init__(
        self, method: str, uri: str, headers: list[tuple[str, str, str]], body: bytes = b""
    ):
        super().__init__(headers, body)
        self.method = method
        self.uri = uri

    def start_line(self) -> str:
        return f"{self.method} {self.uri} {SIP_VERSION}"

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.uri} call-id={self.call_id!r}>"


class Response(Message):
    __slots__ = ("status", "reason")

    def __init__(
        self, status: int, reason: str, headers: list[tuple[str, str, str]], body: bytes = b""
    ):
        super().__init__(headers, body)
        self.status = status
        self.reason = reason

    def start_line(self) -> str:
        return f"{SIP_VERSION} {self.status} {self.reason}"

    def __repr__(self) -> str:
        return f"<Response {self.status} {self.cseq_method} call-id={self.call_id!r}>"


# -- parsing --------------------------------------------------------------------------


def _is_number(text: str) -> bool:
    """ASCII digits only: str.isdigit() also takes superscripts (int() fails) and other scripts' digits."""
    return text.isascii() and text.isdigit()


#: The end of a line and an empty line after it, either ending in CRLF or bare LF.
_EMPTY_LINE: Final = re.compile(rb"\n\r?\n")


def _split_head(data: bytes) -> tuple[bytes, bytes]:
    """Split at the empty line; bare LF line ends are tolerated (§7.5 robustness).

    The first empty line ends the head, whatever mix of CRLF and bare LF ends
    the lines around it, so a CRLFCRLF inside the body of a bare-LF message is
    not mistaken for it.
    """
    empty = _EMPTY_LINE.search(data)
    if empty is None:
        return data.rstrip(b"\r\n"), b""
    end, start = empty.span()
    if end > 0 and data[end - 1 : end] == b"\r":
        end -= 1
    return data[:end], data[start:]


def _header_lines(text: str) -> Iterator[str]:
    """Logical header lines: continuation lines (leading SP/HT) are unfolded (§7.3.1).

    Every LF ends a line, with or without its CR, as for the start line: a bare
    LF left inside a value would hide the header after it from sipha but not
    from the next hop.
    """
    lines = text.replace("\r\n", "\n").split("\n")
    current: str | None = None
    for line in lines[1:]:
        if line[:1] in (" ", "\t"):
            if current is None:
                raise ParseError("Continuation line before any header")
            current += " " + line.strip()
            continue
        if current is not None:
            yield current
        current = line
    if current is not None:
        yield current


def _read_headers(text: str) -> tuple[list[tuple[str, str, str]], str | None]:
    """The headers of a message head, as :func:`_parse_headers` reads them.

    Nearly every line is ``Name: value`` with a name seen before: these take one
    split and one look-up each. Anything else (a new name, a line without a
    colon, a continuation line: no cached name starts with SP/HT) sends the
    whole head through the general code.
    """
    names = _NAMES
    headers = []
    lines = text.split("\n")
    for i in range(1, len(lines)):
        name, colon, value = lines[i].partition(":")
        known = names.get(name) if colon else None
        if known is None:
            return _parse_headers(_header_lines(text))
        # A CR left before the LF is stripped with the value's white space.
        headers.append((known[0], known[1], value.strip()))
    return headers, None


def _parse_headers(lines: Iterable[str]) -> tuple[list[tuple[str, str, str]], str | None]:
    """Parse every well-formed line; report the first bad one instead of stopping.

    Keeping the good lines lets a ``400`` carry the Via, From, To, Call-ID and
    CSeq of a request that is broken elsewhere.
    """
    headers = []
    problem = None
    names = _NAMES
    for line in lines:
        name, colon, value = line.partition(":")
        known = names.get(name) if colon else None
        if known is None:
            known = _header_name(name.strip()) if colon else None
            if known is None:
                problem = problem or f"Malformed header line {line[:32]!r}"
                continue
            # _read_headers relies on no cached name starting like a continuation line.
            if len(names) < _NAMES_LIMIT and name[:1] not in (" ", "\t"):
                names[name] = known
        headers.append((known[0], known[1], value.strip()))
    return headers, problem


#: Header names as written on the wire -> (key, canonical name). Nearly every
#: message repeats the same few names, so each is checked and looked up once.
_NAMES: dict[str, tuple[str, str]] = {}
_NAMES_LIMIT: Final = 4096  # a stream of made-up names cannot grow it without bound


def _header_name(name: str) -> tuple[str, str] | None:
    if not is_token(name):
        return None
    key = name.lower()
    key = COMPACT_FORMS.get(key, key)
    return key, CANONICAL_NAMES.get(key, name)


def parse_message(
    data: bytes, *, stream: bool = False, max_size: int = 65535
) -> Request | Response:
    """Parse one whole SIP message.

    ``stream`` marks a message framed from TCP/TLS, where Content-Length is
    mandatory; over UDP a missing length means "the rest of the datagram", a
    body longer than the length is trimmed, and a shorter one is an error
    (§18.3). CRLFs before the start line are skipped, as §7.5 asks of streams.
    """
    head, body = _split_head(data.lstrip(b"\r\n") if data[:1] in (b"\r", b"\n") else data)
    text = head.decode("utf-8", "surrogateescape")
    message, start_problem = _start_line(text)
    request = message if isinstance(message, Request) else None
    try:
        message.headers, problem = _read_headers(text)
        if len(data) > max_size:
            raise ParseError("Message Too Large", status=513)
        if start_problem:
            raise start_problem
        if problem:
            raise ParseError(problem)
        fields, vias, lists = _fields(message.headers)
        message.body = _body(fields.get("content-length"), body, stream)
        _read_core_fields(message, fields)
        if request is None:
            _read_top_via(message, vias)
        else:
            _read_vias(message, vias)
            _check_routing_lists(lists)
    except ParseError as exc:
        if request is not None:
            _keep_answerable_via(request)
            exc.request = request
        raise
    return message


def _start_line(text: str) -> tuple[Request | Response, ParseError | None]:
    """The message the start line begins, and what is wrong with it if it can be answered.

    A line that is neither a status line nor a request line ending in a SIP
    version raises: nothing can be answered.
    """
    end = text.find("\n")
    first = (text if end < 0 else text[:end]).rstrip("\r")
    parts = first.split(" ")
    if len(parts) == 3 and parts[2] == SIP_VERSION and is_token(parts[0]):
        return Request(parts[0], parts[1], []), _request_uri_problem(parts[1])
    if first[:8].upper() == "SIP/2.0 ":
        code = parts[1]
        if len(code) != 3 or not _is_number(code) or not 100 <= int(code) <= 699:
            raise ParseError(f"Bad status code {code[:16]!r}")
        return Response(int(code), " ".join(parts[2:]), []), None
    return _unusual_request_line(first)


#: SIP-Version (§25.1); the name is case-insensitive, as in any ABNF string.
_VERSION: Final = re.compile(r"(?i:sip)/[0-9]++\.[0-9]++")
_SPACES: Final = re.compile(r"[ \t]++")


def _unusual_request_line(first: str) -> tuple[Request, ParseError | None]:
    """A request line the fast path did not take: a lower-case version, or a defect.

    RFC 4475 §3.1.2.8-10 and §3.1.2.16: white space where one SP belongs
    gets 400, another SIP version 505, each with a reason that names it.
    """
    words = _SPACES.split(first.strip(" \t"))
    if len(words) < 3 or not is_token(words[0]) or not _VERSION.fullmatch(words[-1]):
        raise ParseError(f"Bad request line {first[:48]!r}")
    request = Request(words[0], " ".join(words[1:-1]), [])
    version = words[-1]
    if version.upper() != SIP_VERSION:
        return request, ParseError(f"Version {version[:16]} Not Supported", status=505)
    if first[:1] in (" ", "\t"):
        problem = "Leading white space in request line"
    elif first[-1:] in (" ", "\t"):
        problem = "Trailing white space in request line"
    elif len(words) > 3:
        problem = "White space in Request-URI"
    elif first != " ".join(words):
        problem = "Request line elements not separated by one SP"
    else:
        return request, _request_uri_problem(words[1])
    return request, ParseError(problem)


def _request_uri_problem(uri: str) -> ParseError | None:
    try:
        check_request_uri(uri)
    except URIError as exc:
        return ParseError(f"Bad Request-URI: {exc}")
    return None


def _body(length: str | None, body: bytes, stream: bool) -> bytes:
    if length is None:
        if stream:
            raise ParseError("Missing Content-Length")
        return body
    if not _is_number(length):
        raise ParseError("Bad Content-Length")
    digits = length.lstrip("0") or "0"
    # int() refuses numbers of thousands of digits; no body is ten digits long.
    size = int(digits) if len(digits) < 10 else len(body) + 1
    if size > len(body):
        raise ParseError("Content-Length exceeds body")
    return body[:size]


#: Headers that must not appear twice (§7.3.1: only comma lists may): those sipha
#: reads (§8.1.1, RFC 4475 §3.3.8), and those that say how to read the body (§3.3.9).
_SINGLE: Final = frozenset(
    ("call-id", "cseq", "from", "to", "max-forwards", "content-length", "content-type")
)
#: Lists whose every value a request must get right: where it and the requests of its
#: dialog are routed. Of a response, which is only relayed, the top Via is enough:
#: what reads its Contact and Record-Route copes with a bad one.
_ROUTING_LISTS: Final = frozenset(("contact", "route", "record-route"))


def _fields(
    headers: list[tuple[str, str, str]],
) -> tuple[dict[str, str], list[str], list[tuple[str, str]]]:
    """In one pass: the single-value headers by key, the Via lines, and the values of
    the routing lists."""
    fields: dict[str, str] = {}
    vias: list[str] = []
    lists: list[tuple[str, str]] = []
    for key, _, value in headers:
        if key in _SINGLE:
            if key in fields:
                raise ParseError(f"More than one {CANONICAL_NAMES[key]} header")
            fields[key] = value
        elif key == "via":
            vias.append(value)
        elif key in _ROUTING_LISTS:
            lists.append((key, value))
    return fields, vias, lists


_CSEQ: Final = re.compile(rf"([0-9]++)[ \t]++({TOKEN})")
#: CSeq values read (number and method): a call's messages repeat a few of them.
_CSEQS: dict[str, tuple[int, str]] = {}


def _read_core_fields(message: Message, fields: dict[str, str]) -> None:
    """Read and check the fields every transaction and route decision uses (§8.1.1)."""
    call_id = fields.get("call-id")
    if not call_id:
        raise ParseError("Missing Call-ID")
    # §25.1's callid is one word: some UAs write characters it lacks ('=', '#'), and
    # the key works as well with them, but white space would hide one from the next hop.
    if " " in call_id or "\t" in call_id:
        raise ParseError("Bad Call-ID")
    message.call_id = call_id
    cseq = fields.get("cseq")
    if cseq is None:
        raise ParseError("Missing CSeq")
    message.cseq, message.cseq_method = _CSEQS.get(cseq) or _read_cseq(cseq)
    if isinstance(message, Request) and message.cseq_method != message.method:
        raise ParseError("CSeq method does not match request method")
    message.from_tag = _tag(fields.get("from"), "From")
    message.to_tag = _tag(fields.get("to"), "To")
    max_forwards = fields.get("max-forwards")
    # Any number (the route lowers one above 255), but not one of thousands of digits.
    if max_forwards is not None and not (
        _is_number(max_forwards) and len(max_forwards.lstrip("0")) < 10
    ):
        raise ParseError("Bad Max-Forwards")


def _read_cseq(text: str) -> tuple[int, str]:
    found = _CSEQ.fullmatch(text)
    # §8.1.1.5: a 32-bit unsigned number (RFC 4475 §3.1.2.4).
    if found is None or len(found[1]) > 10 or int(found[1]) >= 1 << 32:
        raise ParseError("Bad CSeq")
    cseq = (int(found[1]), found[2])
    remember(_CSEQS, text, cseq)
    return cseq


def _tag(value: str | None, name: str) -> str | None:
    if value is None:
        raise ParseError(f"Missing {name}")
    try:
        return name_addr_tag(value)
    except URIError as exc:
        raise ParseError(f"Bad {name}: {exc}") from None


def _read_top_via(response: Message, vias: list[str]) -> None:
    """Keep a response's top Via parsed: it matches the response to its transaction.

    The Vias under it are only relayed, as they came: they are the next hops' to read.
    """
    if not vias:
        raise ParseError("Missing Via")
    line = vias[0]
    top, comma, _ = line.partition(",")
    if comma and '"' in top:  # the comma may be inside a quoted parameter value
        top = comma_items(line)[0]
    if not top.strip(" \t"):
        raise ParseError("Empty Via value")
    response._via = parse_via(top)


def _read_vias(message: Message, vias: list[str]) -> None:
    """Check a request's Via lines and keep its top Via parsed."""
    if not vias:
        raise ParseError("Missing Via")
    for value in vias:
        single = "," not in value
        if not single and not _VIA_LIST.fullmatch(value):
            raise ParseError(_via_list_problem(value))
        if message._via is None:
            message._via = parse_via(value if single else comma_items(value)[0])
        elif single and not (_plain_via(value) or _VIA_ITEM.fullmatch(value)):
            raise ParseError(_via_problem(value))


def _check_routing_lists(lists: list[tuple[str, str]]) -> None:
    for key, value in lists:
        if key == "contact" and value.strip(" \t") == "*":
            continue
        try:
            check_name_addrs(value, bracketed=key != "contact")
        except URIError as exc:
            raise ParseError(f"Bad {CANONICAL_NAMES[key]}: {exc}") from None


def _via_list_problem(value: str) -> str:
    """Why a Via line, which the grammar refused, is no list of via-parms."""
    for item in comma_items(value):
        if not item.strip(" \t"):
            return "Empty Via value"
        if not _VIA_ITEM.fullmatch(item):
            return _via_problem(item)
    return f"Bad Via {value.strip()[:32]!r}"


_RPORT: Final = re.compile(r";[ \t]*rport[ \t]*(?:;|$)", re.IGNORECASE)
#: The sent-by of a Via that may be broken further on.
_SENT_BY: Final = re.compile(
    rf"{SWS}(?i:sip){SWS}/{SWS}2\.0{SWS}/{SWS}({TOKEN})[ \t]++({HOST})(?:{SWS}:{SWS}([0-9]++))?"
)


def _keep_answerable_via(request: Request) -> None:
    """Keep the top Via of a request that failed to parse, if the answer can use it.

    A Via broken beyond its sent-by (RFC 4475 §3.1.2.1) still says where the
    answer goes; without a sent-by there is nowhere to send one, and
    :attr:`Message.top_via` raises.
    """
    first = request.get("via")
    if request._via is not None or first is None:
        return
    text = comma_items(first)[0]
    with suppress(ParseError):
        request._via = parse_via(text)
        return
    sent_by = _SENT_BY.match(text)
    if sent_by is not None:
        # Of the parameters, only rport changes where the answer goes (RFC 3581).
        params: dict[str, str | None] = {"rport": None} if _RPORT.search(text) else {}
        with suppress(URIError):
            host, port = read_host(sent_by[2]), read_port(sent_by[3])
            request._via = Via(sent_by[1].upper(), host, port, params)


# -- replies ----------------------------------------------------------------------------

#: Reason phrases sipha uses for the replies it generates itself.
REASONS: Final = {
    100: "Trying",
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    416: "Unsupported URI Scheme",
    420: "Bad Extension",
    482: "Loop Detected",
    483: "Too Many Hops",
    487: "Request Terminated",
    500: "Server Internal Error",
    503: "Service Unavailable",
    505: "Version Not Supported",
    513: "Message Too Large",
}

_REPLY_COPIED: Final = ("via", "from", "to", "call-id", "cseq")


def make_response(
    request: Request,
    status: int,
    reason: str | None = None,
    *,
    to_tag: str | None = None,
    extra: Iterable[tuple[str, str]] = (),
) -> Response:
    """Build a reply to ``request`` (§8.2.6): Via, From, To, Call-ID and CSeq copied.

    A To tag is added to every reply but ``100`` when the request had none;
    ``to_tag`` should be the same for every reply of one transaction.
    """
    headers = [h for h in request.headers if h[0] in _REPLY_COPIED]
    # A request that failed to parse has not read its To tag: look in the header.
    had_tag = request.to_tag or _existing_tag(request.get("to"))
    if status > 100 and had_tag is None and to_tag:
        headers = [(k, n, f"{v};tag={to_tag}") if k == "to" else (k, n, v) for k, n, v in headers]
    response = Response(status, reason or REASONS.get(status, "Unknown"), headers)
    for name, value in extra:
        response.append(name, value)
    response.call_id, response.cseq = request.call_id, request.cseq
    response.cseq_method = request.cseq_method
    response.from_tag = request.from_tag
    response.to_tag = had_tag or (to_tag if status > 100 else None)
    return response


def _existing_tag(value: str | None) -> str | None:
    if value is None or "tag" not in value.lower():
        return None  # the common case, an initial request, without parsing
    try:
        return parse_name_addr(value).tag
    except URIError:
        return None


def make_request(
    method: str,
    uri: str,
    *,
    from_uri: str,
    from_tag: str,
    to_uri: str,
    call_id: str,
    cseq: int = 1,
    to_tag: str | None = None,
    routes: Iterable[str] = (),
    max_forwards: int = 70,
) -> Request:
    """A request of sipha's own (probes, BYEs of expired dialogs); the Via is added on sending."""
    to = f"<{to_uri}>;tag={to_tag}" if to_tag else f"<{to_uri}>"
    headers = [
        ("from", "From", f"<{from_uri}>;tag={from_tag}"),
        ("to", "To", to),
        ("call-id", "Call-ID", call_id),
        ("cseq", "CSeq", f"{cseq} {method}"),
        ("max-forwards", "Max-Forwards", str(max_forwards)),
    ]
    headers.extend(("route", "Route", route) for route in routes)
    request = Request(method, uri, headers)
    request.call_id, request.cseq, request.cseq_method = call_id, cseq, method
    request.from_tag, request.to_tag = from_tag, to_tag
    return request


class StreamFramer:
    """Cut a TCP/TLS byte stream into SIP messages by Content-Length (§18.3).

    Feed it any chunking of the stream; it yields each whole message once.
    Leading CRLFs (RFC 5626 keep-alives) are skipped. A head over
    ``max_size`` without an empty line, a declared body that would exceed
    it, or a Content-Length that cannot frame the body raises
    :class:`ParseError`: the stream cannot be resynchronised and the
    connection must be closed. The body is never waited for, and the error
    carries the request of a whole head, so that it can be answered first.
    """

    def __init__(self, max_size: int = 65535):
        self.max_size = max_size
        self._buffer = bytearray()
        # Each byte is looked at once, however the stream is chunked: where the search
        # for the end of a head resumes, and the size of the message once it is known.
        self._searched = 0
        self._size: int | None = None

    @property
    def pending(self) -> bool:
        """Is part of a message waiting for the rest?"""
        return bool(self._buffer)

    def feed(self, data: bytes) -> Iterator[bytes]:
        buffer = self._buffer
        buffer += data
        while True:
            if self._size is None:
                if buffer[:1] in (b"\r", b"\n"):
                    del buffer[: len(buffer) - len(buffer.lstrip(b"\r\n"))]
                    self._searched = 0
                # bare LF line ends too, as in datagrams
                empty = _EMPTY_LINE.search(buffer, max(0, self._searched - 2))
                if empty is None:
                    self._searched = len(buffer)
                    if len(buffer) > self.max_size:
                        raise ParseError("Message Too Large", status=513)
                    return
                end, body = empty.span()
                head = bytes(buffer[:end])
                try:
                    self._size = body + _stream_content_length(head)
                    if self._size > self.max_size:
                        raise ParseError("Message Too Large", status=513)
                except ParseError as error:
                    error.request = _head_request(head)
                    raise
            if len(buffer) < self._size:
                return
            message = bytes(buffer[: self._size])
            del buffer[: self._size]
            self._size, self._searched = None, 0
            yield message


def _stream_content_length(head: bytes) -> int:
    """The declared body size in a message head; 0 when absent (the parser then rejects it)."""
    sizes = []
    for line in head.split(b"\n")[1:]:
        name, colon, value = line.partition(b":")
        if colon and name.strip().lower() in (b"content-length", b"l"):
            sizes.append(value.strip())
    if not sizes:
        return 0
    if len(sizes) > 1:
        raise ParseError("More than one Content-Length header")  # RFC 4475 §3.3.9
    if not sizes[0].isdigit():
        raise ParseError("Bad Content-Length")
    digits = sizes[0].lstrip(b"0")
    if len(digits) > 18:  # too large anyway, and int() refuses thousands of digits
        raise ParseError("Message Too Large", status=513)
    return int(digits or b"0")


def _head_request(head: bytes) -> Request | None:
    """The request a framing error happened in, read as far as it can be (for its answer)."""
    text = head.decode("utf-8", "surrogateescape")
    try:
        request, _ = _start_line(text)
        if not isinstance(request, Request):
            return None
        request.headers, _ = _read_headers(text)
    except ParseError:
        return None  # not a request line, or no header to read a Via from
    _keep_answerable_via(request)
    return request
