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


def global_mean(total: torch.Tensor, count: torch.Tensor | float) -> torch.Tensor:
    """This rank's share of a mean over the global batch: ``total · world_size / Σ_ranks count`` — ``total / count``
    on one process — so that the mean over ranks of the returned values is ``Σ_ranks total / Σ_ranks count``.

    ``total`` is this rank's sum of per-element losses (with its gradient), ``count`` how many elements it holds (no
    gradient); a global count of 0 divides by 1 (the loss of nothing is 0, as fairseq's ``sample_size or 1.0``)."""
    count = torch.as_tensor(count, dtype=total.dtype, device=total.device).detach()
    world = world_size()
    if world > 1:
        count = all_reduce_sum(count)
    count = torch.where(count > 0, count, torch.ones_like(count))
    return total * world / count if world > 1 else total / count
