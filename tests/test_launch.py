"""Preemption-safe runs, the global batch over nodes x devices, and sweeps checked before anything launches."""

import os
import signal
import subprocess
import sys

import lightning as L
import pytest
import torch

from selfsup.config import ROOT
from selfsup.launch import Preempted, per_device_batch
from selfsup.train import build, run
from tests.config_utils import compose_train
from tests.test_train import TINY, losses, weights


class SignalAt(L.Callback):
    """Send ``signum`` to this process at the start of optimiser step ``step`` (as SLURM would, mid-step)."""

    def __init__(self, step: int, signum: str = "SIGUSR1"):
        self.step, self.signum = step, signum

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if trainer.global_step == self.step:
            os.kill(os.getpid(), getattr(signal, self.signum))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("uninterrupted")
    run(compose_train(TINY, run_dir))
    return run_dir


def assert_same_run(a, b):
    assert losses(a) == losses(b)  # same data order, LR schedule and steps
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.slow
def test_signal_saves_last_and_resume_is_bit_exact(tmp_path, uninterrupted):
    """SIGUSR1 during step 13 (epoch 1, batch 3): last.ckpt holds step 14, the restart finishes bit for bit."""
    stop = ["+callbacks.signal._target_=tests.test_launch.SignalAt", "+callbacks.signal.step=13"]
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
    stop = ["+callbacks.signal._target_=tests.test_launch.SignalAt", "+callbacks.signal.step=6",
            "+callbacks.signal.signum=SIGTERM"]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run(cmd + stop, capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert proc.returncode == 128 + signal.SIGTERM, proc.stderr[-2000:]
    assert torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 7
    proc = subprocess.run(cmd + ["resume=true"], capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert_same_run(uninterrupted, tmp_path)


def test_global_batch_is_split_over_nodes_and_devices(tmp_path):
    """global_batch_size fixes the recipe: the per-process batch follows nodes x devices x accumulation."""
    for trainer, expected in (([], 32), (["trainer=ddp_cpu"], 16), (["trainer=ddp_cpu", "trainer.num_nodes=2"], 8),
                              (["trainer=ddp_cpu", "trainer.accumulate_grad_batches=2"], 8)):  # fmt: skip
        datamodule, _, trainer_ = build(compose_train(TINY + ["global_batch_size=32", *trainer], tmp_path))
        assert datamodule.batch_size == expected
        assert datamodule.batch_size * trainer_.world_size * trainer_.accumulate_grad_batches == 32
    with pytest.raises(ValueError, match=r"global_batch_size=30: not divisible by 4 process"):
        build(compose_train(TINY + ["global_batch_size=30", "trainer=ddp_cpu", "trainer.num_nodes=2"], tmp_path))
    assert per_device_batch(4096, 16, 1) == 256  # 2 nodes x 8 GPUs


def test_sync_batchnorm_on_cpu_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"trainer.sync_batchnorm=true with accelerator=cpu and 2 processes"):
        build(compose_train(TINY + ["trainer=ddp_cpu", "trainer.sync_batchnorm=true"], tmp_path))
