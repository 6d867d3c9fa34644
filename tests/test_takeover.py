"""Two sipha nodes sharing one dialog table: the standby takes the calls over (VIP moved)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest_twisted
from twisted.internet import reactor

sys.path.insert(0, str(Path(__file__).parent / "unit"))

from proxykit import CALLER, CONFIG, UDP_IN, Wire, invite, reply

from sipha.config import parse_config
from sipha.control import Control
from sipha.dialog_store import REALTIME, DialogStore
from sipha.service import build_core, build_modules
from sipha.store import Database
from sipha.transaction import Peer

FS1 = Peer("udp", "127.0.0.1", 5071)


class Node:
    """One sipha's core, dialog store and control methods, on the shared database."""

    def __init__(self, url: str) -> None:
        config = parse_config(CONFIG)
        self.wire = Wire()
        self.dispatcher, self.balancer = build_modules(config)
        self.core = build_core(config, reactor, self.wire, (self.dispatcher, self.balancer))
        self.database = Database(url)
        self.store = DialogStore(self.database, reactor, REALTIME, live=self.core.dialogs)
        self.core.dialogs.observer = self.store
        self.control = Control(
            config, self.database, self.dispatcher, self.balancer, self.core.dialogs, self.store
        )

    async def close(self) -> None:
        for dialog in self.core.dialogs:
            if dialog.timer is not None:
                dialog.timer.cancel()
        for transaction in [*self.core.layer.servers.values(), *self.core.layer.clients.values()]:
            transaction.timers.stop()
        await self.store.stop()
        self.database.close()


@pytest_twisted.ensureDeferred
async def test_standby_takes_over_calls_and_forgets_those_ended_meanwhile(db_url):
    active, standby = Node(db_url), Node(db_url)
    try:
        await active.database.create_schema()
        active.core.receive(invite(), CALLER, UDP_IN)
        forwarded = active.wire.take()[1].message
        active.core.receive(reply(forwarded, 200), FS1, UDP_IN)
        await active.store.drained()

        assert await standby.control.reload_dialogs() == 1
        assert standby.balancer.load("sip:127.0.0.1:5071") == {"pstn": 1}
        (restored,) = standby.core.dialogs
        assert restored.call_id == "call-1@192.0.2.10"

        # The call ends on the active node; the standby takes the VIP later.
        bye = invite(
            method="BYE",
            uri="sip:fs@127.0.0.1:5071",
            to_tag="uas-1",
            cseq=2,
            branch="z9hG4bK-bye",
            routes=("<sip:127.0.0.1:5060;lr>",),
        )
        active.core.receive(bye, CALLER, UDP_IN)
        await active.store.drained()
        assert await standby.control.reload_dialogs() == 0
        assert len(standby.core.dialogs) == 0
        assert standby.balancer.load("sip:127.0.0.1:5071") == {"pstn": 0}
    finally:
        await active.close()
        await standby.close()
