"""Fused loss ops. Each op has one PyTorch reference (``<op>_ref.py``) and, where written, a Triton kernel."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from selfsup_kernels.info_nce_ref import info_nce_ref

IMPLS = ("auto", "torch", "triton")


def _check_impl(impl: str) -> str:
    if impl not in IMPLS:
        raise ValueError(f"impl={impl!r}: expected one of {IMPLS}")
    return impl


def info_nce(
    z_a: torch.Tensor, z_b: torch.Tensor, temperature: float = 0.5, negatives: str = "all", impl: str = "auto"
) -> torch.Tensor:
    """Single-process InfoNCE of raw projector outputs (N, D); same value and gradients as ``InfoNCELoss``."""
    if _check_impl(impl) == "triton":
        raise NotImplementedError("the Triton InfoNCE kernel has not landed yet; use impl='torch' or 'auto'")
    return info_nce_ref(F.normalize(z_a, dim=1), F.normalize(z_b, dim=1), temperature=temperature, negatives=negatives)


__all__ = ["info_nce", "info_nce_ref"]
