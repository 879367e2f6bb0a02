"""Every recipe's first training losses, recorded before a refactor, stay what they were (the method path is
refactored, the methods are not changed). Recipes run shrunk to a CPU budget: 3 steps on a few CIFAR-10 images.

Where the arithmetic is the same on every x86 machine: in float64. Float32 training on one CPU is not portable —
another 2-core machine (an AMD EPYC: other BLAS kernels) moved step-2 losses by up to 3e-5. In float64, between the
Intel machine (AVX-512) and an AMD EPYC (AVX2): CNN recipes agree to a few ulps, ViT recipes to 5e-10 (timm
initialises in float32, through vectorised kernels that differ per instruction set), far inside REL. The views take
part: a float32 blur through oneDNN rounded a few pixels the other way on the AMD machine and moved
imagenet/ibot_vit_small's step-2 loss by 1.1e-7, which is why the default blur sums in float64 (docs/data.md).
Without AVX2 (``default``) the views differ: the uint8 antialiased resize has its own AVX2 kernel, and the generic
one rounds some pixels the other way (first losses move by up to 0.6%); those machines compare with their own
recording, ``train/loss@DEFAULT``. Off x86 (no recording) each recipe still has to take its steps with finite losses.

Record (after a deliberate change to a method; say why in the JSON's "recorded" line)::

    .venv/bin/python -m tests.train.test_recipe_losses [recipe ...]
    ATEN_CPU_CAPABILITY=default .venv/bin/python -m tests.train.test_recipe_losses [recipe ...]

After a refactor, on the machine that recorded them, check that the losses are the same bits (``==``, not within REL);
it prints SAME or DIFF per recipe and exits 1 on any DIFF::

    .venv/bin/python -m tests.train.test_recipe_losses --exact [recipe ...]
"""

import json
import math
import sys
import tempfile
from pathlib import Path

import pytest
import torch

from selfsup.config import RECIPES_DIR
from selfsup.train import run
from tests.config_utils import compose_train, cpu_budget, tiny_imagefolder
from tests.runs import losses

RECORDING = Path(__file__).parent / "recipe_losses.json"
RECORDED = json.loads(RECORDING.read_text())
RECIPES = sorted(str(p.relative_to(RECIPES_DIR).with_suffix("")) for p in RECIPES_DIR.rglob("*.yaml"))
# the recording each of torch's x86 CPU kernel sets compares with (AVX2 and AVX-512 agree bit for bit in float64)
KEYS = {"AVX512": "train/loss", "AVX2": "train/loss", "DEFAULT": "train/loss@DEFAULT"}
# float64 round-off, even amplified over 3 training steps by another BLAS, stays orders below this; a change to a
# method (a weight, a sign, a term) or float32 arithmetic creeping back moves the losses by far more
REL = 1e-7


def shrunk(recipe: str, tmp_path, cifar10_root) -> list[str]:
    """The recipe at a CPU budget: 3 steps, no validation, batches of 8 from 64 CIFAR-10 images (ImageNet recipes:
    a tiny ImageFolder at 64 px, masked ones on an 8 x 8 token grid; chunk-shared views: 4 chunks of 2 rows), in
    float64, on smaller networks (tests.config_utils.cpu_budget: a 6-block ViT-Ti, a width-8 SmallCNN for the
    ResNets but two, heads of at most 4,096 outputs)."""
    cfg = compose_train([f"recipes={recipe}"], tmp_path / "probe")
    extra = [
        "trainer=cpu",
        "data.num_workers=0",
        "trainer.max_steps=3",
        "trainer.limit_val_batches=0",
        "callbacks.progress=null",
        "trainer.enable_model_summary=false",
        "trainer.log_every_n_steps=1",
        "trainer.precision=64-true",
    ]  # float64: the same arithmetic on every x86 CPU (module docstring)
    if cfg.data.dataset == "imagefolder":
        root = tiny_imagefolder(tmp_path / "folder", per_class=6)
        extra += [f"data.root={root}", "data.batch_size=4", "data.image_size=64"]
    elif cfg.data.dataset != "digits":
        extra += [f"data.root={cifar10_root}", "data.subset=64", "data.batch_size=8"]
    if cfg.views.shared_chunks:  # 4 chunks of 2 rows: the batch of 8 the other CIFAR-10 recipes run
        extra += ["views.shared_chunks=4", "data.batch_size=8", "data.subset=16"]
    if recipe == "quickstart":
        extra += ["data.subset=320", "data.batch_size=32"]
    return [f"recipes={recipe}", *extra, *cpu_budget(cfg, recipe)]


def recording_key() -> str | None:
    return KEYS.get(torch.backends.cpu.get_cpu_capability())


def first_losses(recipe: str, tmp_path: Path, cifar10_root: Path) -> list[float]:
    run(compose_train(shrunk(recipe, tmp_path, cifar10_root), tmp_path / "run"))
    return [losses(tmp_path / "run")[step] for step in range(3)]


@pytest.mark.parametrize("recipe", RECIPES)  # not slow: `make test` on any x86 machine checks every recipe
def test_first_losses_are_the_recorded_ones(recipe, tmp_path, cifar10_root):
    key = recording_key()
    if key is not None and recipe not in RECORDED[key]:
        pytest.fail(f"no recorded losses for recipes={recipe} in {key}: record them (this module's docstring)")
    got = first_losses(recipe, tmp_path, cifar10_root)
    if key is None:  # no recording for this kernel set (not x86): the recipe still takes its steps
        assert all(math.isfinite(v) for v in got), (recipe, got)
        return
    assert got == pytest.approx(RECORDED[key][recipe], rel=REL, abs=0), recipe


def main(recipes: list[str], exact: bool = False) -> None:
    """Record the first losses of ``recipes`` (all by default) under this CPU's kernel set into the JSON — or, with
    ``exact``, compare them with the recording bit for bit (exit 1 on any difference)."""
    from tests.conftest import CIFAR10

    key = recording_key()
    if key is None:
        raise SystemExit(f"no recording for kernel set {torch.backends.cpu.get_cpu_capability()}")
    recorded = json.loads(RECORDING.read_text())
    differing = []
    for recipe in recipes or RECIPES:
        with tempfile.TemporaryDirectory() as tmp:
            got = first_losses(recipe, Path(tmp), CIFAR10)
        if exact:
            same = got == recorded[key].get(recipe)
            differing += [] if same else [recipe]
            print(
                "SAME" if same else "DIFF", recipe, "" if same else f"{got} vs {recorded[key].get(recipe)}", flush=True
            )
            continue
        recorded.setdefault(key, {})[recipe] = got
        print(key, recipe, got, flush=True)
    if exact:
        print(f"{len(differing)} recipe(s) differ: {differing}" if differing else "every recipe: the same bits")
        raise SystemExit(1 if differing else 0)
    RECORDING.write_text(json.dumps(recorded, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    args = sys.argv[1:]
    main([a for a in args if a != "--exact"], exact="--exact" in args)
