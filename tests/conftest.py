import json
import os
from pathlib import Path

import numpy as np
import pytest

from mapspec import TensorInfo

DATA = Path(__file__).parent / "data"
UPDATE = os.environ.get("MAPSPEC_UPDATE_GOLDEN") == "1"
LLAMA = DATA / "specs" / "invert" / "llama_like.map"  # HF -> Meta: rotary q/k with GQA, a tied head, a catch-all


def meta_to_hf(torch, w, heads: int):
    """The permutation transformers' convert_llama_weights_to_hf.py applies to q and k (Meta -> HF),
    written here in torch."""
    dim1, dim2 = w.shape
    return w.view(heads, dim1 // heads // 2, 2, dim2).transpose(1, 2).reshape(dim1, dim2)


# Shipped specs with parameters are checked with a published model's configuration.
SHIPPED_CONFIGS = {
    "gpt2_to_qkv.map": "gpt2.json",
    "llama_hf_to_meta.map": "llama3-8b.json",
    "llama_meta_to_hf.map": "llama3-8b-params.json",
    "llama_to_megatron.map": "llama3-8b.json",
    "megatron_to_llama.map": "llama3-8b.json",
    "mixtral_fused_experts.map": "mixtral-8x7b.json",
    "phi3_fused.map": "phi3-mini.json",
}


def shipped_config(spec: Path) -> Path | None:
    """The published configuration (tests/data/configs) a shipped spec is checked with, if any."""
    name = SHIPPED_CONFIGS.get(spec.name)
    return name and DATA / "configs" / name


def load_keys(path: Path) -> dict[str, TensorInfo]:
    raw = json.loads(path.read_text())
    return {k: TensorInfo(tuple(shape), dtype) for k, (shape, dtype) in raw.items()}


def without(value, fields: tuple[str, ...]):
    """A model_dump() with these fields left out at every depth (positions, spellings)."""
    if isinstance(value, dict):
        return {k: without(v, fields) for k, v in value.items() if k not in fields}
    if isinstance(value, (list, tuple)):
        return [without(v, fields) for v in value]
    return value


def write_safetensors(path: Path, arrays: dict) -> Path:
    """A checkpoint of these numpy arrays, written by mapspec's own safetensors sink."""
    from mapspec.formats import open_sink

    sink = open_sink(path, "safetensors", {k: TensorInfo(a.shape, str(a.dtype)) for k, a in arrays.items()})
    for k, a in arrays.items():
        sink.write(k, a)
    sink.commit()
    return path


def seeded_gluon(net, seed: int):
    """An initialised, hybridised Gluon `net` (input 3x64x64) with seeded values that keep a
    BatchNorm network's logits well scaled."""
    import mxnet as mx

    net.initialize()
    net(mx.nd.zeros((1, 3, 64, 64)))
    rng = np.random.default_rng(seed)
    for name, p in net.collect_params().items():
        shape = p.shape
        if name.endswith("gamma"):
            value = rng.uniform(0.3, 0.8, shape)
        elif "conv" in name and name.endswith("bias"):
            # BatchNorm follows each biased conv, so training never moves these from zero
            value = np.zeros(shape)
        elif name.endswith(("beta", "bias", "running_mean")):
            value = rng.normal(0, 0.1, shape)
        elif name.endswith("running_var"):
            value = rng.uniform(0.5, 1.5, shape)
        else:
            value = rng.normal(0, np.sqrt(2.0 / np.prod(shape[1:])), shape)
        p.set_data(mx.nd.array(value.astype(np.float32)))
    net.hybridize()
    return net


def golden(path: Path, actual: str) -> None:
    """Compare with a golden file; MAPSPEC_UPDATE_GOLDEN=1 rewrites it instead."""
    if UPDATE or not path.exists():
        if not UPDATE:
            pytest.fail(f"missing golden file {path}; run with MAPSPEC_UPDATE_GOLDEN=1 and review it")
        path.write_text(actual)
    assert actual == path.read_text()


def torch_zip(path: Path, pkl: bytes, entries: dict | None = None) -> Path:
    """A torch.save-shaped zip holding a hand-made pickle: archive/data.pkl plus archive/<name>."""
    import zipfile

    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", pkl)
        for k, v in (entries or {}).items():
            z.writestr(f"archive/{k}", v)
    return path


@pytest.fixture
def torch():
    return pytest.importorskip("torch")


@pytest.fixture(scope="session")
def s3():
    """One moto S3 server for the whole session (tests/servers.py), its endpoint and keys in
    os.environ; yields an s3fs file system talking to it. Skips without moto or s3fs."""
    pytest.importorskip("moto")
    pytest.importorskip("s3fs")
    from servers import moto_server

    with moto_server():
        import fsspec

        yield fsspec.filesystem("s3", skip_instance_cache=True)


@pytest.fixture
def bucket(s3):
    """A new, empty bucket on the session's S3 server."""
    import uuid

    name = f"mapspec-{uuid.uuid4().hex[:12]}"
    s3.mkdir(name)
    return name


def native_library():
    """mapspec.ops.native with its library loaded, or the test skipped where it is not built."""
    from mapspec.ops import native

    if native.load() is None:
        pytest.skip(f"{native.LIBRARY.name} is not built (no C compiler at install time)")
    return native


@pytest.fixture(scope="module", params=["numpy", "native"])
def engine(request):
    """The FP8, MXFP4 and Q8_0 kernels on numpy, then on the compiled C loops (module scope:
    hypothesis runs many examples in one call of a test). The C loops are built by `pip
    install` wherever there is a C compiler (hatch_build.py); without one they are skipped,
    and numpy runs."""
    from mapspec.ops import fp8

    if request.param == "native":
        native_library()
    saved = fp8.USE_NATIVE
    fp8.USE_NATIVE = request.param == "native"
    yield request.param
    fp8.USE_NATIVE = saved
