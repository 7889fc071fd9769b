import json
import os
from pathlib import Path

import pytest

from mapspec import TensorInfo

DATA = Path(__file__).parent / "data"
UPDATE = os.environ.get("MAPSPEC_UPDATE_GOLDEN") == "1"
LLAMA = DATA / "specs" / "invert" / "llama_like.map"  # HF -> Meta: rotary q/k with GQA, a tied head, a catch-all


def meta_to_hf(torch, w, heads: int):
    """The permutation transformers' convert_llama_weights_to_hf.py applies to q and k (Meta -> HF),
    written here in torch."""
    dim1, dim2 = w.shape
    return w.view(heads, dim1 // heads // 2, 2, dim2).transpose(1, 2).reshape(dim1, dim2)


def load_keys(path: Path) -> dict[str, TensorInfo]:
    raw = json.loads(path.read_text())
    return {k: TensorInfo(tuple(shape), dtype) for k, (shape, dtype) in raw.items()}


def without(value, fields: tuple[str, ...]):
    """A model_dump() with these fields left out at every depth (positions, spellings)."""
    if isinstance(value, dict):
        return {k: without(v, fields) for k, v in value.items() if k not in fields}
    if isinstance(value, (list, tuple)):
        return [without(v, fields) for v in value]
    return value


def golden(path: Path, actual: str) -> None:
    """Compare with a golden file; MAPSPEC_UPDATE_GOLDEN=1 rewrites it instead."""
    if UPDATE or not path.exists():
        if not UPDATE:
            pytest.fail(f"missing golden file {path}; run with MAPSPEC_UPDATE_GOLDEN=1 and review it")
        path.write_text(actual)
    assert actual == path.read_text()


@pytest.fixture
def torch():
    return pytest.importorskip("torch")
