"""Data parallelism over ``torch.distributed`` (launched by ``torchrun``): gloo on CPU, NCCL on GPU.

Every process holds the whole model and a slice of each global batch. Gradients are summed (not averaged)
over processes because the loss of each process is already divided by the global label counts; the sum is
then exactly the gradient of the global-batch loss, as a single process would compute it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = [
    "DistInfo",
    "setup_distributed",
    "all_reduce_sum",
    "sync_gradients",
    "broadcast_model",
    "wait_for_all",
    "shutdown_distributed",
]


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


def setup_distributed(device: torch.device) -> DistInfo:
    """Join the process group ``torchrun`` describes in the environment (a no-op for a single process)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    if not dist.is_initialized():
        # torch modules that take `group=group.WORLD` as a default argument (torch.distributed.nn, fsdp) hold on to
        # the group for good when first imported after it exists, and torch imports them with torch._dynamo, which
        # the optimizer imports on its first use. destroy_process_group then cannot free gloo's threads, and the
        # interpreter's exit can abort under them ("terminate called without an active exception", so torchrun
        # reports a finished run as failed): import them while there is no group to hold.
        import torch._dynamo  # noqa: F401

        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistInfo(
        rank=dist.get_rank(), world=dist.get_world_size(), local_rank=int(os.environ.get("LOCAL_RANK", "0"))
    )


def all_reduce_sum(tensor: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum ``tensor`` over processes in place (returned for chaining)."""
    if info.active:
        dist.all_reduce(tensor)
    return tensor


def sync_gradients(model: torch.nn.Module, info: DistInfo) -> None:
    """Sum gradients over processes, as one flat buffer (one collective per step)."""
    if not info.active:
        return
    params = [p for p in model.parameters() if p.requires_grad]
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    offset = 0
    for p, g in zip(params, grads):
        n = g.numel()
        p.grad = flat[offset : offset + n].view_as(p).clone()
        offset += n


def broadcast_model(model: torch.nn.Module, info: DistInfo) -> None:
    """Make every process start from rank 0's weights and buffers."""
    if info.active:
        for t in list(model.parameters()) + list(model.buffers()):
            dist.broadcast(t.data, src=0)


def wait_for_all(info: DistInfo) -> None:
    """Block until every process gets here (e.g. until rank 0 has written a checkpoint the others read)."""
    if info.active:
        dist.barrier()


def shutdown_distributed(info: DistInfo) -> None:
    if info.active and dist.is_initialized():
        dist.destroy_process_group()
