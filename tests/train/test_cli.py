"""selfsup-train end to end: the run directory, exact resume, 2 processes == 1 process, bad input in one line."""

import os
import subprocess
import sys

import pytest
import torch

from selfsup.config import ROOT
from selfsup.train import build, run
from tests.config_utils import compose_train
from tests.runs import TINY, losses, val_metrics, weights


def test_run_writes_run_directory(tmp_path):
    run(compose_train(TINY + ["trainer.max_epochs=1"], tmp_path))
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()
    assert (tmp_path / "checkpoints" / "best.ckpt").is_file()
    assert sorted(losses(tmp_path)) == list(range(10))  # 320 // 32 steps
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["selfsup"]["config"]["backbone"]["name"] == "small_cnn"
    assert not list((tmp_path / "checkpoints").glob("*.tmp"))


def test_resume_mid_epoch_equals_uninterrupted(tmp_path):
    """Stop at step 13 (epoch 1, batch 3) with checkpoints every 4 steps; resume=true finishes bit for bit."""
    every4 = ["callbacks.last.every_n_train_steps=4", "callbacks.last.every_n_epochs=null"]
    run(compose_train(TINY + every4, tmp_path / "a"))
    with pytest.raises(RuntimeError, match="interrupted at step 13"):
        run(
            compose_train(
                TINY + every4 + ["+callbacks.stop._target_=tests.runs.InterruptAt", "+callbacks.stop.step=13"],
                tmp_path / "b",
            )
        )
    assert torch.load(tmp_path / "b" / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 12
    run(compose_train(TINY + every4 + ["resume=true"], tmp_path / "b"))
    assert losses(tmp_path / "a") == losses(tmp_path / "b")  # same data order, LR schedule and steps
    wa, wb = weights(tmp_path / "a"), weights(tmp_path / "b")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.ddp
@pytest.mark.slow
def test_two_processes_equal_one_on_the_same_global_batch(tmp_path):
    """ddp_spawn with 2 x 16 pairs follows the 1 x 32 loss curve (BatchNorm-free encoder and projector), and the
    sharded validation (kNN bank and queries split over ranks, then gathered) gives the same metrics."""
    steps = ["trainer.max_epochs=1"]
    run(compose_train(TINY + steps, tmp_path / "one"))
    run(compose_train(TINY + steps + ["trainer=ddp_cpu", "data.batch_size=16"], tmp_path / "two"))
    one, two = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert sorted(one) == sorted(two) == list(range(10))
    for step in one:
        assert two[step] == pytest.approx(one[step], rel=1e-5, abs=1e-6), step
    val_one, val_two = val_metrics(tmp_path / "one"), val_metrics(tmp_path / "two")
    assert set(val_one) == set(val_two) >= {"val/knn_top1", "val/rankme", "val/probe_top1"}
    for key in val_one:
        assert val_two[key] == pytest.approx(val_one[key], rel=1e-4), key
    w1, w2 = weights(tmp_path / "one"), weights(tmp_path / "two")
    for k in w1:
        torch.testing.assert_close(w2[k], w1[k], rtol=1e-4, atol=1e-5)


@pytest.mark.ddp
@pytest.mark.slow
def test_two_cpu_processes_normalise_batchnorm_per_process(tmp_path):
    """README "2 processes with BatchNorm": on CPU (gloo, no SyncBatchNorm) each process normalises its half of the
    global batch with its own statistics; the loss is then gathered over the whole batch. So the 2-process loss is
    the 1-process model run on each half separately — not the 1-process loss with statistics of all 32 rows."""
    with_bn = [o for o in TINY if o not in ("+backbone.norm=none", "projector.batch_norm=false")]
    steps = ["trainer.max_steps=1", "trainer.limit_val_batches=0"]
    run(compose_train(with_bn + steps, tmp_path / "one"))
    run(compose_train(with_bn + steps + ["trainer=ddp_cpu", "data.batch_size=16"], tmp_path / "two"))
    one, two = losses(tmp_path / "one")[0], losses(tmp_path / "two")[0]

    import lightning as L

    cfg = compose_train(with_bn + steps, tmp_path / "ref")
    L.seed_everything(cfg.seed, workers=True, verbose=False)  # as run() does: the same initial weights
    datamodule, module, _ = build(cfg)
    views = next(iter(datamodule.train_dataloader()))["views"]

    def loss_with_bn_over(halves: int) -> float:
        z = [torch.cat([module.projector(module.backbone(part)) for part in v.chunk(halves)]) for v in views]
        return module.objective(z[0], z[1]).item()

    with torch.no_grad():
        assert one == pytest.approx(loss_with_bn_over(1), rel=1e-5)  # the reference reproduces the 1-process run
        assert two == pytest.approx(loss_with_bn_over(2), rel=1e-5)  # per-process statistics
    assert abs(two - one) > 1e-3 * abs(one)  # and that is a different loss


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA devices")
def test_two_gpus_with_syncbatchnorm_equal_one(tmp_path):
    """trainer=ddp turns SyncBatchNorm on: 2 GPUs x 16 rows normalise with the statistics of all 32, so the loss is
    the 1-GPU loss (float32; kernels/bench/gpu_check.sh runs it where a machine has 2 GPUs)."""
    with_bn = [o for o in TINY if o not in ("+backbone.norm=none", "projector.batch_norm=false")]
    steps = [
        "trainer.max_steps=3",
        "trainer.limit_val_batches=0",
        "trainer.precision=32-true",
        "trainer.log_every_n_steps=1",
    ]
    run(compose_train(with_bn + steps + ["trainer=gpu", "trainer.devices=1"], tmp_path / "one"))
    run(
        compose_train(
            with_bn + steps + ["trainer=ddp", "trainer.devices=2", "trainer.strategy=ddp_spawn", "data.batch_size=16"],
            tmp_path / "two",
        )
    )
    one, two = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert sorted(one) == sorted(two) == [0, 1, 2]
    for step in one:
        assert two[step] == pytest.approx(one[step], rel=1e-4), step


def test_views_do_not_depend_on_workers(tmp_path):
    cfg = compose_train(TINY, tmp_path)
    batches = []
    for workers in (0, 2):
        cfg.data.num_workers = workers
        datamodule, _, _ = build(cfg)
        batches.append(next(iter(datamodule.train_dataloader())))
    for a, b in zip(batches[0]["views"] + batches[0]["params"], batches[1]["views"] + batches[1]["params"]):
        assert torch.equal(a, b)
    assert torch.equal(batches[0]["index"], batches[1]["index"])


def test_bad_input_is_refused_before_training(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"data.root=.*does not exist"):
        build(compose_train(["recipes=cifar10/simclr", f"data.root={tmp_path / 'nowhere'}"], tmp_path / "r1"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="expected class folders"):
        datamodule, _, _ = build(
            compose_train(
                ["data=imagefolder", f"data.root={tmp_path}", "data.train_dir=empty", "data.val_dir=empty"],
                tmp_path / "r2",
            )
        )
        datamodule.setup("fit")
    with pytest.raises(ValueError, match="data.batch_size=2000 .* larger than the training set"):
        run(compose_train(TINY + ["data.batch_size=2000"], tmp_path / "r3"))
    run(compose_train(TINY + ["trainer.max_steps=1"], tmp_path / "r4"))
    with pytest.raises(ValueError, match="already holds a run"):
        run(compose_train(TINY + ["trainer.max_steps=1"], tmp_path / "r4"))
    with pytest.raises(ValueError, match=r"resume: backbone.width=16 differs from the run's backbone.width=8"):
        run(compose_train(TINY + ["trainer.max_steps=1", "resume=true", "backbone.width=16"], tmp_path / "r4"))
    # weights that do not fit the config saved beside them (a hand-edited or mixed-up file)
    ckpt = torch.load(tmp_path / "r4" / "checkpoints" / "last.ckpt", weights_only=True)
    ckpt["selfsup"]["config"]["backbone"]["width"] = 16
    torch.save(ckpt, tmp_path / "edited.ckpt")
    with pytest.raises(ValueError, match="edited.ckpt: checkpoint of another architecture"):
        run(compose_train([f"ckpt_path={tmp_path / 'edited.ckpt'}"], tmp_path / "r5"), [f"ckpt_path={tmp_path}"])


def cli(*args, cwd=ROOT):
    env = dict(os.environ, HYDRA_FULL_ERROR="0")
    return subprocess.run(
        [sys.executable, "-m", "selfsup.train", *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=300
    )


@pytest.mark.parametrize(
    "args,message",
    [
        (["recipes=cifar10/simclr", "data.root={tmp}/missing"], "data.root={tmp}/missing: directory does not exist"),
        (["recipes=cifar10/nope"], "Could not find 'recipes/cifar10/nope'; Available options in 'recipes': "),
        (["optim.lrr=0.1"], "Could not override 'optim.lrr'. To append to your config use +optim.lrr=0.1"),
        (["data.batch_size=abc"], "data.batch_size='abc': expected an integer >= 2"),
        (["data.batch_size=1"], "data.batch_size=1: expected an integer >= 2"),
        (["trainer.max_steps=0"], "trainer.max_steps=0: expected a positive integer (or -1: no limit"),
        (["trainer.max_epochs=0"], "trainer.max_epochs=0: expected a positive integer"),
        (["global_batch_size=2", "trainer=ddp_cpu"], "global_batch_size=2: not divisible by 2 process(es)"),
    ],
    ids=[
        "missing-root",
        "unknown-recipe",
        "misspelt-key",
        "batch-abc",
        "batch-1",
        "max-steps-0",
        "max-epochs-0",
        "global-batch-1-a-process",
    ],
)
def test_cli_bad_input_is_one_line_and_exit_2(args, message, tmp_path):
    """Every bad value or name ends in `selfsup-train: error: <one line>`, exit status 2, and no run directory.
    (Only the Trainer's own start-up lines may come first, for checks that need the process count.)"""
    proc = cli(*[a.format(tmp=tmp_path) for a in args], f"hydra.run.dir={tmp_path / 'run'}")
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("selfsup-train: error: ") and message.format(tmp=tmp_path) in lines[-1], lines
    assert all(line.startswith(("GPU available", "TPU available")) for line in lines[:-1]), lines
    assert not (tmp_path / "run" / "checkpoints").exists() and not (tmp_path / "run" / ".hydra").exists()


def test_cli_help_lists_every_recipe():
    proc = cli("--help")
    assert proc.returncode == 0
    from selfsup.config import RECIPES_DIR

    for recipe in RECIPES_DIR.rglob("*.yaml"):
        assert f"recipes={recipe.relative_to(RECIPES_DIR).with_suffix('')}" in proc.stdout


def test_cli_refused_new_run_leaves_the_used_directory_alone(tmp_path):
    """A new run into a directory that holds one stops before writing anything: .hydra/ and metrics.csv keep
    their bytes and times."""
    run(compose_train(TINY + ["trainer.max_steps=3"], tmp_path))
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in tmp_path.rglob("*") if p.is_file()}
    proc = cli("recipes=cifar10/simclr", f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 2 and "already holds a run" in proc.stderr.strip().splitlines()[-1]
    after = {
        p: (p.read_bytes(), p.stat().st_mtime_ns) for p in tmp_path.rglob("*") if p.is_file() and p.name != "train.log"
    }
    assert after == {p: v for p, v in before.items() if p.name != "train.log"}
