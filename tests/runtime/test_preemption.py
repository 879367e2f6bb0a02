"""A preemption signal saves last.ckpt at the end of the step and stops; the restart continues bit for bit."""

import os
import signal
import subprocess
import sys

import pytest
import torch

from selfsup.config import ROOT
from selfsup.runtime.preemption import Preempted
from selfsup.train import run
from tests.config_utils import compose_train
from tests.runs import TINY, assert_same_run


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("uninterrupted")
    run(compose_train(TINY, run_dir))
    return run_dir

@pytest.mark.slow
def test_signal_saves_last_and_resume_is_bit_exact(tmp_path, uninterrupted):
    """SIGUSR1 during step 13 (epoch 1, batch 3): last.ckpt holds step 14, the restart finishes bit for bit."""
    stop = ["+callbacks.signal._target_=tests.runs.SignalAt", "+callbacks.signal.step=13",
            "+callbacks.signal.signum=SIGUSR1"]  # fmt: skip
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
    stop = ["+callbacks.signal._target_=tests.runs.SignalAt", "+callbacks.signal.step=6",
            "+callbacks.signal.signum=SIGTERM"]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run(cmd + stop, capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert proc.returncode == 128 + signal.SIGTERM, proc.stderr[-2000:]
    assert torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 7
    proc = subprocess.run(cmd + ["resume=true"], capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert_same_run(uninterrupted, tmp_path)
