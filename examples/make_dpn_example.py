"""Writes examples/dpn68-tiny-0000.params and -symbol.json with real mxnet: a DPN-68-shaped
network (the real block structure, widths scaled down) with seeded weights, saved by
mx.model.save_checkpoint. Needs the mxnet environment (numpy 1.23.5 + mxnet 1.9.1)."""

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import mxnet as mx  # noqa: E402

from dpn_models import VARIANTS, mxnet_dpn  # noqa: E402


def main() -> None:
    net = mxnet_dpn(VARIANTS["dpn68"], "fc6")
    rng = np.random.default_rng(68)
    arg_shapes, _, aux_shapes = net.infer_shape(data=(1, 3, 64, 64))
    args = {n: mx.nd.array(rng.normal(0, 0.1, s).astype(np.float32))
            for n, s in zip(net.list_arguments(), arg_shapes) if n != "data"}
    aux = {n: mx.nd.array((rng.uniform(0.5, 1.5, s) if n.endswith("var") else rng.normal(0, 0.1, s))
                          .astype(np.float32)) for n, s in zip(net.list_auxiliary_states(), aux_shapes)}
    prefix = Path(__file__).with_name("dpn68-tiny")
    mx.model.save_checkpoint(str(prefix), 0, net, args, aux)
    size = Path(f"{prefix}-0000.params").stat().st_size
    print(f"wrote {prefix}-0000.params ({size} bytes, {len(args) + len(aux)} arrays)")


if __name__ == "__main__":
    main()
