"""The native MXNet reader and writer against real mxnet 1.9.1 (numpy 1.23.5 environment)."""

import numpy as np
import pytest

from mapspec.core.dtypes import STORAGE
from mapspec.formats import open_sink, open_source
from mapspec.compile.plan import TensorInfo

mx = pytest.importorskip("mxnet")
pytestmark = pytest.mark.mxnet

# mxnet's own dtypes (it has no bfloat16 in mx.nd.array, nor unsigned types beyond uint8)
MX_DTYPES = ["float32", "float64", "float16", "uint8", "int8", "int32", "int64", "bool"]


def arrays():
    rng = np.random.default_rng(2)
    out = {}
    for name in MX_DTYPES:
        a = (rng.standard_normal((3, 4)) * 10).astype(STORAGE[name]) if name != "bool" else rng.random((3, 4)) > 0.5
        out[f"arg:{name}_w"] = a
    out["aux:bn_moving_var"] = rng.random(5).astype(np.float32)
    return out


def write_native(path, tensors):
    sink = open_sink(path, "mxnet", {k: TensorInfo(a.shape, str(a.dtype)) for k, a in tensors.items()})
    for k, a in tensors.items():
        sink.write(k, a)
    sink.commit()


def test_native_writer_is_byte_identical_to_mx_nd_save(tmp_path):
    tensors = arrays()
    mx.nd.save(str(tmp_path / "mx.params"), {k: mx.nd.array(a, dtype=a.dtype) for k, a in tensors.items()})
    write_native(tmp_path / "native.params", tensors)
    assert (tmp_path / "native.params").read_bytes() == (tmp_path / "mx.params").read_bytes()


def test_mx_nd_load_reads_native_files(tmp_path):
    tensors = arrays()
    write_native(tmp_path / "native.params", tensors)
    loaded = mx.nd.load(str(tmp_path / "native.params"))
    assert list(loaded) == list(tensors)
    for k, a in tensors.items():
        np.testing.assert_array_equal(loaded[k].asnumpy(), a)


def test_native_reader_reads_mx_files_including_lists(tmp_path):
    tensors = arrays()
    mx.nd.save(str(tmp_path / "d.params"), {k: mx.nd.array(a, dtype=a.dtype) for k, a in tensors.items()})
    src = open_source(tmp_path / "d.params")
    for k, a in tensors.items():
        np.testing.assert_array_equal(src.read(k), a)
    mx.nd.save(str(tmp_path / "l.params"), [mx.nd.ones((2, 2)), mx.nd.zeros(3)])
    assert list(open_source(tmp_path / "l.params").infos()) == ["0", "1"]


def test_native_reader_reads_sparse_as_dense(tmp_path):
    dense = np.zeros((6, 3), np.float32)
    dense[1] = [1, 2, 3]
    dense[4] = [4, 5, 6]
    csr = np.array([[0, 7, 0], [0, 0, 0], [8, 0, 9]], np.float32)
    arrays = {"rsp": mx.nd.array(dense).tostype("row_sparse"), "csr": mx.nd.array(csr).tostype("csr")}
    # mxnet's engine converts asynchronously and mx.nd.save does not always wait for it: without
    # waitall it sometimes writes a csr array whose storage shape says 0 values (seen 1 run in 8).
    mx.nd.waitall()
    mx.nd.save(str(tmp_path / "s.params"), arrays)
    src = open_source(tmp_path / "s.params")
    np.testing.assert_array_equal(src.read("rsp"), dense)
    np.testing.assert_array_equal(src.read("csr"), csr)


def test_native_reader_reads_numpy_mode_v3_files_with_scalars(tmp_path):
    from mxnet import npx

    npx.set_np()
    try:
        a = mx.np.array(np.arange(6, dtype=np.float32).reshape(2, 3))
        s = mx.np.array(2.5)
        npx.save(str(tmp_path / "v3.params"), {"a": a, "s": s})
    finally:
        npx.reset_np()
    src = open_source(tmp_path / "v3.params")
    np.testing.assert_array_equal(src.read("a"), np.arange(6, dtype=np.float32).reshape(2, 3))
    assert src.infos()["s"] == TensorInfo((), "float32")
    assert float(src.read("s")) == 2.5


def test_save_checkpoint_prefix_with_epoch(tmp_path):
    data = mx.sym.Variable("data")
    net = mx.sym.FullyConnected(data, num_hidden=4, name="fc6")
    args = {"fc6_weight": mx.nd.ones((4, 3)), "fc6_bias": mx.nd.zeros(4)}
    mx.model.save_checkpoint(str(tmp_path / "net"), 0, net, args, {})
    src = open_source(tmp_path / "net", epoch=0)
    assert sorted(src.infos()) == ["arg:fc6_bias", "arg:fc6_weight"]
