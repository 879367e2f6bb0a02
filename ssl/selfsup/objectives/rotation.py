"""Rotation prediction, an equivariant task (docs/rotation.md): a linear head on a view's backbone features predicts
the quarter turns of the square its views recorded (``views.rot90``, ``Slot.ROT_K``).

    loss = mean over views v of  CE(W f_v + b, y_v),   y = k (RotNet, LoRot-I)  or  4q + k (LoRot-E)

with k ∈ {0, 1, 2, 3} counter-clockwise quarter turns and q ∈ {0 top-left, 1 top-right, 2 bottom-left,
3 bottom-right} the rotated quadrant. RotNet: Gidaris et al. 2018 (arXiv:1803.07728; gidariss/FeatureLearningRotNet
``NetworkInNetwork.py``: global pooling then ``Linear(F, 4)``, cross-entropy) as revisited by Kolesnikov et al. 2019
(arXiv:1901.09005; google/revisiting-self-supervised ``self_supervision/rotation.py``: a linear layer with bias on
the pre-logits). LoRot: Moon et al. 2022 (arXiv:2207.10023; wjun0830/Localizable-Rotation ``cifar_train_lorot-I.py``
/ ``cifar_train_lorot-E.py``: ``nn.Linear(F, 4)`` / ``nn.Linear(F, 16)`` on the pooled features, label ``4q + k``,
total loss = main loss + λ · CE). Composed with another objective through ``CompositeObjective`` (``views: all``);
the main loss then sees the rotated views too, as LoRot's does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from selfsup import checks
from selfsup.data.views import Slot
from selfsup.objectives.base import Objective, RunFacts, ViewBatch, mean_over


def rotation_labels(params: torch.Tensor, quadrant: bool) -> torch.Tensor:
    """Labels (B,) from views' recorded parameters (B, NUM_PARAMS): k, or 4q + k with the quadrant q of the
    rotated square's top-left corner."""
    k = params[:, Slot.ROT_K].round().long()
    if not quadrant:
        return k
    q = 2 * (params[:, Slot.ROT_Y0] >= 0.5 - 1e-6).long() + (params[:, Slot.ROT_X0] >= 0.5 - 1e-6).long()
    return 4 * q + k


class RotationPrediction(Objective):
    """Cross-entropy of a linear head's rotation prediction, averaged over the chosen views.

    Args:
        quadrant: predict the quadrant too (LoRot-E: 16 classes); False: the quarter turns only (RotNet, LoRot-I: 4).
        views: ``global`` (the global views) or ``all`` (local crops too).
        in_dim: the width of the features the head reads; null: the backbone's (given by the training module).

    ``terms()`` logs ``rotation_top1``, the head's accuracy on the last batch.
    """

    num_views = 1

    def __init__(self, quadrant: bool = False, views: str = "global", in_dim: int | None = None):
        super().__init__()
        if views not in ("global", "all"):
            raise ValueError(f"objective.views={views!r}: expected 'global' or 'all'")
        checks.integer("objective.in_dim", in_dim, minimum=1, allow_none=True)
        self.quadrant, self.views, self.in_dim = bool(quadrant), views, in_dim
        self.classes = 16 if self.quadrant else 4
        self.head: nn.Linear | None = nn.Linear(in_dim, self.classes) if in_dim is not None else None
        self._top1 = None

    def attach(self, facts: RunFacts) -> None:
        if self.head is None:
            self.head = nn.Linear(facts.feature_dim, self.classes)
        elif self.head.in_features != facts.feature_dim:
            raise ValueError(
                f"objective.in_dim={self.head.in_features}: the backbone's features are {facts.feature_dim} wide"
            )

    def terms(self) -> dict[str, torch.Tensor]:
        return {"rotation_top1": self._top1} if self._top1 is not None else {}

    def loss(self, feats: torch.Tensor, params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(cross-entropy, correct predictions) of one view."""
        logits = self.head(feats)
        labels = rotation_labels(params, self.quadrant)
        return F.cross_entropy(logits, labels), (logits.argmax(1) == labels).float().mean()

    def forward_views(self, batch: ViewBatch) -> torch.Tensor:
        if self.head is None:
            raise ValueError("objective: RotationPrediction's head is built by attach() (or pass objective.in_dim)")
        views = range(batch.num_global if self.views == "global" else len(batch.feats))
        losses, top1 = [], []
        for v in views:
            params = batch.params[v]
            if params is None or not bool((params[:, Slot.ROT_SIZE] > 0).all()):
                raise ValueError(
                    f"objective: view {v} records no rotated square: set views.views.<its name>.rot90 to image, "
                    "lorot_i or lorot_e (docs/rotation.md)"
                )
            loss, correct = self.loss(batch.feats[v], params)
            losses.append(loss)
            top1.append(correct.detach())
        self._top1 = mean_over(top1)
        return mean_over(losses)

    def forward(self, z_a: torch.Tensor, z_b: torch.Tensor) -> torch.Tensor:
        raise ValueError(
            "objective: RotationPrediction reads every view's features and parameters: use it with "
            "views: all in a composite objective, or alone"
        )
