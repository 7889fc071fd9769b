"""Comparing two GGUF files the way the GGUF specs are proven against llama.cpp's converter:
the same tensors (names, shapes, ggml types, bytes) and the same metadata, keys whose values
name the model aside (llama.cpp takes them from the folder name or a model card)."""
from __future__ import annotations

from pathlib import Path

# general.* keys that name or describe the model rather than its numbers; mapspec's own record
NAMING = {"general.name", "general.basename", "general.size_label", "general.finetune", "general.version",
          "general.organization", "general.description", "general.license", "general.tags", "general.languages",
          "general.url", "general.repo_url", "general.source.url", "general.source.repo_url",
          "general.base_model.count", "general.quantized_by", "general.mapspec"}


def _naming(key: str) -> bool:
    return key in NAMING or key.startswith(("general.base_model.", "general.source.", "general.dataset"))


def differences(mine: Path, ref: Path) -> list[str]:
    """What differs between two GGUF files (empty: the same), read with gguf-py's GGUFReader."""
    from gguf import GGUFReader

    a, b = GGUFReader(mine), GGUFReader(ref)
    out = []
    ka = {k: f for k, f in a.fields.items() if not k.startswith("GGUF.") and not _naming(k)}
    kb = {k: f for k, f in b.fields.items() if not k.startswith("GGUF.") and not _naming(k)}
    for k in sorted(set(ka) ^ set(kb)):
        out.append(f"metadata {k}: only in {'mapspec' if k in ka else 'the reference'}")
    for k in sorted(set(ka) & set(kb)):
        fa, fb = ka[k], kb[k]
        if [t.name for t in fa.types] != [t.name for t in fb.types]:
            out.append(f"metadata {k}: type {[t.name for t in fa.types]} != {[t.name for t in fb.types]}")
        elif fa.contents() != fb.contents():
            va, vb = repr(fa.contents()), repr(fb.contents())
            out.append(f"metadata {k}: {va[:80]} != {vb[:80]}")
    ta = {t.name: t for t in a.tensors}
    tb = {t.name: t for t in b.tensors}
    for n in sorted(set(ta) ^ set(tb)):
        out.append(f"tensor {n}: only in {'mapspec' if n in ta else 'the reference'}")
    for n in sorted(set(ta) & set(tb)):
        x, y = ta[n], tb[n]
        if x.tensor_type != y.tensor_type:
            out.append(f"tensor {n}: {x.tensor_type.name} != {y.tensor_type.name}")
        elif list(x.shape) != list(y.shape):
            out.append(f"tensor {n}: shape {list(x.shape)} != {list(y.shape)}")
        elif bytes(x.data.tobytes()) != bytes(y.data.tobytes()):
            out.append(f"tensor {n}: bytes differ")
    return out
