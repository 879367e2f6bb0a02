"""Exact neighbour search and retrieval scores (precision@k, MAP@R) against brute-force float64 references."""

import math

import numpy as np
import pytest
import torch

from selfsup.neighbours import map_at_r, neighbour_chunks, precision_at_k


def test_neighbour_chunks_on_another_bank_ranks_by_score():
    g = torch.Generator().manual_seed(4)
    bank = torch.randn(50, 6, dtype=torch.float64, generator=g)
    queries = torch.randn(9, 6, dtype=torch.float64, generator=g)
    ((start, top, idx),) = list(neighbour_chunks(queries, bank, 3, "inner_product"))
    ref = queries.numpy() @ bank.numpy().T
    np.testing.assert_array_equal(idx.numpy(), np.argsort(-ref, axis=1)[:, :3])
    np.testing.assert_allclose(top.numpy(), np.take_along_axis(ref, idx.numpy(), 1), rtol=1e-12)


def reference_retrieval(bank, bl, queries, ql, k):
    u = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    s = u(queries) @ u(bank).T
    order = np.argsort(-s, axis=1, kind="stable")
    p_at_k, aps = [], []
    for q in range(len(queries)):
        rel = (bl[order[q]] == ql[q]).astype(float)
        p_at_k.append(rel[:k].mean())
        r = int((bl == ql[q]).sum())
        aps.append(sum(rel[: i + 1].sum() / (i + 1) * rel[i] for i in range(r)) / r if r else 0.0)
    return float(np.mean(p_at_k)), float(np.mean(aps))


def test_precision_and_map_at_r_equal_float64_references():
    g = torch.Generator().manual_seed(6)
    bank = torch.randn(60, 5, dtype=torch.float64, generator=g)
    queries = torch.randn(25, 5, dtype=torch.float64, generator=g)
    bl, ql = torch.randint(0, 4, (60,), generator=g), torch.randint(0, 5, (25,), generator=g)  # class 4: not in bank
    p, m = reference_retrieval(bank.numpy(), bl.numpy(), queries.numpy(), ql.numpy(), k=7)
    assert precision_at_k(bank, bl, queries, ql, k=7, chunk_size=4) == pytest.approx(p, abs=1e-12)
    assert map_at_r(bank, bl, queries, ql, chunk_size=4) == pytest.approx(m, abs=1e-12)
    assert map_at_r(bank, bl, bank, bl) == pytest.approx(
        reference_retrieval(bank.numpy(), bl.numpy(), bank.numpy(), bl.numpy(), 1)[1], abs=1e-12
    )
    assert not math.isnan(m)
