"""Loads a torch.distributed.checkpoint into DTensors from 2 gloo processes (run by
test_distcp.py), each tensor sharded another way than dcp_writer.py saved it, and has rank 0
torch.save the gathered full tensors.
Usage: python dcp_loader.py CKPT_DIR OUT_FILE INIT_FILE"""

import sys

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import Replicate, Shard, distribute_tensor

from dcp_writer import full_tensors


def run(rank: int, world: int, ckpt: str, out: str, init: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=world)
    mesh = init_device_mesh("cpu", (world,))
    placements = {"rows": Shard(1), "cols": Shard(0), "replicated": Shard(0), "uneven": Replicate()}
    model = {k: distribute_tensor(torch.zeros_like(v), mesh, [placements[k.split("_")[0]]])
             for k, v in full_tensors().items()}
    state = {"model": model, "extra": {"plain": torch.zeros(5, dtype=torch.int64)}}
    dcp.load(state, checkpoint_id=ckpt)
    full = {k: v.full_tensor() for k, v in model.items()}
    if rank == 0:
        torch.save({"model": full, "extra": state["extra"]}, out)
    # every rank done before any tears the group down (the test retries a teardown abort)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    torch.multiprocessing.spawn(run, args=(2, sys.argv[1], sys.argv[2], sys.argv[3]), nprocs=2)
