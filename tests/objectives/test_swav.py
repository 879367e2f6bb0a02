"""SwAVLoss against a float64 reference written from facebookresearch/swav ``main_swav.py`` (``train``: for each
crop in crops_for_assign, the codes of its scores — queue scores in front — by ``distributed_sinkhorn``, the last bs
rows kept; every other crop predicts them with log_softmax(scores / τ); mean over the other crops, then over the
assigned crops) at one process, where ``distributed_sinkhorn``'s all-reduces are sums over one rank."""

import pytest
import torch
import torch.nn.functional as F

from selfsup.objectives import SwAVLoss
from selfsup.objectives.swav import sinkhorn
from tests.objectives.helpers import randn


def official_sinkhorn(out: torch.Tensor, epsilon: float, iters: int) -> torch.Tensor:
    Q = torch.exp(out / epsilon).t()  # K x B
    B, K = Q.shape[1], Q.shape[0]
    Q /= torch.sum(Q)
    for _ in range(iters):
        Q /= torch.sum(Q, dim=1, keepdim=True)
        Q /= K
        Q /= torch.sum(Q, dim=0, keepdim=True)
        Q /= B
    Q *= B
    return Q.t()


def official(scores, queue_scores, temperature, epsilon, iters, crops_for_assign):
    bs, nmb = scores[0].shape[0], len(scores)
    loss = 0
    for i, crop_id in enumerate(crops_for_assign):
        with torch.no_grad():
            out = scores[crop_id].detach()
            if queue_scores is not None:
                out = torch.cat((queue_scores[i], out))
            q = official_sinkhorn(out, epsilon, iters)[-bs:]
        subloss = 0
        for v in [v for v in range(nmb) if v != crop_id]:
            x = scores[v] / temperature
            subloss -= torch.mean(torch.sum(q * F.log_softmax(x, dim=1), dim=1))
        loss += subloss / (nmb - 1)
    return loss / len(crops_for_assign)


@pytest.mark.parametrize("queue", [False, True], ids=["no queue", "queue"])
@pytest.mark.parametrize("epsilon", [0.05, 0.01], ids=["eps 0.05", "sharp eps 0.01"])
def test_matches_the_official_loss(queue, epsilon):
    B, K, Q, crops = 6, 5, 9, 4  # 2 global + 2 local crops
    scores = [F.normalize(randn(B, K, seed=i), dim=1).requires_grad_() for i in range(crops)]
    queue_scores = [F.normalize(randn(Q, K, seed=50 + i), dim=1) for i in range(2)] if queue else None
    ref_scores = [s.detach().clone().requires_grad_() for s in scores]
    expected = official(ref_scores, queue_scores, 0.1, epsilon, 3, (0, 1))
    got = SwAVLoss(0.1, epsilon, 3, (0, 1))(scores, queue_scores)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)
    got.backward()
    expected.backward()
    for s, r in zip(scores, ref_scores, strict=True):
        torch.testing.assert_close(s.grad, r.grad, rtol=1e-9, atol=1e-12)


def test_codes_are_a_transport_plan_and_stable_for_a_sharp_epsilon_in_float32():
    scores = F.normalize(randn(64, 10, seed=3), dim=1).float()
    q = sinkhorn(scores, epsilon=0.005, iters=20)  # exp(1/0.005) overflows float32 without the max shift
    assert torch.isfinite(q).all()
    torch.testing.assert_close(q.sum(dim=1), torch.ones(64), rtol=1e-4, atol=1e-4)  # each sample's code sums to 1
    ref = official_sinkhorn(scores.double() - scores.double().max(), 0.005, 20)
    torch.testing.assert_close(q.double(), ref, rtol=1e-4, atol=1e-6)
    balanced = sinkhorn(scores, epsilon=0.05, iters=100)  # converged: every prototype gets M / K of the mass
    torch.testing.assert_close(balanced.sum(dim=0), torch.full((10,), 6.4), rtol=1e-3, atol=1e-3)


def test_bad_settings_refused():
    for kwargs, match in (
        (dict(temperature=0.0), "temperature"),
        (dict(sinkhorn_iters=0), "sinkhorn_iters"),
        (dict(crops_for_assign=(0, 0)), "crops_for_assign"),
    ):
        with pytest.raises(ValueError, match=match):
            SwAVLoss(**kwargs)
    with pytest.raises(ValueError, match="needs 3 views"):
        SwAVLoss(crops_for_assign=(0, 2))([randn(4, 3), randn(4, 3)])
