"""``selfsup-train recipes=<dataset>/<method> [overrides]``: compose → instantiate → fit.

The run directory (``hydra.run.dir``) receives ``.hydra/config.yaml``, ``checkpoints/last.ckpt`` (+ best and
periodic ones) and ``metrics.csv``. ``resume=true`` continues from ``<run dir>/checkpoints/last.ckpt`` when it
exists (same step, LR schedule and data order); ``ckpt_path=<file>|last`` resumes from an explicit checkpoint.
"""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path

import hydra
import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from selfsup import checkpoint as ckpt_io
from selfsup.config import CONF_DIR
from selfsup.errors import one_line_errors
from selfsup.launch import PreemptionCheckpoint, per_device_batch
from selfsup.loggers import RunCSVLogger
from selfsup.module import SSLModule
from selfsup.strategies import check_sync_batchnorm, sharded_global_step

log = logging.getLogger("selfsup.train")


def build(cfg: DictConfig):
    """(datamodule, module, trainer) for a composed config — what ``run`` fits and what tests instantiate."""
    views, objective = instantiate(cfg.views), instantiate(cfg.objective)
    needed = getattr(objective, "num_views", 2)
    if needed > len(views):
        raise ValueError(f"objective uses {needed} views but views has {len(views)} ({views.names}): pick a views "
                         f"config with {needed} (e.g. views=care for objective=care)")
    run_dir = Path(cfg.run_dir)
    last = run_dir / "checkpoints" / "last.ckpt"
    trainer = instantiate(
        cfg.trainer,
        default_root_dir=str(run_dir),
        callbacks=[*(instantiate(c) for c in cfg.callbacks.values() if c is not None), PreemptionCheckpoint(last)],
        logger=[instantiate(lg, save_dir=str(run_dir)) for lg in cfg.logger.values() if lg is not None],
        plugins=[ckpt_io.AtomicCheckpointIO()],
        use_distributed_sampler=False,  # GlobalBatchSampler shards the global batch itself
    )
    check_sync_batchnorm(cfg.trainer.get("sync_batchnorm", False), trainer)
    if cfg.get("global_batch_size") is not None:  # per-process batch from nodes x devices x accumulation
        cfg.data.batch_size = per_device_batch(cfg.global_batch_size, trainer.world_size,
                                               trainer.accumulate_grad_batches)  # fmt: skip
    datamodule = instantiate(cfg.data, views=views, seed=cfg.seed)
    module = SSLModule(
        backbone=instantiate(cfg.backbone),
        projector=instantiate(cfg.projector),
        objective=objective,
        optim=instantiate(cfg.optim),
        num_classes=datamodule.num_classes if cfg.online_probe else 0,
        predictor=instantiate(cfg.predictor) if cfg.predictor is not None else None,
        momentum=instantiate(cfg.momentum) if cfg.momentum is not None else None,
        symmetric=cfg.symmetric,
        run_config=OmegaConf.to_container(cfg, resolve=True),
    )
    return datamodule, module, trainer


def resume_path(cfg: DictConfig) -> str | None:
    """The checkpoint to continue from, or None for a new run (refused where it would overwrite one)."""
    last = Path(cfg.run_dir) / "checkpoints" / "last.ckpt"
    if cfg.ckpt_path is not None:
        path = last if str(cfg.ckpt_path) == "last" else Path(cfg.ckpt_path)
        if not path.is_file():
            raise FileNotFoundError(f"ckpt_path={cfg.ckpt_path}: no checkpoint at {path}")
        return str(path)
    if cfg.resume:
        if last.exists():  # a file, or a directory of shards (DeepSpeed)
            log.info("resuming from %s", last)
            return str(last)
        log.info("resume=true but %s does not exist yet: starting a new run", last)
    elif last.exists():
        raise ValueError(
            f"hydra.run.dir={cfg.run_dir} already holds a run ({last}): pass resume=true to continue it "
            "or choose another hydra.run.dir"
        )
    return None


def baseline_table(datamodule, backbone_init, backbone_trained) -> dict:
    """kNN top-1 and RankMe of the encoder at random init versus trained, on the held-out split."""
    from rich.console import Console
    from rich.table import Table

    from selfsup.features import extract
    from selfsup.metrics import knn_top1, rankme

    train_ds, test_ds = datamodule.eval_datasets()
    rows = {}
    for name, encoder in (("random init", backbone_init), ("trained", backbone_trained)):
        f_train, y_train = extract(encoder, train_ds)
        f_test, y_test = extract(encoder, test_ds)
        rows[name] = {"knn_top1": knn_top1(f_train, y_train, f_test, y_test), "rankme": rankme(f_test).item()}
    table = Table(title="Encoder on the held-out split (kNN k=200, T=0.07; RankMe of backbone features)")
    for col in ("encoder", "kNN top-1", "RankMe"):
        table.add_column(col, justify="right")
    for name, m in rows.items():
        table.add_row(name, f"{100 * m['knn_top1']:.1f}%", f"{m['rankme']:.1f}")
    Console().print(table)
    return rows


def run(cfg: DictConfig) -> float | None:
    """Train one run; returns ``cfg.optimize_metric`` from the final metrics (for sweepers), if set."""
    L.seed_everything(cfg.seed, workers=True)
    datamodule, module, trainer = build(cfg)
    ckpt_path = resume_path(cfg)
    if ckpt_path is not None:
        if Path(ckpt_path).is_file():
            ckpt = ckpt_io.load(ckpt_path, "ckpt_path")
            ckpt_io.check_compatible(module, ckpt, ckpt_path)
        else:  # a directory of shards (DeepSpeed): its strategy checks the shapes
            ckpt = {"global_step": sharded_global_step(ckpt_path)}
        for logger in trainer.loggers:
            if isinstance(logger, RunCSVLogger):
                logger.keep_before_step = ckpt["global_step"]
    backbone_init = copy.deepcopy(module.backbone) if cfg.report_baseline else None
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    if cfg.report_baseline and trainer.is_global_zero:
        rows = baseline_table(datamodule, backbone_init, module.backbone)
        (Path(cfg.run_dir) / "baseline.json").write_text(json.dumps(rows, indent=2))
    if cfg.optimize_metric is not None:
        value = trainer.callback_metrics.get(cfg.optimize_metric)
        if value is None:
            raise ValueError(
                f"optimize_metric={cfg.optimize_metric}: not logged; have {sorted(trainer.callback_metrics)}"
            )
        return float(value)
    return None


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")
@one_line_errors("selfsup-train")
def main(cfg: DictConfig) -> float | None:
    return run(cfg)


if __name__ == "__main__":
    main()
