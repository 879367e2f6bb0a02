"""Frozen features: extraction (shared by validation tables, ``selfsup-eval`` and the quickstart report), the data
an evaluation runs on, and what ``selfsup-eval`` caches (the cache's layout: :mod:`selfsup.feature_cache`)."""

from __future__ import annotations

import logging
import sys

import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.utils.data import DataLoader, Dataset

from selfsup import checks, feature_cache
from selfsup.data.datasets import AugmentedViews, EvalDataset
from selfsup.data.sources import fingerprint
from selfsup.data.views import ViewAugment
from selfsup.devices import device_of
from selfsup.evaluate.jobs import EvalJob

log = logging.getLogger(__name__)

# Data options that do not change the images a datamodule's evaluation splits yield (left out of the cache key).
_DATA_KEYS_NOT_IN_KEY = (
    "batch_size",
    "num_workers",
    "download",
    "views",
    "seed",
    "subset",
    "verify",
    "skip_bad",
    "views_on_device",
    "resident",
)


@torch.no_grad()
def extract(
    encoder: nn.Module,
    dataset: Dataset,
    batch_size: int = 256,
    num_workers: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = False,
    description: str = "features",
) -> tuple[torch.Tensor, torch.Tensor]:
    """(features (N, F) float32 on the CPU, labels (N,)) of ``encoder`` in eval mode over ``(image, label)`` items
    (images cast to the encoder's dtype: a ``trainer.precision=64-true`` run's encoder is float64)."""
    was_training = encoder.training
    encoder.eval().to(device)
    dtype = next(encoder.parameters()).dtype
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, shuffle=False)
    feats, labels = [], []
    batches = loader
    if progress:
        from rich.progress import track

        batches = track(loader, description=description, total=len(loader))
    for x, y in batches:
        feats.append(encoder(x.to(device, dtype, non_blocking=True)).float().flatten(1).cpu())
        labels.append(torch.as_tensor(y))
    encoder.train(was_training)
    return torch.cat(feats), torch.cat(labels)


class Encoder(nn.Module):
    """Backbone features and projector embeddings in one pass: (B, F + D) = [f ‖ projector(f)]."""

    def __init__(self, backbone: nn.Module, projector: nn.Module | None):
        super().__init__()
        self.backbone, self.projector = backbone, projector

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.backbone(x).flatten(1)  # (B, F)
        return f if self.projector is None else torch.cat([f, self.projector(f)], dim=1)


def eval_data_config(cfg: DictConfig, job: EvalJob) -> dict:
    """The data config to evaluate on: ``data=<name>`` if given, else the run's (``data.<key>=...`` overrides
    either; the run's caps on validation sets do not apply); images at the encoder's size/stats."""
    given = OmegaConf.to_container(cfg.data, resolve=True) if cfg.get("data") is not None else {}
    trained = job.train_config.get("data") or {}
    if "_target_" in given:  # data=<name>: another (transfer) dataset
        missing = sorted(OmegaConf.missing_keys(cfg.data))
        if missing:
            raise ValueError(f"data.{missing[0]} is not set (???): pass data.{missing[0]}=<value>")
        data = given
    elif trained:
        data = {**trained, "eval_train_subset": None, "eval_test_subset": None, **given}
    else:
        raise ValueError(f"data is not set: checkpoint={job.source} saves no data config; pass data=<name>")
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
                    f"{int((labels < 0).sum())} unlabeled images; eval.protocols need labels "
                    "(eval.protocols=[] computes the label-free scores only)"
                )
    return train, test


def _transform_id(ds) -> dict:
    if isinstance(ds, AugmentedViews):
        source = {"n": len(ds.source), "classes": list(ds.source.classes), "content": fingerprint(ds.source)}
        return {"views": ds.q, "rows": ds.rows, "seed": ds.seed, "view": vars(ds.view), "source": source}
    return {
        "size": ds.size,
        "resize": ds.resize,
        "mean": list(ds.mean),
        "std": list(ds.std),
        "n": len(ds),
        "classes": list(ds.source.classes),
        "content": fingerprint(ds.source),
    }


def features(job: EvalJob, data: dict, datasets: dict, cfg: DictConfig) -> dict:
    """``{split: {"backbone": (N, F), "embedding": (N, D), "labels": (N,)}}`` for each ``split → dataset`` of
    ``datasets`` ("train", "test" and, for LiDAR, "lidar"), from the cache when the key (checkpoint + mtime, data
    config, transform, the image files' paths, sizes and mtimes, LiDAR's views) matches."""
    key = {
        "target": job.cache_id,
        "data": {k: v for k, v in data.items() if k not in _DATA_KEYS_NOT_IN_KEY},
        **{split: _transform_id(ds) for split, ds in datasets.items()},
    }
    cache = feature_cache.path_of(job.out_dir, key)
    if cfg.eval.cache:
        try:
            cached = feature_cache.load(cache, key)
            if cached is not None:
                log.info("features from cache %s", cache)
                return cached
        except Exception as e:  # noqa: BLE001 — a damaged cache file is re-extracted
            log.warning("ignoring unreadable feature cache %s (%s)", cache, e)
    encoder = Encoder(job.backbone, job.projector)
    device = device_of(cfg.eval.device, "eval.device")
    width = job.backbone.num_features
    splits = {}
    for split, ds in datasets.items():
        both, labels = extract(
            encoder,
            ds,
            batch_size=cfg.eval.batch_size,
            num_workers=cfg.eval.num_workers,
            device=device,
            progress=sys.stderr.isatty(),
            description=f"{job.name}: {split} features",
        )
        log.info("%s: %s features %s", job.name, split, tuple(both.shape))
        embedding = both[:, width:] if job.projector is not None else both
        splits[split] = feature_cache.split(both[:, :width], embedding, labels)
    encoder.cpu()
    out = feature_cache.contents(key, splits)
    if cfg.eval.cache:
        feature_cache.save(cache, out)
    return out


def lidar_dataset(job: EvalJob, data: dict, train_ds: EvalDataset, cfg: DictConfig) -> AugmentedViews | None:
    """LiDAR's images: ``eval.lidar.views`` augmented views of each of the first ``eval.lidar.images`` training
    images (class by class), drawn as the run's first training view is (at the evaluation image size and
    statistics; SimCLR's defaults for a run without views); None when ``eval.lidar.images`` < 2."""
    n = checks.integer("eval.lidar.images", cfg.eval.lidar.images, minimum=0)
    q = checks.integer("eval.lidar.views", cfg.eval.lidar.views, minimum=2)
    if n < 2:
        return None
    views = (job.train_config.get("views") or {}).get("views") or {}
    first = next(iter(views.values())) if isinstance(views, dict) and views else {}
    kwargs = {k: v for k, v in dict(first).items() if k != "_target_"}
    kwargs.update(size=train_ds.size, mean=train_ds.mean, std=train_ds.std)
    return AugmentedViews(train_ds.source, ViewAugment(**kwargs), n, q, seed=int(cfg.eval.seed))
