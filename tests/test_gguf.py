"""GGUF read and written by mapspec, proven against gguf-py (llama.cpp's own Python package):
files gguf-py writes read back as it reads them, files mapspec writes read by its GGUFReader
with the same names, shapes, types, bytes and metadata, split files as gguf-split and gguf-py
write them, and GGUF -> GGUF renames that copy quantized blocks untouched."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")
from gguf import GGMLQuantizationType as Q, GGUFReader, GGUFValueType as VT  # noqa: E402

from mapspec import apply  # noqa: E402
from mapspec.errors import PlanError, UsageError  # noqa: E402
from mapspec.formats import open_sink, open_source  # noqa: E402
from mapspec.formats.gguf import GGUFSource, Value, read_kv, typed  # noqa: E402
from mapspec.core.tensorinfo import TensorInfo  # noqa: E402

RENAME = "mapspec 1\nblk.{i}.{rest:**} -> layers.{i}.{rest}\ntoken_embd.{rest:**} -> token_embd.{rest}\n"
IDENTITY = "mapspec 1\n{rest:**} -> {rest}\n"

# Every metadata value type, arrays of each, and arrays of arrays, as gguf-py types them.
METADATA = [
    ("t.u8", 200, VT.UINT8), ("t.i8", -100, VT.INT8), ("t.u16", 60000, VT.UINT16), ("t.i16", -30000, VT.INT16),
    ("t.u32", 4_000_000_000, VT.UINT32), ("t.i32", -2_000_000_000, VT.INT32), ("t.f32", 1.5e-7, VT.FLOAT32),
    ("t.bool", True, VT.BOOL), ("t.str", "héllo ✓", VT.STRING), ("t.u64", 2**64 - 1, VT.UINT64),
    ("t.i64", -2**63, VT.INT64), ("t.f64", 1e300, VT.FLOAT64),
]


def gguf_py_file(path: Path, tensors: dict, *, extra=None, alignment: int | None = None) -> Path:
    """A GGUF written by gguf-py: metadata of every type, then `tensors` ({name: array or
    (raw uint8 blocks, ggml type)})."""
    w = gguf.GGUFWriter(path, "llama")
    if alignment is not None:
        w.add_custom_alignment(alignment)
    for key, value, vtype in METADATA:
        w.add_key_value(key, value, vtype)
    w.add_array("t.tokens", ["<s>", "</s>", "▁the", ""])
    w.add_array("t.scores", [0.0, -1.5, 3.25])
    w.add_array("t.nested", [[1, 2, 3], ["a", "b"], [2.5]])
    for key, value in (extra or {}).items():
        w.add_key_value(key, value, VT.get_type(value))
    for name, t in tensors.items():
        if isinstance(t, tuple):
            w.add_tensor(name, t[0], raw_dtype=t[1])
        else:
            w.add_tensor(name, t)
    return finish(w, path)


def finish(w, result: Path) -> Path:
    """Write out what a gguf-py GGUFWriter was given."""
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return result


def sample_tensors(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((6, 64)).astype(np.float32)
    return {
        "blk.0.attn_q.weight": x.astype(np.float16),
        "blk.0.attn_norm.weight": x[0],
        "blk.0.ffn_up.weight": (gguf.quants.quantize(x, Q.Q8_0), Q.Q8_0),
        "blk.0.ffn_gate.weight": (gguf.quants.quantize(x, Q.Q4_0), Q.Q4_0),
        "blk.1.ffn_down.weight": (gguf.quants.quantize(x, Q.BF16), Q.BF16),
        "blk.1.q4k.weight": (rng.integers(0, 256, (3, 2 * 144), dtype=np.uint8), Q.Q4_K),
        "blk.1.counts": rng.integers(-9, 9, (2, 3, 4)).astype(np.int32),
        "blk.1.f64": rng.standard_normal((5,)),
        "token_embd.weight": rng.standard_normal((4, 3, 2, 32)).astype(np.float32),
    }


def fields(path: Path) -> dict:
    """gguf-py's view of a file's metadata: key -> (value types, contents)."""
    r = GGUFReader(path)
    return {f.name: (f.types, f.contents()) for f in r.fields.values() if not f.name.startswith("GGUF.")}


def tensors_of(path: Path) -> dict:
    """gguf-py's view of a file's tensors: name -> (ggml type, ggml shape, raw bytes)."""
    r = GGUFReader(path)
    return {t.name: (t.tensor_type, tuple(int(d) for d in t.shape), bytes(t.data.tobytes())) for t in r.tensors}


def test_a_gguf_py_file_reads_as_gguf_py_reads_it(tmp_path):
    path = gguf_py_file(tmp_path / "a.gguf", sample_tensors())
    src = GGUFSource(path)
    ref = tensors_of(path)
    assert list(src.infos()) == list(ref)
    for name, (kind, ggml_shape, raw) in ref.items():
        info = src.infos()[name]
        assert info.shape == tuple(reversed(ggml_shape))  # numpy order: ggml's reversed
        assert src.ggml_types[name] == kind.name
        assert src.read(name).tobytes() == raw
        e = src.extent(name)
        assert e.nbytes == len(raw)
    assert src.infos()["blk.0.ffn_up.weight"] == TensorInfo((6, 64), "q8_0")
    assert src.read("blk.0.ffn_up.weight").shape == (6, 2 * 34)
    assert src.infos()["blk.1.ffn_down.weight"] == TensorInfo((6, 64), "bfloat16")
    assert src.read("blk.1.counts").dtype == np.int32
    ref_fields = fields(path)
    assert list(src.kv) == list(ref_fields)
    for key, (types, contents) in ref_fields.items():
        v = src.kv[key]
        assert v.type == types[0].name.lower()
        assert v.plain == contents or (v.type == "array" and v.item == "array")
    assert src.kv["t.nested"].value[1] == Value("array", ("a", "b"), "string")
    assert src.kv["t.f32"] == Value("float32", float(np.float32(1.5e-7)))
    src.close()


def test_rewriting_a_gguf_py_file_gives_the_same_bytes(tmp_path):
    path = gguf_py_file(tmp_path / "a.gguf", sample_tensors())
    src = GGUFSource(path)
    sink = open_sink(tmp_path / "b.gguf", "gguf", src.infos(), kv=src.kv)
    for name in src.infos():
        sink.write(name, src.read(name))
    sink.commit()
    src.close()
    assert (tmp_path / "b.gguf").read_bytes() == path.read_bytes()


def test_our_file_reads_in_gguf_py_with_the_same_names_shapes_types_bytes_and_metadata(tmp_path):
    rng = np.random.default_rng(3)
    arrays = {
        "f32": rng.standard_normal((3, 5)).astype(np.float32),
        "f16": rng.standard_normal((7,)).astype(np.float16),
        "bf16": rng.integers(0, 2**16, (2, 4), dtype=np.uint16),
        "i8": rng.integers(-128, 128, (2, 2, 2)).astype(np.int8),
        "i16": rng.integers(-9, 9, (4,)).astype(np.int16),
        "i64": rng.integers(-9, 9, (1, 2, 3, 4)).astype(np.int64),
        "f64": rng.standard_normal((2,)),
        "q5_1": gguf.quants.quantize(rng.standard_normal((2, 64)).astype(np.float32), Q.Q5_1),
        "iq2_xs": rng.integers(0, 256, (1, 74), dtype=np.uint8),
    }
    dtypes_ = {"bf16": "bfloat16", "q5_1": "q5_1", "iq2_xs": "iq2_xs"}
    shapes = {"q5_1": (2, 64), "iq2_xs": (1, 256)}
    outputs = {k: TensorInfo(shapes.get(k, a.shape), dtypes_.get(k, str(a.dtype))) for k, a in arrays.items()}
    kv = {"general.architecture": "llama", "llama.block_count": 2, "llama.rope.freq_base": 10000.0,
          "t.i64": Value("int64", -5), "t.u8s": Value("array", (1, 2, 255), "uint8"),
          "t.neg": -7, "t.big": 2**40, "t.flag": False, "t.list": ["x", "y"],
          "t.deep": Value("array", (Value("array", (Value("array", (1.5,), "float64"),), "array"),), "array")}
    sink = open_sink(tmp_path / "o.gguf", "gguf", outputs, kv=kv)
    for k, a in arrays.items():
        sink.write(k, a)
    sink.commit()
    got = tensors_of(tmp_path / "o.gguf")
    assert list(got) == list(arrays)
    names = {"f32": Q.F32, "f16": Q.F16, "bf16": Q.BF16, "i8": Q.I8, "i16": Q.I16, "i64": Q.I64, "f64": Q.F64,
             "q5_1": Q.Q5_1, "iq2_xs": Q.IQ2_XS}
    for k, a in arrays.items():
        kind, ggml_shape, raw = got[k]
        assert kind == names[k]
        assert ggml_shape == tuple(reversed(outputs[k].shape))
        assert raw == a.tobytes()
    f = fields(tmp_path / "o.gguf")
    assert f["llama.block_count"] == ([VT.UINT32], 2)
    assert f["llama.rope.freq_base"] == ([VT.FLOAT32], 10000.0)
    assert f["t.i64"] == ([VT.INT64], -5)
    assert f["t.neg"] == ([VT.INT32], -7)
    assert f["t.big"] == ([VT.INT64], 2**40)
    assert f["t.flag"] == ([VT.BOOL], False)
    assert f["t.list"] == ([VT.ARRAY, VT.STRING], ["x", "y"])
    assert f["t.u8s"] == ([VT.ARRAY, VT.UINT8], [1, 2, 255])
    assert "general.alignment" not in f  # the default 32 is not written, as llama.cpp's converter
    # and back through mapspec: every value with its type
    assert read_kv(tmp_path / "o.gguf") == {k: typed(v) for k, v in kv.items()}


def test_alignment_other_than_32_is_written_and_read(tmp_path):
    path = gguf_py_file(tmp_path / "a.gguf", {"a": np.ones(3, np.float32), "b": np.ones(5, np.float16)}, alignment=64)
    src = GGUFSource(path)
    assert src.kv["general.alignment"] == Value("uint32", 64)
    assert all(src.extent(k).offset % 64 == 0 for k in src.infos())
    sink = open_sink(tmp_path / "b.gguf", "gguf", src.infos(), kv=src.kv)
    for name in src.infos():
        sink.write(name, src.read(name))
    sink.commit()
    assert (tmp_path / "b.gguf").read_bytes() == path.read_bytes()
    r = GGUFReader(tmp_path / "b.gguf")
    assert r.alignment == 64 and r.data_offset % 64 == 0


def test_metadata_that_would_not_encode_as_its_type_is_refused_before_writing(tmp_path):
    outputs = {"a": TensorInfo((2,), "float32")}
    for bad in (Value("uint8", 256), Value("int32", 1.5), Value("string", 3), Value("array", (1, "x"), "int32"),
                Value("uint32", True)):
        with pytest.raises(UsageError):
            open_sink(tmp_path / "o.gguf", "gguf", outputs, kv={"k": bad})
        assert not list(tmp_path.iterdir())
    with pytest.raises(ValueError):
        typed([1, "mixed"])


def test_tensors_gguf_cannot_hold_are_refused(tmp_path):
    for info in (TensorInfo((2,), "uint8"), TensorInfo((2,), "bool"), TensorInfo((1, 2, 3, 4, 5), "float32"),
                 TensorInfo((2, 48), "q8_0")):
        with pytest.raises(UsageError):
            open_sink(tmp_path / "o.gguf", "gguf", {"t": info})
        assert not list(tmp_path.iterdir())


def test_gguf_to_gguf_rename_copies_quantized_blocks_and_carries_the_metadata(tmp_path):
    src = gguf_py_file(tmp_path / "a.gguf", sample_tensors())
    (tmp_path / "r.map").write_text(RENAME)
    apply(tmp_path / "r.map", src, tmp_path / "b.gguf")
    before, after = tensors_of(src), tensors_of(tmp_path / "b.gguf")
    renamed = {k.replace("blk.", "layers.", 1): v for k, v in before.items()}
    assert after == renamed  # same types, shapes, and block bytes
    old, new = fields(src), fields(tmp_path / "b.gguf")
    record = json.loads(new.pop("general.mapspec")[1])
    assert old == new  # every key is carried, with its type; only mapspec's record is added
    assert record["source"] == "a.gguf" and record["direction"] == "forward" and len(record["source_sha256"]) == 64


def test_provenance_is_one_general_key_and_survives_another_conversion(tmp_path):
    from mapspec.formats import provenance

    src = gguf_py_file(tmp_path / "a.gguf", {"x": np.ones((2, 32), np.float32)})
    (tmp_path / "id.map").write_text(IDENTITY)
    apply(tmp_path / "id.map", src, tmp_path / "b.gguf")
    apply(tmp_path / "id.map", tmp_path / "b.gguf", tmp_path / "c.gguf")
    keys = [k for k in fields(tmp_path / "c.gguf") if "mapspec" in k]
    assert keys == ["general.mapspec"]
    rec = provenance.read(tmp_path / "c.gguf")
    assert rec["source"] == "b.gguf"


def test_gguf_to_safetensors_of_element_types_is_a_rename(tmp_path):
    from safetensors.numpy import load_file

    t = sample_tensors()
    plain = {k: v for k, v in t.items() if not isinstance(v, tuple)}
    src = gguf_py_file(tmp_path / "a.gguf", plain)
    (tmp_path / "id.map").write_text(IDENTITY)
    apply(tmp_path / "id.map", src, tmp_path / "o.safetensors")
    got = load_file(tmp_path / "o.safetensors")
    assert set(got) == set(plain)
    for k, v in plain.items():
        assert got[k].dtype == v.dtype and np.array_equal(got[k], v)


def test_a_quantized_tensor_into_safetensors_says_to_dequantize(tmp_path):
    src = gguf_py_file(tmp_path / "a.gguf", {"q": (gguf.quants.quantize(np.ones((2, 32), np.float32), Q.Q8_0), Q.Q8_0)})
    (tmp_path / "id.map").write_text(IDENTITY)
    with pytest.raises(UsageError, match="q8_0"):
        apply(tmp_path / "id.map", src, tmp_path / "o.safetensors")
    assert not (tmp_path / "o.safetensors").exists()


# ------------------------------------------------------------------ split files

def gguf_py_split(folder: Path, tensors: dict, max_tensors: int) -> Path:
    """Split parts written by gguf-py's writer (the same layout gguf-split writes)."""
    w = gguf.GGUFWriter(folder / "m.gguf", "llama", split_max_tensors=max_tensors)
    w.add_uint32("llama.block_count", 2)
    for name, a in tensors.items():
        w.add_tensor(name, a)
    return finish(w, folder)


def test_split_files_from_gguf_py_read_as_one_checkpoint_from_any_part(tmp_path):
    rng = np.random.default_rng(1)
    tensors = {f"t{i}": rng.standard_normal((3, 4)).astype(np.float32) for i in range(5)}
    gguf_py_split(tmp_path, tensors, 2)
    parts = sorted(p.name for p in tmp_path.glob("*.gguf"))
    assert parts == ["m-00001-of-00003.gguf", "m-00002-of-00003.gguf", "m-00003-of-00003.gguf"]
    for part in parts:
        src = open_source(tmp_path / part)
        assert list(src.infos()) == list(tensors)
        assert all(np.array_equal(src.read(k), v) for k, v in tensors.items())
        assert "split.no" not in src.inner.kv and src.inner.kv["llama.block_count"].value == 2
        src.close()


def test_split_output_is_what_gguf_split_writes(tmp_path):
    rng = np.random.default_rng(2)
    tensors = {f"blk.{i}.w": rng.standard_normal((8, 32)).astype(np.float32) for i in range(5)}  # 1024 bytes each
    src = gguf_py_file(tmp_path / "a.gguf", tensors)
    (tmp_path / "id.map").write_text(IDENTITY)
    out = tmp_path / "out.gguf"
    apply(tmp_path / "id.map", src, out, max_shard_size=2100)
    parts = sorted(p.name for p in out.iterdir())
    assert parts == ["out-00001-of-00003.gguf", "out-00002-of-00003.gguf", "out-00003-of-00003.gguf"]
    ref_fields = fields(src)
    for i, part in enumerate(parts):
        f = fields(out / part)
        assert f["split.no"] == ([VT.UINT16], i)
        assert f["split.count"] == ([VT.UINT16], 3)
        assert f["split.tensors.count"] == ([VT.INT32], 5)
        if i == 0:
            assert {k: v for k, v in f.items() if not k.startswith(("split.", "general.mapspec"))} == ref_fields
        else:
            assert set(f) == {"split.no", "split.count", "split.tensors.count"}
    assert [list(tensors_of(out / p)) for p in parts] == [["blk.0.w", "blk.1.w"], ["blk.2.w", "blk.3.w"], ["blk.4.w"]]
    back = open_source(out / parts[1])
    assert all(np.array_equal(back.read(k), v) for k, v in tensors.items())
    back.close()


def test_a_split_set_with_a_missing_or_foreign_part_is_refused(tmp_path):
    from mapspec.errors import CheckpointError

    tensors = {f"t{i}": np.full((2, 2), i, np.float32) for i in range(4)}
    gguf_py_split(tmp_path, tensors, 2)
    (tmp_path / "m-00002-of-00002.gguf").rename(tmp_path / "x.gguf")
    with pytest.raises(CheckpointError, match="missing"):
        open_source(tmp_path / "m-00001-of-00002.gguf")
    other = tmp_path / "o"
    other.mkdir()
    gguf_py_split(other, {f"t{i}": np.full((2, 2), i, np.float32) for i in range(3)}, 2)
    (other / "m-00002-of-00002.gguf").rename(tmp_path / "m-00002-of-00002.gguf")
    with pytest.raises(CheckpointError, match="split keys"):
        open_source(tmp_path / "m-00001-of-00002.gguf")


# ------------------------------------------------------------------ actions on quantized tensors

PERMUTE = """mapspec 1
blk.{i}.attn_q.weight -> blk.{i}.attn_q.weight
    then view(2, 2, 2, 256)
    then transpose(1, 2)
    then reshape(-1, 256)
"""


def rotary_permute(a: np.ndarray) -> np.ndarray:
    """The same row permutation on any array whose rows are the first axis."""
    return a.reshape(2, 2, 2, *a.shape[1:]).swapaxes(1, 2).reshape(a.shape)


@pytest.mark.parametrize("qtype", [Q.Q8_0, Q.Q4_K, Q.IQ4_NL, Q.F16])
def test_a_row_permute_on_packed_rows_moves_whole_blocks(tmp_path, qtype):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((8, 256)).astype(np.float32)
    if qtype in (Q.Q8_0, Q.F16):
        stored = gguf.quants.quantize(x, qtype)
    else:  # no quantizer in gguf-py: any bytes are blocks
        stored = rng.integers(0, 256, (8, 256 // gguf.GGML_QUANT_SIZES[qtype][0] * gguf.GGML_QUANT_SIZES[qtype][1]),
                              dtype=np.uint8)
    src = gguf_py_file(tmp_path / "a.gguf", {"blk.0.attn_q.weight": (stored, qtype)} if qtype != Q.F16 else
                       {"blk.0.attn_q.weight": stored})
    (tmp_path / "p.map").write_text(PERMUTE)
    apply(tmp_path / "p.map", src, tmp_path / "b.gguf")
    kind, shape, raw = tensors_of(tmp_path / "b.gguf")["blk.0.attn_q.weight"]
    assert kind == qtype and shape == (256, 8)
    assert raw == rotary_permute(stored.view(np.uint8).reshape(8, -1)).tobytes()


@pytest.mark.parametrize("body, words", [
    ("then transpose(0, 1)", "inside the rows"),
    ("then view(8, 2, 32)", "inside the rows"),
    ("then split((32, 32), 1, into=h)", "inside the rows"),
    ("then cast(int32)", "dequantize to"),
])
def test_actions_that_cut_packed_rows_are_refused_at_plan_time(tmp_path, body, words):
    x = np.random.default_rng(5).standard_normal((8, 64)).astype(np.float32)
    src = gguf_py_file(tmp_path / "a.gguf", {"w": (gguf.quants.quantize(x, Q.Q8_0), Q.Q8_0)})
    target = "w.{h:a|b}" if "into=h" in body else "w2"
    (tmp_path / "p.map").write_text(f"mapspec 1\nw -> {target}\n    {body}\n")
    with pytest.raises(PlanError, match=words):
        apply(tmp_path / "p.map", src, tmp_path / "b.gguf")
    assert not (tmp_path / "b.gguf").exists()


DEQUANTIZE = "mapspec 1\n{rest:**} -> {rest}\n    then cast({dtype})\n"


@pytest.mark.parametrize("qtype", [t for t in Q if gguf.GGML_QUANT_SIZES[t][0] > 1])
def test_every_type_gguf_py_dequantizes_converts_to_safetensors_with_its_values(tmp_path, qtype):
    from safetensors.numpy import load_file

    per, size = gguf.GGML_QUANT_SIZES[qtype]
    rng = np.random.default_rng(int(qtype))
    raw = rng.integers(0, 256, (3, 2 * size), dtype=np.uint8)  # random blocks: NaN scales too
    src = gguf_py_file(tmp_path / "a.gguf", {"w": (raw, qtype)})
    (tmp_path / "d.map").write_text(DEQUANTIZE.replace("{dtype}", "float32"))
    try:
        with np.errstate(all="ignore"):
            want = gguf.quants.dequantize(raw, qtype)
    except NotImplementedError:  # then mapspec refuses before writing anything
        with pytest.raises(PlanError, match="no dequantizer"):
            apply(tmp_path / "d.map", src, tmp_path / "o.safetensors")
        assert not (tmp_path / "o.safetensors").exists()
        return
    apply(tmp_path / "d.map", src, tmp_path / "o.safetensors")
    got = load_file(tmp_path / "o.safetensors")["w"]
    assert got.shape == (3, 2 * per) and got.dtype == np.float32
    assert got.tobytes() == want.tobytes()  # bit for bit, NaN payloads included


def test_a_gguf_rename_imports_no_numpy_and_copies_every_tensor(tmp_path):
    """GGUF -> GGUF renames read the header with struct and copy tensors file to file: the
    rename-only start stays free of numpy (see test_startup)."""
    from test_startup import _AT_EXIT, _console

    gguf_py_file(tmp_path / "in.gguf", sample_tensors())
    (tmp_path / "r.map").write_text(RENAME)
    r = _console(_AT_EXIT, "apply", "r.map", "in.gguf", "-o", "out.gguf", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    summary, at_exit = r.stdout.splitlines()
    assert summary.startswith("Transferred 9/9 tensors")
    assert "numpy" not in json.loads(at_exit)["modules"]
    assert len(tensors_of(tmp_path / "out.gguf")) == 9


def test_copied_tensors_keep_their_source_offset_modulo_64_kib(tmp_path):
    """Only the data section can move (llama.cpp wants tensors back to back): the provenance
    record's trailing spaces move it so that copies are folio-aligned (formats.base.GRANULE)."""
    from mapspec.formats.base import GRANULE

    big = {f"blk.{i}.w": np.full((512, 1024), i, np.float32) for i in range(3)}  # 2 MiB each
    src = gguf_py_file(tmp_path / "a.gguf", big)
    (tmp_path / "r.map").write_text(RENAME)
    apply(tmp_path / "r.map", src, tmp_path / "b.gguf")
    a, b = GGUFSource(src), GGUFSource(tmp_path / "b.gguf")
    for k in big:
        new = k.replace("blk.", "layers.")
        assert a.extent(k).offset % GRANULE == b.extent(new).offset % GRANULE
        assert np.array_equal(b.read(new), big[k])
    assert json.loads(b.kv["general.mapspec"].value)["source"] == "a.gguf"  # the spaces are JSON whitespace
    assert tensors_of(tmp_path / "b.gguf")["layers.1.w"][2] == big["blk.1.w"].tobytes()  # gguf-py agrees
    a.close()
    b.close()


def test_a_carried_file_type_is_dropped_when_tensor_types_change(tmp_path):
    x = np.random.default_rng(7).standard_normal((2, 32)).astype(np.float32)
    src = gguf_py_file(tmp_path / "a.gguf", {"w": x}, extra={"general.file_type": 0})
    (tmp_path / "id.map").write_text(IDENTITY)
    apply(tmp_path / "id.map", src, tmp_path / "same.gguf")
    assert fields(tmp_path / "same.gguf")["general.file_type"][1] == 0
    (tmp_path / "q.map").write_text(IDENTITY + "    then cast(q8_0)\n")
    apply(tmp_path / "q.map", src, tmp_path / "q.gguf")
    assert "general.file_type" not in fields(tmp_path / "q.gguf")
    apply(tmp_path / "q.map", src, tmp_path / "q7.gguf", kv={"general.file_type": 7})
    assert fields(tmp_path / "q7.gguf")["general.file_type"] == ([VT.UINT32], 7)


def test_a_model_directory_of_split_parts_opens_as_one_checkpoint(tmp_path):
    tensors = {f"t{i}": np.full((2, 2), i, np.float32) for i in range(3)}
    gguf_py_split(tmp_path, tensors, 1)
    src = open_source(tmp_path)
    assert list(src.infos()) == list(tensors)
    src.close()


def test_inspect_lists_the_parts_of_a_split_set(tmp_path):
    from typer.testing import CliRunner

    from mapspec.cli import app

    gguf_py_split(tmp_path, {f"t{i}": np.full((2, 2), i, np.float32) for i in range(3)}, 2)
    r = CliRunner().invoke(app, ["inspect", str(tmp_path / "m-00002-of-00002.gguf")])
    assert r.exit_code == 0, r.output
    assert "2 shards" in r.output and "m-00001-of-00002.gguf: 2 tensors" in r.output
    assert "m-00002-of-00002.gguf: 1 tensors" in r.output
