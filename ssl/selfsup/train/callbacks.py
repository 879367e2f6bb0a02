"""Training-time schedules and constraints that some methods need, as Lightning callbacks (``callbacks.<name>`` in a
recipe): a warm-up of an objective's attribute (DINO's teacher temperature), parameters frozen for the first epochs or
steps (DINO's last layer, SwAV's prototypes), and per-parameter gradient clipping (DINO's)."""

from __future__ import annotations

import lightning as L
import torch


def _check_names(module, prefix: str, key: str) -> list[torch.nn.Parameter]:
    params = [p for n, p in module.named_parameters() if n == prefix or n.startswith(prefix + ".")]
    if not params:
        names = sorted({n.rsplit(".", 1)[0] for n, _ in module.named_parameters()})[:8]
        raise ValueError(f"{key}={prefix!r}: no parameters of the module start with it (e.g. {names})")
    return params


class ObjectiveSchedule(L.Callback):
    """Set ``objective.<attribute>`` at the start of every epoch: linear from ``start`` to ``end`` over
    ``warmup_epochs`` epochs, then ``end`` (DINO's teacher temperature: 0.04 → 0.07 over 30 epochs,
    facebookresearch/dino ``main_dino.py::DINOLoss.teacher_temp_schedule``).

    Args:
        attribute: the objective's attribute (e.g. ``teacher_temp``).
        start, end: the values at epoch 0 and from ``warmup_epochs`` on.
        warmup_epochs: epochs of the linear ramp (0: ``end`` throughout).
    """

    def __init__(self, attribute: str, start: float, end: float, warmup_epochs: int = 0):
        if warmup_epochs < 0:
            raise ValueError(f"callbacks.*.warmup_epochs={warmup_epochs}: expected >= 0")
        self.attribute, self.start, self.end, self.warmup_epochs = attribute, start, end, warmup_epochs

    def value(self, epoch: int) -> float:
        if epoch >= self.warmup_epochs or self.warmup_epochs <= 1:
            return self.end if epoch >= self.warmup_epochs else self.start
        return self.start + (self.end - self.start) * epoch / (self.warmup_epochs - 1)  # np.linspace's points

    def setup(self, trainer, pl_module, stage: str) -> None:
        if self.attribute not in pl_module.objective.schedulable:
            raise ValueError(
                f"callbacks: objective {type(pl_module.objective).__name__} has no attribute {self.attribute!r} to "
                f"schedule; it declares {list(pl_module.objective.schedulable)} (Objective.schedulable)"
            )
        for value in (self.end, self.start):  # a value the objective refuses fails now, not at a later epoch
            pl_module.objective.set_scheduled(self.attribute, value)

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        pl_module.objective.set_scheduled(self.attribute, self.value(trainer.current_epoch))


class FreezeParameters(L.Callback):
    """Drop the gradients of the parameters named ``prefix...`` before the optimiser step during the first
    ``epochs`` epochs or ``steps`` steps (DINO's ``cancel_gradients_last_layer`` for its first epoch; SwAV's
    prototypes for its first 313 iterations).

    Args:
        prefix: parameter-name prefix in the module (``projector.last_layer``, ``memory.prototypes``).
        epochs: freeze during these first epochs (null: use ``steps``).
        steps: freeze during these first optimiser steps.
    """

    def __init__(self, prefix: str, epochs: int | None = None, steps: int | None = None):
        if (epochs is None) == (steps is None) or (epochs or steps or 0) < 0:
            raise ValueError(f"callbacks.*: freeze {prefix!r} for epochs={epochs} or steps={steps}: give one, >= 0")
        self.prefix, self.epochs, self.steps = prefix, epochs, steps

    def setup(self, trainer, pl_module, stage: str) -> None:
        self.params = _check_names(pl_module, self.prefix, "callbacks.*.prefix")

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        frozen = trainer.current_epoch < self.epochs if self.epochs is not None else trainer.global_step < self.steps
        if frozen:
            for p in self.params:
                p.grad = None


class ClipEachGradient(L.Callback):
    """Clip every parameter's gradient to norm ``max_norm`` on its own (DINO's ``utils.clip_gradients``, not
    Lightning's clipping of the total norm).

    Args:
        max_norm: the largest norm a parameter's gradient keeps (DINO: 3.0).
    """

    def __init__(self, max_norm: float = 3.0):
        if not max_norm > 0:
            raise ValueError(f"callbacks.*.max_norm={max_norm}: expected > 0")
        self.max_norm = max_norm

    @torch.no_grad()
    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        for name, p in pl_module.named_parameters():
            if p.grad is not None and not name.startswith("probe."):  # the model's, not the online probe's
                p.grad.mul_(torch.clamp(self.max_norm / (p.grad.norm(2) + 1e-6), max=1.0))
