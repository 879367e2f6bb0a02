"""Negative cosine similarity of predictions and targets (BYOL, Grill et al. 2020, arXiv:2006.07733; SimSiam,
Chen & He 2021, arXiv:2011.10566).

    loss = offset − scale · mean_i cos(z_a_i, z_b_i)

BYOL (google-deepmind/byol ``byol_experiment.py::regression_loss``): ‖â − b̂‖² = 2 − 2 cos, i.e. offset 2, scale 2.
SimSiam (facebookresearch/simsiam ``main_simsiam.py``: ``-(criterion(p1, z2).mean() + criterion(p2, z1).mean()) *
0.5``): offset 0, scale 1, with the module's symmetric average. Targets are detached (or come from an EMA network)
by the module, not here.

Per-pair and local: the mean over ranks of the returned values is the global mean, and each rank's gradient is
``world_size · dL_global/dz_r`` without any collective.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from selfsup.objectives.base import Objective


class NegativeCosineLoss(Objective):
    """Args:
    offset: constant added (2 for BYOL's normalised MSE, 0 for SimSiam).
    scale: factor of the mean cosine (> 0).
    """

    def __init__(self, offset: float = 2.0, scale: float = 2.0):
        super().__init__()
        if not scale > 0:
            raise ValueError(f"objective.scale={scale}: expected a value > 0")
        self.offset, self.scale = offset, scale

    def forward(self, z_a: torch.Tensor, z_b: torch.Tensor) -> torch.Tensor:
        return self.offset - self.scale * F.cosine_similarity(z_a, z_b, dim=1).mean()

    def extra_repr(self) -> str:
        return f"offset={self.offset}, scale={self.scale}"
