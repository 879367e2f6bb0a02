"""Guards that stop a run going bad: a non-finite training loss stops it (or skips the step) before the weights see
it, so that the checkpoints keep the last finite state."""

from __future__ import annotations

import logging

import lightning as L
import torch

from selfsup.runtime.autosave import LastCheckpoint, any_rank

log = logging.getLogger("selfsup.guards")


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
        if not isinstance(max_skips, int) or isinstance(max_skips, bool) or max_skips < 0:
            raise ValueError(f"callbacks.nonfinite.max_skips={max_skips}: expected an integer >= 0")
        self.max_skips = max_skips
        self.skipped = 0
        self._skip_step = False

    def on_before_backward(self, trainer, pl_module, loss: torch.Tensor) -> None:
        (bad,) = any_rank(trainer, not bool(torch.isfinite(loss.detach()).all()))
        if not bad:
            return
        value, step, epoch = loss.detach().float().cpu().item(), trainer.global_step, trainer.current_epoch
        if self.skipped >= self.max_skips:
            last = next((c for c in trainer.callbacks if isinstance(c, LastCheckpoint)), None)
            saved = (f"{last.path} holds step {last.saved_step}" if last is not None and last.saved_step is not None
                     else "no checkpoint was written in this session")  # fmt: skip
            raise NonFiniteLoss(
                f"training loss is {value} at step {step} (epoch {epoch}): stopped before it changed the weights; "
                f"{saved}. Lower optim.lr or check the data, or set callbacks.nonfinite.max_skips=K to skip up to "
                "K such steps"
            )
        self.skipped += 1
        self._skip_step = True
        log.warning("training loss is %s at step %d: skipping the step (%d of callbacks.nonfinite.max_skips=%d)",
                    value, step, self.skipped, self.max_skips)  # fmt: skip

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
