"""``selfsup-train recipes=<dataset>/<method> [overrides]``: compose → plan (new run or resume) → build → fit.

The run directory (``hydra.run.dir``) receives ``.hydra/config.yaml`` (the resolved config), ``overrides.yaml``,
``checkpoints/last.ckpt`` (+ ``best.ckpt``) and ``metrics.csv``; a run holds ``.lock`` while it trains.
``resume=true`` continues from ``<run dir>/checkpoints/last.ckpt`` with the config saved in it (same step, LR
schedule and data order); ``ckpt_path=<file>|last`` resumes from an explicit checkpoint. See
``selfsup.runtime.resume`` for which overrides a resume accepts.
"""

from __future__ import annotations

import copy
import json
import logging
import os
from contextlib import nullcontext
from pathlib import Path

import hydra
import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from selfsup.config import CONF_DIR
from selfsup.errors import one_line_errors, run_hydra_app
from selfsup.launch import per_device_batch
from selfsup.loggers import RunCSVLogger, finish_loggers
from selfsup.module import SSLModule
from selfsup.runtime import checkpoint as ckpt_io
from selfsup.runtime.autosave import LastCheckpoint, recover_swaps
from selfsup.runtime.files import atomic_write_text, remove_stale_temps
from selfsup.runtime.lock import RunLock
from selfsup.runtime.resume import Plan, plan, record
from selfsup.runtime.warnings import quiet_known_warnings
from selfsup.strategies import check_sync_batchnorm

log = logging.getLogger("selfsup.train")


def check_trainer(trainer_cfg: DictConfig) -> None:
    """Run lengths Lightning would accept but that train nothing (``max_steps=0``) or that it fails on late."""
    for key, minimum in (("max_steps", -1), ("max_epochs", -1)):
        value = trainer_cfg.get(key)
        if value is None and key == "max_epochs":
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value == 0 or value < minimum:
            raise ValueError(
                f"trainer.{key}={value}: expected a positive integer (or -1: no limit; the other of "
                "trainer.max_steps/max_epochs ends the run)"
            )


def build(cfg: DictConfig):
    """(datamodule, module, trainer) for a composed config — what ``run`` fits and what tests instantiate.

    ``cfg`` is not modified: the per-process batch derived from ``global_batch_size`` goes to the datamodule.
    Bad values fail before the Trainer starts printing.
    """
    check_trainer(cfg.trainer)
    views, objective = instantiate(cfg.views), instantiate(cfg.objective)
    needed = getattr(objective, "num_views", 2)
    if needed > len(views):
        raise ValueError(f"objective uses {needed} views but views has {len(views)} ({views.names}): pick a views "
                         f"config with {needed} (e.g. views=care for objective=care)")
    datamodule = instantiate(cfg.data, views=views, seed=cfg.seed)  # checks its values, loads the splits
    module = SSLModule(
        backbone=instantiate(cfg.backbone),
        projector=instantiate(cfg.projector),
        objective=objective,
        optim=instantiate(cfg.optim),
        num_classes=datamodule.num_classes if cfg.online_probe else 0,
        predictor=instantiate(cfg.predictor) if cfg.predictor is not None else None,
        momentum=instantiate(cfg.momentum) if cfg.momentum is not None else None,
        symmetric=cfg.symmetric,
    )
    callbacks = [instantiate(c) for c in cfg.callbacks.values() if c is not None]
    if sum(isinstance(c, LastCheckpoint) for c in callbacks) != 1:
        raise ValueError("callbacks.last: expected exactly one selfsup.runtime.autosave.LastCheckpoint (it writes "
                         "checkpoints/last.ckpt, which resume and preemption need)")  # fmt: skip
    trainer = instantiate(
        cfg.trainer,
        default_root_dir=str(cfg.run_dir),
        callbacks=callbacks,
        logger=[instantiate(lg, save_dir=str(cfg.run_dir)) for lg in cfg.logger.values() if lg is not None],
        plugins=[ckpt_io.AtomicCheckpointIO()],
        use_distributed_sampler=False,  # GlobalBatchSampler shards the global batch itself
    )
    check_sync_batchnorm(cfg.trainer.get("sync_batchnorm", False), trainer)
    if cfg.get("global_batch_size") is not None:  # per-process batch from nodes x devices x accumulation
        datamodule.batch_size = per_device_batch(cfg.global_batch_size, trainer.world_size,
                                                 trainer.accumulate_grad_batches)  # fmt: skip
    module.run_info = {
        "config": OmegaConf.to_container(cfg, resolve=True),
        "global_batch": datamodule.batch_size * trainer.world_size * trainer.accumulate_grad_batches,
    }
    return datamodule, module, trainer


def check_resumable(p: Plan, module: SSLModule, trainer: L.Trainer) -> None:
    """The resumed checkpoint fits the model built from its config, and the global batch stays what it was."""
    saved, now = p.saved.get("global_batch"), module.run_info["global_batch"]
    if saved is not None and saved != now:
        raise ValueError(
            f"resume: the run trained with {saved} rows a step; now {now} = data.batch_size x "
            f"{trainer.world_size} process(es) x trainer.accumulate_grad_batches={trainer.accumulate_grad_batches}: "
            f"set global_batch_size={saved} (it splits the batch over the processes)"
        )
    if Path(p.ckpt_path).is_file():  # shard directories: DeepSpeed checks the shapes
        ckpt = ckpt_io.load_file(Path(p.ckpt_path), "ckpt_path", mmap=True)
        ckpt_io.check_compatible(module, ckpt, p.ckpt_path)


def env_rank_zero() -> bool:
    """Whether this process is global rank 0 of its job, from the launcher's environment (before any Trainer)."""
    from lightning.fabric.utilities.rank_zero import _get_rank

    node = os.environ.get("NODE_RANK") or os.environ.get("GROUP_RANK") or "0"
    return _get_rank() in (None, 0) and node == "0"


def task_overrides() -> list[str] | None:
    """The command line's overrides of this Hydra job (None outside a Hydra app)."""
    from hydra.core.hydra_config import HydraConfig

    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else None


def prepare_run_dir(run_dir: Path, cfg: DictConfig, p: Plan, overrides: list[str] | None) -> None:
    """With the lock held: finish or undo interrupted checkpoint swaps, delete killed writers' temporary files,
    then write ``.hydra/`` for a new run or append the resume to ``.hydra/resumes.yaml``."""
    recover_swaps(run_dir / "checkpoints")
    for folder in (run_dir, run_dir / "checkpoints", run_dir / ".hydra"):
        for stale in remove_stale_temps(folder):
            log.warning("removed %s, left by a killed write", stale)
    if p.ckpt_path is not None:
        record(run_dir, p, overrides)
        return
    hydra_dir = run_dir / ".hydra"
    atomic_write_text(hydra_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    atomic_write_text(hydra_dir / "overrides.yaml", OmegaConf.to_yaml(OmegaConf.create(overrides or [])))
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        hydra_cfg = OmegaConf.create({"hydra": OmegaConf.to_container(HydraConfig.get(), resolve=False)})
        atomic_write_text(hydra_dir / "hydra.yaml", OmegaConf.to_yaml(hydra_cfg))


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


def run(cfg: DictConfig, overrides: list[str] | None = None) -> float | None:
    """Train one run; returns ``cfg.optimize_metric`` from the final metrics (for sweepers), if set.

    Args:
        cfg: the composed config.
        overrides: the command-line overrides it was composed from (a resume compares them with the saved
            config); None: every key of ``cfg`` counts as given.
    """
    quiet_known_warnings()
    p = plan(cfg, overrides, rank_zero=env_rank_zero())
    cfg = p.cfg
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule, module, trainer = build(cfg)
    if p.ckpt_path is not None:
        check_resumable(p, module, trainer)
    run_dir = Path(cfg.run_dir)
    with RunLock(run_dir) if trainer.is_global_zero else nullcontext():
        if trainer.is_global_zero:
            prepare_run_dir(run_dir, cfg, p, overrides)
        for logger in trainer.loggers:
            if isinstance(logger, RunCSVLogger) and p.ckpt_path is not None:
                logger.keep_before_step = p.step
        backbone_init = copy.deepcopy(module.backbone) if cfg.report_baseline else None
        try:
            trainer.fit(module, datamodule=datamodule, ckpt_path=p.ckpt_path)
        except BaseException:
            finish_loggers(trainer, failed=True)
            raise
        finish_loggers(trainer)
        if cfg.report_baseline and trainer.is_global_zero:
            rows = baseline_table(datamodule, backbone_init, module.backbone)
            atomic_write_text(run_dir / "baseline.json", json.dumps(rows, indent=2))
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
def _app(cfg: DictConfig) -> float | None:
    return run(cfg, task_overrides())


def main() -> None:
    run_hydra_app(_app, "selfsup-train")


if __name__ == "__main__":
    main()
