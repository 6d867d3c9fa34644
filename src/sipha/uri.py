"""SIP and SIPS URIs (RFC 3261 §19.1), name-addrs (§20.10) and their grammar (§25.1).

Each value is checked against the grammar of §25.1 with regular expressions
that also cut it into its parts; only a value that fails is looked at again,
piece by piece, to say what is wrong. The usual shapes take a smaller
expression first, and a URI seen before a set look-up. The expressions use
possessive repeats, so no input makes them backtrack for long.

Routing needs a URI's host, port, transport and a few parameters (``lr``,
``maddr``, ``r2``, ``ftag``); everything else is carried through as text, so a
URI that sipha does not change is re-serialized exactly as it arrived.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from dataclasses import dataclass, field
from typing import Any, Final

DEFAULT_PORTS: Final = {"sip": 5060, "sips": 5061}


class URIError(ValueError):
    """A URI or name-addr that cannot be parsed; the message says why."""


def _excerpt(text: str) -> str:
    """Quote at most 32 characters of the input: errors end up in reason phrases."""
    return repr(text[:32])


# -- the grammar (RFC 3261 §25.1) ------------------------------------------------------

_ALNUM = "A-Za-z0-9"
_UNRESERVED = _ALNUM + r"\-_.!~*'()"
_ESCAPED = "%[0-9A-Fa-f]{2}"


def _run(chars: str, *, empty: bool = False) -> str:
    """``1*( chars / escaped )``, or ``*( ... )`` with ``empty``."""
    return rf"(?:[{chars}]++|{_ESCAPED})" + ("*+" if empty else "++")


TOKEN = rf"[{_ALNUM}\-.!%*_+`'~]++"
#: Separator white space; folded lines are already joined with a space.
SWS = r"[ \t]*+"
#: qdtext and quoted-pair: no control character but HT, none at all escaped as LF or CR.
QUOTED = r'"(?:[^"\\\x00-\x08\x0a-\x1f\x7f]++|\\[\x00-\x09\x0b\x0c\x0e-\x7f])*+"'

_DEC_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])"
IPV4 = rf"{_DEC_OCTET}(?:\.{_DEC_OCTET}){{3}}"
#: Checked by :mod:`ipaddress` where sipha sends to it (:func:`read_host`): the
#: grammar's own rule has a known bug (RFC 5954).
IPV6 = r"[0-9A-Fa-f.]*+:[0-9A-Fa-f:.]*+"
#: domainlabel and toplabel: no '-' at either end.
_LABEL = r"[A-Za-z0-9]++(?:-++[A-Za-z0-9]++)*+"
_TOPLABEL = r"[A-Za-z][A-Za-z0-9]*+(?:-++[A-Za-z0-9]++)*+"
_HOSTNAME = rf"(?:{_LABEL}\.)*{_TOPLABEL}\.?"
HOST = rf"(?:{IPV4}|{_HOSTNAME}|\[{IPV6}\])"
#: For the fast paths: an IPv4 address or a host name without the final dot, and a
#: port of 1-65535 (the grammar's is any number; the general code checks the range).
PLAIN_HOST = rf"(?:{IPV4}|(?:{_LABEL}\.)*+{_TOPLABEL})"
PLAIN_PORT = (
    r"(?:[1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])"
)

_USER = _run(_UNRESERVED + "&=+$,;?/#")  # user-unreserved, and '#' of telephone-subscriber
_PASSWORD = _run(_UNRESERVED + "&=+$,", empty=True)
_PARAM_CHARS = _run(_UNRESERVED + r"\[\]/:&+$")
_URI_PARAMS = rf"(?:;{_PARAM_CHARS}(?:={_PARAM_CHARS})?)*+"
_HNAME = _run(_UNRESERVED + r"\[\]/?:+$")
_HVALUE = _run(_UNRESERVED + r"\[\]/?:+$", empty=True)
_URI_HEADERS = rf"{_HNAME}={_HVALUE}(?:&{_HNAME}={_HVALUE})*+"


#: SIP-URI / SIPS-URI. Groups: scheme, userinfo, host, port, parameters, headers.
_SIP_URI: Final = re.compile(
    rf"((?i:sips?)):(?:({_USER}(?::{_PASSWORD})?)@)?({HOST})(?::([0-9]++))?"
    rf"({_URI_PARAMS})(?:\?({_URI_HEADERS}))?"
)
#: The SIP URI nearly every message holds, groups as in _SIP_URI but headers: a
#: lower-case scheme, a user and parameters without escapes, PLAIN_HOST and
#: PLAIN_PORT. Every such URI matches _SIP_URI too, which is slower.
_PLAIN_SIP_URI: Final = re.compile(
    rf"(sips?):(?:([{_UNRESERVED}&=+$]++)@)?({PLAIN_HOST})(?::({PLAIN_PORT}))?"
    rf"((?:;[{_UNRESERVED}]++(?:=[{_UNRESERVED}]++)?)*+)"
)
#: absoluteURI, for any other scheme: what its grammar allows after the scheme.
_ABSOLUTE: Final = re.compile(
    rf"(?!(?i:sips?):)[A-Za-z][A-Za-z0-9+\-.]*+:{_run(_UNRESERVED + ';/?:@&=+$,')}"
)

#: generic-param's value: a token (which covers a host name or IPv4 address), an IPv6
#: reference or a quoted string.
GEN_VALUE = rf"(?:{TOKEN}|\[{IPV6}\]|{QUOTED})"
#: ``*( SEMI generic-param )``.
PARAMS = rf"(?:{SWS};{SWS}{TOKEN}(?:{SWS}={SWS}{GEN_VALUE})?)*+"
#: One parameter of a text that matched PARAMS (or a Via's, whose values may be IPv6
#: addresses): name, and value or None.
_PARAM: Final = re.compile(rf"{SWS};{SWS}({TOKEN})(?:{SWS}={SWS}({IPV6}|{GEN_VALUE}))?")
_DISPLAY_NAME = rf"(?:{TOKEN}(?:[ \t]++{TOKEN})*+|{QUOTED})"
#: A name-addr or a bare addr-spec, then parameters: display name, URI in <...>, bare
#: URI, parameters. The display name may touch the '<' (RFC 4475 §3.1.1.6). A bare
#: URI stops at ';', and may hold no ',' or '?' (§20.10). Either URI is then checked
#: with the URI grammar.
_NAME_ADDR: Final = re.compile(
    rf'{SWS}(?:(?:({_DISPLAY_NAME}){SWS})?<([^<>]*+)>|([^\s;,?<>"]++))({PARAMS}){SWS}'
)
#: The usual name-addr: a display name of tokens or a quoted string without escapes,
#: a URI in <...>, token parameters. Groups: display name, URI, parameters. The
#: URI must then be a plain SIP URI (:func:`_is_plain_sip_uri`), or the value takes
#: the general code.
_PLAIN_DISPLAY_NAME = rf'(?:"[^"\\\x00-\x08\x0a-\x1f\x7f]*+"|{TOKEN}(?: {TOKEN})*+)'
_PLAIN_NAME_ADDR: Final = re.compile(
    rf"(?:({_PLAIN_DISPLAY_NAME}) ?)?<([^<>]*+)>((?:;{TOKEN}(?:={TOKEN})?)*+)"
)
#: The same for a From or To, with no parameter but the tag: groups URI and tag.
_PLAIN_TAGGED: Final = re.compile(rf"(?:{_PLAIN_DISPLAY_NAME} ?)?<([^<>]*+)>(?:;tag=({TOKEN}))?")

#: Entries a memo of values already read holds before it starts afresh: bounded
#: under a stream of made-up values.
MEMO_LIMIT: Final = 4096
#: URIs that matched _PLAIN_SIP_URI, each to the string first seen. Callers, callees,
#: contacts and routes recur from message to message and call to call, and a look-up
#: is many times quicker than the grammar; like the header names, the memo is bounded
#: (it starts afresh when full), and long values are not kept.
_PLAIN_URIS: dict[str, str] = {}
#: Plain From and To values already read, as (URI, tag): every message of a call
#: repeats them. Bounded and kept like _PLAIN_URIS.
_TAGGED_VALUES: dict[str, tuple[str, str | None]] = {}


def remember(memo: dict[str, Any], text: str, value: object) -> None:
    """Keep ``value`` for ``text``; the memo starts afresh when full, and long texts are not kept."""
    if len(memo) >= MEMO_LIMIT:
        memo.clear()
    if len(text) <= 256:
        memo[text] = value


def _is_plain_sip_uri(text: str) -> bool:
    return _plain_sip_uri(text) is not None


def _plain_sip_uri(text: str) -> str | None:
    """``text`` if it is a plain SIP URI: the string first seen, which the calls that
    keep it (a contact, a To URI) then share."""
    known = _PLAIN_URIS.get(text)
    if known is not None:
        return known
    if _PLAIN_SIP_URI.fullmatch(text) is None:
        return None
    remember(_PLAIN_URIS, text, text)
    return text


def _plain_tagged(text: str) -> tuple[str, str | None] | None:
    """URI and tag of a From or To value of the usual shape (:data:`_PLAIN_TAGGED`)."""
    known = _TAGGED_VALUES.get(text)
    if known is not None:
        return known
    plain = _PLAIN_TAGGED.fullmatch(text)
    uri = None if plain is None else _plain_sip_uri(plain[1])
    if plain is None or uri is None:
        return None
    found = (uri, plain[2])
    remember(_TAGGED_VALUES, text, found)
    return found


_TOKEN: Final = re.compile(TOKEN)
_WHITE_SPACE: Final = re.compile(r"\s")
_SCHEME: Final = re.compile(r"[A-Za-z][A-Za-z0-9+\-.]*")
_HOST: Final = re.compile(rf"(?:{IPV4}|{_HOSTNAME})")
_USERINFO: Final = re.compile(rf"{_USER}(?::{_PASSWORD})?")
_URI_PARAM: Final = re.compile(rf"{_PARAM_CHARS}(?:={_PARAM_CHARS})?")


def _is_addr_spec(uri: str) -> bool:
    """SIP-URI / SIPS-URI / absoluteURI (§25.1)."""
    if _is_plain_sip_uri(uri):
        return True
    scheme = uri[:5].lower()
    if scheme[:4] == "sip:" or scheme == "sips:":
        return _SIP_URI.fullmatch(uri) is not None
    return _ABSOLUTE.fullmatch(uri) is not None


def is_token(text: str) -> bool:
    # ASCII letters and digits alone, as every method and most tags are, need no pattern.
    return (text.isascii() and text.isalnum()) or _TOKEN.fullmatch(text) is not None


def params_dict(text: str) -> dict[str, str | None]:
    """Parameters that matched PARAMS, ``;a=1;b``, as an ordered dict; a flag maps to None."""
    return {found[1].lower(): found[2] for found in _PARAM.finditer(text)}


def plain_params(text: str) -> dict[str, str | None]:
    """The same for parameters without white space or quotes, which a split reads.

    That is what the plain patterns (a URI's, a usual name-addr's or Via's)
    matched: several times quicker than :data:`_PARAM`, on nearly every value.
    """
    params: dict[str, str | None] = {}
    for item in text.split(";")[1:]:
        name, eq, value = item.partition("=")
        params[name.lower()] = value if eq else None
    return params


def format_params(params: dict[str, str | None]) -> str:
    """The inverse of :func:`params_dict`: ``;a=1;b``."""
    return "".join(f";{k}" if v is None else f";{k}={v}" for k, v in params.items())


def read_host(text: str) -> str:
    """A host that matched HOST, as sipha compares hosts.

    Lower case, and an IPv6 address without brackets in one spelling, as
    sockets report it: "[2001:DB8:0::1]" is 2001:db8::1.
    """
    if not text.startswith("["):
        return text.lower()
    try:
        return ipaddress.IPv6Address(text[1:-1]).compressed
    except ValueError:
        raise URIError(f"bad IPv6 address {_excerpt(text[1:-1])}") from None


def read_port(text: str | None) -> int | None:
    """A port of 1 to 65535, or None when absent."""
    if text is None:
        return None
    if len(text) > 5 or not 0 < int(text) < 65536:  # int() refuses thousands of digits
        raise URIError(f"bad port {_excerpt(text)}")
    return int(text)


def split_host_port(hostport: str) -> tuple[str, int | None]:
    """Split ``host[:port]``, ``[v6][:port]``; the host as :func:`read_host` has it."""
    if hostport.startswith("["):
        end = hostport.find("]")
        if end < 0:
            raise URIError(f"unterminated IPv6 reference in {_excerpt(hostport)}")
        host, rest = hostport[: end + 1], hostport[end + 1 :]
        if rest and not rest.startswith(":"):
            raise URIError(f"junk after IPv6 reference in {_excerpt(hostport)}")
        port_text = rest[1:] if rest else None
    else:
        if hostport.count(":") > 1:
            raise URIError(f"IPv6 address without brackets in {_excerpt(hostport)}")
        host, colon, port_text = hostport.partition(":")  # type: ignore[assignment]
        if not _HOST.fullmatch(host):
            raise URIError(f"bad host {_excerpt(host)}")
        if not colon:
            port_text = None
        elif not port_text:
            raise URIError(f"empty port in {_excerpt(hostport)}")
    # isascii(): str.isdigit() also takes superscripts, which int() rejects, and
    # other scripts' digits, which int() reads.
    if port_text is not None and not (port_text.isascii() and port_text.isdigit()):
        raise URIError(f"bad port {_excerpt(port_text)}")
    return read_host(host), read_port(port_text)


def format_host(host: str) -> str:
    """Bracket an IPv6 literal for use in a URI or a Via sent-by."""
    return f"[{host}]" if ":" in host else host


def format_host_port(host: str, port: int | None) -> str:
    return format_host(host) if port is None else f"{format_host(host)}:{port}"


@functools.lru_cache(maxsize=4096)
def is_ip_address(host: str) -> bool:
    """Is ``host`` (as :func:`split_host_port` returns it) an address, not a name to resolve?

    Asked for every message sent; the answer for a host rarely changes.
    """
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


@dataclass(slots=True)
class URI:
    """A parsed ``sip:``/``sips:`` URI; other schemes are rejected by :func:`parse_uri`."""

    scheme: str
    user: str | None
    host: str
    port: int | None = None
    params: dict[str, str | None] = field(default_factory=dict)
    headers: str = ""

    # Written out: compiled, it is native code; the one @dataclass writes stays Python.
    def __init__(
        self,
        scheme: str,
        user: str | None,
        host: str,
        port: int | None = None,
        params: dict[str, str | None] | None = None,
        headers: str = "",
    ) -> None:
        self.scheme = scheme
        self.user = user
        self.host = host
        self.port = port
        self.params = {} if params is None else params
        self.headers = headers

    @property
    def transport(self) -> str:
        """The transport to reach this URI with: ``udp`` unless it says otherwise (§18.1.1)."""
        value = self.params.get("transport")
        if value:
            return value.lower()
        return "tls" if self.scheme == "sips" else "udp"

    @property
    def effective_port(self) -> int:
        if self.port is not None:
            return self.port
        return 5061 if self.transport == "tls" else DEFAULT_PORTS[self.scheme]

    @property
    def loose_router(self) -> bool:
        return "lr" in self.params

    def __str__(self) -> str:
        user = f"{self.user}@" if self.user is not None else ""
        headers = f"?{self.headers}" if self.headers else ""
        return (
            f"{self.scheme}:{user}{format_host_port(self.host, self.port)}"
            f"{format_params(self.params)}{headers}"
        )


def parse_uri(text: str) -> URI:
    """Parse a SIP or SIPS URI; raise :class:`URIError` naming what is wrong."""
    found = _PLAIN_SIP_URI.fullmatch(text) or _SIP_URI.fullmatch(text)
    if found is None:
        raise URIError(_uri_problem(text))
    scheme, user, host, port, params = found.group(1, 2, 3, 4, 5)
    headers = found[6] if found.re is _SIP_URI else None
    return URI(
        scheme.lower(), user, read_host(host), read_port(port), plain_params(params), headers or ""
    )


def check_request_uri(text: str) -> None:
    """Raise :class:`URIError` unless ``text`` may be a Request-URI (§25.1).

    SIP and SIPS URIs are read in full, their port and IPv6 address too;
    other schemes need only be an absoluteURI (the proxy answers them 416).
    Headers are refused: §19.1.1 allows none in a Request-URI, and dropping
    them would change what the caller asked for (a ``?Replaces=`` would
    become a new call).
    """
    if _is_plain_sip_uri(text):
        return
    found = _SIP_URI.fullmatch(text)
    if found is None:
        if _ABSOLUTE.fullmatch(text):
            return
        raise URIError(_addr_spec_problem(text))
    if found[6] is not None:
        raise URIError("headers not allowed")
    read_host(found[3])
    read_port(found[4])


def _uri_problem(text: str) -> str:
    """Why ``text``, which the grammar refused, is no SIP or SIPS URI."""
    if text[:1] == "<":
        return f"URI in <> {_excerpt(text)}"
    if _WHITE_SPACE.search(text):
        return f"white space in URI {_excerpt(text)}"
    scheme, colon, rest = text.partition(":")
    if not colon:
        return f"no scheme in URI {_excerpt(text)}"
    if scheme.lower() not in DEFAULT_PORTS:
        if _SCHEME.fullmatch(scheme):
            return f"unsupported URI scheme {_excerpt(scheme.lower())}"
        return f"bad URI scheme {_excerpt(scheme)}"
    if rest.count("@") > 1:
        return f"more than one '@' in {_excerpt(text)}"
    userinfo, at, rest = rest.rpartition("@")
    if at and not _USERINFO.fullmatch(userinfo):
        return f"bad user part {_excerpt(userinfo)}"
    rest, question, headers = rest.partition("?")
    hostport, semi, params = rest.partition(";")
    try:
        split_host_port(hostport)
    except URIError as exc:
        return str(exc)
    for item in params.split(";") if semi else ():
        if not _URI_PARAM.fullmatch(item):
            return f"bad URI parameter {_excerpt(item)}" if item else "empty URI parameter"
    if question:
        return f"bad URI headers {_excerpt(headers)}"
    return f"malformed URI {_excerpt(text)}"


def _addr_spec_problem(uri: str) -> str:
    """Why a URI is neither a SIP URI nor an absoluteURI."""
    scheme, colon, _ = uri.partition(":")
    other = colon and scheme.lower() not in DEFAULT_PORTS and _SCHEME.fullmatch(scheme)
    if other and not _WHITE_SPACE.search(uri):
        return f"bad URI {_excerpt(uri)}"
    return _uri_problem(uri)


@dataclass(slots=True)
class NameAddr:
    """``"Display" <uri>;params`` or ``uri;params`` (From, To, Route, Contact ...)."""

    display: str
    uri: str
    params: dict[str, str | None]
    bracketed: bool = True

    # Written out: compiled, it is native code; the one @dataclass writes stays Python.
    def __init__(
        self, display: str, uri: str, params: dict[str, str | None], bracketed: bool = True
    ) -> None:
        self.display = display
        self.uri = uri
        self.params = params
        self.bracketed = bracketed

    @property
    def tag(self) -> str | None:
        return self.params.get("tag")

    def parsed_uri(self) -> URI:
        return parse_uri(self.uri)

    def __str__(self) -> str:
        if not self.bracketed:
            return f"{self.uri}{format_params(self.params)}"
        display = f"{self.display} " if self.display else ""
        return f"{display}<{self.uri}>{format_params(self.params)}"


_QUOTED: Final = re.compile(QUOTED)
_DISPLAY: Final = re.compile(_DISPLAY_NAME)
_PARAMS: Final = re.compile(PARAMS)


def _name_addr(text: str) -> tuple[re.Match[str], str]:
    """The grammar's match of a name-addr or addr-spec with parameters, and its URI."""
    found = _NAME_ADDR.fullmatch(text)
    if found is not None:
        uri = found[3] if found[2] is None else found[2]
        if _is_addr_spec(uri):
            return found, uri
    raise URIError(_name_addr_problem(text))


def parse_name_addr(text: str) -> NameAddr:
    """Parse one name-addr or addr-spec with its header parameters."""
    plain = _PLAIN_NAME_ADDR.fullmatch(text)
    if plain and _is_plain_sip_uri(plain[2]):
        return NameAddr(plain[1] or "", plain[2], plain_params(plain[3]))
    found, uri = _name_addr(text)
    return NameAddr(found[1] or "", uri, params_dict(found[4]), found[2] is not None)


def name_addr_uri(text: str) -> str:
    """The URI of a name-addr, as :func:`parse_name_addr` reads it.

    A bare ``<uri>`` (a Route, a Record-Route) needs only the URI checked, and the
    usual From, To and Contact values, which recur from message to message, are
    remembered.
    """
    if text[:1] == "<" and text[-1:] == ">":
        uri = _plain_sip_uri(text[1:-1])
        if uri is not None:
            return uri
    plain = _plain_tagged(text)
    return parse_name_addr(text).uri if plain is None else plain[0]


def name_addr_tag(text: str) -> str | None:
    """The ``tag`` of a From/To value, with the checks of :func:`parse_name_addr`.

    Every message needs its two tags, so this skips building the NameAddr;
    a tag must be a token (§25.1 tag-param), and one is all a value may have.
    """
    plain = _plain_tagged(text)
    if plain is not None:
        return plain[1]
    params = _name_addr(text)[0][4]
    if not params:
        return None
    tag = None
    for param in _PARAM.finditer(params):
        if param[1].lower() == "tag":
            value = param[2]
            if tag is not None:
                raise URIError(f"more than one tag in {_excerpt(text)}")
            if value is None or not _TOKEN.fullmatch(value):
                raise URIError(f"bad tag {_excerpt(value or '')}")
            tag = value
    return tag


def check_name_addrs(value: str, *, bracketed: bool) -> None:
    """Raise :class:`URIError` unless ``value`` is a comma list of name-addrs.

    Without ``bracketed``, addr-specs outside <...> are taken too (Contact);
    Route and Record-Route need the brackets.
    """
    for item in comma_items(value) if "," in value else (value,):
        if item[:1] == "<" and item[-1:] == ">" and _is_plain_sip_uri(item[1:-1]):
            continue  # the usual Route and Record-Route, and many a Contact
        plain = _PLAIN_NAME_ADDR.fullmatch(item)
        if plain and _is_plain_sip_uri(plain[2]):
            continue
        if not item.strip(" \t"):
            raise URIError("empty list element")
        if _name_addr(item)[0][2] is None and bracketed:
            raise URIError(f"URI without <> in {_excerpt(item.strip())}")


def _name_addr_problem(text: str) -> str:
    """Why ``text``, which the grammar refused, is no name-addr or addr-spec with parameters."""
    text = text.strip(" \t")
    if text.startswith('"'):
        quoted = _QUOTED.match(text)
        if quoted is None:
            return f"unterminated quoted display name in {_excerpt(text)}"
        rest = text[quoted.end() :].lstrip(" \t")
        if not rest.startswith("<"):
            return f"no <URI> after the display name in {_excerpt(text)}"
    else:
        lt = text.find("<")
        display, rest = (text[:lt].rstrip(" \t"), text[lt:]) if lt >= 0 else ("", text)
        if display and not _DISPLAY.fullmatch(display):
            return f"display name neither tokens nor quoted in {_excerpt(text)}"
    if rest.startswith("<"):
        gt = rest.find(">")
        if gt < 0:
            return f"unterminated '<' in {_excerpt(text)}"
        uri, params = rest[1:gt], rest[gt + 1 :]
        if uri != uri.strip(" \t"):
            return f"white space inside <> in {_excerpt(text)}"
    else:
        uri, semi, params = rest.partition(";")
        uri, params = uri.rstrip(" \t"), semi + params
        if "?" in uri or "," in uri:
            return f"URI with '?' or ',' outside <> in {_excerpt(text)}"
    if not uri or ":" not in uri:
        return f"no URI in {_excerpt(text)}"
    if not _is_addr_spec(uri):
        return _addr_spec_problem(uri)
    if not _PARAMS.fullmatch(params.rstrip(" \t")):
        return _params_problem(params)
    return f"malformed name-addr {_excerpt(text)}"


def _params_problem(text: str) -> str:
    """Why ``;``-separated parameters are no ``*( SEMI generic-param )``."""
    first, _, rest = text.partition(";")
    if first.strip(" \t"):
        return f"junk before the parameters {_excerpt(first.strip())}"
    for item in rest.split(";"):
        if not item.strip(" \t"):
            return "empty parameter"
        if not _PARAMS.fullmatch(f";{item}".rstrip(" \t")):
            return f"bad parameter {_excerpt(item.strip())}"
    return f"bad parameters {_excerpt(text.strip())}"  # a ';' inside a quoted value


#: One element of a comma list: runs of plain text, quoted strings and <...>,
#: each possibly unterminated (then it runs to the end, as a parser would read it).
_LIST_ELEMENT: Final = re.compile(r'(?:[^,"<]++|"(?:[^"\\]++|\\.)*+"?|<[^>]*+>?)*+', re.S)


def comma_items(value: str) -> list[str]:
    """The elements of a comma-separated value, empty ones too; commas in quotes and <...>
    separate nothing."""
    items = []
    at = 0
    while True:
        item = _LIST_ELEMENT.match(value, at)
        assert item is not None  # it matches the empty string
        items.append(item[0])
        at = item.end() + 1  # past the comma
        if at > len(value):
            return items


def split_comma_list(value: str) -> list[str]:
    """Split a comma-separated header value, ignoring commas in quotes and <...>."""
    if "," not in value:
        return [value.strip()]
    plain = '"' not in value and "<" not in value
    items = value.split(",") if plain else comma_items(value)
    return [stripped for item in items if (stripped := item.strip())]
