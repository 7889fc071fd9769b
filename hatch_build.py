"""Builds mapspec's one piece of C, `mapspec/ops/kernels.c`, into `_kernels.so`
when a wheel or an editable install is built (hatchling runs this hook; pyproject.toml
names it). The library is optional: with no C compiler, or if the build fails, the install
goes on pure Python and the FP8, MXFP4 and Q8_0 kernels run on numpy with the same bits, only slower.

The library is not a Python extension (no Python headers, no ABI tag of its own): native.py
loads it with ctypes. An editable install builds it beside the source; a wheel carries it."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

SOURCE = Path("mapspec/ops/kernels.c")
LIBRARY = SOURCE.with_name("_kernels" + (".dll" if sys.platform == "win32" else ".so"))
# -O3 vectorizes the loops; -ffp-contract=off keeps x * s from fusing into an FMA, so every
# float32 operation is rounded where numpy rounds it (no -ffast-math: no reassociation).
FLAGS = ["-O3", "-fPIC", "-shared", "-ffp-contract=off"]


def compiler() -> list[str] | None:
    """The C compiler: $CC, else cc, gcc or clang on PATH; None when there is none."""
    if os.environ.get("CC"):
        return shlex.split(os.environ["CC"])
    for name in ("cc", "gcc", "clang"):
        if shutil.which(name):
            return [name]
    return None


def build(root: Path, out: Path) -> str | None:
    """Compile the library to `out`; None on success, else why not. A compiler that cannot
    make one body per instruction set (GCC before 11) is asked for a single body."""
    cc = compiler()
    if cc is None:
        return "no C compiler found ($CC, cc, gcc, clang)"
    failed = None
    for extra in ([], ["-DMAPSPEC_ONE_BODY"]):
        try:
            done = subprocess.run([*cc, *FLAGS, *extra, "-o", str(out), str(root / SOURCE)], capture_output=True,
                                  text=True, timeout=300)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"{cc[0]} did not run: {exc}"
        if done.returncode == 0:
            return None
        failed = f"{cc[0]} failed: {(done.stderr or done.stdout).strip()[:2000]}"
    return failed


class CustomBuildHook(BuildHookInterface):
    def initialize(self, version: str, build_data: dict) -> None:
        if self.target_name != "wheel":
            return  # an sdist carries the C source; its wheel is built from it
        root = Path(self.root)
        if version == "editable":  # imported from the source tree: the library goes there
            out = root / LIBRARY
        else:
            self._tmp = tempfile.mkdtemp(prefix="mapspec-build-")
            out = Path(self._tmp) / LIBRARY.name
        failed = build(root, out)
        if failed:
            print(f"mapspec: the FP8, MXFP4 and Q8_0 kernels stay on numpy: {failed}", file=sys.stderr)
            return
        if version != "editable":
            build_data["force_include"][str(out)] = str(LIBRARY)
        build_data["pure_python"] = False
        build_data["infer_tag"] = True

    def finalize(self, version: str, build_data: dict, artifact_path: str) -> None:
        if getattr(self, "_tmp", None):
            shutil.rmtree(self._tmp, ignore_errors=True)
