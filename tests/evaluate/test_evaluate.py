import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

import selfsup
from selfsup import evaluate as ev
from selfsup.config import CONF_DIR
from selfsup.evaluate import report
from selfsup.evaluate.protocols import clustering, fewshot
from selfsup.metrics import alpha_req, knn_top1, lidar, linear_probe, rankme
from selfsup.neighbours import map_at_r, precision_at_k

DIGITS = {
    "_target_": "selfsup.data.SSLDataModule",
    "dataset": "digits",
    "root": None,
    "batch_size": 64,
    "image_size": 16,
    "mean": [0.5, 0.5, 0.5],
    "std": [0.5, 0.5, 0.5],
    "num_workers": 0,
    "subset": None,
    "eval_train_subset": None,
    "eval_test_subset": None,
    "download": False,
}
FAST = ["eval.probe.l2_grid=[1e-4,1e-2]", "eval.probe.max_iter=50", "eval.plots=false"]


def make_run(
    run_dir: Path, seed: int = 0, name: str = "test_resnet", cifar_stem: bool = False, overrides=(), **backbone
) -> Path:
    """A run dir with a selfsup checkpoint of a tiny timm encoder (``backbone``: more build_backbone arguments) + MLP
    projector (random weights, digits config)."""
    config = {
        "backbone": {
            "_target_": "selfsup.models.build_backbone",
            "name": name,
            "cifar_stem": cifar_stem,
            "pretrained": False,
            "in_chans": 3,
            **backbone,
        },
        "projector": {
            "_target_": "selfsup.models.mlp",
            "_partial_": True,
            "hidden_dim": 32,
            "out_dim": 8,
            "num_layers": 2,
            "batch_norm": True,
            "last_batch_norm": False,
        },
        "data": DIGITS,
        "views": {"_target_": "selfsup.data.MultiViewTransform"},
        "objective": {"_target_": "selfsup.objectives.InfoNCELoss", "temperature": 0.5},
    }
    torch.manual_seed(seed)
    backbone = instantiate(config["backbone"])
    projector = instantiate(config["projector"])(in_dim=backbone.num_features)
    state = {f"backbone.{k}": v for k, v in backbone.state_dict().items()}
    state.update({f"projector.{k}": v for k, v in projector.state_dict().items()})
    (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    torch.save(
        {"selfsup": {"version": selfsup.__version__, "config": config}, "state_dict": state, "epoch": 1},
        run_dir / "checkpoints" / "last.ckpt",
    )
    (run_dir / ".hydra").mkdir(exist_ok=True)
    (run_dir / ".hydra" / "config.yaml").write_text(OmegaConf.to_yaml(config))
    (run_dir / ".hydra" / "overrides.yaml").write_text(OmegaConf.to_yaml(list(overrides)))
    return run_dir


def eval_cfg(*overrides: str):
    """The eval config; LiDAR on 50 images x 10 views unless a test sets eval.lidar.images (a forward pass each)."""
    small = [] if any(o.startswith("eval.lidar.images") for o in overrides) else ["eval.lidar.images=50"]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("eval", overrides=[*small, *overrides])


@pytest.fixture
def run(tmp_path):
    return make_run(tmp_path / "run")


def test_run_dir_writes_metrics_matching_the_metric_functions(run):
    metrics = ev.evaluate(
        eval_cfg(
            f"checkpoint={run}",
            "eval.probe.l2_grid=[1e-4,1e-2]",
            "eval.probe.max_iter=50",
            "eval.lidar.images=300",
            "eval.lidar.views=4",
        )
    )
    on_disk = json.loads((run / "metrics.json").read_text())
    assert on_disk == json.loads(json.dumps(metrics))
    for key in ("rankme", "rankme_backbone", "knn_top1", "knn_top1_k20", "linear_top1"):
        assert isinstance(on_disk[key], float)
    for key in ("knn_top1", "knn_top1_k20", "linear_top1"):
        assert 0.0 <= on_disk[key] <= 1.0
    assert on_disk["num_train"] == 1437 and on_disk["num_test"] == 360 and on_disk["embedding_dim"] == 8

    (cache,) = (run / "eval_cache").glob("*.pt")
    feats = torch.load(cache, weights_only=True)
    tr, te = feats["train"], feats["test"]
    # 1437 < 25600: all rows (in a shuffled order, hence not bit-identical)
    assert on_disk["rankme"] == pytest.approx(rankme(tr["embedding"]).item(), rel=1e-8)
    assert on_disk["rankme_backbone"] == pytest.approx(rankme(tr["backbone"]).item(), rel=1e-8)
    assert on_disk["knn_top1"] == knn_top1(tr["backbone"], tr["labels"], te["backbone"], te["labels"], k=200)
    assert on_disk["knn_top1_k20"] == knn_top1(tr["backbone"], tr["labels"], te["backbone"], te["labels"], k=20)
    probe = linear_probe(tr["backbone"], tr["labels"], te["backbone"], te["labels"], l2_grid=[1e-4, 1e-2], max_iter=50)
    assert on_disk["linear_top1"] == probe["top1"]
    # α-ReQ on the RankMe rows; LiDAR on 4 views of each of the first 300 training images, cached with the rest
    assert on_disk["alpha_req"] == pytest.approx(alpha_req(tr["embedding"])["alpha"], rel=1e-6)
    assert on_disk["alpha_req_r2_backbone"] == pytest.approx(alpha_req(tr["backbone"])["r2"], rel=1e-6)
    views = feats["lidar"]
    assert views["embedding"].shape == (1200, 8) and (on_disk["lidar_images"], on_disk["lidar_views"]) == (300, 4)
    assert on_disk["lidar"] == pytest.approx(lidar(views["embedding"].reshape(300, 4, 8)).item(), rel=1e-10)
    assert torch.bincount(views["labels"]).tolist() == [120] * 10  # 30 images of each class, class by class
    per_image = views["labels"].reshape(300, 4)
    assert (per_image == per_image[:, :1]).all()  # the 10 rows of an image are views of one image

    md, html = (run / "report.md").read_text(), (run / "report.html").read_text()
    assert "RankMe (emb.)" in md and "report_spectrum.png" in md and "report_map.png" in md
    assert html.count("data:image/png;base64,") == 2 and 'src="report_' not in html
    assert (run / "report_spectrum.png").read_bytes()[:4] == b"\x89PNG"


def test_features_are_cached_and_invalidated_by_a_new_checkpoint(run, monkeypatch):
    cfg = eval_cfg(f"checkpoint={run}", "eval.knn_k=[5]", "eval.protocols=[knn]", "eval.plots=false")
    first = ev.evaluate(cfg)
    calls = []
    from selfsup.evaluate import features as ev_features

    real_extract = ev_features.extract
    monkeypatch.setattr(ev_features, "extract", lambda *a, **k: calls.append(1) or real_extract(*a, **k))
    assert ev.evaluate(cfg)["knn_top1"] == first["knn_top1"] and calls == []
    make_run(run, seed=1)  # new weights, new mtime
    os.utime(run / "checkpoints" / "last.ckpt", ns=(1, 1))
    second = ev.evaluate(cfg)
    assert calls == [1, 1, 1] and second["rankme"] != first["rankme"]  # train, test, LiDAR views


@pytest.mark.slow
def test_sweep_dir_is_ranked_with_rank_correlations(tmp_path):
    sweep = tmp_path / "multirun"
    for i, t in enumerate([0.1, 0.2, 0.5, 1.0]):
        make_run(sweep / str(i), seed=i, overrides=[f"objective.temperature={t}", "seed=0"])
    (sweep / "multirun.yaml").write_text("x: 1\n")
    every = [
        "eval.protocols=[knn,linear,fewshot,retrieval,clustering,corruptions,finetune]",
        "eval.fewshot.episodes=20",
        "eval.corruptions.types=[contrast]",
        "eval.corruptions.severities=[5]",
        "eval.corruptions.images=100",
        "eval.finetune.epochs=1",
        "eval.finetune.warmup_epochs=0",
        "eval.finetune.batch_size=512",
    ]
    summary = ev.evaluate(eval_cfg(f"checkpoint={sweep}", *FAST, *every, "eval.clustering.n_init=1"))
    names = [r["name"] for r in summary["runs"]]
    assert sorted(names) == ["0", "1", "2", "3"]
    for acc in report.ACCURACY_KEYS:  # every protocol's score is correlated with every label-free score
        assert summary["correlations"][acc]["rankme"]["n"] == 4, acc
    rankmes = [r["rankme"] for r in summary["runs"]]
    assert rankmes == sorted(rankmes, reverse=True)
    for i in range(4):
        assert set(json.loads((sweep / str(i) / "metrics.json").read_text())) >= {"rankme", "knn_top1", "linear_top1"}
    saved = json.loads((sweep / "sweep.json").read_text())
    corr = saved["correlations"]["linear_top1"]["rankme"]
    by_rankme = [r["linear_top1"] for r in summary["runs"]]  # runs sorted by RankMe, descending
    # by hand: Spearman = 1 - 6 Σd² / (n(n² - 1)) with d the rank differences (no ties among 4 random encoders),
    # Kendall = (concordant - discordant) / 6 pairs
    rank_acc = [sorted(by_rankme, reverse=True).index(v) for v in by_rankme]
    spearman = 1 - 6 * sum((i - r) ** 2 for i, r in enumerate(rank_acc)) / (4 * 15)
    signs = [1 if by_rankme[i] > by_rankme[j] else -1 for i in range(4) for j in range(i + 1, 4)]
    assert len(set(by_rankme)) == 4 and corr["n"] == 4
    assert corr["spearman"] == pytest.approx(spearman) and corr["kendall"] == pytest.approx(sum(signs) / 6)
    md = (sweep / "report.md").read_text()
    assert "objective.temperature" in md and "Spearman" in md and "Kendall" in md
    for column in ("few-shot, 5 shots", "MAP@R", "k-means ARI"):
        assert f"| {column} |" in md.splitlines()[4] and f"| {column} | RankMe (emb.) |" in md  # table, correlations
    assert all(f"| {t} |" in md for t in ("0.1", "0.2", "0.5", "1.0"))


def test_random_encoder_baseline(tmp_path):
    out = tmp_path / "random"
    cfg = eval_cfg("checkpoint=random", "backbone.name=test_resnet", "data=digits", f"out={out}", *FAST)
    metrics = ev.evaluate(cfg)
    assert metrics["checkpoint"] == "random" and metrics["rankme"] == metrics["rankme_backbone"]
    assert json.loads((out / "metrics.json").read_text())["knn_top1"] == metrics["knn_top1"]


def test_sgd_protocol_on_cached_features(run, tmp_path):
    cfg = eval_cfg(
        f"checkpoint={run}",
        "eval.protocol=sgd",
        "eval.sgd.augment=false",
        "eval.sgd.epochs=2",
        "eval.protocols=[linear]",
        "eval.plots=false",
        f"out={tmp_path / 'o'}",
    )
    assert 0.0 <= ev.evaluate(cfg)["linear_top1"] <= 1.0


@pytest.mark.slow
def test_sgd_protocol_with_augmentation(run, tmp_path):
    cfg = eval_cfg(
        f"checkpoint={run}",
        "eval.protocol=sgd",
        "eval.sgd.epochs=1",
        "eval.protocols=[linear]",
        "eval.plots=false",
        f"out={tmp_path / 'o'}",
    )
    assert 0.0 <= ev.evaluate(cfg)["linear_top1"] <= 1.0


@pytest.mark.slow
def test_transfer_to_a_few_cifar10_images(run, cifar10_root, tmp_path):
    out = tmp_path / "cifar"
    cfg = eval_cfg(
        f"checkpoint={run}",
        "data=cifar10",
        f"data.root={cifar10_root}",
        "data.eval_train_subset=300",
        "data.eval_test_subset=100",
        f"out={out}",
        *FAST,
    )
    metrics = ev.evaluate(cfg)
    assert metrics["num_train"] == 300 and metrics["num_test"] == 100
    assert (out / "metrics.json").is_file() and not (run / "metrics.json").exists()


# -- bad input: one-line errors and no metrics.json ----------------------------------------------------------------


def test_missing_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint=.*nope"):
        ev.evaluate(eval_cfg(f"checkpoint={tmp_path / 'nope'}"))
    with pytest.raises(FileNotFoundError, match="sweep dir"):
        ev.evaluate(eval_cfg(f"checkpoint={tmp_path}"))
    with pytest.raises(ValueError, match="checkpoint is not set"):
        ev.evaluate(eval_cfg())


def test_checkpoint_of_another_framework(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    torch.save({"model": {"w": torch.zeros(2)}, "epoch": 3}, tmp_path / "checkpoints" / "last.ckpt")
    with pytest.raises(ValueError, match="not a selfsup checkpoint"):
        ev.evaluate(eval_cfg(f"checkpoint={tmp_path}"))
    (tmp_path / "junk.ckpt").write_bytes(b"not a pickle")
    with pytest.raises(ValueError, match="cannot be read"):
        ev.evaluate(eval_cfg(f"checkpoint={tmp_path / 'junk.ckpt'}"))
    assert not list(tmp_path.rglob("metrics.json"))


def test_data_root_without_the_needed_split(run, tmp_path):
    (tmp_path / "data" / "train" / "cat").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"missing split folder\(s\) \['val'\]"):
        ev.evaluate(eval_cfg(f"checkpoint={run}", "data=imagefolder", f"data.root={tmp_path / 'data'}"))
    with pytest.raises(FileNotFoundError, match=r"data.root=.*missing split folder\(s\) \['test'\]"):
        ev.evaluate(eval_cfg(f"checkpoint={run}", "data=cifar10", f"data.root={tmp_path / 'data'}"))
    with pytest.raises(ValueError, match="data.root"):
        ev.evaluate(eval_cfg(f"checkpoint={run}", "data=imagefolder"))
    assert not (run / "metrics.json").exists()


def test_labels_needed_on_an_unlabeled_set(run, monkeypatch):
    from selfsup.data import SSLDataModule

    real = SSLDataModule.load_splits

    def unlabeled(self):
        train, test = real(self)
        train.labels = torch.full_like(train.labels, -1)
        return train, test

    monkeypatch.setattr(SSLDataModule, "load_splits", unlabeled)
    with pytest.raises(ValueError, match="unlabeled images; eval.protocols need labels"):
        ev.evaluate(eval_cfg(f"checkpoint={run}"))
    assert not (run / "metrics.json").exists()
    metrics = ev.evaluate(eval_cfg(f"checkpoint={run}", "eval.protocols=[]", "eval.plots=false"))
    assert "knn_top1" not in metrics and metrics["rankme"] > 1


def test_bad_eval_options(run):
    with pytest.raises(ValueError, match="eval.protocol='adam'"):
        ev.evaluate(eval_cfg(f"checkpoint={run}", "eval.protocol=adam"))
    assert not (run / "metrics.json").exists()


@pytest.mark.slow
def test_cli_prints_one_line_error_and_exits_2(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "selfsup.evaluate", f"checkpoint={tmp_path / 'missing'}"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"selfsup-eval: error: checkpoint={tmp_path / 'missing'}: no such file or directory"
    ]


# -- config and report pieces --------------------------------------------------------------------------------------


def test_eval_yaml_probe_defaults_match_linear_probe():
    probe = OmegaConf.to_container(eval_cfg("checkpoint=random").eval.probe)
    defaults = {k: p.default for k, p in inspect.signature(linear_probe).parameters.items() if k in probe}
    assert set(defaults) == set(probe)
    assert {k: list(v) if isinstance(v, tuple) else v for k, v in defaults.items()} == probe


def test_rank_correlations_and_selection():
    assert report.rank_correlations([1, 2, 3, 4], [0.1, 0.2, 0.3, 0.4]) == {"spearman": 1.0, "kendall": 1.0, "n": 4}
    anti = report.rank_correlations([1, 2, 3, 4], [0.4, 0.3, 0.2, 0.1])
    assert anti["spearman"] == pytest.approx(-1) and anti["kendall"] == pytest.approx(-1)
    one_swap = report.rank_correlations([1, 2, 3, 4], [1, 3, 2, 4])  # Σd² = 2: 1 - 6·2/60; 5 of 6 pairs agree
    assert one_swap["spearman"] == pytest.approx(0.8) and one_swap["kendall"] == pytest.approx(4 / 6)
    assert report.rank_correlations([1, 2], [1, 2])["n"] == 2  # too few: NaN
    runs = [{"name": n, "rankme": r, "linear_top1": a} for n, r, a in (("a", 5.0, 0.5), ("b", 9.0, 0.4), ("c", 7, 0.6))]
    summary = report.sweep_summary(runs)
    assert [r["name"] for r in summary["runs"]] == ["b", "c", "a"]
    assert summary["selection"]["linear_top1"] == {
        "rankme": {"chosen": 0.4, "best": 0.6, "regret": pytest.approx(0.2), "run": "b"}
    }
    # α-ReQ ranks by closeness to 1; LiDAR by value; a score no run has is left out
    runs = [{**r, "alpha_req": a, "lidar": v} for r, a, v in zip(runs, (1.4, 0.95, 2.0), (3.0, 1.0, 2.0))]
    summary = report.sweep_summary(runs)
    assert summary["ranks"]["alpha_req"] == {"b": 1, "a": 2, "c": 3}
    assert summary["ranks"]["lidar"] == {"a": 1, "c": 2, "b": 3}
    assert summary["selection"]["linear_top1"]["lidar"]["run"] == "a" and "lidar_backbone" not in summary["ranks"]
    assert summary["correlations"]["linear_top1"]["alpha_req"]["spearman"] == pytest.approx(-1)


def test_pca_map_and_spectrum_pngs():
    z = torch.randn(300, 5, generator=torch.Generator().manual_seed(0))
    xy = report.pca_2d(z)
    assert xy.shape == (300, 2) and abs(xy.mean()) < 1e-9
    assert report.embedding_map_png(z, torch.randint(0, 3, (300,)), ["a", "b", "c"], max_points=100)[:4] == b"\x89PNG"
    assert report.spectrum_png({"z": torch.tensor([3.0, 1.0, 0.0])})[:4] == b"\x89PNG"
    series = {f"train/eigval_{k}": ([0, 10, 20], [1 / k, 2 / k, 0.0]) for k in (1, 2, 10)}
    assert report.eigenvalues_png(series)[:4] == b"\x89PNG"
    assert report.eigenvalues_png({"train/loss": ([0], [1.0])}) is None  # nothing logged: no plot


# -- on runs written by selfsup-train -----------------------------------------------------------------------------


def cli(module: str, *args: str, cwd=None):
    import subprocess
    import sys

    from selfsup.config import ROOT

    env = dict(os.environ, HYDRA_FULL_ERROR="0")
    return subprocess.run(
        [sys.executable, "-m", module, *args], capture_output=True, text=True, env=env, cwd=cwd or ROOT, timeout=300
    )


@pytest.mark.slow
def test_eval_and_export_of_a_trained_run_whose_data_moved(tmp_path):
    """selfsup-train on an ImageFolder, the data moved, then `selfsup-eval checkpoint=<run> data.root=<new place>`
    (an override of the saved data config) and `selfsup-export`: a report with the training curves, one kNN row per
    k, an exported file with the usual mode that timm loads to the same features."""
    import shutil

    from selfsup.export import load_encoder
    from selfsup.train import run as train
    from tests.config_utils import compose_train, tiny_imagefolder

    data = tiny_imagefolder(tmp_path / "data", per_class=8, size=24)
    run_dir = tmp_path / "run"
    train(
        compose_train(
            [
                "data=imagefolder",
                f"data.root={data}",
                "data.batch_size=8",
                "data.image_size=16",
                "data.num_workers=0",
                "backbone=resnet18",
                "backbone.name=test_resnet",
                "trainer.max_epochs=2",
                "trainer.log_every_n_steps=1",
                "callbacks.progress=null",
            ],
            run_dir,
        )
    )
    moved = shutil.move(str(data), str(tmp_path / "moved"))
    proc = cli("selfsup.evaluate", f"checkpoint={run_dir}", "eval.knn_k=[4,2]", "eval.probe.max_iter=20")
    assert proc.returncode == 2 and "data.root=" in proc.stderr.strip().splitlines()[-1]  # the saved root is gone
    proc = cli(
        "selfsup.evaluate", f"checkpoint={run_dir}", f"data.root={moved}", "eval.knn_k=[4,2]", "eval.probe.max_iter=20"
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["data_root"] == moved and metrics["num_train"] == 16 and metrics["knn_k"] == [4, 2]
    md = (run_dir / "report.md").read_text()
    assert "## Training curves (metrics.csv)" in md and (run_dir / "report_curves.png").is_file()
    assert "## Top eigenvalues of the embedding covariance during training" in md  # callbacks.collapse.eigenvalues
    assert "## PCA map of the test embeddings" in md and "Pca" not in md
    assert md.count("kNN top-1 (k=4)") == 1 and "knn_top1_k4" not in md and "knn_top1_k2" in md

    out = tmp_path / "encoder.safetensors"
    proc = cli("selfsup.export", f"checkpoint={run_dir}", f"out={out}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert oct(out.stat().st_mode & 0o777) == oct(0o666 & ~_umask())
    encoder = load_encoder(out)
    from selfsup.runtime.checkpoint import backbone_from, load

    trained = backbone_from(load(run_dir))
    x = torch.randn(3, 3, 16, 16)
    assert torch.equal(encoder(x), trained(x))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_sweep_runs_are_found_at_any_depth_and_sweep_json_is_strict(tmp_path):
    """Run directories nested by '/' in swept values are found; too few runs for a correlation give null, not NaN."""
    sweep = tmp_path / "multirun"
    make_run(sweep / "data.root=" / "a" / "b" / "c", seed=0, overrides=["seed=0"])
    make_run(sweep / "seed=1", seed=1, overrides=["seed=1"])
    summary = ev.evaluate(eval_cfg(f"checkpoint={sweep}", *FAST))
    assert sorted(r["name"] for r in summary["runs"]) == ["data.root=/a/b/c", "seed=1"]
    text = (sweep / "sweep.json").read_text()
    assert "NaN" not in text
    saved = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))
    assert saved["correlations"]["linear_top1"]["rankme"]["spearman"] is None


def test_extract_equals_a_manual_forward_pass_in_eval_mode():
    """Features in dataset order, of the encoder in eval mode (BatchNorm running statistics), whatever the batch size;
    the encoder's mode is restored."""
    from selfsup.evaluate.features import extract

    torch.manual_seed(0)
    encoder = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 6), torch.nn.BatchNorm1d(6))
    encoder[2].running_mean.uniform_(-1, 1)  # eval mode must use these, not the batch's statistics
    images = torch.randn(11, 3, 2, 2)
    dataset = [(images[i], i % 3) for i in range(11)]
    with torch.no_grad():
        expected = torch.cat([encoder.eval()(images[i : i + 1]) for i in range(11)])
    encoder.train()
    for batch_size in (1, 4, 11):
        feats, labels = extract(encoder, dataset, batch_size=batch_size)
        torch.testing.assert_close(feats, expected, rtol=1e-6, atol=1e-6)
        assert labels.tolist() == [i % 3 for i in range(11)] and encoder.training


def test_feature_cache_is_invalidated_when_the_images_or_the_transform_change(run, tmp_path, monkeypatch):
    from PIL import Image

    from selfsup.evaluate import features as ev_features
    from tests.config_utils import tiny_imagefolder

    folder = tiny_imagefolder(tmp_path / "folder", per_class=6)
    calls = []
    real_extract = ev_features.extract
    monkeypatch.setattr(ev_features, "extract", lambda *a, **k: calls.append(1) or real_extract(*a, **k))

    def evaluate(*more):
        cfg = eval_cfg(
            f"checkpoint={run}",
            "data=imagefolder",
            f"data.root={folder}",
            "eval.knn_k=[3]",
            "eval.protocols=[knn]",
            "eval.plots=false",
            f"out={tmp_path / 'out'}",
            *more,
        )
        before = len(calls)
        metrics = ev.evaluate(cfg)
        return len(calls) - before, metrics  # extractions: 3 (train, test, LiDAR's views) or 0 (cache)

    assert evaluate()[0] == 3 and evaluate()[0] == 0
    image = folder / "val" / "a" / "0.jpg"
    Image.new("RGB", (48, 40), (250, 10, 10)).save(image)  # one image replaced in place
    os.utime(image, ns=(10**18, 10**18))
    assert evaluate()[0] == 3 and evaluate()[0] == 0
    Image.new("RGB", (48, 40), (10, 250, 10)).save(folder / "train" / "b" / "new.jpg")  # one image added
    assert evaluate()[0] == 3
    assert evaluate("eval.image_size=24")[0] == 3  # another transform (the size; mean/std follow the encoder)
    assert evaluate("eval.image_size=24")[0] == 0 and evaluate()[0] == 0  # both keys stay cached


def test_every_cached_feature_protocol_matches_its_function_and_reaches_the_reports(run):
    metrics = ev.evaluate(
        eval_cfg(
            f"checkpoint={run}",
            "eval.protocols=[fewshot,retrieval,clustering]",
            "eval.fewshot.episodes=50",
            "eval.clustering.n_init=2",
            "eval.plots=false",
        )
    )
    (cache,) = (run / "eval_cache").glob("*.pt")
    feats = torch.load(cache, weights_only=True)
    tr, te = feats["train"], feats["test"]
    for k in (1, 5):
        ref = fewshot(te["backbone"], te["labels"], ways=5, shots=k, queries=15, episodes=50, seed=0)
        assert metrics[f"fewshot_{k}shot"] == ref["mean"] and metrics[f"fewshot_{k}shot_ci95"] == ref["ci95"]
    assert metrics["precision_at_10"] == precision_at_k(tr["backbone"], tr["labels"], te["backbone"], te["labels"])
    assert metrics["map_at_r"] == map_at_r(tr["backbone"], tr["labels"], te["backbone"], te["labels"])
    ref = clustering(te["backbone"], te["labels"], n_init=2, seed=0)
    assert (metrics["nmi"], metrics["ari"], metrics["clusters"]) == (ref["nmi"], ref["ari"], 10)
    assert "knn_top1" not in metrics and "linear_top1" not in metrics
    assert set(metrics["seconds"]) == {"features", "fewshot", "retrieval", "clustering"}
    md = (run / "report.md").read_text()
    for label in ("few-shot, 1 shot", "few-shot, 5 shots", "precision@10", "MAP@R", "k-means NMI", "k-means ARI"):
        assert f"| {label} |" in md


def test_bad_protocol_settings_are_refused_in_one_line_before_anything_is_written(run, monkeypatch):
    from selfsup.evaluate import features as ev_features

    monkeypatch.setattr(ev_features, "extract", lambda *a, **k: pytest.fail("features extracted before the check"))
    # the 360 held-out digits: classes 2 and 8 have 35 rows, the smallest; 21 shots + 15 queries need 36
    for override, message in (
        ("eval.protocols=[knn,fewshots]", r"eval.protocols=\['knn', 'fewshots'\]: expected a list of distinct"),
        ("eval.protocols=[knn,knn]", "expected a list of distinct names"),
        ("eval.fewshot.shots=[1,21]", r"eval.fewshot.shots=21 \+ eval.fewshot.queries=15: class 2 has only 35 rows"),
        ("eval.fewshot.ways=11", "eval.fewshot.ways=11: the split has only 10 classes"),
        ("eval.fewshot.queries=0", "eval.fewshot.queries"),
    ):
        with pytest.raises(ValueError, match=message):
            ev.evaluate(eval_cfg(f"checkpoint={run}", "eval.protocols=[knn,fewshot]", override, "eval.plots=false"))
        assert not (run / "metrics.json").exists()


def test_finetune_protocol_reaches_metrics_and_reports_and_refuses_bad_settings_first(run, monkeypatch):
    metrics = ev.evaluate(
        eval_cfg(
            f"checkpoint={run}",
            "eval.protocols=[finetune]",
            "eval.finetune.epochs=1",
            "eval.finetune.warmup_epochs=0",
            "eval.finetune.batch_size=256",
            "eval.plots=false",
        )
    )
    assert 0.0 <= metrics["finetune_top1"] <= 1.0 and metrics["seconds"]["finetune"] > 0
    assert "| fine-tuned top-1 |" in (run / "report.md").read_text()
    (run / "metrics.json").unlink()
    from selfsup.evaluate import features as ev_features

    monkeypatch.setattr(ev_features, "extract", lambda *a, **k: pytest.fail("features extracted before the check"))
    for override, message in (
        ("eval.finetune.crop_scale=[0.5,0.1]", r"eval.finetune.crop_scale=\[0.5, 0.1\]: expected \[min, max\]"),
        ("eval.finetune.layer_decay=2", "eval.finetune.layer_decay=2: expected"),
    ):
        with pytest.raises(ValueError, match=message):
            ev.evaluate(eval_cfg(f"checkpoint={run}", "eval.protocols=[finetune]", override, "eval.plots=false"))
        assert not (run / "metrics.json").exists()


def test_corruption_protocol_scores_the_clean_probe_on_corrupted_images(run, monkeypatch):
    from selfsup.evaluate.corruptions import CorruptedImages
    from selfsup.evaluate.features import extract
    from selfsup.evaluate.jobs import resolve_jobs

    common = ["eval.corruptions.types=[gaussian_noise,contrast]", "eval.corruptions.severities=[1,5]", *FAST]
    metrics = ev.evaluate(
        eval_cfg(f"checkpoint={run}", "eval.protocols=[linear,corruptions]", "eval.corruptions.images=100", *common)
    )
    (cache,) = (run / "eval_cache").glob("*.pt")
    feats = torch.load(cache, weights_only=True)
    tr, te = feats["train"], feats["test"]
    job = resolve_jobs(eval_cfg(f"checkpoint={run}"))[0][0]
    test_ds = instantiate(DIGITS).eval_datasets()[1]
    extra = {}
    for name in ("gaussian_noise", "contrast"):
        for s in (1, 5):
            extra[f"{name}/{s}"] = extract(job.backbone, CorruptedImages(test_ds, name, s, 0, 100))
    rows = torch.as_tensor(CorruptedImages(test_ds, "contrast", 1, 0, 100).rows)
    extra["clean"] = (te["backbone"][rows], te["labels"][rows])
    probe = linear_probe(
        tr["backbone"], tr["labels"], te["backbone"], te["labels"], l2_grid=[1e-4, 1e-2], max_iter=50, extra_test=extra
    )["extra_top1"]
    assert (
        metrics["linear_top1"]
        == linear_probe(tr["backbone"], tr["labels"], te["backbone"], te["labels"], l2_grid=[1e-4, 1e-2], max_iter=50)[
            "top1"
        ]
    )  # the extra sets do not change the probe
    assert metrics["corruption_clean_top1"] == probe["clean"]
    assert metrics["corruption_top1_gaussian_noise"] == pytest.approx(
        (probe["gaussian_noise/1"] + probe["gaussian_noise/5"]) / 2
    )
    assert metrics["corruption_top1_severity5"] == pytest.approx((probe["gaussian_noise/5"] + probe["contrast/5"]) / 2)
    mean = sum(v for k, v in probe.items() if k != "clean") / 4
    assert metrics["corruption_top1"] == pytest.approx(mean)
    assert metrics["corruption_ratio"] == pytest.approx(mean / probe["clean"])
    assert "| corrupted top-1 (probe) |" in (run / "report.md").read_text()
    (run / "metrics.json").unlink()

    from selfsup.evaluate import features as ev_features

    monkeypatch.setattr(ev_features, "extract", lambda *a, **k: pytest.fail("features extracted before the check"))
    for overrides, message in (
        (["eval.protocols=[knn,corruptions]"], "corruptions are scored by the clean-trained linear probe"),
        (["eval.protocols=[linear,corruptions]", "eval.corruptions.types=[frost]"], r"'frost' \(not generated here"),
        (["eval.protocols=[linear,corruptions]", "eval.corruptions.severities=[0]"], "severities: 0; expected"),
    ):
        with pytest.raises(ValueError, match=message):
            ev.evaluate(eval_cfg(f"checkpoint={run}", *overrides, "eval.plots=false"))
        assert not (run / "metrics.json").exists()
