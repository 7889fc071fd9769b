"""`apply --ray`: the compiled plan split by output shard (`shards.split`) into Ray tasks.

Each task opens the source itself (headers only: a few small requests on a store), converts
its shards' steps and writes its file: into the driver's temporary output folder for a local
output (one machine, or a file system every node mounts), or to object storage as an upload
left incomplete, which the driver completes. Only when every task has succeeded does the
driver complete the uploads (or rename the folder), write the index, last, and so the
provenance record every shard already holds (computed once, by the driver, before the tasks
start: each file is byte-identical to a single-process run's).

Failures: a worker (or its node) lost mid-task is retried by Ray on another worker
(`RETRIES` times); its half-written file is a `.part` name the driver never publishes, and
its upload is aborted by the driver, who learns every upload id as it is created. A task
that fails by itself (a bad tensor, a refused object) is not retried: the run stops with
that task's one-line error, cancels the others and removes everything written.

Progress: tasks report their written bytes to a small actor; the driver polls it with the
count of finished shards. Ray is imported only here, only for `--ray`."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Callable, Mapping

from ..errors import MapspecError, OutputError, UsageError
from .shards import ShardTask, split, write_shard

RETRIES = 3  # attempts after a worker is lost, per task
REPORT_EVERY = 16 << 20  # bytes between a task's progress reports
POLL = 0.25  # seconds between the driver's progress polls


def _ray():
    try:
        import ray
    except ImportError:
        raise UsageError("--ray needs Ray: pip install 'mapspec[ray]'") from None
    return ray


def connect(address: str | None):
    """Join the cluster at `address`; "auto" (plain `--ray`) joins the local one if it runs,
    else starts one for this run."""
    ray = _ray()
    if ray.is_initialized():
        return ray
    options = dict(log_to_driver=False, include_dashboard=False, logging_level="ERROR", configure_logging=True)
    try:
        if address in (None, "", "auto", "local"):
            try:
                ray.init(address="auto", **options)
            except ConnectionError:
                ray.init(**options)
        else:
            ray.init(address=address, **options)
    except MapspecError:
        raise
    except Exception as exc:  # noqa: BLE001 - no cluster there: a usage problem, in one line
        raise UsageError(f"--ray {address or ''}: cannot join a Ray cluster ({str(exc).splitlines()[0][:200]})".replace(
            "--ray :", "--ray:")) from None
    return ray


def _actor_class(ray):
    @ray.remote(num_cpus=0)
    class Progress:
        """Bytes written per task (a retried task starts again from 0) and uploads begun."""

        def __init__(self):
            self.done: dict[str, int] = {}
            self.uploads: list = []

        def report(self, name: str, n: int) -> None:
            self.done[name] = n

        def uploading(self, pending) -> None:
            self.uploads.append(pending)

        def state(self) -> tuple[int, list]:
            return sum(self.done.values()), list(self.uploads)

    return Progress


def _task(plan, task: ShardTask, checkpoint, select, epoch, fmt: str, record, dest: str, progress,
          concurrency: int):
    """One shard, on a worker. Returns the pending uploads (object storage) or None."""
    from ..formats import fetching, open_source, remote

    fetching.configure(concurrency)
    last = [0]

    def report(n: int) -> None:
        if n - last[0] >= REPORT_EVERY or n == task.nbytes:
            last[0] = n
            progress.report.remote(task.name, n)

    progress.report.remote(task.name, 0)
    source = open_source(checkpoint, select=select, epoch=epoch)
    try:
        if not remote.is_url(dest):
            write_shard(plan, task, source, fmt, record, Path(dest), report)
            return None
        from ..formats import objects
        from ..formats.provenance import sidecar

        target = remote.URLPath(dest)
        with tempfile.TemporaryDirectory(prefix="mapspec-spool-") as spool:
            path = write_shard(plan, task, source, fmt, record, Path(spool), report)
            sent = []
            for file, name in ((path, task.name), (sidecar(path), sidecar(Path(task.name)).name)):
                if file.is_file():
                    to = target / name if target.name != name else target
                    sent.append(objects.upload(file, to, started=lambda p: progress.uploading.remote(p)))
            return sent
    finally:
        source.close()


def apply_on_ray(plan, checkpoint, select: str, epoch, output, fmt: str, record, max_shard_size, address: str | None,
                 progress: Callable[[int], None] | None = None, shards: Callable[[int, int], None] | None = None,
                 concurrency: int = 8, files: Mapping | None = None) -> None:
    """Run the conversion on Ray. Call inside `guarded_writes` (which aborts the output's
    temporary folder or uploads on any failure or signal); `record` must be resolved.
    `files` (a model directory's other files, `carried_files`) are written by the driver
    with the index, after every task succeeded."""
    ray = connect(address)
    from ..formats import remote

    tasks = split(plan, fmt, max_shard_size, output.name)
    directory = max_shard_size is not None
    actor = _actor_class(ray).remote()
    run = ray.remote(max_retries=RETRIES, retry_exceptions=False)(_task)
    plan_ref = ray.put(plan)
    if remote.is_url(output):
        from ..formats.objects import ObjectOutput

        out = ObjectOutput(output, directory)
        dest = output.url if directory else output.parent.url
        finish = _finish_objects(out, plan, fmt, tasks, actor, files)
    else:
        from ..formats.atomic import AtomicPath

        atomic = AtomicPath(output, directory=directory)
        folder = atomic.tmp if directory else Path(tempfile.mkdtemp(prefix=f".{output.name}.", dir=output.parent))
        dest = str(folder)
        finish = _finish_local(atomic, folder, plan, fmt, tasks, directory, files)
    refs = {run.remote(plan_ref, t, checkpoint, select, epoch, fmt, record, dest, actor, concurrency): t
            for t in tasks}
    results = []
    try:
        left = list(refs)
        while left:
            ready, left = ray.wait(left, num_returns=len(left), timeout=POLL)
            for ref in ready:
                results.append(_result(ray, ref, refs[ref]))
            if progress:
                progress(ray.get(actor.state.remote())[0])
            if shards:
                shards(len(results), len(tasks))
        finish(results)
    except BaseException:
        # Only tasks still running are cancelled: Ray 2.60's driver can abort on a RAY_CHECK
        # when a cancel races a task's completion ("Tried to complete task that was not
        # pending", ray-project/ray#54846), seen once here in the failing-shard test.
        try:
            _, running = ray.wait(list(refs), num_returns=len(refs), timeout=0)
        except Exception:  # noqa: BLE001 - the cluster is going away: cancel them all
            running = list(refs)
        for ref in running:
            try:
                ray.cancel(ref, force=True)
            except Exception:  # noqa: BLE001 - already finished
                pass
        _abort_uploads(ray, actor)
        if not remote.is_url(output) and not directory:
            import shutil

            shutil.rmtree(folder, ignore_errors=True)
        raise
    finally:
        try:
            ray.kill(actor)
        except Exception:  # noqa: BLE001
            pass


def _result(ray, ref, task: ShardTask):
    """A task's value, or its error as mapspec raises it: the task's own one-line error; a
    worker lost more often than retried is an OutputError naming the shard."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as exc:
        cause = getattr(exc, "cause", None)
        if isinstance(cause, MapspecError):
            raise cause from None
        if isinstance(cause, OSError):
            raise OutputError(f"{task.name}: {cause.strerror or cause}") from None
        raise OutputError(f"{task.name}: the Ray task failed ({type(cause).__name__}: "
                          f"{str(cause).splitlines()[0][:200] if cause else ''})") from None
    except (ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError, ray.exceptions.OwnerDiedError) as exc:
        raise OutputError(f"{task.name}: its Ray worker was lost {RETRIES + 1} times "
                          f"({type(exc).__name__}); nothing was written") from None


def _abort_uploads(ray, actor) -> None:
    """Abort every upload a task began, the ones of workers that died included."""
    from ..formats import objects

    try:
        _, uploads = ray.get(actor.state.remote(), timeout=30)
    except Exception:  # noqa: BLE001 - the actor is gone: nothing known to abort
        return
    for pending in uploads:
        objects.abort(pending)


def _finish_objects(out, plan, fmt, tasks, actor, files: Mapping | None):
    from ..formats import objects
    from .shards import index_of

    def finish(results) -> None:
        ray = _ray()
        kept = {p.upload_id for sent in results for p in sent if p.upload_id}
        for sent in results:
            for pending in sent:
                out.add(pending)
        _, begun = ray.get(actor.state.remote())
        for pending in begun:  # uploads of attempts that died: never completed
            if pending.upload_id and pending.upload_id not in kept:
                objects.abort(pending)
        out.commit(index_of(plan, fmt, tasks), extra=files)

    return finish


def _finish_local(atomic, folder: Path, plan, fmt, tasks, directory: bool, files: Mapping | None):
    from ..formats.model_dir import write_files
    from .shards import index_of

    def finish(results) -> None:
        names = {t.name for t in tasks}
        for stray in folder.iterdir():  # .part files of attempts whose worker died
            if stray.name not in names and not stray.name.endswith(".mapspec.json"):
                stray.unlink()
        if files:
            write_files(folder, files)
        index = index_of(plan, fmt, tasks)
        if index is not None:
            (folder / index[0]).write_bytes(index[1])
        if not directory:
            import os
            import shutil

            (name,) = names
            os.replace(folder / name, atomic.tmp)
            for side in folder.iterdir():  # a sidecar (.params, .wts) goes beside the output
                os.replace(side, atomic.final.with_name(side.name.replace(name, atomic.final.name, 1)))
            shutil.rmtree(folder, ignore_errors=True)
        atomic.commit()

    return finish

