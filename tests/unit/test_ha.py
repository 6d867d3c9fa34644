"""The node's role: what becoming passive and becoming active do to the live objects (sans-IO)."""

from __future__ import annotations

from proxykit import CALLER, CONFIG, UDP_IN, Sent, Wire, invite, reply
from test_probing import Module
from twisted.internet.task import Clock
from twisted.logger import capturedLogs

from sipha.config import ListenAddress, parse_config
from sipha.dialog import DialogState
from sipha.ha import HighAvailability, Role, is_local_address
from sipha.message import Response
from sipha.probing import Prober
from sipha.proxy import ProxyCore
from sipha.replication import Outbox, WarmCopy
from sipha.service import build_core
from sipha.transaction import Peer

NODE = ListenAddress("udp", "127.0.0.2", 5060)
FS = "sip:127.0.0.1:5071"


def node(node_address: bool = True) -> tuple[ProxyCore, Clock, Wire, HighAvailability, Prober]:
    """A core with its role, and a prober on the node's own address if it has one."""
    clock, wire = Clock(), Wire()
    core = build_core(parse_config(CONFIG), clock, wire, node=NODE if node_address else None)
    prober = Prober("lb", core, Module([FS]), interval=5, local=core.node_listener)
    ha = HighAvailability(
        clock,
        core,
        core.helpers.balancer,
        probers=[prober],
        early_lifetime=40,
        probe_while_passive=node_address,
    )
    return core, clock, wire, ha, prober


def load(core: ProxyCore) -> int:
    return sum(r["load"] for d in core.helpers.balancer.list() for r in d["resources"])


def ring(core: ProxyCore, wire: Wire, n: int, answer: bool) -> Sent:
    """A call through ``core``, ringing or answered; returns its INVITE as forwarded."""
    core.receive(invite(call_id=f"call-{n}", branch=f"z9hG4bK-{n}"), CALLER, UDP_IN)
    sent = wire.sent[-1]
    core.receive(reply(sent.message, 180), sent.peer, UDP_IN)
    if answer:
        core.receive(reply(sent.message, 200), sent.peer, UDP_IN)
    wire.take()
    return sent


def test_becoming_passive_forgets_every_call_without_sending_anything():
    core, clock, wire, ha, _ = node()
    ha.set_role(Role.ACTIVE, "test")
    ring(core, wire, 1, answer=True)
    ring(core, wire, 2, answer=False)
    assert load(core) == 2

    ha.set_role(Role.PASSIVE, "test")
    assert (len(core.dialogs), load(core)) == (0, 0)
    clock.advance(43200)  # every timer of theirs (retransmissions, fr_inv_timer, dialog timeout)
    assert wire.take() == []
    assert ha.status()["role"] == "passive"


def test_a_passive_node_probes_from_its_own_address_and_answers_only_there():
    core, _, wire, ha, prober = node()
    ha.set_role(Role.PASSIVE, "test")
    prober.probe_all()
    (probe,) = wire.take()
    assert (probe.local, probe.message.top_via.host) == (NODE, "127.0.0.2")
    core.receive(reply(probe.message, 200), Peer("udp", "127.0.0.1", 5071), NODE)
    assert prober.results[(FS, "ok")] == 1

    core.receive(invite(), CALLER, UDP_IN)  # the virtual IP's traffic is not this node's
    options = invite(method="OPTIONS", uri="sip:127.0.0.2:5060")
    core.receive(options, CALLER, NODE)  # a health check on the node's own address
    (answer,) = wire.take()
    assert isinstance(answer.message, Response)
    assert answer.message.status == 200
    core.receive(invite(uri="sip:service@127.0.0.2:5060"), CALLER, NODE)
    assert wire.take() == []  # calls come to the virtual IP only


def test_a_passive_node_without_an_address_of_its_own_does_not_probe():
    _, _, wire, ha, prober = node(node_address=False)
    ha.set_role(Role.PASSIVE, "test")
    prober.probe_all()
    assert wire.take() == []
    ha.set_role(Role.ACTIVE, "test")
    prober.probe_all()
    assert [s.message.method for s in wire.take()] == ["OPTIONS"]


def test_the_role_follows_the_virtual_ip_and_a_repeated_role_changes_nothing():
    _, clock, _, ha, _ = node()
    ha.vip_changed(True)
    since = ha.since
    clock.advance(5)
    ha.set_role("active", "sipha-ctl")  # already active: no second takeover
    assert (ha.role, ha.since) == (Role.ACTIVE, since)
    ha.vip_changed(False)
    assert (ha.role, ha.since) == (Role.PASSIVE, 5)


def taken_over(
    *answered: bool,
) -> tuple[list[Sent], ProxyCore, Clock, Wire, HighAvailability]:
    """Calls set up on an active node (ringing, or answered), streamed to a passive one.

    Returns their INVITEs as the media servers got them, and the passive node.
    """
    active, _, active_wire, active_ha, _ = node()
    active_ha.set_role(Role.ACTIVE, "test")
    outbox = Outbox(active.dialogs)
    outbox.enabled = True
    active.dialogs.observers = (outbox,)
    invites = [ring(active, active_wire, n, answer) for n, answer in enumerate(answered, 1)]
    standby, clock, wire, ha, _ = node()
    ha.set_role(Role.PASSIVE, "test")
    warm = WarmCopy(clock)
    ha.attach(warm, None)
    for line in outbox.snapshot():
        warm.receive(line)
    return invites, standby, clock, wire, ha


def test_ringing_calls_taken_over_hold_their_units_until_answered_or_too_old():
    _, standby, clock, wire, ha = taken_over(False, True)
    ha.set_role(Role.ACTIVE, "the virtual IP is on this host")
    states = {d.call_id: d.state for d in standby.dialogs}
    assert states == {"call-1": DialogState.EARLY, "call-2": DialogState.CONFIRMED_NA}
    assert load(standby) == 2
    assert ha.status()["last_takeover"]["from_standby"] == 2
    clock.advance(40)  # early_lifetime: the ringing call was never answered
    assert [d.call_id for d in standby.dialogs] == ["call-2"]
    assert load(standby) == 1
    assert wire.take() == []  # no BYE for a call that never came up


def test_a_ringing_call_taken_over_and_answered_outlives_its_ringing_time():
    (invite_sent,), standby, clock, wire, ha = taken_over(False)
    ha.set_role(Role.ACTIVE, "the virtual IP is on this host")

    standby.receive(reply(invite_sent.message, 200), invite_sent.peer, UDP_IN)
    assert [s.peer for s in wire.take()] == [CALLER]
    record_route = invite_sent.message.get("record-route")
    ack = invite(
        method="ACK", call_id="call-1", to_tag="uas-1", branch="z9hG4bK-a", routes=(record_route,)
    )
    standby.receive(ack, CALLER, UDP_IN)
    clock.advance(100)
    (dialog,) = standby.dialogs
    assert dialog.state is DialogState.CONFIRMED
    assert load(standby) == 1


def test_the_other_node_saying_it_is_active_too_is_logged_once():
    _, _, _, ha, _ = node()
    ha.set_role(Role.ACTIVE, "test")
    with capturedLogs() as events:
        for _ in range(3):  # a hello every second
            ha.peer_said("active")
    assert ["both nodes are active" in e["log_format"] for e in events] == [True]


def test_a_call_the_other_node_saw_end_after_the_takeover_ends_here_too():
    core, _, wire, ha, _ = node()
    ha.set_role(Role.ACTIVE, "test")
    ring(core, wire, 1, answer=True)
    (dialog,) = core.dialogs
    ha.peer_ended((dialog.h_entry, dialog.h_id))
    assert (len(core.dialogs), load(core)) == (0, 0)
    assert wire.take() == []


def test_is_local_address_asks_the_kernel():
    assert is_local_address("127.0.0.1")
    assert is_local_address("::1")
    assert not is_local_address("198.18.255.254")
