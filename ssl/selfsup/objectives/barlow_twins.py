"""Barlow Twins (Zbontar et al. 2021, arXiv:2103.03230).

    A = BN(z_a), B = BN(z_b)   per-feature batch standardisation: (z − mean) / sqrt(biased var + 1e-5), no affine
    C = Aᵀ B / N               (D, D) cross-correlation over the global batch
    loss = Σ_i (1 − C_ii)² + λ Σ_{i≠j} C_ij²

Matches facebookresearch/barlowtwins ``main.py::BarlowTwins.forward`` (``nn.BatchNorm1d(affine=False)`` under
SyncBatchNorm, ``c.div_(batch_size)`` and ``all_reduce``): here the batch is gathered so every rank returns the
global loss. ``route`` picks how Σ_{i≠j} C_ij² is computed (same value, see :mod:`selfsup.objectives._gram`).
"""

from __future__ import annotations

import torch

from selfsup import distributed
from selfsup.objectives._gram import check_route, off_diagonal_sq_sum
from selfsup.objectives.base import Objective

BN_EPS = 1e-5  # nn.BatchNorm1d default, as in the official code


class BarlowTwinsLoss(Objective):
    """Redundancy reduction on the cross-correlation matrix of the two views.

    Args:
        lambd: λ ≥ 0, weight of the off-diagonal (redundancy) terms.
        route: ``"feature"`` builds the D×D matrix, ``"gram"`` works with N×N Gram matrices (exact, cheaper when
            N < D), ``"auto"`` picks ``"gram"`` when the global N < D.
    """

    def __init__(self, lambd: float = 0.0051, route: str = "auto"):
        super().__init__()
        if not lambd >= 0:
            raise ValueError(f"objective.lambd={lambd}: expected a value >= 0")
        self.lambd = lambd
        self.route = check_route(route)

    def forward(self, z_a: torch.Tensor, z_b: torch.Tensor) -> torch.Tensor:
        z_a, z_b = distributed.gather_with_grad(z_a), distributed.gather_with_grad(z_b)  # (N, D), global batch
        n = z_a.shape[0]
        if n < 2:
            raise ValueError(f"BarlowTwinsLoss needs at least 2 samples in the (global) batch, got {n}")
        a = (z_a - z_a.mean(0)) / torch.sqrt(z_a.var(0, unbiased=False) + BN_EPS)
        b = (z_b - z_b.mean(0)) / torch.sqrt(z_b.var(0, unbiased=False) + BN_EPS)
        off, diag = off_diagonal_sq_sum(a, b, self.route)  # of Aᵀ B, unscaled
        return (1 - diag / n).pow(2).sum() + self.lambd * off / n**2

    def extra_repr(self) -> str:
        return f"lambd={self.lambd}, route={self.route!r}"
