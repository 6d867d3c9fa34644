"""Transaction state machines and timers (RFC 3261 §17, RFC 6026) on a fake clock."""

from __future__ import annotations

import itertools

import pytest
from proxykit import invite, reply
from twisted.internet.task import Clock

from sipha.message import Request, Response, make_response, parse_message
from sipha.transaction import (
    ClientTransaction,
    Peer,
    State,
    TimerSettings,
    TransactionLayer,
    build_ack,
    build_cancel,
)

UDP = Peer("udp", "127.0.0.1", 5071)
TCP = Peer("tcp", "127.0.0.1", 5071)


class Recorder:
    """The transaction user: records what the transaction reports."""

    def __init__(self) -> None:
        self.responses: list[int] = []
        self.timeouts = 0

    def on_response(self, transaction: ClientTransaction, response: Response) -> None:
        self.responses.append(response.status)

    def on_timeout(self, transaction: ClientTransaction) -> None:
        self.timeouts += 1


def layer() -> tuple[TransactionLayer, Clock, list[tuple[float, bytes, Peer]]]:
    clock = Clock()
    sent: list[tuple[float, bytes, Peer]] = []
    transactions = TransactionLayer(
        clock,
        lambda data, peer, local: sent.append((clock.seconds(), data, peer)),
        TimerSettings(),
        lambda key: "tag",
    )
    return transactions, clock, sent


def request(method: str = "INVITE") -> Request:
    parsed = parse_message(invite(method=method, branch=f"z9hG4bK-{method}"))
    assert isinstance(parsed, Request)
    return parsed


def client(method: str = "INVITE", peer: Peer = UDP):
    transactions, clock, sent = layer()
    user = Recorder()
    transaction = ClientTransaction(transactions, request(method), peer, None, user)
    transaction.start()
    return transaction, clock, sent, user


def response_to(transaction: ClientTransaction, status: int) -> Response:
    parsed = parse_message(reply(transaction.request, status))
    assert isinstance(parsed, Response)
    return parsed


def test_invite_client_retransmits_at_t1_doubling_capped_at_t2_then_times_out():
    transactions, clock, sent = layer()
    transactions.timers = TimerSettings(fr_timer=20)
    user = Recorder()
    ClientTransaction(transactions, request(), UDP, None, user).start()
    clock.pump([0.25] * 80)
    assert [t for t, _, _ in sent] == [0, 0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5]
    assert user.timeouts == 1
    assert transactions.clients == {}


def test_fr_timer_bounds_the_wait_for_a_first_reply():
    transaction, clock, _, user = client()
    clock.advance(1.99)
    assert user.timeouts == 0
    clock.advance(0.01)
    assert user.timeouts == 1
    assert transaction.state is State.TERMINATED


def test_provisional_stops_invite_retransmissions_and_arms_fr_inv_timer():
    transaction, clock, sent, user = client()
    transaction.receive_response(response_to(transaction, 180))
    sent.clear()
    clock.advance(29.9)
    assert sent == []
    assert user.timeouts == 0
    clock.advance(0.1)
    assert user.timeouts == 1
    # It stays to ACK the 487 that the CANCEL of a ringing branch brings.
    assert transaction.state is State.PROCEEDING
    transaction.receive_response(response_to(transaction, 487))
    assert parse_message(sent[-1][1]).method == "ACK"


def test_each_provisional_rearms_fr_inv_timer():
    transaction, clock, _, user = client()
    transaction.receive_response(response_to(transaction, 180))
    clock.advance(20)
    transaction.receive_response(response_to(transaction, 183))
    clock.advance(20)
    assert user.timeouts == 0


def test_no_retransmissions_over_tcp():
    _transaction, clock, sent, user = client(peer=TCP)
    clock.pump([0.5] * 4)
    assert len(sent) == 1
    assert user.timeouts == 1


def test_non_2xx_final_is_acked_and_retransmissions_reacked_not_reported():
    transaction, clock, sent, user = client()
    invite = transaction.request
    final = response_to(transaction, 486)
    transaction.receive_response(final)
    transaction.receive_response(final)
    acks = [parse_message(data) for _, data, _ in sent[1:]]
    assert [a.method for a in acks] == ["ACK", "ACK"]
    assert acks[0].top_via.branch == invite.top_via.branch
    assert acks[0].to_tag == "uas-1"
    assert acks[0].uri == invite.uri
    assert transaction.request is None  # the ACK is all it keeps
    assert user.responses == [486]
    clock.advance(32)  # Timer D
    assert transaction.state is State.TERMINATED


def test_2xx_and_its_retransmissions_go_to_the_user_until_timer_m():
    transaction, clock, sent, user = client()
    ok = response_to(transaction, 200)
    transaction.receive_response(ok)
    transaction.receive_response(ok)
    assert user.responses == [200, 200]
    assert transaction.state is State.ACCEPTED
    assert len(sent) == 1  # no ACK: the 2xx ACK is end-to-end
    clock.advance(32)
    assert transaction.state is State.TERMINATED


def test_non_invite_client_retransmits_at_t2_after_provisional_and_uses_timer_k():
    transactions, clock, sent = layer()
    transactions.timers = TimerSettings(fr_timer=10)
    user = Recorder()
    transaction = ClientTransaction(transactions, request("REGISTER"), UDP, None, user)
    transaction.start()
    clock.advance(0.5)
    transaction.receive_response(response_to(transaction, 100))
    clock.pump([0.5] * 18)
    assert [t for t, _, _ in sent] == [0, 0.5, 1.5, 5.5, 9.5]
    ok = response_to(transaction, 200)
    transaction.receive_response(ok)
    assert user.responses == [100, 200]
    assert transaction.request is None  # nothing but the state is kept for Timer K
    transaction.receive_response(ok)
    assert user.responses == [100, 200]  # a retransmitted final is absorbed
    clock.advance(5)  # Timer K = T4
    assert transaction.state is State.TERMINATED


@pytest.mark.parametrize(("peer", "expected"), [(UDP, [0, 0.5, 1.5, 3.5]), (TCP, [0])])
def test_invite_server_retransmits_non_2xx_until_ack(peer, expected):
    transactions, clock, sent = layer()
    server = transactions.new_server(request(), peer, None)
    server.reply(486)
    clock.advance(0.5)
    clock.advance(1)
    clock.advance(2)
    server.receive_ack()
    clock.advance(4)
    assert [t for t, _, _ in sent] == expected
    assert server.state is (State.CONFIRMED if peer is UDP else State.TERMINATED)
    clock.advance(5)  # Timer I
    assert transactions.servers == {}


def test_invite_server_without_ack_gives_up_after_timer_h():
    transactions, clock, sent = layer()
    server = transactions.new_server(request(), UDP, None)
    server.reply(486)
    clock.pump([0.5] * 64)
    assert server.state is State.TERMINATED
    assert transactions.servers == {}
    assert max(b - a for (a, _, _), (b, _, _) in itertools.pairwise(sent)) == 4.0


def test_invite_server_accepted_absorbs_retransmissions_and_passes_further_2xx():
    transactions, _, sent = layer()
    invite = request()
    server = transactions.new_server(invite, UDP, None)
    ok = make_response(invite, 200, to_tag="x")
    server.send_response(ok)
    server.receive_retransmission()
    assert len(sent) == 1
    assert server.state is State.ACCEPTED
    assert server.request is None
    assert server.last_response is None  # nothing is kept to resend in Accepted
    server.send_response(ok)
    server.send_response(make_response(invite, 486, to_tag="x"))
    assert len(sent) == 2


def test_non_invite_server_repeats_final_on_retransmission_until_timer_j():
    transactions, clock, sent = layer()
    server = transactions.new_server(request("OPTIONS"), UDP, None)
    server.receive_retransmission()
    assert sent == []  # nothing to repeat while Trying
    server.reply(200)
    server.receive_retransmission()
    assert len(sent) == 2
    clock.advance(32)
    assert transactions.servers == {}


def test_local_replies_of_one_transaction_share_a_to_tag_and_100_has_none():
    transactions, _, sent = layer()
    server = transactions.new_server(request(), UDP, None)
    server.reply(100)
    server.reply(180)
    assert parse_message(sent[0][1]).to_tag is None
    assert parse_message(sent[1][1]).to_tag == "tag"


def test_ack_and_cancel_share_the_invites_hop():
    invite_request = request()
    final = parse_message(reply(invite_request, 486))
    assert isinstance(final, Response)
    for derived, method in (
        (build_ack(invite_request, final), "ACK"),
        (build_cancel(invite_request, "SIP;cause=487"), "CANCEL"),
    ):
        parsed = parse_message(derived.serialize())
        assert parsed.method == method
        assert parsed.uri == invite_request.uri
        assert parsed.cseq == invite_request.cseq
        assert parsed.cseq_method == method
        assert parsed.get_all("via") == invite_request.get_all("via")[:1]
        assert parsed.call_id == invite_request.call_id
    assert build_ack(invite_request, final).to_tag == "uas-1"
    assert build_cancel(invite_request, "SIP;cause=487").get("reason") == "SIP;cause=487"
