"""PIRL's parts in a run: the sample bank (vissl's memory update, negatives the same on every rank and after a
resume), the jigsaw view encoded tile by tile, a preempted run resumed bit for bit, 2 processes as 1, refusals."""

import pytest
import torch
import torch.nn.functional as F

from selfsup.objectives import RunFacts, ViewBatch
from selfsup.train import build, run
from selfsup.train.memory import SampleBank
from tests.config_utils import compose_train
from tests.runs import TINY, assert_same_run, losses, signal_then_resume, weights

PIRL = TINY + [
    "views=pirl",
    "views.views.v2.size=18",
    "views.views.v2.flip_p=0.0",
    "memory=sample_bank",
    "memory.num_negatives=64",
    "objective=pirl",
    "projector.num_layers=1",
]


def bank(n=10, dim=3, **kw) -> SampleBank:
    memory = SampleBank(**kw)
    memory.attach(RunFacts(embedding_dim=dim, feature_dim=dim, num_samples=n))
    return memory


def step_batch(z, index):
    return ViewBatch(z, z, z, [None] * len(z), [None] * len(z), len(z), index=index)


def test_the_bank_hands_rows_and_seeded_negatives_and_moves_rows_as_vissl():
    memory = bank(momentum=0.25, num_negatives=4, seed=3)
    assert torch.allclose(memory.bank.norm(dim=1), torch.ones(10, dtype=memory.bank.dtype))
    start = memory.bank.clone()
    index = torch.tensor([7, 2])
    z = [torch.randn(2, 3), torch.randn(2, 3)]
    b = memory.prepare(step_batch(z, index), 0)
    assert torch.equal(b.extras["positives"], start[index])
    first_negatives = b.extras["negatives"]
    assert first_negatives.shape == (4, 3)
    memory.update(b, 0)  # vissl NCEAverage.update_memory: normalise(m · momentum + normalise(z) · (1 − momentum))
    expected = F.normalize(0.25 * start[index] + 0.75 * F.normalize(z[0], dim=1), dim=1)
    torch.testing.assert_close(memory.bank[index], expected)
    untouched = torch.ones(10, dtype=torch.bool)
    untouched[index] = False
    assert torch.equal(memory.bank[untouched], start[untouched]) and int(memory.steps) == 1
    # the negatives depend on (seed, steps taken) only: a bank restored at step 1 draws what this one draws
    restored = bank(momentum=0.25, num_negatives=4, seed=3)
    restored.load_state_dict(memory.state_dict())
    draws = [m.prepare(step_batch(z, index), 0).extras["negatives"] for m in (memory, restored)]
    assert torch.equal(*draws) and not torch.equal(draws[0], first_negatives)
    with pytest.raises(ValueError, match=r"needs each row's dataset index"):
        memory.prepare(step_batch(z, None), 0)


def test_bank_settings_are_refused_in_one_line():
    with pytest.raises(ValueError, match=r"memory.num_negatives=11: more than the 10 training samples"):
        bank(num_negatives=11)
    with pytest.raises(ValueError, match=r"memory.momentum=1"):
        SampleBank(momentum=1)


def test_the_jigsaw_view_is_encoded_tile_by_tile(tmp_path):
    _, module, _ = build(compose_train(PIRL, tmp_path))
    assert module.tiled_views == {1: 3}
    calls = []
    module.backbone.register_forward_hook(lambda m, args, out: calls.append(tuple(args[0].shape)))
    views = [torch.randn(4, 3, 16, 16), torch.randn(4, 3, 15, 15)]  # 18 px crop: 6 px cells, 5 px tiles
    params = [torch.zeros(4, 22), torch.zeros(4, 22)]
    out = module.step_outputs({"views": views, "params": params, "index": torch.arange(4)})
    assert calls == [(4, 3, 16, 16), (36, 3, 5, 5)]
    assert out.tiles[0] is None and out.tiles[1].shape == (4, 9, module.backbone.num_features)
    torch.testing.assert_close(out.feats[1], out.tiles[1].mean(dim=1))
    assert out.tiles[1][2, 4].allclose(module.backbone(views[1][2:3, :, 5:10, 5:10])[0], atol=1e-6)
    assert torch.isfinite(module.objective.forward_views(out))


@pytest.mark.parametrize(
    "overrides,message",
    [
        (
            ["target=ema"],
            r"views.views.v2.jigsaw=3 with target=selfsup.train.target.EMATarget: the target network would encode",
        ),
        (["grad_cache_chunks=2", "objective=info_nce"], r"grad_cache_chunks=2 with jigsaw views \[1\]: not supported"),
        (["memory.num_negatives=400"], r"memory.num_negatives=400: more than the 320 training samples"),
        (["views.views.v2.size=16"], r"views.jigsaw=3: views.size=16 is not a multiple of 3"),
        (
            ["backbone=vit_tiny_cifar", "~backbone.width", "~backbone.norm", "backbone.dynamic_img_size=true"],
            r"views.views.v2.jigsaw_tile=5: not a multiple of the ViT's patch size 4",
        ),
    ],
    ids=["ema-target", "grad-cache", "negatives", "grid", "vit-tile"],
)
def test_bad_pirl_settings_are_refused_at_build(overrides, message, tmp_path):
    if "objective=info_nce" in overrides:  # no bank: a jigsaw view with another objective
        overrides = [o for o in PIRL if not o.startswith(("memory", "objective"))] + overrides
    else:
        overrides = PIRL + overrides
    with pytest.raises(Exception, match=message):
        build(compose_train(overrides, tmp_path))


def test_pirl_without_a_bank_or_a_jigsaw_says_so(tmp_path):
    with pytest.raises(Exception, match="set memory=sample_bank"):
        no_bank = [o for o in PIRL if not o.startswith("memory")]
        run(compose_train(no_bank + ["trainer.max_steps=1"], tmp_path / "a"))


@pytest.mark.slow
def test_a_pirl_run_resumes_bit_for_bit(tmp_path):
    """Preempted mid-epoch 2: bank, its step count (the negatives' key) and Z come back; the resumed run's losses
    and bank equal the uninterrupted run's."""
    three = PIRL + ["trainer.max_epochs=3"]
    run(compose_train(three, tmp_path / "whole"))
    signal_then_resume(three, tmp_path / "cut", 14)
    assert_same_run(tmp_path / "whole", tmp_path / "cut")
    states = [weights(d) for d in (tmp_path / "whole", tmp_path / "cut")]
    for key in ("memory.bank", "memory.steps", "objective.norm_constant"):
        assert torch.equal(states[0][key], states[1][key]), key
    assert int(states[0]["memory.steps"]) == 30


@pytest.mark.ddp
@pytest.mark.slow
def test_two_processes_keep_the_same_bank_as_one(tmp_path):
    """The bank is global (each rank writes the whole global batch's rows), the negatives are drawn alike on every
    rank and Z is the global batch's: 2 processes x 16 rows follow 1 x 32 (BatchNorm-free model)."""
    one_epoch = PIRL + ["trainer.max_epochs=1"]
    run(compose_train(one_epoch, tmp_path / "one"))
    run(compose_train(one_epoch + ["trainer=ddp_cpu", "data.batch_size=16"], tmp_path / "two"))
    states = [weights(d) for d in (tmp_path / "one", tmp_path / "two")]
    torch.testing.assert_close(states[1]["memory.bank"], states[0]["memory.bank"], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(states[1]["objective.norm_constant"], states[0]["objective.norm_constant"])
    one, two = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert sorted(one) == sorted(two) and all(two[s] == pytest.approx(one[s], rel=1e-4, abs=1e-5) for s in one)
