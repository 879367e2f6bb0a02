"""A preemption signal saves last.ckpt at the end of the step and stops; the restart continues bit for bit."""

import os
import signal
import subprocess
import sys

import lightning as L
import pytest
import torch

from selfsup.config import ROOT
from selfsup.runtime.preemption import Preempted
from selfsup.train import run
from tests.config_utils import TRUST_TESTS, compose_train
from tests.runs import TINY, assert_same_run, losses, saved_step


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("uninterrupted")
    run(compose_train(TINY, run_dir))
    return run_dir


@pytest.mark.slow
def test_signal_saves_last_and_resume_is_bit_exact(tmp_path, uninterrupted):
    """SIGUSR1 during step 13 (epoch 1, batch 3): last.ckpt holds step 14, the restart finishes bit for bit."""
    stop = [
        "+callbacks.signal._target_=tests.runs.SignalAt",
        "+callbacks.signal.step=13",
        "+callbacks.signal.signum=SIGUSR1",
    ]
    with pytest.raises(Preempted) as info:
        run(compose_train(TINY + stop, tmp_path))
    assert info.value.code == 128 + signal.SIGUSR1
    assert torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 14
    assert not list((tmp_path / "checkpoints").glob("*.tmp"))
    assert signal.getsignal(signal.SIGUSR1) in (signal.SIG_DFL, None)  # handlers restored
    run(compose_train(TINY + ["resume=true"], tmp_path))
    assert_same_run(uninterrupted, tmp_path)


@pytest.mark.slow
def test_sigterm_from_the_cli_then_resume(tmp_path, uninterrupted):
    """The console script on SIGTERM (scontrol requeue, preemption): exit 143 with last.ckpt; resume=true finishes."""
    cmd = [sys.executable, "-m", "selfsup.train", *TINY, f"hydra.run.dir={tmp_path}"]
    stop = [
        "+callbacks.signal._target_=tests.runs.SignalAt",
        "+callbacks.signal.step=6",
        "+callbacks.signal.signum=SIGTERM",
    ]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run(cmd + stop, capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert proc.returncode == 128 + signal.SIGTERM, proc.stderr[-2000:]
    assert torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 7
    proc = subprocess.run(
        cmd + ["resume=true", TRUST_TESTS], capture_output=True, text=True, cwd=ROOT, env=env, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert_same_run(uninterrupted, tmp_path)


class CtrlC(L.Callback):
    """Ctrl-C ``times`` times at the first training or validation batch once ``step`` optimiser steps are done, as a
    terminal sends it: SIGINT to every process of the foreground process group (the training process and its
    data-loading workers)."""

    def __init__(self, step: int, times: int = 1):
        self.step, self.times, self.sent = step, times, False

    def on_train_batch_start(self, trainer, *args):
        if trainer.global_step == self.step and not self.sent:
            self.sent = True
            for _ in range(self.times):
                os.killpg(os.getpgrp(), signal.SIGINT)

    on_validation_batch_start = on_train_batch_start


@pytest.mark.slow
def test_ctrl_c_saves_at_the_end_of_the_step_and_resume_is_bit_exact(tmp_path, uninterrupted):
    """Ctrl-C during step 13: last.ckpt holds step 14, exit status 130 (no requeue), the handlers are restored and
    resume=true finishes bit for bit."""
    stop = [
        "+callbacks.signal._target_=tests.runs.SignalAt",
        "+callbacks.signal.step=13",
        "+callbacks.signal.signum=SIGINT",
    ]
    before = signal.getsignal(signal.SIGINT)  # SIG_IGN where the suite runs in the background (CI)
    with pytest.raises(Preempted) as info:
        run(compose_train(TINY + stop, tmp_path))
    assert info.value.code == 130
    assert saved_step(tmp_path) == 14 and max(losses(tmp_path)) == 13
    assert signal.getsignal(signal.SIGINT) is before
    run(compose_train(TINY + ["resume=true"], tmp_path))
    assert_same_run(uninterrupted, tmp_path)


@pytest.mark.slow
def test_ctrl_c_from_a_terminal_with_loader_workers(tmp_path):
    """The console script with data-loading workers, Ctrl-C sent to the whole process group as a terminal does. During
    the validation after step 10: one warning, last.ckpt at the end of the next step, exit 130. Twice at the start of
    step 13: it stops at once (last.ckpt stays epoch 1's, the step does not run)."""
    cmd = [
        sys.executable,
        "-m",
        "selfsup.train",
        *TINY,
        "data.num_workers=1",
        "+callbacks.ctrlc._target_=tests.runtime.test_preemption.CtrlC",
    ]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    for step, times, status, saved, last_row in ((10, 1, 130, 11, 10), (13, 2, 1, 10, 12)):
        run_dir = tmp_path / f"{times}"
        overrides = [f"+callbacks.ctrlc.step={step}", f"+callbacks.ctrlc.times={times}", f"hydra.run.dir={run_dir}"]
        proc = subprocess.run(
            cmd + overrides, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, start_new_session=True
        )
        out = proc.stdout + proc.stderr
        assert proc.returncode == status, out[-2000:]
        assert out.count("received SIGINT: saving a checkpoint at the end of this step") == 1, out[-2000:]
        assert saved_step(run_dir) == saved and max(losses(run_dir)) == last_row
