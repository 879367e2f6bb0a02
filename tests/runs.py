"""Short training runs for tests: a tiny config, callbacks that crash or signal a run at a chosen step, and what a
run directory holds (losses, metric rows, weights) to compare an interrupted run with an uninterrupted one."""

from __future__ import annotations

import csv
import os
import signal
import time

import lightning as L
import pytest
import torch

# digits, a BatchNorm-free CNN and projector, 32 pairs a step: ~0.1 s a step on the CPU; 10 steps an epoch
TINY = [
    "recipes=quickstart",
    "data.subset=320",
    "data.batch_size=32",
    "data.num_workers=0",
    "+backbone.width=8",
    "+backbone.norm=none",
    "projector.batch_norm=false",
    "projector.hidden_dim=64",
    "trainer.log_every_n_steps=1",
    "trainer.enable_model_summary=false",
    "callbacks.progress=null",
    "report_baseline=false",
    "trainer.max_epochs=2",
    "optim.warmup_epochs=1",
    "trainer.check_val_every_n_epoch=1",
]
THREE_EPOCHS = TINY + ["trainer.max_epochs=3"]  # 10 optimiser steps an epoch, validation after each


class InterruptAt(L.Callback):
    """Simulate a crash: fail at the start of optimiser step ``step`` (after step-1 was checkpointed, if it was)."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if trainer.global_step == self.step:
            raise RuntimeError(f"interrupted at step {self.step}")


class SignalAt(L.Callback):
    """Send ``signum`` to this process at the start of optimiser step ``step`` (as SLURM would, mid-step)."""

    def __init__(self, step: int, signum: str = "SIGTERM"):
        self.step, self.signum = step, signum

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if trainer.global_step == self.step and batch_idx % trainer.accumulate_grad_batches == 0:
            signal.raise_signal(getattr(signal, self.signum))


class PauseAt(L.Callback):
    """Hold the run at the start of optimiser step ``step`` until the file ``release`` exists (at most ``timeout``
    seconds, then fail): a live run for as long as a test needs one, without training for that long."""

    def __init__(self, step: int, release: str, timeout: float = 300.0):
        self.step, self.release, self.timeout = step, release, timeout

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if trainer.global_step != self.step:
            return
        deadline = time.monotonic() + self.timeout
        while not os.path.exists(self.release):
            if time.monotonic() > deadline:
                raise RuntimeError(f"PauseAt: {self.release} did not appear within {self.timeout} s")
            time.sleep(0.05)


def losses(run_dir):
    with open(run_dir / "metrics.csv") as f:
        return {int(r["step"]): float(r["train/loss"]) for r in csv.DictReader(f) if r.get("train/loss")}


def val_metrics(run_dir):
    with open(run_dir / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("val/knn_top1")]
    return {k: float(v) for k, v in rows[-1].items() if k.startswith("val/") and v}


def rows(run_dir):
    """Every logged value of metrics.csv as {(step, key): value}."""
    with open(run_dir / "metrics.csv") as f:
        return {
            (int(r["step"]), k): float(v)
            for r in csv.DictReader(f)
            for k, v in r.items()
            if v and k not in ("step", "epoch")
        }


def weights(run_dir):
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    return {k: v for k, v in state.items() if not k.startswith("probe.")}


def saved_step(run_dir) -> int:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]


def signal_then_resume(overrides, run_dir, step):
    """Preempt a run of ``overrides`` in ``step`` (SIGTERM: last.ckpt at step + 1), then resume it to the end."""
    from selfsup.runtime.preemption import Preempted
    from selfsup.train import run
    from tests.config_utils import compose_train

    stop = ["+callbacks.signal._target_=tests.runs.SignalAt", f"+callbacks.signal.step={step}"]
    with pytest.raises(Preempted):
        run(compose_train(overrides + stop, run_dir))
    assert saved_step(run_dir) == step + 1
    run(compose_train(overrides + ["resume=true"], run_dir), ["resume=true"])


def assert_same_run(a, b):
    assert losses(a) == losses(b)  # same data order, LR schedule and steps: bit for bit
    assert rows(a) == rows(b)  # validation and probe metrics too
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
