"""E2MC: the effective entropy maximisation criterion (Chakraborty, LeCun, Rudner, Learned-Miller, AISTATS 2025,
arXiv:2411.15931), an add-on term for continuing the pre-training of an already trained SSL model.

Each view's projections z (N, D) of the global batch are squashed into the unit interval, u = s(z) (``"normal_cdf"``:
Φ(z) = (1 + erf(z/√2))/2; ``"sigmoid"``: 1/(1 + e^{−z})), and centred over the batch, u ← u − mean(u). Then

    H_d   = 1/(N−m) Σ_{i=1}^{N−m} log( (N+1)/m · (u_(i+m),d − u_(i),d) + eps ),  m = round(√N)
            (m-spacing estimate of the marginal entropy of feature d; u_(i),d: the i-th smallest of column d)
    C     = uᵀu / (N − 1)                                      (covariance of the squashed, centred features)
    loss  = cov_weight · Σ_view Σ_{i≠j} C_ij² / D  −  entropy_weight · mean_view mean_d H_d

— the joint entropy bounded by the sum of the marginal entropies (maximised: uniform marginals on [0, 1]) plus a
penalty that drives the marginals towards independence, which makes that bound tight. This is ``ce_loss`` of the
official code, deepc94/e2mc ``main_swav_ent_ft.py`` / ``main_simsiam_ent_ft.py`` (``EntropyEstimator``:
``get_ent_and_cov_loss``, ``m_spacings_estimator``, ``get_cov_loss``; normal CDF) and ``main_vicreg_ent_ft.py``
(sigmoid): entropy averaged over the two views, the covariance terms summed, both on the gathered global batch,
normalised by D. The spacing estimator is the one of RADICAL (Learned-Miller & Fisher 2003, JMLR 4, eq. 8), a
variant of Vasicek's (1976). E2MC is added to a method's own loss for a few epochs (``conf/objective/e2mc.yaml``:
InfoNCE + E2MC; ``docs/e2mc.md``).
"""

from __future__ import annotations

import math

import torch

from selfsup import checks, distributed
from selfsup.objectives._gram import off_diagonal_sq_sum
from selfsup.objectives.base import Objective

SQUASHES = ("normal_cdf", "sigmoid")


def squash(z: torch.Tensor, kind: str = "normal_cdf") -> torch.Tensor:
    """z (N, D) mapped into (0, 1) elementwise: the standard normal CDF Φ(z) or the logistic sigmoid."""
    if kind == "normal_cdf":
        return 0.5 * (1 + torch.erf(z / math.sqrt(2)))
    if kind == "sigmoid":
        return torch.sigmoid(z)
    raise ValueError(f"objective.squash={kind!r}: expected one of {SQUASHES}")


def m_spacing_entropy(u: torch.Tensor, m: int | None = None, eps: float = 1e-7) -> torch.Tensor:
    """Marginal entropy estimate of every column of u (N, D) → (D,): the m-spacing estimator (module docstring),
    ``m = round(√N)`` by default. Differentiable (through the sort); shift-invariant per column."""
    n = u.shape[0]
    m = round(math.sqrt(n)) if m is None else m
    if not 1 <= m < n:
        raise ValueError(f"m-spacing entropy: m={m} needs 1 <= m < N={n} samples in the (global) batch")
    s, _ = torch.sort(u, dim=0)  # (N, D), each column ascending
    spacings = (s[m:] - s[: n - m]) * ((n + 1) / m)  # (N − m, D)
    return torch.log(spacings + eps).mean(dim=0)


def squashed_covariance(u: torch.Tensor) -> torch.Tensor:
    """``Σ_{i≠j} C_ij² / D`` with C = u_cᵀ u_c / (N − 1), u_c = u centred over the rows of u (N, D)."""
    uc = u - u.mean(dim=0)
    off, _ = off_diagonal_sq_sum(uc, uc, "auto")
    return off / (u.shape[0] - 1) ** 2 / u.shape[1]


class E2MCLoss(Objective):
    """E2MC's add-on criterion on the projections of two views (module docstring): covariance penalty minus marginal
    entropy of the squashed embeddings. Not a method by itself (nothing aligns the views): a term next to the
    method's own loss in a composite objective.

    Args:
        entropy_weight: weight of the mean marginal entropy (maximised), ≥ 0; the official default 10.
        cov_weight: weight of the covariance penalty (summed over both views), ≥ 0; the official default 1.
        squash: ``"normal_cdf"`` (the official SwAV and SimSiam runs) or ``"sigmoid"`` (the official VICReg run).
        eps: > 0, added to each scaled spacing inside the log (the official runs: 1e-7).
    """

    continues_trained_model = True  # docs/e2mc.md: a criterion for continuing a trained encoder

    def __init__(
        self,
        entropy_weight: float = 10.0,
        cov_weight: float = 1.0,
        squash: str = "normal_cdf",
        eps: float = 1e-7,
    ):
        super().__init__()
        for key, value in (("entropy_weight", entropy_weight), ("cov_weight", cov_weight)):
            checks.number(f"objective.{key}", value, minimum=0)
        if squash not in SQUASHES:
            raise ValueError(f"objective.squash={squash!r}: expected one of {SQUASHES}")
        if not eps > 0:
            raise ValueError(f"objective.eps={eps}: expected a value > 0")
        self.entropy_weight, self.cov_weight, self.squash, self.eps = entropy_weight, cov_weight, squash, eps
        self.last_parts: dict[str, torch.Tensor] = {}

    def forward(self, z_a: torch.Tensor, z_b: torch.Tensor) -> torch.Tensor:
        views = [distributed.gather_with_grad(z) for z in (z_a, z_b)]  # (N, D) each, the global batch
        n = views[0].shape[0]
        if n < 3:
            raise ValueError(f"E2MCLoss needs at least 3 samples in the (global) batch, got {n}")
        entropy, cov = None, None
        for z in views:
            u = squash(z, self.squash)  # (N, D) in (0, 1)
            u = u - u.mean(dim=0)  # as the official code (the spacings do not change; C is then uᵀu / (N−1))
            h = m_spacing_entropy(u, eps=self.eps).mean() / len(views)
            c = squashed_covariance(u)
            entropy, cov = (h, c) if entropy is None else (entropy + h, cov + c)
        self.last_parts = {"entropy": entropy.detach(), "covariance": cov.detach()}
        return self.cov_weight * cov - self.entropy_weight * entropy

    def extra_repr(self) -> str:
        return (
            f"entropy_weight={self.entropy_weight}, cov_weight={self.cov_weight}, squash={self.squash!r}, "
            f"eps={self.eps}"
        )
