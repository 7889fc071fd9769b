"""The real libraries as the reference reader for fuzzed files: what they accept and read is
what mapspec must read, bit for bit."""

from __future__ import annotations

import json

import numpy as np


def preload() -> None:
    for name in ("torch", "safetensors.numpy", "mxnet", "gguf"):
        try:
            __import__(name)
        except ImportError:
            pass


# torch dtypes numpy has no dtype for, read as their byte codes (as mapspec holds them)
CODES = frozenset({"torch.float8_e4m3fn", "torch.float8_e5m2", "torch.float8_e8m0fnu", "torch.float8_e4m3fnuz",
                   "torch.float8_e5m2fnuz", "torch.float4_e2m1fn_x2"})


def flatten(obj, prefix: str, out: dict) -> None:
    """Tensors under dotted paths, as mapspec names them."""
    import torch

    if isinstance(obj, torch.Tensor):
        t = obj.detach()
        if t.dtype == torch.bfloat16:
            out[prefix] = t.view(torch.int16).numpy().view(np.uint16)
        elif str(t.dtype) in CODES:
            out[prefix] = t.view(torch.uint8).numpy()
        else:
            out[prefix] = t.numpy()
    elif isinstance(obj, dict):
        for k, v in obj.items():
            flatten(v, f"{prefix}.{k}" if prefix else str(k), out)
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            flatten(v, f"{prefix}.{i}" if prefix else str(i), out)


def _read(fmt: str, path: str) -> dict[str, np.ndarray]:
    if fmt == "torch":
        import torch

        out: dict = {}
        flatten(torch.load(path, map_location="cpu", weights_only=True), "", out)
        return out
    if fmt == "safetensors":
        try:  # the torch API holds bf16 (the numpy one cannot); both validate the file alike
            from safetensors.torch import load_file
        except ImportError:
            from safetensors.numpy import load_file

            return load_file(path)
        out = {}
        flatten(load_file(path), "", out)
        return out
    if fmt == "npz":
        with np.load(path, allow_pickle=False) as z:  # .npy members only, as savez writes them
            members = set(z.zip.namelist())
            return {k: z[k] for k in z.files if k + ".npy" in members}
    if fmt == "mxnet":
        import mxnet as mx

        loaded = mx.nd.load(path)
        items = loaded.items() if isinstance(loaded, dict) else enumerate(loaded)
        return {str(k): v.asnumpy() for k, v in items}
    if fmt == "wts":
        return read_wts(path)
    if fmt == "gguf":
        from gguf import GGUFReader

        # gguf-py gives element tensors in numpy's shape order; mapspec's safetensors output
        # holds the same arrays (a block tensor cannot reach it without a dequantize)
        return {t.name: np.array(t.data) for t in GGUFReader(path).tensors}
    raise LookupError(fmt)


def read_wts(path: str) -> dict[str, np.ndarray]:
    """tensorrtx's C++ loader, in Python: a count, then `name n hex...` lines."""
    with open(path, "rb") as f:
        lines = f.read().decode("ascii").split("\n")
    count = int(lines[0])
    out = {}
    for line in lines[1:1 + count]:
        name, n, *values = line.split()
        if len(values) != int(n):
            raise ValueError("count mismatch")
        out[name] = np.array([int(v, 16) for v in values], np.uint32).view(np.float32)  # the hex is the bits
    return out


def read_with_library(fmt: str, path: str, save: str) -> int:
    try:
        arrays = _read(fmt, path)
    except LookupError:
        return 2  # no reference reader for this format here
    except BaseException:
        return 1
    # the names as JSON bytes: a numpy string array would drop their trailing NULs, which a
    # mutated file's names may have (and mapspec keeps, as torch does)
    names = np.frombuffer(json.dumps(list(arrays)).encode(), np.uint8)
    np.savez(save, **{f"k{i}": np.ascontiguousarray(a) for i, a in enumerate(arrays.values())}, __keys__=names)
    return 0


def load_saved(save: str) -> dict[str, np.ndarray]:
    with np.load(save, allow_pickle=False) as z:
        keys = json.loads(z["__keys__"].tobytes().decode())
        return {k: z[f"k{i}"] for i, k in enumerate(keys)}
