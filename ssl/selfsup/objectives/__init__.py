"""Objectives: one ``nn.Module`` per file, ``forward(z_a, z_b, **extras) -> 0-dim Tensor`` (CONTRACT.md)."""

from selfsup.objectives.info_nce import InfoNCELoss

__all__ = ["InfoNCELoss"]
