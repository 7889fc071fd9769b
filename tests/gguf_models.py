"""Tiny Hugging Face model directories of the families mapspec's GGUF specs cover, made by
transformers itself (config class -> model -> save_pretrained) with a small real tokenizer:

- a sentencepiece model trained here, on a few sentences, in the shape Llama's `tokenizer.model`
  has (BPE with byte fallback, <unk> <s> </s> as ids 0 1 2), with its `tokenizer_config.json`;
- for the BPE families (Qwen), the real Qwen2 vocabulary and merges, taken from llama.cpp's own
  `models/ggml-vocab-qwen2.gguf` (see llamacpp_ref) and written as a `tokenizer.json` that
  encodes exactly as Qwen2's does, so llama.cpp's pre-tokenizer hash recognises it.
"""
from __future__ import annotations

import io
import json
from pathlib import Path

TEXT = [
    "The quick brown fox jumps over the lazy dog.",
    "Checkpoints move between frameworks every day; the script that moves them is rewritten every time.",
    "A mapping spec is reviewed like source code and compiled against the key list.",
    "llama.cpp reads GGUF files: a header, typed metadata, tensor infos and aligned data.",
    "Numbers 0 1 2 3 4 5 6 7 8 9 10 100 1000, punctuation ,.;:!? and (brackets) [too].",
    "Zwölf Boxkämpfer jagen Viktor quer über den großen Sylter Deich.",
] * 4

CHAT_TEMPLATE = ("{% for m in messages %}{{ bos_token + '[' + m['role'] + '] ' + m['content'] + eos_token }}"
                 "{% endfor %}")


def sentencepiece_model(vocab_size: int = 384) -> bytes:
    """A Llama-style sentencepiece model trained on TEXT (the test skips without sentencepiece)."""
    import pytest

    spm = pytest.importorskip("sentencepiece")

    out = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(TEXT), model_writer=out, vocab_size=vocab_size, model_type="bpe",
        byte_fallback=True, unk_id=0, bos_id=1, eos_id=2, pad_id=-1, character_coverage=1.0,
        add_dummy_prefix=True, split_digits=True, num_threads=1, minloglevel=2)
    return out.getvalue()


def write_spm_tokenizer(d: Path, vocab_size: int = 384, add_bos: bool = True) -> int:
    (d / "tokenizer.model").write_bytes(sentencepiece_model(vocab_size))
    special = {"0": "<unk>", "1": "<s>", "2": "</s>"}
    (d / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "LlamaTokenizer",
        "add_bos_token": add_bos, "add_eos_token": False,
        "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": None,
        "legacy": False, "model_max_length": 128, "chat_template": CHAT_TEMPLATE,
        "added_tokens_decoder": {i: {"content": c, "lstrip": False, "normalized": False, "rstrip": False,
                                     "single_word": False, "special": True} for i, c in special.items()},
    }, indent=2))
    return vocab_size


QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
               r"|\s*[\r\n]+|\s+(?!\S)|\s+")


def write_qwen2_tokenizer(d: Path, vocab_gguf: Path) -> int:
    """Qwen2's byte-level BPE tokenizer.json, vocabulary and merges read from llama.cpp's
    ggml-vocab-qwen2.gguf with the installed gguf package. Returns the vocabulary size."""
    from gguf import GGUFReader

    r = GGUFReader(vocab_gguf)

    def strings(key):
        f = r.fields[key]
        return [bytes(f.parts[i]).decode("utf-8") for i in f.data]

    tokens = strings("tokenizer.ggml.tokens")
    types = list(r.fields["tokenizer.ggml.token_type"].contents())
    merges = strings("tokenizer.ggml.merges")
    vocab, added = {}, []
    for i, (t, ty) in enumerate(zip(tokens, types)):
        if ty == 1:  # NORMAL
            vocab[t] = i
        elif ty == 3:  # CONTROL: <|endoftext|>, <|im_start|>, ...
            added.append({"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
                          "normalized": False, "special": True})
    tok = {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
        "normalizer": {"type": "NFC"},
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": QWEN2_SPLIT}, "behavior": "Isolated", "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}]},
        "post_processor": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False},
        "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": "",
                  "end_of_word_suffix": "", "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": vocab, "merges": [m.split(" ") for m in merges]},
    }
    (d / "tokenizer.json").write_text(json.dumps(tok, ensure_ascii=False))
    eot = next(a["content"] for a in added if a["content"] == "<|endoftext|>")
    (d / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "Qwen2Tokenizer", "add_bos_token": False, "add_prefix_space": False,
        "bos_token": None, "eos_token": "<|im_end|>", "pad_token": eot, "unk_token": None,
        "model_max_length": 128, "chat_template": CHAT_TEMPLATE.replace("bos_token + ", ""),
        "added_tokens_decoder": {str(a["id"]): {k: v for k, v in a.items() if k != "id"} for a in added},
    }, indent=2))
    return max(len(tokens), max(a["id"] for a in added) + 1)


def _save(model, d: Path, dtype):
    import torch

    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():  # random, not init-constant: norms and biases too
            p.copy_(torch.randn_like(p) * 0.5)
    model.to(dtype).save_pretrained(d)


def make_model(family: str, d: Path, dtype: str = "bfloat16", qwen_vocab: Path | None = None,
               tied: bool = False) -> Path:
    """A tiny model directory of FAMILY (llama, mixtral, qwen2, qwen3, qwen3moe, gemma3, phi3).
    With `qwen_vocab` (llama.cpp's ggml-vocab-qwen2.gguf) a Qwen model gets Qwen2's real BPE
    tokenizer (151,646 tokens: slower); without, the sentencepiece one, which llama.cpp's Qwen
    classes try first."""
    import torch
    import transformers as tf

    torch.manual_seed(0)
    d.mkdir(parents=True, exist_ok=True)
    if family.startswith("qwen") and qwen_vocab is not None:
        vocab = write_qwen2_tokenizer(d, qwen_vocab)
        eos = 151645
    else:
        vocab = write_spm_tokenizer(d)
        eos = 2
    # intermediate 80: rows of down_proj (80 wide) are no multiple of Q8_0's 32, so llama.cpp's
    # F16 fallback is exercised; everything else is 64 wide.
    common = dict(vocab_size=vocab, hidden_size=64, intermediate_size=80, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                  tie_word_embeddings=tied, rms_norm_eps=1e-5)
    if family == "llama":
        model = tf.LlamaForCausalLM(tf.LlamaConfig(**common, bos_token_id=1, eos_token_id=2))
    elif family == "mixtral":
        model = tf.MixtralForCausalLM(tf.MixtralConfig(**common, num_local_experts=4, num_experts_per_tok=2,
                                                       bos_token_id=1, eos_token_id=2))
    elif family == "qwen2":
        model = tf.Qwen2ForCausalLM(tf.Qwen2Config(**common, bos_token_id=None, eos_token_id=eos))
    elif family == "qwen3":
        model = tf.Qwen3ForCausalLM(tf.Qwen3Config(**common, head_dim=16, eos_token_id=eos))
    elif family == "qwen3moe":
        model = tf.Qwen3MoeForCausalLM(tf.Qwen3MoeConfig(
            **common, head_dim=16, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
            decoder_sparse_step=1, eos_token_id=eos))
    elif family == "gemma3":
        model = tf.Gemma3ForCausalLM(tf.Gemma3TextConfig(
            **common, head_dim=16, sliding_window=32, bos_token_id=1, eos_token_id=2, pad_token_id=0))
    elif family == "phi3":
        model = tf.Phi3ForCausalLM(tf.Phi3Config(**common, original_max_position_embeddings=128,
                                                 bos_token_id=1, eos_token_id=2, pad_token_id=0))
    else:
        raise ValueError(family)
    _save(model, d, getattr(torch, dtype))
    return d


def fp8_quantize(d: Path, block: tuple[int, int]) -> Path:
    """Make the model directory D an FP8 block-scaled checkpoint in place, laid out as DeepSeek-V3
    and Qwen3-FP8 ship: every decoder linear `*_proj.weight` (experts' included; embeddings,
    norms, router and head kept) becomes float8_e4m3fn with a float32 `weight_scale_inv` of one
    value per BLOCK, and config.json gets `quantization_config` (quant_method fp8, e4m3,
    weight_block_size). The arithmetic is DeepSeek's and transformers' `Fp8Quantize`, per block:
    amax = max|w|, scale = 448 / amax, q = clamp(w * scale) as e4m3, scale_inv = 1 / scale; a
    block at the edge of a tensor whose dimensions are no multiple of BLOCK is scaled by the
    elements it holds."""
    import torch
    from safetensors.torch import load_file, save_file

    bm, bn = block
    files = sorted(d.glob("*.safetensors"))
    for f in files:
        state = load_file(str(f))
        for k in [k for k in state if k.startswith("model.layers.") and k.endswith("_proj.weight")]:
            w = state[k].float()
            rows, cols = w.shape
            q = torch.empty(rows, cols, dtype=torch.float8_e4m3fn)
            s = torch.empty(-(-rows // bm), -(-cols // bn), dtype=torch.float32)
            for i in range(s.shape[0]):
                for j in range(s.shape[1]):
                    blk = w[i * bm:(i + 1) * bm, j * bn:(j + 1) * bn]
                    amax = blk.abs().max()
                    scale = torch.tensor(448.0) / amax if amax > 0 else torch.tensor(1.0)
                    q[i * bm:(i + 1) * bm, j * bn:(j + 1) * bn] = (blk * scale).clamp(-448, 448).to(torch.float8_e4m3fn)
                    s[i, j] = 1.0 / scale
            state[k] = q
            state[k + "_scale_inv"] = s
        save_file(state, str(f), metadata={"format": "pt"})
    cfg = json.loads((d / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic",
                                  "weight_block_size": [bm, bn]}
    (d / "config.json").write_text(json.dumps(cfg, indent=2))
    return d
