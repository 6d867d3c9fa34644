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
    left = {}
    for host in NODES:
        node = lab.nodes[host]
        moved = sipp.wait_until(lambda n=node: database(n).get("host") not in (None, FIRST), 10)
        status = database(node)
        last = status.get("last_failover") or {}
        left[host] = round(last["at"] - killed, 3) if moved and last else None
        record.check(
            moved and status.get("connected"), f"{host} left db1 for a host that answers", status
        )
    record.figures["left_db1_s"] = left

    sleep_until(started + BALANCER_DIES - 2)

    def written(store: dict[str, Any]) -> bool:
        """Connected, nothing waiting (calls go on: a write may be on its way at any moment)."""
        return (
            bool(store.get("connected")) and store.get("queued", 1) + store.get("in_flight", 1) == 0
        )

    caught_up = lab.wait_until(lambda: written(dialog_store(lb1)), 2)
    store = dialog_store(lb1)
    outage = store.get("last_outage") or {}
    record.figures["lb1_writes_queued"] = outage.get("queued")
    record.figures["lb1_writes_replayed"] = outage.get("replayed")
    record.figures["lb1_writes_waited_s"] = outage.get("seconds")
    record.check(
        caught_up and not store.get("overflows"),
        "lb1 had written every dialog change to db2 before it died",
        store,
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
