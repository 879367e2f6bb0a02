"""Token-level encoding and the heads over tokens (selfsup.models.tokens, token_heads; docs/tokens.md): without a
mask the encoder is the backbone bit for bit; padding a batch of unequal token sets changes no sample's outputs; the
MAE decoder puts every token where MAE's unshuffle does; the position embedding is MAE's formula."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from selfsup.models import build_backbone
from selfsup.models.token_heads import JEPAPredictor, MAEDecoder, TokenLinear, sincos_2d, target_tokens
from selfsup.models.tokens import encode, positions_of


@pytest.fixture(scope="module")
def vit():
    torch.manual_seed(0)
    return build_backbone("vit_tiny_patch16_224", img_size=16, patch_size=4, dynamic_img_size=True).double().eval()


def images(b=3, size=16):
    return torch.randn(b, 3, size, size, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


@pytest.mark.parametrize("pool", ["token", "avg"])
def test_without_a_mask_the_pooled_features_are_the_backbones(pool):
    torch.manual_seed(0)
    vit = build_backbone("vit_tiny_patch16_224", img_size=16, patch_size=4, global_pool=pool).eval()
    x = images().float()
    t = encode(vit, x, blocks=[-1])
    assert torch.equal(t.pooled, vit(x))
    assert t.patches.shape == (3, 16, 192) and t.positions is None and t.valid is None
    assert len(t.hidden) == 1 and t.hidden[0].shape == (3, 16, 192)


def test_hidden_blocks_are_the_residual_stream(vit):
    x = images()
    t = encode(vit, x, blocks=[0, -1])
    outs = vit.forward_intermediates(
        x, indices=[0, len(vit.blocks) - 1], norm=False, output_fmt="NLC", intermediates_only=True
    )
    for mine, timm_out in zip(t.hidden, outs):
        torch.testing.assert_close(mine, timm_out.flatten(1, 2) if timm_out.dim() == 4 else timm_out, rtol=0, atol=0)


def test_kept_tokens_padded_in_a_batch_equal_each_sample_alone(vit):
    x = images(4)
    keep = torch.rand(4, 16, generator=torch.Generator().manual_seed(2)) < 0.5
    keep[0] = True  # one full sample, one with a single token
    keep[1] = False
    keep[1, 5] = True
    t = encode(vit, x, keep=keep)
    assert torch.equal(t.valid.sum(1), keep.sum(1))
    for b in range(4):
        alone = encode(vit, x[b : b + 1], keep=keep[b : b + 1])
        n = int(keep[b].sum())
        torch.testing.assert_close(t.patches[b, :n], alone.patches[0], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(t.pooled[b], alone.pooled[0], rtol=1e-12, atol=1e-12)
        assert torch.equal(t.positions[b, :n], torch.nonzero(keep[b]).flatten())


def test_kept_tokens_are_the_full_encoders_tokens_when_attention_sees_only_them(vit):
    """Keeping every token is the plain encoder; keeping a subset is the encoder on those patches' embeddings
    (position embedding added before the cut, as MAE's forward_encoder)."""
    x = images()
    full = encode(vit, x)
    torch.testing.assert_close(encode(vit, x, keep=torch.ones(3, 16, dtype=torch.bool)).patches, full.patches)


def test_replace_puts_the_mask_token_before_the_position_embedding(vit):
    x = images()
    replace = torch.zeros(3, 16, dtype=torch.bool)
    replace[:, 3] = True
    token = torch.randn(1, 1, 192, dtype=torch.float64)
    t = encode(vit, x, replace=replace, mask_token=token)
    # the reference: patch embeddings with row 3 swapped, then timm's own forward
    h = vit.patch_embed(x)
    h = h.reshape(3, 16, 192).clone()
    h[:, 3] = token[0, 0]
    h = h.reshape(3, 4, 4, 192)
    ref = vit.norm(vit.blocks(vit.norm_pre(vit._pos_embed(h))))
    torch.testing.assert_close(t.patches, ref[:, 1:], rtol=0, atol=0)


def test_positions_of_pads_with_invalid_zeros():
    mask = torch.tensor([[0, 1, 0, 1], [1, 1, 1, 0], [0, 0, 0, 0]], dtype=torch.bool)
    pos, valid = positions_of(mask)
    assert pos.tolist() == [[1, 3, 0], [0, 1, 2], [0, 0, 0]]
    assert valid.tolist() == [[True, True, False], [True, True, True], [False, False, False]]


def mae_sincos_reference(dim: int, size: int) -> np.ndarray:
    """facebookresearch/mae util/pos_embed.py get_2d_sincos_pos_embed (square grid, no class token), re-derived:
    grid = meshgrid(w, h); the first half of the channels from grid[0] (the column), the second from grid[1]."""

    def one_d(d, pos):
        omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float64) / (d / 2.0))
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    gw, gh = np.meshgrid(np.arange(size, dtype=np.float64), np.arange(size, dtype=np.float64))
    return np.concatenate([one_d(dim // 2, gw), one_d(dim // 2, gh)], axis=1)


def test_sincos_matches_maes_formula():
    np.testing.assert_allclose(sincos_2d(32, 5, 5).numpy(), mae_sincos_reference(32, 5), rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="token_head.dim=30"):
        sincos_2d(30, 2, 2)


def test_mae_decoder_places_tokens_as_maes_unshuffle(vit):
    torch.manual_seed(0)
    dec = MAEDecoder(192, patch_size=4, dim=32, depth=2, heads=4).double().eval()
    x = images()
    noise = torch.rand(3, 16, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    ids_shuffle = torch.argsort(noise, dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    keep = torch.zeros(3, 16, dtype=torch.bool)
    keep.scatter_(1, ids_shuffle[:, :4], True)
    t = encode(vit, x, keep=keep)
    out = dec(t, {"mask": ~keep}, (4, 4))
    # MAE's forward_decoder: kept tokens in shuffled order, mask tokens appended, unshuffled with ids_restore
    kept_sorted = t.patches  # ascending positions; MAE's order is ids_shuffle[:, :4]
    order = torch.argsort(torch.argsort(ids_shuffle[:, :4], dim=1), dim=1)
    shuffled = kept_sorted.gather(1, order[..., None].expand(-1, -1, 192))
    y = dec.embed(shuffled)
    y = torch.cat([y, dec.mask_token.expand(3, 12, -1)], dim=1)
    y = y.gather(1, ids_restore[..., None].expand(-1, -1, 32))
    # the class token is appended in front; decoder_pos_embed has a zero row for it (cls_token=True)
    y = torch.cat([dec.embed(t.prefix), y], dim=1)
    y = y + torch.cat([torch.zeros(1, 32, dtype=torch.float64), sincos_2d(32, 4, 4).double()])
    ref = dec.proj(dec.run(y, None))[:, 1:]  # the class token's prediction is dropped
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    assert out.shape == (3, 16, 4 * 4 * 3)
    # so the encoder's final class token is trained by the pixel loss (what MAE's linear probe reads)
    cls = t.prefix.detach().requires_grad_()
    grad = torch.autograd.grad(dec(replace(t, prefix=cls), {"mask": ~keep}, (4, 4)).square().sum(), cls)[0]
    assert bool((grad.abs().sum(-1) > 0).all())


@pytest.fixture(scope="module")
def ijepa_vit():
    """I-JEPA's ViT (facebookresearch/ijepa src/models/vision_transformer.py): no class token, the last LayerNorm
    on every output token, features the mean of the normalised patch tokens."""
    torch.manual_seed(0)
    vit = build_backbone(
        "vit_tiny_patch16_224", img_size=16, patch_size=4, global_pool="avg", class_token=False, fc_norm=False
    )
    return vit.double().eval()


def test_ijepa_vit_normalises_every_token_and_pools_them_padded_or_not(ijepa_vit):
    vit, x = ijepa_vit, images(2)
    assert vit.num_prefix_tokens == 0
    t = encode(vit, x)
    assert t.prefix.shape == (2, 0, 192)
    raw = vit.blocks(vit.norm_pre(vit._pos_embed(vit.patch_embed(x))))
    torch.testing.assert_close(
        t.patches, torch.nn.functional.layer_norm(raw, (192,), vit.norm.weight, vit.norm.bias, 1e-6)
    )
    torch.testing.assert_close(t.pooled, t.patches.mean(1), rtol=0, atol=0)
    torch.testing.assert_close(t.pooled, vit(x))
    keep = torch.zeros(2, 16, dtype=torch.bool)
    keep[0, :10], keep[1, 3:6] = True, True
    padded = encode(vit, x, keep=keep)
    for b in range(2):
        alone = encode(vit, x[b : b + 1], keep=keep[b : b + 1])
        torch.testing.assert_close(padded.pooled[b], alone.pooled[0], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(alone.pooled[0], alone.patches[0].mean(0), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("encoder", ["vit", "ijepa_vit"])
def test_jepa_predictor_padded_equals_each_sample_alone(encoder, request):
    vit = request.getfixturevalue(encoder)
    torch.manual_seed(0)
    pred = JEPAPredictor(192, dim=32, depth=2, heads=4).double().eval()
    x = images(2)
    context = torch.zeros(2, 16, dtype=torch.bool)
    context[0, :10] = True
    context[1, 4:9] = True
    targets = torch.zeros(2, 2, 16, dtype=torch.bool)
    targets[0, 0, 10:12] = True
    targets[0, 1, 12:16] = True
    targets[1, 0, :3] = True
    targets[1, 1, 10:11] = True
    t = encode(vit, x, keep=context)
    out = pred(t, {"context": context, "targets": targets}, (4, 4))
    assert out.shape == (2, 2, 4, 192)
    for b in range(2):
        alone = pred(encode(vit, x[b : b + 1], keep=context[b : b + 1]), {"targets": targets[b : b + 1]}, (4, 4))
        for k in range(2):
            m = int(targets[b, k].sum())
            torch.testing.assert_close(out[b, k, :m], alone[0, k, :m], rtol=1e-10, atol=1e-10)
    # the targets are the teacher's tokens at the same positions, in the same order
    teacher = encode(vit, x)
    pos, _ = positions_of(targets.reshape(4, 16))
    picked = target_tokens(teacher, pos.reshape(2, 2, -1))
    assert torch.equal(picked[0, 1, :4], teacher.patches[0, 12:16])


def test_each_token_head_starts_as_its_official_code():
    """I-JEPA's predictor: linear weights truncated-normal of std 0.02 (facebookresearch/ijepa
    ``src/models/vision_transformer.py``, ``VisionTransformerPredictor._init_weights``), the residual projections
    divided by sqrt(2·layer) (``fix_init_weight``); MAE's decoder: Xavier-uniform (facebookresearch/mae
    ``models_mae.py``, ``_init_weights``). Biases zero in both."""
    torch.manual_seed(0)
    pred = JEPAPredictor(192, dim=384, depth=3, heads=4)
    assert abs(pred.embed.weight.std().item() - 0.02) < 1e-3 and pred.embed.weight.abs().max() < 0.1
    for layer, block in enumerate(pred.blocks, start=1):
        assert abs(block.attn.qkv.weight.std().item() - 0.02) < 1e-3
        for w in (block.attn.proj.weight, block.mlp.fc2.weight):
            assert abs(w.std().item() * math.sqrt(2.0 * layer) - 0.02) < 1e-3
    dec = MAEDecoder(192, patch_size=4, dim=384, depth=1, heads=4)
    bound = math.sqrt(6.0 / (192 + 384))  # xavier_uniform_ of the (384, 192) embedding
    assert dec.embed.weight.abs().max() <= bound and dec.embed.weight.abs().max() > 0.95 * bound
    for head in (pred, dec):
        assert all(m.bias.abs().max() == 0 for m in head.modules() if isinstance(m, torch.nn.Linear))


def test_token_linear_maps_every_token(vit):
    head = TokenLinear(192, 7).double()
    t = encode(vit, images())
    assert head(t, {}, (4, 4)).shape == (3, 16, 7)
