"""bench/collapse_probe.py's two measurements: I-JEPA's encoder init on a timm ViT (facebookresearch/ijepa
``src/models/vision_transformer.py``: a fixed sine-cosine position embedding, ``fix_init_weight``) and the share of
the token energy off the one vector common to all tokens, which is what docs/evidence.md reports."""

import math
import sys

import torch

from selfsup.config import ROOT
from selfsup.models import build_backbone
from selfsup.models.token_heads import sincos_2d

sys.path.insert(0, str(ROOT / "bench"))
from collapse_probe import constant_shares, ijepa_init  # noqa: E402


def vit():
    torch.manual_seed(0)
    return build_backbone("vit_tiny_patch16_224", img_size=16, patch_size=2, depth=2, global_pool="avg")


def test_ijepa_init_fixes_sincos_positions_and_rescales_the_residual_projections():
    before = vit()
    after = ijepa_init(vit())
    assert not after.pos_embed.requires_grad
    torch.testing.assert_close(after.pos_embed[0, 1:], sincos_2d(192, 8, 8))  # the class token's slot stays zero
    assert after.pos_embed[0, 0].abs().max() == 0
    assert abs(after.patch_embed.proj.weight.std().item() - 0.02) < 2e-3
    for layer, (b, a) in enumerate(zip(before.blocks, after.blocks), start=1):
        torch.testing.assert_close(a.mlp.fc2.weight, b.mlp.fc2.weight / math.sqrt(2.0 * layer))
        torch.testing.assert_close(a.attn.proj.weight, b.attn.proj.weight / math.sqrt(2.0 * layer))


def test_the_non_constant_share_is_zero_when_every_token_is_alike_and_large_at_random_init():
    model = vit().eval()
    x = torch.randn(16, 3, 16, 16)
    assert all(0.3 < s <= 1.0 for s in constant_shares(model, x))
    with torch.no_grad():  # every patch maps to the same vector, and the positions add nothing
        model.patch_embed.proj.weight.zero_()
        model.pos_embed.zero_()
    assert all(s < 1e-6 for s in constant_shares(model, x))
