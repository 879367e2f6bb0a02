"""LDReg: local dimensionality regularisation (Huang et al., ICLR 2024, arXiv:2401.10474), on SimCLR's NT-Xent.

For each of the 2N anchors n (both views), with f_n its backbone feature:

    l_n   = NT-Xent of anchor n (``InfoNCELoss(negatives="all")``, per anchor, from ``info_nce_ref``)
    a_1 ≤ … ≤ a_k  distances from f_n to its k nearest neighbours in the detached set cat(feats_a, feats_b)
                   (global batch, f_n itself excluded), k = min(k, 2N − 2)
    "mom": m = mean(a_1 … a_{k−1}),  LID_n = m / (a_k − m)
    "mle": LID_n = −k / Σ_{j<k} log(a_j / a_k + 1e-4)
    loss = mean_n [ l_n − alpha · |log LID_n| ]

Matches HanxunH/LDReg ``losses/ntxent_lid_reg.py::NTXentLIDReg.forward`` (``reg_type="l1"``, ``lid_type="f"``) with
``lid.py::lid_mom_est`` / ``lid.py::lid_mle``: queries keep their gradient, the reference set is detached. The
official code clips k with the local batch; here the global one is used so that the loss is that of the global
batch. Each rank returns the mean over its own anchors (the mean over ranks is the global loss).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from selfsup import checks, distributed
from selfsup.objectives.base import Objective
from selfsup_kernels.info_nce_ref import info_nce_ref

ESTIMATORS = ("mom", "mle")


def lid(queries: torch.Tensor, reference: torch.Tensor, self_idx: torch.Tensor, k: int, estimator: str):
    """LID estimate (Q,) of each query (Q, F) among ``reference`` (R, F), the column ``self_idx`` excluded."""
    dist = torch.cdist(queries, reference)  # (Q, R)
    dist = dist.masked_fill(F.one_hot(self_idx, reference.shape[0]).bool(), float("inf"))
    a = torch.topk(dist, k, dim=1, largest=False).values  # (Q, k) ascending: a_1 … a_k
    if estimator == "mom":
        m = a[:, : k - 1].mean(dim=1)
        return m / (a[:, k - 1] - m)
    return -k / torch.log(a[:, : k - 1] / a[:, k - 1 :] + 1e-4).sum(dim=1)


class LDRegLoss(Objective):
    """NT-Xent plus a reward for high local intrinsic dimensionality of the backbone features.

    Args:
        temperature: τ > 0 of the NT-Xent term.
        alpha: ≥ 0, weight of the −|log LID| regulariser.
        k: ≥ 2, number of nearest neighbours for the LID estimate (clipped to 2N − 2).
        estimator: ``"mom"`` (method of moments) or ``"mle"`` (maximum likelihood).
    """

    def __init__(self, temperature: float = 0.1, alpha: float = 0.01, k: int = 64, estimator: str = "mom"):
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"objective.temperature={temperature}: expected a value > 0")
        if not alpha >= 0:
            raise ValueError(f"objective.alpha={alpha}: expected a value >= 0")
        checks.integer("objective.k", k, minimum=2)
        if estimator not in ESTIMATORS:
            raise ValueError(f"objective.estimator={estimator!r}: expected one of {ESTIMATORS}")
        self.temperature, self.alpha, self.k, self.estimator = temperature, alpha, k, estimator

    def forward(
        self, z_a: torch.Tensor, z_b: torch.Tensor, feats_a: torch.Tensor, feats_b: torch.Tensor
    ) -> torch.Tensor:
        n = z_a.shape[0]
        if feats_a.shape[0] != n or feats_b.shape[0] != n:
            raise ValueError(
                f"LDRegLoss: feats_a {tuple(feats_a.shape)} and feats_b {tuple(feats_b.shape)} must have the "
                f"{n} rows of z_a"
            )
        a, b = F.normalize(z_a, dim=1), F.normalize(z_b, dim=1)  # (n, D)
        keys_a, keys_b = distributed.gather_with_grad(a), distributed.gather_with_grad(b)  # (M, D)
        m = keys_a.shape[0]
        k = min(self.k, 2 * m - 2)
        if k < 2:
            raise ValueError(f"LDRegLoss needs at least 2 pairs in the (global) batch, got {m}")
        offset = distributed.rank() * n
        nce = info_nce_ref(a, b, keys_a, keys_b, offset, self.temperature, "all", reduction="none")  # (2n,)
        f = torch.cat([feats_a, feats_b]).flatten(1)  # (2n, F) queries, keep their gradient
        reference = distributed.gather_with_grad(f.detach())  # (2M, F), rank r holds rows [2nr, 2n(r+1))
        self_idx = torch.arange(2 * n, device=f.device) + 2 * offset
        lids = lid(f, reference, self_idx, k, self.estimator)  # (2n,)
        return (nce - self.alpha * torch.log(lids).abs()).mean()

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, alpha={self.alpha}, k={self.k}, estimator={self.estimator!r}"
