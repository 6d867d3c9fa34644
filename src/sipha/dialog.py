"""Dialogs of the calls sipha relays, with OpenSIPS's states (dialog module).

Theory of operation: the proxy core reports each step of a call (INVITE
relayed, provisional, 2xx, ACK, failure, BYE) and :class:`Dialogs` moves the
dialog through UNCONFIRMED -> EARLY -> CONFIRMED_NA -> CONFIRMED -> DELETED.
A dialog holds the load-balancer allocation of its call; every path to
DELETED (failed or cancelled INVITE, BYE, timeout) releases it exactly once,
so load counters cannot leak. The clock is injected; nothing here does I/O.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from sipha.message import Request, Response


class DialogState(enum.IntEnum):
    """OpenSIPS's numbering, which is also what the ``dialog.state`` column holds."""

    UNCONFIRMED = 1
    EARLY = 2
    CONFIRMED_NA = 3
    CONFIRMED = 4
    DELETED = 5


class Releasable(Protocol):
    def release(self) -> None: ...


@dataclass(eq=False, slots=True)
class Dialog:
    call_id: str
    from_tag: str
    to_tag: str | None = None
    destination: str | None = None
    binding: Releasable | None = None
    state: DialogState = DialogState.UNCONFIRMED
    start_time: float = 0.0
    timeout_at: float = 0.0
    timer: Any = field(default=None, repr=False)


class Dialogs:
    """Every live dialog, found by Call-ID and tags in either direction.

    ``on_end(dialog, reason)`` is called once per dialog as it is deleted
    (reason: ``failed``, ``bye``, ``timeout``), after its allocation is
    released.
    """

    def __init__(self, clock: Any, default_timeout: float = 43200.0,
                 on_end: Callable[[Dialog, str], None] | None = None):  # fmt: skip
        self.clock = clock
        self.default_timeout = default_timeout
        self.on_end = on_end
        self._by_key: dict[tuple[str, str], Dialog] = {}

    def __len__(self) -> int:
        return len(self._by_key)

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(list(self._by_key.values()))

    def create(self, invite: Request, binding: Releasable | None = None) -> Dialog | None:
        """A relayed initial INVITE; none without a From tag (it could never be matched)."""
        if not invite.from_tag:
            return None
        dialog = Dialog(invite.call_id, invite.from_tag, binding=binding)
        self._by_key[(dialog.call_id, dialog.from_tag)] = dialog
        return dialog

    def provisional(self, dialog: Dialog, response: Response) -> None:
        if dialog.state is DialogState.UNCONFIRMED and response.to_tag:
            dialog.state = DialogState.EARLY

    def answered(self, dialog: Dialog, response: Response) -> None:
        """A 2xx: the call is up; the lifetime (``default_timeout``) starts now."""
        if dialog.state >= DialogState.CONFIRMED_NA:
            return
        dialog.state = DialogState.CONFIRMED_NA
        dialog.to_tag = response.to_tag
        dialog.start_time = self.clock.seconds()
        dialog.timeout_at = dialog.start_time + self.default_timeout
        dialog.timer = self.clock.callLater(self.default_timeout, self.end, dialog, "timeout")

    def acknowledged(self, dialog: Dialog) -> None:
        if dialog.state is DialogState.CONFIRMED_NA:
            dialog.state = DialogState.CONFIRMED

    def failed(self, dialog: Dialog) -> None:
        """The INVITE failed or was cancelled: the early dialog goes, and its unit."""
        if dialog.state < DialogState.CONFIRMED_NA:
            self.end(dialog, "failed")

    def match(self, request: Request) -> Dialog | None:
        """The dialog of an in-dialog request, from the caller or from the callee."""
        dialog = self._by_key.get((request.call_id, request.from_tag or ""))
        if dialog is None and request.to_tag:
            dialog = self._by_key.get((request.call_id, request.to_tag))
        return dialog

    def end(self, dialog: Dialog, reason: str) -> None:
        if dialog.state is DialogState.DELETED:
            return
        dialog.state = DialogState.DELETED
        if dialog.timer is not None and dialog.timer.active():
            dialog.timer.cancel()
        dialog.timer = None
        self._by_key.pop((dialog.call_id, dialog.from_tag), None)
        if dialog.binding is not None:
            dialog.binding.release()
        if self.on_end is not None:
            self.on_end(dialog, reason)
