"""Live inspection and control of a running sipha, as plain Python methods.

What ``opensipsctl`` and the MI interface did in the reference deployment:
list destinations, reload the tables, set a destination's state, list
dialogs. The control command and the Manhole call these same methods.

Where destinations come from: the SQL tables win whenever they have rows,
and the config file's lists are used only for a module whose table is empty
(or while the database cannot be read). The tables are what both load
balancers of a pair share and what an operator changes live (INSERT, then
reload); the config lists are the bootstrap for a node without a database.
"""

from __future__ import annotations

from typing import Any

from sipha.balancer import LoadBalancer
from sipha.config import Config
from sipha.dialog import Dialogs
from sipha.dialog_store import DialogStore
from sipha.dispatcher import Dispatcher
from sipha.logs import Log
from sipha.store import Database

log = Log(namespace="sipha.control")


class Control:
    """The operator's handle on the live dispatcher, load balancer and dialogs."""

    def __init__(self, config: Config, database: Database | None, dispatcher: Dispatcher,
                 balancer: LoadBalancer, dialogs: Dialogs,
                 store: DialogStore | None = None):  # fmt: skip
        self.config = config
        self.database = database
        self.dispatcher = dispatcher
        self.balancer = balancer
        self.dialogs = dialogs
        self.store = store
        self.sources = {"dispatcher": "config", "load_balancer": "config"}

    async def reload(self) -> dict[str, str]:
        """Re-read the destination tables without a restart; runtime state is kept.

        A table that cannot be read, or that has a bad row, leaves that module
        as it was (the error is logged and raised). Returns where each
        module's destinations now come from.
        """
        if self.database is None:
            return dict(self.sources)
        ds_rows = await self.database.dispatcher_rows()
        lb_rows = await self.database.load_balancer_rows()
        for name, module, rows, fallback in (
            ("dispatcher", self.dispatcher, ds_rows, self.config.dispatcher.destination),
            ("load_balancer", self.balancer, lb_rows, self.config.load_balancer.destination),
        ):
            source = "table" if rows else "config"
            module.reload(rows if rows else fallback)
            self.sources[name] = source
            log.info("{name}: {count} destinations from the {source}", name=name,
                     count=len(rows if rows else fallback), source=source)  # fmt: skip
        return dict(self.sources)

    async def reload_dialogs(self) -> int:
        """Take over the calls in the dialog table (start-up, or the standby taking the VIP).

        Each dialog not already live is rebuilt with its remaining lifetime and
        takes its load-balancer unit again, so counters match the calls in
        progress. Returns how many dialogs were restored.
        """
        if self.store is None:
            return 0
        restored = 0
        for dialog in await self.store.load(self.dialogs.clock.seconds()):
            if self.dialogs.match_id(dialog.h_entry, dialog.h_id) is not None:
                continue
            if dialog.lb_group is not None and dialog.destination:
                dialog.binding = self.balancer.restore(dialog.lb_group, dialog.destination,
                                                       dialog.lb_resources)  # fmt: skip
            self.dialogs.restore(dialog)
            restored += 1
        log.info("restored {count} dialogs from the dialog table", count=restored)
        return restored

    def destinations(self) -> dict[str, list[dict[str, Any]]]:
        """Every destination with its state and, for the load balancer, its load."""
        return {"dispatcher": self.dispatcher.list(), "load_balancer": self.balancer.list()}

    def ds_set_state(self, set_id: int, uri: str, state: int | str) -> None:
        """Set a dispatcher destination active, inactive or probing (``ds_set_state``)."""
        self.dispatcher.set_state(set_id, uri, state)

    def lb_set_enabled(self, id_or_uri: int | str, enabled: bool) -> None:
        """Enable or disable a load-balancer destination (``lb_status``)."""
        self.balancer.set_enabled(id_or_uri, enabled)

    def dialog_list(self) -> list[dict[str, Any]]:
        """The dialogs in progress."""
        return [
            {"call_id": d.call_id, "from_tag": d.from_tag, "to_tag": d.to_tag,
             "state": d.state.name.lower(), "destination": d.destination,
             "start_time": d.start_time, "timeout": d.timeout_at}  # fmt: skip
            for d in self.dialogs
        ]
