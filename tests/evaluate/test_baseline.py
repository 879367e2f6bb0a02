"""``report_baseline=true`` (``make train``'s table): the "random init" row is the run's encoder before its first
step — the one a directly seeded build gives — and the "trained" row the encoder the final checkpoint holds."""

import json

import lightning as L
import torch

from selfsup.metrics import knn_top1, rankme
from selfsup.train import build, run
from tests.config_utils import compose_train
from tests.runs import TINY, weights


def scores(encoder, datamodule) -> dict:
    """kNN top-1 (k=200, T=0.07) and RankMe of ``encoder`` on the held-out split, by a plain forward pass."""
    train_ds, test_ds = datamodule.eval_datasets()
    encoder.eval()
    with torch.no_grad():
        feats = [torch.cat([encoder(x.unsqueeze(0)) for x, _ in ds]) for ds in (train_ds, test_ds)]
    labels = [torch.tensor([int(y) for _, y in ds]) for ds in (train_ds, test_ds)]
    return {"knn_top1": knn_top1(feats[0], labels[0], feats[1], labels[1]), "rankme": rankme(feats[1]).item()}


def test_the_baseline_table_scores_the_seeded_random_init_and_the_trained_encoder(tmp_path, capsys):
    overrides = TINY + ["report_baseline=true", "trainer.max_steps=6", "trainer.max_epochs=1"]
    run(compose_train(overrides, tmp_path / "run"))
    table = json.loads((tmp_path / "run" / "baseline.json").read_text())
    assert "random init" in capsys.readouterr().out  # the table is printed

    cfg = compose_train(overrides, tmp_path / "direct")
    L.seed_everything(cfg.seed, workers=True, verbose=False)  # as selfsup-train seeds before it builds
    datamodule, module, _ = build(cfg)
    random_init = scores(module.backbone, datamodule)

    state = {k[len("backbone.") :]: v for k, v in weights(tmp_path / "run").items() if k.startswith("backbone.")}
    module.backbone.load_state_dict(state)
    trained = scores(module.backbone, datamodule)

    for row, want in (("random init", random_init), ("trained", trained)):
        assert table[row]["knn_top1"] == want["knn_top1"], row
        assert abs(table[row]["rankme"] - want["rankme"]) < 1e-4 * want["rankme"], row
    assert table["random init"] != table["trained"]
