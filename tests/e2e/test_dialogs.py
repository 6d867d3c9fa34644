"""Dialogs in the database, end to end: the calls in progress, a restart, a database outage.

A real sipha process relays sipp calls to sipp media servers and keeps every
answered call in the ``dialog`` table (``db_mode`` 1, real time). The table
is read from outside, as an operator would read it, and compared with the
calls sipp has up at that moment. The load balancer's counters are judged by
what they let through: the media servers get a small capacity, so a counter
that is too high refuses a call that should fit, and one that is too low
lets through a call that should get 503.

Calls meant to overlap are placed fast and held with sipp's ``-d`` pause,
in a background thread, so that the test can look at the table, restart
sipha or stop the database while they are up.
"""

from __future__ import annotations

import re
import shutil
import signal
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

import sipp
from dbkit import execute, query
from dbserver import PrivateMariaDB

Caller = Callable[..., sipp.SippResult]
ServerFactory = Callable[..., sipp.MediaServer]
ProxyFactory = Callable[..., sipp.SiphaProxy]
Rows = list[tuple[Any, ...]]

#: Probes would count as calls on the media servers; nothing here needs them.
NO_PROBES: Mapping[str, Mapping[str, object]] = {
    "load_balancer": {"probing_interval": 0},
    "dispatcher": {"ping_interval": 0},
}

#: Held calls are all placed within a fraction of their hold, whatever the load.
RATE = 100
HELD = 10
#: Long enough to stop sipha, start it again and try one more call in between.
RESTART_HOLD_MS = 8000

#: What the test reads of each row.
ROW_COLUMNS = "callid, state, profiles, vars"
ANSWERED = {3, 4}  # CONFIRMED_NA (200 relayed), CONFIRMED (ACK seen)
CONFIRMED = 4


# --------------------------------------------------------------------------- helpers


@pytest.fixture
def background() -> Iterator[Callable[..., Future[Any]]]:
    """``submit(function, *args)``: run a blocking sipp caller in a thread.

    Teardown waits for every one of them, so a failed test leaves no sipp
    behind; each sipp is bounded by its own ``-timeout``.
    """
    with ThreadPoolExecutor(max_workers=4, thread_name_prefix="sipp-caller") as pool:
        yield pool.submit


def start_sipha(
    sipha_proxy: ProxyFactory,
    servers: Sequence[sipp.MediaServer],
    db_url: str,
    *,
    port: int,
    capacity: int = 32,
) -> sipp.SiphaProxy:
    """sipha on ``port`` (UDP and TCP) writing dialogs to ``db_url`` in real time.

    The same arguments give the same sipha again, which is how a restart is
    made: a new process on the same ports and database.
    """
    return sipha_proxy(
        listen=[f"udp:127.0.0.1:{port}", f"tcp:127.0.0.1:{port}"],
        destinations=[sipp.Destination(s.uri, resources=f"pstn={capacity}") for s in servers],
        sections={**NO_PROBES, "database": {"url": db_url}, "dialog": {"db_mode": 1}},
    )


def dialog_rows(url: str) -> Rows:
    return query(url, f"SELECT {ROW_COLUMNS} FROM dialog ORDER BY callid")


def wait_for_dialog_table(url: str, timeout: float = 10.0) -> None:
    """sipha creates its tables just after it starts answering; wait for that."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            dialog_rows(url)
            return
        except Exception as error:
            if time.monotonic() > deadline:
                pytest.fail(f"sipha did not create the dialog table in {url}: {error}")
            time.sleep(0.1)


def wait_for_rows(url: str, wanted: Callable[[Rows], bool], timeout: float) -> Rows:
    """Poll the table until ``wanted(rows)``; return the last rows read either way."""
    deadline = time.monotonic() + timeout
    while not wanted(rows := dialog_rows(url)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return rows


def held_calls(
    sipp_caller: Caller,
    proxy: sipp.SiphaProxy,
    count: int,
    hold_ms: int,
    scenario: str | Path = "uac.xml",
    **options: Any,
) -> sipp.SippResult:
    """``count`` calls up at once for ``hold_ms``; check=False lets the test judge the result."""
    options = {"rate": RATE, "limit": count, "timeout": hold_ms / 1000 + 20} | options
    return sipp_caller(scenario, proxy.address, calls=count, hold_ms=hold_ms, **options)


def assert_all_succeeded(result: sipp.SippResult, count: int) -> None:
    __tracebackhide__ = True
    assert (result.returncode, result.successful, result.failed) == (0, count, 0), result.describe()


def completed(servers: Sequence[sipp.MediaServer], total: int) -> list[int]:
    """Calls each server completed, once ``total`` have (read while they run)."""
    done = sipp.wait_for_total(servers, total)
    counts = [server.calls_completed for server in servers]
    assert done == total, f"{done} of {total} calls completed on the media servers: {counts}"
    assert not any(server.calls_failed for server in servers), [s.stats for s in servers]
    return counts


def assert_refused(sipp_caller: Caller, proxy: sipp.SiphaProxy) -> None:
    """One more call gets sipha's 503: every unit of every media server is held."""
    __tracebackhide__ = True
    result = sipp_caller("uac_fail.xml", proxy.address, trace_msg=True, check=False)
    refused = re.search(r"^SIP/2\.0 503 ", result.messages, re.M)
    assert refused, f"a call beyond capacity was not refused with 503\n{result.describe()}"


def assert_rows_name_the_binding(rows: Rows, servers: Sequence[sipp.MediaServer]) -> None:
    """Each row carries its load-balancer unit: ``lbXpstn#<id>|`` and ``lb_dst#<uri>``.

    That binding is what a restarted or standby sipha re-takes its counters from.
    """
    __tracebackhide__ = True
    uris = {server.uri for server in servers}
    for callid, state, profiles, lb_vars in rows:
        assert state in ANSWERED, f"{callid}: state {state}"
        assert re.fullmatch(r"lbXpstn#[^|#]+\|", profiles or ""), f"{callid}: {profiles!r}"
        # No "|", "#" or "\\" in these values, so nothing is escaped.
        binding = dict(item.split("#", 1) for item in (lb_vars or "").split("|") if "#" in item)
        assert binding.get("lb_group") == "1", f"{callid}: {lb_vars!r}"
        assert binding.get("lb_dst") in uris, f"{callid}: {lb_vars!r}"


# --------------------------------------------------------------------------- calls in progress


def test_rows_follow_the_calls_in_progress(
    db_url: str,
    sipha_proxy: ProxyFactory,
    media_server: ServerFactory,
    sipp_caller: Caller,
    background: Callable[..., Future[Any]],
) -> None:
    """N calls up give exactly N rows, each naming its resource; once they end, none is left."""
    servers = [media_server(sipp.free_port()) for _ in range(2)]
    proxy = start_sipha(sipha_proxy, servers, db_url, port=sipp.free_port())
    wait_for_dialog_table(db_url)
    assert dialog_rows(db_url) == []

    calls = background(held_calls, sipp_caller, proxy, HELD, 4000, check=False)
    rows = wait_for_rows(db_url, lambda rows: len(rows) >= HELD, timeout=3)
    up = not calls.done()

    assert up, f"the calls ended before their rows were read\n{calls.result().describe()}"
    assert len(rows) == HELD, rows
    assert len({row[0] for row in rows}) == HELD, rows
    assert_rows_name_the_binding(rows, servers)

    assert_all_succeeded(calls.result(timeout=60), HELD)
    assert completed(servers, HELD) == [HELD // 2, HELD // 2]
    assert wait_for_rows(db_url, lambda rows: not rows, timeout=5) == []


# --------------------------------------------------------------------------- restart


def restored(proxy: sipp.SiphaProxy) -> int | None:
    """How many dialogs sipha took back from the table at start, once it has said so."""
    match = re.search(r"restored (\d+) dialogs from the dialog table", proxy.log())
    return int(match.group(1)) if match else None


def test_calls_survive_a_restart(
    db_url: str,
    sipha_proxy: ProxyFactory,
    media_server: ServerFactory,
    sipp_caller: Caller,
    background: Callable[..., Future[Any]],
) -> None:
    """sipha stopped and started again mid-call routes the calls' BYEs and restores its counters.

    Two servers of 5 channels are full with 10 calls. After the restart an
    11th call still gets 503 (the counters came back from the table), the
    10 calls end cleanly through the new process and leave no row, and 10
    new calls fit again (every restored unit was released).
    """
    servers = [media_server(sipp.free_port()) for _ in range(2)]
    port = sipp.free_port()
    first = start_sipha(sipha_proxy, servers, db_url, port=port, capacity=HELD // 2)
    wait_for_dialog_table(db_url)

    calls = background(held_calls, sipp_caller, first, HELD, RESTART_HOLD_MS, check=False)
    rows = wait_for_rows(
        db_url, lambda rows: len(rows) == HELD and {r[1] for r in rows} == {CONFIRMED}, 3
    )
    assert [row[1] for row in rows] == [CONFIRMED] * HELD, rows
    assert_refused(sipp_caller, first)

    # twistd ends by re-raising the SIGTERM it handled; a SIGKILL would mean it hung.
    assert first.stop() in (0, -signal.SIGTERM), first.log()[-sipp.LOG_TAIL :]
    assert dialog_rows(db_url) == rows, "stopping sipha changed the dialog table"

    second = start_sipha(sipha_proxy, servers, db_url, port=port, capacity=HELD // 2)
    # The table is read just after sipha starts answering; until then it
    # routes on empty counters, by design, so the 11th call waits for it.
    assert sipp.wait_until(lambda: restored(second) is not None, timeout=5), second.log()
    assert restored(second) == HELD, second.log()
    assert_refused(sipp_caller, second)
    assert not calls.done(), "the held calls ended before the restart was over"

    assert_all_succeeded(calls.result(timeout=60), HELD)
    assert completed(servers, HELD) == [HELD // 2, HELD // 2]
    assert wait_for_rows(db_url, lambda rows: not rows, timeout=5) == []

    assert_all_succeeded(held_calls(sipp_caller, second, HELD, 1000, check=False), HELD)
    assert completed(servers, 2 * HELD) == [HELD, HELD]
    assert wait_for_rows(db_url, lambda rows: not rows, timeout=5) == []


# --------------------------------------------------------------------------- database outage


@pytest.fixture
def private_mariadb(tmp_path: Path) -> Iterator[PrivateMariaDB]:
    """A freshly installed, running MariaDB of this test alone; stopped at teardown."""
    directory = tmp_path / "mariadb"
    directory.mkdir()
    # A UNIX socket path must fit in 108 bytes; a deep tmp_path may not.
    short = None if len(str(directory)) < 80 else Path(tempfile.mkdtemp(prefix="sipha-mdb-"))
    server = PrivateMariaDB(directory, short or directory)
    try:
        server.install()
        server.start()
        yield server
    finally:
        server.stop()
        if short is not None:
            shutil.rmtree(short, ignore_errors=True)


LOAD_CALLS = 60
LOAD_RATE = 10
LOAD_HOLD_MS = 2000
OUTAGE = 3.0
#: Calls placed while the database is down and still up well after it is back.
OUTLASTING = 3
OUTLASTING_HOLD_MS = 15000


# SQLite has no variant: an embedded file has no server to stop and start.
@pytest.mark.parametrize("engine", ["mariadb"])
def test_database_outage_during_calls(
    engine: str,
    private_mariadb: PrivateMariaDB,
    sipha_proxy: ProxyFactory,
    media_server: ServerFactory,
    sipp_caller: Caller,
    background: Callable[..., Future[Any]],
) -> None:
    """The database stopped and started again under load: no call fails, no row is lost or stale.

    Calls keep completing while it is down (routing runs from memory). The
    calls placed during the outage get their rows once it is back (the
    queue drained), and the rows of calls that ended during it are gone.
    """
    servers = [media_server(sipp.free_port()) for _ in range(2)]
    url = private_mariadb.create_database("sipha")
    proxy = start_sipha(sipha_proxy, servers, url, port=sipp.free_port())
    wait_for_dialog_table(url)

    load = background(
        sipp_caller,
        "uac.xml",
        proxy.address,
        calls=LOAD_CALLS,
        rate=LOAD_RATE,
        hold_ms=LOAD_HOLD_MS,
        timeout=60,
        check=False,
    )
    # Mid-load: the calls of the first second and a half have their rows.
    written = wait_for_rows(url, lambda rows: len(rows) >= 15, timeout=5)
    assert len(written) >= 15, f"sipha wrote too few dialogs before the outage: {written}"

    def total() -> int:
        return sum(server.calls_completed for server in servers)

    private_mariadb.stop()
    went_down, before = time.monotonic(), total()
    outlasting = background(
        held_calls,
        sipp_caller,
        proxy,
        OUTLASTING,
        OUTLASTING_HOLD_MS,
        extra=["-cid_str", "outlasting-%u-%p@%s"],
        check=False,
    )
    time.sleep(max(0.0, went_down + OUTAGE - time.monotonic()))
    during = total() - before
    private_mariadb.start()

    assert_all_succeeded(load.result(timeout=90), LOAD_CALLS)
    assert during > 0, "no call completed while the database was down"

    # Only the outlasting calls are up now: their rows, queued during the
    # outage, must be there, and nothing else.
    def outlasting_only(rows: Rows) -> bool:
        return [row[0].split("-")[0] for row in rows] == ["outlasting"] * OUTLASTING

    rows = wait_for_rows(url, lambda rows: outlasting.done() or outlasting_only(rows), 10)
    up = not outlasting.done()
    assert outlasting_only(rows), f"dialog table after the outage: {rows}"
    assert up, "the outlasting calls ended before the table was checked"
    assert_rows_name_the_binding(rows, servers)

    assert_all_succeeded(outlasting.result(timeout=60), OUTLASTING)
    completed(servers, LOAD_CALLS + OUTLASTING)
    assert wait_for_rows(url, lambda rows: not rows, timeout=10) == []
    log = proxy.log()
    down = log.find("database unreachable")
    back = log.find("database back, dialog queue drained")
    assert 0 <= down < back, f"outage and recovery not logged in turn\n{log[-sipp.LOG_TAIL :]}"
    assert "dialog write queue full" not in log, log[-sipp.LOG_TAIL :]
    assert "Traceback" not in log, log[-sipp.LOG_TAIL :]  # sipha's lines, not adbapi's


# --------------------------------------------------------------------------- starting without it


def test_destinations_come_from_the_tables_once_a_database_down_at_start_answers(
    private_mariadb: PrivateMariaDB,
    sipha_proxy: ProxyFactory,
    media_server: ServerFactory,
) -> None:
    """Started without its database, sipha routes on the config file's list; as soon as the
    database answers it loads the tables (which once took a restart, or a kill -HUP)."""
    listed, tabled = (media_server(sipp.free_port()) for _ in range(2))
    url = private_mariadb.create_database("sipha")
    port = sipp.free_port()
    start_sipha(sipha_proxy, [listed], url, port=port).stop()  # makes the tables
    execute(
        url,
        "insert into load_balancer (group_id, dst_uri, resources, description)"
        f" values (1, '{tabled.uri}', 'pstn=32', 'FS2')",
    )
    private_mariadb.stop()
    proxy = start_sipha(sipha_proxy, [listed], url, port=port)

    def balancer() -> tuple[str, list[str]]:
        listing = proxy.ctl_json("destinations")
        return listing["sources"]["load_balancer"], [d["uri"] for d in listing["load_balancer"]]

    assert balancer() == ("config", [listed.uri])
    private_mariadb.start()
    assert sipp.wait_until(lambda: balancer() == ("table", [tabled.uri]), 3), balancer()


#: Calls up through the restart: answered before it, ended well after the database is back.
THROUGH_RESTART = 50
THROUGH_RESTART_HOLD_MS = 26000
#: Calls ended while the restarted sipha has no database: their BYEs pass by Record-Route.
ENDED_BLIND = 10
ENDED_BLIND_HOLD_MS = 9000
DATABASE_AWAY = 15.0


def without_record_route(tmp_path: Path) -> Path:
    """uac.xml as a UA that ignores Record-Route: ACK and BYE straight to sipha, no Route."""
    text = (sipp.SCENARIOS / "uac.xml").read_text(encoding="latin-1")
    for old, new in (
        (' rrs="true"', ""),
        ("[next_url]", "sip:[service]@[remote_ip]:[remote_port]"),
        ("      [routes]\n", ""),
    ):
        assert old in text, old
        text = text.replace(old, new)
    path = tmp_path / "uac_no_record_route.xml"
    path.write_text(text, encoding="latin-1")
    return path


def test_a_sipha_started_without_its_database_takes_the_calls_back_when_it_answers(
    tmp_path: Path,
    private_mariadb: PrivateMariaDB,
    sipha_proxy: ProxyFactory,
    media_server: ServerFactory,
    sipp_caller: Caller,
    background: Callable[..., Future[Any]],
) -> None:
    """100 calls up; the database stops; sipha is killed and started again; 15 s later the
    database is back. Every BYE completes, with a Record-Route aware caller and without one;
    a BYE relayed before the calls came back ends its row; nothing is left at the end.
    """
    servers = [media_server(sipp.free_port()) for _ in range(2)]
    url = private_mariadb.create_database("sipha")
    port = sipp.free_port()
    capacity = THROUGH_RESTART + ENDED_BLIND
    first = start_sipha(sipha_proxy, servers, url, port=port, capacity=capacity)
    wait_for_dialog_table(url)

    calls = {
        "record-route": background(
            held_calls, sipp_caller, first, THROUGH_RESTART, THROUGH_RESTART_HOLD_MS, check=False
        ),
        "no record-route": background(
            held_calls,
            sipp_caller,
            first,
            THROUGH_RESTART,
            THROUGH_RESTART_HOLD_MS,
            scenario=without_record_route(tmp_path),
            check=False,
        ),
        "ended blind": background(
            held_calls, sipp_caller, first, ENDED_BLIND, ENDED_BLIND_HOLD_MS, check=False
        ),
    }
    up = 2 * THROUGH_RESTART + ENDED_BLIND
    rows = wait_for_rows(url, lambda rows: [r[1] for r in rows] == [CONFIRMED] * up, 10)
    assert len(rows) == up, rows

    private_mariadb.stop()
    stopped = time.monotonic()
    first.kill()
    second = start_sipha(sipha_proxy, servers, url, port=port, capacity=capacity)
    store = second.ctl_json("counters")["dialog_store"]
    assert store["connected"] is False, store  # and says so
    assert not any(calls[name].done() for name in calls)
    calls["ended blind"].result(timeout=ENDED_BLIND_HOLD_MS / 1000 + 10)  # BYEs by Route
    assert not any(calls[name].done() for name in ("record-route", "no record-route"))

    time.sleep(max(0.0, stopped + DATABASE_AWAY - time.monotonic()))
    private_mariadb.start()
    # Within a check of the database's hosts (1 s), not at the end of some backoff.
    assert sipp.wait_until(lambda: restored(second) is not None, timeout=2.5), second.log()
    assert restored(second) == 2 * THROUGH_RESTART, second.log()
    assert second.ctl_json("counters")["dialog_store"]["connected"] is True
    assert not any(calls[name].done() for name in ("record-route", "no record-route"))

    for name, call in calls.items():
        count = ENDED_BLIND if name == "ended blind" else THROUGH_RESTART
        assert_all_succeeded(call.result(timeout=60), count)
    completed(servers, up)
    assert wait_for_rows(url, lambda rows: not rows, timeout=5) == []
    counters = second.ctl_json("counters")
    assert sum(counters["dialogs"].values()) == 0, counters["dialogs"]
    balancer = second.ctl_json("destinations")["load_balancer"]
    assert [r["load"] for d in balancer for r in d["resources"]] == [0, 0], balancer
    log = second.log()
    assert "Traceback" not in log, log[-sipp.LOG_TAIL :]  # an outage is sipha's own lines
