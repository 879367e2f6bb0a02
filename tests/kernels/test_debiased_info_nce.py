"""Triton debiased / hard-negative InfoNCE vs THE reference (``debiased_info_nce_ref`` on float64 copies).

Same shapes as test_info_nce.py (interpreter on the CPU, 32-wide tiles): N < tile, ragged N, N = 1, odd D,
D > BLOCK_D, offset ≠ 0 with gathered keys, the single-process symmetric path; β = 0 (DCL) and β > 0 (HCL), with
τ⁺ = 0 (no debiasing), τ⁺ > 0 and a τ⁺ large enough that the clamp binds for some anchors.
"""

import math

import pytest
import torch
import torch.nn.functional as F

from selfsup_kernels import debiased_info_nce_ref, debiased_info_nce_rows
from selfsup_kernels.debiased_info_nce_triton import debiased_info_nce_triton
from tests.kernels.test_info_nce import CUDA, assert_matches, leaves, make_inputs

gpu = pytest.mark.gpu
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs CUDA")
HYPER = [(0.2, 0.0, 0.0), (0.2, 0.1, 0.0), (0.1, 0.5, 0.0), (0.2, 0.1, 1.0), (0.5, 0.3, 0.5)]  # (τ, τ⁺, β)


def check_keys(n, m, d, offset, hyper, dtype, device="cpu"):
    tensors = make_inputs(n, m, d, offset, dtype, device, seed=n + m + d)
    mine = leaves(tensors)
    out = debiased_info_nce_triton(*mine, offset, *hyper)
    out.backward()
    ref_leaves = leaves(tensors, torch.float64)
    ref = debiased_info_nce_ref(*ref_leaves, offset, *hyper)
    ref.backward()
    assert_matches(out, ref, [t.grad for t in mine], [t.grad for t in ref_leaves], dtype)


def check_self(n, d, hyper, dtype, device="cpu"):
    a, b = leaves(make_inputs(n, n, d, 0, dtype, device, seed=n + d)[:2])
    out = debiased_info_nce_triton(a, b, a, b, 0, *hyper)
    out.backward()
    ra, rb = leaves([a, b], torch.float64)
    ref = debiased_info_nce_ref(ra, rb, ra, rb, 0, *hyper)
    ref.backward()
    assert_matches(out, ref, [a.grad, b.grad], [ra.grad, rb.grad], dtype)


@pytest.mark.parametrize("hyper", HYPER)
@pytest.mark.parametrize("n,m,d,offset", [(1, 4, 3, 2), (5, 11, 7, 3), (20, 50, 33, 17)])
def test_fp32_keys_match_reference(n, m, d, offset, hyper):
    check_keys(n, m, d, offset, hyper, torch.float32)


@pytest.mark.parametrize("hyper", HYPER)
@pytest.mark.parametrize("n,d", [(2, 3), (37, 33)])
def test_fp32_single_process_matches_reference(n, d, hyper):
    check_self(n, d, hyper, torch.float32)


@pytest.mark.parametrize("tau_plus", [0.1, 0.5])
def test_clamp_binds_for_some_anchors(tau_plus):
    # positives of graded strength: (Σneg − τ⁺·M·pos)/(1−τ⁺) falls below the floor M·e^{−1/τ} for 7 (τ⁺ = 0.1)
    # and 13 (τ⁺ = 0.5) of the 18 anchors, so both branches of the clamp are exercised
    tensors = make_inputs(9, 9, 5, 0, torch.float64, seed=1)
    w = torch.linspace(0, 1, 9, dtype=torch.float64)[:, None]
    a, b = (F.normalize(t, dim=1) for t in (tensors[0], w * tensors[0] + (1 - w) * tensors[1]))
    z, m, t = torch.cat([a, b]), 16, 0.2  # 2·9 − 2 negatives an anchor
    e = torch.exp(z @ z.T / t)
    pos = torch.exp((a * b).sum(1) / t).repeat(2)
    neg = e.sum(1) - e.diagonal() - pos
    binding = (neg - tau_plus * m * pos) / (1 - tau_plus) < m * math.exp(-1 / t)
    assert int(binding.sum()) == {0.1: 7, 0.5: 13}[tau_plus]
    mine = leaves([a, b], torch.float32)
    out = debiased_info_nce_triton(*mine, None, None, 0, 0.2, tau_plus, 0.0)
    out.backward()
    ra, rb = leaves([a, b])
    ref = debiased_info_nce_ref(ra, rb, None, None, 0, 0.2, tau_plus, 0.0)
    ref.backward()
    assert_matches(out, ref, [t.grad for t in mine], [ra.grad, rb.grad], torch.float32)


def test_fp16():
    check_keys(20, 50, 33, 17, (0.2, 0.1, 1.0), torch.float16)


def test_dispatch():
    a, b, keys_a, keys_b = leaves(make_inputs(6, 9, 5, 2, torch.float32))
    got = debiased_info_nce_rows(a, b, keys_a, keys_b, 2, 0.3, 0.1, 0.5, "triton")
    want = debiased_info_nce_rows(a, b, keys_a, keys_b, 2, 0.3, 0.1, 0.5, "auto")  # CPU: the reference
    assert got.item() == pytest.approx(want.item(), rel=1e-5)


@pytest.mark.parametrize(
    "hyper,match",
    [((0.0, 0.1, 0.0), "temperature=0.0"), ((0.5, 1.0, 0.0), "tau_plus=1.0"), ((0.5, 0.1, -1.0), "beta=-1.0")],
)
def test_bad_hyperparameters_refused(hyper, match):
    a, b = leaves(make_inputs(3, 3, 4, 0, torch.float32)[:2])
    with pytest.raises(ValueError, match=match):
        debiased_info_nce_triton(a, b, None, None, 0, *hyper)


def test_one_pair_refused():
    a, b = leaves(make_inputs(1, 1, 4, 0, torch.float32)[:2])
    with pytest.raises(ValueError, match="M >= 2"):
        debiased_info_nce_triton(a, b)


@gpu
@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("hyper", [(0.2, 0.1, 0.0), (0.2, 0.1, 1.0)])
@pytest.mark.parametrize("n,m,d,offset", [(300, 1000, 129, 555), (1000, 1000, 2048, 0)])
def test_gpu_keys_match_reference(n, m, d, offset, hyper, dtype):
    check_keys(n, m, d, offset, hyper, dtype, device="cuda")


@gpu
@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("hyper", [(0.2, 0.1, 0.0), (0.2, 0.1, 1.0)])
def test_gpu_single_process_matches_reference(hyper, dtype):
    check_self(4096, 128, hyper, dtype, device="cuda")
