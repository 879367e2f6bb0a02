import pytest
import torch

from selfsup.objectives import SIELoss
from tests.objectives.helpers import assert_matches, randn


def sie_loop(z_a, z_b, t, theta, inv, equi, sim, equi_factor, std, cov, eps):
    """From facebookresearch/SIE src/models.py (SIE.forward) with src/hypernetwork.py (ParametrizedNet, linear
    hypernetwork, no bias): one predicted matrix per sample, then MSEs and VICReg std/cov on the full embeddings and
    the std hinge on the predictions. Sample by sample / feature by feature."""
    n, d = z_a.shape
    preds = []
    for i in range(n):
        w = (theta @ t[i]).view(equi, equi)  # (out, in), row-major like .view(-1, out, in)
        preds.append(w @ z_a[i, inv:])
    pred = torch.stack(preds)

    def mse(x, y):
        return ((x - y) ** 2).sum() / x.numel()

    def hinge(z):
        zc = z - z.mean(0)
        return sum(torch.relu(1 - torch.sqrt((zc[:, i] ** 2).sum() / (n - 1) + eps)) for i in range(z.shape[1])) / (
            2 * z.shape[1]
        )

    def cov_off(z):
        zc = z - z.mean(0)
        c = zc.T @ zc / (n - 1)
        return sum(c[i, j] ** 2 for i in range(d) for j in range(d) if i != j) / d

    return (
        sim * mse(z_a[:, :inv], z_b[:, :inv])
        + equi_factor * sim * mse(pred, z_b[:, inv:])
        + std * (hinge(z_a) + hinge(z_b))
        + std * hinge(pred)
        + cov * (cov_off(z_a) + cov_off(z_b))
    )


def make(inv, equi, tdim, coeffs=(10.0, 0.45, 10.0, 1.0, 1e-4), route="auto", seed=0):
    torch.manual_seed(seed)
    return SIELoss(inv, equi, tdim, *coeffs, route=route).double()


CASES = [  # n, inv, equi, tdim, coeffs, seed, scale
    (2, 2, 2, 1, (10.0, 0.45, 10.0, 1.0, 1e-4), 0, 1.0),
    (6, 3, 2, 4, (10.0, 0.45, 10.0, 1.0, 1e-4), 1, 0.3),
    (9, 2, 3, 3, (1.0, 2.0, 0.5, 3.0, 1e-3), 2, 2.0),
    (5, 4, 4, 2, (10.0, 0.45, 10.0, 1.0, 1e-4), 3, 1.0),
]


@pytest.mark.parametrize("n,inv,equi,tdim,coeffs,seed,scale", CASES)
@pytest.mark.parametrize("route", ["gram", "feature"])
def test_loss_and_grads_match_official_formula(n, inv, equi, tdim, coeffs, seed, scale, route):
    loss = make(inv, equi, tdim, coeffs, route, seed)
    theta = loss.hypernet.weight.detach().clone()
    z_a, z_b = randn(n, inv + equi, seed=seed, scale=scale), randn(n, inv + equi, seed=seed + 100, scale=scale)
    t = randn(n, tdim, seed=seed + 200)
    # gradients w.r.t. both views and the transform parameters
    assert_matches(loss, lambda a, b, tt: sie_loop(a, b, tt, theta, inv, equi, *coeffs), z_a, z_b, t)
    # gradient w.r.t. the hypernetwork weight
    loss.zero_grad()
    loss(z_a, z_b, t).backward()
    theta.requires_grad_()
    sie_loop(z_a, z_b, t, theta, inv, equi, *coeffs).backward()
    torch.testing.assert_close(loss.hypernet.weight.grad, theta.grad, rtol=1e-10, atol=1e-12)


def test_edge_cases():
    loss = make(3, 2, 4, seed=9)
    theta = loss.hypernet.weight.detach().clone()
    z, t = randn(6, 5, seed=7), randn(6, 4, seed=8)
    near = z + 1e-7 * randn(6, 5, seed=10)
    ref = lambda a, b, tt: sie_loop(a, b, tt, theta, 3, 2, 10.0, 0.45, 10.0, 1.0, 1e-4)  # noqa: E731
    assert_matches(loss, ref, z, near, t)
    assert_matches(loss, ref, randn(6, 5, seed=11, scale=1e3), z, t, rtol=1e-9)


def test_identity_predictor_and_invariances():
    inv, equi, tdim = 2, 3, 1
    loss = make(inv, equi, tdim, seed=1)
    with torch.no_grad():  # W(t) = t · I: a pure scaling predictor
        loss.hypernet.weight.copy_(torch.eye(equi, dtype=torch.float64).reshape(equi * equi, 1))
    z_a = randn(8, inv + equi, seed=2)
    t = torch.full((8, 1), 2.0, dtype=torch.float64)
    z_b = torch.cat([z_a[:, :inv], 2.0 * z_a[:, inv:]], dim=1)  # the second view is exactly the prediction
    x_b = torch.cat([z_b[:, :inv], z_a[:, inv:]], dim=1)  # wrong equivariant part
    assert loss(z_a, z_b, t) < loss(z_a, x_b, t)
    perm = torch.randperm(8, generator=torch.Generator().manual_seed(0))
    z_c, t_c = randn(8, inv + equi, seed=3), randn(8, 1, seed=4)
    torch.testing.assert_close(loss(z_a[perm], z_c[perm], t_c[perm]), loss(z_a, z_c, t_c))


def test_shape_mismatches_refused():
    loss = make(3, 2, 4)
    with pytest.raises(ValueError, match="inv_dim \\+ equi_dim"):
        loss(randn(6, 6), randn(6, 6, seed=1), randn(6, 4))
    with pytest.raises(ValueError, match="inv_dim \\+ equi_dim"):
        loss(randn(6, 5), randn(5, 5, seed=1), randn(6, 4))
    with pytest.raises(ValueError, match="transform_dim"):
        loss(randn(6, 5), randn(6, 5, seed=1), randn(6, 3))


@pytest.mark.parametrize(
    "kwargs,key",
    [
        (dict(inv_dim=0), "inv_dim"),
        (dict(equi_dim=-1), "equi_dim"),
        (dict(transform_dim=0), "transform_dim"),
        (dict(inv_dim=2.0), "inv_dim"),
        (dict(sim_coeff=-1.0), "sim_coeff"),
        (dict(equi_factor=-0.1), "equi_factor"),
        (dict(std_coeff=-1.0), "std_coeff"),
        (dict(cov_coeff=-1.0), "cov_coeff"),
        (dict(eps=0.0), "eps"),
        (dict(route="x"), "route"),
    ],
)
def test_bad_hyperparameters_refused(kwargs, key):
    args = dict(inv_dim=3, equi_dim=2, transform_dim=4) | kwargs
    with pytest.raises(ValueError, match=f"objective.{key}="):
        SIELoss(**args)


def test_hypernet_shape():
    loss = SIELoss(inv_dim=3, equi_dim=5, transform_dim=4)
    assert isinstance(loss.hypernet, torch.nn.Linear) and loss.hypernet.bias is None
    assert loss.hypernet.weight.shape == (25, 4)
