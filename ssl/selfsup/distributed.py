"""The one place where losses and evaluation statistics touch torch.distributed collectives.

Objectives call :func:`gather_with_grad` on their (already normalised) inputs and compute the loss of their
local anchor rows against the gathered global batch. Because the backward pass *sums* the incoming gradients of
all ranks, each rank's local input receives ``world_size * dL_global / dz_r`` — exactly what DDP's gradient
averaging turns into the single-process gradient (docs/api.md, "Objectives").
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    return dist.get_world_size() if is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if is_initialized() else 0


class _GatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.rank, ctx.n = dist.get_rank(), x.shape[0]
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        # Every rank holds a loss that depends on every rank's rows: sum the gradients w.r.t. the gathered
        # tensor over ranks, then keep this rank's slice. (Plain dist.all_gather drops these cross-rank terms.)
        grad = grad.contiguous()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.rank * ctx.n : (ctx.rank + 1) * ctx.n]


def gather(x: torch.Tensor) -> torch.Tensor:
    """All ranks' ``x`` (equal shapes) concatenated along dim 0 in rank order, without gradients (evaluation
    statistics); identity without a process group."""
    if world_size() == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=0)


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """The sum of ``x`` over ranks (a new tensor, no gradients: running statistics such as DINO's centre); ``x``
    itself without a process group."""
    if world_size() == 1:
        return x
    x = x.detach().clone()
    dist.all_reduce(x, op=dist.ReduceOp.SUM)
    return x


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """All ranks' ``x`` (equal shapes) concatenated along dim 0 in rank order; identity without a process group."""
    if world_size() == 1:
        return x
    return _GatherWithGrad.apply(x)
