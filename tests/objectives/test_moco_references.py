"""MoCo v2 and MoCo v3 as the recipes configure them, against float64 references written from the official code
(issue 28); and every composite objective config, term by term.

The objectives are built THROUGH the configs (``compose_train`` + Hydra ``instantiate``, as ``selfsup-train`` does)
and called as ``SSLModule.training_step`` calls them: a :class:`ViewBatch` of the step (projections ``z``, queries
``q`` — the predictor's outputs where there is one —, the target's keys ``k``, ``symmetric`` from the config), the
memory part's ``prepare`` before ``objective.forward_views`` and its ``update`` after.

MoCo v2 — facebookresearch/moco ``moco/builder.py`` ``MoCo.forward`` / ``_dequeue_and_enqueue``::

    q = normalize(q); k = normalize(k)                                   # k from the key encoder, no gradient
    l_pos = einsum('nc,nc->n', [q, k]).unsqueeze(-1); l_neg = einsum('nc,ck->nk', [q, queue])
    logits = cat([l_pos, l_neg], dim=1) / T; labels = zeros(N)           # the positive is logit 0
    loss = CrossEntropyLoss()(logits, labels); queue[:, ptr:ptr + N] = k.T; ptr = (ptr + N) % K

MoCo v3 — facebookresearch/moco-v3 ``moco/builder.py`` ``MoCo.contrastive_loss`` / ``forward`` (one process)::

    contrastive_loss(q, k) = CrossEntropyLoss()(normalize(q) normalize(k)ᵀ / T, arange(N)) * (2 * T)
    loss = contrastive_loss(q1, k2) + contrastive_loss(q2, k1)           # q: predictor outputs, k: momentum keys
"""

import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate

from selfsup.objectives import CompositeObjective, RunFacts, ViewBatch
from tests.config_utils import compose_train

N, D = 8, 16


def randn(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def compose(recipe: str, tmp_path, *overrides):
    return compose_train([f"recipes={recipe}", *overrides], tmp_path)


# ------------------------------------------------------------------------------------------------- MoCo v2


class OfficialMoCoV2:
    """facebookresearch/moco ``moco/builder.py``: the loss of ``MoCo.forward`` and its queue, (dim, K) columns."""

    def __init__(self, queue_rows: torch.Tensor, temperature: float):
        self.queue = queue_rows.T.clone()  # (dim, K), the columns L2-normalised
        self.ptr, self.t = 0, temperature

    def __call__(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        q, k = F.normalize(q, dim=1), F.normalize(k.detach(), dim=1)
        l_pos = torch.einsum("nc,nc->n", [q, k]).unsqueeze(-1)
        l_neg = torch.einsum("nc,ck->nk", [q, self.queue.clone().detach()])
        logits = torch.cat([l_pos, l_neg], dim=1) / self.t
        labels = torch.zeros(logits.shape[0], dtype=torch.long)
        loss = F.cross_entropy(logits, labels)
        batch = k.shape[0]
        assert self.queue.shape[1] % batch == 0  # as the official code asserts
        self.queue[:, self.ptr : self.ptr + batch] = k.T
        self.ptr = (self.ptr + batch) % self.queue.shape[1]
        return loss


@pytest.mark.parametrize("size_override", [[], ["memory.size=16"]])  # the recipe's 4096; 16: the ring wraps
def test_mocov2_queue_infonce_matches_official(tmp_path, size_override):
    cfg = compose("cifar10/mocov2", tmp_path, *size_override)
    objective, memory = instantiate(cfg.objective), instantiate(cfg.memory)
    assert (cfg.objective.negatives, cfg.objective.temperature, cfg.symmetric) == ("queue", 0.2, False)
    memory.attach(RunFacts(embedding_dim=D, feature_dim=D))
    memory.double()
    official = OfficialMoCoV2(memory.bank.detach().clone(), cfg.objective.temperature)
    for step in range(3):
        z = [randn(N, D, seed=10 * step + v).requires_grad_() for v in range(2)]  # online projections, 2 views
        keys = [randn(N, D, seed=10 * step + 5 + v) for v in range(2)]  # the momentum encoder's (no gradient)
        feats = [randn(N, 4, seed=10 * step + 8 + v) for v in range(2)]
        batch = ViewBatch(z, z, keys, feats, [None, None], num_global=2, symmetric=cfg.symmetric)
        batch = memory.prepare(batch, epoch=0)
        loss = objective.forward_views(batch)
        memory.update(batch, epoch=0)

        z_ref = z[0].detach().clone().requires_grad_()
        expected = official(z_ref, keys[1])  # MoCo: queries of view 0 against the keys of view 1
        torch.testing.assert_close(loss, expected, rtol=1e-12, atol=1e-12, msg=lambda m, s=step: f"step {s}: {m}")
        grad, unused = torch.autograd.grad(loss, z, allow_unused=True)
        (grad_ref,) = torch.autograd.grad(expected, z_ref)
        assert unused is None  # one direction (symmetric=false): view 1 only provides keys
        torch.testing.assert_close(grad, grad_ref, rtol=1e-10, atol=1e-12)
        # the queue after the step: the keys that entered, in the official order
        torch.testing.assert_close(memory.bank, official.queue.T, rtol=0, atol=1e-15)
        assert int(memory.ptr) == official.ptr


# ------------------------------------------------------------------------------------------------- MoCo v3


def official_contrastive_loss(q, k, temperature):
    """facebookresearch/moco-v3 ``moco/builder.py`` ``MoCo.contrastive_loss`` on one process."""
    q, k = F.normalize(q, dim=1), F.normalize(k.detach(), dim=1)
    logits = torch.einsum("nc,mc->nm", [q, k]) / temperature
    labels = torch.arange(logits.shape[0], dtype=torch.long)
    return F.cross_entropy(logits, labels) * (2 * temperature)


def mocov3_batch(seed=0):
    z = [randn(N, D, seed=seed + v).requires_grad_() for v in range(2)]
    q = [randn(N, D, seed=seed + 2 + v).requires_grad_() for v in range(2)]  # predictor outputs
    k = [randn(N, D, seed=seed + 4 + v) for v in range(2)]  # momentum keys
    feats = [randn(N, 4, seed=seed + 6 + v) for v in range(2)]
    return z, q, k, feats


def test_mocov3_composite_matches_official(tmp_path):
    cfg = compose("cifar10/mocov3", tmp_path)
    objective = instantiate(cfg.objective)
    assert isinstance(objective, CompositeObjective) and cfg.symmetric and cfg.predictor is not None
    term = cfg.objective.terms.moco_v3
    t = term.loss.temperature
    assert t == 0.2 and term.loss.negatives == "one_way"
    z, q, k, feats = mocov3_batch()
    loss = objective.forward_views(ViewBatch(z, q, k, feats, [None, None], num_global=2, symmetric=cfg.symmetric))
    q_ref = [x.detach().clone().requires_grad_() for x in q]
    expected = official_contrastive_loss(q_ref[0], k[1], t) + official_contrastive_loss(q_ref[1], k[0], t)
    torch.testing.assert_close(loss, expected, rtol=1e-12, atol=1e-12)
    grads = torch.autograd.grad(loss, q)
    grads_ref = torch.autograd.grad(expected, q_ref)
    for g, g_ref in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(g, g_ref, rtol=1e-10, atol=1e-12)


# ------------------------------------------------------------------------------------ composites, term by term

# composite config → the recipe that uses it and the views of its step
COMPOSITES = {"care": ("cifar10/care", 4), "e2mc": ("cifar10/e2mc", 2), "moco_v3": ("cifar10/mocov3", 2)}


def step_batch(cfg, views: int, seed: int = 0) -> ViewBatch:
    """The ViewBatch ``SSLModule.step_outputs`` hands over for this config: one branch (no predictor, target none):
    q = k = z, the same tensors; two branches: distinct queries and detached keys."""
    rows = 32  # a multiple of CARE's 16 chunks
    z = [randn(rows, D, seed=seed + v).requires_grad_() for v in range(views)]
    feats = [randn(rows, 4, seed=seed + 20 + v) for v in range(views)]
    two_branch = cfg.predictor is not None or cfg.target._target_ != "selfsup.train.target.Target"
    if not two_branch:
        return ViewBatch(z, z, z[:views], feats, [None] * views, num_global=views, symmetric=cfg.symmetric)
    q = [randn(rows, D, seed=seed + 40 + v).requires_grad_() for v in range(views)]
    k = [randn(rows, D, seed=seed + 60 + v) for v in range(views)]
    return ViewBatch(z, q, k, feats, [None] * views, num_global=views, symmetric=cfg.symmetric)


@pytest.mark.parametrize("name", sorted(COMPOSITES))
def test_composite_configs_term_by_term(tmp_path, name):
    recipe, views = COMPOSITES[name]
    cfg = compose(recipe, tmp_path)
    assert cfg.objective._target_ == "selfsup.objectives.CompositeObjective"
    objective = instantiate(cfg.objective)
    batch = step_batch(cfg, views)
    total = objective.forward_views(batch)
    assert set(objective.last_terms) == set(cfg.objective.terms)
    expected_total = 0.0
    for term_name, term in cfg.objective.terms.items():
        standalone = instantiate(term.loss)  # the term's loss on its own, from its own config node
        i, j = term.views
        if batch.one_branch:
            value = standalone(batch.z[i], batch.z[j])
        else:  # queries of one view against the other's keys, both orders averaged (symmetric)
            assert batch.symmetric
            value = 0.5 * (standalone(batch.q[i], batch.k[j]) + standalone(batch.q[j], batch.k[i]))
        logged = objective.last_terms[term_name]
        assert not logged.requires_grad
        torch.testing.assert_close(
            logged, value.detach(), rtol=1e-12, atol=1e-12, msg=lambda m, n=term_name: f"{n}: {m}"
        )
        expected_total = expected_total + term.weight * value
    torch.testing.assert_close(total, expected_total, rtol=1e-12, atol=1e-12)
    leaves = batch.z if batch.one_branch else batch.q
    grads = torch.autograd.grad(total, leaves, allow_unused=True)
    grads_ref = torch.autograd.grad(expected_total, leaves, allow_unused=True)
    for g, g_ref in zip(grads, grads_ref, strict=True):
        assert (g is None) == (g_ref is None)
        if g is not None:
            torch.testing.assert_close(g, g_ref, rtol=1e-10, atol=1e-12)
