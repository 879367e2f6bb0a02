"""Fused Triton debiased / hard-negative InfoNCE: no (2N, 2M) logit matrix in device memory.

Same signature, value and gradients as :func:`selfsup_kernels.debiased_info_nce_ref.debiased_info_nce_ref` (THE
reference; Chuang et al. 2020 arXiv:2007.00224 and Robinson et al. 2021 arXiv:2010.04592 are cited there). Row/key
layout, logit tiles, D chunks, gradient stores and the launch are :mod:`selfsup_kernels._tiles`, as for InfoNCE
(:mod:`selfsup_kernels.info_nce_triton`, whose single-process symmetric backward this one follows); this module keeps
the statistics, the epilogue and ``∂l_i/∂l_ij``.

Per anchor i (2N rows ``[a; b]`` against 2M keys ``[keys_a; keys_b]``, l = q·k/τ, Mneg = 2M − 2 negatives)::

    S_i  = Σ_j w_ij e^{l_ij} = Mneg · Σ_j e^{(1+β) l_ij} / Σ_j e^{β l_ij}      (w = neg^β / mean neg^β; β = 0: Σ e^{l})
    Ng_i = max((S_i − τ⁺ Mneg e^{l_ip}) / (1 − τ⁺), Mneg e^{−1/τ}),   loss = mean_i [log(e^{l_ip} + Ng_i) − l_ip]

The weighted sum is a ratio of two sums, so the forward needs ONE pass: an online running max ``m`` over the
negatives with ``A = Σ e^{(1+β)(l−m)}`` and ``Z = Σ e^{β(l−m)}`` (Z = Mneg when β = 0). The epilogue combines
them with the positive under the shift ``C = max(m, l_ip)`` (nothing overflows for small τ) and saves four fp32
statistics per row: m, ``α = [not clamped]·Mneg e^{m−C} / ((1−τ⁺) Z T)``, ``γ = A/Z`` and
``δ = ∂l_i/∂l_ip = pos/T − 1 − [not clamped] τ⁺ Mneg pos / ((1−τ⁺) T)`` with ``T = pos + Ng`` (all scaled by
e^{−C}). The backward recomputes logit tiles and uses, for a negative j,

    ∂l_i/∂l_ij = α_i [(1+β) e^{(1+β)(l_ij − m_i)} − β γ_i e^{β(l_ij − m_i)}]      (β = 0: α_i e^{l_ij − m_i})

then the same dQ / dK (or symmetric) products as InfoNCE. The clamp passes no gradient where it binds (half at a
tie, as ``torch.clamp``). Tolerances as for InfoNCE: fp32 1e-5 loss / 1e-4 gradients vs the float64 reference.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from selfsup_kernels import _tiles as tiles
from selfsup_kernels._inputs import check_debiased, check_rows
from selfsup_kernels._tiles import LN2, LOG2E


@triton.jit
def _fwd_kernel(
    Q,
    K,
    STATS,
    LOSS,
    N,
    M,
    offset,
    scale,
    inv_t,
    tau_plus,
    beta,
    num_neg,
    stride_q,
    stride_k,
    D: tl.constexpr,
    HARD: tl.constexpr,
    SYMMETRIC: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    UPCAST: tl.constexpr,
    PREC: tl.constexpr,
):
    row, row_ok, pos_col, self_col = tiles.row_tile(tl.program_id(0) * BLOCK_M, 0, N, M, offset, BLOCK_M, False)
    m_i = tl.full([BLOCK_M], -1.0e30, tl.float32)  # running max of the negatives' logits (log2 units)
    a_i = tl.zeros([BLOCK_M], tl.float32)  # Σ 2^{(1+β)(s − m)}
    z_i = tl.zeros([BLOCK_M], tl.float32)  # Σ 2^{β(s − m)} (HARD only)
    s_pos = tl.zeros([BLOCK_M], tl.float32)
    q = tiles.resident_rows(Q, row, row_ok, stride_q, D, BLOCK_D)
    for n0 in range(0, 2 * M, BLOCK_N):
        col, col_ok, col64 = tiles.key_tile(n0, 0, M, BLOCK_N, False)
        s = tiles.fwd_logits(Q, K, q, row, row_ok, col64, col_ok, stride_q, stride_k, D, BLOCK_D, UPCAST, PREC)
        s = s * scale
        is_pos = col[None, :] == pos_col[:, None]
        s_pos += tl.sum(tl.where(is_pos, s, 0.0), axis=1)
        s = tl.where(col_ok[None, :] & (col[None, :] != self_col[:, None]) & ~is_pos, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        a_i = a_i * tl.exp2((1 + beta) * (m_i - m_new)) + tl.sum(tl.exp2((1 + beta) * (s - m_new[:, None])), axis=1)
        if HARD:
            z_i = z_i * tl.exp2(beta * (m_i - m_new)) + tl.sum(tl.exp2(beta * (s - m_new[:, None])), axis=1)
        m_i = m_new
    if not HARD:
        z_i = tl.zeros([BLOCK_M], tl.float32) + num_neg
    m_nat = m_i * LN2
    lp = s_pos * LN2  # positive logit
    c = tl.maximum(m_nat, lp)  # shift: every term below is scaled by e^{-c}
    pos = tl.exp(lp - c)
    weighted = num_neg * tl.exp(m_nat - c) * a_i / z_i  # e^{-c} Σ w neg
    floor = num_neg * tl.exp(-inv_t - c)
    raw = (weighted - tau_plus * num_neg * pos) / (1 - tau_plus)
    ng = tl.maximum(raw, floor)
    total = pos + ng
    # torch.clamp's gradient: 1 above the floor, 0 below, 1/2 at a tie
    coef = tl.where(raw > floor, 1.0, tl.where(raw == floor, 0.5, 0.0)) / (1 - tau_plus)
    alpha = coef * num_neg * tl.exp(m_nat - c) / (z_i * total)
    delta = -(ng + coef * tau_plus * num_neg * pos) / total  # pos/T − 1 − ..., without the cancellation
    # l_i = log(total) − log(pos) = log1p(ng/pos): the log1p form keeps precision when the positive dominates
    x = ng / pos
    u = 1 + x
    log1p = tl.where(u == 1, x, tl.log(u) * x / (u - 1))  # Goldberg's log1p (no tl.log1p in the interpreter)
    tl.store(LOSS + row, tl.where(x < 1, log1p, tl.log(total) - (lp - c)), mask=row_ok)
    tl.store(STATS + row * 4 + 0, m_i, mask=row_ok)
    tl.store(STATS + row * 4 + 1, alpha, mask=row_ok)
    tl.store(STATS + row * 4 + 2, a_i / z_i, mask=row_ok)
    tl.store(STATS + row * 4 + 3, delta, mask=row_ok)


@triton.jit
def _dl(s, is_pos, is_neg, m, alpha, gamma, delta, beta, HARD: tl.constexpr):
    """∂l_i/∂l_ij for a tile of log2-unit logits ``s``; row statistics already broadcast to the tile's shape."""
    if HARD:
        g = alpha * ((1 + beta) * tl.exp2((1 + beta) * (s - m)) - beta * gamma * tl.exp2(beta * (s - m)))
    else:
        g = alpha * tl.exp2(s - m)
    return tl.where(is_pos, delta, tl.where(is_neg, g, 0.0))


@triton.jit
def _load_stats(STATS, idx, ok):
    m = tl.load(STATS + idx * 4 + 0, mask=ok, other=0.0)
    alpha = tl.load(STATS + idx * 4 + 1, mask=ok, other=0.0)
    gamma = tl.load(STATS + idx * 4 + 2, mask=ok, other=0.0)
    delta = tl.load(STATS + idx * 4 + 3, mask=ok, other=0.0)
    return m, alpha, gamma, delta


@triton.jit
def _dq_kernel(
    Q,
    K,
    STATS,
    GRAD,
    DQ,
    N,
    M,
    offset,
    scale,
    grad_scale,
    beta,
    stride_q,
    stride_k,
    stride_dq,
    D: tl.constexpr,
    HARD: tl.constexpr,
    SYMMETRIC: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_DO: tl.constexpr,
    UPCAST: tl.constexpr,
    PREC: tl.constexpr,
):
    """dQ[rows, chunk] = Σ_j G_ij K[j, chunk] / τ (+ G_ji when SYMMETRIC, K = Q), G = GRAD/(2N) · ∂l_i/∂l_ij."""
    row, row_ok, pos_col, self_col = tiles.row_tile(tl.program_id(0) * BLOCK_M, 0, N, M, offset, BLOCK_M, False)
    m_r, alpha_r, gamma_r, delta_r = _load_stats(STATS, row, row_ok)
    do, q = tiles.grad_chunk(tl.program_id(2), Q, row, row_ok, stride_q, D, BLOCK_D, BLOCK_DO)
    acc = tl.zeros((BLOCK_M, BLOCK_DO), tl.float32)
    for n0 in range(0, 2 * M, BLOCK_N):
        col, col_ok, col64 = tiles.key_tile(n0, 0, M, BLOCK_N, False)
        k, s = tiles.grad_tile(Q, K, q, row, row_ok, col64, col_ok, stride_q, stride_k, do, D, BLOCK_D, UPCAST, PREC)
        s = s * scale
        is_pos = col[None, :] == pos_col[:, None]
        is_neg = col_ok[None, :] & (col[None, :] != self_col[:, None]) & ~is_pos
        g = _dl(s, is_pos, is_neg, m_r[:, None], alpha_r[:, None], gamma_r[:, None], delta_r[:, None], beta, HARD)
        if SYMMETRIC:  # the same pair seen from row j: l_jx = l_xj, pos/neg masks are symmetric
            m_c, alpha_c, gamma_c, delta_c = _load_stats(STATS, col64, col_ok)
            g += _dl(s, is_pos, is_neg, m_c[None, :], alpha_c[None, :], gamma_c[None, :], delta_c[None, :], beta, HARD)
        acc += tiles.dot(g.to(k.dtype), k, UPCAST, PREC)
    tiles.store_grad(DQ, row, row_ok, stride_dq, do, D, acc, GRAD, grad_scale)


@triton.jit
def _dk_kernel(
    Q,
    K,
    STATS,
    GRAD,
    DK,
    N,
    M,
    offset,
    scale,
    grad_scale,
    beta,
    stride_q,
    stride_k,
    stride_dk,
    D: tl.constexpr,
    HARD: tl.constexpr,
    SYMMETRIC: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_DO: tl.constexpr,
    UPCAST: tl.constexpr,
    PREC: tl.constexpr,
):
    """dK[cols, chunk] = Σ_i G_ij Q[i, chunk] / τ, one program per BLOCK_N keys."""
    col, col_ok, col64 = tiles.key_tile(tl.program_id(0) * BLOCK_N, 0, M, BLOCK_N, False)
    do, k = tiles.grad_chunk(tl.program_id(2), K, col64, col_ok, stride_k, D, BLOCK_D, BLOCK_DO)
    acc = tl.zeros((BLOCK_N, BLOCK_DO), tl.float32)
    for m0 in range(0, 2 * N, BLOCK_M):
        row, row_ok, pos_col, self_col = tiles.row_tile(m0, 0, N, M, offset, BLOCK_M, False)
        q, st = tiles.grad_tile(K, Q, k, col64, col_ok, row, row_ok, stride_k, stride_q, do, D, BLOCK_D, UPCAST, PREC)
        st = st * scale  # (BLOCK_N, BLOCK_M) transposed logits
        is_pos = row_ok[None, :] & (col[:, None] == pos_col[None, :])
        is_neg = row_ok[None, :] & col_ok[:, None] & (col[:, None] != self_col[None, :]) & ~is_pos
        m_r, alpha_r, gamma_r, delta_r = _load_stats(STATS, row, row_ok)
        gt = _dl(st, is_pos, is_neg, m_r[None, :], alpha_r[None, :], gamma_r[None, :], delta_r[None, :], beta, HARD)
        acc += tiles.dot(gt.to(q.dtype), q, UPCAST, PREC)
    tiles.store_grad(DK, col64, col_ok, stride_dk, do, D, acc, GRAD, grad_scale)


class DebiasedInfoNCEFunction(torch.autograd.Function):
    """Autograd wrapper: forward saves Q, K and 4 fp32 statistics per row; backward recomputes logit tiles.

    Tile sizes: the heuristics of the InfoNCE kernels (``_tiles.heuristic_config``); this op is not autotuned."""

    @staticmethod
    def forward(
        ctx, a, b, keys_a, keys_b, offset: int, temperature: float, tau_plus: float, beta: float, symmetric: bool
    ):
        n, d = a.shape
        m = keys_a.shape[0]
        q, k = tiles.stack(a, b, keys_a, keys_b, symmetric)  # (2N, D) rows, (2M, D) keys
        stats = torch.empty(2 * n, 4, device=a.device, dtype=torch.float32)  # m, α, γ, δ per row
        row_loss = torch.empty(2 * n, device=a.device, dtype=torch.float32)
        consts = dict(D=d, HARD=beta > 0, SYMMETRIC=symmetric, **tiles.precision(a.dtype))
        hyper = (LOG2E / temperature, 1.0 / temperature, tau_plus, beta, float(2 * m - 2))
        args = (q, k, stats, row_loss, n, m, offset, *hyper, q.stride(0), k.stride(0))
        tiles.launch(_fwd_kernel, "fwd", 2 * n, 1, d, args, consts)
        ctx.save_for_backward(q, k, stats)
        ctx.setup = (n, m, d, offset, temperature, beta, symmetric, consts)
        return (row_loss.sum() / (2 * n)).to(a.dtype)

    @staticmethod
    def backward(ctx, grad):
        q, k, stats = ctx.saved_tensors
        n, m, d, offset, temperature, beta, symmetric, consts = ctx.setup
        grad = grad.contiguous()
        common = (n, m, offset, LOG2E / temperature, 1.0 / (2 * n * temperature), beta, q.stride(0), k.stride(0))

        def run(role, kernel, n_tiled, out):
            tiles.launch(kernel, role, n_tiled, 1, d, (q, k, stats, grad, out, *common, out.stride(0)), consts)

        run_dq = lambda dq: run("dq", _dq_kernel, 2 * n, dq)
        run_dk = lambda dk: run("dk", _dk_kernel, 2 * m, dk)
        return (*tiles.input_grads(q, k, n, m, symmetric, run_dq, run_dk), None, None, None, None, None)


def debiased_info_nce_triton(
    a: torch.Tensor,
    b: torch.Tensor,
    keys_a: torch.Tensor | None = None,
    keys_b: torch.Tensor | None = None,
    offset: int = 0,
    temperature: float = 0.5,
    tau_plus: float = 0.1,
    beta: float = 0.0,
) -> torch.Tensor:
    """Fused-kernel twin of :func:`debiased_info_nce_ref` (same arguments, value and gradients to all four tensors).

    Inputs must be L2-normalised, one dtype in {fp32, fp16, bf16}, on CUDA (or the CPU under TRITON_INTERPRET=1).
    """
    check_debiased(tau_plus, beta)
    keys_a, keys_b, symmetric = check_rows(a, b, keys_a, keys_b, offset, temperature, min_keys=2)
    return DebiasedInfoNCEFunction.apply(
        a, b, keys_a, keys_b, offset, float(temperature), float(tau_plus), float(beta), symmetric
    )
