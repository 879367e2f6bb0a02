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
from omegaconf import DictConfig, OmegaConf

from selfsup.config import CONF_DIR
from selfsup.runtime import checkpoint as ckpt_io
from selfsup.runtime import compat
from selfsup.runtime.autosave import recover_swaps
from selfsup.runtime.errors import one_line_errors, run_hydra_app
from selfsup.runtime.files import atomic_write_text, remove_stale_temps
from selfsup.runtime.lock import RunLock
from selfsup.runtime.loggers import RunCSVLogger, finish_loggers
from selfsup.runtime.preemption import Preempted
from selfsup.runtime.resume import Plan, plan, record, written_in
from selfsup.runtime.sweep import checking_parts
from selfsup.runtime.warnings import quiet_known_warnings
from selfsup.train import init_from
from selfsup.train.build import build, check_parts
from selfsup.train.module import SSLModule

log = logging.getLogger(__name__)


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
    node = os.environ.get("NODE_RANK") or os.environ.get("GROUP_RANK") or "0"
    return compat.env_rank() in (None, 0) and node == "0"


def task_overrides() -> list[str] | None:
    """The command line's overrides of this Hydra job (None outside a Hydra app)."""
    from hydra.core.hydra_config import HydraConfig

    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else None


def prepare_run_dir(run_dir: Path, cfg: DictConfig, p: Plan, overrides: list[str] | None) -> None:
    """With the lock held: finish or undo interrupted checkpoint swaps, delete killed writers' temporary files,
    then write ``.hydra/`` for a new run (or one continued from a checkpoint outside ``run_dir``) and append a
    resume to ``.hydra/resumes.yaml``."""
    recover_swaps(run_dir / "checkpoints")
    for folder in (run_dir, run_dir / "checkpoints", run_dir / ".hydra"):
        for stale in remove_stale_temps(folder):
            log.warning("removed %s, left by a killed write", stale)
    hydra_dir = run_dir / ".hydra"
    if p.ckpt_path is not None:
        record(run_dir, p, overrides)
        if written_in(run_dir, p.ckpt_path):
            return  # this run's own checkpoint: its .hydra/ stays
    # a new run, or another run's checkpoint continued here: the config it trains with
    atomic_write_text(hydra_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    atomic_write_text(hydra_dir / "overrides.yaml", OmegaConf.to_yaml(OmegaConf.create(overrides or [])))
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        hydra_cfg = OmegaConf.create({"hydra": OmegaConf.to_container(HydraConfig.get(), resolve=False)})
        atomic_write_text(hydra_dir / "hydra.yaml", OmegaConf.to_yaml(hydra_cfg))


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
    log.info("run directory %s", Path(cfg.run_dir).resolve())  # stdout and <run dir>/train.log (conf/train.yaml)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule, module, trainer = build(cfg, resumed=p.saved if p.ckpt_path is not None else None)
    if p.ckpt_path is not None:
        check_resumable(p, module, trainer)
    run_dir = Path(cfg.run_dir)
    with RunLock(run_dir) if trainer.is_global_zero else nullcontext():
        if trainer.is_global_zero:
            prepare_run_dir(run_dir, cfg, p, overrides)
            if p.ckpt_path is None:  # a new run: where its weights came from (a resumed run keeps its record)
                init_from.write_record(run_dir, module.run_info.get("init_from"))
        for logger in trainer.loggers:
            if isinstance(logger, RunCSVLogger) and p.ckpt_path is not None:
                logger.keep_before_step = p.step
        backbone_init = copy.deepcopy(module.backbone) if cfg.report_baseline else None
        try:
            trainer.fit(module, datamodule=datamodule, ckpt_path=p.ckpt_path)
        except BaseException as e:
            finish_loggers(trainer, failed=not isinstance(e, Preempted))  # a preempted run continues later
            raise
        finish_loggers(trainer)
        if cfg.report_baseline and trainer.is_global_zero:
            from selfsup.evaluate.baseline import baseline_table

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


PROG = "selfsup-train"


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")
@one_line_errors(PROG)
def _app(cfg: DictConfig) -> float | None:
    return run(cfg, task_overrides())


def main() -> None:
    # warnings.warn (Lightning's among them) goes to the py.warnings logger: stderr as before, and train.log
    logging.captureWarnings(True)
    try:
        with checking_parts(check_parts):  # a sweep (-m) builds every point's parts before the first trains
            run_hydra_app(_app, PROG)
    finally:
        logging.captureWarnings(False)


if __name__ == "__main__":
    main()
