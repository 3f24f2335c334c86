"""torch.distributed plumbing for runs launched by ``torchrun`` (RANK, WORLD_SIZE, LOCAL_RANK).

There is no launcher here: ``torchrun --nproc_per_node=N -m fundbench.cli train keepfit_v2 ...``
starts the processes; :func:`setup` joins the group (gloo on CPU, nccl on CUDA).

Losses over the *global* batch (contrastive terms, attention over the elite batch) gather
embeddings with :func:`gather_with_grad`; batch norm uses batch statistics over all
processes (:class:`GlobalBatchNorm2d`, which also runs on CPU where ``nn.SyncBatchNorm``
does not). Together with DDP's gradient averaging this gives the same loss and gradients as
one process with the whole global batch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup(device: str) -> DistInfo:
    """Join the process group if WORLD_SIZE > 1; pick this process's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    dev = torch.device(device)
    if dev.type == "cuda":
        if dev.index is None:
            dev = torch.device("cuda", local if world > 1 else torch.cuda.current_device())
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(
            backend="nccl" if dev.type == "cuda" else "gloo", rank=rank, world_size=world
        )
    return DistInfo(rank, world, local, dev)


def teardown(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class _GatherWithGrad(torch.autograd.Function):
    """all_gather along dim 0; backward sums the gradients of all ranks and keeps ours."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        world, rank = dist.get_world_size(), dist.get_rank()
        parts = [torch.empty_like(x) for _ in range(world)]
        dist.all_gather(parts, x.contiguous())
        ctx.rank, ctx.n = rank, x.shape[0]
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad[ctx.rank * ctx.n : (ctx.rank + 1) * ctx.n]


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` from every rank (rank order); identity when not distributed."""
    return _GatherWithGrad.apply(x) if active() else x


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """Sum over ranks without gradient (counts, logged values)."""
    if not active():
        return x
    x = x.detach().clone()
    dist.all_reduce(x)
    return x


class _AllReduceWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        x = x.clone()
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics cover the batch of every process.

    Same parameters and buffers (so the same state-dict keys) as ``nn.BatchNorm2d``; with
    one process it *is* ``nn.BatchNorm2d``.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and active()):
            return super().forward(x)
        c, dtype = x.shape[1], x.dtype
        x = x.float()  # statistics in fp32, also under bf16 autocast
        count = torch.tensor([x.numel() / c], dtype=x.dtype, device=x.device)
        count = all_reduce_sum(count)
        mean = _AllReduceWithGrad.apply(x.sum(dim=(0, 2, 3))) / count
        centred = x - mean.view(1, c, 1, 1)
        var = _AllReduceWithGrad.apply((centred * centred).sum(dim=(0, 2, 3))) / count
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = (
                    self.momentum
                    if self.momentum is not None
                    else 1.0 / float(self.num_batches_tracked)
                )
                unbiased = var * count / (count - 1).clamp_min(1)
                self.running_mean.mul_(1 - m).add_(m * mean.detach())
                self.running_var.mul_(1 - m).add_(m * unbiased.detach())
        out = centred / torch.sqrt(var.view(1, c, 1, 1) + self.eps)
        if self.affine:
            out = out * self.weight.view(1, c, 1, 1) + self.bias.view(1, c, 1, 1)
        return out.to(dtype)


def convert_batchnorm(module: nn.Module) -> nn.Module:
    """Swap every BatchNorm2d for :class:`GlobalBatchNorm2d` in place (state kept)."""
    for name, child in module.named_children():
        if type(child) is nn.BatchNorm2d:
            new = GlobalBatchNorm2d(
                child.num_features,
                child.eps,
                child.momentum,
                child.affine,
                child.track_running_stats,
            )
            new.load_state_dict(child.state_dict())
            new.to(child.weight.device if child.affine else torch.device("cpu"))
            setattr(module, name, new)
        else:
            convert_batchnorm(child)
    return module


def broadcast_object(obj, info: DistInfo):
    """Rank 0's ``obj`` on every rank."""
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_objects(obj, info: DistInfo) -> list:
    if not info.enabled:
        return [obj]
    out = [None] * info.world
    dist.all_gather_object(out, obj)
    return out
