"""``selfsup-eval checkpoint=<ckpt | run dir | sweep dir | random> [data=<name>] [eval.*]``.

Frozen features of the train and held-out splits are extracted once (cached on disk, keyed by checkpoint path +
mtime, data config and transform), then: RankMe of the embeddings and of the backbone features (float64, on a seeded
sample of ``eval.rankme_samples`` training rows — the paper's 25,600), weighted kNN top-1 (k=200 and 20, T=0.07)
and a linear probe on backbone features (``eval.protocol=fast``: full-batch L-BFGS with an L2 sweep; ``sgd``: the
standard SGD protocol). Writes ``metrics.json`` atomically plus ``report.md`` / ``report.html`` next to the run.

A sweep directory (run dirs below it, each with ``checkpoints/last.ckpt`` and ``.hydra/``) is evaluated run by
run, then ranked by RankMe with each run's overridden hyper-parameters and the Spearman / Kendall correlation
between RankMe and probe accuracy (``sweep.json`` + reports in the sweep dir).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import hydra
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from selfsup import report
from selfsup.config import CONF_DIR
from selfsup.errors import one_line_errors, run_hydra_app
from selfsup.features import extract
from selfsup.metrics import knn_top1, linear_probe, linear_probe_sgd, rankme, singular_values
from selfsup.runtime import checkpoint as ckpt_io
from selfsup.runtime.files import atomic_write
from selfsup.runtime.warnings import quiet_known_warnings

log = logging.getLogger("selfsup.eval")

PROTOCOLS = ("fast", "sgd")
# Data options that do not change the images a datamodule's evaluation splits yield (left out of the cache key).
_DATA_KEYS_NOT_IN_KEY = ("batch_size", "num_workers", "download", "views", "seed", "subset")


@dataclass
class Target:
    """One encoder to evaluate: where it came from, its training config and where its results go."""

    name: str
    out_dir: Path
    backbone: nn.Module
    projector: nn.Module | None
    train_config: dict
    source: str  # checkpoint file, or "random"
    cache_id: dict = field(default_factory=dict)
    overrides: list[str] = field(default_factory=list)


class Encoder(nn.Module):
    """Backbone features and projector embeddings in one pass: (B, F + D) = [f ‖ projector(f)]."""

    def __init__(self, backbone: nn.Module, projector: nn.Module | None):
        super().__init__()
        self.backbone, self.projector = backbone, projector

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.backbone(x).flatten(1)  # (B, F)
        return f if self.projector is None else torch.cat([f, self.projector(f)], dim=1)


# -- targets -------------------------------------------------------------------------------------------------------


def run_dir_of(ckpt_path: Path) -> Path:
    """``<run>/checkpoints/x.ckpt`` → ``<run>``; a checkpoint elsewhere → its folder."""
    return ckpt_path.parent.parent if ckpt_path.parent.name == "checkpoints" else ckpt_path.parent


def find_runs(sweep_dir: Path) -> list[Path]:
    """Run directories (holding ``checkpoints/last.ckpt``) at any depth below ``sweep_dir``, sorted."""
    found = {p.parent.parent for p in sweep_dir.rglob("last.ckpt") if p.parent.name == "checkpoints"}
    return sorted(found, key=lambda p: [int(s) if s.isdigit() else s for s in p.relative_to(sweep_dir).parts])


def _read_overrides(run_dir: Path) -> list[str]:
    path = run_dir / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return []
    return [str(o) for o in (OmegaConf.to_container(OmegaConf.load(path)) or [])]


def load_checkpoint_target(path: Path, name: str, out_dir: Path) -> Target:
    """Rebuild backbone + projector of a selfsup checkpoint (one-line errors for other files)."""
    ckpt = ckpt_io.load(path, "checkpoint")
    config = ckpt["selfsup"]["config"]
    if not isinstance(config, dict) or "backbone" not in config:
        raise ValueError(f"checkpoint={path}: the saved training config has no 'backbone' entry")
    try:
        backbone = ckpt_io.backbone_from(ckpt, path)
        projector = None
        if config.get("projector") is not None:
            projector = instantiate(config["projector"])(in_dim=backbone.num_features)
            state = {k[len("projector.") :]: v for k, v in ckpt["state_dict"].items() if k.startswith("projector.")}
            projector.load_state_dict(state)
            projector.eval()
    except RuntimeError as e:  # load_state_dict: missing / unexpected / mismatched keys
        first = str(e).strip().splitlines()[0]
        raise ValueError(f"checkpoint={path}: weights do not fit the saved architecture ({first})") from None
    stat = path.stat()
    cache_id = {"checkpoint": str(path.resolve()), "mtime_ns": stat.st_mtime_ns, "size": stat.st_size}
    run_dir = run_dir_of(path)
    return Target(name, out_dir, backbone, projector, config, str(path), cache_id, _read_overrides(run_dir))


def random_target(cfg: DictConfig, out_dir: Path) -> Target:
    torch.manual_seed(cfg.eval.seed)
    backbone_cfg = OmegaConf.to_container(cfg.backbone, resolve=True)
    backbone = instantiate(cfg.backbone).eval()
    config = {"backbone": backbone_cfg}
    cache_id = {"checkpoint": "random", "backbone": backbone_cfg, "seed": int(cfg.eval.seed)}
    return Target(f"random {backbone_cfg.get('name', '')}".strip(), out_dir, backbone, None, config, "random", cache_id)


def resolve_targets(cfg: DictConfig) -> tuple[list[Target], Path | None]:
    """The encoders named by ``checkpoint=`` (built now, so bad input fails before anything is written) and the
    sweep directory when it names one."""
    if OmegaConf.is_missing(cfg, "checkpoint") or cfg.checkpoint in (None, ""):
        raise ValueError("checkpoint is not set: expected checkpoint=<file.ckpt | run dir | sweep dir | random>")
    out = Path(cfg.out) if cfg.out is not None else None
    if str(cfg.checkpoint) == "random":
        name = str(OmegaConf.select(cfg, "backbone.name", default="encoder")).replace("/", "_")
        return [random_target(cfg, out or Path("runs") / f"random-{name}")], None
    path = Path(str(cfg.checkpoint)).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"checkpoint={path}: no such file or directory")
    if path.is_file() or ckpt_io.is_sharded(path) or (path / "checkpoints" / "last.ckpt").exists():
        ckpt = ckpt_io.resolve(path, "checkpoint")
        return [load_checkpoint_target(ckpt, run_dir_of(ckpt).name, out or run_dir_of(ckpt))], None
    runs = find_runs(path)
    if not runs:
        raise FileNotFoundError(
            f"checkpoint={path}: a directory without checkpoints/last.ckpt and without run dirs below it; expected "
            "a .ckpt file, a run dir or a sweep dir"
        )
    targets = []
    for run in runs:
        name = str(run.relative_to(path))
        run_out = out / name if out is not None else run
        targets.append(load_checkpoint_target(run / "checkpoints" / "last.ckpt", name, run_out))
    return targets, path


# -- data and features ---------------------------------------------------------------------------------------------


def eval_data_config(cfg: DictConfig, target: Target) -> dict:
    """The data config to evaluate on: ``data=<name>`` if given, else the run's (``data.<key>=...`` overrides
    either; the run's caps on validation sets do not apply); images at the encoder's size/stats."""
    given = OmegaConf.to_container(cfg.data, resolve=True) if cfg.get("data") is not None else {}
    trained = target.train_config.get("data") or {}
    if "_target_" in given:  # data=<name>: another (transfer) dataset
        missing = sorted(OmegaConf.missing_keys(cfg.data))
        if missing:
            raise ValueError(f"data.{missing[0]} is not set (???): pass data.{missing[0]}=<value>")
        data = given
    elif trained:
        data = {**trained, "eval_train_subset": None, "eval_test_subset": None, **given}
    else:
        raise ValueError(f"data is not set: checkpoint={target.source} saves no data config; pass data=<name>")
    if cfg.eval.image_size is not None:
        data["image_size"] = int(cfg.eval.image_size)
    elif "image_size" in trained:
        data["image_size"] = trained["image_size"]
    for key in ("mean", "std"):  # the statistics the encoder was trained with
        if key in trained:
            data[key] = trained[key]
    data.pop("views", None)
    return data


def build_eval_datasets(data: dict, need_labels: bool):
    """(train, test) evaluation datasets of a data config; one-line errors for missing splits or labels."""
    try:
        dm = instantiate(data, views=None, num_workers=0, _convert_="all")
    except InstantiationException as e:
        cause = e.__cause__
        if isinstance(cause, ValueError | FileNotFoundError):
            raise cause from None
        raise ValueError(f"data: cannot build {data.get('_target_')}: {str(e).splitlines()[-1]}") from None
    train, test = dm.eval_datasets()
    if need_labels:
        for split, ds in (("train", train), ("held-out", test)):
            labels = ds.source.labels
            if (labels < 0).any():
                raise ValueError(
                    f"data={data.get('_target_')} root={data.get('root')}: the {split} split has "
                    f"{int((labels < 0).sum())} unlabeled images; kNN and linear probes need labels "
                    "(eval.knn=false eval.linear=false computes RankMe only)"
                )
    return train, test


def _transform_id(ds) -> dict:
    return {
        "size": ds.size, "resize": ds.resize, "mean": list(ds.mean), "std": list(ds.std), "n": len(ds),
        "classes": list(ds.source.classes),
    }  # fmt: skip


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(name)
    except RuntimeError:
        raise ValueError(f"eval.device={name!r}: expected auto, cpu, cuda or cuda:<i>") from None


def features(target: Target, data: dict, train_ds, test_ds, cfg: DictConfig) -> dict:
    """``{"train"|"test": {"backbone": (N, F), "embedding": (N, D), "labels": (N,)}}``, from the cache when the
    key (checkpoint + mtime, data, transform) matches."""
    key_parts = {
        "target": target.cache_id,
        "data": {k: v for k, v in data.items() if k not in _DATA_KEYS_NOT_IN_KEY},
        "train": _transform_id(train_ds),
        "test": _transform_id(test_ds),
    }
    digest = hashlib.sha256(json.dumps(key_parts, sort_keys=True, default=str).encode()).hexdigest()[:20]
    cache = target.out_dir / "eval_cache" / f"{digest}.pt"
    if cfg.eval.cache and cache.is_file():
        try:
            cached = torch.load(cache, map_location="cpu", weights_only=True)
            if cached.get("key") == json.loads(json.dumps(key_parts, sort_keys=True, default=str)):
                log.info("features from cache %s", cache)
                return cached
        except Exception as e:  # noqa: BLE001 — a damaged cache file is re-extracted
            log.warning("ignoring unreadable feature cache %s (%s)", cache, e)
    encoder = Encoder(target.backbone, target.projector)
    device = _device(cfg.eval.device)
    width = target.backbone.num_features
    out = {"key": json.loads(json.dumps(key_parts, sort_keys=True, default=str))}
    for split, ds in (("train", train_ds), ("test", test_ds)):
        both, labels = extract(
            encoder, ds, batch_size=cfg.eval.batch_size, num_workers=cfg.eval.num_workers, device=device,
            progress=sys.stderr.isatty(), description=f"{target.name}: {split} features",
        )  # fmt: skip
        log.info("%s: %s features %s", target.name, split, tuple(both.shape))
        embedding = both[:, width:] if target.projector is not None else both
        out[split] = {"backbone": both[:, :width].contiguous(), "embedding": embedding.contiguous(), "labels": labels}
    encoder.cpu()
    if cfg.eval.cache:
        atomic_write(cache, lambda f: torch.save(out, f))
    return out


# -- probes --------------------------------------------------------------------------------------------------------


class _Augmented(torch.utils.data.Dataset):
    """Training images for the SGD protocol: random-resized crop (0.08–1) + horizontal flip, normalised."""

    def __init__(self, eval_ds):
        from torchvision.transforms import v2

        self.source = eval_ds.source
        self.transform = v2.Compose([
            v2.RandomResizedCrop(eval_ds.size, antialias=True), v2.RandomHorizontalFlip(),
            v2.ToDtype(torch.float32, scale=True), v2.Normalize(eval_ds.mean, eval_ds.std),
        ])  # fmt: skip

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int):
        return self.transform(self.source.image(i)), self.source.labels[i]


def sgd_probe_augmented(backbone: nn.Module, train_ds, feats: dict, cfg: DictConfig, num_classes: int) -> dict:
    """Standard linear evaluation: frozen backbone (eval mode), BatchNorm without affine + linear head trained by
    SGD with momentum and a cosine schedule on augmented images; scored on the cached centre-crop test features."""
    import torch.nn.functional as F

    opts, device = cfg.eval.sgd, _device(cfg.eval.device)
    t0 = time.perf_counter()
    torch.manual_seed(cfg.eval.seed)
    width = backbone.num_features
    head = nn.Sequential(nn.BatchNorm1d(width, affine=False), nn.Linear(width, num_classes))
    head.to(device)
    backbone.eval().to(device)
    loader = torch.utils.data.DataLoader(
        _Augmented(train_ds), batch_size=opts.batch_size, shuffle=True, num_workers=cfg.eval.num_workers,
        drop_last=len(train_ds) > opts.batch_size,
    )  # fmt: skip
    opt = torch.optim.SGD(
        head.parameters(), lr=opts.lr * opts.batch_size / 256, momentum=opts.momentum, weight_decay=opts.weight_decay
    )
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=opts.epochs * len(loader))
    for epoch in range(opts.epochs):
        for x, y in loader:
            with torch.no_grad():
                f = backbone(x.to(device)).flatten(1)
            loss = F.cross_entropy(head(f), y.to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        log.info("sgd probe epoch %d/%d loss %.4f", epoch + 1, opts.epochs, loss.item())
    head.eval()
    backbone.cpu()
    with torch.no_grad():
        pred = head(feats["test"]["backbone"].to(device)).argmax(1).cpu()
    head.cpu()
    return {"top1": float((pred == feats["test"]["labels"]).double().mean()), "seconds": time.perf_counter() - t0}


def evaluate_target(target: Target, cfg: DictConfig) -> tuple[dict, dict]:
    """(metrics, artefacts for the report) of one encoder."""
    e = cfg.eval
    if e.protocol not in PROTOCOLS:
        raise ValueError(f"eval.protocol={e.protocol!r}: expected one of {PROTOCOLS}")
    need_labels = bool(e.knn or e.linear)
    data = eval_data_config(cfg, target)
    train_ds, test_ds = build_eval_datasets(data, need_labels)
    t0 = time.perf_counter()
    feats = features(target, data, train_ds, test_ds, cfg)
    timings = {"features": time.perf_counter() - t0}
    tr, te = feats["train"], feats["test"]

    n = tr["embedding"].shape[0]
    rows = torch.randperm(n, generator=torch.Generator().manual_seed(e.seed))[: min(int(e.rankme_samples), n)]
    sv = {"embedding": singular_values(tr["embedding"][rows]), "backbone": singular_values(tr["backbone"][rows])}
    metrics = {
        "rankme": rankme(tr["embedding"][rows]).item(),
        "rankme_backbone": rankme(tr["backbone"][rows]).item(),
    }
    if e.knn:
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
    if e.linear:
        t = time.perf_counter()
        if e.protocol == "fast":
            probe = linear_probe(
                tr["backbone"], tr["labels"], te["backbone"], te["labels"], **OmegaConf.to_container(e.probe)
            )
            metrics.update(linear_top1=probe["top1"], linear_val_top1=probe["val_top1"], linear_l2=probe["l2"])
        elif e.sgd.augment:
            num_classes = int(max(tr["labels"].max(), te["labels"].max())) + 1
            probe = sgd_probe_augmented(target.backbone, train_ds, feats, cfg, num_classes)
            metrics["linear_top1"] = probe["top1"]
        else:
            sgd = {k: v for k, v in OmegaConf.to_container(e.sgd).items() if k != "augment"}
            probe = linear_probe_sgd(tr["backbone"], tr["labels"], te["backbone"], te["labels"], seed=e.seed, **sgd)
            metrics["linear_top1"] = probe["top1"]
        timings["linear"] = time.perf_counter() - t
    metrics.update(
        protocol=e.protocol,
        num_train=n,
        num_test=te["embedding"].shape[0],
        backbone_dim=tr["backbone"].shape[1],
        embedding_dim=tr["embedding"].shape[1],
        rankme_samples=len(rows),
        checkpoint=target.source,
        data=data.get("_target_"),
        data_root=data.get("root"),
        seconds=timings,
    )
    return metrics, {"singular_values": sv, "test_embedding": te["embedding"], "test_labels": te["labels"],
                     "classes": list(test_ds.source.classes), "data": data}  # fmt: skip


def write_outputs(target: Target, metrics: dict, artefacts: dict, cfg: DictConfig) -> None:
    """Reports first, metrics.json last (atomic): a metrics.json exists only for a finished evaluation."""
    spectrum = embedding_map = None
    if cfg.eval.plots:
        spectrum = report.spectrum_png(artefacts["singular_values"])
        embedding_map = report.embedding_map_png(
            artefacts["test_embedding"], artefacts["test_labels"], artefacts["classes"], cfg.eval.map_points,
            cfg.eval.seed,
        )  # fmt: skip
    curves = None
    csv_path = run_dir_of(Path(target.source)) / "metrics.csv" if target.source != "random" else None
    if cfg.eval.plots and csv_path is not None and csv_path.is_file():
        curves = report.curves_png(report.read_metrics_csv(csv_path))
    details = {"overrides": target.overrides, "data": artefacts["data"], "eval": OmegaConf.to_container(cfg.eval)}
    report.write_run_report(target.out_dir, f"selfsup-eval: {target.name}", metrics, spectrum, embedding_map, details,
                            curves)  # fmt: skip
    report.write_json(target.out_dir / "metrics.json", metrics)


def evaluate(cfg: DictConfig) -> dict:
    """Evaluate every target of ``cfg.checkpoint``; returns the metrics (a sweep: the ranking summary)."""
    quiet_known_warnings()
    targets, sweep_dir = resolve_targets(cfg)
    results, metrics = [], {}
    for target in targets:
        log.info("evaluating %s (%s)", target.name, target.source)
        metrics, artefacts = evaluate_target(target, cfg)
        write_outputs(target, metrics, artefacts, cfg)
        log.info("%s: %s", target.name, _summary(metrics))
        results.append({"name": target.name, "overrides": target.overrides, **metrics})
    if sweep_dir is None:
        return metrics
    out = Path(cfg.out) if cfg.out is not None else sweep_dir
    summary = report.sweep_summary(results)
    report.write_sweep_report(out, f"selfsup-eval sweep: {sweep_dir}", summary)
    report.write_json(out / "sweep.json", summary)
    for acc, by in summary["correlations"].items():
        c = by.get("rankme", {})
        log.info("RankMe vs %s: Spearman %.3f, Kendall %.3f (%d runs)", acc, c.get("spearman", math.nan),
                 c.get("kendall", math.nan), c.get("n", 0))  # fmt: skip
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
