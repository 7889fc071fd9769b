"""OneFlow's flow.save directory: the layout byte for byte, round trips, the old layout."""

import io
import pickle
import pickletools
from pathlib import Path

import numpy as np
import pytest

from mapspec import apply
from mapspec.errors import CheckpointError
from mapspec.formats import open_sink, open_source
from mapspec.compile.plan import TensorInfo


def write(path, tensors):
    sink = open_sink(path, "oneflow", {k: TensorInfo(a.shape, d) for k, (a, d) in tensors.items()})
    for k, (a, _) in tensors.items():
        sink.write(k, a)
    sink.commit()


def sample():
    rng = np.random.default_rng(3)
    return {
        "conv.weight": (rng.standard_normal((2, 3, 1, 1)).astype(np.float32), "float32"),
        "bn.num_batches_tracked": (np.array(7, np.int64), "int64"),
        "h": (rng.standard_normal(4).astype(np.float16), "float16"),
        "mask": (np.array([True, False]), "bool"),
    }


def test_layout_is_what_flow_save_writes(tmp_path):
    write(tmp_path / "ck", sample())
    root = tmp_path / "ck"
    assert sorted(p.name for p in root.iterdir()) == ["pickled_data", "tensor_0", "tensor_1", "tensor_2", "tensor_3"]
    assert (root / "tensor_0" / "meta").read_text() == "shape {\n  dim: 2\n  dim: 3\n  dim: 1\n  dim: 1\n}\ndata_type: kFloat\n"
    assert (root / "tensor_1" / "meta").read_text() == "shape {\n}\ndata_type: kInt64\n"
    assert (root / "tensor_0" / "out").read_bytes() == sample()["conv.weight"][0].tobytes()
    ops = [(op.name, arg) for op, arg, _ in pickletools.genops((root / "pickled_data").read_bytes())]
    assert ops[0] == ("PROTO", 4)
    assert ("GLOBAL", "oneflow Tensor") in ops and ops.count(("NEWOBJ", None)) == 4
    assert ("SHORT_BINUNICODE", "protocol_version") in ops and ("SHORT_BINUNICODE", "tensor_3") in ops

    class Tensor:  # what oneflow would build: NEWOBJ + BUILD({"path": ...})
        def __setstate__(self, state):
            self.path = state["path"]

    class Loader(pickle.Unpickler):
        def find_class(self, module, name):
            return Tensor if (module, name) == ("oneflow", "Tensor") else super().find_class(module, name)

    obj = Loader(io.BytesIO((root / "pickled_data").read_bytes())).load()
    assert obj["protocol_version"] == 1
    assert [(k, v.path) for k, v in obj["data"].items()] == [
        ("conv.weight", "tensor_0"), ("bn.num_batches_tracked", "tensor_1"), ("h", "tensor_2"), ("mask", "tensor_3")]


def test_round_trip(tmp_path):
    tensors = sample()
    write(tmp_path / "ck", tensors)
    src = open_source(tmp_path / "ck")
    assert list(src.infos()) == list(tensors)
    for k, (a, d) in tensors.items():
        assert src.infos()[k] == TensorInfo(a.shape, d)
        np.testing.assert_array_equal(src.read(k), a)


def test_reads_old_per_parameter_layout(tmp_path):
    root = tmp_path / "old"
    (root / "fc.weight").mkdir(parents=True)
    (root / "snapshot_done").write_text("")
    (root / "fc.weight" / "meta").write_text("shape {\n  dim: 2\n}\ndata_type: kFloat\n")
    (root / "fc.weight" / "out").write_bytes(np.array([1.5, 2.5], np.float32).tobytes())
    src = open_source(root)
    np.testing.assert_array_equal(src.read("fc.weight"), [1.5, 2.5])


def test_paths_outside_the_checkpoint_are_refused(tmp_path):
    write(tmp_path / "ck", {"a": (np.ones(2, np.float32), "float32")})
    blob = (tmp_path / "ck" / "pickled_data").read_bytes().replace(b"\x8c\x08tensor_0", b"\x8c\x08../../aa")
    (tmp_path / "ck" / "pickled_data").write_bytes(blob)
    with pytest.raises(CheckpointError, match="points outside the checkpoint"):
        open_source(tmp_path / "ck")


def test_yolo_to_oneflow_spec_with_force_over_an_old_output(tmp_path):
    torch = pytest.importorskip("torch")
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    net.register_buffer("anchors", torch.ones(3, 2))
    torch.save({"model": net.half(), "epoch": -1, "optimizer": None}, tmp_path / "yolov5s.pt")
    spec = Path(__file__).resolve().parent.parent / "specs" / "yolov5_to_oneflow.map"
    (tmp_path / "out.oneflow").mkdir()
    (tmp_path / "out.oneflow" / "stale").write_text("x")
    apply(spec, tmp_path / "yolov5s.pt", tmp_path / "out.oneflow", force=True)
    src = open_source(tmp_path / "out.oneflow")
    assert sorted(src.infos()) == sorted(k for k in net.state_dict() if k != "anchors")
    assert src.infos()["0.weight"].dtype == "float32"
    assert not (tmp_path / "out.oneflow" / "stale").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
