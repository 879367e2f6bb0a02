"""The quickstart table compares methods, not head configurations: each row uses the parts of the method's recipe
(objective, target, memory, predictor, the projector's structure) at the quickstart's widths. Before this test the
SimSiam row ran with a 2-layer projector without its output BatchNorm and scored at random init's level, although
recipes/cifar10/simsiam.yaml has SimSiam's 3-layer projector with BN on the output (bench/PEERS.md)."""

import sys

import pytest

from selfsup.config import ROOT
from tests.config_utils import compose_train

sys.path.insert(0, str(ROOT / "bench"))
from objectives_table import METHODS  # noqa: E402

COMMON = ["recipes=quickstart"]


def parts(cfg) -> dict:
    """What makes a method, as opposed to its scale (widths, data, optimiser, run length)."""
    projector = {k: cfg.projector.get(k) for k in ("_target_", "num_layers", "batch_norm", "last_batch_norm")}
    return {
        "objective": cfg.objective._target_, "target": cfg.target._target_, "memory": cfg.memory._target_,
        "predictor": None if cfg.predictor is None else cfg.predictor._target_, "projector": projector,
        "symmetric": cfg.symmetric, "local_views": cfg.views.get("global_views") not in (None, len(cfg.views.views)),
    }  # fmt: skip


@pytest.mark.parametrize("name", list(METHODS))
def test_each_row_uses_the_parts_of_its_recipe(name, tmp_path):
    recipe, overrides = METHODS[name]
    row = parts(compose_train(COMMON + overrides, tmp_path / "row"))
    expected = parts(compose_train([f"recipes={recipe}"], tmp_path / "recipe"))
    if "multi-crop" not in name and "dino" not in name:
        expected["local_views"] = False  # rows without "multi-crop" in their name run the method on two views
    assert row == expected, name
