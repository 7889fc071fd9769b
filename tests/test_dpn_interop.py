"""specs/dpn.map against real MXNet DPN networks: save_checkpoint -> mapspec apply -> a
PyTorch DPN loads the result strictly and computes the same logits."""

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from mapspec.cli import app

from dpn_models import VARIANTS, mxnet_dpn, torch_dpn

mx = pytest.importorskip("mxnet")
torch = pytest.importorskip("torch")
pytestmark = pytest.mark.mxnet
SPEC = Path(__file__).resolve().parent.parent / "specs" / "dpn.map"


def seeded_checkpoint(net, prefix: Path, seed: int):
    rng = np.random.default_rng(seed)
    arg_shapes, _, aux_shapes = net.infer_shape(data=(2, 3, 64, 64))
    args, aux = {}, {}
    for name, shape in zip(net.list_arguments(), arg_shapes):
        if name == "data":
            continue
        if name.endswith("_gamma"):
            value = rng.uniform(0.2, 0.5, shape)  # keeps activations O(1) through the residual sums
        elif name.endswith("_beta") or name.endswith("_bias"):
            value = rng.normal(0, 0.1, shape)
        else:
            fan_in = int(np.prod(shape[1:]))
            value = rng.normal(0, np.sqrt(2.0 / fan_in), shape)
        args[name] = mx.nd.array(value.astype(np.float32))
    for name, shape in zip(net.list_auxiliary_states(), aux_shapes):
        value = rng.normal(0, 0.1, shape) if name.endswith("moving_mean") else rng.uniform(0.5, 1.5, shape)
        aux[name] = mx.nd.array(value.astype(np.float32))
    mx.model.save_checkpoint(str(prefix), 0, net, args, aux)
    return args, aux


def mx_forward(net, args, aux, x):
    exe = net.bind(mx.cpu(), args={**args, "data": mx.nd.array(x)}, aux_states=aux, grad_req="null")
    return exe.forward(is_train=False)[0].asnumpy()


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_dpn_conversion_gives_the_same_logits(tmp_path, variant):
    cfg = VARIANTS[variant]
    # DPN-92/107/68b ship as "-extra" models whose classifier is fc6-1k; the others use fc6.
    fc = "fc6-1k" if variant in ("dpn92", "dpn107", "dpn68b") else "fc6"
    net = mxnet_dpn(cfg, fc)
    args, aux = seeded_checkpoint(net, tmp_path / variant, seed=len(variant))
    out = tmp_path / f"{variant}.pt"
    r = CliRunner().invoke(app, ["apply", str(SPEC), str(tmp_path / variant), "--epoch", "0", "-o", str(out)])
    assert r.exit_code == 0, r.output
    model = torch_dpn(cfg)
    n_params = len(args) + len(aux)
    assert f"Transferred {n_params}/{n_params} tensors" in r.output
    state = torch.load(out, weights_only=True)
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert unexpected == [] and all(k.endswith("num_batches_tracked") for k in missing)
    model.load_state_dict({**model.state_dict(), **state}, strict=True)
    x = np.random.default_rng(0).standard_normal((2, 3, 64, 64)).astype(np.float32)
    expected = mx_forward(net, args, aux, x)
    with torch.no_grad():
        got = model(torch.from_numpy(x)).numpy()
    assert 0.1 < np.abs(expected).max() < 1e3, "logits must be informative for the 1e-4 bound to mean anything"
    assert np.abs(got - expected).max() < 1e-4
