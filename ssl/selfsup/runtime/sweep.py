"""Sweeps: Hydra launchers (local, SLURM) check every job of a sweep before anything is submitted, and sweep run
directories are named by the swept keys only. (Preemption and requeue: ``selfsup.runtime.preemption``.)
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from selfsup.runtime import compat

# -- launchers: check every job before anything is submitted ------------------------------------------------------
PartsCheck = Callable[[DictConfig], None]
_parts_check: PartsCheck | None = None  # set by the command that runs the sweep (checking_parts)


@contextmanager
def checking_parts(check: PartsCheck) -> Iterator[None]:
    """While inside, a sweep's pre-launch check (:class:`SweepCheck`) runs ``check(job_config)`` on every job: the
    command's own checks of its parts (``selfsup-train`` passes ``selfsup.train.build.check_parts``), so this module
    needs nothing from the command."""
    global _parts_check
    previous, _parts_check = _parts_check, check
    try:
        yield
    finally:
        _parts_check = previous


def check_job(cfg: DictConfig, check_parts: PartsCheck, overrides: Sequence[str] = ()) -> None:
    """The per-job checks run for every job of a sweep (composing it already refused unknown keys): its parts
    built from its values by ``check_parts`` (``objective.temperature=0`` fails here, not after the earlier points
    trained), then the launcher's settings."""
    from omegaconf import OmegaConf, read_write

    job = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
    with read_write(job):
        job.run_dir = "<sweep point>"  # ${hydra:runtime.output_dir}: known once the point runs; nothing is written
    check_parts(job)
    launcher = cfg.get("launcher") or {}
    if launcher.get("name") == "slurm":
        if not launcher.get("partition"):
            raise ValueError(
                f"launcher.partition={launcher.get('partition')}: the SLURM launcher needs a partition "
                f"(e.g. launcher.partition=gpu; `sinfo -s` lists them)"
            )
        gpus = launcher.get("gpus_per_node") or 0
        limit = launcher.get("max_gpus_per_node")
        if limit is None and shutil.which("sinfo"):
            limit = partition_gpus(str(launcher.partition))
        if limit is not None and gpus > limit:
            raise ValueError(
                f"launcher.gpus_per_node={gpus}: more GPUs than a node of partition {launcher.partition} has "
                f"({limit}); expected at most {limit}"
            )


def partition_gpus(partition: str) -> int | None:
    """Most GPUs (gres gpu[:type]:N) on one node of ``partition``, from ``sinfo``; None when unknown."""
    try:
        out = subprocess.run(["sinfo", "-h", "-p", partition, "-o", "%G"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    if not out.stdout.strip():
        raise ValueError(f"launcher.partition={partition}: no such partition (`sinfo -s` lists them)")
    counts = [int(m) for m in re.findall(r"gpu(?::[^:,()]+)?:(\d+)", out.stdout)]
    return max(counts) if counts else 0


class SweepCheck(Callback):
    """Hydra callback (``hydra.callbacks``, set by ``conf/launcher/*``): before a multirun launches anything, compose
    every job of the sweep and run :func:`check_job` on it, with the parts check of the command running the sweep
    (:func:`checking_parts`). Bad input prints one line and exits with status 2 (``selfsup.runtime.errors.
    exit_with_error``) — nothing is submitted half-way. Optuna's search space is checked by composing its keys'
    first choices.

    It also names each job's run directory by the swept keys only (:func:`name_runs_by_swept_keys`)."""

    def on_multirun_start(self, config, **kwargs) -> None:
        from selfsup.runtime.errors import exit_with_error, user_error

        try:
            if _parts_check is None:
                raise RuntimeError(
                    "hydra.callbacks: SweepCheck has no parts check; run the sweep through a command that sets one "
                    "(selfsup-train -m ...; selfsup.runtime.sweep.checking_parts)"
                )
            name_runs_by_swept_keys(config)
            for overrides in sweep_jobs(config):
                check_job(_loader().load_sweep_config(config, list(overrides)), _parts_check, overrides)
        except Exception as e:  # noqa: BLE001 — composition errors and our ValueErrors both end here
            if os.environ.get("HYDRA_FULL_ERROR") == "1":
                raise
            exit_with_error(user_error(e) or e)


def name_runs_by_swept_keys(config) -> None:
    """Leave the command line's fixed overrides out of ``hydra.job.override_dirname`` (the job directory name):
    ``selfsup-train -m data.root=/a/b/c optim.lr=0.1,0.2`` runs in ``<sweep dir>/optim.lr=0.1``, not in a
    directory nested by the path's slashes. Each job's config is composed again from the master config's Hydra
    overrides, so the exclusion goes there."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import read_write

    parsed = OverridesParser.create().parse_overrides(list(config.hydra.overrides.task))
    excluded = list(config.hydra.job.config.override_dirname.exclude_keys)
    excluded += [o.key_or_group for o in parsed if not o.is_sweep_override() and o.key_or_group not in excluded]
    quoted = ",".join("'" + k.replace("\\", "\\\\").replace("'", "\\'") + "'" for k in excluded)
    with read_write(config.hydra.overrides):
        config.hydra.overrides.hydra.append(f"hydra.job.config.override_dirname.exclude_keys=[{quoted}]")


def _loader():
    from hydra.core.global_hydra import GlobalHydra

    return GlobalHydra.instance().config_loader()


def sweep_jobs(config) -> list[list[str]]:
    """Each job's overrides: the command line's sweeps expanded (basic sweeper), or for Optuna the command line
    plus the first choice of every ``hydra.sweeper.params`` entry (its keys must exist too)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    parser = OverridesParser.create()
    task = list(OmegaConf.to_container(config.hydra.overrides.task, resolve=False))
    params = config.hydra.sweeper.get("params") or {}
    if params:  # Optuna: choice(...)/interval(...)/range(...) -> one representative value per key
        for key, value in params.items():
            override = parser.parse_override(f"{key}={value}")
            if override.is_sweep_override():
                first = (
                    next(iter(override.sweep_iterator())) if override.is_discrete_sweep() else override.value().start
                )
            else:
                first = override.value()
            task.append(f"{key}={first}")
    return compat.split_sweep(parser.parse_overrides(task))
