"""last.ckpt is written often enough that a crash loses little, under fixed names, atomically — kill -9, a full
disk, sharded checkpoint directories."""

import os
import signal
import subprocess
import sys
import time

import lightning as L
import pytest
import torch

from selfsup.config import ROOT
from selfsup.runtime.autosave import LastCheckpoint, recover_swaps, swap_in
from selfsup.train import run
from tests.config_utils import compose_train
from tests.runs import THREE_EPOCHS, TINY, assert_same_run, saved_step


def train_cli(overrides, run_dir, **kw):
    env = dict(os.environ, PYTHONPATH=str(ROOT), HYDRA_FULL_ERROR="0")
    cmd = [sys.executable, "-m", "selfsup.train", *overrides, f"hydra.run.dir={run_dir}"]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT, **kw)


class Sleep(L.Callback):
    """Slow every step down (so that a test can kill the run mid-epoch)."""

    def __init__(self, seconds: float):
        self.seconds = seconds

    def on_train_batch_end(self, *args):
        time.sleep(self.seconds)


@pytest.mark.slow
def test_kill_9_mid_epoch_loses_only_the_steps_since_the_epoch_checkpoint(tmp_path):
    """The default callbacks save at every epoch's end: SIGKILL a few steps into epoch 2, then resume=true picks up
    at step 10 and finishes equal to an uninterrupted run (losses, validation, weights)."""
    run(compose_train(THREE_EPOCHS, tmp_path / "whole"))
    cut = tmp_path / "cut"
    proc = train_cli(
        THREE_EPOCHS + ["+callbacks.slow._target_=tests.runtime.test_autosave.Sleep", "+callbacks.slow.seconds=0.1"],
        cut,
    )
    try:
        deadline = time.monotonic() + 120
        while not (cut / "checkpoints" / "last.ckpt").exists():
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()[-2000:]
            time.sleep(0.02)
        time.sleep(0.35)  # ~3 steps into epoch 2
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert saved_step(cut) == 10
    assert (cut / ".lock").exists()  # left behind by the killed run: the resume takes it over
    run(compose_train(THREE_EPOCHS + ["resume=true"], cut))  # every key given: the slow-down callback goes
    assert_same_run(tmp_path / "whole", cut)


def test_time_based_saves_and_kept_epoch_copies(tmp_path):
    """every_n_minutes: a save whenever that long passed since the last (here every step); keep_every_n_epochs:
    epoch copies that later saves of last.ckpt do not change."""
    overrides = TINY + [
        "callbacks.last.every_n_minutes=1e-6",
        "callbacks.last.keep_every_n_epochs=1",
        "+callbacks.stop._target_=tests.runs.InterruptAt",
        "+callbacks.stop.step=13",
    ]
    with pytest.raises(RuntimeError, match="interrupted at step 13"):
        run(compose_train(overrides, tmp_path))
    assert saved_step(tmp_path) == 13  # the step just before the crash
    kept = torch.load(tmp_path / "checkpoints" / "epoch0000.ckpt", weights_only=True)
    assert kept["global_step"] == 10 and not (tmp_path / "checkpoints" / "epoch0001.ckpt").exists()


def test_bad_checkpoint_settings_are_refused(tmp_path):
    for key, value, expected in (
        ("every_n_train_steps", 0, "a positive integer or null"),
        ("every_n_minutes", -1, "a number > 0 or null"),
        ("every_n_epochs", 1.5, "a positive integer or null"),
        ("every_n_epochs", True, "a positive integer or null"),
    ):
        with pytest.raises(ValueError, match=rf"^callbacks.last.{key}={value}: expected {expected}$"):
            LastCheckpoint(tmp_path, **{key: value})
    with pytest.raises(Exception, match=r"callbacks.last: expected exactly one"):
        from selfsup.train import build

        build(compose_train(TINY + ["callbacks.last=null"], tmp_path))


def test_stale_temporaries_go_when_a_run_takes_the_directory(tmp_path, caplog):
    with pytest.raises(RuntimeError):
        run(
            compose_train(
                TINY + ["+callbacks.stop._target_=tests.runs.InterruptAt", "+callbacks.stop.step=12"], tmp_path
            )
        )
    stale = tmp_path / "checkpoints" / ".last.ckpt.99999.tmp"
    stale.write_bytes(b"\0" * 2**20)  # what a write killed by SIGKILL leaves
    with caplog.at_level("WARNING"):
        run(compose_train(TINY + ["resume=true"], tmp_path))
    assert not stale.exists() and "left by a killed write" in caplog.text
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]


def test_directory_swap_survives_a_crash_between_its_renames(tmp_path):
    last, new = tmp_path / "last.ckpt", tmp_path / ".last.ckpt.7.tmp"
    for d, tag in ((last, "old"), (new, "new")):
        d.mkdir()
        (d / "latest").write_text(tag)
    swap_in(new, last)
    assert (last / "latest").read_text() == "new" and sorted(os.listdir(tmp_path)) == ["last.ckpt"]
    os.rename(last, tmp_path / ".last.ckpt.old")  # crash after the first rename: no last.ckpt at all
    recover_swaps(tmp_path)
    assert (last / "latest").read_text() == "new"
    (tmp_path / ".last.ckpt.old").mkdir()  # crash after the second rename: both there
    recover_swaps(tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["last.ckpt"]


@pytest.mark.slow
def test_full_disk_during_training(small_disk):
    disk = small_disk("280k")
    """The first checkpoint (~170 kB) fits, the next one does not: one line naming the directory, exit 2, and the
    previous last.ckpt intact (no temporary file left)."""
    proc = train_cli(TINY + ["callbacks.last.every_n_train_steps=3", "callbacks.best=null"], disk / "run")
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 2, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert last == (
        f"selfsup-train: error: no space left on {disk / 'run' / 'checkpoints'} writing last.ckpt "
        f"({last.split('(')[1].split(')')[0]}); the previous last.ckpt is kept"
    ), last
    assert saved_step(disk / "run") == 3
    assert sorted(os.listdir(disk / "run" / "checkpoints")) == ["last.ckpt"]


class PoisonBuffer(L.Callback):
    """Set the first BatchNorm ``running_var`` to Inf at the start of optimiser step ``step`` (the weights stay
    finite: training-mode BatchNorm normalises with the batch's statistics)."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if trainer.global_step == self.step:
            next(b for n, b in module.named_buffers() if n.endswith("running_var")).fill_(float("inf"))


@pytest.mark.slow
def test_no_checkpoint_holds_a_non_finite_buffer(tmp_path, caplog):
    """A BatchNorm statistic that turns Inf during step 5: last.ckpt stays at step 5 (saved before it) and no
    best.ckpt is written by the validation after it."""
    from selfsup.runtime.checkpoint import non_finite

    overrides = TINY + [
        "projector.batch_norm=true",
        "trainer.max_epochs=1",
        "callbacks.last.every_n_train_steps=1",
        "+callbacks.poison._target_=tests.runtime.test_autosave.PoisonBuffer",
        "+callbacks.poison.step=5",
    ]
    with caplog.at_level("ERROR"):
        run(compose_train(overrides, tmp_path))
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 5 and non_finite(ckpt["state_dict"]) == []
    assert not (tmp_path / "checkpoints" / "best.ckpt").exists()
    assert "not saving a checkpoint at step 6: non-finite values in ['projector." in caplog.text
