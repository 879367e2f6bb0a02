"""Compose training configs the way ``selfsup-train`` does, for tests."""

from __future__ import annotations

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from selfsup.config import CONF_DIR

# the tests' own callbacks (tests.runs.SignalAt, ...) in a resumed checkpoint's config: trusted, as a user trusts
# their own classes (docs/runs.md)
TRUST_TESTS = "trusted_targets=[tests.*]"


def compose_train(overrides: list[str], run_dir) -> DictConfig:
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return compose("train", overrides=[f"run_dir={run_dir}", TRUST_TESTS, *overrides])


def tiny_imagefolder(root, splits=("train", "val"), classes=("a", "b"), per_class=4, size=40):
    """A small ImageFolder tree of random JPEGs: root/<split>/<class>/<i>.jpg."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in splits:
        for c in classes:
            d = root / split / c
            d.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                Image.fromarray(rng.integers(0, 255, (size, size + 8, 3), dtype=np.uint8)).save(d / f"{i}.jpg")
    return root


def vit_cpu_budget(cfg: DictConfig) -> list[str]:
    """Overrides that put an ImageNet ViT recipe on a CPU budget, its parts unchanged: its ViT (S, B or H) swapped for
    a 6-block ViT-Ti with the same patch size (data2vec averages the last 6 blocks); for a masked recipe also an 8 x 8
    token grid (image size 8 x the patch size; multi-crop's local crops 4 x) and I-JEPA's min_keep of 10 relaxed to 4
    on the small grid (its target blocks hold 9-12 tokens there)."""
    if cfg.data.dataset != "imagefolder" or not str(cfg.backbone.get("name", "")).startswith("vit_"):
        return []
    out = ["backbone.name=vit_tiny_patch16_224", "++backbone.depth=6"]
    if cfg.get("mask") is None:
        return out
    patch = cfg.backbone.patch_size
    out.append(f"data.image_size={8 * patch}")
    if "l1" in cfg.views.views:
        out.append(f"views.views.l1.size={4 * patch}")
    if "min_keep" in cfg.mask:
        out.append("mask.min_keep=4")
    return out


# the ResNet recipes that keep their own ResNet under cpu_budget (the ResNet path of a recipe stays covered)
OWN_RESNET = ("cifar10/simclr", "imagenet/simclr")
MAX_HEAD = 4096  # DINO's 65,536 prototypes in float64 were most of imagenet/dino_vit_small's 21 s
BANK_NEGATIVES = 8  # a sample bank holds the recipe tests' images: 64 of CIFAR-10, 12 of the tiny ImageFolder


def cpu_budget(cfg: DictConfig, recipe: str) -> list[str]:
    """Overrides that put ``recipe`` on the CPU budget of the recipe tests, its method unchanged: a ViT as in
    :func:`vit_cpu_budget`; a ResNet-18/50 swapped for a BatchNorm SmallCNN of width 8 (3 float64 steps in 1-3 s
    instead of 10-30 s), except in ``OWN_RESNET``; a projector of more than ``MAX_HEAD`` outputs cut to that; a
    sample bank's negatives cut to ``BANK_NEGATIVES`` (the recipe tests train on 12-64 images)."""
    out = vit_cpu_budget(cfg)
    if str(cfg.backbone.get("name", "")).startswith("resnet") and recipe not in OWN_RESNET:
        out += ["backbone.name=small_cnn", "++backbone.width=8"]
    if cfg.get("projector") is not None and cfg.projector.get("out_dim", 0) > MAX_HEAD:
        out.append(f"projector.out_dim={MAX_HEAD}")
    if cfg.get("memory") is not None and cfg.memory.get("num_negatives", 0) > BANK_NEGATIVES:
        out.append(f"memory.num_negatives={BANK_NEGATIVES}")
    return out
