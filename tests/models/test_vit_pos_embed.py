"""The ViT backbone on multi-crop's small views uses timm's interpolated position embedding, not a crop of it
(issue 28): conf/backbone/vit_tiny_cifar.yaml (ViT-Ti, 4 px patches at 32 px: an 8x8 grid, dynamic_img_size) given
16 px (a 4x4 grid) and 24 px (6x6) inputs.

The reference is a forward written here in float64 from timm's ``VisionTransformer`` (patch projection → [cls; patch
tokens] + ``timm.layers.resample_abs_pos_embed(pos_embed, new_size, old_size=(8, 8), num_prefix_tokens=1)`` →
blocks → norm → the cls token): the tokens that enter the blocks and the output features must equal it.
"""

import pathlib

import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import OmegaConf
from timm.layers import resample_abs_pos_embed

CONFIG = pathlib.Path(__file__).resolve().parents[2] / "conf" / "backbone" / "vit_tiny_cifar.yaml"
PATCH, GRID = 4, 8  # the config's patch size and its 32 px grid


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Intra-op threads on a loaded 2-core machine cost more than they save at these sizes."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def vit(one_thread):
    torch.manual_seed(0)
    model = instantiate(OmegaConf.load(CONFIG)).double().eval()
    with torch.no_grad():  # a trained-size position embedding (timm initialises it at std 0.02): a wrong one shows
        model.pos_embed.normal_(0.0, 1.0, generator=torch.Generator().manual_seed(1))
    return model


def expected_pos_embed(model, side: int) -> torch.Tensor:
    grid = side // PATCH
    return resample_abs_pos_embed(model.pos_embed, new_size=(grid, grid), old_size=(GRID, GRID), num_prefix_tokens=1)


def patch_tokens(model, x: torch.Tensor) -> torch.Tensor:
    proj = model.patch_embed.proj
    return F.conv2d(x, proj.weight, proj.bias, stride=PATCH).flatten(2).transpose(1, 2)  # (B, h·w, C)


def reference_features(model, x: torch.Tensor) -> torch.Tensor:
    tokens = patch_tokens(model, x)
    cls = model.cls_token.expand(x.shape[0], -1, -1)
    tokens = torch.cat([cls, tokens], dim=1) + expected_pos_embed(model, x.shape[-1])
    for block in model.blocks:
        tokens = block(tokens)
    return model.norm(tokens)[:, 0]  # global_pool="token"


def test_config_is_the_documented_vit(vit):
    assert vit.patch_embed.patch_size == (PATCH, PATCH) and tuple(vit.patch_embed.grid_size) == (GRID, GRID)
    assert vit.pos_embed.shape == (1, 1 + GRID * GRID, vit.num_features)
    assert vit.global_pool == "token" and vit.num_prefix_tokens == 1 and not vit.no_embed_class


@pytest.mark.parametrize("side", [16, 24, 32])
def test_position_embedding_used_is_timms_resampled_one(vit, side):
    x = torch.randn(2, 3, side, side, dtype=torch.float64, generator=torch.Generator().manual_seed(side))
    seen = {}
    hook = vit.pos_drop.register_forward_hook(lambda module, args, out: seen.setdefault("tokens", args[0].detach()))
    try:
        with torch.no_grad():
            features = vit(x)
    finally:
        hook.remove()
    with torch.no_grad():
        want_pos = expected_pos_embed(vit, side)
        used_pos = seen["tokens"] - torch.cat([vit.cls_token.expand(2, -1, -1), patch_tokens(vit, x)], dim=1)
        torch.testing.assert_close(used_pos, want_pos.expand_as(used_pos), rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(features, reference_features(vit, x), rtol=1e-9, atol=1e-9)
    assert features.shape == (2, vit.num_features)
    if side == GRID * PATCH:  # the native size: the stored embedding itself
        torch.testing.assert_close(want_pos, vit.pos_embed, rtol=0, atol=1e-12)
    else:  # the premise of the test: interpolating differs from cropping the stored grid
        grid = side // PATCH
        cropped = vit.pos_embed[:, 1:].reshape(1, GRID, GRID, -1)[:, :grid, :grid].reshape(1, grid * grid, -1)
        assert (want_pos[:, 1:] - cropped).abs().max() > 0.1
