"""``metrics.csv`` in the run directory that survives a resume (Lightning's CSVLogger deletes it), and the end of
a run's loggers. (The private CSVLogger hooks used here are listed, and checked, in :mod:`selfsup.runtime.compat`.)"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment
from lightning.pytorch.utilities import rank_zero_only

from selfsup.runtime import compat
from selfsup.runtime.files import atomic_write_text


class _ResumingWriter(ExperimentWriter):
    def __init__(self, log_dir: str, keep_before_step: int | None):
        self.keep_before_step = keep_before_step
        super().__init__(log_dir)

    def _check_log_dir_exists(self) -> None:
        if not self._fs.isfile(self.metrics_file_path):
            return
        if self.keep_before_step is None:  # a fresh run: start a new file, as Lightning does
            self._fs.rm_file(self.metrics_file_path)
            return
        with self._fs.open(self.metrics_file_path, "r", newline="") as f:
            reader = csv.DictReader(f)
            keys = list(reader.fieldnames or [])
            # rows logged after the checkpoint are logged again by the resumed run
            rows = [r for r in reader if r.get("step") and int(float(r["step"])) < self.keep_before_step]
        out = io.StringIO(newline="")
        writer = csv.DictWriter(out, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(Path(self.metrics_file_path), out.getvalue())  # a kill mid-rewrite keeps the old file
        self.metrics_keys = sorted(keys)


class RunCSVLogger(CSVLogger):
    """CSVLogger writing ``<save_dir>/metrics.csv``; on resume (``keep_before_step`` = the checkpoint's global
    step, set by ``selfsup.train.cli``) it keeps the earlier rows instead of deleting the file.

    Lightning writes the rows as they are logged; :meth:`sync` flushes the file to disk before a checkpoint becomes
    ``last.ckpt`` (``selfsup.runtime.autosave``), so a killed run's file holds every row its resume keeps.

    Args:
        save_dir: the run directory.
        flush_logs_every_n_steps: CSVLogger's own write cadence (Lightning also writes after each of its logging calls).
    """

    def __init__(self, save_dir: str, flush_logs_every_n_steps: int = 100):
        super().__init__(save_dir, name="", version="", flush_logs_every_n_steps=flush_logs_every_n_steps)
        self.keep_before_step: int | None = None

    @property
    @rank_zero_experiment  # only global rank 0 touches metrics.csv; other ranks get a no-op
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _ResumingWriter(self.log_dir, self.keep_before_step)
        return self._experiment

    @rank_zero_only
    def sync(self) -> None:
        """Write the rows logged so far and flush ``metrics.csv`` to disk."""
        if self._experiment is None:
            return
        self.save()
        if os.path.isfile(self._experiment.metrics_file_path):
            with open(self._experiment.metrics_file_path, "rb") as f:
                os.fsync(f.fileno())


def finish_loggers(trainer, failed: bool = False) -> None:
    """End the run's W&B run (its files complete on disk; the next job of a local sweep starts its own run)."""
    from lightning.pytorch.loggers import WandbLogger

    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger) and trainer.is_global_zero and compat.wandb_run_started(logger):
            logger.experiment.finish(exit_code=1 if failed else 0)
