"""Dialog states and the release of each call's allocation (OpenSIPS dialog module)."""

from __future__ import annotations

import pytest
from proxykit import CALLER, UDP_IN, invite, make_proxy, reply
from twisted.internet.task import Clock

from sipha.dialog import Dialogs, DialogState, parse_did, revhex
from sipha.message import Request, Response, parse_message
from sipha.transaction import Peer


class Binding:
    def __init__(self) -> None:
        self.released = 0

    def release(self) -> None:
        self.released += 1


def parsed(data: bytes) -> Request | Response:
    return parse_message(data)


def new_dialog():
    clock = Clock()
    ended: list[str] = []
    dialogs = Dialogs(clock, default_timeout=100, on_end=lambda d, why: ended.append(why))
    request = parsed(invite())
    binding = Binding()
    dialog = dialogs.create(request, "udp:127.0.0.1:5060", binding)
    return dialogs, dialog, request, binding, clock, ended


def test_answered_call_goes_through_every_state_and_bye_releases_once():
    dialogs, dialog, request, binding, _, ended = new_dialog()
    assert dialog.state is DialogState.UNCONFIRMED
    dialogs.provisional(dialog, parsed(reply(request, 180)))
    assert dialog.state is DialogState.EARLY
    dialogs.answered(dialog, parsed(reply(request, 200)))
    assert dialog.state is DialogState.CONFIRMED_NA
    assert dialog.to_tag == "uas-1"
    dialogs.in_dialog(dialog, parsed(invite(method="ACK", to_tag="uas-1")))
    assert dialog.state is DialogState.CONFIRMED
    bye_from_callee = parsed(
        invite(method="BYE", to_tag="from-1", cseq=5).replace(
            b"tag=from-1\r\nTo", b"tag=uas-1\r\nTo"
        )
    )
    assert dialogs.match(bye_from_callee) is dialog
    dialogs.in_dialog(dialog, bye_from_callee)
    dialogs.end(dialog, "bye")
    assert dialog.state is DialogState.DELETED
    assert binding.released == 1
    assert ended == ["bye"]
    assert len(dialogs) == 0


@pytest.mark.parametrize("answered", [False, True])
def test_failure_releases_only_an_unanswered_dialog(answered):
    dialogs, dialog, request, binding, _, _ = new_dialog()
    if answered:
        dialogs.answered(dialog, parsed(reply(request, 200)))
    dialogs.failed(dialog)
    assert binding.released == (0 if answered else 1)


def test_answered_dialog_times_out_after_default_timeout():
    dialogs, dialog, request, binding, clock, ended = new_dialog()
    dialogs.answered(dialog, parsed(reply(request, 200)))
    clock.advance(99)
    assert binding.released == 0
    clock.advance(1)
    assert binding.released == 1
    assert ended == ["timeout"]


def test_proxy_releases_the_load_balancer_unit_on_failure_and_on_bye():
    core, _, wire = make_proxy()
    balancer = core.helpers.balancer
    fs1 = Peer("udp", "127.0.0.1", 5071)
    core.receive(invite(), CALLER, UDP_IN)
    forwarded = wire.take()[1].message
    assert balancer.load("sip:127.0.0.1:5071") == {"pstn": 1}
    core.receive(reply(forwarded, 486), fs1, UDP_IN)
    assert balancer.load("sip:127.0.0.1:5071") == {"pstn": 0}
    assert len(core.dialogs) == 0

    core.receive(invite(call_id="call-2", branch="z9hG4bK-2"), CALLER, UDP_IN)
    forwarded = wire.take()[1].message
    core.receive(reply(forwarded, 200), fs1, UDP_IN)
    assert len(core.dialogs) == 1
    assert balancer.load("sip:127.0.0.1:5071") == {"pstn": 1}
    bye = invite(
        method="BYE",
        uri="sip:fs@127.0.0.1:5071",
        call_id="call-2",
        to_tag="uas-1",
        cseq=2,
        branch="z9hG4bK-3",
        routes=("<sip:127.0.0.1:5060;lr>",),
    )
    core.receive(bye, CALLER, UDP_IN)
    assert balancer.load("sip:127.0.0.1:5071") == {"pstn": 0}
    assert len(core.dialogs) == 0


def test_proxy_moves_the_unit_on_failover_and_releases_after_cancel():
    core, _, wire = make_proxy()
    balancer = core.helpers.balancer
    core.receive(invite(), CALLER, UDP_IN)
    forwarded = wire.take()[1].message
    core.receive(reply(forwarded, 503), Peer("udp", "127.0.0.1", 5071), UDP_IN)
    retry = wire.take()[1].message
    assert balancer.load("sip:127.0.0.1:5071") == {"pstn": 0}
    assert balancer.load("sip:127.0.0.1:5072") == {"pstn": 1}
    core.receive(reply(retry, 180), Peer("udp", "127.0.0.1", 5072), UDP_IN)
    core.receive(invite(method="CANCEL"), CALLER, UDP_IN)
    assert balancer.load("sip:127.0.0.1:5072") == {"pstn": 1}  # until the INVITE is over
    core.receive(reply(retry, 487), Peer("udp", "127.0.0.1", 5072), UDP_IN)
    assert balancer.load("sip:127.0.0.1:5072") == {"pstn": 0}


def test_did_is_reversed_hex_and_matches_when_tags_change():
    assert revhex(0x1A3) == "3a1"
    assert parse_did("3a1.f") == (0x1A3, 0xF)
    assert parse_did("zz.1") is None
    dialogs, dialog, request, _, _, _ = new_dialog()
    dialogs.answered(dialog, parsed(reply(request, 200)))
    odd = parsed(invite(method="BYE", to_tag="other").replace(b"tag=from-1", b"tag=changed"))
    assert dialogs.match(odd) is None
    assert dialogs.match(odd, dialog.did) is dialog


def test_route_sets_are_split_at_our_own_record_route():
    clock = Clock()
    dialogs = Dialogs(clock, is_local=lambda uri: "127.0.0.1:5060" in uri)
    request = parsed(invite())
    dialog = dialogs.create(request)
    response = parsed(
        reply(request, 200).replace(
            b"Content-Length",
            b"Record-Route: <sip:callee-proxy;lr>, <sip:127.0.0.1:5060;lr>, "
            b"<sip:edge-a;lr>\r\nRecord-Route: <sip:edge-b;lr>\r\nContent-Length",
        )
    )
    dialogs.answered(dialog, response)
    assert dialog.callee_route_set == ["<sip:callee-proxy;lr>"]
    assert dialog.caller_route_set == ["<sip:edge-b;lr>", "<sip:edge-a;lr>"]
    assert dialog.callee_contact == "sip:fs@127.0.0.1:5071"
    assert dialog.caller_contact == "sip:alice@192.0.2.10:5062"


def test_record_route_carries_the_did_and_an_expired_call_gets_bye_both_ways():
    core, clock, wire = make_proxy()
    core.receive(invite(), CALLER, UDP_IN)
    forwarded = wire.take()[1].message
    (dialog,) = core.dialogs
    assert forwarded.get("record-route") == (
        f"<sip:127.0.0.1:5060;lr;ftag=from-1;did={dialog.did}>"
    )
    core.receive(reply(forwarded, 200), Peer("udp", "127.0.0.1", 5071), UDP_IN)
    ack = invite(
        method="ACK", to_tag="uas-1", branch="z9hG4bK-ack", routes=(forwarded.get("record-route"),)
    )
    core.receive(ack, CALLER, UDP_IN)
    wire.take()
    clock.advance(43200)
    byes = {s.peer.port: s.message for s in wire.take()}
    assert byes[5071].method == "BYE"
    assert byes[5071].uri == "sip:fs@127.0.0.1:5071"
    assert byes[5071].to_tag == "uas-1"
    assert byes[5071].cseq == 2
    assert byes[5062].uri == "sip:alice@192.0.2.10:5062"
    assert byes[5062].from_tag == "uas-1"
    assert byes[5062].to_tag == "from-1"
    assert core.helpers.balancer.load("sip:127.0.0.1:5071") == {"pstn": 0}


def test_a_bye_relayed_before_its_dialog_is_restored_ends_it_on_restore():
    dialogs, dialog, request, binding, _, ended = new_dialog()
    dialogs.answered(dialog, parsed(reply(request, 200)))
    dialogs.drop_all()  # as if this process had just started: no live dialog
    binding.released = 0
    dialogs.orphan_bye(parsed(invite(method="BYE", to_tag="uas-1", cseq=2)))
    dialog.state = DialogState.CONFIRMED
    assert dialogs.restore(dialog) is False  # not a call in progress
    assert binding.released == 1
    assert len(dialogs) == 0
    assert ended[-1] == "bye"


def test_an_answered_call_never_acknowledged_is_dropped_without_a_bye():
    """The media server gives up after 64*T1 without an ACK (its BYE may be lost in a flood)."""
    core, clock, wire = make_proxy()
    core.receive(invite(), CALLER, UDP_IN)
    forwarded = wire.take()[1].message
    core.receive(reply(forwarded, 200), Peer("udp", "127.0.0.1", 5071), UDP_IN)
    wire.take()
    clock.advance(64 * 0.5 + 5 - 0.1)
    assert len(core.dialogs) == 1
    clock.advance(0.2)
    assert len(core.dialogs) == 0
    assert core.helpers.balancer.load("sip:127.0.0.1:5071") == {"pstn": 0}
    assert [s.message.method for s in wire.take() if isinstance(s.message, Request)] == []


def test_a_call_that_ended_here_is_not_brought_back_by_its_row():
    """Taken over, then ended before the table was read: the row read back is stale."""
    dialogs, dialog, request, binding, _, ended = new_dialog()
    dialogs.answered(dialog, parsed(reply(request, 200)))
    dialogs.end(dialog, "bye")
    binding.released = 0
    dialog.state = DialogState.CONFIRMED  # as read back from its row
    assert dialogs.restore(dialog) is False
    assert (len(dialogs), binding.released, ended[-1]) == (0, 1, "bye")
