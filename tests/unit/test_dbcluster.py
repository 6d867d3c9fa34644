"""Which database host sipha uses: checks, failover, failback, and who hears of it (sans-IO)."""

from __future__ import annotations

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import capturedLogs, formatEvent

from sipha.dbcluster import (
    CHECK_INTERVAL,
    FAILBACK_CHECKS,
    Cluster,
    Host,
    HostState,
    NotSyncedError,
    galera_problem,
)

HOSTS = [("db1", 3306), ("db2", 3306), ("db3", 3307)]
DONOR = {
    "wsrep_on": "ON",
    "wsrep_cluster_status": "Primary",
    "wsrep_ready": "ON",
    "wsrep_local_state": "2",
    "wsrep_local_state_comment": "Donor/Desynced",
}


class Servers:
    """What each host answers a check with: a description, or an exception to raise."""

    def __init__(self) -> None:
        self.answers: dict[str, str | Exception] = {name: "answers" for name, _ in HOSTS}
        self.checks: list[str] = []

    def probe(self, host: Host) -> str:
        self.checks.append(host.host)
        answer = self.answers[host.host]
        if isinstance(answer, Exception):
            raise answer
        return answer


def started() -> tuple[Cluster, Servers, Clock, list[str]]:
    servers, clock = Servers(), Clock()
    clock.advance(1000)
    cluster = Cluster(HOSTS, clock, servers.probe)
    told: list[str] = []
    cluster.watch(lambda: told.append(cluster.in_use.host))
    cluster.start()
    return cluster, servers, clock, told


def tick(clock: Clock, checks: int = 1) -> None:
    """Let ``checks`` rounds of checks run (a LoopingCall skips the rounds one advance jumps)."""
    for _ in range(checks):
        clock.advance(CHECK_INTERVAL)


def states(cluster: Cluster) -> list[str]:
    return [f"{h.host} {h.state.value}{' *' if h is cluster.in_use else ''}" for h in cluster.hosts]


@pytest.mark.parametrize(
    ("variables", "problem"),
    [
        ({}, None),  # MySQL without Galera
        ({"wsrep_on": "OFF", "wsrep_ready": "OFF"}, None),  # MariaDB without a provider
        ({**DONOR, "wsrep_local_state": "4", "wsrep_local_state_comment": "Synced"}, None),
        (DONOR, "Galera node not Synced (wsrep_local_state 2 Donor/Desynced)"),
        (
            {**DONOR, "wsrep_cluster_status": "non-Primary", "wsrep_ready": "OFF"},
            "Galera node outside the primary component (wsrep_cluster_status non-Primary)",
        ),
        ({**DONOR, "wsrep_ready": "OFF"}, "Galera node not ready (wsrep_ready OFF)"),
    ],
)
def test_a_galera_node_takes_writes_only_when_ready_primary_and_synced(variables, problem):
    assert galera_problem(variables) == problem


def test_the_first_host_is_used_and_said_to_answer_once_checked():
    servers, clock = Servers(), Clock()
    cluster = Cluster(HOSTS, clock, servers.probe)
    told: list[str] = []
    cluster.watch(lambda: told.append(cluster.in_use.host))
    assert (cluster.in_use.host, cluster.usable) == ("db1", False)  # nothing checked yet
    cluster.start()
    assert (cluster.in_use.host, cluster.usable, told) == ("db1", True, ["db1"])
    tick(clock)
    assert servers.checks == ["db1", "db2", "db3"] * 2
    assert told == ["db1"]  # an answer that changes nothing tells no one


def test_a_failed_host_is_left_for_the_first_that_passes_and_watchers_hear_at_once():
    cluster, servers, clock, told = started()
    servers.answers["db2"] = NotSyncedError("Galera node not Synced (wsrep_local_state 2)")
    tick(clock)
    servers.answers["db1"] = ConnectionRefusedError("connection refused")
    waiting = cluster.wait(10)
    with capturedLogs() as events:
        tick(clock)
    assert states(cluster) == ["db1 down", "db2 not synced", "db3 up *"]
    assert told == ["db1", "db3"]
    assert waiting.called  # long before its 10 s
    assert cluster.last_failover == {
        "at": 1002.0,
        "from": "db1:3306",
        "to": "db3:3307",
        "reason": "db1:3306: connection refused",
    }
    assert (cluster.reason, cluster.since, cluster.failovers) == (
        "db1:3306: connection refused",
        1002.0,
        1,
    )
    assert [formatEvent(e) for e in events] == [
        "database: leaving db1:3306 (connection refused); using db3:3307"
    ]


def test_a_query_that_lost_its_server_brings_the_check_forward():
    cluster, _, clock, _ = started()
    pending: list[Deferred[str]] = []
    cluster.probe = lambda host: pending.append(Deferred()) or pending[-1]
    cluster.suspect()
    cluster.suspect()  # one check of a host at a time
    assert len(pending) == 1
    pending[0].errback(ConnectionResetError("lost connection"))
    assert cluster.in_use.host == "db2"
    assert clock.seconds() == 1000  # no timer was waited for


def test_sipha_goes_back_to_an_earlier_host_once_it_passed_enough_checks_in_a_row():
    cluster, servers, clock, told = started()
    servers.answers["db1"] = ConnectionRefusedError("connection refused")
    tick(clock)
    servers.answers["db1"] = "answers"
    tick(clock, FAILBACK_CHECKS - 1)
    servers.answers["db1"] = ConnectionRefusedError("connection refused")  # flapping
    tick(clock)
    servers.answers["db1"] = "answers"
    with capturedLogs() as events:
        tick(clock, FAILBACK_CHECKS - 1)
        assert cluster.in_use.host == "db2"
        tick(clock)
    assert (cluster.in_use.host, told) == ("db1", ["db1", "db2", "db1"])
    assert cluster.reason == f"db1:3306 passed {FAILBACK_CHECKS} checks in a row"
    assert cluster.failovers == 1  # going back is no failover
    assert [formatEvent(e) for e in events] == [
        f"database: back to db1:3306 (db1:3306 passed {FAILBACK_CHECKS} checks in a row),"
        " was db2:3306"
    ]


def test_with_no_other_host_answering_sipha_stays_and_says_so_once():
    cluster, servers, clock, told = started()
    for name in ("db2", "db3"):
        servers.answers[name] = ConnectionRefusedError("connection refused")
    tick(clock)
    servers.answers["db1"] = ConnectionRefusedError("connection refused")
    with capturedLogs() as events:
        tick(clock, 3)
    assert (cluster.in_use.host, cluster.usable, cluster.failovers) == ("db1", False, 0)
    assert [formatEvent(e) for e in events] == [
        "database db1:3306: connection refused; no other host of database.url takes writes"
    ]
    servers.answers["db2"] = "answers"
    tick(clock)
    assert (cluster.in_use.host, cluster.usable, told) == ("db2", True, ["db1", "db2"])


def test_a_host_that_comes_back_is_announced_and_wakes_the_waiters():
    servers, clock = Servers(), Clock()
    cluster = Cluster(HOSTS[:1], clock, servers.probe)
    servers.answers["db1"] = ConnectionRefusedError("connection refused")
    cluster.start()
    woken = [cluster.wait(5), cluster.wait(30)]
    tick(clock)
    assert not any(d.called for d in woken)
    servers.answers["db1"] = "answers"
    with capturedLogs() as events:
        tick(clock)
    assert all(d.called for d in woken)
    assert [formatEvent(e) for e in events] == ["database db1:3306 answers (answers)"]
    assert clock.getDelayedCalls() == [cluster._loop.call]  # the waiters' timers are gone


def test_a_wait_with_nothing_to_hear_ends_after_its_delay():
    cluster, _, clock, _ = started()
    waiting = cluster.wait(2.5)
    clock.advance(2)
    assert not waiting.called
    clock.advance(0.5)
    assert waiting.called
    assert cluster._waiters == []


def test_status_names_the_host_in_use_why_and_each_check():
    cluster, servers, clock, _ = started()
    servers.answers["db1"] = ConnectionRefusedError("connection refused")
    tick(clock)
    status = cluster.status()
    assert status["host"] == "db2:3306"
    assert status["connected"] is True
    assert status["reason"] == "db1:3306: connection refused"
    assert status["hosts"][0] == {
        "address": "db1:3306",
        "in_use": False,
        "state": "down",
        "detail": "connection refused",
    }
    assert [h["state"] for h in status["hosts"]] == ["down", "up", "up"]
    assert Host("2001:db8::1", 3306).address == "[2001:db8::1]:3306"
    assert HostState.NOT_SYNCED.value == "not synced"
