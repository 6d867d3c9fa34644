"""The sipha configuration file: TOML in, frozen dataclasses out.

Each section is a dataclass whose fields carry their kind (type, range) and
default, and one validator walks those declarations; adding a key is one line,
and every error has the same shape, a single line ``dotted.key: problem``, so an
operator sees at once what to fix. Nothing here imports Twisted: the file can be
checked (``twistd sipha --check-config``) without starting anything.
"""

from __future__ import annotations

import dataclasses
import datetime
import importlib
import ipaddress
import math
import os
import re
import socket
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import unquote

__all__ = [
    "Config",
    "ConfigError",
    "ConfigFileError",
    "DNSConfig",
    "DatabaseConfig",
    "DatabaseURL",
    "DispatcherConfig",
    "DispatcherDestination",
    "HAConfig",
    "ListenAddress",
    "LoadBalancerConfig",
    "LoadBalancerDestination",
    "LogConfig",
    "ProxyConfig",
    "RouteConfig",
    "TimersConfig",
    "check_db_url",
    "check_sip_uri",
    "load_callable",
    "load_config",
    "parse_config",
    "parse_db_url",
    "parse_resources",
    "require_module",
    "resolve_db_url",
]


class ConfigError(Exception):
    """A setting that cannot be used; ``str()`` is one line, ``key: problem``."""

    def __init__(self, key: str, problem: str) -> None:
        # One line whatever the cause: the message is all an operator sees.
        self.key = " ".join(key.splitlines())
        self.problem = " ".join(problem.splitlines())
        super().__init__(self.key, self.problem)

    def __str__(self) -> str:
        return f"{self.key}: {self.problem}"


class ConfigFileError(ConfigError):
    """The file cannot be read or is not TOML; ``key`` is ``path`` or ``path:line:column``.

    A separate class so that callers which prefix messages with the file name
    know this one already carries it.
    """


# --------------------------------------------------------------------------
# Value syntaxes. Each checker raises ValueError(reason); the reason is put
# after "'<value>' is not <what>: " by the Parsed kind below.

_PORT = re.compile(r"[0-9]{1,5}")
_HOSTNAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?\.?")


def _port(text: str) -> int:
    if not _PORT.fullmatch(text):
        raise ValueError(f"port {text!r} is not a number" if text else "missing port")
    port = int(text)
    if not 1 <= port <= 65535:
        raise ValueError("port out of range")
    return port


class ListenAddress(NamedTuple):
    """One socket to listen on: ``udp:127.0.0.1:5060`` or ``tcp:[::1]:5060``.

    The host is an IP literal (no brackets) because a proxy writes its own
    address into Via and Record-Route and must bind exactly there. A tuple:
    every message sent looks its socket up by it, and a tuple hashes and
    compares in C where a frozen dataclass runs Python.
    """

    transport: str
    host: str
    port: int

    TRANSPORTS = ("udp", "tcp", "tls")

    @classmethod
    def parse(cls, text: str) -> ListenAddress:
        """Parse ``TRANSPORT:HOST:PORT``; raise ValueError saying what is wrong."""
        transport, sep, rest = text.partition(":")
        if not sep:
            raise ValueError("expected TRANSPORT:HOST:PORT, e.g. udp:127.0.0.1:5060")
        transport = transport.lower()
        if transport not in cls.TRANSPORTS:
            raise ValueError(f"unknown transport {transport!r} (udp, tcp or tls)")
        if rest.startswith("["):
            host, sep, port = rest[1:].partition("]")
            if sep and port and not port.startswith(":"):
                raise ValueError("expected ':' after ']'")
            port = port[1:]
        else:
            host, sep, port = rest.rpartition(":")
            if not sep:
                host, port = rest, ""
            elif ":" in host:
                raise ValueError("an IPv6 host goes in brackets, e.g. udp:[::1]:5060")
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            raise ValueError(f"host {host!r} is not an IP literal") from None
        if rest.startswith("[") and ip.version != 6:
            raise ValueError("brackets are for IPv6 hosts only")
        return cls(transport, str(ip), _port(port))

    @property
    def family(self) -> socket.AddressFamily:
        return socket.AF_INET6 if ":" in self.host else socket.AF_INET

    @property
    def stream(self) -> bool:
        """TCP or TLS: connections, framed by Content-Length."""
        return self.transport != "udp"

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.transport}:{host}:{self.port}"


def check_sip_uri(text: str) -> None:
    """Raise ValueError unless ``text`` is a ``sip:``/``sips:`` URI with a host.

    The one place that decides what a destination or probe URI may look like.
    """
    scheme, sep, rest = text.partition(":")
    if not sep or scheme.lower() not in ("sip", "sips"):
        raise ValueError("must start with sip: or sips:")
    if any(c.isspace() for c in text):
        raise ValueError("contains whitespace")
    hostport = rest.partition("?")[0].rpartition("@")[2].partition(";")[0]
    if hostport.startswith("["):
        host, bracket, port = hostport[1:].partition("]")
        if not bracket:
            raise ValueError("missing ']' after the IPv6 host")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"host [{host}] is not an IPv6 address") from None
        if port and not port.startswith(":"):
            raise ValueError("expected ':' after ']'")
        port = port[1:] if port else None
    else:
        host, sep, port = hostport.partition(":")
        port = port if sep else None
        if host and not _HOSTNAME.fullmatch(host):
            raise ValueError(f"host {host!r} is not a host name or address")
    if not host:
        raise ValueError("no host part")
    if port is not None:
        _port(port)


def parse_resources(text: str) -> dict[str, int]:
    """Parse a load-balancer capacity list such as ``pstn=32;transc=10``.

    Same syntax as OpenSIPS's ``load_balancer.resources`` column (whitespace
    around names and values ignored), so database rows and config agree.
    """
    if not text.strip():
        raise ValueError("empty")
    limits: dict[str, int] = {}
    for item in text.split(";"):
        name, sep, value = (part.strip() for part in item.partition("="))
        if not name and not sep:
            raise ValueError("empty entry between ';'")
        if not name:
            raise ValueError("missing name before '='")
        if any(c.isspace() for c in name):
            raise ValueError(f"name {name!r} contains whitespace")
        if not sep:
            raise ValueError(f"{name!r} has no '=' and capacity")
        if not value.isascii() or not value.isdigit():
            raise ValueError(f"capacity of {name!r} is not an unsigned integer")
        if name in limits:
            raise ValueError(f"{name!r} appears twice")
        limits[name] = int(value)
    return limits


def _check_resource_name(text: str) -> None:
    if not text or any(c.isspace() or c in "=;" for c in text):
        raise ValueError("expected one name without whitespace, '=' or ';'")


DB_SCHEMES = ("sqlite", "mysql")
_DB_URL_FORMS = "sqlite:///PATH or mysql://USER:PASS@HOST:PORT[,HOST:PORT...]/DB"
MYSQL_PORT = 3306


@dataclass(frozen=True)
class DatabaseURL:
    """A database URL taken apart: ``hosts`` in the order they are tried (MySQL/MariaDB)."""

    scheme: str
    user: str = ""
    password: str = ""
    hosts: tuple[tuple[str, int], ...] = ()
    database: str = ""
    path: str = ""  # SQLite: the file, or ":memory:"


def parse_db_url(url: str) -> DatabaseURL:
    """``sqlite:///PATH``, or ``mysql://USER:PASS@HOST1:PORT,HOST2:PORT/DB`` with one host or more.

    The multi-host form is the one MariaDB's own connectors use; each host
    takes an optional port (3306) and an IPv6 address goes in brackets. User
    and password are percent-decoded. ValueError says what is wrong.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ValueError(f"expected {_DB_URL_FORMS}")
    if scheme not in DB_SCHEMES:
        raise ValueError(f"unsupported scheme {scheme!r} (sqlite or mysql)")
    if scheme == "sqlite":
        if not rest.startswith("/") or rest == "/":
            raise ValueError("expected sqlite:///PATH (three slashes, then the path)")
        return DatabaseURL(scheme, path=rest[1:])
    netloc, _, database = rest.partition("/")
    if not database or any(c in database for c in "/?#"):
        raise ValueError("expected mysql://USER:PASS@HOST:PORT/DB, ending with a database name")
    userinfo, at, hostlist = netloc.rpartition("@")
    user, _, password = userinfo.partition(":")
    entries = hostlist.split(",")
    hosts = tuple(_db_host(entry, n, len(entries)) for n, entry in enumerate(entries, 1))
    return DatabaseURL(
        scheme,
        unquote(user) if at else "root",
        unquote(password),
        hosts,
        unquote(database),
    )


def _db_host(entry: str, number: int, count: int) -> tuple[str, int]:
    """``HOST``, ``HOST:PORT`` or ``[V6]:PORT`` of a MySQL URL; a lone empty host is localhost."""
    where = f"host {number} of {count} ({entry!r})" if count > 1 else f"host {entry!r}"
    if not entry:
        if count == 1:
            return "localhost", MYSQL_PORT
        raise ValueError(f"host {number} of {count} is empty")
    if entry.startswith("["):
        host, bracket, port = entry[1:].partition("]")
        if not bracket or (port and not port.startswith(":")):
            raise ValueError(f"{where}: expected [IPV6]:PORT")
        port = port[1:]
    else:
        host, _, port = entry.partition(":")
    if not host:
        raise ValueError(f"{where}: no host name")
    if not port:
        return host, MYSQL_PORT
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"{where}: port {port!r} is not a number from 1 to 65535")
    return host, int(port)


def check_db_url(url: str) -> None:
    """Accept the URLs :func:`parse_db_url` takes; ValueError for any other."""
    parse_db_url(url)


def require_module(module: str, extra: str, key: str, what: str) -> None:
    """Import ``module``, an optional dependency; ConfigError naming ``key`` and the extra if absent.

    Checked with the config, before twistd binds anything: a missing driver is
    then one line saying what to install, not a traceback once sipha runs.
    """
    try:
        importlib.import_module(module)
    except ImportError as error:
        raise ConfigError(
            key, f"{what} ({error}): install it with pip install 'sipha[{extra}]'"
        ) from None


def resolve_db_url(url: str, base_dir: Path) -> str:
    """Make a relative SQLite path absolute against ``base_dir``; other URLs unchanged.

    Relative to the config file, not to wherever twistd was started (it may
    chdir when daemonizing), so the same file always means the same database.
    """
    prefix = "sqlite:///"
    if not url.startswith(prefix):
        return url
    path = url[len(prefix) :]
    if path == ":memory:" or path.startswith("/"):
        return url
    return prefix + os.path.normpath(base_dir.absolute() / path)


_DOTTED = r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*"
_CALLABLE_REF = re.compile(rf"{_DOTTED}:{_DOTTED}")


def _check_callable_ref(text: str) -> None:
    if not _CALLABLE_REF.fullmatch(text):
        raise ValueError("expected 'package.module:function'")


def load_callable(ref: str) -> Callable[..., Any]:
    """Import ``module:attr.path`` and return it; raise ValueError saying why not."""
    _check_callable_ref(ref)
    module_name, _, attr_path = ref.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(f"cannot import {module_name!r}: {e}") from None
    except Exception as e:
        raise ValueError(f"importing {module_name!r} failed: {type(e).__name__}: {e}") from None
    for attr in attr_path.split("."):
        try:
            obj = getattr(obj, attr)
        except AttributeError:
            raise ValueError(f"{module_name!r} has no attribute {attr_path!r}") from None
    if not callable(obj):
        raise ValueError(f"{ref!r} is not callable")
    return obj


# --------------------------------------------------------------------------
# The schema mechanism: kinds, setting(), and the validator that walks them.

_TOML_TYPES: tuple[tuple[type, str], ...] = (
    (bool, "boolean"),
    (int, "integer"),
    (float, "float"),
    (str, "string"),
    (list, "array"),
    (dict, "table"),
    (datetime.datetime, "datetime"),
    (datetime.date, "date"),
    (datetime.time, "time"),
)


def _toml_type(value: Any) -> str:
    for cls, name in _TOML_TYPES:
        if isinstance(value, cls):
            return name
    return type(value).__name__


def _child(key: str, name: str) -> str:
    return f"{key}.{name}" if key else name


class Kind:
    """How one setting is checked and converted; errors name ``key``."""

    what = "a value"
    types: tuple[type, ...] = (object,)

    def convert(self, value: Any, key: str) -> Any:
        if (isinstance(value, bool) and bool not in self.types) or not isinstance(
            value, self.types
        ):
            raise ConfigError(key, f"expected {self.what}, got {_toml_type(value)}")
        return self.check(value, key)

    def check(self, value: Any, key: str) -> Any:
        return value


def _range_problem(value: float, ge: float | None, le: float | None, gt: float | None) -> str:
    if ge is not None and le is not None:
        return f"must be between {ge} and {le}, got {value}"
    if gt is not None:
        return f"must be > {gt}, got {value}"
    if ge is not None:
        return f"must be >= {ge}, got {value}"
    return f"must be <= {le}, got {value}"


@dataclass(frozen=True)
class Int(Kind):
    ge: int | None = None
    le: int | None = None
    what = "an integer"
    types = (int,)

    def check(self, value: int, key: str) -> int:
        if (self.ge is not None and value < self.ge) or (self.le is not None and value > self.le):
            raise ConfigError(key, _range_problem(value, self.ge, self.le, None))
        return value


@dataclass(frozen=True)
class Number(Kind):
    """Seconds and intervals: an integer or a float, always returned as float."""

    ge: float | None = None
    gt: float | None = None
    what = "a number"
    types = (int, float)

    def check(self, value: float, key: str) -> float:
        if not math.isfinite(value):
            raise ConfigError(key, f"must be a finite number, got {value}")
        if (self.ge is not None and value < self.ge) or (self.gt is not None and value <= self.gt):
            raise ConfigError(key, _range_problem(value, self.ge, None, self.gt))
        return float(value)


@dataclass(frozen=True)
class Str(Kind):
    what = "a string"
    types = (str,)


@dataclass(frozen=True)
class Bool(Kind):
    what = "true or false"
    types = (bool,)


@dataclass(frozen=True)
class Choice(Kind):
    options: tuple[str, ...] = ()
    what = "a string"
    types = (str,)

    def check(self, value: str, key: str) -> str:
        if value not in self.options:
            allowed = ", ".join(repr(o) for o in self.options)
            raise ConfigError(key, f"must be one of {allowed}; got {value!r}")
        return value


@dataclass(frozen=True)
class Parsed(Kind):
    """A string with a syntax of its own; ``parse`` raises ValueError(reason)."""

    parse: Callable[[str], Any] = str
    noun: str = "valid"
    keep_text: bool = True  # store the string as written, or what ``parse`` returned
    what = "a string"
    types = (str,)

    def check(self, value: str, key: str) -> Any:
        try:
            parsed = self.parse(value)
        except ValueError as e:
            raise ConfigError(key, f"{value!r} is not {self.noun}: {e}") from None
        return value if self.keep_text else parsed


@dataclass(frozen=True)
class List(Kind):
    """A TOML array; returned as a tuple so the config stays immutable."""

    item: Kind = field(default_factory=Kind)
    min_len: int = 0
    unique: bool = False
    what = "an array"
    types = (list,)

    def check(self, value: list[Any], key: str) -> tuple[Any, ...]:
        if len(value) < self.min_len:
            problem = (
                "must not be empty"
                if self.min_len == 1
                else f"needs at least {self.min_len} entries"
            )
            raise ConfigError(key, problem)
        items = tuple(self.item.convert(v, f"{key}[{i}]") for i, v in enumerate(value))
        if self.unique:
            for i, v in enumerate(items):
                if v in items[:i]:
                    raise ConfigError(f"{key}[{i}]", f"{str(v)!r} is listed twice")
        return items


@dataclass(frozen=True)
class Table(Kind):
    """A TOML table mapped onto a section dataclass."""

    section: type = object
    what = "a table"
    types = (dict,)

    def check(self, value: dict[str, Any], key: str) -> Any:
        return _build(self.section, value, key)


_REQUIRED: Any = dataclasses.MISSING


def setting(kind: Kind, default: Any = _REQUIRED) -> Any:
    """Declare a config key: its kind, and a default written as it would be in TOML.

    The default goes through the same kind, so defaults obey the schema too.
    """
    if default is _REQUIRED:
        return field(metadata={"kind": kind})
    return field(default=kind.convert(default, "<default>"), metadata={"kind": kind})


def _build(section: type, raw: dict[str, Any], key: str) -> Any:
    """Check ``raw`` against ``section``'s declared settings and build it."""
    declared = {f.name: f for f in dataclasses.fields(section) if "kind" in f.metadata}
    for name in raw:
        if name not in declared:
            raise ConfigError(_child(key, name), "unknown key")
    values: dict[str, Any] = {}
    for name, f in declared.items():
        if name in raw:
            values[name] = f.metadata["kind"].convert(raw[name], _child(key, name))
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(_child(key, name), "missing")
    obj = section(**values)
    # Cross-field rules: a section may define _problems() yielding (key, problem).
    if problems := getattr(obj, "_problems", None):
        for name, problem in problems():
            raise ConfigError(_child(key, name), problem)
    return obj


# --------------------------------------------------------------------------
# The schema. One field per key; OpenSIPS equivalents are in etc/sipha.toml.


def _check_method(text: str) -> None:
    if not re.fullmatch(r"[A-Z]+", text):
        raise ValueError("expected upper-case letters, e.g. OPTIONS")


_SIP_URI = Parsed(check_sip_uri, "a SIP URI")
_METHOD = Parsed(_check_method, "a SIP method")
_REPLY_CODES = List(Int(100, 699), min_len=1)


@dataclass(frozen=True, kw_only=True)
class ProxyConfig:
    listen: tuple[ListenAddress, ...] = setting(
        List(Parsed(ListenAddress.parse, "an address", keep_text=False), min_len=1, unique=True),
        ["udp:127.0.0.1:5060", "tcp:127.0.0.1:5060"],
    )
    max_forwards: int = setting(Int(1, 256), 10)
    max_message_size: int = setting(Int(1024, 65535), 65535)
    udp_receive_buffer: int = setting(Int(ge=65536), 8388608)


@dataclass(frozen=True, kw_only=True)
class TimersConfig:
    """RFC 3261 timers and the transaction timeouts, in seconds."""

    fr_timer: float = setting(Number(gt=0), 2.0)
    fr_inv_timer: float = setting(Number(gt=0), 30.0)
    t1: float = setting(Number(gt=0), 0.5)
    t2: float = setting(Number(gt=0), 4.0)
    t4: float = setting(Number(gt=0), 5.0)

    def _problems(self) -> Iterator[tuple[str, str]]:
        if self.t2 < self.t1:
            yield "t2", f"must be >= t1 ({self.t1}), got {self.t2}"


@dataclass(frozen=True, kw_only=True)
class LogConfig:
    level: str = setting(Choice(("debug", "info", "warn", "error")), "info")
    format: str = setting(Choice(("text", "json")), "text")


def _check_endpoint(text: str) -> None:
    """A Twisted server endpoint string such as ``tcp:9260:interface=127.0.0.1``; "" = off."""
    if text and not re.fullmatch(r"(tcp|tcp6|unix|ssl):\S+", text):
        raise ValueError("expected an endpoint such as 'tcp:9260:interface=127.0.0.1'")


_ENDPOINT = Parsed(_check_endpoint, "a listening endpoint")


def _optional(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """``parse``, with "" meaning "not set"."""
    return lambda text: parse(text) if text else ""


def _check_octal_mode(text: str) -> None:
    if not re.fullmatch(r"0?[0-7]{3}", text):
        raise ValueError("expected an octal file mode such as '0600'")


@dataclass(frozen=True, kw_only=True)
class ManholeConfig:
    enabled: bool = setting(Bool(), False)
    listen: str = setting(_ENDPOINT, "tcp:2222:interface=127.0.0.1")
    authorized_keys: str = setting(Str(), "")
    passwords: str = setting(Str(), "")
    host_key: str = setting(Str(), "")
    telnet: str = setting(_ENDPOINT, "")


@dataclass(frozen=True, kw_only=True)
class ControlConfig:
    socket: str = setting(Str(), "")
    mode: str = setting(Parsed(_check_octal_mode, "a file mode"), "0600")


@dataclass(frozen=True, kw_only=True)
class MetricsConfig:
    listen: str = setting(_ENDPOINT, "")


@dataclass(frozen=True, kw_only=True)
class DatabaseConfig:
    url: str = setting(Parsed(check_db_url, "a database URL"), "sqlite:///sipha.sqlite")
    # Not a key: ``url`` with a relative SQLite path made absolute (see resolve_db_url).
    resolved_url: str = ""

    def __post_init__(self) -> None:
        if not self.resolved_url:
            object.__setattr__(self, "resolved_url", self.url)

    @property
    def scheme(self) -> str:
        return self.url.partition("://")[0]

    @property
    def parsed(self) -> DatabaseURL:
        """The resolved URL taken apart (its hosts, user, database)."""
        return parse_db_url(self.resolved_url)

    def require_driver(self) -> None:
        """A ``mysql://`` URL needs mysqlclient, which only the ``mysql`` extra installs."""
        if self.scheme == "mysql":
            require_module("MySQLdb", "mysql", "database.url", "a mysql:// URL needs mysqlclient")

    @property
    def sqlite_path(self) -> str | None:
        """The SQLite file (or ``:memory:``) to open, or None for other databases."""
        if self.scheme != "sqlite":
            return None
        return self.resolved_url[len("sqlite:///") :]


#: Headers sipha itself reads or writes: naming one as the client address header
#: would let a customer's copy be replaced by an address, or an address break routing.
_OWN_HEADERS = frozenset(
    [
        "via",
        "route",
        "record-route",
        "path",
        "from",
        "to",
        "call-id",
        "cseq",
        "contact",
        "max-forwards",
        "content-length",
        "require",
        "supported",
        "proxy-require",
    ]
)


def _check_extension_header(text: str) -> None:
    """A header name of the media servers' choosing, such as ``X-AUTH-IP``; "" = none."""
    if not text:
        return
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9.!%*_+`'~-]*", text):
        raise ValueError("expected a header name such as X-AUTH-IP")
    if text.lower() in _OWN_HEADERS or len(text) == 1:  # one letter: a compact form (§7.3.3)
        raise ValueError("sipha routes by this header; name an extension header such as X-AUTH-IP")


_EXTENSION_HEADER = Parsed(_check_extension_header, "a header name")


@dataclass(frozen=True, kw_only=True)
class RouteConfig:
    function: str = setting(
        Parsed(_check_callable_ref, "a route function"), "sipha.routing:reference_route"
    )
    lb_group: int = setting(Int(), 1)
    lb_resource: str = setting(Parsed(_check_resource_name, "a resource name"), "pstn")
    lb_algorithm: str = setting(Choice(("relative", "absolute")), "relative")
    ds_set: int = setting(Int(), 1)
    ds_algorithm: int = setting(Int(0, 13), 0)
    client_address_header: str = setting(_EXTENSION_HEADER, "X-AUTH-IP")
    client_port_header: str = setting(_EXTENSION_HEADER, "")
    path: str = setting(Choice(("off", "supported", "always")), "supported")

    def _problems(self) -> Iterator[tuple[str, str]]:
        names = (self.client_address_header.lower(), self.client_port_header.lower())
        if names[0] and names[0] == names[1]:
            yield "client_port_header", "must differ from client_address_header"

    def load_function(self) -> Callable[..., Any]:
        """Import the route function, so a typo fails at start-up rather than per call."""
        try:
            return load_callable(self.function)
        except ValueError as e:
            raise ConfigError("route.function", str(e)) from None


@dataclass(frozen=True, kw_only=True)
class DispatcherDestination:
    setid: int = setting(Int())
    destination: str = setting(_SIP_URI)
    weight: int = setting(Int(ge=0), 1)
    priority: int = setting(Int(), 0)
    state: int = setting(Int(0, 2), 0)
    attrs: str = setting(Str(), "")
    description: str = setting(Str(), "")


@dataclass(frozen=True, kw_only=True)
class DispatcherConfig:
    ping_interval: float = setting(Number(ge=0), 5)
    ping_method: str = setting(_METHOD, "OPTIONS")
    ping_from: str = setting(_SIP_URI, "sip:dispatcher@localhost")
    probing_threshold: int = setting(Int(ge=1), 2)
    probing_mode: int = setting(Int(0, 1), 1)
    reply_codes: tuple[int, ...] = setting(_REPLY_CODES, [200])
    destination: tuple[DispatcherDestination, ...] = setting(List(Table(DispatcherDestination)), [])


@dataclass(frozen=True, kw_only=True)
class LoadBalancerDestination:
    group_id: int = setting(Int())
    dst_uri: str = setting(_SIP_URI)
    resources: str = setting(Parsed(parse_resources, "a resource list"))
    probe_mode: int = setting(Int(0, 2), 2)
    description: str = setting(Str(), "")

    @property
    def capacity(self) -> dict[str, int]:
        """``resources`` as a mapping, e.g. ``{"pstn": 32}``."""
        return parse_resources(self.resources)


@dataclass(frozen=True, kw_only=True)
class LoadBalancerConfig:
    probing_interval: float = setting(Number(ge=0), 5)
    probing_method: str = setting(_METHOD, "OPTIONS")
    probing_from: str = setting(_SIP_URI, "sip:prober@localhost")
    probing_threshold: int = setting(Int(ge=1), 2)
    reply_codes: tuple[int, ...] = setting(_REPLY_CODES, [200])
    destination: tuple[LoadBalancerDestination, ...] = setting(
        List(Table(LoadBalancerDestination)), []
    )


@dataclass(frozen=True, kw_only=True)
class DialogConfig:
    default_timeout: float = setting(Number(gt=0), 43200)
    db_mode: int = setting(Int(0, 3), 1)
    db_update_period: float = setting(Number(gt=0), 60)
    queue_limit: int = setting(Int(ge=1), 100000)


def _ip_literal(text: str) -> str:
    """An IP address as sipha writes it (compressed IPv6, no brackets)."""
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise ValueError("expected an IP address such as 198.18.0.100") from None


class _OneOrMore(List):
    """A list, or a single value standing for a list of one (``virtual_ip = "ADDR"``)."""

    types = (list, str)
    what = "a string or an array of strings"

    def convert(self, value: Any, key: str) -> tuple[Any, ...]:
        return super().convert([value] if isinstance(value, str) else value, key)


_IP = Parsed(_ip_literal, "an IP address", keep_text=False)
_OPTIONAL_IP = Parsed(_optional(_ip_literal), "an IP address", keep_text=False)


@dataclass(frozen=True, kw_only=True)
class HAConfig:
    """The load-balancer pair: the virtual IP, this node, and the other node."""

    virtual_ip: tuple[str, ...] = setting(_OneOrMore(_IP, unique=True), [])
    node_address: str = setting(_OPTIONAL_IP, "")
    peer: str = setting(_OPTIONAL_IP, "")
    replication_port: int = setting(Int(1, 65535), 5566)

    def _problems(self) -> Iterator[tuple[str, str]]:
        if self.node_address in self.virtual_ip:
            yield "node_address", "is a virtual IP: it must be this node's own address"
        if self.peer and not self.node_address:
            yield "peer", "needs ha.node_address: the replication link runs between node addresses"
        if self.peer and self.peer in (self.node_address, *self.virtual_ip):
            yield "peer", "must be the other node's own address"


def _network(text: str) -> str:
    """A network such as 198.51.100.0/24 (an address alone is a /32 or /128)."""
    try:
        return str(ipaddress.ip_network(text, strict=False))
    except ValueError:
        raise ValueError("expected an address or a network such as 198.51.100.0/24") from None


def _readable_file(text: str) -> str:
    """A file sipha can read now (certificates, keys); "" = not set."""
    if text:
        try:
            Path(text).read_bytes()
        except OSError as e:
            raise ValueError(f"cannot read: {e.strerror or e}") from None
    return text


_FILE = Parsed(_readable_file, "a readable file")


@dataclass(frozen=True, kw_only=True)
class TLSConfig:
    """Certificates for ``tls:`` listeners and for TLS to media servers (PEM files).

    The certificate (with its chain) is also shown to a media server that asks
    for a client certificate. Peers are always verified, name included.
    """

    certificate: str = setting(_FILE, "")
    private_key: str = setting(_FILE, "")
    ca_certificates: str = setting(_FILE, "")

    def _problems(self) -> Iterator[tuple[str, str]]:
        if bool(self.certificate) != bool(self.private_key):
            missing = "private_key" if self.certificate else "certificate"
            yield missing, "needed with tls.certificate and tls.private_key, which go together"


@dataclass(frozen=True, kw_only=True)
class PikeConfig:
    """Per-source limiting (OpenSIPS's pike module, with its names).

    The density counts every message (OpenSIPS scripts usually count initial
    requests only), so its default is higher than pike's 30: 200 in 2 s lets
    a trunk of some 30 calls a second through and stops any scanner's flood.
    """

    enabled: bool = setting(Bool(), True)
    sampling_time_unit: float = setting(Number(gt=0), 2)
    reqs_density_per_unit: int = setting(Int(ge=1), 200)
    remove_latency: float = setting(Number(gt=0), 120)
    action: str = setting(Choice(("drop", "reply")), "drop")
    nftables: bool = setting(Bool(), False)
    trusted: tuple[str, ...] = setting(List(Parsed(_network, "a network", keep_text=False)), [])


@dataclass(frozen=True, kw_only=True)
class ScannersConfig:
    drop: bool = setting(Bool(), True)
    user_agents: tuple[str, ...] = setting(
        List(Str()),
        [
            "friendly-scanner",
            "sipcli",
            "sipvicious",
            "sip-scan",
            "iWar",
            "sundayddr",
            "VaxSIPUserAgent",
            "SIVuS",
            "Gulp",
            "smap",
            "pplsip",
            "sipptk",
        ],
    )


@dataclass(frozen=True, kw_only=True)
class LimitsConfig:
    """Bounds on what a crowd of clients can make sipha hold."""

    tcp_connections: int = setting(Int(ge=1), 4096)
    tcp_connections_per_source: int = setting(Int(ge=1), 64)
    tcp_idle_timeout: float = setting(Number(gt=0), 120)
    tcp_message_timeout: float = setting(Number(gt=0), 10)
    transactions: int = setting(Int(ge=100), 500000)
    dialogs: int = setting(Int(ge=10), 100000)
    reserved_descriptors: int = setting(Int(ge=8), 64)


def _nameserver(text: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``HOST`` (port 53), HOST an IP address, IPv6 in brackets."""
    if text.startswith("["):
        host, bracket, port = text[1:].partition("]")
        if not bracket or (port and not port.startswith(":")):
            raise ValueError("expected [IPv6]:PORT, e.g. [::1]:53")
        if ":" not in host:
            raise ValueError("brackets are for IPv6 addresses only")
        port = port[1:]
    elif text.count(":") > 1:
        raise ValueError("an IPv6 address goes in brackets, e.g. [::1]:53")
    else:
        host, _, port = text.partition(":")
    return _ip_literal(host), _port(port) if port else 53


@dataclass(frozen=True, kw_only=True)
class DNSConfig:
    """How destinations given by name are resolved (RFC 3263)."""

    nameservers: tuple[tuple[str, int], ...] = setting(
        List(Parsed(_nameserver, "a name server", keep_text=False), unique=True), []
    )
    retry_time: float = setting(Number(gt=0), 1)
    retries: int = setting(Int(0, 10), 1)
    cache_size: int = setting(Int(ge=16), 1000)


@dataclass(frozen=True, kw_only=True)
class Config:
    proxy: ProxyConfig = setting(Table(ProxyConfig), {})
    timers: TimersConfig = setting(Table(TimersConfig), {})
    log: LogConfig = setting(Table(LogConfig), {})
    database: DatabaseConfig = setting(Table(DatabaseConfig), {})
    route: RouteConfig = setting(Table(RouteConfig), {})
    dispatcher: DispatcherConfig = setting(Table(DispatcherConfig), {})
    load_balancer: LoadBalancerConfig = setting(Table(LoadBalancerConfig), {})
    dialog: DialogConfig = setting(Table(DialogConfig), {})
    manhole: ManholeConfig = setting(Table(ManholeConfig), {})
    control: ControlConfig = setting(Table(ControlConfig), {})
    metrics: MetricsConfig = setting(Table(MetricsConfig), {})
    ha: HAConfig = setting(Table(HAConfig), {})
    tls: TLSConfig = setting(Table(TLSConfig), {})
    pike: PikeConfig = setting(Table(PikeConfig), {})
    scanners: ScannersConfig = setting(Table(ScannersConfig), {})
    limits: LimitsConfig = setting(Table(LimitsConfig), {})
    dns: DNSConfig = setting(Table(DNSConfig), {})
    # Not a key: the file this came from, as given.
    path: Path | None = None

    def _problems(self) -> Iterator[tuple[str, str]]:
        for index, listener in enumerate(self.proxy.listen):
            if listener.transport == "tls" and not self.tls.certificate:
                yield (
                    f"proxy.listen[{index}]",
                    f"{str(listener)!r} needs tls.certificate and tls.private_key",
                )
        node = self.ha.node_address
        if node and any(listener.host == node for listener in self.proxy.listen):
            yield (
                "ha.node_address",
                f"{node} is also in proxy.listen: calls go to the virtual IP, and the node's"
                " own address only carries probes and health checks",
            )

    def with_db_url(self, url: str) -> Config:
        """A copy using ``url`` (``--db-url``, like OpenSIPS's db_url) instead of the file's.

        A relative SQLite path here is relative to the working directory, as
        any path given on a command line.
        """
        try:
            check_db_url(url)
        except ValueError as e:
            raise ConfigError("database.url", f"{url!r} is not a database URL: {e}") from None
        db = DatabaseConfig(url=url, resolved_url=resolve_db_url(url, Path.cwd()))
        return dataclasses.replace(self, database=db)


# --------------------------------------------------------------------------
# Entry points.

_TOML_POSITION = re.compile(r"\s*\(at line (\d+), column (\d+)\)$")
_TOML_EOF = re.compile(r"\s*\(at end of document\)$")


def parse_config(text: str, path: str | os.PathLike[str] | None = None) -> Config:
    """Validate TOML ``text``; ``path`` names it in errors and anchors relative paths."""
    where = os.fspath(path) if path is not None else "<config>"
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        message = str(e)
        if m := _TOML_POSITION.search(message):
            location = f"{where}:{m[1]}:{m[2]}"
        elif m := _TOML_EOF.search(message):
            location = f"{where}:{text.count(chr(10)) + 1}"
        else:
            location, m = where, None
        reason = message[: m.start()] if m else message
        raise ConfigFileError(location, f"invalid TOML: {reason[:1].lower()}{reason[1:]}") from None
    config: Config = _build(Config, raw, "")
    base_dir = Path(where).parent if path is not None else Path.cwd()
    db = config.database
    db = dataclasses.replace(db, resolved_url=resolve_db_url(db.url, base_dir))
    return dataclasses.replace(config, database=db, path=Path(path) if path is not None else None)


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read and validate the config file at ``path``."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise ConfigFileError(os.fspath(path), f"cannot read: {e.strerror or e}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise ConfigFileError(f"{os.fspath(path)}:{line}", "invalid TOML: not UTF-8") from None
    return parse_config(text, path)
