"""Writes examples/resnet-tiny-dp-fp16.safetensors: a small ResNet-style state dict as saved
from DataParallel in fp16 (seeded, numpy only). Rerun to regenerate the bundled file."""

from pathlib import Path

import numpy as np

from mapspec.formats import open_sink
from mapspec.compile.plan import TensorInfo


def tensors() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    out: dict[str, np.ndarray] = {}

    def conv(name, o, i, k):
        out[f"module.{name}.weight"] = rng.standard_normal((o, i, k, k)).astype(np.float16)

    def bn(name, c):
        out[f"module.{name}.weight"] = np.ones(c, np.float16)
        out[f"module.{name}.bias"] = np.zeros(c, np.float16)
        out[f"module.{name}.running_mean"] = rng.standard_normal(c).astype(np.float16)
        out[f"module.{name}.running_var"] = rng.random(c).astype(np.float16) + 1
        out[f"module.{name}.num_batches_tracked"] = np.array(100, np.int64)

    conv("conv1", 16, 3, 7)
    bn("bn1", 16)
    for s, c in enumerate((16, 32), 1):
        for b in range(2):
            cin = c if b or s == 1 else c // 2
            conv(f"layer{s}.{b}.conv1", c, cin, 3)
            bn(f"layer{s}.{b}.bn1", c)
            conv(f"layer{s}.{b}.conv2", c, c, 3)
            bn(f"layer{s}.{b}.bn2", c)
    out["module.fc.weight"] = rng.standard_normal((10, 32)).astype(np.float16)
    out["module.fc.bias"] = np.zeros(10, np.float16)
    return out


if __name__ == "__main__":
    data = tensors()
    path = Path(__file__).with_name("resnet-tiny-dp-fp16.safetensors")
    path.unlink(missing_ok=True)
    sink = open_sink(path, "safetensors", {k: TensorInfo(a.shape, str(a.dtype)) for k, a in data.items()})
    for k, a in data.items():
        sink.write(k, a)
    sink.commit()
    print(f"wrote {path} ({path.stat().st_size} bytes, {len(data)} tensors)")
