"""KoLeo: the Kozachenko–Leonenko differential-entropy regulariser (Sablayrolles et al. 2019, arXiv:1806.03198), as
DINOv2 applies it to the student's class tokens (Oquab et al. 2023, arXiv:2304.07193, §4).

For rows x_i (B, D):

    u_i   = x_i / max(‖x_i‖, 1e-8)
    n(i)  = argmax_{j ≠ i} ⟨u_i, u_j⟩                 (nearest other row; no gradient through the choice)
    loss  = −mean_i log(‖u_i − u_n(i) + 1e-8‖ + 1e-8)   (``nn.PairwiseDistance(2, eps=1e-8)``: eps in the difference)

As facebookresearch/dinov2 ``dinov2/loss/koleo_loss.py``: ``KoLeoLoss.pairwise_NNs_inner`` and
``KoLeoLoss.forward`` (autocast off). The official code excludes a row from its own search by setting the diagonal
to −1; here to −∞, so the neighbour is always another row (the same unless every other row is exactly antipodal).
Half-precision inputs are computed in float32.

Per process by default, as DINOv2: ``SSLMetaArch.forward_backward`` (``dinov2/train/ssl_meta_arch.py``) calls it on
each rank's own class tokens, one global crop at a time, so neighbours are searched within the local batch only and
each rank's value is the loss of its own rows. ``global_batch=True`` searches every row's neighbour among the rows of
all ranks (all-gathered with :func:`selfsup.distributed.gather_with_grad`, equal batch sizes): the mean over ranks of
the returned values is then the single-process loss of the concatenated batch, and each rank's gradient is
``world_size · dL_global/dx_r``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from selfsup import distributed
from selfsup.objectives.base import Objective, ViewBatch

EPS = 1e-8


class KoLeoLoss(Objective):
    """−mean log distance of each L2-normalised row to its nearest other row (module docstring).

    ``forward(x (B, D))`` → 0-dim loss.

    Args:
        global_batch: search neighbours over the rows of all ranks instead of this rank's (DINOv2: per rank).
    """

    def __init__(self, global_batch: bool = False):
        super().__init__()
        if not isinstance(global_batch, bool):
            raise ValueError(f"objective.global_batch={global_batch!r}: expected true or false")
        self.global_batch = global_batch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 2:
            raise ValueError(f"KoLeoLoss: expected x of shape (B, D), got {tuple(x.shape)}")
        gathered = self.global_batch and distributed.world_size() > 1
        if x.shape[0] * (distributed.world_size() if gathered else 1) < 2:
            raise ValueError(f"KoLeoLoss: needs at least 2 rows to find neighbours, got {x.shape[0]}")
        if x.dtype in (torch.float16, torch.bfloat16):
            x = x.float()
        with torch.autocast(device_type=x.device.type, enabled=False):
            u = F.normalize(x, p=2, dim=-1, eps=EPS)  # (B, D)
            rows, start = u.shape[0], 0
            if gathered:
                u = distributed.gather_with_grad(u)  # (W·B, D), ranks in order
                start = distributed.rank() * rows
            queries = u[start : start + rows]  # (B, D): this rank's rows (a slice, so one gradient path)
            with torch.no_grad():
                dots = queries @ u.T  # (B, N)
                own = torch.arange(rows, device=u.device)
                dots[own, start + own] = float("-inf")  # never the row itself
                nearest = dots.argmax(dim=1)  # (B,)
            distances = F.pairwise_distance(queries, u[nearest], p=2, eps=EPS)  # (B,)
            return -torch.log(distances + EPS).mean()

    def forward_views(self, batch: ViewBatch) -> torch.Tensor:
        """Summed over the global views, of the student's backbone features (its class tokens): DINOv2's
        ``sum(koleo_loss(p) for p in student_cls_tokens.chunk(2))`` (``ssl_meta_arch.py``)."""
        total = self(batch.feats[0])
        for f in batch.feats[1 : batch.num_global]:
            total = total + self(f)
        return total

    def extra_repr(self) -> str:
        return f"global_batch={self.global_batch}"
