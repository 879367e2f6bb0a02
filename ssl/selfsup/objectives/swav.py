"""SwAV: swapped prediction of online cluster assignments (Caron et al. 2020, arXiv:2006.09882).

``scores[v]`` (B, K) are the prototype scores of view v (normalised features · normalised prototypesᵀ). For each view
i in ``crops_for_assign`` the codes are computed without gradient by Sinkhorn-Knopp over the GLOBAL batch — with the
scores of the queue of past features in front (``queue_scores[i]``), of which only the batch rows are kept — and
every other view predicts them:

    Q_i = SinkhornKnopp(exp(cat(queue_scores_i, scores_i) / ε))[batch rows]           (rows sum to 1)
    loss_i = mean over v ≠ i of  −mean_rows Σ_k Q_i · log_softmax(scores_v / τ)
    loss = mean over i of loss_i

Sinkhorn-Knopp as facebookresearch/swav ``main_swav.py::distributed_sinkhorn``: Q = exp(s / ε)ᵀ (K × M), divided by
its sum, then ``sinkhorn_iters`` times: rows to 1/K each, columns to 1/M each; finally × M. Here the same steps run
in the log domain (the same result, without overflow or all-zero rows for a sharp ε), and the matrix is the gathered
global batch, so every rank computes the same codes and keeps its own rows — the 1-process computation
on the concatenated batch. The loss terms are local per row: the mean over ranks is the global loss, each rank's
gradient ``world_size · dL_global/dscores_r``. The loss: ``main_swav.py::train``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from selfsup import checks, distributed
from selfsup.objectives.base import Objective, ViewBatch


@torch.no_grad()
def sinkhorn(scores: torch.Tensor, epsilon: float, iters: int) -> torch.Tensor:
    """Codes (M, K) of scores (M, K): Sinkhorn-Knopp with uniform marginals, each row summing to 1. The same
    normalisations as the official code, in the log domain (no overflow or all-zero rows for a sharp ε)."""
    log_q = (scores / epsilon).T  # (K, M)
    k, m = log_q.shape
    log_q = log_q - torch.logsumexp(log_q.flatten(), dim=0)  # the matrix sums to 1
    for _ in range(iters):
        log_q = log_q - torch.logsumexp(log_q, dim=1, keepdim=True) - math.log(k)  # every prototype: 1/K
        log_q = log_q - torch.logsumexp(log_q, dim=0, keepdim=True) - math.log(m)  # every sample: 1/M
    return torch.exp(log_q + math.log(m)).T


class SwAVLoss(Objective):
    """Swapped prediction between the views' prototype scores (module docstring).

    Args:
        temperature: τ of the predictions.
        epsilon: ε of the codes (smaller: sharper).
        sinkhorn_iters: Sinkhorn-Knopp iterations.
        crops_for_assign: the views whose codes are predicted (global views).
    """

    def __init__(
        self,
        temperature: float = 0.1,
        epsilon: float = 0.05,
        sinkhorn_iters: int = 3,
        crops_for_assign: Sequence[int] = (0, 1),
    ):
        super().__init__()
        if not (temperature > 0 and epsilon > 0):
            raise ValueError(f"objective.temperature={temperature}, objective.epsilon={epsilon}: expected > 0")
        checks.integer("objective.sinkhorn_iters", sinkhorn_iters, minimum=1)
        if not crops_for_assign or len(set(crops_for_assign)) != len(crops_for_assign) or min(crops_for_assign) < 0:
            raise ValueError(f"objective.crops_for_assign={list(crops_for_assign)}: expected distinct view indices")
        self.temperature, self.epsilon, self.sinkhorn_iters = temperature, epsilon, sinkhorn_iters
        self.crops_for_assign = tuple(int(i) for i in crops_for_assign)

    @property
    def num_views(self) -> int:
        return max(2, max(self.crops_for_assign) + 1)

    def codes(self, scores: torch.Tensor, queue_scores: torch.Tensor | None) -> torch.Tensor:
        """This rank's codes (B, K) from its scores (B, K), over the global batch and the queue."""
        everything = distributed.gather(scores.detach())  # (N, K), the global batch in rank order
        if queue_scores is not None:
            everything = torch.cat([queue_scores.detach().to(scores.dtype), everything])
        q = sinkhorn(everything, self.epsilon, self.sinkhorn_iters)
        start = everything.shape[0] - distributed.world_size() * scores.shape[0] + distributed.rank() * scores.shape[0]
        return q[start : start + scores.shape[0]]

    def forward(self, scores: list[torch.Tensor], queue_scores: list[torch.Tensor] | None = None) -> torch.Tensor:
        if len(scores) < self.num_views:
            raise ValueError(
                f"SwAVLoss: crops_for_assign={list(self.crops_for_assign)} needs {self.num_views} views, "
                f"got {len(scores)}"
            )
        log_p = [F.log_softmax(s / self.temperature, dim=1) for s in scores]
        total = None
        for n, i in enumerate(self.crops_for_assign):
            q = self.codes(scores[i], queue_scores[n] if queue_scores is not None else None)
            terms = [-torch.mean(torch.sum(q * log_p[v], dim=1)) for v in range(len(scores)) if v != i]
            sub = sum(terms[1:], terms[0]) / len(terms)
            total = sub if total is None else total + sub
        return total / len(self.crops_for_assign)

    def forward_views(self, batch: ViewBatch) -> torch.Tensor:
        return self(batch.q, batch.extras.get("queue_scores"))  # scores: memory=swav

    def extra_repr(self) -> str:
        return (
            f"temperature={self.temperature}, epsilon={self.epsilon}, sinkhorn_iters={self.sinkhorn_iters}, "
            f"crops_for_assign={list(self.crops_for_assign)}"
        )
