"""The batch facts (selfsup.data.batches.BatchPlan): the global batch over nodes x devices x accumulation; sizes that
do not fit are refused."""

import pytest

from selfsup.data.batches import BatchPlan, TrainerFacts
from selfsup.train import build, run
from tests.config_utils import compose_train
from tests.runs import TINY


def test_global_batch_is_split_over_nodes_and_devices(tmp_path):
    """global_batch_size fixes the recipe: the per-process batch follows nodes x devices x accumulation."""
    for trainer, expected in (
        ([], 32),
        (["trainer=ddp_cpu"], 16),
        (["trainer=ddp_cpu", "trainer.num_nodes=2"], 8),
        (["trainer=ddp_cpu", "trainer.accumulate_grad_batches=2"], 8),
    ):
        datamodule, _, trainer_ = build(compose_train(TINY + ["global_batch_size=32", *trainer], tmp_path))
        plan = datamodule.batch_plan()
        assert plan.per_device == expected and plan.global_batch == 32
        assert plan.per_device * trainer_.world_size * trainer_.accumulate_grad_batches == 32
    with pytest.raises(ValueError, match=r"global_batch_size=30: not divisible by 4 process"):
        build(compose_train(TINY + ["global_batch_size=30", "trainer=ddp_cpu", "trainer.num_nodes=2"], tmp_path))
    assert (
        BatchPlan.derive(
            batch_size=0, num_samples=10**6, facts=TrainerFacts(world_size=16, global_batch_size=4096)
        ).per_device
        == 256
    )


def test_batch_too_small_for_shared_chunks_is_refused(tmp_path):
    cfg = compose_train(TINY + ["views=care", "objective=care", "data.batch_size=16"], tmp_path)
    with pytest.raises(ValueError, match=r"too small for views.shared_chunks=16: expected at least 2 rows per chunk"):
        run(cfg)
