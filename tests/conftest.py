import json
import os
from pathlib import Path

import pytest

from mapspec import TensorInfo

DATA = Path(__file__).parent / "data"
UPDATE = os.environ.get("MAPSPEC_UPDATE_GOLDEN") == "1"


def load_keys(path: Path) -> dict[str, TensorInfo]:
    raw = json.loads(path.read_text())
    return {k: TensorInfo(tuple(shape), dtype) for k, (shape, dtype) in raw.items()}


def golden(path: Path, actual: str) -> None:
    """Compare with a golden file; MAPSPEC_UPDATE_GOLDEN=1 rewrites it instead."""
    if UPDATE or not path.exists():
        if not UPDATE:
            pytest.fail(f"missing golden file {path}; run with MAPSPEC_UPDATE_GOLDEN=1 and review it")
        path.write_text(actual)
    assert actual == path.read_text()


def torch_zip(path: Path, pkl: bytes, entries: dict | None = None) -> Path:
    """A torch.save-shaped zip holding a hand-made pickle: archive/data.pkl plus archive/<name>."""
    import zipfile

    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", pkl)
        for k, v in (entries or {}).items():
            z.writestr(f"archive/{k}", v)
    return path


@pytest.fixture
def torch():
    return pytest.importorskip("torch")
