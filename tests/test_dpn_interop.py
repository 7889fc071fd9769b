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


def load_params(path: Path) -> dict:
    return {k: v.asnumpy() for k, v in mx.nd.load(str(path)).items()}


@pytest.mark.parametrize("variant", ["dpn68", "dpn92", "dpn68b"])
def test_dpn_reverse_gives_mxnet_params_mxnet_loads(tmp_path, variant):
    """PyTorch DPN state dict (torch.save of the model, BN counters and all) -> apply --reverse
    -> .params that mx.model.load_checkpoint loads with the original symbol: the same logits,
    and every tensor equal to the original MXNet file's, bit for bit. DPN-68b's BN names are
    its own (the keys decide: its blocks have c1x1_c1); a plain torch file does not say which
    classifier name the MXNet file had, so the -extra models need -p fc=fc6-1k."""
    cfg = VARIANTS[variant]
    fc = "fc6-1k" if variant in ("dpn92", "dpn68b") else "fc6"  # dpn.map writes fc6 back unless -p fc=...
    net = mxnet_dpn(cfg, fc)
    args, aux = seeded_checkpoint(net, tmp_path / variant, seed=len(variant))
    forward = tmp_path / "forward.pt"
    r = CliRunner().invoke(app, ["apply", str(SPEC), str(tmp_path / variant), "--epoch", "0", "-o", str(forward)])
    assert r.exit_code == 0, r.output
    model = torch_dpn(cfg)
    model.load_state_dict({**model.state_dict(), **torch.load(forward, weights_only=True)}, strict=True)
    torch.save(model.state_dict(), tmp_path / "torch_dpn.pth")

    back = tmp_path / "back-0000.params"
    r = CliRunner().invoke(app, ["apply", "--reverse", "--non-strict", str(SPEC), str(tmp_path / "torch_dpn.pth"),
                                 "-o", str(back), "-p", f"fc={fc}"])
    assert r.exit_code == 0, r.output
    assert "num_batches_tracked" in r.output  # PyTorch's BN counters have no MXNet place: named, left out
    original = load_params(tmp_path / f"{variant}-0000.params")
    got = load_params(back)
    assert sorted(got) == sorted(original)
    for k, v in original.items():
        assert got[k].dtype == v.dtype and got[k].tobytes() == v.tobytes(), k

    (tmp_path / "back-symbol.json").write_bytes((tmp_path / f"{variant}-symbol.json").read_bytes())
    sym, arg_params, aux_params = mx.model.load_checkpoint(str(tmp_path / "back"), 0)
    x = np.random.default_rng(1).standard_normal((2, 3, 64, 64)).astype(np.float32)
    np.testing.assert_array_equal(mx_forward(sym, arg_params, aux_params, x), mx_forward(net, args, aux, x))


@pytest.mark.parametrize("variant, fc", [("dpn68", "fc6"), ("dpn131", "fc6"), ("dpn107", "fc6-1k")])
def test_dpn_round_trip_is_bit_exact(tmp_path, variant, fc):
    net = mxnet_dpn(VARIANTS[variant], fc)
    seeded_checkpoint(net, tmp_path / variant, seed=3)
    r = CliRunner().invoke(app, ["verify", str(SPEC), str(tmp_path / variant), "--epoch", "0", "-p", f"fc={fc}"])
    assert r.exit_code == 0, r.output
    n = len(net.list_arguments()) - 1 + len(net.list_auxiliary_states())
    assert f"ok: {n} tensors, {n} bit-exact" in r.output


@pytest.mark.parametrize("variant, fc", [("dpn92", "fc6-1k"), ("dpn68b", "fc6-1k"), ("dpn68b", "fc6")])
def test_every_layout_verifies_bit_exact_under_the_names_it_came_with(tmp_path, variant, fc):
    """verify reverses to what the forward direction matched: the -extra classifier (fc6-1k,
    not the fc param's default) and DPN-68b's BN names (its blocks have c1x1_c1), with no -p."""
    net = mxnet_dpn(VARIANTS[variant], fc)
    seeded_checkpoint(net, tmp_path / variant, seed=5)
    r = CliRunner().invoke(app, ["verify", str(SPEC), str(tmp_path / variant), "--epoch", "0"])
    assert r.exit_code == 0, r.output
    n = len(net.list_arguments()) - 1 + len(net.list_auxiliary_states())
    assert f"ok: {n} tensors, {n} bit-exact" in r.output


def test_a_file_mapspec_wrote_reverses_to_the_names_its_source_had(tmp_path):
    """DPN-92-extra -> .pt by mapspec (its provenance record notes the fc6-1k alternative) ->
    apply --reverse with no -p: every name and value of the original file; the same from a
    plain torch file gives fc6 and says it chose by default."""
    net = mxnet_dpn(VARIANTS["dpn92"], "fc6-1k")
    seeded_checkpoint(net, tmp_path / "dpn92", seed=7)
    forward = tmp_path / "forward.pt"
    r = CliRunner().invoke(app, ["apply", str(SPEC), str(tmp_path / "dpn92"), "--epoch", "0", "-o", str(forward)])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(app, ["apply", "--reverse", str(SPEC), str(forward), "-o", str(tmp_path / "back-0000.params")])
    assert r.exit_code == 0 and "warning" not in r.output, r.output
    original, got = load_params(tmp_path / "dpn92-0000.params"), load_params(tmp_path / "back-0000.params")
    assert sorted(got) == sorted(original)
    assert all(got[k].tobytes() == v.tobytes() for k, v in original.items())

    torch.save(torch.load(forward, weights_only=True), tmp_path / "plain.pt")  # no record
    r = CliRunner().invoke(app, ["apply", "--reverse", str(SPEC), str(tmp_path / "plain.pt"),
                                 "-o", str(tmp_path / "plain-0000.params")])
    assert r.exit_code == 0, r.output
    assert ("writes back arg:fc6_weight, the reverse clause's default among arg:fc6-1k_weight | arg:fc6_weight: "
            "nothing says which the forward conversion matched (-p fc=... decides") in r.output
    assert "arg:fc6_weight" in load_params(tmp_path / "plain-0000.params")
