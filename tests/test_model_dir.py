"""Model directories in, model directories out: the files beside the weights are carried over
byte for byte, `config.json` rewritten to what the output is (its dtype; quantization_config
as the actions say) and nothing else in it changed, all of it appearing at once or not at all;
from_pretrained loads the result with no missing, unexpected or mismatched weights."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mapspec.core.modelconfig import ConfigPatch
from mapspec.formats.model_dir import companions, patched

REPO = Path(__file__).resolve().parent.parent


def _cli(*args, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "mapspec.cli", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True)


@pytest.fixture
def llama_dir(tmp_path):
    """A tiny fp32 Llama as save_pretrained writes it, with the files a hub repo has beside it."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2)
    model = transformers.LlamaForCausalLM(config)
    src = tmp_path / "src"
    model.save_pretrained(src)
    (src / "tokenizer.json").write_text('{"version": "1.0", "model": {"type": "BPE"}}')
    (src / "tokenizer_config.json").write_text('{"model_max_length": 2048}')
    (src / "chat_template.jinja").write_text("{% for m in messages %}{{ m.content }}{% endfor %}")
    (src / "README.md").write_bytes(b"# tiny\n\xe2\x9c\x93 weights\n")
    (src / ".gitattributes").write_text("*.safetensors filter=lfs\n")
    (src / "original").mkdir()
    (src / "original" / "params.json").write_text("{}")
    return src, model


def test_a_conversion_carries_the_model_files_and_updates_the_config_dtype(tmp_path, llama_dir):
    import torch
    import transformers

    src, model = llama_dir
    (tmp_path / "bf16.map").write_text("mapspec 1\n{k:**} -> {k} then cast(bfloat16)\n")
    r = _cli("apply", "bf16.map", src, "-o", "out", "--max-shard-size", "5GB", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja",
         "README.md", "model.safetensors"])
    for name in ("generation_config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "README.md"):
        assert (out / name).read_bytes() == (src / name).read_bytes(), name
    before, after = json.loads((src / "config.json").read_text()), json.loads((out / "config.json").read_text())
    assert before["dtype"] == "float32" and after["dtype"] == "bfloat16"
    assert {k: v for k, v in after.items() if k != "dtype"} == {k: v for k, v in before.items() if k != "dtype"}
    assert list(after) == list(before)  # key order kept

    loaded, info = transformers.AutoModelForCausalLM.from_pretrained(out, output_loading_info=True)
    assert loaded.dtype == torch.bfloat16
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    ids = torch.tensor([[1, 5, 9, 3]])
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model.to(torch.bfloat16)(ids).logits)


def test_a_rename_copies_config_json_byte_for_byte_into_shards(tmp_path, llama_dir):
    src, _ = llama_dir
    (tmp_path / "same.map").write_text("mapspec 1\nkeep **\n")
    r = _cli("apply", "same.map", src, "-o", "out", "--max-shard-size", "40KB", "--to", "torch", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    out = tmp_path / "out"
    assert (out / "config.json").read_bytes() == (src / "config.json").read_bytes()
    assert (out / "pytorch_model.bin.index.json").is_file() and (out / "README.md").is_file()
    assert not (out / "original").exists() and not (out / ".gitattributes").exists()


def test_a_failed_conversion_leaves_no_directory(tmp_path, llama_dir):
    src, _ = llama_dir
    (src / "config.json").write_text("{not json")
    (tmp_path / "bf16.map").write_text("mapspec 1\n{k:**} -> {k} then cast(bfloat16)\n")
    r = _cli("apply", "bf16.map", src, "-o", "out", "--max-shard-size", "5GB", cwd=tmp_path)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1].startswith(f"error: {src / 'config.json'}: not a JSON config")
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]  # no temp folder left either


def test_patched_changes_only_what_the_patch_says():
    text = b'{"torch_dtype": "float8_e4m3fn", "quantization_config": {"quant_method": "fp8"}, "b": 1, "a": [1, 2]}'
    out = json.loads(patched(text, ConfigPatch(remove=frozenset({"quantization_config"}), dtype="bfloat16"), "c"))
    assert out == {"torch_dtype": "bfloat16", "b": 1, "a": [1, 2]} and list(out) == ["torch_dtype", "b", "a"]
    q = {"quant_method": "fp8", "fmt": "e4m3", "weight_block_size": [128, 128]}
    out = json.loads(patched(b'{"dtype": "bfloat16", "x": null}', ConfigPatch(set={"quantization_config": q}), "c"))
    assert out == {"dtype": "bfloat16", "x": None, "quantization_config": q}
    same = b'{"dtype":"bfloat16"}'
    assert patched(same, ConfigPatch(remove=frozenset({"quantization_config"}), dtype="bfloat16"), "c") is same


def test_companions_are_the_files_that_are_not_weights(tmp_path):
    for name in ("model-00001-of-00002.safetensors", "model.safetensors.index.json", "config.json", "vocab.txt",
                 ".hidden", "pytorch_model.bin", "merges.txt", "out.safetensors.mapspec.json"):
        (tmp_path / name).write_text("x")
    (tmp_path / "sub").mkdir()
    assert [p.name for p in companions(tmp_path)] == ["config.json", "merges.txt", "vocab.txt"]
