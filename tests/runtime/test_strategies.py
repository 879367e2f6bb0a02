"""Several CPU processes (gloo): one recipe, the same training whatever the strategy and process count."""

import pytest
import torch
from hydra.errors import InstantiationException

from selfsup.train import build, run
from tests.config_utils import compose_train
from tests.runs import TINY, losses, weights

STEPS = ["trainer.max_steps=6", "trainer.max_epochs=-1", "global_batch_size=32"]


@pytest.mark.ddp
@pytest.mark.slow
def test_fsdp_equals_ddp_equals_one_process(tmp_path):
    """global_batch_size=32 on 1 process, 2 DDP processes and 2 FSDP (FULL_SHARD) processes: same losses and
    weights (BatchNorm-free encoder and projector), so the recipe does not depend on the allocation."""
    for name, trainer in (("one", []), ("ddp", ["trainer=ddp_cpu"]), ("fsdp", ["trainer=fsdp_cpu"])):
        run(compose_train(TINY + STEPS + trainer, tmp_path / name))
    ref = losses(tmp_path / "one")
    assert sorted(ref) == list(range(6))
    for name in ("ddp", "fsdp"):
        got = losses(tmp_path / name)
        assert sorted(got) == sorted(ref), name
        for step in ref:
            assert got[step] == pytest.approx(ref[step], rel=1e-5, abs=1e-6), (name, step)
    w1, wd, wf = (weights(tmp_path / n) for n in ("one", "ddp", "fsdp"))
    assert w1.keys() == wd.keys() == wf.keys()
    for k in w1:
        torch.testing.assert_close(wd[k], w1[k], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(wf[k], wd[k], rtol=1e-5, atol=1e-6)


def test_fsdp_strategy_is_built_on_the_cpu(tmp_path):
    from selfsup.runtime.strategies import FSDPStrategy

    _, _, trainer = build(compose_train(TINY + ["trainer=fsdp_cpu"], tmp_path))
    assert isinstance(trainer.strategy, FSDPStrategy) and trainer.world_size == 2
    with pytest.raises(
        InstantiationException, match="trainer.strategy.start_method='thread': expected one of 'popen', 'spawn', 'fork'"
    ):
        build(compose_train(TINY + ["trainer=fsdp_cpu", "trainer.strategy.start_method=thread"], tmp_path))


DEEPSPEED_CPU = [
    "trainer.accelerator=cpu",
    "trainer.devices=1",
    "trainer.precision=32-true",
    "trainer.strategy.allow_cpu=true",
    "trainer.limit_val_batches=0",
]


@pytest.mark.slow
@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_zero_resume_equals_the_uninterrupted_run(stage, tmp_path):
    """ZeRO stage 2/3 (DeepSpeed's CPU accelerator, one gloo process): the config builds the strategy, training
    writes a sharded last.ckpt/ (swapped in atomically), a crash after step 4 resumes from it to the same losses
    and weights as an uninterrupted run, and zero_to_checkpoint / selfsup-eval's loader give back the encoder."""
    pytest.importorskip("deepspeed", reason="pip install selfsup[deepspeed]")
    from selfsup.runtime.checkpoint import backbone_from, load, zero_to_checkpoint
    from selfsup.runtime.strategies import DeepSpeedStrategy

    overrides = TINY + [
        f"trainer=deepspeed_stage_{stage}",
        *DEEPSPEED_CPU,
        "trainer.max_epochs=-1",
        "trainer.max_steps=7",
        "callbacks.last.every_n_train_steps=4",
    ]
    _, _, trainer = build(compose_train(overrides, tmp_path / "whole"))
    assert isinstance(trainer.strategy, DeepSpeedStrategy)
    assert trainer.strategy.config["zero_optimization"]["stage"] == stage
    run(compose_train(overrides, tmp_path / "whole"))
    cut = tmp_path / "cut"
    with pytest.raises(RuntimeError, match="interrupted at step 6"):
        run(
            compose_train(
                overrides + ["+callbacks.stop._target_=tests.runs.InterruptAt", "+callbacks.stop.step=6"], cut
            )
        )
    trusted = ["tests.*"]  # its saved config names the crash callback (docs/runs.md, configs read from disk)
    assert (cut / "checkpoints" / "last.ckpt").is_dir() and load(cut, trusted=trusted)["global_step"] == 4
    assert sorted(p.name for p in (cut / "checkpoints").iterdir()) == ["last.ckpt"]  # no temporary left
    run(compose_train(overrides + ["resume=true"], cut))
    assert losses(cut) == losses(tmp_path / "whole") and sorted(losses(cut)) == list(range(7))
    whole, resumed = load(tmp_path / "whole"), load(cut, trusted=trusted)
    assert resumed["global_step"] == 7
    assert all(torch.equal(whole["state_dict"][k], resumed["state_dict"][k]) for k in whole["state_dict"])
    out = zero_to_checkpoint(cut / "checkpoints" / "last.ckpt", tmp_path / "plain.ckpt")
    encoder = backbone_from(load(out))
    assert torch.equal(encoder.state_dict()["features.0.weight"], resumed["state_dict"]["backbone.features.0.weight"])
    with pytest.raises(FileNotFoundError, match="not a DeepSpeed ZeRO checkpoint directory"):
        zero_to_checkpoint(tmp_path, tmp_path / "x.ckpt")


def test_sync_batchnorm_on_cpu_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"trainer.sync_batchnorm=true with accelerator=cpu and 2 processes"):
        build(compose_train(TINY + ["trainer=ddp_cpu", "trainer.sync_batchnorm=true"], tmp_path))


def test_forking_from_a_process_that_holds_a_process_group_is_refused(tmp_path):
    """trainer=ddp_cpu and fsdp_cpu fork the calling process: a process group it already holds (here a one-process
    gloo group) would be inherited without its threads, and the ranks would hang in their first collective."""
    import torch.distributed as dist

    from tests.distributed_utils import _free_port

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1)
    try:
        for trainer in ("ddp_cpu", "fsdp_cpu"):
            with pytest.raises(ValueError, match=r"^trainer.strategy forks 2 processes from this one, which already"):
                build(compose_train(TINY + [f"trainer={trainer}"], tmp_path / trainer))
        build(compose_train(TINY + ["trainer=ddp_cpu", "trainer.strategy=ddp_spawn"], tmp_path / "spawn"))  # spawned
    finally:
        dist.destroy_process_group()
    build(compose_train(TINY + ["trainer=ddp_cpu"], tmp_path / "after"))
