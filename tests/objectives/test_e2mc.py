"""E2MC (arXiv:2411.15931): the m-spacing marginal entropy and the squashed covariance penalty against a float64
reference written from the official code's formulas (deepc94/e2mc ``EntropyEstimator``), entropy estimates of known
distributions, the composite config, bad arguments, and two processes == one."""

import math

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from selfsup.config import CONF_DIR
from selfsup.objectives import CompositeObjective, E2MCLoss, InfoNCELoss
from selfsup.objectives.e2mc import m_spacing_entropy, squash
from tests.distributed_utils import run_distributed
from tests.objectives.helpers import assert_matches, batch_of, randn


def squash_ref(z, kind):
    """Elementwise, from the scalar formulas: Φ(x) = (1 + erf(x/√2))/2 or 1/(1 + e^{−x})."""
    if kind == "normal_cdf":
        f = lambda x: 0.5 * (1 + torch.erf(x / math.sqrt(2)))
    else:
        f = lambda x: 1 / (1 + torch.exp(-x))
    return torch.stack([torch.stack([f(z[i, j]) for j in range(z.shape[1])]) for i in range(z.shape[0])])


def entropy_ref(column, eps):
    """m-spacing estimate of one column: m = round(√N), sorted values, mean of log((N+1)/m · spacing + eps) over
    the N − m spacings of width m (Learned-Miller & Fisher 2003, eq. 8 as in deepc94/e2mc)."""
    n = column.shape[0]
    m = round(math.sqrt(n))
    order = sorted(range(n), key=lambda i: column[i].item())
    s = [column[i] for i in order]
    return sum(torch.log((n + 1) / m * (s[i + m] - s[i]) + eps) for i in range(n - m)) / (n - m)


def e2mc_ref(z_a, z_b, entropy_weight, cov_weight, kind, eps):
    n, d = z_a.shape
    ent, cov = 0.0, 0.0
    for z in (z_a, z_b):
        u = squash_ref(z, kind)
        u = u - u.mean(0)
        ent = ent + sum(entropy_ref(u[:, j], eps) for j in range(d)) / d / 2
        cov = cov + sum(((u[:, i] * u[:, j]).sum() / (n - 1)) ** 2 for i in range(d) for j in range(d) if i != j) / d
    return cov_weight * cov - entropy_weight * ent


CASES = [  # n, d, entropy_weight, cov_weight, squash, seed, scale
    (5, 3, 10.0, 1.0, "normal_cdf", 0, 1.0),
    (16, 4, 10.0, 1.0, "normal_cdf", 1, 0.5),
    (17, 6, 1.0, 25.0, "sigmoid", 2, 2.0),  # the SimSiam weights; √17 rounds down
    (30, 5, 10.0, 1.0, "sigmoid", 3, 1.0),
    (12, 8, 0.0, 1.0, "normal_cdf", 4, 1.0),  # covariance only
]


@pytest.mark.parametrize("n,d,ent_w,cov_w,kind,seed,scale", CASES)
def test_loss_and_grad_match_float64_reference(n, d, ent_w, cov_w, kind, seed, scale):
    z_a, z_b = randn(n, d, seed=seed, scale=scale), randn(n, d, seed=seed + 50, scale=scale)
    loss = E2MCLoss(ent_w, cov_w, kind, 1e-7)
    assert_matches(loss, lambda a, b: e2mc_ref(a, b, ent_w, cov_w, kind, 1e-7), z_a, z_b)
    assert set(loss.last_parts) == {"entropy", "covariance"}


def test_squash_matches_the_scalar_formulas():
    z = randn(7, 3, seed=5, scale=3.0)
    for kind in ("normal_cdf", "sigmoid"):
        torch.testing.assert_close(squash(z, kind), squash_ref(z, kind), rtol=1e-14, atol=1e-15)
    x = torch.tensor([0.0, 1.0, -2.0], dtype=torch.float64)
    expected = torch.tensor([0.5, 0.8413447460685429, 0.022750131948179195], dtype=torch.float64)  # Φ tables
    torch.testing.assert_close(squash(x, "normal_cdf"), expected, rtol=1e-12, atol=0)


def test_estimator_on_known_distributions():
    """Differential entropy of U(0, a) is log a, of N(0, σ²) is ½·log(2πeσ²); the m-spacing estimate with
    N = 20,000 samples is within a few hundredths (its bias is O(m/N + 1/m))."""
    g = torch.Generator().manual_seed(0)
    n = 20_000
    u = torch.rand(n, 3, generator=g, dtype=torch.float64) * torch.tensor([1.0, 0.25, 4.0], dtype=torch.float64)
    torch.testing.assert_close(
        m_spacing_entropy(u, eps=0.0), torch.log(torch.tensor([1.0, 0.25, 4.0])).double(), atol=0.03, rtol=0
    )
    sigma = torch.tensor([1.0, 0.1], dtype=torch.float64)
    x = torch.randn(n, 2, generator=g, dtype=torch.float64) * sigma
    torch.testing.assert_close(
        m_spacing_entropy(x, eps=0.0), 0.5 * torch.log(2 * math.pi * math.e * sigma**2), atol=0.03, rtol=0
    )
    # exact properties: shift-invariant, log a per scale factor a, order of the rows irrelevant
    h = m_spacing_entropy(x, eps=0.0)
    torch.testing.assert_close(m_spacing_entropy(3 * x + 5, eps=0.0), h + math.log(3), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(m_spacing_entropy(x[torch.randperm(n, generator=g)], eps=0.0), h, rtol=0, atol=0)


def test_uniform_marginals_score_higher_than_concentrated_ones():
    """What the term rewards: the squashed embedding spread evenly over (0, 1) (z ~ N(0, 1) under Φ: exactly
    uniform) beats a narrow one and a collapsed pair of features."""
    g = torch.Generator().manual_seed(1)
    z = torch.randn(512, 4, generator=g, dtype=torch.float64)
    loss = E2MCLoss(10.0, 1.0, "normal_cdf")
    spread = loss(z, z.flip(0))
    narrow = loss(0.2 * z, 0.2 * z.flip(0))
    correlated = z.clone()
    correlated[:, 1] = correlated[:, 0]
    assert spread < narrow
    assert loss(correlated, correlated.flip(0)) > spread  # covariance penalty (and the same entropy)
    assert abs(loss.last_parts["entropy"].item()) < 0.05  # ≈ 0: the entropy of U(0, 1)


def test_config_is_info_nce_plus_e2mc_with_the_constructor_defaults():
    cfg = OmegaConf.load(CONF_DIR / "objective" / "e2mc.yaml")
    objective = instantiate(cfg)
    assert isinstance(objective, CompositeObjective) and set(objective.losses) == {"info_nce", "e2mc"}
    e2mc = objective.losses["e2mc"]
    default = E2MCLoss()
    assert (
        (e2mc.entropy_weight, e2mc.cov_weight, e2mc.squash, e2mc.eps)
        == (default.entropy_weight, default.cov_weight, default.squash, default.eps)
        == (10.0, 1.0, "normal_cdf", 1e-7)
    )
    z_a, z_b = randn(12, 6, seed=11), randn(12, 6, seed=12)
    total = objective.forward_views(batch_of([z_a, z_b]))
    expected = InfoNCELoss(0.5)(z_a, z_b) + e2mc_ref(z_a, z_b, 10.0, 1.0, "normal_cdf", 1e-7)
    torch.testing.assert_close(total, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"entropy_weight": -1.0}, "objective.entropy_weight=-1.0"),
        ({"cov_weight": True}, "objective.cov_weight"),
        ({"squash": "tanh"}, "objective.squash='tanh'"),
        ({"eps": 0.0}, "objective.eps=0.0"),
    ],
)
def test_bad_arguments_are_one_line_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        E2MCLoss(**kwargs)


def test_too_small_a_batch_is_refused():
    with pytest.raises(ValueError, match="at least 3 samples"):
        E2MCLoss()(randn(2, 4), randn(2, 4, seed=1))
    with pytest.raises(ValueError, match="m=3 needs 1 <= m < N=3"):
        m_spacing_entropy(randn(3, 2), m=3)


def _rank_fn(rank, world, z_a, z_b):
    n = z_a.shape[0] // world
    a = z_a[rank * n : (rank + 1) * n].clone().requires_grad_()
    b = z_b[rank * n : (rank + 1) * n].clone().requires_grad_()
    loss = E2MCLoss(10.0, 1.0, "normal_cdf")(a, b)
    loss.backward()
    return loss.detach(), a.grad, b.grad


@pytest.mark.ddp
def test_two_processes_compute_the_global_batch_loss():
    z_a, z_b = randn(16, 5, seed=21), randn(16, 5, seed=22)
    ranks = run_distributed(_rank_fn, 2, z_a, z_b)
    a, b = z_a.clone().requires_grad_(), z_b.clone().requires_grad_()
    single = E2MCLoss(10.0, 1.0, "normal_cdf")(a, b)
    single.backward()
    torch.testing.assert_close(sum(r[0] for r in ranks) / 2, single.detach(), rtol=1e-10, atol=1e-12)
    for rank, (_, ga, gb) in enumerate(ranks):  # DDP averages: each rank holds world_size x its slice's gradient
        torch.testing.assert_close(ga, 2 * a.grad[rank * 8 : (rank + 1) * 8], rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(gb, 2 * b.grad[rank * 8 : (rank + 1) * 8], rtol=1e-9, atol=1e-12)
