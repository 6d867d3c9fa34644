"""Fixtures shared by every test folder; helpers (dbkit) are importable from here."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from dbkit import mariadb_database


@pytest.fixture(params=["sqlite", "mariadb"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Each database test runs on both engines."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'sipha.sqlite'}"
        return
    with mariadb_database() as url:
        yield url
