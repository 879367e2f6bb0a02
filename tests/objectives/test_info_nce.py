import math

import pytest
import torch

from selfsup.objectives import InfoNCELoss
from tests.distributed_utils import run_distributed


def nt_xent_loop(z_a, z_b, t):
    """NT-Xent written anchor by anchor from the SimCLR paper (Eq. 1), float64."""
    z = torch.nn.functional.normalize(torch.cat([z_a, z_b]), dim=1)
    n2 = z.shape[0]
    n = n2 // 2
    total = 0.0
    for i in range(n2):
        j = (i + n) % n2
        denom = sum(math.exp(float(z[i] @ z[k]) / t) for k in range(n2) if k != i)
        total += -float(z[i] @ z[j]) / t + math.log(denom)
    return total / n2


def cross_loop(z_a, z_b, t):
    a = torch.nn.functional.normalize(z_a, dim=1)
    b = torch.nn.functional.normalize(z_b, dim=1)
    n = a.shape[0]

    def ce(x, y):
        return (
            sum(
                -float(x[i] @ y[i]) / t + math.log(sum(math.exp(float(x[i] @ y[k]) / t) for k in range(n)))
                for i in range(n)
            )
            / n
        )

    return 0.5 * (ce(a, b) + ce(b, a))


@pytest.mark.parametrize("n,d,t", [(1, 3, 0.5), (5, 7, 0.1), (16, 4, 1.0)])
def test_matches_paper_formula(n, d, t):
    g = torch.Generator().manual_seed(n * d)
    z_a, z_b = torch.randn(n, d, generator=g, dtype=torch.float64), torch.randn(n, d, generator=g, dtype=torch.float64)
    assert InfoNCELoss(t)(z_a, z_b).item() == pytest.approx(nt_xent_loop(z_a, z_b, t), rel=1e-12)
    assert InfoNCELoss(t, "cross")(z_a, z_b).item() == pytest.approx(cross_loop(z_a, z_b, t), rel=1e-12)


def test_scale_and_permutation_invariance():
    g = torch.Generator().manual_seed(0)
    z_a, z_b = torch.randn(9, 5, generator=g, dtype=torch.float64), torch.randn(9, 5, generator=g, dtype=torch.float64)
    perm = torch.randperm(9, generator=g)
    for loss in (InfoNCELoss(0.2), InfoNCELoss(0.2, "cross")):
        ref = loss(z_a, z_b)
        torch.testing.assert_close(loss(3.0 * z_a, 0.5 * z_b), ref)
        torch.testing.assert_close(loss(z_a[perm], z_b[perm]), ref)


def test_perfect_alignment_gives_low_loss():
    z = torch.eye(8, dtype=torch.float64)
    assert InfoNCELoss(0.05)(z, z) < 1e-6 + InfoNCELoss(0.05)(z, z.roll(1, 0))


@pytest.mark.parametrize("kwargs", [dict(temperature=0.0), dict(temperature=-1), dict(negatives="some")])
def test_bad_hyperparameters_refused(kwargs):
    with pytest.raises(ValueError, match="objective"):
        InfoNCELoss(**kwargs)


def _ddp_loss_and_grad(rank, world, z_a, z_b, negatives):
    n = z_a.shape[0] // world
    a = z_a[rank * n : (rank + 1) * n].clone().requires_grad_()
    b = z_b[rank * n : (rank + 1) * n].clone().requires_grad_()
    loss = InfoNCELoss(0.3, negatives)(a, b)
    loss.backward()
    return loss.detach(), a.grad, b.grad


@pytest.mark.ddp
@pytest.mark.parametrize("negatives", ["all", "cross"])
def test_two_processes_equal_one(negatives):
    g = torch.Generator().manual_seed(1)
    z_a, z_b = torch.randn(6, 4, generator=g, dtype=torch.float64), torch.randn(6, 4, generator=g, dtype=torch.float64)
    ref_a, ref_b = z_a.clone().requires_grad_(), z_b.clone().requires_grad_()
    ref = InfoNCELoss(0.3, negatives)(ref_a, ref_b)
    ref.backward()
    out = run_distributed(_ddp_loss_and_grad, 2, z_a, z_b, negatives)
    assert torch.stack([o[0] for o in out]).mean().item() == pytest.approx(ref.item(), abs=1e-12)
    torch.testing.assert_close(torch.cat([o[1] for o in out]), 2 * ref_a.grad, atol=1e-12, rtol=0)
    torch.testing.assert_close(torch.cat([o[2] for o in out]), 2 * ref_b.grad, atol=1e-12, rtol=0)
