"""The token-level objectives under a 2-process gloo group (one spawn for the whole matrix): for the global losses the
mean of the per-rank values is the single-process loss of the concatenated batch and each rank's inputs get
``world_size × dL/dz_r`` — also when the ranks hold different numbers of masked patches or valid rows; the iBOT
centre and the Sinkhorn-Knopp codes are those of the global batch; KoLeo is per rank by default (each rank's value
and gradient are the single-process ones of its own rows) and global with ``global_batch=True``."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from selfsup.objectives.data2vec import Data2VecLoss
from selfsup.objectives.ibot import IBOTPatchLoss, sinkhorn_knopp
from selfsup.objectives.ijepa import IJEPALoss
from selfsup.objectives.koleo import KoLeoLoss
from selfsup.objectives.mae import MAELoss
from tests.distributed_utils import run_distributed

WORLD, B, L, K = 2, 6, 4, 5  # global samples (3 per rank), patches per image, prototypes
# masked patches per sample: rank 0 holds 3 + 2 + 4, rank 1 holds 1 + 0 + 1
MASK = torch.tensor(
    [[1, 1, 1, 0], [0, 1, 0, 1], [1, 1, 1, 1], [0, 0, 1, 0], [0, 0, 0, 0], [1, 0, 0, 0]], dtype=torch.bool
)
VALID = torch.tensor(  # I-JEPA's padded predictions: 4 + 2 + 3 real rows on rank 0, 1 + 4 + 2 on rank 1
    [[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 1, 1], [1, 1, 0, 0]], dtype=torch.bool
)
GLOBAL = ("mae", "ijepa", "ijepa_valid", "ibot", "ibot_masked", "data2vec", "koleo_global")


def make_inputs() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(321)

    def r(*shape, scale=1.0):
        return scale * torch.randn(*shape, generator=g, dtype=torch.float64)

    return {
        "imgs": r(B, 3, 4, 4),
        "mae_pred": r(B, L, 12),
        "jepa_pred": r(B, L, 7),
        "jepa_target": r(B, L, 7, scale=3.0),
        "student": r(B, L, K, scale=2.0),
        "teacher": r(B, L, K, scale=2.0),
        "d2v_pred": r(B, L, 6),
        "d2v_layers": r(3, B, L, 6, scale=2.0),
        "cls": r(B, 8),
        "cls_logits": r(B, K),
    }


def evaluate(data: dict[str, torch.Tensor], rows: slice) -> dict[str, tuple]:
    """{name: (loss, input grads, extras)} on the samples ``rows`` (this process's)."""
    d = {k: (v[:, rows] if k == "d2v_layers" else v[rows]) for k, v in data.items()}
    mask, valid = MASK[rows], VALID[rows]
    out = {}

    def run(name, fn, *inputs, extras=None):
        xs = [x.clone().requires_grad_() for x in inputs]
        loss = fn(*xs)
        loss.backward()
        out[name] = (loss.detach(), [x.grad for x in xs], extras or {})

    run("mae", lambda p: MAELoss(2)(d["imgs"], p, mask), d["mae_pred"])
    run("ijepa", lambda p: IJEPALoss()(p, d["jepa_target"]), d["jepa_pred"])
    run("ijepa_valid", lambda p: IJEPALoss()(p, d["jepa_target"], valid), d["jepa_pred"])

    ibot = IBOTPatchLoss(K).double()
    probs = ibot.softmax_center_teacher(d["teacher"], 0.07)
    run("ibot", lambda s: ibot(s, probs, mask), d["student"])
    masked_probs = F.softmax(d["teacher"][mask] / 0.07, dim=-1)  # (M_r, K), M_r differs between ranks
    run("ibot_masked", lambda s: ibot.forward_masked(s[mask], masked_probs, mask), d["student"])
    ibot.update_center(d["teacher"])
    codes = ibot.sinkhorn_knopp_teacher(d["teacher"][mask], 0.05, torch.tensor([int(mask.sum())]))
    out["ibot_teacher"] = (None, [], {"center": ibot.center.clone(), "codes": codes})
    out["dino_sinkhorn"] = (None, [], {"codes": sinkhorn_knopp(d["cls_logits"], 0.05)})

    d2v = Data2VecLoss(top_k=2, instance_norm_target_layer=True)
    run("data2vec", lambda p: d2v(p, list(d["d2v_layers"]), mask), d["d2v_pred"])

    run("koleo", KoLeoLoss(), d["cls"])
    run("koleo_global", KoLeoLoss(global_batch=True), d["cls"])
    return out


def _rank_fn(rank, world, data):
    n = B // world
    return evaluate(data, slice(rank * n, (rank + 1) * n))


@pytest.fixture(scope="module")
def results():
    data = make_inputs()
    single = evaluate(data, slice(None))
    n = B // WORLD
    own_rows = [evaluate(data, slice(r * n, (r + 1) * n)) for r in range(WORLD)]  # one process, one rank's rows
    ranks = run_distributed(_rank_fn, WORLD, data)
    return single, own_rows, ranks


@pytest.mark.ddp
@pytest.mark.parametrize("name", GLOBAL)
def test_two_processes_equal_one(results, name):
    single, _, ranks = results
    loss, grads, _ = single[name]
    per_rank = [r[name] for r in ranks]
    torch.testing.assert_close(torch.stack([r[0] for r in per_rank]).mean(), loss, rtol=0, atol=1e-12)
    for i, g in enumerate(grads):
        got = torch.cat([r[1][i] for r in per_rank])
        torch.testing.assert_close(got, WORLD * g, rtol=0, atol=1e-12, msg=lambda m, i=i: f"input {i}: {m}")


@pytest.mark.ddp
def test_unequal_ranks_are_not_each_others_mean(results):
    """The matrix above is not trivially satisfied: the ranks' own means differ from the returned values."""
    _, own_rows, ranks = results
    for name in ("mae", "ijepa_valid", "data2vec"):
        assert not torch.allclose(torch.stack([o[name][0] for o in own_rows]).mean(), ranks[0][name][0])


@pytest.mark.ddp
def test_koleo_is_per_rank_by_default(results):
    _, own_rows, ranks = results
    for rank, own in zip(ranks, own_rows, strict=True):
        torch.testing.assert_close(rank["koleo"][0], own["koleo"][0], rtol=0, atol=1e-12)
        torch.testing.assert_close(rank["koleo"][1][0], own["koleo"][1][0], rtol=0, atol=1e-12)


@pytest.mark.ddp
def test_centre_and_sinkhorn_codes_are_the_global_batch(results):
    single, _, ranks = results
    for rank in ranks:  # the same centre on every rank: that of the concatenated batch
        torch.testing.assert_close(
            rank["ibot_teacher"][2]["center"], single["ibot_teacher"][2]["center"], rtol=0, atol=1e-12
        )
    for name in ("ibot_teacher", "dino_sinkhorn"):  # each rank keeps its rows of the global codes
        got = torch.cat([r[name][2]["codes"] for r in ranks])
        torch.testing.assert_close(
            got, single[name][2]["codes"], rtol=1e-12, atol=1e-14, msg=lambda m, n=name: f"{n}: {m}"
        )
