"""DIET: every training image is its own class (Balestriero 2023, "Unsupervised Learning on a DIET: Datum
IDentification from Efficient Training", arXiv:2302.10260; Ibrahim, Balestriero et al. 2024, "Occam's Razor for Self
Supervised Learning", arXiv:2406.10743).

A linear N-way head ``W`` (N × F, no bias) on the embedding of each view — the backbone's features when the projector
is the identity (``projector=identity``) — classifies the view as its sample's dataset index ``n ∈ [0, N)``, with
cross-entropy and label smoothing ε (the target is ``(1 − ε)·onehot(n) + ε/N`` over the N classes):

    s = z Wᵀ                                                                   (B, N) logits
    ℓ_b = (1 − ε)·(logsumexp(s_b) − s_b[n_b]) + ε·(logsumexp(s_b) − mean_k s_b[k])
    loss = mean over the views v of  mean_b ℓ_b(view v)

— ``torch.nn.CrossEntropyLoss(label_smoothing=ε)`` on ``Linear(F, N, bias=False)`` outputs, as in the authors' DIET
training script (``DIET`` module: ``linear_head = nn.Linear(features_dim, num_samples, bias=False)``, ε = 0.8, AdamW
lr 1e-3 · B/256, wd 0.05, batch 2048, 10 warm-up epochs then cosine) and stable-pretraining's
``setup_diet`` (galilai-group/stable-pretraining, continued-pretraining example: the same head and loss). No positive
pair and no projector: one view per image per step is the paper's setting; more views are averaged.

The loss is a mean of per-row terms, so under a process group each rank's loss on its own rows is already its share:
the mean over ranks is the loss of the global batch (equal per-rank batches) and ``z_r.grad = world_size ·
dL_global/dz_r``; DDP's averaging of the head's gradient gives the single-process gradient. The index must be the
GLOBAL dataset index (the datamodule yields the position in the training split on every rank).

Memory of the head for N = 1.28 M (ImageNet) and what the framework offers: docs/diet.md; ``head_memory`` computes it.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

from selfsup import checks
from selfsup.objectives.base import Objective, RunFacts, ViewBatch, mean_over

log = logging.getLogger(__name__)


def head_memory(num_samples: int, in_dim: int, batch: int, param_bytes: int = 4, logit_bytes: int = 4) -> dict:
    """Bytes the DIET head costs on one process: its weights (N·F), their gradient, AdamW's two moments (all of
    ``param_bytes`` each) and the logits of one view with their gradient (2·B·N of ``logit_bytes``)."""
    weights = num_samples * in_dim * param_bytes
    return {
        "weights": weights,
        "grad": weights,
        "adamw_state": 2 * weights,
        "logits": 2 * batch * num_samples * logit_bytes,
    }


class _ChunkedSmoothedCE(torch.autograd.Function):
    """mean_b ℓ_b (module docstring) from ``z`` (B, F) and the head's ``weight`` (N, F), its logits computed
    ``chunk`` classes at a time in float32 — forward by an online logsumexp, backward by recomputing each chunk — so
    that no (B, N) tensor is ever held: B·chunk floats instead of 2·B·N. Same value and gradients as
    ``F.cross_entropy(z @ weight.T, index, label_smoothing=eps)``."""

    @staticmethod
    def forward(ctx, z, weight, index, eps: float, chunk: int):
        b, n = z.shape[0], weight.shape[0]
        acc = torch.float64 if z.dtype == torch.float64 else torch.float32
        lse = torch.full((b,), -float("inf"), dtype=acc, device=z.device)
        total = torch.zeros(b, dtype=acc, device=z.device)  # Σ_k s_bk (the smoothing term)
        target = torch.zeros(b, dtype=acc, device=z.device)  # s_b[n_b]
        rows = torch.arange(b, device=z.device)
        for start in range(0, n, chunk):
            logits = (z @ weight[start : start + chunk].T).to(acc)  # (B, C)
            lse = torch.logaddexp(lse, torch.logsumexp(logits, dim=1))
            total += logits.sum(dim=1)
            inside = (index >= start) & (index < start + logits.shape[1])
            target[inside] = logits[rows[inside], index[inside] - start]
        ctx.save_for_backward(z, weight, index, lse)
        ctx.eps, ctx.chunk = eps, chunk
        return (lse - (1.0 - eps) * target - eps * total / n).mean().to(z.dtype)

    @staticmethod
    def backward(ctx, grad_out):
        z, weight, index, lse = ctx.saved_tensors
        eps, chunk = ctx.eps, ctx.chunk
        b, n = z.shape[0], weight.shape[0]
        scale = grad_out.to(lse.dtype) / b
        grad_z = torch.zeros_like(z, dtype=lse.dtype)
        grad_w = torch.empty_like(weight)
        rows = torch.arange(b, device=z.device)
        for start in range(0, n, chunk):
            w = weight[start : start + chunk]
            logits = (z @ w.T).to(lse.dtype)  # (B, C), recomputed
            d = torch.exp(logits - lse[:, None]) - eps / n  # ∂ℓ_b/∂s_bk = p_bk − q_bk, q's ε/N part here ...
            inside = (index >= start) & (index < start + w.shape[0])
            d[rows[inside], index[inside] - start] -= 1.0 - eps  # ... and its (1 − ε)·onehot part
            d = d * scale
            grad_z += d @ w.to(d.dtype)
            grad_w[start : start + chunk] = (d.T @ z.to(d.dtype)).to(weight.dtype)
        return grad_z.to(z.dtype), grad_w, None, None, None


class DIETLoss(Objective):
    """Datum identification: cross-entropy with label smoothing of a linear head over the N training samples
    (module docstring).

    Args:
        num_samples: N, the classes — the training split's size. null (the config default): the split's size,
            given by the training module (:meth:`attach`); a value smaller than the split fails, a larger one warns.
        in_dim: F, the width of the embeddings the head reads. null: the projector's output width, given by the
            training module (the backbone's features with ``projector=identity``).
        label_smoothing: ε in [0, 1).
        class_chunk: compute the logits this many classes at a time and recompute them in the backward pass, so that
            the (B, N) logits and their gradient (2·B·N floats a view) are never held — B·class_chunk instead; the
            same loss and gradients. null: one ``F.cross_entropy`` on the whole (B, N) logits (the reference's way).

    The head (``self.head``, ``nn.Linear(F, N, bias=False)``, PyTorch's default init as in the reference) is built
    once both sizes are known: at construction when both are given, else by :meth:`attach`. It is trained with the
    online parameters (the optimiser's decayed group: AdamW weight decay applies to it, as in the reference).
    """

    num_views = 1  # the paper's DIET sees one augmented view of each image per step

    def __init__(
        self,
        num_samples: int | None = None,
        in_dim: int | None = None,
        label_smoothing: float = 0.8,
        class_chunk: int | None = None,
    ):
        super().__init__()
        for key, value in (("num_samples", num_samples), ("in_dim", in_dim), ("class_chunk", class_chunk)):
            checks.integer(f"objective.{key}", value, minimum=1, allow_none=True)
        self.class_chunk = class_chunk
        checks.number("objective.label_smoothing", label_smoothing, minimum=0, below=1)
        self.num_samples, self.in_dim, self.label_smoothing = num_samples, in_dim, float(label_smoothing)
        self.head: nn.Linear | None = None
        if num_samples is not None and in_dim is not None:
            self.head = nn.Linear(in_dim, num_samples, bias=False)

    def attach(self, facts: RunFacts) -> None:
        """Build the head for the training split's size and the embedding width (the training module calls it; a
        sweep's pre-check, without data, only checks the width)."""
        num_samples, in_dim = facts.num_samples, facts.embedding_dim
        if num_samples is None:
            if self.in_dim is not None and self.in_dim != in_dim:
                raise ValueError(
                    f"objective.in_dim={self.in_dim}: the embeddings are {in_dim}-d (the projector's output); "
                    "expected null or that width"
                )
            return
        checks.integer("the training split's size", num_samples, minimum=1)
        if self.num_samples is None:
            self.num_samples = num_samples
        elif self.num_samples < num_samples:
            raise ValueError(
                f"objective.num_samples={self.num_samples}: the training split has {num_samples} images; "
                "expected at least that many classes (or null: the split's size)"
            )
        elif self.num_samples > num_samples:
            log.warning(
                "objective.num_samples=%d but the training split has %d images: %d head rows are never a "
                "target (null: the split's size)",
                self.num_samples,
                num_samples,
                self.num_samples - num_samples,
            )
        if self.in_dim is not None and self.in_dim != in_dim:
            raise ValueError(
                f"objective.in_dim={self.in_dim}: the embeddings are {in_dim}-d (the projector's output); "
                "expected null or that width"
            )
        self.in_dim = in_dim
        if self.head is None:
            self.head = nn.Linear(in_dim, self.num_samples, bias=False)
        log.info(
            "DIET head: %d x %d (%.2f GiB of fp32 weights; with its gradient and AdamW state %.2f GiB)",
            self.num_samples,
            in_dim,
            self.num_samples * in_dim * 4 / 2**30,
            self.num_samples * in_dim * 16 / 2**30,
        )

    def view_loss(self, z: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """Label-smoothed cross-entropy of one view's embeddings z (B, F) against their sample indices (B,)."""
        z = z.to(self.head.weight.dtype)
        if self.class_chunk is not None:
            return _ChunkedSmoothedCE.apply(z, self.head.weight, index, self.label_smoothing, self.class_chunk)
        return F.cross_entropy(self.head(z), index, label_smoothing=self.label_smoothing)  # (B, N) logits

    def forward(self, z_a: torch.Tensor, z_b: torch.Tensor | None = None, index: torch.Tensor | None = None):
        """The loss of one view ``z_a`` (B, F) — or the mean over two views — of the samples ``index`` (B,)."""
        return self.views_loss([z_a] if z_b is None else [z_a, z_b], index)

    def views_loss(self, views: list[torch.Tensor], index: torch.Tensor | None) -> torch.Tensor:
        if self.head is None:
            raise ValueError(
                "DIETLoss: the head is not built: set objective.num_samples and objective.in_dim, "
                "or train through selfsup.train.build (it sets them from the data and the projector)"
            )
        if index is None:
            raise ValueError("DIETLoss needs each row's dataset index (batch['index']), which was not given")
        index = index.to(device=views[0].device, dtype=torch.long)
        if index.numel():
            lo, hi = torch.stack(torch.aminmax(index)).tolist()  # one device sync a step, not two
            if lo < 0 or hi >= self.num_samples:
                raise ValueError(
                    f"DIETLoss: batch['index'] spans [{lo}, {hi}]: expected indices in "
                    f"[0, {self.num_samples}) (objective.num_samples)"
                )
        losses = []
        for z in views:
            if z.shape[0] != index.shape[0]:
                raise ValueError(f"DIETLoss: {z.shape[0]} rows but {index.shape[0]} indices: expected one per row")
            losses.append(self.view_loss(z, index))
        return mean_over(losses)

    def forward_views(self, batch: ViewBatch) -> torch.Tensor:
        return self.views_loss(batch.z, batch.index)  # every view, local crops too

    def extra_repr(self) -> str:
        return (
            f"num_samples={self.num_samples}, in_dim={self.in_dim}, label_smoothing={self.label_smoothing}, "
            f"class_chunk={self.class_chunk}"
        )
