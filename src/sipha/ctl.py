"""``sipha-ctl``: drive a running sipha from a shell, as ``opensipsctl`` drove OpenSIPS.

It talks to sipha over a UNIX socket that sipha serves (``[control] socket``),
one JSON request and one JSON reply per line, with a plain blocking socket: no
reactor, no Twisted import, so it starts fast and works from any script.
Who may use it is decided by the socket's file permissions (``[control]
mode``, 0600 by default: sipha's own user and root).

Exit codes, for scripts:

0  done; the answer is on standard output
1  sipha answered with an error (unknown destination, refused row, ...)
2  usage: bad arguments, or a config file that cannot be read
3  sipha is not running: no control socket, or nobody listening on it
4  sipha could not be talked to: permission denied, timeout, garbled answer
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

__all__ = [
    "EXIT_ERROR",
    "EXIT_NOT_RUNNING",
    "EXIT_OK",
    "EXIT_UNREACHABLE",
    "EXIT_USAGE",
    "call",
    "control_socket",
    "default_socket_path",
    "main",
]

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_NOT_RUNNING, EXIT_UNREACHABLE = 0, 1, 2, 3, 4

SOCKET_NAME = "control.sock"


def default_socket_path(uid: int | None = None, environ: Mapping[str, str] | None = None) -> Path:
    """Where sipha serves its control socket when ``[control] socket`` is "".

    The one rule used by sipha and by ``sipha-ctl`` alike, so that with the
    same config they meet without being told: ``/run/sipha/`` for root,
    else ``$XDG_RUNTIME_DIR/sipha/`` (the user's private runtime directory),
    else ``/tmp/sipha-<uid>/``.
    """
    uid = os.getuid() if uid is None else uid
    env = os.environ if environ is None else environ
    if uid == 0:
        return Path("/run/sipha") / SOCKET_NAME
    runtime = env.get("XDG_RUNTIME_DIR", "")
    if runtime.startswith("/"):
        return Path(runtime) / "sipha" / SOCKET_NAME
    return Path(f"/tmp/sipha-{uid}") / SOCKET_NAME


def control_socket(configured: str) -> Path:
    """The socket for a ``[control] socket`` value: itself, or the default when ""."""
    return Path(configured) if configured else default_socket_path()


# -- talking to sipha -------------------------------------------------------------------


class NotRunningError(Exception):
    """Nothing serves the socket: sipha is stopped (or looks elsewhere)."""


class UnreachableError(Exception):
    """Something is there but the conversation failed."""


class ReplyError(Exception):
    """sipha understood and said no."""


def call(
    path: Path, command: str, args: Mapping[str, Any] | None = None, timeout: float = 30.0
) -> Any:
    """Send one command and return sipha's result; raise one of the three errors above."""
    request = json.dumps({"command": command, "args": dict(args or {})}) + "\n"
    deadline = time.monotonic() + timeout
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(os.fspath(path))
        except (FileNotFoundError, NotADirectoryError):
            raise NotRunningError(f"no control socket at {path}") from None
        except ConnectionRefusedError:
            raise NotRunningError(
                f"nothing listens on {path} (left by a sipha that stopped)"
            ) from None
        except PermissionError:
            raise UnreachableError(
                f"permission denied on {path}: the socket's mode"
                " ([control] mode) decides who may control sipha"
            ) from None
        except OSError as error:
            raise UnreachableError(f"cannot connect to {path}: {error.strerror or error}") from None
        try:
            sock.sendall(request.encode())
            data = bytearray()
            while not data.endswith(b"\n"):
                sock.settimeout(max(0.001, deadline - time.monotonic()))
                chunk = sock.recv(1 << 16)
                if not chunk:
                    break
                data += chunk
        except TimeoutError:
            raise UnreachableError(f"no answer from sipha within {timeout:g} s") from None
        except OSError as error:
            raise UnreachableError(
                f"connection to {path} failed: {error.strerror or error}"
            ) from None
    try:
        reply = json.loads(data)
    except ValueError:
        raise UnreachableError(f"garbled answer from {path}: {bytes(data[:200])!r}") from None
    if not isinstance(reply, dict) or "ok" not in reply:
        raise UnreachableError(f"unexpected answer from {path}: {reply!r:.200}")
    if not reply["ok"]:
        raise ReplyError(str(reply.get("error", "error")))
    return reply.get("result")


# -- human-readable output --------------------------------------------------------------


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Left-aligned columns, two spaces apart, as ``ps`` or ``ss`` print them."""
    cells = [list(headers), *[["" if v is None else str(v) for v in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells
    )


def _source(sources: Mapping[str, str], name: str) -> str:
    where = sources.get(name)
    return {"table": "from the table", "config": "from the config file"}.get(where or "", "")


def show_destinations(result: Mapping[str, Any]) -> str:
    sources = result.get("sources", {})
    lb_rows = []
    for d in result["load_balancer"]:
        state = "enabled" if d["enabled"] else f"disabled ({d['reason'] or 'probes'})"
        load = " ".join(f"{r['name']}={r['load']}/{r['max']}" for r in d["resources"])
        lb_rows.append((d["id"], d["group"], d["uri"], state, load, d["description"]))
    ds_rows = [
        (d["set"], d["uri"], d["state"], d["weight"], d["priority"], d["description"])
        for d in result["dispatcher"]
    ]
    return "\n".join(
        [
            f"load balancer (INVITE), {_source(sources, 'load_balancer')}:",
            table(("ID", "GROUP", "URI", "STATE", "LOAD", "DESCRIPTION"), lb_rows),
            "",
            f"dispatcher (REGISTER), {_source(sources, 'dispatcher')}:",
            table(("SET", "URI", "STATE", "WEIGHT", "PRIORITY", "DESCRIPTION"), ds_rows),
        ]
    )


def show_dialogs(result: Sequence[Mapping[str, Any]]) -> str:
    now = time.time()
    rows = [
        (
            d["call_id"],
            d["state"],
            d["destination"] or "-",
            f"{now - d['start_time']:.0f}s" if d["start_time"] else "-",
        )
        for d in result
    ]
    return f"{len(rows)} dialogs\n" + table(("CALL-ID", "STATE", "DESTINATION", "UP"), rows)


def _scalar(value: Any) -> bool:
    return not isinstance(value, Mapping | list)


def _lines(prefix: str, value: Any) -> list[str]:
    """Nested answers as ``key key: name value, name value`` lines."""
    if isinstance(value, Mapping) and all(_scalar(v) for v in value.values()):
        inner = ", ".join(f"{k} {v}" for k, v in value.items()) or "none"
        return [f"{prefix}: {inner}" if prefix else inner]
    if isinstance(value, Mapping):
        return [line for k, v in value.items() for line in _lines(f"{prefix} {k}".strip(), v)]
    if isinstance(value, list):
        return [line for item in value for line in _lines(prefix, item)] or [f"{prefix}: none"]
    return [f"{prefix}: {value}" if prefix else str(value)]


def show_counters(result: Mapping[str, Any]) -> str:
    return "\n".join(
        line for name, value in result.items() for line in _lines(name.replace("_", " "), value)
    )


def show_limited(result: Sequence[Mapping[str, Any]]) -> str:
    """``sipha-ctl pike``: each limited source, how much it was refused, when last heard."""
    now = time.time()
    rows = [
        (
            s["source"],
            s["refused"],
            f"{now - s['last_seen']:.0f}s ago" if s["last_seen"] else "-",
            f"{s['kernel_until'] - now:.0f}s more" if s.get("kernel_until") else "-",
        )
        for s in result
    ]
    headers = ("SOURCE", "REFUSED", "LAST SEEN", "KERNEL DROPS IT")
    return f"{len(rows)} sources limited\n" + table(headers, rows)


def show_role(result: Mapping[str, Any]) -> str:
    """``sipha-ctl ha status``: the role, since when, the last takeover, the link."""
    since = result["since"]
    lines = [
        f"role: {result['role']} since {_clock(since)} ({time.time() - since:.0f} s)",
        f"virtual IP: {', '.join(result['virtual_ip']) or 'none configured'}",
    ]
    takeover = result.get("last_takeover")
    if takeover:
        duration = takeover["duration_ms"]
        lines.append(
            f"last takeover: {_clock(takeover['at'])} ({takeover['reason']}),"
            f" {takeover['calls_restored']} calls"
            + (f" in {duration:.0f} ms" if duration is not None else ", dialog table pending")
            + f" ({takeover['from_standby']} from the standby copy in"
            f" {takeover['standby_ms']:.1f} ms, {takeover['from_table'] or 0} from the table)"
        )
    link = result.get("replication")
    if link:
        ways = [
            w for w, up in (("sending", link["sending"]), ("receiving", link["receiving"])) if up
        ]
        lines.append(
            f"replication: peer {link['peer']}:{link['port']} ({', '.join(ways) or 'down'}),"
            f" standby copy {link['dialogs']} calls"
            + (" (current)" if link["trusted"] else " (not current)")
            + (f", peer is {link['peer_role']}" if link["peer_role"] else "")
        )
    return "\n".join(lines)


def show_database(result: Mapping[str, Any]) -> str:
    """``sipha-ctl database``: the host in use, since when and why; each host's last check."""
    if result["engine"] != "mysql":
        return f"database: {result['engine']} {result['host']}"
    lines = [
        f"database: {result['host']} since {_clock(result['since'])} ({result['reason']})"
        + ("" if result["connected"] else ", NOT ANSWERING"),
        f"failovers: {result['failovers']}, conflicts retried: {result['conflicts_retried']}",
    ]
    last = result.get("last_failover")
    if last:
        lines[-1] += f"; last failover {_clock(last['at'])} from {last['from']} to {last['to']}"
    rows = [
        (h["address"], h["state"] + (", in use" if h["in_use"] else ""), h["detail"])
        for h in result["hosts"]
    ]
    return "\n".join([*lines, table(("HOST", "STATE", "LAST CHECK"), rows)])


def _clock(seconds: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(seconds))


def show_plain(result: Any) -> str:
    if isinstance(result, Mapping):
        return show_counters(result)
    return "\n".join(_lines("", result))


# -- the command line -------------------------------------------------------------------

Show = Callable[[Any], str]


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    # SUPPRESS: an option given before the command is not reset by the sub-parser.
    common.add_argument(
        "--json",
        action="store_true",
        default=argparse.SUPPRESS,
        help="print sipha's answer as JSON, for scripts",
    )
    common.add_argument(
        "--socket",
        metavar="PATH",
        default=argparse.SUPPRESS,
        help=f"the control socket (default: [control] socket, else {default_socket_path()})",
    )
    common.add_argument(
        "--config",
        metavar="FILE",
        default=argparse.SUPPRESS,
        help="take the socket from this sipha config file's [control] socket",
    )
    common.add_argument(
        "--timeout",
        metavar="SECONDS",
        type=float,
        default=argparse.SUPPRESS,
        help="give up waiting for sipha after this long (default 30)",
    )
    parser = argparse.ArgumentParser(
        prog="sipha-ctl",
        parents=[common],
        description="Control a running sipha: destinations, tables, dialogs, counters.",
        epilog="Exit codes: 0 done, 1 sipha answered with an error, 2 usage,"
        " 3 sipha not running, 4 sipha could not be talked to.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, help: str, parent: Any = commands) -> argparse.ArgumentParser:
        return parent.add_parser(name, help=help, description=help, parents=[common])

    command("destinations", "list destinations with their state and load")
    command("reload", "re-read the dispatcher and load_balancer tables (MI ds_reload/lb_reload)")
    for verb in ("enable", "disable"):
        sub = command(verb, f"{verb} a URI in every dispatcher set and load-balancer group")
        sub.add_argument("uri")

    ds = command("dispatcher", "dispatcher table rows and states").add_subparsers(
        dest="action", metavar="ACTION", required=True
    )
    sub = command("add", "INSERT a row and reload (opensipsctl dispatcher addgw)", ds)
    sub.add_argument("setid", type=int)
    sub.add_argument("uri")
    sub.add_argument("--state", type=int, default=0, choices=(0, 1, 2))
    sub.add_argument("--weight", type=int, default=1)
    sub.add_argument("--priority", type=int, default=0)
    sub.add_argument("--attrs", default="")
    sub.add_argument("--description", default="")
    sub.add_argument(
        "--seed-from-config",
        action="store_true",
        help="if the table is empty, first copy the config file's list into it",
    )
    sub = command("remove", "DELETE a row and reload (opensipsctl dispatcher rmgw)", ds)
    sub.add_argument("setid", type=int)
    sub.add_argument("uri")
    sub = command("state", "set a destination's state (MI ds_set_state)", ds)
    sub.add_argument("setid", type=int)
    sub.add_argument("uri")
    sub.add_argument("state", choices=("active", "inactive", "probing"))

    lb = command("lb", "load_balancer table rows and states").add_subparsers(
        dest="action", metavar="ACTION", required=True
    )
    sub = command("add", "INSERT a row and reload", lb)
    sub.add_argument("group", type=int)
    sub.add_argument("uri")
    sub.add_argument("resources", help="capacities, e.g. pstn=32")
    sub.add_argument("--probe-mode", type=int, default=2, choices=(0, 1, 2))
    sub.add_argument("--description", default="")
    sub.add_argument(
        "--seed-from-config",
        action="store_true",
        help="if the table is empty, first copy the config file's list into it",
    )
    sub = command("remove", "DELETE a row and reload; calls up keep their unit", lb)
    sub.add_argument("group", type=int)
    sub.add_argument("uri")
    for verb in ("enable", "disable"):
        sub = command(verb, f"{verb} a destination by id or URI (MI lb_status)", lb)
        sub.add_argument("destination", help="row id or URI")

    dialogs = command("dialogs", "list, end or reload dialogs")
    actions = dialogs.add_subparsers(dest="action", metavar="ACTION")
    command("list", "the dialogs in progress (the default)", actions)
    sub = command("end", "end a call: BYE to both ends (MI dlg_end_dlg)", actions)
    sub.add_argument("call_id", metavar="CALL-ID")
    command("reload", "take over the calls in the dialog table (after a VIP takeover)", actions)
    command("counters", "requests, responses, transactions, dialogs, probes, dialog store")
    command("pike", "the sources limited now for sending too much (OpenSIPS pike)")
    command("database", "the database host in use and why, and each host's last check")
    ha = command("ha", "this node's role in the load-balancer pair").add_subparsers(
        dest="action", metavar="ACTION", required=True
    )
    command("status", "role, virtual IP, since when, last takeover (exit 0 if sipha answers)", ha)
    command("active", "take the calls over now (keepalived notify MASTER)", ha)
    command("passive", "drop the calls silently now: the other node has them", ha)
    return parser


def _request(args: argparse.Namespace) -> tuple[str, dict[str, Any], Show]:
    """The command to send for parsed ``args``, and how to print its answer."""
    command, action = args.command, getattr(args, "action", None)
    if command == "destinations":
        return "destinations", {}, show_destinations
    if command in ("reload", "counters"):
        return command, {}, show_counters if command == "counters" else show_plain
    if command in ("enable", "disable"):
        return command, {"uri": args.uri}, show_plain
    if command == "dispatcher":
        if action == "add":
            return (
                "dispatcher.add",
                {
                    "setid": args.setid,
                    "uri": args.uri,
                    "state": args.state,
                    "weight": args.weight,
                    "priority": args.priority,
                    "attrs": args.attrs,
                    "description": args.description,
                    "seed": args.seed_from_config,
                },
                show_plain,
            )
        if action == "remove":
            return "dispatcher.remove", {"setid": args.setid, "uri": args.uri}, show_plain
        return (
            "dispatcher.state",
            {"setid": args.setid, "uri": args.uri, "state": args.state},
            show_plain,
        )
    if command == "lb":
        if action == "add":
            return (
                "lb.add",
                {
                    "group": args.group,
                    "uri": args.uri,
                    "resources": args.resources,
                    "probe_mode": args.probe_mode,
                    "description": args.description,
                    "seed": args.seed_from_config,
                },
                show_plain,
            )
        if action == "remove":
            return "lb.remove", {"group": args.group, "uri": args.uri}, show_plain
        return f"lb.{action}", {"destination": args.destination}, show_plain
    if command == "ha":
        return f"ha.{action}", {}, show_role
    if command == "pike":
        return "pike", {}, show_limited
    if command == "database":
        return "database", {}, show_database
    # dialogs
    if action == "end":
        return "dialogs.end", {"call_id": args.call_id}, lambda n: f"{n} dialog(s) ended"
    if action == "reload":
        return "dialogs.reload", {}, lambda n: f"{n} dialog(s) restored"
    return "dialogs", {}, show_dialogs


def _fail(code: int, message: str) -> NoReturn:
    print(f"sipha-ctl: {message}", file=sys.stderr)
    raise SystemExit(code)


def _socket_for(args: argparse.Namespace) -> Path:
    if getattr(args, "socket", None):
        return Path(args.socket)
    if getattr(args, "config", None):
        from sipha.config import ConfigError, load_config

        try:
            config = load_config(args.config)
        except ConfigError as error:
            _fail(EXIT_USAGE, f"{args.config}: {error}")
        return control_socket(config.control.socket)
    return default_socket_path()


def main(argv: Sequence[str] | None = None) -> int:
    """The ``sipha-ctl`` console script."""
    args = _parser().parse_args(argv)
    path = _socket_for(args)
    command, arguments, show = _request(args)
    try:
        result = call(path, command, arguments, getattr(args, "timeout", 30.0))
    except NotRunningError as error:
        _fail(EXIT_NOT_RUNNING, f"sipha is not running: {error}")
    except UnreachableError as error:
        _fail(EXIT_UNREACHABLE, str(error))
    except ReplyError as error:
        _fail(EXIT_ERROR, str(error))
    if getattr(args, "json", False):
        print(json.dumps(result, indent=2))
    else:
        print(show(result))
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
