"""`mapspec inspect` and automatic sub-tree selection on training checkpoints."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from mapspec import apply
from mapspec.cli import app
from mapspec.formats import open_source

torch = pytest.importorskip("torch")
runner = CliRunner()

PACKAGE = textwrap.dedent("""
    import torch
    class DetectionModel(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8))
            self.register_buffer("anchors", torch.arange(6.0).reshape(3, 2))
    class IterableSimpleNamespace:
        def __init__(self, **kw):
            self.__dict__.update(kw)
""")


@pytest.fixture
def yolo_checkpoint(tmp_path):
    """An Ultralytics-style training checkpoint, written by a package that is then gone."""
    pkg = tmp_path / "pkg" / "fakeultra"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "tasks.py").write_text(PACKAGE)
    script = textwrap.dedent(f"""
        import sys, numpy as np, torch
        sys.path.insert(0, {str(tmp_path / 'pkg')!r})
        from fakeultra.tasks import DetectionModel, IterableSimpleNamespace
        torch.manual_seed(0)
        ema = DetectionModel().half()
        opt = torch.optim.SGD(ema.parameters(), lr=0.01, momentum=0.9)
        torch.save({{"epoch": 7, "best_fitness": np.float64(0.625), "model": None, "ema": ema, "updates": 90,
                    "optimizer": opt.state_dict(), "train_args": IterableSimpleNamespace(imgsz=640, epochs=100),
                    "date": "2026-11-22T10:00:00", "version": "8.3.0"}}, {str(tmp_path / 'last.pt')!r})
        torch.save(ema.float().state_dict(), {str(tmp_path / 'expected.pt')!r})
    """)
    subprocess.run([sys.executable, "-c", script], check=True)
    return tmp_path / "last.pt", torch.load(tmp_path / "expected.pt", weights_only=True)


def test_inspect_shows_a_yolo_checkpoint_without_its_package(yolo_checkpoint):
    path, expected = yolo_checkpoint
    r = runner.invoke(app, ["inspect", str(path), "--format", "json"])
    assert r.exit_code == 0, r.output
    info = json.loads(r.output)
    entries = info["content"]["entries"]
    assert entries["epoch"] == {"type": "value", "value": 7}
    assert entries["best_fitness"]["value"] == 0.625
    assert entries["model"]["value"] is None
    assert entries["ema"]["class"] == "fakeultra.tasks.DetectionModel"
    assert entries["ema"]["count"] == len(expected) and entries["ema"]["dtypes"] == {"float16": 7, "int64": 1}
    assert entries["optimizer"]["type"] == "optimizer" and entries["optimizer"]["param_groups"][0]["lr"] == 0.01
    assert entries["train_args"]["fields"] == {"imgsz": 640, "epochs": 100}
    assert entries["version"]["value"] == "8.3.0"
    assert info["auto_select"] == "ema"
    tree = runner.invoke(app, ["inspect", str(path)]).output
    assert "ema: fakeultra.tasks.DetectionModel (8 tensors" in tree and "epoch: 7" in tree


def test_yolo_ema_auto_selected_anchors_dropped_fp16_cast(yolo_checkpoint, tmp_path):
    path, expected = yolo_checkpoint
    spec = Path(__file__).resolve().parent.parent / "specs" / "yolov5_to_oneflow.map"
    report = apply(spec, path, tmp_path / "out.safetensors")
    assert report.selected == "ema" and "selected 'ema'" in report.summary()
    out = open_source(tmp_path / "out.safetensors")
    want = {k: v for k, v in expected.items() if not k.endswith("anchors")}
    assert set(out.infos()) == set(want)
    for k, v in want.items():
        assert out.infos()[k].dtype == ("int64" if k.endswith("num_batches_tracked") else "float32")
        np.testing.assert_array_equal(out.read(k), v.half().float().numpy() if v.is_floating_point() else v.numpy())


@pytest.mark.parametrize("layout,prefix", [("state_dict", "state_dict"), ("model_state_dict", "model_state_dict"),
                                           ("model", "model")])
def test_auto_select_common_layouts(tmp_path, layout, prefix):
    sd = {"fc.weight": torch.ones(2, 2)}
    torch.save({layout: sd, "optimizer": {"state": {}, "param_groups": []}, "epoch": 1}, tmp_path / "c.pt")
    src = open_source(tmp_path / "c.pt")
    assert list(src.infos()) == ["fc.weight"] and src.prefix == prefix
    assert list(open_source(tmp_path / "c.pt", select="").infos()) == [f"{prefix}.fc.weight"]


def test_plain_state_dict_is_not_reselected(tmp_path):
    torch.save({"model.weight": torch.ones(1)}, tmp_path / "c.pt")
    assert list(open_source(tmp_path / "c.pt").infos()) == ["model.weight"]
