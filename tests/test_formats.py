"""Round trips for every format, checked against the real libraries."""

import numpy as np
import pytest

from mapspec.core.dtypes import cast
from mapspec.formats import open_sink, open_source
from mapspec.compile.plan import TensorInfo

RNG = np.random.default_rng(0)


def sample() -> dict[str, tuple[np.ndarray, str]]:
    f32 = RNG.standard_normal((3, 4)).astype(np.float32)
    return {
        "w.f32": (f32, "float32"),
        "w.f16": (RNG.standard_normal((5,)).astype(np.float16), "float16"),
        "w.bf16": (cast(f32, "float32", "bfloat16"), "bfloat16"),
        "n.i64": (np.array(7, dtype=np.int64), "int64"),
        "m.bool": (np.array([True, False]), "bool"),
        "e.empty": (np.zeros((0, 3), np.float32), "float32"),
        "u.u8": (np.arange(6, dtype=np.uint8).reshape(2, 3), "uint8"),
    }


def write(path, fmt, tensors):
    sink = open_sink(path, fmt, {k: TensorInfo(a.shape, d) for k, (a, d) in tensors.items()})
    for k, (a, _) in tensors.items():
        sink.write(k, a)
    sink.commit()


@pytest.mark.parametrize("fmt,suffix", [("safetensors", ".safetensors"), ("npz", ".npz"), ("torch", ".pt")])
def test_round_trip_keeps_names_shapes_dtypes_and_bits(tmp_path, fmt, suffix):
    if fmt == "torch":
        pytest.importorskip("torch")
    tensors = sample()
    path = tmp_path / f"x{suffix}"
    write(path, fmt, tensors)
    src = open_source(path)
    assert set(src.infos()) == set(tensors)
    for k, (a, d) in tensors.items():
        assert src.infos()[k] == TensorInfo(a.shape, d)
        np.testing.assert_array_equal(src.read(k), a)
    src.close()
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


def test_safetensors_written_here_is_read_by_the_library(tmp_path):
    safetensors = pytest.importorskip("safetensors")
    torch = pytest.importorskip("torch")
    from safetensors.torch import load_file

    tensors = sample()
    write(tmp_path / "x.safetensors", "safetensors", tensors)
    loaded = load_file(tmp_path / "x.safetensors")
    for k, (a, d) in tensors.items():
        if d == "bfloat16":
            expected = torch.from_numpy(cast(a, "bfloat16", "float32"))
            assert loaded[k].dtype == torch.bfloat16
            torch.testing.assert_close(loaded[k].float(), expected)
        else:
            np.testing.assert_array_equal(loaded[k].numpy(), a)
    assert safetensors.safe_open(tmp_path / "x.safetensors", "np").metadata() == {"format": "pt"}


def test_safetensors_written_by_the_library_is_read_here(tmp_path):
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(0)
    t = {"a": torch.randn(4, 5, generator=g), "b": torch.randn(3, generator=g).bfloat16(),
         "c": torch.arange(6, dtype=torch.int32).reshape(2, 3)}
    save_file(t, tmp_path / "lib.safetensors")
    src = open_source(tmp_path / "lib.safetensors")
    np.testing.assert_array_equal(src.read("a"), t["a"].numpy())
    np.testing.assert_array_equal(src.read("b"), t["b"].view(torch.int16).numpy().view(np.uint16))
    assert src.infos()["b"].dtype == "bfloat16"
    np.testing.assert_array_equal(src.read("c"), t["c"].numpy())
    a = src.read("a")
    before = a.copy()
    a[...] = 0  # a fresh buffer read by position, not a view of the file: the file is unchanged
    np.testing.assert_array_equal(src.read("a"), before)


def test_torch_reader_reads_what_torch_saved_including_views(tmp_path, torch):
    base = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    torch.save({"model": {"w": base, "wt": base.t(), "row": base[1]}, "epoch": 3}, tmp_path / "c.pt")
    src = open_source(tmp_path / "c.pt", select="model")
    assert set(src.infos()) == {"w", "wt", "row"}
    np.testing.assert_array_equal(src.read("wt"), base.t().numpy())
    np.testing.assert_array_equal(src.read("row"), base[1].numpy())


def test_npz_is_plain_numpy_and_refuses_pickles(tmp_path):
    from mapspec.errors import CheckpointError

    np.savez(tmp_path / "a.npz", x=np.ones(3, np.float32))
    assert open_source(tmp_path / "a.npz").infos()["x"] == TensorInfo((3,), "float32")
    np.savez(tmp_path / "b.npz", x=np.array([{"a": 1}], dtype=object))
    with pytest.raises(CheckpointError, match="refusing to unpickle"):
        open_source(tmp_path / "b.npz")


def test_truncated_safetensors_is_a_clear_error(tmp_path):
    from mapspec.errors import CheckpointError

    tensors = sample()
    write(tmp_path / "x.safetensors", "safetensors", tensors)
    data = (tmp_path / "x.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[:-10])
    with pytest.raises(CheckpointError, match="truncated: the tensors need"):
        open_source(tmp_path / "cut.safetensors")
    (tmp_path / "head.safetensors").write_bytes(b"\xff" * 8 + b"{}")
    with pytest.raises(CheckpointError, match="header length"):
        open_source(tmp_path / "head.safetensors")


def test_aborted_sink_leaves_nothing(tmp_path):
    sink = open_sink(tmp_path / "x.safetensors", "safetensors", {"a": TensorInfo((2,), "float32")})
    sink.write("a", np.ones(2, np.float32))
    sink.abort()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("src,dst", [("float32", "bfloat16"), ("bfloat16", "float32"), ("float16", "float32"),
                                     ("float32", "float16")])
def test_cast_matches_torch(src, dst):
    torch = pytest.importorskip("torch")
    vals = torch.tensor([0.0, 1.0, -2.5, 3.14159, 1e-3, 65504.0, 1.00390625, float("inf")])
    tdt = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    t_src = vals.to(tdt[src])
    a = t_src.view(torch.int16).numpy().view(np.uint16) if src == "bfloat16" else t_src.numpy()
    got = cast(a, src, dst)
    want = t_src.to(tdt[dst])
    want = want.view(torch.int16).numpy().view(np.uint16) if dst == "bfloat16" else want.numpy()
    np.testing.assert_array_equal(got, want)


def test_outputs_get_the_usual_file_mode(tmp_path):
    import os
    import stat

    write(tmp_path / "x.safetensors", "safetensors", sample())
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE((tmp_path / "x.safetensors").stat().st_mode) == 0o666 & ~umask


def test_streamed_pt_holds_split_views_and_loads_with_mmap(tmp_path):
    torch = pytest.importorskip("torch")
    from mapspec import apply

    base = torch.arange(24, dtype=torch.float32).reshape(6, 4)
    torch.save({"qkv": base, "h": torch.ones(3, dtype=torch.bfloat16), "n": torch.tensor(4)}, tmp_path / "in.pt")
    (tmp_path / "s.map").write_text("qkv -> attn.{p:q|k|v} then chunk(3)\nkeep h | n\n")
    apply(tmp_path / "s.map", tmp_path / "in.pt", tmp_path / "out.pt")
    out = torch.load(tmp_path / "out.pt", weights_only=True, mmap=True)
    assert list(out) == ["attn.q", "attn.k", "attn.v", "h", "n"]
    for i, p in enumerate("qkv"):
        assert torch.equal(out[f"attn.{p}"], base[2 * i:2 * i + 2])
    assert out["h"].dtype == torch.bfloat16 and torch.equal(out["h"].float(), torch.ones(3))
    assert out["n"].shape == () and int(out["n"]) == 4
