"""I-JEPA: the predictor regresses the target encoder's representations of the masked blocks (Assran et al. 2023,
arXiv:2301.08243).

For predictions ẑ (B, M, D) and the target encoder's raw tokens h (B, M, D) at the same M predicted positions:

    ĥ    = layer_norm(h) over D, no affine, eps 1e-5, no gradient
    loss = mean over all B·M·D elements of smooth_l1(ẑ − ĥ), β = 1

As facebookresearch/ijepa ``src/train.py``: ``forward_target`` (``F.layer_norm(h, (h.size(-1),))`` under
``torch.no_grad``, then ``apply_masks``; the norm is per token, so normalising before or after selecting the
positions is the same) and ``loss_fn`` (``F.smooth_l1_loss(z, h)``, mean).

Extension: ``valid`` (B, M), False on padded rows (samples predicting different numbers of positions are padded to
the largest): the mean runs over the valid rows' elements only, whatever the padded rows hold.

Under a process group the mean is over the global batch's elements (:func:`selfsup.distributed.global_mean`):
the mean over ranks of the returned values is the single-process loss of the concatenated batch, each rank's
gradient ``world_size · dL_global/dpred_r``. The official ``loss_fn`` instead averages the per-rank means with
``AllReduce`` (``src/utils/distributed.py``: the value is all-reduced, the gradient is the local mean's) — the same
when every rank holds the same number of elements.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from selfsup import distributed
from selfsup.models.token_heads import target_tokens
from selfsup.models.tokens import positions_of
from selfsup.objectives.base import Objective, ViewBatch, mean_over


class IJEPALoss(Objective):
    """Smooth L1 between the predictions and the layer-normalised target tokens (module docstring).

    ``forward(pred (B, M, D), target (B, M, D), valid (B, M) | None = None)`` → 0-dim loss; ``target`` holds the
    target encoder's raw tokens at the predicted positions and gets no gradient.
    """

    num_views, masked, predicts_tokens, teacher_tokens = 1, True, True, "final"  # docs/tokens.md

    def forward(self, pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        if pred.shape != target.shape:
            raise ValueError(f"IJEPALoss: pred {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
        h = F.layer_norm(target.detach(), (target.shape[-1],))  # (B, M, D), per token over D
        err = F.smooth_l1_loss(pred, h, reduction="none")  # (B, M, D)
        if valid is None:
            return distributed.global_mean(err.sum(), err.numel())
        if valid.shape != pred.shape[:-1]:
            raise ValueError(f"IJEPALoss: valid has shape {tuple(valid.shape)}, expected {tuple(pred.shape[:-1])}")
        keep = valid.bool().unsqueeze(-1)  # (B, M, 1)
        total = torch.where(keep, err, torch.zeros_like(err)).sum()  # padded rows may hold anything, even NaN
        return distributed.global_mean(total, keep.sum() * pred.shape[-1])

    def forward_views(self, batch: ViewBatch) -> torch.Tensor:
        """Each masked view's predicted target blocks (B, n, M, D) against the target network's tokens at the same
        positions, padding ignored; mean over the masked views."""
        losses = []
        for pred, masks, teacher in zip(batch.predictions, batch.masks, batch.teacher):
            b, n, length = masks["targets"].shape
            positions, valid = positions_of(masks["targets"].reshape(b * n, length))
            target = target_tokens(teacher, positions.reshape(b, n, -1))
            losses.append(self(pred.flatten(1, 2), target.flatten(1, 2), valid.reshape(b, -1)))
        return mean_over(losses)
