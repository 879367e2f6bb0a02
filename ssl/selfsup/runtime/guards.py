"""Guards that stop a run going bad: a non-finite training loss stops it (or skips the step) before the weights see
it, so that the checkpoints keep the last finite state; a collapsing representation is logged and warned about."""

from __future__ import annotations

import logging

import lightning as L
import torch
import torch.nn.functional as F

from selfsup import checks
from selfsup.metrics import covariance_eigenvalues, rankme
from selfsup.runtime.autosave import LastCheckpoint, any_rank

log = logging.getLogger(__name__)


class NonFiniteLoss(ValueError):
    """The training loss was NaN or Inf more often than allowed."""


class NonFiniteGuard(L.Callback):
    """Check the training loss of every micro-batch before its backward pass (all ranks agree).

    The first non-finite loss stops the run with one line naming the step and the value; the weights are those of
    the last finite step, and ``last.ckpt`` the last one saved (a checkpoint with non-finite weights is never
    written). With ``max_skips = K`` the first K such steps are skipped instead: their gradients are dropped, so
    the optimiser leaves the weights (and its state) as they were; the step count and LR schedule move on.

    Args:
        max_skips: non-finite steps skipped (with a warning each) before the run stops.
    """

    def __init__(self, max_skips: int = 0):
        self.max_skips = checks.integer("callbacks.nonfinite.max_skips", max_skips, minimum=0)
        self.skipped = 0
        self._skip_step = False

    def on_before_backward(self, trainer, pl_module, loss: torch.Tensor) -> None:
        (bad,) = any_rank(trainer, not bool(torch.isfinite(loss.detach()).all()))
        if not bad:
            return
        value, step, epoch = loss.detach().float().cpu().item(), trainer.global_step, trainer.current_epoch
        if self.skipped >= self.max_skips:
            last = next((c for c in trainer.callbacks if isinstance(c, LastCheckpoint)), None)
            saved = (
                f"{last.path} holds step {last.saved_step}"
                if last is not None and last.saved_step is not None
                else "no checkpoint was written in this session"
            )
            raise NonFiniteLoss(
                f"training loss is {value} at step {step} (epoch {epoch}): stopped before it changed the weights; "
                f"{saved}. Lower optim.lr or check the data, or set callbacks.nonfinite.max_skips=K to skip up to "
                "K such steps"
            )
        self.skipped += 1
        self._skip_step = True
        log.warning(
            "training loss is %s at step %d: skipping the step (%d of callbacks.nonfinite.max_skips=%d)",
            value,
            step,
            self.skipped,
            self.max_skips,
        )

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if self._skip_step:
            for group in optimizer.param_groups:
                for p in group["params"]:
                    p.grad = None  # torch optimisers leave parameters without gradients untouched
            self._skip_step = False

    def state_dict(self) -> dict:
        return {"skipped": self.skipped}

    def load_state_dict(self, state: dict) -> None:
        self.skipped = int(state.get("skipped", 0))


class CollapseMonitor(L.Callback):
    """Log how spread out the training projections are, and warn once when the representation collapses.

    Every ``every_n_steps`` optimiser steps (from step 1), on the first view's projections of the step's batch on
    global rank 0 (what ``SSLModule.training_step`` returns as ``"z"``), logged in that step's row:

    - ``train/embed_std``: the per-dimension standard deviation of the L2-normalised projections, averaged over the
      D dimensions and multiplied by sqrt(D): about 1 when the embeddings spread over the sphere, 0 when they
      collapse to one point (the collapse diagnostic of SimSiam, Chen & He 2021, arXiv:2011.10566 §4.1, whose
      healthy value 1/sqrt(D) this scales to 1);
    - ``train/rankme``: RankMe of the batch's projections (``selfsup.metrics.rankme``): at most min(batch, D); 1 for
      a point, k for a collapse onto k dimensions.
    - ``train/eigval_1`` … ``train/eigval_K``: the K largest eigenvalues of the covariance of the batch's projections
      (``selfsup.metrics.covariance_eigenvalues``), whose trajectories show learning happen one eigendirection at a
      time — the staircase of Simon et al. 2023 ("On the Stepwise Nature of Self-Supervised Learning", ICML,
      arXiv:2303.15438, Fig. 1), plotted in ``selfsup-eval``'s report.

    The first time ``embed_std < min_std`` or ``rankme <= min_rankme``, one warning line names the step and both
    values (once per run, kept across resumes).

    Args:
        every_n_steps: how often to measure (optimiser steps; 0 turns the monitor off).
        min_std: warn below this ``train/embed_std``.
        min_rankme: warn at or below this ``train/rankme``.
        eigenvalues: K, how many of the largest covariance eigenvalues to log (0: none).
    """

    def __init__(self, every_n_steps: int = 10, min_std: float = 0.1, min_rankme: float = 2.0, eigenvalues: int = 8):
        self.every_n_steps = checks.integer("callbacks.collapse.every_n_steps", every_n_steps, minimum=0)
        # below 1: embed_std is about 1 when the embeddings spread, so 1 would warn on every healthy run
        self.min_std = checks.number("callbacks.collapse.min_std", min_std, minimum=0, below=1)
        self.min_rankme = checks.number("callbacks.collapse.min_rankme", min_rankme, minimum=0)
        self.eigenvalues = checks.integer("callbacks.collapse.eigenvalues", eigenvalues, minimum=0)
        self.warned_at: int | None = None
        self._measured_at: int | None = None

    @staticmethod
    def measure(z: torch.Tensor) -> tuple[float, float]:
        """(embed_std, rankme) of a (B, D) batch of projections."""
        z = z.detach().float()
        std = F.normalize(z, dim=1).std(dim=0).mean() * z.shape[1] ** 0.5
        return std.item(), rankme(z).item()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        step = trainer.global_step  # optimiser steps done, this one included
        if not self.every_n_steps or (step - 1) % self.every_n_steps or step == self._measured_at:
            return  # off, not a measuring step, or a micro-batch of an accumulated step already measured
        z = outputs.get("z") if isinstance(outputs, dict) else None
        if z is None or z.shape[0] < 2:
            return
        self._measured_at = step
        std, rank = self.measure(z)
        values = {"train/embed_std": std, "train/rankme": rank}
        if self.eigenvalues:
            top = covariance_eigenvalues(z.detach())[: self.eigenvalues].tolist()
            values.update({f"train/eigval_{k}": v for k, v in enumerate(top, 1)})
        # straight to the loggers, once, at the step's row: self.log would repeat the value on every later step of
        # the epoch (Lightning keeps it in the epoch's results), which a resumed run would not repeat
        for logger in trainer.loggers:
            logger.log_metrics(values, step=step - 1)
        if self.warned_at is None and (std < self.min_std or rank <= self.min_rankme):
            self.warned_at = step
            if trainer.is_global_zero:
                log.warning(
                    "the representation collapsed at step %d: train/embed_std %.3f (callbacks.collapse."
                    "min_std=%g), train/rankme %.2f (min_rankme=%g); check the method's stop-gradient, "
                    "predictor and LR",
                    step,
                    std,
                    self.min_std,
                    rank,
                    self.min_rankme,
                )

    def state_dict(self) -> dict:
        return {"warned_at": self.warned_at}

    def load_state_dict(self, state: dict) -> None:
        self.warned_at = state.get("warned_at")
