"""The input check every fused kernel wrapper shares: anchors, keys, offset, temperature, dtype and device."""

from __future__ import annotations

import os

import torch

DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def interpreting() -> bool:
    """Whether Triton runs its CPU interpreter (``TRITON_INTERPRET=1``, set before triton is imported)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def check_rows(a, b, keys_a, keys_b, offset: int, temperature: float, min_keys: int = 1):
    """(keys_a, keys_b, symmetric) for anchors ``a, b`` (N, D) against keys (M, D) — the anchors themselves when
    None; ``symmetric``: the keys are the anchors (one process). One-line ValueErrors for anything a kernel cannot
    take: shapes, ``offset`` outside [0, M - N], a temperature <= 0, mixed or unsupported dtypes, a CPU tensor
    without the interpreter, fewer than ``min_keys`` keys."""
    symmetric = (keys_a is None or keys_a is a) and (keys_b is None or keys_b is b) and offset == 0
    keys_a = a if keys_a is None else keys_a
    keys_b = b if keys_b is None else keys_b
    if not temperature > 0:
        raise ValueError(f"temperature={temperature}: expected a value > 0")
    if a.dim() != 2 or b.shape != a.shape:
        raise ValueError(f"a.shape={tuple(a.shape)}, b.shape={tuple(b.shape)}: expected two equal (N, D) shapes")
    if keys_a.shape != keys_b.shape or keys_a.dim() != 2 or keys_a.shape[1] != a.shape[1]:
        raise ValueError(
            f"keys_a.shape={tuple(keys_a.shape)}, keys_b.shape={tuple(keys_b.shape)}: expected two "
            f"equal (M, {a.shape[1]}) shapes"
        )
    if keys_a.shape[0] < min_keys:
        raise ValueError(f"keys_a.shape[0]={keys_a.shape[0]}: expected at least {min_keys} pairs (M >= {min_keys})")
    if not 0 <= offset <= keys_a.shape[0] - a.shape[0]:
        raise ValueError(f"offset={offset}: expected 0 <= offset <= M - N = {keys_a.shape[0] - a.shape[0]}")
    dtypes = {t.dtype for t in (a, b, keys_a, keys_b)}
    if len(dtypes) != 1 or a.dtype not in DTYPES:
        raise ValueError(f"dtypes={sorted(map(str, dtypes))}: expected one dtype among {[str(t) for t in DTYPES]}")
    if not (a.is_cuda or interpreting()):
        raise ValueError(f"device={a.device}: expected CUDA tensors (or TRITON_INTERPRET=1 for the CPU interpreter)")
    if a.shape[0] == 0:
        raise ValueError("a.shape[0]=0: expected at least one anchor pair")
    return keys_a, keys_b, symmetric
