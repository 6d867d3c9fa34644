"""The dispatcher: OpenSIPS's hash, algorithms, probe states, reload (spec §2, §11)."""

from __future__ import annotations

import random
from collections import Counter
from types import SimpleNamespace

import pytest

from sipha.config import DispatcherDestination
from sipha.dispatcher import Dispatcher, ds_get_hash
from sipha.message import Request, parse_message

FS = [f"sip:fs{i}.example.net" for i in range(1, 5)]


def request(
    call_id: str = "c1",
    uri: str = "sip:b@y",
    from_uri: str = "sip:a@x",
    to_uri: str = "sip:b@y",
    call_id_bytes: bytes | None = None,
) -> Request:
    cid = call_id_bytes if call_id_bytes is not None else call_id.encode()
    data = (
        f"REGISTER {uri} SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK1\r\n"
        f"From: <{from_uri}>;tag=1\r\nTo: <{to_uri}>\r\n"
    ).encode()
    data += b"Call-ID: " + cid + b"\r\nCSeq: 1 REGISTER\r\nContent-Length: 0\r\n\r\n"
    message = parse_message(data)
    assert isinstance(message, Request)
    return message


def row(destination: str, setid: int = 1, **columns: object) -> DispatcherDestination:
    return DispatcherDestination(setid=setid, destination=destination, **columns)  # type: ignore[arg-type]


def four(**options: object) -> Dispatcher:
    return Dispatcher([row(uri) for uri in FS], **options)  # type: ignore[arg-type]


def pick(
    dispatcher: Dispatcher, algorithm: int, req: Request | None = None, set_id: int = 1
) -> str:
    chosen = dispatcher.select(req or request(), set_id, algorithm)
    assert chosen is not None
    return next(chosen)


def down(dispatcher: Dispatcher, uri: str) -> None:
    """Two probe timeouts: the default threshold takes it out."""
    dispatcher.probe_result(uri, None)
    assert dispatcher.probe_result(uri, None) == "probing"


# -- ds_get_hash, checked against values worked out by hand from spec §2.4 --------------


@pytest.mark.parametrize(
    ("x", "y", "expected"),
    [
        # Both absent: 0, the only input that does not end in the "h or 1" rule.
        (None, None, 0),
        # Empty: h stays 0, so the result is 1.
        ("", None, 1),
        # One block 0x61626364; v ^ v>>3 = 0x61626364 ^ 0x0c2c4c6c = 0x6d4e2f08;
        # h + h>>11 + h>>13 + h>>23 = 0x6d5f4418.
        ("abcd", None, 1834959896),
        # The same block plus the tail 'e': 0x65 ^ 0x0c = 0x69 added before the final mix.
        ("abcde", None, 1834960001),
        # Tail only: (0x63 << 8) + 0x31 = 0x6331; ^ 0xc66 = 0x6f57; + 0xd + 0x3 = 0x6f67.
        ("c1", None, 28519),
        # Signed chars: 0xff is -1, so v = 0xffffffff; ^ 0x1fffffff = 0xe0000000.
        (b"\xff", None, 3760390592),
        # -128 << 24 = 0x80000000 (mod 2^32): v = 0x80616263, ^ 0x100c2c4c = 0x906d4e2f.
        (b"\x80abc", None, 2424561762),
        # A negative char in the middle borrows: 0x61000000 - 0x10000 + 0x6263 = 0x60ff6263.
        (b"a\xffbc", None, 1827770909),
    ],
)
def test_ds_get_hash_matches_opensips(x: str | bytes | None, y: None, expected: int) -> None:
    assert ds_get_hash(x, y) == expected


def test_ds_get_hash_of_two_keys_adds_their_sums() -> None:
    # "abcd" then "e": the sums before the final mix are 0x6d4e2f08 and 0x69.
    assert ds_get_hash("abcd", "e") == ds_get_hash("abcde") == 1834960001
    assert ds_get_hash("", "abcd") == ds_get_hash("abcd")


def test_hash_uses_the_bytes_as_received() -> None:
    # A non-UTF-8 byte in Call-ID survives parsing and is hashed as the signed char.
    req = request(call_id_bytes=b"\x80abc")
    dispatcher = four()
    assert pick(dispatcher, 0, req) == FS[2424561762 % 4]


# -- algorithms --------------------------------------------------------------------------


def test_hash_of_call_id_is_opensips_index() -> None:
    # Checklist: the same Call-ID always maps to ds_get_hash(callid) % n (weights 1).
    dispatcher = four()
    assert pick(dispatcher, 0, request("c1")) == FS[28519 % 4] == FS[3]
    for n in range(50):
        call_id = f"call-{n}@192.0.2.1"
        expected = FS[ds_get_hash(call_id) % 4]
        assert {pick(dispatcher, 0, request(call_id)) for _ in range(3)} == {expected}


def test_hashed_destination_down_moves_only_its_own_keys() -> None:
    dispatcher = four()
    call_ids = [f"k{n}" for n in range(200)]
    before = {c: pick(dispatcher, 0, request(c)) for c in call_ids}
    down(dispatcher, FS[1])
    after = {c: pick(dispatcher, 0, request(c)) for c in call_ids}
    for c in call_ids:
        if before[c] == FS[1]:
            assert after[c] == FS[2]  # the next index
        else:
            assert after[c] == before[c]
    assert FS[1] in before.values()


def test_hash_skip_wraps_past_the_end() -> None:
    dispatcher = four()
    call_id = next(f"w{n}" for n in range(100) if ds_get_hash(f"w{n}") % 4 == 3)
    down(dispatcher, FS[3])
    assert pick(dispatcher, 0, request(call_id)) == FS[0]
    down(dispatcher, FS[0])
    assert pick(dispatcher, 0, request(call_id)) == FS[1]


def test_hash_uses_cumulative_weights() -> None:
    dispatcher = Dispatcher([row(FS[0], weight=1), row(FS[1], weight=3), row(FS[2], weight=0)])
    for n in range(100):
        call_id = f"h{n}"
        r = ds_get_hash(call_id) % 4
        expected = FS[0] if r < 1 else FS[1]
        assert pick(dispatcher, 0, request(call_id)) == expected


def test_weight_zero_is_only_reached_by_failover() -> None:
    dispatcher = Dispatcher([row(FS[0], weight=1), row(FS[1], weight=0), row(FS[2], weight=1)])
    picks = {pick(dispatcher, 0, request(f"z{n}")) for n in range(100)}
    assert picks == {FS[0], FS[2]}
    down(dispatcher, FS[0])
    picks = Counter(pick(dispatcher, 0, request(f"z{n}")) for n in range(100))
    assert set(picks) == {FS[1], FS[2]}


def test_all_zero_weights_count_as_equal() -> None:
    dispatcher = Dispatcher([row(uri, weight=0) for uri in FS])
    assert pick(dispatcher, 0, request("c1")) == FS[28519 % 4]


@pytest.mark.parametrize(
    ("from_uri", "x", "y"),
    [
        ("sip:alice@example.com", "alice", "example.com"),
        ("sip:alice@example.com:5060", "alice", "example.com"),
        ("sip:alice@example.com:5070", "alice", "example.com:5070"),
        ("sips:alice@example.com:5061", "alice", "example.com"),
        ("sips:alice@example.com:5060", "alice", "example.com:5060"),
        ("sip:example.com;transport=tcp", "", "example.com"),
        ("sip:bob@[2001:db8::1]:5070", "bob", "[2001:db8::1]:5070"),
    ],
)
def test_hash_of_from_uri_uses_user_and_host_port(from_uri: str, x: str, y: str) -> None:
    dispatcher = Dispatcher([row(f"sip:d{i}") for i in range(7)])
    chosen = pick(dispatcher, 1, request(from_uri=from_uri))
    assert chosen == f"sip:d{ds_get_hash(x, y) % 7}"


def test_hash_of_to_and_request_uri() -> None:
    dispatcher = Dispatcher([row(f"sip:d{i}") for i in range(7)])
    req = request(uri="sip:registrar.example.org:5080", to_uri="sip:carol@example.org")
    assert pick(dispatcher, 2, req) == f"sip:d{ds_get_hash('carol', 'example.org') % 7}"
    assert pick(dispatcher, 3, req) == f"sip:d{ds_get_hash('', 'registrar.example.org:5080') % 7}"


def test_hash_of_a_non_sip_uri_uses_its_text() -> None:
    dispatcher = Dispatcher([row(f"sip:d{i}") for i in range(7)])
    req = request(uri="tel:+15551234567")
    assert pick(dispatcher, 3, req) == f"sip:d{ds_get_hash('tel:+15551234567') % 7}"


def test_round_robin_cycles_and_skips_unusable() -> None:
    dispatcher = four()
    assert [pick(dispatcher, 4) for _ in range(5)] == [FS[0], FS[1], FS[2], FS[3], FS[0]]
    down(dispatcher, FS[2])
    assert [pick(dispatcher, 4) for _ in range(4)] == [FS[1], FS[3], FS[0], FS[1]]


def test_round_robin_is_per_set() -> None:
    dispatcher = Dispatcher([row(FS[0]), row(FS[1]), row(FS[2], setid=2), row(FS[3], setid=2)])
    assert pick(dispatcher, 4, set_id=1) == FS[0]
    assert pick(dispatcher, 4, set_id=2) == FS[2]
    assert pick(dispatcher, 4, set_id=1) == FS[1]


def test_random_draws_only_usable_destinations_reproducibly() -> None:
    first = four(rng=random.Random(7))
    second = four(rng=random.Random(7))
    draws = [pick(first, 6) for _ in range(200)]
    assert draws == [pick(second, 6) for _ in range(200)]
    assert set(draws) == set(FS)
    down(first, FS[0])
    draws = Counter(pick(first, 6) for _ in range(600))
    assert set(draws) == set(FS[1:])
    assert min(draws.values()) > 150  # uniform among the three left


def test_weighted_random_follows_weights_among_usable() -> None:
    rows = [row(FS[0], weight=3), row(FS[1], weight=1), row(FS[2], weight=0)]
    dispatcher = Dispatcher(rows, rng=random.Random(1))
    draws = Counter(pick(dispatcher, 9) for _ in range(4000))
    assert set(draws) == {FS[0], FS[1]}
    assert 0.70 < draws[FS[0]] / 4000 < 0.80
    down(dispatcher, FS[0])
    assert {pick(dispatcher, 9) for _ in range(50)} == {FS[1]}
    down(dispatcher, FS[1])
    assert {pick(dispatcher, 9) for _ in range(5)} == {FS[2]}  # zero weights: equal


def test_first_by_priority_descending_then_row_order() -> None:
    rows = [
        row(FS[0], priority=0),
        row(FS[1], priority=5),
        row(FS[2], priority=5),
        row(FS[3], priority=9),
    ]
    dispatcher = Dispatcher(rows)
    assert pick(dispatcher, 8) == FS[3]
    down(dispatcher, FS[3])
    assert pick(dispatcher, 8) == FS[1]
    assert [d["uri"] for d in dispatcher.list()] == [FS[3], FS[1], FS[2], FS[0]]


def test_unknown_algorithm_takes_the_first_entry_like_opensips() -> None:
    dispatcher = four()
    assert pick(dispatcher, 42) == FS[0]
    assert pick(dispatcher, 5) == FS[0]
    down(dispatcher, FS[0])
    assert pick(dispatcher, 42) == FS[1]


def test_select_leaves_the_request_alone() -> None:
    # Checklist: ds_select_dst sets only the destination; the R-URI is unchanged.
    req = request(uri="sip:alice@example.org")
    before = req.serialize()
    pick(four(), 0, req)
    assert req.serialize() == before


def test_no_set_or_nothing_usable_is_none() -> None:
    dispatcher = Dispatcher([row(FS[0]), row(FS[1], state=1)])
    assert dispatcher.select(request(), 7, 0) is None
    assert Dispatcher().select(request(), 1, 0) is None
    down(dispatcher, FS[0])
    for algorithm in (0, 1, 2, 3, 4, 6, 8, 9):
        assert dispatcher.select(request(), 1, algorithm) is None


# -- failover order -------------------------------------------------------------------


def test_failover_is_the_other_usable_destinations_wrapping() -> None:
    dispatcher = four()
    call_id = next(f"f{n}" for n in range(100) if ds_get_hash(f"f{n}") % 4 == 2)
    dispatcher.set_state(1, FS[0], "inactive")
    chosen = dispatcher.select(request(call_id), 1, 0)
    assert chosen is not None
    assert list(chosen) == [FS[2], FS[3], FS[1]]


def test_failover_skips_a_destination_that_goes_down_meanwhile() -> None:
    dispatcher = four()
    chosen = dispatcher.select(request(), 1, 8)
    assert chosen is not None
    assert next(chosen) == FS[0]
    down(dispatcher, FS[1])
    assert list(chosen) == [FS[2], FS[3]]


# -- states and probing ---------------------------------------------------------------


def test_initial_states_come_from_the_rows() -> None:
    rows = [row(FS[0], state=0), row(FS[1], state=1), row(FS[2], state=2)]
    dispatcher = Dispatcher(rows)
    assert [d["state"] for d in dispatcher.list()] == ["active", "inactive", "probing"]
    assert {pick(dispatcher, 4) for _ in range(4)} == {FS[0]}


def test_opensips_17_flags_inactive_wins_over_probing() -> None:
    dispatcher = Dispatcher([SimpleNamespace(setid=1, destination=FS[0], state=3)])
    assert dispatcher.list()[0]["state"] == "inactive"


def test_probe_targets_mode_1_is_every_destination_not_inactive() -> None:
    # Checklist: every non-INACTIVE destination is probed when probing_mode=1.
    dispatcher = Dispatcher([row(FS[0]), row(FS[1], state=1), row(FS[2], state=2)])
    assert dispatcher.probe_targets() == [FS[0], FS[2]]


def test_probe_targets_mode_0_is_only_probing_destinations() -> None:
    dispatcher = Dispatcher([row(FS[0]), row(FS[1], state=1), row(FS[2], state=2)], probing_mode=0)
    assert dispatcher.probe_targets() == [FS[2]]


def test_probe_targets_name_a_uri_once_across_sets() -> None:
    dispatcher = Dispatcher([row(FS[0], setid=1), row(FS[0].upper(), setid=2), row(FS[1])])
    assert dispatcher.probe_targets() == [FS[0], FS[1]]


def test_two_timeouts_make_probing_and_traffic_stops() -> None:
    dispatcher = four()
    assert dispatcher.probe_result(FS[0], None) is None
    assert dispatcher.list()[0]["failures"] == 1
    assert pick(dispatcher, 8) == FS[0]
    assert dispatcher.probe_result(FS[0], None) == "probing"
    assert pick(dispatcher, 8) == FS[1]
    assert FS[0] in dispatcher.probe_targets()  # still probed
    assert dispatcher.probe_result(FS[0], None) is None  # no new event
    assert dispatcher.list()[0]["failures"] == 2  # capped at the threshold


def test_one_good_reply_brings_it_back_and_resets_the_count() -> None:
    dispatcher = four()
    down(dispatcher, FS[0])
    assert dispatcher.probe_result(FS[0], 200) == "active"
    assert dispatcher.list()[0] | {"failures": 0} == dispatcher.list()[0]
    assert pick(dispatcher, 8) == FS[0]
    assert dispatcher.probe_result(FS[0], None) is None  # one failure again, not two


def test_a_success_between_failures_resets_the_count() -> None:
    dispatcher = four()
    for _ in range(5):
        dispatcher.probe_result(FS[0], None)
        assert dispatcher.probe_result(FS[0], 200) is None
    assert dispatcher.list()[0]["state"] == "active"


@pytest.mark.parametrize("code", [404, 408, 486, 500, 503, 302, 183])
def test_any_code_outside_reply_codes_is_a_failure(code: int) -> None:
    dispatcher = four()
    dispatcher.probe_result(FS[0], code)
    assert dispatcher.probe_result(FS[0], code) == "probing"


def test_extra_reply_codes_count_as_success() -> None:
    dispatcher = four(reply_codes=(200, 404))
    dispatcher.probe_result(FS[0], 404)
    dispatcher.probe_result(FS[0], 404)
    assert dispatcher.list()[0]["state"] == "active"
    down(dispatcher, FS[0])
    assert dispatcher.probe_result(FS[0], 404) == "active"


@pytest.mark.parametrize("threshold", [1, 3])
def test_threshold_is_configurable(threshold: int) -> None:
    dispatcher = four(probing_threshold=threshold)
    for _ in range(threshold - 1):
        assert dispatcher.probe_result(FS[0], None) is None
    assert dispatcher.probe_result(FS[0], None) == "probing"


def test_probe_result_applies_to_every_set_holding_the_uri() -> None:
    dispatcher = Dispatcher([row(FS[0], setid=1), row(FS[0], setid=2), row(FS[1], setid=2)])
    down(dispatcher, FS[0].upper())
    assert dispatcher.select(request(), 1, 0) is None
    assert pick(dispatcher, 8, set_id=2) == FS[1]


def test_probe_result_for_an_unknown_uri_is_ignored() -> None:
    assert four().probe_result("sip:gone.example.net", None) is None


def test_inactive_is_never_probed_never_selected_and_ignores_probes() -> None:
    dispatcher = four()
    dispatcher.set_state(1, FS[0], 1)
    assert FS[0] not in dispatcher.probe_targets()
    assert FS[0] not in {pick(dispatcher, 4) for _ in range(8)}
    # A probe in flight when the operator acted does not bring it back.
    assert dispatcher.probe_result(FS[0], 200) is None
    assert dispatcher.list()[0]["state"] == "inactive"


def test_set_state_active_clears_probing_and_inactive() -> None:
    dispatcher = four()
    down(dispatcher, FS[0])
    dispatcher.set_state(1, FS[0].upper(), "active")
    assert dispatcher.list()[0]["state"] == "active"
    assert dispatcher.list()[0]["failures"] == 0
    dispatcher.set_state(1, FS[0], "inactive")
    dispatcher.set_state(1, FS[0], 0)
    assert pick(dispatcher, 8) == FS[0]


def test_set_state_probing_waits_for_a_good_probe() -> None:
    dispatcher = four(probing_mode=0)
    dispatcher.set_state(1, FS[0], "probing")
    assert pick(dispatcher, 8) == FS[1]
    assert dispatcher.probe_targets() == [FS[0]]
    assert dispatcher.probe_result(FS[0], 200) == "active"
    assert dispatcher.probe_targets() == []


def test_set_state_errors() -> None:
    dispatcher = four()
    with pytest.raises(KeyError):
        dispatcher.set_state(2, FS[0], 0)
    with pytest.raises(KeyError):
        dispatcher.set_state(1, "sip:other.example.net", 0)
    for state in (3, -1, "up", True):
        with pytest.raises(ValueError, match="unknown dispatcher state"):
            dispatcher.set_state(1, FS[0], state)


# -- reload ---------------------------------------------------------------------------


def test_reload_keeps_runtime_state_of_remaining_destinations() -> None:
    dispatcher = four()
    down(dispatcher, FS[0])
    dispatcher.probe_result(FS[1], None)
    dispatcher.set_state(1, FS[2], "inactive")
    dispatcher.reload([row(FS[0].upper()), row(FS[1]), row(FS[2]), row("sip:fs5.example.net")])
    states = {d["uri"].lower(): (d["state"], d["failures"]) for d in dispatcher.list()}
    assert states == {
        FS[0]: ("probing", 2),
        FS[1]: ("active", 1),
        FS[2]: ("inactive", 0),
        "sip:fs5.example.net": ("active", 0),
    }
    # One more failure of FS[1] reaches the threshold: its count survived.
    assert dispatcher.probe_result(FS[1], None) == "probing"


def test_reload_state_is_per_set() -> None:
    dispatcher = Dispatcher([row(FS[0], setid=1)])
    dispatcher.set_state(1, FS[0], "inactive")
    dispatcher.reload([row(FS[0], setid=2)])
    assert dispatcher.list()[0]["state"] == "active"


def test_reload_takes_a_changed_state_column() -> None:
    dispatcher = four()
    down(dispatcher, FS[0])
    dispatcher.reload([row(FS[0], state=1), *map(row, FS[1:])])
    assert dispatcher.list()[0]["state"] == "inactive"
    dispatcher.reload([row(FS[0], state=0), *map(row, FS[1:])])
    assert dispatcher.list()[0]["state"] == "active"


def test_reload_picks_up_added_and_removed_rows() -> None:
    # Checklist: addgw inserts (setid 1, flags 0, weight 1, description) and reloads.
    dispatcher = four()
    added = SimpleNamespace(
        id=5, setid=1, destination="sip:x.example.net", flags=0, description="FS1"
    )
    dispatcher.reload([row(FS[0]), added])
    listed = dispatcher.list()
    assert [d["uri"] for d in listed] == [FS[0], "sip:x.example.net"]
    assert listed[1] | {"weight": 1, "state": "active", "description": "FS1"} == listed[1]


def test_reload_of_nothing_empties_the_list() -> None:
    dispatcher = four()
    dispatcher.reload([])
    assert dispatcher.list() == []
    assert dispatcher.select(request(), 1, 0) is None


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (SimpleNamespace(setid=1, destination="http://x"), r"dispatcher row 3: .*sip: or sips:"),
        (SimpleNamespace(setid=1, destination=None), r"row 3: destination is missing"),
        (SimpleNamespace(setid=None, destination="sip:x"), r"row 3: setid is missing"),
        (SimpleNamespace(setid="one", destination="sip:x"), r"row 3: setid 'one' is not"),
        (SimpleNamespace(setid=1, destination="sip:x", weight=-1), r"row 3: weight must be >= 0"),
        (SimpleNamespace(setid=1, destination="sip:x", state=4), r"row 3: state must be"),
        (SimpleNamespace(id=9, setid=1, destination="sip:x", description=5), r"row 3 \(id 9\)"),
        (SimpleNamespace(setid=1, destination=FS[0].upper()), r"row 3: .* appears twice in set 1"),
    ],
)
def test_a_bad_row_refuses_the_whole_reload(bad: object, message: str) -> None:
    dispatcher = four()
    down(dispatcher, FS[3])
    before = dispatcher.list()
    with pytest.raises(ValueError, match=message):
        dispatcher.reload([row(FS[0]), row(FS[1]), bad])
    assert dispatcher.list() == before


def test_a_bad_row_refuses_construction() -> None:
    with pytest.raises(ValueError, match="dispatcher row 1"):
        Dispatcher([SimpleNamespace(setid=1, destination="fs1")])


def test_sql_rows_with_missing_and_null_columns_take_the_defaults() -> None:
    rows = [
        SimpleNamespace(setid=1, destination=FS[0]),
        SimpleNamespace(
            setid=1,
            destination=FS[1],
            weight="3",
            priority=None,
            state=None,
            attrs=None,
            description=None,
        ),
    ]
    listed = Dispatcher(rows).list()
    assert [(d["weight"], d["priority"], d["state"], d["attrs"]) for d in listed] == [
        (1, 0, "active", ""),
        (3, 0, "active", ""),
    ]


def test_list_describes_each_destination() -> None:
    dispatcher = Dispatcher(
        [row(FS[0], setid=2, weight=5, priority=1, attrs="a=1", description="FS1")]
    )
    assert dispatcher.list() == [
        {
            "set": 2,
            "uri": FS[0],
            "state": "active",
            "weight": 5,
            "priority": 1,
            "attrs": "a=1",
            "description": "FS1",
            "failures": 0,
        }
    ]


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="probing_mode"):
        four(probing_mode=2)
    with pytest.raises(ValueError, match="threshold"):
        four(probing_threshold=0)
