"""THE PyTorch reference for the InfoNCE op (docs/api.md, `InfoNCELoss`).

Rows are this process's anchors, keys the (possibly gathered) global batch. With ``offset`` the position of the
local rows inside the keys, one process (rows == keys, offset 0) gives the plain loss and every rank of a process
group gives the mean over its local anchors, so that the mean over ranks is the global loss.

``negatives="all"`` (SimCLR NT-Xent, Chen et al. 2020, arXiv:2002.05709; google-research/simclr
``objective.py::add_contrastive_loss``): anchors are the 2N samples of both views; each is scored against all 2M
keys of both views except itself, the positive being the other view of the same image:

    l_i = -s(i, pos(i)) + log Σ_{k ≠ i} exp s(i, k),   s = cosine / τ,   loss = mean_i l_i   (2N anchors)

``negatives="cross"`` (symmetric cross-view form, as in MoCo v3 / CLIP): ``0.5 * (CE(S_ab) + CE(S_ba))`` with
``S_ab = a Bᵀ / τ`` and the diagonal (shifted by ``offset``) as targets.

Inputs must already be L2-normalised; computation runs in the inputs' dtype (float64 for golden tests).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

NEGATIVES = ("all", "cross")
REDUCTIONS = ("mean", "none")


def info_nce_ref(
    a: torch.Tensor,
    b: torch.Tensor,
    keys_a: torch.Tensor | None = None,
    keys_b: torch.Tensor | None = None,
    offset: int = 0,
    temperature: float = 0.5,
    negatives: str = "all",
    reduction: str = "mean",
) -> torch.Tensor:
    """Mean InfoNCE over the local anchors ``a, b`` (N, D) against keys ``keys_a, keys_b`` (M, D).

    ``reduction="none"`` returns the per-anchor losses instead: (2N,) ordered ``[a rows, b rows]`` for ``"all"``,
    (N,) ``0.5 * (l_ab + l_ba)`` per pair for ``"cross"``.
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction={reduction!r}: expected one of {REDUCTIONS}")
    keys_a = a if keys_a is None else keys_a
    keys_b = b if keys_b is None else keys_b
    n, m = a.shape[0], keys_a.shape[0]
    pos = torch.arange(n, device=a.device) + offset  # (N,) index of each row's positive among M keys
    if negatives == "cross":
        loss_ab = F.cross_entropy(a @ keys_b.T / temperature, pos, reduction=reduction)  # (N, M) logits
        loss_ba = F.cross_entropy(b @ keys_a.T / temperature, pos, reduction=reduction)
        return 0.5 * (loss_ab + loss_ba)
    if negatives != "all":
        raise ValueError(f"negatives={negatives!r}: expected one of {NEGATIVES}")
    rows = torch.cat([a, b])  # (2N, D)
    keys = torch.cat([keys_a, keys_b])  # (2M, D)
    logits = rows @ keys.T / temperature  # (2N, 2M)
    self_idx = torch.cat([pos, pos + m])  # each anchor's own column
    pos_idx = torch.cat([pos + m, pos])  # the other view of the same image
    logits = logits.masked_fill(F.one_hot(self_idx, 2 * m).bool(), float("-inf"))
    return F.cross_entropy(logits, pos_idx, reduction=reduction)
