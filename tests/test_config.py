"""The config file: the sample loads, and every mistake is one line naming the key."""

from __future__ import annotations

import dataclasses
import ipaddress
import socket
import sys
import tomllib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sipha.config import (
    Config,
    ConfigError,
    ConfigFileError,
    DatabaseURL,
    ListenAddress,
    check_sip_uri,
    load_config,
    parse_config,
    parse_db_url,
    parse_resources,
)

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "etc" / "sipha.toml"

LB_DEST = 'group_id = 1\ndst_uri = "sip:127.0.0.1:5071"\nresources = "pstn=32"\n'


def error_of(text: str, path: str = "sipha.toml") -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(text, path)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_sample_config_is_the_reference_deployment() -> None:
    config = load_config(SAMPLE)

    assert [str(a) for a in config.proxy.listen] == ["udp:127.0.0.1:5060", "tcp:127.0.0.1:5060"]
    assert config.proxy.max_forwards == 10
    assert config.timers.fr_timer == 2.0
    assert config.route.function == "sipha.routing:reference_route"
    assert (config.route.lb_group, config.route.lb_resource) == (1, "pstn")
    assert config.route.lb_algorithm == "relative"
    assert (config.route.ds_set, config.route.ds_algorithm) == (1, 0)

    uris = [f"sip:127.0.0.1:{port}" for port in (5071, 5072, 5073, 5074)]
    names = ["FS1", "FS2", "FS3", "FS4"]
    lb = config.load_balancer
    assert [d.dst_uri for d in lb.destination] == uris
    assert [d.description for d in lb.destination] == names
    assert {(d.group_id, d.resources, d.probe_mode) for d in lb.destination} == {(1, "pstn=32", 2)}
    assert lb.destination[0].capacity == {"pstn": 32}
    assert (lb.probing_interval, lb.probing_threshold) == (5.0, 2)

    ds = config.dispatcher
    assert [d.destination for d in ds.destination] == uris
    assert {(d.setid, d.weight, d.state) for d in ds.destination} == {(1, 1, 0)}
    assert (ds.ping_interval, ds.probing_threshold, ds.probing_mode) == (5.0, 2, 1)
    assert ds.reply_codes == (200,)

    assert config.database.url == "sqlite:///../var/sipha.sqlite"
    assert config.database.sqlite_path == str(ROOT / "var" / "sipha.sqlite")
    assert config.path == SAMPLE


def test_sample_config_shows_every_key() -> None:
    """A key added to the schema must be added, with its comment, to the sample."""
    raw = tomllib.loads(SAMPLE.read_text())

    def keys(section: type) -> set[str]:
        return {f.name for f in dataclasses.fields(section) if "kind" in f.metadata}

    for name in keys(Config):
        section_type = type(getattr(Config(), name))
        assert keys(section_type) <= raw[name].keys(), name
    lb_dest, ds_dest = raw["load_balancer"]["destination"][0], raw["dispatcher"]["destination"][0]
    text = SAMPLE.read_text()
    for key in ("weight", "priority", "state", "attrs", "probe_mode"):
        assert f"{key} (" in text, key
    assert {"group_id", "dst_uri", "resources"} <= lb_dest.keys()
    assert {"setid", "destination"} <= ds_dest.keys()


def test_defaults() -> None:
    config = parse_config("", "/etc/sipha/sipha.toml")

    assert [str(a) for a in config.proxy.listen] == ["udp:127.0.0.1:5060", "tcp:127.0.0.1:5060"]
    assert config.proxy.max_message_size == 65535
    assert config.proxy.udp_receive_buffer == 8388608
    timers = config.timers
    assert (timers.fr_timer, timers.fr_inv_timer, timers.t1, timers.t2, timers.t4) == (
        2.0,
        30.0,
        0.5,
        4.0,
        5.0,
    )
    assert config.log.level == "info"
    assert config.database.url == "sqlite:///sipha.sqlite"
    assert config.database.resolved_url == "sqlite:////etc/sipha/sipha.sqlite"
    assert config.dispatcher.ping_from == "sip:dispatcher@localhost"
    assert config.load_balancer.probing_from == "sip:prober@localhost"
    assert config.dispatcher.destination == ()
    assert config.load_balancer.destination == ()


def test_defaults_fill_partial_destination() -> None:
    config = parse_config('[[dispatcher.destination]]\nsetid = 2\ndestination = "sip:fs1"\n')

    (dest,) = config.dispatcher.destination
    assert (dest.setid, dest.weight, dest.priority, dest.state) == (2, 1, 0, 0)
    assert (dest.attrs, dest.description) == ("", "")


def test_config_is_frozen() -> None:
    config = parse_config("")
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.proxy.max_forwards = 5  # type: ignore[misc]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        # unknown keys, at every depth
        ("[proxy]\nlistne = []\n", "proxy.listne: unknown key"),
        ("[prxy]\n", "prxy: unknown key"),
        (
            '[[dispatcher.destination]]\nsetid = 1\ndestination = "sip:a"\nweigth = 2\n',
            "dispatcher.destination[0].weigth: unknown key",
        ),
        # wrong types
        ('[timers]\nfr_timer = "2"\n', "timers.fr_timer: expected a number, got string"),
        ("[proxy]\nmax_forwards = 1.5\n", "proxy.max_forwards: expected an integer, got float"),
        ("[proxy]\nmax_forwards = true\n", "proxy.max_forwards: expected an integer, got boolean"),
        ('[proxy]\nlisten = "udp:127.0.0.1:5060"\n', "proxy.listen: expected an array, got string"),
        ("proxy = 1\n", "proxy: expected a table, got integer"),
        (
            "[dispatcher]\ndestination = [1]\n",
            "dispatcher.destination[0]: expected a table, got integer",
        ),
        # out of range
        ("[proxy]\nmax_forwards = 0\n", "proxy.max_forwards: must be between 1 and 256, got 0"),
        (
            "[proxy]\nmax_message_size = 70000\n",
            "proxy.max_message_size: must be between 1024 and 65535, got 70000",
        ),
        (
            "[proxy]\nudp_receive_buffer = 4096\n",
            "proxy.udp_receive_buffer: must be >= 65536, got 4096",
        ),
        ("[timers]\nt1 = 0\n", "timers.t1: must be > 0, got 0"),
        ("[timers]\nt1 = inf\n", "timers.t1: must be a finite number, got inf"),
        ("[timers]\nt1 = 5\n", "timers.t2: must be >= t1 (5.0), got 4.0"),
        ("[dispatcher]\nping_interval = -1\n", "dispatcher.ping_interval: must be >= 0, got -1"),
        (
            "[dispatcher]\nprobing_mode = 2\n",
            "dispatcher.probing_mode: must be between 0 and 1, got 2",
        ),
        (
            "[dispatcher]\nreply_codes = [200, 700]\n",
            "dispatcher.reply_codes[1]: must be between 100 and 699, got 700",
        ),
        ("[dispatcher]\nreply_codes = []\n", "dispatcher.reply_codes: must not be empty"),
        ("[route]\nds_algorithm = 14\n", "route.ds_algorithm: must be between 0 and 13, got 14"),
        (
            '[log]\nlevel = "verbose"\n',
            "log.level: must be one of 'debug', 'info', 'warn', 'error'; got 'verbose'",
        ),
        (
            '[route]\nlb_algorithm = "1"\n',
            "route.lb_algorithm: must be one of 'relative', 'absolute'; got '1'",
        ),
        # addresses
        (
            '[proxy]\nlisten = ["udp:127.0.0.1:5060", "udp:127.0.0.1:99999"]\n',
            "proxy.listen[1]: 'udp:127.0.0.1:99999' is not an address: port out of range",
        ),
        (
            '[proxy]\nlisten = ["udp:[::1]:0"]\n',
            "proxy.listen[0]: 'udp:[::1]:0' is not an address: port out of range",
        ),
        (
            '[proxy]\nlisten = ["udp:::1:5060"]\n',
            "proxy.listen[0]: 'udp:::1:5060' is not an address: "
            "an IPv6 host goes in brackets, e.g. udp:[::1]:5060",
        ),
        (
            '[proxy]\nlisten = ["udp:[::g]:5060"]\n',
            "proxy.listen[0]: 'udp:[::g]:5060' is not an address: host '::g' is not an IP literal",
        ),
        (
            '[proxy]\nlisten = ["udp:localhost:5060"]\n',
            "proxy.listen[0]: 'udp:localhost:5060' is not an address: "
            "host 'localhost' is not an IP literal",
        ),
        (
            '[proxy]\nlisten = ["sctp:127.0.0.1:5061"]\n',
            "proxy.listen[0]: 'sctp:127.0.0.1:5061' is not an address: "
            "unknown transport 'sctp' (udp, tcp or tls)",
        ),
        (
            '[proxy]\nlisten = ["tls:127.0.0.1:5061"]\n',
            "proxy.listen[0]: 'tls:127.0.0.1:5061' needs tls.certificate and tls.private_key",
        ),
        (
            '[tls]\ncertificate = "/nonexistent/cert.pem"\n',
            "tls.certificate: '/nonexistent/cert.pem' is not a readable file:"
            " cannot read: No such file or directory",
        ),
        (
            '[pike]\ntrusted = ["10.0.0.0/33"]\n',
            "pike.trusted[0]: '10.0.0.0/33' is not a network:"
            " expected an address or a network such as 198.51.100.0/24",
        ),
        (
            '[proxy]\nlisten = ["udp:127.0.0.1"]\n',
            "proxy.listen[0]: 'udp:127.0.0.1' is not an address: missing port",
        ),
        (
            '[proxy]\nlisten = ["tcp:127.0.0.1:5060", "tcp:127.0.0.1:5060"]\n',
            "proxy.listen[1]: 'tcp:127.0.0.1:5060' is listed twice",
        ),
        ("[proxy]\nlisten = []\n", "proxy.listen: must not be empty"),
        # SIP URIs
        (
            '[dispatcher]\nping_from = "dispatcher@localhost"\n',
            "dispatcher.ping_from: 'dispatcher@localhost' is not a SIP URI: "
            "must start with sip: or sips:",
        ),
        (
            '[[dispatcher.destination]]\nsetid = 1\ndestination = "sip:user@"\n',
            "dispatcher.destination[0].destination: 'sip:user@' is not a SIP URI: no host part",
        ),
        # missing required destination fields
        (
            "[[load_balancer.destination]]\n"
            + LB_DEST
            + "[[load_balancer.destination]]\n"
            + LB_DEST
            + '[[load_balancer.destination]]\ngroup_id = 1\nresources = "pstn=32"\n',
            "load_balancer.destination[2].dst_uri: missing",
        ),
        (
            '[[dispatcher.destination]]\ndestination = "sip:a"\n',
            "dispatcher.destination[0].setid: missing",
        ),
        # resources syntax
        (
            '[[load_balancer.destination]]\ngroup_id = 1\ndst_uri = "sip:a"\nresources = "pstn:32"\n',
            "load_balancer.destination[0].resources: 'pstn:32' is not a resource list: "
            "'pstn:32' has no '=' and capacity",
        ),
        (
            '[[load_balancer.destination]]\ngroup_id = 1\ndst_uri = "sip:a"\nresources = "pstn=-1"\n',
            "load_balancer.destination[0].resources: 'pstn=-1' is not a resource list: "
            "capacity of 'pstn' is not an unsigned integer",
        ),
        (
            '[[load_balancer.destination]]\ngroup_id = 1\ndst_uri = "sip:a"\n'
            'resources = "pstn=1;;transc=2"\n',
            "load_balancer.destination[0].resources: 'pstn=1;;transc=2' is not a resource list: "
            "empty entry between ';'",
        ),
        # other syntaxes
        (
            '[database]\nurl = "postgresql://db/sipha"\n',
            "database.url: 'postgresql://db/sipha' is not a database URL: "
            "unsupported scheme 'postgresql' (sqlite or mysql)",
        ),
        (
            '[route]\nfunction = "myroute.route"\n',
            "route.function: 'myroute.route' is not a route function: "
            "expected 'package.module:function'",
        ),
        (
            '[dispatcher]\nping_method = "options"\n',
            "dispatcher.ping_method: 'options' is not a SIP method: "
            "expected upper-case letters, e.g. OPTIONS",
        ),
    ],
)
def test_error_is_one_line_naming_the_key(text: str, message: str) -> None:
    assert error_of(text) == message


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            '[route]\nclient_address_header = "Via"\n',
            "route.client_address_header: 'Via' is not a header name: "
            "sipha routes by this header; name an extension header such as X-AUTH-IP",
        ),
        (
            '[route]\nclient_port_header = "X AUTH"\n',
            "route.client_port_header: 'X AUTH' is not a header name: "
            "expected a header name such as X-AUTH-IP",
        ),
        (
            '[route]\nclient_port_header = "x-auth-ip"\n',
            "route.client_port_header: must differ from client_address_header",
        ),
        (
            '[route]\npath = "yes"\n',
            "route.path: must be one of 'off', 'supported', 'always'; got 'yes'",
        ),
        (
            '[dns]\nnameservers = ["ns1.example.com"]\n',
            "dns.nameservers[0]: 'ns1.example.com' is not a name server: "
            "expected an IP address such as 198.18.0.100",
        ),
        (
            '[dns]\nnameservers = ["::1"]\n',
            "dns.nameservers[0]: '::1' is not a name server: "
            "an IPv6 address goes in brackets, e.g. [::1]:53",
        ),
        (
            '[dns]\nnameservers = ["127.0.0.1:0"]\n',
            "dns.nameservers[0]: '127.0.0.1:0' is not a name server: port out of range",
        ),
        ("[dns]\nretry_time = 0\n", "dns.retry_time: must be > 0, got 0"),
        ("[dns]\ncache_size = 1\n", "dns.cache_size: must be >= 16, got 1"),
    ],
)
def test_client_address_path_and_dns_key_errors(text: str, message: str) -> None:
    assert error_of(text) == message


def test_name_servers() -> None:
    text = '[dns]\nnameservers = ["127.0.0.1:5353", "[::1]", "198.18.0.53"]\n'
    assert parse_config(text).dns.nameservers == (
        ("127.0.0.1", 5353),
        ("::1", 53),
        ("198.18.0.53", 53),
    )


def test_toml_syntax_error_names_file_and_line() -> None:
    with pytest.raises(ConfigFileError) as info:
        parse_config(
            '[proxy]\nmax_forwards = 10\nlisten = ["udp:127.0.0.1:5060",]]\n', "etc/x.toml"
        )
    assert (
        str(info.value)
        == "etc/x.toml:3:33: invalid TOML: expected newline or end of document after a statement"
    )


def test_toml_error_at_end_of_file_names_the_last_line() -> None:
    with pytest.raises(ConfigFileError) as info:
        parse_config('[proxy]\nlisten = ["udp:127.0.0.1:5060"', "x.toml")
    assert str(info.value).startswith("x.toml:2: invalid TOML: ")


def test_unreadable_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigFileError) as info:
        load_config(missing)
    assert str(info.value) == f"{missing}: cannot read: No such file or directory"


def test_file_that_is_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'[log]\nlevel = "info"\n# caf\xe9\n')
    with pytest.raises(ConfigFileError) as info:
        load_config(path)
    assert str(info.value) == f"{path}:3: invalid TOML: not UTF-8"


def test_problem_with_newlines_still_one_line() -> None:
    assert str(ConfigError("route.function", "line one\nline two")) == (
        "route.function: line one line two"
    )


def test_ipv6_listen() -> None:
    config = parse_config(
        '[proxy]\nlisten = ["udp:[::1]:5060", "tcp:[0:0::1]:5061", "udp:127.0.0.1:5060"]\n'
    )

    v6, v6tcp, v4 = config.proxy.listen
    assert v6 == ListenAddress("udp", "::1", 5060)
    assert str(v6) == "udp:[::1]:5060"
    assert str(v6tcp) == "tcp:[::1]:5061"
    assert v6.family == socket.AF_INET6
    assert v4.family == socket.AF_INET


@given(
    transport=st.sampled_from(ListenAddress.TRANSPORTS),
    ip=st.ip_addresses(),
    port=st.integers(1, 65535),
)
def test_listen_address_round_trips(
    transport: str, ip: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int
) -> None:
    address = ListenAddress(transport, str(ip), port)
    assert ListenAddress.parse(str(address)) == address


def test_db_url_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    config = load_config(SAMPLE)

    mysql = config.with_db_url("mysql://sipha:secret@127.0.0.1:3306/sipha")
    assert (
        mysql.database.url
        == mysql.database.resolved_url
        == "mysql://sipha:secret@127.0.0.1:3306/sipha"
    )
    assert mysql.database.sqlite_path is None
    assert mysql.proxy == config.proxy
    assert config.database.url == "sqlite:///../var/sipha.sqlite"  # the original is untouched

    # A relative path on the command line is relative to where the command runs.
    local = config.with_db_url("sqlite:///here.sqlite")
    assert local.database.sqlite_path == str(tmp_path / "here.sqlite")
    assert config.with_db_url("sqlite:///:memory:").database.sqlite_path == ":memory:"

    with pytest.raises(ConfigError) as info:
        config.with_db_url("redis://127.0.0.1")
    assert str(info.value) == (
        "database.url: 'redis://127.0.0.1' is not a database URL: "
        "unsupported scheme 'redis' (sqlite or mysql)"
    )


@pytest.mark.parametrize(
    ("url", "parsed"),
    [
        (
            "mysql://sipha:s%40cret@db1:3307,db2,[2001:db8::3]:3308/sipha",
            DatabaseURL(
                "mysql",
                "sipha",
                "s@cret",
                (("db1", 3307), ("db2", 3306), ("2001:db8::3", 3308)),
                "sipha",
            ),
        ),
        ("mysql://127.0.0.1/x", DatabaseURL("mysql", "root", "", (("127.0.0.1", 3306),), "x")),
        ("mysql:///x", DatabaseURL("mysql", "root", "", (("localhost", 3306),), "x")),
        ("sqlite:////var/lib/sipha.sqlite", DatabaseURL("sqlite", path="/var/lib/sipha.sqlite")),
    ],
)
def test_db_url_names_its_hosts_in_order(url: str, parsed: DatabaseURL) -> None:
    assert parse_db_url(url) == parsed


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        (
            "mysql://u@db1:3306,db2:x/sipha",
            "host 2 of 2 ('db2:x'): port 'x' is not a number from 1 to 65535",
        ),
        ("mysql://u@db1:3306,,db3/sipha", "host 2 of 3 is empty"),
        (
            "mysql://u@db1:70000/sipha",
            "host 'db1:70000': port '70000' is not a number from 1 to 65535",
        ),
        ("mysql://u@[::1/sipha", "host '[::1': expected [IPV6]:PORT"),
        (
            "mysql://u@db1,db2",
            "expected mysql://USER:PASS@HOST:PORT/DB, ending with a database name",
        ),
    ],
)
def test_a_bad_multi_host_url_is_one_line_at_the_check(url: str, problem: str) -> None:
    """Caught by --check-config, not by the start (which once died on the port)."""
    assert error_of(f'[database]\nurl = "{url}"\n') == (
        f"database.url: {url!r} is not a database URL: {problem}"
    )


def test_a_missing_driver_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    config = parse_config('[database]\nurl = "mysql://u@db1,db2/sipha"\n')
    monkeypatch.setitem(sys.modules, "MySQLdb", None)  # import MySQLdb now raises ImportError
    with pytest.raises(ConfigError) as info:
        config.database.require_driver()
    assert str(info.value) == (
        "database.url: a mysql:// URL needs mysqlclient (import of MySQLdb halted; None in"
        " sys.modules): install it with pip install 'sipha[mysql]'"
    )
    parse_config("").database.require_driver()  # SQLite needs nothing more


def test_relative_sqlite_path_follows_the_config_file(tmp_path: Path) -> None:
    (tmp_path / "conf").mkdir()
    path = tmp_path / "conf" / "sipha.toml"
    path.write_text('[database]\nurl = "sqlite:///../data/sipha.sqlite"\n')
    assert load_config(path).database.sqlite_path == str(tmp_path / "data" / "sipha.sqlite")
    path.write_text('[database]\nurl = "sqlite:////srv/sipha.sqlite"\n')
    assert load_config(path).database.sqlite_path == "/srv/sipha.sqlite"


def test_route_function_loads() -> None:
    route = parse_config('[route]\nfunction = "os.path:join"\n').route
    assert route.load_function()("a", "b") == "a/b"


@pytest.mark.parametrize(
    ("ref", "message"),
    [
        (
            "no_such_module_xyz:route",
            "route.function: cannot import 'no_such_module_xyz': No module named 'no_such_module_xyz'",
        ),
        (
            "os.path:no_such_function",
            "route.function: 'os.path' has no attribute 'no_such_function'",
        ),
        ("os:sep", "route.function: 'os:sep' is not callable"),
    ],
)
def test_route_function_errors(ref: str, message: str) -> None:
    route = parse_config(f'[route]\nfunction = "{ref}"\n').route
    with pytest.raises(ConfigError) as info:
        route.load_function()
    assert str(info.value) == message


def test_resources_syntax() -> None:
    assert parse_resources("pstn=32;transc=10") == {"pstn": 32, "transc": 10}
    assert parse_resources(" pstn = 32 ; transc=0 ") == {"pstn": 32, "transc": 0}
    with pytest.raises(ValueError, match="appears twice"):
        parse_resources("pstn=1;pstn=2")


@pytest.mark.parametrize(
    "uri",
    [
        "sip:127.0.0.1:5071",
        "sips:fs1.example.com",
        "sip:user@[::1]:5060;transport=tcp",
        "SIP:alice@example.com?subject=x",
        "sip:+1;npdi@gw.example.com;user=phone",
    ],
)
def test_sip_uris_accepted(uri: str) -> None:
    check_sip_uri(uri)


@pytest.mark.parametrize(
    ("uri", "reason"),
    [
        ("tel:+15551234", "must start with sip: or sips:"),
        ("sip:", "no host part"),
        ("sip:user@host:x", "port 'x' is not a number"),
        ("sip:[::1", "missing ']'"),
        ("sip:a b", "contains whitespace"),
        ("sip:host:70000", "port out of range"),
    ],
)
def test_sip_uris_refused(uri: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        check_sip_uri(uri)
