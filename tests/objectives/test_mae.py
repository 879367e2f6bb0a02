"""MAELoss against a float64 reference written from facebookresearch/mae ``models_mae.py``
(``MaskedAutoencoderViT.patchify``: patches in row-major order, each flattened in (p, q, c) order;
``forward_loss``: with norm_pix_loss each target patch standardised by its mean and (unbiased var + 1e-6)^½, the
per-patch mean squared error, summed over the removed patches and divided by their number). The reference cuts the
patches out one by one instead of reshaping."""

import pytest
import torch

from selfsup.objectives.mae import MAELoss, patchify
from tests.objectives.helpers import assert_matches, randn


def official_patches(imgs: torch.Tensor, p: int) -> torch.Tensor:
    b, c, height, width = imgs.shape
    patches = []
    for i in range(height // p):  # row-major over the patch grid
        for j in range(width // p):
            patch = imgs[:, :, i * p : (i + 1) * p, j * p : (j + 1) * p]  # (B, C, p, q)
            patches.append(patch.permute(0, 2, 3, 1).reshape(b, p * p * c))  # (p, q, c) order
    return torch.stack(patches, dim=1)


def official_loss(imgs, pred, mask, p, norm_pix_loss):
    target = official_patches(imgs, p)
    if norm_pix_loss:
        mean = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, keepdim=True)
        target = (target - mean) / (var + 1.0e-6) ** 0.5
    loss = ((pred - target) ** 2).mean(dim=-1)
    return (loss * mask).sum() / mask.sum()


def random_mask(b, n, seed, ratio=0.6):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(b, n, generator=g) < ratio).to(torch.float64)


@pytest.mark.parametrize("norm_pix_loss", [True, False])
@pytest.mark.parametrize("shape", [(3, 3, 8, 8), (2, 1, 4, 12)], ids=["rgb square", "gray 4x12"])
def test_matches_the_official_loss(norm_pix_loss, shape):
    p = 2 if shape[1] == 3 else 4
    b, c, h, w = shape
    n = (h // p) * (w // p)
    imgs, pred = randn(*shape, seed=1), randn(b, n, p * p * c, seed=2)
    mask = random_mask(b, n, seed=3)
    loss_fn = MAELoss(p, norm_pix_loss)
    assert_matches(
        lambda i, x: loss_fn(i, x, mask),
        lambda i, x: official_loss(i, x, mask, p, norm_pix_loss),
        imgs,
        pred,
        rtol=1e-12,
        atol=1e-12,
    )
    torch.testing.assert_close(loss_fn(imgs, pred, mask.bool()), official_loss(imgs, pred, mask, p, norm_pix_loss))


def test_patchify_layout():
    imgs = torch.arange(2 * 3 * 4 * 6, dtype=torch.float64).reshape(2, 3, 4, 6)
    x = patchify(imgs, 2)
    assert x.shape == (2, 6, 12)
    torch.testing.assert_close(x, official_patches(imgs, 2), rtol=0, atol=0)
    # patch 4 is grid row 1, column 1: its value at (p=1, q=0, c=2) is pixel (2, row 3, column 2)
    assert x[0, 4, (1 * 2 + 0) * 3 + 2] == imgs[0, 2, 3, 2]


def test_gradcheck_and_unmasked_patches_get_no_gradient():
    imgs, mask = randn(2, 3, 4, 4, seed=4), random_mask(2, 4, seed=5)
    mask[0, 0], mask[1, 1] = 0.0, 1.0
    pred = randn(2, 4, 12, seed=6).requires_grad_()
    loss_fn = MAELoss(2)
    assert torch.autograd.gradcheck(lambda x: loss_fn(imgs, x, mask), (pred,))
    loss_fn(imgs, pred, mask).backward()
    assert torch.all(pred.grad[mask == 0] == 0) and torch.all(pred.grad[mask == 1].abs().sum(-1) > 0)


def test_no_masked_patch_gives_zero_not_nan():
    imgs, pred = randn(2, 3, 4, 4, seed=7), randn(2, 4, 12, seed=8).requires_grad_()
    loss = MAELoss(2)(imgs, pred, torch.zeros(2, 4))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.all(pred.grad == 0)


def test_bad_arguments_refused():
    with pytest.raises(ValueError, match=r"objective\.patch_size=0: expected a positive integer"):
        MAELoss(0)
    with pytest.raises(ValueError, match=r"objective\.norm_pix_loss='yes'"):
        MAELoss(16, norm_pix_loss="yes")
    with pytest.raises(ValueError, match="not divisible by patch_size=3"):
        MAELoss(3)(randn(1, 3, 4, 4), randn(1, 1, 27), torch.ones(1, 1))
    with pytest.raises(ValueError, match=r"pred has shape \(1, 4, 10\), expected \(1, 4, 12\)"):
        MAELoss(2)(randn(1, 3, 4, 4), randn(1, 4, 10), torch.ones(1, 4))
    with pytest.raises(ValueError, match="mask has shape"):
        MAELoss(2)(randn(1, 3, 4, 4), randn(1, 4, 12), torch.ones(1, 3))
