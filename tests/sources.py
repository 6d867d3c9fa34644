"""Which sipha the tests' own processes run: the same one as the tests themselves.

``./run-tests`` runs the suite on the working tree, then again with the files of
a compiled wheel first on ``PYTHONPATH`` (``SIPHA_BUILD=compiled``). A process a
test starts (twistd, sipha-ctl) gets what ``PYTHONPATH`` names first, then the
working tree's sources, ahead of whatever copy is installed: the twisted/plugins
dropin is found through sys.path.
"""

from __future__ import annotations

import os
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
#: "source" (the working tree) or "compiled" (./run-tests' second run, on a mypyc wheel).
BUILD = os.environ.get("SIPHA_BUILD", "source")


def python_path() -> str:
    return os.pathsep.join(filter(None, [os.environ.get("PYTHONPATH"), str(SRC)]))


def sipha_env(**extra: str) -> dict[str, str]:
    """This environment, with the tests' sipha on the path (and ``extra`` set)."""
    return {**os.environ, "PYTHONPATH": python_path(), **extra}
