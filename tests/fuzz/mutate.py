"""Seeded mutations of valid files, folders and specs: blind byte-level ones, and ones that
know the container (a zip member changed with its CRC fixed, a safetensors header changed
and re-measured, a file in a OneFlow folder) so the corruption reaches the parsers behind
the container checks."""

from __future__ import annotations

import io
import json
import os
import random
import struct
import warnings
import zipfile
from pathlib import Path

INTERESTING_INTS = [0, 1, -1, 2, 7, 8, 255, 256, 65535, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**53,
                    2**62, 2**63 - 1, -2**31, -2**63]
INTERESTING_TEXT = ["-1", "0", "1e400", "NaN", "Infinity", "99999999999999999999", "9" * 5000, '"34"',
                    "3.5", "true", "null", "[]", "{}", "\ufeff", "\x00", "big", "\\u0000", "..", "/",
                    "../../etc/passwd", "Z" * 2000]


def mutate_bytes(data: bytes, rng: random.Random) -> bytes:
    """One to four blind mutations."""
    b = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(9)
        n = len(b)
        at = rng.randrange(n) if n else 0
        if op == 0 and n:
            b[at] ^= 1 << rng.randrange(8)
        elif op == 1 and n:
            b[at] = rng.choice([0, 1, 0x7F, 0x80, 0xFF, ord("{"), ord("\n")])
        elif op == 2 and n >= 8:
            at = min(at, n - 8) & ~7 if rng.random() < 0.5 else min(at, n - 8)
            v = rng.choice(INTERESTING_INTS + [n, n - at, 2 * n])
            b[at:at + 8] = struct.pack("<q" if v < 0 else "<Q", v)
        elif op == 3 and n >= 4:
            at = min(at, n - 4)
            v = rng.choice(INTERESTING_INTS[:10] + [n])
            b[at:at + 4] = struct.pack("<i" if v < 0 else "<I", v & 0xFFFFFFFF if v >= 0 else v)
        elif op == 4:
            del b[rng.randrange(n + 1):]  # truncate
        elif op == 5:
            b[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))
        elif op == 6 and n:
            del b[at:at + rng.randint(1, 64)]
        elif op == 7 and n:
            chunk = b[at:at + rng.randint(1, 256)]
            b[rng.randrange(n + 1):0] = chunk
        elif op == 8:
            b += rng.choice([b"\x00" * rng.randint(1, 100), b"garbage", bytes(b[:64])])
    return bytes(b)


def mutate_text(text: str, rng: random.Random) -> str:
    """Token-minded changes to a text file (a spec, a .wts, a OneFlow meta)."""
    pieces = ["{", "}", "(", ")", "**", "*", "->", "|", ",", ".", ":", "=", '"', "\n", " ", "\t", "#",
              "then", "include", "drop", "keep", "table", "select", "mapspec", "view((", "chunk(", "split((",
              "cast(", "{n:int}", "{a:**}", "{x in t}", "+", "//", "%", "\u00e9", "\x00", "\ud800"[:0],
              "uint32(", "len(", "float32(", "1.5", "1e-6"]  # typed and decimal values: metadata only
    s = text
    for _ in range(rng.randint(1, 4)):
        at = rng.randint(0, len(s))
        op = rng.randrange(6)
        if op == 0:
            s = s[:at] + rng.choice(pieces + INTERESTING_TEXT) + s[at:]
        elif op == 1:
            s = s[:at] + s[at + rng.randint(1, 8):]
        elif op == 2:
            s = s[:at] + rng.choice(INTERESTING_TEXT) + s[at + rng.randint(0, 4):]
        elif op == 3:
            digits = [i for i, c in enumerate(s) if c.isdigit()]
            if digits:
                i = rng.choice(digits)
                s = s[:i] + rng.choice(["0", "-1", "9" * rng.choice([3, 20, 5000]), "65"]) + s[i + 1:]
        elif op == 4:
            lines = s.split("\n")
            i = rng.randrange(len(lines))
            lines.insert(i, lines[rng.randrange(len(lines))])
            s = "\n".join(lines)
        else:
            s = s[:at] + rng.choice(["(" * 300 + "1" + ")" * 300, "+".join(["n"] * 500), "x" * 100_000,
                                     "{a:**}." * 8, "\n" * 3]) + s[at:]
    return s


def mutate_zip(data: bytes, rng: random.Random) -> bytes:
    """Rewrite the archive with one member changed (its CRC right), renamed, recompressed,
    dropped or duplicated."""
    try:
        src = zipfile.ZipFile(io.BytesIO(data))
        members = [(i, src.read(i)) for i in src.infolist()]
    except Exception:
        return mutate_bytes(data, rng)
    if not members:
        return mutate_bytes(data, rng)
    k = rng.randrange(len(members))
    op = rng.randrange(6)
    out = io.BytesIO()
    with warnings.catch_warnings(), zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as z:
        warnings.simplefilter("ignore")  # duplicate names are one of the mutations
        for j, (info, body) in enumerate(members):
            name, compress = info.filename, info.compress_type
            if j == k:
                if op in (0, 1):
                    body = mutate_bytes(body, rng) if op == 0 else _mutate_pickle_text(body, rng)
                elif op == 2:
                    name = rng.choice([name + "x", "../" + name, name.upper(), "/" + name, name.replace("/", "\\")])
                elif op == 3:
                    compress = rng.choice([zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA])
                elif op == 4:
                    continue
                else:
                    z.writestr(zipfile.ZipInfo(name), body)
            zi = zipfile.ZipInfo(name, date_time=info.date_time)
            zi.compress_type = compress
            z.writestr(zi, body)
    result = out.getvalue()
    if rng.random() < 0.2:  # break the container itself too
        result = mutate_bytes(result, rng)
    return result


def _mutate_pickle_text(body: bytes, rng: random.Random) -> bytes:
    """Swap names a torch pickle relies on: storage types, rebuild functions, byte order."""
    swaps = [(b"FloatStorage", b"HalfStorage"), (b"FloatStorage", b"LongStorage"), (b"LongStorage", b"BoolStorage"),
             (b"_rebuild_tensor_v2", b"_rebuild_tensor"), (b"little", b"big\0\0\0"), (b"storage", b"Storage"),
             (b"collections", b"collectionx"), (b"OrderedDict", b"defaultdict"), (b"torch", b"numpy")]
    a, b = rng.choice(swaps)
    return body.replace(a, b, 1) if a in body else mutate_bytes(body, rng)


def mutate_safetensors(data: bytes, rng: random.Random) -> bytes:
    """Change the JSON header and write it back with its length right."""
    try:
        (n,) = struct.unpack("<Q", data[:8])
        header = json.loads(data[8:8 + n])
        rest = data[8 + n:]
    except Exception:
        return mutate_bytes(data, rng)
    names = [k for k in header if k != "__metadata__"]
    if not names:
        return mutate_bytes(data, rng)
    name = rng.choice(names)
    entry = header[name]
    op = rng.randrange(10)
    if op == 0 and entry["shape"]:
        i = rng.randrange(len(entry["shape"]))
        entry["shape"][i] = rng.choice([-1, 0, 2**62, 3.0, "3", True, None, [2], 10**30])
    elif op == 1:
        entry["shape"] = rng.choice([[], [1] * 65, [0, 2**62, 2**62], "34", None, [2**31] * 4])
    elif op == 2:
        i = rng.randrange(2)
        entry["data_offsets"][i] += rng.choice([-8, -1, 1, 8, 2**40, -2**40])
    elif op == 3:
        entry["dtype"] = rng.choice(["F32", "F16", "I64", "BF16", "F8_E4M3", "C64", "OBJ", "", 4])
    elif op == 4:
        other = header[rng.choice(names)]
        entry["data_offsets"] = list(other["data_offsets"])  # overlap
    elif op == 5:
        header["__metadata__"] = rng.choice([{"a": 1}, [], "x", {"k": {"n": 1}}, None])
    elif op == 6:
        header[name + ".dup"] = dict(entry)
    elif op == 7:
        rest = rest + b"\0" * rng.choice([1, 8, 64])
    elif op == 8:
        del header[name]
    else:
        text = json.dumps(header)
        text = rng.choice(["\ufeff" + text, text.replace("]", ", 1e400]", 1), text.replace("[", "[[" * 200, 1),
                           text + " trailing", text.replace('"shape": [', '"shape": [Infinity, ', 1)])
        blob = text.encode()
        return struct.pack("<Q", len(blob)) + blob + rest
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    return struct.pack("<Q", len(blob)) + blob + rest


def gguf_fields(data: bytes) -> list[tuple[int, int]]:
    """(offset, size) of every count, length, type, dimension and offset field of a GGUF
    header, found by walking it (stops quietly where the file is already broken)."""
    out: list[tuple[int, int]] = []
    pos = 8

    def u(n: int) -> int:
        nonlocal pos
        out.append((pos, n))
        value = int.from_bytes(data[pos:pos + n], "little")
        pos += n
        return value

    def string() -> None:
        nonlocal pos
        n = u(8)
        pos += n

    def value(kind: int, depth: int = 0) -> None:
        nonlocal pos
        if kind == 8:
            string()
        elif kind == 9 and depth < 4:
            item, count = u(4), u(8)
            for _ in range(min(count, 64)):
                value(item, depth + 1)
            if count > 64:
                raise ValueError("long array: stop here")
        else:
            pos += {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}[kind]

    try:
        n_tensors, n_kv = u(8), u(8)
        for _ in range(n_kv):
            string()
            value(u(4))
        for _ in range(n_tensors):
            string()
            for _ in range(u(4)):
                u(8)
            u(4)
            u(8)
    except (KeyError, ValueError, IndexError):
        pass
    return [(at, n) for at, n in out if at + n <= len(data)]


def mutate_gguf(data: bytes, rng: random.Random) -> bytes:
    """One header field (a count, a string length, a value or ggml type, a dimension, an
    offset) set to an interesting value, so the corruption passes the magic and reaches the
    checks behind it."""
    found = gguf_fields(data)
    if not found:
        return mutate_bytes(data, rng)
    b = bytearray(data)
    at, n = rng.choice(found)
    v = rng.choice(INTERESTING_INTS + [len(data), 9, 13, 31, 32, 48, 64]) & ((1 << (8 * n)) - 1)
    b[at:at + n] = v.to_bytes(n, "little")
    return bytes(b)


def mutate_file(path: Path, kind: str, rng: random.Random) -> None:
    data = path.read_bytes()
    if kind.startswith("gguf") and rng.random() < 0.7:
        path.write_bytes(mutate_gguf(data, rng))
        return
    if kind in ("torch_zip", "torch_nested", "npz", "npz_compressed") and rng.random() < 0.6:
        new = mutate_zip(data, rng)
    elif kind == "safetensors" and rng.random() < 0.6:
        new = mutate_safetensors(data, rng)
    elif kind == "wts" and rng.random() < 0.6:
        new = mutate_text(data.decode("latin1"), rng).encode("utf-8", "surrogatepass")
    else:
        new = mutate_bytes(data, rng)
    path.write_bytes(new)


def mutate_folder(folder: Path, rng: random.Random, outside: Path) -> None:
    """A OneFlow checkpoint: one of its files corrupted, removed, or swapped for a link, FIFO
    or folder."""
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    target = rng.choice(files)
    op = rng.randrange(10)
    if op < 5:
        if target.name == "meta" and rng.random() < 0.5:
            target.write_bytes(mutate_text(target.read_text(), rng).encode("utf-8", "surrogatepass"))
        else:
            target.write_bytes(mutate_bytes(target.read_bytes(), rng))
    elif op == 5:
        target.unlink()
    elif op == 6:
        target.unlink()
        os.symlink(outside, target)
    elif op == 7:
        target.unlink()
        os.mkfifo(target)
    elif op == 8:
        target.unlink()
        target.mkdir()
    else:
        target.write_bytes(b"")
