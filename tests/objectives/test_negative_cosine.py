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


def test_simsiam_form_and_invariances():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(9, 4, generator=g, dtype=torch.float64), torch.randn(9, 4, generator=g, dtype=torch.float64)
    loss = NegativeCosineLoss(offset=0.0, scale=1.0)
    expected = -F.cosine_similarity(a, b).mean()
    torch.testing.assert_close(loss(a, b), expected)
    torch.testing.assert_close(loss(5 * a, 0.1 * b), expected)
    assert loss(a, a).item() == pytest.approx(-1.0)


def test_bad_scale_refused():
    with pytest.raises(ValueError, match="objective.scale"):
        NegativeCosineLoss(scale=0.0)
