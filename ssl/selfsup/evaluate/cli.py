"""``selfsup-eval checkpoint=<ckpt | run dir | sweep dir | random> [data=<name>] [eval.*]``.

Frozen features of the train and held-out splits are extracted once (cached on disk, keyed by checkpoint path +
mtime, data config and transform), then: RankMe and α-ReQ of the embeddings and of the backbone features (float64,
on a seeded sample of ``eval.rankme_samples`` training rows — RankMe's 25,600), LiDAR of ``eval.lidar`` augmented
views of training images, then the protocols of ``eval.protocols`` on backbone features (docs/evaluation.md): by
default weighted kNN top-1 (k=200 and 20, T=0.07) and a linear probe (``eval.protocol=fast``: full-batch L-BFGS with
an L2 sweep; ``sgd``: the standard SGD protocol); also few-shot episodes, retrieval (precision@k, MAP@R), k-means
clustering (NMI, ARI), the probe on corrupted images and fine-tuning. Writes ``metrics.json`` atomically plus
``report.md`` / ``report.html`` next to the run.

A sweep directory (run dirs below it, each with ``checkpoints/last.ckpt`` and ``.hydra/``) is evaluated run by
run, then its runs are ranked by each label-free score (RankMe, α-ReQ, LiDAR) with each run's overridden
hyper-parameters, each score's Spearman / Kendall correlation with every protocol's accuracy and the run it would select
(``sweep.json`` + reports in the sweep dir).
"""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from selfsup import checks
from selfsup.config import CONF_DIR
from selfsup.devices import device_of
from selfsup.evaluate import corruptions, report
from selfsup.evaluate.features import build_eval_datasets, eval_data_config, extract, features, lidar_dataset
from selfsup.evaluate.finetune import check_settings, finetune
from selfsup.evaluate.jobs import EvalJob, beside, checkpoint_job, resolve_jobs, run_dir_of
from selfsup.evaluate.memorization import memorization, write_table
from selfsup.evaluate.probes import AugmentedImages, sgd_probe_augmented
from selfsup.evaluate.protocols import check_fewshot, clustering, fewshot
from selfsup.metrics import alpha_req, knn_top1, lidar, linear_probe, linear_probe_sgd, rankme, singular_values
from selfsup.neighbours import map_at_r, precision_at_k
from selfsup.runtime import checkpoint as ckpt_io
from selfsup.runtime.errors import check_output_dir, one_line_errors, run_hydra_app
from selfsup.runtime.warnings import quiet_known_warnings

log = logging.getLogger(__name__)

LINEAR_PROTOCOLS = ("fast", "sgd")
PROTOCOLS = ("knn", "linear", "fewshot", "retrieval", "clustering", "corruptions", "finetune", "memorization")


def check_protocols(value) -> list[str]:
    """``eval.protocols``: a list of :data:`PROTOCOLS` names, each once."""
    names = list(value) if isinstance(value, Sequence) and not isinstance(value, str) else [value]
    if any(not isinstance(n, str) or n not in PROTOCOLS for n in names) or len(set(names)) < len(names):
        raise ValueError(f"eval.protocols={value}: expected a list of distinct names from {list(PROTOCOLS)}")
    return names


def run_protocols(protocols: Sequence[str], tr: dict, te: dict, e) -> tuple[dict, dict]:
    """(metrics, seconds per protocol) of the cached-feature protocols ``fewshot``, ``retrieval`` and
    ``clustering`` on backbone features (docs/evaluation.md); ``tr`` / ``te``: train / held-out features + labels."""
    metrics, seconds = {}, {}
    if "fewshot" in protocols:
        t = time.perf_counter()
        f = e.fewshot
        shots = [int(s) for s in f.shots]
        for k in shots:
            r = fewshot(te["backbone"], te["labels"], f.ways, k, f.queries, f.episodes, f.C, f.max_iter, e.seed)
            metrics[f"fewshot_{k}shot"], metrics[f"fewshot_{k}shot_ci95"] = r["mean"], r["ci95"]
        metrics.update(fewshot_ways=int(f.ways), fewshot_episodes=int(f.episodes))
        seconds["fewshot"] = time.perf_counter() - t
    if "retrieval" in protocols:
        t = time.perf_counter()
        k = int(e.retrieval.k)
        metrics[f"precision_at_{k}"] = precision_at_k(tr["backbone"], tr["labels"], te["backbone"], te["labels"], k)
        metrics["map_at_r"] = map_at_r(tr["backbone"], tr["labels"], te["backbone"], te["labels"])
        seconds["retrieval"] = time.perf_counter() - t
    if "clustering" in protocols:
        t = time.perf_counter()
        c = e.clustering
        r = clustering(te["backbone"], te["labels"], c.clusters, n_init=c.n_init, max_iter=c.max_iter, seed=e.seed)
        metrics.update(nmi=r["nmi"], ari=r["ari"], clusters=r["clusters"])
        seconds["clustering"] = time.perf_counter() - t
    return metrics, seconds


def protocol_settings(protocols: Sequence[str], e, test_labels) -> dict:
    """One-line errors for settings a chosen protocol cannot run with, checked before any feature is extracted;
    returns ``{"corruptions": (types, severities), "finetune": (finetune options, crop scale)}`` for those chosen."""
    out = {}
    if "fewshot" in protocols:
        for k in e.fewshot.shots:
            check_fewshot(test_labels, e.fewshot.ways, int(k), e.fewshot.queries, e.fewshot.episodes)
    if "corruptions" in protocols:
        out["corruptions"] = corruptions.check(e.corruptions.types, e.corruptions.severities)
        if "linear" not in protocols or e.protocol != "fast":
            raise ValueError(
                f"eval.protocols={list(protocols)}: corruptions are scored by the clean-trained linear probe; "
                "expected linear in eval.protocols with eval.protocol=fast"
            )
    if "memorization" in protocols:
        for key in ("reference", "candidates"):
            if not e.memorization.get(key):
                raise ValueError(
                    f"eval.memorization.{key} is not set: SSLMem needs the reference run (trained without the "
                    "candidates) and the candidates' index file (docs/memorization.md)"
                )
        checks.integer("eval.memorization.views", e.memorization.views, minimum=1)
    if "finetune" in protocols:
        options = OmegaConf.to_container(e.finetune)
        crop_scale = checks.interval("eval.finetune.crop_scale", options.pop("crop_scale"), 0, maximum=1, scalar=False)
        check_settings(**options)
        out["finetune"] = (options | {"num_workers": e.num_workers}, crop_scale)
    return out


def corrupted_features(backbone, test_ds, te: dict, types: list[str], severities: list[int], e) -> dict:
    """``{"<type>/<severity>": (backbone features, labels)}`` of the held-out images under each corruption, and
    ``"clean"``: the cached features of the same images (``eval.corruptions.images`` caps them class by class)."""
    device = device_of(e.device, "eval.device")
    out = {}
    for name in types:
        for s in severities:
            ds = corruptions.CorruptedImages(test_ds, name, s, e.seed, e.corruptions.images)
            out[f"{name}/{s}"] = extract(backbone, ds, e.batch_size, e.num_workers, device)
            log.info("corruption %s, severity %d: %d images", name, s, len(ds))
    rows = torch.as_tensor(ds.rows)
    out["clean"] = (te["backbone"][rows], te["labels"][rows])
    return out


def corruption_scores(top1: dict[str, float]) -> dict:
    """The probe's accuracies under corruption, averaged: over everything (``corruption_top1``), per type and per
    severity; with the clean accuracy of the same images and the ratio of the two (docs/evaluation.md)."""
    clean = top1.pop("clean")
    types = sorted({k.split("/")[0] for k in top1})
    levels = sorted({int(k.split("/")[1]) for k in top1})
    mean = sum(top1.values()) / len(top1)
    out = {"corruption_top1": mean, "corruption_clean_top1": clean, "corruption_ratio": mean / clean if clean else 0.0}
    for name in types:
        values = [v for k, v in top1.items() if k.split("/")[0] == name]
        out[f"corruption_top1_{name}"] = sum(values) / len(values)
    for s in levels:
        values = [v for k, v in top1.items() if int(k.split("/")[1]) == s]
        out[f"corruption_top1_severity{s}"] = sum(values) / len(values)
    return out


def evaluate_job(job: EvalJob, cfg: DictConfig) -> tuple[dict, dict]:
    """(metrics, artefacts for the report) of one encoder."""
    e = cfg.eval
    checks.one_of("eval.protocol", e.protocol, LINEAR_PROTOCOLS)
    protocols = check_protocols(e.protocols)
    need_labels = bool(protocols)
    data = eval_data_config(cfg, job)
    train_ds, test_ds = build_eval_datasets(data, need_labels)
    settings = protocol_settings(protocols, e, test_ds.source.labels)  # before the features are extracted
    t0 = time.perf_counter()
    lidar_ds = lidar_dataset(job, data, train_ds, cfg)
    datasets = {"train": train_ds, "test": test_ds, **({"lidar": lidar_ds} if lidar_ds is not None else {})}
    feats = features(job, data, datasets, cfg)
    timings = {"features": time.perf_counter() - t0}
    tr, te = feats["train"], feats["test"]

    n = tr["embedding"].shape[0]
    rows = torch.randperm(n, generator=torch.Generator().manual_seed(e.seed))[: min(int(e.rankme_samples), n)]
    sv = {"embedding": singular_values(tr["embedding"][rows]), "backbone": singular_values(tr["backbone"][rows])}
    metrics = {
        "rankme": rankme(tr["embedding"][rows]).item(),
        "rankme_backbone": rankme(tr["backbone"][rows]).item(),
    }
    if len(rows) >= 2:
        for suffix, part in (("", "embedding"), ("_backbone", "backbone")):
            fit = alpha_req(tr[part][rows], tuple(e.alpha_fit_range))
            metrics[f"alpha_req{suffix}"], metrics[f"alpha_req_r2{suffix}"] = fit["alpha"], fit["r2"]
    if lidar_ds is not None:
        images, q = len(lidar_ds.rows), lidar_ds.q
        for suffix, part in (("", "embedding"), ("_backbone", "backbone")):
            metrics[f"lidar{suffix}"] = lidar(feats["lidar"][part].reshape(images, q, -1), e.lidar.delta).item()
        metrics["lidar_images"], metrics["lidar_views"] = images, q
    if "knn" in protocols:
        t = time.perf_counter()
        metrics["knn_k"] = [int(k) for k in e.knn_k]
        for i, k in enumerate(e.knn_k):
            acc = knn_top1(
                tr["backbone"], tr["labels"], te["backbone"], te["labels"], k=int(k), temperature=e.temperature
            )
            metrics[f"knn_top1_k{k}"] = acc
            if i == 0:
                metrics["knn_top1"] = acc
        timings["knn"] = time.perf_counter() - t
    corrupted = {}
    if "corruptions" in protocols:  # features of the corrupted held-out images, scored by the probe below
        t = time.perf_counter()
        corrupted = corrupted_features(job.backbone, test_ds, te, *settings["corruptions"], e)
        timings["corruptions"] = time.perf_counter() - t
    if "linear" in protocols:
        t = time.perf_counter()
        if e.protocol == "fast":
            probe = linear_probe(
                tr["backbone"],
                tr["labels"],
                te["backbone"],
                te["labels"],
                **OmegaConf.to_container(e.probe),
                extra_test=corrupted,
            )
            metrics.update(linear_top1=probe["top1"], linear_val_top1=probe["val_top1"], linear_l2=probe["l2"])
            if corrupted:
                metrics.update(corruption_scores(probe["extra_top1"]))
        elif e.sgd.augment:
            num_classes = int(max(tr["labels"].max(), te["labels"].max())) + 1
            probe = sgd_probe_augmented(job.backbone, train_ds, feats, cfg, num_classes)
            metrics["linear_top1"] = probe["top1"]
        else:
            sgd = {k: v for k, v in OmegaConf.to_container(e.sgd).items() if k != "augment"}
            probe = linear_probe_sgd(tr["backbone"], tr["labels"], te["backbone"], te["labels"], seed=e.seed, **sgd)
            metrics["linear_top1"] = probe["top1"]
        timings["linear"] = time.perf_counter() - t
    more, seconds = run_protocols(protocols, tr, te, e)
    metrics.update(more)
    timings.update(seconds)
    if "memorization" in protocols:  # SSLMem against the reference run (docs/memorization.md)
        t = time.perf_counter()
        ref_path = ckpt_io.resolve(Path(str(e.memorization.reference)).expanduser(), "eval.memorization.reference")
        trusted = list(cfg.get("trusted_targets") or ())
        reference = checkpoint_job(ref_path, "reference", job.out_dir, trusted, e.branch)  # the same branch of g
        device = device_of(e.device, "eval.device")
        mem, table = memorization(job, reference, e.memorization, device, e.seed)
        metrics.update(mem, memorization_reference=str(ref_path))
        write_table(Path(job.out_dir) / "memorization.csv", table)
        timings["memorization"] = time.perf_counter() - t
    if "finetune" in protocols:  # last: it trains (a copy of) the encoder
        num_classes = int(max(tr["labels"].max(), te["labels"].max())) + 1
        device = device_of(e.device, "eval.device")
        options, crop_scale = settings["finetune"]
        train_images = AugmentedImages(train_ds, crop_scale)
        ft = finetune(job.backbone, train_images, test_ds, num_classes, **options, seed=e.seed, device=device)
        metrics["finetune_top1"], timings["finetune"] = ft["top1"], ft["seconds"]
    metrics.update(
        protocols=protocols,
        protocol=e.protocol,
        num_train=n,
        num_test=te["embedding"].shape[0],
        backbone_dim=tr["backbone"].shape[1],
        embedding_dim=tr["embedding"].shape[1],
        rankme_samples=len(rows),
        checkpoint=job.source,
        branch=e.branch,
        data=data.get("_target_"),
        data_root=data.get("root"),
        seconds=timings,
    )
    return metrics, {
        "singular_values": sv,
        "test_embedding": te["embedding"],
        "test_labels": te["labels"],
        "classes": list(test_ds.source.classes),
        "data": data,
    }


def write_outputs(job: EvalJob, metrics: dict, artefacts: dict, cfg: DictConfig) -> list[Path]:
    """Reports first, metrics.json last (atomic): a metrics.json exists only for a finished evaluation. Returns the
    files written (plots aside)."""
    spectrum = embedding_map = None
    if cfg.eval.plots:
        spectrum = report.spectrum_png(artefacts["singular_values"])
        embedding_map = report.embedding_map_png(
            artefacts["test_embedding"],
            artefacts["test_labels"],
            artefacts["classes"],
            cfg.eval.map_points,
            cfg.eval.seed,
        )
    curves = eigenvalues = None
    csv_path = run_dir_of(Path(job.source)) / "metrics.csv" if job.source != "random" else None
    if cfg.eval.plots and csv_path is not None and csv_path.is_file():
        series = report.read_metrics_csv(csv_path)
        curves, eigenvalues = report.curves_png(series), report.eigenvalues_png(series)
    details = {"overrides": job.overrides, "data": artefacts["data"], "eval": OmegaConf.to_container(cfg.eval)}
    reports = report.write_run_report(
        job.out_dir, f"selfsup-eval: {job.name}", metrics, spectrum, embedding_map, details, curves, eigenvalues
    )
    report.write_json(job.out_dir / "metrics.json", metrics)
    return [job.out_dir / "metrics.json", *reports]


def evaluate(cfg: DictConfig) -> dict:
    """Evaluate every job of ``cfg.checkpoint``; returns the metrics (a sweep: the ranking summary)."""
    quiet_known_warnings()
    if cfg.out is not None:  # before any work: a file there would fail only once the features are extracted
        check_output_dir("out", cfg.out)
    jobs, sweep_dir = resolve_jobs(cfg)
    results, metrics = [], {}
    for job in jobs:
        log.info("evaluating %s (%s)", job.name, job.source)
        metrics, artefacts = evaluate_job(job, cfg)
        written = write_outputs(job, metrics, artefacts, cfg)
        log.info("%s: %s", job.name, _summary(metrics))
        log.info("wrote %s", ", ".join(str(p) for p in written))
        results.append({"name": job.name, "overrides": job.overrides, **metrics})
    if sweep_dir is None:
        return metrics
    out = Path(cfg.out) if cfg.out is not None else beside(sweep_dir, cfg.eval.branch)
    summary = report.sweep_summary(results)
    reports = report.write_sweep_report(out, f"selfsup-eval sweep: {sweep_dir}", summary)
    report.write_json(out / "sweep.json", summary)
    log.info("wrote %s", ", ".join(str(p) for p in (out / "sweep.json", *reports)))
    for acc, by in summary["correlations"].items():
        for key, c in by.items():
            log.info(
                "%s vs %s: Spearman %.3f, Kendall %.3f (%d runs)",
                key,
                acc,
                c.get("spearman", math.nan),
                c.get("kendall", math.nan),
                c.get("n", 0),
            )
    return summary


def _summary(metrics: dict) -> str:
    keys = [k for k in report.METRIC_COLUMNS if k in metrics]
    return ", ".join(f"{k}={metrics[k]:.4f}" for k in keys)


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="eval")
@one_line_errors("selfsup-eval")
def _app(cfg: DictConfig) -> None:
    evaluate(cfg)


def data_key_overrides(argv: list[str]) -> list[str]:
    """``data.<key>=v`` without ``data=<name>`` overrides the run's saved data config: Hydra needs it spelled
    ``+data.<key>=v`` (the eval config has no data node until one is chosen)."""
    if any(a.split("=", 1)[0] in ("data", "+data") for a in argv):
        return argv
    return [f"+{a}" if a.startswith("data.") and "=" in a else a for a in argv]


def main() -> None:
    sys.argv[1:] = data_key_overrides(sys.argv[1:])
    run_hydra_app(_app, "selfsup-eval")


if __name__ == "__main__":
    main()
