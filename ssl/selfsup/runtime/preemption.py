"""Preemption and Ctrl-C: a signal only sets a flag; the checkpoint callback saves at the next step boundary, then the
job is handed back to the scheduler (or, after Ctrl-C, the run stops).

SIGUSR1 (``sbatch --signal=USR1@120``), SIGUSR2 (submitit's time-limit signal) and SIGTERM (``scontrol requeue``,
preemption, ``scancel``, ``kill``) are caught by :class:`SignalFlag`. After
:class:`selfsup.runtime.autosave.LastCheckpoint` has written ``last.ckpt`` it raises :class:`Preempted`, and:

- under submitit (``launcher=slurm``): submitit's own handler for the signal runs — it resubmits the same job;
- under ``sbatch``/``srun`` (``slurm/train.sbatch``): on SIGUSR1 rank 0 calls ``scontrol requeue $SLURM_JOB_ID``;
  on SIGTERM SLURM itself requeues (``scontrol requeue``, ``PreemptMode=REQUEUE``) or ends the job;
- anywhere else the process exits with status 128 + signal number.

Ctrl-C (SIGINT) is answered the same way — ``last.ckpt`` at the end of the step, then exit status 130 — but is never
a requeue; a second Ctrl-C stops at once (``KeyboardInterrupt``). A terminal sends Ctrl-C to every process of the
group: the data-loading workers ignore it (those forked before training starts are forked with it blocked, later
ones inherit the handlers, which act in the training process only), so the step ends and is saved.

The restarted job runs with ``resume=true`` and continues from ``last.ckpt`` bit for bit. Lightning's own SLURM
auto-requeue is switched off: it saves from inside the signal handler, in the middle of a step.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import threading
from collections.abc import Sequence

log = logging.getLogger(__name__)

PREEMPTION_SIGNALS = ("SIGUSR1", "SIGUSR2", "SIGTERM")
REQUEUE_SIGNAL = "SIGUSR1"  # the sbatch template's --signal=USR1@120; submitit sends SIGUSR2 and requeues itself


class Preempted(SystemExit):
    """The run stopped on a signal after saving ``last.ckpt``; exit status 128 + signal number."""

    def __init__(self, signum: int):
        super().__init__(128 + signum)
        self.signum = signum


class SignalFlag:
    """Records the first of ``signals`` that arrives, instead of the handlers installed before (restored later).

    Args:
        signals: signal names, e.g. ``("SIGUSR1", "SIGTERM")``.
    """

    def __init__(self, signals: Sequence[str] = PREEMPTION_SIGNALS):
        unknown = [s for s in signals if not hasattr(signal, s)]
        if unknown:
            raise ValueError(f"preemption signals={list(signals)}: unknown {unknown}; expected names like SIGUSR1")
        self.signals = list(dict.fromkeys([getattr(signal, s) for s in signals] + [signal.SIGINT]))
        self.received: int | None = None
        self._pid: int | None = None  # the process that installed the handlers
        self.before: dict[int, object] = {}  # handlers installed before ours (submitit's)
        self._installed = False
        self._blocked = False

    def remember(self) -> None:
        """Note the handlers in place now (call before Lightning installs its own), and block Ctrl-C in this thread
        until :meth:`install`: the data-loading workers forked meanwhile inherit the block and never see it."""
        self.before = {s: signal.getsignal(s) for s in self.signals}
        if threading.current_thread() is threading.main_thread():
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
            self._blocked = True

    def install(self) -> None:
        self._pid = os.getpid()
        if threading.current_thread() is threading.main_thread():
            for s in self.signals:
                signal.signal(s, self._handler)
            self._installed = True
        self._unblock()  # a Ctrl-C held back meanwhile arrives now

    def restore(self) -> None:
        if self._installed:
            for s, h in self.before.items():
                signal.signal(s, h if h is not None else signal.SIG_DFL)
            self._installed = False
        self._unblock()

    def _unblock(self) -> None:
        if self._blocked:
            self._blocked = False
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})

    def _handler(self, signum, frame) -> None:
        if os.getpid() != self._pid:
            return  # a forked data-loading worker: the training process answers the signal
        if signum == signal.SIGINT and self.received == signal.SIGINT:
            raise KeyboardInterrupt  # Ctrl-C a second time: stop now, without waiting for the end of the step
        if self.received is None:
            again = " (Ctrl-C again to stop at once)" if signum == signal.SIGINT else ""
            log.warning(
                "received %s: saving a checkpoint at the end of this step%s", signal.Signals(signum).name, again
            )
        self.received = signum

    def hand_over(self, signum: int, is_global_zero: bool) -> None:
        """Requeue: submitit's handler where submitit installed one, else ``scontrol requeue`` on SIGUSR1; nothing
        after Ctrl-C."""
        if signum == signal.SIGINT:
            return
        previous = self.before.get(signum)
        if callable(previous) and previous is not signal.default_int_handler:
            self.restore()
            previous(signum, None)  # submitit: checkpoint() -> resubmit the same job, requeue, exit
            return
        job = slurm_job_id()
        if signum == getattr(signal, REQUEUE_SIGNAL) and job is not None and is_global_zero:
            result = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True)
            if result.returncode == 0:
                log.warning("requeued SLURM job %s", job)
            else:
                log.error("scontrol requeue %s failed: %s", job, result.stderr.strip())


def slurm_job_id() -> str | None:
    array_job = os.environ.get("SLURM_ARRAY_JOB_ID")
    job = f"{array_job}_{os.environ['SLURM_ARRAY_TASK_ID']}" if array_job else os.environ.get("SLURM_JOB_ID")
    return job if job and re.fullmatch(r"[0-9_]+", job) else None
