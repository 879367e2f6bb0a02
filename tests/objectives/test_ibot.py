"""IBOTPatchLoss and sinkhorn_knopp against float64 references written from facebookresearch/dinov2
(``dinov2/loss/ibot_patch_loss.py``: ``iBOTPatchLoss.forward`` — Σ t·log_softmax(s/τ_s) per patch, masked sum over
the patches divided by #masked clamped at 1, −mean over samples; ``forward_masked`` — the masked rows weighted by
1/#masked of their sample, −sum / B; ``softmax_center_teacher``, ``reduce_center_update`` + ``apply_center_update``;
``sinkhorn_knopp_teacher`` and ``dinov2/loss/dino_clstoken_loss.py::DINOLoss.sinkhorn_knopp_teacher`` — the
exp-domain Sinkhorn-Knopp with all-reduces that are sums over one rank here)."""

import pytest
import torch
import torch.nn.functional as F

from selfsup.objectives.ibot import IBOTPatchLoss, sinkhorn_knopp
from tests.objectives.helpers import randn

B, N, K = 4, 6, 5
MASKS = torch.tensor(
    [[1, 0, 1, 1, 0, 0], [0, 0, 0, 0, 0, 0], [1, 1, 1, 1, 1, 1], [0, 0, 0, 1, 0, 0]], dtype=torch.bool
)  # sample 1 has no masked patch


def official_forward(s, t, masks, student_temp=0.1):
    loss = torch.sum(t * F.log_softmax(s / student_temp, dim=-1), dim=-1)
    loss = torch.sum(loss * masks.float(), dim=-1) / masks.sum(dim=-1).clamp(min=1.0)
    return -loss.mean()


def official_forward_masked(s, t, masks, n_masked_patches=None, masks_weight=None, student_temp=0.1):
    loss = torch.sum(t * F.log_softmax(s / student_temp, dim=-1), dim=-1)
    if masks_weight is None:  # float64 here (the official bool-mask sum makes float32 weights)
        masks_weight = (1 / masks.sum(-1).double().clamp(min=1.0)).unsqueeze(-1).expand_as(masks)[masks]
    if n_masked_patches is not None:
        loss = loss[:n_masked_patches]
    return -(loss * masks_weight).sum() / masks.shape[0]


def official_sinkhorn(teacher_output, teacher_temp, n_iterations=3):
    Q = torch.exp(teacher_output / teacher_temp).t()  # K x B
    b, k = Q.shape[1], Q.shape[0]
    Q = Q / torch.sum(Q)
    for _ in range(n_iterations):
        Q = Q / torch.sum(Q, dim=1, keepdim=True) / k
        Q = Q / torch.sum(Q, dim=0, keepdim=True) / b
    return (Q * b).t()


def inputs(seed=0):
    student = randn(B, N, K, seed=seed, scale=2.0)
    teacher = F.softmax(randn(B, N, K, seed=seed + 1, scale=3.0), dim=-1)
    return student, teacher


def test_forward_matches_the_official_loss():
    student, teacher = inputs()
    s = student.clone().requires_grad_()
    ref = student.clone().requires_grad_()
    got, expected = IBOTPatchLoss(K)(s, teacher, MASKS), official_forward(ref, teacher, MASKS)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    got.backward()
    expected.backward()
    torch.testing.assert_close(s.grad, ref.grad, rtol=1e-12, atol=1e-14)
    assert torch.all(s.grad[~MASKS] == 0)  # unmasked patches, and sample 1 entirely, get no gradient
    assert torch.autograd.gradcheck(lambda x: IBOTPatchLoss(K)(x, teacher, MASKS), (student.clone().requires_grad_(),))


def test_sample_without_masked_patches_adds_zero_but_counts():
    student, teacher = inputs(3)
    loss_fn = IBOTPatchLoss(K, student_temp=0.2)
    all_but_1 = [0, 2, 3]
    expected = loss_fn(student[all_but_1], teacher[all_but_1], MASKS[all_but_1]) * 3 / 4
    torch.testing.assert_close(loss_fn(student, teacher, MASKS), expected)


def test_forward_masked_matches_the_official_and_forward():
    student, teacher = inputs(5)
    loss_fn = IBOTPatchLoss(K)
    s_rows, t_rows = student[MASKS], teacher[MASKS]  # (M, K) in row-major order
    got = loss_fn.forward_masked(s_rows, t_rows, MASKS)
    torch.testing.assert_close(got, official_forward_masked(s_rows, t_rows, MASKS), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got, loss_fn(student, teacher, MASKS), rtol=1e-12, atol=1e-12)
    # DINOv2's padded buffer: extra rows after the masked ones, cut by n_masked_patches; explicit weights
    pad = randn(3, K, seed=9)
    m = int(MASKS.sum())
    weights = (1 / MASKS.sum(-1).clamp(min=1).double()).unsqueeze(-1).expand_as(MASKS)[MASKS]
    got = loss_fn.forward_masked(torch.cat([s_rows, pad]), torch.cat([t_rows, pad]), MASKS, m, weights)
    expected = official_forward_masked(torch.cat([s_rows, pad]), torch.cat([t_rows, pad]), MASKS, m, weights)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="rows but"):
        loss_fn.forward_masked(torch.cat([s_rows, pad]), torch.cat([t_rows, pad]), MASKS)


def test_centring_matches_the_official_sequence():
    """softmax_center_teacher(t1); update_center(t1); softmax_center_teacher(t2): the official code applies the
    all-reduced update lazily inside the second call, which reads the same centre."""
    loss_fn = IBOTPatchLoss(K, center_momentum=0.8).double()
    loss_fn.center.copy_(randn(1, 1, K, seed=11))
    t1, t2 = randn(B, N, K, seed=12, scale=2.0), randn(B, N, K, seed=13, scale=2.0)
    c0 = loss_fn.center.clone()
    p1 = loss_fn.softmax_center_teacher(t1, teacher_temp=0.07)
    torch.testing.assert_close(p1, F.softmax((t1 - c0) / 0.07, dim=-1), rtol=1e-12, atol=1e-14)
    loss_fn.update_center(t1)
    c1 = c0 * 0.8 + torch.sum(t1.mean(1), dim=0, keepdim=True) / len(t1) * 0.2
    torch.testing.assert_close(loss_fn.center, c1, rtol=1e-12, atol=1e-14)
    p2 = loss_fn.softmax_center_teacher(t2, teacher_temp=0.04)
    torch.testing.assert_close(p2, F.softmax((t2 - c1) / 0.04, dim=-1), rtol=1e-12, atol=1e-14)
    # DINOv2's call: the masked tokens as one sample (M, K) -> (1, M, K); a 2-D input keeps its shape
    rows = t1[MASKS]
    torch.testing.assert_close(loss_fn.softmax_center_teacher(rows, 0.04), F.softmax((rows - c1[0]) / 0.04, dim=-1))


@pytest.mark.parametrize("n_iterations", [0, 1, 3, 10])
def test_sinkhorn_matches_the_official(n_iterations):
    logits = randn(9, K, seed=20, scale=0.5)
    got = sinkhorn_knopp(logits, 0.1, n_iterations)
    torch.testing.assert_close(got, official_sinkhorn(logits, 0.1, n_iterations), rtol=1e-12, atol=1e-14)
    if n_iterations:
        torch.testing.assert_close(got.sum(dim=1), torch.ones(9, dtype=torch.float64))  # each row is an assignment
    assert not got.requires_grad


def test_sinkhorn_sharp_temperature_stays_finite():
    logits = 30.0 + randn(7, K, seed=21, scale=2.0)  # exp(logits / 0.04) overflows float64
    assert not torch.isfinite(official_sinkhorn(logits, 0.04)).all()
    got = sinkhorn_knopp(logits, 0.04)
    shifted = logits - logits.max()  # Sinkhorn-Knopp does not see a common shift; float64 holds this one
    torch.testing.assert_close(got, official_sinkhorn(shifted, 0.04), rtol=1e-9, atol=1e-12)
    spread = randn(7, K, seed=22, scale=100.0)  # overflows or underflows the official code whatever the shift
    codes = sinkhorn_knopp(spread, 0.04)
    assert torch.isfinite(codes).all()
    torch.testing.assert_close(codes.sum(dim=1), torch.ones(7, dtype=torch.float64))


def test_sinkhorn_teacher_methods():
    loss_fn = IBOTPatchLoss(K)
    logits = randn(8, K, seed=22)
    n_masked = torch.full((1,), 8, dtype=torch.long)  # as DINOv2's collate makes it
    got = loss_fn.sinkhorn_knopp_teacher(logits, 0.05, n_masked)
    torch.testing.assert_close(got, official_sinkhorn(logits, 0.05), rtol=1e-12, atol=1e-14)
    assert n_masked.item() == 8  # the official all-reduce works in place; here the caller's tensor is kept
    half = sinkhorn_knopp(logits.half(), 0.05)
    assert half.dtype == torch.float32  # computed in float32, as the official code
    torch.testing.assert_close(half.double(), sinkhorn_knopp(logits.half().double(), 0.05), rtol=1e-5, atol=1e-6)


def test_bad_arguments_refused():
    for kwargs, match in (
        (dict(patch_out_dim=0), r"objective\.patch_out_dim=0"),
        (dict(patch_out_dim=4, student_temp=0.0), r"objective\.student_temp=0\.0"),
        (dict(patch_out_dim=4, center_momentum=1.0), r"objective\.center_momentum=1\.0: expected a number in \[0"),
    ):
        with pytest.raises(ValueError, match=match):
            IBOTPatchLoss(**kwargs)
    with pytest.raises(ValueError, match="teacher_temp=0"):
        sinkhorn_knopp(randn(3, 4), 0)
    with pytest.raises(ValueError, match=r"expected student and teacher_probs \(B, N, K\)"):
        IBOTPatchLoss(K)(randn(2, 3, K), randn(2, 3, K), torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"expected tokens \(B, N, 5\)"):
        IBOTPatchLoss(K).update_center(randn(3, K))
