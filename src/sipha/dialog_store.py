"""Dialogs in the SQL ``dialog`` table, written behind the calls and never in their way.

Theory of operation: :class:`~sipha.dialog.Dialogs` tells the store of each
change worth keeping (``changed``, ``deleted``). Per dialog id
``(hash_entry, hash_id)`` the store keeps only the latest thing to write, the
row or its deletion, in a queue in the order dialogs first changed. One writer
sends the head of the queue to the database, one transaction at a time, so
each row changes in the order its call did. A dialog created and ended between
two writes costs nothing; the deletion of a row that was (or may have been)
written is always written.

Signalling never waits for any of this. A write that fails because the
database is unreachable goes back to the head of the queue and is retried
with a capped backoff; the outage and the recovery are logged once each. The
queue is bounded (``max_queue`` dialogs): past it the store logs once, drops
the queue and stops queuing, and as soon as the database answers it
resynchronises the table from memory: every live dialog upserted, every row it
wrote for a dialog since gone deleted. Rows it never wrote or read (another
node's) are left alone. A row the database refuses (a value too long for its
column, say) is found by writing the failed batch one row at a time, and only
that row is dropped, with a log line.

The modes are OpenSIPS's ``db_mode``: 0 no database; 1 real time (written as
soon as the previous write is done, the changes of ``gather`` seconds in one
transaction); 2 delayed (coalesced and written every
``update_period`` seconds; deletions at once, as in OpenSIPS, so a takeover
never restores a call that has ended); 3 at shutdown only (at start-up the
rows are read and removed, as in OpenSIPS).

Row format (``sql/*.sql``): sipha decision 6 writes the load-balancer binding
with every row. ``profiles`` is OpenSIPS's ``lbX<resource>#<value>|`` for each
resource, the value being the destination's row id in upper-case hex (its URI
when the id is unknown); ``vars`` is ``lb_group#<group>|lb_dst#<uri>|``, what
sipha reads back to re-bind the call, with the resource names taken from
``profiles``. In both, ``|``, ``#`` and ``\\`` are escaped with ``\\``. A call
not placed by the load balancer has neither (NULL).

The clock is injected (``callLater``, ``seconds``) and the database is
anything with the methods of :class:`DialogDatabase`, so the queue logic runs
without I/O in tests.
"""

from __future__ import annotations

import itertools
import math
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from typing import Any, Protocol

from twisted.internet.defer import Deferred, TimeoutError, maybeDeferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure

from sipha.dialog import Dialog, DialogState
from sipha.logs import Log
from sipha.store import DialogRow
from sipha.uri import split_comma_list

__all__ = [
    "DELAYED",
    "NO_DB",
    "REALTIME",
    "SHUTDOWN",
    "DialogStore",
    "dialog_from_row",
    "dialog_row",
]

log = Log(namespace="sipha.dialog_store")

NO_DB, REALTIME, DELAYED, SHUTDOWN = 0, 1, 2, 3

_Key = tuple[int, int]
_Entry = tuple[_Key, Dialog | None]  # None: delete the row


class DialogDatabase(Protocol):
    """What the store needs of :class:`~sipha.store.Database`."""

    def write_dialogs(self, writes: Sequence[DialogRow | _Key]) -> Deferred[None]: ...
    async def dialog_rows(self) -> list[DialogRow]: ...
    def claim_dialogs(self) -> Deferred[dict[str, int]]: ...
    def ping(self) -> Deferred[Any]: ...
    def unreachable(self, error: BaseException) -> bool: ...


# -- the row ------------------------------------------------------------------------------


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("#", "\\#")


def encode_pairs(pairs: Iterable[tuple[str, str]]) -> str | None:
    """OpenSIPS's ``name#value|`` list (profiles, vars); None when empty, as a NULL column."""
    return "".join(f"{_escape(name)}#{_escape(value)}|" for name, value in pairs) or None


def decode_pairs(text: str | None) -> list[tuple[str, str]]:
    pairs: list[tuple[str, str]] = []
    name: str | None = None
    current: list[str] = []
    escaped = False
    for char in text or "":
        if escaped:
            current.append(char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == "#" and name is None:
            name, current = "".join(current), []
        elif char == "|":
            if name is not None:
                pairs.append((name, "".join(current)))
            name, current = None, []
        else:
            current.append(char)
    if name is not None:
        pairs.append((name, "".join(current)))
    return pairs


def dialog_row(dialog: Dialog) -> DialogRow:
    """The row for a dialog, with its load-balancer binding (sipha decision 6)."""
    profiles = lb_vars = None
    if dialog.lb_group is not None and dialog.destination and dialog.lb_resources:
        ident = getattr(dialog.binding, "destination_id", None)
        value = dialog.destination if ident is None else format(ident, "X")
        profiles = encode_pairs((f"lbX{name}", value) for name in dialog.lb_resources)
        lb_vars = encode_pairs((("lb_group", str(dialog.lb_group)), ("lb_dst", dialog.destination)))
    return DialogRow(
        hash_entry=dialog.h_entry,
        hash_id=dialog.h_id,
        callid=dialog.call_id,
        from_uri=dialog.from_uri,
        from_tag=dialog.from_tag,
        to_uri=dialog.to_uri,
        to_tag=dialog.to_tag or "",
        caller_cseq=str(dialog.caller_cseq),
        callee_cseq=str(dialog.callee_cseq),
        caller_route_set=",".join(dialog.caller_route_set),
        callee_route_set=",".join(dialog.callee_route_set),
        caller_contact=dialog.caller_contact,
        callee_contact=dialog.callee_contact,
        caller_sock=dialog.caller_sock,
        callee_sock=dialog.callee_sock,
        state=int(dialog.state),
        start_time=int(dialog.start_time),
        # Rounded up: a restored call must not expire before its time.
        timeout=math.ceil(dialog.timeout_at),
        vars=lb_vars,
        profiles=profiles,
    )


def _route_set(text: str | None) -> list[str]:
    return split_comma_list(text) if text else []


def dialog_from_row(row: DialogRow) -> Dialog:
    """A dialog read back; ValueError or TypeError for a row that cannot be one."""
    lb_vars = dict(decode_pairs(row.vars))
    group = lb_vars.get("lb_group")
    profiles = decode_pairs(row.profiles)
    resources = tuple(name[3:] for name, _ in profiles if name.startswith("lbX") and name[3:])
    return Dialog(
        int(row.hash_entry),
        int(row.hash_id),
        row.callid,
        from_uri=row.from_uri,
        from_tag=row.from_tag,
        to_uri=row.to_uri,
        to_tag=row.to_tag or None,
        caller_cseq=int(row.caller_cseq or 0),
        callee_cseq=int(row.callee_cseq or 0),
        caller_contact=row.caller_contact or "",
        callee_contact=row.callee_contact or "",
        caller_route_set=_route_set(row.caller_route_set),
        callee_route_set=_route_set(row.callee_route_set),
        caller_sock=row.caller_sock or "",
        callee_sock=row.callee_sock or "",
        state=DialogState(row.state),
        start_time=float(row.start_time),
        timeout_at=float(row.timeout),
        destination=lb_vars.get("lb_dst") or None,
        lb_group=int(group) if group else None,
        lb_resources=resources,
    )


def _written_state(dialog: Dialog) -> bool:
    """Only answered, live dialogs have a row (OpenSIPS never writes early ones)."""
    return DialogState.CONFIRMED_NA <= dialog.state < DialogState.DELETED


# -- the store ----------------------------------------------------------------------------


class DialogStore:
    """Writes dialog changes behind the calls; a :class:`~sipha.dialog.DialogObserver`.

    ``live`` is iterated for a resynchronisation and, in mode 3, at stop: the
    :class:`~sipha.dialog.Dialogs` registry (it may be set after
    construction). ``batch`` caps the rows of one transaction; ``retry_min``
    doubles up to ``retry_max`` between attempts while the database is away.
    ``gather`` is how long a write waits for more changes to join it while
    fewer than ``batch`` are queued: a transaction costs the proxy's thread
    far more than a row, and a call that ends meanwhile is never written.
    """

    def __init__(
        self,
        database: DialogDatabase,
        clock: IReactorTime,
        mode: int = REALTIME,
        *,
        update_period: float = 60.0,
        max_queue: int = 100000,
        live: Iterable[Dialog] = (),
        batch: int = 100,
        retry_min: float = 0.5,
        retry_max: float = 5.0,
        gather: float = 0.0,
    ):
        if mode not in (NO_DB, REALTIME, DELAYED, SHUTDOWN):
            raise ValueError(f"db_mode must be 0, 1, 2 or 3, got {mode!r}")
        self.database = database
        self.clock = clock
        self.mode = mode
        self.update_period = update_period
        self.max_queue = max_queue
        self.live = live
        self.batch = batch
        self.retry_min = retry_min
        self.retry_max = retry_max
        self.gather = gather
        self.written = self.errors = self.overflows = self.replayed = 0
        #: The last outage once over: when it began, how long, writes waiting, written since.
        self.last_outage: dict[str, float] | None = None
        # The latest write wanted per dialog, in first-change order; the keys
        # of the pending deletions besides, for mode 2's immediate deletions.
        self._queue: OrderedDict[_Key, Dialog | None] = OrderedDict()
        self._deletes: OrderedDict[_Key, None] = OrderedDict()
        # Rows that exist or may exist (a write was sent), so a deletion is
        # written only when there may be something to delete.
        self._stored: set[_Key] = set()
        self._in_flight: list[_Entry] | None = None
        self._wakeup: IDelayedCall | None = None  # the next write, or the next retry
        self._period: IDelayedCall | None = None  # mode 2's timer
        self._due = 0  # entries at the head to write now (modes 2 and 3)
        self._single = 0  # rows to write one per transaction, to find one the table refuses
        self._backoff = 0.0
        self._down_since: float | None = None
        self._reached = False  # has the database answered once?
        self._catching_up: dict[str, float] | None = None  # the outage being made up for
        self._out_of_sync = False
        self._stopping = False
        self._closed = False
        self._suspended = False
        self._waiters: list[Deferred[None]] = []
        # Rows deleted while the table is being read (load): stale if read back.
        self._deleted_meanwhile: set[_Key] | None = None

    @property
    def stats(self) -> dict[str, Any]:
        """For metrics: ``queued`` excludes the write in flight; ``connected`` is False
        until the database first answers, and from a failed write or read until the next
        one that succeeds; ``written`` counts rows, ``replayed`` those that waited out an
        outage; ``last_outage`` (None before any) says how long, and how much waited."""
        return {
            "queued": len(self._queue),
            "written": self.written,
            "errors": self.errors,
            "overflows": self.overflows,
            "in_flight": len(self._in_flight or ()),
            "connected": self._reached and self._down_since is None,
            "out_of_sync": self._out_of_sync,
            "replayed": self.replayed,
            "last_outage": dict(self.last_outage) if self.last_outage else None,
        }

    def pending(self, dialog: Dialog) -> bool:
        """Is a write of this dialog queued or in flight (so the table may lag behind)?

        Out of sync, every live dialog is: the resynchronisation writes them all.
        """
        if self._out_of_sync:
            return True
        key = (dialog.h_entry, dialog.h_id)
        return key in self._queue or any(entry[0] == key for entry in self._in_flight or ())

    @property
    def follows_changes(self) -> bool:
        """Does it write each change as the calls go (modes 1 and 2)? Modes 0 and 3 need
        not hear of them: mode 3 writes what is live at stop, mode 0 nothing."""
        return self.mode in (REALTIME, DELAYED)

    # -- DialogObserver -------------------------------------------------------------------

    def changed(self, dialog: Dialog) -> None:
        if _written_state(dialog) and self._accepting():
            self._put((dialog.h_entry, dialog.h_id), dialog)
            self._kick()

    def deleted(self, dialog: Dialog) -> None:
        if not self._accepting():
            return
        key = (dialog.h_entry, dialog.h_id)
        if key in self._stored:
            self._put(key, None)
        else:  # never written: forget the pending row, write nothing
            self._queue.pop(key, None)
            self._deletes.pop(key, None)
        self._kick()

    def discard(self, keys: Iterable[_Key]) -> None:
        """Delete rows of calls that ended while their row was being written elsewhere."""
        if self._accepting():
            for key in keys:
                self._stored.add(key)
                self._put(key, None, bounded=False)
            self._kick()

    def _accepting(self) -> bool:
        # Out of sync, changes are not queued: the resynchronisation reads memory.
        return (
            self.follows_changes
            and not self._closed
            and not self._out_of_sync
            and not self._suspended
        )

    def suspend(self) -> None:
        """The node became passive: the rows are the other node's now; write nothing more.

        What is queued is dropped (the other node has those calls from the
        replication link, or from the table as it stands); a write already
        sent completes.
        """
        self._suspended = True
        self._queue.clear()
        self._deletes.clear()
        self._stored.clear()
        self._due = self._single = 0
        self._out_of_sync = False
        for call in (self._wakeup, self._period):
            if call is not None and call.active():
                call.cancel()
        self._wakeup = self._period = None
        self._idle()

    def resume(self) -> None:
        """The node became active: its calls' changes are written again."""
        self._suspended = False

    def taken_over(self, dialogs: Iterable[Dialog]) -> None:
        """Calls taken over from the other node: their rows may be in the table, written by
        it, so the end of one of them deletes its row (even before the table is read)."""
        if self._accepting():
            self._stored.update((d.h_entry, d.h_id) for d in dialogs if _written_state(d))

    def _deleting(self, key: _Key) -> bool:
        """Is the deletion of this row queued or in flight (its call ended here)?"""
        if self._queue.get(key, False) is None:
            return True
        return any(k == key and d is None for k, d in self._in_flight or ())

    def retry_now(self) -> None:
        """The database answers again, maybe through another host: retry at once.

        What waits for the end of a backoff is written now; a write in flight
        on a server that went away still has to fail first.
        """
        if self._down_since is not None and self._cancel_retry():
            self._kick()

    def _cancel_retry(self) -> bool:
        """Drop a pending retry (a wakeup after a backoff); True if there was one."""
        if self._wakeup is None or not self._backoff or self._closed:
            return False
        self._wakeup.cancel()
        self._wakeup = None
        self._backoff = 0.0
        return True

    def _put(self, key: _Key, dialog: Dialog | None, bounded: bool = True) -> None:
        """Queue a write, replacing the dialog's pending one in place."""
        queue = self._queue
        if bounded and key not in queue and len(queue) >= self.max_queue:
            self._overflow()
            return
        queue[key] = dialog
        if dialog is None:
            self._deletes[key] = None
        else:
            self._deletes.pop(key, None)

    def _overflow(self) -> None:
        self.overflows += 1
        self._out_of_sync = True
        self._queue.clear()
        self._deletes.clear()
        self._due = 0
        why = ""
        if self._down_since is not None:
            why = f", database unreachable for {self.clock.seconds() - self._down_since:.0f} s"
        log.error(
            "dialog write queue full ({limit} dialogs{why}): changes are no longer queued; the"
            " dialog table will be resynchronised from memory once the database answers",
            limit=self.max_queue,
            why=why,
        )

    # -- writing --------------------------------------------------------------------------

    def _ready(self) -> bool:
        """Is there something to write now (rather than at mode 2's next period)?"""
        if self._queue and (self.mode == REALTIME or self._stopping or self._due):
            return True
        return self.mode == DELAYED and bool(self._deletes)

    def _kick(self) -> None:
        """Start a write if one is due and none is running or waiting; else report idle."""
        if self._closed:
            return
        if self.mode == DELAYED and self._queue and self._period is None and not self._stopping:
            self._period = self.clock.callLater(self.update_period, self._tick)
        if self._in_flight is not None:
            return
        full = self._stopping or len(self._queue) >= self.batch
        wakeup = self._wakeup
        if wakeup is not None:
            if full and not self._backoff and wakeup.getTime() > self.clock.seconds():
                wakeup.reset(0)  # a gathering write has company enough
            return
        if self._out_of_sync or self._ready():
            # Not at once: changes made in the same reactor turn join the batch,
            # and those of the next ``gather`` seconds unless a batch is full.
            self._wakeup = self.clock.callLater(0 if full else self.gather, self._write)
        else:
            self._idle()

    def _tick(self) -> None:
        self._period = None
        self._due = len(self._queue)
        self._kick()

    def _take(self) -> list[_Entry]:
        limit = 1 if self._single else self.batch
        queue = self._queue
        if queue and (self.mode == REALTIME or self._stopping or self._due):
            if self.mode != REALTIME and not self._stopping:
                limit = min(limit, self._due)
            batch = [queue.popitem(last=False) for _ in range(min(limit, len(queue)))]
            self._due = max(0, self._due - len(batch))
            for key, dialog in batch:
                if dialog is None:
                    del self._deletes[key]
            return batch
        if self.mode != DELAYED:
            return []
        keys = list(itertools.islice(self._deletes, limit))  # deletions go at once
        for key in keys:
            del self._deletes[key]
        return [(key, queue.pop(key)) for key in keys]

    def _write(self) -> None:
        self._wakeup = None
        if self._closed or self._in_flight is not None:
            return
        if self._out_of_sync:
            self._in_flight = []
            probe = maybeDeferred(self.database.ping)
            probe.addCallbacks(self._reachable, self._unreachable)
            return
        batch = self._take()
        if not batch:
            self._kick()
            return
        writes: list[DialogRow | _Key] = []
        for key, dialog in batch:
            if dialog is None:
                writes.append(key)
            else:
                writes.append(dialog_row(dialog))
                self._stored.add(key)
        self._in_flight = batch
        done = maybeDeferred(self.database.write_dialogs, writes)
        done.addCallbacks(self._written, self._failed, (batch,), None, (batch,))

    def _written(self, _: object, batch: list[_Entry]) -> None:
        if self._closed:
            return
        self._in_flight = None
        for key, dialog in batch:
            if dialog is None:
                self._stored.discard(key)
                if self._deleted_meanwhile is not None:
                    self._deleted_meanwhile.add(key)
        self.written += len(batch)
        self._single = max(0, self._single - len(batch))
        self._succeeded(len(batch))
        self._kick()

    def _failed(self, failure: Failure, batch: list[_Entry]) -> None:
        if self._closed:
            return
        self._in_flight = None
        self.errors += 1
        error = failure.value
        if self.database.unreachable(error):
            if not self._out_of_sync:  # else the resynchronisation writes it all
                self._requeue(batch)
            self._retry_later(error)
        elif self._out_of_sync:
            self._kick()
        elif len(batch) > 1:
            self._requeue(batch)
            self._single = len(batch)
            self._kick()
        else:
            ((key, _),) = batch
            self._single = max(0, self._single - 1)
            log.error(
                "dialog {entry}:{ident} not written, the database refused it: {error}",
                entry=key[0],
                ident=key[1],
                error=error,
            )
            self._kick()

    def _requeue(self, batch: list[_Entry]) -> None:
        """Put a failed batch back at the head; a newer change to a dialog replaces its entry."""
        for key, dialog in reversed(batch):
            if key in self._queue:
                continue
            self._queue[key] = dialog
            self._queue.move_to_end(key, last=False)
            if dialog is None:
                self._deletes[key] = None
                self._deletes.move_to_end(key, last=False)
            if self.mode != REALTIME:
                self._due += 1

    def _retry_later(self, error: BaseException) -> None:
        self._went_down(error)
        self._backoff = min(self.retry_max, self._backoff * 2 or self.retry_min)
        self._wakeup = self.clock.callLater(self._backoff, self._write)

    def _went_down(self, error: BaseException) -> None:
        if self._down_since is None:
            self._down_since = self.clock.seconds()
            self._catching_up = None
            log.warn(
                "database unreachable: {error}; {count} dialog writes queued",
                error=error,
                count=len(self._queue),
            )

    def _succeeded(self, written: int) -> None:
        """The database took a write (``written`` rows) or a read: it answers."""
        self._reached = True
        self._backoff = 0.0
        now = self.clock.seconds()
        if self._down_since is not None:
            self._catching_up = {
                "began": self._down_since,
                "seconds": round(now - self._down_since, 3),
                "queued": len(self._queue) + written,
                "replayed": 0,
            }
            self._down_since = None
        if self._catching_up is not None:
            self._catching_up["replayed"] += written
            self.replayed += written

    def _reachable(self, _: object) -> None:
        if self._closed:
            return
        self._in_flight = None
        stale = self._put_all(self.live)
        self._succeeded(0)
        log.info(
            "resynchronising the dialog table: {live} dialogs, {stale} rows to delete",
            live=len(self._queue) - stale,
            stale=stale,
        )
        self._kick()

    def _unreachable(self, failure: Failure) -> None:
        if self._closed:
            return
        self._in_flight = None
        self.errors += 1
        self._retry_later(failure.value)

    def _put_all(self, dialogs: Iterable[Dialog]) -> int:
        """Queue the whole table: every live dialog, and the deletion of every other row.

        Unbounded: it is as big as the dialogs already in memory. Returns the
        number of deletions.
        """
        live = {(d.h_entry, d.h_id): d for d in dialogs if _written_state(d)}
        self._out_of_sync = False
        stale = self._stored - live.keys()
        for key in stale:
            self._put(key, None, bounded=False)
        for key, dialog in live.items():
            self._put(key, dialog, bounded=False)
        self._due = len(self._queue)
        return len(stale)

    def _idle(self) -> None:
        if self._catching_up is not None:
            self.last_outage, self._catching_up = self._catching_up, None
            log.info(
                "database back, dialog queue drained: {replayed} writes replayed after an"
                " outage of {seconds:.1f} s",
                **self.last_outage,
            )
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.called:
                waiter.callback(None)

    # -- start, flush, stop ---------------------------------------------------------------

    def drained(self) -> Deferred[None]:
        """Fires when nothing is due: all written, save what mode 2 keeps for its period."""
        waiter: Deferred[None] = Deferred()
        if self.mode == NO_DB or self._closed:
            waiter.callback(None)
            return waiter
        self._waiters.append(waiter)
        self._kick()
        return waiter

    async def flush_all(self, dialogs: Iterable[Dialog]) -> None:
        """Write the table from ``dialogs``; rows this store wrote for others are deleted.

        Mode 3 does this at stop; an operator may ask for it in any mode.
        Returns once written (however long the database is away).
        """
        if self.mode == NO_DB or self._closed:
            return
        self._put_all(dialogs)
        await self.drained()

    async def load(self, now: float) -> list[Dialog]:
        """The dialogs of the table, taken over, to re-bind and hand to ``Dialogs.restore``.

        Every row becomes this node's (``claim_dialogs``) before it is read.

        Rows already expired (``timeout <= now``) or DELETED are deleted;
        a row that cannot be read as a dialog is logged and left alone. In
        mode 3 every row is removed once read, as OpenSIPS does: the table is
        written again at stop. The row of a call that ended here, whose
        deletion is on its way or was written while the table was read, is
        not returned. A database error propagates.
        """
        if self.mode == NO_DB:
            return []
        self._deleted_meanwhile = set()
        try:
            read = await self._read(now)
            # A call that ended here while the table was read: its row is stale. Its
            # deletion goes again, now that the row is this node's (it may have gone
            # before the claim, and missed the row of the other node).
            deleted = self._deleted_meanwhile
            dialogs, stale = [], []
            for dialog in read:
                key = (dialog.h_entry, dialog.h_id)
                if key in deleted or self._deleting(key):
                    stale.append(key)
                else:
                    dialogs.append(dialog)
            self.discard(stale)
        except Exception as error:
            if self.database.unreachable(error):
                self._went_down(error)
            raise
        finally:
            self._deleted_meanwhile = None
        self._succeeded(0)
        if self._cancel_retry() or self._catching_up is not None:
            self._kick()
        return dialogs

    async def _read(self, now: float) -> list[Dialog]:
        others = await self.database.claim_dialogs()
        if others:
            log.info(
                "took over {rows} dialog rows from {owners}",
                rows=sum(others.values()),
                owners=", ".join(f"{o or 'no owner'} ({n})" for o, n in sorted(others.items())),
            )
        dialogs: list[Dialog] = []
        gone: list[DialogRow | _Key] = []
        for row in await self.database.dialog_rows():
            try:
                if row.state == DialogState.DELETED or row.timeout <= now:
                    gone.append(row.key)
                    continue
                dialog = dialog_from_row(row)
            except (TypeError, ValueError) as error:
                log.warn(
                    "dialog row {entry}:{ident} skipped: {error}",
                    entry=row.hash_entry,
                    ident=row.hash_id,
                    error=error,
                )
                continue
            dialogs.append(dialog)
        keys = [(d.h_entry, d.h_id) for d in dialogs]
        if self.mode == SHUTDOWN:
            gone.extend(keys)
        else:
            self._stored.update(keys)
        if gone:
            await self.database.write_dialogs(gone)
        log.info(
            "{count} dialogs read from the database, {gone} rows deleted",
            count=len(dialogs),
            gone=len(gone),
        )
        return dialogs

    def stop(self, timeout: float = 2.0) -> Deferred[None]:
        """Write what is queued (mode 3: every live dialog), for ``timeout`` seconds at most.

        Never holds up shutdown: past ``timeout`` it logs what was not written
        and fires anyway (a query on a closed pool would never answer). Close
        the database after it; changes after it are ignored.
        """
        if self._closed or self.mode == NO_DB:
            self._close()
            return succeed(None)
        self._stopping = True
        if self._period is not None:
            self._period.cancel()
            self._period = None
        if self.mode == SHUTDOWN:
            self._put_all(self.live)
        if self._wakeup is not None:  # a retry far off: one last attempt now
            self._wakeup.cancel()
            self._wakeup = None
        done = self.drained()
        done.addTimeout(timeout, self.clock)
        done.addErrback(self._gave_up)
        done.addBoth(lambda _: self._close())
        return done

    def _gave_up(self, failure: Failure) -> None:
        failure.trap(TimeoutError)
        unsaved = len(self._queue) + len(self._in_flight or ())
        sync = ", dialog table not resynchronised" if self._out_of_sync else ""
        log.warn("stopping: {count} dialog writes not saved{sync}", count=unsaved, sync=sync)

    def _close(self) -> None:
        self._closed = True
        for call in (self._wakeup, self._period):
            if call is not None and call.active():
                call.cancel()
        self._wakeup = self._period = None
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.called:
                waiter.callback(None)
