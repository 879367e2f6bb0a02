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
- single process (``keys_a is a and keys_b is b``): K = Q and l is symmetric, so one kernel produces the whole
  gradient ``g_x = Σ_j (dl_xj + dl_jx) q_j / τ`` with ``dl_jx = (exp(l_xj − LSE_j) − y_jx)/(2N)``: the backward
  computes each logit tile once, not twice (4·(2N)²·D backward FLOPs instead of 8·(2N)²·D).

- ``reduction="none"`` (as the reference): the row losses are returned instead of their mean and the backward
  takes per-row weights ``w_i`` (upstream gradients, max-normalised) in ``dl_ij = w_i (p_ij − y_ij)``.

Launch: tile sizes from a heuristic (``heuristic_config``; d ≤ 128 keeps whole rows in registers, larger d uses
128-wide forward chunks and (64, 256) backward accumulators, checked spill-free for sm_90 by compiling ahead of
time); ``SELFSUP_KERNELS_AUTOTUNE=1`` autotunes BLOCK_M/BLOCK_N/warps/stages instead (the benchmark does).

Memory: inputs, O(N·D) for the concatenated rows/keys and gradients, 2 fp32 values per row — nothing O(N²).
Precision: fp32/fp16/bf16 inputs; dot products accumulate in fp32 (fp32 inputs use IEEE fp32 dots, not TF32);
``p − y`` is cast to the input dtype for the gradient matmul (as FlashAttention does). Tests: fp32 within 1e-5
(loss, relative) and 1e-4 (gradients) of the float64 reference; fp16 within 2e-3 / 5e-3; bf16 (GPU) 1e-2 / 3e-2.
The interpreter (``TRITON_INTERPRET=1``) computes bf16 ``tl.dot`` wrongly, so there bf16 tiles are upcast first.
"""

from __future__ import annotations

import math
import os

import torch
import triton
import triton.language as tl

from selfsup_kernels._inputs import check_rows, interpreting
from selfsup_kernels.info_nce_ref import REDUCTIONS

NEGATIVES = ("all", "cross")  # the kernel's forms (one_way runs on the reference)

LOG2E = 1.0 / math.log(2.0)


@triton.jit
def _row_layout(r, h, N, M, offset, CROSS: tl.constexpr):
    """For local row indices ``r`` of row range ``h``: global row in Q, validity, positive and self key columns."""
    if CROSS:  # rows h*N + r (view h) against keys (1-h)*M ... (other view only)
        row = h * N + r
        ok = r < N
        pos_col = (1 - h) * M + offset + r
        self_col = tl.full(r.shape, -1, tl.int32)
    else:  # rows [a; b] against keys [keys_a; keys_b], minus each anchor's own column
        row = r
        ok = r < 2 * N
        second = (r >= N).to(tl.int32)
        loc = r - second * N
        self_col = second * M + offset + loc
        pos_col = (1 - second) * M + offset + loc
    return row, ok, pos_col, self_col


@triton.jit
def _dot(x, y, UPCAST: tl.constexpr, PREC: tl.constexpr):
    if UPCAST:
        x = x.to(tl.float32)
        y = y.to(tl.float32)
    return tl.dot(x, y, input_precision=PREC)


@triton.jit
def _scores(
    A,
    B,
    ia,
    a_ok,
    ib,
    b_ok,
    stride_a,
    stride_b,
    D: tl.constexpr,
    BLOCK_D: tl.constexpr,
    UPCAST: tl.constexpr,
    PREC: tl.constexpr,
):
    """(len(ia), len(ib)) fp32 tile of A[ia] · B[ib]ᵀ, reduced over D in BLOCK_D chunks."""
    acc = tl.zeros((ia.shape[0], ib.shape[0]), tl.float32)
    for d0 in range(0, D, BLOCK_D):
        dd = d0 + tl.arange(0, BLOCK_D)
        x = tl.load(A + ia[:, None] * stride_a + dd[None, :], mask=a_ok[:, None] & (dd[None, :] < D), other=0.0)
        yt = tl.load(B + ib[None, :] * stride_b + dd[:, None], mask=b_ok[None, :] & (dd[:, None] < D), other=0.0)
        acc += _dot(x, yt, UPCAST, PREC)
    return acc


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
    pid_m = tl.program_id(0)
    h = tl.program_id(1)
    r = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    row, row_ok, pos_col, self_col = _row_layout(r, h, N, M, offset, CROSS)
    row = row.to(tl.int64)
    if CROSS:
        col_start = (1 - h) * M
        n_cols = M
    else:
        col_start = 0
        n_cols = 2 * M
    # log2-domain online LSE; a finite initial max keeps fully masked tiles NaN-free (alpha = 1, l += 0)
    m_i = tl.full([BLOCK_M], -1.0e30, tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    s_pos = tl.zeros([BLOCK_M], tl.float32)
    dd = tl.arange(0, BLOCK_D)
    if D <= BLOCK_D:  # whole rows fit: keep the Q tile in registers across key tiles
        q = tl.load(Q + row[:, None] * stride_q + dd[None, :], mask=row_ok[:, None] & (dd[None, :] < D), other=0.0)
    for n0 in range(0, n_cols, BLOCK_N):
        j = n0 + tl.arange(0, BLOCK_N)
        col_ok = j < n_cols
        col = col_start + j
        if D <= BLOCK_D:
            kt = tl.load(
                K + col.to(tl.int64)[None, :] * stride_k + dd[:, None],
                mask=col_ok[None, :] & (dd[:, None] < D),
                other=0.0,
            )
            s = _dot(q, kt, UPCAST, PREC)
        else:
            s = _scores(Q, K, row, row_ok, col.to(tl.int64), col_ok, stride_q, stride_k, D, BLOCK_D, UPCAST, PREC)
        s = s * scale  # (BLOCK_M, BLOCK_N) logits in log2 units
        s_pos += tl.sum(tl.where(col[None, :] == pos_col[:, None], s, 0.0), axis=1)
        s = tl.where(col_ok[None, :] & (col[None, :] != self_col[:, None]), s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        l_i = l_i * tl.exp2(m_i - m_new) + tl.sum(tl.exp2(s - m_new[:, None]), axis=1)
        m_i = m_new
    lse = m_i + tl.log2(l_i)
    tl.store(LSE + row, lse, mask=row_ok)
    tl.store(LOSS + row, (lse - s_pos) * 0.6931471805599453, mask=row_ok)


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
    pid_m = tl.program_id(0)
    h = tl.program_id(1)
    pid_d = tl.program_id(2)
    r = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    row, row_ok, pos_col, self_col = _row_layout(r, h, N, M, offset, CROSS)
    row = row.to(tl.int64)
    if CROSS:
        col_start = (1 - h) * M
        n_cols = M
    else:
        col_start = 0
        n_cols = 2 * M
    lse_r = tl.load(LSE + row, mask=row_ok, other=0.0)
    if ROW_WEIGHTS:
        w_r = tl.load(W + row, mask=row_ok, other=0.0)
    do = pid_d * BLOCK_DO + tl.arange(0, BLOCK_DO)
    do_ok = do < D
    acc = tl.zeros((BLOCK_M, BLOCK_DO), tl.float32)
    if D <= BLOCK_D:  # one chunk (BLOCK_DO == BLOCK_D): Q tile resident, each K tile loaded once
        q = tl.load(Q + row[:, None] * stride_q + do[None, :], mask=row_ok[:, None] & do_ok[None, :], other=0.0)
    for n0 in range(0, n_cols, BLOCK_N):
        j = n0 + tl.arange(0, BLOCK_N)
        col_ok = j < n_cols
        col = col_start + j
        col64 = col.to(tl.int64)
        k = tl.load(K + col64[:, None] * stride_k + do[None, :], mask=col_ok[:, None] & do_ok[None, :], other=0.0)
        if D <= BLOCK_D:
            s = _dot(q, tl.trans(k), UPCAST, PREC)
        else:
            s = _scores(Q, K, row, row_ok, col64, col_ok, stride_q, stride_k, D, BLOCK_D, UPCAST, PREC)
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
        acc += _dot(ds.to(k.dtype), k, UPCAST, PREC)
    g = tl.load(GRAD) * grad_scale
    tl.store(
        DQ + row[:, None] * stride_dq + do[None, :],
        (acc * g).to(DQ.dtype.element_ty),
        mask=row_ok[:, None] & do_ok[None, :],
    )


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
    pid_n = tl.program_id(0)
    hc = tl.program_id(1)
    pid_d = tl.program_id(2)
    if CROSS:  # key half hc is seen by the rows of the other view
        col_start = hc * M
        n_cols = M
        n_rows = N
    else:
        col_start = 0
        n_cols = 2 * M
        n_rows = 2 * N
    j = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = j < n_cols
    col = col_start + j
    col64 = col.to(tl.int64)
    do = pid_d * BLOCK_DO + tl.arange(0, BLOCK_DO)
    do_ok = do < D
    acc = tl.zeros((BLOCK_N, BLOCK_DO), tl.float32)
    if D <= BLOCK_D:
        k = tl.load(K + col64[:, None] * stride_k + do[None, :], mask=col_ok[:, None] & do_ok[None, :], other=0.0)
    for m0 in range(0, n_rows, BLOCK_M):
        r = m0 + tl.arange(0, BLOCK_M)
        row, row_ok, pos_col, self_col = _row_layout(r, 1 - hc, N, M, offset, CROSS)
        row = row.to(tl.int64)
        q = tl.load(Q + row[:, None] * stride_q + do[None, :], mask=row_ok[:, None] & do_ok[None, :], other=0.0)
        if D <= BLOCK_D:
            st = _dot(k, tl.trans(q), UPCAST, PREC)
        else:
            st = _scores(K, Q, col64, col_ok, row, row_ok, stride_k, stride_q, D, BLOCK_D, UPCAST, PREC)
        # (BLOCK_N, BLOCK_M) transposed logits; masked rows contribute nothing
        st = tl.where(row_ok[None, :] & (col[:, None] != self_col[None, :]), st * scale, float("-inf"))
        lse_r = tl.load(LSE + row, mask=row_ok, other=0.0)
        y = (row_ok[None, :] & (col[:, None] == pos_col[None, :])).to(tl.float32)
        dst = tl.exp2(st - lse_r[None, :]) - y
        if ROW_WEIGHTS:
            dst = dst * tl.load(W + row, mask=row_ok, other=0.0)[None, :]
        acc += _dot(dst.to(q.dtype), q, UPCAST, PREC)
    g = tl.load(GRAD) * grad_scale
    tl.store(
        DK + col64[:, None] * stride_dk + do[None, :],
        (acc * g).to(DK.dtype.element_ty),
        mask=col_ok[:, None] & do_ok[None, :],
    )


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
    _fwd_kernel: _tuned(_fwd_kernel, _FWD_CONFIGS),
    _dq_kernel: _tuned(_dq_kernel, _BWD_CONFIGS),
    _dk_kernel: _tuned(_dk_kernel, _BWD_CONFIGS),
}

# Interpreter tiles: small so tests cover several tiles, ragged edges and the D-chunk loop at N, D ≤ 64.
INTERPRETER_BLOCKS = {"BLOCK_M": 32, "BLOCK_N": 32, "BLOCK_D": 32, "BLOCK_DO": 32}
AUTOTUNE_ENV = "SELFSUP_KERNELS_AUTOTUNE"  # =1: autotune BLOCK_M/BLOCK_N/warps/stages (the benchmark sets it)


def _config(kernel, d: int) -> tuple[dict, bool]:
    """(launch meta-parameters, autotune the tile sizes?) for one kernel at feature dimension ``d``."""
    if interpreting():
        cfg = dict(INTERPRETER_BLOCKS)
        if kernel is _fwd_kernel:
            del cfg["BLOCK_DO"]
        return cfg, False
    p2 = max(16, triton.next_power_of_2(d))
    # D <= 128: one chunk, the Q/K tiles stay in registers. Above: the forward reduces in 128-wide steps; the
    # backward reduces in 64-wide steps and writes 256-wide gradient chunks, so its fp32 accumulator stays (64, 256)
    # whatever D is. Tile shapes for d > 128 are the ones found spill-free for sm_90 with ptxas (ahead of time).
    if kernel is _fwd_kernel:
        chunks = {"BLOCK_D": min(p2, 128)}
    else:
        chunks = {"BLOCK_D": p2, "BLOCK_DO": p2} if p2 <= 128 else {"BLOCK_D": 64, "BLOCK_DO": min(p2, 256)}
    if os.environ.get(AUTOTUNE_ENV, "0") == "1":
        return chunks, True
    # untuned defaults (FlashAttention-2-like); the benchmark reports what autotuning picks instead
    if kernel is _fwd_kernel and p2 <= 128:
        return dict(chunks, BLOCK_M=128, BLOCK_N=64, num_warps=8, num_stages=3), False
    if kernel is _fwd_kernel:
        return dict(chunks, BLOCK_M=64, BLOCK_N=64, num_warps=4, num_stages=2), False
    return dict(chunks, BLOCK_M=64, BLOCK_N=64, num_warps=4 if p2 <= 64 else 8, num_stages=2), False


def heuristic_config(kernel, d: int) -> dict:
    """The untuned launch config of ``kernel`` (also used by the debiased twins, which are not autotuned)."""
    saved = os.environ.pop(AUTOTUNE_ENV, None)
    try:
        return _config(kernel, d)[0]
    finally:
        if saved is not None:
            os.environ[AUTOTUNE_ENV] = saved


def _launch(kernel, n_tiled: int, n_halves: int, d: int, args: tuple, consts: dict) -> None:
    """Grid (tiles over ``n_tiled`` rows or keys, halves, gradient D chunks)."""
    cfg, autotune = _config(kernel, d)
    tile = "BLOCK_N" if kernel is _dk_kernel else "BLOCK_M"
    n_dchunks = triton.cdiv(d, cfg["BLOCK_DO"]) if "BLOCK_DO" in cfg else 1
    grid = lambda meta: (triton.cdiv(n_tiled, meta[tile]), n_halves, n_dchunks)
    (_TUNED[kernel] if autotune else kernel)[grid](*args, **consts, **cfg)


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
        q = torch.cat([a, b]).contiguous()  # (2N, D) rows
        k = q if symmetric else torch.cat([keys_a, keys_b]).contiguous()  # (2M, D) keys
        lse = torch.empty(2 * n, device=a.device, dtype=torch.float32)  # base-2 LSE per row
        row_loss = torch.empty(2 * n, device=a.device, dtype=torch.float32)
        cross = negatives == "cross"
        consts = dict(
            D=d,
            CROSS=cross,
            SYMMETRIC=symmetric,
            UPCAST=interpreting() and a.dtype == torch.bfloat16,
            PREC="ieee" if a.dtype == torch.float32 else "tf32",
        )
        args = (q, k, lse, row_loss, n, m, offset, LOG2E / temperature, q.stride(0), k.stride(0))
        _launch(_fwd_kernel, n if cross else 2 * n, 2 if cross else 1, d, args, consts)
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
        dq = torch.empty_like(q)
        _launch(
            _dq_kernel, n if cross else 2 * n, halves, d, (q, k, lse, weights, scale, dq, *common, dq.stride(0)), consts
        )
        if symmetric:  # the whole gradient landed in dq (keys are the rows)
            return dq[:n], dq[n:], None, None, None, None, None, None, None
        dk = torch.empty_like(k)
        _launch(
            _dk_kernel, m if cross else 2 * m, halves, d, (q, k, lse, weights, scale, dk, *common, dk.stride(0)), consts
        )
        return dq[:n], dq[n:], dk[:m], dk[m:], None, None, None, None, None


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
    if negatives not in NEGATIVES:
        raise ValueError(f"negatives={negatives!r}: expected one of {NEGATIVES}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction={reduction!r}: expected one of {REDUCTIONS}")
    keys_a, keys_b, symmetric = check_rows(a, b, keys_a, keys_b, offset, temperature)
    return InfoNCEFunction.apply(a, b, keys_a, keys_b, offset, float(temperature), negatives, reduction, symmetric)
