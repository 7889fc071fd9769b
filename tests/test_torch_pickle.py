"""The restricted .pt reader: same tensors as torch.load, no code run, no torch needed."""

import subprocess
import sys
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest

from conftest import torch_zip
from mapspec.errors import CheckpointError
from mapspec.formats import open_source

REPO = Path(__file__).resolve().parent.parent
torch = pytest.importorskip("torch")


def as_numpy(t):
    return t.view(torch.int16).numpy().view(np.uint16) if t.dtype == torch.bfloat16 else t.numpy()


def sample_state():
    g = torch.Generator().manual_seed(0)
    base = torch.randn(4, 6, generator=g)
    return OrderedDict(
        w=base, wt=base.t(), row=base[2], strided=base[:, ::2],
        h=torch.randn(5, generator=g).half(), bf=torch.randn(3, generator=g).bfloat16(),
        i=torch.arange(7), b=torch.tensor([True, False]), s=torch.tensor(3.5), e=torch.zeros(0, 3),
        p=torch.nn.Parameter(torch.ones(2)),
    )


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_reads_what_torch_load_reads(tmp_path, zip_format):
    state = sample_state()
    torch.save({"model": state, "epoch": 4, "best_fitness": np.float64(0.7)}, tmp_path / "c.pt",
               _use_new_zipfile_serialization=zip_format)
    ref = torch.load(tmp_path / "c.pt", weights_only=False)["model"]
    src = open_source(tmp_path / "c.pt", select="model")
    assert list(src.infos()) == list(ref)
    for k, t in ref.items():
        assert src.infos()[k].shape == tuple(t.shape)
        np.testing.assert_array_equal(src.read(k), as_numpy(t.detach()))


def test_pickled_module_yields_its_state_dict(tmp_path):
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Linear(4, 2))
    net[1].register_buffer("scratch", torch.ones(1), persistent=False)
    net[1].register_buffer("anchors", torch.arange(6.0).reshape(3, 2))
    torch.save({"model": net.half(), "ema": None, "epoch": -1}, tmp_path / "yolo.pt")
    src = open_source(tmp_path / "yolo.pt", select="model")
    sd = net.state_dict()
    assert list(src.infos()) == list(sd)
    for k, t in sd.items():
        np.testing.assert_array_equal(src.read(k), t.numpy())


def test_reading_needs_no_torch(tmp_path):
    torch.save({"a": torch.ones(3), "m": torch.nn.Linear(2, 2)}, tmp_path / "c.pt")
    code = ("import sys; sys.modules['torch'] = None\n"
            "from mapspec.formats import open_source\n"
            f"s = open_source({str(tmp_path / 'c.pt')!r})\n"
            "print(sorted(s.infos()), float(s.read('a').sum()))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['a', 'm.bias', 'm.weight'] 3.0"


@pytest.mark.parametrize("target", ["os.system", "posix.system", "subprocess.call", "builtins.exec",
                                    "builtins.eval", "builtins.getattr"])
def test_dangerous_globals_are_refused_by_name_and_never_run(tmp_path, target):
    marker = tmp_path / "PWNED"
    module, name = target.split(".")
    payload = (b"\x80\x02c" + module.encode() + b"\n" + name.encode() + b"\nq\x00X"
               + len(f"touch {marker}").to_bytes(4, "little") + f"touch {marker}".encode() + b"\x85R.")
    path = tmp_path / "evil.pt"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", payload)
    with pytest.raises(CheckpointError, match=f"refusing to unpickle: the file calls {module}.{name}"):
        open_source(path)
    assert not marker.exists()


def test_bad_files_are_clear_errors(tmp_path):
    torch.save({"a": torch.ones(100)}, tmp_path / "ok.pt")
    data = (tmp_path / "ok.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    (tmp_path / "magic.pt").write_bytes(b"\x00" * 64)
    deep = b"\x80\x02" + b"]" * 100_000 + b"a" * 99_999 + b"."
    torch_zip(tmp_path / "deep.pt", deep)
    huge = b"\x80\x02X" + (2**31).to_bytes(4, "little") + b"abc"
    torch_zip(tmp_path / "huge.pt", huge)
    # a tensor whose storage claims more bytes than its entry holds
    real = zipfile.ZipFile(tmp_path / "ok.pt")
    pkl = next(real.read(n) for n in real.namelist() if n.endswith("data.pkl"))
    torch_zip(tmp_path / "outside.pt", pkl, {"data/0": b"\x00" * 16})
    for name, pattern in [("cut.pt", "not a readable|truncated|zip"), ("magic.pt", "not a"),
                          ("deep.pt", "nests deeper"), ("huge.pt", r"malformed or unsafe pickle at byte \d+: a length of 2147483648 bytes"),
                          ("outside.pt", "claims 400 bytes, its entry holds 16")]:
        with pytest.raises(CheckpointError, match=pattern):
            open_source(tmp_path / name)


def test_cli_bad_checkpoint_exit_2_and_no_output(tmp_path):
    from typer.testing import CliRunner

    from mapspec.cli import app

    (tmp_path / "s.map").write_text("keep **\n")
    torch_zip(tmp_path / "deep.pt", b"\x80\x02" + b"]" * 100_000 + b"a" * 99_999 + b".")
    r = CliRunner().invoke(app, ["apply", str(tmp_path / "s.map"), str(tmp_path / "deep.pt"),
                                 "-o", str(tmp_path / "o.safetensors")])
    assert r.exit_code == 2 and r.output.startswith("error:") and "Traceback" not in r.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["deep.pt", "s.map"]
