"""Gradient caching (train/grad_cache.py): a batch computed in chunks gives the loss and parameter gradient of the
whole batch — all its negatives — which gradient accumulation does not."""

import pytest
import torch
from torch import nn

from selfsup.objectives import CompositeObjective, InfoNCELoss, LDRegLoss, NegativeCosineLoss
from selfsup.train import build, run
from selfsup.train.grad_cache import grad_cache_backward, split_batch
from selfsup.train.module import SSLModule
from selfsup.train.optim import OptimizerSpec
from selfsup.train.target import EMATarget
from tests.config_utils import compose_train
from tests.runs import TINY, losses, saved_step, weights

ROWS = 12


def tiny(objective, predictor=False, target=None, dropout=0.0, batch_norm=False):
    torch.manual_seed(0)
    backbone = nn.Sequential(
        nn.Linear(6, 5), *([nn.BatchNorm1d(5)] if batch_norm else []), nn.ReLU(), nn.Dropout(dropout)
    )
    backbone.num_features = 5
    head = lambda in_dim: nn.Sequential(nn.Linear(in_dim, 4), nn.ReLU(), nn.Linear(4, 3))  # noqa: E731
    module = SSLModule(backbone, head, objective, OptimizerSpec(), predictor=head if predictor else None, target=target)
    return module.double()


def batch(seed=1):
    g = torch.Generator().manual_seed(seed)
    views = [torch.randn(ROWS, 6, dtype=torch.float64, generator=g) for _ in range(2)]
    params = [torch.rand(ROWS, 14, dtype=torch.float64, generator=g) for _ in range(2)]
    return {"views": views, "params": params, "label": torch.arange(ROWS) % 3, "index": torch.arange(ROWS)}


def gradients(module):
    return {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}


def whole_batch(module, b):
    loss = module.objective.forward_views(module.step_outputs(b))
    loss.backward()
    return loss.item(), gradients(module)


def cached(module, b, chunks):
    loss, _ = grad_cache_backward(module, b, chunks, lambda loss, whole: loss.backward())
    return loss.item(), gradients(module)


METHODS = {
    "simclr": lambda: tiny(InfoNCELoss(0.5)),
    "byol": lambda: tiny(NegativeCosineLoss(), predictor=True, target=EMATarget(0.9)),
    "ldreg_composite": lambda: tiny(
        CompositeObjective({"nce": {"loss": InfoNCELoss(0.3)}, "ld": {"loss": LDRegLoss(0.5, 0.1, 4), "weight": 0.5}})
    ),
}


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("chunks", [2, 3, 12])
def test_chunks_give_the_whole_batch_loss_and_gradient(method, chunks):
    expected_loss, expected = whole_batch(METHODS[method](), batch())
    loss, got = cached(METHODS[method](), batch(), chunks)
    assert loss == pytest.approx(expected_loss, rel=1e-12)
    assert got.keys() == expected.keys() and len(got) >= 6
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-10, atol=1e-12, msg=name)


def test_accumulation_without_caching_sees_fewer_negatives():
    """What trainer.accumulate_grad_batches computes: the mean of the chunks' own losses — not the whole batch's."""
    module = METHODS["simclr"]()
    whole, _ = whole_batch(module, batch())
    micro = [module.objective.forward_views(module.step_outputs(p)).item() for p in split_batch(batch(), 3)]
    assert abs(sum(micro) / 3 - whole) > 0.1


def test_second_pass_replays_each_chunks_random_state_and_batchnorm_updates_once():
    """With dropout, each chunk's second pass draws the same mask as its first (else the cached gradient would
    belong to other embeddings); BatchNorm buffers move once per chunk and view, as in one pass over the chunks."""
    chunks, b = 3, batch()
    reference = tiny(InfoNCELoss(0.5), dropout=0.5, batch_norm=True)
    torch.manual_seed(7)
    outs = [reference.step_outputs(p) for p in split_batch(b, chunks)]  # one graph over the chunks, in order
    z = [torch.cat([o.z[v] for o in outs]) for v in range(2)]
    reference.objective(z[0], z[1]).backward()
    module = tiny(InfoNCELoss(0.5), dropout=0.5, batch_norm=True)
    torch.manual_seed(7)
    _, got = cached(module, b, chunks)
    for name, grad in gradients(reference).items():
        torch.testing.assert_close(got[name], grad, rtol=1e-10, atol=1e-12, msg=name)
    torch.testing.assert_close(module.backbone[1].running_mean, reference.backbone[1].running_mean)
    assert module.backbone[1].num_batches_tracked.item() == reference.backbone[1].num_batches_tracked.item() == 6


def test_a_run_with_chunks_follows_the_whole_batch_run_and_accumulation_does_not(tmp_path, caplog):
    steps = ["trainer.max_epochs=1", "trainer.limit_val_batches=0"]
    run(compose_train(TINY + steps, tmp_path / "whole"))
    run(compose_train(TINY + steps + ["grad_cache_chunks=4"], tmp_path / "chunks"))
    with caplog.at_level("WARNING", logger="selfsup.train"):
        run(
            compose_train(
                TINY + steps + ["trainer.accumulate_grad_batches=2", "data.batch_size=16"], tmp_path / "accumulated"
            )
        )
    whole, chunks, accumulated = (losses(tmp_path / d) for d in ("whole", "chunks", "accumulated"))
    assert sorted(whole) == sorted(chunks) == list(range(10))
    for step in whole:
        assert chunks[step] == pytest.approx(whole[step], rel=1e-5), step
    assert abs(accumulated[0] - whole[0]) > 1e-3 * abs(whole[0])  # 16 rows a loss: fewer negatives
    assert any("grad_cache_chunks=2 with data.batch_size=32" in r.getMessage() for r in caplog.records)
    w_whole, w_chunks = weights(tmp_path / "whole"), weights(tmp_path / "chunks")
    for key in w_whole:
        torch.testing.assert_close(w_chunks[key], w_whole[key], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["grad_cache_chunks=0"], r"grad_cache_chunks=0: expected a positive integer or null"),
        (["grad_cache_chunks=5"], r"grad_cache_chunks=5: the batch of 32 rows .* must split into equal chunks"),
        (
            ["grad_cache_chunks=2", "trainer.accumulate_grad_batches=2"],
            r"grad_cache_chunks=2 with trainer.accumulate_grad_batches=2: not supported",
        ),
        (
            ["grad_cache_chunks=2", "trainer.gradient_clip_val=1.0"],
            r"with trainer.gradient_clip_val=1.0: not supported",
        ),
        (["grad_cache_chunks=2", "memory=key_queue", "objective.negatives=queue"], r"with memory=.*KeyQueue"),
    ],
)
def test_unsupported_settings_are_refused_at_build(overrides, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        build(compose_train(TINY + overrides, tmp_path))


def test_the_ema_target_and_probe_follow_in_a_cached_run(tmp_path):
    """BYOL's EMA target moves after every cached step exactly as after an ordinary one; the probe trains."""
    pred = "predictor={_target_:selfsup.models.mlp,_partial_:true,hidden_dim:16,out_dim:64,batch_norm:false}"
    byol = TINY + [
        "objective=negative_cosine",
        pred,
        "target=ema",
        "target.base=0.9",
        "trainer.max_steps=3",
        "trainer.limit_val_batches=0",
    ]
    run(compose_train(byol, tmp_path / "whole"))
    run(compose_train(byol + ["grad_cache_chunks=2"], tmp_path / "chunks"))
    a, b = (torch.load(tmp_path / d / "checkpoints" / "last.ckpt", weights_only=True) for d in ("whole", "chunks"))
    assert a["global_step"] == b["global_step"] == 3
    for key, value in a["state_dict"].items():
        torch.testing.assert_close(b["state_dict"][key], value, rtol=1e-4, atol=1e-5, msg=key)
    assert "probe.weight" in b["state_dict"] and any(k.startswith("target.") for k in b["state_dict"])


def test_a_cached_run_resumes_bit_for_bit(tmp_path):
    """Manual optimisation keeps the resume promise: stopped at step 13 (checkpoint at 12), resumed, it equals the
    uninterrupted run — LR schedule, optimiser state and data order included."""
    cfg = TINY + ["grad_cache_chunks=2", "callbacks.last.every_n_train_steps=4", "callbacks.last.every_n_epochs=null"]
    run(compose_train(cfg, tmp_path / "a"))
    with pytest.raises(RuntimeError, match="interrupted at step 13"):
        run(
            compose_train(
                cfg + ["+callbacks.stop._target_=tests.runs.InterruptAt", "+callbacks.stop.step=13"], tmp_path / "b"
            )
        )
    assert saved_step(tmp_path / "b") == 12
    run(compose_train(cfg + ["resume=true"], tmp_path / "b"))
    assert losses(tmp_path / "a") == losses(tmp_path / "b")
    wa, wb = weights(tmp_path / "a"), weights(tmp_path / "b")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
