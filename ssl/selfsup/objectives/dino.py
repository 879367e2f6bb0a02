"""DINO: self-distillation without labels (Caron et al. 2021, arXiv:2104.14294).

For student outputs s_v (every view, global views first) and teacher outputs t_i (global views only), K logits:

    q_i = softmax((t_i − c) / τ_t)  (no gradient)        p_v = log_softmax(s_v / τ_s)
    loss = mean over the pairs (i, v), v ≠ i, of  mean_rows( −Σ_k q_i · p_v )

then, in training mode, the centre c ← m · c + (1 − m) · mean of all teacher rows of the global batch. As
facebookresearch/dino ``main_dino.py::DINOLoss`` (its ``forward`` and ``update_center``); the teacher-temperature
warm-up sets ``teacher_temp`` from outside (``selfsup.train.callbacks.ObjectiveSchedule``), as the official
per-epoch schedule does.

Under a process group the per-row terms are local: the mean over ranks of the returned values is the global loss and
each rank's gradient is ``world_size · dL_global/ds_r``; the centre is updated from the global batch (all-reduce).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from selfsup import checks, distributed
from selfsup.objectives.base import Objective, ViewBatch
from selfsup.objectives.ibot import sinkhorn_knopp


class DINOLoss(Objective):
    """Cross-entropy of the student's softmax against the centred, sharpened teacher's.

    Args:
        out_dim: K, the head's output width (the centre's size).
        teacher_temp: τ_t (0.04 to 0.07; warmed up from outside).
        student_temp: τ_s.
        center_momentum: m of the centre's moving average.
        centering: how the teacher's targets are made: ``"centering"`` (DINO's centre above) or ``"sinkhorn_knopp"``
            (DINOv2's option, ``train.centering``: Sinkhorn-Knopp codes of all global views' teacher rows of the
            global batch at τ_t, 3 iterations, ``DINOLoss.sinkhorn_knopp_teacher`` in facebookresearch/dinov2
            ``dinov2/loss/dino_clstoken_loss.py``; no centre update).
    """

    schedulable = ("teacher_temp",)  # warmed up by callbacks: ObjectiveSchedule

    CENTERINGS = ("centering", "sinkhorn_knopp")

    def __init__(
        self,
        out_dim: int,
        teacher_temp: float = 0.04,
        student_temp: float = 0.1,
        center_momentum: float = 0.9,
        centering: str = "centering",
    ):
        super().__init__()
        checks.integer("objective.out_dim", out_dim, minimum=1)
        if not (teacher_temp > 0 and student_temp > 0):
            raise ValueError(f"objective.teacher_temp={teacher_temp}, student_temp={student_temp}: expected > 0")
        if not 0 <= center_momentum < 1:
            raise ValueError(f"objective.center_momentum={center_momentum}: expected a value in [0, 1)")
        self.out_dim, self.teacher_temp, self.student_temp = out_dim, teacher_temp, student_temp
        self.center_momentum = center_momentum
        self.centering = checks.one_of("objective.centering", centering, self.CENTERINGS)
        self.register_buffer("center", torch.zeros(1, out_dim))

    def forward(self, student: list[torch.Tensor], teacher: list[torch.Tensor]) -> torch.Tensor:
        if len(student) < 2 or not 1 <= len(teacher) <= len(student):
            raise ValueError(
                f"DINOLoss: expected >= 2 student views and 1 to {len(student)} teacher views, got "
                f"{len(student)} and {len(teacher)}"
            )
        log_p = [F.log_softmax(s / self.student_temp, dim=-1) for s in student]  # V x (B, K)
        if self.centering == "sinkhorn_knopp":
            q = list(sinkhorn_knopp(torch.cat(teacher), self.teacher_temp).chunk(len(teacher)))
        else:
            q = [F.softmax((t - self.center) / self.teacher_temp, dim=-1).detach() for t in teacher]  # G x (B, K)
        terms = [
            torch.sum(-q_i * log_p[v], dim=-1).mean() for i, q_i in enumerate(q) for v in range(len(log_p)) if v != i
        ]
        loss = sum(terms[1:], terms[0]) / len(terms)
        if self.training and self.centering == "centering":
            self.update_center(teacher)
        return loss

    @torch.no_grad()
    def update_center(self, teacher: list[torch.Tensor]) -> None:
        rows = torch.cat(teacher)  # (G·B, K), this rank's teacher rows
        total = distributed.all_reduce_sum(rows.sum(dim=0, keepdim=True))  # (1, K) over the global batch
        count = rows.shape[0] * distributed.world_size()
        self.center.mul_(self.center_momentum).add_(total / count, alpha=1 - self.center_momentum)

    def forward_views(self, batch: ViewBatch) -> torch.Tensor:
        return self(batch.q, batch.k)  # students: every view; teachers: the global ones

    def extra_repr(self) -> str:
        return (
            f"out_dim={self.out_dim}, teacher_temp={self.teacher_temp}, student_temp={self.student_temp}, "
            f"center_momentum={self.center_momentum}, centering={self.centering!r}"
        )
