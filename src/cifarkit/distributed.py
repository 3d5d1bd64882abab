"""torchrun + DistributedDataParallel plumbing: one process per device, rank 0 writes, metrics are reduced.

`torchrun --nproc_per_node=N -m cifarkit train ...` sets RANK, WORLD_SIZE and LOCAL_RANK; without them a run is a
world of one and every function here is a no-op.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from cifarkit.errors import CifarkitError


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device_kind: str) -> DistContext:
    """Join the process group torchrun describes (nccl on CUDA, gloo on CPU); a world of one otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if device_kind == "cuda" else "gloo"
        if device_kind == "cuda":
            # Before the group exists: NCCL collectives that take no tensor (barrier, broadcast_object_list) use the
            # current device, which would otherwise be cuda:0 on every rank.
            torch.cuda.set_device(local_rank)
        # The LR range test runs on rank 0 alone while the others wait; on a CPU it can outlast the default 30 min.
        dist.init_process_group(backend, timeout=datetime.timedelta(hours=4))
    return DistContext(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank)


def shutdown(ctx: DistContext) -> None:
    if ctx.enabled and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(values: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Sum a tensor over ranks (in place, and returned)."""
    if ctx.enabled:
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def broadcast_object(obj: Any, ctx: DistContext) -> Any:
    """Rank 0's `obj` on every rank."""
    if not ctx.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def any_ranks(flags: list[bool], ctx: DistContext, device: torch.device) -> list[bool]:
    """Each flag True on every rank if it is True on any, in one collective: ranks must agree to stop at the same
    step, or those that go on wait in their next collective for the ones that left."""
    if not ctx.enabled:
        return list(flags)
    t = torch.tensor([int(f) for f in flags], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return [bool(v) for v in t.tolist()]


def barrier(ctx: DistContext) -> None:
    if ctx.enabled:
        dist.barrier()


def gather_floats(value: float, ctx: DistContext, device: torch.device) -> list[float]:
    """`value` from every rank, in rank order (used to prove that every rank holds the same weights)."""
    return [row[0] for row in gather_rows(torch.tensor([value], device=device), ctx)]  # float32: MPS has no float64


def gather_rows(values: torch.Tensor, ctx: DistContext) -> list[list[float]]:
    """Every rank's 1-D `values`, in rank order, on the host."""
    if not ctx.enabled:
        return [values.tolist()]
    out = [torch.zeros_like(values) for _ in range(ctx.world_size)]
    dist.all_gather(out, values)
    return [o.tolist() for o in out]


def split_batch(batch_size: int, ctx: DistContext) -> int:
    """The per-rank batch: the global batch (512 by default) split evenly across ranks."""
    if batch_size % ctx.world_size:
        raise CifarkitError(f"--batch-size {batch_size} does not split evenly over {ctx.world_size} processes")
    return batch_size // ctx.world_size


def check_setup(batch_size: int, sync_bn: bool, ctx: DistContext, device: torch.device) -> None:
    """Refuse, before any training, what would fail only at the first step under torchrun."""
    split_batch(batch_size, ctx)
    if sync_bn and ctx.enabled and device.type != "cuda":
        raise CifarkitError(f"--sync-bn needs CUDA GPUs: PyTorch's SyncBatchNorm does not run on {device.type}; "
                            "drop --sync-bn (each process then normalises over its own share of the batch)")


def shard_range(n: int, ctx: DistContext) -> tuple[int, int]:
    """This rank's contiguous slice of n items; slices cover every item exactly once (evaluation)."""
    return n * ctx.rank // ctx.world_size, n * (ctx.rank + 1) // ctx.world_size


def sync_buffers(model: torch.nn.Module, ctx: DistContext) -> None:
    """Give every rank rank 0's BatchNorm statistics. DDP broadcasts buffers before each training forward, but
    the last forward leaves each rank with its own; evaluation and the saved weights must be one model."""
    if ctx.enabled:
        for buf in model.buffers():
            dist.broadcast(buf, src=0)
