import pytest
import torch

from selfsup.objectives import INTLLoss
from selfsup.objectives.intl import iter_norm
from tests.objectives.helpers import assert_matches, randn


def intl_loop(z_a, z_b, iters, trade_off):
    """From winci-ai/INTL methods/whitening.py (Whitening2dIterNorm, axis=0, eps=0), methods/intl.py (TL, two crops)
    and methods/base.py (norm_mse_loss): whitening of the samples by Newton–Schulz, written step by step."""

    def whiten(x):
        n, d = x.shape
        xc = torch.stack([x[i] - x[i].sum() / d for i in range(n)])  # every sample centred over its features
        sigma = torch.stack([torch.stack([xc[i] @ xc[j] / (d - 1) for j in range(n)]) for i in range(n)])
        tr = sum(sigma[i, i] for i in range(n))
        p = torch.eye(n, dtype=x.dtype)
        for _ in range(iters):
            p = (3 * p - p @ p @ p @ (sigma / tr)) / 2
        w = p / torch.sqrt(tr)
        return torch.stack([sum(w[j, i] * xc[j] for j in range(n)) for i in range(n)])  # (xcᵀ W)ᵀ

    def trace_loss(t):
        d = t.shape[1]
        return sum((((row - row.mean()) ** 2).sum() / (d - 1) - 1) ** 2 for row in t)

    t_a, t_b = whiten(z_a), whiten(z_b)
    cos = sum(t_a[i] @ t_b[i] / (t_a[i].norm() * t_b[i].norm()) for i in range(t_a.shape[0])) / t_a.shape[0]
    return 2 - 2 * cos + trade_off * (trace_loss(t_a) + trace_loss(t_b))


CASES = [(2, 3, 4, 0.05, 0), (6, 8, 4, 0.05, 1), (8, 5, 2, 0.5, 2), (5, 16, 7, 0.01, 3), (12, 4, 4, 0.05, 4)]


@pytest.mark.parametrize("n,d,iters,trade_off,seed", CASES)
def test_loss_and_grad_match_official_formula(n, d, iters, trade_off, seed):
    z_a, z_b = randn(n, d, seed=seed), randn(n, d, seed=seed + 100)
    assert_matches(INTLLoss(iters, trade_off), lambda a, b: intl_loop(a, b, iters, trade_off), z_a, z_b)


def test_edge_cases():
    z = randn(6, 8, seed=7)
    near = z + 1e-7 * randn(6, 8, seed=8)
    assert_matches(INTLLoss(), lambda a, b: intl_loop(a, b, 4, 0.05), z, near)
    big = randn(6, 8, seed=9, scale=1e4)
    assert_matches(INTLLoss(), lambda a, b: intl_loop(a, b, 4, 0.05), big, z, rtol=1e-9)


def test_many_iterations_whiten_the_samples():
    # IterNorm along axis 0 reaches t_c t_cᵀ / (D − 1) = I for a full-rank sample covariance (N ≤ D − 1); the
    # uncoupled Newton–Schulz iteration of the official code drifts again after convergence, so not too many steps
    x = randn(5, 12, seed=10)
    t = iter_norm(x, iters=12)
    tc = t - t.mean(dim=1, keepdim=True)
    torch.testing.assert_close(tc @ tc.T / 11, torch.eye(5, dtype=torch.float64), atol=1e-8, rtol=0)


def test_invariances():
    z_a, z_b = randn(7, 6, seed=20), randn(7, 6, seed=21)
    loss = INTLLoss()
    ref = loss(z_a, z_b)
    perm = torch.randperm(7, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(loss(z_a[perm], z_b[perm]), ref)  # whitening along the samples is equivariant
    torch.testing.assert_close(loss(4.0 * z_a, 0.5 * z_b), ref)  # a global scale cancels in the whitening
    torch.testing.assert_close(loss(z_a + 3.0, z_b), ref)  # each sample is centred over its features
    torch.testing.assert_close(loss(z_b, z_a), ref)


@pytest.mark.parametrize(
    "kwargs,key",
    [(dict(iters=0), "iters"), (dict(iters=2.0), "iters"), (dict(trade_off=-0.1), "trade_off")],
)
def test_bad_hyperparameters_refused(kwargs, key):
    with pytest.raises(ValueError, match=f"objective.{key}="):
        INTLLoss(**kwargs)


def test_one_dimensional_embeddings_refused():
    with pytest.raises(ValueError, match="dimension >= 2"):
        INTLLoss()(randn(4, 1), randn(4, 1, seed=1))
