"""bench/RESULTS.md: the benchmark's figures as Markdown, rewritten after every phase.

Kept apart from the measuring code so that what is measured and how it is
presented can be read (and changed) separately.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from run import MemoryResult, Profile, Results, Step, TargetResult

KIB = 1024


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def _ms(pair: tuple[float | None, float | None]) -> str:
    return " / ".join("-" if value is None else f"{value:g}" for value in pair)


def _num(value: float | None, digits: int = 0, suffix: str = "") -> str:
    return "-" if value is None else f"{value:,.{digits}f}{suffix}"


def _find(results: Results, key: str) -> TargetResult | None:
    return next((target for target in results.targets if target.key == key), None)


def _ratio(value: int | None, reference: int | None) -> float | None:
    return value / reference if value is not None and reference else None


def _per_call(memory: MemoryResult) -> list[tuple[int, int, float]]:
    """(from, to, bytes per call) between consecutive memory samples."""
    out = []
    for (calls0, rss0), (calls1, rss1) in zip(memory.samples, memory.samples[1:], strict=False):
        if calls1 > calls0:
            out.append((calls0, calls1, (rss1 - rss0) / (calls1 - calls0)))
    return out


def _summary(results: Results) -> list[str]:
    kamailio = _find(results, "kamailio")
    rows = []
    for target in results.targets:
        latency = target.latency
        ratio = _ratio(target.best, kamailio.best if kamailio else None)
        dialog_rows = "-"
        if latency is not None and target.proxy == "sipha" and target.store != "memory":
            dialog_rows = "unreadable" if latency.dialog_rows is None else f"{latency.dialog_rows}"
        rows.append([
            target.proxy, target.build, target.store,
            _num(target.best), ", ".join(str(run.best) for run in target.runs) or "-",
            "-" if target.proxy != "sipha" or ratio is None else f"{100 * ratio:.0f} %",
            "-" if latency is None else f"{latency.rate}",
            "-" if latency is None else _ms(latency.invite_180),
            "-" if latency is None else _ms(latency.invite_200),
            "-" if latency is None else _num(latency.cpu_us_per_call),
            "-" if latency is None else _num(latency.cpu_percent, suffix=" %"),
            "-" if latency is None else ("yes" if latency.held else "**no**"),
            dialog_rows,
        ])  # fmt: skip
    return _table([
        "Proxy", "Build", "Dialogs", "Max CPS (median)", "Each run", "÷ Kamailio",
        "Latency step CPS", "INVITE→180 p50 / p99 ms", "INVITE→200 p50 / p99 ms",
        "CPU-µs per call", "Proxy CPU", "Step held", "Dialog rows mid-step",
    ], rows)  # fmt: skip


def _targets(results: Results) -> list[str]:
    """Issue 15's targets, for each build of sipha measured."""
    kamailio = _find(results, "kamailio")
    rows = []

    def verdict(ok: bool | None) -> str:
        return "-" if ok is None else ("yes" if ok else "**no**")

    def at_least(target: TargetResult | None, what: str, cps: int) -> None:
        if target is not None and target.best is not None:
            rows.append([f"{what} ≥ {cps:,} CPS", f"{_num(target.best)} CPS",
                         verdict(target.best >= cps)])  # fmt: skip

    for build in dict.fromkeys(t.build for t in results.targets if t.proxy == "sipha"):
        prefix = f"sipha {build}"

        def find(store: str, build: str = build) -> TargetResult | None:
            return next((t for t in results.targets
                         if t.proxy == "sipha" and t.build == build and t.store == store), None)  # fmt: skip

        memory = find("memory")
        at_least(memory, f"{prefix}, dialogs in memory, with 0 failed calls,", 4000)
        saturation = memory.saturation if memory else None
        if saturation is not None and saturation.cpu_us_per_call is not None:
            rows.append([f"{prefix}: ≤ 215 CPU-µs per call at saturation",
                         f"{_num(saturation.cpu_us_per_call)} µs at {saturation.rate:,} CPS",
                         verdict(saturation.cpu_us_per_call <= 215)])  # fmt: skip
        if memory and kamailio:
            ratio = _ratio(memory.best, kamailio.best)
            rows.append([f"{prefix}: ≥ 60 % of Kamailio's one-worker CPS",
                         f"{_num(None if ratio is None else 100 * ratio, suffix=' %')} "
                         f"({_num(memory.best)} / {_num(kamailio.best)} CPS)",
                         verdict(None if ratio is None else ratio >= 0.6)])  # fmt: skip
        at_least(find("MariaDB real-time"), f"{prefix}, MariaDB real-time,", 3000)
        at_least(find("SQLite"), f"{prefix}, SQLite,", 3500)
        if memory and memory.latency:
            p99 = memory.latency.invite_180[1]
            rows.append([f"{prefix}: INVITE→180 p99 ≤ 4 ms at half of the maximum",
                         f"{_num(p99, 0, ' ms')} at {memory.latency.rate:,} CPS",
                         verdict(None if p99 is None else p99 <= 4)])  # fmt: skip
        held = next((m for m in results.memory if m.build == build), None)
        if held and _per_call(held):
            calls0, calls1, per_call = _per_call(held)[-1]
            rows.append([f"{prefix}: ≤ 2 KiB per call in progress",
                         f"{per_call / KIB:.1f} KiB ({calls0:,} → {calls1:,} calls)",
                         verdict(per_call <= 2 * KIB)])  # fmt: skip
    return _table(["Target (issue 15)", "Measured", "Met"], rows) if rows else []


def _profile(profile: Profile) -> list[str]:
    rows = [[f"`{name}`", f"{own:.1f}", f"{total:.1f}"] for name, own, total in profile.hot]
    return [
        f"### The {profile.build} core",
        "",
        f"{profile.summary}; {profile.samples:,} samples inside the core.",
        "",
        *_table(["Function (file)", "Self %", "Total %"], rows),
        "",
    ]


def _memory(memory: MemoryResult) -> list[str]:
    rows = []
    previous: tuple[int, int] | None = None
    for calls, rss in memory.samples:
        delta = per_call = "-"
        if previous is not None and calls > previous[0]:
            delta = f"{(rss - previous[1]) / 2**20:+.1f}"
            per_call = f"{(rss - previous[1]) / (calls - previous[0]):,.0f}"
        rows.append([f"{calls:,}", f"{rss / 2**20:.1f}", delta, per_call])
        previous = (calls, rss)
    if len(memory.samples) > 2:
        (calls0, rss0), (calls1, rss1) = memory.samples[0], memory.samples[-1]
        rows.append([f"{calls0:,} → {calls1:,}", "", f"{(rss1 - rss0) / 2**20:+.1f}",
                     f"{(rss1 - rss0) / max(1, calls1 - calls0):,.0f}"])  # fmt: skip
    return _table(["Calls in progress", "RSS MiB", "Δ MiB", "Bytes per call"], rows)


def _steps(steps: list[Step]) -> list[str]:
    rows = []
    for step in steps:
        rows.append([
            f"{step.rate}", f"{step.achieved:.1f}", f"{step.ok}", f"{step.failed}",
            f"{step.media_failed}", f"{step.retransmissions}",
            _ms(step.invite_180), _ms(step.invite_200),
            _num(step.cpu_percent), _num(step.cpu_us_per_call),
            f"{100 * step.sipp_cpu / step.wall:.0f}" if step.wall else "-",
            f"{100 * step.other_cpu / step.wall:.0f}" if step.wall else "-",
            _num(step.proxy_drops), f"{step.udp_drops}", _num(step.log_errors),
            "-" if step.db_cpu is None else f"{100 * step.db_cpu / step.wall:.0f}",
            ("yes" if step.held else "no") + (f" ({step.note})" if step.note else ""),
        ])  # fmt: skip
    return _table([
        "CPS asked", "Achieved", "OK", "Failed", "MS failed", "Retrans",
        "→180 p50/p99 ms", "→200 p50/p99 ms", "Proxy CPU %", "CPU-µs/call", "sipp CPU %",
        "Other CPU %", "Proxy drops", "UDP drops", "Proxy log errors", "DB CPU %", "Held",
    ], rows)  # fmt: skip


def write_report(path: Path, results: Results) -> None:
    """Write the whole report to ``path`` (a partial one while the benchmark still runs)."""
    plan = results.plan
    when = results.started.strftime("%Y-%m-%d %H:%M UTC")
    if results.finished is None:
        status = "**In progress**: the tables below hold what has been measured so far."
    elif results.problem:
        status = f"**Incomplete**: {results.problem}."
    else:
        minutes = (results.finished - results.started).total_seconds() / 60
        status = f"Complete; the run took {minutes:.0f} min."
    lines = [
        "# sipha benchmark results",
        "",
        f"Written by `{results.command}` on {when}. {status} "
        f"Raw files (sipp CSVs, logs) were in `{results.workdir}`.",
        "",
        "Do not edit: rerun the benchmark (see bench/README).",
        "",
        "## Setup",
        "",
        *_table(["", ""], [[key, value] for key, value in results.environment.items()]),
        "",
        "- **Pinning**: the proxy under test runs on CPU 0 (`taskset -c 0`; Kamailio with all of "
        "its processes), every sipp (caller and both media servers) and the benchmark itself on CPU 1 "
        "(`taskset -c 1`). "
        "Other processes on the machine are not kept off those CPUs; the per-step tables "
        "give the CPU they used meanwhile (*Other CPU*).",
        "- **Call**: tests/sipp/uac.xml through the proxy to one of two sipp media servers "
        "(tests/sipp/uas.xml, `-aa`) on 127.0.0.1:15070 and :15071: INVITE, 100, 180, 200, "
        "ACK, a 1 s hold, BYE, 200, ACK and BYE along the recorded route. Both proxies probe "
        "both media servers with OPTIONS every 5 s.",
        "- **Proxies**: sipha on bench/sipha.toml (the reference route, UDP 127.0.0.1:15060); "
        "Kamailio on bench/kamailio.cfg (tm, sl, rr, maxfwd, dialog via dlg_manage, "
        "dispatcher round robin over bench/dispatcher.list, one UDP worker, 127.0.0.1:15062). "
        "UDP receive buffer as the kernel reports it (`ss -m`): "
        + (
            ", ".join(
                f"{t.label} {t.receive_buffer:,} bytes" for t in results.targets if t.receive_buffer
            )
            or "not read"
        )
        + ".",
        f"- **Steps**: {plan.step_seconds} s each (`-r RATE -m RATE*{plan.step_seconds}`), the "
        f"rate doubled from {plan.start_rate} CPS until a step fails, then bisected "
        f"{plan.refinements} times; a step holds when every call placed completed, the media "
        "servers saw no failed call, and sipp placed calls at ≥ 95 % of the rate asked. "
        f"Max CPS is the median over {plan.runs} run(s), each on a freshly started proxy.",
        f"- **Latency step**: {plan.latency_seconds} s at half of sipha's in-memory maximum "
        "(for the database stores, half of their own maximum) on a fresh proxy. Response "
        "times come from sipp's `-trace_rtt` (every call): ResponseTime1 INVITE→180, "
        "ResponseTime2 INVITE→200, counted from the INVITE sent. sipp's clock gives whole "
        "milliseconds"
        + (
            f", and the times it wrote here move in steps of {results.rtt_resolution_ms:g} ms, "
            "so 0 means less than one step"
            if results.rtt_resolution_ms
            else ""
        )
        + ".",
        "- **CPU**: utime+stime from /proc/PID/stat of the proxy's processes. *Proxy CPU* is "
        "the share of one CPU while calls flow (sampled from 1.5 s into the step, when the "
        "first BYEs come, to the last call placed); CPU-µs per call is the whole step's CPU, "
        "tail included, ÷ completed calls. The MariaDB server's CPU is not in the proxy's "
        "figures (see the DB CPU column).",
        "",
        "## Summary",
        "",
        *_summary(results),
        "",
        "Dialog rows mid-step: rows in sipha's `dialog` table halfway through the latency "
        "step, read with a separate connection (0 or unreadable means the store was not "
        "written).",
        "",
    ]
    targets = _targets(results)
    if targets:
        lines += ["## Targets", "", *targets, ""]
    for memory in results.memory:
        lines += [
            f"## Memory ({memory.build} build)",
            "",
            f"sipha's RSS (VmRSS) with answered calls held open (dialogs in memory), placed at "
            f"{memory.rate} CPS after a warm-up of 200 calls; each reading is taken "
            "40 s after the last call was placed, once its transactions are gone (RFC 3261 "
            "Timer M, 32 s). RSS keeps what Python freed but did not return to the system, "
            f"so it includes the peak of those transactions. Failed calls: {memory.failed}."
            + (f" {memory.note}." if memory.note else ""),
            "",
            *_memory(memory),
            "",
        ]
    if results.profiles:
        lines += [
            "## Where the core's time goes",
            "",
            "`bench/profile_core.py` feeds whole calls (INVITE, 100, 180, 200, ACK, BYE, 200) "
            "to the sans-IO core without sockets, on a clock of its own at 2,000 calls per "
            "second with a 1 s hold (so the timers fire and calls overlap as live), on each "
            "build, under `py-spy record "
            "--native` on the proxy's CPU. *Self* is the share of the samples inside the core "
            "taken in the function itself, *Total* with what it calls. mypyc's functions are "
            "C functions named `CPyDef_module___function`; py-spy gives the time of C code "
            "inlined from CPython's headers (reference counts) to `Py_DECREF`.",
            "",
        ]
        for profile in results.profiles:
            lines += _profile(profile)
    lines += ["## Every step", ""]
    for target in results.targets:
        lines += [f"### {target.label}", ""]
        for number, run in enumerate(target.runs, 1):
            lines += [f"Run {number}: highest rate that held {run.best} CPS.", "",
                      *_steps(run.steps), ""]  # fmt: skip
        if target.latency is not None:
            lines += ["Latency step:", "", *_steps([target.latency]), ""]
    lines += [
        "Columns: *Failed* = calls placed but not completed at the caller (a step is stopped "
        "at its first failed call, and the calls still in progress then count as failed too); "
        "*MS failed* = "
        "calls the media servers failed; *Retrans* = retransmissions by the caller and the "
        "media servers; *sipp CPU* = caller plus both media servers, in % of one CPU; "
        "*Proxy drops* = datagrams dropped at the proxy's socket for a full receive buffer "
        "(`ss -m`), *UDP drops* = the same for every socket on the machine (/proc/net/snmp "
        "RcvbufErrors); *Other CPU* = every other process on the machine that lived through "
        "the whole step (MariaDB's server included unless it has its own column), in % of one "
        "CPU; *Proxy log errors* = error and warning lines the proxy logged during the step.",
        "",
    ]
    path.write_text("\n".join(lines))
