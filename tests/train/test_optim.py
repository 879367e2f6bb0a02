import csv
import math

import pytest
import torch
from hydra.utils import instantiate

from selfsup.train import run
from selfsup.train.optim import LARS, OptimizerSpec, warmup_cosine
from tests.config_utils import compose_train
from tests.runs import TINY


def test_lars_step_matches_the_formula():
    torch.manual_seed(0)
    w, b = torch.randn(4, 3, requires_grad=True), torch.randn(4, requires_grad=True)
    w.grad, b.grad = torch.randn(4, 3), torch.randn(4)
    w0, b0, gw, gb = w.detach().clone(), b.detach().clone(), w.grad.clone(), b.grad.clone()
    opt = LARS(
        [dict(params=[w], weight_decay=0.1, lars=True), dict(params=[b], weight_decay=0.0, lars=False)],
        lr=0.5,
        momentum=0.9,
        eta=0.02,
    )
    opt.step()
    g = gw + 0.1 * w0
    torch.testing.assert_close(w.detach(), w0 - 0.5 * g * (0.02 * w0.norm() / g.norm()))
    torch.testing.assert_close(b.detach(), b0 - 0.5 * gb)  # excluded: plain momentum SGD


def test_lars_momentum_buffer_over_several_steps():
    """Three steps with new gradients: μ ← m·μ + g̃ carries the earlier steps (facebookresearch/barlowtwins
    ``main.py::LARS``), for the adapted group and the plain one."""
    torch.manual_seed(0)
    w, b = torch.randn(4, 3, requires_grad=True), torch.randn(4, requires_grad=True)
    opt = LARS(
        [dict(params=[w], weight_decay=0.1, lars=True), dict(params=[b], weight_decay=0.0, lars=False)],
        lr=0.5,
        momentum=0.9,
        eta=0.02,
    )
    ref_w, ref_b = w.detach().clone(), b.detach().clone()
    mu_w, mu_b = torch.zeros_like(ref_w), torch.zeros_like(ref_b)
    for _ in range(3):
        w.grad, b.grad = torch.randn(4, 3), torch.randn(4)
        g = w.grad + 0.1 * ref_w
        mu_w = 0.9 * mu_w + g * (0.02 * ref_w.norm() / g.norm())
        mu_b = 0.9 * mu_b + b.grad
        ref_w, ref_b = ref_w - 0.5 * mu_w, ref_b - 0.5 * mu_b
        opt.step()
        torch.testing.assert_close(w.detach(), ref_w)
        torch.testing.assert_close(b.detach(), ref_b)
    assert not torch.allclose(mu_w, g * (0.02 * ref_w.norm() / g.norm()))  # the buffer is not the last step alone


def test_schedule_warms_up_then_decays_to_min():
    mult = [warmup_cosine(s, 10, 110, 0.1) for s in range(110)]
    assert mult[0] == pytest.approx(0.1) and mult[9] == pytest.approx(1.0)
    assert mult[10] == pytest.approx(1.0) and mult[60] == pytest.approx(0.1 + 0.9 * 0.5)
    assert warmup_cosine(110, 10, 110, 0.1) == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(mult[10:], mult[11:]))


def test_spec_groups_scaling_and_warmup_cap():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    probe = torch.nn.Linear(4, 2)
    spec = OptimizerSpec(name="lars", lr=0.3, lr_scaling="linear", weight_decay=1e-6, warmup_epochs=10, probe_lr=0.1)
    opt, sched = spec.build(model.parameters(), probe.parameters(), global_batch=512, total_steps=20, steps_per_epoch=5)
    regular, excluded, probe_group = opt.param_groups
    assert [p.shape for p in regular["params"]] == [(4, 3)] and regular["weight_decay"] == 1e-6
    assert len(excluded["params"]) == 3 and excluded["weight_decay"] == 0 and not excluded["lars"]
    assert probe_group["initial_lr"] == 0.1 and not probe_group["lars"]
    assert regular["initial_lr"] == pytest.approx(0.6)  # 0.3 x 512 / 256
    # warm-up of 10 epochs x 5 steps is capped to the 20-step run
    assert regular["lr"] == pytest.approx(0.6 / 19)
    assert OptimizerSpec(lr=0.3, lr_scaling="sqrt").scaled_lr(1024) == pytest.approx(0.6)
    assert OptimizerSpec(lr=0.3, lr_scaling="none").scaled_lr(1024) == pytest.approx(0.3)
    assert math.isfinite(sched.get_last_lr()[0])


@pytest.mark.parametrize(
    "kwargs,key",
    [(dict(name="adam"), "optim.name"), (dict(lr=0), "optim.lr"), (dict(lr_scaling="log"), "optim.lr_scaling")],
)
def test_bad_optimiser_settings_are_refused(kwargs, key):
    with pytest.raises(ValueError, match=key):
        OptimizerSpec(**kwargs)


def test_weight_decay_follows_dinos_cosine():
    """optim.weight_decay_end: the decayed groups' weight decay goes from weight_decay to weight_decay_end on
    DINO's cosine (utils.cosine_scheduler: end + 0.5 (start − end)(1 + cos(π i / n))); the excluded groups stay at 0."""
    import math

    model = torch.nn.Linear(3, 2)
    spec = OptimizerSpec(name="adamw", lr=1e-3, weight_decay=0.04, weight_decay_end=0.4, warmup_epochs=0)
    opt, sched = spec.build(model.parameters(), [], 256, total_steps=10, steps_per_epoch=5)
    seen = []
    for _ in range(10):
        seen.append([g["weight_decay"] for g in opt.param_groups])
        opt.step()
        sched.step()
    for i, (decayed, excluded) in enumerate(seen):
        assert decayed == pytest.approx(0.4 + 0.5 * (0.04 - 0.4) * (1 + math.cos(math.pi * i / 10)))
        assert excluded == 0.0


@pytest.mark.slow
def test_a_resume_that_changes_the_runs_length_keeps_the_lr_schedule(tmp_path, caplog):
    """docs/runs.md, "Resuming": a finished 20-step run resumed with trainer.max_epochs=3 (30 steps) keeps its
    schedule — peak x warmup_cosine(step, 10, 20, min_lr_ratio), flat at min_lr_ratio x the peak after step 20 — and
    says so in one warning line."""
    overrides = TINY + ["optim.min_lr_ratio=0.1"]  # 10 steps an epoch, warm-up 1 epoch, 32 rows a step
    cfg = compose_train(overrides, tmp_path)
    peak = instantiate(cfg.optim).scaled_lr(32)
    run(cfg)
    with caplog.at_level("WARNING", logger="selfsup.optim"):
        run(compose_train(overrides + ["trainer.max_epochs=3", "resume=true"], tmp_path))
    with open(tmp_path / "metrics.csv") as f:
        lr = {int(r["step"]): float(r["train/lr"]) for r in csv.DictReader(f) if r.get("train/lr")}
    assert sorted(lr) == list(range(30))
    for step, value in lr.items():
        assert value == pytest.approx(peak * warmup_cosine(step, 10, 20, 0.1), rel=1e-6), step
    assert [r.getMessage() for r in caplog.records if r.name == "selfsup.optim"] == [
        "resume: the run is now 30 optimiser steps long, its LR schedule 20 (trainer.max_steps/max_epochs changed): "
        "the schedule is kept; steps 20-29 run at its final LR, optim.min_lr_ratio=0.1 x the peak"
    ]


def test_a_shorter_resumed_run_keeps_the_lr_schedule(caplog):
    """The schedule's state restored into one built for fewer steps: the LR stays on the saved schedule."""
    w = torch.nn.Parameter(torch.zeros(2))
    _, saved = OptimizerSpec(lr=0.256, warmup_epochs=1).build([w], [], 256, total_steps=40, steps_per_epoch=10)
    for _ in range(12):
        saved.optimizer.step()
        saved.step()
    opt, resumed = OptimizerSpec(lr=0.256, warmup_epochs=1).build([w], [], 256, total_steps=20, steps_per_epoch=10)
    opt.load_state_dict(saved.optimizer.state_dict())
    with caplog.at_level("WARNING", logger="selfsup.optim"):
        resumed.load_state_dict(saved.state_dict())
    for step in range(12, 20):
        assert opt.param_groups[0]["lr"] == pytest.approx(0.256 * warmup_cosine(step, 10, 40)), step
        opt.step()
        resumed.step()
    assert f"the run stops at step 20, at {warmup_cosine(19, 10, 40):.4g} x the peak LR" in caplog.text
