"""Compose sipha's pieces into the service tree ``twistd sipha`` runs."""

from __future__ import annotations

import contextlib
import gc
import itertools
import signal
import socket
import threading
import time
from typing import Any

from twisted.application import internet, service
from twisted.internet import defer
from twisted.internet.interfaces import IResolver

from sipha import __version__, core_build
from sipha.balancer import LoadBalancer
from sipha.config import Config, ListenAddress
from sipha.control import Control
from sipha.dialog_store import DialogStore
from sipha.dispatcher import Dispatcher
from sipha.ha import AddressWatch, HighAvailability, Role
from sipha.locator import DNSLocator, make_resolver, stop_resolver
from sipha.logs import Log, set_level
from sipha.nftables import KernelBlocklist
from sipha.operations import add_operations
from sipha.pike import Pike, TrustedSources
from sipha.probing import Prober
from sipha.proxy import Locator, OverloadGuard, ProxyCore
from sipha.replication import Outbox, ReplicationLink, WarmCopy
from sipha.routing import RouteHelpers
from sipha.store import Database
from sipha.tls import TLSContexts
from sipha.transaction import TimerSettings
from sipha.transport import ListenError, Transports
from sipha.uri import URIError, parse_uri

log = Log(namespace="sipha.service")


def build_modules(config: Config) -> tuple[Dispatcher, LoadBalancer]:
    """Dispatcher and load balancer on the config file's lists (the tables come later)."""
    ds, lb = config.dispatcher, config.load_balancer
    dispatcher = Dispatcher(
        ds.destination,
        probing_threshold=ds.probing_threshold,
        probing_mode=ds.probing_mode,
        reply_codes=ds.reply_codes,
    )
    balancer = LoadBalancer(
        lb.destination, probing_threshold=lb.probing_threshold, reply_codes=lb.reply_codes
    )
    return dispatcher, balancer


def node_listener(config: Config) -> ListenAddress | None:
    """The node's own socket: probes leave from it and their replies come back to it.

    A socket of its own, so probe replies never queue behind a flood of
    customer traffic (nor are dropped with it when the receive queue is full).
    In a pair it is on ``[ha] node_address``, on the port of the first UDP
    listener (media servers see probes from each node on the port they see
    calls from); otherwise beside the first UDP listener on a port the kernel
    picks (port 0 until bound). None without a UDP listener.
    """
    ports = [lst for lst in config.proxy.listen if lst.transport == "udp"]
    if config.ha.node_address:
        return ListenAddress("udp", config.ha.node_address, ports[0].port if ports else 5060)
    return ListenAddress("udp", ports[0].host, 0) if ports else None


def trusted_hosts(config: Config, dispatcher: Dispatcher, balancer: LoadBalancer) -> set[str]:
    """What pike never limits besides ``[pike] trusted``: the media servers and the pair."""
    hosts = {config.ha.node_address, config.ha.peer, *(lst.host for lst in config.proxy.listen)}
    for entry in (*dispatcher.list(), *balancer.list()):
        with contextlib.suppress(URIError):
            hosts.add(parse_uri(entry["uri"]).host)
    hosts.discard("")
    return hosts


def build_core(
    config: Config,
    clock: Any,
    send: Any,
    modules: tuple[Dispatcher, LoadBalancer] | None = None,
    node: ListenAddress | None = None,
    locator: Locator | None = None,
) -> ProxyCore:
    """The sans-IO proxy for ``config``, on ``clock`` and writing through ``send``.

    ``node`` is the node's own socket as bound (see :func:`node_listener`);
    ``locator`` resolves destinations given by name (RFC 3263).
    """
    dispatcher, balancer = modules or build_modules(config)
    timers = config.timers
    pike = None
    if config.pike.enabled:
        trusted = TrustedSources(config.pike.trusted)
        trusted.update(trusted_hosts(config, dispatcher, balancer))
        pike = Pike(
            clock,
            sampling_time_unit=config.pike.sampling_time_unit,
            reqs_density_per_unit=config.pike.reqs_density_per_unit,
            remove_latency=config.pike.remove_latency,
            trusted=trusted,
        )

    def helpers(core: ProxyCore) -> RouteHelpers:
        return RouteHelpers(core, config.route, config.proxy.max_forwards, balancer, dispatcher)

    return ProxyCore(
        clock,
        send,
        config.proxy.listen,
        config.route.load_function(),
        TimerSettings(timers.t1, timers.t2, timers.t4, timers.fr_timer, timers.fr_inv_timer),
        node_listener=node,
        pike=pike,
        pike_reply=config.pike.action == "reply",
        scanners=config.scanners.user_agents if config.scanners.drop else (),
        max_transactions=config.limits.transactions,
        max_dialogs=config.limits.dialogs,
        max_message_size=config.proxy.max_message_size,
        dialog_timeout=config.dialog.default_timeout,
        helpers_factory=helpers,
        locator=locator,
    )


def build_locator(config: Config, reactor: Any, resolver: IResolver) -> DNSLocator:
    """RFC 3263 location for the transports and address families sipha listens on."""
    listen = config.proxy.listen
    families = {listener.family for listener in listen}
    return DNSLocator(
        resolver,
        reactor,
        transports={listener.transport for listener in listen},
        ipv4=socket.AF_INET in families,
        ipv6=socket.AF_INET6 in families,
        cache_size=config.dns.cache_size,
    )


def tune_garbage_collector() -> None:
    """Keep the cyclic garbage collector off the signalling path.

    CPython's defaults collect every 700 allocations (a third of the CPU with
    many calls in progress, bench/profile_core.py) and now and then scan every
    live object: with thousands of calls in progress that stalls signalling for
    100 ms and more. sipha's calls free themselves by reference counting
    (tests/unit/test_garbage.py), so the collector here scans young objects
    only, once, and never the long-lived ones on its own: what outlives a young
    collection is a transaction or a call in progress, which a second scan would
    find alive again (bench/profile_core.py: that scan took two thirds of the
    collector's time). Nor is what was alive at start-up scanned: it is frozen.
    :func:`collect_old_garbage` looks for cycles among the old objects hourly.
    """
    gc.collect()  # start-up garbage first: a frozen object is never collected
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, GC_NEVER, GC_NEVER)


#: A young collection runs once this many more container objects are alive.
GC_YOUNG_THRESHOLD = 2500
#: A threshold no count reaches: the older generations are never collected automatically.
GC_NEVER = 2**31 - 1
#: Seconds between full collections.
GC_FULL_INTERVAL = 3600.0
#: Seconds between two attempts to load the tables at start (doubling), while the database is away.
TABLES_RETRY = (0.5, 10.0)
#: Seconds a datagram may wait to be read before new calls are refused (half of
#: T1, when the callers' retransmissions start to add to the load), and under
#: which they are taken again.
OVERLOAD_WAIT = (0.25, 0.05)
#: Seconds between two readings of the receive queue.
OVERLOAD_CHECK_INTERVAL = 0.1
#: Seconds between two sweeps of the sources pike no longer hears from.
PIKE_EXPIRY_INTERVAL = 30.0
#: Seconds a real-time dialog write waits for other changes to join its transaction:
#: a tenth of the time a caller waits before it retransmits (T1), far below any
#: failover's, and it halves what the table costs the proxy per call.
DIALOG_WRITE_GATHER = 0.02


def collect_old_garbage() -> None:
    """The full collection the automatic ones leave out, logged with what it cost."""
    started = time.perf_counter()
    found = gc.collect()
    log.info(
        "garbage collector: {found} unreachable objects in a full collection of {ms:.0f} ms",
        found=found,
        ms=(time.perf_counter() - started) * 1000,
    )


class SIPService(service.MultiService):
    """Sockets, proxy core, database and probes; all of them live only while it runs."""

    def __init__(self, config: Config, reactor: Any = None):
        super().__init__()
        self.config = config
        self._reactor = reactor
        self.transports: Transports | None = None
        self.core: ProxyCore | None = None
        self.database: Database | None = None
        self.store: DialogStore | None = None
        self.control: Control | None = None
        self.ha: HighAvailability | None = None
        self.tls: TLSContexts | None = None
        self.blocklist: KernelBlocklist | None = None
        self.address_watch: AddressWatch | None = None
        self.resolver: IResolver | None = None
        self.ready: defer.Deferred[None] = defer.Deferred()
        self._tables: defer.Deferred[None] = defer.succeed(None)

    @property
    def reactor(self) -> Any:
        if self._reactor is None:
            from twisted.internet import reactor

            self._reactor = reactor
        return self._reactor

    def startService(self) -> None:  # noqa: N802
        config, reactor = self.config, self.reactor
        set_level(config.log.level)
        tune_garbage_collector()
        dispatcher, balancer = build_modules(config)
        self.tls = TLSContexts(config.tls)
        self.tls.load()  # checked with the config already (sipha.tap)
        self.transports = Transports(
            reactor, config.proxy.max_message_size, config.limits, self.tls
        )
        buffer = config.proxy.udp_receive_buffer
        dns = config.dns
        self.resolver = make_resolver(reactor, dns.nameservers, dns.retry_time, dns.retries)
        locator = build_locator(config, reactor, self.resolver)
        try:
            node = node_listener(config)
            if node is not None:  # first: its port may be the kernel's choice
                node = self.transports.listen(node, buffer)
            self.core = core = build_core(
                config, reactor, self.transports.send, (dispatcher, balancer), node, locator
            )
            self.transports.core = core
            for listener in config.proxy.listen:
                self.transports.listen(listener, buffer)
        except ListenError as error:
            # One line, not a traceback: the usual cause is another sipha running.
            raise SystemExit(f"sipha: {error}") from None
        self.database = Database(
            config.database.resolved_url,
            reactor,
            owner=config.ha.node_address or socket.gethostname(),
        )
        self.database.start()
        self.store = DialogStore(
            self.database,
            reactor,
            config.dialog.db_mode,
            update_period=config.dialog.db_update_period,
            max_queue=config.dialog.queue_limit,
            live=core.dialogs,
            gather=DIALOG_WRITE_GATHER,
        )
        self.database.watch(self.store.retry_now)
        self.control = control = Control(
            config, self.database, dispatcher, balancer, core.dialogs, self.store
        )
        control.core = core
        control.probers = self._start_probers(dispatcher, balancer)
        if core.pike is not None:
            self._wire_pike(core.pike, control, dispatcher, balancer)
        timers = config.timers
        self.ha = control.ha = HighAvailability(
            reactor,
            core,
            balancer,
            virtual_ips=config.ha.virtual_ip,
            store=self.store,
            probers=control.probers,
            probe_while_passive=bool(config.ha.node_address),
            early_lifetime=timers.fr_timer + timers.fr_inv_timer,
            tables_loaded=lambda: _when_done(self._tables),
            wait=self.database.wait,
        )
        core.dialogs.observers = (self.store,) if self.store.follows_changes else ()
        if config.ha.peer:
            self._link(self.ha)
        for interval, call, args in (
            (GC_FULL_INTERVAL, collect_old_garbage, ()),
            (PIKE_EXPIRY_INTERVAL, self._expire_pike, ()),
            (OVERLOAD_CHECK_INTERVAL, self._watch_overload, (OverloadGuard(*OVERLOAD_WAIT),)),
        ):
            timer = internet.TimerService(interval, call, *args)
            timer.clock = reactor
            timer.setServiceParent(self)
        # Operations: Manhole, control socket, /metrics, as configured.
        add_operations(self, control, reactor)
        super().startService()
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGHUP, self._on_sighup)
        self._tables = defer.ensureDeferred(self._load_tables_when_it_answers())
        _when_done(self._tables).chainDeferred(self.ready)
        if config.ha.virtual_ip:
            _warn_of_a_cold_standby(config)
            self.address_watch = AddressWatch(reactor, config.ha.virtual_ip, self.ha.vip_changed)
            self.address_watch.start()  # the first role, at once
        else:
            self.ha.set_role(Role.ACTIVE, "no virtual IP configured")
        log.info(
            "sipha {version} ({build} core) started with {config}",
            version=__version__,
            build=core_build(),
            config=config.path,
        )

    def _wire_pike(
        self, pike: Pike, control: Control, dispatcher: Dispatcher, balancer: LoadBalancer
    ) -> None:
        """Pike trusts the destinations after each reload; the kernel drops if asked to."""
        control.on_reload = lambda: self._trust_destinations(pike, dispatcher, balancer)
        if self.config.pike.nftables:
            assert self.core is not None
            self.blocklist = control.blocklist = KernelBlocklist(
                self.reactor,
                [listener.port for listener in self.core.listeners],
                self.config.pike.remove_latency,
                f"sipha_{self.config.proxy.listen[0].port}",
            )
            pike.on_limited = self.blocklist.add
            defer.ensureDeferred(self.blocklist.start())

    def _trust_destinations(
        self, pike: Pike, dispatcher: Dispatcher, balancer: LoadBalancer
    ) -> None:
        """The destinations changed: pike trusts the media servers now listed."""
        if isinstance(pike.trusted, TrustedSources):
            pike.trusted.update(trusted_hosts(self.config, dispatcher, balancer))
            pike.retrust()

    def _expire_pike(self) -> None:
        assert self.core is not None
        if self.core.pike is not None:
            self.core.pike.expire()

    def _start_probers(self, dispatcher: Dispatcher, balancer: LoadBalancer) -> list[Prober]:
        """A prober per module with an interval, from the node's own address if it has one."""
        config, core = self.config, self.core
        probers = []
        for name, module, settings, interval in (
            ("dispatcher", dispatcher, config.dispatcher, config.dispatcher.ping_interval),
            (
                "load_balancer",
                balancer,
                config.load_balancer,
                config.load_balancer.probing_interval,
            ),
        ):
            if interval > 0:
                method = getattr(settings, "ping_method", None) or settings.probing_method
                from_uri = getattr(settings, "ping_from", None) or settings.probing_from
                prober = Prober(
                    name,
                    core,
                    module,
                    interval=interval,
                    method=method,
                    from_uri=from_uri,
                    local=core.node_listener,
                )
                prober.service(self.reactor).setServiceParent(self)
                probers.append(prober)
        return probers

    def _link(self, ha: HighAvailability) -> None:
        """The replication link to the other node, and the dialogs' stream to it."""
        assert self.core is not None
        settings = self.config.ha
        warm = WarmCopy(self.reactor)
        outbox = Outbox(self.core.dialogs)
        link = ReplicationLink(
            self.reactor,
            settings.node_address,
            settings.peer,
            settings.replication_port,
            outbox,
            warm,
            role=lambda: ha.role or "passive",
            on_peer_role=ha.peer_said,
            on_peer_ended=ha.peer_ended,
        )
        link.setServiceParent(self)
        ha.attach(warm, link)
        self.core.dialogs.observers += (outbox,)

    async def _load_tables(self) -> None:
        """Create missing tables and take the destinations from them."""
        assert self.database is not None
        assert self.control is not None
        await self.database.create_schema()
        await self.control.reload()

    async def _load_tables_when_it_answers(self) -> None:
        """Load the tables at start, however long the database takes to answer.

        The proxy routes on the config lists meanwhile: routing never waits
        for the database. A database that is down is logged once, and tried
        again with a backoff, at once when one of its hosts answers again.
        """
        assert self.database is not None
        delay, longest = TABLES_RETRY
        for attempt in itertools.count(1):
            if not self.running:
                return
            try:
                await self._load_tables()
            except Exception as error:
                if attempt == 1:
                    log.error(
                        "database {database}: {error}; routing on the config file's"
                        " destinations until it answers",
                        database=self.database,
                        error=error,
                    )
                await self.database.wait(delay)
                delay = min(2 * delay, longest)
                continue
            if attempt > 1:
                log.info("database {database} answers: tables loaded", database=self.database)
            return

    async def _reload_tables(self) -> None:
        """``kill -HUP``: one attempt, logged if it fails (the operator tries again)."""
        try:
            await self._load_tables()
        except Exception as error:
            log.error(
                "database {database}: {error}; destinations unchanged",
                database=self.database,
                error=error,
            )

    def _watch_overload(self, guard: OverloadGuard) -> None:
        """Refuse new calls while the receive queue is backed up (see OverloadGuard)."""
        assert self.transports is not None
        assert self.core is not None
        waited, dropped = self.transports.receive_backlog()
        if guard.update(waited, dropped, *self.core.message_counts()) == self.core.shedding:
            return
        self.core.shedding = guard.overloaded
        if guard.overloaded:
            log.warn(
                "overloaded: datagrams wait {waited:.0f} ms to be read, {dropped} dropped in all;"
                " new calls get 503",
                waited=waited * 1000,
                dropped=dropped,
            )
        else:
            log.info("receive queue drained: taking new calls again")

    def _on_sighup(self, signum: int, frame: Any) -> None:
        """``kill -HUP`` reloads the destination tables (MI ``ds_reload``/``lb_reload``) and TLS files."""

        def reload() -> None:
            if self.tls is not None:
                self.tls.reload()
            defer.ensureDeferred(self._reload_tables())

        self.reactor.callFromThread(reload)

    def stopService(self) -> defer.Deferred[None]:  # noqa: N802
        return defer.ensureDeferred(self._stop())

    async def _stop(self) -> None:
        if self.address_watch is not None:
            self.address_watch.stop()
        if self.resolver is not None:
            stop_resolver(self.resolver)
        await super().stopService()
        if self.transports is not None:
            await self.transports.stop()
        if self.store is not None:
            await self.store.stop()
        if self.blocklist is not None:
            await self.blocklist.stop()
        if self.database is not None:
            self.database.close()


def _warn_of_a_cold_standby(config: Config) -> None:
    """A pair without a node address or a peer works, but takes over less: say what is lost."""
    if not config.ha.node_address:
        log.warn(
            "ha.node_address is not set: while passive this node cannot probe the media"
            " servers (its probes would leave from the virtual IP), so at takeover their"
            " state is as old as this node's last active spell"
        )
    if not config.ha.peer:
        log.warn(
            "ha.peer is not set: no calls are streamed between the nodes, so a takeover reads"
            " the dialog table only, and calls ringing at the failover are not taken over"
        )


def _when_done(work: defer.Deferred[Any]) -> defer.Deferred[None]:
    """A new Deferred that fires (with None) once ``work`` has, leaving ``work``'s result alone."""
    done: defer.Deferred[None] = defer.Deferred()

    def fire(result: Any) -> Any:
        done.callback(None)
        return result

    work.addBoth(fire)
    return done


def make_service(config: Config) -> service.IService:
    """The whole of sipha for ``config``."""
    return SIPService(config)
