"""The Manhole: a Python prompt inside the running sipha, over SSH.

Built from ``twisted.conch.manhole_ssh`` directly rather than through
``manhole_tap``: that helper only knows password files and keeps its host
key in a class-level dict shared by every factory. Here:

* it is off unless ``[manhole] enabled``, and listens on 127.0.0.1 unless
  told otherwise;
* a client proves itself with a key from ``authorized_keys`` (re-read at
  each login, so adding a key needs no restart) or a password from the
  ``passwords`` file; there is no anonymous login;
* the host key is ``host_key``, or one generated once (ed25519) and kept in
  sipha's state directory, so clients see the same key at every start;
* telnet exists only when ``[manhole] telnet`` names a loopback endpoint,
  and still asks for a password.

Code typed at the prompt runs on the reactor thread: a ``time.sleep`` or a
long loop there stops all SIP traffic for as long as it runs.
"""

from __future__ import annotations

import functools
import inspect
import os
import pydoc
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives.asymmetric import ed25519
from twisted.application import service, strports
from twisted.conch import manhole, manhole_ssh
from twisted.conch.checkers import IAuthorizedKeysDB, SSHPublicKeyChecker, readAuthorizedKeyFile
from twisted.conch.insults import insults
from twisted.conch.ssh import keys
from twisted.conch.telnet import (
    AuthenticatingTelnetProtocol,
    ITelnetProtocol,
    TelnetBootstrapProtocol,
    TelnetTransport,
)
from twisted.cred import portal
from twisted.cred.checkers import FilePasswordDB
from twisted.internet import defer, protocol
from zope.interface import implementer

from sipha.logs import Log
from sipha.metrics import counters

if TYPE_CHECKING:
    from sipha.config import Config, ManholeConfig
    from sipha.control import Control

log = Log(namespace="sipha.manhole")

HOST_KEY_NAME = "manhole_host_key"


class ManholeError(Exception):
    """A Manhole setting that cannot work; ``key`` names it as in the config file."""

    def __init__(self, key: str, problem: str):
        super().__init__(f"{key}: {problem}")
        self.key = key
        self.problem = problem


# -- authentication -----------------------------------------------------------------------


@implementer(IAuthorizedKeysDB)
class AuthorizedKeysFile:
    """The keys of one ``authorized_keys`` file, for any user name, read at each login."""

    def __init__(self, path: Path):
        self.path = path

    def getAuthorizedKeys(self, avatarId: bytes) -> Iterable[keys.Key]:  # noqa: N802, N803
        try:
            with self.path.open("rb") as lines:
                return list(readAuthorizedKeyFile(lines))
        except OSError as error:
            log.error("manhole: cannot read {path}: {error}", path=self.path, error=error)
            return []


def read_keys(path: Path) -> list[keys.Key]:
    """The keys of an authorized_keys file; ManholeError if it is unreadable or has none."""
    try:
        with path.open("rb") as lines:
            found = list(readAuthorizedKeyFile(lines))
    except OSError as error:
        raise ManholeError(
            "manhole.authorized_keys", f"cannot read {path}: {error.strerror or error}"
        ) from None
    if not found:
        raise ManholeError("manhole.authorized_keys", f"{path} holds no usable public key")
    return found


def check_password_file(path: Path) -> None:
    """Readable, and readable by its owner alone: it holds passwords in the clear."""
    try:
        mode = path.stat().st_mode
        path.open("rb").close()
    except OSError as error:
        raise ManholeError(
            "manhole.passwords", f"cannot read {path}: {error.strerror or error}"
        ) from None
    if mode & 0o077:
        raise ManholeError(
            "manhole.passwords",
            f"{path} is readable by others (mode {mode & 0o777:04o}): chmod 600 it",
        )


def checkers(settings: ManholeConfig) -> list[Any]:
    """The credential checkers the settings ask for; at least one, never anonymous."""
    found: list[Any] = []
    if settings.authorized_keys:
        path = Path(settings.authorized_keys)
        read_keys(path)
        found.append(SSHPublicKeyChecker(AuthorizedKeysFile(path)))
    if settings.passwords:
        check_password_file(Path(settings.passwords))
        found.append(FilePasswordDB(settings.passwords, cache=False))
    if not found:
        raise ManholeError(
            "manhole.authorized_keys",
            "the Manhole needs authorized_keys or passwords (no anonymous login)",
        )
    return found


# -- host key -----------------------------------------------------------------------------


def state_directory(config: Config) -> Path:
    """Where sipha keeps what it generates: beside the SQLite database, else the user's state dir."""
    sqlite = config.database.sqlite_path
    if sqlite and sqlite != ":memory:":
        return Path(sqlite).parent
    if os.getuid() == 0:
        return Path("/var/lib/sipha")
    base = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return Path(base) / "sipha"


def host_key(config: Config) -> keys.Key:
    """``[manhole] host_key``, or the key generated at the first start and kept since."""
    if config.manhole.host_key:
        path = Path(config.manhole.host_key)
        try:
            return keys.Key.fromFile(os.fspath(path))
        except (OSError, keys.BadKeyError, keys.EncryptedKeyError) as error:
            raise ManholeError("manhole.host_key", f"cannot load {path}: {error}") from None
    path = state_directory(config) / HOST_KEY_NAME
    if not path.exists():
        key = keys.Key(ed25519.Ed25519PrivateKey.generate())
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # made meanwhile by another start: use that one
            pass
        else:
            with os.fdopen(fd, "wb") as out:
                out.write(key.toString("OPENSSH"))
            log.info(
                "manhole: generated host key {path} ({fingerprint})",
                path=path,
                fingerprint=key.fingerprint(keys.FingerprintFormats.SHA256_BASE64),
            )
            return key
    try:
        return keys.Key.fromFile(os.fspath(path))
    except (OSError, keys.BadKeyError) as error:
        raise ManholeError("manhole.host_key", f"cannot load {path}: {error}") from None


# -- the namespace ------------------------------------------------------------------------


def _command(function: Callable[..., Any]) -> Callable[..., Any]:
    """The function as typed at the prompt: a coroutine becomes a Deferred the Manhole prints."""

    @functools.wraps(function)
    def run(*args: Any, **kwargs: Any) -> Any:
        result = function(*args, **kwargs)
        return defer.ensureDeferred(result) if inspect.iscoroutine(result) else result

    return run


def _bare_signature(function: Callable[..., Any]) -> inspect.Signature:
    """``(setid, uri, *, state=0)``: the names and defaults, which is what one types."""
    signature = inspect.signature(function)
    return signature.replace(
        parameters=[p.replace(annotation=p.empty) for p in signature.parameters.values()],
        return_annotation=signature.empty,
    )


def namespace(control: Control) -> dict[str, Any]:
    """The names a Manhole session starts with: the live objects and the control methods."""
    from twisted.internet import reactor

    assert control.core is not None
    commands: dict[str, Callable[..., Any]] = {
        name: _command(getattr(control, name))
        for name in (
            "destinations",
            "reload",
            "set_enabled",
            "ds_set_state",
            "lb_set_enabled",
            "add_dispatcher",
            "remove_dispatcher",
            "add_load_balancer",
            "remove_load_balancer",
            "dialog_list",
            "end_dialog",
            "reload_dialogs",
            "ha_status",
            "ha_set_role",
        )
        if callable(getattr(control, name, None))
    }

    def sipha_counters() -> dict[str, Any]:
        """Requests, responses, transactions, dialogs, probes and dialog store, as now."""
        return counters(control)

    commands["counters"] = sipha_counters
    objects = {
        "config": (control.config, "the config in force (frozen dataclasses)"),
        "core": (control.core, "the proxy core: counters in .stats, transactions in .layer"),
        "dispatcher": (control.dispatcher, "the dispatcher (REGISTER): .list(), .set_state()"),
        "balancer": (control.balancer, "the load balancer (INVITE): .list(), .load(uri)"),
        "dialogs": (control.dialogs, "the live dialogs: iterate it, len() it"),
        "store": (control.store, "the dialog store: .stats"),
        "database": (control.database, "the adbapi database: .pool, .status() (its hosts)"),
        "ha": (control.ha, "the node's role in the pair: .status(), .set_role()"),
        "control": (control, "the Control object behind sipha-ctl"),
        "reactor": (reactor, "the reactor: never block it"),
    }

    def sipha_help(thing: Any = None) -> None:
        """help(): sipha's names; help(x): x's documentation, without a pager."""
        if thing is not None:
            print(pydoc.render_doc(thing, renderer=pydoc.plaintext))
            return
        print("Live objects:")
        for name, (_, text) in objects.items():
            print(f"  {name:<12} {text}")
        print("Commands (the same as sipha-ctl's):")
        for name, function in sorted(commands.items()):
            doc = (inspect.getdoc(function) or "").partition("\n")[0]
            print(f"  {name}{_bare_signature(function)}\n      {doc}")
        print("Code here runs on the reactor thread: keep it short, never sleep.")

    return {
        **{name: value for name, (value, _) in objects.items()},
        **commands,
        "help": sipha_help,
        "__name__": "__sipha_manhole__",
    }


# -- the services -------------------------------------------------------------------------


def ssh_factory(
    ns: dict[str, Any], checkers_: list[Any], key: keys.Key
) -> manhole_ssh.ConchFactory:
    realm = manhole_ssh.TerminalRealm()
    realm.chainedProtocolFactory = lambda: insults.ServerProtocol(manhole.ColoredManhole, ns)
    factory = manhole_ssh.ConchFactory(portal.Portal(realm, checkers_))
    # Instance dicts: the class-level ones are shared by every ConchFactory.
    factory.publicKeys = {key.sshType(): key.public()}
    factory.privateKeys = {key.sshType(): key}
    factory.noisy = False
    return factory


@implementer(portal.IRealm)
class _TelnetRealm:
    def __init__(self, ns: dict[str, Any]):
        self.ns = ns

    def requestAvatar(self, avatarId: Any, mind: Any, *interfaces: Any) -> Any:  # noqa: N802, N803
        if ITelnetProtocol not in interfaces:
            raise NotImplementedError
        proto = TelnetBootstrapProtocol(insults.ServerProtocol, manhole.ColoredManhole, self.ns)
        return ITelnetProtocol, proto, lambda: None


def telnet_factory(ns: dict[str, Any], password_checker: Any) -> protocol.ServerFactory:
    telnet_portal = portal.Portal(_TelnetRealm(ns), [password_checker])
    factory = protocol.ServerFactory()
    factory.protocol = lambda: TelnetTransport(AuthenticatingTelnetProtocol, telnet_portal)
    factory.noisy = False
    return factory


def manhole_services(control: Control, reactor: Any = None) -> list[service.IService]:
    """The SSH Manhole, and the telnet one when asked for, on their endpoints."""
    settings = control.config.manhole
    ns = namespace(control)
    checks = checkers(settings)
    key = host_key(control.config)
    found = [strports.service(settings.listen, ssh_factory(ns, checks, key), reactor=reactor)]
    log.info(
        "manhole: SSH on {listen}, host key {fingerprint}",
        listen=settings.listen,
        fingerprint=key.fingerprint(keys.FingerprintFormats.SHA256_BASE64),
    )
    if settings.telnet:
        passwords = [c for c in checks if isinstance(c, FilePasswordDB)]
        if not passwords:
            raise ManholeError("manhole.telnet", "telnet logs in with passwords: set passwords")
        found.append(
            strports.service(settings.telnet, telnet_factory(ns, passwords[0]), reactor=reactor)
        )
        log.warn("manhole: telnet (cleartext) on {listen}", listen=settings.telnet)
    return found
