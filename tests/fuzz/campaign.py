"""The cases: every hostile pickle in every container, seeded mutations of every seed file,
mutated specs, and the hostile-input classes of hostile.py (paths that cannot be resolved,
numbers past the int-string limit, huge and deeply nested specs). Each generator yields
`Case`s ready for `harness.Runner.run`."""

from __future__ import annotations

import random
import shutil
from pathlib import Path
from typing import Iterator

from .harness import IDENTITY, Case
from .hostile import huge_spec_cases, number_cases, path_cases
from .mutate import mutate_file, mutate_folder, mutate_text
from .pickles import CONTAINERS, TECHNIQUES, write_case
from .seeds import oracle_format, write_seeds

__all__ = ["pickle_cases", "mutation_cases", "spec_cases", "path_cases", "number_cases", "huge_spec_cases"]

ROOT = Path(__file__).resolve().parents[2]
SECRET = b"SECRET-OUTSIDE-THE-CHECKPOINT-" * 4  # bytes of a file no checkpoint may reach


def _folder(base: Path, name: str) -> Path:
    folder = base / name
    folder.mkdir(parents=True)
    (folder / "identity.map").write_text(IDENTITY)
    return folder


def pickle_cases(base: Path, quick: bool = False) -> Iterator[Case]:
    """Every technique in every container, converted (apply) or inspected; `quick`: each
    technique once, the containers taking turns."""
    for i, t in enumerate(TECHNIQUES):
        for container in (CONTAINERS[i % len(CONTAINERS)],) if quick else CONTAINERS:
            folder = _folder(base, f"pickle{i:03d}-{container}")
            marker = folder / "MARKER"
            path = write_case(t, container, str(marker), folder)
            command = ["apply", "identity.map", path.name, "-o", "out/out.safetensors", "--non-strict"] \
                if (i + len(container)) % 3 else ["inspect", path.name, "--format", "json"]
            yield Case(f"pickle[{t.name}] in {container} ({command[0]})", folder, command, [path],
                       folder / "out" / "out.safetensors" if command[0] == "apply" else None, marker=marker)


def mutation_cases(base: Path, seed: int, count: int) -> Iterator[Case]:
    """`count` mutations, spread over the seed files round-robin."""
    seeds = write_seeds(base / "seeds")
    names = sorted(seeds)
    outside = base / "outside.bin"
    outside.write_bytes(SECRET)
    for n in range(count):
        rng = random.Random(f"{seed}:{n}")
        kind = names[n % len(names)]
        folder = _folder(base, f"mut{n:05d}-{kind}")
        src = seeds[kind]
        path = folder / src.name
        if src.is_dir():
            shutil.copytree(src, path, symlinks=True)
            mutate_folder(path, rng, outside)
        else:
            shutil.copyfile(src, path)
            mutate_file(path, kind, rng)
        fmt = oracle_format(kind)
        out = folder / "out" / "out.safetensors"
        command = ["apply", "identity.map", path.name, "-o", "out/out.safetensors", "--non-strict"]
        if n % 5 == 4:
            command, out = ["inspect", path.name, "--format", "json" if n % 2 else "tree"], None
        yield Case(f"mutation {seed}:{n} of {kind} ({command[0]})", folder, command, [path], out,
                   oracle=(fmt, path) if fmt and out is not None else None)


def spec_seeds() -> list[Path]:
    return sorted((ROOT / "tests" / "data" / "specs" / "ok").glob("*.map")) + sorted((ROOT / "specs").glob("*.map"))


def spec_cases(base: Path, seed: int, count: int) -> Iterator[Case]:
    """`count` mutated specs, each compiled alone (`check`)."""
    seeds = spec_seeds()
    for n in range(count):
        rng = random.Random(f"spec:{seed}:{n}")
        src = seeds[n % len(seeds)]
        folder = _folder(base, f"spec{n:05d}-{src.stem}")
        for sub in ("common",):  # includes resolve beside the spec
            if (src.parent / sub).is_dir():
                shutil.copytree(src.parent / sub, folder / sub)
        path = folder / src.name
        path.write_bytes(mutate_text(src.read_text(), rng).encode("utf-8", "surrogatepass"))
        yield Case(f"spec mutation {seed}:{n} of {src.name}", folder, ["check", path.name], [path])
