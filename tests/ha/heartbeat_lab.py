"""The HA lab with heartbeat instead of keepalived: run by hand, never collected by pytest.

    python3 tests/ha/heartbeat_lab.py        # as root, with heartbeat installed

It builds the lab of lab.py without keepalived and runs heartbeat on lb1 and
lb2 with the shipped etc/heartbeat files (ha.cf, haresources, authkeys,
resource.d/sipha; only addresses and paths changed, and a log file added),
then crashes lb1 under 10 calls as the keepalived lab does and prints the
same figures and checks. Exit status 0 when every check passed.

heartbeat reads /etc/ha.d, keeps its node UUID in /var/lib/heartbeat and its
sockets under /run, and names itself by ``uname -n``: each node therefore runs
in its own mount and UTS namespaces (``unshare --mount --uts``) inside its
network namespace, with its own copy of /etc/ha.d and /var/lib/heartbeat
bound over the real ones, a private /run and its host name set. Nothing of
the machine's own /etc, /var or /run is changed.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

# The lab, the end-to-end harness and the database helpers, as plain modules.
sys.path.insert(0, str(Path(__file__).parents[1]))
sys.path.insert(0, str(Path(__file__).parents[1] / "e2e"))
sys.path.insert(0, str(Path(__file__).parent))

from lab import (
    DOC_NET,
    ETC,
    NET,
    Daemon,
    Lab,
    LabError,
    Node,
    Record,
    failover,
    judge_calls,
    judge_idle,
    judge_table,
    substitute,
)

import sipp

HEARTBEAT = Path("/usr/libexec/heartbeat/heartbeat")
CALLS = 10
HOLD_MS = 15000


def descendants(pid: int) -> list[int]:
    """PIDs of every process below ``pid``, read from /proc (heartbeat's readers and writers)."""
    found: list[int] = []
    pending = [pid]
    while pending and len(found) < 1000:
        parent = pending.pop()
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{parent}/task"):
                with contextlib.suppress(OSError):
                    children = Path(f"/proc/{parent}/task/{task}/children").read_text().split()
                    found += map(int, children)
                    pending += map(int, children)
    return found


class Heartbeat(Daemon):
    """heartbeat -f for one node, in private mount and UTS namespaces; its children stopped by PID."""

    def __init__(self, lab: Lab, node: Node) -> None:
        directory = node.directory / "heartbeat"
        ha_d = directory / "ha.d"
        state = directory / "lib"
        shutil.copytree("/etc/ha.d", ha_d, symlinks=True)
        shutil.copytree("/var/lib/heartbeat", state, symlinks=True)
        log = directory / "ha-log"
        addresses = {DOC_NET: NET}
        (ha_d / "ha.cf").write_text(
            substitute((ETC / "heartbeat" / "ha.cf").read_text(), addresses)
            + f"\n# The lab's: no syslog in the namespaces.\nlogfile {log}\n"
        )
        (ha_d / "haresources").write_text(
            substitute((ETC / "heartbeat" / "haresources").read_text(), addresses)
        )
        authkeys = ha_d / "authkeys"
        shutil.copyfile(ETC / "heartbeat" / "authkeys", authkeys)
        authkeys.chmod(0o600)
        resource = ha_d / "resource.d" / "sipha"
        resource.write_text(
            substitute(
                (ETC / "heartbeat" / "resource.d" / "sipha").read_text(),
                {
                    "/etc/sipha/sipha.toml": str(node.config),
                    "SIPHA_CTL:-sipha-ctl": f"SIPHA_CTL:-{node.ctl_path}",
                },
            )
        )
        resource.chmod(0o755)
        setup = "\n".join(
            [
                "set -e",
                "mount --make-rprivate /",
                f"hostname {node.host}",
                f"mount --bind {shlex.quote(str(ha_d))} /etc/ha.d",
                f"mount --bind {shlex.quote(str(state))} /var/lib/heartbeat",
                "mount -t tmpfs tmpfs /run",
                "mkdir -p /run/heartbeat/ccm /run/heartbeat/dopd /run/heartbeat/rsctmp",
                "chown -R hacluster:haclient /run/heartbeat",
                f"exec {HEARTBEAT} -f",
            ]
        )
        command = lab.network.exec(node.host, "unshare", "--mount", "--uts", "sh", "-c", setup)
        super().__init__(f"heartbeat {node.host}", command, directory / "heartbeat.out")
        self.ha_log = log
        self._children: list[int] = []

    def _forget_children(self, sig: int) -> None:
        for pid in self._children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    def kill(self) -> None:
        if self.pid is not None:
            self._children = descendants(self.pid)
        super().kill()
        self._forget_children(signal.SIGKILL)

    def stop(self, grace: float = 30.0) -> int | None:
        if self.running and self.pid is not None:
            self._children = descendants(self.pid)
        status = super().stop(grace)
        self._forget_children(signal.SIGKILL)
        return status


def crash_under_calls(lab: Lab, engines: dict[str, Heartbeat], record: Record) -> None:
    """lb1 dies (link down, sipha and heartbeat SIGKILLed) with calls ringing and up."""
    lb1 = lab.nodes["lb1"]

    def crash() -> None:
        lb1.crash()
        engines["lb1"].kill()

    before = lab.completed_calls()
    caller = lab.call(CALLS, rate=2, hold_ms=HOLD_MS)
    time.sleep(5)
    since = failover(record, lab, crash, to="lb2")
    judge_calls(record, lab, caller, CALLS, before, since)
    judge_idle(record, lab, "lb2", "at the end")
    judge_table(record, lab)


def main() -> int:
    if os.geteuid() != 0:
        print("heartbeat_lab: run as root (network namespaces)", file=sys.stderr)
        return 2
    if not HEARTBEAT.exists() or shutil.which("unshare") is None:
        print("heartbeat_lab: apt-get install heartbeat (and util-linux)", file=sys.stderr)
        return 2
    sipp.sipp_binary()
    lab = Lab(Path(tempfile.mkdtemp(prefix="sipha-heartbeat-lab-")))
    record = Record()
    engines: dict[str, Heartbeat] = {}
    started = time.monotonic()
    try:
        with lab.opened(keepalived=False):
            for host, node in lab.nodes.items():
                engines[host] = Heartbeat(lab, node)
                engines[host].start()
            # heartbeat waits for its peer (or initdead) before taking resources.
            if lab.network.wait_for_vip("lb1", 90) is None:
                raise LabError(f"heartbeat put the VIP on no node\n{lab.describe()}")
            record.check(
                lab.wait_until(lambda: lab.nodes["lb1"].role() == "active", 10),
                "lb1 is active once heartbeat gave it the VIP",
                lab.nodes["lb1"].ha_status(),
            )
            crash_under_calls(lab, engines, record)
    except LabError as error:
        record.check(False, "the lab ran", error)
    finally:
        for engine in engines.values():
            engine.stop()
    print(f"heartbeat lab ({lab.directory}, {time.monotonic() - started:.0f} s):")
    print("  " + ", ".join(f"{key} {value}" for key, value in record.figures.items()))
    for ok, what in record.checks:
        print(f"  {'ok  ' if ok else 'FAIL'} {what}")
    return 0 if record.checks and all(ok for ok, _ in record.checks) else 1


if __name__ == "__main__":
    sys.exit(main())
