"""The SQL database through ``twisted.enterprise.adbapi``: MySQL/MariaDB or SQLite.

Both engines run the same statements; what differs (driver, connection
arguments, placeholder style, DDL) is decided once, from the URL, in
:class:`Database`. Queries run in the pool's threads and return Deferreds: the
reactor thread never waits for the database.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, fields
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from twisted.enterprise import adbapi
from twisted.internet.defer import Deferred

from sipha.config import parse_db_url
from sipha.logs import Log

log = Log(namespace="sipha.store")

# MySQL client errors after which a connection is dead: server gone away, lost.
MYSQL_CONNECTION_ERRORS = frozenset((2006, 2013))


@dataclass(frozen=True, slots=True)
class DispatcherRow:
    """One row of the ``dispatcher`` table, with OpenSIPS's column names."""

    id: int
    setid: int
    destination: str
    state: int = 0
    weight: int = 1
    priority: int = 0
    attrs: str = ""
    description: str = ""


@dataclass(frozen=True, slots=True)
class LoadBalancerRow:
    """One row of the ``load_balancer`` table, with OpenSIPS's column names."""

    id: int
    group_id: int
    dst_uri: str
    resources: str
    probe_mode: int = 2
    description: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class DialogRow:
    """One row of the ``dialog`` table, with OpenSIPS 1.7's column names and order.

    ``(hash_entry, hash_id)`` is the key every write goes by (OpenSIPS's own
    ``id`` column, where a table has one, is neither read nor written).
    """

    hash_entry: int
    hash_id: int
    callid: str
    from_uri: str
    from_tag: str
    to_uri: str
    to_tag: str
    mangled_from_uri: str | None = None
    mangled_to_uri: str | None = None
    caller_cseq: str
    callee_cseq: str
    caller_ping_cseq: int = 0
    callee_ping_cseq: int = 0
    caller_route_set: str | None
    callee_route_set: str | None
    caller_contact: str
    callee_contact: str
    caller_sock: str
    callee_sock: str
    state: int
    start_time: int
    timeout: int
    vars: str | None = None
    profiles: str | None = None
    script_flags: int = 0
    flags: int = 0

    @property
    def key(self) -> tuple[int, int]:
        return self.hash_entry, self.hash_id


DIALOG_COLUMNS = tuple(f.name for f in fields(DialogRow))


def _sqlite_open(connection: Any) -> None:
    # WAL lets readers (the control tools, sqlite3 by hand) work beside sipha.
    connection.execute("PRAGMA journal_mode=WAL")


class Database:
    """A connection pool for ``sqlite:///PATH`` or ``mysql://USER:PASS@HOST:PORT/DB``.

    ``owner`` names this node in the dialog table's ``owner`` column: a node
    changes only the rows it wrote or took over (:meth:`claim_dialogs`), so two
    nodes that both believe they are active (a VRRP split) never overwrite or
    delete each other's rows.
    """

    def __init__(self, url: str, reactor: Any = None, owner: str = ""):
        parts = urlsplit(url)
        self.url = url
        self.owner = owner
        self.engine = parts.scheme
        options: dict[str, Any] = {"cp_noisy": False}
        if reactor is not None:
            options["cp_reactor"] = reactor
        if self.engine == "sqlite":
            path = url[len("sqlite:///") :]
            if path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            # One writer at a time is all SQLite allows; a single thread avoids
            # "database is locked" and keeps the connection in one thread.
            self.pool = adbapi.ConnectionPool(
                "sqlite3",
                path,
                check_same_thread=False,
                cp_min=1,
                cp_max=1,
                cp_openfun=_sqlite_open,
                **options,
            )
            self.placeholder = "?"
            upsert = (
                "ON CONFLICT (hash_entry, hash_id) DO UPDATE SET",
                "{0} = excluded.{0}",
                " WHERE dialog.owner = excluded.owner",
            )
        elif self.engine == "mysql":
            target = parse_db_url(url)
            host, port = target.hosts[0]
            self.pool = adbapi.ConnectionPool(
                "MySQLdb",
                host=host,
                port=port,
                user=target.user,
                password=target.password,
                database=target.database,
                charset="utf8mb4",
                connect_timeout=5,
                read_timeout=10,
                write_timeout=10,
                cp_reconnect=True,
                cp_min=1,
                cp_max=3,
                **options,
            )
            self.placeholder = "%s"
            # MySQL has no WHERE here: each column keeps its value unless the row is ours.
            upsert = (
                "ON DUPLICATE KEY UPDATE",
                "{0} = IF(owner = VALUES(owner), VALUES({0}), {0})",
                "",
            )
        else:
            raise ValueError(f"unsupported database URL {url!r}")
        # An upsert keyed by the UNIQUE (hash_entry, hash_id): writing a row
        # twice (a retry after a lost reply) is harmless. Another node's row
        # is left as it is.
        clause, assign, condition = upsert
        columns = (*DIALOG_COLUMNS, "owner")
        self._dialog_upsert = self.sql(
            f"INSERT INTO dialog ({', '.join(columns)})"
            f" VALUES ({', '.join('?' * len(columns))}) {clause} "
            + ", ".join(assign.format(column) for column in DIALOG_COLUMNS[2:])
            + condition
        )
        self._dialog_delete = self.sql(
            "DELETE FROM dialog WHERE hash_entry = ? AND hash_id = ? AND owner = ?"
        )

    def __repr__(self) -> str:
        parts = urlsplit(self.url)
        where = parts.hostname or parts.path
        return f"<Database {self.engine} {where}>"

    def sql(self, statement: str) -> str:
        """Write statements with ``?`` placeholders; MySQLdb wants ``%s``."""
        return statement if self.placeholder == "?" else statement.replace("?", "%s")

    def schema(self) -> list[str]:
        """The DDL statements for this engine, from the files shipped with sipha."""
        text = resources.files("sipha.sql").joinpath(f"{self.engine}.sql").read_text()
        lines = [line for line in text.splitlines() if not line.lstrip().startswith("--")]
        return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]

    async def create_schema(self) -> None:
        """Create missing tables (what ``opensipsdbctl create`` did); existing ones stay.

        A dialog table that OpenSIPS made indexes (hash_entry, hash_id) without
        UNIQUE, which sipha's upserts need: such a table gets a unique index of
        its own beside OpenSIPS's. Should that fail (rows that share an id), the
        error is logged and the other tables are still read. On MySQL its
        AUTO_INCREMENT ``id`` is widened (:meth:`_widen_dialog_id`).
        """
        statements = self.schema()

        def create(cursor: Any) -> None:
            for statement in statements:
                cursor.execute(statement)

        await self.pool.runInteraction(create)
        await self.pool.runInteraction(self._add_owner_column)
        if self.engine == "mysql":
            await self.pool.runInteraction(self._widen_dialog_id)
        if await self.pool.runInteraction(self._dialog_key_is_unique):
            return
        try:
            await self.pool.runOperation(
                "CREATE UNIQUE INDEX did_unique ON dialog (hash_entry, hash_id)"
            )
        except Exception as error:
            log.error(
                "{database}: the dialog table has no UNIQUE index on (hash_entry, hash_id) "
                "and none can be added ({error}); its rows may be written twice",
                database=self,
                error=error,
            )
            return
        log.warn(
            "{database}: added UNIQUE index did_unique on dialog (hash_entry, hash_id), "
            "which sipha's writes need (a table made by OpenSIPS has a plain one)",
            database=self,
        )

    def _add_owner_column(self, cursor: Any) -> None:
        """A dialog table made by OpenSIPS (or an older sipha) gets sipha's ``owner`` column."""
        cursor.execute("SELECT * FROM dialog WHERE 1 = 0")
        if "owner" in (column[0].lower() for column in cursor.description):
            return
        cursor.execute("ALTER TABLE dialog ADD COLUMN owner CHAR(64) DEFAULT '' NOT NULL")
        log.warn("{database}: added column owner to the dialog table", database=self)

    def _widen_dialog_id(self, cursor: Any) -> None:
        """An OpenSIPS dialog table's AUTO_INCREMENT ``id`` becomes BIGINT, which never runs out.

        Every upsert uses an id up, duplicate or not, and a Galera node steps
        by the cluster size: at 100 calls a second an INT lasts months.
        """
        cursor.execute(
            "SELECT DATA_TYPE FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE()"
            " AND TABLE_NAME = 'dialog' AND COLUMN_NAME = 'id' AND EXTRA LIKE '%auto_increment%'"
        )
        found = cursor.fetchall()
        if not found or found[0][0].lower() == "bigint":
            return
        cursor.execute("ALTER TABLE dialog MODIFY id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT")
        log.warn(
            "{database}: dialog.id widened from {type} to BIGINT UNSIGNED: every dialog write"
            " uses an AUTO_INCREMENT value up",
            database=self,
            type=found[0][0].upper(),
        )

    def _dialog_key_is_unique(self, cursor: Any) -> bool:
        """Does a UNIQUE index cover exactly (hash_entry, hash_id)?"""
        unique: dict[str, list[tuple[int, str]]] = {}
        if self.engine == "sqlite":
            cursor.execute("PRAGMA index_list(dialog)")
            for name in [row[1] for row in cursor.fetchall() if row[2]]:
                cursor.execute("SELECT seqno, name FROM pragma_index_info(?)", (name,))
                unique[name] = cursor.fetchall()
        else:
            cursor.execute("SHOW INDEX FROM dialog")
            for row in cursor.fetchall():  # Table, Non_unique, Key_name, Seq_in_index, Column_name
                if not row[1]:
                    unique.setdefault(row[2], []).append((row[3], row[4]))
        wanted = ["hash_entry", "hash_id"]
        return any([column for _, column in sorted(cols)] == wanted for cols in unique.values())

    async def dispatcher_rows(self) -> list[DispatcherRow]:
        rows = await self.pool.runQuery(
            "SELECT id, setid, destination, state, flags, weight, priority, attrs, description"
            " FROM dispatcher ORDER BY id"
        )
        return [
            DispatcherRow(
                id=row[0],
                setid=row[1],
                destination=row[2],
                state=row[3] or row[4],
                weight=_int(row[5], 1),
                priority=row[6] or 0,
                attrs=row[7] or "",
                description=row[8] or "",
            )
            for row in rows
        ]

    async def load_balancer_rows(self) -> list[LoadBalancerRow]:
        rows = await self.pool.runQuery(
            "SELECT id, group_id, dst_uri, resources, probe_mode, description"
            " FROM load_balancer ORDER BY id"
        )
        return [
            LoadBalancerRow(
                id=row[0],
                group_id=row[1],
                dst_uri=row[2],
                resources=row[3],
                probe_mode=row[4] if row[4] is not None else 2,
                description=row[5] or "",
            )
            for row in rows
        ]

    async def dialog_rows(self) -> list[DialogRow]:
        rows = await self.pool.runQuery(
            f"SELECT {', '.join(DIALOG_COLUMNS)} FROM dialog"
            " ORDER BY start_time, hash_entry, hash_id"
        )
        return [DialogRow(**dict(zip(DIALOG_COLUMNS, row, strict=True))) for row in rows]

    def write_dialogs(self, writes: Sequence[DialogRow | tuple[int, int]]) -> Deferred[None]:
        """Upsert each row and delete each ``(hash_entry, hash_id)``, in order, in one transaction.

        All or nothing: after a failure none of them is written, so the caller
        can retry the same list.
        """
        owner = self.owner
        batches = [
            (
                self._dialog_upsert,
                [(*(getattr(w, c) for c in DIALOG_COLUMNS), owner) for w in group],
            )
            if is_row
            else (self._dialog_delete, [(*key, owner) for key in group])
            for is_row, group in itertools.groupby(writes, lambda w: isinstance(w, DialogRow))
        ]

        def write(cursor: Any) -> None:
            for statement, parameters in batches:
                cursor.executemany(statement, parameters)

        return self.pool.runInteraction(write)

    def claim_dialogs(self) -> Deferred[dict[str, int]]:
        """Make every row of another node this node's own (a takeover); returns them by owner."""
        select = self.sql("SELECT owner, COUNT(*) FROM dialog WHERE owner <> ? GROUP BY owner")
        update = self.sql("UPDATE dialog SET owner = ? WHERE owner <> ?")

        def claim(cursor: Any) -> dict[str, int]:
            cursor.execute(select, (self.owner,))
            others = {owner: int(count) for owner, count in cursor.fetchall()}
            if others:
                cursor.execute(update, (self.owner, self.owner))
            return others

        return self.pool.runInteraction(claim)

    def ping(self) -> Deferred[Any]:
        """A round trip that only succeeds when the database answers."""
        return self.pool.runQuery("SELECT 1")

    def unreachable(self, error: BaseException) -> bool:
        """Did this failure come from the connection or the server, so a retry may work?

        MySQL's OperationalError covers 2006/2013 (the connection is dead;
        ``cp_reconnect`` opens a new one for the next call) and also a server
        that refuses connections, lock timeouts and deadlocks; SQLite's covers
        a locked or unreadable file. Anything else (a value the table refuses)
        would fail again the same way.
        """
        if isinstance(error, adbapi.ConnectionLost):
            return True
        dbapi = self.pool.dbapi
        return isinstance(error, (dbapi.OperationalError, dbapi.InterfaceError))

    def close(self) -> None:
        self.pool.close()


def _int(value: Any, default: int) -> int:
    """OpenSIPS 2.4+ stores the dispatcher weight as text; an empty one means the default."""
    try:
        return int(value)
    except (TypeError, ValueError):
        return default
