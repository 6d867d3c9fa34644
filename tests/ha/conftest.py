"""Fixtures of the high-availability lab: one lab (namespaces, MariaDB, sipp, the pair) per module.

Building the lab takes about 15 seconds, so the tests of a module share it and
each brings it into the state it starts from (``Lab.baseline``). The lab is
taken down at the end of the module whatever happened: every process stopped by
its PID, every namespace deleted. A failed test gets the logs of both nodes
(sipha, keepalived, the role commands keepalived ran) in its report, and the
figures every test measured are printed at the end of the run.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest

# The lab and the end-to-end harness it builds on, as plain modules.
if str(Path(__file__).parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).parent))
if str(Path(__file__).parent.parent / "e2e") not in sys.path:
    sys.path.insert(0, str(Path(__file__).parent.parent / "e2e"))

from lab import Lab, Record, require_root_and_tools

import sipp

LAB = pytest.StashKey[Lab]()
#: (test name, record) of every test that recorded something, in run order.
RECORDS: list[tuple[str, Record]] = []


@pytest.fixture(scope="module")
def lab(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """The whole pair in namespaces, shared by the tests of a module.

    A module's ``LAB_CLASS`` (galera.py's GaleraLab, say) builds another lab.
    """
    require_root_and_tools()
    the_lab = getattr(request.module, "LAB_CLASS", Lab)(tmp_path_factory.mktemp("ha"))
    with the_lab.opened():
        request.node.stash[LAB] = the_lab
        yield the_lab


@pytest.fixture
def record(request: pytest.FixtureRequest, lab: Lab) -> Iterator[Record]:
    """Figures and checks of a test: printed at the end of the run, kept in the lab as JSON."""
    measured = Record()
    yield measured
    if measured.figures or measured.checks:
        RECORDS.append((request.node.name, measured))
        entry = {"test": request.node.name, **measured.figures, "checks": measured.checks}
        with (lab.directory / "figures.jsonl").open("a") as out:
            out.write(json.dumps(entry) + "\n")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Append the lab's logs to a failed test's report."""
    report = yield
    module = item.getparent(pytest.Module)
    the_lab = module.stash.get(LAB, None) if module is not None else None
    if report.failed and the_lab is not None:
        for title, path in the_lab.logs():
            text = sipp.log_tail(path)
            if text.strip():
                report.sections.append((f"{title} ({path})", text))
    return report


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not RECORDS:
        return
    terminalreporter.section("sipha HA lab: figures and checks")
    for name, measured in RECORDS:
        shown = ", ".join(f"{key} {value}" for key, value in measured.figures.items())
        terminalreporter.write_line(f"{name}: {shown}")
        for ok, what in measured.checks:
            terminalreporter.write_line(f"    {'ok  ' if ok else 'FAIL'} {what}")
