"""The load-balancer pair survives failover, end to end (see lab.py for the network).

Real keepalived moves the VIP between two real sipha processes sharing a real
MariaDB; sipp media servers ring 3 s then answer, a sipp caller calls the VIP
and holds each call. Four ways to lose the active node, each with calls
ringing and answered at that moment:

1. lb1 crashes (link down, sipha and keepalived SIGKILLed),
2. lb1 comes back and takes the VIP back from lb2 while calls are up,
3. keepalived is stopped on the active node (a planned switch-over),
4. sipha alone is SIGKILLed on the active node (keepalived's health check).

Every call must complete, no 503 may reach the caller after the takeover, and
afterwards no node may keep a call or a load-balancer unit, nor the table a row.
Each test records the VIP's outage (from the failure to the VIP seen on the
other node, polled every 20 ms), the takeover ``sipha-ctl ha status`` reports
and the calls completed; they are printed at the end of the run. A last test
drives heartbeat's resource script (etc/heartbeat/resource.d/sipha) against
the pair.
"""

from __future__ import annotations

import time

from lab import (
    NODES,
    Lab,
    Record,
    failover,
    judge_calls,
    judge_idle,
    judge_table,
    states,
    takeover,
)

#: The media servers ring this long before answering (uas_ha.xml).
RING = 3.0
HOLD_MS = 15000


def test_crash_of_the_active_node(lab: Lab, record: Record) -> None:
    """lb1 dies with 20 calls ringing or up: lb2 takes the VIP and every call completes."""
    lab.baseline()
    lb1 = lab.nodes["lb1"]
    before = lab.completed_calls()
    caller = lab.call(20, rate=2, hold_ms=HOLD_MS)
    time.sleep(5)  # the first calls are answered, the next ones ringing
    since = failover(record, lab, lb1.crash, to="lb2")
    judge_calls(record, lab, caller, 20, before, since)
    judge_idle(record, lab, "lb2", "at the end")
    judge_table(record, lab)
    record.check(
        any("ha active" in call for call in lab.nodes["lb2"].ctl_calls(since)),
        "keepalived's notify ran `sipha-ctl ha active` on lb2",
        lab.nodes["lb2"].ctl_calls(since),
    )
    record.verify(lab.describe())


def test_fail_back_while_calls_are_up(lab: Lab, record: Record) -> None:
    """lb1 returns and preempts the VIP from lb2 while 10 calls are up: their BYEs go through lb1."""
    lb1, lb2 = lab.nodes["lb1"], lab.nodes["lb2"]
    if lab.holder() != "lb2" or lb1.sipha.running:
        # Run alone: start from lb1 crashed, as the previous test leaves it.
        lab.baseline()
        lb1.crash()
        assert lab.network.wait_for_vip("lb2", 15) is not None, lab.describe()
    before = lab.completed_calls()
    caller = lab.call(10, rate=5, hold_ms=HOLD_MS)
    time.sleep(2 + RING + 1.5)  # all placed and answered through lb2
    record.figures["up_on_lb2"] = states(lb2)

    wall = time.time()
    start = time.monotonic()
    lb1.revive()
    lb1.start_sipha()
    lb1.start_keepalived()
    seen = lab.network.wait_for_vip("lb1", 20)
    record.figures["preempt_after_s"] = None if seen is None else round(seen - start, 2)
    record.check(seen is not None, "lb1 took the VIP back within 20 s of its return")
    record.check(
        caller.process.poll() is None, "the calls were still up when lb1 took the VIP back"
    )
    judge_idle(record, lab, "lb2", "right after it lost the VIP", timeout=2)
    record.check(lb2.role() == "passive", "lb2 is passive", lb2.ha_status())
    last = takeover(lb1, wall)
    record.figures["takeover_ms"] = None if last is None else last.get("duration_ms")
    record.figures["calls_restored"] = None if last is None else last.get("calls_restored")

    judge_calls(record, lab, caller, 10, before, wall)
    byes = lb1.requests_received("BYE")
    record.check(byes is not None and byes >= 10, "the 10 BYEs went through lb1", byes)
    judge_idle(record, lab, "lb1", "at the end")
    judge_idle(record, lab, "lb2", "at the end")
    judge_table(record, lab)
    record.verify(lab.describe())


def test_graceful_switch_over(lab: Lab, record: Record) -> None:
    """keepalived stopped on the active node (SIGTERM): it resigns, lb2 takes over, no call is lost."""
    lab.baseline()
    lb1 = lab.nodes["lb1"]
    before = lab.completed_calls()
    caller = lab.call(10, rate=2, hold_ms=8000)
    time.sleep(4)  # three calls answered, the others ringing
    since = failover(record, lab, lb1.keepalived.stop, to="lb2", timeout=5)
    record.check(
        any("ha passive" in call for call in lb1.ctl_calls(since)),
        "keepalived's notify ran `sipha-ctl ha passive` on lb1",
        lb1.ctl_calls(since),
    )
    judge_calls(record, lab, caller, 10, before, since)
    judge_idle(record, lab, "lb1", "once passive")
    judge_idle(record, lab, "lb2", "at the end")
    judge_table(record, lab)
    record.verify(lab.describe())


def test_sipha_killed_on_the_active_node(lab: Lab, record: Record) -> None:
    """sipha alone SIGKILLed on the active node: the health check moves the VIP, no call is lost."""
    lab.baseline()
    lb1 = lab.nodes["lb1"]
    before = lab.completed_calls()
    caller = lab.call(10, rate=2, hold_ms=8000)
    time.sleep(4)
    since = failover(record, lab, lb1.sipha.kill, to="lb2")
    record.check(lb1.keepalived.running, "keepalived on lb1 kept running")
    judge_calls(record, lab, caller, 10, before, since)
    judge_idle(record, lab, "lb2", "at the end")
    judge_table(record, lab)
    record.verify(lab.describe())


def test_heartbeat_resource_script(lab: Lab, record: Record) -> None:
    """etc/heartbeat/resource.d/sipha against the live pair: status, stop and start set the role.

    heartbeat itself is not run here (see heartbeat's part of the README); its
    resource script is, the way heartbeat calls it, with ``SIPHA_CTL`` and
    ``SIPHA_CONFIG`` pointing at the lab's nodes.
    """
    lab.baseline()
    lb1, lb2 = lab.nodes["lb1"], lab.nodes["lb2"]
    status = {host: lab.nodes[host].resource("status") for host in NODES}
    record.check(
        status["lb1"].returncode == 0 and "running" in status["lb1"].stdout,
        "status says running on the active node",
        status["lb1"],
    )
    record.check(
        status["lb2"].returncode != 0 and "running" not in status["lb2"].stdout,
        "status says stopped on the passive node",
        status["lb2"],
    )
    stopped = lb1.resource("stop")
    record.check(
        stopped.returncode == 0 and lb1.role() == "passive",
        "stop makes sipha passive",
        f"{stopped}, role {lb1.role()}",
    )
    started = lb1.resource("start")
    record.check(
        started.returncode == 0 and lb1.role() == "active",
        "start makes sipha active and returns once it is",
        f"{started}, role {lb1.role()}",
    )
    record.check(lb2.role() == "passive", "the other node stayed passive", lb2.ha_status())
    record.verify(lab.describe())
