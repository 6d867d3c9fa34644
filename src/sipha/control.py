"""Live inspection and control of a running sipha, as plain Python methods.

What ``opensipsctl`` and the MI interface did in the reference deployment:
list destinations, add and remove table rows, reload the tables, set a
destination's state, list and end dialogs. The control command
(``sipha-ctl``) and the Manhole call these same methods.

Where destinations come from: the SQL tables win whenever they have rows,
and the config file's lists are used only for a module whose table is empty
(or while the database cannot be read). The tables are what both load
balancers of a pair share and what an operator changes live (INSERT, then
reload); the config lists are the bootstrap for a node without a database.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from sipha.balancer import LoadBalancer
from sipha.config import Config
from sipha.dialog import Dialogs, DialogState
from sipha.dialog_store import DialogStore
from sipha.dispatcher import Dispatcher
from sipha.logs import Log
from sipha.proxy import dialog_byes
from sipha.store import Database, DispatcherRow, LoadBalancerRow

if TYPE_CHECKING:
    from sipha.ha import HighAvailability
    from sipha.message import Response
    from sipha.nftables import KernelBlocklist
    from sipha.probing import Prober
    from sipha.proxy import ProxyCore
    from sipha.transaction import ClientTransaction

log = Log(namespace="sipha.control")


class Control:
    """The operator's handle on the live dispatcher, load balancer, dialogs and role.

    It is also what the operations services (control socket, Manhole,
    metrics) are given: every live object they read hangs off it.
    """

    def __init__(
        self,
        config: Config,
        database: Database | None,
        dispatcher: Dispatcher,
        balancer: LoadBalancer,
        dialogs: Dialogs,
        store: DialogStore | None = None,
    ):
        self.config = config
        self.database = database
        self.dispatcher = dispatcher
        self.balancer = balancer
        self.dialogs = dialogs
        self.store = store
        self.sources = {"dispatcher": "config", "load_balancer": "config"}
        #: Set by the service once running: the proxy core (ending a dialog sends
        #: BYEs through it), the probers, and the node's role in the pair.
        self.core: ProxyCore | None = None
        self.probers: list[Prober] = []
        self.ha: HighAvailability | None = None
        self.blocklist: KernelBlocklist | None = None
        #: Called after each reload of the destinations (pike trusts the new ones).
        self.on_reload: Callable[[], None] = lambda: None

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
            log.info(
                "{name}: {count} destinations from the {source}",
                name=name,
                count=len(rows if rows else fallback),
                source=source,
            )
        self.on_reload()
        return dict(self.sources)

    async def reload_dialogs(self) -> int:
        """Reconcile the calls in memory with the dialog table (``sipha-ctl dialogs reload``).

        Rows of calls not in memory are taken over with their load-balancer
        units; in db_mode 1 an answered call whose row is gone (ended on the
        other node) is dropped. A passive node holds no calls: it refuses.
        Returns how many dialogs were restored.
        """
        ha = self._ha()
        if ha.role == "passive":
            raise ValueError(
                "this node is passive: the other node carries the calls (sipha-ctl ha active"
                " takes them over)"
            )
        return await ha.reconcile()

    def pike_limited(self) -> list[dict[str, Any]]:
        """The sources pike limits now (``sipha-ctl pike``), and those the kernel drops.

        ``kernel_until`` is when a source leaves the kernel's set (``[pike]
        nftables``); sipha sees nothing of it until then.
        """
        pike = self.core.pike if self.core is not None else None
        found = {entry["source"]: entry for entry in (pike.limited() if pike else [])}
        blocklist = self.blocklist
        for source in blocklist.listed if blocklist is not None else ():
            until = blocklist.until(source) if blocklist is not None else None
            if until is not None:
                entry = found.setdefault(
                    source, {"source": source, "refused": 0, "last_seen": None}
                )
                entry["kernel_until"] = until
        return list(found.values())

    def database_status(self) -> dict[str, Any]:
        """The database host in use and why, each host's last check, the failovers."""
        return self._database().status()

    def ha_status(self) -> dict[str, Any]:
        """The node's role in the pair, since when, and its last takeover."""
        return self._ha().status()

    def ha_set_role(self, role: str) -> dict[str, Any]:
        """Become active (take the calls over) or passive (drop them silently) now."""
        if role not in ("active", "passive"):
            raise ValueError(f"role must be active or passive, not {role!r}")
        return self._ha().set_role(role, "sipha-ctl")

    def _ha(self) -> HighAvailability:
        if self.ha is None:
            raise RuntimeError("the proxy is not running")
        return self.ha

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
            {
                "call_id": d.call_id,
                "from_tag": d.from_tag,
                "to_tag": d.to_tag,
                "state": d.state.name.lower(),
                "destination": d.destination,
                "start_time": d.start_time,
                "timeout": d.timeout_at,
            }
            for d in self.dialogs
        ]

    def set_enabled(self, uri: str, enabled: bool) -> list[str]:
        """Take a URI out of (or back into) selection in every dispatcher set and lb group.

        What an operator means by "drain this server": the dispatcher state
        becomes inactive (active) and the balancer destination disabled
        (enabled). Returns the modules it was found in; KeyError if none.
        """
        found = []
        for entry in self.dispatcher.list():
            if entry["uri"].lower() == uri.lower():
                self.dispatcher.set_state(
                    entry["set"], entry["uri"], "active" if enabled else "inactive"
                )
                found.append(f"dispatcher set {entry['set']}")
        for entry in self.balancer.list():
            if entry["uri"].lower() == uri.lower():
                found.append(f"load_balancer group {entry['group']}")
        if any(name.startswith("load_balancer") for name in found):
            self.balancer.set_enabled(uri, enabled)
        if not found:
            raise KeyError(f"no destination {uri}")
        log.info(
            "{uri} {what} by the operator in {where}",
            uri=uri,
            what="enabled" if enabled else "disabled",
            where=", ".join(found),
        )
        return found

    # -- the tables, as ``opensipsctl dispatcher addgw/rmgw`` and INSERT/DELETE did ------

    async def add_dispatcher(
        self,
        setid: int,
        uri: str,
        *,
        state: int = 0,
        weight: int = 1,
        priority: int = 0,
        attrs: str = "",
        description: str = "",
        seed: bool = False,
    ) -> dict[str, Any]:
        """INSERT a ``dispatcher`` row (``opensipsctl dispatcher addgw``), then reload.

        ``seed`` first copies the config file's list into an empty table (see
        :meth:`_insert`).
        """
        new = DispatcherRow(
            id=0,
            setid=setid,
            destination=uri,
            state=state,
            weight=weight,
            priority=priority,
            attrs=attrs,
            description=description,
        )
        return await self._insert("dispatcher", new, seed)

    async def add_load_balancer(
        self,
        group_id: int,
        uri: str,
        resources: str,
        *,
        probe_mode: int = 2,
        description: str = "",
        seed: bool = False,
    ) -> dict[str, Any]:
        """INSERT a ``load_balancer`` row (what the reference deployment typed in mysql), then reload."""
        new = LoadBalancerRow(
            id=0,
            group_id=group_id,
            dst_uri=uri,
            resources=resources,
            probe_mode=probe_mode,
            description=description,
        )
        return await self._insert("load_balancer", new, seed)

    async def remove_dispatcher(self, setid: int, uri: str) -> dict[str, Any]:
        """DELETE a ``dispatcher`` row by set and URI (``opensipsctl dispatcher rmgw``), then reload."""
        return await self._delete("dispatcher", "setid", "destination", setid, uri)

    async def remove_load_balancer(self, group_id: int, uri: str) -> dict[str, Any]:
        """DELETE a ``load_balancer`` row by group and URI, then reload; calls up keep their unit."""
        return await self._delete("load_balancer", "group_id", "dst_uri", group_id, uri)

    def _database(self) -> Database:
        if self.database is None:
            raise RuntimeError("no database: destinations come from the config file only")
        return self.database

    async def _insert(self, table: str, new: Any, seed: bool) -> dict[str, Any]:
        """Check the row against the table it joins, INSERT it, reload.

        The whole new table is checked the way a reload would check it (URI,
        resources, duplicates), so a typo is refused here instead of making
        every later reload fail. A module still on the config file's list
        (empty table) is refused unless ``seed``: the first row would
        otherwise replace the whole list, since a table with rows wins.
        """
        database = self._database()
        reader, module_type, config_rows = {
            "dispatcher": (
                database.dispatcher_rows,
                Dispatcher,
                self.config.dispatcher.destination,
            ),
            "load_balancer": (
                database.load_balancer_rows,
                LoadBalancer,
                self.config.load_balancer.destination,
            ),
        }[table]
        rows: list[Any] = list(await reader())
        seeded: Sequence[Any] = ()
        if not rows and config_rows:
            if not seed:
                raise ValueError(
                    f"the {table} table is empty, so its destinations come from the config file"
                    f" ({len(config_rows)} of them); a first row would replace them all. Pass"
                    " seed (sipha-ctl: --seed-from-config) to copy them into the table first,"
                    " or list the destinations in the config file and restart"
                )
            seeded = config_rows
        # The id the database will most likely give it, for the error messages.
        new = dataclasses.replace(
            new, id=1 + max((getattr(r, "id", 0) or 0 for r in rows), default=len(seeded))
        )
        candidate = [*rows, *seeded, new]
        try:
            module_type(candidate)
        except ValueError as error:
            raise ValueError(f"{table} row refused: {error}") from None
        columns = _COLUMNS[table]
        values = [tuple(_column(row, c) for c in columns) for row in (*seeded, new)]
        statement = database.sql(
            f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"
        )
        await database.pool.runInteraction(lambda cursor: cursor.executemany(statement, values))
        log.info(
            "{table}: {uri} added by the operator{seeded}",
            table=table,
            uri=_column(new, columns[1]),
            seeded=f" after the {len(seeded)} rows of the config file" if seeded else "",
        )
        return {"inserted": len(values), "sources": await self.reload()}

    async def _delete(
        self, table: str, key: str, uri_column: str, key_value: int, uri: str
    ) -> dict[str, Any]:
        database = self._database()
        statement = database.sql(
            f"DELETE FROM {table} WHERE {key} = ? AND LOWER({uri_column}) = LOWER(?)"
        )

        def delete(cursor: Any) -> int:
            cursor.execute(statement, (key_value, uri))
            return int(cursor.rowcount)

        deleted = await database.pool.runInteraction(delete)
        if not deleted:
            where = (
                "the config file: edit it and restart"
                if self.sources[table] == "config"
                else "the table"
            )
            raise KeyError(
                f"no {table} row {key} = {key_value}, {uri_column} = {uri}"
                f" ({table} destinations come from {where})"
            )
        log.info("{table}: {uri} removed by the operator", table=table, uri=uri)
        return {"deleted": deleted, "sources": await self.reload()}

    # -- dialogs -------------------------------------------------------------------------

    def end_dialog(self, call_id: str) -> int:
        """End an answered call: BYE to both ends, its load-balancer unit released.

        OpenSIPS's ``dlg_end_dlg``. Returns the number of dialogs ended;
        KeyError when no dialog has this Call-ID, ValueError when its dialog
        is not answered yet (that call is the caller's to CANCEL).
        """
        if self.core is None:
            raise RuntimeError("the proxy is not running")
        found = [d for d in self.dialogs if d.call_id == call_id]
        if not found:
            raise KeyError(f"no dialog with Call-ID {call_id}")
        answered = [d for d in found if d.state >= DialogState.CONFIRMED_NA]
        if not answered:
            raise ValueError(f"dialog {call_id} is not answered yet: only calls that are up end")
        for dialog in answered:
            for request in dialog_byes(dialog):
                self.core.send_request(request, None, _ByeOutcome(call_id))
            self.dialogs.end(dialog, "ended")
            log.info("dialog {call_id} ended by the operator: BYE sent both ways", call_id=call_id)
        return len(answered)


_COLUMNS = {
    "dispatcher": ("setid", "destination", "state", "weight", "priority", "attrs", "description"),
    "load_balancer": ("group_id", "dst_uri", "resources", "probe_mode", "description"),
}


def _column(row: Any, name: str) -> Any:
    """A value to INSERT; the dispatcher weight is text in the table (OpenSIPS 2.4+)."""
    value = getattr(row, name)
    return str(value) if name == "weight" else value


class _ByeOutcome:
    """The user of a BYE sipha sends itself: only a failure is worth a log line."""

    __slots__ = ("call_id",)

    def __init__(self, call_id: str):
        self.call_id = call_id

    def on_response(self, transaction: ClientTransaction, response: Response) -> None:
        if response.status >= 300:
            log.warn(
                "BYE of dialog {call_id} answered {status}",
                call_id=self.call_id,
                status=response.status,
            )

    def on_timeout(self, transaction: ClientTransaction | None) -> None:
        log.warn(
            "BYE of dialog {call_id} to {peer} not answered",
            call_id=self.call_id,
            peer=transaction.peer if transaction is not None else "no address",
        )
