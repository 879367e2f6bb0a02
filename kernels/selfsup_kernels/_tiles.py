"""What the fused loss kernels share: the layout of a row or key tile, its logits, the loads and stores of gradient
chunks, the tile sizes and the launch. Each kernel module (``info_nce_triton``, ``debiased_info_nce_triton``) keeps
only what differs: its per-row statistics, its forward epilogue and its ``∂l_i/∂l_ij`` (docs/api.md, "Kernels").

Layout, for rows ``Q = [a; b]`` (2N, D) and keys ``K = [keys_a; keys_b]`` (2M, D), local row ``r`` of view ``r // N``
holds its positive at key ``offset + r`` of the other view and itself at the same key of its own view. With CROSS
(InfoNCE's ``negatives="cross"``) a program sees one view of the rows (half ``h``) against the M keys of the other;
otherwise all 2N rows against all 2M keys. Logits are fp32 tiles reduced over D in BLOCK_D chunks, or one ``tl.dot``
of tiles loaded once when a whole row fits (D <= BLOCK_D). The interpreter (``TRITON_INTERPRET=1``) computes bf16
``tl.dot`` wrongly, so there bf16 tiles are upcast first (UPCAST).
"""

from __future__ import annotations

import math
import os

import torch
import triton
import triton.language as tl

from selfsup_kernels._inputs import interpreting

LOG2E = 1.0 / math.log(2.0)  # logits are kept in log2 units: exp2 / log2 are the fast instructions
LN2 = tl.constexpr(0.6931471805599453)

# Interpreter tiles: small so tests cover several tiles, ragged edges and the D-chunk loop at N, D ≤ 64.
INTERPRETER_BLOCKS = {"BLOCK_M": 32, "BLOCK_N": 32, "BLOCK_D": 32, "BLOCK_DO": 32}
AUTOTUNE_ENV = "SELFSUP_KERNELS_AUTOTUNE"  # =1: autotune BLOCK_M/BLOCK_N/warps/stages (the benchmark sets it)


# ---------------------------------------------------------------- device helpers


@triton.jit
def span(n, CROSS: tl.constexpr):
    """How many rows (n = N) or keys (n = M) one program covers: one view's n with CROSS, both views' 2n without."""
    if CROSS:
        count = n
    else:
        count = 2 * n
    return count


@triton.jit
def row_tile(r0, h, N, M, offset, BLOCK_M: tl.constexpr, CROSS: tl.constexpr):
    """Rows ``r0 .. r0 + BLOCK_M`` of row half ``h``: (row in Q as int64, valid, positive key column, own key column;
    -1 with CROSS, where a row never meets its own key)."""
    r = r0 + tl.arange(0, BLOCK_M)
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
    return row.to(tl.int64), ok, pos_col, self_col


@triton.jit
def key_tile(j0, half, M, BLOCK_N: tl.constexpr, CROSS: tl.constexpr):
    """Keys ``j0 .. j0 + BLOCK_N`` of key half ``half`` (CROSS) or of all 2M keys: (column, valid, column as int64)."""
    j = j0 + tl.arange(0, BLOCK_N)
    if CROSS:
        col = half * M + j
    else:
        col = j
    return col, j < span(M, CROSS), col.to(tl.int64)


@triton.jit
def load_rows(P, idx, ok, stride, cols, D):
    """(len(idx), len(cols)) tile P[idx, cols]; 0 for invalid rows and for cols >= D."""
    return tl.load(P + idx[:, None] * stride + cols[None, :], mask=ok[:, None] & (cols[None, :] < D), other=0.0)


@triton.jit
def load_rows_t(P, idx, ok, stride, cols, D):
    """(len(cols), len(idx)) tile P[idx, cols]ᵀ, loaded transposed; 0 for invalid rows and for cols >= D."""
    return tl.load(P + idx[None, :] * stride + cols[:, None], mask=ok[None, :] & (cols[:, None] < D), other=0.0)


@triton.jit
def dot(x, y, UPCAST: tl.constexpr, PREC: tl.constexpr):
    """fp32 ``x @ y`` (``PREC``: "ieee" for fp32 inputs, no TF32); UPCAST: bf16 under the interpreter."""
    if UPCAST:
        x = x.to(tl.float32)
        y = y.to(tl.float32)
    return tl.dot(x, y, input_precision=PREC)


@triton.jit
def scores(
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
        acc += dot(load_rows(A, ia, a_ok, stride_a, dd, D), load_rows_t(B, ib, b_ok, stride_b, dd, D), UPCAST, PREC)
    return acc


@triton.jit
def resident_rows(Q, row, row_ok, stride_q, D: tl.constexpr, BLOCK_D: tl.constexpr):
    """The forward's row tile Q[row] (BLOCK_M, BLOCK_D), loaded once for all key tiles when whole rows fit
    (D <= BLOCK_D); else 0, unused (the logits are then reduced over D chunks by :func:`scores`)."""
    if D <= BLOCK_D:
        q = load_rows(Q, row, row_ok, stride_q, tl.arange(0, BLOCK_D), D)
    else:
        q = 0
    return q


@triton.jit
def fwd_logits(
    Q,
    K,
    q,
    row,
    row_ok,
    col64,
    col_ok,
    stride_q,
    stride_k,
    D: tl.constexpr,
    BLOCK_D: tl.constexpr,
    UPCAST: tl.constexpr,
    PREC: tl.constexpr,
):
    """(BLOCK_M, BLOCK_N) fp32 dots Q[row] · K[col]ᵀ of the forward: the resident ``q`` (:func:`resident_rows`)
    against a transposed key tile when whole rows fit, else :func:`scores` over D chunks."""
    if D <= BLOCK_D:
        kt = load_rows_t(K, col64, col_ok, stride_k, tl.arange(0, BLOCK_D), D)
        s = dot(q, kt, UPCAST, PREC)
    else:
        s = scores(Q, K, row, row_ok, col64, col_ok, stride_q, stride_k, D, BLOCK_D, UPCAST, PREC)
    return s


@triton.jit
def grad_tile(
    X,
    Y,
    x,
    ix,
    x_ok,
    iy,
    y_ok,
    stride_x,
    stride_y,
    do,
    D: tl.constexpr,
    BLOCK_D: tl.constexpr,
    UPCAST: tl.constexpr,
    PREC: tl.constexpr,
):
    """One step of a backward program's loop: (the other side's chunk Y[iy, do], the (len(ix), len(iy)) fp32 dots
    X[ix] · Y[iy]ᵀ). X is the side whose gradient the program writes (rows for dQ, keys for dK) and ``x`` its
    resident tile (:func:`grad_chunk`); when whole rows fit (D <= BLOCK_D, one chunk) the dots come from the two
    loaded tiles, else :func:`scores` recomputes them over D."""
    y = load_rows(Y, iy, y_ok, stride_y, do, D)
    if D <= BLOCK_D:
        s = dot(x, tl.trans(y), UPCAST, PREC)
    else:
        s = scores(X, Y, ix, x_ok, iy, y_ok, stride_x, stride_y, D, BLOCK_D, UPCAST, PREC)
    return y, s


@triton.jit
def grad_chunk(pid_d, X, ix, x_ok, stride_x, D: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DO: tl.constexpr):
    """A backward program's output chunk: (columns ``pid_d * BLOCK_DO ...``, its resident tile X[ix, columns] when
    whole rows fit (D <= BLOCK_D, then BLOCK_DO == BLOCK_D) else 0, unused)."""
    do = pid_d * BLOCK_DO + tl.arange(0, BLOCK_DO)
    if D <= BLOCK_D:
        x = load_rows(X, ix, x_ok, stride_x, do, D)
    else:
        x = 0
    return do, x


@triton.jit
def store_grad(OUT, idx, ok, stride, do, D, acc, GRAD, grad_scale):
    """OUT[idx, do] = acc · GRAD · grad_scale in OUT's dtype (GRAD: the upstream gradient, a 1-element tensor)."""
    g = tl.load(GRAD).to(tl.float32) * grad_scale
    tl.store(
        OUT + idx[:, None] * stride + do[None, :],
        (acc * g).to(OUT.dtype.element_ty),
        mask=ok[:, None] & (do[None, :] < D),
    )


# ---------------------------------------------------------------- host side


def precision(dtype: torch.dtype) -> dict:
    """The dot-product constexprs for inputs of ``dtype``: IEEE fp32 dots for fp32 (not TF32), bf16 upcast under the
    interpreter."""
    return dict(UPCAST=interpreting() and dtype == torch.bfloat16, PREC="ieee" if dtype == torch.float32 else "tf32")


def stack(a, b, keys_a, keys_b, symmetric: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Contiguous rows ``Q = [a; b]`` (2N, D) and keys ``K = [keys_a; keys_b]`` (2M, D); K is Q for one process."""
    q = torch.cat([a, b]).contiguous()
    return q, (q if symmetric else torch.cat([keys_a, keys_b]).contiguous())


def input_grads(q, k, n: int, m: int, symmetric: bool, run_dq, run_dk) -> tuple:
    """(grad a, grad b, grad keys_a, grad keys_b): ``run_dq(dq)`` fills dQ and, unless the keys are the rows (one
    process: the dQ kernel then adds the transposed terms and gives the whole gradient), ``run_dk(dk)`` fills dK."""
    dq = torch.empty_like(q)
    run_dq(dq)
    if symmetric:
        return dq[:n], dq[n:], None, None
    dk = torch.empty_like(k)
    run_dk(dk)
    return dq[:n], dq[n:], dk[:m], dk[m:]


def config(role: str, d: int, autotune: bool) -> dict:
    """Launch meta-parameters of a ``role`` kernel at feature dimension ``d``; with ``autotune`` only the D chunks
    (the autotuner picks BLOCK_M/BLOCK_N/warps/stages)."""
    if interpreting():
        cfg = dict(INTERPRETER_BLOCKS)
        if role == "fwd":
            del cfg["BLOCK_DO"]
        return cfg
    p2 = max(16, triton.next_power_of_2(d))
    # D <= 128: one chunk, the Q/K tiles stay in registers. Above: the forward reduces in 128-wide steps; the
    # backward reduces in 64-wide steps and writes 256-wide gradient chunks, so its fp32 accumulator stays (64, 256)
    # whatever D is. Tile shapes for d > 128 are the ones found spill-free for sm_90 with ptxas (ahead of time).
    if role == "fwd":
        chunks = {"BLOCK_D": min(p2, 128)}
    else:
        chunks = {"BLOCK_D": p2, "BLOCK_DO": p2} if p2 <= 128 else {"BLOCK_D": 64, "BLOCK_DO": min(p2, 256)}
    if autotune:
        return chunks
    # untuned defaults (FlashAttention-2-like); the benchmark reports what autotuning picks instead
    if role == "fwd" and p2 <= 128:
        return dict(chunks, BLOCK_M=128, BLOCK_N=64, num_warps=8, num_stages=3)
    if role == "fwd":
        return dict(chunks, BLOCK_M=64, BLOCK_N=64, num_warps=4, num_stages=2)
    return dict(chunks, BLOCK_M=64, BLOCK_N=64, num_warps=4 if p2 <= 64 else 8, num_stages=2)


def heuristic_config(role: str, d: int) -> dict:
    """The untuned launch config of a ``role`` kernel ("fwd", "dq" or "dk"), whatever ``SELFSUP_KERNELS_AUTOTUNE``
    says: what a plain GPU run launches (the sm_90 compile test compiles these)."""
    return config(role, d, autotune=False)


def launch(kernel, role: str, n_tiled: int, n_halves: int, d: int, args: tuple, consts: dict, tuned=None) -> None:
    """Run the ``role`` kernel on the grid (tiles over ``n_tiled`` rows, or keys for "dk"; ``n_halves``; gradient D
    chunks). ``tuned``: its ``triton.autotune`` twin, run instead under ``SELFSUP_KERNELS_AUTOTUNE=1`` (not in the
    interpreter)."""
    autotune = tuned is not None and not interpreting() and os.environ.get(AUTOTUNE_ENV, "0") == "1"
    cfg = config(role, d, autotune)
    tile = "BLOCK_N" if role == "dk" else "BLOCK_M"
    n_dchunks = triton.cdiv(d, cfg["BLOCK_DO"]) if "BLOCK_DO" in cfg else 1
    grid = lambda meta: (triton.cdiv(n_tiled, meta[tile]), n_halves, n_dchunks)
    (tuned if autotune else kernel)[grid](*args, **consts, **cfg)
