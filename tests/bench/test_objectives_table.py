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
        "objective": cfg.objective._target_,
        "target": cfg.target._target_,
        "memory": cfg.memory._target_,
        "predictor": None if cfg.predictor is None else cfg.predictor._target_,
        "projector": projector,
        "symmetric": cfg.symmetric,
        "local_views": cfg.views.get("global_views") not in (None, len(cfg.views.views)),
    }


@pytest.mark.parametrize("name", list(METHODS))
def test_each_row_uses_the_parts_of_its_recipe(name, tmp_path):
    recipe, overrides = METHODS[name]
    row = parts(compose_train(COMMON + overrides, tmp_path / "row"))
    expected = parts(compose_train([f"recipes={recipe}"], tmp_path / "recipe"))
    if "multi-crop" not in name and "dino" not in name:
        expected["local_views"] = False  # rows without "multi-crop" in their name run the method on two views
    assert row == expected, name


def table_rows(text: str) -> dict[str, list[float]]:
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) > 3 and cells[1].endswith("%"):
            rows[cells[0]] = [float(c.split()[0].rstrip("%")) for c in cells[1:]]
    return rows


def test_the_readme_shows_the_written_tables_and_every_method_beats_random_init():
    """README "Every method beats random init on kNN (both k) and on the 5-label probe": checked on the table that
    bench/objectives_table.py wrote, which the README must show unchanged (as it must show bench/PEERS.md)."""
    readme = (ROOT / "README.md").read_text()
    for name in ("OBJECTIVES.md", "PEERS.md"):
        table = (ROOT / "bench" / name).read_text().split("\n", 2)[2].strip()
        assert table in readme, f"README.md does not show bench/{name} as written: paste it again"
    rows = table_rows((ROOT / "bench" / "OBJECTIVES.md").read_text())
    baseline = rows.pop("random init (same CNN)")
    rows.pop("raw pixels (16x16x3)")
    assert set(rows) == set(METHODS)
    for name, (knn, knn20, probe, *_) in rows.items():
        assert knn > baseline[0] and knn20 > baseline[1] and probe > baseline[2], name
