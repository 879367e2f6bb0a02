"""VICReg (Bardes et al. 2022, arXiv:2105.04906).

    loss = sim · MSE(z_a, z_b)
         + std · [mean_i relu(1 − sqrt(Var(z_a)_i + eps)) / 2 + same for z_b]
         + cov · [Σ_{i≠j} Cov(z_a)_ij² / D + same for z_b]

with unbiased (N − 1) variance and covariance of the centred global batch. Matches facebookresearch/vicreg
``main_vicreg.py::VICReg.forward``; there the MSE is taken per rank before gathering, here on the gathered batch, so
every rank returns the global loss (the gradients are the same). ``route`` picks how Σ_{i≠j} Cov_ij² is computed
(same value, see :mod:`selfsup.objectives._gram`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from selfsup import checks, distributed
from selfsup.objectives._gram import check_route, off_diagonal_sq_sum
from selfsup.objectives.base import Objective


def variance_term(x: torch.Tensor, eps: float) -> torch.Tensor:
    """``mean_i relu(1 − sqrt(Var(x)_i + eps)) / 2`` with the unbiased variance over the rows of x (N, D)."""
    return F.relu(1 - torch.sqrt(x.var(dim=0) + eps)).mean() / 2


def covariance_term(x: torch.Tensor, route: str = "auto") -> torch.Tensor:
    """``Σ_{i≠j} Cov(x)_ij² / D``, Cov = x_cᵀ x_c / (N − 1) over the rows of x (N, D)."""
    xc = x - x.mean(dim=0)
    off, _ = off_diagonal_sq_sum(xc, xc, route)
    return off / (x.shape[0] - 1) ** 2 / x.shape[1]


def check_nonnegative(**values: float) -> None:
    for key, value in values.items():
        checks.number(f"objective.{key}", value, minimum=0)


class VICRegLoss(Objective):
    """Variance-Invariance-Covariance regularisation.

    Args:
        sim_coeff: weight of the invariance (MSE) term, ≥ 0.
        std_coeff: weight of the variance hinge term, ≥ 0.
        cov_coeff: weight of the covariance term, ≥ 0.
        eps: > 0, added to the variance inside the square root.
        route: ``"feature"`` builds the D×D covariance, ``"gram"`` works with N×N Gram matrices (exact, cheaper
            when N < D), ``"auto"`` picks ``"gram"`` when the global N < D.
    """

    def __init__(
        self,
        sim_coeff: float = 25.0,
        std_coeff: float = 25.0,
        cov_coeff: float = 1.0,
        eps: float = 1e-4,
        route: str = "auto",
    ):
        super().__init__()
        check_nonnegative(sim_coeff=sim_coeff, std_coeff=std_coeff, cov_coeff=cov_coeff)
        if not eps > 0:
            raise ValueError(f"objective.eps={eps}: expected a value > 0")
        self.sim_coeff, self.std_coeff, self.cov_coeff, self.eps = sim_coeff, std_coeff, cov_coeff, eps
        self.route = check_route(route)

    def forward(self, z_a: torch.Tensor, z_b: torch.Tensor) -> torch.Tensor:
        x, y = distributed.gather_with_grad(z_a), distributed.gather_with_grad(z_b)  # (N, D), global batch
        if x.shape[0] < 2:
            raise ValueError(f"VICRegLoss needs at least 2 samples in the (global) batch, got {x.shape[0]}")
        repr_loss = F.mse_loss(x, y)
        std_loss = variance_term(x, self.eps) + variance_term(y, self.eps)
        cov_loss = covariance_term(x, self.route) + covariance_term(y, self.route)
        return self.sim_coeff * repr_loss + self.std_coeff * std_loss + self.cov_coeff * cov_loss

    def extra_repr(self) -> str:
        return (
            f"sim_coeff={self.sim_coeff}, std_coeff={self.std_coeff}, cov_coeff={self.cov_coeff}, eps={self.eps}, "
            f"route={self.route!r}"
        )
