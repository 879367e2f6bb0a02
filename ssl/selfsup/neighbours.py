"""Exact nearest neighbours of feature rows, and the label-based retrieval quality of a feature space.

- :func:`neighbour_chunks`: exact top-k search of query rows in a bank, one (chunk, N) score block at a time (CPU or
  GPU); cosine similarity (default, the similarity of :func:`selfsup.metrics.knn_top1`), inner product or
  euclidean. TLDR's neighbour graph (:mod:`selfsup.reduce.tldr`) and the retrieval scores below use it.
- :func:`precision_at_k`: test rows query a bank of train rows, a hit shares the label; mean over queries of
  |{hits among the k most similar bank rows}| / k.
- :func:`map_at_r`: MAP@R (Musgrave et al. 2020, "A Metric Learning Reality Check", arXiv:2003.08505 §3.2): with
  R_q = the number of bank rows of the query's label, AP@R_q = (1/R_q) Σ_{i ≤ R_q} P(i)·rel(i), P(i) the precision
  of the first i results, rel(i) ∈ {0, 1}; mean over queries (the definition of pytorch-metric-learning's
  ``AccuracyCalculator``, ``mean_average_precision_at_r``).

``selfsup-eval eval.protocols=[...,retrieval]`` reports both (docs/evaluation.md); ``bench/tldr_table.py`` too.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F

from selfsup import checks

METRICS = ("cosine", "inner_product", "euclidean")
# Largest (query rows × bank rows) score block materialised at once when chunk_size is not given: 2^25 = 128 MiB fp32.
BLOCK_ELEMENTS = 1 << 25


def check_metric(metric: str, key: str = "knn.metric") -> str:
    return checks.one_of(key, metric, METRICS)


def _prepare(x: torch.Tensor, metric: str) -> torch.Tensor:
    x = x if x.dtype == torch.float64 else x.float()
    return F.normalize(x, dim=1) if metric == "cosine" else x


def neighbour_chunks(
    queries: torch.Tensor,
    bank: torch.Tensor,
    k: int,
    metric: str = "cosine",
    chunk_size: int | None = None,
    exclude_self: bool = False,
    device: str | torch.device | None = None,
) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """Exact top-k search, one block of query rows at a time: yields ``(start, scores (B, k), indices (B, k))``,
    most similar first. Score: cosine similarity, inner product, or −‖q − x‖² for ``euclidean`` (computed as
    2 q·x − ‖x‖², the same order). ``exclude_self``: query row i is bank row i and never its own neighbour."""
    check_metric(metric)
    device = torch.device(device) if device is not None else bank.device
    bank = _prepare(bank.to(device), metric)  # (N, D)
    n = bank.shape[0]
    if chunk_size is None:
        chunk_size = max(1, BLOCK_ELEMENTS // max(1, n))
    checks.integer("knn.chunk_size", chunk_size, minimum=1)
    sq_norms = bank.pow(2).sum(1) if metric == "euclidean" else None  # (N,)
    for start in range(0, queries.shape[0], chunk_size):
        q = _prepare(queries[start : start + chunk_size].to(device), metric).to(bank.dtype)  # (B, D)
        scores = q @ bank.T  # (B, N)
        if sq_norms is not None:
            scores = 2 * scores - sq_norms
        if exclude_self:
            rows = torch.arange(q.shape[0], device=device)
            scores[rows, start + rows] = -math.inf
        top, idx = scores.topk(k, dim=1)  # (B, k)
        yield start, top, idx


def precision_at_k(
    bank, bank_labels, queries, query_labels, k: int = 10, metric: str = "cosine", chunk_size: int | None = None
) -> float:
    """Mean fraction of the k nearest bank rows that share the query's label, in [0, 1]."""
    bank_labels = checks.labels("bank_labels", bank_labels, bank.shape[0])
    query_labels = checks.labels("query_labels", query_labels, queries.shape[0])
    checks.integer("k", k, minimum=1, maximum=bank.shape[0])  # at most every bank row
    hits = 0.0
    for start, _, idx in neighbour_chunks(queries, bank, k, metric, chunk_size):
        y = query_labels[start : start + idx.shape[0], None]  # (B, 1)
        hits += (bank_labels[idx.cpu()] == y).double().mean(1).sum().item()
    return hits / queries.shape[0]


def map_at_r(bank, bank_labels, queries, query_labels, metric: str = "cosine", chunk_size: int | None = None) -> float:
    """MAP@R of test queries against the bank (module docstring), in [0, 1]. Queries whose label has no bank row
    count as 0."""
    bank_labels = checks.labels("bank_labels", bank_labels, bank.shape[0])
    query_labels = checks.labels("query_labels", query_labels, queries.shape[0])
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
