"""Scale-out glue: preemption-safe checkpoints, the global batch over nodes x devices, and Hydra launchers that
check every job of a sweep before anything is submitted.

Preemption (``PreemptionCheckpoint``): SIGUSR1 (``sbatch --signal=USR1@120``), SIGUSR2 (submitit's time-limit
signal) and SIGTERM (``scontrol requeue``, preemption, ``scancel``, ``kill``) only set a flag. At the end of the
current optimiser step every rank agrees on it, ``<run dir>/checkpoints/last.ckpt`` is written (atomically, the same
state a periodic mid-epoch checkpoint holds) and the run stops with ``Preempted``. Then:

- under submitit (``hydra/launcher=slurm``): submitit's own handler for the signal runs — it calls the launcher's
  ``checkpoint()`` (resubmit the same job) and requeues; the job restarts with the same overrides and run directory;
- under ``sbatch``/``srun`` (``slurm/train.sbatch``): on SIGUSR1 rank 0 calls ``scontrol requeue $SLURM_JOB_ID``;
  on SIGTERM SLURM itself requeues (``scontrol requeue``, preemption with ``PreemptMode=REQUEUE``) or ends the job;
- anywhere else the process exits with status 128 + signal number.

The restarted job must run with ``resume=true`` (the SLURM launcher and the sbatch template set it), which continues
from ``last.ckpt`` bit for bit, mid-epoch included. Lightning's own SLURM auto-requeue is switched off: it saves
from inside the signal handler, in the middle of a step, to a file ``resume=true`` does not read.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import lightning as L
from hydra.experimental.callback import Callback
from lightning.fabric.plugins.environments import SLURMEnvironment

log = logging.getLogger("selfsup.launch")

PREEMPTION_SIGNALS = ("SIGUSR1", "SIGUSR2", "SIGTERM")
REQUEUE_SIGNAL = "SIGUSR1"  # the sbatch template's --signal=USR1@120; submitit sends SIGUSR2 and requeues itself


class Preempted(SystemExit):
    """The run stopped on a signal after saving ``last.ckpt``; exit status 128 + signal number."""

    def __init__(self, signum: int):
        super().__init__(128 + signum)
        self.signum = signum


class PreemptionCheckpoint(L.Callback):
    """Save ``path`` at the end of the step during which a preemption signal arrived, then stop (see module doc).

    Args:
        path: the checkpoint to write (``<run dir>/checkpoints/last.ckpt``, what ``resume=true`` reads).
        signals: signal names that trigger it.
    """

    def __init__(self, path: str | os.PathLike, signals: Sequence[str] = PREEMPTION_SIGNALS):
        unknown = [s for s in signals if not hasattr(signal, s)]
        if unknown:
            raise ValueError(f"preemption signals={list(signals)}: unknown {unknown}; expected names like SIGUSR1")
        self.path = str(path)
        self.signals = [getattr(signal, s) for s in signals]
        self.received: int | None = None
        self._before: dict[int, object] = {}  # handlers installed before Lightning's (submitit's)
        self._installed = False
        self._saved: int | None = None

    # -- signal plumbing ---------------------------------------------------------------------------------------
    def _handler(self, signum, frame) -> None:
        if self.received is None:
            log.warning("received %s: saving %s at the end of this step", signal.Signals(signum).name, self.path)
        self.received = signum

    def setup(self, trainer, pl_module, stage: str) -> None:
        env = trainer._accelerator_connector.cluster_environment
        if isinstance(env, SLURMEnvironment):
            env.auto_requeue = False  # we save at a step boundary and requeue ourselves
        self._before = {s: signal.getsignal(s) for s in self.signals}

    def on_train_start(self, trainer, pl_module) -> None:
        # after Lightning's _SignalConnector registered its handlers (it wraps SIGTERM): ours replace them
        if threading_main():
            for s in self.signals:
                signal.signal(s, self._handler)
            self._installed = True

    def teardown(self, trainer, pl_module, stage: str) -> None:
        if self._installed:
            for s, h in self._before.items():
                signal.signal(s, h if h is not None else signal.SIG_DFL)
            self._installed = False

    def on_exception(self, trainer, pl_module, exception) -> None:
        self.teardown(trainer, pl_module, "fit")

    # -- the step boundary -------------------------------------------------------------------------------------
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        # every rank takes part (a signal may reach ranks in different steps): any received -> all save
        if self._saved is not None or not trainer.strategy.reduce_boolean_decision(self.received is not None,
                                                                                   all=False):  # fmt: skip
            return
        signum = self.received if self.received is not None else signal.SIGTERM
        for cb in trainer.checkpoint_callbacks:  # ModelCheckpoint(save_last) keeps writing this file, not last-v1
            if cb.save_last and cb.dirpath and Path(cb.dirpath, cb.CHECKPOINT_NAME_LAST + cb.FILE_EXTENSION) == \
                    Path(self.path):  # fmt: skip
                cb.last_model_path = self.path
        trainer.save_checkpoint(self.path)  # all ranks: sharded strategies gather; AtomicCheckpointIO writes
        log.warning("saved %s at step %d after %s", self.path, trainer.global_step, signal.Signals(signum).name)
        self._saved = signum  # stop before the next step, once this step's metrics reached the loggers

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if self._saved is not None:
            self._hand_over(trainer, self._saved)
            raise Preempted(self._saved)

    def _hand_over(self, trainer, signum: int) -> None:
        """Requeue: submitit's handler where submitit installed one, else ``scontrol requeue`` on SIGUSR1."""
        previous = self._before.get(signum)
        if callable(previous) and previous not in (signal.default_int_handler,):
            self.teardown(trainer, None, "fit")
            previous(signum, None)  # submitit: checkpoint() -> resubmit the same job, requeue, exit
            return
        job = slurm_job_id()
        if signum == getattr(signal, REQUEUE_SIGNAL) and job is not None and trainer.is_global_zero:
            result = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True)
            if result.returncode == 0:
                log.warning("requeued SLURM job %s", job)
            else:
                log.error("scontrol requeue %s failed: %s", job, result.stderr.strip())


def threading_main() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def slurm_job_id() -> str | None:
    array_job = os.environ.get("SLURM_ARRAY_JOB_ID")
    job = f"{array_job}_{os.environ['SLURM_ARRAY_TASK_ID']}" if array_job else os.environ.get("SLURM_JOB_ID")
    return job if job and re.fullmatch(r"[0-9_]+", job) else None


# -- the global batch ----------------------------------------------------------------------------------------------
def per_device_batch(global_batch_size: int, world_size: int, accumulate: int) -> int:
    """``global_batch_size`` split over ``world_size`` processes x ``accumulate`` micro-batches, exactly."""
    if not isinstance(global_batch_size, int) or global_batch_size < 1:
        raise ValueError(f"global_batch_size={global_batch_size}: expected a positive integer or null")
    parts = world_size * accumulate
    if global_batch_size % parts:
        raise ValueError(
            f"global_batch_size={global_batch_size}: not divisible by {world_size} process(es) (trainer.num_nodes x "
            f"trainer.devices) x trainer.accumulate_grad_batches={accumulate}; expected a multiple of {parts}"
        )
    return global_batch_size // parts


# -- launchers: check every job before anything is submitted ------------------------------------------------------
def check_job(cfg, overrides: Sequence[str] = ()) -> None:
    """The per-job checks run for every job of a sweep (composing it already refused unknown keys)."""
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
    every job of the sweep and run ``check_job`` on it. Bad input prints one line and exits with status 2 —
    nothing is submitted half-way. Optuna's search space is checked by composing its keys' first choices."""

    def on_multirun_start(self, config, **kwargs) -> None:
        try:
            for overrides in sweep_jobs(config):
                check_job(_loader().load_sweep_config(config, list(overrides)), overrides)
        except Exception as e:  # noqa: BLE001 — composition errors and our ValueErrors both end here
            from selfsup.errors import _user_error

            if os.environ.get("HYDRA_FULL_ERROR") == "1":
                raise
            err = _user_error(e) or e
            message = str(err).splitlines()[0] if str(err) else type(err).__name__
            print(f"selfsup-train: error: {message}", file=sys.stderr)
            raise SystemExit(2) from None


def _loader():
    from hydra.core.global_hydra import GlobalHydra

    return GlobalHydra.instance().config_loader()


def sweep_jobs(config) -> list[list[str]]:
    """Each job's overrides: the command line's sweeps expanded (basic sweeper), or for Optuna the command line
    plus the first choice of every ``hydra.sweeper.params`` entry (its keys must exist too)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    parser = OverridesParser.create()
    task = list(OmegaConf.to_container(config.hydra.overrides.task, resolve=False))
    params = config.hydra.sweeper.get("params") or {}
    if params:  # Optuna: choice(...)/interval(...)/range(...) -> one representative value per key
        for key, value in params.items():
            override = parser.parse_override(f"{key}={value}")
            if override.is_sweep_override():
                first = next(iter(override.sweep_iterator())) if override.is_discrete_sweep() else \
                    override.value().start  # fmt: skip
            else:
                first = override.value()
            task.append(f"{key}={first}")
    batches = BasicSweeper.split_arguments(parser.parse_overrides(task), None)
    return [list(job) for batch in batches for job in batch]
