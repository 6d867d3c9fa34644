"""Compose sipha's pieces into the service tree ``twistd sipha`` runs."""

from __future__ import annotations

from typing import Any

from twisted.application import service
from twisted.internet import defer

from sipha import __version__
from sipha.config import Config
from sipha.logs import Log
from sipha.proxy import ProxyCore
from sipha.routing import RoundRobin, RouteHelpers
from sipha.transaction import TimerSettings
from sipha.transport import Transports

log = Log(namespace="sipha.service")


def build_core(config: Config, reactor: Any, send: Any) -> ProxyCore:
    """The sans-IO proxy for ``config``, wired to ``reactor``'s clock and ``send``."""
    timers = config.timers
    balancer = RoundRobin(_groups((d.group_id, d.dst_uri) for d in config.load_balancer.destination))
    dispatcher = RoundRobin(_groups((d.setid, d.destination) for d in config.dispatcher.destination))

    def helpers(core: ProxyCore) -> RouteHelpers:
        return RouteHelpers(core, config.route, config.proxy.max_forwards, balancer, dispatcher)

    return ProxyCore(
        reactor, send, config.proxy.listen, config.route.load_function(),
        TimerSettings(timers.t1, timers.t2, timers.t4, timers.fr_timer, timers.fr_inv_timer),
        max_message_size=config.proxy.max_message_size, helpers_factory=helpers,
    )  # fmt: skip


def _groups(pairs: Any) -> dict[int, list[str]]:
    groups: dict[int, list[str]] = {}
    for group, uri in pairs:
        groups.setdefault(group, []).append(uri)
    return groups


class SIPService(service.Service):
    """Owns the sockets and the proxy core; both live only while the service runs."""

    def __init__(self, config: Config, reactor: Any = None):
        self.config = config
        self._reactor = reactor
        self.transports: Transports | None = None
        self.core: ProxyCore | None = None

    @property
    def reactor(self) -> Any:
        if self._reactor is None:
            from twisted.internet import reactor

            self._reactor = reactor
        return self._reactor

    def startService(self) -> None:  # noqa: N802
        super().startService()
        proxy = self.config.proxy
        self.transports = Transports(self.reactor, proxy.max_message_size)
        self.core = build_core(self.config, self.reactor, self.transports.send)
        self.transports.core = self.core
        for listener in proxy.listen:
            self.transports.listen(listener, proxy.udp_receive_buffer)
        log.info("sipha {version} started with {config}", version=__version__,
                 config=self.config.path)  # fmt: skip

    def stopService(self) -> defer.Deferred[None]:  # noqa: N802
        super().stopService()
        if self.transports is None:
            return defer.succeed(None)
        return defer.ensureDeferred(self.transports.stop())


def make_service(config: Config) -> service.IService:
    """The whole of sipha for ``config``, as a :class:`MultiService`."""
    top = service.MultiService()
    SIPService(config).setServiceParent(top)
    return top
