import pytest
import torch

from selfsup.objectives import VICRegLoss
from tests.objectives.helpers import assert_matches, randn


def vicreg_loop(x, y, sim, std, cov, eps):
    """From facebookresearch/vicreg main_vicreg.py (VICReg.forward): MSE, then on centred inputs the unbiased std
    hinge and the off-diagonal squared covariance / num_features — written feature pair by feature pair."""
    n, d = x.shape
    repr_loss = ((x - y) ** 2).sum() / (n * d)

    def std_cov(z):
        zc = z - z.mean(0)
        hinge = sum(torch.relu(1 - torch.sqrt((zc[:, i] ** 2).sum() / (n - 1) + eps)) for i in range(d)) / d
        off = sum(((zc[:, i] * zc[:, j]).sum() / (n - 1)) ** 2 for i in range(d) for j in range(d) if i != j)
        return hinge / 2, off / d

    (sx, cx), (sy, cy) = std_cov(x), std_cov(y)
    return sim * repr_loss + std * (sx + sy) + cov * (cx + cy)


CASES = [  # n, d, (sim, std, cov, eps), seed, scale
    (2, 3, (25.0, 25.0, 1.0, 1e-4), 0, 1.0),
    (6, 4, (25.0, 25.0, 1.0, 1e-4), 1, 0.3),  # small spread: the std hinge is active
    (5, 9, (1.0, 2.0, 3.0, 1e-3), 2, 2.0),  # large spread: the hinge is off for most features
    (16, 6, (25.0, 25.0, 1.0, 1e-4), 3, 1.0),
]


@pytest.mark.parametrize("n,d,coeffs,seed,scale", CASES)
@pytest.mark.parametrize("route", ["auto", "gram", "feature"])
def test_loss_and_grad_match_official_formula(n, d, coeffs, seed, scale, route):
    z_a, z_b = randn(n, d, seed=seed, scale=scale), randn(n, d, seed=seed + 100, scale=scale)
    loss = VICRegLoss(*coeffs, route=route)
    assert_matches(loss, lambda a, b: vicreg_loop(a, b, *coeffs), z_a, z_b)


def test_edge_cases():
    coeffs = (25.0, 25.0, 1.0, 1e-4)
    z = randn(6, 5, seed=7)
    near = z + 1e-7 * randn(6, 5, seed=8)
    assert_matches(VICRegLoss(*coeffs), lambda a, b: vicreg_loop(a, b, *coeffs), z, near)
    big = randn(6, 5, seed=9, scale=1e3)
    assert_matches(VICRegLoss(*coeffs), lambda a, b: vicreg_loop(a, b, *coeffs), big, z, rtol=1e-9)
    collapsed = z[:1].repeat(6, 1) + 1e-9 * randn(6, 5, seed=10)  # almost no variance: sqrt(var + eps) ≈ 0.01
    assert_matches(VICRegLoss(*coeffs), lambda a, b: vicreg_loop(a, b, *coeffs), collapsed, z)


@pytest.mark.parametrize("n,d", [(4, 32), (8, 8), (40, 12)])
def test_gram_route_equals_feature_route(n, d):
    z_a, z_b = randn(n, d, seed=n), randn(n, d, seed=n + 1)
    values, grads = [], []
    for route in ("gram", "feature"):
        a, b = z_a.clone().requires_grad_(), z_b.clone().requires_grad_()
        loss = VICRegLoss(route=route)(a, b)
        loss.backward()
        values.append(loss)
        grads.append(torch.cat([a.grad, b.grad]))
    torch.testing.assert_close(values[0], values[1], rtol=0, atol=1e-10)
    torch.testing.assert_close(grads[0], grads[1], rtol=0, atol=1e-10)


def test_invariances():
    z_a, z_b = randn(9, 5, seed=20), randn(9, 5, seed=21)
    loss = VICRegLoss()
    ref = loss(z_a, z_b)
    g = torch.Generator().manual_seed(0)
    rows, cols = torch.randperm(9, generator=g), torch.randperm(5, generator=g)
    torch.testing.assert_close(loss(z_a[rows], z_b[rows]), ref)
    torch.testing.assert_close(loss(z_a[:, cols], z_b[:, cols]), ref)
    shift = randn(5, seed=22)
    torch.testing.assert_close(loss(z_a + shift, z_b + shift), ref)  # a common shift changes nothing
    torch.testing.assert_close(loss(z_b, z_a), ref)


@pytest.mark.parametrize(
    "kwargs,key",
    [
        (dict(sim_coeff=-1.0), "sim_coeff"),
        (dict(std_coeff=-1.0), "std_coeff"),
        (dict(cov_coeff=-1.0), "cov_coeff"),
        (dict(eps=0.0), "eps"),
        (dict(route="x"), "route"),
    ],
)
def test_bad_hyperparameters_refused(kwargs, key):
    with pytest.raises(ValueError, match=f"objective.{key}="):
        VICRegLoss(**kwargs)


def test_single_sample_refused():
    with pytest.raises(ValueError, match="at least 2 samples"):
        VICRegLoss()(randn(1, 4), randn(1, 4, seed=1))
