"""The optional compiled build: ``SIPHA_COMPILE=1 pip install .`` compiles the core with mypyc.

The sans-IO modules every message goes through are compiled to C extension
modules that sit beside their sources in the wheel; Python imports an extension
before a source of the same name. Without ``SIPHA_COMPILE`` the wheel is the pure
Python reference, built without a compiler, and an editable install always is.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

#: The modules between the socket and the route: parsing, transactions, dialogs,
#: balancing, timers, the flood limit every message passes (pike) and the proxy core.
CORE_MODULES = (
    "message",
    "uri",
    "wheel",
    "transaction",
    "dialog",
    "balancer",
    "routing",
    "proxy",
    "pike",
)

#: Run in a copy of the package: mypyc writes its C files and extensions beside the sources.
_BUILD = """
import sys
from mypyc.build import mypycify
from setuptools import Distribution

# Only the compiled modules must type-check; Twisted is not in a build environment.
options = ["--ignore-missing-imports", "--follow-imports=silent"]
modules = [f"sipha/{name}.py" for name in sys.argv[1:]]
extensions = mypycify([*options, *modules], opt_level="3", group_name="sipha_core")
dist = Distribution({"name": "sipha", "ext_modules": extensions})
build = dist.get_command_obj("build_ext")
build.inplace = True
dist.run_command("build_ext")
"""


def compile_requested() -> bool:
    return os.environ.get("SIPHA_COMPILE", "") not in ("", "0")


class CompiledCoreHook(BuildHookInterface):  # type: ignore[type-arg]
    PLUGIN_NAME = "custom"

    def dependencies(self) -> list[str]:
        return ["mypy>=2.4", "setuptools>=69"] if compile_requested() else []

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        if not compile_requested() or self.target_name != "wheel":
            return
        if version == "editable":
            raise RuntimeError("SIPHA_COMPILE builds a wheel: an editable install runs the sources")
        self._workdir = Path(tempfile.mkdtemp(prefix="sipha-compile-"))
        shutil.copytree(Path(self.root) / "src" / "sipha", self._workdir / "sipha")
        subprocess.run(
            [sys.executable, "-c", _BUILD, *CORE_MODULES],
            cwd=self._workdir,
            check=True,
        )
        # The modules' extensions, and beside the package the library they share.
        for extension in [*self._workdir.glob("sipha/*.so"), *self._workdir.glob("*.so")]:
            target = extension.relative_to(self._workdir).as_posix()
            build_data["force_include"][str(extension)] = target
        build_data["pure_python"] = False
        build_data["infer_tag"] = True

    def finalize(self, version: str, build_data: dict[str, Any], artifact_path: str) -> None:
        workdir = getattr(self, "_workdir", None)
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)
