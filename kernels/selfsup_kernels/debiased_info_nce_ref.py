"""THE PyTorch reference for the debiased / hard-negative InfoNCE op (docs/api.md, `DebiasedInfoNCELoss`).

Same rows-vs-keys convention as :mod:`selfsup_kernels.info_nce_ref`: rows ``a, b`` (N, D) are this process's
anchors, ``keys_a, keys_b`` (M, D) the (possibly gathered) global batch and ``offset`` the position of the local
rows inside the keys. Each of the 2N anchors i has one positive p (the other view of the same image) and the
``Mneg = 2M - 2`` other keys of both views as negatives (M = global number of pairs):

    pos_i = exp(s(i, p)),   neg_ij = exp(s(i, j)),   s = cosine / τ
    w_ij  = neg_ij^β / mean_j(neg_ij^β)                       (β = 0: w = 1; not detached)
    Ng_i  = max((Σ_j w_ij neg_ij − τ⁺ · Mneg · pos_i) / (1 − τ⁺),  Mneg · e^{−1/τ})
    l_i   = −log(pos_i / (pos_i + Ng_i)),   loss = mean_i l_i

Debiased contrastive loss: Chuang et al. 2020, arXiv:2007.00224 (chingyaoc/DCL ``main.py::train``); hard negatives:
Robinson et al. 2021, arXiv:2010.04592 (joshr17/HCL ``image/main.py::criterion``). Both exponentiate raw
similarities; here every anchor's terms are scaled by e^{−c_i} (c_i its largest non-self logit, detached), which
cancels in l_i and in w, so the value is the same but nothing overflows for small τ. The weights are computed as
``Mneg · softmax_j(β s(i, j))`` — equal to neg^β / mean(neg^β).

Inputs (L2-normalised) and the computation's dtype as for :mod:`selfsup_kernels.info_nce_ref`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from selfsup_kernels._inputs import check_min_keys, key_rows


def debiased_info_nce_ref(
    a: torch.Tensor,
    b: torch.Tensor,
    keys_a: torch.Tensor | None = None,
    keys_b: torch.Tensor | None = None,
    offset: int = 0,
    temperature: float = 0.5,
    tau_plus: float = 0.1,
    beta: float = 0.0,
) -> torch.Tensor:
    """Mean debiased InfoNCE over the local anchors ``a, b`` (N, D) against keys ``keys_a, keys_b`` (M, D)."""
    keys_a, keys_b = key_rows(a, b, keys_a, keys_b)
    n, m = a.shape[0], keys_a.shape[0]
    check_min_keys(m, 2)
    num_neg = 2 * m - 2
    pos = torch.arange(n, device=a.device) + offset  # (N,) index of each row's positive among M keys
    rows = torch.cat([a, b])  # (2N, D)
    keys = torch.cat([keys_a, keys_b])  # (2M, D)
    logits = rows @ keys.T / temperature  # (2N, 2M)
    self_idx = torch.cat([pos, pos + m])  # each anchor's own column
    pos_idx = torch.cat([pos + m, pos])  # the other view of the same image
    pos_logit = logits.gather(1, pos_idx[:, None]).squeeze(1)  # (2N,)
    not_neg = F.one_hot(self_idx, 2 * m).bool() | F.one_hot(pos_idx, 2 * m).bool()
    neg_logits = logits.masked_fill(not_neg, float("-inf"))  # (2N, 2M), 2M-2 finite entries per row
    shift = torch.maximum(neg_logits.max(dim=1).values, pos_logit).detach()  # (2N,) c_i
    neg = torch.exp(neg_logits - shift[:, None])  # e^{-c} neg_ij, 0 on self and positive
    if beta == 0:
        neg_sum = neg.sum(dim=1)
    else:
        weights = num_neg * torch.softmax(beta * neg_logits, dim=1)  # neg^β / mean(neg^β)
        neg_sum = (weights * neg).sum(dim=1)
    pos_exp = torch.exp(pos_logit - shift)  # e^{-c} pos_i
    ng = (neg_sum - tau_plus * num_neg * pos_exp) / (1 - tau_plus)
    floor = num_neg * torch.exp(-1.0 / temperature - shift)  # e^{-c} Mneg e^{-1/τ}
    ng = torch.clamp(ng, min=floor)
    # -log(pos / (pos + Ng)) with both scaled by e^{-c}; log(pos e^{-c}) = s_pos - c exactly
    return (torch.log(pos_exp + ng) - (pos_logit - shift)).mean()
