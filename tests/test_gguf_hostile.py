"""Hostile and broken GGUF files: built byte by byte, each refused by `inspect` and `apply`
with exit 2 and one short `error:` line, nothing written, and no allocation made from a count
the file cannot hold (a header declaring 2^60 tensors or a 2^62-byte string costs nothing)."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from test_hostile_read import cli_error

from mapspec.errors import CheckpointError
from mapspec.formats import open_source


def s(text: str | bytes) -> bytes:
    raw = text.encode() if isinstance(text, str) else text
    return struct.pack("<Q", len(raw)) + raw


def kv_u32(key: str, value: int) -> bytes:
    return s(key) + struct.pack("<II", 4, value)


def info(name: str, dims: tuple[int, ...], ggml_type: int, offset: int) -> bytes:
    return s(name) + struct.pack(f"<I{len(dims)}QIQ", len(dims), *dims, ggml_type, offset)


def gguf_file(kvs: list[bytes], infos: list[bytes], data: bytes, *, version: int = 3, n_tensors: int | None = None,
              n_kv: int | None = None, alignment: int = 32) -> bytes:
    head = b"GGUF" + struct.pack("<IQQ", version, len(infos) if n_tensors is None else n_tensors,
                                 len(kvs) if n_kv is None else n_kv) + b"".join(kvs) + b"".join(infos)
    return head + b"\0" * (-len(head) % alignment) + data


F32_2x4 = info("w", (4, 2), 0, 0)  # ggml dims (4, 2): numpy shape (2, 4), 32 bytes
VALID = gguf_file([kv_u32("a.b", 1)], [F32_2x4], bytes(range(32)))

CASES = {
    "bad magic": b"GGUX" + VALID[4:],
    "version 1": gguf_file([], [F32_2x4], b"\0" * 32, version=1),
    "big-endian": b"GGUF" + struct.pack(">I", 3) + VALID[8:],
    "tensor count 2^60": gguf_file([], [F32_2x4], b"\0" * 32, n_tensors=2**60),
    "kv count 2^63": gguf_file([], [F32_2x4], b"\0" * 32, n_kv=2**63),
    "kv count past the end": gguf_file([kv_u32("a", 1)], [], b"", n_kv=3),
    "key length 2^62": b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", 2**62) + b"abc" * 10,
    "key not UTF-8": gguf_file([s(b"\xff\xfe") + struct.pack("<II", 4, 1)], [], b""),
    "unknown value type": gguf_file([s("k") + struct.pack("<II", 13, 1)], [], b""),
    "array count 2^61": gguf_file([s("k") + struct.pack("<IIQ", 9, 4, 2**61) + b"\0" * 8], [], b""),
    "array of unknown type": gguf_file([s("k") + struct.pack("<IIQ", 9, 99, 1) + b"\0" * 8], [], b""),
    "string array count past the end": gguf_file([s("k") + struct.pack("<IIQ", 9, 8, 1000) + s("x")], [], b""),
    "arrays nested 100 deep": gguf_file([s("k") + struct.pack("<I", 9) + struct.pack("<IQ", 9, 1) * 100
                                         + struct.pack("<IQ", 4, 0)], [], b""),
    "string value length past the end": gguf_file([s("k") + struct.pack("<IQ", 8, 2**40) + b"x"], [], b""),
    "duplicate key": gguf_file([kv_u32("k", 1), kv_u32("k", 2)], [], b""),
    "alignment 0": gguf_file([kv_u32("general.alignment", 0)], [F32_2x4], b"\0" * 32),
    "alignment 48": gguf_file([kv_u32("general.alignment", 48)], [F32_2x4], b"\0" * 48, alignment=48),
    "alignment as a string": gguf_file([s("general.alignment") + struct.pack("<I", 8) + s("32")], [F32_2x4],
                                       b"\0" * 32),
    "5 dimensions": gguf_file([], [info("w", (1, 1, 1, 1, 1), 0, 0)], b"\0" * 32),
    "dims overflow 64 bits": gguf_file([], [info("w", (2**40, 2**40), 0, 0)], b"\0" * 32),
    "unknown ggml type": gguf_file([], [info("w", (4, 2), 31, 0)], b"\0" * 32),
    "row not whole blocks": gguf_file([], [info("w", (48, 1), 8, 0)], b"\0" * 64),
    "offset not aligned": gguf_file([], [info("w", (4, 2), 0, 4)], b"\0" * 64),
    "data past the end": gguf_file([], [info("w", (4, 2), 0, 32)], b"\0" * 32),
    "truncated data": VALID[:-1],
    "truncated tensor info": VALID[:60],
    "overlapping tensors": gguf_file([], [info("a", (8,), 0, 0), info("b", (8,), 0, 0)], b"\0" * 32),
    "partly overlapping tensors": gguf_file([], [info("a", (16,), 0, 0), info("b", (8,), 0, 32)], b"\0" * 64),
    "duplicate tensor name": gguf_file([], [info("a", (8,), 0, 0), info("a", (8,), 0, 32)], b"\0" * 64),
    "tensor name not UTF-8": gguf_file([], [s(b"\x80") + struct.pack("<IQIQ", 1, 8, 0, 0)], b"\0" * 32),
    "split part without all keys": gguf_file([kv_u32("split.no", 0)], [F32_2x4], b"\0" * 32),
    "split.no past split.count": gguf_file([s("split.no") + struct.pack("<IH", 2, 5), s("split.count")
                                            + struct.pack("<IH", 2, 2), s("split.tensors.count")
                                            + struct.pack("<Ii", 5, 1)], [F32_2x4], b"\0" * 32),
    "empty file": b"",
    "magic only": b"GGUF",
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_hostile_gguf_is_one_error_line_and_nothing_written(tmp_path, case):
    path = tmp_path / "bad.gguf"
    path.write_bytes(CASES[case])
    line = cli_error("inspect", path)
    assert str(path) in line
    (tmp_path / "id.map").write_text("mapspec 1\n{rest:**} -> {rest}\n")
    out = tmp_path / "out"
    out.mkdir()
    cli_error("apply", tmp_path / "id.map", path, "-o", out / "o.gguf")
    assert not list(out.iterdir())


def test_the_valid_base_case_reads(tmp_path):
    path = tmp_path / "ok.gguf"
    path.write_bytes(VALID)
    src = open_source(path)
    assert src.infos()["w"].shape == (2, 4)
    assert src.read("w").tobytes() == bytes(range(32))
    src.close()


@pytest.mark.parametrize("case, words", [
    ("tensor count 2^60", "more than its"), ("array count 2^61", "does not fit"), ("key length 2^62", "needs"),
    ("arrays nested 100 deep", "nested more than"), ("overlapping tensors", "overlaps"),
    ("offset not aligned", "not a multiple of the alignment"), ("5 dimensions", "at most 4"),
    ("row not whole blocks", "whole blocks"), ("big-endian", "big-endian"), ("alignment 48", "power of two"),
    ("duplicate key", "twice"), ("data past the end", "truncated"), ("unknown ggml type", "unknown ggml type 31"),
])
def test_each_refusal_says_what_is_wrong(tmp_path, case, words):
    path = tmp_path / "bad.gguf"
    path.write_bytes(CASES[case])
    with pytest.raises(CheckpointError, match=words):
        open_source(path)


def test_a_huge_declared_string_array_allocates_nothing(tmp_path):
    """2^40 empty strings would take 8 TiB of lengths: refused from the count alone."""
    import resource

    path = tmp_path / "bad.gguf"
    path.write_bytes(gguf_file([s("k") + struct.pack("<IIQ", 9, 8, 2**40)], [], b"\0" * 64))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(CheckpointError, match="does not fit"):
        open_source(path)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 50_000  # KiB


def test_a_split_part_named_otherwise_is_refused(tmp_path):
    parts = [s("split.no") + struct.pack("<IH", 2, 0), s("split.count") + struct.pack("<IH", 2, 2),
             s("split.tensors.count") + struct.pack("<Ii", 5, 2)]
    path = tmp_path / "model.gguf"
    path.write_bytes(gguf_file(parts, [F32_2x4], b"\0" * 32))
    with pytest.raises(CheckpointError, match="not named"):
        open_source(path)


def test_reading_stops_at_a_file_that_shrinks(tmp_path):
    path = tmp_path / "ok.gguf"
    path.write_bytes(VALID)
    src = open_source(path)
    Path(path).write_bytes(VALID[:-16])
    with pytest.raises(CheckpointError):
        src.read("w")
    src.close()
