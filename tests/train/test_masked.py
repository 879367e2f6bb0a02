"""Masked methods as runs (docs/tokens.md): masks are drawn per sample — the same whatever the process and worker
count, recorded in the batch —, a run resumed mid-epoch equals the uninterrupted one bit for bit with its masks,
two processes follow one, settings that cannot work are refused at start in one line, and the export holds the
encoder only."""

from __future__ import annotations

import re

import pytest
import timm
import torch
from hydra.utils import instantiate
from safetensors.torch import load_file

from selfsup.data.datasets import GlobalBatchSampler, MaskDraw, MultiViewDataset
from selfsup.data.masks import MultiBlockMask, RandomMask
from selfsup.export import export
from selfsup.runtime.errors import user_error
from selfsup.train import build, run
from tests.config_utils import compose_train
from tests.runs import assert_same_run, losses, signal_then_resume

# digits at 16 px, a 1-block ViT-Ti with 2 px patches (an 8 x 8 grid), 16 images a step, 10 steps an epoch, no
# validation (resume with validation rows: tests/runtime/test_resume.py)
VIT = [
    "data=digits",
    "data.subset=160",
    "data.batch_size=16",
    "data.num_workers=0",
    "trainer.limit_val_batches=0",
    "backbone=vit_tiny_cifar",
    "backbone.patch_size=2",
    "+backbone.depth=1",
    "projector=identity",
    "views=masked",
    "optim=adamw",
    "optim.lr=1e-3",
    "optim.warmup_epochs=1",
    "trainer=cpu",
    "trainer.max_epochs=2",
    "trainer.log_every_n_steps=1",
    "trainer.enable_model_summary=false",
    "trainer.check_val_every_n_epoch=1",
    "callbacks.progress=null",
]
MAE = [*VIT, "mask=random", "token_head=mae", "token_head.dim=32", "token_head.depth=1", "token_head.heads=2"]
MAE += ["objective=mae"]
IJEPA = [*VIT, "mask=multiblock", "mask.min_keep=4", "token_head=jepa", "token_head.dim=32", "token_head.depth=1"]
IJEPA += ["token_head.heads=2", "objective=ijepa", "target=ema"]
DATA2VEC = [*VIT, "mask=block", "mask.min_patches=4", "token_head=linear", "objective=data2vec"]
DATA2VEC += ["objective.top_k=1", "target=ema"]


def masks_by_index(dataset, batches) -> dict[int, dict]:
    out = {}
    for keys in batches:
        for key in keys:
            sample = dataset[key]
            out[sample["index"]] = sample["masks"]
    return out


@pytest.mark.parametrize("generator", [RandomMask(0.75), MultiBlockMask(min_keep=4)], ids=["random", "multiblock"])
def test_a_samples_masks_are_the_same_on_one_or_two_processes_and_with_workers(generator):
    cfg = compose_train(IJEPA, "/tmp/unused")
    views = instantiate(cfg.views)
    dm = instantiate(cfg.data, _partial_=True)(views=views, seed=0)
    source = dm.splits[0]
    dataset = MultiViewDataset(source, views, seed=0, masks=MaskDraw(generator, 2))
    one = masks_by_index(dataset, GlobalBatchSampler(len(source), 32, 1, 0, seed=0))
    two = {}
    for rank in (0, 1):
        two.update(masks_by_index(dataset, GlobalBatchSampler(len(source), 16, 2, rank, seed=0)))
    assert one.keys() == two.keys() and len(one) == 160
    for index in one:
        for a, b in zip(one[index], two[index]):
            assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # with loader workers: the batch carries the same masks, collated per view
    loader = torch.utils.data.DataLoader(
        dataset, batch_sampler=GlobalBatchSampler(len(source), 32, 1, 0, seed=0), num_workers=2
    )
    batch = next(iter(loader))
    for row, index in enumerate(batch["index"].tolist()):
        for key, value in one[index][0].items():
            assert torch.equal(batch["masks"][0][key][row], value)
    # another epoch draws other masks
    later = masks_by_index(dataset, [[(1, i, -1) for i in range(8)]])
    assert any(not torch.equal(later[i][0][k], one[i][0][k]) for i in range(8) for k in later[i][0])


def test_the_batch_records_the_masks_the_encoder_used(tmp_path):
    datamodule, module, _ = build(compose_train(MAE, tmp_path))
    datamodule.setup()
    batch = next(iter(datamodule.train_dataloader()))
    mask = batch["masks"][0]["mask"]
    assert mask.shape == (16, 64) and bool((mask.sum(1) == 48).all())  # 75% of 64 patches
    out = module.step_outputs(batch)
    tokens = out.tokens[0]
    assert tokens.patches.shape == (16, 16, 192)
    assert torch.equal(tokens.positions, torch.nonzero(~mask)[:, 1].reshape(16, 16))
    assert out.predictions[0].shape == (16, 64, 2 * 2 * 3) and out.pixels[0] is batch["views"][0]


@pytest.mark.slow
@pytest.mark.parametrize("parts", [MAE, IJEPA, DATA2VEC], ids=["mae", "ijepa", "data2vec"])
def test_a_masked_run_resumed_mid_epoch_equals_the_uninterrupted_run(parts, tmp_path):
    """SIGTERM in step 14 (epoch 1): the resumed run redraws the same masks and ends with the same losses, rows and
    weights — the EMA target and the mask token included — as the run that was not interrupted."""
    run(compose_train(parts, tmp_path / "whole"))
    signal_then_resume(parts, tmp_path / "cut", 14)
    assert_same_run(tmp_path / "whole", tmp_path / "cut")


@pytest.mark.ddp
@pytest.mark.slow
def test_two_processes_follow_one_with_masks(tmp_path):
    """I-JEPA (padded context, EMA target) with the global batch of 16 on 1 process and on 2 x 8: the same masks
    for the same samples, so the losses follow the 1-process run (LayerNorm only: no batch statistics)."""
    base = [*IJEPA, "trainer=ddp_cpu", "global_batch_size=16", "trainer.max_epochs=1", "online_probe=false"]
    run(compose_train(base + ["trainer.devices=1"], tmp_path / "one"))
    run(compose_train(base + ["trainer.devices=2"], tmp_path / "two"))
    one, two = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert sorted(one) == sorted(two) == list(range(10))
    for step in range(10):
        assert two[step] == pytest.approx(one[step], rel=1e-5, abs=1e-6), step


def assert_refused(overrides: list[str], message: str, tmp_path) -> None:
    """Building the run fails with the input error the command line shows (a constructor's own, under Hydra's
    InstantiationException), on one line."""
    with pytest.raises(Exception) as refused:
        build(compose_train(overrides, tmp_path))
    error = str(user_error(refused.value))
    assert re.match(message, error) and "\n" not in error, error


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["backbone=small_cnn"], r"^mask=selfsup.data.masks.RandomMask: masked methods need a ViT backbone"),
        (["data.image_size=15"], r"^views.views.v1.size=15: not a multiple of the ViT's patch size 2"),
        (["mask.ratio=1.0"], r"^mask.ratio=1.0"),
        (["~mask"], r"^objective MAELoss is a masked method: set a mask part"),
        (["~token_head"], r"^objective MAELoss reads token predictions: set a token_head"),
        (["grad_cache_chunks=2"], r"^grad_cache_chunks=2 with mask=selfsup.data.masks.RandomMask"),
        (["mask.views=2"], r"^mask.views=2: the views have only 1 global views to mask"),
    ],
)
def test_settings_that_cannot_work_are_refused_in_one_line(overrides, message, tmp_path):
    parts = MAE
    if overrides == ["backbone=small_cnn"]:  # the quickstart's CNN in place of the ViT
        parts = [o for o in MAE if not o.startswith(("backbone", "+backbone"))]
    if overrides[0].startswith("~"):  # a part removed: its settings go too
        parts = [o for o in MAE if not o.startswith(overrides[0][1:] + ".")]
    assert_refused(parts + overrides, message, tmp_path)


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["target=none"], r"^objective IJEPALoss reads the target network's tokens: it needs target=ema"),
        (["data.image_size=8"], r"^views.views.v1.size=8: on a 4x4 token grid"),  # blocks the grid cannot hold
        (["mask.target_scale=[0.0,0.2]"], r"^mask.target_scale"),
    ],
)
def test_ijepa_settings_that_cannot_work_are_refused_in_one_line(overrides, message, tmp_path):
    assert_refused(IJEPA + overrides, message, tmp_path)


def test_a_token_head_on_a_cnn_is_refused(tmp_path):
    assert_refused(["token_head=linear"], r"^token_head: masked methods need a timm vision transformer", tmp_path)


@pytest.mark.slow
def test_the_export_of_a_masked_run_is_the_encoder_alone(tmp_path):
    """The mask token and the decoder train and are checkpointed, but the export is timm's ViT: exactly its keys, the
    trained encoder's features."""
    run(compose_train(MAE + ["trainer.max_epochs=1"], tmp_path / "run"))
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert any(k.startswith("token_head.") for k in state)
    out = export(tmp_path / "run" / "checkpoints" / "last.ckpt", tmp_path / "enc.safetensors")
    model = timm.create_model(
        "vit_tiny_patch16_224", num_classes=0, img_size=32, patch_size=2, depth=1, dynamic_img_size=True
    )
    exported = load_file(str(out))
    assert set(exported) == set(model.state_dict())  # no mask token, no decoder
    model.load_state_dict(exported, strict=True)
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    _, module, _ = build(compose_train(MAE, tmp_path / "again"))
    module.backbone.load_state_dict({k[len("backbone.") :]: v for k, v in state.items() if k.startswith("backbone.")})
    with torch.no_grad():
        assert torch.equal(model.eval()(x), module.backbone.eval()(x))
