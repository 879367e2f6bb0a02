"""The Triton InfoNCE and debiased InfoNCE kernels on shapes that need several tiles in both dimensions, a ragged
last tile in each, and positives that straddle tile boundaries (issue 28).

Under the interpreter (tests/conftest.py: TRITON_INTERPRET=1) the kernels of both ops run with
``_tiles.INTERPRETER_BLOCKS`` (32-wide row and key tiles, 32-wide D chunks). The shapes here, for those tiles:

- rows: 2N = 90 anchors → 3 row tiles, the last 26 wide; keys: 2M = 140 → 5 key tiles, the last 12 wide;
- offset 13: anchor r's positive is key offset + r of the other view, so the positive band crosses key-tile
  boundaries where the row tiles do not (anchors 19..31: row tile 0, positives in key tile 1 of their half);
- D = 20 (one partial D chunk) and D = 40 (two, the second 8 wide);
- one process (keys = rows): 2N = 100 → 4 tiles each way, the last 4 wide;
- and 16-wide tiles (the interpreter's table set for one test) at D = 16: 6 row tiles x 9 key tiles.

Value (mean and, for InfoNCE, every row's loss) and the gradients of all four inputs in fp32 against THE PyTorch
reference of the same package (``info_nce_ref`` / ``debiased_info_nce_ref``) on float64 copies. Tolerances are the
kernels' documented fp32 ones: 1e-5 relative on losses, 1e-4 of the largest gradient entry on gradients.
"""

import pytest
import torch
import torch.nn.functional as F

from selfsup_kernels import debiased_info_nce_ref, info_nce_ref
from selfsup_kernels._tiles import INTERPRETER_BLOCKS
from selfsup_kernels.debiased_info_nce_triton import debiased_info_nce_triton
from selfsup_kernels.info_nce_triton import info_nce_triton

LOSS_TOL, GRAD_TOL = 1e-5, 1e-4
KEYS = [(45, 70, 20, 13), (45, 70, 40, 13)]  # (N, M, D, offset): several tiles both ways, ragged last tiles
SELF = [(50, 20)]  # (N, D), keys = rows
HYPER = [(0.2, 0.1, 0.0), (0.2, 0.1, 1.0)]  # (τ, τ⁺, β): DCL, HCL


@pytest.fixture
def tile16(monkeypatch):
    """16-wide interpreter tiles (6 row tiles x 9 key tiles on the KEYS shapes), restored afterwards."""
    blocks = INTERPRETER_BLOCKS
    for key in blocks:
        monkeypatch.setitem(blocks, key, 16)
    return 16


def tiles(rows: int, width: int) -> tuple[int, int]:
    """(tiles, width of the last one)."""
    return -(-rows // width), rows - (rows - 1) // width * width


def make_inputs(n, m, d, offset, seed):
    """fp32 unit rows a, b (N, D) and keys (M, D) that hold a, b at rows offset..offset + N (a gathered batch)."""
    g = torch.Generator().manual_seed(seed)
    unit = lambda k: F.normalize(torch.randn(k, d, generator=g, dtype=torch.float64), dim=1).float()
    a, b, keys_a, keys_b = unit(n), unit(n), unit(m), unit(m)
    keys_a[offset : offset + n], keys_b[offset : offset + n] = a, b
    return a, b, keys_a, keys_b


def leaves(tensors, dtype):
    return [t.detach().to(dtype).clone().requires_grad_() for t in tensors]


def assert_close_loss(out, ref):
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    err = (out.double() - ref.detach()).abs()
    assert (err <= LOSS_TOL * ref.detach().abs().clamp_min(1e-3)).all(), f"loss error {err.max().item():.2e}"


def assert_close_grads(got, want):
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        assert g is not None and g.dtype == torch.float32
        err = (g.double() - w).abs().max().item()
        assert err <= GRAD_TOL * w.abs().max().item(), f"gradient of input {i}: error {err:.2e}"


def run_keys(fn, ref_fn, n, m, d, offset, *args, reduction=None):
    tensors = make_inputs(n, m, d, offset, seed=n + m + d)
    mine, ref_leaves = leaves(tensors, torch.float32), leaves(tensors, torch.float64)
    kw = {} if reduction is None else {"reduction": reduction}
    out, ref = fn(*mine, offset, *args, **kw), ref_fn(*ref_leaves, offset, *args, **kw)
    assert_close_loss(out, ref)
    # a non-uniform upstream gradient for per-row losses: each row's share of the backward is checked
    weights = torch.linspace(0.5, 1.5, out.numel(), dtype=torch.float64).reshape(out.shape)
    (out * weights.float()).sum().backward()
    (ref * weights).sum().backward()
    assert_close_grads([t.grad for t in mine], [t.grad for t in ref_leaves])


def run_self(fn, ref_fn, n, d, *args):
    a, b = make_inputs(n, n, d, 0, seed=n + d)[:2]
    (ma, mb), (ra, rb) = leaves([a, b], torch.float32), leaves([a, b], torch.float64)
    out, ref = fn(ma, mb, ma, mb, 0, *args), ref_fn(ra, rb, ra, rb, 0, *args)
    assert_close_loss(out, ref)
    out.backward()
    ref.backward()
    assert_close_grads([ma.grad, mb.grad], [ra.grad, rb.grad])


TILE = INTERPRETER_BLOCKS["BLOCK_M"]


@pytest.mark.parametrize("tile", [TILE, 16])
def test_shapes_are_multi_tile(tile):
    assert INTERPRETER_BLOCKS == {"BLOCK_M": 32, "BLOCK_N": 32, "BLOCK_D": 32, "BLOCK_DO": 32}
    for n, m, _, offset in KEYS:
        row_tiles, row_last = tiles(2 * n, tile)
        key_tiles, key_last = tiles(2 * m, tile)
        assert row_tiles >= 3 and key_tiles >= 5 and 0 < row_last < tile and 0 < key_last < tile
        # some positive (key column offset + r of anchor row r) lies in a later key tile than its row
        assert any((offset + r) // tile > r // tile for r in range(n))
    for n, _ in SELF:
        count, last = tiles(2 * n, tile)
        assert count >= 4 and 0 < last < tile
    assert any(d > TILE and d % TILE for _, _, d, _ in KEYS)  # a chunked D with a partial last chunk


@pytest.mark.parametrize("negatives", ["all", "cross"])
@pytest.mark.parametrize("n,m,d,offset", KEYS)
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_info_nce_keys(n, m, d, offset, negatives, reduction):
    run_keys(info_nce_triton, info_nce_ref, n, m, d, offset, 0.3, negatives, reduction=reduction)


@pytest.mark.parametrize("negatives", ["all", "cross"])
@pytest.mark.parametrize("n,d", SELF)
def test_info_nce_single_process(n, d, negatives):
    run_self(info_nce_triton, info_nce_ref, n, d, 0.3, negatives)


@pytest.mark.parametrize("hyper", HYPER)
@pytest.mark.parametrize("n,m,d,offset", KEYS)
def test_debiased_keys(n, m, d, offset, hyper):
    run_keys(debiased_info_nce_triton, debiased_info_nce_ref, n, m, d, offset, *hyper)


@pytest.mark.parametrize("hyper", HYPER)
@pytest.mark.parametrize("n,d", SELF)
def test_debiased_single_process(n, d, hyper):
    run_self(debiased_info_nce_triton, debiased_info_nce_ref, n, d, *hyper)


@pytest.mark.parametrize(
    "fn,ref_fn,args",
    [
        (info_nce_triton, info_nce_ref, (0.3, "all")),
        (info_nce_triton, info_nce_ref, (0.3, "cross")),
        (debiased_info_nce_triton, debiased_info_nce_ref, HYPER[1]),
    ],
    ids=["all", "cross", "hcl"],
)
def test_sixteen_wide_tiles(tile16, fn, ref_fn, args):
    n, m, _, offset = KEYS[0]
    kw = {"reduction": "none"} if fn is info_nce_triton else {}
    run_keys(fn, ref_fn, n, m, 16, offset, *args, **kw)
