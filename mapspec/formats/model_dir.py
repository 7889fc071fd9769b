"""Model directories in, model directories out: the files beside the weights.

A Hugging Face model directory holds more than tensors: `config.json`,
`generation_config.json`, tokenizer files, a chat template, a README. When a conversion reads
a model directory and writes one, those files are carried over byte for byte, except
`config.json`, which is rewritten to describe what the output is: the plan says how (a
`ConfigPatch`: keys set or removed, e.g. `quantization_config` removed after dequantizing,
written after quantizing, and the model's dtype). Nothing else in it changes: other keys keep
their values and their order.

The files are written into the output directory's temporary folder with the shards, so they
appear with them, all at once, or not at all (see `sharded.ShardedSink`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping

from ..core.modelconfig import ConfigPatch
from ..errors import CheckpointError

CONFIG = "config.json"
# The keys transformers reads a model's dtype from (5.x writes `dtype`; older `torch_dtype`).
DTYPE_KEYS = ("dtype", "torch_dtype")
MAX_CONFIG = 10_000_000  # bytes; a config is a small JSON object


def patched(text: bytes, patch: ConfigPatch, where: str) -> bytes:
    """`config.json`'s bytes with `patch` applied; the same bytes when it changes nothing."""
    try:
        config = json.loads(text.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise CheckpointError(f"{where}: not a JSON config ({str(exc)[:120]})") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{where}: a config must be a JSON object")
    before = json.dumps(config)
    for key in patch.remove:
        config.pop(key, None)
    config.update(patch.set)
    if patch.dtype:
        for key in DTYPE_KEYS:
            if key in config:
                config[key] = patch.dtype
    if json.dumps(config) == before:
        return text
    # transformers' own layout: two-space indent, one key per line, a final newline
    return (json.dumps(config, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


def companions(model_dir: Path) -> list[Path]:
    """The files of a model directory that are not its weights: every regular file at its
    top level (symlinks followed, as in the hub's cache) except checkpoint files, shard
    indexes, mapspec's sidecars and hidden files."""
    from .registry import by_suffix

    out = []
    for p in sorted(model_dir.iterdir(), key=lambda p: p.name):
        name = p.name
        if name.startswith(".") or name.endswith((".index.json", ".mapspec.json")) or not p.is_file():
            continue
        if by_suffix(p) is not None:
            continue
        out.append(p)
    return out


def carried_files(model_dir: Path, patch: ConfigPatch) -> dict[str, bytes | Path]:
    """What goes beside the output's shards: file name -> its bytes (a rewritten config, or
    a file of a folder on object storage, fetched now: before any tensor moves) or the local
    path to copy byte for byte."""
    files: dict[str, bytes | Path] = {}
    for p in companions(model_dir):
        if p.name == CONFIG and patch:
            if p.stat().st_size > MAX_CONFIG:
                raise CheckpointError(f"{p}: {p.stat().st_size} bytes, too large for a model config")
            text = p.read_bytes()
            new = patched(text, patch, str(p))
            files[p.name] = p if new is text and isinstance(p, Path) else new
        else:
            files[p.name] = p if isinstance(p, Path) else p.read_bytes()
    return files


def write_files(folder: Path, files: Mapping[str, bytes | Path]) -> None:
    """Each file into `folder` (the output's temporary directory), copied by the kernel."""
    import shutil

    for name, content in files.items():
        if isinstance(content, Path):
            shutil.copyfile(content, folder / name)
        else:
            (folder / name).write_bytes(content)


def model_dir_of(checkpoint) -> Path | None:
    """The model directory a checkpoint argument names, if it names one (not a list or glob
    of shards, not a file, not a format whose checkpoints are directories)."""
    if isinstance(checkpoint, (list, tuple)):
        return None
    from .reading import location

    path = location(checkpoint)  # a folder on object storage is one too, listed and read through fsspec
    if not path.is_dir():
        return None
    from .registry import formats

    if any(f.directory and f.sniff(path, b"") for f in formats()):
        return None
    return path
