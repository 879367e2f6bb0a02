"""Several CPU processes (gloo): one recipe, the same training whatever the strategy and process count."""

import pytest
import torch
from hydra.errors import InstantiationException

from selfsup.train import build, run
from tests.config_utils import compose_train
from tests.test_train import TINY, losses, weights

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
    from selfsup.strategies import FSDPStrategy

    _, _, trainer = build(compose_train(TINY + ["trainer=fsdp_cpu"], tmp_path))
    assert isinstance(trainer.strategy, FSDPStrategy) and trainer.world_size == 2
    with pytest.raises(InstantiationException, match="trainer.strategy.start_method=thread: expected one of"):
        build(compose_train(TINY + ["trainer=fsdp_cpu", "trainer.strategy.start_method=thread"], tmp_path))


DEEPSPEED_CPU = ["trainer.accelerator=cpu", "trainer.devices=1", "trainer.precision=32-true",
                 "trainer.strategy.allow_cpu=true", "trainer.limit_val_batches=0"]  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_zero_checkpoint_converts_to_a_plain_encoder(stage, tmp_path):
    """ZeRO stage 2/3 (DeepSpeed's CPU accelerator, one gloo process): the config builds the strategy, training
    writes a sharded last.ckpt/, resume=true continues it, and zero_to_checkpoint gives back the trained encoder."""
    pytest.importorskip("deepspeed", reason="pip install selfsup[deepspeed]")
    from selfsup.runtime.checkpoint import backbone_from, load, zero_to_checkpoint
    from selfsup.strategies import DeepSpeedStrategy

    overrides = TINY + [f"trainer=deepspeed_stage_{stage}", *DEEPSPEED_CPU, "trainer.max_epochs=-1"]
    datamodule, module, trainer = build(compose_train(overrides + ["trainer.max_steps=3"], tmp_path))
    assert isinstance(trainer.strategy, DeepSpeedStrategy)
    trainer.fit(module, datamodule=datamodule)
    assert trainer.strategy.config["zero_optimization"]["stage"] == stage
    assert (tmp_path / "checkpoints" / "last.ckpt").is_dir()
    run(compose_train(overrides + ["trainer.max_steps=5", "resume=true"], tmp_path))
    assert sorted(losses(tmp_path)) == list(range(5))
    out = zero_to_checkpoint(tmp_path / "checkpoints" / "last.ckpt", tmp_path / "plain.ckpt")
    ckpt = load(out)
    assert ckpt["global_step"] == 5
    encoder = backbone_from(ckpt)
    assert torch.equal(next(iter(encoder.state_dict().values())), ckpt["state_dict"]["backbone.features.0.weight"])
    with pytest.raises(FileNotFoundError, match="not a DeepSpeed ZeRO checkpoint directory"):
        zero_to_checkpoint(tmp_path, tmp_path / "x.ckpt")
