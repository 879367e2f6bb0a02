"""Token-level encoding of a timm vision transformer, for masked and predictive methods (docs/tokens.md).

:func:`encode` runs a timm ``VisionTransformer`` the way ``forward_features`` + ``forward_head`` does — the same
operations in the same order, so that without a mask its ``pooled`` output equals ``backbone(x)`` bit for bit — and
returns a :class:`Tokens` record: the pooled features, the patch tokens, and the outputs of chosen blocks. Two ways
to hide patches, as the mask part declares (``selfsup.data.masks``, ``apply``):

- ``keep`` (``apply="drop"``, MAE and I-JEPA): only the kept patches enter the encoder, after their position
  embedding is added (facebookresearch/mae ``models_mae.py``, ``forward_encoder``: pos-embed, then
  ``random_masking``). Samples may keep different numbers of patches (I-JEPA's context): the kept patches are
  padded to the batch's largest count and the padding is hidden from attention by an additive mask; ``valid`` says
  which rows are real.
- ``replace`` (``apply="token"``, BEiT, data2vec, iBOT, GMML): the embeddings of masked patches are replaced by a
  learned mask token before the position embedding (facebookresearch/dinov2 ``dinov2/models/vision_transformer.py``,
  ``prepare_tokens_with_masks``).

Kept patches are taken in ascending grid position; attention does not depend on token order, so this is MAE's
shuffled order up to rounding.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from selfsup.runtime.compat import vit_pos_embed


@dataclass
class Tokens:
    """One view encoded at token level.

    Attributes:
        pooled: (B, F) the backbone's features (what ``backbone(x)`` returns without a mask).
        patches: (B, T, D) patch tokens after the final norm: all L grid positions, or the kept ones (``positions``).
        positions: (B, T) grid position (row-major) of each token in ``patches``; None: all L in order.
        valid: (B, T) False where a row of ``patches`` is padding; None: all real.
        hidden: outputs of the requested blocks (residual stream, patch tokens only, before the final norm), in
            block order.
        projected: (B, T, K) the head applied to ``patches`` (iBOT's patch head), when asked for.
        prefix: (B, P, D) the class (and register) tokens after the final norm; (B, 0, D) for a ViT without them.
    """

    pooled: torch.Tensor
    patches: torch.Tensor
    positions: torch.Tensor | None = None
    valid: torch.Tensor | None = None
    hidden: list[torch.Tensor] = field(default_factory=list)
    projected: torch.Tensor | None = None
    prefix: torch.Tensor | None = None


def is_vit(backbone: nn.Module) -> bool:
    """Whether ``backbone`` is a timm vision transformer (the backbones :func:`encode` takes)."""
    return isinstance(backbone, VisionTransformer)


def patch_size(backbone: nn.Module) -> int | None:
    """The patch side length of a timm vision transformer; None for any other backbone."""
    return int(backbone.patch_embed.patch_size[0]) if is_vit(backbone) else None


def positions_of(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The True positions of each row of a (B, L) bool mask in ascending order, padded to the largest count:
    ``(positions (B, T), valid (B, T))``; padding points at position 0 with ``valid`` False."""
    counts = mask.sum(1)
    width = int(counts.max()) if mask.numel() else 0
    order = torch.argsort((~mask).to(torch.int8), dim=1, stable=True)[:, :width]  # True positions first, in order
    valid = torch.arange(width, device=mask.device)[None] < counts[:, None]
    return torch.where(valid, order, torch.zeros_like(order)), valid


def gather_tokens(x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Rows ``positions`` (B, T) of each sample of ``x`` (B, L, D) → (B, T, D)."""
    return x.gather(1, positions[..., None].expand(-1, -1, x.shape[-1]))


def key_padding_bias(valid: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """An additive attention mask (B, 1, 1, T) that hides the keys where ``valid`` (B, T) is False."""
    bias = torch.zeros(valid.shape, dtype=dtype, device=valid.device).masked_fill(~valid, float("-inf"))
    return bias[:, None, None, :]


def encode(
    vit: VisionTransformer,
    x: torch.Tensor,
    keep: torch.Tensor | None = None,
    replace: torch.Tensor | None = None,
    mask_token: torch.Tensor | None = None,
    blocks: Sequence[int] = (),
) -> Tokens:
    """Encode images ``x`` (B, C, H, W) with ``vit`` at token level (module docstring).

    Args:
        keep: (B, L) bool, True = the patch enters the encoder (``apply="drop"``); None: all of them.
        replace: (B, L) bool, True = the patch's embedding is replaced by ``mask_token`` (``apply="token"``).
        mask_token: (1, 1, D) the learned mask token (with ``replace``).
        blocks: indices of the blocks whose outputs go to ``Tokens.hidden`` (negative: from the end).
    """
    depth = len(vit.blocks)
    wanted = sorted({b % depth for b in blocks})
    prefix = vit.num_prefix_tokens
    h = vit.patch_embed(x)  # (B, L, D), or (B, gh, gw, D) with dynamic_img_size
    if replace is not None:
        flat = h.reshape(h.shape[0], -1, h.shape[-1])
        flat = torch.where(replace[..., None], mask_token.to(flat.dtype), flat)
        h = flat.reshape(h.shape)
    h = vit_pos_embed(vit, h)  # timm: prefix tokens + position embedding (resampled with dynamic_img_size)
    positions = valid = bias = None
    if keep is not None:
        positions, valid = positions_of(keep)
        h = torch.cat([h[:, :prefix], gather_tokens(h[:, prefix:], positions)], dim=1)
        if not bool(valid.all()):
            all_valid = torch.ones(valid.shape[0], prefix, dtype=torch.bool, device=valid.device)
            bias = key_padding_bias(torch.cat([all_valid, valid], dim=1), h.dtype)
    h = vit.norm_pre(vit.patch_drop(h))
    hidden = []
    for i, block in enumerate(vit.blocks):
        h = block(h) if bias is None else block(h, attn_mask=bias)
        if i in wanted:
            hidden.append(h[:, prefix:])
    h = vit.norm(h)
    if bias is None:
        pooled = vit.forward_head(h, pre_logits=True)
    elif vit.global_pool == "token":
        pooled = vit.fc_norm(h[:, 0])
    elif vit.global_pool == "avg":
        w = valid.to(h.dtype)[..., None]
        pooled = vit.fc_norm((h[:, prefix:] * w).sum(1) / w.sum(1))
    else:
        raise ValueError(f"backbone.global_pool={vit.global_pool!r}: padded token sets pool by 'token' or 'avg' only")
    return Tokens(
        pooled=pooled, patches=h[:, prefix:], positions=positions, valid=valid, hidden=hidden, prefix=h[:, :prefix]
    )
