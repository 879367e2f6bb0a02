import math

import pytest
import torch

from selfsup.objectives import DebiasedInfoNCELoss, InfoNCELoss
from selfsup_kernels.debiased_info_nce_ref import debiased_info_nce_ref
from tests.objectives.helpers import assert_matches, randn


def dcl_loop(z_a, z_b, t, tau_plus, beta):
    """Anchor by anchor from chingyaoc/DCL main.py (debiased estimator) and joshr17/HCL image/main.py ("hard"
    estimator): raw exponentials of the cosine / τ, N = 2·pairs − 2 negatives, clamp at N·e^{−1/τ}. Autograd-able."""
    z = torch.nn.functional.normalize(torch.cat([z_a, z_b]), dim=1)
    n2 = z.shape[0]
    n_neg = n2 - 2
    total = 0
    for i in range(n2):
        p = (i + n2 // 2) % n2
        pos = torch.exp(z[i] @ z[p] / t)
        negs = [torch.exp(z[i] @ z[j] / t) for j in range(n2) if j not in (i, p)]
        if beta == 0:
            weighted = sum(negs)
        else:
            imp = [neg**beta for neg in negs]
            weighted = sum(w * neg for w, neg in zip(imp, negs, strict=True)) / (sum(imp) / n_neg)
        ng = (weighted - tau_plus * n_neg * pos) / (1 - tau_plus)
        ng = torch.clamp(ng, min=n_neg * math.exp(-1 / t))
        total = total - torch.log(pos / (pos + ng))
    return total / n2


CASES = [  # n, d, temperature, tau_plus, beta, seed
    (2, 3, 0.5, 0.1, 0.0, 0),
    (5, 7, 0.2, 0.1, 0.0, 1),
    (8, 4, 0.5, 0.0, 1.0, 2),
    (6, 16, 0.5, 0.1, 1.0, 3),
    (7, 5, 1.0, 0.3, 0.5, 4),
]


@pytest.mark.parametrize("n,d,t,tau_plus,beta,seed", CASES)
def test_loss_and_grad_match_official_formula(n, d, t, tau_plus, beta, seed):
    z_a, z_b = randn(n, d, seed=seed), randn(n, d, seed=seed + 100)
    loss = DebiasedInfoNCELoss(t, tau_plus, beta)
    assert_matches(loss, lambda a, b: dcl_loop(a, b, t, tau_plus, beta), z_a, z_b)


@pytest.mark.parametrize("beta", [0.0, 1.0])
def test_edge_cases(beta):
    z = randn(6, 5, seed=7)
    near = z + 1e-7 * randn(6, 5, seed=8)  # near-duplicate rows: positives almost identical
    assert_matches(DebiasedInfoNCELoss(0.5, 0.1, beta), lambda a, b: dcl_loop(a, b, 0.5, 0.1, beta), z, near)
    big = randn(6, 5, seed=9, scale=1e6)  # large norms
    assert_matches(DebiasedInfoNCELoss(0.3, 0.1, beta), lambda a, b: dcl_loop(a, b, 0.3, 0.1, beta), big, z)


@pytest.mark.parametrize("beta", [0.0, 2.0])
def test_binding_clamp(beta):
    # aligned views and a large τ⁺ push the debiased estimate below M·e^{−1/τ} for some anchors, not all
    z_a = randn(6, 4, seed=11)
    z_b = torch.cat([z_a[:3] + 0.01 * randn(3, 4, seed=12), randn(3, 4, seed=13)])
    t, tau_plus = 0.5, 0.5
    a, b = torch.nn.functional.normalize(z_a, dim=1), torch.nn.functional.normalize(z_b, dim=1)
    z = torch.cat([a, b])
    e = torch.exp(z @ z.T / t)
    m = 10
    pos = torch.exp((a * b).sum(1) / t).repeat(2)
    mask = torch.ones_like(e, dtype=torch.bool)
    mask.fill_diagonal_(False)
    mask[torch.arange(12), (torch.arange(12) + 6) % 12] = False
    neg = e[mask].view(12, m)
    w = neg**beta / (neg**beta).mean(1, keepdim=True)
    raw = ((w * neg).sum(1) - tau_plus * m * pos) / (1 - tau_plus)
    binding = raw < m * math.exp(-1 / t)
    assert binding.any() and not binding.all()
    assert_matches(DebiasedInfoNCELoss(t, tau_plus, beta), lambda x, y: dcl_loop(x, y, t, tau_plus, beta), z_a, z_b)


def test_tau_plus_zero_beta_zero_is_nt_xent():
    z_a, z_b = randn(9, 6, seed=20), randn(9, 6, seed=21)
    # τ⁺ = 0, β = 0: Ng = Σ neg ≥ M·e^{−1/τ} (cosines ≥ −1), the clamp never binds and DCL is NT-Xent
    torch.testing.assert_close(DebiasedInfoNCELoss(0.5, 0.0, 0.0)(z_a, z_b), InfoNCELoss(0.5)(z_a, z_b))


def test_small_temperature_is_finite_in_float32():
    # the official code exponentiates raw logits: e^{1/0.01} overflows float32; the reference shifts them
    z_a, z_b = randn(8, 16, seed=30), randn(8, 16, seed=31)
    z_b[:4] = z_a[:4]
    for beta in (0.0, 1.0):
        ref = dcl_loop(z_a, z_b, 0.01, 0.1, beta)
        out = DebiasedInfoNCELoss(0.01, 0.1, beta)(z_a.float(), z_b.float())
        assert torch.isfinite(out)
        assert out.item() == pytest.approx(ref.item(), rel=1e-5, abs=1e-4)


def test_invariances():
    z_a, z_b = randn(7, 5, seed=40), randn(7, 5, seed=41)
    perm = torch.randperm(7, generator=torch.Generator().manual_seed(0))
    for beta in (0.0, 1.0):
        loss = DebiasedInfoNCELoss(0.4, 0.1, beta)
        ref = loss(z_a, z_b)
        torch.testing.assert_close(loss(3.0 * z_a, 0.25 * z_b), ref)
        torch.testing.assert_close(loss(z_a[perm], z_b[perm]), ref)
        torch.testing.assert_close(loss(z_b, z_a), ref)  # the two views play symmetric roles


def test_reference_offset_convention():
    # rows = the second half of the batch, keys = all of it: the mean over both halves is the full loss
    z_a, z_b = randn(6, 4, seed=50), randn(6, 4, seed=51)
    a, b = torch.nn.functional.normalize(z_a, dim=1), torch.nn.functional.normalize(z_b, dim=1)
    full = debiased_info_nce_ref(a, b, temperature=0.5, tau_plus=0.1, beta=1.0)
    halves = [debiased_info_nce_ref(a[s], b[s], a, b, s.start, 0.5, 0.1, 1.0) for s in (slice(0, 3), slice(3, 6))]
    torch.testing.assert_close((halves[0] + halves[1]) / 2, full)


@pytest.mark.parametrize(
    "kwargs,key",
    [
        (dict(temperature=0.0), "temperature"),
        (dict(temperature=-0.1), "temperature"),
        (dict(tau_plus=1.0), "tau_plus"),
        (dict(tau_plus=-0.1), "tau_plus"),
        (dict(beta=-1.0), "beta"),
    ],
)
def test_bad_hyperparameters_refused(kwargs, key):
    with pytest.raises(ValueError, match=f"objective.{key}="):
        DebiasedInfoNCELoss(**kwargs)


def test_single_pair_refused():
    with pytest.raises(ValueError, match="at least 2 pairs"):
        DebiasedInfoNCELoss()(randn(1, 4), randn(1, 4, seed=1))
