"""Counters of a running sipha: ``sipha-ctl counters`` and Prometheus ``/metrics``.

Both read the live objects (proxy core, transaction layer, dialogs, balancer,
dispatcher, probers, dialog store) at the moment they are asked, on the
reactor thread: the page is rendered by a plain ``twisted.web`` resource
calling prometheus_client's encoder in its ``render_GET``, so no thread ever
iterates a dict the reactor is changing. (``prometheus_client.twisted``'s
``MetricsResource`` runs the WSGI app in the reactor's thread pool: wrong
for live objects.) Nothing is counted twice: the proxy keeps its counters,
and this module only reads them.

Names follow Prometheus conventions, ``sipha_`` first, ``_total`` on
counters; the label sets are small (methods, codes, destinations).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector
from twisted.application import service, strports
from twisted.web import resource, server

from sipha import __version__
from sipha.dbcluster import HostState
from sipha.dialog import DialogState

if TYPE_CHECKING:
    from sipha.control import Control

__all__ = ["SiphaCollector", "counters", "metrics_service", "registry"]

_LIVE_STATES = tuple(s.name.lower() for s in DialogState if s is not DialogState.DELETED)
_HOST_STATES = tuple(state.value for state in HostState)


def counters(control: Control) -> dict[str, Any]:
    """Everything sipha counts, as plain JSON-able data (``sipha-ctl counters``)."""
    core = control.core
    if core is None:
        return {}
    states = Counter(d.state.name.lower() for d in core.dialogs)
    probes: dict[str, dict[str, dict[str, int]]] = {}
    for prober in control.probers:
        per_uri = probes.setdefault(prober.name, {})
        for (uri, outcome), count in sorted(prober.results.items()):
            per_uri.setdefault(uri, {"ok": 0, "failed": 0})[outcome] = count
    store = control.store
    return {
        "requests_received": dict(sorted(core.requests_received.items())),
        "responses_received": {str(k): v for k, v in sorted(core.responses_received.items())},
        "responses_sent": {str(k): v for k, v in sorted(core.layer.responses_sent.items())},
        "requests_forwarded": core.stats["requests_forwarded"],
        "requests_dropped": core.stats["requests_dropped"],
        "responses_dropped": core.stats["responses_dropped"],
        "responses_forwarded_statelessly": core.stats["responses_forwarded_statelessly"],
        "parse_errors": core.stats["parse_errors"],
        "calls_shed": core.stats["calls_shed"],
        "pike_refused": core.stats["pike_refused"],
        "pike_limited_sources": len(control.pike_limited()),
        "scanners_dropped": core.stats["scanners_dropped"],
        "refused_at_bound": core.stats["refused_at_bound"],
        "dns_failures": core.locator.failures if core.locator is not None else 0,
        "overloaded": int(core.shedding),
        "transactions": {"server": len(core.layer.servers), "client": len(core.layer.clients)},
        "dialogs": {name: states[name] for name in _LIVE_STATES},
        "probes": probes,
        "dialog_store": dict(store.stats) if store is not None else None,
        "role": control.ha.role if control.ha is not None else None,
        "database": control.database.status() if control.database is not None else None,
    }


class SiphaCollector(Collector):
    """Reads one snapshot per scrape; Prometheus sees each scrape as one instant."""

    def __init__(self, control: Control):
        self.control = control

    def collect(self) -> Iterator[Metric]:
        info = GaugeMetricFamily("sipha_info", "sipha's version", labels=["version"])
        info.add_metric([__version__], 1)
        yield info
        if self.control.core is None:
            return
        snap = counters(self.control)

        def family(kind: type, name: str, text: str, label: str, values: dict[str, int]) -> Metric:
            metric = kind(name, text, labels=[label])
            for key, value in values.items():
                metric.add_metric([key], value)
            return metric

        yield family(
            CounterMetricFamily,
            "sipha_requests_received",
            "SIP requests received, by method",
            "method",
            snap["requests_received"],
        )
        yield family(
            CounterMetricFamily,
            "sipha_responses_received",
            "SIP responses received, by status code",
            "code",
            snap["responses_received"],
        )
        yield family(
            CounterMetricFamily,
            "sipha_responses_sent",
            "SIP responses sent by server transactions, by status code",
            "code",
            snap["responses_sent"],
        )
        yield CounterMetricFamily(
            "sipha_requests_forwarded",
            "Requests relayed downstream",
            value=snap["requests_forwarded"],
        )
        yield CounterMetricFamily(
            "sipha_calls_shed",
            "New calls refused with 503 while overloaded",
            value=snap["calls_shed"],
        )
        yield CounterMetricFamily(
            "sipha_pike_refused",
            "Messages refused for their source sending over [pike] reqs_density_per_unit",
            value=snap["pike_refused"],
        )
        yield GaugeMetricFamily(
            "sipha_pike_limited_sources",
            "Sources pike limits now",
            value=snap["pike_limited_sources"],
        )
        yield CounterMetricFamily(
            "sipha_scanners_dropped",
            "Requests from known SIP scanners, dropped unanswered",
            value=snap["scanners_dropped"],
        )
        yield CounterMetricFamily(
            "sipha_refused_at_bound",
            "Requests answered 503 at [limits] transactions or dialogs",
            value=snap["refused_at_bound"],
        )
        yield GaugeMetricFamily(
            "sipha_overloaded",
            "1 while new calls are refused for a backed-up receive queue",
            value=snap["overloaded"],
        )
        yield CounterMetricFamily(
            "sipha_requests_dropped",
            "Requests dropped by the route",
            value=snap["requests_dropped"],
        )
        yield CounterMetricFamily(
            "sipha_responses_dropped",
            "Responses matching no transaction and not for another hop (strays)",
            value=snap["responses_dropped"],
        )
        yield CounterMetricFamily(
            "sipha_responses_forwarded_statelessly",
            "Responses matching no transaction, forwarded by their next Via (RFC 3261 16.11)",
            value=snap["responses_forwarded_statelessly"],
        )
        yield GaugeMetricFamily(
            "sipha_active",
            "1 while this node is the active one of its pair (it owns the calls)",
            value=int(snap["role"] == "active"),
        )
        yield CounterMetricFamily(
            "sipha_parse_errors", "Messages that could not be parsed", value=snap["parse_errors"]
        )
        yield CounterMetricFamily(
            "sipha_dns_failures",
            "Destinations given by name for which DNS gave no address (RFC 3263)",
            value=snap["dns_failures"],
        )
        yield family(
            GaugeMetricFamily,
            "sipha_transactions",
            "Transactions in flight",
            "kind",
            snap["transactions"],
        )
        yield family(
            GaugeMetricFamily,
            "sipha_dialogs",
            "Dialogs, by OpenSIPS state",
            "state",
            snap["dialogs"],
        )

        probes = CounterMetricFamily(
            "sipha_probes",
            "Probe outcomes, by module and destination",
            labels=["module", "uri", "outcome"],
        )
        for module, per_uri in snap["probes"].items():
            for uri, outcomes in per_uri.items():
                for outcome, count in outcomes.items():
                    probes.add_metric([module, uri, outcome], count)
        yield probes
        yield from self._destinations()
        yield from self._store(snap["dialog_store"])
        yield from self._database(snap["database"])

    def _destinations(self) -> Iterator[Metric]:
        control = self.control
        lb_up = GaugeMetricFamily(
            "sipha_lb_destination_up",
            "1 if the load balancer may choose the destination",
            labels=["group", "uri"],
        )
        load = GaugeMetricFamily(
            "sipha_lb_load",
            "Units in use, by destination and resource",
            labels=["group", "uri", "resource"],
        )
        capacity = GaugeMetricFamily(
            "sipha_lb_capacity", "Units available in all", labels=["group", "uri", "resource"]
        )
        for d in control.balancer.list():
            labels = [str(d["group"]), d["uri"]]
            lb_up.add_metric(labels, 1 if d["enabled"] else 0)
            for r in d["resources"]:
                load.add_metric([*labels, r["name"]], r["load"])
                capacity.add_metric([*labels, r["name"]], r["max"])
        ds_up = GaugeMetricFamily(
            "sipha_dispatcher_destination_up",
            "1 if the dispatcher may choose the destination (active)",
            labels=["set", "uri"],
        )
        for d in control.dispatcher.list():
            ds_up.add_metric([str(d["set"]), d["uri"]], 1 if d["state"] == "active" else 0)
        yield from (lb_up, load, capacity, ds_up)

    def _store(self, stats: dict[str, Any] | None) -> Iterator[Metric]:
        if stats is None:
            return
        yield GaugeMetricFamily(
            "sipha_dialog_store_queue",
            "Dialog writes waiting for the database",
            value=stats["queued"] + stats["in_flight"],
        )
        yield GaugeMetricFamily(
            "sipha_dialog_store_connected",
            "1 once the database answered, 0 from a failed dialog write or read until one succeeds",
            value=int(stats["connected"]),
        )
        yield GaugeMetricFamily(
            "sipha_dialog_store_out_of_sync",
            "1 after the queue overflowed, until the table is resynchronised",
            value=int(stats["out_of_sync"]),
        )
        yield CounterMetricFamily(
            "sipha_dialog_store_written", "Dialog rows written or deleted", value=stats["written"]
        )
        yield CounterMetricFamily(
            "sipha_dialog_store_errors", "Failed dialog writes", value=stats["errors"]
        )
        yield CounterMetricFamily(
            "sipha_dialog_store_overflows",
            "Times the dialog write queue hit [dialog] queue_limit",
            value=stats["overflows"],
        )
        yield CounterMetricFamily(
            "sipha_dialog_store_replayed",
            "Dialog rows written after waiting out a database outage",
            value=stats["replayed"],
        )

    def _database(self, status: dict[str, Any] | None) -> Iterator[Metric]:
        """The host in use and each host's state (a StateSet: one sample per state)."""
        if status is None or status["engine"] != "mysql":
            return
        in_use = GaugeMetricFamily(
            "sipha_database_host_in_use", "1 for the database host sipha uses", labels=["host"]
        )
        state = GaugeMetricFamily(
            "sipha_database_host_state",
            "1 for the state the last check found the host in",
            labels=["host", "state"],
        )
        for host in status["hosts"]:
            in_use.add_metric([host["address"]], int(host["in_use"]))
            for name in _HOST_STATES:
                state.add_metric([host["address"], name], int(host["state"] == name))
        yield in_use
        yield state
        yield CounterMetricFamily(
            "sipha_database_failovers",
            "Times sipha left a database host that failed its check",
            value=status["failovers"],
        )
        yield CounterMetricFamily(
            "sipha_database_conflicts_retried",
            "Transactions run again after a deadlock or a Galera write-set conflict",
            value=status["conflicts_retried"],
        )


def registry(control: Control) -> CollectorRegistry:
    """sipha's metrics plus the process's own (memory, CPU, file descriptors, GC)."""
    reg = CollectorRegistry(auto_describe=False)
    for collector in (SiphaCollector(control), PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
        reg.register(collector)
    return reg


class MetricsPage(resource.Resource):
    """``GET /metrics``: the text exposition format, rendered on the reactor thread."""

    isLeaf = True  # noqa: N815 (twisted.web's name)

    def __init__(self, reg: CollectorRegistry):
        super().__init__()
        self.registry = reg

    def render_GET(self, request: server.Request) -> bytes:  # noqa: N802
        # The format the scraper asks for (OpenMetrics or text), as make_wsgi_app does.
        accept = (request.getHeader(b"accept") or b"").decode("latin-1")
        encoder, content_type = choose_encoder(accept)
        request.setHeader(b"Content-Type", content_type.encode())
        return encoder(self.registry)


class _Root(resource.Resource):
    def render_GET(self, request: server.Request) -> bytes:  # noqa: N802
        request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
        return b"sipha: metrics at /metrics\n"


class _QuietSite(server.Site):
    """No access-log line per scrape: Prometheus asks every few seconds, forever."""

    noisy = False

    def log(self, request: server.Request) -> None:
        pass


def metrics_service(control: Control, listen: str, reactor: Any = None) -> service.IService:
    """``/metrics`` on the ``[metrics] listen`` endpoint, e.g. ``tcp:9260:interface=127.0.0.1``."""
    root = _Root()
    root.putChild(b"metrics", MetricsPage(registry(control)))
    return strports.service(listen, _QuietSite(root), reactor=reactor)
