"""Fused Triton InfoNCE / NT-Xent: forward and backward without the (2N, 2M) logit matrix in device memory.

Same signature, value and gradients as :func:`selfsup_kernels.info_nce_ref.info_nce_ref` (THE reference: formula,
papers and official code are cited there). With rows ``Q = [a; b]`` (2N, D), keys ``K = [keys_a; keys_b]`` (2M, D)
and ``l_ij = q_i·k_j / τ``, both negative sets are a mean over 2N row losses::

    loss = 1/(2N) Σ_i [ LSE_{j ∈ J(i)} l_ij − l_i,pos(i) ]
    "all":   J(i) = all 2M keys except the anchor's own column (SimCLR NT-Xent, arXiv:2002.05709)
    "cross": J(i) = the M keys of the other view (0.5·(CE(S_ab) + CE(S_ba)), MoCo v3 arXiv:2104.02057 / CLIP)

Kernels (FlashAttention-2 tiling, arXiv:2307.08691, with V = K and an O(1) output per row):

- forward: one program per BLOCK_M rows; loops over BLOCK_N key tiles (and over D in BLOCK_D chunks inside each
  tile, so any D works), keeps an online log-sum-exp in base 2 (running max ``m``, sum ``l``) plus the positive logit.
  Saves only ``LSE`` per row (fp32, 2N values) and writes the 2N row losses; the mean is taken in torch.
- backward: ``dl_ij = (p_ij − y_ij)/(2N)`` with ``p_ij = exp(l_ij − LSE_i)`` recomputed tile by tile.
  ``dQ_i = Σ_j dl_ij k_j / τ`` comes from row tiles and ``dK_j = Σ_i dl_ij q_i / τ`` from key tiles (no atomics,
  deterministic). The D axis of the output is a grid axis in BLOCK_DO chunks so the fp32 accumulator stays
  (BLOCK, BLOCK_DO) for D up to 2048 and beyond; for D > BLOCK_DO the logits of a tile are recomputed once per
  chunk (a D/BLOCK_DO FLOP factor on the backward, the price of not storing them).
- single process (the keys are the rows: ``keys_a``/``keys_b`` None or ``a``/``b`` themselves, offset 0): K = Q and l
  is symmetric, so one kernel produces the whole gradient ``g_x = Σ_j (dl_xj + dl_jx) q_j / τ`` with
  ``dl_jx = (exp(l_xj − LSE_j) − y_jx)/(2N)``: the backward computes each logit tile once, not twice (4·(2N)²·D
  backward FLOPs instead of 8·(2N)²·D).
- ``reduction="none"`` (as the reference): the row losses are returned instead of their mean and the backward
  takes per-row weights ``w_i`` (upstream gradients, max-normalised) in ``dl_ij = w_i (p_ij − y_ij)``.

Row/key layout, logit tiles, gradient chunks and the launch are :mod:`selfsup_kernels._tiles` (shared with the
debiased kernel); this module keeps the online LSE and ``p − y``. Tile sizes come from a heuristic
(``_tiles.heuristic_config``; d ≤ 128 keeps whole rows in registers, larger d uses 128-wide forward chunks and
(64, 256) backward accumulators, checked spill-free for sm_90 by compiling ahead of time);
``SELFSUP_KERNELS_AUTOTUNE=1`` autotunes BLOCK_M/BLOCK_N/warps/stages of this op's kernels instead (the benchmark
does).

Memory: inputs, O(N·D) for the concatenated rows/keys and gradients, 2 fp32 values per row — nothing O(N²).
Precision: fp32/fp16/bf16 inputs; dot products accumulate in fp32 (fp32 inputs use IEEE fp32 dots, not TF32);
``p − y`` is cast to the input dtype for the gradient matmul (as FlashAttention does). Tests: fp32 within 1e-5
(loss, relative) and 1e-4 (gradients) of the float64 reference; fp16 within 2e-3 / 5e-3; bf16 (GPU) 1e-2 / 3e-2.
The interpreter (``TRITON_INTERPRET=1``) computes bf16 ``tl.dot`` wrongly, so there bf16 tiles are upcast first.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from selfsup_kernels import _tiles as tiles
from selfsup_kernels._inputs import REDUCTIONS, check_choice, check_rows
from selfsup_kernels._tiles import LN2, LOG2E

NEGATIVES = ("all", "cross")  # the kernel's forms (one_way runs on the reference)


@triton.jit
def _fwd_kernel(
    Q,
    K,
    LSE,
    LOSS,
    N,
    M,
    offset,
    scale,
    stride_q,
    stride_k,
    D: tl.constexpr,
    CROSS: tl.constexpr,
    SYMMETRIC: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    UPCAST: tl.constexpr,
    PREC: tl.constexpr,
):
    h = tl.program_id(1)
    row, row_ok, pos_col, self_col = tiles.row_tile(tl.program_id(0) * BLOCK_M, h, N, M, offset, BLOCK_M, CROSS)
    # log2-domain online LSE; a finite initial max keeps fully masked tiles NaN-free (alpha = 1, l += 0)
    m_i = tl.full([BLOCK_M], -1.0e30, tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    s_pos = tl.zeros([BLOCK_M], tl.float32)
    q = tiles.resident_rows(Q, row, row_ok, stride_q, D, BLOCK_D)
    for n0 in range(0, tiles.span(M, CROSS), BLOCK_N):
        col, col_ok, col64 = tiles.key_tile(n0, 1 - h, M, BLOCK_N, CROSS)
        s = tiles.fwd_logits(Q, K, q, row, row_ok, col64, col_ok, stride_q, stride_k, D, BLOCK_D, UPCAST, PREC)
        s = s * scale  # (BLOCK_M, BLOCK_N) logits in log2 units
        s_pos += tl.sum(tl.where(col[None, :] == pos_col[:, None], s, 0.0), axis=1)
        s = tl.where(col_ok[None, :] & (col[None, :] != self_col[:, None]), s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        l_i = l_i * tl.exp2(m_i - m_new) + tl.sum(tl.exp2(s - m_new[:, None]), axis=1)
        m_i = m_new
    lse = m_i + tl.log2(l_i)
    tl.store(LSE + row, lse, mask=row_ok)
    tl.store(LOSS + row, (lse - s_pos) * LN2, mask=row_ok)


@triton.jit
def _dq_kernel(
    Q,
    K,
    LSE,
    W,
    GRAD,
    DQ,
    N,
    M,
    offset,
    scale,
    grad_scale,
    stride_q,
    stride_k,
    stride_dq,
    D: tl.constexpr,
    CROSS: tl.constexpr,
    SYMMETRIC: tl.constexpr,
    ROW_WEIGHTS: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_DO: tl.constexpr,
    UPCAST: tl.constexpr,
    PREC: tl.constexpr,
):
    """dQ[rows, chunk] = Σ_j dl_ij K[j, chunk] / τ (+ the transposed term dl_ji when SYMMETRIC, K = Q).

    dl_ij = GRAD · grad_scale · W_i · (p_ij − y_ij); W (per-row weights, max |W| = 1) only when ROW_WEIGHTS.
    """
    h = tl.program_id(1)
    row, row_ok, pos_col, self_col = tiles.row_tile(tl.program_id(0) * BLOCK_M, h, N, M, offset, BLOCK_M, CROSS)
    lse_r = tl.load(LSE + row, mask=row_ok, other=0.0)
    if ROW_WEIGHTS:
        w_r = tl.load(W + row, mask=row_ok, other=0.0)
    do, q = tiles.grad_chunk(tl.program_id(2), Q, row, row_ok, stride_q, D, BLOCK_D, BLOCK_DO)
    acc = tl.zeros((BLOCK_M, BLOCK_DO), tl.float32)
    for n0 in range(0, tiles.span(M, CROSS), BLOCK_N):
        col, col_ok, col64 = tiles.key_tile(n0, 1 - h, M, BLOCK_N, CROSS)
        k, s = tiles.grad_tile(Q, K, q, row, row_ok, col64, col_ok, stride_q, stride_k, do, D, BLOCK_D, UPCAST, PREC)
        s = tl.where(col_ok[None, :] & (col[None, :] != self_col[:, None]), s * scale, float("-inf"))
        y = (col[None, :] == pos_col[:, None]).to(tl.float32)
        ds = tl.exp2(s - lse_r[:, None]) - y  # (BLOCK_M, BLOCK_N) = dL/dl up to the weights
        if ROW_WEIGHTS:
            ds = ds * w_r[:, None]
        if SYMMETRIC:  # l_jx = l_xj, y_jx = y_xj (pos is an involution)
            lse_c = tl.load(LSE + col64, mask=col_ok, other=0.0)
            ds_t = tl.exp2(s - lse_c[None, :]) - y
            if ROW_WEIGHTS:
                ds_t = ds_t * tl.load(W + col64, mask=col_ok, other=0.0)[None, :]
            ds += ds_t
        acc += tiles.dot(ds.to(k.dtype), k, UPCAST, PREC)
    tiles.store_grad(DQ, row, row_ok, stride_dq, do, D, acc, GRAD, grad_scale)


@triton.jit
def _dk_kernel(
    Q,
    K,
    LSE,
    W,
    GRAD,
    DK,
    N,
    M,
    offset,
    scale,
    grad_scale,
    stride_q,
    stride_k,
    stride_dk,
    D: tl.constexpr,
    CROSS: tl.constexpr,
    SYMMETRIC: tl.constexpr,
    ROW_WEIGHTS: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_DO: tl.constexpr,
    UPCAST: tl.constexpr,
    PREC: tl.constexpr,
):
    """dK[cols, chunk] = Σ_i dl_ij Q[i, chunk] / τ, one program per BLOCK_N keys (no atomics)."""
    hc = tl.program_id(1)  # with CROSS, key half hc is seen by the rows of the other view
    col, col_ok, col64 = tiles.key_tile(tl.program_id(0) * BLOCK_N, hc, M, BLOCK_N, CROSS)
    do, k = tiles.grad_chunk(tl.program_id(2), K, col64, col_ok, stride_k, D, BLOCK_D, BLOCK_DO)
    acc = tl.zeros((BLOCK_N, BLOCK_DO), tl.float32)
    for m0 in range(0, tiles.span(N, CROSS), BLOCK_M):
        row, row_ok, pos_col, self_col = tiles.row_tile(m0, 1 - hc, N, M, offset, BLOCK_M, CROSS)
        q, st = tiles.grad_tile(K, Q, k, col64, col_ok, row, row_ok, stride_k, stride_q, do, D, BLOCK_D, UPCAST, PREC)
        # (BLOCK_N, BLOCK_M) transposed logits; masked rows contribute nothing
        st = tl.where(row_ok[None, :] & (col[:, None] != self_col[None, :]), st * scale, float("-inf"))
        lse_r = tl.load(LSE + row, mask=row_ok, other=0.0)
        y = (row_ok[None, :] & (col[:, None] == pos_col[None, :])).to(tl.float32)
        dst = tl.exp2(st - lse_r[None, :]) - y
        if ROW_WEIGHTS:
            dst = dst * tl.load(W + row, mask=row_ok, other=0.0)[None, :]
        acc += tiles.dot(dst.to(q.dtype), q, UPCAST, PREC)
    tiles.store_grad(DK, col64, col_ok, stride_dk, do, D, acc, GRAD, grad_scale)


def _tuned(kernel, configs):
    # not keyed on N: tuning runs every config ~7 times, so it happens once per (D, mode, dtype), at the first N
    # seen (the benchmark tunes at N = 16384 first); input dtypes are part of the key automatically
    return triton.autotune(configs=configs, key=["D", "CROSS", "SYMMETRIC"])(kernel)


_FWD_CONFIGS = [
    triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=s)
    for bm, bn, w, s in [(128, 64, 8, 3), (128, 64, 4, 3), (64, 64, 4, 3), (128, 128, 8, 2), (64, 128, 4, 3)]
]
_BWD_CONFIGS = [
    triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=s)
    for bm, bn, w, s in [(64, 64, 4, 2), (64, 64, 8, 3), (128, 64, 8, 2), (64, 128, 8, 2), (128, 128, 8, 2)]
]
_TUNED = {
    "fwd": _tuned(_fwd_kernel, _FWD_CONFIGS),
    "dq": _tuned(_dq_kernel, _BWD_CONFIGS),
    "dk": _tuned(_dk_kernel, _BWD_CONFIGS),
}


def best_configs() -> dict:
    """Tile sizes the autotuner picked so far (``SELFSUP_KERNELS_AUTOTUNE=1``), for the benchmark report."""
    return {k.fn.__name__: {str(key): str(cfg) for key, cfg in k.cache.items()} for k in _TUNED.values()}


class InfoNCEFunction(torch.autograd.Function):
    """Autograd wrapper: forward saves Q, K and the per-row LSE; backward recomputes logit tiles."""

    @staticmethod
    def forward(
        ctx, a, b, keys_a, keys_b, offset: int, temperature: float, negatives: str, reduction: str, symmetric: bool
    ):
        n, d = a.shape
        m = keys_a.shape[0]
        q, k = tiles.stack(a, b, keys_a, keys_b, symmetric)  # (2N, D) rows, (2M, D) keys
        lse = torch.empty(2 * n, device=a.device, dtype=torch.float32)  # base-2 LSE per row
        row_loss = torch.empty(2 * n, device=a.device, dtype=torch.float32)
        cross = negatives == "cross"
        consts = dict(D=d, CROSS=cross, SYMMETRIC=symmetric, **tiles.precision(a.dtype))
        args = (q, k, lse, row_loss, n, m, offset, LOG2E / temperature, q.stride(0), k.stride(0))
        tiles.launch(_fwd_kernel, "fwd", n if cross else 2 * n, 2 if cross else 1, d, args, consts, _TUNED["fwd"])
        ctx.save_for_backward(q, k, lse)
        ctx.setup = (n, m, d, offset, temperature, cross, reduction, symmetric, consts)
        if reduction == "mean":
            return (row_loss.sum() / (2 * n)).to(a.dtype)
        if cross:  # (N,) 0.5·(l_ab + l_ba) per pair
            return (0.5 * (row_loss[:n] + row_loss[n:])).to(a.dtype)
        return row_loss.to(a.dtype)  # (2N,) [a rows, b rows]

    @staticmethod
    def backward(ctx, grad):
        q, k, lse = ctx.saved_tensors
        n, m, d, offset, temperature, cross, reduction, symmetric, consts = ctx.setup
        if reduction == "mean":  # uniform rows: one scalar, no per-row weights
            weights, scale, row_weights = lse, grad.float().reshape(1) / (2 * n), False
        else:  # per-row upstream gradients, max-normalised so 16-bit p·w products keep their precision
            g = grad.float()
            g = torch.cat([0.5 * g, 0.5 * g]) if cross else g  # (2N,)
            scale = g.abs().amax().clamp_min(torch.finfo(torch.float32).tiny).reshape(1)
            weights, row_weights = (g / scale).contiguous(), True
        halves = 2 if cross else 1
        consts = dict(consts, ROW_WEIGHTS=row_weights)
        common = (n, m, offset, LOG2E / temperature, 1.0 / temperature, q.stride(0), k.stride(0))

        def run(role, kernel, n_tiled, out):
            args = (q, k, lse, weights, scale, out, *common, out.stride(0))
            tiles.launch(kernel, role, n_tiled, halves, d, args, consts, _TUNED[role])

        run_dq = lambda dq: run("dq", _dq_kernel, n if cross else 2 * n, dq)
        run_dk = lambda dk: run("dk", _dk_kernel, m if cross else 2 * m, dk)
        return (*tiles.input_grads(q, k, n, m, symmetric, run_dq, run_dk), None, None, None, None, None)


def info_nce_triton(
    a: torch.Tensor,
    b: torch.Tensor,
    keys_a: torch.Tensor | None = None,
    keys_b: torch.Tensor | None = None,
    offset: int = 0,
    temperature: float = 0.5,
    negatives: str = "all",
    reduction: str = "mean",
) -> torch.Tensor:
    """Fused-kernel twin of :func:`info_nce_ref`: mean InfoNCE of anchors ``a, b`` (N, D) vs ``keys_a, keys_b`` (M, D).

    ``reduction="none"``: the per-anchor losses as the reference orders them ((2N,) for ``"all"``, (N,) pair means for
    ``"cross"``); the forward kernel produces them anyway and the backward takes per-row gradient weights.

    Inputs must be L2-normalised, of one float dtype in {fp32, fp16, bf16}, on CUDA (or on the CPU under
    ``TRITON_INTERPRET=1``). Gradients flow to all four tensors; when the keys are the rows themselves (one
    process: ``keys_a is a``) autograd accumulates them into ``a, b``.
    """
    check_choice("negatives", negatives, NEGATIVES)
    check_choice("reduction", reduction, REDUCTIONS)
    keys_a, keys_b, symmetric = check_rows(a, b, keys_a, keys_b, offset, temperature)
    return InfoNCEFunction.apply(a, b, keys_a, keys_b, offset, float(temperature), negatives, reduction, symmetric)
