"""Every recipe and every option of every config group composes, instantiates and takes one training step."""

import inspect

import lightning as L
import pytest
import torch

from selfsup.config import CONF_DIR, RECIPES_DIR
from selfsup.train import build
from tests.config_utils import compose_train, tiny_imagefolder

RECIPES = sorted(str(p.relative_to(RECIPES_DIR).with_suffix("")) for p in RECIPES_DIR.rglob("*.yaml"))
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
}


@pytest.fixture
def roots(tmp_path, cifar10_root):
    return {"imagefolder": tiny_imagefolder(tmp_path / "folder", per_class=6), "cifar": cifar10_root}


def data_overrides(dataset: str, roots) -> list[str]:
    if dataset == "imagefolder":
        return [f"data.root={roots['imagefolder']}", "data.batch_size=4", "data.image_size=32"]
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
    return compose_train(overrides + extra, tmp_path / "run")


@pytest.mark.slow
@pytest.mark.parametrize("recipe", RECIPES)
def test_every_recipe_takes_a_step(recipe, tmp_path, roots):
    overrides = [f"recipes={recipe}"]
    if "resnet50" in str(compose_train(overrides, tmp_path / "run").backbone.get("name")):
        overrides.append("data.image_size=64")  # same model, a cheaper forward on the CPU
    one_step(compose_with_data(overrides + ["trainer=cpu"], tmp_path, roots))


@pytest.mark.parametrize("group,option", GROUP_OPTIONS, ids=[f"{g}={o}" for g, o in GROUP_OPTIONS])
def test_every_config_option_instantiates(group, option, tmp_path, roots):
    if group == "logger" and option == "wandb":
        pytest.importorskip("wandb")
    if (group, option) in NEEDS_CUDA and not torch.cuda.is_available():
        cfg = compose_train([f"{group}={option}"], tmp_path / "run")
        unknown = set(cfg.trainer) - set(inspect.signature(L.Trainer).parameters) - {"_target_"}
        assert not unknown, f"trainer={option}: unknown Trainer arguments {unknown}"
        pytest.skip(f"trainer={option} needs CUDA (keys checked against Trainer's signature)")
    cfg = compose_with_data([f"{group}={option}", *COMPANIONS.get((group, option), [])], tmp_path, roots)
    if group in ("objective", "views", "data", "backbone", "projector"):
        one_step(cfg)
    else:
        build(cfg)
