"""Every dtype safetensors and torch can hold passes through mapspec: float8 (e4m3fn, e5m2,
e8m0fnu, the fnuz pair), packed float4 (two per byte) and float6 (four in three bytes),
complex64. A rename copies them byte for byte with their dtype kept, in every format that
can hold them, and a format that cannot refuses in one line; `inspect` shows them; proven
with the real safetensors library and real torch.save/torch.load."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
st = pytest.importorskip("safetensors.torch")
from safetensors import safe_open  # noqa: E402

from mapspec import open_source  # noqa: E402
from mapspec.core import dtypes  # noqa: E402
from mapspec.errors import ConversionError  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
RENAME = "mapspec 1\n{k} -> x.{k}\n"


def _cli(*args, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "mapspec.cli", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True)


def _low_precision_state() -> dict:
    g = torch.Generator().manual_seed(0)
    return {
        "e4m3": (torch.randn(4, 6, generator=g) * 50).to(torch.float8_e4m3fn),
        "e5m2": torch.randn(3, 5, generator=g).to(torch.float8_e5m2),
        "e8m0": torch.rand(2, 3, generator=g).to(torch.float8_e8m0fnu),
        "fp4": torch.randint(0, 256, (6, 4), dtype=torch.uint8, generator=g).view(torch.float4_e2m1fn_x2),
        "e4m3fnuz": torch.randn(2, generator=g).to(torch.float8_e4m3fnuz),
        "e5m2fnuz": torch.randn(2, generator=g).to(torch.float8_e5m2fnuz),
        "c64": torch.randn(3, dtype=torch.complex64, generator=g),
        "bf16": torch.randn(2, 2, generator=g).to(torch.bfloat16),
    }


def _bytes(t) -> bytes:
    return bytes(t.contiguous().view(-1).view(torch.uint8).numpy())


def _load(path: Path) -> dict:
    return st.load_file(path) if path.suffix == ".safetensors" else torch.load(path, weights_only=True)


@pytest.mark.parametrize("src", ["in.safetensors", "in.pt"])
@pytest.mark.parametrize("out", ["out.safetensors", "out.pt"])
def test_a_rename_copies_every_low_precision_dtype_byte_for_byte(tmp_path, src, out):
    state = _low_precision_state()
    st.save_file(state, tmp_path / "in.safetensors")
    torch.save(state, tmp_path / "in.pt")
    (tmp_path / "s.map").write_text(RENAME)
    r = _cli("apply", "s.map", src, "-o", out, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    got = _load(tmp_path / out)
    assert set(got) == {f"x.{k}" for k in state}
    for k, v in state.items():
        w = got[f"x.{k}"]
        assert (w.dtype, w.shape) == (v.dtype, v.shape), k
        assert _bytes(w) == _bytes(v), k


def test_float4_shapes_count_values_and_torch_stores_pairs(tmp_path):
    pairs = torch.randint(0, 256, (6, 4), dtype=torch.uint8).view(torch.float4_e2m1fn_x2)
    st.save_file({"w": pairs}, tmp_path / "a.safetensors")
    torch.save({"w": pairs}, tmp_path / "a.pt")
    header = (tmp_path / "a.safetensors").read_bytes()
    assert b'"dtype":"F4","shape":[6,8]' in header  # the library's own layout: values counted
    for name in ("a.safetensors", "a.pt"):
        src = open_source(tmp_path / name)
        try:
            info = src.infos()["w"]
            assert (info.shape, info.dtype, info.nbytes) == ((6, 8), "float4_e2m1fn", 24)
            codes = src.read("w")  # one code per value, the first of each byte its low nibble
            raw = pairs.view(torch.uint8).numpy()
            np.testing.assert_array_equal(codes[:, 0::2], raw & 0xF)
            np.testing.assert_array_equal(codes[:, 1::2], raw >> 4)
        finally:
            src.close()


def test_inspect_shows_low_precision_dtypes(tmp_path):
    state = _low_precision_state()
    torch.save(state, tmp_path / "in.pt")
    r = _cli("inspect", "in.pt", "--keys", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    rows = dict(line.split("\t", 1) for line in r.stdout.splitlines())
    assert rows["e4m3"] == "(4, 6)\tfloat8_e4m3fn"
    assert rows["e8m0"] == "(2, 3)\tfloat8_e8m0fnu"
    assert rows["fp4"] == "(6, 8)\tfloat4_e2m1fn"
    assert rows["c64"] == "(3,)\tcomplex64"


def _f6_file(path: Path, shape, data: bytes, dtype="F6_E2M3") -> Path:
    header = json.dumps({"t": {"dtype": dtype, "shape": shape, "data_offsets": [0, len(data)]}}).encode()
    path.write_bytes(struct.pack("<Q", len(header)) + header + data)
    return path


def test_float6_is_copied_byte_for_byte_and_refused_where_it_cannot_go(tmp_path):
    data = bytes(range(1, 13))  # 16 six-bit values in 12 bytes
    _f6_file(tmp_path / "f6.safetensors", [4, 4], data)
    with safe_open(tmp_path / "f6.safetensors", "np") as f:  # the library accepts the file
        assert f.get_slice("t").get_shape() == [4, 4]
    (tmp_path / "s.map").write_text(RENAME)
    r = _cli("apply", "s.map", "f6.safetensors", "-o", "out.safetensors", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    out = (tmp_path / "out.safetensors").read_bytes()
    assert out.endswith(data) and b'"x.t":{"dtype":"F6_E2M3","shape":[4,4]' in out
    r = _cli("apply", "s.map", "f6.safetensors", "-o", "out.pt", cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        "error: torch files cannot hold float6_e2m3fn tensors; convert to a format that holds them (safetensors)"]
    (tmp_path / "t.map").write_text("mapspec 1\nt -> t then transpose()\n")
    r = _cli("apply", "t.map", "f6.safetensors", "-o", "t.safetensors", cwd=tmp_path)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert "float6_e2m3fn tensors are copied byte for byte only" in r.stderr
    assert not (tmp_path / "t.safetensors").exists() and not (tmp_path / "out.pt").exists()


def test_packed_tensors_must_end_on_a_byte_as_the_library_says(tmp_path):
    _f6_file(tmp_path / "odd.safetensors", [3], b"\x00\x00", dtype="F4")
    with pytest.raises(Exception, match="byte boundary"):
        with safe_open(tmp_path / "odd.safetensors", "np"):
            pass
    (tmp_path / "s.map").write_text(RENAME)
    r = _cli("apply", "s.map", "odd.safetensors", "-o", "out.safetensors", cwd=tmp_path)
    assert r.returncode == 2
    assert r.stderr.strip().endswith("tensor 't' of shape (3,) in F4 does not end on a byte boundary")


def test_torch_refuses_float4_with_an_odd_last_dimension(tmp_path):
    pairs = torch.randint(0, 256, (3, 1), dtype=torch.uint8).view(torch.float4_e2m1fn_x2)
    st.save_file({"w": pairs}, tmp_path / "a.safetensors")  # (3, 2) values
    (tmp_path / "v.map").write_text("mapspec 1\nw -> w then view(2, 3)\n")
    r = _cli("apply", "v.map", "a.safetensors", "-o", "out.pt", cwd=tmp_path)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert "last dimension must be even, not shape (2, 3)" in r.stderr
    assert not (tmp_path / "out.pt").exists()


def test_formats_without_the_dtype_refuse_in_one_line(tmp_path):
    st.save_file({"w": torch.ones(2, 2).to(torch.float8_e4m3fn)}, tmp_path / "a.safetensors")
    (tmp_path / "s.map").write_text(RENAME)
    for out, name in [("out.npz", "npz"), ("out.wts", "wts"), ("out.params", "mxnet")]:
        r = _cli("apply", "s.map", "a.safetensors", "-o", out, cwd=tmp_path)
        assert r.returncode == 2
        assert r.stderr.strip().splitlines() == [
            f"error: {name} files cannot hold float8_e4m3fn tensors; cast them in the spec"]
        assert not (tmp_path / out).exists()


def test_cast_gives_torchs_values_and_float8_to_bf16_inverts(tmp_path):
    pytest.importorskip("ml_dtypes")
    w = (torch.randn(8, 8) * 30).to(torch.float8_e4m3fn)
    st.save_file({"w": w, "s": torch.rand(3).to(torch.float8_e8m0fnu)}, tmp_path / "a.safetensors")
    (tmp_path / "c.map").write_text("mapspec 1\nw -> w then cast(bfloat16)\ns -> s then cast(float32)\n")
    r = _cli("apply", "c.map", "a.safetensors", "-o", "out.safetensors", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    got = st.load_file(tmp_path / "out.safetensors")
    assert _bytes(got["w"]) == _bytes(w.to(torch.bfloat16))
    assert got["s"].dtype == torch.float32
    r = _cli("verify", "c.map", "a.safetensors", cwd=tmp_path)  # both casts widen: back bit-exact
    assert r.returncode == 0, r.stdout + r.stderr
    # and the other way: bf16 -> float8 rounds as torch does
    x = (torch.randn(64) * 100).to(torch.bfloat16)
    st.save_file({"x": x}, tmp_path / "b.safetensors")
    (tmp_path / "n.map").write_text("mapspec 1\nx -> x then cast(float8_e5m2)\n")
    r = _cli("apply", "n.map", "b.safetensors", "-o", "n.safetensors", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert _bytes(st.load_file(tmp_path / "n.safetensors")["x"]) == _bytes(x.to(torch.float8_e5m2))


def test_actions_move_float4_values_not_bytes(tmp_path):  # (codes moved as they are: no ml_dtypes)
    pairs = torch.randint(0, 256, (6, 4), dtype=torch.uint8).view(torch.float4_e2m1fn_x2)
    st.save_file({"w": pairs}, tmp_path / "a.safetensors")
    (tmp_path / "t.map").write_text("mapspec 1\nw -> w then transpose()\n")
    r = _cli("apply", "t.map", "a.safetensors", "-o", "out.pt", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    got = torch.load(tmp_path / "out.pt", weights_only=True)["w"]
    assert (got.dtype, got.shape) == (torch.float4_e2m1fn_x2, (8, 3))

    def codes(t):
        b = t.view(torch.uint8)
        return torch.stack([b & 0xF, b >> 4], -1).reshape(b.shape[0], -1)

    assert torch.equal(codes(got), codes(pairs).T.contiguous())


def test_dtype_facts():
    assert dtypes.nbytes((6, 8), "float4_e2m1fn") == 24 and dtypes.nbytes((4, 4), "float6_e3m2fn") == 12
    assert not dtypes.fills_bytes((3,), "float4_e2m1fn") and dtypes.fills_bytes((3,), "float8_e8m0fnu")
    assert dtypes.bits("float6_e2m3fn") == 6 and dtypes.itemsize("float8_e5m2") == 1
    with pytest.raises(ValueError):
        dtypes.itemsize("float4_e2m1fn")
    assert dtypes.canonical("e4m3") == "float8_e4m3fn" and dtypes.canonical("e8m0") == "float8_e8m0fnu"
    codes = np.array([1, 2, 3, 15], np.uint8)
    assert bytes(dtypes.raw(codes, "float4_e2m1fn")) == bytes([0x21, 0xF3])
    np.testing.assert_array_equal(dtypes.from_raw(np.array([0x21, 0xF3], np.uint8), (4,), "float4_e2m1fn"), codes)


def test_a_float8_rename_imports_nothing_numeric(tmp_path):
    st.save_file({"w": torch.ones(4, 4).to(torch.float8_e4m3fn),
                  "p": torch.zeros(2, 2, dtype=torch.uint8).view(torch.float4_e2m1fn_x2)}, tmp_path / "a.safetensors")
    (tmp_path / "s.map").write_text(RENAME)
    code = ("import sys, runpy; sys.argv = ['mapspec', 'apply', 's.map', 'a.safetensors', '-o', 'o.pt']\n"
            "import atexit; atexit.register(lambda: print(sorted(m for m in ('numpy', 'ml_dtypes', 'torch') "
            "if m in sys.modules)))\n"
            "from mapspec.cli import main; main()")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[-1] == "[]"


def test_every_bfloat16_casts_to_float16_as_torch_casts_it():
    """bf16 -> f16 (the cast most GGUF f16 outputs are made of) goes through a table of all
    65536 bf16 values; each must be torch's `.to(torch.float16)`, float16 subnormals and
    infinities included (NaNs stay NaN; their payloads are not compared). The finite ones torch
    turns into infinity are exactly those mapspec refuses (core/ranges.py)."""
    bits = np.arange(1 << 16, dtype=np.uint16)
    theirs = torch.from_numpy(bits.view(np.int16)).view(torch.bfloat16).to(torch.float16).numpy()
    finite = np.isfinite((bits.astype(np.uint32) << 16).view(np.float32))
    overflow = finite & np.isinf(theirs)
    ours = dtypes.cast(bits[~overflow].reshape(-1, 2), "bfloat16", "float16").reshape(-1)
    theirs = theirs[~overflow]
    nan = np.isnan(theirs)
    assert np.array_equal(np.isnan(ours), nan)
    assert np.array_equal(ours[~nan].view(np.uint16), theirs[~nan].view(np.uint16))
    with pytest.raises(ConversionError, match=f"{overflow.sum()} bfloat16 values past what float16 holds"):
        dtypes.cast(bits, "bfloat16", "float16")
