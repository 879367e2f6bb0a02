import math

import pytest
import torch
import torch.nn.functional as F

from selfsup.objectives import NegativeCosineLoss


def byol_loop(a, b):
    """BYOL's regression loss ‖a/‖a‖ − b/‖b‖‖², averaged over pairs (google-deepmind/byol byol_experiment.py)."""
    total = 0.0
    for x, y in zip(a.tolist(), b.tolist()):
        nx, ny = math.sqrt(sum(v * v for v in x)), math.sqrt(sum(v * v for v in y))
        total += sum((u / nx - v / ny) ** 2 for u, v in zip(x, y))
    return total / len(a)


@pytest.mark.parametrize("n,d", [(1, 3), (7, 5), (32, 16)])
def test_byol_form_is_normalised_mse(n, d):
    g = torch.Generator().manual_seed(n)
    a, b = torch.randn(n, d, generator=g, dtype=torch.float64), torch.randn(n, d, generator=g, dtype=torch.float64)
    a.requires_grad_()
    loss = NegativeCosineLoss()(a, b)
    assert loss.item() == pytest.approx(byol_loop(a.detach(), b), rel=1e-12)
    loss.backward()
    ref_a = a.detach().clone().requires_grad_()
    ((F.normalize(ref_a, dim=1) - F.normalize(b, dim=1)) ** 2).sum(1).mean().backward()
    torch.testing.assert_close(a.grad, ref_a.grad, atol=1e-12, rtol=0)


def simsiam_loop(p, z):
    """SimSiam's D(p, z) = −(p/‖p‖)·(z/‖z‖), averaged over pairs (Chen & He 2021, Algorithm 1), and its gradient
    w.r.t. p by hand: −(z/‖z‖ − cos · p/‖p‖) / (‖p‖ n)."""
    n, value, grad = len(p), 0.0, []
    for x, y in zip(p.tolist(), z.tolist()):
        nx, ny = math.sqrt(sum(v * v for v in x)), math.sqrt(sum(v * v for v in y))
        cos = sum(u * v for u, v in zip(x, y)) / (nx * ny)
        value -= cos / n
        grad.append([-(v / ny - cos * u / nx) / (nx * n) for u, v in zip(x, y)])
    return value, torch.tensor(grad, dtype=torch.float64)


@pytest.mark.parametrize("n,d", [(1, 3), (9, 4), (32, 16)])
def test_simsiam_form_against_a_loop_with_its_gradient(n, d):
    g = torch.Generator().manual_seed(n)
    p, z = torch.randn(n, d, generator=g, dtype=torch.float64), torch.randn(n, d, generator=g, dtype=torch.float64)
    p.requires_grad_()
    loss = NegativeCosineLoss(offset=0.0, scale=1.0)(p, z)
    value, grad = simsiam_loop(p.detach(), z)
    assert loss.item() == pytest.approx(value, rel=1e-12)
    loss.backward()
    torch.testing.assert_close(p.grad, grad, atol=1e-12, rtol=0)
    assert NegativeCosineLoss(offset=0.0, scale=1.0)(5 * p, 0.1 * z).item() == pytest.approx(value, rel=1e-12)
    assert NegativeCosineLoss(offset=0.0, scale=1.0)(z, z).item() == pytest.approx(-1.0)


def test_bad_scale_refused():
    with pytest.raises(ValueError, match="objective.scale"):
        NegativeCosineLoss(scale=0.0)
