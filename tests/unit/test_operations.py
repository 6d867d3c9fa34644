"""The operations pieces that need no running sipha: socket paths, checks, CLI, JSON logs."""

from __future__ import annotations

import io
import json
import socket
import time
from pathlib import Path

import pytest
from twisted.logger import LogLevel, eventsFromJSONLogFile, globalLogPublisher

from sipha import ctl
from sipha.config import ConfigError, parse_config
from sipha.logs import JSONLinesObserver, Log, use_json_logs
from sipha.operations import check, is_loopback_endpoint


def test_default_socket_path_is_one_rule_for_server_and_client() -> None:
    assert ctl.default_socket_path(0, {"XDG_RUNTIME_DIR": "/run/user/0"}) == Path(
        "/run/sipha/control.sock"
    )
    assert ctl.default_socket_path(1000, {"XDG_RUNTIME_DIR": "/run/user/1000"}) == Path(
        "/run/user/1000/sipha/control.sock"
    )
    assert ctl.default_socket_path(1000, {}) == Path("/tmp/sipha-1000/control.sock")
    assert ctl.default_socket_path(1000, {"XDG_RUNTIME_DIR": "relative"}) == Path(
        "/tmp/sipha-1000/control.sock"
    )
    assert ctl.control_socket("/srv/x.sock") == Path("/srv/x.sock")
    assert ctl.control_socket("") == ctl.default_socket_path()


@pytest.mark.parametrize(
    ("endpoint", "loopback"),
    [
        ("tcp:2323:interface=127.0.0.1", True),
        ("tcp:2323:interface=127.0.0.2", True),
        (r"tcp6:2323:interface=\:\:1", True),
        ("unix:/run/sipha/manhole.sock", True),
        ("tcp:2323", False),
        ("tcp:2323:interface=0.0.0.0", False),
        ("tcp:2323:interface=192.0.2.1", False),
    ],
)
def test_loopback_endpoints(endpoint: str, loopback: bool) -> None:
    assert is_loopback_endpoint(endpoint) is loopback


def config(text: str):  # type: ignore[no-untyped-def]
    return parse_config(text, "/etc/sipha/sipha.toml")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "[manhole]\nenabled = true\n",
            "manhole.authorized_keys: the Manhole needs authorized_keys or passwords",
        ),
        (
            '[manhole]\nenabled = true\nauthorized_keys = "/nonexistent/keys"\n',
            "manhole.authorized_keys: cannot read /nonexistent/keys: No such file or directory",
        ),
        (
            '[manhole]\ntelnet = "tcp:2323:interface=127.0.0.1"\n',
            "manhole.telnet: needs manhole.enabled = true",
        ),
        (
            '[manhole]\nenabled = true\npasswords = "/x"\ntelnet = "tcp:2323"\n',
            "manhole.telnet: 'tcp:2323' is not on loopback",
        ),
    ],
)
def test_manhole_settings_that_cannot_work_stop_the_start(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as error:
        check(config(text))
    assert str(error.value).startswith(message)


def test_password_file_must_be_private(tmp_path: Path) -> None:
    passwords = tmp_path / "passwords"
    passwords.write_text("admin:secret\n")
    passwords.chmod(0o644)
    text = f'[manhole]\nenabled = true\npasswords = "{passwords}"\n'
    with pytest.raises(ConfigError, match=r"readable by others \(mode 0644\): chmod 600 it"):
        check(config(text))
    passwords.chmod(0o600)
    check(config(text))
    check(config(text + 'telnet = "tcp:2323:interface=127.0.0.1"\n'))


def test_authorized_keys_without_a_key_is_refused(tmp_path: Path) -> None:
    keys = tmp_path / "authorized_keys"
    keys.write_text("# nobody yet\n")
    with pytest.raises(ConfigError, match="holds no usable public key"):
        check(config(f'[manhole]\nenabled = true\nauthorized_keys = "{keys}"\n'))


# -- sipha-ctl without sipha ---------------------------------------------------------------


def test_ctl_exit_3_when_there_is_no_socket(tmp_path: Path, capsys) -> None:
    path = tmp_path / "control.sock"
    with pytest.raises(SystemExit) as done:
        ctl.main(["--socket", str(path), "destinations", "--json"])
    assert done.value.code == ctl.EXIT_NOT_RUNNING == 3
    assert capsys.readouterr() == (
        "",
        f"sipha-ctl: sipha is not running: no control socket at {path}\n",
    )


def test_ctl_exit_3_when_the_socket_is_left_over(tmp_path: Path, capsys) -> None:
    path = tmp_path / "control.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as left:
        left.bind(str(path))  # bound, never listening: what a killed process leaves
    with pytest.raises(SystemExit) as done:
        ctl.main(["--socket", str(path), "counters"])
    assert done.value.code == 3
    assert "nothing listens on" in capsys.readouterr().err


def test_ctl_reads_the_socket_from_the_config(tmp_path: Path, capsys) -> None:
    path = tmp_path / "elsewhere.sock"
    conf = tmp_path / "sipha.toml"
    conf.write_text(f'[control]\nsocket = "{path}"\n')
    with pytest.raises(SystemExit) as done:
        ctl.main(["dialogs", "--config", str(conf)])
    assert done.value.code == 3
    assert str(path) in capsys.readouterr().err


def test_ctl_usage_errors_exit_2(tmp_path: Path, capsys) -> None:
    for argv in (["bogus"], ["lb", "add", "x", "sip:a", "pstn=1"], []):
        with pytest.raises(SystemExit) as done:
            ctl.main(argv)
        assert done.value.code == 2
    bad = tmp_path / "bad.toml"
    bad.write_text("[control]\nsocket = 3\n")
    with pytest.raises(SystemExit) as done:
        ctl.main(["--config", str(bad), "destinations"])
    assert done.value.code == 2
    assert "control.socket: expected a string" in capsys.readouterr().err


def test_destinations_table() -> None:
    text = ctl.show_destinations(
        {
            "load_balancer": [
                {
                    "id": 1,
                    "group": 1,
                    "uri": "sip:fs1",
                    "enabled": True,
                    "reason": None,
                    "description": "FS1",
                    "resources": [{"name": "pstn", "load": 3, "max": 32}],
                },
                {
                    "id": 2,
                    "group": 1,
                    "uri": "sip:fs2",
                    "enabled": False,
                    "reason": "operator",
                    "description": "FS2",
                    "resources": [{"name": "pstn", "load": 0, "max": 32}],
                },
            ],
            "dispatcher": [
                {
                    "set": 1,
                    "uri": "sip:fs1",
                    "state": "active",
                    "weight": 1,
                    "priority": 0,
                    "description": "FS1",
                }
            ],
            "sources": {"load_balancer": "table", "dispatcher": "config"},
        }
    )
    assert text.splitlines() == [
        "load balancer (INVITE), from the table:",
        "ID  GROUP  URI      STATE                LOAD       DESCRIPTION",
        "1   1      sip:fs1  enabled              pstn=3/32  FS1",
        "2   1      sip:fs2  disabled (operator)  pstn=0/32  FS2",
        "",
        "dispatcher (REGISTER), from the config file:",
        "SET  URI      STATE   WEIGHT  PRIORITY  DESCRIPTION",
        "1    sip:fs1  active  1       0         FS1",
    ]


def test_database_table_says_which_host_is_in_use_and_why() -> None:
    text = ctl.show_database(
        {
            "engine": "mysql",
            "host": "db2:3306",
            "connected": True,
            "reason": "db1:3306: Lost connection to server during query (2013)",
            "since": 0.0,
            "failovers": 1,
            "last_failover": {"at": 0.0, "from": "db1:3306", "to": "db2:3306", "reason": "..."},
            "conflicts_retried": 2,
            "hosts": [
                {"address": "db1:3306", "in_use": False, "state": "down", "detail": "refused"},
                {"address": "db2:3306", "in_use": True, "state": "up", "detail": "Galera, Synced"},
                {
                    "address": "db3:3306",
                    "in_use": False,
                    "state": "not synced",
                    "detail": "Galera node not Synced (wsrep_local_state 2 Donor/Desynced)",
                },
            ],
        }
    )
    epoch = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(0))
    assert text.splitlines() == [
        f"database: db2:3306 since {epoch} (db1:3306: Lost connection to server during query"
        " (2013))",
        f"failovers: 1, conflicts retried: 2; last failover {epoch} from db1:3306 to db2:3306",
        "HOST      STATE       LAST CHECK",
        "db1:3306  down        refused",
        "db2:3306  up, in use  Galera, Synced",
        "db3:3306  not synced  Galera node not Synced (wsrep_local_state 2 Donor/Desynced)",
    ]
    sqlite = {"engine": "sqlite", "host": "/var/lib/sipha.sqlite", "connected": True, "hosts": []}
    assert ctl.show_database(sqlite) == "database: sqlite /var/lib/sipha.sqlite"


# -- logs ------------------------------------------------------------------------------------


def test_json_lines_carry_the_call_id_and_read_back() -> None:
    out = io.StringIO()
    observer = JSONLinesObserver(out)
    globalLogPublisher.addObserver(observer)
    try:
        log = Log(namespace="sipha.test")
        log.info("dialog {call_id} ended", call_id="abc@x")
        log.warn("cannot reach target {target}", target=Path("/x"), call_id="def@x")
        log.info("nothing about a call")
    finally:
        globalLogPublisher.removeObserver(observer)
    lines = out.getvalue().splitlines()
    assert len(lines) == 3
    first, second, third = map(json.loads, lines)
    assert (first["text"], first["call_id"], first["level"]) == (
        "dialog abc@x ended",
        "abc@x",
        "info",
    )
    assert second["text"] == "cannot reach target /x [Call-ID def@x]"
    assert (second["target"], second["level"]) == ("/x", "warn")
    assert "call_id" not in third
    assert third["time"].endswith("+00:00")
    events = list(eventsFromJSONLogFile(io.StringIO(out.getvalue()), recordSeparator=""))
    assert [e["log_level"] for e in events] == [LogLevel.info, LogLevel.warn, LogLevel.info]


def test_json_logs_go_where_twistd_would_have_written() -> None:
    import sipha.logs

    for options, target in (
        ({"nodaemon": True, "logfile": None}, "-"),
        ({"nodaemon": False, "logfile": None}, "twistd.log"),
        ({"nodaemon": True, "logfile": "/var/log/sipha.log"}, "/var/log/sipha.log"),
    ):
        options |= {"logger": None, "syslog": False}
        use_json_logs(options)
        assert (options["logger"], sipha.logs.json_log_file) == ("sipha.logs.json_observer", target)
    for options in ({"logger": "my.observer"}, {"logger": None, "syslog": True}):
        before = dict(options)
        use_json_logs(options)
        assert options == before
    sipha.logs.json_log_file = None
