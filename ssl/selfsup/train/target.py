"""The target branch of a method (``conf/target/``): what the loss's keys are computed by.

- ``none`` (:class:`Target`): the online projections themselves, gradients and all (SimCLR, Barlow Twins, VICReg).
- ``stopgrad`` (:class:`StopGradTarget`): the online projections, detached (SimSiam, Chen & He 2021).
- ``ema`` (:class:`EMATarget`): a copy of backbone and projector updated as an exponential moving average of the
  online ones after every optimiser step, with the momentum on a cosine from ``base`` to ``final`` over the run
  (BYOL, Grill et al. 2020, §3.1; MoCo; DINO's teacher). It sees the global views only.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from selfsup.models.tokens import Tokens, encode


class Target(nn.Module):
    """No target network: the keys are the online projections of the global views (module docstring).

    ``encodes_views``: whether :meth:`keys` runs a network of its own on the view images (False: it reads the
    online projections); such a target cannot take a jigsaw view, which must be encoded tile by tile.
    """

    encodes_views: bool = False

    def attach(self, backbone: nn.Module, projector: nn.Module) -> None:
        """Called once by the module with its online networks."""

    def keys(self, views: list[torch.Tensor], z: list[torch.Tensor]) -> list[torch.Tensor]:
        """The keys of the global ``views`` (G x (B, C, H, W)) given their online projections ``z`` (G x (B, D))."""
        return z

    def token_keys(
        self, views: list[torch.Tensor], z: list[torch.Tensor], blocks: int = 0
    ) -> tuple[list[torch.Tensor], list[Tokens]]:
        """The keys of the global ``views`` and the target network's :class:`Tokens` of them, unmasked, with the
        outputs of its last ``blocks`` blocks (masked methods, docs/tokens.md); no target network: no tokens."""
        return self.keys(views, z), []

    def project_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """The target projector on token rows (N, D) (iBOT's teacher patch head)."""
        raise ValueError("the objective reads the target network's projected tokens: it needs target=ema")

    def step(self, backbone: nn.Module, projector: nn.Module, step: int, total: int) -> float | None:
        """After optimiser step ``step`` of ``total``; returns the momentum used, if any (logged)."""
        return None


class StopGradTarget(Target):
    """The online projections, detached: no gradient flows through the keys."""

    def keys(self, views, z):
        return [zi.detach() for zi in z]


class EMATarget(Target):
    """An exponential moving average of backbone and projector (the momentum encoder / teacher).

    Args:
        base: momentum at step 0 (BYOL 0.996, MoCo v3 0.99, DINO 0.996).
        final: momentum at the last step (1.0: the target freezes at the end).
    """

    encodes_views = True

    def __init__(self, base: float = 0.996, final: float = 1.0):
        super().__init__()
        if not (0 <= base <= final <= 1):
            raise ValueError(f"target.base={base}, target.final={final}: expected 0 <= base <= final <= 1")
        self.base, self.final = base, final

    def attach(self, backbone, projector) -> None:
        self.backbone = copy.deepcopy(backbone).requires_grad_(False)
        self.projector = copy.deepcopy(projector).requires_grad_(False)

    def momentum(self, step: int, total: int) -> float:
        """τ at ``step``: ``final − (final − base) · (cos(π · step / total) + 1) / 2``."""
        return self.final - (self.final - self.base) * (math.cos(math.pi * min(step, total) / max(1, total)) + 1) / 2

    @torch.no_grad()
    def keys(self, views, z):
        return [self.projector(self.backbone(v)) for v in views]

    @torch.no_grad()
    def token_keys(self, views, z, blocks=0):
        teacher = [encode(self.backbone, v, blocks=range(-blocks, 0)) for v in views]
        return [self.projector(t.pooled) for t in teacher], teacher

    @torch.no_grad()
    def project_tokens(self, x):
        return self.projector(x)

    @torch.no_grad()
    def step(self, backbone, projector, step, total) -> float:
        tau = self.momentum(step, total)
        for online, target in ((backbone, self.backbone), (projector, self.projector)):
            for p_o, p_t in zip(online.parameters(), target.parameters()):
                p_t.lerp_(p_o, 1 - tau)
            for b_o, b_t in zip(online.buffers(), target.buffers()):
                b_t.copy_(b_o)
        return tau
