"""SIP and SIPS URIs (RFC 3261 §19.1) and name-addrs (§20.10, §25.1).

Routing needs a URI's host, port, transport and a few parameters (``lr``,
``maddr``, ``r2``, ``ftag``); everything else is carried through as text, so a
URI that sipha does not change is re-serialized exactly as it arrived.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from dataclasses import dataclass, field

DEFAULT_PORTS = {"sip": 5060, "sips": 5061}


class URIError(ValueError):
    """A URI or name-addr that cannot be parsed; the message says why."""


def _excerpt(text: str) -> str:
    """Quote at most 32 characters of the input: errors end up in reason phrases."""
    return repr(text[:32])


def _split_params(text: str) -> dict[str, str | None]:
    """Parse ``;a=1;b`` into an ordered dict; a flag parameter maps to None."""
    params: dict[str, str | None] = {}
    if not text:
        return params
    for item in text.split(";"):
        name, eq, value = item.partition("=")
        name = name.strip().lower()
        if not name:
            continue  # SWS around ';' (§25.1), or ';;'
        params[name] = value.strip() if eq else None
    return params


def format_params(params: dict[str, str | None]) -> str:
    """The inverse of :func:`_split_params`: ``;a=1;b``."""
    return "".join(f";{k}" if v is None else f";{k}={v}" for k, v in params.items())


_BAD_HOST = re.compile(r"[ \t<>\"@\[\]]")

#: ``host[:port]`` as nearly every message writes it, for the fast paths of
#: parse_uri and parse_via: a name or an IPv4 address and a port of 1-65535
#: without leading zeros. Other text takes :func:`split_host_port`.
_HOST_PORT = (
    r"([A-Za-z0-9.\-]+)"
    r"(?::([1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5]))?"
)


def _plain_host_port(host: str, port: str | None) -> tuple[str, int | None]:
    """What :func:`split_host_port` returns for the two groups of ``_HOST_PORT``."""
    return host.lower(), int(port) if port else None


def split_host_port(hostport: str) -> tuple[str, int | None]:
    """Split ``host[:port]``, ``[v6][:port]``; the host is returned without brackets."""
    if hostport.startswith("["):
        end = hostport.find("]")
        if end < 0:
            raise URIError(f"unterminated IPv6 reference in {_excerpt(hostport)}")
        host, rest = hostport[1:end], hostport[end + 1 :]
        try:
            # One spelling per address, as sockets report it: "[2001:DB8:0::1]" is 2001:db8::1.
            host = ipaddress.IPv6Address(host).compressed
        except ValueError:
            raise URIError(f"bad IPv6 address {_excerpt(host)}") from None
        if not rest:
            return host, None
        if not rest.startswith(":"):
            raise URIError(f"junk after IPv6 reference in {_excerpt(hostport)}")
        port_text = rest[1:]
    else:
        host, colon, port_text = hostport.partition(":")
        if not colon:
            port_text = ""
        if not host or _BAD_HOST.search(host):
            raise URIError(f"bad host {_excerpt(host)}")
        if not port_text:
            if colon:
                raise URIError(f"empty port in {_excerpt(hostport)}")
            return host.lower(), None
        host = host.lower()
    # isascii(): str.isdigit() also takes superscripts, which int() rejects, and
    # other scripts' digits, which int() reads.
    if not (port_text.isascii() and port_text.isdigit()) or not 0 < int(port_text) < 65536:
        raise URIError(f"bad port {_excerpt(port_text)}")
    return host, int(port_text)


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


#: ``sip:[user@]host[:port][;params]`` as nearly every message writes it: no
#: space around it, no '@', ':' or ';' in the user, no '@' or ``?headers`` after.
_PLAIN_URI = re.compile(r"(sips?):(?:([^?@:;]*+)@)?" + _HOST_PORT + r"(?:;([^?@]*))?")


def parse_uri(text: str) -> URI:
    """Parse a SIP or SIPS URI; raise :class:`URIError` naming what is wrong."""
    if plain := _PLAIN_URI.fullmatch(text):
        scheme, user, host, port, params = plain.groups()
        return URI(scheme, user, *_plain_host_port(host, port), _split_params(params or ""))
    scheme, colon, rest = text.strip().partition(":")
    scheme = scheme.lower()
    if not colon:
        raise URIError(f"no scheme in URI {_excerpt(text)}")
    if scheme not in DEFAULT_PORTS:
        raise URIError(f"unsupported URI scheme {_excerpt(scheme)}")
    # The user part may hold '?' and ';' (§25.1 user-unreserved); no part after
    # the host may hold a bare '@'. So the last '@' ends the user part.
    user: str | None = None
    at = rest.rfind("@")
    if at >= 0:
        user, rest = rest[:at], rest[at + 1 :]
    rest, _, headers = rest.partition("?")
    hostport, _, params = rest.partition(";")
    return URI(scheme, user, *split_host_port(hostport), _split_params(params), headers)


@dataclass(slots=True)
class NameAddr:
    """``"Display" <uri>;params`` or ``uri;params`` (From, To, Route, Contact ...)."""

    display: str
    uri: str
    params: dict[str, str | None]
    bracketed: bool = True

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


#: A quoted string (§25.1): a backslash escapes any character, a quote included.
_QUOTED_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.S)


def _split_name_addr(text: str) -> tuple[str, str, str, bool]:
    """``(display, uri, header params text, bracketed)`` of a name-addr or addr-spec."""
    text = text.strip()
    # A quoted display name may hold '<' and '>' (§25.1 quoted-string): skip it.
    start = 0
    if text.startswith('"'):
        quoted = _QUOTED_STRING.match(text)
        if quoted is None:
            raise URIError(f"unterminated quoted display name in {_excerpt(text)}")
        start = quoted.end()
    lt = text.find("<", start)
    if lt >= 0:
        gt = text.find(">", lt)
        if gt < 0:
            raise URIError(f"unterminated '<' in {_excerpt(text)}")
        uri = text[lt + 1 : gt].strip()
        display, params = text[:lt].strip(), text[gt + 1 :]
        bracketed = True
    else:
        # Without brackets the URI cannot carry parameters: the first ';' starts
        # the header parameters (§20.10).
        uri, _, params = text.partition(";")
        uri, display, bracketed = uri.strip(), "", False
    if not uri or ":" not in uri:
        raise URIError(f"no URI in {_excerpt(text)}")
    return display, uri, params, bracketed


def parse_name_addr(text: str) -> NameAddr:
    """Parse one name-addr or addr-spec with its header parameters."""
    display, uri, params, bracketed = _split_name_addr(text)
    return NameAddr(display, uri, _split_params(params), bracketed)


#: A From/To as nearly every UA writes it: ``["Display"] <uri>[;tag=x]``, a
#: display name with no backslash and a URI with its ':'. Group 1 is the tag.
_PLAIN_TAGGED = re.compile(r'(?:"[^"\\]*"[^<]*|[^"<\s][^<]*)?<[^>]*:[^>]*>(?:;tag=([^;\s]+))?')


def name_addr_tag(text: str) -> str | None:
    """The ``tag`` of a From/To value, with the checks of :func:`parse_name_addr`.

    Every message needs its two tags, so this skips building the NameAddr, and
    the usual shape takes one regex match.
    """
    if plain := _PLAIN_TAGGED.fullmatch(text):
        return plain[1]
    params = _split_name_addr(text)[2]
    if "tag" not in params.lower():
        return None
    return _split_params(params).get("tag")


#: One element of a comma list: runs of plain text, quoted strings and <...>,
#: each possibly unterminated (then it runs to the end, as a parser would read it).
_LIST_ELEMENT = re.compile(r'(?:[^,"<]+|"(?:[^"\\]|\\.)*"?|<[^>]*>?)+')


def split_comma_list(value: str) -> list[str]:
    """Split a comma-separated header value, ignoring commas in quotes and <...>."""
    if "," not in value:
        return [value.strip()]
    plain = '"' not in value and "<" not in value
    items = value.split(",") if plain else _LIST_ELEMENT.findall(value)
    return [stripped for item in items if (stripped := item.strip())]
