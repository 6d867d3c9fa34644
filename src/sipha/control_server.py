"""The control socket ``sipha-ctl`` talks to: a UNIX socket, one JSON line each way.

Why a UNIX socket and not loopback HTTP with a token: the socket's file mode
(``[control] mode``, 0600 by default) is the whole authentication, checked
by the kernel on every connect. There is no token to generate, store, rotate
or leak into a shell history or ``ps``, and nothing listens on the network at
all, not even on loopback where every local user could knock. It is the
``mi_fifo`` of the reference deployment, made safe for several clients.

Each request is ``{"command": NAME, "args": {...}}``; each reply is
``{"ok": true, "result": ...}`` or ``{"ok": false, "error": TEXT}``. The
commands run on the reactor thread, like everything else that touches the
live objects; the ones that go to the database answer when it has.

One sipha serves a socket at a time: it holds an ``flock`` on ``<socket>.lock``
for as long as it runs. The kernel lets go of it when the process ends, however
it ends, so a sipha restarted right after a ``kill -9`` comes up at once;
Twisted's PID lock (``listenUNIX(wantPID=True)``) took the killed process,
still a zombie until its parent reaped it, for a live owner and refused.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import stat
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from twisted.application import service
from twisted.internet import defer, protocol
from twisted.protocols.basic import LineOnlyReceiver

from sipha.ctl import control_socket
from sipha.logs import Log
from sipha.metrics import counters

if TYPE_CHECKING:
    from sipha.control import Control

log = Log(namespace="sipha.control")

Handler = Callable[..., Any]


def _commands(control: Control) -> dict[str, Handler]:
    """Command name -> callable taking the request's args; a Deferred/coroutine is awaited."""

    def destinations() -> dict[str, Any]:
        return {**control.destinations(), "sources": dict(control.sources)}

    def lb_state(enabled: bool) -> Handler:
        def act(destination: str | int) -> str:
            control.lb_set_enabled(destination, enabled)
            return f"load_balancer {destination} {'enabled' if enabled else 'disabled'}"

        return act

    def ds_state(setid: int, uri: str, state: str) -> str:
        control.ds_set_state(setid, uri, state)
        return f"dispatcher set {setid} {uri} {state}"

    return {
        "destinations": destinations,
        "reload": control.reload,
        "enable": lambda uri: control.set_enabled(uri, True),
        "disable": lambda uri: control.set_enabled(uri, False),
        "dispatcher.add": control.add_dispatcher,
        "dispatcher.remove": control.remove_dispatcher,
        "dispatcher.state": ds_state,
        "lb.add": lambda group, **kw: control.add_load_balancer(group, **kw),
        "lb.remove": lambda group, uri: control.remove_load_balancer(group, uri),
        "lb.enable": lb_state(True),
        "lb.disable": lb_state(False),
        "dialogs": control.dialog_list,
        "dialogs.end": control.end_dialog,
        "dialogs.reload": control.reload_dialogs,
        "counters": lambda: counters(control),
        "pike": control.pike_limited,
        "database": control.database_status,
        "ha.status": control.ha_status,
        "ha.active": lambda: control.ha_set_role("active"),
        "ha.passive": lambda: control.ha_set_role("passive"),
    }


def _error_text(error: BaseException) -> str:
    if isinstance(error, KeyError) and error.args:
        return str(error.args[0])  # not its repr
    return str(error) or type(error).__name__


class ControlProtocol(LineOnlyReceiver):
    """One client connection: requests answered in order, one line each."""

    delimiter = b"\n"
    MAX_LENGTH = 1 << 16

    factory: ControlFactory

    def lineReceived(self, line: bytes) -> None:  # noqa: N802
        try:
            request = json.loads(line)
            name, args = request["command"], request.get("args") or {}
            if not isinstance(name, str) or not isinstance(args, dict):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            self._reply(
                {
                    "ok": False,
                    "error": 'bad request: expected a JSON object with "command" and "args"',
                }
            )
            return
        handler = self.factory.commands.get(name)
        if handler is None:
            self._reply({"ok": False, "error": f"unknown command {name!r}"})
            return
        done = defer.maybeDeferred(handler, **args)  # coroutines are awaited too
        done.addCallbacks(
            lambda result: self._reply({"ok": True, "result": result}),
            lambda failure: self._failed(name, failure),
        )

    def _failed(self, name: str, failure: Any) -> None:
        error = failure.value
        if not isinstance(error, KeyError | ValueError | TypeError | RuntimeError):
            log.failure("control command {command} failed", failure, command=name)
        self._reply({"ok": False, "error": _error_text(error)})

    def _reply(self, reply: dict[str, Any]) -> None:
        if self.transport is not None and self.connected:
            self.sendLine(json.dumps(reply, default=str).encode())

    def lineLengthExceeded(self, line: bytes) -> None:  # noqa: N802
        self._reply({"ok": False, "error": "request too long"})
        self.transport.loseConnection()


class ControlFactory(protocol.ServerFactory):
    protocol = ControlProtocol
    noisy = False

    def __init__(self, commands: dict[str, Handler]):
        self.commands = commands


class ControlService(service.Service):
    """Serve the control socket while sipha runs; the socket file goes when it stops."""

    def __init__(self, control: Control, reactor: Any):
        self.control = control
        self.reactor = reactor
        config = control.config.control
        self.path = control_socket(config.socket)
        self.mode = int(config.mode, 8)
        self.port: Any = None
        self.lock: int | None = None

    def startService(self) -> None:  # noqa: N802
        super().startService()
        _prepare_directory(self.path.parent, self.mode)
        try:
            self.lock = _lock(self.path)
            _remove_stale(self.path)
        except SocketTakenError as error:
            # One line, not a traceback, as for a SIP port already taken.
            raise SystemExit(f"sipha: {error}") from None
        self.port = self.reactor.listenUNIX(
            os.fspath(self.path), ControlFactory(_commands(self.control)), mode=self.mode
        )
        log.info(
            "control socket {path} (mode {mode:04o}): sipha-ctl talks here",
            path=self.path,
            mode=self.mode,
        )

    def stopService(self) -> Any:  # noqa: N802
        super().stopService()
        port, self.port = self.port, None
        stopped = (
            defer.maybeDeferred(port.stopListening) if port is not None else defer.succeed(None)
        )
        # The lock goes last: until the socket file is gone, the next sipha would
        # find it answering.
        return stopped.addBoth(self._unlock)

    def _unlock(self, result: Any) -> Any:
        if self.lock is not None:
            os.close(self.lock)
            self.lock = None
        return result


class SocketTakenError(Exception):
    """Another process serves the control socket: this sipha must not start."""


def _lock(path: Path) -> int:
    """Lock ``<socket>.lock`` for as long as the returned descriptor stays open.

    The file stays when sipha stops: deleting it would let two processes lock
    two different files of the same name.
    """
    lock = Path(f"{path}.lock")
    if lock.is_symlink():
        lock.unlink()  # Twisted's PID lock (wantPID), left by a killed sipha of an earlier release
    fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise SocketTakenError(f"another sipha serves the control socket {path}") from None
    return fd


def _prepare_directory(directory: Path, mode: int) -> None:
    """Create the socket's directory if missing, searchable by those the mode lets in.

    An existing directory is used as it is, except one in a world-writable
    place like /tmp that another user could have made for us: it must be ours
    and writable by us alone.
    """
    search = 0o700 | (0o050 if mode & 0o070 else 0) | (0o005 if mode & 0o007 else 0)
    try:
        directory.mkdir(mode=search, parents=True)
    except FileExistsError:
        pass
    else:
        os.chmod(directory, search)  # mkdir's mode is filtered by the umask
        return
    info = os.lstat(directory)
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
        raise RuntimeError(f"control socket directory {directory} is not a directory")
    parent_sticky = os.stat(directory.parent).st_mode & stat.S_ISVTX
    if parent_sticky and (info.st_uid != os.getuid() or info.st_mode & 0o022):
        raise RuntimeError(
            f"control socket directory {directory} belongs to someone else or"
            " is writable by others: remove it, or set [control] socket"
        )


def _remove_stale(path: Path) -> None:
    """Remove the socket file a killed sipha left; call it with the lock held.

    With the lock, a socket file is stale unless something answers on it: a
    process that serves it without the lock (a sipha from before the lock was
    an flock, or another program). That is an error, not a stale file.
    """
    try:
        if not stat.S_ISSOCK(os.lstat(path).st_mode):
            return
    except FileNotFoundError:
        return
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(os.fspath(path))
        except OSError as error:
            if error.errno == errno.ECONNREFUSED:
                path.unlink(missing_ok=True)
            return
    raise SocketTakenError(f"another process serves the control socket {path}")
