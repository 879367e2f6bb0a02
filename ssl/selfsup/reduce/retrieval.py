"""Label-based retrieval quality of a feature space: test rows query a bank of train rows, a hit shares the label.

- :func:`precision_at_k`: mean over queries of |{hits among the k most similar bank rows}| / k.
- :func:`map_at_r`: MAP@R (Musgrave et al. 2020, "A Metric Learning Reality Check", arXiv:2003.08505 §3.2): with
  R_q = the number of bank rows of the query's label, AP@R_q = (1/R_q) Σ_{i ≤ R_q} P(i)·rel(i), P(i) the precision
  of the first i results, rel(i) ∈ {0, 1}; mean over queries (the definition of pytorch-metric-learning's
  ``AccuracyCalculator``, ``mean_average_precision_at_r``).

Both rank by :func:`selfsup.reduce.tldr.neighbour_chunks` (exact, chunked; cosine by default, like
:func:`selfsup.metrics.knn_top1`).
"""

from __future__ import annotations

import torch

from selfsup import checks
from selfsup.reduce.tldr import neighbour_chunks


def _labels(y, n: int, name: str) -> torch.Tensor:
    y = torch.as_tensor(y)
    if y.ndim != 1 or y.shape[0] != n or y.is_floating_point():
        raise ValueError(f"{name}: got {tuple(y.shape)} {y.dtype}, expected ({n},) integer labels")
    return y.long()


def precision_at_k(
    bank, bank_labels, queries, query_labels, k: int = 10, metric: str = "cosine", chunk_size: int | None = None
) -> float:
    """Mean fraction of the k nearest bank rows that share the query's label, in [0, 1]."""
    bank_labels = _labels(bank_labels, bank.shape[0], "bank_labels")
    query_labels = _labels(query_labels, queries.shape[0], "query_labels")
    checks.integer("k", k, minimum=1, maximum=bank.shape[0])  # at most every bank row
    hits = 0.0
    for start, _, idx in neighbour_chunks(queries, bank, k, metric, chunk_size):
        y = query_labels[start : start + idx.shape[0], None]  # (B, 1)
        hits += (bank_labels[idx.cpu()] == y).double().mean(1).sum().item()
    return hits / queries.shape[0]


def map_at_r(bank, bank_labels, queries, query_labels, metric: str = "cosine", chunk_size: int | None = None) -> float:
    """MAP@R of test queries against the bank (module docstring), in [0, 1]. Queries whose label has no bank row
    count as 0."""
    bank_labels = _labels(bank_labels, bank.shape[0], "bank_labels")
    query_labels = _labels(query_labels, queries.shape[0], "query_labels")
    counts = torch.bincount(bank_labels, minlength=int(query_labels.max()) + 1)
    r = counts[query_labels]  # (M,) R per query
    r_max = int(r.max())
    if r_max == 0:
        return 0.0
    if chunk_size is None:  # the (chunk, R_max) result blocks are kept small too
        chunk_size = max(1, min((1 << 25) // bank.shape[0], (1 << 24) // r_max))
    total = 0.0
    ranks = torch.arange(1, r_max + 1, dtype=torch.float64)  # (R_max,)
    for start, _, idx in neighbour_chunks(queries, bank, r_max, metric, chunk_size):
        y = query_labels[start : start + idx.shape[0], None]  # (B, 1)
        rq = r[start : start + idx.shape[0], None].double()  # (B, 1)
        rel = (bank_labels[idx.cpu()] == y).double() * (ranks <= rq)  # (B, R_max), only the first R_q count
        precision = rel.cumsum(1) / ranks  # P(i)
        ap = (precision * rel).sum(1) / rq.clamp(min=1).squeeze(1)
        total += ap.sum().item()
    return total / queries.shape[0]
