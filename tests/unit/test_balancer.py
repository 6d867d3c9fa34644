"""The load balancer: capacities, selection, failover, counters, probing, reload (spec §3, §11)."""

from __future__ import annotations

import contextlib
from types import SimpleNamespace

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from sipha.balancer import Allocation, LoadBalancer
from sipha.config import LoadBalancerDestination

FS = [f"sip:fs{i}.example.net" for i in range(1, 5)]


def row(uri: str, resources: str = "pstn=32", group: int = 1, **columns: object) -> object:
    if "id" in columns:
        return SimpleNamespace(group_id=group, dst_uri=uri, resources=resources, **columns)
    return LoadBalancerDestination(group_id=group, dst_uri=uri, resources=resources, **columns)  # type: ignore[arg-type]


def balancer(*capacities: str, **options: object) -> LoadBalancer:
    rows = [row(FS[i], capacity) for i, capacity in enumerate(capacities)]
    return LoadBalancer(rows, **options)  # type: ignore[arg-type]


def start(
    lb: LoadBalancer, resources: str = "pstn", algorithm: str = "relative", group: int = 1
) -> Allocation:
    allocation = lb.start(group, resources, algorithm)
    assert allocation is not None
    return allocation


def call(lb: LoadBalancer, resources: str = "pstn", algorithm: str = "relative") -> str | None:
    """Place one call and keep it up: the chosen URI, or None (the caller would answer 503)."""
    return next(start(lb, resources, algorithm), None)


def pstn(lb: LoadBalancer) -> list[int]:
    return [d["resources"][0]["load"] for d in lb.list()]


def hold(lb: LoadBalancer, uri: str, n: int, resources: str = "pstn") -> None:
    """Put ``n`` calls up on ``uri`` whatever the selection would say."""
    for _ in range(n):
        assert lb.restore(1, uri, resources) is not None


def disable_by_probes(lb: LoadBalancer, uri: str) -> None:
    lb.probe_result(uri, None)
    assert lb.probe_result(uri, None) == "disabled"


# -- resources and selection ------------------------------------------------------------


def test_capacity_comes_from_the_resources_column() -> None:
    lb = balancer("pstn=32;transc=10")
    assert lb.list()[0]["resources"] == [
        {"name": "pstn", "max": 32, "load": 0},
        {"name": "transc", "max": 10, "load": 0},
    ]


def test_an_unknown_resource_fails() -> None:
    lb = LoadBalancer([row(FS[0], "pstn=32"), row(FS[1], "transc=4", group=2)])
    assert lb.start(1, "video") is None
    assert lb.start(1, ["pstn", "video"]) is None
    # Known elsewhere but absent from the group: no destination rather than unknown.
    allocation = lb.start(1, "transc")
    assert allocation is not None
    assert list(allocation) == []
    unknown_group = lb.start(9, "pstn")
    assert unknown_group is not None
    assert list(unknown_group) == []


def test_most_free_capacity_wins_and_ties_go_to_the_first_row() -> None:
    lb = balancer("pstn=32", "pstn=32", "pstn=32")
    assert call(lb) == FS[0]
    assert call(lb) == FS[1]
    assert call(lb) == FS[2]
    assert call(lb) == FS[0]


@pytest.mark.parametrize("algorithm", ["relative", "absolute"])
def test_two_equal_destinations_alternate_while_calls_are_held(algorithm: str) -> None:
    lb = balancer("pstn=32", "pstn=32")
    assert [call(lb, algorithm=algorithm) for _ in range(6)] == [FS[0], FS[1]] * 3


def test_relative_and_absolute_availability() -> None:
    # FS1 pstn=100 with 50 held: relative 50, absolute 50.
    # FS2 pstn=10 with 4 held: relative 100 - 40 = 60, absolute 6.
    lb = balancer("pstn=100", "pstn=10")
    hold(lb, FS[0], 50)
    hold(lb, FS[1], 4)
    assert next(start(lb, algorithm="relative")) == FS[1]
    assert next(start(lb, algorithm="absolute")) == FS[0]


def test_relative_uses_integer_division() -> None:
    # 31/32 held: 100 - 3100 // 32 = 100 - 96 = 4 > 0, still selectable; 32/32 never.
    lb = balancer("pstn=32")
    assert [call(lb) for _ in range(32)] == [FS[0]] * 32
    assert call(lb) is None


def test_a_zero_capacity_is_never_chosen() -> None:
    lb = balancer("pstn=0", "pstn=1")
    assert call(lb) == FS[1]
    assert call(lb) is None
    assert call(lb, algorithm="absolute") is None


def test_the_129th_call_against_four_times_32_gets_nothing() -> None:
    lb = balancer("pstn=32", "pstn=32", "pstn=32", "pstn=32")
    assert all(call(lb) is not None for _ in range(128))
    assert pstn(lb) == [32, 32, 32, 32]
    assert call(lb) is None
    assert pstn(lb) == [32, 32, 32, 32]


def test_unequal_capacities_fill_in_ratio() -> None:
    lb = balancer("pstn=32", "pstn=32", "pstn=16", "pstn=8")
    seen = []
    for _ in range(8):
        for _ in range(11):
            assert call(lb) is not None
        seen.append(pstn(lb))
    assert seen == [[4 * k, 4 * k, 2 * k, k] for k in range(1, 9)]
    assert call(lb) is None


def test_calls_count_from_selection_and_release_on_end() -> None:
    # Checklist: load increments at selection; decrements on failed setup/BYE/timeout.
    lb = balancer("pstn=2")
    first, second = start(lb), start(lb)
    assert next(first) == next(second) == FS[0]
    assert lb.load(FS[0]) == {"pstn": 2}
    assert call(lb) is None
    first.release()
    assert lb.load(FS[0]) == {"pstn": 1}
    assert call(lb) == FS[0]


def test_several_resources_need_all_and_take_one_of_each() -> None:
    lb = LoadBalancer(
        [row(FS[0], "pstn=10"), row(FS[1], "pstn=10;transc=1"), row(FS[2], "transc=5")]
    )
    assert call(lb, "pstn;transc") == FS[1]
    assert lb.load(FS[1]) == {"pstn": 1, "transc": 1}
    # transc is full on FS2 (the scarcest resource decides) and nothing else has both.
    assert call(lb, "pstn;transc") is None
    assert call(lb, "pstn") == FS[0]


def test_resource_lists_accept_names_in_either_form() -> None:
    lb = balancer("pstn=10;transc=10")
    allocation = lb.start(1, [" pstn", "transc", "pstn"])
    assert allocation is not None
    assert allocation.resources == ("pstn", "transc")
    assert next(allocation) == FS[0]
    assert lb.load(FS[0]) == {"pstn": 1, "transc": 1}
    for bad in ("pstn=1", "", "pstn;;transc", [], ["a b"]):
        with pytest.raises(ValueError, match="resource"):
            lb.start(1, bad)


@pytest.mark.parametrize(
    ("algorithm", "winner"),
    [("1", FS[1]), (1, FS[1]), ("0", FS[0]), (0, FS[0]), ("ABSOLUTE", FS[0])],
)
def test_opensips_17_algorithm_numbers(algorithm: str | int, winner: str) -> None:
    lb = balancer("pstn=100", "pstn=10")
    hold(lb, FS[0], 50)
    hold(lb, FS[1], 4)
    allocation = lb.start(1, "pstn", algorithm)
    assert allocation is not None
    assert next(allocation) == winner


def test_an_unknown_algorithm_is_refused() -> None:
    with pytest.raises(ValueError, match="algorithm"):
        balancer("pstn=1").start(1, "pstn", "r")


# -- failover and release ---------------------------------------------------------------


def test_failover_releases_the_previous_destination_and_tries_the_next_best() -> None:
    lb = balancer("pstn=32", "pstn=32", "pstn=16")
    hold(lb, FS[1], 8)  # relative 75: FS3 (100) ties FS1 (100); FS1 is earlier
    allocation = start(lb)
    assert next(allocation) == FS[0]
    assert allocation.destination == FS[0]
    assert pstn(lb) == [1, 8, 0]
    assert next(allocation) == FS[2]
    assert pstn(lb) == [0, 8, 1]
    assert next(allocation) == FS[1]
    assert pstn(lb) == [0, 9, 0]
    with pytest.raises(StopIteration):
        next(allocation)
    assert allocation.destination is None
    assert pstn(lb) == [0, 8, 0]


def test_failover_never_returns_to_a_tried_destination() -> None:
    lb = balancer("pstn=32", "pstn=32")
    allocation = start(lb)
    assert list(allocation) == [FS[0], FS[1]]
    assert pstn(lb) == [0, 0]


def test_failover_skips_full_and_disabled_destinations() -> None:
    lb = balancer("pstn=1", "pstn=5", "pstn=5")
    hold(lb, FS[0], 1)
    lb.set_enabled(FS[2], False)
    assert list(start(lb)) == [FS[1]]


def test_release_is_idempotent() -> None:
    lb = balancer("pstn=4")
    allocation = start(lb)
    next(allocation)
    other = start(lb)
    next(other)
    allocation.release()
    allocation.release()
    assert lb.load(FS[0]) == {"pstn": 1}
    other.release()
    assert lb.load(FS[0]) == {"pstn": 0}
    other.release()
    assert lb.load(FS[0]) == {"pstn": 0}


def test_release_before_any_destination_and_after_exhaustion_is_harmless() -> None:
    lb = balancer("pstn=1")
    allocation = start(lb)
    allocation.release()
    assert list(allocation) == [FS[0]]
    allocation.release()
    assert lb.load(FS[0]) == {"pstn": 0}


# -- probing ------------------------------------------------------------------------------


def test_probe_modes_decide_who_is_probed() -> None:
    lb = LoadBalancer(
        [row(FS[0], probe_mode=0), row(FS[1], probe_mode=1), row(FS[2], probe_mode=2)]
    )
    assert lb.probe_targets() == [FS[2]]
    # probe_mode 1 is probed only while disabled by probes (here from a shared URI's probes).
    lb.reload([row(FS[1], probe_mode=1), row(FS[1], group=2, probe_mode=2)])
    disable_by_probes(lb, FS[1])
    assert lb.probe_targets() == [FS[1]]
    assert [d["reason"] for d in lb.list()] == ["probes", "probes"]


def test_the_reference_rows_default_to_probe_mode_2() -> None:
    lb = LoadBalancer([SimpleNamespace(id=1, group_id=1, dst_uri=FS[0], resources="pstn=32")])
    assert lb.probe_targets() == [FS[0]]
    assert lb.list()[0]["probe_mode"] == 2


def test_probe_mode_0_ignores_probe_results() -> None:
    lb = LoadBalancer([row(FS[0], probe_mode=0)])
    assert lb.probe_result(FS[0], None) is None
    assert lb.probe_result(FS[0], None) is None
    assert lb.list()[0]["enabled"] is True


def test_disabled_after_threshold_failures_and_enabled_by_one_200() -> None:
    lb = balancer("pstn=32", "pstn=32")
    assert lb.probe_result(FS[0], None) is None
    assert call(lb) == FS[0]  # one lost probe does not take it out
    assert lb.probe_result(FS[0], 503) == "disabled"
    assert lb.list()[0] | {"enabled": False, "reason": "probes", "failures": 2} == lb.list()[0]
    assert [call(lb) for _ in range(3)] == [FS[1]] * 3
    assert FS[0] in lb.probe_targets()
    assert lb.probe_result(FS[0], 200) == "enabled"
    assert lb.list()[0]["failures"] == 0
    assert call(lb) == FS[0]


@pytest.mark.parametrize("code", [302, 400, 404, 408, 480, 500, 503])
def test_any_reply_outside_reply_codes_is_a_failure(code: int) -> None:
    lb = balancer("pstn=1")
    lb.probe_result(FS[0], code)
    assert lb.probe_result(FS[0], code) == "disabled"


def test_reply_codes_and_threshold_are_configurable() -> None:
    lb = balancer("pstn=1", probing_threshold=3, reply_codes=(200, 404))
    assert lb.probe_result(FS[0], 404) is None
    assert lb.probe_result(FS[0], None) is None
    assert lb.probe_result(FS[0], None) is None
    assert lb.probe_result(FS[0], None) == "disabled"
    assert lb.probe_result(FS[0], 404) == "enabled"
    with pytest.raises(ValueError, match="threshold"):
        balancer("pstn=1", probing_threshold=0)


def test_probe_result_for_an_unknown_uri_is_ignored() -> None:
    assert balancer("pstn=1").probe_result("sip:gone.example.net", 200) is None


# -- operator ------------------------------------------------------------------------------


def test_operator_disable_is_not_undone_by_probes() -> None:
    # Checklist: lb_status <id> 0 removes it and disables auto re-enable; 1 restores it.
    lb = balancer("pstn=32", "pstn=32")
    lb.set_enabled(1, False)
    assert lb.list()[0] | {"enabled": False, "reason": "operator"} == lb.list()[0]
    assert FS[0] not in lb.probe_targets()
    assert lb.probe_result(FS[0], 200) is None
    assert [call(lb) for _ in range(2)] == [FS[1]] * 2
    lb.set_enabled(1, True)
    assert call(lb) == FS[0]


def test_enabling_clears_a_probe_failure_too() -> None:
    lb = balancer("pstn=32")
    disable_by_probes(lb, FS[0])
    lb.set_enabled(FS[0].upper(), True)
    assert lb.list()[0] | {"enabled": True, "reason": None, "failures": 0} == lb.list()[0]


def test_set_enabled_by_uri_covers_every_group() -> None:
    lb = LoadBalancer([row(FS[0]), row(FS[0], group=2)])
    lb.set_enabled(FS[0], False)
    assert [d["enabled"] for d in lb.list()] == [False, False]
    lb.set_enabled("2", True)  # an id as typed on a command line
    assert [d["enabled"] for d in lb.list()] == [False, True]
    with pytest.raises(KeyError):
        lb.set_enabled(99, True)
    with pytest.raises(KeyError):
        lb.set_enabled("sip:nowhere.example.net", True)


def test_resize_changes_capacity_now_and_reload_forgets_it() -> None:
    # Checklist: lb_resize <id> pstn <n> changes the capacity immediately, in memory only.
    lb = balancer("pstn=1")
    assert call(lb) == FS[0]
    assert call(lb) is None
    lb.resize(1, "pstn", 2)
    assert call(lb) == FS[0]
    assert lb.list()[0]["resources"] == [{"name": "pstn", "max": 2, "load": 2}]
    lb.resize(1, "pstn", 1)
    assert call(lb) is None  # over capacity: never chosen, never negative
    lb.reload([row(FS[0], "pstn=1")])
    assert lb.list()[0]["resources"] == [{"name": "pstn", "max": 1, "load": 2}]


def test_resize_errors() -> None:
    lb = balancer("pstn=1")
    with pytest.raises(KeyError):
        lb.resize(7, "pstn", 1)
    with pytest.raises(KeyError):
        lb.resize(1, "transc", 1)
    for bad in (-1, True, "3"):
        with pytest.raises(ValueError, match="capacity"):
            lb.resize(1, "pstn", bad)


# -- reload ----------------------------------------------------------------------------------


def test_rows_without_id_are_numbered_by_position() -> None:
    lb = balancer("pstn=1", "pstn=1")
    assert [d["id"] for d in lb.list()] == [1, 2]
    lb = LoadBalancer([row(FS[0], id=10), row(FS[1], id=None)])
    assert [d["id"] for d in lb.list()] == [10, 2]


def test_reload_keeps_counters_and_states_of_remaining_destinations() -> None:
    # Checklist: lb_reload keeps the current loads of remaining destinations.
    lb = balancer("pstn=32", "pstn=32", "pstn=32")
    calls = [start(lb) for _ in range(5)]
    for allocation in calls:
        next(allocation)
    lb.set_enabled(FS[1], False)
    disable_by_probes(lb, FS[2])
    lb.probe_result(FS[0], None)
    lb.reload([row(FS[2].upper(), id=7), row(FS[1], id=8), row(FS[0], id=9), row(FS[3], id=10)])
    listed = {d["uri"].lower(): d for d in lb.list()}
    assert [listed[uri]["resources"][0]["load"] for uri in FS] == [2, 2, 1, 0]
    assert [listed[uri]["reason"] for uri in FS] == [None, "operator", "probes", None]
    assert listed[FS[0]]["failures"] == 1
    assert lb.load(9) == {"pstn": 2}
    for allocation in calls:
        allocation.release()
    assert [listed["resources"][0]["load"] for listed in lb.list()] == [0, 0, 0, 0]


def test_reload_matches_by_group_and_uri() -> None:
    lb = LoadBalancer([row(FS[0], group=1)])
    next(start(lb))
    lb.set_enabled(FS[0], False)
    lb.reload([row(FS[0], group=2)])
    assert lb.list()[0] | {"enabled": True} == lb.list()[0]
    assert lb.load(FS[0]) == {"pstn": 0}


def test_a_call_on_a_removed_destination_releases_without_error() -> None:
    lb = balancer("pstn=2", "pstn=2")
    allocation = start(lb)
    assert next(allocation) == FS[0]
    lb.reload([row(FS[1], "pstn=2")])
    assert next(allocation) == FS[1]  # failover still works
    assert allocation.destination == FS[1]
    lb.reload([row(FS[0], "pstn=2")])
    allocation.release()
    assert lb.load(FS[0]) == {"pstn": 0}


def test_a_destination_removed_and_restored_keeps_counting_its_calls() -> None:
    lb = balancer("pstn=2")
    held = [start(lb) for _ in range(2)]
    for allocation in held:
        next(allocation)
    lb.reload([])
    assert lb.list() == []
    lb.reload([row(FS[0], "pstn=2")])
    assert lb.load(FS[0]) == {"pstn": 2}
    assert call(lb) is None
    for allocation in held:
        allocation.release()
    assert lb.load(FS[0]) == {"pstn": 0}


def test_reload_can_change_resources_of_a_held_call() -> None:
    lb = balancer("pstn=2;transc=2")
    allocation = start(lb, "pstn;transc")
    next(allocation)
    lb.reload([row(FS[0], "pstn=2")])
    assert lb.load(FS[0]) == {"pstn": 1, "transc": 1}
    assert lb.list()[0]["resources"] == [{"name": "pstn", "max": 2, "load": 1}]
    allocation.release()
    assert lb.load(FS[0]) == {"pstn": 0}


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (SimpleNamespace(group_id=1, dst_uri="fs9", resources="pstn=1"), r"row 3: dst_uri 'fs9'"),
        (SimpleNamespace(group_id=1, dst_uri=FS[3], resources="pstn"), r"row 3: resources 'pstn'"),
        (SimpleNamespace(group_id=1, dst_uri=FS[3], resources=None), r"row 3: resources None"),
        (
            SimpleNamespace(id=4, group_id=None, dst_uri=FS[3], resources="pstn=1"),
            r"row 3 \(id 4\): group_id is missing",
        ),
        (
            SimpleNamespace(group_id=1, dst_uri=FS[3], resources="pstn=1", probe_mode=3),
            r"row 3: probe_mode must be",
        ),
        (
            SimpleNamespace(group_id=1, dst_uri=FS[0], resources="pstn=1"),
            r"appears twice in group 1",
        ),
        (
            SimpleNamespace(id=1, group_id=2, dst_uri=FS[3], resources="pstn=1"),
            r"id 1 appears twice",
        ),
    ],
)
def test_a_bad_row_refuses_the_whole_reload(bad: object, message: str) -> None:
    lb = balancer("pstn=2", "pstn=2")
    next(start(lb))
    lb.set_enabled(FS[1], False)
    before = lb.list()
    with pytest.raises(ValueError, match=message):
        lb.reload([row(FS[0]), row(FS[1]), bad])
    assert lb.list() == before


# -- inspection and restore --------------------------------------------------------------------


def test_list_describes_each_destination() -> None:
    # Checklist: lb_list shows uri, id, group, enabled and per resource max and load.
    lb = LoadBalancer([row(FS[0], "pstn=32;transc=10", group=3, description="FS1")])
    next(start(lb, "transc", group=3))
    assert lb.list() == [
        {
            "id": 1,
            "group": 3,
            "uri": FS[0],
            "enabled": True,
            "reason": None,
            "probe_mode": 2,
            "description": "FS1",
            "failures": 0,
            "resources": [
                {"name": "pstn", "max": 32, "load": 0},
                {"name": "transc", "max": 10, "load": 1},
            ],
        }
    ]


def test_load_by_id_or_uri() -> None:
    lb = LoadBalancer([row(FS[0], "pstn=4", id=5), row(FS[0], "pstn=4;transc=1", group=2, id=6)])
    next(start(lb))
    next(start(lb, "pstn;transc", group=2))
    assert lb.load(5) == {"pstn": 1}
    assert lb.load(6) == {"pstn": 1, "transc": 1}
    assert lb.load(FS[0].upper()) == {"pstn": 2, "transc": 1}
    with pytest.raises(KeyError):
        lb.load(7)


def test_restore_holds_a_unit_for_a_call_already_up() -> None:
    lb = balancer("pstn=1")
    lb.set_enabled(FS[0], False)
    restored = lb.restore(1, FS[0].upper(), "pstn")
    assert restored is not None
    assert restored.destination == FS[0]
    assert lb.load(FS[0]) == {"pstn": 1}
    assert lb.restore(2, FS[0], "pstn") is None
    restored.release()
    restored.release()
    assert lb.load(FS[0]) == {"pstn": 0}


# -- counters never leak -----------------------------------------------------------------------

POOL = [
    # (group, uri, two capacity variants a reload may choose between)
    (1, FS[0], ("pstn=3", "pstn=1")),
    (1, FS[1], ("pstn=2;transc=2", "transc=1")),
    (1, FS[2], ("pstn=1", "pstn=4;transc=1")),
    (2, FS[0], ("pstn=2", "pstn=2;transc=2")),
    (2, FS[3], ("transc=1", "pstn=1")),
]


class CounterMachine(RuleBasedStateMachine):
    """Random interleavings of calls, failovers, releases, probes and reloads.

    The model is the set of live allocations: every listed counter must equal
    the number of allocations holding that destination and resource, and a
    destination is never chosen at or above its capacity.
    """

    @initialize()
    def setup(self) -> None:
        self.lb = LoadBalancer([row(uri, caps[0], group=group) for group, uri, caps in POOL])
        self.calls: list[Allocation] = []

    @rule(
        group=st.sampled_from([1, 2]),
        resources=st.sampled_from(["pstn", "transc", "pstn;transc"]),
        algorithm=st.sampled_from(["relative", "absolute"]),
    )
    def start(self, group: int, resources: str, algorithm: str) -> None:
        allocation = self.lb.start(group, resources, algorithm)
        if allocation is not None:
            self.calls.append(allocation)
            self.advance(allocation)

    def advance(self, allocation: Allocation) -> None:
        uri = next(allocation, None)
        if uri is None:
            return
        listed = next(
            d for d in self.lb.list() if (d["group"], d["uri"]) == (allocation.group, uri)
        )
        for resource in listed["resources"]:
            if resource["name"] in allocation.resources:
                assert resource["load"] <= resource["max"]

    @rule(data=st.data())
    def failover(self, data: st.DataObject) -> None:
        if self.calls:
            self.advance(data.draw(st.sampled_from(self.calls)))

    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        if self.calls:
            allocation = data.draw(st.sampled_from(self.calls))
            allocation.release()
            if data.draw(st.booleans()):
                self.calls.remove(allocation)

    @rule(uri=st.sampled_from(FS), code=st.sampled_from([200, 503, None]))
    def probe(self, uri: str, code: int | None) -> None:
        self.lb.probe_result(uri, code)

    @rule(uri=st.sampled_from(FS), enabled=st.booleans())
    def operator(self, uri: str, enabled: bool) -> None:
        with contextlib.suppress(KeyError):  # a reload may have removed it
            self.lb.set_enabled(uri, enabled)

    @rule(choice=st.lists(st.sampled_from([None, 0, 1]), min_size=len(POOL), max_size=len(POOL)))
    def reload(self, choice: list[int | None]) -> None:
        self.lb.reload(
            [
                row(uri, caps[c], group=group)
                for (group, uri, caps), c in zip(POOL, choice, strict=True)
                if c is not None
            ]
        )

    @invariant()
    def counters_match_live_calls(self) -> None:
        for d in self.lb.list():
            assert all(used >= 0 for used in self.lb.load(d["id"]).values())
            for resource in d["resources"]:
                holders = sum(
                    1
                    for a in self.calls
                    if a.destination == d["uri"]
                    and a.group == d["group"]
                    and resource["name"] in a.resources
                )
                assert resource["load"] == holders

    def teardown(self) -> None:
        for allocation in self.calls:
            allocation.release()
        self.lb.reload([row(uri, caps[0], group=group) for group, uri, caps in POOL])
        for d in self.lb.list():
            assert all(resource["load"] == 0 for resource in d["resources"])
        assert all(v == 0 for uri in FS for v in self.lb.load(uri).values())


CounterMachine.TestCase.settings = settings(max_examples=200, stateful_step_count=40, deadline=None)
test_counters_never_leak = CounterMachine.TestCase
