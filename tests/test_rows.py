"""Steps whose actions work row by row run a slice of rows at a time (run/rows.py): the output
is byte for byte the one a whole-tensor run writes, in every sink that takes rows (one
safetensors file, shards, GGUF, split GGUF), for every action that says it works by rows
(casts between floats, ggml quantize and dequantize, FP8 dequantize and both pieces of FP8
quantize, MXFP4 dequantize, expect, views and transposes that keep the first dimension),
ragged last slices included; sinks that cannot write part
of a tensor get whole tensors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import mapspec
from mapspec import TensorInfo
from mapspec.core import dtypes
from mapspec.formats import open_sink, open_source
from mapspec.run import executor, rows

ml_dtypes = pytest.importorskip("ml_dtypes")
RNG = np.random.default_rng(7)


def _write(path: Path, tensors: dict[str, tuple[np.ndarray, str]]) -> Path:
    sink = open_sink(path, "safetensors", {k: TensorInfo(tuple(a.shape if d != "float4_e2m1fn" else a.shape), d)
                                           for k, (a, d) in tensors.items()})
    for k, (a, d) in tensors.items():
        sink.write(k, a)
    sink.commit()
    return path


def _bf16(shape) -> np.ndarray:
    return RNG.standard_normal(shape, dtype=np.float32).astype(ml_dtypes.bfloat16).view(np.uint16)


def _fp8(shape) -> np.ndarray:
    return (RNG.standard_normal(shape, dtype=np.float32) * 8).astype(ml_dtypes.float8_e4m3fn).view(np.uint8)


def _files(out: Path) -> dict[str, bytes]:
    if out.is_dir():
        return {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.name != "mapspec.json"}
    return {out.name: out.read_bytes()}


@pytest.fixture
def small_slices(monkeypatch):
    """Slices of 4 KiB, steps of 12 KiB and more sliced; calls of run_sliced counted."""
    calls = []
    real = rows.run_sliced

    def counted(step, cut, source, sink, worker, *keeping):
        calls.append((step.output, cut))
        return real(step, cut, source, sink, worker, *keeping)

    monkeypatch.setattr(rows, "SLICE_BYTES", 4096)
    monkeypatch.setattr(rows, "MIN_BYTES", 3 * 4096)
    monkeypatch.setattr(executor, "run_sliced", counted)
    return calls


def _both(tmp_path: Path, spec: str, source: Path, out_name: str, monkeypatch, calls, **kwargs):
    """Apply sliced and whole; both outputs, and which steps were sliced."""
    (tmp_path / "s.map").write_text(spec)
    sliced = tmp_path / "sliced" / out_name
    sliced.parent.mkdir()
    mapspec.apply(tmp_path / "s.map", source, sliced, **kwargs)
    cut = list(calls)
    monkeypatch.setattr(rows, "MIN_BYTES", 1 << 62)
    whole = tmp_path / "whole" / out_name
    whole.parent.mkdir()
    mapspec.apply(tmp_path / "s.map", source, whole, **kwargs)
    return _files(sliced), _files(whole), cut


CASES = {
    "float cast": ("mapspec 1\nw -> w then cast(float16)\nb -> b then expect(_, 37) then cast(float32)\n",
                   lambda: {"w": (_bf16((1001, 37)), "bfloat16"), "b": (_bf16((513, 37)), "bfloat16")},
                   {"w", "b"}),
    "fp8 dequantize, ragged blocks": (
        "mapspec 1\nw.{p:weight|weight_scale_inv} -> w then dequantize(fp8, block=(16, 32), over=p)\n",
        lambda: {"w.weight": (_fp8((300, 200)), "float8_e4m3fn"),
                 "w.weight_scale_inv": (RNG.random((19, 7), dtype=np.float32), "float32")},
        {"w"}),
    "fp8 dequantize, experts": (
        "mapspec 1\nw.{p:weight|weight_scale_inv} -> w then dequantize(fp8, block=(16, 16), over=p, dtype=float16)\n",
        lambda: {"w.weight": (_fp8((9, 40, 48)), "float8_e4m3fn"),
                 "w.weight_scale_inv": (RNG.random((9, 3, 3), dtype=np.float32), "float32")},
        {"w"}),
    "fp8 quantize, both pieces": (  # the scales are kept from the weight's slices (siblings.py)
        "mapspec 1\nw -> w.{p:weight|weight_scale_inv} then quantize(fp8, block=(16, 32), into=p)\n",
        lambda: {"w": (_bf16((301, 200)), "bfloat16")},
        {"w.weight"}),
    "mxfp4 dequantize": (
        "mapspec 1\nx_{p:blocks|scales} -> x then dequantize(mxfp4, over=p)\n",
        lambda: {"x_blocks": (RNG.integers(0, 256, (12, 24, 4, 16), dtype=np.uint8), "uint8"),
                 "x_scales": (RNG.integers(118, 136, (12, 24, 4), dtype=np.uint8), "uint8")},
        {"x"}),
}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("out", ["out.safetensors", "shards"])
def test_a_sliced_step_writes_the_bytes_of_a_whole_one(tmp_path, monkeypatch, small_slices, case, out):
    spec, tensors, sliced_outputs = CASES[case]
    source = _write(tmp_path / "in.safetensors", tensors())
    kwargs = {"max_shard_size": 200_000} if out == "shards" else {}
    sliced, whole, cut = _both(tmp_path, spec, source, out, monkeypatch, small_slices, **kwargs)
    assert sliced == whole
    assert {name for name, _ in cut} == sliced_outputs
    assert all(c.per_slice < c.blocks for _, c in cut)  # more than one slice each


@pytest.mark.parametrize("qtype", ["q8_0", "q4_1", "float16"])
@pytest.mark.parametrize("out", ["out.gguf", "split"])
def test_gguf_casts_and_quantizes_slice_by_slice_to_the_same_bytes(tmp_path, monkeypatch, small_slices, qtype, out):
    source = _write(tmp_path / "in.safetensors", {"a.weight": (_bf16((700, 64)), "bfloat16"),
                                                   "b.weight": (_bf16((330, 96)), "bfloat16")})
    spec = f"mapspec 1\n{{n}}.weight -> {{n}}.weight then cast({qtype})\n"
    kwargs = {"to": "gguf", **({"max_shard_size": 60_000} if out == "split" else {})}
    sliced, whole, cut = _both(tmp_path, spec, source, out, monkeypatch, small_slices, **kwargs)
    assert sliced == whole
    assert {name for name, _ in cut} == {"a.weight", "b.weight"}


def test_dequantizing_a_gguf_reads_it_by_rows(tmp_path, monkeypatch, small_slices):
    source = _write(tmp_path / "in.safetensors", {"a.weight": (_bf16((700, 64)), "bfloat16")})
    (tmp_path / "q.map").write_text("mapspec 1\na.weight -> a.weight then cast(q8_0)\n")
    monkeypatch.setattr(rows, "MIN_BYTES", 1 << 62)
    mapspec.apply(tmp_path / "q.map", source, tmp_path / "q.gguf")
    monkeypatch.setattr(rows, "MIN_BYTES", 3 * 4096)
    spec = "mapspec 1\na.weight -> a.weight then cast(float32)\n"
    sliced, whole, cut = _both(tmp_path, spec, tmp_path / "q.gguf", "back.safetensors", monkeypatch, small_slices)
    assert sliced == whole and [name for name, _ in cut] == ["a.weight"]


def test_sinks_that_write_whole_tensors_are_given_whole_tensors(tmp_path, monkeypatch, small_slices):
    torch = pytest.importorskip("torch")
    source = _write(tmp_path / "in.safetensors", {"w": (_bf16((1001, 37)), "bfloat16")})
    (tmp_path / "s.map").write_text("mapspec 1\nw -> w then cast(float32)\n")
    mapspec.apply(tmp_path / "s.map", source, tmp_path / "out.pt")
    assert small_slices == []
    got = torch.load(tmp_path / "out.pt")["w"].numpy()
    assert np.array_equal(got, dtypes.cast(open_source(source).read("w"), "bfloat16", "float32"))


def test_a_step_needing_the_whole_tensor_is_not_sliced(tmp_path, monkeypatch, small_slices):
    source = _write(tmp_path / "in.safetensors", {"w": (_bf16((1001, 37)), "bfloat16")})
    spec = "mapspec 1\nw -> w then cast(float32) then transpose()\n"  # rows become columns
    sliced, whole, cut = _both(tmp_path, spec, source, "out.safetensors", monkeypatch, small_slices)
    assert sliced == whole and cut == []


ROTARY = ("mapspec 1\n"
          "q -> q then expect(8 * 16, 64) then view(8, 2, 8, 64) then transpose(1, 2) then reshape(8 * 16, 64)"
          " then cast({t})\n"
          "k -> k then view(-1, 8, 2, 64) then transpose(1, 2) then reshape(-1, 64) then cast({t})\n")


@pytest.mark.parametrize("qtype, out", [("float16", "out.gguf"), ("q8_0", "out.gguf"),
                                        ("float16", "out.safetensors")])
def test_rotary_row_permutes_run_a_few_heads_at_a_time(tmp_path, monkeypatch, small_slices, qtype, out):
    """view -> transpose(1, 2) -> reshape keeps each head's rows among themselves (GGUF's q/k
    permute and its inverse): slices of whole heads give the bytes of the whole tensor."""
    source = _write(tmp_path / "in.safetensors", {"q": (_bf16((128, 64)), "bfloat16"),
                                                   "k": (_bf16((96, 64)), "bfloat16")})
    sliced, whole, cut = _both(tmp_path, ROTARY.format(t=qtype), source, out, monkeypatch, small_slices)
    assert sliced == whole
    assert {name for name, _ in cut} == {"q", "k"}
    assert {name: (c.units, c.out_unit) for name, c in cut} == {"q": ((16,), 16), "k": ((16,), 16)}
    if qtype == "float16":
        got = open_source(tmp_path / "whole" / out).read("q")
        q = dtypes.cast(open_source(source).read("q"), "bfloat16", "float32")
        expected = q.reshape(8, 2, 8, 64).transpose(0, 2, 1, 3).reshape(128, 64).astype(np.float16)
        assert np.array_equal(np.asarray(got).view(np.float16).reshape(128, 64), expected)


@pytest.mark.parametrize("spec, units", [
    ("w -> w then view(-1, 74) then cast(float16)\n", ((2,), 1)),         # two rows make one
    ("w -> w then view(-1, 37 * 3) then cast(float16)\n", ((3,), 1)),
    ("w -> w then cast(float32) then view(-1, 2, 37) then transpose(1, 2) then view(-1, 37)\n", ((2,), 2)),
    ("w -> w then view(-1, 37, 1) then permute(0, 2, 1) then squeeze(1)\n", ((1,), 1)),
])
def test_reshapes_between_rows_slice_by_whole_blocks(tmp_path, monkeypatch, small_slices, spec, units):
    """A view's block is the least common multiple of the row sizes before and after it;
    chained actions take the least common multiple of their blocks."""
    source = _write(tmp_path / "in.safetensors", {"w": (_bf16((1002, 37)), "bfloat16")})
    sliced, whole, cut = _both(tmp_path, "mapspec 1\n" + spec, source, "out.safetensors", monkeypatch,
                               small_slices)
    assert sliced == whole
    assert [(name, (c.units, c.out_unit)) for name, c in cut] == [("w", units)]
    assert all(c.per_slice < c.blocks for _, c in cut)


def test_a_failing_slice_leaves_no_output(tmp_path, monkeypatch, small_slices):
    values = RNG.standard_normal((1000, 64), dtype=np.float32)
    values[900, 3] = np.inf  # the last slices hold a value q8_0 cannot take
    source = _write(tmp_path / "in.safetensors", {"w": (values, "float32")})
    (tmp_path / "s.map").write_text("mapspec 1\nw -> w then cast(q8_0)\n")
    with pytest.raises(mapspec.MapspecError, match="NaN or infinite"):
        mapspec.apply(tmp_path / "s.map", source, tmp_path / "out.gguf")
    assert [name for name, _ in small_slices] == ["w"]
    assert not (tmp_path / "out.gguf").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.safetensors", "s.map"]


def test_slices_are_computed_ahead_within_their_bound_and_on_across_steps(tmp_path, monkeypatch, small_slices):
    """While slice k is written, at most `depth` later slices are read and computed; the next
    step's first slice is brought in while a step's last slices are written, past the steps
    whose output was computed with an earlier one (the FP8 scales)."""
    monkeypatch.setattr(rows, "AHEAD_BYTES", 20_000)  # a slice: 16 rows of 200 bf16 in, 200 bytes out
    events = []
    real_job, real_put = rows.slice_job, rows._put

    def job(step, cut, source, b0, whole, worker):
        events.append(("read", step.output, b0, cut.depth))
        return real_job(step, cut, source, b0, whole, worker)

    def put(step, first, n, out, sink):
        events.append(("write", step.output, first, None))
        return real_put(step, first, n, out, sink)

    monkeypatch.setattr(rows, "slice_job", job)
    monkeypatch.setattr(executor, "slice_job", job)
    monkeypatch.setattr(rows, "_put", put)
    source = _write(tmp_path / "in.safetensors", {f"w{i}": (_bf16((300 + 16 * i, 200)), "bfloat16") for i in range(3)})
    (tmp_path / "s.map").write_text("mapspec 1\n"
                                    "w{i} -> w{i}.{p:weight|weight_scale_inv} then quantize(fp8, block=(16, 32), into=p)\n")
    mapspec.apply(tmp_path / "s.map", source, tmp_path / "out.safetensors")
    assert [name for name, _ in small_slices] == ["w0.weight", "w1.weight", "w2.weight"]
    depth = {c.depth for _, c in small_slices}
    assert depth == {2}
    ahead = 0
    for kind, *_ in events:
        ahead += 1 if kind == "read" else -1
        assert 0 <= ahead <= 2 + 1  # depth computed ahead, and the one being written
    reads = [(name, b0) for kind, name, b0, _ in events if kind == "read"]
    for i in (1, 2):  # step i's first slice read before step i - 1's last one is written
        last_write = max(n for n, e in enumerate(events) if e[:2] == ("write", f"w{i - 1}.weight"))
        assert events.index(("read", f"w{i}.weight", 0, 2)) < last_write
    assert len(reads) == sum(c.blocks // c.per_slice + (c.blocks % c.per_slice > 0) for _, c in small_slices)
    whole = tmp_path / "whole.safetensors"
    monkeypatch.setattr(rows, "MIN_BYTES", 1 << 62)
    mapspec.apply(tmp_path / "s.map", source, whole)
    assert whole.read_bytes() == (tmp_path / "out.safetensors").read_bytes()


def test_a_slice_failing_while_the_next_step_is_brought_in_leaves_no_output(tmp_path, monkeypatch, small_slices):
    """The failing slice is the last of its step, so the next step's first slice is already
    being read and computed: the run still ends with the slice's error and writes nothing,
    and the read-ahead thread is done with the source before it is closed."""
    values = RNG.standard_normal((1000, 64), dtype=np.float32)
    values[990, 3] = np.inf
    source = _write(tmp_path / "in.safetensors", {"a": (values, "float32"),
                                                   "b": (RNG.standard_normal((1000, 64), dtype=np.float32), "float32")})
    (tmp_path / "s.map").write_text("mapspec 1\n{n:a|b} -> {n} then cast(q8_0)\n")
    started = []
    real_job = rows.slice_job

    def job(step, cut, source, b0, whole, worker):
        started.append((step.output, b0))
        return real_job(step, cut, source, b0, whole, worker)

    monkeypatch.setattr(executor, "slice_job", job)
    monkeypatch.setattr(rows, "slice_job", job)
    with pytest.raises(mapspec.MapspecError, match="NaN or infinite"):
        mapspec.apply(tmp_path / "s.map", source, tmp_path / "out.gguf")
    assert ("b", 0) in started  # brought in before a's last slice failed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.safetensors", "s.map"]
    assert not executor.read_worker._queue
