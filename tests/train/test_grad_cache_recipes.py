"""Every recipe with ``grad_cache_chunks=2``: two steps in two chunks give the loss and gradients of the same steps
on the whole batch, or the run is refused at start in one line that says why (train/grad_cache.py).

The comparison runs each recipe's own parts — views, backbone, heads, target, objective — in float64, on the shrunk
recipe of tests/train/test_recipe_losses.py, with BatchNorm taken out and dropout/drop-path rates at 0: BatchNorm
normalises each chunk with its own statistics and a stochastic layer draws its masks per chunk, so with them the
chunked step is a different (valid) step, not the same one.
"""

import copy

import pytest
import torch
from torch import nn

from selfsup.train import build
from selfsup.train.grad_cache import grad_cache_backward
from tests.config_utils import compose_train
from tests.train.test_recipe_losses import RECIPES, shrunk

LR = 0.05


def deterministic(module: nn.Module) -> nn.Module:
    """``module`` with every BatchNorm replaced by the identity and every dropout and drop-path rate set to 0."""
    from timm.layers import DropPath

    for name, child in list(module.named_children()):
        if isinstance(child, nn.modules.batchnorm._BatchNorm):
            setattr(module, name, nn.Identity())
        elif isinstance(child, nn.modules.dropout._DropoutNd):
            child.p = 0.0  # kept: timm's attention reads attn_drop.p
        elif isinstance(child, DropPath):
            child.drop_prob = 0.0
        else:
            deterministic(child)
    return module


def step(module, batch: dict, chunks: int | None) -> tuple[float, dict]:
    """One step's loss and parameter gradients — on the whole batch, or in ``chunks`` with gradient caching — then a
    plain SGD update and the target's update, as the next step starts from."""
    module.zero_grad(set_to_none=True)
    if chunks is None:
        loss = module.objective.forward_views(module.step_outputs(batch))
        loss.backward()
    else:
        loss, _ = grad_cache_backward(module, batch, chunks, lambda loss, whole: loss.backward())
    grads = {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}
    with torch.no_grad():
        for p in module.parameters():
            if p.grad is not None:
                p -= LR * p.grad
    module.target.step(module.backbone, module.projector, 1, 10)
    return loss.item(), grads


@pytest.mark.slow
@pytest.mark.parametrize("recipe", RECIPES)
def test_two_chunks_equal_the_whole_batch_or_are_refused_in_one_line(recipe, tmp_path, cifar10_root):
    overrides = [*shrunk(recipe, tmp_path, cifar10_root), "online_probe=false", "grad_cache_chunks=2"]
    try:
        datamodule, module, _ = build(compose_train(overrides, tmp_path / "run"))
    except ValueError as refused:
        message = str(refused)
        assert "\n" not in message and "not supported" in message
        # the shrunk recipes run on one process without accumulation or clipping: only a memory part or masks
        assert message.startswith(
            ("grad_cache_chunks=2 with memory=selfsup.train.memory.", "grad_cache_chunks=2 with mask=")
        ), message
        return
    torch.manual_seed(0)
    chunked = deterministic(module).double().train()
    whole = copy.deepcopy(chunked)
    loader = iter(datamodule.train_dataloader())
    for n in range(2):
        batch = next(loader)
        batch = {**batch, "views": [v.double() for v in batch["views"]]}
        assert batch["views"][0].shape[0] % 2 == 0
        expected_loss, expected = step(whole, batch, None)
        loss, got = step(chunked, batch, 2)
        assert loss == pytest.approx(expected_loss, rel=1e-10), f"step {n}"
        assert got.keys() == expected.keys() and got, f"step {n}"
        # atol relative to the largest gradient: some are 0 but for round-off (a bias before Barlow Twins'
        # standardisation), and timm resamples a ViT's position embedding in float32 (resample_abs_pos_embed)
        scale = max(g.abs().max().item() for g in expected.values())
        for name in expected:
            torch.testing.assert_close(
                got[name],
                expected[name],
                rtol=1e-8,
                atol=1e-8 * scale,
                msg=lambda m, n=n, name=name: f"step {n}: {name}: {m}",
            )
