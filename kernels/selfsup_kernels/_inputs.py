"""The input checks of the loss ops, one owner for each rule and its one-line ValueError: the choices (``impl``,
``negatives``, ``reduction``), the keys defaulting to the anchors, the number of keys, the debiased hyper-parameters
and what a fused kernel can take (shapes, offset, temperature, dtype and device) (docs/api.md, "Kernels")."""

from __future__ import annotations

import os

import torch

DTYPES = (torch.float32, torch.float16, torch.bfloat16)  # what the fused kernels take
IMPLS = ("auto", "torch", "triton")
NEGATIVES = ("all", "cross", "one_way")  # InfoNCE's negative sets (the reference's; the kernel computes two)
REDUCTIONS = ("mean", "none")


def interpreting() -> bool:
    """Whether Triton runs its CPU interpreter (``TRITON_INTERPRET=1``, set before triton is imported)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def check_choice(name: str, value, choices: tuple):
    """``value`` if it is one of ``choices``; else ``ValueError("name='value': expected one of (...)")``."""
    if value not in choices:
        raise ValueError(f"{name}={value!r}: expected one of {choices}")
    return value


def key_rows(a, b, keys_a, keys_b):
    """(keys_a, keys_b): the anchors ``a, b`` themselves where None (one process: the keys are the rows)."""
    return (a if keys_a is None else keys_a), (b if keys_b is None else keys_b)


def check_min_keys(m: int, min_keys: int) -> None:
    """At least ``min_keys`` key pairs (M, the global number of pairs)."""
    if m < min_keys:
        raise ValueError(
            f"keys_a.shape[0]={m}: expected at least {min_keys} pairs in the (global) batch (M >= {min_keys})"
        )


def check_debiased(tau_plus: float, beta: float) -> None:
    """τ⁺ in [0, 1) and β >= 0 (debiased / hard-negative InfoNCE)."""
    if not 0 <= tau_plus < 1:
        raise ValueError(f"tau_plus={tau_plus}: expected a value in [0, 1)")
    if not beta >= 0:
        raise ValueError(f"beta={beta}: expected a value >= 0")


def check_rows(a, b, keys_a, keys_b, offset: int, temperature: float, min_keys: int = 1):
    """(keys_a, keys_b, symmetric) for anchors ``a, b`` (N, D) against keys (M, D) — the anchors themselves when
    None; ``symmetric``: the keys are the anchors (one process). One-line ValueErrors for anything a kernel cannot
    take: shapes, ``offset`` outside [0, M - N], a temperature <= 0, mixed or unsupported dtypes, a CPU tensor
    without the interpreter, fewer than ``min_keys`` keys."""
    symmetric = (keys_a is None or keys_a is a) and (keys_b is None or keys_b is b) and offset == 0
    keys_a, keys_b = key_rows(a, b, keys_a, keys_b)
    if not temperature > 0:
        raise ValueError(f"temperature={temperature}: expected a value > 0")
    if a.dim() != 2 or b.shape != a.shape:
        raise ValueError(f"a.shape={tuple(a.shape)}, b.shape={tuple(b.shape)}: expected two equal (N, D) shapes")
    if keys_a.shape != keys_b.shape or keys_a.dim() != 2 or keys_a.shape[1] != a.shape[1]:
        raise ValueError(
            f"keys_a.shape={tuple(keys_a.shape)}, keys_b.shape={tuple(keys_b.shape)}: expected two "
            f"equal (M, {a.shape[1]}) shapes"
        )
    check_min_keys(keys_a.shape[0], min_keys)
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
