"""TensorRT .wts: identical to the tensorrtx gen_wts.py loop, and read back."""

import struct

import numpy as np
import pytest

from mapspec import apply
from mapspec.formats import open_source

torch = pytest.importorskip("torch")


def gen_wts(state_dict, path):
    """The loop of tensorrtx's gen_wts.py, as those scripts write it."""
    with open(path, "w") as f:
        f.write("{}\n".format(len(state_dict.keys())))
        for k, v in state_dict.items():
            vr = v.reshape(-1).cpu().numpy()
            f.write("{} {} ".format(k, len(vr)))
            for vv in vr:
                f.write(" ")
                f.write(struct.pack(">f", float(vv)).hex())
            f.write("\n")


def test_wts_output_is_identical_to_gen_wts(tmp_path):
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Linear(4, 2))
    torch.manual_seed(0)
    for p in net.parameters():
        p.data.normal_()
    net[1].num_batches_tracked.fill_(12)
    torch.save({"model": net.half(), "epoch": 3}, tmp_path / "best.pt")
    gen_wts(net.float().state_dict(), tmp_path / "expected.wts")
    (tmp_path / "to_wts.map").write_text("select model\nkeep **\n")
    apply(tmp_path / "to_wts.map", tmp_path / "best.pt", tmp_path / "out.wts")
    assert (tmp_path / "out.wts").read_bytes() == (tmp_path / "expected.wts").read_bytes()
    src = open_source(tmp_path / "out.wts")
    sd = net.float().state_dict()
    assert list(src.infos()) == list(sd)
    for k, t in sd.items():
        np.testing.assert_array_equal(src.read(k), t.reshape(-1).float().numpy())


def test_truncated_wts_is_a_clear_error(tmp_path):
    from mapspec.errors import CheckpointError

    (tmp_path / "a.wts").write_text("3\nw 2  3f800000 40000000\n")
    with pytest.raises(CheckpointError, match="3 entries announced, the file ends after 1"):
        open_source(tmp_path / "a.wts")
    (tmp_path / "b.wts").write_text("1\nw 3  3f800000 40000000\n")
    with pytest.raises(CheckpointError, match="announces 3 values, holds 2"):
        open_source(tmp_path / "b.wts")
