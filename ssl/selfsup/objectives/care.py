"""CARE orthogonal-equivariance term (Gupta et al. 2024, "Structuring Representation Geometry with Rotationally
Equivariant Contrastive Learning", arXiv:2306.13924).

Rows of the two views are split into ``num_chunks`` contiguous chunks of b = N // num_chunks rows (the N mod
num_chunks leftover rows are ignored); inside a chunk both views were produced by one shared augmentation draw, so
an orthogonal map between the views keeps all inner products:

    a, b = z_a / ‖z_a‖, z_b / ‖z_b‖
    L_c  = 2 · mean_i Σ_{j≠i} (⟨a_i, a_j⟩ − ⟨b_i, b_j⟩)²      (i, j in chunk c)
    loss = mean_c L_c

Matches Sharut/CARE ``cifar10_cifar100_stl10/utils.py::equivariance_loss`` (``num_chunks = equiv_splits``). CARE
itself is InfoNCE on two independent views plus weight·this term on two chunk-shared views: a
:class:`~selfsup.objectives.CompositeObjective` (``conf/objective/care.yaml``).

Under a process group the chunks are taken over the gathered global batch (rank order), and every rank returns
the global loss. With W ranks of n rows each, a global chunk is W·n // num_chunks rows: when num_chunks is a
multiple of W, that is num_chunks / W chunks per rank, so the view sampler should share one draw per
n·W // num_chunks local rows.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from selfsup import checks, distributed
from selfsup.objectives.base import Objective


class CAREEquivarianceLoss(Objective):
    """Mean over chunks of the squared difference between the two views' within-chunk Gram matrices.

    Args:
        num_chunks: ≥ 1, number of contiguous row chunks that each share one augmentation draw.
    """

    def __init__(self, num_chunks: int = 8):
        super().__init__()
        if num_chunks is None:
            raise ValueError(
                "objective.num_chunks=None: CARE needs views whose draws are shared per chunk "
                "(views=care sets views.shared_chunks)"
            )
        self.num_chunks = checks.integer("objective.num_chunks", num_chunks, minimum=1)

    def forward(self, z_a: torch.Tensor, z_b: torch.Tensor) -> torch.Tensor:
        a, b = F.normalize(z_a, dim=1), F.normalize(z_b, dim=1)
        a, b = distributed.gather_with_grad(a), distributed.gather_with_grad(b)  # (N, D), global batch
        n, d = a.shape
        size = n // self.num_chunks
        if size < 2:
            raise ValueError(
                f"CAREEquivarianceLoss: a batch of {n} rows split into num_chunks={self.num_chunks} gives chunks of "
                f"{size} rows; expected at least 2 rows per chunk (N >= {2 * self.num_chunks})"
            )
        used = size * self.num_chunks  # leftover rows are ignored, as in the official code
        a = a[:used].reshape(self.num_chunks, size, d)  # (K, b, D)
        b = b[:used].reshape(self.num_chunks, size, d)
        diff = a @ a.transpose(1, 2) - b @ b.transpose(1, 2)  # (K, b, b)
        off = ~torch.eye(size, dtype=torch.bool, device=diff.device)
        per_chunk = 2 * diff.pow(2).masked_fill(~off, 0).sum(dim=(1, 2)) / size  # 2 · mean_i Σ_{j≠i}
        return per_chunk.mean()

    def extra_repr(self) -> str:
        return f"num_chunks={self.num_chunks}"
