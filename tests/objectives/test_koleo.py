"""KoLeoLoss against a float64 reference written from facebookresearch/dinov2 ``dinov2/loss/koleo_loss.py``
(``KoLeoLoss.forward``: F.normalize with eps 1e-8; ``pairwise_NNs_inner``: inner products with the diagonal set to
−1, the arg max of each row; ``nn.PairwiseDistance(2, eps=1e-8)`` to that neighbour; −mean log(distance + 1e-8))."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from selfsup.objectives.koleo import KoLeoLoss
from tests.objectives.helpers import assert_matches, randn


def official(x, eps=1e-8):
    x = F.normalize(x, eps=eps, p=2, dim=-1)
    with torch.no_grad():
        dots = torch.mm(x, x.t())
        n = x.shape[0]
        dots.view(-1)[:: (n + 1)].fill_(-1)
        _, nearest = torch.max(dots, dim=1)
    distances = nn.PairwiseDistance(2, eps=1e-8)(x, x[nearest])
    return -torch.log(distances + eps).mean()


@pytest.mark.parametrize("shape", [(7, 5), (2, 3), (16, 32)])
def test_matches_the_official_loss(shape):
    assert_matches(KoLeoLoss(), official, randn(*shape, seed=shape[0], scale=3.0), rtol=1e-12, atol=1e-12)


def test_invariances_and_gradcheck():
    x = randn(6, 4, seed=1)
    loss = KoLeoLoss()(x)
    torch.testing.assert_close(KoLeoLoss()(3.7 * x), loss)  # rows are normalised
    torch.testing.assert_close(KoLeoLoss()(x[torch.randperm(6)]), loss)  # a mean over rows
    assert torch.autograd.gradcheck(KoLeoLoss(), (x.clone().requires_grad_(),))
    assert KoLeoLoss(global_batch=True)(x) == loss  # one process: the same batch


def test_duplicate_rows_are_each_others_neighbours():
    x = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    # rows 0 and 1 coincide: their distance is ‖(1e-8, 1e-8)‖ (eps inside PairwiseDistance); row 2's is sqrt(2)
    tiny = torch.tensor(2e-16, dtype=torch.float64).sqrt()
    expected = -(2 * torch.log(tiny + 1e-8) + torch.log(torch.tensor(2.0, dtype=torch.float64).sqrt() + 1e-8)) / 3
    torch.testing.assert_close(KoLeoLoss()(x), expected)


def test_bad_arguments_refused():
    with pytest.raises(ValueError, match=r"objective\.global_batch=1: expected true or false"):
        KoLeoLoss(global_batch=1)
    with pytest.raises(ValueError, match="at least 2 rows"):
        KoLeoLoss()(randn(1, 4))
    with pytest.raises(ValueError, match=r"shape \(B, D\)"):
        KoLeoLoss()(randn(2, 3, 4))
