"""What an operator runs beside the proxy: Manhole, control socket, metrics endpoint.

:func:`check` runs with the config check, before twistd daemonizes, so a
Manhole without credentials or a telnet port off loopback stops the start
with one line naming the key. :func:`add_operations` is what
``SIPService.startService`` calls to add the services the config asks for.
"""

from __future__ import annotations

import ipaddress
import re
from typing import TYPE_CHECKING, Any

from sipha.config import Config, ConfigError
from sipha.logs import Log

if TYPE_CHECKING:
    from twisted.application.service import MultiService

    from sipha.control import Control

log = Log(namespace="sipha.operations")


def is_loopback_endpoint(description: str) -> bool:
    """A ``unix:`` endpoint, or a TCP one whose ``interface`` is a loopback address."""
    kind, _, rest = description.partition(":")
    if kind == "unix":
        return True
    if kind not in ("tcp", "tcp6", "ssl"):
        return False
    params = {}
    for part in re.split(r"(?<!\\):", rest):
        name, sep, value = part.partition("=")
        if sep:
            params[name] = value.replace("\\", "")
    try:
        return ipaddress.ip_address(params.get("interface", "")).is_loopback
    except ValueError:
        return False  # no interface: every address


def check(config: Config) -> None:
    """Refuse settings the operations services cannot honour safely (ConfigError)."""
    manhole = config.manhole
    if manhole.telnet:
        if not manhole.enabled:
            raise ConfigError("manhole.telnet", "needs manhole.enabled = true")
        if not is_loopback_endpoint(manhole.telnet):
            raise ConfigError(
                "manhole.telnet",
                f"{manhole.telnet!r} is not on loopback: telnet"
                " is cleartext, so only interface=127.0.0.1 or ::1 (or unix:)"
                " is allowed",
            )
        if not manhole.passwords:
            raise ConfigError(
                "manhole.telnet", "telnet logs in with passwords: set manhole.passwords"
            )
    if manhole.enabled:
        from sipha.manhole import ManholeError, checkers

        try:
            checkers(manhole)
        except ManholeError as error:
            raise ConfigError(error.key, error.problem) from None


def add_operations(parent: MultiService, control: Control, reactor: Any) -> None:
    """Add the Manhole, the control socket and ``/metrics`` to ``parent``, as configured.

    The control socket is always served (its path defaults per user, see
    ``sipha.ctl.default_socket_path``); the Manhole only when enabled, the
    metrics only with a ``[metrics] listen`` endpoint.
    """
    from sipha.control_server import ControlService

    config = control.config
    if config.manhole.enabled:
        from sipha.manhole import manhole_services

        if not is_loopback_endpoint(config.manhole.listen):
            log.warn(
                "manhole: SSH listens beyond loopback ({listen}): anyone who gets a key or"
                " password in runs code inside sipha",
                listen=config.manhole.listen,
            )
        for child in manhole_services(control, reactor):
            child.setServiceParent(parent)
    ControlService(control, reactor).setServiceParent(parent)
    if config.metrics.listen:
        from sipha.metrics import metrics_service

        metrics_service(control, config.metrics.listen, reactor).setServiceParent(parent)
