"""SIP messages: bytes in, Request/Response objects out, and back (RFC 3261 §7, §20).

The parser does what a proxy needs and no more: it splits the start line and the
header lines, expands compact names, unfolds continuation lines and reads the
fields every routing decision looks at (top Via, Call-ID, CSeq, From/To tags).
Every other header stays an opaque string and is written back as it came.

Anything malformed raises :class:`ParseError` and nothing else, carrying the
partly parsed request (when there is one) so the caller can still answer
``400`` with a reason that names the problem.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from sipha.uri import (
    _HOST_PORT,
    URIError,
    _plain_host_port,
    _split_params,
    format_host_port,
    format_params,
    name_addr_tag,
    parse_name_addr,
    split_comma_list,
    split_host_port,
)

SIP_VERSION = "SIP/2.0"
BRANCH_COOKIE = "z9hG4bK"

#: Compact header forms (RFC 3261 §7.3.3, RFC 3265, RFC 3515, RFC 4028 ...).
COMPACT_FORMS = {
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
CANONICAL_NAMES = {
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
    built); ``status`` is the code to answer with (400 or 513).
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
        rport = self.params.get("rport")
        if rport:
            port = int(rport)
        elif self.port is not None:
            port = self.port
        else:
            port = 5061 if transport == "tls" else 5060
        return host, port


#: A Via as nearly every hop writes it: one space, a plain sent-by (see
#: ``_HOST_PORT``) and no space before the parameters.
_PLAIN_VIA = re.compile(r"SIP/2\.0/([^/\s]+) " + _HOST_PORT + r"(?:;(.*))?")


#: Any Via: ``name/version/transport`` with the white space §25.1 allows around
#: each "/" (SLASH is SWS "/" SWS), then the sent-by and parameters.
_VIA_PROTOCOL = re.compile(r"\s*([^/\s]+)\s*/\s*([^/\s]+)\s*/\s*([^/\s;]+)(?:\s+(.*))?", re.S)


def parse_via(text: str) -> Via:
    """Parse one Via value; raise :class:`ParseError` naming the defect."""
    if plain := _PLAIN_VIA.fullmatch(text):
        transport, host_text, port_text, params = plain.groups()
        host, port = _plain_host_port(host_text, port_text)
        params = params or ""
    else:
        sent = _VIA_PROTOCOL.fullmatch(text)
        if sent is None:
            raise ParseError(f"Bad Via protocol {text.strip().partition(' ')[0][:32]!r}")
        name, version, transport, rest = sent.groups()
        if name.upper() != "SIP" or version != "2.0":
            raise ParseError(f"Bad Via protocol {f'{name}/{version}/{transport}'[:32]!r}")
        sent_by, _, params = (rest or "").strip().partition(";")
        try:
            host, port = split_host_port(sent_by.strip())
        except URIError as exc:
            raise ParseError(f"Bad Via sent-by: {exc}") from None
    values = _split_params(params)
    rport = values.get("rport")
    if rport is not None and not (_is_number(rport) and 0 < int(rport) < 65536):
        raise ParseError("Bad Via rport")
    return Via(transport.upper(), host, port, values)


_LIST_HEADERS = frozenset(
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
        lines = [self.start_line()]
        seen_length = False
        for key, name, value in self.headers:
            if key == "content-length":
                if seen_length:
                    continue
                seen_length = True
                value = length
            lines.append(f"{name}: {value}")
        if not seen_length:
            lines.append(f"Content-Length: {length}")
        lines.append("\r\n")
        return "\r\n".join(lines).encode("utf-8", "surrogateescape") + self.body


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

_TOKEN = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+")


def _is_token(text: str) -> bool:
    return _TOKEN.fullmatch(text) is not None


def _is_number(text: str) -> bool:
    """ASCII digits only: str.isdigit() also takes superscripts (int() fails) and other scripts' digits."""
    return text.isascii() and text.isdigit()


#: The end of a line and an empty line after it, either ending in CRLF or bare LF.
_EMPTY_LINE = re.compile(rb"\n\r?\n")


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
    # A CR left before the LF is stripped with the value's white space.
    for line in text.split("\n")[1:]:
        name, colon, value = line.partition(":")
        known = names.get(name)
        if known is None or not colon:
            return _parse_headers(_header_lines(text))
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
_NAMES_LIMIT = 4096  # a stream of made-up names cannot grow it without bound


def _header_name(name: str) -> tuple[str, str] | None:
    if not _is_token(name):
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
    (§18.3).
    """
    head, body = _split_head(data)
    try:
        text = head.decode("utf-8", "surrogateescape")
    except UnicodeDecodeError:  # pragma: no cover - surrogateescape never fails
        raise ParseError("Undecodable message") from None
    end = text.find("\n")
    first = (text if end < 0 else text[:end]).rstrip("\r")
    message: Request | Response
    if first.startswith(SIP_VERSION + " "):
        parts = first.split(" ", 2)
        code = parts[1]
        if len(code) != 3 or not _is_number(code) or not 100 <= int(code) <= 699:
            raise ParseError(f"Bad status code {code[:16]!r}")
        message = Response(int(code), parts[2] if len(parts) > 2 else "", [])
    else:
        parts = first.split(" ")
        if len(parts) != 3 or parts[2] != SIP_VERSION or not _is_token(parts[0]):
            raise ParseError(f"Bad request line {first[:48]!r}")
        message = Request(parts[0], parts[1], [])
    request = message if isinstance(message, Request) else None
    try:
        message.headers, problem = _read_headers(text)
        if len(data) > max_size:
            raise ParseError("Message Too Large", status=513)
        if problem:
            raise ParseError(problem)
        core, lengths = _core_values(message.headers)
        message.body = _body(lengths, body, stream)
        _read_core_fields(message, core)
    except ParseError as exc:
        exc.request = request
        raise
    return message


def _body(lengths: list[str], body: bytes, stream: bool) -> bytes:
    if not lengths:
        if stream:
            raise ParseError("Missing Content-Length")
        return body
    if len(set(lengths)) > 1:
        raise ParseError("Conflicting Content-Length")
    length = lengths[0]
    if not _is_number(length):
        raise ParseError("Bad Content-Length")
    size = int(length)
    if size > len(body):
        raise ParseError("Content-Length exceeds body")
    return body[:size]


_CORE_KEYS = frozenset(("call-id", "cseq", "from", "to", "content-length"))


def _core_values(headers: list[tuple[str, str, str]]) -> tuple[dict[str, str], list[str]]:
    """The first Call-ID, CSeq, From and To, and every Content-Length, in one pass."""
    core: dict[str, str] = {}
    lengths: list[str] = []
    for key, _, value in headers:
        if key in _CORE_KEYS:
            if key == "content-length":
                lengths.append(value)
            elif key not in core:
                core[key] = value
    return core, lengths


def _read_core_fields(message: Message, core: dict[str, str]) -> None:
    """Read and check the fields every transaction and route decision uses (§8.1.1)."""
    call_id = core.get("call-id")
    if not call_id:
        raise ParseError("Missing Call-ID")
    message.call_id = call_id
    cseq = core.get("cseq")
    if cseq is None:
        raise ParseError("Missing CSeq")
    number, _, method = cseq.partition(" ")
    method = method.strip()
    if not _is_number(number) or len(number) > 10 or not _is_token(method):
        raise ParseError("Bad CSeq")
    message.cseq, message.cseq_method = int(number), method
    if isinstance(message, Request) and method != message.method:
        raise ParseError("CSeq method does not match request method")
    message.from_tag = _tag(core.get("from"), "From")
    message.to_tag = _tag(core.get("to"), "To")
    message.top_via  # noqa: B018 - parse now so a bad Via is a parse error


def _tag(value: str | None, name: str) -> str | None:
    if value is None:
        raise ParseError(f"Missing {name}")
    try:
        return name_addr_tag(value)
    except URIError as exc:
        raise ParseError(f"Bad {name}: {exc}") from None


# -- replies ----------------------------------------------------------------------------

#: Reason phrases sipha uses for the replies it generates itself.
REASONS = {
    100: "Trying",
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    416: "Unsupported URI Scheme",
    482: "Loop Detected",
    483: "Too Many Hops",
    487: "Request Terminated",
    500: "Server Internal Error",
    503: "Service Unavailable",
    513: "Message Too Large",
}

_REPLY_COPIED = ("via", "from", "to", "call-id", "cseq")


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
    ``max_size`` without an empty line, or a declared body that would exceed
    it, raises :class:`ParseError`: the stream cannot be resynchronised and
    the connection must be closed.
    """

    def __init__(self, max_size: int = 65535):
        self.max_size = max_size
        self._buffer = b""

    @property
    def pending(self) -> bool:
        """Is part of a message waiting for the rest?"""
        return bool(self._buffer)

    def feed(self, data: bytes) -> Iterator[bytes]:
        self._buffer += data
        while True:
            buffer = self._buffer.lstrip(b"\r\n")
            self._buffer = buffer
            empty = _EMPTY_LINE.search(buffer)  # bare LF line ends too, as in datagrams
            if empty is None:
                if len(buffer) > self.max_size:
                    raise ParseError("Message Too Large", status=513)
                return
            end, body = empty.span()
            size = _stream_content_length(buffer[:end])
            total = body + size
            if total > self.max_size:
                raise ParseError("Message Too Large", status=513)
            if len(buffer) < total:
                return
            self._buffer = buffer[total:]
            yield buffer[:total]


def _stream_content_length(head: bytes) -> int:
    """The declared body size in a message head; 0 when absent (the parser then rejects it)."""
    for line in head.split(b"\n")[1:]:
        name, colon, value = line.partition(b":")
        if colon and name.strip().lower() in (b"content-length", b"l"):
            value = value.strip()
            if not value.isdigit():
                raise ParseError("Bad Content-Length")
            return int(value)
    return 0
