"""llama.cpp's own Hugging Face -> GGUF converter, as the reference mapspec's GGUF specs are proven
against.

Nothing of llama.cpp is kept in this repository: the converter (`convert_hf_to_gguf.py` and its
`conversion/` package) and its `gguf-py` come from the llama-cpp-python source archive, fetched
once with pip into a cache outside the checkout (`$MAPSPEC_TEST_CACHE`, default
`~/.cache/mapspec-tests`) and extracted there. Tests that need it skip when it cannot be had
(offline, no pip index).

The C++ library (for loading a GGUF and computing logits) is the same package built as a wheel,
also cached there (`wheels/`); `llama_cpp()` imports it from there or returns None.
"""
from __future__ import annotations

import glob
import os
import subprocess
import sys
import tarfile
from pathlib import Path

VERSION = "0.3.36"
CACHE = Path(os.environ.get("MAPSPEC_TEST_CACHE", Path.home() / ".cache" / "mapspec-tests"))
ARCHIVE = f"llama_cpp_python-{VERSION}.tar.gz"
VENDOR = f"llama_cpp_python-{VERSION}/vendor/llama.cpp"
WANTED = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/", "models/ggml-vocab-")


def _archive() -> Path | None:
    src = CACHE / "src"
    path = src / ARCHIVE
    if path.is_file():
        return path
    src.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        [sys.executable, "-m", "pip", "download", f"llama-cpp-python=={VERSION}", "--no-deps",
         "--no-binary", ":all:", "-d", str(src)],
        capture_output=True, text=True, timeout=900)
    return path if done.returncode == 0 and path.is_file() else None


def llama_cpp_dir() -> Path | None:
    """The extracted `vendor/llama.cpp` (converter, conversion/, gguf-py, vocab files), or None."""
    root = CACHE / "src" / VENDOR
    if (root / "convert_hf_to_gguf.py").is_file() and (root / "conversion" / "base.py").is_file():
        return root
    try:
        archive = _archive()
    except (OSError, subprocess.SubprocessError):
        return None
    if archive is None:
        return None
    with tarfile.open(archive) as tar:
        members = [m for m in tar.getmembers()
                   if m.name.startswith(VENDOR + "/")
                   and m.name[len(VENDOR) + 1:].startswith(WANTED)
                   and (m.isfile() or m.isdir())]
        tar.extractall(CACHE / "src", members=members, filter="data")
    return root if (root / "convert_hf_to_gguf.py").is_file() else None


def require():
    """The llama.cpp directory, or skip the calling test (also where the converter's own
    imports are missing, as in the mxnet environment, which has no transformers)."""
    import importlib.util

    import pytest

    missing = [m for m in ("transformers", "torch", "safetensors", "sentencepiece") if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"llama.cpp's converter needs {', '.join(missing)}, not installed here")
    root = llama_cpp_dir()
    if root is None:
        pytest.skip(f"llama.cpp's converter is not available (pip download llama-cpp-python=={VERSION} failed)")
    return root


def gguf_py(root: Path):
    """llama.cpp's own gguf-py (the one its converter uses), imported from the extracted tree,
    not the `gguf` package installed in the environment."""
    import importlib

    path = str(root / "gguf-py")
    saved = {k: v for k, v in sys.modules.items() if k == "gguf" or k.startswith("gguf.")}
    for k in saved:
        del sys.modules[k]
    sys.path.insert(0, path)
    try:
        return importlib.import_module("gguf")
    finally:
        sys.path.remove(path)
        for k in [k for k in sys.modules if k == "gguf" or k.startswith("gguf.")]:
            del sys.modules[k]
        sys.modules.update(saved)


def environment() -> dict[str, str]:
    """The environment the converter runs in: offline, and with its own gguf-py (next to it)."""
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    env.pop("NO_LOCAL_GGUF", None)
    return env


def command(model_dir: Path, out: Path, outtype: str, *extra: str, root: Path) -> list[str]:
    """The argv of `convert_hf_to_gguf.py MODEL_DIR --outtype OUTTYPE --outfile OUT`."""
    return [sys.executable, str(root / "convert_hf_to_gguf.py"), str(model_dir), "--outtype", outtype,
            "--outfile", str(out), *extra]


def convert(model_dir: Path, out: Path, outtype: str, *extra: str, root: Path | None = None) -> Path:
    """Run `convert_hf_to_gguf.py MODEL_DIR --outtype OUTTYPE --outfile OUT` in a subprocess;
    raise with its output on failure."""
    root = root or require()
    done = subprocess.run(command(model_dir, out, outtype, *extra, root=root),
                          capture_output=True, text=True, env=environment(), cwd=str(root), timeout=900)
    if done.returncode != 0:
        raise RuntimeError(f"convert_hf_to_gguf.py failed ({done.returncode}):\n{done.stderr[-4000:]}")
    return out


# Several conversions in one interpreter: the converter's imports (torch, transformers) take
# most of a tiny model's conversion time.
_MANY = """
import sys, json
sys.path.insert(0, sys.argv[1])
import convert_hf_to_gguf as c
for model, out, outtype, *extra in json.loads(sys.argv[2]):
    sys.argv = ["convert_hf_to_gguf.py", model, "--outtype", outtype, "--outfile", out, *extra]
    c.main()
"""


def convert_many(jobs, root: Path | None = None) -> None:
    """convert() for each (model_dir, out, outtype, *extra arguments), in one subprocess."""
    import json

    root = root or require()
    done = subprocess.run([sys.executable, "-c", _MANY, str(root),
                           json.dumps([[str(m), str(o), t, *extra] for m, o, t, *extra in jobs])],
                          capture_output=True, text=True, env=environment(), cwd=str(root), timeout=1800)
    if done.returncode != 0:
        raise RuntimeError(f"convert_hf_to_gguf.py failed ({done.returncode}):\n{done.stderr[-4000:]}")


WHEELS = CACHE / "wheels"


def llama_cpp():
    """The llama_cpp module from the wheel built into the cache (scripts/build_llama_cpp.sh, about
    8 minutes; the suite never builds it), or None when no wheel is there or it does not load."""
    try:
        return require_llama_cpp(skip=False)
    except RuntimeError:
        return None


def require_llama_cpp(skip: bool = True):
    """The llama_cpp module from the cached wheel, extracted into a private directory of the
    cache (never installed into the environment); else skip the calling test saying why (or
    raise RuntimeError with skip=False)."""
    def absent(why):
        if not skip:
            raise RuntimeError(why)
        import pytest

        pytest.skip(why)

    wheels = sorted(glob.glob(str(WHEELS / f"llama_cpp_python-{VERSION}-*.whl")))
    if not wheels:
        return absent(f"no llama-cpp-python {VERSION} wheel in {WHEELS} (build it once: scripts/build_llama_cpp.sh)")
    tag = f"cp{sys.version_info[0]}{sys.version_info[1]}"
    if "-py3-none-" not in wheels[-1] and f"-{tag}-" not in wheels[-1]:
        return absent(f"{wheels[-1]} was built for another Python than this {tag}")
    target = CACHE / "site" / Path(wheels[-1]).stem
    if not (target / "llama_cpp").is_dir():
        import zipfile

        target.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(wheels[-1]) as z:
            z.extractall(target)
    if str(target) not in sys.path:
        sys.path.insert(0, str(target))
    import importlib

    try:
        return importlib.import_module("llama_cpp")
    except Exception as e:  # a wheel that does not load here (a missing runtime dependency or library)
        return absent(f"llama-cpp-python's cached wheel does not load here: {type(e).__name__}: {e}")



_LOGITS = """
import sys
sys.path.insert(0, sys.argv[1])
import numpy as np
import llama_cpp
m = llama_cpp.Llama(sys.argv[2], n_ctx=64, logits_all=True, verbose=False, use_extra_bufts=False, n_threads=1, seed=0)
m.eval(m.tokenize(sys.argv[3].encode()))
np.save(sys.stdout.buffer, np.array(m.scores[:m.n_tokens]))
m.close()
"""


def logits(path: Path, prompt: str):
    """The logits llama.cpp gives for `prompt` with the GGUF at `path` (no weight repacking:
    llama.cpp's `--no-repack`), computed in a child process; -N if llama.cpp died of signal N
    there (0.3.36 dies of SIGSEGV evaluating Q8_0 weights on some AVX-512 machines, repacking
    off or not), so a crash in llama.cpp's kernels cannot end the test run."""
    import io

    import numpy as np

    module = require_llama_cpp()
    site = str(Path(module.__file__).parent.parent)
    done = subprocess.run([sys.executable, "-c", _LOGITS, site, str(path), prompt], capture_output=True, timeout=900)
    if done.returncode < 0:
        return done.returncode
    if done.returncode:
        raise RuntimeError(f"llama.cpp failed on {path} ({done.returncode}):\n{done.stderr.decode()[-3000:]}")
    return np.load(io.BytesIO(done.stdout))


def same_logits(mine: Path, reference: Path, prompt: str):
    """Both files' logits (`logits`). Where llama.cpp crashes on the reference converter's own
    file, the calling test is skipped saying so (llama.cpp cannot run that model on this
    machine, whoever wrote the file); where it crashes on mapspec's file alone, that fails."""
    import pytest

    b = logits(reference, prompt)
    if isinstance(b, int):
        pytest.skip(f"llama.cpp {VERSION} dies of signal {-b} evaluating the reference converter's own {reference.name} "
                    "on this machine: its kernels, not the file")
    a = logits(mine, prompt)
    assert not isinstance(a, int), f"llama.cpp dies of signal {-a} on mapspec's {mine.name}, not on the reference's"
    return a, b
