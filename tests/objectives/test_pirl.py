"""PIRL's loss in float64 against the paper's equations written out per row (Misra & van der Maaten 2020, eq. 5;
the NCE of vissl ``losses/nce_loss.py``: ``NCEAverage.forward`` and ``compute_partition_function``,
``NCECriterion.forward``), its jigsaw head against vissl's head list, and its refusals."""

import math

import pytest
import torch
import torch.nn.functional as F

from selfsup.objectives import PIRLLoss, RunFacts, ViewBatch

B, D, FEAT, K, N = 6, 5, 4, 7, 40  # rows, embedding, features, negatives, samples in the bank
EPS = 1.1920928955078125e-07  # numpy's float32 eps, vissl NCECriterion's


def unit(*shape, seed):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=g, dtype=torch.float64), dim=-1)


def reference_nce(v, positives, negatives, tau, z, n):
    """One row at a time: P = exp(m·v/τ)/Z for v's own bank row m and each negative m_k,
    L = −log(P_pos / (P_pos + K/n + eps)) − Σ_k log((K/n) / (P_k + K/n + eps)), mean over rows."""
    k = negatives.shape[0]
    total = 0.0
    for i in range(v.shape[0]):
        vi = v[i] / v[i].norm()
        p_pos = math.exp(float(positives[i] @ vi) / tau) / z
        loss = -math.log(p_pos / (p_pos + k / n + EPS))
        for m in negatives:
            p_k = math.exp(float(m @ vi) / tau) / z
            loss -= math.log((k / n) / (p_k + k / n + EPS))
        total += loss
    return total / v.shape[0]


def reference_z(v, positives, negatives, tau, n):
    """vissl's partition function: n × the mean of exp(m·v/τ) over the (B, 1 + K) scores of the first call."""
    v = F.normalize(v, dim=1)
    scores = [
        [math.exp(float(positives[i] @ v[i]) / tau)] + [math.exp(float(m @ v[i]) / tau) for m in negatives]
        for i in range(v.shape[0])
    ]
    return n * sum(map(sum, scores)) / (v.shape[0] * (1 + negatives.shape[0]))


def pirl(**kw) -> PIRLLoss:
    loss = PIRLLoss(**kw).double()
    loss.attach(RunFacts(embedding_dim=D, feature_dim=FEAT, num_samples=N))
    return loss.double()


def test_the_loss_is_lambda_mixed_nce_against_the_bank_with_z_from_the_first_call():
    image, jigsaw = torch.randn(B, D, dtype=torch.float64) * 3, torch.randn(B, D, dtype=torch.float64)
    positives, negatives = unit(B, D, seed=1), unit(K, D, seed=2)
    loss = pirl(weight=0.3, temperature=0.2)
    got = loss(image, jigsaw, positives, negatives)
    z = reference_z(jigsaw, positives, negatives, 0.2, N)  # from the first term: the jigsaw's, as vissl's patches
    assert float(loss.norm_constant) == pytest.approx(z, rel=1e-13)
    expected = 0.3 * reference_nce(jigsaw, positives, negatives, 0.2, z, N) + 0.7 * reference_nce(
        image, positives, negatives, 0.2, z, N
    )
    assert float(got) == pytest.approx(expected, rel=1e-12)
    assert float(loss.terms()["jigsaw_nce"]) == pytest.approx(reference_nce(jigsaw, positives, negatives, 0.2, z, N))
    # Z is kept: a second call with other embeddings uses the first call's
    again = loss(jigsaw, image, positives, negatives)
    assert float(loss.norm_constant) == pytest.approx(z, rel=1e-13)
    assert float(again) == pytest.approx(
        0.3 * reference_nce(image, positives, negatives, 0.2, z, N)
        + 0.7 * reference_nce(jigsaw, positives, negatives, 0.2, z, N),
        rel=1e-12,
    )
    assert "norm_constant" in loss.state_dict()  # saved in checkpoints: a resumed run keeps its Z


def test_every_step_gives_each_term_its_own_z_from_its_own_scores_on_each_call():
    positives, negatives = unit(B, D, seed=7), unit(K, D, seed=8)
    loss = pirl(norm_constant_update="every_step", temperature=0.2)
    for _ in range(2):  # each call, each term: Z from that term's scores of that call
        image, jigsaw = torch.randn(B, D, dtype=torch.float64), torch.randn(B, D, dtype=torch.float64)
        got = loss(image, jigsaw, positives, negatives)
        z_jigsaw = reference_z(jigsaw, positives, negatives, 0.2, N)
        z_image = reference_z(image, positives, negatives, 0.2, N)
        assert float(loss.norm_constant) == pytest.approx(z_image, rel=1e-13)  # the last term's
        expected = 0.5 * reference_nce(jigsaw, positives, negatives, 0.2, z_jigsaw, N) + 0.5 * reference_nce(
            image, positives, negatives, 0.2, z_image, N
        )
        assert float(got) == pytest.approx(expected, rel=1e-12)


def test_cross_entropy_is_the_positives_softmax_among_the_bank_scores():
    image, jigsaw = torch.randn(B, D, dtype=torch.float64), torch.randn(B, D, dtype=torch.float64)
    positives, negatives = unit(B, D, seed=3), unit(K, D, seed=4)
    loss = pirl(loss_type="cross_entropy")

    def ce(v):
        v = F.normalize(v, dim=1)
        logits = torch.cat([(v * positives).sum(1, keepdim=True), v @ negatives.T], dim=1) / 0.07
        return float(-(logits[:, 0] - torch.logsumexp(logits, dim=1)).mean())

    assert float(loss(image, jigsaw, positives, negatives)) == pytest.approx(0.5 * ce(jigsaw) + 0.5 * ce(image))
    assert float(loss.norm_constant) == -1  # no Z


def test_the_jigsaw_head_maps_each_tile_then_the_concatenation_in_the_tiles_order():
    """vissl's head 0 for the patches: mlp [F, 128] on each tile (no BN, no ReLU), siamese_concat_view (tiles in
    order), mlp [g²·128, 128]."""
    loss = pirl(grid=2, tile_dim=3)
    tiles = torch.randn(B, 4, FEAT, dtype=torch.float64)
    per_tile = [loss.tile_head.weight @ tiles[:, t].T for t in range(4)]  # (3, B) each
    concat = torch.cat([p.T + loss.tile_head.bias for p in per_tile], dim=1)  # (B, 12)
    expected = concat @ loss.jigsaw_head.weight.T + loss.jigsaw_head.bias
    torch.testing.assert_close(loss.embed_jigsaw(tiles), expected, rtol=1e-12, atol=1e-12)
    swapped = loss.embed_jigsaw(tiles[:, [1, 0, 2, 3]])
    assert not torch.allclose(swapped, expected)  # the order matters: the shuffled order is the input
    with pytest.raises(ValueError, match="objective.grid=2: the jigsaw view has 9 tiles, expected 4"):
        loss.embed_jigsaw(torch.randn(B, 9, FEAT, dtype=torch.float64))


def test_forward_views_reads_the_tiles_and_the_bank_and_says_what_is_missing():
    loss = pirl(grid=2, tile_dim=3)
    z = [torch.randn(B, D, dtype=torch.float64) for _ in range(2)]
    tiles = [None, torch.randn(B, 4, FEAT, dtype=torch.float64)]
    bank = {"positives": unit(B, D, seed=5), "negatives": unit(K, D, seed=6)}
    batch = ViewBatch(z, z, z, [None, None], [None, None], 2, extras=bank, tiles=tiles)
    expected = pirl(grid=2, tile_dim=3)
    expected.load_state_dict(loss.state_dict())
    value = loss.forward_views(batch)
    assert value.item() == expected(z[0], expected.embed_jigsaw(tiles[1]), **bank).item()
    with pytest.raises(ValueError, match=r"view 1 is not a jigsaw: set views.views.<its name>.jigsaw"):
        loss.forward_views(ViewBatch(z, z, z, [None, None], [None, None], 2, extras=bank))
    with pytest.raises(ValueError, match="set memory=sample_bank"):
        loss.forward_views(ViewBatch(z, z, z, [None, None], [None, None], 2, tiles=tiles))


@pytest.mark.parametrize(
    "kw,message",
    [
        ({"jigsaw_view": 0}, r"objective.jigsaw_view=0: expected another view"),
        ({"temperature": 0}, r"objective.temperature=0"),
        ({"weight": 1.5}, r"objective.weight=1.5"),
        ({"loss_type": "nce2"}, r"objective.loss_type='nce2': expected 'nce' or 'cross_entropy'"),
        (
            {"norm_constant_update": "once"},
            r"objective.norm_constant_update='once': expected 'first_step' or 'every_step'",
        ),
    ],
)
def test_bad_settings_are_refused_in_one_line(kw, message):
    with pytest.raises(ValueError, match=message):
        PIRLLoss(**kw)
