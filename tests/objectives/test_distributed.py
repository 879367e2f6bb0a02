"""All objectives under a 2-process gloo group (one spawn for the whole matrix): the mean of the per-rank losses is
the single-process loss of the concatenated batch, each rank's inputs get ``world_size × dL/dz_r``, and parameter
gradients (SIE's hypernetwork) average over ranks — what DDP does — to the single-process gradient."""

from __future__ import annotations

import pytest
import torch

from selfsup.data.views import NUM_PARAMS, RELATIVE_NAMES
from selfsup.objectives import (
    BarlowTwinsLoss,
    CAREEquivarianceLoss,
    CompositeObjective,
    DebiasedInfoNCELoss,
    DINOLoss,
    InfoNCELoss,
    INTLLoss,
    LDRegLoss,
    NegativeCosineLoss,
    PIRLLoss,
    RotationPrediction,
    RunFacts,
    SIELoss,
    SwAVLoss,
    VICRegLoss,
)
from tests.distributed_utils import run_distributed
from tests.objectives.helpers import batch_of

N, D, F, P, WORLD = 12, 6, 5, NUM_PARAMS, 2  # global pairs, embedding, feature and parameter sizes


def make_objectives() -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)  # same hypernetwork weights in every process
    return {
        "info_nce_all": InfoNCELoss(0.3, "all"),
        "info_nce_cross": InfoNCELoss(0.3, "cross"),
        "info_nce_one_way": InfoNCELoss(0.3, "one_way"),
        "info_nce_queue": InfoNCELoss(0.3, "queue"),  # per row: each query, its key and the (global) queue
        "dcl": DebiasedInfoNCELoss(0.5, 0.1, 0.0),
        "dcl_clamped": DebiasedInfoNCELoss(0.5, 0.6, 0.0),
        "hcl": DebiasedInfoNCELoss(0.5, 0.1, 1.0),
        "barlow_gram": BarlowTwinsLoss(0.0051, "gram"),
        "barlow_feature": BarlowTwinsLoss(0.0051, "feature"),
        "vicreg_gram": VICRegLoss(route="gram"),
        "vicreg_feature": VICRegLoss(route="feature"),
        "care_aligned": CAREEquivarianceLoss(4),  # chunks of 3 rows, inside each rank
        "care_across": CAREEquivarianceLoss(3),  # chunks of 4 rows, one spans both ranks
        "care_leftover": CAREEquivarianceLoss(5),  # chunks of 2 rows, 2 leftover rows on rank 1
        "sie": SIELoss(4, 2, P).double(),
        "intl": INTLLoss(4, 0.05),
        "ldreg_mom": LDRegLoss(0.2, 0.5, 64, "mom"),  # k clipped to 2N − 2 of the GLOBAL batch
        "ldreg_mle": LDRegLoss(0.2, 0.5, 7, "mle"),
        "negative_cosine": NegativeCosineLoss(2.0, 2.0),
        "pirl": pirl(),  # per row against the (global) bank; Z from the global batch's scores
        "pirl_cross_entropy": pirl(loss_type="cross_entropy"),
        # each term's Z on every call, each from the global batch's scores
        "pirl_every_step": pirl(norm_constant_update="every_step"),
        "dino": DINOLoss(D, teacher_temp=0.05).double(),  # 2 global + 2 local crops; the centre from the global batch
        "swav": SwAVLoss(0.1, 0.05, 3, (0, 1)),  # codes by Sinkhorn over the global batch
        "swav_queue": SwAVLoss(0.1, 0.05, 3, (0, 1)),  # ... with a queue in front
        "composite": CompositeObjective(
            {
                "info_nce": {"loss": InfoNCELoss(0.5), "weight": 1.0, "views": [0, 1]},
                "care": {"loss": CAREEquivarianceLoss(3), "weight": 0.03, "views": [2, 3]},
                "sie": {"loss": SIELoss(4, 2, len(RELATIVE_NAMES)).double(), "weight": 0.5, "views": [1, 3]},
            }
        ),
        "lorot": CompositeObjective(  # a linear head over every view's features, labels from its parameters
            {
                "info_nce": {"loss": InfoNCELoss(0.5), "weight": 1.0, "views": [0, 1]},
                "lorot": {"loss": RotationPrediction(True, in_dim=F).double(), "weight": 0.1, "views": "all"},
            }
        ),
    }


def pirl(**kw) -> PIRLLoss:
    loss = PIRLLoss(temperature=0.3, **kw)
    loss.attach(RunFacts(embedding_dim=D, feature_dim=F, num_samples=50))
    return loss


def make_queue():
    """The same 8 past rows on every rank (a memory part's queue is global)."""
    g = torch.Generator().manual_seed(7)
    return [torch.randn(8, D, generator=g, dtype=torch.float64) for _ in range(2)]


def make_inputs():
    g = torch.Generator().manual_seed(123)
    z = [torch.randn(N, D, generator=g, dtype=torch.float64) for _ in range(4)]
    z[1][:6] = z[0][:6] + 0.01 * torch.randn(6, D, generator=g, dtype=torch.float64)  # binds the DCL clamp
    feats = [torch.randn(N, F, generator=g, dtype=torch.float64) for _ in range(4)]
    params = [torch.rand(N, P, generator=g, dtype=torch.float64) + 0.5 for _ in range(4)]  # jitter factors > 0
    return z, feats, params


def evaluate(objectives, z, feats, params):
    """{name: (loss, input grads, parameter grads)} — z, feats, params are this process's rows."""
    out = {}
    for name, objective in objectives.items():
        zs = [x.clone().requires_grad_() for x in z]
        fs = [x.clone().requires_grad_() for x in feats]
        ts = [x.clone().requires_grad_() for x in params]
        objective.zero_grad()
        if isinstance(objective, CompositeObjective):
            loss = objective.forward_views(batch_of(zs, fs, ts))
            inputs = zs + fs + ts
        elif isinstance(objective, DINOLoss):
            loss = objective(zs, [x.detach() for x in zs[:2]])  # teachers: the global views (no gradient)
            inputs = zs
        elif isinstance(objective, SwAVLoss):
            queue = [torch.nn.functional.normalize(q, dim=1) for q in make_queue()] if name == "swav_queue" else None
            loss = objective(zs, queue)
            inputs = zs
        elif isinstance(objective, PIRLLoss):  # positives: each row's bank row (z[2]); negatives: 8 global rows
            bank = [torch.nn.functional.normalize(x, dim=1) for x in (z[2], make_queue()[0])]
            loss = objective(zs[0], zs[1], positives=bank[0], negatives=bank[1])
            inputs = zs[:2]
        elif name == "info_nce_queue":
            loss = objective(zs[0], zs[1], queue=make_queue()[0])
            inputs = zs[:2]
        elif isinstance(objective, SIELoss):
            loss = objective(zs[0], zs[1], ts[1] - ts[0])
            inputs = zs[:2] + ts[:2]
        elif isinstance(objective, LDRegLoss):
            loss = objective(zs[0], zs[1], fs[0], fs[1])
            inputs = zs[:2] + fs[:2]
        else:
            loss = objective(zs[0], zs[1])
            inputs = zs[:2]
        loss.backward()
        grads = [x.grad if x.grad is not None else torch.zeros_like(x) for x in inputs]
        param_grads = {k: p.grad.clone() for k, p in objective.named_parameters() if p.grad is not None}
        state = {k: b.clone() for k, b in objective.named_buffers()}  # DINO's centre after the step
        out[name] = (loss.detach(), grads, param_grads, state)
    return out


def _rank_fn(rank, world, z, feats, params):
    n = z[0].shape[0] // world
    rows = slice(rank * n, (rank + 1) * n)
    return evaluate(make_objectives(), [x[rows] for x in z], [x[rows] for x in feats], [x[rows] for x in params])


@pytest.fixture(scope="module")
def results():
    z, feats, params = make_inputs()
    single = evaluate(make_objectives(), z, feats, params)
    ranks = run_distributed(_rank_fn, WORLD, z, feats, params)
    return single, ranks


@pytest.mark.ddp
@pytest.mark.parametrize("name", list(make_objectives()))
def test_two_processes_equal_one(results, name):
    single, ranks = results
    loss, grads, param_grads, state = single[name]
    per_rank = [r[name] for r in ranks]
    torch.testing.assert_close(torch.stack([r[0] for r in per_rank]).mean(), loss, rtol=0, atol=1e-9)
    for i, g in enumerate(grads):
        got = torch.cat([r[1][i] for r in per_rank])
        torch.testing.assert_close(got, WORLD * g, rtol=0, atol=1e-9, msg=lambda m, i=i: f"input {i}: {m}")
    assert set(param_grads) == set(per_rank[0][2])
    for key, g in param_grads.items():  # DDP averages parameter gradients over ranks
        mean = torch.stack([r[2][key] for r in per_rank]).mean(0)
        torch.testing.assert_close(mean, g, rtol=0, atol=1e-9, msg=lambda m, key=key: f"{key}: {m}")
    for key, value in state.items():  # running state (DINO's centre) is the same on every rank: the global batch's
        for r in per_rank:
            torch.testing.assert_close(r[3][key], value, rtol=0, atol=1e-12, msg=lambda m, key=key: f"{key}: {m}")
