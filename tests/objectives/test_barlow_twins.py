import pytest
import torch

from selfsup.objectives import BarlowTwinsLoss
from tests.objectives.helpers import assert_matches, randn


def barlow_loop(z_a, z_b, lambd):
    """From facebookresearch/barlowtwins main.py: BatchNorm1d(affine=False) in training mode (biased variance,
    eps 1e-5), c = bn(z1)ᵀ bn(z2) / batch, Σ(1 − c_ii)² + λ Σ_{i≠j} c_ij² — entry by entry."""
    n, d = z_a.shape

    def bn(z):
        mean = z.mean(0)
        var = ((z - mean) ** 2).mean(0)
        return (z - mean) / torch.sqrt(var + 1e-5)

    a, b = bn(z_a), bn(z_b)
    total = 0
    for i in range(d):
        for j in range(d):
            c = (a[:, i] * b[:, j]).sum() / n
            total = total + ((1 - c) ** 2 if i == j else lambd * c**2)
    return total


@pytest.mark.parametrize("n,d,lambd,seed", [(2, 3, 0.0051, 0), (6, 4, 0.0051, 1), (5, 9, 0.1, 2), (16, 6, 1.0, 3)])
@pytest.mark.parametrize("route", ["auto", "gram", "feature"])
def test_loss_and_grad_match_official_formula(n, d, lambd, seed, route):
    z_a, z_b = randn(n, d, seed=seed), randn(n, d, seed=seed + 100)
    assert_matches(BarlowTwinsLoss(lambd, route), lambda a, b: barlow_loop(a, b, lambd), z_a, z_b)


def test_edge_cases():
    z = randn(6, 5, seed=7)
    near = z + 1e-6 * randn(6, 5, seed=8)  # near-duplicate views: C ≈ identity
    assert_matches(BarlowTwinsLoss(0.0051), lambda a, b: barlow_loop(a, b, 0.0051), z, near, rtol=1e-8, atol=1e-10)
    big = randn(6, 5, seed=9, scale=1e4)  # large norms
    assert_matches(BarlowTwinsLoss(0.0051), lambda a, b: barlow_loop(a, b, 0.0051), big, z, rtol=1e-8, atol=1e-10)
    dup_rows = torch.cat([z[:3], z[:3]])  # duplicated samples inside the batch
    assert_matches(BarlowTwinsLoss(0.5), lambda a, b: barlow_loop(a, b, 0.5), dup_rows, near)


@pytest.mark.parametrize("n,d", [(4, 32), (8, 8), (40, 12)])
def test_gram_route_equals_feature_route(n, d):
    z_a, z_b = randn(n, d, seed=n), randn(n, d, seed=n + 1)
    values, grads = [], []
    for route in ("gram", "feature"):
        a, b = z_a.clone().requires_grad_(), z_b.clone().requires_grad_()
        loss = BarlowTwinsLoss(0.0051, route)(a, b)
        loss.backward()
        values.append(loss)
        grads.append(torch.cat([a.grad, b.grad]))
    torch.testing.assert_close(values[0], values[1], rtol=0, atol=1e-10)
    torch.testing.assert_close(grads[0], grads[1], rtol=0, atol=1e-10)


def test_invariances():
    z_a, z_b = randn(9, 5, seed=20), randn(9, 5, seed=21)
    loss = BarlowTwinsLoss(0.0051)
    ref = loss(z_a, z_b)
    g = torch.Generator().manual_seed(0)
    rows, cols = torch.randperm(9, generator=g), torch.randperm(5, generator=g)
    torch.testing.assert_close(loss(z_a[rows], z_b[rows]), ref)  # sample order
    torch.testing.assert_close(loss(z_a[:, cols], z_b[:, cols]), ref)  # same feature order in both views
    torch.testing.assert_close(loss(z_a + 3.0, z_b - 1.5), ref)  # per-feature shifts vanish in the batch norm
    torch.testing.assert_close(loss(z_b, z_a), ref)


def test_identical_decorrelated_views_give_near_zero_loss():
    x = randn(16, 4, seed=3)
    q, _ = torch.linalg.qr(x - x.mean(0))  # zero-mean orthogonal columns: C = I up to the BN eps
    assert BarlowTwinsLoss(0.0051)(q, q) < 1e-6


@pytest.mark.parametrize("kwargs,key", [(dict(lambd=-0.1), "lambd"), (dict(route="fast"), "route")])
def test_bad_hyperparameters_refused(kwargs, key):
    with pytest.raises(ValueError, match=f"objective.{key}="):
        BarlowTwinsLoss(**kwargs)


def test_single_sample_refused():
    with pytest.raises(ValueError, match="at least 2 samples"):
        BarlowTwinsLoss()(randn(1, 4), randn(1, 4, seed=1))
