"""Heads on the backbone: the one MLP builder for projectors and predictors, and DINO's head."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from selfsup import checks


def mlp(
    in_dim: int,
    hidden_dim: int = 2048,
    out_dim: int = 128,
    num_layers: int = 2,
    batch_norm: bool = True,
    last_batch_norm: bool = False,
) -> nn.Sequential:
    """Linear → [BN] → ReLU, repeated ``num_layers - 1`` times, then Linear → [BN without affine].

    Args:
        in_dim: input width (the backbone's ``num_features``; filled in by the module).
        hidden_dim: width of the hidden layers.
        out_dim: output width.
        num_layers: number of linear layers (1 = a linear projection).
        batch_norm: BatchNorm1d after each hidden linear layer.
        last_batch_norm: a non-affine BatchNorm1d on the output (SimCLR v2, Barlow Twins, SimSiam).
    """
    for key, value in (("num_layers", num_layers), ("hidden_dim", hidden_dim), ("out_dim", out_dim)):
        checks.integer(f"projector.{key}", value, minimum=1)
    layers, dim = [], in_dim
    for _ in range(num_layers - 1):
        layers += [nn.Linear(dim, hidden_dim, bias=not batch_norm)]
        layers += [nn.BatchNorm1d(hidden_dim)] if batch_norm else []
        layers += [nn.ReLU(inplace=True)]
        dim = hidden_dim
    layers.append(nn.Linear(dim, out_dim, bias=not last_batch_norm))
    if last_batch_norm:
        layers.append(nn.BatchNorm1d(out_dim, affine=False))
    return nn.Sequential(*layers)


class DINOHead(nn.Module):
    """DINO's projection head (Caron et al. 2021, arXiv:2104.14294; facebookresearch/dino
    ``vision_transformer.py::DINOHead``): an MLP (Linear → [BN] → GELU, ``num_layers - 1`` times, then Linear to
    ``bottleneck_dim``), L2 normalisation, and a weight-normalised linear layer ``last_layer`` to ``out_dim`` logits
    whose norm is fixed at 1 when ``norm_last_layer``. Linear weights start from a truncated normal (std 0.02),
    biases at 0.

    Args:
        in_dim: input width (filled in by the module).
        out_dim: number of output logits K (65,536 for ViT-S/16 on ImageNet).
        hidden_dim: width of the hidden layers.
        bottleneck_dim: width before the last layer.
        num_layers: linear layers of the MLP part (>= 1).
        batch_norm: BatchNorm1d after each hidden layer (DINO's ResNet-50 setting).
        norm_last_layer: keep the last layer's weight norm at 1 (more stable; DINO's ViT-S default).
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int = 65536,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        num_layers: int = 3,
        batch_norm: bool = False,
        norm_last_layer: bool = True,
    ):
        super().__init__()
        for key, value in (("num_layers", num_layers), ("out_dim", out_dim)):
            checks.integer(f"projector.{key}", value, minimum=1)
        layers, dim = [], in_dim
        for _ in range(num_layers - 1):
            layers += [nn.Linear(dim, hidden_dim)] + ([nn.BatchNorm1d(hidden_dim)] if batch_norm else []) + [nn.GELU()]
            dim = hidden_dim
        layers.append(nn.Linear(dim, bottleneck_dim))
        self.mlp = nn.Sequential(*layers)
        for m in self.mlp.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        self.last_layer = nn.utils.parametrizations.weight_norm(nn.Linear(bottleneck_dim, out_dim, bias=False))
        with torch.no_grad():
            self.last_layer.parametrizations.weight.original0.fill_(1.0)  # the norm g of every output row
        self.last_layer.parametrizations.weight.original0.requires_grad_(not norm_last_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last_layer(F.normalize(self.mlp(x), dim=-1))


# The name ``conf/projector/dino_head.yaml`` builds (``selfsup.models.dino_head``), as ``mlp`` for the others.
dino_head = DINOHead
