"""Resume continues a run exactly: at every position of an epoch, under accumulation, with loader workers, on the
device-view path, with its own saved config — and refuses what would silently change the run."""

import pytest
import torch

from selfsup.runtime.preemption import Preempted
from selfsup.train import run
from tests.config_utils import compose_train
from tests.runs import THREE_EPOCHS, TINY, assert_same_run, losses, saved_step, signal_then_resume


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    runs = {}

    def get(name, overrides):
        if name not in runs:
            runs[name] = tmp_path_factory.mktemp(name)
            run(compose_train(overrides, runs[name]))
        return runs[name]

    return get


# the checkpoint's step -> where it falls in epoch 1 (steps 10..19)
POSITIONS = {11: "after the first step", 15: "mid-epoch", 19: "before the last step", 20: "on the last step"}


@pytest.mark.slow
@pytest.mark.parametrize("ckpt_step", sorted(POSITIONS), ids=[POSITIONS[s] for s in sorted(POSITIONS)])
def test_preempted_anywhere_in_an_epoch_resumes_bit_for_bit(ckpt_step, reference, tmp_path):
    """A signal during step ckpt_step - 1 saves last.ckpt at ckpt_step; the resumed run equals the uninterrupted
    one — losses, validation rows and weights. (ckpt_step=20 is the case that used to skip epoch 2's data.)"""
    signal_then_resume(THREE_EPOCHS, tmp_path, ckpt_step - 1)
    assert_same_run(reference("three", THREE_EPOCHS), tmp_path)


@pytest.mark.slow
def test_crash_between_epochs_resumes_from_the_epoch_checkpoint(reference, tmp_path):
    """Killed after epoch 1 ended (its last.ckpt written, validation done) and before epoch 2's first step."""
    with pytest.raises(RuntimeError, match="interrupted at step 20"):
        run(
            compose_train(
                THREE_EPOCHS + ["+callbacks.stop._target_=tests.runs.InterruptAt", "+callbacks.stop.step=20"], tmp_path
            )
        )
    assert saved_step(tmp_path) == 20
    run(compose_train(THREE_EPOCHS + ["resume=true"], tmp_path))  # every key given: the crash callback goes
    assert_same_run(reference("three", THREE_EPOCHS), tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("ckpt_step", [7, 10], ids=["mid-epoch", "on the last step"])
def test_resume_under_gradient_accumulation(ckpt_step, reference, tmp_path):
    """accumulate_grad_batches=2 (5 optimiser steps an epoch): checkpoints fall on optimiser steps only."""
    accumulate = THREE_EPOCHS + ["trainer.accumulate_grad_batches=2", "data.batch_size=16"]
    signal_then_resume(accumulate, tmp_path, ckpt_step - 1)
    assert_same_run(reference("accumulate", accumulate), tmp_path)


@pytest.mark.slow
def test_resume_of_a_step_limited_run(reference, tmp_path):
    """trainer.max_steps (Lightning's iteration-based mode): preempted on an epoch's last step, and killed after the
    epoch-end checkpoint."""
    steps = TINY + ["trainer.max_epochs=-1", "trainer.max_steps=25"]
    signal_then_resume(steps, tmp_path / "signal", 9)
    assert_same_run(reference("steps", steps), tmp_path / "signal")
    with pytest.raises(RuntimeError, match="interrupted at step 12"):
        run(
            compose_train(
                steps + ["+callbacks.stop._target_=tests.runs.InterruptAt", "+callbacks.stop.step=12"],
                tmp_path / "crash",
            )
        )
    assert saved_step(tmp_path / "crash") == 10
    run(compose_train(steps + ["resume=true"], tmp_path / "crash"))
    assert_same_run(reference("steps", steps), tmp_path / "crash")


@pytest.mark.slow
def test_resume_with_loader_workers(reference, tmp_path):
    workers = THREE_EPOCHS + ["data.num_workers=2"]
    signal_then_resume(workers, tmp_path, 14)
    assert_same_run(reference("three", THREE_EPOCHS), tmp_path)  # workers change nothing either


@pytest.mark.slow
def test_resume_on_the_device_view_path(reference, tmp_path):
    """views=gpu_simclr (batched views after the transfer; here on the CPU): the same exact resume."""
    device = THREE_EPOCHS + ["views=gpu_simclr", "views.sampler=exact"]
    signal_then_resume(device, tmp_path, 19)
    assert_same_run(reference("device", device), tmp_path)


# -- the run's own config ------------------------------------------------------------------------------------------


def interrupted(run_dir, step=14, overrides=THREE_EPOCHS):
    """A run of ``overrides`` preempted during ``step`` (last.ckpt at step + 1)."""
    stop = ["+callbacks.signal._target_=tests.runs.SignalAt", f"+callbacks.signal.step={step}"]
    with pytest.raises(Preempted):
        run(compose_train(overrides + stop, run_dir))
    return run_dir


def snapshot(run_dir):
    """Bytes of every file under .hydra/ and metrics.csv (what a refused command must leave alone)."""
    files = sorted((run_dir / ".hydra").iterdir()) + [run_dir / "metrics.csv"]
    return {p.name: p.read_bytes() for p in files}


@pytest.mark.slow
def test_resume_true_restores_the_runs_own_config(reference, tmp_path):
    """`resume=true hydra.run.dir=<run>` alone: the defaults would compose another run (other data size, width,
    optimiser); the saved config is what continues — bit for bit — and .hydra/config.yaml is not rewritten."""
    interrupted(tmp_path)
    before = (tmp_path / ".hydra" / "config.yaml").read_bytes()
    run(compose_train(["resume=true"], tmp_path), ["resume=true"])  # the default config, but for resume=true
    assert_same_run(reference("three", THREE_EPOCHS), tmp_path)
    assert (tmp_path / ".hydra" / "config.yaml").read_bytes() == before
    from omegaconf import OmegaConf

    (entry,) = OmegaConf.to_container(OmegaConf.load(tmp_path / ".hydra" / "resumes.yaml"))
    assert entry["step"] == 15 and entry["overrides"] == ["resume=true"] and entry["changed"] == {}


def test_resume_refuses_a_changed_setting_and_records_a_safe_one(tmp_path):
    interrupted(tmp_path, step=3)
    before = snapshot(tmp_path)
    refused = {
        "optim.lr=0.5": r"resume: optim.lr=0.5 differs from the run's optim.lr=0.002",
        "objective=vicreg": r"resume: objective._target_=selfsup.objectives.VICRegLoss differs",
        "data.batch_size=16": r"resume: the run trained with 32 rows a step; now 16",
    }
    for override, message in refused.items():
        with pytest.raises(ValueError, match=message):
            run(compose_train(["resume=true", override], tmp_path), ["resume=true", override])
        assert snapshot(tmp_path) == before, override  # nothing written, nothing truncated
    run(compose_train(["resume=true", "trainer.max_epochs=1"], tmp_path), ["resume=true", "trainer.max_epochs=1"])
    from omegaconf import OmegaConf

    (entry,) = OmegaConf.to_container(OmegaConf.load(tmp_path / ".hydra" / "resumes.yaml"))
    assert entry["changed"] == {"trainer.max_epochs": [3, 1]}
    assert saved_step(tmp_path) == 10  # the shorter run ended with epoch 0
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["selfsup"]["config"]["trainer"]["max_epochs"] == 1  # the next resume continues from this


def test_resume_without_a_checkpoint_in_a_used_directory_stops(tmp_path):
    """Killed before its first checkpoint: resume=true says so instead of silently starting over."""
    with pytest.raises(RuntimeError, match="interrupted at step 3"):
        run(
            compose_train(
                TINY + ["+callbacks.stop._target_=tests.runs.InterruptAt", "+callbacks.stop.step=3"], tmp_path
            )
        )
    assert not (tmp_path / "checkpoints" / "last.ckpt").exists()
    with pytest.raises(
        FileNotFoundError,
        match=r"resume=true: hydra.run.dir=.* holds a run .* but no "
        r"checkpoints/last.ckpt to continue from",
    ):
        run(compose_train(TINY + ["resume=true"], tmp_path), ["resume=true"])
    run(compose_train(TINY + ["resume=auto", "trainer.max_steps=2"], tmp_path / "fresh"))  # auto: a new run here
    assert saved_step(tmp_path / "fresh") == 2


def test_resume_true_on_a_directory_without_a_run_is_refused(tmp_path):
    """A mistyped ``hydra.run.dir`` with ``resume=true`` must not start over; ``resume=auto`` (SLURM) may."""
    typo = tmp_path / "rnu"
    with pytest.raises(FileNotFoundError, match=r"resume=true: hydra.run.dir=.*rnu holds no run to continue"):
        run(compose_train(TINY + ["resume=true"], typo), ["resume=true"])
    assert not typo.exists()
    with pytest.raises(ValueError, match=r"resume='yes': expected true .* false .* or auto"):
        run(compose_train(TINY + ["resume=yes"], typo))


def test_a_run_that_failed_before_its_first_step_is_rerun_by_the_same_command(tmp_path):
    """A first attempt that stopped before any step (a corrupt image, a typo in a callback) left .hydra/ and
    train.log: the same command starts the run over instead of calling the directory used."""
    crash = TINY + ["trainer.max_steps=2", "+callbacks.stop._target_=tests.runs.InterruptAt", "+callbacks.stop.step=0"]
    with pytest.raises(RuntimeError, match="interrupted at step 0"):
        run(compose_train(crash, tmp_path))
    assert (tmp_path / ".hydra" / "config.yaml").is_file() and not (tmp_path / "checkpoints" / "last.ckpt").exists()
    run(compose_train(TINY + ["trainer.max_steps=2"], tmp_path))
    assert saved_step(tmp_path) == 2
    assert "InterruptAt" not in (tmp_path / ".hydra" / "config.yaml").read_text()  # the config it ran with


def test_ckpt_path_into_another_runs_directory_is_refused(tmp_path):
    """``ckpt_path=<run A's checkpoint> hydra.run.dir=<run B>`` would overwrite B's last.ckpt and mix A's metrics
    rows into B's: refused, B untouched. Into A's own directory or an empty one, A continues (with A's config)."""
    a, b, empty = tmp_path / "a", tmp_path / "b", tmp_path / "empty"
    run(compose_train(TINY + ["trainer.max_steps=3"], a))
    run(compose_train(TINY + ["trainer.max_steps=2", "seed=1"], b))
    before = {p: p.read_bytes() for p in b.rglob("*") if p.is_file()}
    a_last = a / "checkpoints" / "last.ckpt"
    with pytest.raises(ValueError, match=r"ckpt_path=.*a/checkpoints/last.ckpt: hydra.run.dir=.*b holds another run"):
        run(compose_train(TINY + [f"ckpt_path={a_last}", "trainer.max_steps=5"], b), [f"ckpt_path={a_last}"])
    assert {p: p.read_bytes() for p in b.rglob("*") if p.is_file()} == before
    run(
        compose_train(TINY + [f"ckpt_path={a_last}", "trainer.max_steps=4"], a),
        [f"ckpt_path={a_last}", "trainer.max_steps=4"],
    )
    assert saved_step(a) == 4
    run(
        compose_train(TINY + [f"ckpt_path={a_last}", "trainer.max_steps=5"], empty),
        [f"ckpt_path={a_last}", "trainer.max_steps=5"],
    )
    assert saved_step(empty) == 5
    saved = (empty / ".hydra" / "config.yaml").read_text()
    assert "seed: 0" in saved and f"run_dir: {empty}" in saved  # A's config, in its new place


@pytest.mark.slow
def test_a_copied_run_continues_in_its_new_directory(reference, tmp_path):
    """A run copied elsewhere resumes there: checkpoints go to the copy under the same names (no last-v1.ckpt),
    and the original is not touched."""
    import shutil

    original = interrupted(tmp_path / "original")
    before = {p: p.read_bytes() for p in original.rglob("*") if p.is_file()}
    copy = tmp_path / "copy"
    shutil.copytree(original, copy)
    run(compose_train(["resume=true"], copy), ["resume=true"])
    assert_same_run(reference("three", THREE_EPOCHS), copy)
    assert sorted(p.name for p in (copy / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
    assert {p: p.read_bytes() for p in original.rglob("*") if p.is_file()} == before
    ckpt = torch.load(copy / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["selfsup"]["config"]["run_dir"] == str(copy)
    assert ckpt["selfsup"]["config"]["callbacks"]["last"]["dirpath"] == str(copy / "checkpoints")


@pytest.mark.ddp
@pytest.mark.slow
def test_two_process_run_resumes_bit_for_bit(tmp_path):
    """2 gloo processes: crash at step 17 with checkpoints every 5 steps; the resume equals the uninterrupted run."""
    ddp = THREE_EPOCHS + ["trainer=ddp_cpu", "data.batch_size=16", "callbacks.last.every_n_train_steps=5"]
    run(compose_train(ddp, tmp_path / "whole"))
    with pytest.raises(Exception, match="interrupted at step 17"):  # raised in the spawned ranks
        run(
            compose_train(
                ddp + ["+callbacks.stop._target_=tests.runs.InterruptAt", "+callbacks.stop.step=17"], tmp_path / "cut"
            )
        )
    assert saved_step(tmp_path / "cut") == 15
    run(compose_train(ddp + ["resume=true"], tmp_path / "cut"))
    assert_same_run(tmp_path / "whole", tmp_path / "cut")


@pytest.mark.slow
def test_ckpt_path_resume_equals_the_uninterrupted_run(reference, tmp_path):
    """``ckpt_path=<its last.ckpt>`` (not resume=true) continues the run bit for bit: losses, rows and weights."""
    interrupted(tmp_path)
    last = tmp_path / "checkpoints" / "last.ckpt"
    run(compose_train(THREE_EPOCHS + [f"ckpt_path={last}"], tmp_path))
    assert_same_run(reference("three", THREE_EPOCHS), tmp_path)


@pytest.mark.ddp
@pytest.mark.slow
def test_a_one_process_run_resumed_on_two_processes_follows_the_uninterrupted_run(tmp_path):
    """README: a resume may change the process count when the global batch stays the same (global_batch_size=32:
    1 x 32, then 2 x 16). Before the checkpoint the rows are the 1-process run's own, bit for bit; after it the
    2 processes follow the uninterrupted 1-process run as 2 processes follow 1 (tests/train/test_cli.py)."""
    base = THREE_EPOCHS + ["trainer=ddp_cpu", "global_batch_size=32", "callbacks.last.every_n_train_steps=5"]
    run(compose_train(base + ["trainer.devices=1"], tmp_path / "whole"))
    with pytest.raises(Exception, match="interrupted at step 17"):  # raised in the spawned rank
        run(
            compose_train(
                base
                + ["trainer.devices=1", "+callbacks.stop._target_=tests.runs.InterruptAt", "+callbacks.stop.step=17"],
                tmp_path / "cut",
            )
        )
    assert saved_step(tmp_path / "cut") == 15
    run(compose_train(base + ["trainer.devices=2", "resume=true"], tmp_path / "cut"))  # every key given: no crash
    whole, cut = losses(tmp_path / "whole"), losses(tmp_path / "cut")
    assert sorted(cut) == list(range(30))
    assert [cut[s] for s in range(15)] == [whole[s] for s in range(15)]
    for step in range(15, 30):
        assert cut[step] == pytest.approx(whole[step], rel=1e-5, abs=1e-6), step
    ckpt = torch.load(tmp_path / "cut" / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 30 and ckpt["selfsup"]["global_batch"] == 32
    assert "trainer.devices" in (tmp_path / "cut" / ".hydra" / "resumes.yaml").read_text()
