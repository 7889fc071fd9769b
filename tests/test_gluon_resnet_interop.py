"""specs/gluon_resnet.map against mxnet's own model zoo: Gluon ResNet v1 saved both ways,
converted, loaded strictly into a torchvision-layout ResNet, same logits."""

from pathlib import Path

import numpy as np
import pytest

from mapspec import apply

from conftest import seeded_gluon
from models import resnet

mx = pytest.importorskip("mxnet")
torch = pytest.importorskip("torch")
pytestmark = pytest.mark.mxnet
SPEC = Path(__file__).resolve().parent.parent / "specs" / "gluon_resnet.map"
CLASSES = 9


def torchvision_resnet(layers):
    return resnet(layers, CLASSES)


@pytest.mark.parametrize("depth,layers", [(18, (2, 2, 2, 2)), (34, (3, 4, 6, 3))])
@pytest.mark.parametrize("form", ["save_parameters", "export"])
def test_gluon_resnet_gives_the_same_logits(tmp_path, depth, layers, form):
    from mxnet.gluon.model_zoo import vision

    net = seeded_gluon(getattr(vision, f"resnet{depth}_v1")(classes=CLASSES), seed=depth)
    x = np.random.default_rng(1).standard_normal((2, 3, 64, 64)).astype(np.float32)
    expected = net(mx.nd.array(x)).asnumpy()
    if form == "save_parameters":
        ckpt = tmp_path / "net.params"
        net.save_parameters(str(ckpt))
        report = apply(SPEC, ckpt, tmp_path / "out.pt")
    else:
        net.export(str(tmp_path / "net"), 0)
        report = apply(SPEC, tmp_path / "net", tmp_path / "out.pt", epoch=0)
    assert len(report.plan.steps) == report.plan.source_count
    model = torchvision_resnet(layers)
    state = torch.load(tmp_path / "out.pt", weights_only=True)
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert unexpected == [] and all(k.endswith("num_batches_tracked") for k in missing)
    with torch.no_grad():
        got = model(torch.from_numpy(x)).numpy()
    assert 0.1 < np.abs(expected).max() < 1e3
    assert np.abs(got - expected).max() < 1e-4
