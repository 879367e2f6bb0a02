"""SIE: split invariant-equivariant representations (Garrido et al. 2023, arXiv:2302.10283).

z = [inv ‖ equi] (split at ``inv_dim``). A linear hypernetwork maps the transform parameters t_i (transform_dim,)
to a matrix W(t_i) = (Θ t_i).view(equi_dim, equi_dim) (row-major, Θ = ``self.hypernet.weight``) that predicts the
second view's equivariant part from the first's:

    pred_i = W(t_i) · a_equi_i
    loss = sim · MSE(a_inv, b_inv) + equi_factor · sim · MSE(pred, b_equi)
         + std · [VICReg-std(z_a) + VICReg-std(z_b)] + std · VICReg-std(pred)
         + cov · [VICReg-cov(z_a) + VICReg-cov(z_b)]

with VICReg-std(x) = mean_i relu(1 − sqrt(Var(x)_i + eps)) / 2 and VICReg-cov(x) = Σ_{i≠j} Cov(x)_ij² / D_total
(unbiased, centred, over the global batch). Matches facebookresearch/SIE ``src/models.py::SIE.forward`` with
``src/hypernetwork.py::ParametrizedNet`` (``hypernetwork="linear"``, no biases, predictor ``""``). The official MSE
terms are per rank; here everything is on the gathered batch and every rank returns the global loss.

Under DDP, each rank's ``hypernet.weight.grad`` holds world_size × its own rows' share of the global gradient, so
DDP's average over ranks is exactly the single-process gradient.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from selfsup import checks, distributed
from selfsup.objectives._gram import check_route
from selfsup.objectives.base import Objective
from selfsup.objectives.vicreg import check_nonnegative, covariance_term, variance_term


class SIELoss(Objective):
    """VICReg on the full embedding, invariance on the inv part, hypernetwork-predicted equivariance on the rest.

    Args:
        inv_dim: > 0, size of the invariant part (the first ``inv_dim`` columns of z).
        equi_dim: > 0, size of the equivariant part (the last ``equi_dim`` columns of z).
        transform_dim: > 0, size of the transform passed to ``forward`` (14 for ``SSLModule``'s relative transform,
            ``selfsup.data.views.relative_transform``).
        sim_coeff: ≥ 0, weight of the invariance MSE (and, times ``equi_factor``, of the equivariance MSE).
        equi_factor: ≥ 0, relative weight of the equivariance MSE.
        std_coeff: ≥ 0, weight of the variance hinges (embeddings and predictions).
        cov_coeff: ≥ 0, weight of the covariance term.
        eps: > 0, added to the variance inside the square root.
        route: how Σ_{i≠j} Cov_ij² is computed, ``"auto" | "gram" | "feature"`` (same value, see VICRegLoss).
    """

    def __init__(
        self,
        inv_dim: int,
        equi_dim: int,
        transform_dim: int,
        sim_coeff: float = 10.0,
        equi_factor: float = 0.45,
        std_coeff: float = 10.0,
        cov_coeff: float = 1.0,
        eps: float = 1e-4,
        route: str = "auto",
    ):
        super().__init__()
        self.inv_dim = checks.integer("objective.inv_dim", inv_dim, minimum=1)
        self.equi_dim = checks.integer("objective.equi_dim", equi_dim, minimum=1)
        self.transform_dim = checks.integer("objective.transform_dim", transform_dim, minimum=1)
        check_nonnegative(sim_coeff=sim_coeff, equi_factor=equi_factor, std_coeff=std_coeff, cov_coeff=cov_coeff)
        if not eps > 0:
            raise ValueError(f"objective.eps={eps}: expected a value > 0")
        self.sim_coeff, self.equi_factor, self.std_coeff, self.cov_coeff, self.eps = (
            sim_coeff,
            equi_factor,
            std_coeff,
            cov_coeff,
            eps,
        )
        self.route = check_route(route)
        self.hypernet = nn.Linear(transform_dim, equi_dim**2, bias=False)  # Θ: (equi_dim², transform_dim)

    def predict(self, a_equi: torch.Tensor, transform: torch.Tensor) -> torch.Tensor:
        """``pred_i = W(t_i) a_equi_i`` (N, equi_dim), without building the N per-sample matrices."""
        n, e = a_equi.shape
        weight = self.hypernet.weight  # (e², T), row o·e + j, column k
        t = transform.to(weight.dtype)
        outer = (a_equi.to(weight.dtype)[:, :, None] * t[:, None, :]).reshape(n, e * self.transform_dim)  # a_j t_k
        return outer @ weight.reshape(e, e * self.transform_dim).T  # Σ_{j,k} Θ[o·e+j, k] t_k a_j

    def forward(self, z_a: torch.Tensor, z_b: torch.Tensor, transform: torch.Tensor) -> torch.Tensor:
        width = self.inv_dim + self.equi_dim
        if z_a.shape != z_b.shape or z_a.ndim != 2 or z_a.shape[1] != width:
            raise ValueError(
                f"SIELoss: z_a {tuple(z_a.shape)} and z_b {tuple(z_b.shape)} must both be (N, inv_dim + equi_dim) = "
                f"(N, {self.inv_dim} + {self.equi_dim})"
            )
        if transform.shape != (z_a.shape[0], self.transform_dim):
            raise ValueError(
                f"SIELoss: transform {tuple(transform.shape)} must be (N, transform_dim) = "
                f"({z_a.shape[0]}, {self.transform_dim})"
            )
        pred = self.predict(z_a[:, self.inv_dim :], transform).to(z_a.dtype)  # (n, equi_dim), local rows
        x, y = distributed.gather_with_grad(z_a), distributed.gather_with_grad(z_b)  # (N, D), global batch
        pred = distributed.gather_with_grad(pred)  # (N, equi_dim)
        if x.shape[0] < 2:
            raise ValueError(f"SIELoss needs at least 2 samples in the (global) batch, got {x.shape[0]}")
        repr_inv = F.mse_loss(x[:, : self.inv_dim], y[:, : self.inv_dim])
        repr_equi = F.mse_loss(pred, y[:, self.inv_dim :])
        std_loss = variance_term(x, self.eps) + variance_term(y, self.eps)
        pred_std = variance_term(pred, self.eps)
        cov_loss = covariance_term(x, self.route) + covariance_term(y, self.route)
        return (
            self.sim_coeff * repr_inv
            + self.equi_factor * self.sim_coeff * repr_equi
            + self.std_coeff * (std_loss + pred_std)
            + self.cov_coeff * cov_loss
        )

    def extra_repr(self) -> str:
        return (
            f"inv_dim={self.inv_dim}, equi_dim={self.equi_dim}, transform_dim={self.transform_dim}, "
            f"sim_coeff={self.sim_coeff}, equi_factor={self.equi_factor}, std_coeff={self.std_coeff}, "
            f"cov_coeff={self.cov_coeff}, eps={self.eps}, route={self.route!r}"
        )
