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

Under a process group the mean is over the global batch's elements (:func:`selfsup.objectives.mae.global_mean`):
the mean over ranks of the returned values is the single-process loss of the concatenated batch, each rank's
gradient ``world_size · dL_global/dpred_r``. The official ``loss_fn`` instead averages the per-rank means with
``AllReduce`` (``src/utils/distributed.py``: the value is all-reduced, the gradient is the local mean's) — the same
when every rank holds the same number of elements.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from selfsup.objectives.base import Objective
from selfsup.objectives.mae import global_mean


class IJEPALoss(Objective):
    """Smooth L1 between the predictions and the layer-normalised target tokens (module docstring).

    ``forward(pred (B, M, D), target (B, M, D), valid (B, M) | None = None)`` → 0-dim loss; ``target`` holds the
    target encoder's raw tokens at the predicted positions and gets no gradient.
    """

    def forward(self, pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        if pred.shape != target.shape:
            raise ValueError(f"IJEPALoss: pred {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
        h = F.layer_norm(target.detach(), (target.shape[-1],))  # (B, M, D), per token over D
        err = F.smooth_l1_loss(pred, h, reduction="none")  # (B, M, D)
        if valid is None:
            return global_mean(err.sum(), err.numel())
        if valid.shape != pred.shape[:-1]:
            raise ValueError(f"IJEPALoss: valid has shape {tuple(valid.shape)}, expected {tuple(pred.shape[:-1])}")
        keep = valid.bool().unsqueeze(-1)  # (B, M, 1)
        total = torch.where(keep, err, torch.zeros_like(err)).sum()  # padded rows may hold anything, even NaN
        return global_mean(total, keep.sum() * pred.shape[-1])
