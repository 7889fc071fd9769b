"""`mapspec verify --against`: a conversion compared key by key with a reference produced
another way; exact, or within --atol/--rtol; the worst tensors named with their rule."""

from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from mapspec import verify_against
from mapspec.cli import app
from mapspec.formats import open_sink
from mapspec.compile.plan import TensorInfo

runner = CliRunner()
SPEC = "mapspec 1\nw.{i:int} -> v.{i} then transpose()\nb.{i:int} -> c.{i}\n"


def write(path: Path, tensors: dict) -> Path:
    dtypes = {k: "bfloat16" if a.dtype == np.uint16 else str(a.dtype) for k, a in tensors.items()}
    sink = open_sink(path, path.suffix.lstrip("."),
                     {k: TensorInfo(a.shape, dtypes[k]) for k, a in tensors.items()})
    for k, a in tensors.items():
        sink.write(k, a)
    sink.commit()
    return path


def setup(tmp_path, **changes):
    rng = np.random.default_rng(0)
    src = {"w.0": rng.standard_normal((2, 3)).astype(np.float32), "b.0": rng.standard_normal(3).astype(np.float32)}
    write(tmp_path / "in.safetensors", src)
    ref = {"v.0": src["w.0"].T.copy(), "c.0": src["b.0"].copy()}
    ref.update(changes)
    ref = {k: v for k, v in ref.items() if v is not None}
    write(tmp_path / "ref.npz", ref)
    (tmp_path / "s.map").write_text(SPEC)
    return src, ref


def run(tmp_path, *extra):
    return runner.invoke(app, ["verify", str(tmp_path / "s.map"), str(tmp_path / "in.safetensors"),
                               "--against", str(tmp_path / "ref.npz"), *map(str, extra)])


def test_equal_reference_passes_with_a_table_per_rule(tmp_path):
    setup(tmp_path)
    r = run(tmp_path)
    assert r.exit_code == 0, r.output
    assert "s.map:2" in r.output and "s.map:3" in r.output
    assert "ok: 2 tensors, 2 bit-exact" in r.output


def test_a_difference_names_the_tensor_and_its_rule(tmp_path):
    src, _ = setup(tmp_path, **{"c.0": None})
    ref_c = src["b.0"] + np.float32(1e-3)
    write(tmp_path / "ref.npz", {"v.0": src["w.0"].T.copy(), "c.0": ref_c})
    r = run(tmp_path)
    assert r.exit_code == 1
    assert "DIFFERS: c.0 (s.map:3): max abs diff 0.001" in r.output
    r = run(tmp_path, "--atol", "1e-2")
    assert r.exit_code == 0, r.output
    assert "within tolerance: c.0 (s.map:3)" in r.output and "1 within tolerance" in r.output
    r = run(tmp_path, "--rtol", "1e-9")
    assert r.exit_code == 1


def test_key_set_mismatch_fails(tmp_path):
    src, _ = setup(tmp_path, **{"c.0": None, "extra.0": np.zeros(2, np.float32)})
    r = run(tmp_path)
    assert r.exit_code == 1
    assert "MISSING: extra.0 is in the reference but not produced" in r.output
    assert "EXTRA: c.0 is produced but not in the reference" in r.output


def test_dtype_and_shape_differences_are_differences(tmp_path):
    src, _ = setup(tmp_path, **{"c.0": np.zeros(3, np.float64), "v.0": np.zeros((2, 3), np.float32)})
    result = verify_against(tmp_path / "s.map", tmp_path / "in.safetensors", tmp_path / "ref.npz", atol=1e9)
    notes = {c.name: c.note for c in result.checks}
    assert notes == {"c.0": "dtype float32 vs float64", "v.0": "shape (3, 2) vs (2, 3)"}
    assert not result.ok


def test_nan_and_bf16_compare_by_value(tmp_path):
    setup(tmp_path)
    nan = np.array([np.nan, 1.0, -np.inf], np.float32)
    write(tmp_path / "in.safetensors", {"w.0": np.zeros((1, 1), np.float32), "b.0": nan})
    write(tmp_path / "ref.npz", {"v.0": np.zeros((1, 1), np.float32), "c.0": nan.copy()})
    assert run(tmp_path).exit_code == 0
    write(tmp_path / "ref.npz", {"v.0": np.zeros((1, 1), np.float32), "c.0": np.array([0, 1, -np.inf], np.float32)})
    r = run(tmp_path, "--atol", "1")
    assert r.exit_code == 1 and "NaN where the reference has none" in r.output


def test_round_trip_refuses_tolerances(tmp_path):
    setup(tmp_path)
    r = runner.invoke(app, ["verify", str(tmp_path / "s.map"), str(tmp_path / "in.safetensors"), "--atol", "1"])
    assert r.exit_code == 2 and "bit-exact" in r.output
