"""Every shipped spec compiles and is canonically formatted; the bundled example converts."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mapspec import apply, check_spec, open_source, parse_spec
from mapspec.lang.formatter import format_text

from conftest import shipped_config, without

REPO = Path(__file__).resolve().parent.parent
SHIPPED = sorted((REPO / "specs").glob("*.map"))
ALL_SPECS = SHIPPED + sorted((REPO / "tests" / "data" / "specs" / "ok").glob("*.map"))


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_spec_checks_clean(path):
    check_spec(parse_spec(path), config=shipped_config(path))


@pytest.mark.parametrize("path", ALL_SPECS, ids=lambda p: p.name)
def test_fmt_is_idempotent_and_keeps_meaning(path):
    text = path.read_text()
    once = format_text(text, str(path))
    assert format_text(once, str(path)) == once
    before = parse_spec(path)
    after = parse_spec(text=once, name=str(path))
    assert _meaning(before) == _meaning(after)


def _meaning(spec):
    """The rule graph without positions or source spellings."""
    return without(spec.model_dump(exclude={"file"}), ("span", "text"))


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_specs_are_already_formatted(path):
    assert format_text(path.read_text(), str(path)) == path.read_text()


def test_quick_start_example_converts_to_fp32_without_prefix(tmp_path):
    out = tmp_path / "tiny.safetensors"
    report = apply(REPO / "specs" / "dataparallel_fp16.map",
                   REPO / "examples" / "resnet-tiny-dp-fp16.safetensors", out)
    assert report.written == 56
    src = open_source(REPO / "examples" / "resnet-tiny-dp-fp16.safetensors")
    res = open_source(out)
    assert all(not k.startswith("module.") for k in res.infos())
    assert res.infos()["fc.weight"].dtype == "float32"
    assert res.infos()["bn1.num_batches_tracked"].dtype == "int64"
    np.testing.assert_array_equal(res.read("layer1.0.conv1.weight"),
                                  src.read("module.layer1.0.conv1.weight").astype(np.float32))


def test_headline_dpn_example_converts_without_mxnet_and_loads_strictly(tmp_path):
    torch = pytest.importorskip("torch")
    from dpn_models import VARIANTS, torch_dpn

    out = tmp_path / "dpn68-tiny.pt"
    report = apply(REPO / "specs" / "dpn.map", REPO / "examples" / "dpn68-tiny", out, epoch=0)
    assert report.written == report.plan.source_count == 361
    model = torch_dpn(VARIANTS["dpn68"])
    state = torch.load(out, weights_only=True)
    model.load_state_dict({**model.state_dict(), **state}, strict=True)
    assert set(state) == {k for k in model.state_dict() if not k.endswith("num_batches_tracked")}
    assert tuple(state["classifier.weight"].shape)[-2:] == (1, 1)


def _run_without(modules: list[str], args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    code = ("import sys\n" + "".join(f"sys.modules[{m!r}] = None\n" for m in modules) +
            "from mapspec.cli import main\n" + f"sys.argv = ['mapspec'] + {args!r}\n" + "main()\n")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd)


def test_mxnet_to_safetensors_or_pt_needs_neither_torch_nor_mxnet(tmp_path):
    r = _run_without(["torch", "mxnet"], ["apply", str(REPO / "specs" / "dpn.map"), str(REPO / "examples" / "dpn68-tiny"),
                                          "--epoch", "0", "-o", str(tmp_path / "o.safetensors")], tmp_path)
    assert r.returncode == 0, r.stderr
    assert "Transferred 361/361 tensors" in r.stdout
    r = _run_without(["torch"], ["apply", str(REPO / "specs" / "dpn.map"), str(REPO / "examples" / "dpn68-tiny"),
                                 "--epoch", "0", "-o", str(tmp_path / "o.pt")], tmp_path)
    assert r.returncode == 0, r.stderr  # .pt is written natively
    torch = pytest.importorskip("torch")
    state = torch.load(tmp_path / "o.pt", weights_only=True)
    source = open_source(tmp_path / "o.safetensors")
    ref = {k: np.array(source.read(k)) for k in source.infos()}
    source.close()
    assert set(state) == set(ref)
    for k, v in ref.items():
        assert np.array_equal(state[k].numpy(), v), k
