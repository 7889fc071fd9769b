"""The GGUF tokenizer entries (`tokenizer.ggml.*`) mapspec writes are the ones llama.cpp's own
converter writes: for a sentencepiece model trained here (the Llama path) and for Qwen2's real
byte-level BPE vocabulary (the gpt2 path, pre-tokenizer recognised by its probe hash), compared
with `convert_hf_to_gguf.py --vocab-only` run on the same directory."""
import json

import pytest

import llamacpp_ref
from gguf_models import sentencepiece_model, write_qwen2_tokenizer, write_spm_tokenizer
from mapspec.errors import CheckpointError
from mapspec.formats import gguf_vocab
from mapspec.formats.gguf import read_kv

CONFIG = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=128, rms_norm_eps=1e-5, rope_theta=10000.0)


def reference_vocab(tmp_path, d):
    out = llamacpp_ref.convert(d, tmp_path / "vocab.gguf", "f32", "--vocab-only")
    return {k: v for k, v in read_kv(out).items() if k.startswith("tokenizer.")}


def same_entries(mine, ref):
    assert list(mine) == list(ref)  # the same keys, in the reference's order
    for k in ref:
        assert mine[k].type == ref[k].type and mine[k].item == ref[k].item, k
        assert mine[k].plain == ref[k].plain, k


def test_sentencepiece_reader_agrees_with_sentencepiece(tmp_path):
    spm = pytest.importorskip("sentencepiece")
    (tmp_path / "tokenizer.model").write_bytes(sentencepiece_model())
    pieces = gguf_vocab.read_sentencepiece(tmp_path / "tokenizer.model")
    sp = spm.SentencePieceProcessor(model_file=str(tmp_path / "tokenizer.model"))
    assert len(pieces) == sp.vocab_size()
    for i, (piece, score, kind) in enumerate(pieces):
        assert piece == sp.IdToPiece(i).encode() and score == sp.GetScore(i)
        want = (gguf_vocab.UNKNOWN if sp.IsUnknown(i) else gguf_vocab.CONTROL if sp.IsControl(i)
                else gguf_vocab.UNUSED if sp.IsUnused(i) else gguf_vocab.BYTE if sp.IsByte(i) else gguf_vocab.NORMAL)
        assert kind == want


@pytest.mark.parametrize("arch,style", [("LlamaForCausalLM", "llama"), ("Phi3ForCausalLM", "phi3"),
                                        ("Gemma3ForCausalLM", "gemma3")])
def test_sentencepiece_path_matches_llama_cpp(tmp_path, arch, style):
    pytest.importorskip("sentencepiece")
    llamacpp_ref.require()
    d = tmp_path / "model"
    d.mkdir()
    n = write_spm_tokenizer(d)
    extra = {"phi3": {"original_max_position_embeddings": 128}, "gemma3": {"sliding_window": 32}}.get(style, {})
    # a config vocab larger than the tokenizer: ids past it are padded [PAD<id>]
    (d / "config.json").write_text(json.dumps({"architectures": [arch], "vocab_size": n + 3, "bos_token_id": 1,
                                               "eos_token_id": 2, **CONFIG, **extra}))
    same_entries(gguf_vocab.tokenizer_entries(d, style, n + 3), reference_vocab(tmp_path, d))


def qwen2_tokenizer_dir(tmp_path):
    """A directory holding Qwen2's real tokenizer.json (from llama.cpp's vocab file); its size."""
    pytest.importorskip("tokenizers")
    root = llamacpp_ref.require()
    d = tmp_path / "model"
    d.mkdir()
    return d, write_qwen2_tokenizer(d, root / "models" / "ggml-vocab-qwen2.gguf")


def test_bpe_path_matches_llama_cpp(tmp_path):
    d, n = qwen2_tokenizer_dir(tmp_path)
    (d / "config.json").write_text(json.dumps({"architectures": ["Qwen2ForCausalLM"], "vocab_size": n,
                                               "eos_token_id": 151645, **CONFIG}))
    mine = gguf_vocab.tokenizer_entries(d, "qwen2", n)
    assert mine["tokenizer.ggml.pre"].value == "qwen2" and mine["tokenizer.ggml.model"].value == "gpt2"
    same_entries(mine, reference_vocab(tmp_path, d))


def test_unknown_bpe_pre_tokenizer_is_refused(tmp_path):
    d, n = qwen2_tokenizer_dir(tmp_path)
    tj = json.loads((d / "tokenizer.json").read_text())
    tj["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = r"\s+|\S+"  # not a split llama.cpp implements
    (d / "tokenizer.json").write_text(json.dumps(tj))
    with pytest.raises(CheckpointError, match="not one llama.cpp knows"):
        gguf_vocab.tokenizer_entries(d, "qwen2", n)


def test_hostile_sentencepiece_file_is_one_error(tmp_path):
    good = sentencepiece_model()
    for bad in (good[:len(good) // 2], b"\x0a\xff\xff\xff\xff\x0f" + good, b"not a model"):
        (tmp_path / "tokenizer.model").write_bytes(bad)
        with pytest.raises(CheckpointError, match="not a sentencepiece model"):
            gguf_vocab.read_sentencepiece(tmp_path / "tokenizer.model")


def test_no_tokenizer_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="no tokenizer"):
        gguf_vocab.tokenizer_entries(tmp_path, "llama")
