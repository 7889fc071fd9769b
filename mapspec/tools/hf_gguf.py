"""Hugging Face model directories <-> GGUF with the shipped specs/hf_to_gguf/*.map.

- `spec_for(model_dir)`: the spec for a directory whose config.json names an architecture one
  of the shipped specs lists in its `table hf_architectures` (so the specs themselves say what
  they convert; nothing here names an architecture).
- `file_metadata(plan, model_dir)`: the GGUF key/values a compiled plan states (`meta`
  entries, typed) plus what its `meta from` providers compute (`tokenizer`).
- `config_from_metadata(spec, kv)`: the way back: each parameter a `meta KEY = type(PARAM)`
  entry wrote is read from the GGUF's KEY; parameters then give config.json its keys (each
  parameter's first `from` key), defaults included; `none` values are left out.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

from ..errors import UsageError
from ..lang.rules import Call, Let, Lookup, MetaEntry, Param, Ref, Spec

SPEC_DIR_NAMES = ("hf_to_gguf",)


def spec_dirs() -> list[Path]:
    """Where the shipped hf_to_gguf specs are: inside the installed package, or the checkout's specs/."""
    pkg = Path(__file__).resolve().parent.parent
    return [d for d in (pkg / "_specs" / "hf_to_gguf", pkg.parent / "specs" / "hf_to_gguf") if d.is_dir()]


def supported() -> dict[str, Path]:
    """HF architecture name (config.json `architectures`) -> the spec that converts it."""
    from ..lang.parser import parse_spec

    out: dict[str, Path] = {}
    for d in spec_dirs():
        for path in sorted(d.glob("*.map")):
            spec = parse_spec(path)
            table = spec.table_map().get("hf_architectures")
            if table is not None and path.resolve() == Path(spec.file).resolve():
                for name in table.mapping():
                    out.setdefault(name, path)
        if out:
            break
    return out


def read_config(model_dir: Path) -> dict:
    path = model_dir / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"{model_dir}: no config.json; give the spec to use (mapspec apply SPEC {model_dir} ...)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UsageError(f"{path}: cannot read it ({exc})") from None
    if not isinstance(config, dict):
        raise UsageError(f"{path} holds no JSON object")
    return config


def spec_for(model_dir: str | Path) -> Path:
    """The shipped spec for a model directory, from its config.json's `architectures`; an
    architecture none of them converts is a UsageError listing the supported ones."""
    model_dir = Path(model_dir)
    config = read_config(model_dir)
    archs = config.get("architectures") or []
    if isinstance(config.get("text_config"), dict) and config["text_config"].get("architectures"):
        archs = config["text_config"]["architectures"]
    table = supported()
    for arch in archs if isinstance(archs, list) else []:
        if arch in table:
            return table[arch]
    named = ", ".join(map(str, archs)) if isinstance(archs, list) and archs else "no architecture"
    raise UsageError(f"{model_dir}: config.json names {named}; mapspec converts {', '.join(sorted(table))} "
                     "to GGUF (give a spec to convert anything else)")


def default_config(spec: Spec, checkpoint, config):
    """`config`, or for a spec stating file metadata (`meta`) read from a model directory,
    that directory's config.json: `mapspec apply SPEC MODEL_DIR` needs no --config."""
    if config is not None or not spec.meta:
        return config
    first = checkpoint[0] if isinstance(checkpoint, (list, tuple)) and checkpoint else checkpoint
    if first is not None and Path(first).is_dir() and (Path(first) / "config.json").is_file():
        return Path(first) / "config.json"
    return None


def model_dir_of(checkpoint, config) -> Path | None:
    """The model directory a conversion reads its tokenizer and config from."""
    if isinstance(checkpoint, (list, tuple)):
        checkpoint = checkpoint[0] if checkpoint else None
    if checkpoint is not None and Path(checkpoint).is_dir():
        return Path(checkpoint)
    if isinstance(config, (str, Path)):
        return Path(config).parent
    if checkpoint is not None:
        return Path(checkpoint).parent
    return None


def file_metadata(plan, model_dir: Path | None) -> dict[str, Any]:
    """{key: gguf.Value} of a plan's `meta` entries, providers run on `model_dir`."""
    from ..formats.gguf import Value, typed

    out: dict[str, Any] = {}
    for entry in plan.meta:
        if len(entry) == 2:  # (provider, args)
            out.update(_provider(entry[0], entry[1], model_dir))
            continue
        key, kind, value = entry
        out[key] = typed(value) if kind is None else Value(kind, value)
    return out


def _provider(name: str, args: tuple[str, ...], model_dir: Path | None) -> dict[str, Any]:
    if name != "tokenizer":
        raise UsageError(f"meta from {name}(): no such metadata provider (providers: tokenizer)")
    if model_dir is None:
        raise UsageError("meta from tokenizer(): the tokenizer is read from the model directory; "
                         "give the model directory as the checkpoint (or --config DIR/config.json)")
    from ..formats.gguf_vocab import tokenizer_entries

    config = read_config(model_dir) if (model_dir / "config.json").is_file() else {}
    vocab = config.get("vocab_size") or (config.get("text_config") or {}).get("vocab_size")
    return tokenizer_entries(model_dir, args[0] if args else "llama", vocab if isinstance(vocab, int) else None)


# ------------------------------------------------------------------ the way back

def params_from_metadata(spec: Spec, kv: Mapping[str, Any], tensors=()) -> dict[str, Any]:
    """Parameter values read back from a GGUF's metadata: `meta KEY = type(NAME)` (or
    `= NAME`) with NAME a parameter gives NAME the value stored under KEY (a float32 as its
    shortest decimal: 1e-05, not 9.999999747378752e-06).

    config.json keys llama.cpp's metadata does not record as such come from the file itself:
    a parameter read from `vocab_size` that no entry gave takes the token count
    (tokenizer.ggml.tokens), one read from `tie_word_embeddings` is true when the file has no
    output.weight (`tensors`: the file's tensor names), and the special token ids come from the
    tokenizer's keys (TOKEN_IDS)."""
    declared = {d.name: d for d in spec.definitions if isinstance(d, Param)}
    # `let x = table[param]`: x's value read back gives param the table's key for it
    looked_up = {d.name: d.expr for d in spec.definitions
                 if isinstance(d, Let) and isinstance(d.expr, Lookup) and isinstance(d.expr.key, Ref)}
    tables = {t.name: t.mapping() for t in spec.tables}
    out: dict[str, Any] = {}
    for m in spec.meta:
        if not isinstance(m, MetaEntry) or m.key not in kv:
            continue
        expr = m.value.arg if isinstance(m.value, Call) else m.value
        if isinstance(expr, Ref) and expr.name in looked_up:
            lookup = looked_up[expr.name]
            stored = str(getattr(kv[m.key], "value", kv[m.key]))
            keys = [k for k, v in tables.get(lookup.table, {}).items() if v == stored]
            if len(keys) == 1 and lookup.key.name in declared and lookup.key.name not in out:
                out[lookup.key.name] = keys[0]
            continue
        if isinstance(expr, Ref) and expr.name in declared and expr.name not in out:
            value = kv[m.key]
            if getattr(value, "type", None) == "float32":
                from ..core.lazy import numpy as np

                out[expr.name] = float(str(np.float32(value.value)))
            else:
                out[expr.name] = getattr(value, "plain", value)
    for d in declared.values():
        if d.name in out:
            continue
        if d.config_key == "vocab_size" and "tokenizer.ggml.tokens" in kv:
            out[d.name] = len(kv["tokenizer.ggml.tokens"].value)
        elif d.config_key == "tie_word_embeddings" and tensors:
            out[d.name] = "output.weight" not in tensors
        elif d.config_key in TOKEN_IDS and TOKEN_IDS[d.config_key] in kv:
            out[d.name] = kv[TOKEN_IDS[d.config_key]].value
    return out


# config.json's special token ids and the tokenizer keys `meta from tokenizer` writes them to
TOKEN_IDS = {"bos_token_id": "tokenizer.ggml.bos_token_id", "eos_token_id": "tokenizer.ggml.eos_token_id",
             "pad_token_id": "tokenizer.ggml.padding_token_id"}


def config_from_params(spec: Spec, values: Mapping[str, Any]) -> dict:
    """config.json from bound parameter values: each parameter with a `from` key writes its
    value under that key (dotted keys nest; `architectures.0` makes a list); none is left out."""
    config: dict = {}
    for d in spec.definitions:
        if not isinstance(d, Param) or d.config_key is None:
            continue
        value = values.get(d.name)
        if value is None:
            continue
        node: Any = config
        parts = d.config_key.split(".")
        for i, part in enumerate(parts[:-1]):
            nxt = [] if parts[i + 1].isdigit() else {}
            if isinstance(node, list):
                while len(node) <= int(part):
                    node.append(nxt)
                node = node[int(part)]
            else:
                node = node.setdefault(part, nxt)
        last = parts[-1]
        if isinstance(node, list):
            while len(node) <= int(last):
                node.append(None)
            if node[int(last)] is None:
                node[int(last)] = value
        else:
            node.setdefault(last, value)
    return config
