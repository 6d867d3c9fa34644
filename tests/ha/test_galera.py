"""No single point of failure in the database: the pair on a three-node Galera cluster.

The lab of lab.py on galera.py's cluster: both sipha name db1, db2 and db3 in
their URL, in that order. Calls of 20 s (ringing 3 s of them) arrive at 5 a
second for 30 s; 10 s in, the database node in use (db1) is SIGKILLed; 15 s
later, the active load balancer crashes as well. Every call must complete, the
dialog table be empty at the end on every surviving node and no node keep a
call or a unit. Then db1 comes back, and sipha goes back to it.

Recorded and printed: how soon each sipha left db1, the dialog writes lb1
queued meanwhile and replayed on db2, the takeover, and the return to db1.
"""

from __future__ import annotations

import time
from typing import Any

from galera import GALERA, GaleraLab
from lab import DATABASE, NODES, Node, Record, failover, judge_calls, judge_idle

import sipp
from sipha.store import Pool, is_conflict

LAB_CLASS = GaleraLab

CALLS, RATE, HOLD_MS = 150, 5, 20000
DATABASE_DIES, BALANCER_DIES = 10.0, 25.0
FIRST = f"{GALERA['db1']}:3306"


def database(node: Node) -> dict[str, Any]:
    """``sipha-ctl database`` of ``node``; empty when it does not answer."""
    status = node.ctl_json("database", timeout=2)
    return status if isinstance(status, dict) else {}


def dialog_store(node: Node) -> dict[str, Any]:
    counters = node.ctl_json("counters", timeout=2)
    return (counters.get("dialog_store") or {}) if isinstance(counters, dict) else {}


def write_set_conflict_is_run_again(lab: GaleraLab) -> tuple[bool, str, object]:
    """sipha's pool on db2 updates a row that db3 commits first: its COMMIT fails certification
    (1213), and the pool runs the transaction again, which then commits."""
    db2, db3 = lab.galera["db2"], lab.galera["db3"]
    db2.execute("CREATE TABLE conflict (k INT PRIMARY KEY, v INT NOT NULL)", database=DATABASE)
    db2.execute("INSERT INTO conflict VALUES (1, 0)", database=DATABASE)
    attempts = []

    def interaction(cursor: Any) -> None:
        attempts.append(cursor)
        cursor.execute("UPDATE conflict SET v = v + 1 WHERE k = 1")
        if len(attempts) == 1:  # another node writes the row before this one commits
            db3.execute("UPDATE conflict SET v = v + 10 WHERE k = 1", database=DATABASE)
            time.sleep(0.2)

    pool = Pool(
        "MySQLdb",
        unix_socket=str(db2.socket),
        user="root",
        database=DATABASE,
        conflict=is_conflict,
        cp_noisy=False,
    )
    try:
        pool._runInteraction(interaction)  # in this thread, as a pool thread runs it
    finally:
        pool.close()
    value = db3.execute("SELECT v FROM conflict WHERE k = 1", database=DATABASE)
    return (
        (len(attempts), pool.conflicts_retried, value) == (2, 1, [(11,)]),
        "a Galera write-set conflict is run again, and each write applied once",
        f"{len(attempts)} attempts, {pool.conflicts_retried} retried, v = {value}",
    )


class DatabaseLoss:
    """What the nodes did after db1 died: when each left it, and lb1's dialog writes meanwhile.

    lb1's backlog (writes queued and in flight) is sampled every few hundred ms:
    it grows while db2 holds commits back and drains once they go through.
    """

    def __init__(self, lab: GaleraLab, killed: float) -> None:
        self.lab = lab
        self.killed = killed
        self.left: dict[str, float] = {}
        self.store: dict[str, Any] = {}
        self.samples: list[tuple[float, int, int]] = []  # seconds since, backlog, written

    def look(self) -> None:
        for host in NODES:
            if host not in self.left:
                status = database(self.lab.nodes[host])
                last = status.get("last_failover") or {}
                if status.get("host") not in (None, FIRST) and status.get("connected") and last:
                    self.left[host] = round(last["at"] - self.killed, 3)
        self.store = dialog_store(self.lab.nodes["lb1"])
        if self.store:
            backlog = self.store["queued"] + self.store["in_flight"]
            since = time.time() - self.killed
            self.samples.append((since, backlog, self.store["written"]))

    def backlog(self) -> tuple[int, float | None, int | None]:
        """The largest backlog, when it was drained (s after the kill), rows written by then."""
        if not self.samples:
            return 0, None, None
        top = max(range(len(self.samples)), key=lambda i: self.samples[i][1])
        after = [s for s in self.samples[top:] if s[1] == 0]
        if not after:
            return self.samples[top][1], None, None
        return self.samples[top][1], round(after[0][0], 1), after[0][2] - self.samples[0][2]

    def caught_up(self, store: dict[str, Any]) -> bool:
        """Connected, nothing waiting, nothing dropped (calls go on: a write may be on its
        way at any moment, hence the polling)."""
        self.store = store
        waiting = store.get("queued", 1) + store.get("in_flight", 1)
        return bool(store.get("connected")) and waiting == 0 and not store.get("overflows")


def sleep_until(moment: float) -> None:
    time.sleep(max(0.0, moment - time.monotonic()))


def test_the_database_node_in_use_dies_then_the_active_node(lab: GaleraLab, record: Record):
    lab.baseline()
    lb1 = lab.nodes["lb1"]
    record.check(
        all(database(lab.nodes[host]).get("host") == FIRST for host in NODES),
        "both nodes write through db1, the first host of their URL",
        {host: database(lab.nodes[host]) for host in NODES},
    )
    before = lab.completed_calls()
    caller = lab.call(CALLS, rate=RATE, hold_ms=HOLD_MS, timeout=120)
    started = time.monotonic()

    sleep_until(started + DATABASE_DIES)
    killed = time.time()
    lab.galera["db1"].kill()
    watch = DatabaseLoss(lab, killed)
    while time.monotonic() < started + BALANCER_DIES - 2:
        watch.look()
    left = {host: watch.left.get(host) for host in NODES}
    record.figures["left_db1_s"] = left
    for host in NODES:
        record.check(left[host] is not None, f"{host} left db1 for a host that answers", left)
    # What lb1 queued while db2 held its commits (Galera excludes a dead node first).
    queued, drained, replayed = watch.backlog()
    record.figures["lb1_writes_queued"] = queued
    record.figures["lb1_writes_replayed"] = replayed
    record.figures["lb1_queue_drained_s"] = drained
    caught_up = lab.wait_until(lambda: watch.caught_up(dialog_store(lb1)), 2)
    outage = watch.store.get("last_outage") or {}  # if a write of lb1's met the dead server
    record.figures["lb1_store_outage"] = {k: outage.get(k) for k in ("seconds", "replayed")}
    record.check(
        caught_up, "lb1 had written every dialog change to db2 before it died", watch.store
    )
    sleep_until(started + BALANCER_DIES)
    since = failover(record, lab, lb1.crash, to="lb2")
    judge_calls(record, lab, caller, CALLS, before, since)
    judge_idle(record, lab, "lb2", "at the end")
    survivors = [lab.galera[name] for name in ("db2", "db3")]
    empty = lab.wait_until(lambda: not any(node.dialog_rows() for node in survivors), 5)
    record.check(
        empty,
        "the dialog table is empty on db2 and db3",
        {node.name: node.dialog_rows() for node in survivors},
    )

    rejoined = lab.restart("db1")
    record.figures["db1_rejoined_s"] = round(rejoined, 1)
    back_since = time.monotonic()
    back = sipp.wait_until(lambda: database(lab.nodes["lb2"]).get("host") == FIRST, 15)
    record.figures["back_to_db1_s"] = round(time.monotonic() - back_since, 1) if back else None
    record.check(back, "lb2 went back to db1 once it was Synced again", database(lab.nodes["lb2"]))
    record.check(
        not lab.galera["db1"].dialog_rows(), "the dialog table is empty on db1 too", "rows left"
    )
    record.check(*write_set_conflict_is_run_again(lab))
    final = database(lab.nodes["lb2"])
    record.figures["lb2_database"] = {
        "failovers": final.get("failovers"),
        "last_failover": (final.get("last_failover") or {}).get("reason"),
        "conflicts_retried": final.get("conflicts_retried"),
    }
    record.verify(lab.describe())
