"""Dialogs of the calls sipha relays, with OpenSIPS's states (dialog module).

Theory of operation: the proxy core reports each step of a call (INVITE
relayed, provisional, 2xx, ACK, in-dialog request, failure, BYE) and
:class:`Dialogs` moves the dialog through UNCONFIRMED -> EARLY ->
CONFIRMED_NA -> CONFIRMED -> DELETED. A dialog holds the load-balancer
allocation of its call; every path to DELETED (failed or cancelled INVITE,
BYE, timeout) releases it exactly once, so load counters cannot leak.

Each dialog has an id, ``(h_entry, h_id)`` as in OpenSIPS, carried in sipha's
Record-Route as ``did=<entry>.<id>`` (both in reversed hex), so in-dialog
requests find it even when a UA changes its tags; Call-ID and tags are the
fallback. A dialog also keeps what another node needs to take the call over
(route sets, contacts, CSeqs, the load-balancer binding, and while it rings
the branch it was forwarded on): each :class:`DialogObserver` (the dialog
store, the replication link to the other node) hears of every change, from
the first forward to the end.

The clock is injected; nothing here does I/O.
"""

from __future__ import annotations

import enum
import random
import zlib
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from sipha.message import Request, Response
from sipha.uri import URIError, name_addr_uri, parse_uri

HASH_SIZE: Final = 4096
#: Calls remembered as over (see Dialogs.restore).
ENDED_KEPT = 10000


class DialogState(enum.IntEnum):
    """OpenSIPS's numbering, which is also what the ``dialog.state`` column holds."""

    UNCONFIRMED = 1
    EARLY = 2
    CONFIRMED_NA = 3
    CONFIRMED = 4
    DELETED = 5


class Releasable(Protocol):
    def release(self) -> None: ...


class DialogObserver(Protocol):
    """Told of each change: a dialog forwarded, answered or updated, or deleted.

    Early dialogs are reported too (the other node of a pair needs them to
    take a ringing call over); the dialog store keeps only answered ones.
    """

    def changed(self, dialog: Dialog) -> None: ...
    def deleted(self, dialog: Dialog) -> None: ...


def revhex(value: int) -> str:
    """OpenSIPS's ``did`` encoding: lower-case hex, least significant digit first."""
    return format(value, "x")[::-1]


def parse_did(text: str) -> tuple[int, int] | None:
    entry, _, ident = text.partition(".")
    try:
        return int(entry[::-1], 16), int(ident[::-1], 16)
    except ValueError:
        return None


@dataclass(eq=False, slots=True)
class Dialog:
    h_entry: int
    h_id: int
    call_id: str
    from_uri: str
    from_tag: str
    to_uri: str
    to_tag: str | None = None
    caller_cseq: int = 0
    callee_cseq: int = 0
    caller_contact: str = ""
    callee_contact: str = ""
    caller_route_set: list[str] = field(default_factory=list)
    callee_route_set: list[str] = field(default_factory=list)
    caller_sock: str = ""
    callee_sock: str = ""
    state: DialogState = DialogState.UNCONFIRMED
    start_time: float = 0.0
    timeout_at: float = 0.0
    destination: str | None = None
    #: The Via branch of the forward to ``destination``, while the call rings.
    branch: str | None = None
    lb_group: int | None = None
    lb_resources: tuple[str, ...] = ()
    binding: Releasable | None = field(default=None, repr=False)
    timer: Any = field(default=None, repr=False)

    # Written out: compiled, it is native code; the one @dataclass writes stays Python.
    def __init__(
        self,
        h_entry: int,
        h_id: int,
        call_id: str,
        from_uri: str,
        from_tag: str,
        to_uri: str,
        to_tag: str | None = None,
        caller_cseq: int = 0,
        callee_cseq: int = 0,
        caller_contact: str = "",
        callee_contact: str = "",
        caller_route_set: list[str] | None = None,
        callee_route_set: list[str] | None = None,
        caller_sock: str = "",
        callee_sock: str = "",
        state: DialogState = DialogState.UNCONFIRMED,
        start_time: float = 0.0,
        timeout_at: float = 0.0,
        destination: str | None = None,
        branch: str | None = None,
        lb_group: int | None = None,
        lb_resources: tuple[str, ...] = (),
        binding: Releasable | None = None,
        timer: Any = None,
    ) -> None:
        self.h_entry = h_entry
        self.h_id = h_id
        self.call_id = call_id
        self.from_uri = from_uri
        self.from_tag = from_tag
        self.to_uri = to_uri
        self.to_tag = to_tag
        self.caller_cseq = caller_cseq
        self.callee_cseq = callee_cseq
        self.caller_contact = caller_contact
        self.callee_contact = callee_contact
        self.caller_route_set = [] if caller_route_set is None else caller_route_set
        self.callee_route_set = [] if callee_route_set is None else callee_route_set
        self.caller_sock = caller_sock
        self.callee_sock = callee_sock
        self.state = state
        self.start_time = start_time
        self.timeout_at = timeout_at
        self.destination = destination
        self.branch = branch
        self.lb_group = lb_group
        self.lb_resources = lb_resources
        self.binding = binding
        self.timer = timer

    @property
    def did(self) -> str:
        return f"{revhex(self.h_entry)}.{revhex(self.h_id)}"

    def from_caller(self, request: Request) -> bool:
        """Is this in-dialog request going downstream (caller to callee)?"""
        return request.from_tag == self.from_tag


def _contact_uri(message: Request | Response) -> str:
    value = message.get("contact")
    if not value:
        return ""
    try:
        return name_addr_uri(value.split(",")[0])
    except URIError:
        return ""


class Dialogs:
    """Every live dialog, found by ``did`` or by Call-ID and tags in either direction.

    ``is_local(uri)`` tells sipha's own Record-Route entries apart, to split a
    2xx's Record-Route into the callee's and the caller's route sets.
    ``observers`` hear of every change (see :class:`DialogObserver`).
    ``ack_timeout``: an answered call whose ACK never came is dropped, silently,
    that long after its 2xx (the UAS gives up on it after 64*T1 and hangs up,
    RFC 3261 §13.3.1.4; its BYE may have been lost too); None keeps it.
    ``on_end(dialog, reason)`` is called once per dialog as it is deleted
    (reason: ``failed``, ``bye``, ``timeout``, ``ended``), after its allocation
    is released.
    """

    def __init__(
        self,
        clock: Any,
        default_timeout: float = 43200.0,
        *,
        is_local: Callable[[str], bool] = lambda uri: False,
        observers: tuple[DialogObserver, ...] = (),
        ack_timeout: float | None = None,
        on_end: Callable[[Dialog, str], None] | None = None,
        rng: random.Random | None = None,
    ):
        self.clock = clock
        self.default_timeout = default_timeout
        self.is_local = is_local
        self.observers = observers
        self.ack_timeout = ack_timeout
        self.on_end = on_end
        self._rng = rng or random.Random()
        self._next_id: dict[int, int] = {}
        self._by_id: dict[tuple[int, int], Dialog] = {}
        self._by_key: dict[tuple[str, str], Dialog] = {}
        # Call-IDs of calls over: answered ones that ended here, and BYEs that
        # matched no dialog. After a restart or a takeover, a call can end before
        # the dialog table is read back, and its row must not bring it back.
        # Oldest first; an OrderedDict drops its first entry in constant time, where a
        # dict would step over every entry deleted before it.
        self._ended: OrderedDict[str, None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._by_id)

    def __iter__(self) -> Iterator[Dialog]:
        return iter(list(self._by_id.values()))

    def _new_id(self, call_id: str) -> tuple[int, int]:
        entry = zlib.crc32(call_id.encode("utf-8", "surrogateescape")) & (HASH_SIZE - 1)
        # A random start per entry keeps two nodes (or two runs) from handing
        # out the same ids for different calls into a shared table.
        ident = self._next_id.get(entry)
        if ident is None:
            ident = self._rng.randrange(1 << 24)
        while (entry, ident) in self._by_id:
            ident += 1
        self._next_id[entry] = ident + 1
        return entry, ident

    def _add(self, dialog: Dialog) -> None:
        self._by_id[(dialog.h_entry, dialog.h_id)] = dialog
        self._by_key[(dialog.call_id, dialog.from_tag)] = dialog

    def create(
        self, invite: Request, caller_sock: str = "", binding: Releasable | None = None
    ) -> Dialog | None:
        """A relayed initial INVITE; none without a From tag (it could never be matched)."""
        if not invite.from_tag:
            return None
        entry, ident = self._new_id(invite.call_id)
        dialog = Dialog(
            entry,
            ident,
            invite.call_id,
            from_uri=name_addr_uri(invite.get("from") or ""),
            from_tag=invite.from_tag,
            to_uri=name_addr_uri(invite.get("to") or ""),
            caller_cseq=invite.cseq,
            caller_contact=_contact_uri(invite),
            caller_sock=caller_sock,
            binding=binding,
        )
        self._add(dialog)
        return dialog

    def _changed(self, dialog: Dialog) -> None:
        for observer in self.observers:
            observer.changed(dialog)

    def forked(self, dialog: Dialog, destination: str | None, branch: str) -> None:
        """The INVITE went to ``destination`` (first choice, or failover) on ``branch``."""
        dialog.destination = destination
        dialog.branch = branch
        self._changed(dialog)

    def provisional(self, dialog: Dialog, response: Response) -> None:
        if dialog.state is DialogState.UNCONFIRMED and response.to_tag:
            dialog.state = DialogState.EARLY

    def answered(self, dialog: Dialog, response: Response, callee_sock: str = "") -> None:
        """A 2xx: the call is up; its lifetime (``default_timeout``) starts now."""
        if dialog.state >= DialogState.CONFIRMED_NA:
            return
        dialog.state = DialogState.CONFIRMED_NA
        dialog.branch = None  # only a ringing call's CANCEL takes it: memory per call
        dialog.to_tag = response.to_tag
        dialog.callee_contact = _contact_uri(response)
        dialog.callee_sock = callee_sock
        dialog.callee_route_set, dialog.caller_route_set = self._route_sets(response)
        dialog.start_time = self.clock.seconds()
        self._arm(dialog, dialog.start_time + self.default_timeout)
        if self.ack_timeout is not None:
            dialog.timer.cancel()  # the ACK's deadline comes first
            dialog.timer = self.clock.callLater(self.ack_timeout, self._ack_due, dialog)
        self._changed(dialog)

    def _ack_due(self, dialog: Dialog) -> None:
        if dialog.state is DialogState.CONFIRMED_NA:
            self.end(dialog, "unacknowledged")
        else:
            self._arm(dialog, dialog.timeout_at)

    def _route_sets(self, response: Response) -> tuple[list[str], list[str]]:
        """Split a 2xx's Record-Route at sipha's own entries (§12.1.1, §12.1.2).

        Entries above ours lead to the callee (its route set, in order);
        entries below ours lead to the caller (its route set, reversed).
        """
        entries = response.get_all("record-route")
        own = [i for i, entry in enumerate(entries) if self._local_entry(entry)]
        if not own:
            return entries, []
        return entries[: own[0]], list(reversed(entries[own[-1] + 1 :]))

    def _local_entry(self, entry: str) -> bool:
        try:
            return self.is_local(name_addr_uri(entry))
        except URIError:
            return False

    def _arm(self, dialog: Dialog, deadline: float, reason: str = "timeout") -> None:
        if dialog.timer is not None and dialog.timer.active():
            dialog.timer.cancel()  # a ringing call taken over has one: it is answered now
        dialog.timeout_at = deadline
        delay = max(0.0, deadline - self.clock.seconds())
        dialog.timer = self.clock.callLater(delay, self.end, dialog, reason)

    def in_dialog(self, dialog: Dialog, request: Request) -> None:
        """An in-dialog request: ACK confirms, BYE ends, the rest update the CSeqs."""
        if request.method == "ACK":
            if dialog.state is DialogState.CONFIRMED_NA:
                dialog.state = DialogState.CONFIRMED
                self._changed(dialog)
            return
        if request.method == "BYE":
            # As in OpenSIPS, the dialog (and its unit) ends when the BYE is
            # seen, not when its 200 comes back.
            self.end(dialog, "bye")
            return
        if dialog.from_caller(request):
            dialog.caller_cseq = max(dialog.caller_cseq, request.cseq)
        else:
            dialog.callee_cseq = max(dialog.callee_cseq, request.cseq)
        if dialog.state >= DialogState.CONFIRMED_NA:
            self._changed(dialog)

    def failed(self, dialog: Dialog) -> None:
        """The INVITE failed or was cancelled: the early dialog goes, and its unit."""
        if dialog.state < DialogState.CONFIRMED_NA:
            self.end(dialog, "failed")

    def match(self, request: Request, did: str | None = None) -> Dialog | None:
        """The dialog of an in-dialog request: by ``did``, else by Call-ID and tags."""
        if did is not None:
            ident = parse_did(did)
            dialog = self._by_id.get(ident) if ident else None
            if dialog is not None and dialog.call_id == request.call_id:
                return dialog
        dialog = self._by_key.get((request.call_id, request.from_tag or ""))
        if dialog is None and request.to_tag:
            dialog = self._by_key.get((request.call_id, request.to_tag))
        return dialog

    def match_id(self, h_entry: int, h_id: int) -> Dialog | None:
        return self._by_id.get((h_entry, h_id))

    def find(self, call_id: str, from_tag: str) -> Dialog | None:
        """The dialog of a reply to the caller's INVITE (its Call-ID and From tag)."""
        return self._by_key.get((call_id, from_tag))

    def end(self, dialog: Dialog, reason: str) -> None:
        if dialog.state is DialogState.DELETED:
            return
        if dialog.state >= DialogState.CONFIRMED_NA:
            self._remember_ended(dialog.call_id)
        self._forget(dialog)
        for observer in self.observers:
            observer.deleted(dialog)
        if self.on_end is not None:
            self.on_end(dialog, reason)

    def _remember_ended(self, call_id: str) -> None:
        self._ended[call_id] = None
        if len(self._ended) > ENDED_KEPT:
            self._ended.popitem(last=False)

    def _forget(self, dialog: Dialog) -> None:
        """Out of the registry, its timer stopped and its load-balancer unit released."""
        dialog.state = DialogState.DELETED
        if dialog.timer is not None and dialog.timer.active():
            dialog.timer.cancel()
        dialog.timer = None
        self._by_id.pop((dialog.h_entry, dialog.h_id), None)
        if self._by_key.get((dialog.call_id, dialog.from_tag)) is dialog:
            del self._by_key[(dialog.call_id, dialog.from_tag)]
        if dialog.binding is not None:
            dialog.binding.release()

    def drop_all(self) -> int:
        """Forget every dialog without a word: no BYE, no write (the node became passive).

        The calls go on through the other node, which owns them now; here the
        load-balancer units are released (counters back to zero) and the
        timers stopped. Returns how many dialogs were dropped.
        """
        dropped = list(self._by_id.values())
        for dialog in dropped:
            self._forget(dialog)
        self._ended.clear()
        return len(dropped)

    def orphan_bye(self, request: Request) -> None:
        """Remember a BYE that matched no dialog, in case its dialog is restored later."""
        self._remember_ended(request.call_id)

    def restore(self, dialog: Dialog) -> bool:
        """A dialog taken over: read back from the store, or from the other node's stream.

        Its remaining lifetime runs from its ``timeout_at``; one already past
        expires at the next clock tick. An answered call that reaches it gets
        BYEs (as any timeout); a ringing one that was never answered by then
        just fails. The caller re-binds its load-balancer allocation first. A
        dialog whose BYE already went through is ended at once, so neither its
        row nor its unit outlives the call, and so is an answered call that ended
        here before (its row read back before its deletion was written). Returns
        whether the call goes on.
        """
        if (dialog.h_entry, dialog.h_id) in self._by_id:
            return False
        self._add(dialog)
        if dialog.call_id in self._ended:
            del self._ended[dialog.call_id]
            self.end(dialog, "bye")
            return False
        self._next_id[dialog.h_entry] = max(self._next_id.get(dialog.h_entry, 0), dialog.h_id + 1)
        answered = dialog.state >= DialogState.CONFIRMED_NA
        self._arm(dialog, dialog.timeout_at, "timeout" if answered else "failed")
        return True


def uri_host_port(uri: str) -> str:
    """``udp:host:port``-style socket text for a URI (what ``*_sock`` columns hold)."""
    parsed = parse_uri(uri)
    return f"{parsed.transport}:{parsed.host}:{parsed.effective_port}"
