"""Valid checkpoints of every format, written by the real libraries with fixed seeds: the
starting points the mutation fuzzer corrupts. Formats whose library is not installed in this
environment are skipped (mxnet lives in the second test environment)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _arrays(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "conv.weight": rng.standard_normal((4, 3, 2, 2)).astype(np.float32),
        "conv.bias": rng.standard_normal(4).astype(np.float32),
        "bn.running_mean": rng.standard_normal(4).astype(np.float16),
        "bn.num_batches_tracked": np.array(7, np.int64),
        "fc.weight": rng.standard_normal((2, 8)).astype(np.float64),
        "mask": rng.random(5) > 0.5,
        "ids": rng.integers(-100, 100, 6).astype(np.int32),
        "bytes": rng.integers(0, 255, 3).astype(np.uint8),
    }


def write_seeds(folder: Path) -> dict[str, Path]:
    """{seed name: path}; the name starts with the format."""
    folder.mkdir(parents=True, exist_ok=True)
    arrays = _arrays(0)
    out: dict[str, Path] = {}
    try:
        import torch
    except ImportError:
        torch = None
    if torch is not None:
        tensors = {k: torch.from_numpy(v.copy()) for k, v in arrays.items()}
        base = torch.arange(12, dtype=torch.float32)
        tensors["view.a"] = base[2:8].view(2, 3)  # two views of one storage
        tensors["view.b"] = base[::3]
        path = folder / "torch_zip.pt"
        torch.save(tensors, path)
        out["torch_zip"] = path
        path = folder / "torch_nested.pt"
        torch.save({"encoder": {k: v for k, v in list(tensors.items())[:3]}, "head": [tensors["fc.weight"]]}, path)
        out["torch_nested"] = path
        path = folder / "torch_legacy.pt"
        torch.save(tensors, path, _use_new_zipfile_serialization=False)
        out["torch_legacy"] = path
    try:
        from safetensors.numpy import save_file
    except ImportError:
        save_file = None
    if save_file is not None:
        path = folder / "safetensors.safetensors"
        save_file(arrays, str(path), metadata={"format": "pt"})
        out["safetensors"] = path
    path = folder / "npz.npz"
    np.savez(path, **arrays)
    out["npz"] = path
    path = folder / "npz_compressed.npz"
    np.savez_compressed(path, **arrays)
    out["npz_compressed"] = path
    try:
        import mxnet as mx
    except ImportError:
        mx = None
    if mx is not None:
        path = folder / "mxnet.params"
        mx.nd.save(str(path), {f"arg:{k}": mx.nd.array(v, dtype=v.dtype) for k, v in arrays.items()
                               if v.ndim and v.dtype != np.bool_})
        out["mxnet"] = path
    try:
        import gguf
    except ImportError:
        gguf = None
    if gguf is not None:  # llama.cpp's own writer: typed metadata, element and block tensors
        for name, quantized in (("gguf.gguf", False), ("gguf_quant.gguf", True)):
            w = gguf.GGUFWriter(folder / name, "llama")
            w.add_uint32("llama.block_count", 2)
            w.add_float32("llama.rope.freq_base", 10000.0)
            w.add_array("tokenizer.ggml.tokens", ["<s>", "</s>", "a"])
            w.add_array("tokenizer.ggml.scores", [0.0, -1.0, 2.5])
            w.add_array("t.nested", [[1, 2], ["x"]])
            for k, v in arrays.items():
                if v.dtype in (np.float32, np.float16, np.float64, np.int32, np.int64):
                    w.add_tensor(k, v)
            if quantized:
                x = np.random.default_rng(1).standard_normal((2, 64)).astype(np.float32)
                w.add_tensor("q8", gguf.quants.quantize(x, gguf.GGMLQuantizationType.Q8_0),
                             raw_dtype=gguf.GGMLQuantizationType.Q8_0)
                w.add_tensor("q4k", np.random.default_rng(2).integers(0, 256, (1, 144), dtype=np.uint8),
                             raw_dtype=gguf.GGMLQuantizationType.Q4_K)
            w.write_header_to_file()
            w.write_kv_data_to_file()
            w.write_tensors_to_file()
            w.close()
            out[name.split(".")[0]] = folder / name
    from mapspec.formats import open_sink
    from mapspec.compile.plan import TensorInfo

    for fmt, name, keep in (("oneflow", "oneflow.oneflow", lambda v: True),
                            ("wts", "wts.wts", lambda v: v.dtype.kind == "f")):
        chosen = {k: v for k, v in arrays.items() if keep(v)}
        sink = open_sink(folder / name, fmt, {k: TensorInfo(v.shape, str(v.dtype)) for k, v in chosen.items()})
        for k, v in chosen.items():
            sink.write(k, v)
        sink.commit()
        out[fmt] = folder / name
    return out


def oracle_format(seed_name: str) -> str:
    return {"torch": "torch", "safetensors": "safetensors", "npz": "npz", "mxnet": "mxnet",
            "wts": "wts", "gguf": "gguf"}.get(seed_name.split("_")[0], "")
