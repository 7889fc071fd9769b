"""Hostile and broken checkpoints, reader side (issue 7): every example the issue lists gets
its regression here, as exit 2 with one short `error:` line from the CLI, or as the data the
real library reads. Files are built byte by byte or written by the real libraries."""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import torch_zip
from mapspec.cli import app
from mapspec.errors import CheckpointError
from mapspec.formats import open_source
from mapspec.formats.reading import RegularFile

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


def cli_error(*args) -> str:
    """Run the CLI; it must exit 2 with exactly one short `error:` line and no traceback."""
    r = runner.invoke(app, [str(a) for a in args])
    text = r.output.strip()
    assert r.exit_code == 2, (r.exit_code, text[:2000], r.exception)
    assert "Traceback" not in text
    lines = text.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), text[:2000]
    assert len(lines[0]) < 1000
    return lines[0]


def inspect_error(path: Path) -> str:
    return cli_error("inspect", path)


def cli_subprocess(*args, timeout: float = 60) -> subprocess.CompletedProcess:
    """The CLI in its own process: for inputs that used to crash (segfault) or hang it."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1")
    return subprocess.run([sys.executable, "-c", "from mapspec.cli import main; main()", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, env=env)


def rezip(src: Path, dst: Path, edit) -> Path:
    """Copy a zip, member by member, through `edit(name, bytes) -> bytes`."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            zout.writestr(info.filename, edit(info.filename, zin.read(info)))
    return dst


G = b"\x80\x02"  # protocol 2 header


def glob(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


# ------------------------------------------------------------------ torch: fidelity

def test_big_endian_byteorder_record_is_swapped_as_torch_does(tmp_path, torch):
    t = {"f32": torch.arange(6, dtype=torch.float32).reshape(2, 3) - 2.5, "f16": torch.tensor([1.5, -3.0], dtype=torch.float16),
         "i64": torch.tensor([1, -2, 3 << 40]), "bf16": torch.tensor([1.0, -2.0], dtype=torch.bfloat16),
         "u16": torch.tensor([1, 2, 60000], dtype=torch.uint16), "b": torch.tensor([True, False])}
    torch.save(t, tmp_path / "le.pt")
    big = rezip(tmp_path / "le.pt", tmp_path / "big.pt", lambda n, d: b"big" if n.endswith("/byteorder") else d)
    expected = torch.load(big, weights_only=True)
    src = open_source(big)
    for k, v in expected.items():
        want = v.view(torch.int16).numpy().view(np.uint16) if v.dtype == torch.bfloat16 else v.numpy()
        np.testing.assert_array_equal(src.read(k), want, err_msg=k)
    # the values really were swapped (torch swaps by the storage dtype; uint16 is untyped, not swapped)
    assert not np.array_equal(src.read("f32"), t["f32"].numpy())
    np.testing.assert_array_equal(src.read("u16"), t["u16"].numpy())


def test_unknown_byteorder_is_refused(tmp_path, torch):
    torch.save({"a": torch.ones(2)}, tmp_path / "le.pt")
    rezip(tmp_path / "le.pt", tmp_path / "odd.pt", lambda n, d: b"middle" if n.endswith("/byteorder") else d)
    assert "unknown byte order" in inspect_error(tmp_path / "odd.pt")


def test_one_storage_with_two_dtypes_keeps_the_first_as_torch_does(tmp_path, torch):
    torch.save({"a": torch.tensor([1.0, 2.0]), "b": torch.tensor([3, 4], dtype=torch.int32)}, tmp_path / "two.pt")

    def edit(name, data):  # b's storage key '1' -> '0': b now names a's float storage as an IntStorage
        return data.replace(b"X\x01\x00\x00\x001", b"X\x01\x00\x00\x000") if name.endswith("data.pkl") else data

    shared = rezip(tmp_path / "two.pt", tmp_path / "shared.pt", edit)
    expected = torch.load(shared, weights_only=True)
    assert expected["b"].dtype == torch.float32  # what torch really does
    src = open_source(shared)
    assert src.infos()["b"].dtype == "float32"
    np.testing.assert_array_equal(src.read("b"), expected["b"].numpy())  # 1.0, not 1065353216


def test_uint_tensors_rebuilt_by_v3_are_read(tmp_path, torch):
    t = {"u16": torch.tensor([1, 65535], dtype=torch.uint16), "u32": torch.tensor([0, 1, 2 ** 32 - 1], dtype=torch.uint32),
         "u64": torch.tensor([2 ** 63], dtype=torch.uint64), "view": torch.tensor(list(range(8)), dtype=torch.uint16)[2:6:2]}
    torch.save(t, tmp_path / "u.pt")
    src = open_source(tmp_path / "u.pt")
    for k, v in t.items():
        assert src.infos()[k].dtype == str(v.dtype).removeprefix("torch.")
        np.testing.assert_array_equal(src.read(k), v.numpy())


@pytest.mark.parametrize("kind", ["sparse", "csr", "complex128", "complex32", "quantized"])
def test_valid_but_unsupported_torch_content_says_so(tmp_path, torch, kind):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        value = {"sparse": lambda: torch.eye(3).to_sparse(), "csr": lambda: torch.eye(3).to_sparse_csr(),
                 "complex128": lambda: torch.zeros(2, dtype=torch.complex128),
                 "complex32": lambda: torch.zeros(2, dtype=torch.complex32),
                 "quantized": lambda: torch.quantize_per_tensor(torch.zeros(3), 0.1, 0, torch.qint8)}[kind]()
    torch.save({"t": value}, tmp_path / f"{kind}.pt")
    line = inspect_error(tmp_path / f"{kind}.pt")
    assert "mapspec does not support" in line and "not a safety issue" in line
    assert "arbitrary code" not in line and "corrupt" not in line


def test_legacy_protocol_3_file_with_binbytes_is_read(tmp_path, torch):
    t = {"w": torch.arange(6, dtype=torch.float32).reshape(2, 3), "blob": b"\x00\x01" * 150,
         "half": torch.tensor([0.5, 2.0], dtype=torch.float16)}
    torch.save(t, tmp_path / "old.pt", _use_new_zipfile_serialization=False, pickle_protocol=3)
    assert b"B" + (300).to_bytes(4, "little") in (tmp_path / "old.pt").read_bytes()  # BINBYTES is in there
    src = open_source(tmp_path / "old.pt")
    assert set(src.infos()) == {"w", "half"}
    np.testing.assert_array_equal(src.read("w"), t["w"].numpy())
    np.testing.assert_array_equal(src.read("half"), t["half"].numpy())


def test_small_broadcast_views_read_as_torch_does_huge_ones_are_refused(tmp_path, torch):
    row = torch.arange(3, dtype=torch.float32)
    torch.save({"e": row.expand(4, 3)}, tmp_path / "small.pt")
    np.testing.assert_array_equal(open_source(tmp_path / "small.pt").read("e"),
                                  torch.load(tmp_path / "small.pt", weights_only=True)["e"].numpy())
    torch.save({"e": torch.zeros(1).expand(2 ** 31)}, tmp_path / "huge.pt")  # 8 GiB from one stored float
    assert (tmp_path / "huge.pt").stat().st_size < 2000
    assert "broadcast views" in inspect_error(tmp_path / "huge.pt")


# ------------------------------------------------------------------ pickles that allocate

def test_range_list_bomb_is_refused(tmp_path):
    pkl = G + glob("__builtin__", "list") + glob("__builtin__", "range") + b"J\x00\xca\x9a;\x85R\x85R."
    assert len(pkl) < 70
    assert "refusing to unpickle" in inspect_error(torch_zip(tmp_path / "r.pt", pkl))


def test_bytes_of_n_is_refused(tmp_path):
    pkl = G + glob("__builtin__", "bytes") + b"J\x00\xca\x9a;\x85R."
    assert "would allocate" in inspect_error(torch_zip(tmp_path / "b.pt", pkl))


def test_copies_of_a_list_through_the_memo_are_charged(tmp_path):
    # L = [0] * 1000; then 10,000 times list(L), each dropped at once: 10M elements built
    # from a 70 KB pickle (no container holds them, so only the builders' budget sees it)
    pkl = G + glob("__builtin__", "list") + b"q\x010" + b"](" + b"K\x00" * 1000 + b"eq\x000"
    pkl += b"h\x01h\x00\x85R0" * 10_000 + b"N."
    line = inspect_error(torch_zip(tmp_path / "copies.pt", pkl))
    assert "the pickle builds: more than" in line and "objects" in line


def _laughs(container: bytes, close: bytes) -> bytes:
    """Ten levels of ten references to the level below: 10**10 leaves, a few hundred bytes."""
    out = G + container + b"(" + b"K\x01" * 10 + close + b"q\x00"
    for level in range(1, 10):
        out += container + b"(" + b"h" + bytes([level - 1]) * 1 + (b"h" + bytes([level - 1])) * 9 + close
        out += b"q" + bytes([level])
    return out


def test_billion_laughs_lists_are_refused(tmp_path):
    pkl = _laughs(b"]", b"e") + b"."
    assert "shared references" in inspect_error(torch_zip(tmp_path / "lol.pt", pkl))


def test_billion_laughs_dict_values_are_refused(tmp_path):
    # dicts {0: L, 1: L, ...} nested ten deep through the memo
    out = G + b"}q\x00"
    for level in range(1, 10):
        out += b"}(" + b"".join(b"K" + bytes([i]) + b"h" + bytes([level - 1]) for i in range(10)) + b"uq" + bytes([level])
    assert "shared references" in inspect_error(torch_zip(tmp_path / "lold.pt", out + b"."))


def test_billion_laughs_tuples_are_refused_before_hashing(tmp_path):
    out = G + b"(" + b"K\x01" * 10 + b"tq\x00"
    for level in range(1, 10):
        out += b"(" + (b"h" + bytes([level - 1])) * 10 + b"tq" + bytes([level])
    pkl = out + b"}q\x0ah\x09K\x01s."  # {T9: 1} would hash 10**9 tuples
    assert "shared references" in inspect_error(torch_zip(tmp_path / "lolt.pt", pkl))


def test_binbytes8_with_a_huge_length_is_refused(tmp_path):
    pkl = b"\x80\x04\x8e" + (2 ** 62).to_bytes(8, "little") + b"abc."
    assert "a length of 4611686018427387904 bytes" in inspect_error(torch_zip(tmp_path / "b8.pt", pkl))


def test_huge_memo_index_is_refused(tmp_path):
    pkl = G + b"]r" + (2 ** 32 - 2).to_bytes(4, "little") + b"."  # LONG_BINPUT: the C memo grows to it
    assert "memo index" in inspect_error(torch_zip(tmp_path / "memo.pt", pkl))


def test_deep_tuple_as_dict_key_is_refused_without_a_crash(tmp_path):
    pkl = G + b"}" + b")" + b"\x85" * 200_000 + b"K\x01s."  # {((((...)))): 1}, hashing recurses in C
    path = torch_zip(tmp_path / "deep.pt", pkl)
    r = cli_subprocess("inspect", path)
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    assert r.stderr.strip().startswith("error: ") and "nests deeper" in r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize("pkl", [
    G + b"I" + b"9" * 5000 + b"\n.",  # text INT over Python's 4,300-digit limit
    G + b"L" + b"9" * 5000 + b"L\n.",
    G + b"\x8b" + (3000).to_bytes(4, "little") + b"\x01" * 3000 + b".",  # LONG4 of 3,000 bytes
], ids=["INT", "LONG", "LONG4"])
def test_huge_integers_in_a_pickle_are_clear_errors(tmp_path, pkl):
    assert "pickle" in inspect_error(torch_zip(tmp_path / "int.pt", pkl))


# ------------------------------------------------------------------ zip members

def _patch_member(path: Path, name: str, *, flag: int | None = None, method: int | None = None,
                  size: int | None = None) -> None:
    """Rewrite fields of a member's local and central headers in place."""
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(io.BytesIO(bytes(data))) as z:
        info = z.getinfo(name)
    local = info.header_offset
    central = [i for i in _find_all(data, b"PK\x01\x02")
               if data[i + 46:i + 46 + len(name)] == name.encode()][0]
    for at, flag_at, method_at, size_at in ((local, 6, 8, 22), (central, 8, 10, 24)):
        if flag is not None:
            struct.pack_into("<H", data, at + flag_at, flag)
        if method is not None:
            struct.pack_into("<H", data, at + method_at, method)
        if size is not None:
            struct.pack_into("<I", data, at + size_at, size)
    path.write_bytes(bytes(data))


def _find_all(data: bytes, needle: bytes):
    i = data.find(needle)
    while i >= 0:
        yield i
        i = data.find(needle, i + 1)


def _npz(path: Path, compressed: bool = False) -> Path:
    (np.savez_compressed if compressed else np.savez)(path, a=np.arange(64, dtype=np.float32))
    return path


def test_npz_member_with_a_bad_crc_is_refused(tmp_path):
    path = _npz(tmp_path / "c.npz")
    data = bytearray(path.read_bytes())
    data[data.index(b"\x93NUMPY") + 200] ^= 0xFF  # a byte of the array data
    path.write_bytes(bytes(data))
    assert "CRC" in cli_error("apply", _keep(tmp_path), path, "-o", tmp_path / "o.safetensors")
    assert not (tmp_path / "o.safetensors").exists()


def test_npz_with_bytes_before_its_archive_is_refused_as_np_load_refuses_it(tmp_path):
    """zipfile reads past data prepended to an archive; np.load decides by the first bytes
    and refuses it (as a pickle). Found by fuzz seed 10 (mutation 401)."""
    path = _npz(tmp_path / "p.npz", compressed=True)
    path.write_bytes(b"junk before the archive" + path.read_bytes())
    with pytest.raises(ValueError):
        np.load(path)
    assert "does not start with a zip header" in cli_error("apply", _keep(tmp_path), path, "-o", tmp_path / "o.safetensors")
    assert not (tmp_path / "o.safetensors").exists()
    np.savez(tmp_path / "empty.npz")  # an empty archive is only its end record: still an .npz
    r = runner.invoke(app, ["inspect", str(tmp_path / "empty.npz")])
    assert r.exit_code == 0, r.output


def test_pt_data_pkl_with_a_bad_crc_is_refused(tmp_path, torch):
    torch.save({"a": torch.ones(2)}, tmp_path / "ok.pt")
    data = bytearray((tmp_path / "ok.pt").read_bytes())
    i = data.index(b"X\x01\x00\x00\x00a")
    data[i + 5] = ord("b")
    (tmp_path / "crc.pt").write_bytes(bytes(data))
    assert "CRC-32" in inspect_error(tmp_path / "crc.pt")


def test_pt_written_without_crc_is_read_as_torch_reads_it(tmp_path, torch):
    try:
        torch.serialization.set_crc32_options(False)
        torch.save({"a": torch.arange(3.0)}, tmp_path / "nocrc.pt")
    finally:
        torch.serialization.set_crc32_options(True)
    np.testing.assert_array_equal(open_source(tmp_path / "nocrc.pt").read("a"), [0.0, 1.0, 2.0])


@pytest.mark.parametrize("fmt", ["npz", "pt"])
@pytest.mark.parametrize("how", ["encrypted", "unknown compression", "garbled"])
def test_bad_zip_members_are_clear_errors(tmp_path, torch, fmt, how):
    if fmt == "npz":
        path, member = _npz(tmp_path / "x.npz"), "a.npy"
    else:
        path = tmp_path / "x.pt"
        torch.save({"a": torch.ones(2)}, path)
        member = "x/data.pkl"
    if how == "encrypted":
        _patch_member(path, member, flag=1)
        expected = "encrypted"
    elif how == "unknown compression":
        _patch_member(path, member, method=99)
        expected = "compression method 99"
    else:
        data = bytearray(path.read_bytes())
        data[len(data) - 40:len(data) - 20] = b"\xee" * 20  # the central directory's tail
        path.write_bytes(bytes(data))
        expected = ""
    assert expected in inspect_error(path)


def test_zip_bomb_in_data_pkl_is_refused_before_inflating(tmp_path):
    pkl = G + b"X" + (50_000_000).to_bytes(4, "little") + b"a" * 50_000_000 + b"."
    path = tmp_path / "bomb.pt"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("archive/data.pkl", pkl)
    del pkl
    _patch_member(path, "archive/data.pkl", size=0xFFFFFFF0)  # claims more than deflate can make
    assert "zip bomb" in inspect_error(path)


def test_zip_bomb_over_the_pickle_limit_is_refused(tmp_path, monkeypatch):
    from mapspec.formats import torch_pickle

    monkeypatch.setattr(torch_pickle, "MAX_PICKLE", 1 << 20)
    pkl = G + b"X" + (4_000_000).to_bytes(4, "little") + b"a" * 4_000_000 + b"."
    path = tmp_path / "bomb.pt"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("archive/data.pkl", pkl)
    assert path.stat().st_size < 100_000
    assert "more than it can be" in inspect_error(path)


def test_npz_member_declaring_a_huge_shape_is_refused_before_allocating(tmp_path):
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<f4", "fortran_order": False, "shape": (10 ** 6, 10 ** 6)})
    with zipfile.ZipFile(tmp_path / "h.npz", "w") as z:
        z.writestr("a.npy", buf.getvalue() + b"\0" * 16)
    assert "declares shape" in inspect_error(tmp_path / "h.npz")


def test_npz_zip_bomb_is_refused(tmp_path):
    path = _npz(tmp_path / "z.npz", compressed=True)
    _patch_member(path, "a.npy", size=0xFFFFFFF0)
    assert "zip bomb" in inspect_error(path)


def test_npz_with_too_many_dimensions_is_refused_at_open(tmp_path):
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<f4", "fortran_order": False, "shape": (1,) * 65})
    with zipfile.ZipFile(tmp_path / "d.npz", "w") as z:
        z.writestr("a.npy", buf.getvalue() + b"\0" * 4)
    assert "dimensions" in inspect_error(tmp_path / "d.npz")


def _keep(tmp_path: Path) -> Path:
    spec = tmp_path / "keep.map"
    spec.write_text("keep **\n")
    return spec


# ------------------------------------------------------------------ safetensors

def st(header: bytes, data: bytes = b"") -> bytes:
    return struct.pack("<Q", len(header)) + header + data


F32 = b'"dtype":"F32"'
SAFETENSORS_CASES = {
    "valid": st(b'{"a":{' + F32 + b',"shape":[1],"data_offsets":[0,4]}}', b"\0" * 4),
    "float shape": st(b'{"a":{' + F32 + b',"shape":[1.0],"data_offsets":[0,4]}}', b"\0" * 4),
    "string shape": st(b'{"a":{' + F32 + b',"shape":["34"],"data_offsets":[0,48]}}', b"\0" * 48),
    "string as shape": st(b'{"a":{' + F32 + b',"shape":"34","data_offsets":[0,48]}}', b"\0" * 48),
    "bool shape": st(b'{"a":{' + F32 + b',"shape":[true],"data_offsets":[0,4]}}', b"\0" * 4),
    "negative dim": st(b'{"a":{' + F32 + b',"shape":[-1],"data_offsets":[0,4]}}', b"\0" * 4),
    "minus zero": st(b'{"a":{' + F32 + b',"shape":[-0],"data_offsets":[0,0]}}'),
    "exponent": st(b'{"a":{' + F32 + b',"shape":[1e0],"data_offsets":[0,4]}}', b"\0" * 4),
    "1e400": st(b'{"a":{' + F32 + b',"shape":[1e400],"data_offsets":[0,4]}}', b"\0" * 4),
    "Infinity": st(b'{"a":{' + F32 + b',"shape":[Infinity],"data_offsets":[0,4]}}', b"\0" * 4),
    "NaN metadata": st(b'{"__metadata__":{"x":NaN}}'),
    "deep nesting": st(b'{"__metadata__":' + b"[" * 50_000 + b"]" * 50_000 + b"}"),
    "overlap": st(b'{"a":{' + F32 + b',"shape":[1],"data_offsets":[0,4]},"b":{' + F32
                  + b',"shape":[1],"data_offsets":[0,4]}}', b"\0" * 4),
    "gap": st(b'{"a":{' + F32 + b',"shape":[1],"data_offsets":[4,8]}}', b"\0" * 8),
    "trailing bytes": st(b'{"a":{' + F32 + b',"shape":[1],"data_offsets":[0,4]}}', b"\0" * 5),
    "BOM": st(b'\xef\xbb\xbf{"a":{' + F32 + b',"shape":[1],"data_offsets":[0,4]}}', b"\0" * 4),
    "not UTF-8": st(b'{"\xff":{' + F32 + b',"shape":[1],"data_offsets":[0,4]}}', b"\0" * 4),
    "lone surrogate": st(b'{"\\ud800":{' + F32 + b',"shape":[1],"data_offsets":[0,4]}}', b"\0" * 4),
    "unknown dtype": st(b'{"a":{"dtype":"F31","shape":[1],"data_offsets":[0,4]}}', b"\0" * 4),
    "metadata not strings": st(b'{"__metadata__":{"k":1}}'),
    "three offsets": st(b'{"a":{' + F32 + b',"shape":[1],"data_offsets":[0,4,4]}}', b"\0" * 4),
    "size mismatch": st(b'{"a":{' + F32 + b',"shape":[2],"data_offsets":[0,4]}}', b"\0" * 4),
    "trailing garbage in JSON": st(b'{"a":{' + F32 + b',"shape":[1],"data_offsets":[0,4]}}\0', b"\0" * 4),
    "padding spaces": st(b'{"a":{' + F32 + b',"shape":[1],"data_offsets":[0,4]}}     ', b"\0" * 4),
    "leading whitespace": st(b' {"a":{' + F32 + b',"shape":[1],"data_offsets":[0,4]}}', b"\0" * 4),
    "empty": st(b"{}"),
    "empty with a byte": st(b"{}", b"\0"),
    "header too long": struct.pack("<Q", 100_000_001) + b"{}",
    "zero-size tensor": st(b'{"a":{' + F32 + b',"shape":[0,3],"data_offsets":[0,0]},"b":{' + F32
                           + b',"shape":[1],"data_offsets":[0,4]}}', b"\0" * 4),
    "unknown field": st(b'{"a":{' + F32 + b',"shape":[1],"data_offsets":[0,4],"x":1}}', b"\0" * 4),
    "null tensor": st(b'{"a":null}'),
}


@pytest.mark.parametrize("case", sorted(SAFETENSORS_CASES))
def test_safetensors_header_verdict_equals_the_library(tmp_path, case):
    safetensors_numpy = pytest.importorskip("safetensors.numpy")
    blob = SAFETENSORS_CASES[case]
    path = tmp_path / "x.safetensors"
    path.write_bytes(blob)
    try:
        expected = safetensors_numpy.load(blob)
    except Exception:  # noqa: BLE001 - any refusal by the library
        expected = None
    if expected is None:
        inspect_error(path)
    else:
        src = open_source(path)
        assert set(src.infos()) == set(expected)
        for k, v in expected.items():
            np.testing.assert_array_equal(src.read(k), v)


def test_safetensors_duplicate_keys_are_refused(tmp_path):
    # the library keeps the last entry silently; mapspec refuses to guess which one is meant
    blob = st(b'{"a":{' + F32 + b',"shape":[1],"data_offsets":[0,4]},"a":{' + F32
              + b',"shape":[1],"data_offsets":[0,4]}}', b"\0" * 4)
    (tmp_path / "d.safetensors").write_bytes(blob)
    assert "appears twice" in inspect_error(tmp_path / "d.safetensors")


@pytest.mark.parametrize("shape, data, words", [
    ([1] * 65, 4, "dimensions"),
    ([0, 2 ** 40, 2 ** 40], 0, "overflows"),
])
def test_safetensors_shapes_numpy_cannot_hold_are_refused_at_open(tmp_path, shape, data, words):
    header = json.dumps({"a": {"dtype": "F32", "shape": shape, "data_offsets": [0, data]}}).encode()
    (tmp_path / "s.safetensors").write_bytes(st(header, b"\0" * data))
    with pytest.raises(CheckpointError, match=words):
        open_source(tmp_path / "s.safetensors")
    assert words in inspect_error(tmp_path / "s.safetensors")


def test_a_megabyte_key_name_is_not_echoed_whole(tmp_path):
    name = "k" * 1_000_000
    header = json.dumps({name: {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}).encode()
    (tmp_path / "long.safetensors").write_bytes(st(header, b"\0" * 4))
    line = inspect_error(tmp_path / "long.safetensors")
    assert "characters" in line and len(line) < 600


# ------------------------------------------------------------------ special files

def test_fifo_and_devices_are_refused_without_hanging(tmp_path):
    fifo = tmp_path / "pipe.safetensors"
    os.mkfifo(fifo)
    for path in (fifo, tmp_path / "pipe", Path("/dev/zero")):
        if path.name == "pipe":
            os.mkfifo(path)
        r = cli_subprocess("inspect", path, timeout=60)
        assert r.returncode == 2, r.stderr
        assert "regular files only" in r.stderr and "Traceback" not in r.stderr


def test_truncated_while_being_read_is_an_error_not_sigbus(tmp_path):
    arrays = {"a": np.arange(1 << 16, dtype=np.float32), "b": np.ones(1 << 16, np.float32)}
    from safetensors.numpy import save_file

    save_file(arrays, tmp_path / "t.safetensors")
    src = open_source(tmp_path / "t.safetensors")
    np.testing.assert_array_equal(src.read("a"), arrays["a"])
    os.truncate(tmp_path / "t.safetensors", 1000)  # another process cuts the file mid-conversion
    with pytest.raises(CheckpointError, match="truncated"):
        src.read("b")
    src.close()


def test_regular_file_short_read_is_reported_with_its_offset(tmp_path):
    (tmp_path / "f").write_bytes(b"x" * 100)
    with RegularFile(tmp_path / "f") as f:
        os.truncate(tmp_path / "f", 10)
        with pytest.raises(CheckpointError, match="ended at byte 10"):
            f.read_range(0, 50)
        with pytest.raises(CheckpointError, match="at byte 90 needs 20 bytes"):
            f.read_range(90, 20)


def test_a_large_read_split_between_the_cores_gives_the_bytes_of_one_read(tmp_path, monkeypatch):
    from mapspec.formats import reading

    monkeypatch.setattr(reading, "PARALLEL_BYTES", 8192)
    data = np.random.default_rng(3).integers(0, 256, 100_003, dtype=np.uint8).tobytes()
    (tmp_path / "f").write_bytes(data)
    with RegularFile(tmp_path / "f") as f:
        for offset, n in ((0, 100_003), (1, 8191), (7, 8192), (4095, 50_001), (99_000, 1003)):
            assert f.read_range(offset, n).tobytes() == data[offset:offset + n], (offset, n)


def test_a_split_read_of_a_file_cut_under_it_names_the_byte_it_ended_at(tmp_path, monkeypatch):
    from mapspec.formats import reading

    monkeypatch.setattr(reading, "PARALLEL_BYTES", 8192)
    (tmp_path / "f").write_bytes(b"x" * 100_000)
    with RegularFile(tmp_path / "f") as f:
        os.truncate(tmp_path / "f", 60_000)  # inside the second piece: the first reads whole
        with pytest.raises(CheckpointError, match="ended at byte 60000 while reading"):
            f.read_range(0, 100_000)
        os.truncate(tmp_path / "f", 10_000)  # inside the first: both fail, the first to fail is raised
        with pytest.raises(CheckpointError, match="ended at byte (10000|53248) while reading"):
            f.read_range(0, 100_000)


# ------------------------------------------------------------------ MXNet

def _mx_file(records: list[bytes], names: list[str]) -> bytes:
    out = struct.pack("<QQQ", 0x112, 0, len(records)) + b"".join(records) + struct.pack("<Q", len(names))
    return out + b"".join(struct.pack("<Q", len(n)) + n.encode() for n in names)


def _shape(dims) -> bytes:
    return struct.pack("<i", len(dims)) + struct.pack(f"<{len(dims)}q", *dims)


def _row_sparse(shape, rows, values: np.ndarray, idx_shape=None) -> bytes:
    rows = np.asarray(rows, np.int64)
    storage = (len(rows),) + tuple(shape[1:])
    head = struct.pack("<Ii", 0xF993FAC9, 1) + _shape(storage) + _shape(shape) + struct.pack("<iii", 1, 0, 0)
    head += struct.pack("<i", 6) + _shape(idx_shape or (len(rows),))
    return head + values.astype(np.float32).tobytes() + rows.tobytes()


def test_mxnet_row_sparse_reads_as_dense(tmp_path):
    (tmp_path / "s.params").write_bytes(_mx_file([_row_sparse((4, 2), [1, 3], np.ones((2, 2)))], ["w"]))
    np.testing.assert_array_equal(open_source(tmp_path / "s.params").read("w"), [[0, 0], [1, 1], [0, 0], [1, 1]])


@pytest.mark.parametrize("rows, idx_shape, words", [
    ([1, 9], None, "out of range"),
    ([3, 1], None, "out of order"),
    ([1, 3], (3,), "row indices for 2 stored rows"),
])
def test_mxnet_sparse_arrays_whose_aux_data_does_not_match_are_refused(tmp_path, rows, idx_shape, words):
    record = _row_sparse((4, 2), rows, np.ones((2, 2)), idx_shape)
    if idx_shape:
        record += b"\0" * 8
    (tmp_path / "s.params").write_bytes(_mx_file([record], ["w"]))
    line = cli_error("apply", _keep(tmp_path), tmp_path / "s.params", "-o", tmp_path / "o.safetensors")
    assert words in line
    assert not (tmp_path / "o.safetensors").exists()


def test_mxnet_csr_with_inconsistent_indptr_is_refused(tmp_path):
    head = struct.pack("<Ii", 0xF993FAC9, 2) + _shape((2,)) + _shape((2, 3)) + struct.pack("<iii", 1, 0, 0)
    head += struct.pack("<i", 6) + _shape((3,)) + struct.pack("<i", 6) + _shape((2,))
    record = head + np.ones(2, np.float32).tobytes() + np.array([0, 2, 1], np.int64).tobytes() + np.array([0, 1], np.int64).tobytes()
    (tmp_path / "c.params").write_bytes(_mx_file([record], ["m"]))
    assert "inconsistent indices" in cli_error("apply", _keep(tmp_path), tmp_path / "c.params", "-o", tmp_path / "o.npz")


def test_mxnet_sparse_expanding_past_the_limit_is_refused(tmp_path):
    record = _row_sparse((2 ** 40, 2), [0], np.ones((1, 2)))
    (tmp_path / "big.params").write_bytes(_mx_file([record], ["w"]))
    assert "expand" in inspect_error(tmp_path / "big.params")


def test_mxnet_too_many_dimensions_is_refused(tmp_path):
    record = struct.pack("<Ii", 0xF993FAC9, 0) + _shape((1,) * 65) + struct.pack("<iii", 1, 0, 0) + b"\0" * 4
    (tmp_path / "d.params").write_bytes(_mx_file([record], ["w"]))
    assert "dimensions" in inspect_error(tmp_path / "d.params")


# ------------------------------------------------------------------ OneFlow

def _oneflow(tmp_path: Path) -> Path:
    from mapspec.formats.oneflow import OneflowSink
    from mapspec.compile.plan import TensorInfo

    sink = OneflowSink(tmp_path / "ck", {"w": TensorInfo((2,), "float32")})
    sink.write("w", np.array([1.0, 2.0], np.float32))
    sink.commit()
    return tmp_path / "ck"


def test_oneflow_out_symlink_leaving_the_checkpoint_is_refused(tmp_path):
    ck = _oneflow(tmp_path)
    secret = tmp_path / "secret.bin"
    secret.write_bytes(b"\x00\x00\x80?" * 2)
    out = next(ck.glob("tensor_*/out"))
    out.unlink()
    out.symlink_to(secret)
    assert "outside the checkpoint" in inspect_error(ck)


def test_oneflow_old_layout_symlinked_folder_is_refused(tmp_path):
    elsewhere = tmp_path / "elsewhere" / "w"
    elsewhere.mkdir(parents=True)
    (elsewhere / "meta").write_text("shape {\n  dim: 1\n}\ndata_type: kFloat\n")
    (elsewhere / "out").write_bytes(b"\0" * 4)
    ck = tmp_path / "old"
    ck.mkdir()
    (ck / "snapshot_done").write_text("")
    (ck / "w").mkdir()
    (ck / "w" / "meta").symlink_to(elsewhere / "meta")
    (ck / "w" / "out").symlink_to(elsewhere / "out")
    assert "outside the checkpoint" in inspect_error(ck)


@pytest.mark.parametrize("meta, words", [
    (b"shape {\n  dim: 2\n}\ndata_type: kFloat\xff\n", "not UTF-8"),
    (b"shape {\n  dim: " + b"9" * 5000 + b"\n}\ndata_type: kFloat\n", "too large"),
    (b"shape {\n" + b"  dim: 1\n" * 65 + b"}\ndata_type: kFloat\n", "dimensions"),
])
def test_oneflow_bad_meta_is_a_clear_error(tmp_path, meta, words):
    ck = _oneflow(tmp_path)
    next(ck.glob("tensor_*/meta")).write_bytes(meta)
    assert words in inspect_error(ck)


# ------------------------------------------------------------------ .wts

@pytest.mark.parametrize("text, words, at_read", [
    (b"1\nw 2  3f800000 zz000000\n", "not hexadecimal", True),
    (b"1\nw 2  3f800000 3f8000\n", "not 8 hex digits", True),
    (b"1\nw 3  3f800000 3f800000\n", "announces 3 values, holds 2", False),
    (b"2\nw 1  3f800000\n", "the file ends after 1", False),
    (b"x\nw 1  3f800000\n", "not a .wts file", False),
    (b"1\nw -1  3f800000\n", "is not a number", False),
    (b"1\nw 99999999999999999999999  3f800000\n", "is not a number", False),
    (b"1\n\xffw 1  3f800000\n", "not UTF-8", False),
    (b"1\nbn.runn\x00\x00\x01 1  3f800000\n", "NUL character", False),
    (b"1\nw 1  3f800000\nv 1  3f800000\n", "more entries than", False),
    (b"2\nw 1  3f800000\nw 1  3f800000\n", "appears twice", False),
    (b"999999999999\nw 1  3f800000\n", "entries announced", False),
])
def test_malformed_wts_is_a_clear_error(tmp_path, text, words, at_read):
    (tmp_path / "m.wts").write_bytes(text)
    if at_read:
        line = cli_error("apply", _keep(tmp_path), tmp_path / "m.wts", "-o", tmp_path / "o.safetensors")
    else:
        line = inspect_error(tmp_path / "m.wts")
    assert words in line


# ------------------------------------------------------------------ inspect

class _Odd:
    """Pickled under a module name mapspec does not know: a stand-in when read back."""


def test_inspect_json_is_plain_and_never_uses_the_files_reprs(tmp_path, torch):
    ck = {"model": {"w": torch.ones(2)}, "best_fitness": np.float64(0.5), "epoch": np.int64(3),
          "flag": np.bool_(True), "big": 2 ** 2000, "nan": float("nan"), "cplx": 1 + 2j, "sl": slice(1, 2, 3),
          "dev": torch.device("cpu"), "dt": torch.float16, "set": {1, 2}, (1, 2): "tuple key", "obj": _Odd(),
          "long": "y" * 1_000_000}
    torch.save(ck, tmp_path / "c.pt")
    r = runner.invoke(app, ["inspect", str(tmp_path / "c.pt"), "--format", "json"])
    assert r.exit_code == 0, r.output
    tree = json.loads(r.output, parse_constant=lambda c: pytest.fail(f"{c} in JSON"))
    entries = tree["content"]["entries"]
    assert entries["best_fitness"]["value"] == 0.5 and entries["epoch"]["value"] == 3
    assert entries["flag"]["value"] is True
    assert entries["big"]["value"] == "<integer of 2001 bits>"
    assert entries["nan"]["value"] == "nan" and entries["cplx"]["value"] == "(1+2j)"
    assert entries["sl"]["value"] == "<slice>"
    assert entries["(1, 2)" if "(1, 2)" in entries else "<tuple>"]["value"] == "tuple key"
    assert entries["obj"]["class"].endswith("._Odd")  # a stand-in, described by its name only
    assert tree["auto_select"] == "model"
    assert 1000 < len(entries["long"]["value"]) < 1100 and "more characters" in entries["long"]["value"]


def test_inspect_of_a_module_field_holding_a_laughs_graph_is_bounded(tmp_path):
    # an object whose attribute is a 10-level list of memo references (10**10 leaves)
    pkl = _laughs(b"]", b"e")
    pkl += glob("somewhere", "Cfg") + b")\x81}X\x03\x00\x00\x00cfgh\x09sb."  # NEWOBJ + BUILD({'cfg': L9})
    line = inspect_error(torch_zip(tmp_path / "cfg.pt", pkl))
    assert "shared references" in line


def test_every_listed_reader_failure_is_a_checkpoint_error_naming_the_file(tmp_path):
    # the guard: an exception type no reader expects still becomes one CheckpointError
    from mapspec.formats.reading import reading

    with pytest.raises(CheckpointError, match=r"^/x/y\.pt: unreadable \(ZeroDivisionError"):
        with reading("/x/y.pt"):
            1 / 0
    with pytest.raises(CheckpointError, match="not enough memory"):
        with reading("/x/y.pt"):
            raise MemoryError
    with pytest.raises(CheckpointError, match=r"\.\.\. \(\d+ more characters\)"):
        with reading("/x/y.pt"):
            raise CheckpointError("e" * 100_000)


# ------------------------------------------------------------------ torch tensor geometry

def _pt_with_geometry(path: Path, torch, numel: int, size, stride, offset=0) -> Path:
    """A torch zip whose one tensor has the given geometry over a float storage of `numel`."""
    import collections
    import pickle

    class Storage:
        pass

    class Tensor:
        def __reduce__(self):
            return torch._utils._rebuild_tensor_v2, (Storage(), offset, tuple(size), tuple(stride), False,
                                                     collections.OrderedDict())

    buf = io.BytesIO()
    pickler = pickle.Pickler(buf, protocol=2)
    pickler.persistent_id = lambda o: ("storage", torch.FloatStorage, "0", "cpu", numel) if isinstance(o, Storage) else None
    pickler.dump({"t": Tensor()})
    return torch_zip(path, buf.getvalue(), {"data/0": b"\0" * (4 * numel)})


@pytest.mark.parametrize("size, stride, offset, words", [
    ((1,) * 33, (1,) * 33, 0, "dimensions"),
    ((-2,), (1,), 0, "corrupt tensor geometry"),
    ((2,), (-1,), 0, "corrupt tensor geometry"),
    ((0, 2 ** 40, 2 ** 40), (1, 1, 1), 0, "overflows"),
    ((3,), (2,), 0, "outside its storage"),
    ((2,), (1,), 3, "outside its storage"),
    ((2,), (1,), 2 ** 70, "corrupt tensor offset"),
])
def test_torch_tensor_geometry_is_checked_at_open(tmp_path, torch, size, stride, offset, words):
    path = _pt_with_geometry(tmp_path / "g.pt", torch, 4, size, stride, offset)
    assert words in inspect_error(path)


def test_extent_is_the_bytes_read_for_pass_through_copies(tmp_path, torch):
    from safetensors.numpy import save_file

    t = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    torch.save({"w": t, "wt": t.t(), "row": t[1]}, tmp_path / "c.pt")
    save_file({"w": t.numpy()}, tmp_path / "c.safetensors")
    from mapspec.formats.mxnet import MXNetSink
    from mapspec.compile.plan import TensorInfo

    sink = MXNetSink(tmp_path / "c.params", {"w": TensorInfo((3, 4), "float32")})
    sink.write("w", t.numpy())
    sink.commit()
    for name in ("c.pt", "c.safetensors", "c.params"):
        src = open_source(tmp_path / name)
        file, offset, nbytes = src.extent("w")[:3]
        assert file.read_bytes(offset, nbytes) == src.read("w").tobytes()
    src = open_source(tmp_path / "c.pt")
    assert src.extent("wt") is None  # a transposed view is not its stored bytes
    file, offset, nbytes = src.extent("row")[:3]
    assert file.read_bytes(offset, nbytes) == t[1].numpy().tobytes()


def test_messages_never_repr_what_the_pickle_built(tmp_path):
    # a persistent id that is a list of lists filled after they were nested (10**9 leaves
    # that the size check cannot see): the error must describe it, not print it
    pkl = G + b"".join(b"]q" + bytes([i]) + b"0" for i in range(10))
    for level in range(9, 0, -1):  # outermost first, so each list is nested while still empty
        pkl += b"h" + bytes([level]) + b"(" + (b"h" + bytes([level - 1])) * 10 + b"e0"
    pkl += b"h\x09Q."  # BINPERSID of the outermost list
    line = inspect_error(torch_zip(tmp_path / "pid.pt", pkl))
    assert "unsupported persistent id" in line and len(line) < 400


@pytest.mark.parametrize("kind", ["int", "tuple"])
def test_crafted_hash_collisions_are_refused(tmp_path, kind):
    # dict keys that all hash alike make building the dict quadratic: 100k of them, minutes
    import pickle

    p = 2 ** 61 - 1  # hash(n) == n % p for ints, and tuples hash their items' hashes
    keys = [i * p for i in range(1, 200)] if kind == "int" else [(i * p, 0) for i in range(1, 200)]
    assert len({hash(k) for k in keys}) == 1
    pkl = pickle.dumps(dict.fromkeys(keys, 0), protocol=2)
    assert "same hash" in inspect_error(torch_zip(tmp_path / "h.pt", pkl))


def test_npz_dtype_table_declaring_a_huge_string_is_refused_before_allocating(tmp_path):
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<U100000000", "fortran_order": False, "shape": ()})
    with zipfile.ZipFile(tmp_path / "t.npz", "w") as z:
        z.writestr("a.npy", _npy(np.zeros(2, np.uint16)))
        z.writestr("__mapspec_dtypes__.npy", buf.getvalue() + b"{}")
    assert "dtype table" in inspect_error(tmp_path / "t.npz")


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, array)
    return buf.getvalue()


def test_pickle_build_cannot_change_the_readers_functions(tmp_path, torch):
    # BUILD with slot state on a global sets attributes with setattr(); on a plain function
    # that would change it for every later load in the process
    pkl = G + glob("torch._utils", "_rebuild_parameter") + b"N}X\x0c\x00\x00\x00__defaults__(\x88tsb."
    line = inspect_error(torch_zip(tmp_path / "b.pt", pkl))
    assert line.startswith("error: ")
    torch.save({"p": torch.nn.Parameter(torch.ones(2))}, tmp_path / "ok.pt")
    np.testing.assert_array_equal(open_source(tmp_path / "ok.pt").read("p"), [1.0, 1.0])


def test_provenance_records_are_read_as_hostile_input_too(tmp_path, torch):
    from mapspec.formats.provenance import SIDECAR

    torch.save({"a": torch.ones(2)}, tmp_path / "ok.pt")
    with zipfile.ZipFile(tmp_path / "ok.pt") as zin, zipfile.ZipFile(tmp_path / "rec.pt", "w") as zout:
        for info in zin.infolist():
            zout.writestr(info.filename, zin.read(info))
        zout.writestr("ok/mapspec.json", b'{"version": 1, "pad": "' + b"a" * 3_000_000 + b'"}',
                      compress_type=zipfile.ZIP_DEFLATED)
    assert "more than it can be" in inspect_error(tmp_path / "rec.pt")  # not inflated whole
    _npz(tmp_path / "x.npz")
    os.mkfifo(tmp_path / ("x.npz" + SIDECAR))
    r = cli_subprocess("inspect", tmp_path / "x.npz", timeout=60)  # a FIFO sidecar is not read (no hang)
    assert r.returncode == 0 and "a (64,)" not in r.stderr, r.stderr


def test_storage_record_longer_than_its_storage_is_refused_as_torch_does(tmp_path, torch):
    # Bytes inserted into a data record (CRC fixed): the pickle still says 3 floats, so which
    # 12 of the 16 bytes are the tensor is not what the file says; torch refuses it too.
    torch.save({"a": torch.tensor([1.0, 2.0, 3.0])}, tmp_path / "ok.pt")
    longer = rezip(tmp_path / "ok.pt", tmp_path / "longer.pt",
                   lambda n, d: d[:4] + b"\xff" * 4 + d[4:] if n.endswith("/data/0") else d)
    with pytest.raises(RuntimeError, match="record size"):
        torch.load(longer, weights_only=True)
    assert "storage '0' claims 12 bytes, its entry holds 16" in inspect_error(longer)


def test_empty_tensors_still_read(tmp_path, torch):
    torch.save({"e": torch.empty(0), "z": torch.zeros(2, 0, 3, dtype=torch.int64)}, tmp_path / "e.pt")
    src = open_source(tmp_path / "e.pt")
    assert src.read("e").shape == (0,) and src.read("z").shape == (2, 0, 3)


@pytest.mark.parametrize("extra", ["other/data.pkl", "/archive/version", "ARCHIVE/data/0"])
def test_records_outside_the_archive_folder_are_refused_as_torch_does(tmp_path, torch, extra):
    # torch requires every record under the first one's folder; a second data.pkl or storage
    # elsewhere would make which records are the checkpoint a guess.
    torch.save({"a": torch.tensor([1.0, 2.0])}, tmp_path / "ok.pt")
    odd = tmp_path / "odd.pt"
    with zipfile.ZipFile(tmp_path / "ok.pt") as zin, zipfile.ZipFile(odd, "w") as zout:
        for info in zin.infolist():
            zout.writestr(info.filename.replace("ok/", "archive/", 1), zin.read(info))
        zout.writestr(extra, zin.read(zin.infolist()[0]))
    with pytest.raises(RuntimeError, match="not in a subdirectory"):
        torch.load(odd, weights_only=True)
    assert f"record {extra!r} is outside the archive's folder 'archive/'" in inspect_error(odd)


def test_an_unknown_callable_given_a_storage_is_refused_not_left_out(torch, tmp_path):
    """A tensor rebuilt by a function mapspec does not know (here torch's own, under a corrupted
    module name) used to become an inert stand-in: the tensor was silently missing from the
    conversion. Now the file is refused, saying why."""
    src = tmp_path / "ok.pt"
    torch.save({"w": torch.arange(4.0), "b": torch.ones(2)}, src)
    bad = rezip(src, tmp_path / "bad.pt", lambda name, data: data.replace(b"torch._utils\n_rebuild_tensor_v2",
                                                                        b"torch._utilz\n_rebuild_tensor_v2")
                if name.endswith("data.pkl") else data)
    assert b"torch._utilz" in zipfile.ZipFile(bad).read("ok/data.pkl")
    line = inspect_error(bad)
    assert "torch._utilz._rebuild_tensor_v2" in line and "tensor storage" in line and "not supported" in line
    spec = tmp_path / "all.map"
    spec.write_text("keep **\n")
    assert "tensor storage" in cli_error("apply", spec, bad, "-o", tmp_path / "out.safetensors", "--non-strict")
    assert not (tmp_path / "out.safetensors").exists()
