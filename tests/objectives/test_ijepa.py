"""IJEPALoss against a float64 reference written from facebookresearch/ijepa ``src/train.py`` (``forward_target``:
``F.layer_norm`` over the feature axis, no affine, eps 1e-5, no gradient; ``loss_fn``: ``F.smooth_l1_loss``, β = 1,
mean over every element), with the layer norm and the smooth L1 written out. With ``valid`` the reference is the
official loss on the valid rows alone, packed."""

import pytest
import torch

from selfsup.objectives.ijepa import IJEPALoss
from tests.objectives.helpers import assert_matches, randn


def layer_norm(h):
    mean = h.mean(dim=-1, keepdim=True)
    var = ((h - mean) ** 2).mean(dim=-1, keepdim=True)  # biased
    return (h - mean) / torch.sqrt(var + 1e-5)


def official(pred, target):
    d = pred - layer_norm(target.detach())
    return torch.where(d.abs() < 1.0, 0.5 * d**2, d.abs() - 0.5).mean()


def test_matches_the_official_loss():
    pred, target = randn(3, 5, 8, seed=1), randn(3, 5, 8, seed=2, scale=4.0) + 1.0
    assert_matches(IJEPALoss(), official, pred, target, rtol=1e-12, atol=1e-14, grad_inputs=[0])


def test_target_gets_no_gradient_and_gradcheck():
    pred, target = randn(2, 3, 4, seed=3).requires_grad_(), randn(2, 3, 4, seed=4, scale=3.0).requires_grad_()
    loss = IJEPALoss()(pred, target)
    loss.backward()
    assert target.grad is None
    assert torch.autograd.gradcheck(lambda x: IJEPALoss()(x, target.detach()), (pred.detach().requires_grad_(),))


def test_valid_ignores_padded_rows():
    B, M, D = 3, 5, 6
    pred, target = randn(B, M, D, seed=5), randn(B, M, D, seed=6, scale=2.0)
    valid = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0]], dtype=torch.bool)
    expected = official(pred[valid], target[valid])  # the official loss on the packed real rows
    garbage = pred.clone()
    garbage[~valid] = float("nan")  # padded rows may hold anything
    torch.testing.assert_close(IJEPALoss()(garbage, target, valid), expected, rtol=1e-12, atol=1e-14)

    x = pred.clone().requires_grad_()
    IJEPALoss()(x, target, valid).backward()
    ref = pred.clone().requires_grad_()
    official(ref[valid], target[valid]).backward()
    torch.testing.assert_close(x.grad, ref.grad, rtol=1e-12, atol=1e-14)
    assert torch.all(x.grad[~valid] == 0)
    # all rows valid: the plain loss
    torch.testing.assert_close(IJEPALoss()(pred, target, torch.ones(B, M, dtype=torch.bool)), official(pred, target))


def test_bad_shapes_refused():
    with pytest.raises(ValueError, match="differ in shape"):
        IJEPALoss()(randn(2, 3, 4), randn(2, 3, 5))
    with pytest.raises(ValueError, match=r"valid has shape \(2, 4\), expected \(2, 3\)"):
        IJEPALoss()(randn(2, 3, 4), randn(2, 3, 4), torch.ones(2, 4, dtype=torch.bool))
