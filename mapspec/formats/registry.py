"""The format registry: what mapspec knows about each checkpoint format, in one record.

Every format module ends with one `FORMAT = Format(...)` entry; `formats/__init__.py` lists
the modules. Suffix lookup, sniffing, `--to` names, help texts and error messages all read
from here, so adding a format is one module plus one name in that list."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

HEAD_BYTES = 16  # how much of a file sniffers see


@dataclass(frozen=True)
class Format:
    name: str                              # the canonical name (`--to` accepts it and `aliases`)
    description: str                       # one phrase for help texts
    suffixes: tuple[str, ...]              # file suffixes, lowercase, with the dot
    source: type                           # class(path) -> Source
    sink: type                             # class(path, outputs, metadata) -> Sink
    dtypes: frozenset[str]                 # the tensor dtypes it can hold
    aliases: tuple[str, ...] = ()
    # Does this file (or directory) hold this format? `head` is its first HEAD_BYTES bytes
    # (empty for a directory). Sniffers run in registry order; the first yes wins.
    sniff: Optional[Callable[[Path, bytes], bool]] = None
    directory: bool = False                # a checkpoint of this format is a directory
    # How transformers names it in a model directory: (single file, shard stem, index file),
    # e.g. ("model.safetensors", "model", "model.safetensors.index.json"); None: not sharded.
    hf_layout: Optional[tuple[str, str, str]] = None
    # The sink can place a tensor copied file-to-file at its source offset modulo 64 KiB;
    # it then takes `copied_from={output: source byte offset}` (see `base.GRANULE`).
    places_copies: bool = False

    def open_sink(self, path: Path, outputs, metadata=None, copied_from=None):
        """`sink(path, outputs, metadata)`, told where copied tensors come from if it can use that."""
        if self.places_copies and copied_from:
            return self.sink(path, outputs, metadata, copied_from={k: v for k, v in copied_from.items() if k in outputs})
        return self.sink(path, outputs, metadata)

    @property
    def names(self) -> tuple[str, ...]:
        return (self.name, *self.aliases)
