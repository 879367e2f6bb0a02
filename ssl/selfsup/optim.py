"""Optimisers (LARS, SGD, AdamW) with bias/norm exclusion, batch-scaled LR, linear warm-up and cosine decay — those
of training (``optim=``, named ``selfsup.train.optim.OptimizerSpec`` in configs) and of ``selfsup-reduce``'s TLDR.

The schedule is planned over the run's optimiser steps (``trainer.max_steps``/``max_epochs``) and saved in every
checkpoint: a resume that changes the run's length keeps it — the same warm-up and cosine up to the planned end, then
the final LR (``optim.min_lr_ratio`` x the peak) for any steps beyond — and says so in one warning line
(docs/runs.md, "Resuming").
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence

import torch
from torch import nn

log = logging.getLogger(__name__)


class LARS(torch.optim.Optimizer):
    """LARS (You et al. 2017, arXiv:1708.03888) as in facebookresearch/barlowtwins ``main.py``.

    For a group with ``lars=True``: ``g ← g + wd·p``, then ``g ← g · η‖p‖/‖g‖`` (when both norms are non-zero);
    groups with ``lars=False`` (biases, norm layers, the online probe) take plain momentum SGD without weight decay
    adaptation. Then ``μ ← m·μ + g``, ``p ← p − lr·μ``.
    """

    def __init__(self, params, lr: float, weight_decay: float = 0.0, momentum: float = 0.9, eta: float = 0.001):
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay, momentum=momentum, eta=eta, lars=True))

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                if group["lars"]:
                    g = g.add(p, alpha=group["weight_decay"])
                    p_norm, g_norm = torch.norm(p), torch.norm(g)
                    one = torch.ones_like(p_norm)
                    q = torch.where((p_norm > 0) & (g_norm > 0), group["eta"] * p_norm / g_norm, one)
                    g = g.mul(q)
                state = self.state[p]
                if "mu" not in state:
                    state["mu"] = torch.zeros_like(p)
                mu = state["mu"].mul_(group["momentum"]).add_(g)
                p.add_(mu, alpha=-group["lr"])
        return loss


def warmup_cosine(step: int, warmup_steps: int, total_steps: int, min_ratio: float = 0.0) -> float:
    """LR multiplier: linear warm-up over ``warmup_steps`` then cosine decay to ``min_ratio`` at ``total_steps``
    (and ``min_ratio`` after it)."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


class WarmupCosine:
    """:func:`warmup_cosine` as an object: ``LambdaLR`` saves an object's fields (not a function's) with its state,
    so a resumed run restores the schedule it was planned with."""

    def __init__(self, warmup_steps: int, total_steps: int, min_ratio: float):
        self.warmup_steps, self.total_steps, self.min_ratio = warmup_steps, total_steps, min_ratio

    def __call__(self, step: int) -> float:
        return warmup_cosine(step, self.warmup_steps, self.total_steps, self.min_ratio)


class StepSchedule(torch.optim.lr_scheduler.LambdaLR):
    """``LambdaLR`` over one :class:`WarmupCosine`, stepped once per optimiser step. Loading a checkpoint's state
    restores the saved schedule; where the run's length now differs, one warning says what the LR does."""

    def load_state_dict(self, state_dict: dict) -> None:
        planned = self.lr_lambdas[0].total_steps
        super().load_state_dict(state_dict)
        kept = self.lr_lambdas[0]
        if kept.total_steps == planned or (torch.distributed.is_initialized() and torch.distributed.get_rank()):
            return
        if planned > kept.total_steps:
            then = (
                f"steps {kept.total_steps}-{planned - 1} run at its final LR, optim.min_lr_ratio={kept.min_ratio} "
                "x the peak"
            )
        else:
            then = f"the run stops at step {planned}, at {kept(planned - 1):.4g} x the peak LR"
        log.warning(
            "resume: the run is now %d optimiser steps long, its LR schedule %d (trainer.max_steps/"
            "max_epochs changed): the schedule is kept; %s",
            planned,
            kept.total_steps,
            then,
        )


class OptimizerSpec:
    """What ``conf/optim/*.yaml`` describes; :meth:`build` turns it into an optimiser and a per-step schedule.

    Args:
        name: ``lars``, ``sgd`` or ``adamw``.
        lr: base learning rate for a global batch of 256.
        lr_scaling: ``linear`` (lr · B/256, Goyal et al.), ``sqrt`` (lr · sqrt(B/256)) or ``none``.
        weight_decay: applied to weights; biases and norm parameters (ndim ≤ 1) get none when
            ``exclude_bias_and_norm``.
        momentum: SGD/LARS momentum.
        betas: AdamW betas.
        eta: LARS trust coefficient.
        exclude_bias_and_norm: no weight decay or LARS adaptation for 1-d parameters.
        warmup_epochs: linear warm-up length (capped at the run's length).
        min_lr_ratio: final LR as a fraction of the peak.
        probe_lr: learning rate of the online linear probe (not scaled, no weight decay).
        weight_decay_end: the weight decay at the last step, reached on a cosine from ``weight_decay`` (DINO's ViTs:
            0.04 → 0.4, facebookresearch/dino ``main_dino.py`` + ``utils.cosine_scheduler``); null: constant.
    """

    NAMES = ("lars", "sgd", "adamw")
    SCALINGS = ("linear", "sqrt", "none")

    def __init__(
        self,
        name: str = "lars",
        lr: float = 0.3,
        lr_scaling: str = "linear",
        weight_decay: float = 1e-6,
        momentum: float = 0.9,
        betas: Sequence[float] = (0.9, 0.999),
        eta: float = 0.001,
        exclude_bias_and_norm: bool = True,
        warmup_epochs: float = 10.0,
        min_lr_ratio: float = 0.0,
        probe_lr: float = 0.1,
        weight_decay_end: float | None = None,
    ):
        if name not in self.NAMES:
            raise ValueError(f"optim.name={name!r}: expected one of {self.NAMES}")
        if lr_scaling not in self.SCALINGS:
            raise ValueError(f"optim.lr_scaling={lr_scaling!r}: expected one of {self.SCALINGS}")
        if not lr > 0:
            raise ValueError(f"optim.lr={lr}: expected a value > 0")
        if warmup_epochs < 0:
            raise ValueError(f"optim.warmup_epochs={warmup_epochs}: expected >= 0")
        self.name, self.lr, self.lr_scaling, self.weight_decay = name, lr, lr_scaling, weight_decay
        self.momentum, self.betas, self.eta = momentum, tuple(betas), eta
        self.exclude_bias_and_norm, self.warmup_epochs = exclude_bias_and_norm, warmup_epochs
        self.min_lr_ratio, self.probe_lr, self.weight_decay_end = min_lr_ratio, probe_lr, weight_decay_end

    def scaled_lr(self, global_batch: int) -> float:
        factor = {"linear": global_batch / 256, "sqrt": math.sqrt(global_batch / 256), "none": 1.0}
        return self.lr * factor[self.lr_scaling]

    def param_groups(self, params: Iterable[nn.Parameter], probe_params: Iterable[nn.Parameter], lr: float):
        regular, excluded = [], []
        for p in params:
            if p.requires_grad:
                (excluded if self.exclude_bias_and_norm and p.ndim <= 1 else regular).append(p)
        groups = [dict(params=regular, weight_decay=self.weight_decay, lars=True, lr=lr, decayed=True)]
        if excluded:
            groups.append(dict(params=excluded, weight_decay=0.0, lars=False, lr=lr))
        probe = [p for p in probe_params if p.requires_grad]
        if probe:
            groups.append(dict(params=probe, weight_decay=0.0, lars=False, lr=self.probe_lr))
        return groups

    def build(self, params, probe_params, global_batch: int, total_steps: int, steps_per_epoch: int):
        """(optimizer, LambdaLR stepped once per optimiser step)."""
        lr = self.scaled_lr(global_batch)
        groups = self.param_groups(params, probe_params, lr)
        if self.name == "lars":
            opt = LARS(groups, lr=lr, momentum=self.momentum, eta=self.eta)
        elif self.name == "sgd":
            opt = torch.optim.SGD(groups, lr=lr, momentum=self.momentum)
        else:
            opt = torch.optim.AdamW(groups, lr=lr, betas=self.betas)
        warmup = min(int(round(self.warmup_epochs * steps_per_epoch)), max(0, total_steps - 1))
        lr_fn = WarmupCosine(warmup, total_steps, self.min_lr_ratio)
        if self.weight_decay_end is None:
            return opt, StepSchedule(opt, lr_fn)
        return opt, WeightDecaySchedule(opt, lr_fn, self.weight_decay, self.weight_decay_end, total_steps)


class WeightDecaySchedule(StepSchedule):
    """The LR schedule of ``lr_lambda``, and the decayed groups' weight decay on a cosine from ``start`` at step 0 to
    ``end`` at ``total`` (DINO's ``utils.cosine_scheduler`` for the weight decay, without warm-up); a resume keeps
    ``total`` too."""

    def __init__(self, optimizer, lr_lambda, start: float, end: float, total: int):
        self.wd_start, self.wd_end, self.wd_total = start, end, max(1, total)
        super().__init__(optimizer, lr_lambda)

    def weight_decay(self, step: int) -> float:
        progress = min(step, self.wd_total) / self.wd_total
        return self.wd_end + 0.5 * (self.wd_start - self.wd_end) * (1 + math.cos(math.pi * progress))

    def step(self, epoch=None) -> None:
        super().step(epoch)
        wd = self.weight_decay(self.last_epoch)
        for group in self.optimizer.param_groups:
            if group.get("decayed"):
                group["weight_decay"] = wd
