"""Several processes, one model: PyTorch's own DistributedDataParallel under `torchrun`
(lessons/21-accumulation-and-ddp.md).

    torchrun --nproc_per_node P -m minift finetune ...        P processes on one machine
    torchrun --nnodes M --node_rank i --rdzv_endpoint HOST:PORT --nproc_per_node P -m minift finetune ...

torchrun starts P copies of the command and tells each who it is through environment variables
(RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR/PORT). Each process holds a full copy of the model, runs
forward and backward on its own slice of the global batch (minift/data/sampler.py), and
DistributedDataParallel all-reduces the gradients during backward: every process ends the backward
with the *mean* of the P gradients and so takes the same optimizer step. Nothing here is home-made
communication: `init_process_group`, `DistributedDataParallel` and `all_reduce` are torch's.

`Distributed` is what the loop needs to know: rank, world size, whether this process writes files
(rank 0), and a sum over processes. The single-process run is the world_size = 1 case, where every
call is a no-op.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from minift.train.device import distributed_backend


@dataclass
class Distributed:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 logs, evaluates to disk and saves; the others compute the same numbers silently."""
        return self.rank == 0

    def sum(self, value: float, device: torch.device) -> float:
        """The sum of ``value`` over all processes (every process gets the result)."""
        if not self.enabled:
            return float(value)
        t = torch.tensor([float(value)], dtype=torch.float64, device=device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return float(t.item())

    def any(self, flag: bool, device: torch.device) -> bool:
        """True on every process when it is True on one (e.g. Ctrl-C seen by one process)."""
        return self.sum(1.0 if flag else 0.0, device) > 0

    def wrap(self, model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
        """The model DDP-wrapped for the forward/backward of training; the plain model otherwise.
        DDP broadcasts rank 0's parameters at construction, so every process starts from the same
        weights even if their random heads differed."""
        if not self.enabled:
            return model
        ids = [device.index] if device.type == "cuda" else None
        return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)

    def no_sync(self, wrapped: torch.nn.Module, sync: bool):
        """Inside gradient accumulation, only the last micro-batch's backward needs the all-reduce:
        DDP's no_sync() keeps the earlier ones local (same result, 1/K of the communication)."""
        if self.enabled and not sync:
            return wrapped.no_sync()
        return contextlib.nullcontext()


def from_environment() -> Distributed:
    """The process's place in a torchrun job (WORLD_SIZE, RANK, LOCAL_RANK), or a single process."""
    try:
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    except ValueError as e:
        raise ValueError(f"WORLD_SIZE / RANK / LOCAL_RANK must be integers (set by torchrun): {e}") from None
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"RANK={rank} is not in [0, WORLD_SIZE={world_size})")
    return Distributed(rank=rank, world_size=world_size, local_rank=local_rank)


def setup(device_name: str) -> tuple[Distributed, str]:
    """Joins the torchrun job, if any: gloo on CPU, nccl on CUDA (one GPU per process, LOCAL_RANK
    picks it). Returns the Distributed handle and the device name this process should use."""
    world = from_environment()
    if not world.enabled:
        return world, device_name
    if device_name in ("auto", None):
        device_name = "cuda" if torch.cuda.is_available() else "cpu"
    device_type = torch.device(device_name).type
    if device_type == "mps":
        raise ValueError("torchrun with --device mps: MPS has no collective backend; use one process")
    if device_type == "cuda":
        if torch.cuda.device_count() <= world.local_rank:
            raise ValueError(f"LOCAL_RANK {world.local_rank} needs GPU {world.local_rank}, but this machine "
                             f"has {torch.cuda.device_count()}; lower --nproc_per_node")
        device_name = f"cuda:{world.local_rank}"
        torch.cuda.set_device(world.local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend=distributed_backend(device_name))
    return world, device_name


def teardown(world: Distributed) -> None:
    if world.enabled and dist.is_initialized():
        dist.destroy_process_group()
