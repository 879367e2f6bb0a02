import math

import pytest
import torch

from selfsup.objectives import InfoNCELoss, LDRegLoss
from tests.objectives.helpers import assert_matches, randn


def ldreg_loop(z_a, z_b, f_a, f_b, t, alpha, k, estimator):
    """From HanxunH/LDReg losses/ntxent_lid_reg.py (NTXentLIDReg, reg_type l1, lid_type f) with lid.py
    (lid_mom_est, lid_mle): per-anchor NT-Xent plus alpha · (−|log LID|); distances to the detached set sorted
    with the anchor itself first (a_0 = 0), k = min(k, 2N − 2). Anchor by anchor."""
    z = torch.nn.functional.normalize(torch.cat([z_a, z_b]), dim=1)
    f = torch.cat([f_a, f_b]).flatten(1)
    ref = f.detach()
    n2 = z.shape[0]
    k = min(k, n2 - 2)
    total = 0
    for i in range(n2):
        p = (i + n2 // 2) % n2
        nce = -z[i] @ z[p] / t + torch.log(sum(torch.exp(z[i] @ z[j] / t) for j in range(n2) if j != i))
        dists = sorted([(f[i] - ref[j]).norm() for j in range(n2) if j != i], key=lambda v: v.item())
        a = [torch.zeros((), dtype=f.dtype)] + dists  # a[0]: the anchor itself
        if estimator == "mom":
            m = sum(a[1:k]) / (k - 1)
            lid = m / (a[k] - m)
        else:
            lid = -k / sum(torch.log(a[j] / a[k] + 1e-4) for j in range(1, k))
        total = total + nce - alpha * torch.log(lid).abs()
    return total / n2


CASES = [  # n, d, feat_dim, t, alpha, k, estimator, seed
    (2, 3, 4, 0.5, 0.01, 2, "mom", 0),  # k = 2N − 2
    (5, 4, 6, 0.1, 0.5, 4, "mom", 1),
    (6, 7, 3, 0.2, 1.0, 64, "mom", 2),  # k clipped to 2N − 2 = 10
    (4, 5, 8, 0.1, 0.3, 3, "mle", 3),
    (6, 4, 5, 0.5, 0.1, 64, "mle", 4),  # clipped
]


@pytest.mark.parametrize("n,d,fd,t,alpha,k,estimator,seed", CASES)
def test_loss_and_grads_match_official_formula(n, d, fd, t, alpha, k, estimator, seed):
    z_a, z_b = randn(n, d, seed=seed), randn(n, d, seed=seed + 100)
    f_a, f_b = randn(n, fd, seed=seed + 200), randn(n, fd, seed=seed + 300)
    loss = LDRegLoss(t, alpha, k, estimator)
    assert_matches(loss, lambda *x: ldreg_loop(*x, t, alpha, k, estimator), z_a, z_b, f_a, f_b)


def test_edge_cases():
    z, f = randn(6, 5, seed=7), randn(6, 4, seed=8)
    near = z + 1e-7 * randn(6, 5, seed=9)
    for est in ("mom", "mle"):
        ref = lambda *x, est=est: ldreg_loop(*x, 0.1, 0.2, 5, est)  # noqa: E731
        assert_matches(LDRegLoss(0.1, 0.2, 5, est), ref, z, near, f, randn(6, 4, seed=10))
        big = randn(6, 4, seed=11, scale=1e3)  # large norms of both embeddings and features
        assert_matches(LDRegLoss(0.1, 0.2, 5, est), ref, 1e3 * z, near, big, 1e3 * f, rtol=1e-9)


def test_alpha_zero_is_nt_xent_and_regulariser_ignores_scale():
    z_a, z_b, f_a, f_b = randn(7, 5, seed=20), randn(7, 5, seed=21), randn(7, 6, seed=22), randn(7, 6, seed=23)
    torch.testing.assert_close(LDRegLoss(0.2, 0.0, 8)(z_a, z_b, f_a, f_b), InfoNCELoss(0.2)(z_a, z_b))
    for est in ("mom", "mle"):
        loss = LDRegLoss(0.2, 0.5, 8, est)
        ref = loss(z_a, z_b, f_a, f_b)
        torch.testing.assert_close(loss(z_a, z_b, 3.0 * f_a + 1.0, 3.0 * f_b + 1.0), ref)  # LID: distance ratios
        torch.testing.assert_close(loss(2.0 * z_a, z_b, f_a, f_b), ref)
        perm = torch.randperm(7, generator=torch.Generator().manual_seed(0))
        torch.testing.assert_close(loss(z_a[perm], z_b[perm], f_a[perm], f_b[perm]), ref)


def test_reference_set_is_detached():
    # moving one sample changes the other anchors' LID values, but only its own query carries gradient
    z_a, z_b, f_a, f_b = randn(5, 4, seed=30), randn(5, 4, seed=31), randn(5, 3, seed=32), randn(5, 3, seed=33)
    f_a = f_a.clone().requires_grad_()
    loss = LDRegLoss(0.5, 1.0, 4)(z_a, z_b, f_a, f_b)
    (g,) = torch.autograd.grad(loss, f_a)
    expected = torch.autograd.grad(ldreg_loop(z_a, z_b, f_a, f_b, 0.5, 1.0, 4, "mom"), f_a)[0]
    torch.testing.assert_close(g, expected)
    assert math.isfinite(loss.item())


def test_shape_mismatch_and_tiny_batch_refused():
    with pytest.raises(ValueError, match="feats_a"):
        LDRegLoss()(randn(4, 3), randn(4, 3, seed=1), randn(3, 2), randn(4, 2, seed=2))
    with pytest.raises(ValueError, match="at least 2 pairs"):
        LDRegLoss()(randn(1, 3), randn(1, 3, seed=1), randn(1, 2), randn(1, 2, seed=2))


@pytest.mark.parametrize(
    "kwargs,key",
    [
        (dict(temperature=0.0), "temperature"),
        (dict(alpha=-0.1), "alpha"),
        (dict(k=1), "k"),
        (dict(k=8.0), "k"),
        (dict(estimator="knn"), "estimator"),
    ],
)
def test_bad_hyperparameters_refused(kwargs, key):
    with pytest.raises(ValueError, match=f"objective.{key}="):
        LDRegLoss(**kwargs)
