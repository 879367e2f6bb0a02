"""data2vec (vision): the student regresses, at the masked patches, the average of the teacher's top-K block outputs
(Baevski et al. 2022, "data2vec: A General Framework for Self-supervised Learning in Speech, Vision and Language",
arXiv:2202.03555, §3.3-3.4 and §4.1).

For the teacher's (EMA network on the unmasked image) outputs a^l (B, L, D) of its top K blocks (patch tokens only,
class token dropped), the student's outputs f (B, L, D) at every position and the mask m (B, L), True = masked:

    â^l  = IN(a^l)  over the L tokens of each sample, per channel   (``instance_norm_target_layer``)
    â^l  = LN(â^l)  over D, per token                               (``layer_norm_target_layer``)
    y    = (1/K) Σ_l â^l
    y    = LN(y)  over D (``layer_norm_targets``);  y = IN(y) over the tokens (``instance_norm_targets``)
    e_t  = scale · Σ_d ℓ(f_td − y_td)   for every masked position t,  ℓ = smooth L1 with β (β > 0) or squared error
    loss = mean over the masked positions of the global batch of e_t

(no affine parameters, eps 1e-5, biased variance; the targets get no gradient). As facebookresearch/fairseq
``examples/data2vec/models/data2vec_vision.py``: ``Data2VecVisionModel.forward`` (the target built under
``torch.no_grad`` from ``y[-average_top_k_layers:]``, the per-layer norms, the average, the final norms; then
``y[bool_mask]``; the loss ``F.mse_loss``/``F.smooth_l1_loss(reduction="none").sum(dim=-1)`` times ``loss_scale``,
default 1/sqrt(D)) and ``TransformerEncoder.forward`` (``layer_results="end"``: each block's output, ``[:, 1:]``).
The model returns the sum over masked positions with ``sample_size`` = their number; fairseq's ``ModelCriterion``
logs ``loss / sample_size`` and ``Trainer.train_step`` (``fairseq/trainer.py``) multiplies the gradients by
``world_size / sample_size`` (sample size summed over ranks) after DDP's averaging — so the optimised and logged loss
is the mean over the masked positions of the global batch. Here each rank returns
``local_sum · world_size / global_count`` (:func:`selfsup.distributed.global_mean`): the mean over ranks of the
returned values is that loss, each rank's gradient ``world_size · dL_global/dpred_r``.

Defaults: fairseq's data2vec-1 image recipe ``examples/data2vec/config/vision/pretraining/base_imagenet_d2v1.yaml``
(``average_top_k_layers: 6``, ``layer_norm_targets: True``, ``loss_beta: 2.0``; ``instance_norm_target_layer``,
``layer_norm_target_layer`` and ``loss_scale`` left at ``Data2VecVisionConfig``'s False, False, None = 1/sqrt(D);
teacher EMA ``ema_decay: 0.999`` → ``ema_end_decay: 0.9998``, annealed linearly over all updates). The paper's
ViT-B setting (§4.1) is K = 6, β = 2, a constant τ = 0.9998, with "parameter-less layer normalization" for vision
(§3.3) applied to each block before averaging (``layer_norm_target_layer=True``); the older
``base_imagenet.yaml`` keeps every ``Data2VecVisionConfig`` default (K = 8, β = 0 i.e. squared error, no target
normalisation). The official vision port regresses the student encoder's final output (its ``final_proj`` is built
but not applied); ``pred`` is whatever head the model puts there. ``batch_norm_target_layer`` (statistics over the
batch) is not offered.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from selfsup import checks, distributed
from selfsup.objectives.base import Objective, ViewBatch, mean_over


def _instance_norm(x: torch.Tensor) -> torch.Tensor:
    """Per sample and channel over the tokens of x (B, L, D), no affine (``F.instance_norm`` on (B, D, L))."""
    return F.instance_norm(x.transpose(1, 2)).transpose(1, 2)


def _layer_norm(x: torch.Tensor) -> torch.Tensor:
    return F.layer_norm(x, x.shape[-1:])


class Data2VecLoss(Objective):
    """Regression of the normalised average of the teacher's top-K blocks at the masked positions (module docstring).

    ``forward(pred (B, L, D), layers: list of (B, L, D), mask (B, L) bool)`` → 0-dim loss: ``pred`` the student's
    outputs at every position, ``layers`` the teacher's block outputs (patch tokens only, last block last; the last
    ``top_k`` are used), ``mask`` True where the student saw a mask token. :meth:`targets` is the target alone.

    Args:
        top_k: K, how many of the last blocks are averaged (``average_top_k_layers``).
        instance_norm_target_layer: instance-normalise each block over the tokens of each sample.
        layer_norm_targets: layer-normalise the average per token.
        beta: β of the smooth L1 loss (``loss_beta``); 0 uses the squared error.
        scale: factor of each position's loss summed over D (``loss_scale``); None: 1/sqrt(D).
        layer_norm_target_layer: layer-normalise each block per token (the paper's vision normalisation).
        instance_norm_targets: instance-normalise the average over the tokens of each sample.
    """

    num_views, masked, predicts_tokens, teacher_tokens = 1, True, True, "blocks"  # docs/tokens.md

    def __init__(
        self,
        top_k: int = 6,
        instance_norm_target_layer: bool = False,
        layer_norm_targets: bool = True,
        beta: float = 2.0,
        scale: float | None = None,
        layer_norm_target_layer: bool = False,
        instance_norm_targets: bool = False,
    ):
        super().__init__()
        self.top_k = self.teacher_blocks = checks.integer("objective.top_k", top_k, minimum=1)
        flags = {
            "instance_norm_target_layer": instance_norm_target_layer,
            "layer_norm_targets": layer_norm_targets,
            "layer_norm_target_layer": layer_norm_target_layer,
            "instance_norm_targets": instance_norm_targets,
        }
        for key, value in flags.items():
            if not isinstance(value, bool):
                raise ValueError(f"objective.{key}={value!r}: expected true or false")
        self.instance_norm_target_layer = instance_norm_target_layer
        self.layer_norm_targets = layer_norm_targets
        self.layer_norm_target_layer = layer_norm_target_layer
        self.instance_norm_targets = instance_norm_targets
        self.beta = checks.number("objective.beta", beta, minimum=0)
        self.scale = checks.number("objective.scale", scale, above=0, allow_none=True)

    @torch.no_grad()
    def targets(self, layers: list[torch.Tensor]) -> torch.Tensor:
        """The regression target (B, L, D) at every position from the teacher's block outputs (the last ``top_k``)."""
        if len(layers) < self.top_k:
            raise ValueError(f"Data2VecLoss: top_k={self.top_k} needs at least {self.top_k} blocks, got {len(layers)}")
        ys = []
        for y in layers[-self.top_k :]:
            y = y.detach()
            if y.dtype in (torch.float16, torch.bfloat16):
                y = y.float()  # the official code normalises in float32
            if y.shape != layers[-1].shape:
                raise ValueError(f"Data2VecLoss: block outputs differ in shape: {[tuple(t.shape) for t in layers]}")
            if self.instance_norm_target_layer:
                y = _instance_norm(y)
            if self.layer_norm_target_layer:
                y = _layer_norm(y)
            ys.append(y)
        y = sum(ys[1:], ys[0]) / len(ys)  # (B, L, D)
        if self.layer_norm_targets:
            y = _layer_norm(y)
        if self.instance_norm_targets:
            y = _instance_norm(y)
        return y

    def forward(self, pred: torch.Tensor, layers: list[torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
        y = self.targets(layers)
        if pred.shape != y.shape or mask.shape != pred.shape[:2]:
            raise ValueError(
                f"Data2VecLoss: expected pred {tuple(y.shape)} (the blocks' shape) and mask {tuple(y.shape[:2])}, "
                f"got {tuple(pred.shape)} and {tuple(mask.shape)}"
            )
        keep = mask.bool()
        x, y = pred[keep], y[keep].to(pred.dtype)  # (M, D), the masked positions in row-major order
        if self.beta == 0:
            per_position = F.mse_loss(x, y, reduction="none").sum(dim=-1)  # (M,)
        else:
            per_position = F.smooth_l1_loss(x, y, reduction="none", beta=self.beta).sum(dim=-1)
        scale = self.scale if self.scale is not None else 1 / math.sqrt(pred.shape[-1])
        per_position = per_position * scale
        return distributed.global_mean(per_position.sum(), per_position.numel())

    def forward_views(self, batch: ViewBatch) -> torch.Tensor:
        """The regression head's outputs of each masked view against the target network's top-K blocks of the same
        view unmasked, at the masked positions; mean over the masked views."""
        return mean_over(
            [self(p, t.hidden, m["mask"]) for p, t, m in zip(batch.predictions, batch.teacher, batch.masks)]
        )

    def extra_repr(self) -> str:
        return (
            f"top_k={self.top_k}, instance_norm_target_layer={self.instance_norm_target_layer}, "
            f"layer_norm_targets={self.layer_norm_targets}, beta={self.beta}, scale={self.scale}, "
            f"layer_norm_target_layer={self.layer_norm_target_layer}, "
            f"instance_norm_targets={self.instance_norm_targets}"
        )
