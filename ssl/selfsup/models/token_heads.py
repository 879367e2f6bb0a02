"""Heads over tokens (``conf/token_head/``): what a masked method predicts its targets with (docs/tokens.md).

Every head is built as ``head(in_dim=D)`` (a Hydra partial, like the projectors) and called as
``head(tokens, masks, grid)``: the online :class:`~selfsup.models.tokens.Tokens` of one masked view, that view's
mask dict (``selfsup.data.masks``) and its token grid (rows, columns).

- :class:`MAEDecoder`: MAE's light decoder → pixels of every patch (B, L, p·p·C).
- :class:`JEPAPredictor`: I-JEPA's narrow predictor ViT → the target encoder's tokens of each target block
  (B, n, M, D), padded to the largest block (:func:`selfsup.models.tokens.positions_of`).
- :class:`TokenLinear`: a linear map of every token (data2vec's regression head ``final_proj``) → (B, L, D').

Position embeddings are the fixed 2-D sine-cosine ones of both official codes, computed for the grid at hand.
"""

from __future__ import annotations

import math

import torch
from timm.models.vision_transformer import Block
from torch import nn

from selfsup import checks
from selfsup.models.tokens import Tokens, gather_tokens, key_padding_bias, positions_of


def sincos_2d(dim: int, rows: int, cols: int) -> torch.Tensor:
    """(rows·cols, dim) fixed position embedding, row-major: half the channels encode the column, half the row, each
    as [sin(pos·ω), cos(pos·ω)] with ω_k = 10000^(−k/(dim/4)) — facebookresearch/mae ``util/pos_embed.py``
    (``get_2d_sincos_pos_embed``; I-JEPA's ``src/models/vision_transformer.py`` has the same), in float64."""
    if dim % 4:
        raise ValueError(f"token_head.dim={dim}: the 2-D sine-cosine embedding needs a multiple of 4")
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim / 4))

    def one_axis(pos: torch.Tensor) -> torch.Tensor:
        angle = pos.to(torch.float64)[:, None] * omega[None]
        return torch.cat([angle.sin(), angle.cos()], dim=1)

    row, col = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")
    return torch.cat([one_axis(col.flatten()), one_axis(row.flatten())], dim=1).float()


def _blocks(dim: int, depth: int, heads: int, mlp_ratio: float) -> nn.ModuleList:
    return nn.ModuleList(Block(dim, heads, mlp_ratio, qkv_bias=True, norm_layer=nn.LayerNorm) for _ in range(depth))


def _init_weights(module: nn.Module, std: float | None) -> None:
    """Linear layers Xavier-uniform (``std=None``: MAE's ``_init_weights``) or truncated normal of ``std`` (I-JEPA's:
    ``trunc_normal_(std=init_std)``, 0.02), zero biases, unit LayerNorms."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            if std is None:
                nn.init.xavier_uniform_(m.weight)
            else:
                nn.init.trunc_normal_(m.weight, std=std, a=-2.0, b=2.0)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class _TokenViT(nn.Module):
    """Embed → blocks → norm → project: the body both MAE's decoder and I-JEPA's predictor share."""

    def __init__(
        self, in_dim: int, dim: int, depth: int, heads: int, mlp_ratio: float, out_dim: int, init_std: float | None
    ):
        super().__init__()
        checks.integer("token_head.dim", dim, minimum=4)
        checks.integer("token_head.depth", depth, minimum=1)
        checks.integer("token_head.heads", heads, minimum=1)
        if dim % heads:
            raise ValueError(f"token_head.heads={heads}: must divide token_head.dim={dim}")
        self.dim = dim
        self.embed = nn.Linear(in_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.blocks = _blocks(dim, depth, heads, mlp_ratio)
        self.norm = nn.LayerNorm(dim)
        self.proj = nn.Linear(dim, out_dim)
        _init_weights(self, init_std)
        if init_std is None:  # MAE: normal_(std=.02); I-JEPA: trunc_normal_(std=init_std)
            nn.init.normal_(self.mask_token, std=0.02)
        else:
            nn.init.trunc_normal_(self.mask_token, std=init_std, a=-2.0, b=2.0)

    def run(self, x: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
        bias = None if valid is None or bool(valid.all()) else key_padding_bias(valid, x.dtype)
        for block in self.blocks:
            x = block(x) if bias is None else block(x, attn_mask=bias)
        return self.norm(x)

    def pos(self, grid: tuple[int, int], like: torch.Tensor) -> torch.Tensor:
        return sincos_2d(self.dim, *grid).to(device=like.device, dtype=like.dtype)


class MAEDecoder(_TokenViT):
    """MAE's decoder (He et al. 2021; facebookresearch/mae ``models_mae.py``, ``forward_decoder``): the encoded
    visible patches and the class token are embedded, a shared mask token fills every removed position, the fixed
    position embedding is added (zero at the class token, as ``get_2d_sincos_pos_embed(cls_token=True)``), ``depth``
    ViT blocks and a norm run over class token and grid, and a linear layer predicts each patch's p·p·C pixels (the
    class token's output is dropped). The class token enters the decoder as in the official code, so it is trained:
    it is what MAE's linear probe reads.

    Args:
        in_dim: the encoder's width (given by the module).
        patch_size: p, pixels per patch side.
        in_chans: C.
        dim, depth, heads, mlp_ratio: the decoder ViT (official: 512, 8, 16, 4).
    """

    def __init__(
        self,
        in_dim: int,
        patch_size: int,
        in_chans: int = 3,
        dim: int = 512,
        depth: int = 8,
        heads: int = 16,
        mlp_ratio: float = 4.0,
    ):
        checks.integer("token_head.patch_size", patch_size, minimum=1)
        super().__init__(in_dim, dim, depth, heads, mlp_ratio, patch_size * patch_size * in_chans, init_std=None)

    def forward(self, tokens: Tokens, masks: dict, grid: tuple[int, int]) -> torch.Tensor:
        x = self.embed(tokens.patches)  # (B, T, dim): the kept patches
        b, length = x.shape[0], grid[0] * grid[1]
        full = self.mask_token.to(x.dtype).expand(b, length + 1, -1).clone()  # slot L takes the padding
        if tokens.positions is None:
            full[:, :length] = x
        else:
            slots = torch.where(tokens.valid, tokens.positions, torch.full_like(tokens.positions, length))
            full = full.scatter(1, slots[..., None].expand(-1, -1, self.dim), x)
        full = full[:, :length] + self.pos(grid, x)
        prefix = self.embed(tokens.prefix) if tokens.prefix is not None else full[:, :0]
        return self.proj(self.run(torch.cat([prefix, full], dim=1), None)[:, prefix.shape[1] :])


class JEPAPredictor(_TokenViT):
    """I-JEPA's predictor (Assran et al. 2023; facebookresearch/ijepa ``src/models/vision_transformer.py``,
    ``VisionTransformerPredictor``): the context tokens are embedded and given their position embedding; for each
    target block, mask tokens at the block's positions (plus their position embedding) are appended; ``depth`` ViT
    blocks see context and block together; the block's outputs are projected back to the encoder width.
    The official code repeats the context once per target block along the batch; so do we. Linear layers start
    truncated-normal of std 0.02 (``_init_weights``, ``init_std``; MAE's decoder is Xavier-uniform) and the residual
    projections are rescaled by 1/sqrt(2·layer) (``fix_init_weight``).

    Returns (B, n, M, in_dim): target block k of sample b at ``positions_of(masks["targets"][:, k])`` order, padded
    to the largest block of the batch.

    Args:
        in_dim: the encoder's width.
        dim, depth, heads, mlp_ratio: the predictor ViT (official ViT-H/14 config: 384 wide, 12 deep, the
            encoder's head count, MLP ratio 4).
    """

    def __init__(self, in_dim: int, dim: int = 384, depth: int = 12, heads: int = 12, mlp_ratio: float = 4.0):
        super().__init__(in_dim, dim, depth, heads, mlp_ratio, in_dim, init_std=0.02)
        with torch.no_grad():
            for layer, block in enumerate(self.blocks, start=1):
                block.attn.proj.weight.div_(math.sqrt(2.0 * layer))
                block.mlp.fc2.weight.div_(math.sqrt(2.0 * layer))

    def forward(self, tokens: Tokens, masks: dict, grid: tuple[int, int]) -> torch.Tensor:
        targets = masks["targets"]  # (B, n, L)
        b, n, length = targets.shape
        pos = self.pos(grid, tokens.patches)
        ctx_pos = (
            tokens.positions
            if tokens.positions is not None
            else torch.arange(length, device=targets.device).expand(b, -1)
        )
        ctx = self.embed(tokens.patches) + pos[ctx_pos]  # (B, T, dim)
        ctx_valid = tokens.valid if tokens.valid is not None else torch.ones_like(ctx_pos, dtype=torch.bool)
        tgt_pos, tgt_valid = positions_of(targets.reshape(b * n, length))  # (B·n, M)
        queries = self.mask_token.to(ctx.dtype) + pos[tgt_pos]
        x = torch.cat([ctx.repeat_interleave(n, dim=0), queries], dim=1)
        valid = torch.cat([ctx_valid.repeat_interleave(n, dim=0), tgt_valid], dim=1)
        out = self.proj(self.run(x, valid)[:, ctx.shape[1] :])  # (B·n, M, in_dim)
        return out.reshape(b, n, *out.shape[1:])


class TokenLinear(nn.Module):
    """One linear layer on every patch token (data2vec's ``final_proj``, Baevski et al. 2022): (B, L, D) → (B, L,
    out_dim or D)."""

    def __init__(self, in_dim: int, out_dim: int | None = None):
        super().__init__()
        self.linear = nn.Linear(in_dim, out_dim or in_dim)

    def forward(self, tokens: Tokens, masks: dict, grid: tuple[int, int]) -> torch.Tensor:
        return self.linear(tokens.patches)


def target_tokens(teacher: Tokens, positions: torch.Tensor) -> torch.Tensor:
    """The teacher's patch tokens at ``positions`` (B, n, M) → (B, n, M, D) — the targets of I-JEPA's blocks."""
    b, n, m = positions.shape
    picked = gather_tokens(teacher.patches.repeat_interleave(n, dim=0), positions.reshape(b * n, m))
    return picked.reshape(b, n, m, -1)


class ProjectorOnTokens(nn.Module):
    """``token_head=projector``: no head of its own — the run's projector (and the target's) maps the masked patch
    tokens, as DINOv2 shares the DINO head with iBOT by default (facebookresearch/dinov2
    ``dinov2/configs/ssl_default_config.yaml``, ``ibot.separate_head: false``). The training module recognises it."""

    def __init__(self, in_dim: int):
        super().__init__()

    def forward(self, tokens: Tokens, masks: dict, grid: tuple[int, int]) -> torch.Tensor:
        raise RuntimeError("ProjectorOnTokens is a marker: the training module applies its projector")
