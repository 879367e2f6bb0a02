"""INTL: IterNorm with trace loss (Weng et al., "Modulate Your Spectrum in Self-Supervised Learning",
arXiv:2305.16789).

Each view's global batch x (N, D) is whitened along axis 0 — over the N samples — by IterNorm (Newton–Schulz):

    x_c = x − rowmean(x)                        every sample centred over its D features
    Σ   = x_c x_cᵀ / (D − 1)                    (N, N)
    P_0 = I,  P_{k+1} = 1.5 P_k − 0.5 P_k³ (Σ / tr Σ)      (``iters`` steps)
    t   = (x_cᵀ P_T / sqrt(tr Σ))ᵀ              (N, D)
    TL(t) = Σ_n (‖t_n − rowmean(t_n)‖² / (D − 1) − 1)²      trace loss
    loss = (2 − 2 · mean_n cos(t_a,n, t_b,n)) + trade_off · (TL(t_a) + TL(t_b))

Matches winci-ai/INTL ``methods/intl.py::INTL.forward`` (two crops, ``axis=0``, ``eps=0``) with
``methods/whitening.py::Whitening2dIterNorm`` (gathered batch) and ``methods/base.py::norm_mse_loss``; the paper's
trade-off for axis 0 is (log2(batch) − 3) · 0.01, i.e. 0.05 at batch 256. Every rank returns the global loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from selfsup import checks, distributed
from selfsup.objectives.base import Objective


def iter_norm(x: torch.Tensor, iters: int) -> torch.Tensor:
    """IterNorm whitening of the rows of x (N, D) along axis 0 (an N×N whitening matrix), ``iters`` NS steps."""
    n, d = x.shape
    xc = x - x.mean(dim=1, keepdim=True)  # (N, D)
    sigma = xc @ xc.T / (d - 1)  # (N, N)
    trace = sigma.diagonal().sum()
    sigma_n = sigma / trace
    p = torch.eye(n, dtype=x.dtype, device=x.device)
    for _ in range(iters):
        p = 1.5 * p - 0.5 * torch.linalg.matrix_power(p, 3) @ sigma_n
    return (xc.T @ (p / trace.sqrt())).T  # (N, D)


def trace_loss(t: torch.Tensor) -> torch.Tensor:
    """``Σ_n (Var_features(t_n) − 1)²`` with the unbiased variance of each row over its D features."""
    tc = t - t.mean(dim=1, keepdim=True)
    return (tc.pow(2).sum(dim=1) / (t.shape[1] - 1) - 1).pow(2).sum()


class INTLLoss(Objective):
    """Spectral transformation by IterNorm plus trace loss.

    Args:
        iters: ≥ 1, Newton–Schulz iterations of IterNorm.
        trade_off: ≥ 0, weight of the trace loss.
    """

    def __init__(self, iters: int = 4, trade_off: float = 0.05):
        super().__init__()
        checks.integer("objective.iters", iters, minimum=1)
        if not trade_off >= 0:
            raise ValueError(f"objective.trade_off={trade_off}: expected a value >= 0")
        self.iters = iters
        self.trade_off = trade_off

    def forward(self, z_a: torch.Tensor, z_b: torch.Tensor) -> torch.Tensor:
        if z_a.shape[1] < 2:
            raise ValueError(f"INTLLoss needs embeddings of dimension >= 2, got {z_a.shape[1]}")
        x, y = distributed.gather_with_grad(z_a), distributed.gather_with_grad(z_b)  # (N, D), global batch
        t_a, t_b = iter_norm(x, self.iters), iter_norm(y, self.iters)
        align = 2 - 2 * (F.normalize(t_a, dim=1) * F.normalize(t_b, dim=1)).sum(dim=1).mean()
        return align + self.trade_off * (trace_loss(t_a) + trace_loss(t_b))

    def extra_repr(self) -> str:
        return f"iters={self.iters}, trade_off={self.trade_off}"
