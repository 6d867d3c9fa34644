"""The proxy core driven message by message on a fake clock (RFC 3261 §16, §17)."""

from __future__ import annotations

import pytest
from proxykit import CALLER, TCP_IN, UDP_IN, invite, make_proxy, reply

from sipha.message import Request, Response, parse_message
from sipha.routing import DROP
from sipha.transaction import Peer

FS1 = Peer("udp", "127.0.0.1", 5071)
FS2 = Peer("udp", "127.0.0.1", 5072)


def start_call(**kwargs):
    """A proxy that has relayed one INVITE; returns it with the INVITE FS1 got."""
    core, clock, wire = make_proxy()
    core.receive(invite(**kwargs), CALLER, UDP_IN)
    sent = wire.take()
    assert [
        (s.message.status if isinstance(s.message, Response) else s.message.method) for s in sent
    ] == [100, "INVITE"]
    assert sent[0].peer == CALLER
    assert sent[1].peer == FS1
    return core, clock, wire, sent[1].message


def test_invite_gets_100_and_goes_to_first_destination_with_via_and_record_route():
    core, _, _, forwarded = start_call()
    assert forwarded.uri == "sip:service@127.0.0.1:5060"
    vias = forwarded.get_all("via")
    assert len(vias) == 2
    assert vias[0].startswith("SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK")
    did = next(iter(core.dialogs)).did
    assert forwarded.get_all("record-route") == [f"<sip:127.0.0.1:5060;lr;ftag=from-1;did={did}>"]
    assert forwarded.get("max-forwards") == "69"


def test_provisional_and_final_replies_are_relayed_without_our_via():
    core, _, wire, forwarded = start_call()
    core.receive(reply(forwarded, 100), FS1, UDP_IN)
    assert wire.take() == []  # a 100 is hop-by-hop (§16.7 step 5)
    core.receive(reply(forwarded, 180, "Ringing"), FS1, UDP_IN)
    core.receive(reply(forwarded, 200, "OK"), FS1, UDP_IN)
    ringing, ok = wire.take()
    assert (ringing.message.status, ok.message.status) == (180, 200)
    assert ok.peer == CALLER
    assert ok.message.get_all("via") == ["SIP/2.0/UDP 192.0.2.10:5062;branch=z9hG4bK-caller-1"]
    assert ok.message.get_all("record-route") == forwarded.get_all("record-route")


def test_retransmitted_invite_is_absorbed_and_last_reply_repeated():
    core, _, wire, forwarded = start_call()
    core.receive(invite(), CALLER, UDP_IN)
    (again,) = wire.take()
    assert again.message.status == 100
    assert again.peer == CALLER
    core.receive(reply(forwarded, 180, "Ringing"), FS1, UDP_IN)
    wire.take()
    core.receive(invite(), CALLER, UDP_IN)
    assert [s.message.status for s in wire.take()] == [180]


def test_invite_retransmitted_at_t1_doubling_until_provisional():
    core, clock, wire, forwarded = start_call()
    times = []
    for _ in range(3):
        step = 0.0
        while not wire.sent:
            clock.advance(0.1)
            step += 0.1
        times.append(round(step, 1))
        assert wire.take()[0].message.method == "INVITE"
    assert times == [0.5, 1.0, 0.5]  # 0.5, 1.5, then fr_timer fails over at 2.0 to FS2
    core.receive(reply(forwarded, 180, "Ringing"), FS1, UDP_IN)


def test_timeout_fails_over_to_next_destination_then_408():
    _core, clock, wire, _ = start_call()
    clock.pump([0.5, 1.0, 0.5])
    to_fs2 = [s for s in wire.take() if s.peer == FS2]
    assert len(to_fs2) == 1
    assert to_fs2[0].message.method == "INVITE"
    clock.pump([0.5, 1.0, 0.5])
    final = [s for s in wire.take() if isinstance(s.message, Response)]
    assert [s.message.status for s in final] == [408]
    assert final[0].message.to_tag


def test_5xx_fails_over_and_downstream_gets_hop_by_hop_ack():
    core, _, wire, forwarded = start_call()
    core.receive(reply(forwarded, 503, "Busy"), FS1, UDP_IN)
    ack, retry = wire.take()
    assert ack.message.method == "ACK"
    assert ack.peer == FS1
    assert ack.message.top_via.branch == forwarded.top_via.branch
    assert retry.message.method == "INVITE"
    assert retry.peer == FS2
    assert retry.message.top_via.branch != forwarded.top_via.branch
    core.receive(reply(retry.message, 486, "Busy Here"), FS2, UDP_IN)
    ack2, busy = wire.take()
    assert ack2.peer == FS2
    assert busy.message.status == 486
    assert busy.peer == CALLER
    # The caller's ACK for the 486 is absorbed (§17.2.1), not forwarded.
    core.receive(invite(method="ACK", to_tag="uas-1"), CALLER, UDP_IN)
    assert wire.take() == []


def test_all_5xx_gives_500_not_503():
    core, _, wire, forwarded = start_call()
    core.receive(reply(forwarded, 503, "Busy"), FS1, UDP_IN)
    retry = wire.take()[1].message
    core.receive(reply(retry, 503, "Busy"), FS2, UDP_IN)
    assert [s.message.status for s in wire.take() if isinstance(s.message, Response)] == [500]


def test_negative_final_reply_retransmitted_to_caller_until_ack():
    core, clock, wire, forwarded = start_call()
    core.receive(reply(forwarded, 404, "Not Found"), FS1, UDP_IN)
    wire.take()
    clock.advance(0.5)
    clock.advance(1.0)
    assert [s.message.status for s in wire.take()] == [404, 404]
    core.receive(invite(method="ACK", to_tag="uas-1"), CALLER, UDP_IN)
    clock.advance(4.0)
    assert wire.take() == []


def test_cancel_after_ringing_cancels_branch_and_caller_gets_487():
    core, _, wire, forwarded = start_call()
    core.receive(reply(forwarded, 180, "Ringing"), FS1, UDP_IN)
    wire.take()
    core.receive(invite(method="CANCEL"), CALLER, UDP_IN)
    ok, cancel = wire.take()
    assert ok.message.status == 200
    assert ok.message.cseq_method == "CANCEL"
    assert cancel.message.method == "CANCEL"
    assert cancel.peer == FS1
    assert cancel.message.top_via.branch == forwarded.top_via.branch
    assert cancel.message.uri == forwarded.uri
    core.receive(reply(cancel.message, 200, "OK"), FS1, UDP_IN)
    core.receive(reply(forwarded, 487, "Request Terminated"), FS1, UDP_IN)
    ack, terminated = wire.take()
    assert ack.message.method == "ACK"
    assert ack.peer == FS1
    assert terminated.message.status == 487
    assert terminated.peer == CALLER


def test_cancel_before_any_reply_answers_487_at_once():
    core, clock, wire, _ = start_call()
    core.receive(invite(method="CANCEL"), CALLER, UDP_IN)
    statuses = [s.message.status for s in wire.take()]
    assert sorted(statuses) == [200, 487]
    clock.pump([0.5] * 10)
    assert not [s for s in wire.take() if getattr(s.message, "method", "") == "INVITE"]


def test_cancel_matching_nothing_is_dropped():
    core, _, wire = make_proxy()
    core.receive(invite(method="CANCEL"), CALLER, UDP_IN)
    assert wire.take() == []


def test_ringing_too_long_is_cancelled_with_reason_and_caller_gets_408():
    core, clock, wire, forwarded = start_call()
    core.receive(reply(forwarded, 180, "Ringing"), FS1, UDP_IN)
    wire.take()
    clock.advance(29.9)
    assert wire.take() == []
    clock.advance(0.2)
    sent = wire.take()
    cancel = next(s.message for s in sent if isinstance(s.message, Request))
    assert cancel.method == "CANCEL"
    assert "NO_ANSWER" in cancel.get("reason")
    assert [s.message.status for s in sent if isinstance(s.message, Response)] == [408]
    # The 487 that the CANCEL brings is ACKed and goes no further.
    core.receive(reply(forwarded, 487, "Request Terminated"), FS1, UDP_IN)
    assert [s.message.method for s in wire.take()] == ["ACK"]


def test_max_forwards_zero_gets_483_and_absent_gets_ten():
    core, _, wire = make_proxy()
    core.receive(invite(method="OPTIONS", max_forwards="0"), CALLER, UDP_IN)
    assert [s.message.status for s in wire.take()] == [483]
    core.receive(invite(call_id="c2", max_forwards=None), CALLER, UDP_IN)
    assert wire.take()[1].message.get("max-forwards") == "10"


def test_initial_subscribe_gets_405_with_allow():
    core, _, wire = make_proxy()
    core.receive(invite(method="SUBSCRIBE"), CALLER, UDP_IN)
    (sent,) = wire.take()
    assert sent.message.status == 405
    assert "INVITE" in sent.message.get("allow")


# -- OPTIONS for sipha itself (RFC 3261 §11.2) ---------------------------------------


@pytest.mark.parametrize(
    ("uri", "max_forwards"),
    [
        ("sip:127.0.0.1:5060", "70"),
        ("sip:127.0.0.1", "70"),  # 5060 by default
        ("sip:127.0.0.1:5060;transport=tcp", "70"),
        ("sip:127.0.0.1:5060", "0"),  # §16.3 step 3: the final recipient may answer it
        ("sip:127.0.0.1:5060", None),
    ],
)
def test_options_for_sipha_itself_gets_200_with_what_it_takes(uri, max_forwards):
    core, _, wire = make_proxy()
    core.receive(invite(method="OPTIONS", uri=uri, max_forwards=max_forwards), CALLER, UDP_IN)
    (sent,) = wire.take()
    assert (sent.peer, sent.local) == (CALLER, UDP_IN)
    answer = sent.message
    assert (answer.status, answer.reason) == (200, "OK")
    assert answer.get_all("allow") == ["INVITE", "ACK", "CANCEL", "BYE", "REGISTER", "OPTIONS"]
    assert answer.get("accept") == "application/sdp"
    assert answer.get("supported") == ""
    assert answer.to_tag
    assert core.layer.responses_sent == {200: 1}
    assert core.layer.servers == {}
    assert core.stats["requests_forwarded"] == 0


def test_options_for_sipha_itself_is_answered_whatever_the_route():
    core, _, wire = make_proxy()
    core.route = lambda request, sip: DROP
    core.receive(invite(method="OPTIONS", uri="sip:127.0.0.1:5060"), CALLER, UDP_IN)
    core.receive(invite(method="OPTIONS", call_id="c2"), CALLER, UDP_IN)
    assert [s.message.status for s in wire.take()] == [200]
    assert core.stats["requests_dropped"] == 1


def test_options_for_sipha_itself_over_tcp_is_answered_on_its_connection():
    core, _, wire = make_proxy()
    source = Peer("tcp", "192.0.2.10", 40000)
    core.receive(invite(method="OPTIONS", uri="sip:127.0.0.1:5060"), source, TCP_IN)
    (sent,) = wire.take()
    assert (sent.peer, sent.local, sent.message.status) == (source, TCP_IN, 200)


def test_options_for_sipha_itself_requiring_an_extension_gets_420():
    core, _, wire = make_proxy()
    request = invite(method="OPTIONS", uri="sip:127.0.0.1:5060", extra="Require: 100rel, timer")
    core.receive(request, CALLER, UDP_IN)
    (sent,) = wire.take()
    assert sent.message.status == 420
    assert sent.message.get_all("unsupported") == ["100rel", "timer"]


@pytest.mark.parametrize(
    ("uri", "to_tag", "max_forwards", "status"),
    [
        ("sip:alice@127.0.0.1:5060", None, "70", 405),  # a user at sipha
        ("sip:192.0.2.99:5060", None, "70", 405),  # another host
        ("sip:127.0.0.1:5070", None, "70", 405),  # another port
        ("sips:127.0.0.1", None, "70", 405),  # 5061
        ("sip:alice@127.0.0.1:5060", None, "0", 483),
        ("sip:127.0.0.1:5060", "t", "70", 404),  # in a dialog sipha does not know
    ],
)
def test_other_options_are_routed(uri, to_tag, max_forwards, status):
    core, _, wire = make_proxy()
    options = invite(method="OPTIONS", uri=uri, to_tag=to_tag, max_forwards=max_forwards)
    core.receive(options, CALLER, UDP_IN)
    (sent,) = wire.take()
    assert sent.message.status == status
    if status == 405:
        # The Request-URI does not take OPTIONS, so the Allow leaves it out.
        assert sent.message.get_all("allow") == ["INVITE", "ACK", "CANCEL", "BYE", "REGISTER"]


def test_unsupported_uri_scheme_gets_416():
    core, _, wire = make_proxy()
    core.receive(invite(uri="tel:+15551234"), CALLER, UDP_IN)
    assert [s.message.status for s in wire.take()] == [416]


def test_looped_request_gets_482():
    core, _, wire, forwarded = start_call()
    core.receive(forwarded.serialize(), FS1, UDP_IN)
    assert [s.message.status for s in wire.take()] == [482]


def test_spiral_with_changed_request_uri_is_not_a_loop():
    core, _, wire, forwarded = start_call()
    forwarded.uri = "sip:other@127.0.0.1:5060"
    core.receive(forwarded.serialize(), FS1, UDP_IN)
    assert [getattr(s.message, "status", None) for s in wire.take()] == [100, None]


def test_register_goes_to_dispatcher_set_without_record_route_or_100():
    core, _, wire = make_proxy()
    core.receive(invite(method="REGISTER"), CALLER, UDP_IN)
    (sent,) = wire.take()
    assert sent.message.method == "REGISTER"
    assert sent.peer == FS1
    assert not sent.message.has("record-route")
    core.receive(reply(sent.message, 200, "OK"), FS1, UDP_IN)
    (ok,) = wire.take()
    assert ok.message.status == 200
    core.receive(invite(method="REGISTER"), CALLER, UDP_IN)
    assert [s.message.status for s in wire.take()] == [200]  # retransmission answered again


def test_sequential_request_follows_our_route_to_the_request_uri():
    core, _, wire = make_proxy()
    bye = invite(
        method="BYE",
        uri="sip:fs@127.0.0.1:5071",
        to_tag="uas-1",
        cseq=2,
        routes=("<sip:127.0.0.1:5060;lr;ftag=from-1>",),
    )
    core.receive(bye, CALLER, UDP_IN)
    (sent,) = wire.take()
    assert sent.message.method == "BYE"
    assert sent.peer == FS1
    assert not sent.message.has("route")
    assert not sent.message.has("record-route")


def test_sequential_request_after_double_record_route_removes_both_entries():
    core, _, wire = make_proxy()
    routes = (
        "<sip:127.0.0.1:5060;transport=tcp;r2=on;lr>, <sip:127.0.0.1:5060;r2=on;lr>",
        "<sip:192.0.2.99;lr>",
    )
    core.receive(
        invite(method="BYE", uri="sip:bob@192.0.2.50", to_tag="t", routes=routes),
        Peer("tcp", "192.0.2.10", 40000),
        TCP_IN,
    )
    (sent,) = wire.take()
    assert sent.peer == Peer("udp", "192.0.2.99", 5060)
    assert sent.message.get_all("route") == ["<sip:192.0.2.99;lr>"]


def test_strict_router_before_us_is_undone():
    """§16.4: our URI in the R-URI means the real target is the last Route."""
    core, _, wire = make_proxy()
    bye = invite(
        method="BYE", uri="sip:127.0.0.1:5060;lr", to_tag="t", routes=("<sip:fs@127.0.0.1:5072>",)
    )
    core.receive(bye, CALLER, UDP_IN)
    (sent,) = wire.take()
    assert sent.message.uri == "sip:fs@127.0.0.1:5072"
    assert sent.peer == FS2
    assert not sent.message.has("route")


def test_next_hop_strict_router_gets_request_uri_in_last_route():
    core, _, wire = make_proxy()
    routes = ("<sip:127.0.0.1:5060;lr>", "<sip:192.0.2.77>")
    core.receive(
        invite(method="BYE", uri="sip:bob@192.0.2.50", to_tag="t", routes=routes), CALLER, UDP_IN
    )
    (sent,) = wire.take()
    assert sent.message.uri == "sip:192.0.2.77"
    assert sent.message.get_all("route") == ["<sip:bob@192.0.2.50>"]
    assert sent.peer == Peer("udp", "192.0.2.77", 5060)


def test_sequential_request_without_our_route_gets_404_and_ack_is_dropped():
    core, _, wire = make_proxy()
    core.receive(invite(method="BYE", to_tag="t"), CALLER, UDP_IN)
    assert [s.message.status for s in wire.take()] == [404]
    core.receive(invite(method="ACK", to_tag="t", call_id="c2"), CALLER, UDP_IN)
    assert wire.take() == []


def test_ack_for_2xx_is_forwarded_statelessly_by_route():
    core, _, wire = make_proxy()
    ack = invite(
        method="ACK",
        uri="sip:fs@127.0.0.1:5071",
        to_tag="uas-1",
        routes=("<sip:127.0.0.1:5060;lr;ftag=from-1>",),
    )
    core.receive(ack, CALLER, UDP_IN)
    (sent,) = wire.take()
    assert sent.message.method == "ACK"
    assert sent.peer == FS1
    assert len(sent.message.get_all("via")) == 2
    assert core.layer.servers == {}
    assert core.layer.clients == {}


def test_udp_in_tcp_out_gets_double_record_route():
    text = """
[proxy]
listen = ["udp:127.0.0.1:5060", "tcp:127.0.0.1:5060"]
[[load_balancer.destination]]
group_id = 1
dst_uri = "sip:127.0.0.1:5071;transport=tcp"
resources = "pstn=32"
"""
    core, _, wire = make_proxy(text)
    core.receive(invite(), CALLER, UDP_IN)
    forwarded = wire.take()[1]
    assert forwarded.peer == Peer("tcp", "127.0.0.1", 5071)
    assert forwarded.message.top_via.transport == "TCP"
    did = next(iter(core.dialogs)).did
    assert forwarded.message.get_all("record-route") == [
        f"<sip:127.0.0.1:5060;transport=tcp;r2=on;lr;ftag=from-1;did={did}>",
        f"<sip:127.0.0.1:5060;r2=on;lr;ftag=from-1;did={did}>",
    ]


def test_received_and_rport_are_added_to_the_callers_via():
    core, _, wire = make_proxy()
    via = "Via: SIP/2.0/UDP phone.example.com;branch=z9hG4bK-x;rport"
    core.receive(invite(via=via), Peer("udp", "198.51.100.7", 40123), UDP_IN)
    trying, forwarded = wire.take()
    assert trying.peer == Peer("udp", "198.51.100.7", 40123)
    assert forwarded.message.get_all("via")[1] == (
        "SIP/2.0/UDP phone.example.com;branch=z9hG4bK-x;rport=40123;received=198.51.100.7"
    )


@pytest.mark.parametrize("via", ["Via: garbage", "Via: SIP/2.0/UDP ;branch=z9hG4bK-x", None])
def test_request_without_a_usable_via_is_dropped(via):
    """No sent-by: there is nowhere to send a 400 (RFC 3261 §18.2.2)."""
    core, _, wire = make_proxy()
    data = invite(via=via)
    if via is None:
        data = data.replace(b"Via: SIP/2.0/UDP 192.0.2.10:5062;branch=z9hG4bK-caller-1\r\n", b"")
    core.receive(data, Peer("udp", "198.51.100.7", 40123), UDP_IN)
    core.receive(data, Peer("tcp", "198.51.100.7", 40124), TCP_IN)
    assert wire.take() == []
    assert core.stats["parse_errors"] == 2


@pytest.mark.parametrize(
    ("rport", "peer"),
    [
        ("", Peer("udp", "198.51.100.7", 5062)),
        (";rport", Peer("udp", "198.51.100.7", 40123)),
    ],
)
def test_broken_via_parameters_get_400_where_the_request_came_from(rport, peer):
    """RFC 4475 §3.1.2.1: the sent-by still says where the answer goes (§18.2.2, RFC 3581)."""
    core, _, wire = make_proxy()
    via = f"Via: SIP/2.0/UDP 10.0.0.2:5062{rport};;branch=z9hG4bK-x"
    core.receive(invite(via=via), Peer("udp", "198.51.100.7", 40123), UDP_IN)
    (sent,) = wire.take()
    assert sent.peer == peer
    assert sent.data.startswith(b"SIP/2.0 400 Empty Via parameter\r\n")
    assert core.stats["parse_errors"] == 1
    assert core.layer.responses_sent == {400: 1}


def test_garbage_and_broken_responses_are_dropped_and_counted():
    core, _, wire = make_proxy()
    core.receive(b"\x00\xffhello there", CALLER, UDP_IN)
    core.receive(b"SIP/2.0 200 OK\r\nVia: nonsense\r\n\r\n", CALLER, UDP_IN)
    core.receive(b"\r\n\r\n", CALLER, UDP_IN)  # a keep-alive is not an error
    assert wire.take() == []
    assert core.stats["parse_errors"] == 2


def test_oversize_request_gets_513():
    core, _, wire = make_proxy()
    core.receive(invite(body=b"x" * 70000), CALLER, UDP_IN)
    assert [s.message.status for s in wire.take()] == [513]


# -- responses that match no transaction (RFC 3261 §16.7 step 1, §16.11) -------------

#: The Via the other node of the pair wrote: the same listener address, its own branch.
PEER_NODE_VIA = "SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK-peer-node.1.0"


def relayed_by_the_peer_node(caller_via: str = "SIP/2.0/UDP 192.0.2.10:5062;branch=z9hG4bK-c1"):
    """The INVITE as a media server got it from the other node, which then died."""
    request = parse_message(invite(via=f"Via: {caller_via}"))
    request.insert("Via", PEER_NODE_VIA)
    return request


@pytest.mark.parametrize("status", [100, 180, 200, 486])
def test_response_without_transaction_goes_to_the_next_via(status):
    """After a takeover the media server's reply reaches the node that never saw the INVITE."""
    core, _, wire = make_proxy()
    caller_via = "SIP/2.0/UDP phone.example.com;branch=z9hG4bK-c1;rport=40123;received=198.51.100.7"
    core.receive(reply(relayed_by_the_peer_node(caller_via), status), FS1, UDP_IN)
    (sent,) = wire.take()
    assert sent.peer == Peer("udp", "198.51.100.7", 40123)
    assert sent.local == UDP_IN
    assert sent.message.status == status
    assert sent.message.get_all("via") == [caller_via]
    assert core.stats["responses_forwarded_statelessly"] == 1
    assert core.stats["responses_dropped"] == 0
    assert core.layer.responses_sent == {status: 1}
    assert core.layer.servers == {}
    assert core.layer.clients == {}


def test_response_without_transaction_keeps_the_callers_transport():
    core, _, wire = make_proxy()
    request = relayed_by_the_peer_node("SIP/2.0/TCP 192.0.2.10:5062;branch=z9hG4bK-c1")
    core.receive(reply(request, 200), FS1, UDP_IN)
    (sent,) = wire.take()
    assert (sent.peer, sent.local) == (Peer("tcp", "192.0.2.10", 5062), TCP_IN)


def test_retransmitted_2xx_after_the_transactions_ended_still_reaches_the_caller():
    core, clock, wire, forwarded = start_call()
    core.receive(reply(forwarded, 200, "OK"), FS1, UDP_IN)
    clock.advance(40)
    wire.take()
    core.receive(reply(forwarded, 200, "OK"), FS1, UDP_IN)
    (sent,) = wire.take()
    assert (sent.peer, sent.message.status) == (CALLER, 200)
    assert sent.message.get_all("via") == ["SIP/2.0/UDP 192.0.2.10:5062;branch=z9hG4bK-caller-1"]


@pytest.mark.parametrize(
    "top_via",
    [
        pytest.param("SIP/2.0/UDP 192.0.2.99:5060;branch=z9hG4bK-x", id="another-host"),
        pytest.param("SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-x", id="another-port"),
        pytest.param("SIP/2.0/UDP 127.0.0.1;branch=z9hG4bK-x", id="no-port"),
    ],
)
def test_response_without_transaction_and_not_through_sipha_is_dropped(top_via):
    core, _, wire = make_proxy()
    request = parse_message(invite())
    request.insert("Via", top_via)
    core.receive(reply(request, 200), FS1, UDP_IN)
    assert wire.take() == []
    assert core.stats["responses_dropped"] == 1
    assert core.stats["responses_forwarded_statelessly"] == 0


@pytest.mark.parametrize(
    "vias",
    [
        pytest.param([PEER_NODE_VIA], id="to-sipha-itself"),
        pytest.param(
            [PEER_NODE_VIA, "SIP/2.0/UDP 192.0.2.10;rport=x;branch=z9hG4bK-c1"],
            id="unusable-next-via",
        ),
        pytest.param([PEER_NODE_VIA, "SIP/2.0/UDP [2001:db8::1]:5062"], id="no-ipv6-listener"),
        pytest.param([PEER_NODE_VIA, "SIP/2.0/SCTP 192.0.2.10:5062"], id="no-sctp-listener"),
        pytest.param([PEER_NODE_VIA, "SIP/2.0/UDP 255.255.255.255:5062"], id="broadcast"),
        pytest.param([PEER_NODE_VIA, "SIP/2.0/UDP 224.0.1.75:5060"], id="multicast"),
        pytest.param([PEER_NODE_VIA, "SIP/2.0/UDP 0.0.0.0:5060"], id="unspecified"),
    ],
)
def test_response_without_transaction_that_cannot_go_on_is_dropped(vias):
    """Our Via alone (a probe's or a BYE's reply), or a next hop sipha cannot send to."""
    core, _, wire = make_proxy()
    request = parse_message(invite())
    request.remove("via")
    for via in reversed(vias):
        request.insert("Via", via)
    core.receive(reply(request, 200), FS1, UDP_IN)
    assert wire.take() == []
    assert core.stats["responses_dropped"] == 1
    assert core.layer.responses_sent == {}


def test_transactions_are_cleaned_up_after_a_call():
    core, clock, _wire, forwarded = start_call()
    core.receive(reply(forwarded, 200, "OK"), FS1, UDP_IN)
    clock.advance(40)
    assert core.layer.servers == {}
    assert core.layer.clients == {}
    # All that is left is the answered call's dialog lifetime (default_timeout).
    assert [call.getTime() for call in clock.getDelayedCalls()] == [43200.0]


def test_in_dialog_request_without_our_route_follows_its_dialog():
    """A UA that ignores Record-Route sends ACK and BYE to sipha itself."""
    core, _, wire, forwarded = start_call()
    core.receive(reply(forwarded, 200), FS1, UDP_IN)
    wire.take()
    core.receive(invite(method="ACK", to_tag="uas-1", branch="z9hG4bK-ack"), CALLER, UDP_IN)
    core.receive(invite(method="BYE", to_tag="uas-1", cseq=2, branch="z9hG4bK-bye"), CALLER, UDP_IN)
    ack, bye = wire.take()
    assert (ack.message.method, ack.peer) == ("ACK", FS1)
    assert (bye.message.method, bye.peer) == ("BYE", FS1)
    assert bye.message.uri == "sip:fs@127.0.0.1:5071"
    assert len(core.dialogs) == 0
