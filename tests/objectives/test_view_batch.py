"""ViewBatch's own operations (objectives/base.py): cat, rows and map keep every field and shared tensors."""

import pytest
import torch

from selfsup.objectives import ViewBatch


def chunk(rows: int, seed: int) -> ViewBatch:
    g = torch.Generator().manual_seed(seed)
    z = [torch.randn(rows, 3, generator=g) for _ in range(3)]
    k = [torch.randn(rows, 3, generator=g), z[1]]  # key 0 from a target, key 1 the projection itself
    feats = [torch.randn(rows, 4, generator=g) for _ in range(3)]
    params = [torch.rand(rows, 14, generator=g), None, torch.rand(rows, 14, generator=g)]
    extras = {"scores": [torch.randn(rows, 2, generator=g)]}
    return ViewBatch(z, z, k, feats, params, 2, False, extras, torch.arange(rows) + 10 * seed)


def test_cat_then_rows_gives_back_every_field_of_each_chunk():
    chunks = [chunk(2, 1), chunk(3, 2)]
    whole = ViewBatch.cat(chunks)
    assert whole.num_global == 2 and whole.symmetric is False and whole.params[1] is None
    assert torch.equal(whole.index, torch.tensor([10, 11, 20, 21, 22]))
    assert whole.extras["scores"][0].shape == (5, 2)
    assert all(q is z for q, z in zip(whole.q, whole.z)) and whole.k[1] is whole.z[1]  # shared stays shared
    assert whole.one_branch is False
    start = 0
    for c in chunks:
        part = whole.rows(start, start + len(c.index))
        for name in ("z", "q", "k", "feats", "params"):
            for got, want in zip(getattr(part, name), getattr(c, name)):
                assert (got is None and want is None) or torch.equal(got, want), name
        assert torch.equal(part.index, c.index) and torch.equal(part.extras["scores"][0], c.extras["scores"][0])
        start += len(c.index)


def test_map_maps_a_shared_tensor_once():
    b = chunk(2, 1)
    seen = []
    mapped = b.map(lambda t: seen.append(t) or t * 2)
    assert mapped.q[0] is mapped.z[0] and mapped.k[1] is mapped.z[1]
    assert len(seen) == len({id(t) for t in seen})  # each distinct tensor once


def test_chunks_that_disagree_on_a_non_tensor_are_refused():
    a, b = chunk(2, 1), chunk(2, 2)
    b.num_global = 1
    with pytest.raises(ValueError, match="chunks disagree on a value that is not a tensor"):
        ViewBatch.cat([a, b])
