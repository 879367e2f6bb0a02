"""Every recipe's first training losses, recorded before a refactor, stay what they were (the method path is
refactored, the methods are not changed). Recipes run shrunk to a CPU budget: 3 steps on a few CIFAR-10 images."""

import json
from pathlib import Path

import pytest

from selfsup.config import RECIPES_DIR
from selfsup.train import run
from tests.config_utils import compose_train, tiny_imagefolder
from tests.runs import losses

RECORDED = json.loads((Path(__file__).parent / "recipe_losses.json").read_text())
RECIPES = sorted(str(p.relative_to(RECIPES_DIR).with_suffix("")) for p in RECIPES_DIR.rglob("*.yaml"))


def shrunk(recipe: str, tmp_path, cifar10_root) -> list[str]:
    """The recipe at a CPU budget: 3 steps, no validation, batches of 8 from 64 CIFAR-10 images (ImageNet recipes:
    a tiny ImageFolder at 64 px; chunk-shared views: 2 rows a chunk), in float32."""
    cfg = compose_train([f"recipes={recipe}"], tmp_path / "probe")
    extra = ["trainer=cpu", "data.num_workers=0", "trainer.max_steps=3", "trainer.limit_val_batches=0",
             "callbacks.progress=null", "trainer.enable_model_summary=false",
             "trainer.log_every_n_steps=1",
             # bf16 autocast on a CPU rounds differently per instruction set (AMX, AVX-512): float32 only
             "trainer.precision=32-true"]  # fmt: skip
    if cfg.data.dataset == "imagefolder":
        root = tiny_imagefolder(tmp_path / "folder", per_class=6)
        extra += [f"data.root={root}", "data.batch_size=4", "data.image_size=64"]
    elif cfg.data.dataset != "digits":
        extra += [f"data.root={cifar10_root}", "data.subset=64", "data.batch_size=8"]
    if cfg.views.shared_chunks:
        extra += [f"data.batch_size={2 * cfg.views.shared_chunks}", f"data.subset={4 * cfg.views.shared_chunks}"]
    if recipe == "quickstart":
        extra += ["data.subset=320", "data.batch_size=32"]
    return [f"recipes={recipe}", *extra]


@pytest.mark.slow
@pytest.mark.parametrize("recipe", RECIPES)
def test_first_losses_are_the_recorded_ones(recipe, tmp_path, cifar10_root):
    if recipe not in RECORDED["train/loss"]:
        pytest.fail(f"no recorded losses for recipes={recipe}: record them (tests/train/recipe_losses.json)")
    run(compose_train(shrunk(recipe, tmp_path, cifar10_root), tmp_path / "run"))
    got = [losses(tmp_path / "run")[step] for step in range(3)]
    # bit for bit on the machine that recorded them; rel 1e-6 leaves room for another CPU's float32 kernels only
    assert got == pytest.approx(RECORDED["train/loss"][recipe], rel=1e-6, abs=0), recipe
