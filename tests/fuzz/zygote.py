"""A process that imports once and forks one child per case, so thousands of cases each run
in a fresh, resource-limited process without paying Python's start-up every time.

Protocol: one JSON job per stdin line, one JSON result per stdout line.
  {"kind": "cli", "argv": [...], "cwd": ..., "stdout": path, "stderr": path, "limits": {...}}
      runs `mapspec <argv>` in the child.
  {"kind": "oracle", "format": ..., "path": ..., "save": path, ...}
      reads the checkpoint with its own library (torch, safetensors, numpy, mxnet) and saves the
      tensors it finds to `save` (.npz, raw bits); exit 0 read, 1 refused.
Result: {"rc": exit code or null, "signal": number or null, "timeout": bool, "seconds": float}.
Limits: address space (bytes), CPU seconds and wall seconds; a case past its wall time is killed.
Every child meets file permissions like an ordinary user, even under root (privilege.py)."""

from __future__ import annotations

import json
import os
import resource
import signal
import sys
import time

from tests.fuzz.privilege import drop_file_override


def _limit(limits: dict) -> None:
    if limits.get("memory"):
        resource.setrlimit(resource.RLIMIT_AS, (limits["memory"], limits["memory"]))
    if limits.get("cpu"):
        resource.setrlimit(resource.RLIMIT_CPU, (limits["cpu"], limits["cpu"] + 1))
    if limits.get("fsize"):
        resource.setrlimit(resource.RLIMIT_FSIZE, (limits["fsize"], limits["fsize"]))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def _child(job: dict) -> int:
    os.setsid()
    os.chdir(job["cwd"])
    for fd, path in ((1, job["stdout"]), (2, job["stderr"])):
        f = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(f, fd)
        os.close(f)
    sys.stdout = open(1, "w", closefd=False)
    sys.stderr = open(2, "w", closefd=False)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_DFL if sig == signal.SIGTERM else signal.default_int_handler)
    _limit(job.get("limits", {}))
    if job.get("unprivileged", True):  # as root too, file permissions apply, as for any user
        drop_file_override()
    if job["kind"] == "cli":
        from mapspec.cli import app  # not main(): it would end this process itself

        sys.argv = ["mapspec", *job["argv"]]
        try:
            app()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    else:
        from tests.fuzz.oracle import read_with_library

        code = read_with_library(job["format"], job["path"], job["save"])
    sys.stdout.flush()
    sys.stderr.flush()
    return code


def _run(job: dict) -> dict:
    start = time.monotonic()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            code = _child(job)
        except BaseException:  # never let the child return into the zygote's loop
            import traceback

            traceback.print_exc()
            code = 99
        finally:
            os._exit(code)
    deadline = start + job.get("limits", {}).get("wall", 60)
    timed_out = False
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            timed_out = True
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            os.waitpid(pid, 0)
            status = None
            break
        time.sleep(0.005)
    result = {"rc": None, "signal": None, "timeout": timed_out, "seconds": time.monotonic() - start}
    if status is not None:
        if os.WIFEXITED(status):
            result["rc"] = os.WEXITSTATUS(status)
        elif os.WIFSIGNALED(status):
            result["signal"] = os.WTERMSIG(status)
    return result


def _warm_up() -> None:
    """Pay once, before forking, for what every case would otherwise redo: imports of the
    CLI and every format adapter, and building the spec grammar's parsers."""
    import importlib

    for module in ("mapspec.cli", "mapspec.tools.inspect"):
        importlib.import_module(module)
    from mapspec.formats import formats
    from mapspec.lang.parser import parse_spec

    formats()  # imports every format module
    parse_spec(text="mapspec 1\ntable t {\n  a = b\n}\n{x:**}.{n:int}.{p in t} -> {x}.{n + 1}.{t[p]} then view(+(1,))\n")


def main() -> None:
    import importlib

    preload = sys.argv[1:]
    importlib.import_module("numpy")  # shared by every child
    if "cli" in preload:
        _warm_up()
    if "oracle" in preload:
        import tests.fuzz.oracle as oracle

        oracle.preload()
    for line in sys.stdin:
        job = json.loads(line)
        sys.stdout.write(json.dumps(_run(job)) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
