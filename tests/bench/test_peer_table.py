"""bench/peer_table.py's lightly side: each of the nine lightly models starts from the backbone our run starts from,
trains on our CIFAR-10 batches (multi-crop for DINO and SwAV) and moves its backbone; its heads take the widths of
our recipe. lightly is a benchmark and test dependency only (never imported by the library)."""

import json
import sys
import time

import pytest
import torch

from selfsup.config import ROOT
from tests.config_utils import compose_train

pytest.importorskip("lightly")
sys.path.insert(0, str(ROOT / "bench"))
import cifar_table  # noqa: E402
import peer_table  # noqa: E402

TINY = ["data.subset=64", "data.batch_size=32", "data.num_workers=0"]


@pytest.mark.slow
@pytest.mark.parametrize("name", list(peer_table.LIGHTLY))
def test_each_lightly_model_starts_from_our_backbone_and_trains_on_our_cifar_batches(name, tmp_path, cifar10_root):
    run_dir = tmp_path / f"{name}_seed0"
    overrides = [*peer_table.setting(name, "cifar10", 1, 0, run_dir), *TINY]
    overrides = [o.replace(str(cifar_table.CIFAR10), str(cifar10_root)) for o in overrides]
    cfg = compose_train(overrides, run_dir)
    model, datamodule, module = peer_table.lightly_model(cfg, name)
    ours = cifar_table.initial_backbone(overrides, tmp_path / "ours")[0].state_dict()
    start = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    assert start.keys() == ours.keys() and all(torch.equal(start[k], ours[k]) for k in ours), name
    for online, momentum in (("backbone", "backbone_momentum"), ("projection", "projection_momentum")):
        if getattr(model, momentum, None) is not None:  # a teacher starts as the student, as our EMA target does
            a, b = getattr(model, online).state_dict(), getattr(model, momentum).state_dict()
            assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), (name, momentum)
    if name in ("dino", "swav"):
        batch = next(iter(datamodule.train_dataloader()))
        assert len(batch["views"]) == 8  # 2 global + 6 local crops, as our run sees them

    trained = peer_table.train_lightly(cfg, name)
    moved = [k for k, v in trained.state_dict().items() if v.is_floating_point() and not torch.equal(v, start[k])]
    assert moved, f"{name}: lightly's model did not move the backbone"
    heads = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    assert heads, name


def scores(knn: float) -> dict:
    """One side's scores, every percentage ``knn``."""
    return {"knn": knn, "knn20": knn, "probe": knn, "fewshot5": knn, "map_at_r": knn, "rankme": 10.0, "seconds": 60}


def test_a_table_of_the_runs_so_far_says_how_many_seeds_each_row_has(tmp_path):
    """``--cached`` tables what is trained: a row of 2 seeds shows mean ± std, a row of 1 seed its value alone."""

    rows = {
        ("simclr", "ours"): [scores(0.40), scores(0.42)],
        ("simclr", "lightly"): [scores(0.41), scores(0.43)],
        ("byol", "ours"): [scores(0.30)],
        ("byol", "lightly"): [scores(0.31)],
    }
    peer_table.write_table(tmp_path / "t.md", rows, ["simclr", "byol"], "cifar10", 5, "0,1,2")
    lines = (tmp_path / "t.md").read_text().splitlines()
    assert lines[2].startswith("| method | seeds | kNN ours | kNN lightly |")
    assert lines[4].startswith("| simclr | 2 | 41.0% ± 1.4 | 42.0% ± 1.4 |")
    assert lines[5].startswith("| byol | 1 | 30.0% | 31.0% |")


def test_the_readme_shows_the_cifar_side_by_side_as_written():
    text = (ROOT / "bench" / "PEERS_CIFAR.md").read_text()
    table = text.split("\n", 2)[2].strip()
    assert table in (ROOT / "README.md").read_text(), "paste bench/PEERS_CIFAR.md into README.md"
    for line in table.splitlines()[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        seeds = int(cells[1].rstrip("*"))
        assert cells[0] in peer_table.LIGHTLY and 1 <= seeds <= 3, line
        assert ("±" in cells[2]) == (seeds > 1), line


def test_our_side_scored_under_another_config_starts_again_instead_of_resuming(tmp_path, monkeypatch):
    """Resuming our run of an older config would be refused (a resumed run keeps its config): once the config has
    changed, the run directory is cleared — lightly's record kept — and our side trains from scratch; its record is
    written whole, as JSON."""
    run_dir, records = tmp_path / "runs" / "vicreg_seed0", tmp_path / "records"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints" / "last.ckpt").write_bytes(b"an older config's run")
    (run_dir / "metrics.csv").write_text("step,train/loss\n")
    records.mkdir()
    (records / "vicreg_seed0_lightly.json").write_text('{"config": "kept"}')
    (records / "vicreg_seed0_ours.json").write_text('{"config": "stale:ours"}')
    cfg = compose_train(["recipes=quickstart", "trainer.max_steps=1"], run_dir)

    def trained_backbone(cfg):
        assert list(run_dir.iterdir()) == []
        return torch.nn.Linear(2, 2)

    monkeypatch.setattr(peer_table, "trained_backbone", trained_backbone)
    row = peer_table.run_once("vicreg", cfg, "ours", records / "vicreg_seed0_ours.json", lambda b: {"knn": 0.5})
    assert row["knn"] == 0.5 and row["config"].endswith(":ours") and row["config"] != "stale:ours"
    assert json.loads((records / "vicreg_seed0_ours.json").read_text()) == row
    assert (records / "vicreg_seed0_lightly.json").read_text() == '{"config": "kept"}'
    assert sorted(p.name for p in records.iterdir()) == ["vicreg_seed0_lightly.json", "vicreg_seed0_ours.json"]
    monkeypatch.setattr(peer_table, "trained_backbone", None)  # recorded under this config: read back, not trained
    assert peer_table.run_once("vicreg", cfg, "ours", records / "vicreg_seed0_ours.json", None, train=False) == row
    (records / "vicreg_seed0_ours.json").write_text('{"knn": 0.5, "conf')  # a record damaged by hand
    with pytest.raises(SystemExit, match=r"record=.*vicreg_seed0_ours.json: not JSON"):
        peer_table.run_once("vicreg", cfg, "ours", records / "vicreg_seed0_ours.json", None)


def test_our_side_cut_short_and_resumed_reports_the_seconds_of_every_call(tmp_path, monkeypatch):
    """Our side resumes its run dir, so its seconds add up every call that trained it (lightly's side, which starts
    again from scratch, counts its last call); scoring counts on both sides."""
    clock = [1000.0]
    monkeypatch.setattr(time, "time", lambda: clock[0])
    run_dir, record = tmp_path / "runs" / "vicreg_seed0", tmp_path / "records" / "vicreg_seed0_ours.json"
    cfg = compose_train(["recipes=quickstart", "trainer.max_steps=1"], run_dir)
    calls = []

    def trained_backbone(cfg):
        clock[0] += 30.0  # each call trains for 30 s; the first is killed
        calls.append(cfg.run_dir)
        if len(calls) == 1:
            raise KeyboardInterrupt
        return torch.nn.Linear(2, 2)

    def score_backbone(backbone):
        clock[0] += 5.0
        return {"knn": 0.5}

    monkeypatch.setattr(peer_table, "trained_backbone", trained_backbone)
    with pytest.raises(KeyboardInterrupt):
        peer_table.run_once("vicreg", cfg, "ours", record, score_backbone)
    assert not record.exists()
    assert peer_table.run_once("vicreg", cfg, "ours", record, score_backbone)["seconds"] == pytest.approx(65.0)

    def train_lightly(cfg, name):
        clock[0] += 20.0
        return torch.nn.Linear(2, 2)

    monkeypatch.setattr(peer_table, "train_lightly", train_lightly)
    lightly_record = record.with_name("vicreg_seed0_lightly.json")
    assert peer_table.run_once("vicreg", cfg, "lightly", lightly_record, score_backbone)["seconds"] == pytest.approx(25)


def test_a_row_written_before_its_seeds_were_recorded_is_kept_until_the_records_hold_as_many(tmp_path):
    """Records hold 1 seed of SimCLR and 2 of BYOL; the table already written has 3 of SimCLR and 1 of BYOL: SimCLR's
    row stays as written, its count marked *, BYOL's is rebuilt from its records, and a second rebuild is the same."""

    out = tmp_path / "t.md"
    earlier = {(m, w): [scores(0.40)] * n for m, n in (("simclr", 3), ("byol", 1)) for w in peer_table.WHO}
    peer_table.write_table(out, earlier, ["simclr", "byol"], "cifar10", 5, "0,1,2")
    simclr_row = out.read_text().splitlines()[4]
    rows = {("simclr", w): [scores(0.30)] for w in peer_table.WHO} | {
        ("byol", w): [scores(0.30), scores(0.32)] for w in peer_table.WHO
    }
    for _ in range(2):
        peer_table.write_table(out, rows, ["simclr", "byol", "swav"], "cifar10", 5, "0,1,2")
        lines = out.read_text().splitlines()
        assert "Seeds marked *" in lines[0]
        assert lines[4] == simclr_row.replace("| simclr | 3 |", "| simclr | 3* |")
        assert lines[5].startswith("| byol | 2 | 31.0% ± 1.4 |") and len(lines) == 6
