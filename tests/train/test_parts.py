"""The parts of a method: the EMA target against a hand-written loop, the memories (global over ranks, saved and
resumed bit for bit), and the settings refused at build."""

import copy
import math

import pytest
import torch
from torch import nn

from selfsup.objectives import RunFacts, ViewBatch
from selfsup.train import build, run
from selfsup.train.memory import KeyQueue, SupportSet, SwAVPrototypes
from selfsup.train.target import EMATarget, StopGradTarget, Target
from tests.config_utils import compose_train
from tests.runs import TINY, assert_same_run, signal_then_resume


def test_ema_target_follows_byols_update_and_schedule():
    """τ_k = 1 − (1 − τ_base)(cos(πk/K) + 1)/2 (BYOL §3.1) and ξ ← τ ξ + (1 − τ) θ after every step."""
    torch.manual_seed(0)
    backbone, projector = nn.Linear(4, 3), nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    target = EMATarget(base=0.9, final=1.0)
    target.attach(backbone, projector)
    xi = [p.detach().clone() for p in list(backbone.parameters()) + list(projector.parameters())]
    total = 5
    for k in range(total):
        with torch.no_grad():  # an optimiser step moves the online weights
            for p in list(backbone.parameters()) + list(projector.parameters()):
                p.add_(torch.randn_like(p))
            projector[1].running_mean.add_(1.0)
        tau = target.step(backbone, projector, k, total)
        expected_tau = 1 - (1 - 0.9) * (math.cos(math.pi * k / total) + 1) / 2
        assert tau == pytest.approx(expected_tau, abs=1e-15)
        theta = [p.detach() for p in list(backbone.parameters()) + list(projector.parameters())]
        xi = [tau * x + (1 - tau) * t for x, t in zip(xi, theta, strict=True)]
    got = list(target.backbone.parameters()) + list(target.projector.parameters())
    for g, e in zip(got, xi, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-6, atol=1e-7)
    assert torch.equal(target.projector[1].running_mean, projector[1].running_mean)  # buffers copied
    assert not any(p.requires_grad for p in target.parameters())
    with pytest.raises(ValueError, match="target.base=0.9, target.final=0.5"):
        EMATarget(0.9, 0.5)


def test_targets_give_the_keys_they_promise():
    z = [torch.randn(3, 2, requires_grad=True) for _ in range(2)]
    assert Target().keys([], z) is z
    assert all(k.requires_grad is False and torch.equal(k, zi) for k, zi in zip(StopGradTarget().keys([], z), z))


def batch(z, k=None):
    return ViewBatch(z, z, k if k is not None else z[:2], [None] * len(z), [None] * len(z), 2)


def test_key_queue_is_a_ring_of_normalised_keys_handed_to_the_objective():
    queue = KeyQueue(size=5)
    queue.attach(RunFacts(embedding_dim=3, feature_dim=3))
    keys = [torch.randn(2, 3) for _ in range(2)]
    b = queue.prepare(ViewBatch(keys, [k + 1 for k in keys], keys, [None] * 2, [None] * 2, 2, symmetric=False), 0)
    assert torch.equal(b.extras["queue"], queue.bank)
    queue.update(b, 0)  # symmetric=False: pairs [(0, 1)] -> the keys of view 1 enter
    torch.testing.assert_close(queue.bank[:2], torch.nn.functional.normalize(keys[1], dim=1))
    assert int(queue.ptr) == 2
    for _ in range(2):
        queue.update(b, 0)
    assert int(queue.ptr) == 1  # 6 rows into 5 slots: wrapped
    torch.testing.assert_close(queue.bank[0], torch.nn.functional.normalize(keys[1], dim=1)[1])


def test_support_set_replaces_keys_by_their_nearest_neighbour():
    support = SupportSet(size=4)
    support.attach(RunFacts(embedding_dim=2, feature_dim=2))
    support.bank.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]]))
    z = [torch.tensor([[0.9, 0.2], [0.1, -2.0]]), torch.tensor([[-3.0, 0.1], [0.2, 0.9]])]
    b = support.prepare(batch(z), 0)
    assert torch.equal(b.k[0], torch.tensor([[1.0, 0.0], [0.0, -1.0]]))
    assert torch.equal(b.k[1], torch.tensor([[-1.0, 0.0], [0.0, 1.0]]))


def test_swav_prototypes_normalise_score_and_queue():
    swav = SwAVPrototypes(num_prototypes=4, queue_size=4, queue_start_epoch=1)
    swav.attach(RunFacts(embedding_dim=3, feature_dim=3))
    z = [torch.randn(2, 3) for _ in range(3)]
    b = swav.prepare(batch(z), epoch=0)
    torch.testing.assert_close(swav.prototypes.weight.norm(dim=1), torch.ones(4))
    torch.testing.assert_close(b.q[2], torch.nn.functional.normalize(z[2], dim=1) @ swav.prototypes.weight.T)
    assert "queue_scores" not in b.extras
    swav.update(b, epoch=0)  # before queue_start_epoch: nothing enters
    assert not swav.queue.any()
    for _ in range(2):
        swav.update(swav.prepare(batch(z), epoch=1), epoch=1)
    assert swav.queue.any(dim=2).all()  # full: 2 steps x 2 rows
    assert len(swav.prepare(batch(z), epoch=1).extras["queue_scores"]) == 2


QUEUE = TINY + [
    "target=ema",
    "memory=key_queue",
    "memory.size=64",
    "objective.negatives=queue",
    "objective.temperature=0.2",
    "symmetric=false",
    "trainer.max_epochs=3",
]


@pytest.mark.slow
def test_a_run_with_a_full_queue_resumes_bit_for_bit(tmp_path):
    """MoCo v2's parts on digits; preempted mid-epoch 2 when the 64-row queue has long been full: the resumed run
    equals the uninterrupted one, queue included."""
    run(compose_train(QUEUE, tmp_path / "whole"))
    signal_then_resume(QUEUE, tmp_path / "cut", 14)
    assert_same_run(tmp_path / "whole", tmp_path / "cut")
    queues = [
        torch.load(d / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]["memory.bank"]
        for d in (tmp_path / "whole", tmp_path / "cut")
    ]
    assert torch.equal(*queues)


@pytest.mark.ddp
@pytest.mark.slow
def test_two_processes_fill_the_same_queue_as_one(tmp_path):
    """The queue is global: 2 processes x 16 rows enqueue what 1 process x 32 rows does (BatchNorm-free model)."""
    steps = ["trainer.max_epochs=1"] + QUEUE[len(TINY) : -1]
    run(compose_train(TINY + steps, tmp_path / "one"))
    run(compose_train(TINY + steps + ["trainer=ddp_cpu", "data.batch_size=16"], tmp_path / "two"))
    banks = [
        torch.load(d / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]["memory.bank"]
        for d in (tmp_path / "one", tmp_path / "two")
    ]
    torch.testing.assert_close(banks[1], banks[0], rtol=1e-4, atol=1e-5)
    from tests.runs import losses

    one, two = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert sorted(one) == sorted(two) and all(two[s] == pytest.approx(one[s], rel=1e-4, abs=1e-5) for s in one)


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["memory=key_queue", "memory.size=16"], r"memory.size=16: smaller than the global batch \(32 rows\)"),
        (["memory=swav", "objective=swav", "memory.num_prototypes=0"], r"memory.num_prototypes=0: expected a positive"),
        (["views=multicrop", "objective=moco_v3"], r"6 local crops .* CompositeObjective .* cannot take them"),
        (
            ["backbone=vit_tiny_cifar", "data.image_size=18", "~backbone.width", "~backbone.norm"],
            r"views.views.v1.size=18: not a multiple of the ViT's patch size 4",
        ),
    ],
    ids=["queue-smaller-than-batch", "no-prototypes", "local-crops-for-composite", "vit-patch"],
)
def test_bad_method_settings_are_refused_at_build(overrides, message, tmp_path):
    with pytest.raises(Exception, match=message):  # a ValueError (inside Hydra's InstantiationException)
        build(compose_train(TINY + overrides, tmp_path))


def test_multicrop_runs_one_backbone_call_per_resolution(tmp_path):
    cfg = compose_train(TINY + ["views=multicrop", "batch_views=true", "views.views.l1.size=8"], tmp_path)
    _, module, _ = build(cfg)
    calls = []
    module.backbone.register_forward_hook(lambda m, args, out: calls.append(tuple(args[0].shape)))
    views = [torch.randn(4, 3, 16, 16) for _ in range(2)] + [torch.randn(4, 3, 8, 8) for _ in range(6)]
    out = module.step_outputs({"views": views, "params": [torch.zeros(4, 14)] * 8})
    assert calls == [(8, 3, 16, 16), (24, 3, 8, 8)]
    assert len(out.q) == 8 and len(out.k) == 2 and out.pairs()[:2] == [(0, 1), (0, 2)] and len(out.pairs()) == 13
    assert copy.deepcopy(out.num_global) == 2


@pytest.mark.slow
def test_dino_with_a_cifar_vit_trains_on_cifar10_and_exports_to_timm(tmp_path, cifar10_root):
    """recipes=cifar10/dino with the 4-px-patch ViT-Ti (multi-crop 32 + 16 px): a few steps without NaN on the
    CIFAR-10 ImageFolder, and the encoder exported to timm gives the trained features."""
    from selfsup.export import export, load_encoder
    from selfsup.runtime.checkpoint import backbone_from, load
    from tests.runs import losses

    overrides = [
        "recipes=cifar10/dino",
        "backbone=vit_tiny_cifar",
        "backbone.cifar_stem=false",
        "data.subset=64",
        f"data.root={cifar10_root}",
        "data.batch_size=8",
        "data.num_workers=0",
        "trainer=cpu",
        "trainer.max_steps=3",
        "trainer.limit_val_batches=0",
        "trainer.log_every_n_steps=1",
        "callbacks.progress=null",
        "projector.out_dim=256",
        "projector.hidden_dim=128",
        "optim=adamw",
    ]
    run(compose_train(overrides, tmp_path / "run"))
    assert sorted(losses(tmp_path / "run")) == [0, 1, 2]
    assert all(math.isfinite(v) for v in losses(tmp_path / "run").values())
    out = export(tmp_path / "run", tmp_path / "vit.safetensors")
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(load_encoder(out)(x), backbone_from(load(tmp_path / "run"))(x))


@pytest.mark.parametrize(
    "method",
    [
        ["objective=info_nce"],
        ["objective=barlow_twins"],
        ["objective=vicreg"],
        [
            "objective=negative_cosine",
            "target=ema",
            "predictor={_target_:selfsup.models.mlp,_partial_:true,hidden_dim:32,out_dim:64}",
        ],
    ],
    ids=["simclr", "barlow_twins", "vicreg", "byol"],
)
def test_multicrop_trains_pair_scoring_methods(method, tmp_path):
    """views=multicrop (2 x 16 px + 6 x 8 px) with SimCLR (all pairs with a global view), Barlow Twins and VICReg
    (averaged over those pairs) and BYOL (every view's prediction against the other global view's target)."""
    from tests.runs import losses

    overrides = (
        TINY
        + method
        + [
            "views=multicrop",
            "views.views.l1.size=8",
            "batch_views=true",
            "trainer.max_steps=2",
            "trainer.limit_val_batches=0",
        ]
    )
    run(compose_train(overrides, tmp_path))
    got = losses(tmp_path)
    assert sorted(got) == [0, 1] and all(math.isfinite(v) for v in got.values())


# -- SSLModule against hand-written loops of the official algorithms (float64, tiny networks) ----------------------
def tiny_module(predictor: bool, target: Target, offset: float = 0.0, scale: float = 1.0):
    from selfsup.objectives import NegativeCosineLoss
    from selfsup.train.module import SSLModule
    from selfsup.train.optim import OptimizerSpec

    torch.manual_seed(0)
    backbone = nn.Sequential(nn.Linear(6, 5), nn.ReLU())
    backbone.num_features = 5
    head = lambda in_dim: nn.Sequential(nn.Linear(in_dim, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 3))  # noqa: E731
    module = SSLModule(
        backbone,
        head,
        NegativeCosineLoss(offset, scale),
        OptimizerSpec(),
        predictor=(lambda in_dim: head(in_dim)) if predictor else None,
        target=target,
    )
    return module.double()


def module_loss(module, x1, x2):
    return module.objective.forward_views(module.step_outputs({"views": [x1, x2], "params": [None, None]}))


def D(p, z):
    """SimSiam's D (Chen & He 2021, Algorithm 1): negative cosine similarity, z detached."""
    return -(nn.functional.normalize(p, dim=1) * nn.functional.normalize(z.detach(), dim=1)).sum(1).mean()


def grads(params):
    return [p.grad.clone() if p.grad is not None else None for p in params]


def test_simsiam_module_equals_algorithm_1():
    module = tiny_module(predictor=True, target=StopGradTarget())
    f = nn.Sequential(copy.deepcopy(module.backbone), copy.deepcopy(module.projector))  # the hand-written copy
    h = copy.deepcopy(module.predictor)
    x1, x2 = (torch.randn(8, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(s)) for s in (1, 2))
    loss = module_loss(module, x1, x2)
    loss.backward()
    z1, z2 = f(x1), f(x2)
    p1, p2 = h(z1), h(z2)
    reference = D(p1, z2) / 2 + D(p2, z1) / 2
    reference.backward()
    assert loss.item() == pytest.approx(reference.item(), rel=1e-12)
    ours = grads([*module.backbone.parameters(), *module.projector.parameters(), *module.predictor.parameters()])
    theirs = grads([*f.parameters(), *h.parameters()])
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    # without the stop-gradient the encoder's gradient differs: the test can tell the two apart
    no_stop = tiny_module(predictor=True, target=Target())
    module_loss(no_stop, x1, x2).backward()
    assert not torch.allclose(no_stop.backbone[0].weight.grad, ours[0])


def test_byol_module_equals_the_symmetrised_loss_and_update():
    """BYOL (Grill et al. 2020, eq. 2 and §3.1): L = ‖q̄(z1) − z̄'2‖² + ‖q̄(z2) − z̄'1‖² (here averaged over the two
    orders, with the 2 − 2 cos form), keys from the EMA network; after each SGD step ξ ← τ ξ + (1 − τ) θ."""
    module = tiny_module(predictor=True, target=EMATarget(base=0.9), offset=2.0, scale=2.0)
    online = nn.Sequential(copy.deepcopy(module.backbone), copy.deepcopy(module.projector))
    q = copy.deepcopy(module.predictor)
    ema = copy.deepcopy(online).requires_grad_(False)
    opt_ours = torch.optim.SGD([p for n, p in module.named_parameters() if not n.startswith("target.")], lr=0.1)
    opt_ref = torch.optim.SGD([*online.parameters(), *q.parameters()], lr=0.1)
    total = 4
    for k in range(total):
        x1, x2 = (
            torch.randn(8, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(10 * k + s)) for s in (1, 2)
        )
        opt_ours.zero_grad()
        opt_ref.zero_grad()
        loss = module_loss(module, x1, x2)
        loss.backward()
        with torch.no_grad():
            k1, k2 = ema(x1), ema(x2)
        regress = lambda p, z: (2 - 2 * nn.functional.cosine_similarity(p, z, dim=1)).mean()  # noqa: E731
        reference = (regress(q(online(x1)), k2) + regress(q(online(x2)), k1)) / 2
        reference.backward()
        assert loss.item() == pytest.approx(reference.item(), rel=1e-10)
        opt_ours.step()
        opt_ref.step()
        tau = module.target.step(module.backbone, module.projector, k + 1, total)  # what optimizer_step calls
        assert tau == pytest.approx(1 - 0.1 * (math.cos(math.pi * (k + 1) / total) + 1) / 2)
        with torch.no_grad():
            for xi, theta in zip(ema.parameters(), online.parameters(), strict=True):
                xi.mul_(tau).add_((1 - tau) * theta)
            for b_t, b_o in zip(ema.buffers(), online.buffers(), strict=True):
                b_t.copy_(b_o)
    ours = [*module.target.backbone.parameters(), *module.target.projector.parameters()]
    for a, b in zip(ours, ema.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    assert not torch.allclose(ours[0], module.backbone[0].weight)  # the target lags the online network


@pytest.mark.parametrize(
    "clip",
    [
        [],
        ["trainer.gradient_clip_val=0.01"],
        ["trainer.gradient_clip_val=0.01", "+trainer.gradient_clip_algorithm=value"],
    ],
    ids=["no clipping", "clip norm", "clip value"],
)
def test_the_online_probe_does_not_train_the_encoder(clip, tmp_path):
    """The probe reads detached features, and gradient clipping leaves its gradients out of the encoder's norm: with
    and without it, the encoder and heads take the same steps."""
    steps = ["trainer.max_steps=4", "trainer.limit_val_batches=0", *clip]
    run(compose_train(TINY + steps + ["online_probe=true"], tmp_path / "probe"))
    run(compose_train(TINY + steps + ["online_probe=false"], tmp_path / "none"))
    with_probe, without = (
        torch.load(tmp_path / d / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
        for d in ("probe", "none")
    )
    assert any(k.startswith("probe.") for k in with_probe) and not any(k.startswith("probe.") for k in without)
    assert {k for k in with_probe if not k.startswith("probe.")} == set(without)
    for key, value in without.items():
        assert torch.equal(with_probe[key], value), key
