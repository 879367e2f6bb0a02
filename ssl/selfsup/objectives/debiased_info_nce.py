"""Debiased contrastive loss (DCL, Chuang et al. 2020, arXiv:2007.00224) with optional hard-negative reweighting
(HCL, Robinson et al. 2021, arXiv:2010.04592).

Formula: see :mod:`selfsup_kernels.debiased_info_nce_ref`, the one reference implementation. It matches
chingyaoc/DCL ``main.py::train`` (``debiased=True``) for ``beta=0`` and joshr17/HCL ``image/main.py::criterion``
(``estimator="hard"``) for ``beta>0``, with ``N = 2·(global pairs) − 2`` negatives per anchor.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from selfsup import distributed
from selfsup.objectives.base import Objective
from selfsup_kernels import IMPLS, debiased_info_nce_rows


class DebiasedInfoNCELoss(Objective):
    """Debiased / hard-negative NT-Xent over the global batch (2N anchors, M = 2N − 2 negatives each).

    ``Ng = max((Σ w·neg − τ⁺·M·pos) / (1 − τ⁺), M·e^{−1/τ})``, ``loss = mean −log(pos / (pos + Ng))``,
    ``w = neg^β / mean(neg^β)`` (not detached; ``β = 0`` gives w = 1, plain DCL).

    Args:
        temperature: τ > 0 dividing the cosine similarities.
        tau_plus: τ⁺ in [0, 1), the assumed class prior of a "negative" being a false negative (0 = no debiasing).
        beta: β ≥ 0, the hardness concentration of the negative weights (0 = DCL, no reweighting).
        impl: ``"torch"`` the reference, ``"triton"`` the fused kernel, ``"auto"`` the kernel on CUDA.
    """

    def __init__(self, temperature: float = 0.5, tau_plus: float = 0.1, beta: float = 0.0, impl: str = "auto"):
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"objective.temperature={temperature}: expected a value > 0")
        if not 0 <= tau_plus < 1:
            raise ValueError(f"objective.tau_plus={tau_plus}: expected a value in [0, 1)")
        if not beta >= 0:
            raise ValueError(f"objective.beta={beta}: expected a value >= 0")
        self.temperature = temperature
        self.tau_plus = tau_plus
        self.beta = beta
        if impl not in IMPLS:
            raise ValueError(f"objective.impl={impl!r}: expected one of {IMPLS}")
        self.impl = impl

    def forward(self, z_a: torch.Tensor, z_b: torch.Tensor) -> torch.Tensor:
        a, b = F.normalize(z_a, dim=1), F.normalize(z_b, dim=1)  # (N, D)
        keys_a, keys_b = distributed.gather_with_grad(a), distributed.gather_with_grad(b)  # (M, D), M = world * N
        offset = distributed.rank() * a.shape[0]
        return debiased_info_nce_rows(
            a, b, keys_a, keys_b, offset, self.temperature, self.tau_plus, self.beta, self.impl
        )

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, tau_plus={self.tau_plus}, beta={self.beta}, impl={self.impl!r}"
