"""InfoNCE / NT-Xent (SimCLR, Chen et al. 2020, arXiv:2002.05709).

Formula and the negative sets: see :mod:`selfsup_kernels.info_nce_ref`, the one reference implementation (it
matches google-research/simclr ``tf2/objective.py::add_contrastive_loss`` for ``"all"``, the cross-view loss of
facebookresearch/moco-v3 ``moco/builder.py::contrastive_loss`` without its 2τ factor for ``"cross"`` (both
directions) and ``"one_way"`` (queries against keys, MoCo v3 and NNCLR), and MoCo's queue of negatives for
``"queue"`` (facebookresearch/moco ``moco/builder.py``; with ``memory=key_queue``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from selfsup import distributed
from selfsup.objectives.base import Objective
from selfsup_kernels import IMPLS, info_nce_queue_ref, info_nce_rows
from selfsup_kernels.info_nce_ref import NEGATIVES


class InfoNCELoss(Objective):
    """NT-Xent over the global batch.

    Args:
        temperature: τ > 0 dividing the cosine similarities.
        negatives: ``"all"`` — 2N anchors, each against the 2N-2 other samples of both views plus its positive;
            ``"cross"`` — symmetric cross-view cross-entropy ``0.5 * (CE(S_ab) + CE(S_ba))``; ``"one_way"`` —
            ``CE(S_ab)``, the rows of ``z_a`` querying the keys of ``z_b``; ``"queue"`` — each row of ``z_a``
            against its own key in ``z_b`` and the ``queue`` of past keys (MoCo).
        impl: ``"torch"`` the reference, ``"triton"`` the fused kernel (never builds the (2N)² logits;
            :mod:`selfsup_kernels.info_nce_triton`), ``"auto"`` the kernel on CUDA, else the reference.
    """

    def __init__(self, temperature: float = 0.5, negatives: str = "all", impl: str = "auto"):
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"objective.temperature={temperature}: expected a value > 0")
        if negatives not in (*NEGATIVES, "queue"):
            raise ValueError(f"objective.negatives={negatives!r}: expected one of {(*NEGATIVES, 'queue')}")
        if negatives in ("one_way", "queue") and impl == "triton":
            raise ValueError(
                f"objective.impl='triton' with negatives={negatives!r}: the fused kernel computes all "
                "and cross; use impl=auto or torch"
            )
        if impl not in IMPLS:
            raise ValueError(f"objective.impl={impl!r}: expected one of {IMPLS}")
        self.temperature = temperature
        self.negatives = negatives
        self.impl = impl

    def forward(self, z_a: torch.Tensor, z_b: torch.Tensor, queue: torch.Tensor | None = None) -> torch.Tensor:
        a, b = F.normalize(z_a, dim=1), F.normalize(z_b, dim=1)  # (N, D)
        if self.negatives == "queue":
            if queue is None:
                raise ValueError("objective.negatives=queue: no queue of keys (use memory=key_queue)")
            return info_nce_queue_ref(a, b, queue.to(a.dtype), self.temperature)  # per-row: no gathering
        keys_a, keys_b = distributed.gather_with_grad(a), distributed.gather_with_grad(b)  # (M, D), M = world * N
        offset = distributed.rank() * a.shape[0]
        return info_nce_rows(a, b, keys_a, keys_b, offset, self.temperature, self.negatives, self.impl)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, negatives={self.negatives!r}, impl={self.impl!r}"
