"""Generators of the hostile-input classes that are not corrupt bytes: paths that cannot be
resolved, numbers past Python's integer-string limit, and specs that are huge or nested
deep. Each yields `Case`s for `harness.Runner`, seeded, so a finding is reproducible from
its name. (The fourth class, errors quoting a file's bytes, is a rule the harness applies
to every case: one printable line of bounded length.)"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Iterator

from .harness import IDENTITY, LIMITS, Case

LIMIT_DIGITS = 4300  # Python's default int-string limit (sys.get_int_max_str_digits)


def _checkpoint(path: Path, keys: dict[str, tuple[int, ...]] | None = None) -> Path:
    """A small safetensors file (written by mapspec's own writer: no library needed)."""
    import numpy as np

    from mapspec.formats import open_sink
    from mapspec.core.tensorinfo import TensorInfo

    keys = keys or {"layers.0.w": (2, 2), "layers.1.w": (2, 2)}
    sink = open_sink(path, "safetensors", {k: TensorInfo(s, "float32") for k, s in keys.items()})
    for k, s in keys.items():
        sink.write(k, np.arange(int(np.prod(s)), dtype=np.float32).reshape(s))
    sink.commit()
    return path


def _folder(base: Path, name: str) -> Path:
    folder = base / name
    folder.mkdir(parents=True)
    (folder / "identity.map").write_text(IDENTITY)
    (folder / "out").mkdir()
    return folder


# ------------------------------------------------------------------ paths

BADNESS = ("loop", "nul", "long", "folder", "missing_parent", "no_permission", "file_as_folder", "dangling")
ROLES = ("source", "output", "target", "config", "spec", "include", "shard", "against", "draft_source",
         "draft_target", "draft_output", "invert_output", "fmt", "index")


def _bad_path(folder: Path, badness: str, reading: bool, rng: random.Random) -> str:
    """A path (relative to `folder`) that cannot be used as asked, made real on disk."""
    if badness == "loop":
        os.symlink("loop_b", folder / "loop_a")
        os.symlink("loop_a", folder / "loop_b")
        return rng.choice(["loop_a", "loop_a/x.safetensors"])
    if badness == "nul":
        return rng.choice(["a\0b.safetensors", "\0", "out/x\0.safetensors"])
    if badness == "long":
        n = rng.choice([256, 300, 5000])
        return rng.choice(["n" * n + ".safetensors", "d" * n + "/x.safetensors"])
    if badness == "folder":
        (folder / "a_folder.safetensors").mkdir()
        return "a_folder.safetensors"
    if badness == "missing_parent":
        return rng.choice(["no/such/folder/x.safetensors", "nofolder/x.safetensors"])
    if badness == "no_permission":
        locked = folder / "locked"
        locked.mkdir()
        if reading:
            target = locked / "x.safetensors"
            target.write_bytes(b"not readable")
            target.chmod(0)
            return rng.choice(["locked/x.safetensors", "locked/x.safetensors"])
        locked.chmod(0o555)  # no writing in it
        return "locked/x.safetensors"
    if badness == "file_as_folder":
        (folder / "plain").write_text("a file")
        return "plain/x.safetensors"
    os.symlink("nowhere", folder / "dangling")  # a symlink to nothing
    return "dangling"


def path_cases(base: Path, seed: int, count: int) -> Iterator[Case]:
    """`count` commands, each given one bad path in one of the places mapspec takes a path
    (`ROLES`) with one kind of badness (`BADNESS`); the roles and kinds take turns."""
    for n in range(count):
        rng = random.Random(f"paths:{seed}:{n}")
        role = ROLES[n % len(ROLES)]
        badness = BADNESS[(n // len(ROLES) + seed) % len(BADNESS)]
        folder = _folder(base, f"path{n:05d}-{role}-{badness}")
        src = _checkpoint(folder / "m.safetensors")
        reading = role not in ("output", "draft_output", "invert_output")
        bad = _bad_path(folder, badness, reading, rng)
        out = "out/o.safetensors"
        allowed = (2,)
        inputs = [src]
        if role == "source":
            argv = ["apply", "identity.map", bad, "-o", out]
        elif role == "output":
            argv, out = ["apply", "identity.map", "m.safetensors", "-o", bad], bad
            if badness == "missing_parent":  # missing output folders are made: not an error
                argv[-1] = out = "out/" + bad
                allowed = (0,)
        elif role == "target":
            argv = ["apply", "identity.map", "m.safetensors", "-o", out, "--target", bad]
        elif role == "config":
            (folder / "p.map").write_text('mapspec 1\nparam n from "n" = 1\n{k:**} -> {k}\n')
            argv = ["apply", "p.map", "m.safetensors", "-o", out, "--config", bad]
        elif role == "spec":
            argv = ["apply", bad, "m.safetensors", "-o", out]
        elif role == "include":
            (folder / "inc.map").write_text(f"mapspec 1\ninclude {json.dumps(bad)}\n{{k:**}} -> {{k}}\n")
            argv = ["check", "inc.map"]
        elif role in ("shard", "index"):
            _checkpoint(folder / "s2.safetensors", {"layers.2.w": (2,)})
            index = {"metadata": {}, "weight_map": {"layers.0.w": "m.safetensors", "layers.2.w": bad}}
            (folder / "m.safetensors.index.json").write_text(json.dumps(index))
            argv = ["apply", "identity.map", "m.safetensors.index.json", "-o", out]
            if role == "index":
                argv = ["inspect", "m.safetensors.index.json"]
        elif role == "against":
            argv = ["verify", "identity.map", "m.safetensors", "--against", bad]
        elif role == "draft_source":
            argv = ["draft", bad, "m.safetensors"]
        elif role == "draft_target":
            argv = ["draft", "m.safetensors", bad]
        elif role == "draft_output":
            argv = ["draft", "m.safetensors", "m.safetensors", "-o", bad]
        elif role == "invert_output":
            argv = ["invert", "identity.map", "-o", bad]
        else:  # fmt
            argv = ["fmt", bad]
        if badness == "missing_parent" and role in ("draft_output", "invert_output"):
            allowed = (0, 2)  # made like apply's, or refused: either way one clean answer
        output = folder / "out" / out.split("/")[1] if out.startswith("out/") and argv[0] == "apply" else None
        yield Case(f"path {seed}:{n}: {badness} as {role}", folder, argv, inputs, output, allowed=allowed)


# ------------------------------------------------------------------ numbers

def _digits(rng: random.Random) -> str:
    n = rng.choice([LIMIT_DIGITS - 1, LIMIT_DIGITS + 1, 5000, 20_000, 100_000])
    return rng.choice("123456789") + "".join(rng.choice("0123456789") for _ in range(n - 1))


NUMBER_SPECS = [  # {N}: where the long number goes
    "mapspec 1\nlayers.{i:int}.w -> x.{i + N}.w\n",
    "mapspec 1\nlayers.{i:int}.w -> x.{i * N}.w\n",
    "mapspec 1\nlayers.{i:int}.w -> x.{i // N}.w\n",
    "mapspec 1\nlayers.{i:int}.w -> x.{i % N}.w\n",
    "mapspec 1\nlayers.{i:int}.w -> x.{i}.w then view(N, -1)\n",
    "mapspec 1\nlayers.{i:int}.w -> x.{i}.w then chunk(N, 0)\n",
    "mapspec 1\nlayers.{i:int}.w -> x.{i}.w then expect(N, 2)\n",
    "mapspec 1\nlayers.N.w -> x.w\n{k:**} -> {k}\n",
    "mapspec N\n{k:**} -> {k}\n",
    'mapspec 1\nparam n = N\nlayers.{i:int}.w -> x.{i + n}.w\n',
    'mapspec 1\nlet n = N\nlayers.{i:int}.w -> x.{i + n}.w\n',
    'mapspec 1\nparam n from "n"\nlayers.{i:int}.w -> x.{i + n}.w\n',
    "mapspec 1\ntable t {\n  N = a\n}\nlayers.{i in t}.w -> x.{t[i]}.w\n",
    "mapspec 1\nlayers.{i:int}.w -> x.{i}.w then split((N, 1))\n",
]


def number_cases(base: Path, seed: int, count: int) -> Iterator[Case]:
    """Numbers of thousands of digits in a spec, a key, a --config, a -p value, an option."""
    for n in range(count):
        rng = random.Random(f"numbers:{seed}:{n}")
        big = _digits(rng)
        folder = _folder(base, f"num{n:05d}")
        kind = n % 4
        key_big = kind == 1
        keys = {f"layers.{big if key_big else 0}.w": (2, 2), "layers.1.w": (2, 2)}
        src = _checkpoint(folder / "m.safetensors", keys)
        template = NUMBER_SPECS[(n // 4) % len(NUMBER_SPECS)]
        spec = folder / "s.map"
        out = "out/o.safetensors"
        if kind == 0:  # in the spec
            spec.write_text(template.replace("N", big))
            argv = ["apply", "s.map", "m.safetensors", "-o", out, "--non-strict"]
        elif kind == 1:  # in a key the spec captures
            spec.write_text(template.replace("N", str(rng.choice([1, 2, 3]))))
            argv = ["apply", "s.map", "m.safetensors", "-o", out, "--non-strict"]
            if rng.random() < 0.3:
                argv = rng.choice([["draft", "m.safetensors", "m.safetensors"], ["inspect", "m.safetensors"],
                                   ["invert", "s.map", "m.safetensors"], ["verify", "s.map", "m.safetensors"]])
        elif kind == 2:  # in a --config or a -p value
            spec.write_text('mapspec 1\nparam n from "n" = 1\nlayers.{i:int}.w -> x.{i + n}.w\n')
            (folder / "c.json").write_text(rng.choice(['{"n": %s}', '{"n": [%s]}', '{"n": -%s}', '{"n": %s.5}'])
                                           % big)
            argv = ["apply", "s.map", "m.safetensors", "-o", out, "--non-strict"]
            argv += ["--config", "c.json"] if rng.random() < 0.6 else ["-p", f"n={big}"]
        else:  # in a numeric option
            spec.write_text(IDENTITY)
            argv = rng.choice([
                ["apply", "s.map", "m.safetensors", "-o", out, "--max-shard-size", big],
                ["apply", "s.map", "m.safetensors", "-o", out, "--max-shard-size", big + "MB"],
                ["apply", "s.map", "m.safetensors", "-o", out, "--epoch", big],
                ["explain", "s.map", "m.safetensors", "--prefer-alternative", big],
                ["explain", "s.map", "m.safetensors", "--prefer-alternative", f"{big}:1"],
                ["verify", "s.map", "m.safetensors", "--worst", big],
                ["verify", "s.map", "m.safetensors", "--against", "m.safetensors", "--atol", big],
            ])
        yield Case(f"number {seed}:{n} ({len(big)} digits, {argv[0]}, kind {kind})", folder, argv, [src, spec],
                   folder / "out" / "o.safetensors" if argv[0] == "apply" else None,
                   allowed=(0, 1, 2) if kind == 1 else (0, 2))


# ------------------------------------------------------------------ huge and deep specs

def _huge_spec(rng: random.Random) -> str:
    depth = rng.choice([150, 1000, 5000, 50_000])
    parts = rng.choice([1000, 5000, 20_000])
    shape = rng.randrange(12)
    if shape == 0:  # an expression nested deep in parentheses
        return f"mapspec 1\nlayers.{{i:int}}.w -> x.{{{'(' * depth}i{')' * depth}}}.w\n"
    if shape == 1:  # a long chain of operators
        return f"mapspec 1\nlayers.{{i:int}}.w -> x.{{{' + '.join(['i'] * depth)}}}.w\n"
    if shape == 2:  # unary minus, nested
        return f"mapspec 1\nlayers.{{i:int}}.w -> x.{{{'-' * depth}i}}.w\n"
    if shape == 3:  # a template with thousands of parts
        caps = ".".join(f"{{p{j}:*}}" for j in range(parts))
        return f"mapspec 1\nl.{caps} -> m.{'.'.join(f'{{p{j}}}' for j in range(parts))}\n"
    if shape == 4:  # thousands of literal parts and alternatives
        return f"mapspec 1\nl.{{x:{'|'.join(f'a{j}' for j in range(parts))}}}.w -> m.{{x}}.w\n"
    if shape == 5:  # a spec of a hundred thousand lines
        lines = rng.choice([20_000, 100_000])
        return "mapspec 1\n" + "".join(f"a{j}.w -> b{j}.w\n" for j in range(lines)) + "{k:**} -> {k}\n"
    if shape == 6:  # a view of thousands of dimensions, nested tuples
        return f"mapspec 1\nlayers.{{i:int}}.w -> x.{{i}}.w then view({'(' * depth}2{',)' * depth})\n"
    if shape == 7:
        return f"mapspec 1\nlayers.{{i:int}}.w -> x.{{i}}.w then view({', '.join(['1'] * parts)}, 4)\n"
    if shape == 8:  # thousands of actions
        return f"mapspec 1\nlayers.{{i:int}}.w -> x.{{i}}.w{' then transpose()' * parts}\n"
    if shape == 9:  # a table of thousands of entries
        entries = "".join(f"  k{j} = v{j}\n" for j in range(parts))
        return f"mapspec 1\ntable t {{\n{entries}}}\nlayers.{{i:int}}.{{p in t}} -> x.{{i}}.{{t[p]}}\n{{k:**}} -> {{k}}\n"
    if shape == 10:  # a let nested in lets
        lets = "".join(f"let v{j} = v{j - 1} + 1\n" for j in range(1, min(depth, 5000)))
        return f"mapspec 1\nlet v0 = 0\n{lets}layers.{{i:int}}.w -> x.{{i}}.w\n"
    return f"mapspec 1\nlayers.{{i:int}}.w -> x.{{i}}.w then view({'(' * depth}{')' * depth})\n"


def huge_spec_cases(base: Path, seed: int, count: int) -> Iterator[Case]:
    """Specs of thousands of parts, thousands of levels, a hundred thousand lines: each
    works within bounds or is a `file:line:col` error."""
    for n in range(count):
        rng = random.Random(f"huge:{seed}:{n}")
        folder = _folder(base, f"huge{n:05d}")
        src = _checkpoint(folder / "m.safetensors")
        spec = folder / "s.map"
        spec.write_text(_huge_spec(rng))
        command = rng.choice([["check", "s.map"], ["apply", "s.map", "m.safetensors", "-o", "out/o.safetensors",
                                                    "--non-strict"], ["fmt", "s.map"], ["invert", "s.map"]])
        # fmt rewrites the spec (not an input that must stay unchanged); a spec of 100,000
        # lines takes seconds per pass (about 10 to check, 30 to invert here): more time.
        yield Case(f"huge spec {seed}:{n} ({command[0]})", folder, command, [src] + ([spec] if command[0] != "fmt" else []),
                   folder / "out" / "o.safetensors" if command[0] == "apply" else None, allowed=(0, 1, 2),
                   limits=dict(LIMITS, cpu=90, wall=300))
