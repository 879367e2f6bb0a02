"""bench/cifar_table.py: each row keeps its recipe's parts and swaps in the stated budget; one cheap row runs for real
(SimCLR on real CIFAR-10 images beats the same CNN at random init), so a change to the code can fail it; a cached row
is read back only while its config is unchanged."""

import json
import sys

import pytest
import torch

from selfsup.config import ROOT
from tests.config_utils import compose_train

sys.path.insert(0, str(ROOT / "bench"))
import cifar_table  # noqa: E402


@pytest.mark.parametrize("name", cifar_table.RECIPES)
def test_each_row_is_its_recipe_at_the_budget(name, tmp_path, cifar10_root):
    recipe = compose_train([f"recipes=cifar10/{name}"], tmp_path / "recipe")
    row = compose_train(cifar_table.budget(name, 5, tmp_path, root=cifar10_root), tmp_path / "row")
    if name == "data2vec":  # the top half of the shallower ViT's blocks, as the recipe's 6 of 12
        assert (recipe.objective.top_k, row.objective.top_k) == (6, cifar_table.VIT_DEPTH // 2)
        recipe.objective.top_k = row.objective.top_k
    for part in ("objective", "views", "projector", "predictor", "memory", "mask", "token_head"):
        assert row.get(part) == recipe.get(part), (name, part)
    assert row.get("target", {}).get("_target_") == recipe.get("target", {}).get("_target_")
    assert (row.optim.name, row.optim.lr, row.data.subset, row.trainer.max_epochs) == ("adamw", 2e-3, 10_000, 5)
    if recipe.get("mask") is None:
        assert row.backbone.name == "small_cnn"
    else:  # the recipe's ViT, shallower
        assert (row.backbone.name, row.backbone.patch_size) == (recipe.backbone.name, recipe.backbone.patch_size)
        assert row.backbone.depth == cifar_table.VIT_DEPTH
        for key in ("global_pool", "class_token", "fc_norm"):  # the recipe's features (I-JEPA: its own ViT)
            assert row.backbone.get(key) == recipe.backbone.get(key), (name, key)
    if name == "e2mc":
        assert row.init_from == str(tmp_path / "simclr")


def test_each_row_is_compared_with_the_encoder_it_starts_from(tmp_path, cifar10_root):
    """The random-init rows are the weights every row of that encoder starts from (seed 0, backbone built first)."""
    inits = {}
    for label, overrides in cifar_table.baselines(5, tmp_path, cifar10_root).items():
        inits[label] = cifar_table.initial_backbone(overrides, tmp_path / "init")[0].state_dict()
    for name in ("simclr", "mae", "ijepa"):
        overrides = cifar_table.budget(name, 5, tmp_path, root=cifar10_root)
        label = cifar_table.baseline_label(compose_train(overrides, tmp_path / "row"))
        start = cifar_table.initial_backbone(overrides, tmp_path / name)[0].state_dict()
        assert start.keys() == inits[label].keys(), name
        for key, value in start.items():
            assert torch.equal(value, inits[label][key]), (name, key)


@pytest.mark.slow
def test_a_cheap_simclr_row_beats_random_init_and_is_cached(tmp_path, cifar10_root):
    """SimCLR, 3 epochs of 4 batches of 256 real CIFAR-10 images, scored on 2,000 test images against a 4,000-image
    bank: it must beat the same CNN at random init on kNN (here: 30.5% vs 26.4%; 12 steps do not yet move the
    probe); a second call reads the cached row, a changed config trains again."""
    train_ds, test_ds = cifar_table.eval_images(cifar10_root, train_cap=4000, test_cap=2000)
    init = cifar_table.baselines(3, tmp_path, cifar10_root)["random init (small CNN)"]
    encoder, _ = cifar_table.initial_backbone(init, tmp_path / "init")
    baseline = cifar_table.score_encoder(encoder, train_ds, test_ds)

    overrides = cifar_table.budget("simclr", 3, tmp_path, root=cifar10_root, subset=1024)
    row = cifar_table.table_row("simclr", overrides, tmp_path / "simclr", train_ds, test_ds)
    assert row["baseline"] == "random init (small CNN)"
    assert row["knn"] > baseline["knn"] + 0.01, (row, baseline)
    assert row["probe"] > 0.1

    cached = cifar_table.table_row("simclr", overrides, tmp_path / "simclr", train_ds, test_ds)
    assert cached == row
    assert 0.2 < row["fewshot5"] < 1 and 0.01 < row["map_at_r"] < 1  # 12 steps: 37% and 4.3% here
    older = {k: v for k, v in row.items() if k != "map_at_r"}  # a row scored before MAP@R was a column
    (tmp_path / "simclr" / "table_row.json").write_text(json.dumps(older))
    seconds = (tmp_path / "simclr" / "train_seconds").read_text()
    assert cifar_table.table_row("simclr", overrides, tmp_path / "simclr", train_ds, test_ds) == row
    assert (tmp_path / "simclr" / "train_seconds").read_text() == seconds  # scored again, not trained again
    changed = json.loads((tmp_path / "simclr" / "table_row.json").read_text()) | {"config": "stale"}
    (tmp_path / "simclr" / "table_row.json").write_text(json.dumps(changed))
    again = cifar_table.table_row("simclr", overrides, tmp_path / "simclr", train_ds, test_ds)
    assert again["config"] == row["config"] and again["knn"] == row["knn"]  # retrained from scratch: same result


# rows that do not beat their random-init encoder by 3 kNN points at the budget; the README and docs/evidence.md say
# why (a row listed here that clears the bar fails the test below: remove it then)
BELOW_THE_BAR = {
    "cifar10/byol",
    "cifar10/swav",
    "cifar10/diet",
    "cifar10/data2vec",
    "cifar10/mae",
    "cifar10/ijepa",
    "cifar10/sie",
    "cifar10/pirl",
}


def test_the_readme_shows_the_cifar_table_and_each_row_clears_random_init_by_3_points_or_says_why(tmp_path):
    from tests.bench.test_objectives_table import table_rows

    text = (ROOT / "bench" / "CIFAR.md").read_text()
    assert text.split("\n", 2)[2].strip() in (ROOT / "README.md").read_text(), "paste bench/CIFAR.md into README.md"
    rows = table_rows(text)
    for name in [n for n in rows if n.startswith("cifar10/")]:
        recipe = name.removeprefix("cifar10/")
        label = cifar_table.baseline_label(compose_train(cifar_table.budget(recipe, 5, tmp_path), tmp_path / recipe))
        margin = rows[name][0] - rows[label][0]
        if name in BELOW_THE_BAR:
            assert margin < 3, f"{name} now clears random init by {margin:.1f} points: drop it from BELOW_THE_BAR"
        else:
            assert margin >= 3, (name, margin)


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in cifar_table.RECIPES if n in ("mae", "data2vec", "ijepa", "ibot")])
def test_each_vit_row_trains_a_step_at_the_budget(name, tmp_path, cifar10_root):
    """The budget shrinks the recipes' ViT: every part must still fit it (data2vec's top-k blocks did not)."""
    from objectives_table import trained_backbone

    overrides = cifar_table.budget(name, 1, tmp_path, root=cifar10_root, subset=32)
    tiny = ["data.batch_size=16", "trainer.max_steps=1", "data.num_workers=0"]
    cfg = compose_train([*overrides, *tiny], tmp_path / name)
    backbone = trained_backbone(cfg)
    assert len(backbone.blocks) == cifar_table.VIT_DEPTH


@pytest.mark.slow
def test_read_as_reads_the_trained_row_and_random_init_with_other_features(tmp_path, cifar10_root):
    """``--read-as`` trains nothing: it scores the row's own checkpoint (read as the recipe's features it equals the
    row's scores) and the ViT at random init, by the class token or the patch mean; a CNN row is refused."""
    from objectives_table import trained_backbone

    train_ds, test_ds = cifar_table.eval_images(cifar10_root, train_cap=200, test_cap=200)  # 5-shot: 20 a class
    tiny = ["data.batch_size=16", "trainer.max_steps=2", "data.num_workers=0"]
    for name in ("mae", "simclr"):
        overrides = cifar_table.budget(name, 1, tmp_path, root=cifar10_root, subset=32)
        trained_backbone(compose_train([*overrides, *tiny], tmp_path / name))
    token = cifar_table.read_as("token", ["mae"], tmp_path, 1, train_ds, test_ds, tmp_path / "t.md", cifar10_root)
    avg = cifar_table.read_as("avg", ["mae"], tmp_path, 1, train_ds, test_ds, tmp_path / "a.md", cifar10_root)
    trained = cifar_table.checkpoint.backbone_from(cifar_table.checkpoint.load(tmp_path / "mae"))
    assert trained.global_pool == "token"  # the recipe's features
    assert token["cifar10/mae, read as token"] == cifar_table.score_encoder(trained, train_ds, test_ds) | {"seconds": 0}
    assert token.keys() == {"random init (ViT), read as token", "cifar10/mae, read as token"}
    assert avg["cifar10/mae, read as avg"]["rankme"] != token["cifar10/mae, read as token"]["rankme"]
    assert "cifar10/mae, read as avg" in (tmp_path / "a.md").read_text()
    with pytest.raises(SystemExit, match="cifar10/simclr is not a ViT row"):
        cifar_table.read_as("avg", ["simclr"], tmp_path, 1, train_ds, test_ds, tmp_path / "c.md", cifar10_root)
    with pytest.raises(SystemExit, match="holds no trained row"):
        cifar_table.read_as("avg", ["ijepa"], tmp_path, 1, train_ds, test_ds, tmp_path / "c.md", cifar10_root)
