"""The SQL database through ``twisted.enterprise.adbapi``: MySQL/MariaDB or SQLite.

Both engines run the same statements; what differs (driver, connection
arguments, placeholder style, DDL) is decided once, from the URL, in
:class:`Database`. Queries run in the pool's threads and return Deferreds: the
reactor thread never waits for the database.

A MySQL URL may name several hosts: :mod:`sipha.dbcluster` checks them and
says which one is in use, and each pool thread connects to that one, dropping
a connection to any other the next time it runs a query. Every write of sipha
is idempotent (upserts and deletions keyed by the dialog's id, claims by
owner), so a transaction that failed with its outcome unknown (the server
died during the COMMIT) is simply written again, on whichever host is in use
then. One the server rolled back on purpose, a deadlock or a Galera write-set
conflict found at certification, is retried at once in the same thread, a few
times, before it counts as failed.
"""

from __future__ import annotations

import contextlib
import itertools
import operator
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from importlib import resources
from pathlib import Path
from typing import Any

from twisted.enterprise import adbapi
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from sipha.config import parse_db_url
from sipha.dbcluster import CHECK_TIMEOUT, Cluster, Host, NotSyncedError, galera_problem
from sipha.logs import Log

log = Log(namespace="sipha.store")

#: MySQL errors of a transaction the server rolled back on purpose, worth running again
#: at once: ER_LOCK_WAIT_TIMEOUT, and ER_LOCK_DEADLOCK (also a Galera certification failure).
MYSQL_CONFLICTS = frozenset((1205, 1213))
#: Attempts at a transaction that keeps meeting conflicts, and the first pause between them.
CONFLICT_ATTEMPTS = 5
CONFLICT_PAUSE = 0.02

#: What a health check reads: every wsrep variable galera_problem looks at.
_WSREP_VARIABLES = (
    "wsrep_cluster_status",
    "wsrep_ready",
    "wsrep_local_state",
    "wsrep_local_state_comment",
)


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

    def values(self) -> tuple[Any, ...]:
        """The values in column order, read in one C call: every write and every
        replicated change of a call takes them."""
        return _column_values(self)


DIALOG_COLUMNS = tuple(f.name for f in fields(DialogRow))
_column_values = operator.attrgetter(*DIALOG_COLUMNS)


def _sqlite_open(connection: Any) -> None:
    # WAL lets readers (the control tools, sqlite3 by hand) work beside sipha.
    connection.execute("PRAGMA journal_mode=WAL")
    # A commit survives sipha's crash or restart, what the dialog table is for,
    # without waiting on the disk: only a crash of the host may lose the last ones.
    connection.execute("PRAGMA synchronous=NORMAL")


def _wsrep_on(cursor: Any) -> bool:
    cursor.execute("SHOW GLOBAL VARIABLES LIKE 'wsrep_on'")
    return any(str(value).upper() == "ON" for _, value in cursor.fetchall())


def _wsrep_variables(cursor: Any) -> dict[str, str]:
    """The variables :func:`galera_problem` reads; none but ``wsrep_on`` OFF without Galera."""
    if not _wsrep_on(cursor):
        return {"wsrep_on": "OFF"}
    names = ", ".join(f"'{name}'" for name in _WSREP_VARIABLES)
    cursor.execute(f"SHOW GLOBAL STATUS WHERE Variable_name IN ({names})")
    return {"wsrep_on": "ON", **{str(n).lower(): str(v) for n, v in cursor.fetchall()}}


def _mysql_open(connection: Any) -> None:
    """On Galera, reads wait until the node has applied every earlier commit of the cluster.

    So a takeover that reads the dialog table through another node than the
    one the rows were written through still sees every row (wsrep_sync_wait).
    """
    cursor = connection.cursor()
    if _wsrep_on(cursor):
        cursor.execute("SET SESSION wsrep_sync_wait = 1")
    cursor.close()


class Pool(adbapi.ConnectionPool):
    """adbapi's pool, on the host in use, quiet when the server is away, retrying conflicts.

    adbapi's own recovery (``cp_reconnect``) logs two tracebacks ("Rollback
    failed") for every query that meets a dead connection. Here such a
    connection is closed and forgotten without a word, the error goes to the
    caller, and the thread's next query opens a new connection to the host in
    use at that moment (``cluster.in_use``, read in the thread).
    """

    def __init__(
        self,
        dbapi_name: str,
        *connargs: Any,
        cluster: Cluster | None = None,
        conflict: Callable[[BaseException], bool] = lambda error: False,
        **connkw: Any,
    ):
        super().__init__(dbapi_name, *connargs, **connkw)
        self.cluster = cluster
        self.conflict = conflict
        self.conflicts_retried = 0
        self._lock = threading.Lock()
        self._hosts: dict[int, Host] = {}  # thread id: the host its connection goes to

    def connect(self) -> Any:
        tid = self.threadID()
        conn = self.connections.get(tid)
        host = self.cluster.in_use if self.cluster is not None else None
        if conn is not None and self._hosts.get(tid) is not host:
            self.disconnect(conn)
            conn = None
        if conn is None:
            where = {} if host is None else {"host": host.host, "port": host.port}
            conn = self.dbapi.connect(*self.connargs, **self.connkw, **where)
            if self.openfun is not None:
                self.openfun(conn)
            self.connections[tid] = conn
            if host is not None:
                self._hosts[tid] = host
        return conn

    def _close(self, conn: Any) -> None:
        with contextlib.suppress(self.dbapi.Error):  # it was dead already
            conn.close()

    def _runInteraction(self, interaction: Any, *args: Any, **kw: Any) -> Any:  # noqa: N802
        pause = CONFLICT_PAUSE
        for attempt in itertools.count(1):
            conn = self.connect()
            cursor = conn.cursor()
            try:
                result = interaction(cursor, *args, **kw)
                cursor.close()
                conn.commit()
                return result
            except Exception as error:
                self._abandon(conn)
                if attempt == CONFLICT_ATTEMPTS or not self.conflict(error):
                    raise
            with self._lock:
                self.conflicts_retried += 1
            time.sleep(pause)
            pause *= 2

    def _abandon(self, conn: Any) -> None:
        """Roll back; a connection that cannot even do that is dead and goes."""
        try:
            conn.rollback()
        except self.dbapi.Error:
            self.disconnect(conn)

    def runInteraction(self, interaction: Any, *args: Any, **kw: Any) -> Deferred[Any]:  # noqa: N802
        done = super().runInteraction(interaction, *args, **kw)
        if self.cluster is not None:
            done.addErrback(self._failed)
        return done

    def _failed(self, failure: Failure) -> Failure:
        """A query that failed for want of its server (not a refused row) checks it at once."""
        lost = (self.dbapi.OperationalError, self.dbapi.InterfaceError)
        if isinstance(failure.value, lost) and not self.conflict(failure.value):
            assert self.cluster is not None
            self.cluster.suspect()
        return failure


class Database:
    """A connection pool for ``sqlite:///PATH`` or ``mysql://USER:PASS@HOST:PORT[,HOST:PORT...]/DB``.

    ``owner`` names this node in the dialog table's ``owner`` column: a node
    changes only the rows it wrote or took over (:meth:`claim_dialogs`), so two
    nodes that both believe they are active (a VRRP split) never overwrite or
    delete each other's rows. A MySQL database checks its hosts from
    :meth:`start` to :meth:`close`.
    """

    def __init__(self, url: str, reactor: Any = None, owner: str = ""):
        if reactor is None:
            from twisted.internet import reactor
        self.url = url
        self.owner = owner
        self.reactor = reactor
        target = parse_db_url(url)
        self.engine = target.scheme
        self.cluster: Cluster | None = None
        self._checks: ThreadPool | None = None
        options: dict[str, Any] = {"cp_noisy": False, "cp_reactor": reactor}
        if self.engine == "sqlite":
            path = target.path
            if path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            # One writer at a time is all SQLite allows; a single thread avoids
            # "database is locked" and keeps the connection in one thread.
            self.pool = Pool(
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
        else:
            self._account = {
                "user": target.user,
                "password": target.password,
                "database": target.database,
                "charset": "utf8mb4",
            }
            self.cluster = Cluster(target.hosts, reactor, self._check)
            self._checks = ThreadPool(0, len(target.hosts), "sipha-database-checks")
            self.pool = Pool(
                "MySQLdb",
                cluster=self.cluster,
                conflict=is_conflict,
                connect_timeout=5,
                read_timeout=10,
                write_timeout=10,
                cp_min=1,
                cp_max=3,
                cp_openfun=_mysql_open,
                **self._account,
                **options,
            )
            self.placeholder = "%s"
            # MySQL has no WHERE here: each column keeps its value unless the row is ours.
            upsert = (
                "ON DUPLICATE KEY UPDATE",
                "{0} = IF(owner = VALUES(owner), VALUES({0}), {0})",
                "",
            )
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
        if self.cluster is None:
            return f"<Database sqlite {parse_db_url(self.url).path}>"
        return f"<Database mysql {self.cluster.in_use.address}>"

    # -- the hosts ----------------------------------------------------------------------

    def start(self) -> None:
        """Start checking the hosts (MySQL), at once and then every second."""
        if self.cluster is not None and self._checks is not None:
            self._checks.start()
            self.cluster.start()

    def _check(self, host: Host) -> Deferred[str]:
        assert self._checks is not None
        return deferToThreadPool(self.reactor, self._checks, self._check_in_thread, host)

    def _check_in_thread(self, host: Host) -> str:
        """Connect to ``host`` as sipha does and ask whether it may take writes."""
        connection = self.pool.dbapi.connect(
            host=host.host,
            port=host.port,
            connect_timeout=CHECK_TIMEOUT,
            read_timeout=CHECK_TIMEOUT,
            write_timeout=CHECK_TIMEOUT,
            **self._account,
        )
        try:
            variables = _wsrep_variables(connection.cursor())
        finally:
            connection.close()
        problem = galera_problem(variables)
        if problem is not None:
            raise NotSyncedError(problem)
        return "Galera, Synced" if variables["wsrep_on"] == "ON" else "standalone"

    @property
    def connected(self) -> bool:
        """Did the last check of the host in use pass? (SQLite: always.)"""
        return self.cluster is None or self.cluster.usable

    def watch(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` whenever the host in use changes or answers again (MySQL)."""
        if self.cluster is not None:
            self.cluster.watch(callback)

    def wait(self, delay: float) -> Deferred[None]:
        """Fires after ``delay`` seconds, or as soon as the database answers again."""
        if self.cluster is None:
            return deferLater(self.reactor, delay, lambda: None)
        return self.cluster.wait(delay)

    def status(self) -> dict[str, Any]:
        """``sipha-ctl database``: the host in use and why, each host's state, the failovers."""
        if self.cluster is None:
            return {
                "engine": "sqlite",
                "host": parse_db_url(self.url).path,
                "connected": True,
                "hosts": [],
            }
        return {
            "engine": "mysql",
            **self.cluster.status(),
            "conflicts_retried": self.pool.conflicts_retried,
        }

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
                [(*w.values(), owner) for w in group],
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

        MySQL's OperationalError covers a dead connection (the next query
        opens a new one), a server that refuses connections and conflicts
        that outlasted their retries; SQLite's covers a locked or unreadable
        file. Anything else (a value the table refuses) would fail again the
        same way.
        """
        dbapi = self.pool.dbapi
        return isinstance(error, (dbapi.OperationalError, dbapi.InterfaceError))

    def close(self) -> None:
        if self.cluster is not None and self._checks is not None:
            self.cluster.stop()
            self._checks.stop()
        self.pool.close()


def is_conflict(error: BaseException) -> bool:
    """A MySQL transaction rolled back by the server to break a conflict (see MYSQL_CONFLICTS)."""
    args = getattr(error, "args", ())
    return bool(args) and args[0] in MYSQL_CONFLICTS


def _int(value: Any, default: int) -> int:
    """OpenSIPS 2.4+ stores the dispatcher weight as text; an empty one means the default."""
    try:
        return int(value)
    except (TypeError, ValueError):
        return default
