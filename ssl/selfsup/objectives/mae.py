"""MAE: masked autoencoders regress the pixels of the masked patches (He et al. 2022, arXiv:2111.06377).

For images x (B, C, H, W), patch side p, the decoder's predictions ŷ (B, L, p·p·C) and the mask m (B, L), 1 = masked
(removed from the encoder's input), 0 = kept:

    y_l    = patchify(x)_l                           patches in row-major order, each flattened in (p, q, c) order
    y_l    ← (y_l − mean(y_l)) / sqrt(var(y_l) + 1e-6)   with ``norm_pix_loss`` (unbiased variance over the patch)
    e_l    = mean over the p·p·C values of (ŷ_l − y_l)²
    loss   = Σ_l m_l · e_l / Σ_l m_l                 (over the batch's masked patches)

As facebookresearch/mae ``models_mae.py``: ``MaskedAutoencoderViT.patchify`` (einsum ``nchpwq->nhwpqc``) and
``MaskedAutoencoderViT.forward_loss``. Here any channel count and any H, W divisible by p (the official code: 3
channels, square images).

Under a process group the loss is that of the global batch: ranks may hold different numbers of masked patches
(block masks), so each rank returns ``local_sum · world_size / global_count`` with the count all-reduced
(:func:`global_mean`): the mean over ranks of the returned values is the single-process loss of the concatenated
batch and each rank's gradient is ``world_size · dL_global/dpred_r``. The official code returns each rank's own mean
and lets DDP average them, which is the same only when every rank masks the same number of patches.
"""

from __future__ import annotations

import torch

from selfsup import checks, distributed
from selfsup.objectives.base import Objective, ViewBatch, mean_over


def patchify(imgs: torch.Tensor, p: int) -> torch.Tensor:
    """Images (B, C, H, W) → patches (B, L, p·p·C), L = (H/p)·(W/p) in row-major order, each patch flattened in
    (p, q, c) order (facebookresearch/mae ``models_mae.py::MaskedAutoencoderViT.patchify``)."""
    if imgs.dim() != 4:
        raise ValueError(f"patchify: expected images (B, C, H, W), got shape {tuple(imgs.shape)}")
    b, c, height, width = imgs.shape
    if height % p or width % p:
        raise ValueError(f"patchify: image size {height}x{width} is not divisible by patch_size={p}")
    h, w = height // p, width // p
    x = imgs.reshape(b, c, h, p, w, p)
    x = torch.einsum("nchpwq->nhwpqc", x)  # (B, h, w, p, p, C)
    return x.reshape(b, h * w, p * p * c)


class MAELoss(Objective):
    """Mean squared error of the predicted pixels on the masked patches (module docstring).

    ``forward(imgs (B, C, H, W), pred (B, L, p·p·C), mask (B, L))`` → 0-dim loss; ``mask`` is 1 (True) where a
    patch was removed from the encoder's input.

    Args:
        patch_size: p, the patch side in pixels.
        norm_pix_loss: regress per-patch normalised pixels (the paper's default for its best results).
    """

    num_views, masked, predicts_tokens = 1, True, True  # a mask part and a token head (docs/tokens.md)

    def __init__(self, patch_size: int, norm_pix_loss: bool = True):
        super().__init__()
        self.patch_size = checks.integer("objective.patch_size", patch_size, minimum=1)
        if not isinstance(norm_pix_loss, bool):
            raise ValueError(f"objective.norm_pix_loss={norm_pix_loss!r}: expected true or false")
        self.norm_pix_loss = norm_pix_loss

    def target(self, imgs: torch.Tensor) -> torch.Tensor:
        """The regression target (B, L, p·p·C): the patches, normalised per patch with ``norm_pix_loss``."""
        target = patchify(imgs, self.patch_size)
        if self.norm_pix_loss:
            mean = target.mean(dim=-1, keepdim=True)
            var = target.var(dim=-1, keepdim=True)  # unbiased, as the official code
            target = (target - mean) / (var + 1.0e-6) ** 0.5
        return target

    def forward(self, imgs: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        target = self.target(imgs)  # (B, L, p·p·C)
        if pred.shape != target.shape:
            raise ValueError(
                f"MAELoss: pred has shape {tuple(pred.shape)}, expected {tuple(target.shape)} "
                f"(images {tuple(imgs.shape)}, patch_size={self.patch_size})"
            )
        if mask.shape != target.shape[:2]:
            raise ValueError(f"MAELoss: mask has shape {tuple(mask.shape)}, expected {tuple(target.shape[:2])}")
        per_patch = ((pred - target) ** 2).mean(dim=-1)  # (B, L)
        m = mask.to(per_patch.dtype)
        return distributed.global_mean((per_patch * m).sum(), m.sum())

    def forward_views(self, batch: ViewBatch) -> torch.Tensor:
        """The decoder's pixels of each masked view against the view itself, mean over the masked views."""
        return mean_over([self(x, p, m["mask"]) for x, p, m in zip(batch.pixels, batch.predictions, batch.masks)])

    def extra_repr(self) -> str:
        return f"patch_size={self.patch_size}, norm_pix_loss={self.norm_pix_loss}"
