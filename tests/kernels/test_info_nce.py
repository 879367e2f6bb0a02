"""Triton InfoNCE vs THE reference (``info_nce_ref`` on float64 copies).

CPU runs go through the Triton interpreter (tests/conftest.py sets TRITON_INTERPRET=1) with 32-wide tiles, so the
shapes below cover: N < tile, N not a multiple of the tile, N = 1, odd D, D > BLOCK_D (chunked reduction and chunked
gradient output), offset ≠ 0 with more keys than rows (a rank's view of a gathered batch), and the single-process
path where the keys are the rows. GPU tests (bf16, large N, memory) skip without CUDA.
"""

import pytest
import torch
import torch.nn.functional as F

from selfsup.objectives import InfoNCELoss
from selfsup_kernels import info_nce, info_nce_ref, info_nce_rows
from selfsup_kernels.info_nce_triton import info_nce_triton

# (loss relative, gradient max-abs error relative to the largest reference gradient entry)
TOL = {torch.float32: (1e-5, 1e-4), torch.float16: (2e-3, 5e-3), torch.bfloat16: (1e-2, 3e-2)}
NEGATIVES = ["all", "cross"]
CUDA = torch.cuda.is_available()
gpu = pytest.mark.gpu
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs CUDA")


def make_inputs(n, m, d, offset, dtype, device="cpu", seed=0):
    """Unit rows a, b (N, D) and keys (M, D) holding a, b at rows offset..offset+N (as after a gather)."""
    g = torch.Generator().manual_seed(seed)
    unit = lambda k: F.normalize(torch.randn(k, d, generator=g, dtype=torch.float64), dim=1)
    a, b, keys_a, keys_b = unit(n), unit(n), unit(m), unit(m)
    keys_a[offset : offset + n], keys_b[offset : offset + n] = a, b
    return [t.to(device=device, dtype=dtype) for t in (a, b, keys_a, keys_b)]


def leaves(tensors, dtype=None):
    return [t.detach().to(dtype or t.dtype).clone().requires_grad_() for t in tensors]


def assert_matches(out, ref, got_grads, ref_grads, dtype):
    loss_tol, grad_tol = TOL[dtype]
    assert out.dtype == dtype
    assert torch.isfinite(out)
    assert abs(out.item() - ref.item()) <= loss_tol * max(abs(ref.item()), 1e-3)
    for got, want in zip(got_grads, ref_grads, strict=True):
        assert got is not None and got.dtype == dtype
        err = (got.double() - want).abs().max().item()
        assert err <= grad_tol * max(want.abs().max().item(), 1e-6), f"gradient error {err:.2e}"


def check_keys(n, m, d, offset, negatives, dtype, temperature=0.3, device="cpu"):
    """Distinct key tensors (a rank of a gathered batch): loss and gradients w.r.t. a, b, keys_a, keys_b."""
    tensors = make_inputs(n, m, d, offset, dtype, device)
    mine = leaves(tensors)
    out = info_nce_triton(*mine, offset=offset, temperature=temperature, negatives=negatives)
    out.backward()
    ref_leaves = leaves(tensors, torch.float64)
    ref = info_nce_ref(*ref_leaves, offset=offset, temperature=temperature, negatives=negatives)
    ref.backward()
    assert_matches(out, ref, [t.grad for t in mine], [t.grad for t in ref_leaves], dtype)


def check_self(n, d, negatives, dtype, temperature=0.3, device="cpu", pass_keys=True):
    """One process: the keys ARE the rows (``keys_a is a``), gradients accumulate into a and b."""
    a, b = leaves(make_inputs(n, n, d, 0, dtype, device)[:2])
    keys = (a, b) if pass_keys else (None, None)
    out = info_nce_triton(a, b, *keys, offset=0, temperature=temperature, negatives=negatives)
    out.backward()
    ra, rb = leaves([a, b], torch.float64)
    ref = info_nce_ref(ra, rb, ra, rb, 0, temperature, negatives)
    ref.backward()
    assert_matches(out, ref, [a.grad, b.grad], [ra.grad, rb.grad], dtype)


@pytest.mark.parametrize("negatives", NEGATIVES)
@pytest.mark.parametrize("n,m,d,offset", [(1, 1, 3, 0), (1, 4, 3, 2), (5, 11, 7, 3), (20, 50, 33, 17), (37, 37, 65, 0)])
def test_fp32_keys_match_reference(n, m, d, offset, negatives):
    check_keys(n, m, d, offset, negatives, torch.float32)


@pytest.mark.parametrize("negatives", NEGATIVES)
@pytest.mark.parametrize("n,d", [(1, 3), (5, 7), (37, 33), (64, 16)])
def test_fp32_single_process_matches_reference(n, d, negatives):
    check_self(n, d, negatives, torch.float32)


def test_keys_none_is_single_process():
    check_self(13, 9, "all", torch.float32, temperature=0.07, pass_keys=False)


@pytest.mark.parametrize("negatives", NEGATIVES)
@pytest.mark.parametrize("n,m,offset,keys", [(20, 50, 17, True), (37, 37, 0, False)])
def test_reduction_none_with_per_row_gradients(n, m, offset, keys, negatives):
    tensors = make_inputs(n, m, 33, offset, torch.float32)
    if not keys:
        tensors[2:] = tensors[:2]
    g = torch.Generator().manual_seed(5)
    weights = torch.rand(2 * n if negatives == "all" else n, generator=g, dtype=torch.float64)  # upstream grads
    results = []
    for fn, dtype in ((info_nce_triton, torch.float32), (info_nce_ref, torch.float64)):
        ins = leaves(tensors[:2], dtype)
        ins += leaves(tensors[2:], dtype) if keys else ins
        out = fn(*ins, offset, 0.2, negatives, "none")
        (out * weights.to(dtype)).sum().backward()
        results.append((out, [t.grad for t in (ins if keys else ins[:2])]))
    (out, grads), (ref, ref_grads) = results
    assert out.shape == ref.shape
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-6)
    assert_matches(out.sum(), ref.sum(), grads, ref_grads, torch.float32)


@pytest.mark.parametrize("negatives", NEGATIVES)
def test_fp16(negatives):
    check_keys(20, 50, 33, 17, negatives, torch.float16, temperature=0.1)
    check_self(37, 33, negatives, torch.float16, temperature=0.1)


def test_bf16_interpreter_smoke():
    # bf16 tl.dot is wrong in the interpreter: the kernel upcasts tiles there (real bf16 dots: test_gpu_bf16)
    check_self(21, 17, "all", torch.bfloat16, temperature=0.1)


@pytest.mark.parametrize("negatives", NEGATIVES)
def test_public_api_and_loss_module(negatives):
    g = torch.Generator().manual_seed(3)
    z_a, z_b = torch.randn(19, 10, generator=g), torch.randn(19, 10, generator=g)  # raw, not normalised
    grads = {}
    for impl in ("torch", "triton"):
        za, zb = leaves([z_a, z_b])
        loss = info_nce(za, zb, temperature=0.2, negatives=negatives, impl=impl)
        loss.backward()
        grads[impl] = (loss.detach(), za.grad, zb.grad)
        za, zb = leaves([z_a, z_b])
        module_loss = InfoNCELoss(0.2, negatives, impl=impl)(za, zb)
        module_loss.backward()
        torch.testing.assert_close(module_loss.detach(), grads[impl][0], rtol=1e-6, atol=0)
        torch.testing.assert_close(za.grad, grads[impl][1], rtol=1e-6, atol=1e-9)
    for got, want in zip(grads["triton"], grads["torch"], strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)


def test_auto_uses_reference_on_cpu_and_float64():
    a, b, keys_a, keys_b = leaves(make_inputs(6, 9, 5, 2, torch.float64))
    out = info_nce_rows(a, b, keys_a, keys_b, 2, 0.5, "cross", "auto")  # float64 CPU: the reference
    assert out.dtype == torch.float64
    assert out.item() == pytest.approx(info_nce_ref(a, b, keys_a, keys_b, 2, 0.5, "cross").item(), rel=1e-15)


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda a, b: info_nce(a, b, impl="cuda"), "impl='cuda'"),
        (lambda a, b: InfoNCELoss(impl="fast"), "objective.impl='fast'"),
        (lambda a, b: info_nce_triton(a, b, negatives="some"), "negatives='some'"),
        (lambda a, b: info_nce_triton(a, b, temperature=0.0), "temperature=0.0"),
        (lambda a, b: info_nce_triton(a.double(), b.double()), "dtypes="),
        (lambda a, b: info_nce_triton(a, b[:3]), "b.shape=.3, 4."),
        (lambda a, b: info_nce_triton(a, b, a, b, offset=1), "offset=1"),
        (lambda a, b: info_nce_triton(a, b, a[:, :2], b[:, :2]), "keys_a.shape="),
    ],
)
def test_bad_inputs_refused(call, match):
    a, b = F.normalize(torch.randn(5, 4), dim=1), F.normalize(torch.randn(5, 4), dim=1)
    with pytest.raises(ValueError, match=match):
        call(a, b)


# ---------------------------------------------------------------- GPU: real bf16 dots, large shapes, memory


# kept small: every (D, mode, dtype) compiles three kernels, and the GPU check runs in one short device call
@gpu
@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("negatives", NEGATIVES)
@pytest.mark.parametrize("n,m,d,offset", [(300, 1000, 129, 555), (1000, 1000, 2048, 0)])
def test_gpu_keys_match_reference(n, m, d, offset, negatives, dtype):
    check_keys(n, m, d, offset, negatives, dtype, temperature=0.1, device="cuda")


@gpu
@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("negatives", NEGATIVES)
@pytest.mark.parametrize("n,d", [(777, 128), (513, 2048)])
def test_gpu_single_process_matches_reference(n, d, negatives, dtype):
    check_self(n, d, negatives, dtype, temperature=0.1, device="cuda")


@gpu
@needs_cuda
def test_gpu_auto_impl_and_no_quadratic_memory():
    n, d = 16384, 128  # the reference would hold several (2N)² = 4 GiB fp32 matrices
    z_a, z_b = (torch.randn(n, d, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(2))
    loss_fn = InfoNCELoss(0.1, impl="auto")
    loss_fn(z_a, z_b).backward()  # warm-up / autotune
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    z_a.grad = z_b.grad = None
    loss = loss_fn(z_a, z_b)
    loss.backward()
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - base
    assert torch.isfinite(loss) and torch.isfinite(z_a.grad).all()
    assert extra < 0.25 * 2**30, f"{extra / 2**30:.3f} GiB extra: the kernel must not build (2N)² logits"


def _ddp_triton_loss_and_grad(rank, world, z_a, z_b, negatives):
    n = z_a.shape[0] // world
    a = z_a[rank * n : (rank + 1) * n].clone().requires_grad_()
    b = z_b[rank * n : (rank + 1) * n].clone().requires_grad_()
    loss = InfoNCELoss(0.3, negatives, impl="triton")(a, b)  # gathered keys, offset = rank·n: the dK kernel
    loss.backward()
    return loss.detach(), a.grad, b.grad


@pytest.mark.ddp
@pytest.mark.parametrize("negatives", NEGATIVES)
def test_two_processes_equal_one(negatives):
    from tests.distributed_utils import run_distributed

    g = torch.Generator().manual_seed(1)
    z_a, z_b = torch.randn(2, 22, 9, generator=g)  # 11 rows per rank: ragged tiles on every rank
    ref_a, ref_b = leaves([z_a, z_b], torch.float64)
    ref = InfoNCELoss(0.3, negatives, impl="torch")(ref_a, ref_b)
    ref.backward()
    out = run_distributed(_ddp_triton_loss_and_grad, 2, z_a, z_b, negatives)
    assert torch.stack([o[0] for o in out]).double().mean().item() == pytest.approx(ref.item(), rel=1e-5)
    for i, want in ((1, ref_a.grad), (2, ref_b.grad)):
        got = torch.cat([o[i] for o in out]).double()
        torch.testing.assert_close(got, 2 * want, rtol=1e-4, atol=1e-4 * want.abs().max().item())
