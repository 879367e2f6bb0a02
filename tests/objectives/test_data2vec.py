"""Data2VecLoss against a float64 reference written from facebookresearch/fairseq
``examples/data2vec/models/data2vec_vision.py::Data2VecVisionModel.forward`` (targets under no_grad: the last
``average_top_k_layers`` block outputs; per layer instance norm over the tokens, then layer norm; their average; then
layer norm / instance norm of the average; the masked positions; the loss ``F.mse_loss`` (β = 0) or
``F.smooth_l1_loss(β)`` without reduction, summed over the features, times ``loss_scale`` (None: 1/sqrt(D));
``ModelCriterion`` + ``Trainer.train_step`` divide the sum by the number of masked positions), with the norms and the
losses written out."""

import math

import pytest
import torch

from selfsup.objectives.data2vec import Data2VecLoss
from tests.objectives.helpers import randn

B, L, D = 3, 5, 6
MASK = torch.tensor([[1, 0, 1, 1, 0], [0, 0, 0, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)


def instance_norm(y):  # per sample and channel over the tokens, biased variance, eps 1e-5
    mean = y.mean(dim=1, keepdim=True)
    return (y - mean) / torch.sqrt(((y - mean) ** 2).mean(dim=1, keepdim=True) + 1e-5)


def layer_norm(y):  # per token over the features
    mean = y.mean(dim=-1, keepdim=True)
    return (y - mean) / torch.sqrt(((y - mean) ** 2).mean(dim=-1, keepdim=True) + 1e-5)


def official_targets(layers, k, in_layer, ln_layer, ln_final, in_final):
    y = [t.detach() for t in layers[-k:]]
    if in_layer:
        y = [instance_norm(t) for t in y]
    if ln_layer:
        y = [layer_norm(t) for t in y]
    y = sum(y) / len(y)
    if ln_final:
        y = layer_norm(y)
    if in_final:
        y = instance_norm(y)
    return y


def official(
    pred, layers, mask, k=6, in_layer=False, ln_layer=False, ln_final=True, in_final=False, beta=2.0, scale=None
):
    y = official_targets(layers, k, in_layer, ln_layer, ln_final, in_final)[mask]
    x = pred[mask]
    d = x - y
    if beta == 0:
        loss = (d**2).sum(dim=-1)
    else:
        loss = torch.where(d.abs() < beta, 0.5 * d**2 / beta, d.abs() - 0.5 * beta).sum(dim=-1)
    loss = loss * (scale if scale is not None else 1 / math.sqrt(D))
    return loss.sum() / loss.numel()


SETTINGS = {
    "d2v1 image recipe (defaults)": {},
    "paper vision: layer norm per block": dict(ln_layer=True, ln_final=False),
    "speech style: instance norm per block, l2, K=2": dict(k=2, in_layer=True, ln_final=False, beta=0.0),
    "everything, scale 0.5, beta 0.3": dict(k=3, in_layer=True, ln_layer=True, in_final=True, beta=0.3, scale=0.5),
}


def build(k=6, in_layer=False, ln_layer=False, ln_final=True, in_final=False, beta=2.0, scale=None):
    return Data2VecLoss(
        top_k=k,
        instance_norm_target_layer=in_layer,
        layer_norm_targets=ln_final,
        beta=beta,
        scale=scale,
        layer_norm_target_layer=ln_layer,
        instance_norm_targets=in_final,
    )


@pytest.mark.parametrize("setting", list(SETTINGS))
def test_matches_the_official_loss(setting):
    kwargs = SETTINGS[setting]
    layers = [randn(B, L, D, seed=10 + i, scale=1.0 + i) + i for i in range(7)]  # one more block than K=6
    pred = randn(B, L, D, seed=1, scale=1.5)
    x, ref = pred.clone().requires_grad_(), pred.clone().requires_grad_()
    got, expected = build(**kwargs)(x, layers, MASK), official(ref, layers, MASK, **kwargs)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-13)
    got.backward()
    expected.backward()
    torch.testing.assert_close(x.grad, ref.grad, rtol=1e-12, atol=1e-14)
    assert torch.all(x.grad[~MASK] == 0)


def test_targets_use_the_last_top_k_blocks_without_gradient():
    layers = [randn(B, L, D, seed=30 + i).requires_grad_() for i in range(4)]
    loss_fn = Data2VecLoss(top_k=2, instance_norm_target_layer=True)
    y = loss_fn.targets(layers)
    assert not y.requires_grad
    torch.testing.assert_close(y, official_targets(layers, 2, True, False, True, False), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(y, loss_fn.targets(layers[-2:]))
    loss_fn(randn(B, L, D, seed=40), layers, MASK)  # no error from backward-less use
    assert all(t.grad is None for t in layers)


def test_gradcheck_and_defaults():
    layers = [randn(2, 4, 3, seed=50 + i) for i in range(6)]
    mask = torch.tensor([[1, 0, 1, 0], [0, 1, 1, 1]], dtype=torch.bool)
    loss_fn = Data2VecLoss()
    assert (loss_fn.top_k, loss_fn.beta, loss_fn.scale, loss_fn.layer_norm_targets) == (6, 2.0, None, True)
    assert not (loss_fn.instance_norm_target_layer or loss_fn.layer_norm_target_layer or loss_fn.instance_norm_targets)
    pred = randn(2, 4, 3, seed=60, scale=3.0).requires_grad_()  # some errors beyond β: both branches
    assert torch.autograd.gradcheck(lambda x: loss_fn(x, layers, mask), (pred,))


def test_no_masked_position_gives_zero():
    layers = [randn(B, L, D, seed=70 + i) for i in range(6)]
    pred = randn(B, L, D, seed=71).requires_grad_()
    loss = Data2VecLoss()(pred, layers, torch.zeros(B, L, dtype=torch.bool))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.all(pred.grad == 0)


def test_bad_arguments_refused():
    for kwargs, match in (
        (dict(top_k=0), r"objective\.top_k=0: expected a positive integer"),
        (dict(beta=-1.0), r"objective\.beta=-1\.0"),
        (dict(scale=0.0), r"objective\.scale=0\.0: expected a number > 0 or null"),
        (dict(layer_norm_targets="yes"), r"objective\.layer_norm_targets='yes'"),
        (dict(instance_norm_target_layer=1), r"objective\.instance_norm_target_layer=1"),
    ):
        with pytest.raises(ValueError, match=match):
            Data2VecLoss(**kwargs)
    layers = [randn(B, L, D, seed=i) for i in range(3)]
    with pytest.raises(ValueError, match="top_k=6 needs at least 6 blocks, got 3"):
        Data2VecLoss()(randn(B, L, D), layers, MASK)
    with pytest.raises(ValueError, match="expected pred"):
        Data2VecLoss(top_k=3)(randn(B, L, D + 1), layers, MASK)
