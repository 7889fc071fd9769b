"""Rank-sharded checkpoints: one file per tensor- (and pipeline-) parallel rank, seen as one
checkpoint whose keys carry the rank.

A spec says how its rank files are named with a `ranks` statement:

    ranks source "consolidated.{rank:02}.pth"
    ranks target "iter_{iteration:07}/mp_rank_{tp:02}/model_optim_rng.pt" | "iter_{iteration:07}/mp_rank_{tp:02}_{pp:03}/model_optim_rng.pt"

Each `{name}` that is a parameter of the spec stands for its value; the others are rank
coordinates (`:02` pads the number to two digits when writing). A file's key `K` is seen as
`C1/C2/.../K`, its coordinates in the order the names first appear (a name an alternative
lacks is 0): `3/layers.0.attention.wq.weight`, `1/0/decoder.layers.0.mlp.linear_fc1.weight`.
So a rule captures the rank like any other part of a key and merges over it
(`{rank:int}/layers.{i:int}.attention.wq.weight -> ... then concat(0, over=rank)`), and a
target template writes it (`{rank:int}/... then chunk(shards, 0, into=rank)`).

Reading checks the set of files before anything is compiled: every coordinate from 0 to the
largest present (a gap is an error naming the missing file), no rank twice, one naming
alternative for all. Each tensor is read lazily from its own rank's file."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Mapping, NamedTuple, Sequence

from ..core.lazy import numpy as np

from ..errors import CheckpointError, UsageError
from ..core.tensorinfo import TensorInfo
from .atomic import AtomicPath, abort_parts
from .protocol import Extent, SinkBase, SourceBase

# {name}, {name:WIDTH} (zero-padded when written), {name:WIDTH of COUNT} (COUNT ranks exactly:
# a parameter or a number)
_FIELD = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)(?::([0-9]{1,2}))?(?:[ \t]+of[ \t]+([A-Za-z_][A-Za-z0-9_]*|[0-9]+))?\}")
MAX_RANKS = 65_536  # files of one rank set


class Layout(NamedTuple):
    """The rank file names of a spec, its parameters substituted: `templates` are the naming
    alternatives, `names` the rank coordinates in key order."""

    templates: tuple[str, ...]
    names: tuple[str, ...]
    counts: Mapping[str, int] = {}  # coordinates whose number of ranks the spec states

    def fields(self, template: str) -> list[tuple[str, int]]:
        return [(m[1], int(m[2] or 0)) for m in _FIELD.finditer(template)]

    def regex(self, template: str) -> re.Pattern:
        out, pos = [], 0
        for m in _FIELD.finditer(template):
            out.append(re.escape(template[pos:m.start()]))
            out.append(f"(?P<{m[1]}>[0-9]{{1,9}})")
            pos = m.end()
        out.append(re.escape(template[pos:]))
        return re.compile("".join(out))

    def glob(self, template: str) -> str:
        return _FIELD.sub("*", template)

    def name(self, coords: Mapping[str, int], template: str | None = None) -> str:
        """The file of these coordinates (the first alternative that can name them)."""
        for t in (self.templates if template is None else (template,)):
            used = {n for n, _ in self.fields(t)}
            if all(coords.get(n, 0) == 0 for n in self.names if n not in used):
                return _FIELD.sub(lambda m: f"{coords.get(m[1], 0):0{int(m[2] or 0)}d}", t)
        raise UsageError(f"no rank file name of {' | '.join(self.templates)} can hold rank "
                         + ", ".join(f"{n} = {coords.get(n, 0)}" for n in self.names))

    def prefix(self, coords: Mapping[str, int]) -> str:
        return "".join(f"{coords.get(n, 0)}/" for n in self.names)

    def split_key(self, key: str) -> tuple[dict[str, int], str] | None:
        parts = key.split("/", len(self.names))
        if len(parts) <= len(self.names) or not all(p.isdigit() and len(p) <= 9 for p in parts[:-1]):
            return None
        return dict(zip(self.names, map(int, parts[:-1]))), parts[-1]


def layout(templates: Sequence[str], values: Mapping[str, Any]) -> Layout:
    """The layout of `ranks` templates with the spec's parameter values put in."""
    subst = []
    counts: dict[str, int] = {}
    for t in templates:
        def put(m: re.Match) -> str:
            if m[3] is not None:
                n = int(m[3]) if m[3].isdigit() else values.get(m[3])
                if not isinstance(n, int) or n < 1:
                    raise UsageError(f"rank file name {t}: '{m[3]}' is not a parameter giving a rank count")
                counts[m[1]] = n
            if m[1] not in values:
                return "{" + m[1] + (f":{m[2]}" if m[2] else "") + "}"
            v = values[m[1]]
            return f"{v:0{int(m[2] or 0)}d}" if isinstance(v, int) and m[2] else str(v)
        subst.append(_FIELD.sub(put, t))
    names: list[str] = []
    for t in subst:
        for m in _FIELD.finditer(t):
            if m[1] not in names:
                names.append(m[1])
    return Layout(tuple(subst), tuple(names), counts)


def _describe(lay: Layout, coords: Mapping[str, int]) -> str:
    return ", ".join(f"{n} {coords.get(n, 0)}" for n in lay.names)


def find_ranks(root: Path, lay: Layout) -> list[tuple[dict[str, int], Path]]:
    """The rank files under `root` (a directory; or one rank file, read alone), each with its
    coordinates, checked whole."""
    one = root if root.is_file() else None
    if one is not None:
        root = root.parent
    elif not root.is_dir():
        raise CheckpointError(f"{root}: no such directory (the spec reads rank files {' | '.join(lay.templates)})")
    found: dict[tuple[int, ...], Path] = {}
    used: set[str] = set()
    for template in lay.templates:
        rx = lay.regex(template)
        for path in ([one] if one is not None else sorted(root.glob(lay.glob(template)))):
            m = rx.fullmatch(path.relative_to(root).as_posix())
            if m is None or not path.is_file():
                continue
            used.add(template)
            coords = {n: int(m[n]) if n in m.groupdict() else 0 for n in lay.names}
            at = tuple(coords[n] for n in lay.names)
            if at in found:
                raise CheckpointError(f"{root}: {found[at].relative_to(root)} and {path.relative_to(root)} "
                                      f"both hold {_describe(lay, coords)}")
            if len(found) >= MAX_RANKS:
                raise CheckpointError(f"{root}: more than {MAX_RANKS:,} rank files")
            found[at] = path
    if not found:
        what = one.name if one is not None else root
        raise CheckpointError(f"{what}: no rank files named {' | '.join(lay.templates)}")
    if len(used) > 1:
        a, b = sorted(used)[:2]
        raise CheckpointError(f"{root}: rank files named both as {a} and as {b}; one checkpoint uses one naming")
    template = used.pop()
    for i, n in enumerate(lay.names):
        want = lay.counts.get(n)
        extra = next((p for at, p in sorted(found.items()) if want is not None and at[i] >= want), None)
        if extra is not None:
            raise CheckpointError(f"{root}: rank file {extra.relative_to(root)} is one too many: the spec gives "
                                  f"{want} value{'s' if want != 1 else ''} of {n}")
        top = max(at[i] for at in found) if want is None else want - 1
        have = {at[i] for at in found}
        for v in range(top + 1):
            if v not in have:
                coords = {m: 0 for m in lay.names} | {n: v}
                raise CheckpointError(f"{root}: rank file {lay.name(coords, template)} is missing "
                                      f"({n} runs 0..{top})")
    # every combination of the coordinates (tensor rank x pipeline stage) must be there
    import itertools

    tops = [lay.counts[n] - 1 if n in lay.counts else max(at[i] for at in found) for i, n in enumerate(lay.names)]
    for at in itertools.product(*(range(t + 1) for t in tops)):
        if at not in found:
            coords = dict(zip(lay.names, at))
            raise CheckpointError(f"{root}: rank file {lay.name(coords, template)} is missing")
    return [(dict(zip(lay.names, at)), found[at]) for at in sorted(found)]


class RankedSource(SourceBase):
    """The rank files of one checkpoint as one source: keys `C1/.../KEY`."""

    def __init__(self, root: Path, lay: Layout, select: str | None = None):
        from . import open_source

        self.path = root if root.is_dir() else root.parent
        self.layout = lay
        self._sources: list = []
        self._owner: dict[str, tuple[Any, str]] = {}
        self._infos: dict[str, TensorInfo] = {}
        try:
            ranks = find_ranks(root, lay)
            self.shards = tuple(p for _, p in ranks)
            for coords, path in ranks:
                source = open_source(path, select=select)
                self._sources.append(source)
                prefix = lay.prefix(coords)
                for key, info in source.infos().items():
                    self._owner[prefix + key] = (source, key)
                    self._infos[prefix + key] = info
        except BaseException:
            self.close()
            raise

    def infos(self) -> Mapping[str, TensorInfo]:
        return self._infos

    def read(self, key: str) -> np.ndarray:
        source, inner = self._owner[key]
        return source.read(inner)

    def read_into(self, key: str, out: np.ndarray) -> None:
        """`key`'s values into `out` (a view of the merged tensor being built)."""
        source, inner = self._owner[key]
        out[...] = source.read(inner)
        source.release(inner)

    def extent(self, key: str) -> Extent | None:
        source, inner = self._owner[key]
        return source.extent(inner)

    def read_rows(self, key: str, start: int, stop: int) -> np.ndarray | None:
        source, inner = self._owner[key]
        return source.read_rows(inner, start, stop)

    def release(self, key: str) -> None:
        source, inner = self._owner[key]
        source.release(inner)

    def where(self, key: str) -> str:
        """`key` as a user finds it: its file and its name there."""
        source, inner = self._owner[key]
        return f"'{inner}' of {Path(source.path).relative_to(self.path).as_posix()}"

    def close(self) -> None:
        for s in self._sources:
            s.close()
        self._sources = []


class RankedSink(SinkBase):
    """One file per rank in a new directory, which appears whole or not at all. Outputs are
    named `C1/.../KEY`; each file gets its keys, in plan order. `under` nests each file's
    tensors under that key with `extras` beside them (Megatron's {"model": ..., "iteration": N});
    `files` are small text files written beside the ranks (params.json, a tracker)."""

    def __init__(self, path: Path, lay: Layout, outputs: Mapping[str, TensorInfo], metadata=None,
                 files: Mapping[str, str] | None = None, under: str | None = None, extras: Mapping[str, Any] | None = None):
        from . import by_suffix

        self.final = Path(path)
        if self.final.exists() and not self.final.is_dir():
            raise UsageError(f"{self.final} is a file; rank files go to a directory")
        groups: dict[tuple[int, ...], dict[str, TensorInfo]] = {}
        self.route: dict[str, tuple[Any, str]] = {}
        names: dict[str, str] = {}
        for key, info in outputs.items():
            split = lay.split_key(key)
            if split is None:
                raise UsageError(f"output '{key}' names no rank; with `ranks target` every target starts with "
                                 + "/".join("{" + n + "}" for n in lay.names) + "/")
            coords, inner = split
            groups.setdefault(tuple(coords[n] for n in lay.names), {})[inner] = info
            names[key] = inner
        tops = [max((at[i] for at in groups), default=0) for i in range(len(lay.names))]
        for i, n in enumerate(lay.names):
            want = lay.counts.get(n)
            if want is not None and tops[i] + 1 != want:
                raise UsageError(f"the outputs name {n} 0..{tops[i]}, but the spec gives {want} ranks")
        import itertools

        for at in itertools.product(*(range(t + 1) for t in tops)):
            if at not in groups:
                raise UsageError(f"no output goes to rank {_describe(lay, dict(zip(lay.names, at)))} "
                                 f"({lay.name(dict(zip(lay.names, at)))})")
        # one naming alternative for the whole set: the first that can name every rank
        template = next((t for t in lay.templates if all(_names(lay, t, dict(zip(lay.names, at))) for at in groups)),
                        None)
        if template is None:
            raise UsageError(f"no one of {' | '.join(lay.templates)} names every rank written")
        self.atomic = AtomicPath(self.final, directory=True)
        self.sinks = []
        try:
            for at, group in sorted(groups.items()):
                rel = lay.name(dict(zip(lay.names, at)), template)
                fmt = by_suffix(Path(rel))
                if fmt is None:
                    raise UsageError(f"cannot tell the format of rank file {rel} from its name")
                target = self.atomic.tmp / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                if under is None:
                    sink = fmt.open_sink(target, group, metadata)
                elif fmt.name == "torch":
                    sink = fmt.sink(target, group, metadata, wrap=(under, dict(extras or {})))
                else:
                    raise UsageError(f"rank file {rel}: only torch files nest their tensors under '{under}'")
                self.sinks.append(sink)
                prefix = lay.prefix(dict(zip(lay.names, at)))
                for inner in group:
                    self.route[prefix + inner] = (sink, inner)
            self.files = dict(files or {})
        except BaseException:
            self.abort()
            raise

    def write(self, name: str, array: np.ndarray) -> None:
        sink, inner = self.route[name]
        sink.write(inner, array)

    def write_region(self, name: str, extent: Extent) -> bool:
        sink, inner = self.route[name]
        return sink.write_region(inner, extent)

    def commit(self) -> None:
        for sink in self.sinks:
            sink.commit()
        for rel, text in self.files.items():
            target = self.atomic.tmp / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text, "utf-8")
        self.atomic.commit()

    def abort(self) -> None:
        abort_parts(self.sinks, self.atomic)


def _names(lay: Layout, template: str, coords: Mapping[str, int]) -> bool:
    used = {n for n, _ in lay.fields(template)}
    return all(coords.get(n, 0) == 0 for n in lay.names if n not in used)
