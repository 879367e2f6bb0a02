"""DIET (arXiv:2302.10260): label-smoothed cross-entropy of a linear head over the training samples, against a float64
reference written from the definition (the smoothed target distribution spelled out over all N classes), the index →
head-row mapping, one and two views, the global batch over 2 processes, the sizes set from the data, and a short
training run on digits."""

from __future__ import annotations

import logging
import math

import pytest
import torch

from selfsup.objectives import DIETLoss, RunFacts, ViewBatch
from selfsup.objectives.diet import head_memory
from tests.distributed_utils import run_distributed
from tests.objectives.helpers import batch_of, randn

N, F, B = 11, 5, 7  # classes (training samples), feature width, rows


def reference(z: torch.Tensor, w: torch.Tensor, index: torch.Tensor, eps: float) -> torch.Tensor:
    """mean_b −Σ_k q_bk log p_bk with q = (1 − ε)·onehot(index) + ε/N and p = softmax(z wᵀ), in float64."""
    logits = z @ w.T  # (B, N)
    log_p = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    q = torch.full_like(logits, eps / w.shape[0])
    q[torch.arange(z.shape[0]), index] += 1.0 - eps
    return -(q * log_p).sum(dim=1).mean()


def diet(num_samples=N, in_dim=F, eps=0.8, seed=0) -> DIETLoss:
    torch.manual_seed(seed)
    return DIETLoss(num_samples, in_dim, eps).double()


def index_of(b=B, n=N, seed=1) -> torch.Tensor:
    return torch.randint(0, n, (b,), generator=torch.Generator().manual_seed(seed))


def test_golden_value_by_hand():
    """N = 2, p = (3/4, 1/4), ε = 0.5 → q = (3/4, 1/4): the loss is the entropy H(3/4, 1/4)."""
    loss = DIETLoss(2, 1, 0.5).double()
    with torch.no_grad():
        loss.head.weight.copy_(torch.tensor([[1.0], [0.0]], dtype=torch.float64))
    z = torch.tensor([[math.log(3.0)]], dtype=torch.float64)
    expected = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert loss(z, index=torch.tensor([0])).item() == pytest.approx(expected, abs=1e-15)


@pytest.mark.parametrize("eps", [0.0, 0.3, 0.8])
def test_value_and_gradients_match_the_float64_reference(eps):
    loss = diet(eps=eps)
    z, index = randn(B, F, seed=2, scale=2.0), index_of()
    z1, z2 = z.clone().requires_grad_(), z.clone().requires_grad_()
    w = loss.head.weight.detach().clone().requires_grad_()
    out, expected = loss(z1, index=index), reference(z2, w, index, eps)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-14)
    g_z, g_w = torch.autograd.grad(out, [z1, loss.head.weight])
    r_z, r_w = torch.autograd.grad(expected, [z2, w])
    torch.testing.assert_close(g_z, r_z, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(g_w, r_w, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("chunk", [1, 3, N, N + 5])
@pytest.mark.parametrize("eps", [0.0, 0.8])
def test_class_chunks_give_the_same_loss_and_gradients(chunk, eps):
    """class_chunk: the logits chunk by chunk (online logsumexp, recomputed in backward) — the float64 reference's value
    and gradients for chunks that divide N, that do not, of one class and wider than N."""
    loss = diet(eps=eps)
    chunked = DIETLoss(N, F, eps, class_chunk=chunk).double()
    with torch.no_grad():
        chunked.head.weight.copy_(loss.head.weight)
    z, index = randn(B, F, seed=8, scale=3.0), torch.tensor([0, N - 1, 5, 5, 2, N - 1, 7])
    z1, z2 = z.clone().requires_grad_(), z.clone().requires_grad_()
    w = loss.head.weight.detach().clone().requires_grad_()
    out, expected = chunked(z1, index=index), reference(z2, w, index, eps)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-14)
    g_z, g_w = torch.autograd.grad(out, [z1, chunked.head.weight])
    r_z, r_w = torch.autograd.grad(expected, [z2, w])
    torch.testing.assert_close(g_z, r_z, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(g_w, r_w, rtol=1e-12, atol=1e-14)


def test_class_chunks_in_float32_match_the_float64_reference():
    torch.manual_seed(0)
    chunked = DIETLoss(1000, 16, 0.8, class_chunk=96)
    z, index = randn(64, 16, seed=9).float(), index_of(64, 1000, seed=10)
    z1 = z.clone().requires_grad_()
    out = chunked(z1, index=index)
    w = chunked.head.weight.detach().double().requires_grad_()
    z2 = z.double().requires_grad_()
    expected = reference(z2, w, index, 0.8)
    torch.testing.assert_close(out.double(), expected, rtol=1e-6, atol=1e-6)
    g_z, g_w = torch.autograd.grad(out, [z1, chunked.head.weight])
    r_z, r_w = torch.autograd.grad(expected, [z2, w])
    torch.testing.assert_close(g_z.double(), r_z, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(g_w.double(), r_w, rtol=1e-5, atol=1e-7)


def test_the_head_has_no_bias_and_reads_the_embeddings_width():
    loss = DIETLoss(N, F)
    assert loss.head.weight.shape == (N, F) and loss.head.bias is None


def test_each_index_is_the_class_of_its_head_row():
    """With ε = 0 and a zero head (uniform p = 1/N), the gradient on head row k is Σ_b (1/N − [n_b = k]) z_b: rows of
    the batch's indices differ from an absent row by exactly −Σ_{b: n_b = k} z_b, every absent row gets the same."""
    loss = diet(eps=0.0)
    with torch.no_grad():
        loss.head.weight.zero_()
    z = randn(B, F, seed=3)
    index = torch.tensor([4, 0, 4, 9, 2, 9, 4])
    (grad,) = torch.autograd.grad(loss(z, index=index), loss.head.weight)
    absent = [k for k in range(N) if k not in index.tolist()]
    for k in absent:
        torch.testing.assert_close(grad[k], z.sum(0) / (N * B), rtol=1e-12, atol=1e-15)
    for k in set(index.tolist()):
        torch.testing.assert_close(grad[k] - grad[absent[0]], -z[index == k].sum(0) / B, rtol=1e-12, atol=1e-15)


def test_permuting_rows_with_their_indices_changes_nothing_and_a_wrong_index_costs_more():
    loss = diet(eps=0.8)
    z, index = randn(B, F, seed=4), index_of()
    perm = torch.randperm(B, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(loss(z[perm], index=index[perm]), loss(z, index=index), rtol=1e-13, atol=0)
    with torch.no_grad():  # head row n = 3·e_n (n < F): z = e_n is classified as n
        loss.head.weight.zero_()
        loss.head.weight[:F] = 3.0 * torch.eye(F, dtype=torch.float64)
    z = torch.eye(F, dtype=torch.float64)
    right, wrong = torch.arange(F), (torch.arange(F) + 1) % F
    assert loss(z, index=right) < loss(z, index=wrong)


def test_one_and_two_views():
    loss = diet()
    za, zb, index = randn(B, F, seed=6), randn(B, F, seed=7), index_of()
    w = loss.head.weight.detach()
    one = loss(za, index=index)
    torch.testing.assert_close(one, reference(za, w, index, 0.8), rtol=1e-12, atol=1e-14)
    two = loss(za, zb, index=index)
    torch.testing.assert_close(
        two, (reference(za, w, index, 0.8) + reference(zb, w, index, 0.8)) / 2, rtol=1e-12, atol=1e-14
    )
    # the training path: forward_views reads every view's z and the batch's index
    assert loss.num_views == 1
    torch.testing.assert_close(loss.forward_views(ViewBatch([za], [za], [za], [None], [None], 1, index=index)), one)
    torch.testing.assert_close(
        loss.forward_views(ViewBatch([za, zb], [za, zb], [za, zb], [None] * 2, [None] * 2, 2, index=index)), two
    )


def test_bad_settings_and_inputs_fail_in_one_line(caplog):
    for kwargs, message in (
        (dict(label_smoothing=1.0), r"objective.label_smoothing=1.0: expected a number in \[0, 1\)"),
        (dict(num_samples=0), "objective.num_samples=0: expected a positive integer"),
        (dict(in_dim=2.5), "objective.in_dim=2.5: expected a positive integer"),
        (dict(class_chunk=0), "objective.class_chunk=0: expected a positive integer"),
    ):
        with pytest.raises(ValueError, match=message):
            DIETLoss(**kwargs)
    loss = diet()
    z = randn(B, F)
    with pytest.raises(ValueError, match=r"spans \[0, 11\]: expected indices in \[0, 11\)"):
        loss(z, index=torch.tensor([0, 1, 2, 3, 4, 5, 11]))
    with pytest.raises(ValueError, match=r"needs each row's dataset index \(batch\['index'\]\)"):
        loss.forward_views(batch_of([z]))
    with pytest.raises(ValueError, match="the head is not built"):
        DIETLoss()(z, index=index_of())
    with pytest.raises(ValueError, match="objective.num_samples=5: the training split has 11 images"):
        DIETLoss(num_samples=5).attach(RunFacts(embedding_dim=F, feature_dim=F, num_samples=11))
    with pytest.raises(ValueError, match="objective.in_dim=4: the embeddings are 5-d"):
        DIETLoss(in_dim=4).attach(RunFacts(embedding_dim=F, feature_dim=F, num_samples=11))
    with caplog.at_level(logging.WARNING, logger="selfsup.objectives.diet"):
        bigger = DIETLoss(num_samples=20)
        bigger.attach(RunFacts(embedding_dim=F, feature_dim=F, num_samples=11))
    assert "objective.num_samples=20 but the training split has 11 images: 9 head rows" in caplog.text
    assert bigger.head.weight.shape == (20, F)


def test_head_memory_of_imagenet():
    """docs/diet.md's plan: N = 1,281,167 ImageNet images, ResNet-50 (F = 2048) and ResNet-18 (F = 512)."""
    r50 = head_memory(1_281_167, 2048, batch=256)
    assert r50["weights"] == 1_281_167 * 2048 * 4  # 10.5 GB of fp32 weights
    assert r50["adamw_state"] == 2 * r50["weights"] and r50["grad"] == r50["weights"]
    assert r50["logits"] == 2 * 256 * 1_281_167 * 4
    assert head_memory(1_281_167, 512, batch=256, param_bytes=2)["weights"] == 1_281_167 * 512 * 2


# -- the global batch over 2 processes --------------------------------------------------------------------------------
WORLD, ROWS = 2, 12  # global rows


def _inputs():
    g = torch.Generator().manual_seed(11)
    z = torch.randn(ROWS, F, generator=g, dtype=torch.float64)
    return z, torch.randint(0, N, (ROWS,), generator=g)


def _rank_loss_and_grads(rank: int, world_size: int):
    loss = diet()  # the same head on every rank (seeded)
    z, index = _inputs()
    rows = slice(rank * ROWS // world_size, (rank + 1) * ROWS // world_size)
    z_r = z[rows].clone().requires_grad_()
    out = loss(z_r, index=index[rows])  # a global index: this rank's rows keep their dataset indices
    g_z, g_w = torch.autograd.grad(out, [z_r, loss.head.weight])
    return out.detach(), g_z, g_w


@pytest.mark.ddp
def test_two_processes_compute_the_global_batch_loss():
    results = run_distributed(_rank_loss_and_grads, WORLD)
    loss = diet()
    z, index = _inputs()
    z = z.clone().requires_grad_()
    single = loss(z, index=index)
    g_z, g_w = torch.autograd.grad(single, [z, loss.head.weight])
    torch.testing.assert_close(sum(r[0] for r in results) / WORLD, single.detach(), rtol=1e-13, atol=0)
    torch.testing.assert_close(torch.cat([r[1] for r in results]), WORLD * g_z, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(sum(r[2] for r in results) / WORLD, g_w, rtol=1e-12, atol=1e-15)  # DDP's average


# -- through the trainer ----------------------------------------------------------------------------------------------
# 160 images (the head: 160 classes), 5 steps an epoch, 6 epochs; lr 2e-2 x 32/256 (the recipe's 2e-3 scaled to a
# batch of 32 would barely move the head in 30 steps)
TINY_DIET = [
    "recipes=digits/diet",
    "data.subset=160",
    "data.batch_size=32",
    "data.num_workers=0",
    "+backbone.width=8",
    "trainer.log_every_n_steps=1",
    "trainer.enable_model_summary=false",
    "callbacks.progress=null",
    "report_baseline=false",
    "trainer.max_epochs=6",
    "optim.lr=2e-2",
    "optim.warmup_epochs=1",
    "trainer.limit_val_batches=0",
]


def test_build_sizes_the_head_from_the_data_and_the_backbone(tmp_path):
    from selfsup.train import build
    from tests.config_utils import compose_train

    datamodule, module, _ = build(compose_train(TINY_DIET, tmp_path))
    assert isinstance(module.objective, DIETLoss)
    assert (
        module.objective.head.weight.shape
        == (len(datamodule.splits[0]), module.backbone.num_features)
        == (160, module.backbone.num_features)
    )
    with pytest.raises(ValueError, match="objective.num_samples=100: the training split has 160 images"):
        build(compose_train(TINY_DIET + ["objective.num_samples=100"], tmp_path / "small"))
    head = {n for n, _ in module.named_parameters() if n.startswith("objective.head")}
    assert head == {"objective.head.weight"}  # an online parameter: the optimiser trains it


@pytest.mark.slow
def test_a_short_digits_run_lowers_the_loss(tmp_path):
    from selfsup.train import run
    from tests.config_utils import compose_train
    from tests.runs import losses

    run(compose_train(TINY_DIET, tmp_path))
    got = losses(tmp_path)
    steps = sorted(got)
    assert len(steps) == 30  # 160 images / 32 a step x 6 epochs
    first, last = [got[s] for s in steps[:5]], [got[s] for s in steps[-5:]]
    assert max(last) < min(first), (first, last)
