"""The tokenizer entries of a GGUF file (`tokenizer.ggml.*`, `tokenizer.chat_template`), from a
Hugging Face model directory, as llama.cpp's `convert_hf_to_gguf.py` writes them.

Two paths, chosen as the reference chooses them:

- **sentencepiece** (`tokenizer.model`; Llama 2, Mistral, Gemma, Phi-3): `tokenizer.ggml.model =
  llama`, `pre = default`; pieces, scores and piece types read from the model file (a protobuf
  read here, no sentencepiece needed), ids the model lacks up to the config's `vocab_size`
  padded as `[PAD<id>]` (UNUSED, score -10000); `added_tokens.json` and `tokenizer_config.json`'s
  `added_tokens_decoder` override their ids (score -1000; CONTROL when special or special-looking,
  else USER_DEFINED with `▁` written as a space).
- **byte-level BPE** (`tokenizer.json` only; Llama 3, Qwen2/3): `tokenizer.ggml.model = gpt2`,
  `pre` identified the way llama.cpp identifies it: the token ids of a fixed probe text, hashed
  (sha256 of the Python list's text), looked up among known models. A tokenizer whose hash is
  unknown is not one llama.cpp can run (its pre-tokenizer is not implemented there): a clear
  error, never a guess. Encoding the probe needs the `tokenizers` package (a transformers
  dependency; optional for mapspec).

Then the special tokens, as gguf-py's SpecialVocab finds them: ids of `tokenizer_config.json`'s
`*_token` texts among `tokenizer.json`'s added tokens, then `config.json`'s `*_token_id`; the
`add_*_token` flags from the post-processor and `tokenizer_config.json`; the chat template.

`tokenizer_entries(model_dir, style)` returns `{key: gguf.Value}` in the reference's order.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from ..errors import CheckpointError
from .gguf import Value

NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

# The probe text llama.cpp's converter encodes to identify a BPE pre-tokenizer (its
# get_vocab_base_pre): whitespace runs, emoji sequences, digit runs, scripts, quotes, contractions.
PROBE = ('\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n🚀 (normal) 😶\u200d🌫️ (multiple emojis concatenated) '
         '✅ 🦙🦙 3 33 333 3333 33333 333333 3333333 33333333 3.3 3..3 3...3 កាន់តែពិសេសអាច😁 ?我想在apple工作1314151天～ '
         '------======= нещо на Български \'\'\'\'\'\'```````""""......!!!!!!?????? I\'ve been \'told he\'s there, '
         '\'RE you sure? \'M not sure I\'ll make it, \'D you like some tea? We\'Ve a\'lL')

# sha256 of str(token ids of PROBE) -> llama.cpp's pre-tokenizer name, for the families the
# shipped specs cover (values as llama.cpp 0.3.36's converter lists them).
KNOWN_PRE = {
    "0ef9807a4087ebef797fc749390439009c3b9eda9ad1a097abbe738f486c01e5": "llama-bpe",   # Llama 3
    "e636dc30a262dcc0d8c323492e32ae2b70728f4df7dfe9737d9f920a282b8aea": "qwen2",       # Qwen1.5/2/2.5
    "d4540891389ea895b53b399da6ac824becc30f2fba0e9ddbb98f92e55ca0e97c": "qwen2",       # Qwen3
    "3ce83efda5659b07b1ad37ca97ca5797ea4285d9b9ab0dc679e4a720c9da7454": "gpt-2",       # GPT-2
}

SPECIAL_TYPES = ("bos", "eos", "unk", "sep", "pad", "cls", "mask")
ID_KEY = {"bos": "bos_token_id", "eos": "eos_token_id", "unk": "unknown_token_id",
          "sep": "seperator_token_id", "pad": "padding_token_id", "cls": "cls_token_id",
          "mask": "mask_token_id"}


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: cannot read the tokenizer file ({exc})") from None


def _opt_json(path: Path) -> Any:
    return _json(path) if path.is_file() else None


# ---------------------------------------------------------------- sentencepiece model (protobuf)

def _varint(buf: bytes, i: int, end: int) -> tuple[int, int]:
    shift = value = 0
    while True:
        if i >= end or shift > 63:
            raise ValueError("truncated varint")
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, i
        shift += 7


def _fields(buf: bytes, i: int, end: int):
    """(field number, wire type, value) of one protobuf message; value is an int for varints
    and fixed ints, a (start, end) range for length-delimited fields."""
    while i < end:
        tag, i = _varint(buf, i, end)
        field, wire = tag >> 3, tag & 7
        if wire == 0:
            value, i = _varint(buf, i, end)
        elif wire == 1:
            if i + 8 > end:
                raise ValueError("truncated fixed64")
            value, i = int.from_bytes(buf[i:i + 8], "little"), i + 8
        elif wire == 5:
            if i + 4 > end:
                raise ValueError("truncated fixed32")
            value, i = int.from_bytes(buf[i:i + 4], "little"), i + 4
        elif wire == 2:
            n, i = _varint(buf, i, end)
            if i + n > end:
                raise ValueError("length past the end")
            value, i = (i, i + n), i + n
        else:
            raise ValueError(f"wire type {wire}")
        yield field, wire, value


# sentencepiece's ModelProto.SentencePiece.Type: NORMAL 1, UNKNOWN 2, CONTROL 3, USER_DEFINED 4,
# BYTE 6, UNUSED 5. llama.cpp keeps UNKNOWN, CONTROL, UNUSED and BYTE; the rest are NORMAL.
_SPM_TYPE = {2: UNKNOWN, 3: CONTROL, 5: UNUSED, 6: BYTE}


def read_sentencepiece(path: Path) -> list[tuple[bytes, float, int]]:
    """(piece, score, llama.cpp token type) of every piece of a sentencepiece model file."""
    import struct

    try:
        buf = path.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"{path}: {exc.strerror or exc}") from None
    pieces = []
    try:
        for field, wire, value in _fields(buf, 0, len(buf)):
            if field != 1 or wire != 2:  # 1: repeated SentencePiece pieces
                continue
            piece, score, kind = b"", 0.0, 1
            for f, w, v in _fields(buf, *value):
                if f == 1 and w == 2:
                    piece = buf[v[0]:v[1]]
                elif f == 2 and w == 5:
                    score = struct.unpack("<f", v.to_bytes(4, "little"))[0]
                elif f == 3 and w == 0:
                    kind = v
            piece.decode("utf-8")
            pieces.append((piece, score, _SPM_TYPE.get(kind, NORMAL)))
    except (ValueError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: not a sentencepiece model ({exc})") from None
    if not pieces:
        raise CheckpointError(f"{path}: not a sentencepiece model (no pieces)")
    return pieces


def _looks_special(text: str) -> bool:
    """llama.cpp's heuristic for added tokens some models forget to mark special."""
    return (text in ("<pad>", "<mask>", "<2mass>", "[@BOS@]")
            or (text.startswith("<|") and text.endswith("|>"))
            or (text.startswith("<｜") and text.endswith("｜>"))
            or (text.startswith("<unused") and text.endswith(">")))


def _spm_vocab(d: Path, vocab_size: int | None, style: str):
    pieces = read_sentencepiece(d / "tokenizer.model")
    n = vocab_size or len(pieces)
    tokens = [f"[PAD{i}]".encode() for i in range(n)]
    scores = [-10000.0] * n
    types = [UNUSED] * n
    for i, (piece, score, kind) in enumerate(pieces[:n]):
        tokens[i], scores[i], types[i] = piece, score, kind
    added = _opt_json(d / "added_tokens.json") or {}
    for text, i in added.items():
        if isinstance(i, int) and 0 <= i < n:
            tokens[i], scores[i], types[i] = text.encode(), -1000.0, USER_DEFINED
    config = _opt_json(d / "tokenizer_config.json") or {}
    decoder = config.get("added_tokens_decoder") or {}
    for key, data in decoder.items():
        i, text = int(key), data["content"]
        if not 0 <= i < n:
            continue
        if style == "phi3":  # Phi3MiniModel.set_vocab: special -> CONTROL, else USER_DEFINED, as written
            kind = CONTROL if data.get("special") else USER_DEFINED
        elif data.get("special") or _looks_special(text):
            kind = CONTROL
        else:
            kind, text = USER_DEFINED, text.replace("\u2581", " ")
        tokens[i], scores[i], types[i] = text.encode(), -1000.0, kind
    if style == "phi3":
        for data in (_opt_json(d / "tokenizer.json") or {}).get("added_tokens", []):
            i = int(data["id"])
            if 0 <= i < n:
                tokens[i], scores[i] = data["content"].encode(), -1000.0
                types[i] = CONTROL if data.get("special") else USER_DEFINED
    return tokens, scores, types


# ---------------------------------------------------------------- byte-level BPE (tokenizer.json)

def _bpe_vocab(d: Path, vocab_size: int | None):
    tj = _json(d / "tokenizer.json")
    model = tj.get("model") or {}
    if model.get("type") != "BPE" or not isinstance(model.get("vocab"), dict):
        raise CheckpointError(f"{d / 'tokenizer.json'}: not a BPE tokenizer (model type "
                              f"{model.get('type')!r}); llama.cpp's gpt2 path needs one")
    vocab = dict(model["vocab"])
    added = {a["content"]: a for a in tj.get("added_tokens", [])}
    for text, a in added.items():
        vocab[text] = a["id"]
    n = vocab_size or (max(vocab.values()) + 1)
    if max(vocab.values()) >= n:
        raise CheckpointError(f"the tokenizer has id {max(vocab.values())}, past the config's vocab_size {n}")
    reverse = {i: t for t, i in vocab.items()}
    tokens, types = [], []
    for i in range(n):
        t = reverse.get(i)
        if t is None:
            tokens.append(f"[PAD{i}]")
            types.append(UNUSED)
        elif t in added:
            a = added[t]
            if a.get("special") or _looks_special(t):
                types.append(CONTROL)
            else:
                t = t.replace("\u2581", " ")
                types.append(USER_DEFINED)
            tokens.append(t)
        else:
            tokens.append(t)
            types.append(NORMAL)
    return tokens, types, _pre_name(d), _merges(model.get("merges") or [])


def _pre_name(d: Path) -> str:
    try:
        from tokenizers import Tokenizer
    except ImportError:
        raise CheckpointError("identifying a BPE tokenizer's pre-tokenizer needs the 'tokenizers' package "
                              "(pip install tokenizers)") from None
    ids = Tokenizer.from_file(str(d / "tokenizer.json")).encode(PROBE).ids
    digest = hashlib.sha256(str(ids).encode()).hexdigest()
    name = KNOWN_PRE.get(digest)
    if name is None:
        known = ", ".join(sorted(set(KNOWN_PRE.values())))
        raise CheckpointError(f"{d / 'tokenizer.json'}: this BPE tokenizer's pre-tokenizer is not one llama.cpp "
                              f"knows (probe hash {digest[:16]}...; known here: {known}); llama.cpp could not "
                              "tokenize with it")
    return name


def _merges(merges: list) -> list[str]:
    if merges and isinstance(merges[0], list):
        return [" ".join("".join(chr(ord(c) + 256) if c == " " else c for c in part) for part in pair)
                for pair in merges]
    return [str(m) for m in merges]


# ---------------------------------------------------------------- special tokens

def _special(d: Path, n_vocab: int | None, tokenizer_json: dict | None):
    ids: dict[str, int] = {}
    add: dict[str, bool] = {}
    config = _opt_json(d / "tokenizer_config.json")

    def put(typ, tid):
        if isinstance(tid, int) and not isinstance(tid, bool) and tid >= 0 and typ not in ids:
            if n_vocab is None or tid < n_vocab:
                ids[typ] = tid

    chat = None
    if tokenizer_json is not None:
        pp = tokenizer_json.get("post_processor") or {}
        for proc in pp.get("processors", [pp]):
            kind = proc.get("type")
            if kind == "ByteLevel":
                add.setdefault("bos", False)
                add.setdefault("eos", False)
            elif kind == "TemplateProcessing":
                single = proc.get("single", [])
                if len(single) > 1:
                    first = single[0].get("SpecialToken", {}).get("id")
                    last = single[-1].get("SpecialToken", {}).get("id")
                    bos = _content((config or {}).get("bos_token"))
                    eos = _content((config or {}).get("eos_token"))
                    if first:
                        add["bos"] = first == bos
                    if last:
                        add["eos"] = last == eos
        if config:
            added = tokenizer_json.get("added_tokens", [])
            for typ in SPECIAL_TYPES:
                text = _content(config.get(f"{typ}_token"))
                if text is not None:
                    put(typ, next((a.get("id") for a in added if a.get("content") == text), None))
    if config:
        for name in ("chat_template.jinja",):
            if (d / name).is_file():
                chat = (d / name).read_text(encoding="utf-8")
        if chat is None and (d / "chat_template.json").is_file():
            chat = (_json(d / "chat_template.json") or {}).get("chat_template")
        chat = config.get("chat_template", chat)
        for typ in SPECIAL_TYPES:
            flag = config.get(f"add_{typ}_token")
            if isinstance(flag, bool) and typ not in add:
                add[typ] = flag
    cfg = _opt_json(d / "config.json") or {}
    for typ in SPECIAL_TYPES:
        tid = cfg.get(f"{typ}_token_id")
        if tid is None and isinstance(cfg.get("text_config"), dict):
            tid = cfg["text_config"].get(f"{typ}_token_id")
        put(typ, tid)
    return ids, add, chat if isinstance(chat, str) else None


def _content(entry) -> str | None:
    if isinstance(entry, str):
        return entry
    if isinstance(entry, dict) and isinstance(entry.get("content"), str):
        return entry["content"]
    return None


# ---------------------------------------------------------------- entries

def tokenizer_entries(model_dir: str | Path, style: str = "llama", vocab_size: int | None = None
                      ) -> dict[str, Value]:
    """The tokenizer metadata llama.cpp's converter writes for a model directory.

    style: "llama" (sentencepiece if `tokenizer.model` is there, else BPE; `add_space_prefix`
    from tokenizer_config's `add_prefix_space`), "gemma3" (sentencepiece, `add_space_prefix`
    false), "phi3" (sentencepiece, added tokens as Phi3MiniModel marks them), "qwen2"
    (sentencepiece if there, else BPE), "gpt2" (BPE only: Qwen2-MoE and Qwen3-MoE)."""
    d = Path(model_dir)
    out: dict[str, Value] = {}
    config = _opt_json(d / "tokenizer_config.json") or {}
    if style == "llama" and isinstance(config.get("add_prefix_space"), bool):
        out["tokenizer.ggml.add_space_prefix"] = Value("bool", config["add_prefix_space"])
    tj = _opt_json(d / "tokenizer.json")
    if (d / "tokenizer.model").is_file() and style != "gpt2":
        tokens, scores, types = _spm_vocab(d, vocab_size, style)
        out["tokenizer.ggml.model"] = Value("string", "llama")
        out["tokenizer.ggml.pre"] = Value("string", "default")
        out["tokenizer.ggml.tokens"] = Value("array", [t.decode("utf-8", "surrogateescape") for t in tokens], "string")
        out["tokenizer.ggml.scores"] = Value("array", scores, "float32")
        out["tokenizer.ggml.token_type"] = Value("array", types, "int32")
        n_vocab = len(tokens)
    elif style == "phi3" or style == "gemma3" and tj is None:
        raise CheckpointError(f"{d}: no tokenizer.model (sentencepiece), which this architecture's tokenizer needs")
    elif tj is not None:
        tokens, types, pre, merges = _bpe_vocab(d, vocab_size)
        out["tokenizer.ggml.model"] = Value("string", "gpt2")
        out["tokenizer.ggml.pre"] = Value("string", pre)
        out["tokenizer.ggml.tokens"] = Value("array", tokens, "string")
        out["tokenizer.ggml.token_type"] = Value("array", types, "int32")
        if merges:
            out["tokenizer.ggml.merges"] = Value("array", merges, "string")
        n_vocab = None
    else:
        raise CheckpointError(f"{d}: no tokenizer (tokenizer.model or tokenizer.json) for the GGUF's vocabulary")
    ids, add, chat = _special(d, n_vocab, tj)
    for t, i in ids.items():
        out[f"tokenizer.ggml.{ID_KEY[t]}"] = Value("uint32", i)
    for t, v in add.items():
        if t in ("bos", "eos", "sep"):
            out[f"tokenizer.ggml.add_{t}_token"] = Value("bool", v)
    if chat is not None:
        out["tokenizer.chat_template"] = Value("string", chat)
    if style == "gemma3" and (d / "tokenizer.model").is_file():
        out["tokenizer.ggml.add_space_prefix"] = Value("bool", False)
    return out
