"""Real services the remote tests start on this machine: moto's standalone S3 server and a
local Ray cluster. Each runs as child processes of the test session, reached on 127.0.0.1,
and is stopped by killing exactly the processes started here (never `ray stop`, which
stops every Ray of the user)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode} before listening")
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port} after {timeout} s")


S3_ENV = {"AWS_ACCESS_KEY_ID": "mapspec-test", "AWS_SECRET_ACCESS_KEY": "mapspec-test",
          "AWS_DEFAULT_REGION": "us-east-1", "AWS_SESSION_TOKEN": "mapspec-test"}


@contextmanager
def moto_server():
    """moto's S3 server on a free port; yields the environment that points s3fs, aiobotocore
    and boto3 at it (AWS_ENDPOINT_URL and keys), already set in os.environ."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    env = {**S3_ENV, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}
    saved = {k: os.environ.get(k) for k in env}
    try:
        wait_port(port, proc)
        os.environ.update(env)
        yield env
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        proc.kill()
        proc.wait()


def _ray(args: list[str], env: dict) -> subprocess.Popen:
    return subprocess.Popen([str(BIN / "ray"), "start", "--block", *args], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)


@contextmanager
def ray_cluster(cpus: int = 2):
    """`ray start --head --num-cpus 2 --block` without the dashboard, as one process group
    this fixture kills: its two CPUs run tasks in two Ray worker processes. Yields the
    address. (Several raylets on one machine time out joining under load here; one node
    with two workers is the cluster the tests can afford.)"""
    port = free_port()
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    head = _ray(["--head", "--port", str(port), "--num-cpus", str(cpus), "--include-dashboard=false",
                 "--disable-usage-stats"], env)
    try:
        wait_port(port, head, 60)
        address = f"127.0.0.1:{port}"
        _wait_nodes(address, 1)
        yield address
    finally:
        kill_group(head)
        _kill_stragglers("--gcs-address=", f":{port}")


def _kill_stragglers(*needles: str) -> None:
    """Ray worker processes of this cluster that left the head's process group (a worker
    starting while the group was killed): found by their command line naming this cluster's
    GCS port, and killed by pid."""
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if all(n in cmd for n in needles) and any(
                arg.startswith(needles[0]) and arg.endswith(needles[1]) for arg in cmd.split()):
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass


def _wait_nodes(address: str, count: int, timeout: float = 90.0) -> None:
    """Until the cluster has `count` live nodes (asked from a throwaway process, so the test
    process itself never joins the cluster)."""
    code = ("import ray, sys; ray.init(address=sys.argv[1], logging_level='ERROR', log_to_driver=False); "
            "print(sum(n['Alive'] for n in ray.nodes()))")
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        out = subprocess.run([sys.executable, "-c", code, address], capture_output=True, text=True, timeout=60)
        if out.returncode == 0 and out.stdout.strip().isdigit() and int(out.stdout.strip()) >= count:
            return
        time.sleep(0.5)
    raise RuntimeError(f"the Ray cluster at {address} did not reach {count} nodes")


def kill_group(proc: subprocess.Popen) -> None:
    """Kill a node started with `ray start --block` and everything it started."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()
