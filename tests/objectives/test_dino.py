"""DINOLoss against a float64 reference written from facebookresearch/dino ``main_dino.py::DINOLoss`` (its
``forward``: student outputs chunked per crop and divided by τ_s, teacher softmax of (t − centre)/τ_t chunked into
the 2 global crops, the loss summed over pairs iq ≠ v and divided by their number; ``update_center``: the EMA of the
batch mean of the concatenated teacher outputs)."""

import pytest
import torch
import torch.nn.functional as F

from selfsup.objectives import DINOLoss
from tests.objectives.helpers import randn


def official(
    student: torch.Tensor,
    teacher: torch.Tensor,
    center: torch.Tensor,
    ncrops: int,
    temp: float,
    student_temp: float = 0.1,
    center_momentum: float = 0.9,
):
    """The official forward on concatenated crops (one process), returning (loss, the new centre)."""
    student_out = (student / student_temp).chunk(ncrops)
    teacher_out = F.softmax((teacher - center) / temp, dim=-1).detach().chunk(2)
    total_loss, n_loss_terms = 0, 0
    for iq, q in enumerate(teacher_out):
        for v in range(len(student_out)):
            if v == iq:
                continue
            loss = torch.sum(-q * F.log_softmax(student_out[v], dim=-1), dim=-1)
            total_loss += loss.mean()
            n_loss_terms += 1
    total_loss /= n_loss_terms
    batch_center = torch.sum(teacher, dim=0, keepdim=True) / len(teacher)
    return total_loss, center * center_momentum + batch_center * (1 - center_momentum)


@pytest.mark.parametrize("ncrops", [2, 6])  # 2 global crops, or 2 global + 4 local
def test_matches_the_official_loss_and_centre(ncrops):
    B, K = 5, 7
    students = [randn(B, K, seed=i, scale=3.0).requires_grad_() for i in range(ncrops)]
    teachers = [randn(B, K, seed=100 + i, scale=3.0) for i in range(2)]
    loss_fn = DINOLoss(K, teacher_temp=0.04).double()
    loss_fn.center.copy_(randn(1, K, seed=7))  # a centre from earlier steps
    ref_students = torch.cat([s.detach().clone() for s in students]).requires_grad_()
    expected, new_center = official(ref_students, torch.cat(teachers), loss_fn.center.clone(), ncrops, 0.04)
    got = loss_fn(students, teachers)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(loss_fn.center, new_center, rtol=1e-12, atol=1e-12)  # updated after the call
    got.backward()
    expected.backward()
    torch.testing.assert_close(torch.cat([s.grad for s in students]), ref_students.grad, rtol=1e-10, atol=1e-12)


def test_centre_moves_only_in_training_and_teacher_temperature_is_settable():
    loss_fn = DINOLoss(4).double().eval()
    s, t = [randn(3, 4, seed=i) for i in range(2)], [randn(3, 4, seed=5 + i) for i in range(2)]
    before = loss_fn(s, t)
    assert torch.equal(loss_fn.center, torch.zeros(1, 4))  # eval: no update
    loss_fn.teacher_temp = 0.07  # what the warm-up schedule does every epoch
    after = loss_fn(s, t)
    ref, _ = official(torch.cat(s), torch.cat(t), torch.zeros(1, 4, dtype=torch.float64), 2, 0.07)
    torch.testing.assert_close(after, ref)
    assert not torch.allclose(before, after)


def test_bad_settings_refused():
    for kwargs, match in (
        (dict(out_dim=0), "out_dim=0"),
        (dict(out_dim=4, teacher_temp=0.0), "teacher_temp"),
        (dict(out_dim=4, center_momentum=1.0), "center_momentum=1.0"),
    ):
        with pytest.raises(ValueError, match=match):
            DINOLoss(**kwargs)
    with pytest.raises(ValueError, match="expected >= 2 student views"):
        DINOLoss(4)([randn(3, 4)], [randn(3, 4)])


def test_sinkhorn_knopp_centering_uses_the_codes_of_all_global_views_and_keeps_the_centre():
    """DINOv2's option: the teacher's targets are the Sinkhorn-Knopp codes of the global views' rows together
    (dinov2 ``DINOLoss.sinkhorn_knopp_teacher``), the centre is not moved."""
    from selfsup.objectives.ibot import sinkhorn_knopp

    g = torch.Generator().manual_seed(0)
    student = [torch.randn(6, 5, generator=g, dtype=torch.float64) for _ in range(3)]
    teacher = [torch.randn(6, 5, generator=g, dtype=torch.float64) for _ in range(2)]
    loss = DINOLoss(5, teacher_temp=0.05, centering="sinkhorn_knopp").double().train()
    q = sinkhorn_knopp(torch.cat(teacher), 0.05).chunk(2)
    terms = [
        torch.sum(-q[i] * torch.log_softmax(student[v] / 0.1, dim=-1), dim=-1).mean()
        for i in range(2)
        for v in range(3)
        if v != i
    ]
    torch.testing.assert_close(loss(student, teacher), sum(terms) / len(terms))
    assert torch.equal(loss.center, torch.zeros(1, 5, dtype=torch.float64))
    with pytest.raises(ValueError, match="objective.centering='sinkhorn'"):
        DINOLoss(5, centering="sinkhorn")
