"""Fused loss ops. Each op has one PyTorch reference (``<op>_ref.py``) and, where written, a Triton kernel.

Dispatch (``impl``): ``"torch"`` the reference, ``"triton"`` the fused kernel (CUDA, or the CPU under
``TRITON_INTERPRET=1``), ``"auto"`` the kernel for CUDA tensors of a dtype it supports, else the reference.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from selfsup_kernels._inputs import DTYPES, IMPLS, check_choice
from selfsup_kernels.debiased_info_nce_ref import debiased_info_nce_ref
from selfsup_kernels.info_nce_ref import info_nce_queue_ref, info_nce_ref


def _use_triton(impl: str, x: torch.Tensor) -> bool:
    """Whether ``impl`` picks the fused kernel for inputs like ``x`` ("auto": CUDA tensors of a kernel dtype)."""
    if check_choice("impl", impl, IMPLS) == "auto":
        return x.is_cuda and x.dtype in DTYPES
    return impl == "triton"


def info_nce_rows(
    a: torch.Tensor,
    b: torch.Tensor,
    keys_a: torch.Tensor | None = None,
    keys_b: torch.Tensor | None = None,
    offset: int = 0,
    temperature: float = 0.5,
    negatives: str = "all",
    impl: str = "auto",
    reduction: str = "mean",
) -> torch.Tensor:
    """InfoNCE of local L2-normalised anchors ``a, b`` (N, D) vs keys (M, D); see :func:`info_nce_ref`. The fused
    kernel computes ``all`` and ``cross``; ``one_way`` always runs on the reference."""
    if negatives == "one_way" and impl == "triton":
        raise ValueError(
            "impl='triton' with negatives='one_way': the fused kernel computes all and cross; use impl=auto or torch"
        )
    if negatives != "one_way" and _use_triton(impl, a):
        from selfsup_kernels.info_nce_triton import info_nce_triton  # imports triton only when asked for

        return info_nce_triton(a, b, keys_a, keys_b, offset, temperature, negatives, reduction)
    return info_nce_ref(a, b, keys_a, keys_b, offset, temperature, negatives, reduction)


def info_nce(
    z_a: torch.Tensor, z_b: torch.Tensor, temperature: float = 0.5, negatives: str = "all", impl: str = "auto"
) -> torch.Tensor:
    """Single-process InfoNCE of raw projector outputs (N, D); same value and gradients as ``InfoNCELoss``."""
    a, b = F.normalize(z_a, dim=1), F.normalize(z_b, dim=1)
    return info_nce_rows(a, b, None, None, 0, temperature, negatives, impl)


def debiased_info_nce_rows(
    a: torch.Tensor,
    b: torch.Tensor,
    keys_a: torch.Tensor | None = None,
    keys_b: torch.Tensor | None = None,
    offset: int = 0,
    temperature: float = 0.5,
    tau_plus: float = 0.1,
    beta: float = 0.0,
    impl: str = "auto",
) -> torch.Tensor:
    """Debiased / hard-negative InfoNCE of local anchors vs keys; see :func:`debiased_info_nce_ref`."""
    if _use_triton(impl, a):
        from selfsup_kernels.debiased_info_nce_triton import debiased_info_nce_triton

        return debiased_info_nce_triton(a, b, keys_a, keys_b, offset, temperature, tau_plus, beta)
    return debiased_info_nce_ref(a, b, keys_a, keys_b, offset, temperature, tau_plus, beta)


__all__ = [
    "IMPLS",
    "debiased_info_nce_ref",
    "debiased_info_nce_rows",
    "info_nce",
    "info_nce_queue_ref",
    "info_nce_ref",
    "info_nce_rows",
]
