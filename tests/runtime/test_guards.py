"""A non-finite loss stops the run (one line, naming the step) before it reaches the weights; or is skipped."""

import os
import re
import subprocess
import sys

import lightning as L
import pytest
import torch

from selfsup.config import ROOT
from selfsup.runtime.guards import NonFiniteLoss
from tests.config_utils import compose_train
from tests.runs import TINY, rows


class PoisonAt(L.Callback):
    """Put a NaN into the first view of optimiser step ``step``; record the weights and optimiser state around it."""

    def __init__(self, step: int):
        self.step, self.seen = step, {}

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if trainer.global_step in (self.step, self.step + 1):
            state = {k: v.clone() for k, v in module.state_dict().items()}
            opt = trainer.optimizers[0].state_dict()["state"]
            self.seen[trainer.global_step] = (state, {k: {n: t.clone() for n, t in s.items()} for k, s in opt.items()})
        if trainer.global_step == self.step:
            batch["views"][0][0].fill_(float("nan"))


def test_first_non_finite_loss_stops_with_the_step_and_keeps_the_finite_checkpoint(tmp_path):
    poison = PoisonAt(13)
    cfg = compose_train(TINY + ["callbacks.last.every_n_train_steps=4"], tmp_path)
    from selfsup import train

    datamodule, module, trainer = train.build(cfg)
    trainer.callbacks.append(poison)
    with pytest.raises(
        NonFiniteLoss,
        match=r"training loss is nan at step 13 \(epoch 1\): stopped before it changed "
        r"the weights; .*last.ckpt holds step 12",
    ):
        trainer.fit(module, datamodule=datamodule)
    state, _ = poison.seen[13]
    after = module.state_dict()
    assert all(torch.equal(after[k], v) for k, v in state.items())  # the NaN never reached the weights
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 12
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point())


def test_skipped_step_leaves_weights_and_optimiser_state_alone(tmp_path):
    poison = PoisonAt(5)
    cfg = compose_train(TINY + ["trainer.max_epochs=1", "callbacks.nonfinite.max_skips=1"], tmp_path)
    from selfsup import train

    datamodule, module, trainer = train.build(cfg)
    trainer.callbacks.append(poison)
    trainer.fit(module, datamodule=datamodule)
    assert trainer.global_step == 10  # the step is counted (schedule and data order move on)
    (w5, opt5), (w6, opt6) = poison.seen[5], poison.seen[6]
    assert all(torch.equal(w5[k], w6[k]) for k in w5)
    assert all(torch.equal(opt5[p][n], opt6[p][n]) for p in opt5 for n in opt5[p])
    assert all(torch.isfinite(p).all() for p in module.parameters())
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["callbacks"]["NonFiniteGuard"]["skipped"] == 1


def test_huge_learning_rate_ends_in_one_line_from_the_cli(tmp_path):
    env = dict(os.environ, HYDRA_FULL_ERROR="0")
    cmd = [
        sys.executable,
        "-m",
        "selfsup.train",
        *TINY,
        "optim.lr=1e30",
        "optim.warmup_epochs=0",
        f"hydra.run.dir={tmp_path}",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("selfsup-train: error: training loss is nan at step "), last
    assert "RankMe" not in proc.stderr


def test_bad_max_skips_is_refused(tmp_path):
    with pytest.raises(Exception, match=r"callbacks.nonfinite.max_skips=-1: expected an integer >= 0"):
        train_build(compose_train(TINY + ["callbacks.nonfinite.max_skips=-1"], tmp_path))


def train_build(cfg):
    from selfsup.train import build

    return build(cfg)


def test_collapse_measures_of_known_embeddings():
    from selfsup.runtime.guards import CollapseMonitor

    g = torch.Generator().manual_seed(0)
    spread = torch.randn(512, 16, generator=g)
    std, rank = CollapseMonitor.measure(spread)
    assert std == pytest.approx(1.0, abs=0.05) and rank > 14  # isotropic: every direction used
    std, rank = CollapseMonitor.measure(torch.ones(64, 16) + 1e-6 * torch.randn(64, 16, generator=g))
    assert std < 1e-4 and rank < 1.01  # one point
    flat = torch.randn(512, 2, generator=g) @ torch.randn(2, 16, generator=g)  # collapsed onto a plane
    assert CollapseMonitor.measure(flat)[1] <= 2.0


PRED = "predictor={_target_:selfsup.models.mlp,_partial_:true,hidden_dim:512,out_dim:64}"
NO_STOPGRAD = ["objective=negative_cosine", "objective.offset=0.0", "objective.scale=1.0", PRED, "target=none"]


@pytest.mark.parametrize("method", ["simclr", "simsiam_without_stopgrad"])
def test_a_collapsing_run_is_warned_about_once_with_its_step(method, tmp_path, caplog):
    """SimSiam without its stop-gradient collapses (Chen & He 2021, §4.1); SimCLR at the same budget does not."""
    from selfsup.train import run

    overrides = NO_STOPGRAD if method != "simclr" else []
    cfg = compose_train(
        [
            "recipes=quickstart",
            "report_baseline=false",
            "trainer.max_steps=22",
            "data.num_workers=0",
            "callbacks.progress=null",
            "callbacks.collapse.every_n_steps=3",
            "trainer.log_every_n_steps=1",
            "trainer.limit_val_batches=0",
            *overrides,
        ],
        tmp_path,
    )
    with caplog.at_level("WARNING", logger="selfsup.runtime.guards"):
        run(cfg)
    warned = [r.getMessage() for r in caplog.records if "collapsed" in r.getMessage()]
    logged = rows(tmp_path)
    std = {step: v for (step, key), v in logged.items() if key == "train/embed_std"}
    assert {k for _, k in logged} >= {"train/embed_std", "train/rankme"}
    if method == "simclr":
        assert not warned and min(std.values()) > 0.5
    else:
        assert len(warned) == 1 and "\n" not in warned[0]
        assert re.match(r"the representation collapsed at step (\d+): train/embed_std 0\.0\d\d", warned[0]), warned
        assert min(std.values()) < 0.1


def test_bad_collapse_settings_are_refused():
    from selfsup.runtime.guards import CollapseMonitor

    for kwargs, message in (
        (dict(every_n_steps=-1), "every_n_steps=-1: expected an integer >= 0"),
        (dict(every_n_steps=True), "every_n_steps=True: expected an integer >= 0"),
        (dict(min_std=2.0), "min_std=2.0: expected a number in [0, 1)"),
        (dict(min_std=float("nan")), "min_std=nan: expected a number in [0, 1)"),
        (dict(min_rankme=-1.0), "min_rankme=-1.0: expected a number >= 0"),
        (dict(eigenvalues=2.5), "eigenvalues=2.5: expected an integer >= 0"),
    ):
        with pytest.raises(ValueError) as info:
            CollapseMonitor(**kwargs)
        assert str(info.value) == f"callbacks.collapse.{message}"
