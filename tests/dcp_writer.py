"""Writes a torch.distributed.checkpoint from 2 gloo processes (run by test_distcp.py):
row-sharded, column-sharded and replicated DTensors in bf16 and fp32, a tensor whose rows do
not divide evenly, a plain tensor and a non-tensor entry, nested under model/extra.
Usage: python dcp_writer.py OUT_DIR [torch_save|safetensors] INIT_FILE (the chunks' serialization)"""

import sys

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import Replicate, Shard, distribute_tensor


def full_tensors() -> dict:
    g = torch.Generator().manual_seed(0)
    out = {}
    for dtype, tag in ((torch.float32, "fp32"), (torch.bfloat16, "bf16")):
        out[f"rows_{tag}"] = torch.randn(8, 6, generator=g).to(dtype)
        out[f"cols_{tag}"] = torch.randn(6, 8, generator=g).to(dtype)
        out[f"replicated_{tag}"] = torch.randn(10, generator=g).to(dtype)
    out["uneven_fp32"] = torch.randn(7, 3, generator=g)
    return out


def run(rank: int, world: int, out: str, init: str, fmt: str) -> None:
    from torch.distributed.checkpoint.filesystem import FileSystemWriter, SerializationFormat

    dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=world)
    mesh = init_device_mesh("cpu", (world,))
    placements = {"rows": Shard(0), "cols": Shard(1), "replicated": Replicate(), "uneven": Shard(0)}
    model = {k: distribute_tensor(v, mesh, [placements[k.split("_")[0]]]) for k, v in full_tensors().items()}
    state = {"model": model, "extra": {"plain": torch.arange(5), "step": 7}}
    writer = FileSystemWriter(out, serialization_format=SerializationFormat(fmt))
    dcp.save(state, storage_writer=writer)
    # every rank done before any tears the group down (the test retries a teardown abort)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    fmt = sys.argv[2] if len(sys.argv) > 3 else "torch_save"
    torch.multiprocessing.spawn(run, args=(2, sys.argv[1], sys.argv[-1], fmt), nprocs=2)
