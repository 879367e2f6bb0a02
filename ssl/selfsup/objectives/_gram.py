"""Sum of squared off-diagonal entries of a cross-correlation / covariance matrix, two exact routes.

For C = XᵀY with X, Y (N, D):
    "feature": build C (D, D) and sum its off-diagonal squares           — O(N·D²) time, O(D²) memory;
    "gram":    Σ_ij C_ij² = tr(XᵀY YᵀX) = Σ_kl (XXᵀ)_kl (YYᵀ)_kl,  C_ii = Σ_n X_ni Y_ni
               so Σ_{i≠j} C_ij² = Σ_kl (XXᵀ ∘ YYᵀ)_kl − Σ_i C_ii²       — O(N²·D) time, O(N²) memory.
"auto" takes the Gram route when N < D (large projectors, small batches), where it is the cheaper one.
"""

from __future__ import annotations

import torch

ROUTES = ("auto", "gram", "feature")


def check_route(route: str) -> str:
    if route not in ROUTES:
        raise ValueError(f"objective.route={route!r}: expected one of {ROUTES}")
    return route


def off_diagonal_sq_sum(x: torch.Tensor, y: torch.Tensor, route: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """``(Σ_{i≠j} C_ij², diag C)`` for ``C = xᵀ y`` (unscaled), x and y (N, D); ``y is x`` reuses the Gram matrix."""
    n, d = x.shape
    diag = (x * y).sum(dim=0)  # (D,) per-feature sums, C_ii
    if route == "gram" or (route == "auto" and n < d):
        gram_x = x @ x.T  # (N, N)
        gram_y = gram_x if y is x else y @ y.T
        return (gram_x * gram_y).sum() - diag.pow(2).sum(), diag
    c = x.T @ y  # (D, D)
    return (c - torch.diag_embed(c.diagonal())).pow(2).sum(), diag
