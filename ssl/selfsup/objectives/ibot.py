"""iBOT's masked patch loss, in DINOv2's form (Zhou et al. 2022, arXiv:2111.07832; Oquab et al. 2023,
arXiv:2304.07193), and the teacher's two ways of making its targets: centring and Sinkhorn-Knopp.

For student patch logits s (B, N, K), teacher probabilities q (B, N, K) and the student's mask m (B, N), True on the
patches the student saw masked:

    l_bn  = Σ_k q_bnk · log_softmax(s_bn / τ_s)_k
    loss  = −mean_b [ Σ_n m_bn · l_bn / max(1, Σ_n m_bn) ]      (a sample without masked patches adds 0)

As ``iBOTPatchLoss.forward`` in facebookresearch/dinov2 ``dinov2/loss/ibot_patch_loss.py``.
:meth:`IBOTPatchLoss.forward_masked` is ``iBOTPatchLoss.forward_masked``, the form DINOv2 trains with: only the
masked patches' rows, each weighted by 1/#masked of its sample (``masks_weight``, as ``collate_data_and_cast`` in
``dinov2/data/collate.py`` makes it), summed and divided by the number of samples B (masked or not).

The teacher probabilities q are made without gradient by one of (``SSLMetaArch.forward_backward`` in
``dinov2/train/ssl_meta_arch.py``, ``cfg.train.centering``):

- ``"centering"``: :meth:`IBOTPatchLoss.softmax_center_teacher` — softmax((t − c) / τ_t) with the centre c (1, 1, K)
  — then :meth:`IBOTPatchLoss.update_center` — c ← m·c + (1 − m)·mean over samples of each sample's mean token.
  The official code all-reduces the batch centre asynchronously and applies it at the next
  ``softmax_center_teacher``; here it is applied at once (the same centres are used by the same calls).
- ``"sinkhorn_knopp"``: :meth:`IBOTPatchLoss.sinkhorn_knopp_teacher` — :func:`sinkhorn_knopp` over the masked
  patches of all ranks (rows = patches). The same function is ``DINOLoss.sinkhorn_knopp_teacher``
  (``dinov2/loss/dino_clstoken_loss.py``) for the class tokens (rows = samples).

Under a process group, the losses divide by the global number of samples (all-reduced,
:func:`selfsup.distributed.global_mean`): with B samples on every rank that is each rank's own mean — exactly
what the official code returns, which DDP then averages — and with unequal B the mean over ranks of the returned
values is still the single-process loss of the concatenated batch, each rank's gradient
``world_size · dL_global/ds_r``. The centre and the Sinkhorn codes are those of the global batch on every rank.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from selfsup import checks, distributed
from selfsup.objectives.base import Objective, ViewBatch


def _logsumexp_over_ranks(x: torch.Tensor) -> torch.Tensor:
    """log Σ exp over the rows of ``x`` (n, K) of every rank (n may differ between ranks, even be 0) → (K,)."""
    if x.shape[0] > 0:
        peak = x.amax(dim=0)
    else:
        peak = torch.full(x.shape[1:], float("-inf"), dtype=x.dtype, device=x.device)
    if distributed.world_size() > 1:
        peak = distributed.gather(peak.unsqueeze(0)).amax(dim=0)  # (K,): the largest over all ranks
    peak = torch.where(torch.isfinite(peak), peak, torch.zeros_like(peak))
    total = distributed.all_reduce_sum(torch.exp(x - peak).sum(dim=0))
    return torch.log(total) + peak


@torch.no_grad()
def sinkhorn_knopp(
    teacher_logits: torch.Tensor,
    teacher_temp: float,
    n_iterations: int = 3,
    num_samples: torch.Tensor | int | None = None,
) -> torch.Tensor:
    """Sinkhorn-Knopp codes (n, K) of teacher logits (n, K) over the rows of all ranks (rows = samples), each row
    summing to 1; no gradient.

    As ``DINOLoss.sinkhorn_knopp_teacher`` (``dinov2/loss/dino_clstoken_loss.py``) and
    ``iBOTPatchLoss.sinkhorn_knopp_teacher`` (``dinov2/loss/ibot_patch_loss.py``): Q = exp(logits / τ_t)ᵀ (K × B,
    B = rows of all ranks), divided by its global sum, then ``n_iterations`` times: every prototype's row (summed over
    all ranks) to 1/K, every sample's column to 1/B; finally × B. The same steps run here in the log domain (no
    overflow, no all-zero column for a sharp τ_t); ranks may hold different numbers of rows. Half precision is
    computed in float32 (the official code casts everything to float32; float64 stays float64).

    Args:
        teacher_logits: this rank's rows (n, K).
        teacher_temp: τ_t > 0.
        n_iterations: ≥ 0 normalisation rounds (with ≥ 1 the result does not depend on B: the columns end at 1).
        num_samples: this rank's B (all-reduced), the official ``n_masked_patches_tensor``; default: its row count.
    """
    checks.number("teacher_temp", teacher_temp, above=0)
    checks.integer("n_iterations", n_iterations, minimum=0)
    if teacher_logits.dim() != 2:
        raise ValueError(f"sinkhorn_knopp: expected logits of shape (n, K), got {tuple(teacher_logits.shape)}")
    x = teacher_logits.detach()
    if x.dtype in (torch.float16, torch.bfloat16):
        x = x.float()
    k = x.shape[1]
    count = x.shape[0] if num_samples is None else num_samples
    count = distributed.all_reduce_sum(torch.as_tensor(count, dtype=x.dtype, device=x.device).reshape(()))
    log_b = torch.log(count)

    log_q = x / teacher_temp  # (n, K): the official Q transposed (rows = samples, columns = prototypes)
    log_q = log_q - torch.logsumexp(_logsumexp_over_ranks(log_q), dim=0)  # the whole matrix sums to 1
    for _ in range(n_iterations):
        log_q = log_q - _logsumexp_over_ranks(log_q) - math.log(k)  # every prototype: 1/K over all ranks' rows
        log_q = log_q - torch.logsumexp(log_q, dim=1, keepdim=True) - log_b  # every sample: 1/B
    return torch.exp(log_q + log_b)


class IBOTPatchLoss(Objective):
    """Cross-entropy of the student's masked patch tokens against the teacher's probabilities (module docstring).

    ``forward(student (B, N, K), teacher_probs (B, N, K), masks (B, N) bool)`` → 0-dim loss. The teacher's
    probabilities come from :meth:`softmax_center_teacher` (+ :meth:`update_center`) or
    :meth:`sinkhorn_knopp_teacher`; gradients flow only where the inputs ask for them.

    Args:
        patch_out_dim: K, the patch head's output width (the centre's size).
        student_temp: τ_s.
        center_momentum: m of the centre's moving average.
        teacher_temp: τ_t of the teacher's targets in a training step (:meth:`forward_views`; warmed up from
            outside as DINO's: ``callbacks: ObjectiveSchedule``).
        centering: how :meth:`forward_views` makes the teacher's targets: ``"centering"`` or ``"sinkhorn_knopp"``
            (DINOv2's default, ``train.centering``).
    """

    masked, teacher_tokens = True, "projected"  # docs/tokens.md: masks; the target's head on its masked patches
    takes_local_views = True
    schedulable = ("teacher_temp",)
    CENTERINGS = ("centering", "sinkhorn_knopp")

    def __init__(
        self,
        patch_out_dim: int,
        student_temp: float = 0.1,
        center_momentum: float = 0.9,
        teacher_temp: float = 0.04,
        centering: str = "centering",
    ):
        super().__init__()
        checks.integer("objective.patch_out_dim", patch_out_dim, minimum=1)
        self.teacher_temp = checks.number("objective.teacher_temp", teacher_temp, above=0)
        self.centering = checks.one_of("objective.centering", centering, self.CENTERINGS)
        self.student_temp = checks.number("objective.student_temp", student_temp, above=0)
        self.center_momentum = checks.number("objective.center_momentum", center_momentum, minimum=0, below=1)
        self.patch_out_dim = patch_out_dim
        self.register_buffer("center", torch.zeros(1, 1, patch_out_dim))

    def _log_p(self, student: torch.Tensor) -> torch.Tensor:
        return F.log_softmax(student / self.student_temp, dim=-1)

    def forward(self, student: torch.Tensor, teacher_probs: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        if student.dim() != 3 or teacher_probs.shape != student.shape or masks.shape != student.shape[:2]:
            raise ValueError(
                f"IBOTPatchLoss: expected student and teacher_probs (B, N, K) and masks (B, N), got "
                f"{tuple(student.shape)}, {tuple(teacher_probs.shape)} and {tuple(masks.shape)}"
            )
        per_patch = torch.sum(teacher_probs * self._log_p(student), dim=-1)  # (B, N)
        keep = masks.bool()
        masked_sum = torch.where(keep, per_patch, torch.zeros_like(per_patch)).sum(dim=-1)  # (B,)
        per_sample = masked_sum / keep.sum(dim=-1).clamp(min=1).to(per_patch.dtype)  # (B,)
        return -distributed.global_mean(per_sample.sum(), per_sample.shape[0])

    def forward_masked(
        self,
        student_patch_tokens_masked: torch.Tensor,
        teacher_patch_tokens_masked: torch.Tensor,
        student_masks_flat: torch.Tensor,
        n_masked_patches: int | None = None,
        masks_weight: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The loss from the masked patches' rows only (M, K), in ``student_masks_flat.nonzero()`` order (row-major
        over (B, N)); ``n_masked_patches`` keeps the first rows (the rest is padding), ``masks_weight`` (M,) defaults
        to 1/#masked of each row's sample. Returns −Σ_rows weight · l / B (``iBOTPatchLoss.forward_masked``)."""
        masks = student_masks_flat.bool()
        per_row = torch.sum(teacher_patch_tokens_masked * self._log_p(student_patch_tokens_masked), dim=-1)  # (M,)
        if masks_weight is None:
            counts = masks.sum(dim=-1, keepdim=True).clamp(min=1).to(per_row.dtype)  # (B, 1)
            masks_weight = (1 / counts).expand_as(masks)[masks]  # (#masked,)
        if n_masked_patches is not None:
            per_row = per_row[:n_masked_patches]
        if per_row.shape != masks_weight.shape:
            raise ValueError(
                f"IBOTPatchLoss.forward_masked: {per_row.shape[0]} rows but {masks_weight.shape[0]} weights "
                f"({int(masks.sum())} masked patches in student_masks_flat)"
            )
        return -distributed.global_mean((per_row * masks_weight).sum(), masks.shape[0])

    @torch.no_grad()
    def softmax_center_teacher(self, teacher_patch_tokens: torch.Tensor, teacher_temp: float) -> torch.Tensor:
        """softmax((t − centre) / τ_t) over the last axis, no gradient; ``t`` (..., K) keeps its shape."""
        checks.number("teacher_temp", teacher_temp, above=0)
        return F.softmax((teacher_patch_tokens - self.center.reshape(-1)) / teacher_temp, dim=-1)

    @torch.no_grad()
    def sinkhorn_knopp_teacher(
        self,
        teacher_output: torch.Tensor,
        teacher_temp: float,
        n_masked_patches_tensor: torch.Tensor | int | None = None,
        n_iterations: int = 3,
    ) -> torch.Tensor:
        """Codes (M, K) of this rank's masked patches' teacher logits (M, K) by :func:`sinkhorn_knopp` over the
        masked patches of all ranks; ``n_masked_patches_tensor`` is this rank's M (all-reduced, not modified)."""
        return sinkhorn_knopp(teacher_output, teacher_temp, n_iterations, num_samples=n_masked_patches_tensor)

    @torch.no_grad()
    def update_center(self, teacher_patch_tokens: torch.Tensor) -> None:
        """centre ← m·centre + (1 − m)·(Σ over the samples of all ranks of each sample's mean token) / #samples, for
        teacher logits (B, N, K) — ``reduce_center_update`` + ``apply_center_update`` at once. DINOv2 passes its
        masked tokens as one sample (1, M, K) per rank, so its centre is the mean over ranks of their means."""
        if teacher_patch_tokens.dim() != 3 or teacher_patch_tokens.shape[-1] != self.patch_out_dim:
            raise ValueError(
                f"IBOTPatchLoss.update_center: expected tokens (B, N, {self.patch_out_dim}), got "
                f"{tuple(teacher_patch_tokens.shape)}"
            )
        t = teacher_patch_tokens
        total = distributed.all_reduce_sum(t.mean(dim=1).sum(dim=0, keepdim=True))  # (1, K)
        count = distributed.all_reduce_sum(torch.tensor(float(t.shape[0]), dtype=t.dtype, device=t.device))
        self.center.mul_(self.center_momentum).add_(total / count, alpha=1 - self.center_momentum)

    def forward_views(self, batch: ViewBatch) -> torch.Tensor:
        """DINOv2's iBOT step: the student's head on the masked patch tokens of the masked (global) views
        (``ViewBatch.predictions``, (Σ masked, K)) against the teacher's head on the same patches of the unmasked
        views (``ViewBatch.teacher[v].projected``), all masked views at once, as ``forward_masked``; then the
        centre's update (``"centering"``, from the teacher's masked patches as one sample, as DINOv2)."""
        n = len(batch.masks)
        masks = torch.cat([m["mask"].flatten(1) for m in batch.masks])  # (n·B, L)
        student = torch.cat(batch.predictions)
        teacher = torch.cat([t.projected for t in batch.teacher[:n]])
        if self.centering == "sinkhorn_knopp":
            probs = self.sinkhorn_knopp_teacher(teacher, self.teacher_temp, teacher.shape[0])
        else:
            probs = self.softmax_center_teacher(teacher, self.teacher_temp)
        loss = self.forward_masked(student, probs, masks)
        if self.training and self.centering == "centering":
            self.update_center(teacher[None])
        return loss

    def extra_repr(self) -> str:
        return (
            f"patch_out_dim={self.patch_out_dim}, student_temp={self.student_temp}, "
            f"center_momentum={self.center_momentum}"
        )
