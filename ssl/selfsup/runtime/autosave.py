"""The checkpoints of a run directory: ``checkpoints/last.ckpt`` (what ``resume=true`` continues from) and
``checkpoints/best.ckpt`` (by a validation metric), always under these names and replaced atomically.

``last.ckpt`` is written at the end of an optimiser step — never in the middle of gradient accumulation — when any
of these holds: every ``every_n_train_steps`` steps, at the end of every ``every_n_epochs``-th epoch, when
``every_n_minutes`` have passed since the previous save, on a preemption signal, and at the last step of the run.
A save that falls on an epoch's last step waits for that epoch's validation (``on_train_epoch_end``), so a crash
right after it loses no validation either; a preemption signal is answered at once. A save made at the end of a
step becomes ``last.ckpt`` once Lightning has logged that step's metrics row (it does after the callbacks'
``on_train_batch_end``) and ``metrics.csv`` is flushed to disk: a kill in between leaves the previous ``last.ckpt``,
so ``metrics.csv`` always holds every row a resume keeps (docs/runs.md).
So a crash (kill -9, a node failure) loses at most the steps since the last of those. A checkpoint whose weights
or buffers hold NaN/Inf is never written: the previous one stays. Sharded strategies (DeepSpeed, FSDP with sharded
state) write a directory; it is written under a temporary name and swapped in.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import time
from collections.abc import Sequence
from pathlib import Path

import lightning as L
import torch
from lightning.fabric.plugins.environments import SLURMEnvironment

from selfsup import checks
from selfsup.runtime import compat
from selfsup.runtime.checkpoint import non_finite
from selfsup.runtime.files import NoSpaceError, fsync_dir
from selfsup.runtime.loggers import RunCSVLogger
from selfsup.runtime.preemption import PREEMPTION_SIGNALS, Preempted, SignalFlag

log = logging.getLogger(__name__)

LAST, BEST = "last.ckpt", "best.ckpt"


def writes_directory(strategy) -> bool:
    """Whether ``trainer.save_checkpoint`` writes a directory of shards under this strategy."""
    from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy, ModelParallelStrategy

    if isinstance(strategy, DeepSpeedStrategy):
        return True
    if isinstance(strategy, FSDPStrategy):
        return compat.fsdp_state_dict_type(strategy) == "sharded"
    if isinstance(strategy, ModelParallelStrategy):
        return compat.saves_distributed_checkpoint(strategy)
    return False


def save_atomically(trainer: L.Trainer, path: Path) -> None:
    """``trainer.save_checkpoint(path)`` (every rank takes part) so that ``path`` is the old or the new checkpoint."""
    if not writes_directory(trainer.strategy):
        trainer.save_checkpoint(path, weights_only=False)  # AtomicCheckpointIO: temporary file + rename
        return
    tmp = stage(trainer, path)
    if trainer.is_global_zero:
        swap_in(tmp, path)
    trainer.strategy.barrier("selfsup.save_atomically")


def stage(trainer: L.Trainer, path: Path) -> Path:
    """Write the checkpoint (every rank takes part) as ``.<name>.<step>.tmp`` beside ``path``, the same name on every
    rank; global rank 0 holds the file (or the directory of shards) when it returns."""
    tmp = path.with_name(f".{path.name}.{trainer.global_step}.tmp")
    try:
        trainer.save_checkpoint(tmp, weights_only=False)  # ends with a barrier: every shard is written
    except NoSpaceError:
        raise NoSpaceError(path) from None  # named by the checkpoint it was to become
    return tmp


def swap_in(new: Path, path: Path) -> None:
    """Replace the directory ``path`` by ``new``; :func:`recover_swaps` completes or undoes an interrupted swap."""
    old = path.with_name(f".{path.name}.old")
    if path.exists():
        if old.exists():
            shutil.rmtree(old)
        os.rename(path, old)
    os.rename(new, path)
    fsync_dir(path.parent)
    if old.exists():
        shutil.rmtree(old) if old.is_dir() else old.unlink()


def recover_swaps(directory: Path) -> None:
    """After a crash inside :func:`swap_in`: put ``.<name>.old`` back where ``<name>`` is missing, else delete it."""
    if not directory.is_dir():
        return
    for old in directory.glob(".*.old"):
        target = old.with_name(old.name[1 : -len(".old")])
        if target.exists():
            shutil.rmtree(old) if old.is_dir() else old.unlink()
        else:
            os.rename(old, target)
            log.warning("restored %s from an interrupted checkpoint swap", target)


def _finite(trainer: L.Trainer, module: L.LightningModule) -> bool:
    """Whether every floating tensor the checkpoint would hold — parameters and buffers (BatchNorm statistics, EMA
    centres, queues) — is finite on every rank. Read in place: sharded weights are not gathered."""
    bad = non_finite({**dict(module.named_parameters()), **dict(module.named_buffers())})
    if bad:
        log.error("not saving a checkpoint at step %d: non-finite values in %s", trainer.global_step, bad[:3])
    return not any_rank(trainer, bool(bad))[0]


def _positive(name: str, value, kind=int):
    """``callbacks.last.<name>``: a positive ``kind`` (int, or any finite number for float), or None (off)."""
    key = f"callbacks.last.{name}"
    if kind is int:
        return checks.integer(key, value, minimum=1, allow_none=True)
    return checks.number(key, value, above=0, allow_none=True)


class LastCheckpoint(L.Callback):
    """Write ``<dirpath>/last.ckpt`` often enough that a crash loses little (see the module docstring), and on a
    preemption signal or Ctrl-C save, then stop with :class:`selfsup.runtime.preemption.Preempted`.

    Args:
        dirpath: the run's ``checkpoints/`` folder.
        every_n_train_steps: also save every this many optimiser steps (null: off).
        every_n_epochs: save at the end of every this many epochs (null: off).
        every_n_minutes: save when this long has passed since the previous save (null: off).
        keep_every_n_epochs: also keep ``epoch<NNNN>.ckpt`` at the end of every this many epochs (null: none).
        signals: preemption signals that trigger a save and a requeue (Ctrl-C always triggers a save and a stop).
    """

    def __init__(
        self,
        dirpath: str | os.PathLike,
        every_n_train_steps: int | None = None,
        every_n_epochs: int | None = 1,
        every_n_minutes: float | None = 30.0,
        keep_every_n_epochs: int | None = None,
        signals: Sequence[str] = PREEMPTION_SIGNALS,
    ):
        self.dirpath = Path(dirpath)
        self.path = self.dirpath / LAST
        self.every_n_train_steps = _positive("every_n_train_steps", every_n_train_steps)
        self.every_n_epochs = _positive("every_n_epochs", every_n_epochs)
        self.every_n_minutes = _positive("every_n_minutes", every_n_minutes, float)
        self.keep_every_n_epochs = _positive("keep_every_n_epochs", keep_every_n_epochs)
        self.flag = SignalFlag(signals)
        self.saved_step: int | None = None
        self._saved_at = time.monotonic()
        self._stop: int | None = None
        self._pending = False  # a save due at an epoch's last step, made once its validation has run
        self._staged: Path | None = None  # written, not yet published as last.ckpt (see _publish)

    # -- signals -----------------------------------------------------------------------------------------------
    def setup(self, trainer, pl_module, stage: str) -> None:
        env = compat.cluster_environment(trainer)
        if isinstance(env, SLURMEnvironment):
            env.auto_requeue = False  # we save at a step boundary and requeue ourselves
        self.flag.remember()

    def on_train_start(self, trainer, pl_module) -> None:
        self.flag.install()  # after Lightning's _SignalConnector registered its handlers: ours replace them
        self._saved_at = time.monotonic()

    def teardown(self, trainer, pl_module, stage: str) -> None:
        self.flag.restore()

    def on_exception(self, trainer, pl_module, exception) -> None:
        self.flag.restore()
        self._publish(trainer)  # a crash after the save: the checkpoint stays the latest consistent state

    # -- the step boundary -------------------------------------------------------------------------------------
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        epoch_end = batch_idx + 1 >= trainer.num_training_batches
        if (batch_idx + 1) % trainer.accumulate_grad_batches and not epoch_end:
            return  # inside an accumulation: no optimiser step yet, nothing consistent to save
        step, epoch = trainer.global_step, trainer.current_epoch
        minutes = self.every_n_minutes
        timed = minutes is not None and time.monotonic() - self._saved_at >= 60 * minutes
        # every rank takes part (a signal may reach ranks in different steps): any rank asks -> all save
        received = self.flag.received
        signalled, interrupted, timed = any_rank(trainer, received is not None, received == signal.SIGINT, timed)
        final = (trainer.max_steps > 0 and step >= trainer.max_steps) or (
            epoch_end and trainer.max_epochs is not None and 0 <= trainer.max_epochs <= epoch + 1
        )
        due = (
            signalled
            or timed
            or final
            or (self.every_n_train_steps and step % self.every_n_train_steps == 0)
            or (epoch_end and self.every_n_epochs and (epoch + 1) % self.every_n_epochs == 0)
            or (epoch_end and self._keep(epoch))
        )
        if due and epoch_end and not signalled:
            self._pending = True  # after this epoch's validation (on_train_epoch_end): a kill then loses none of it
        elif due:
            self.save(trainer, pl_module, publish=False)  # published once this step's row is logged (_publish)
        if signalled:
            # where only another rank got the signal: SIGINT if any rank got Ctrl-C (never a requeue), else SIGTERM
            self._stop = signal.SIGINT if interrupted else received or signal.SIGTERM
            log.warning(
                "rank %d: saved %s at step %d after %s",
                trainer.global_rank,
                self.path,
                step,
                signal.Signals(self._stop).name,
            )

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._publish(trainer)
        if not self._pending:
            return
        self._pending = False
        epoch = trainer.current_epoch
        if self.save(trainer, pl_module) and self._keep(epoch) and trainer.is_global_zero:
            _keep_copy(self.path, self.dirpath / f"epoch{epoch:04d}.ckpt")

    def _keep(self, epoch: int) -> bool:
        return bool(self.keep_every_n_epochs) and (epoch + 1) % self.keep_every_n_epochs == 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        # Metrics are logged at Lightning's count of batches that stepped the optimiser; after a restore from a
        # checkpoint taken at an epoch's end it is one ahead (its restart adds one for a save made mid-step). It
        # equals the optimiser step by definition: keep the two together.
        compat.log_at_global_step(trainer)
        self._publish(trainer)
        if self._stop is not None:  # stop before the next step, once this step's metrics reached the loggers
            self.flag.hand_over(self._stop, trainer.is_global_zero)
            raise Preempted(self._stop)

    def on_validation_start(self, trainer, pl_module) -> None:
        self._publish(trainer)  # a save of the step before a validation (which may take long) is published first

    def on_train_end(self, trainer, pl_module) -> None:
        self._publish(trainer)
        if self.saved_step != trainer.global_step:  # stopped early (e.g. trainer.should_stop)
            self.save(trainer, pl_module)

    def save(self, trainer, pl_module, publish: bool = True) -> bool:
        """Write the checkpoint (every rank calls it); False when its weights or buffers are not finite. It becomes
        ``last.ckpt`` now, or with ``publish=False`` at the next :meth:`_publish`."""
        if not _finite(trainer, pl_module):
            return False
        self._publish(trainer)
        self._staged = stage(trainer, self.path)
        self.saved_step, self._saved_at = trainer.global_step, time.monotonic()
        if publish:
            self._publish(trainer)
        return True

    def _publish(self, trainer) -> None:
        """The written checkpoint becomes ``last.ckpt``, after ``metrics.csv`` is on disk with the rows of its steps
        (global rank 0; the other ranks only forget it). Called at the hooks that follow Lightning's logging of a
        step: the next step's start, a validation's start, the epoch's or the training's end, an exception."""
        staged, self._staged = self._staged, None
        if staged is None or not trainer.is_global_zero:
            return
        for logger in trainer.loggers:
            if isinstance(logger, RunCSVLogger):
                logger.sync()
        if staged.is_dir():
            swap_in(staged, self.path)
        else:
            os.replace(staged, self.path)
            fsync_dir(self.dirpath)


def any_rank(trainer: L.Trainer, *flags: bool) -> tuple[bool, ...]:
    """Each flag OR-ed over all ranks, in one collective."""
    if trainer.world_size == 1:
        return tuple(bool(f) for f in flags)
    t = torch.tensor([float(f) for f in flags], device=trainer.strategy.root_device)
    return tuple(v > 0 for v in trainer.strategy.reduce(t, reduce_op="sum").tolist())


def _keep_copy(src: Path, dst: Path) -> None:
    """``dst`` as a copy of ``src`` that later atomic replacements of ``src`` do not change."""
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    if src.is_dir():
        shutil.copytree(src, tmp)
    else:
        try:
            os.link(src, tmp)  # the same bytes for free: last.ckpt is replaced by rename, never rewritten
        except OSError:
            shutil.copy2(src, tmp)
    if dst.exists() and dst.is_dir():
        swap_in(tmp, dst)
    else:
        os.replace(tmp, dst)


class BestCheckpoint(L.Callback):
    """Write ``<dirpath>/best.ckpt`` after a validation whose ``monitor`` beats every earlier one of the run.

    Args:
        dirpath: the run's ``checkpoints/`` folder.
        monitor: a validation metric (e.g. ``val/knn_top1``).
        mode: ``max`` or ``min``.
    """

    def __init__(self, dirpath: str | os.PathLike, monitor: str = "val/knn_top1", mode: str = "max"):
        checks.one_of("callbacks.best.mode", mode, ("max", "min"))
        self.path = Path(dirpath) / BEST
        self.monitor, self.mode = monitor, mode
        self.best: float | None = None
        self.best_step: int | None = None

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or self.monitor not in trainer.callback_metrics:
            return
        value = float(trainer.callback_metrics[self.monitor])
        better = self.best is None or (value > self.best if self.mode == "max" else value < self.best)
        if better and value == value and _finite(trainer, pl_module):  # value == value: not NaN
            save_atomically(trainer, self.path)
            self.best, self.best_step = value, trainer.global_step

    def state_dict(self) -> dict:
        return {"best": self.best, "best_step": self.best_step, "monitor": self.monitor}

    def load_state_dict(self, state: dict) -> None:
        if state.get("monitor") == self.monitor:
            self.best, self.best_step = state.get("best"), state.get("best_step")
