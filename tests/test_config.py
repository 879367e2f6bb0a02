"""Every option of every config group composes, instantiates and takes two training steps (every recipe does in
tests/train/test_recipe_losses.py, with its first losses checked)."""

import inspect

import lightning as L
import pytest
import torch

from selfsup.config import CONF_DIR
from selfsup.train import build
from tests.config_utils import compose_train, tiny_imagefolder, vit_cpu_budget

GROUP_OPTIONS = sorted((p.parent.name, p.stem) for p in CONF_DIR.glob("*/*.yaml"))
NEEDS_CUDA = {
    ("trainer", "gpu"),
    ("trainer", "ddp"),
    ("trainer", "fsdp"),
    ("trainer", "deepspeed_stage_2"),
    ("trainer", "deepspeed_stage_3"),
}
COMPANIONS = {
    ("objective", "care"): ["views=care"],
    ("objective", "sie"): ["projector.out_dim=2048"],
    ("memory", "swav"): ["objective=swav"],
    ("objective", "swav"): ["memory=swav"],
    ("objective", "dino"): ["projector=dino_head", "projector.out_dim=256", "target=ema"],
    ("views", "diet"): ["objective=diet"],
    ("objective", "rotation"): ["views=rotnet"],  # predicts a recorded rotation: the views must draw one
    ("objective", "lorot"): ["views=lorot"],
    ("memory", "sample_bank"): ["memory.num_negatives=64"],  # PIRL's 32,000: more than digits' 1,437 images
    ("objective", "pirl"): ["views=pirl", "memory=sample_bank", "memory.num_negatives=64"],
}
# masked methods: a 1-block CIFAR ViT with 2 px patches (an 8 x 8 grid on 16 px digits) and each method's parts
VIT = ["backbone=vit_tiny_cifar", "backbone.patch_size=2", "+backbone.depth=1", "projector=identity", "views=masked"]
MAE = [*VIT, "mask=random", "token_head=mae", "token_head.depth=1", "objective=mae"]
IJEPA = [*VIT, "mask=multiblock", "mask.min_keep=4", "token_head=jepa", "token_head.depth=1", "objective=ijepa"]
IJEPA += ["target=ema"]
DATA2VEC = [*VIT, "mask=block", "mask.min_patches=4", "token_head=linear", "objective=data2vec", "target=ema"]
DATA2VEC += ["objective.top_k=1"]
DINOV2 = [
    "backbone=vit_tiny_cifar",
    "backbone.patch_size=2",
    "+backbone.depth=1",
    "views=multicrop",
    "views.views.l1.size=8",
    "projector=dino_head",
    "projector.out_dim=256",
    "target=ema",
    "mask=block",
    "mask.views=2",
    "mask.min_patches=4",
    "token_head=projector",
    "objective=dinov2",
]
for option, parts in {"mae": MAE, "ijepa": IJEPA, "data2vec": DATA2VEC, "dinov2": DINOV2}.items():
    COMPANIONS[("objective", option)] = parts
for group, option, parts in (
    ("mask", "random", MAE),
    ("mask", "block", DATA2VEC),
    ("mask", "multiblock", IJEPA),
    ("mask", "group", [*MAE, "mask=group", "mask.views=1"]),  # GMML's groups, MAE's decoder (a SimMIM-like pairing)
    ("token_head", "mae", MAE),
    ("token_head", "jepa", IJEPA),
    ("token_head", "linear", DATA2VEC),
    ("token_head", "projector", DINOV2),
    ("views", "masked", MAE),
):
    COMPANIONS[(group, option)] = parts
# ViT-H: instantiated only (632M parameters), at a size its 14 px patches divide
BUILD_ONLY = {("backbone", "vit_huge14"): ["data.image_size=28"]}


@pytest.fixture
def roots(tmp_path, cifar10_root):
    return {"imagefolder": tiny_imagefolder(tmp_path / "folder", per_class=6), "cifar": cifar10_root}


def data_overrides(dataset: str, roots) -> list[str]:
    if dataset == "imagefolder":
        return [f"data.root={roots['imagefolder']}", "data.batch_size=4", "data.image_size=32"]
    if dataset == "shards":  # written from the tiny ImageFolder
        from selfsup.data.shards import parse_args, shards_from

        out = roots["imagefolder"].parent / "shards"
        shards_from(parse_args([f"src={roots['imagefolder']}", f"out={out}"]), progress=False)
        return [f"data.root={out}", "data.batch_size=4", "data.image_size=32"]
    if dataset in ("cifar10", "cifar100", "stl10"):
        return [f"data.root={roots['cifar']}", "data.subset=40", "data.batch_size=8"]
    return ["data.batch_size=32"]


def one_step(cfg):
    """Instantiate everything and fit for two optimiser steps; the logged loss must be finite."""
    datamodule, module, trainer = build(cfg)
    trainer.fit(module, datamodule=datamodule)
    assert trainer.global_step == 2
    loss = trainer.callback_metrics["train/loss"]
    assert torch.isfinite(loss), loss


def compose_with_data(overrides, tmp_path, roots):
    cfg = compose_train(overrides, tmp_path / "run")
    extra = data_overrides(cfg.data.dataset, roots)
    if cfg.views.shared_chunks:  # chunk-shared views need >= 2 rows per chunk
        extra += [f"data.batch_size={2 * cfg.views.shared_chunks}", f"data.subset={4 * cfg.views.shared_chunks}"]
    extra += [
        "data.num_workers=0",
        "trainer.max_steps=2",
        "trainer.limit_val_batches=0",
        "callbacks.progress=null",
        "trainer.enable_model_summary=false",
        "trainer.log_every_n_steps=1",
    ]
    cfg = compose_train(overrides + extra, tmp_path / "run")
    budget = vit_cpu_budget(cfg)
    return compose_train(overrides + extra + budget, tmp_path / "run") if budget else cfg


@pytest.mark.parametrize("group,option", GROUP_OPTIONS, ids=[f"{g}={o}" for g, o in GROUP_OPTIONS])
def test_every_config_option_instantiates(group, option, tmp_path, roots):
    if group == "logger" and option == "wandb":
        pytest.importorskip("wandb")
    if (group, option) in NEEDS_CUDA and not torch.cuda.is_available():
        cfg = compose_train([f"{group}={option}"], tmp_path / "run")
        unknown = set(cfg.trainer) - set(inspect.signature(L.Trainer).parameters) - {"_target_"}
        assert not unknown, f"trainer={option}: unknown Trainer arguments {unknown}"
        pytest.skip(f"trainer={option} needs CUDA (keys checked against Trainer's signature)")
    if (group, option) in BUILD_ONLY:
        build(compose_with_data([f"{group}={option}", *BUILD_ONLY[(group, option)]], tmp_path, roots))
        return
    cfg = compose_with_data([f"{group}={option}", *COMPANIONS.get((group, option), [])], tmp_path, roots)
    if group in ("objective", "views", "data", "backbone", "projector"):
        one_step(cfg)
    else:
        build(cfg)
