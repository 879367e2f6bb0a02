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

``negatives="one_way"``: ``CE(S_ab)`` alone — queries ``a`` against the keys of ``b`` (MoCo v3's
``contrastive_loss(q, k)`` without its 2τ factor, facebookresearch/moco-v3 ``moco/builder.py``).

:func:`info_nce_queue_ref` is MoCo's form (He et al. 2020, arXiv:1911.05722, Algorithm 1;
facebookresearch/moco ``moco/builder.py::forward``): each query's positive is its own key, the negatives are a
queue of past keys — ``l = CE([q·k, q·queueᵀ] / τ, 0)``.

Inputs must already be L2-normalised; computation runs in the inputs' dtype (float64 for golden tests).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from selfsup_kernels._inputs import NEGATIVES, REDUCTIONS, check_choice, key_rows


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
    (N,) ``0.5 * (l_ab + l_ba)`` per pair for ``"cross"``, (N,) ``l_ab`` for ``"one_way"``.
    """
    check_choice("reduction", reduction, REDUCTIONS)
    check_choice("negatives", negatives, NEGATIVES)
    keys_a, keys_b = key_rows(a, b, keys_a, keys_b)
    n, m = a.shape[0], keys_a.shape[0]
    pos = torch.arange(n, device=a.device) + offset  # (N,) index of each row's positive among M keys
    if negatives in ("cross", "one_way"):
        loss_ab = F.cross_entropy(a @ keys_b.T / temperature, pos, reduction=reduction)  # (N, M) logits
        if negatives == "one_way":
            return loss_ab
        loss_ba = F.cross_entropy(b @ keys_a.T / temperature, pos, reduction=reduction)
        return 0.5 * (loss_ab + loss_ba)
    rows = torch.cat([a, b])  # (2N, D)
    keys = torch.cat([keys_a, keys_b])  # (2M, D)
    logits = rows @ keys.T / temperature  # (2N, 2M)
    self_idx = torch.cat([pos, pos + m])  # each anchor's own column
    pos_idx = torch.cat([pos + m, pos])  # the other view of the same image
    logits = logits.masked_fill(F.one_hot(self_idx, 2 * m).bool(), float("-inf"))
    return F.cross_entropy(logits, pos_idx, reduction=reduction)


def info_nce_queue_ref(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, temperature: float = 0.2) -> torch.Tensor:
    """MoCo's InfoNCE: mean over the rows of ``q`` (N, D) of ``CE([q_i·k_i, q_i·queueᵀ] / τ, 0)`` with ``k`` (N, D)
    the positives and ``queue`` (K, D) the negatives, all L2-normalised."""
    pos = (q * k).sum(dim=1, keepdim=True)  # (N, 1)
    logits = torch.cat([pos, q @ queue.T], dim=1) / temperature  # (N, 1 + K)
    return F.cross_entropy(logits, torch.zeros(q.shape[0], dtype=torch.long, device=q.device))
