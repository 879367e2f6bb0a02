"""The one MLP builder for projectors and predictors."""

from __future__ import annotations

from torch import nn


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
    if num_layers < 1:
        raise ValueError(f"projector.num_layers={num_layers}: expected >= 1")
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
