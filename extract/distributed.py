"""Processes of one extraction: torchrun ranks (from its environment variables) and job-array tasks
(`--num-shards K --shard-index I`), combined into one global rank among K × WORLD_SIZE."""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

from zoomshot.errors import ZsError


@dataclass
class Processes:
    rank: int  # global: shard_index * world + torchrun rank
    world: int
    local_rank: int
    dist_rank: int  # rank inside the torch.distributed group (0 when there is none)
    dist_world: int

    def span(self, n: int) -> tuple[int, int]:
        """This process's contiguous share [first, last) of n items."""
        return self.rank * n // self.world, (self.rank + 1) * n // self.world


def from_environment(num_shards: int = 1, shard_index: int = 0) -> Processes:
    if num_shards < 1 or not 0 <= shard_index < num_shards:
        raise ZsError(f"--shard-index must be in 0..{num_shards - 1} for --num-shards {num_shards}, got {shard_index}")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    return Processes(rank=shard_index * world + rank, world=num_shards * world, local_rank=local,
                     dist_rank=rank, dist_world=world)


@contextlib.contextmanager
def process_group(p: Processes, device: str):
    """Inside the torchrun process group (gloo on CPU, NCCL on CUDA) when WORLD_SIZE > 1; leaving it
    without an error waits for every process (a barrier)."""
    if p.dist_world <= 1:
        yield
        return
    import torch
    import torch.distributed as dist

    cuda = device.startswith("cuda")
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    try:
        yield
        dist.barrier(device_ids=[torch.device(device).index or 0] if cuda else None)
    finally:
        dist.destroy_process_group()
