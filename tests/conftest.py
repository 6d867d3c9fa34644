"""Fixtures shared by every test folder; helpers (dbkit) are importable from here."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import sipha.message
from dbkit import mariadb_database
from sipha import core_build
from sources import BUILD


def pytest_report_header() -> str:
    return f"sipha build: {BUILD}, core from {sipha.message.__file__}"


def pytest_sessionstart(session: pytest.Session) -> None:
    """Refuse to run one build's tests on the other: a compiled run must not pass on sources."""
    if BUILD not in ("source", "compiled"):
        raise pytest.UsageError(f"SIPHA_BUILD={BUILD!r}: expected 'source' or 'compiled'")
    if core_build() != BUILD:
        raise pytest.UsageError(f"SIPHA_BUILD={BUILD} but sipha's core is {sipha.message.__file__}")


@pytest.fixture(params=["sqlite", "mariadb"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Each database test runs on both engines."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'sipha.sqlite'}"
        return
    with mariadb_database() as url:
        yield url
