"""Sweeps: every job checked before anything launches, Optuna on RankMe, run directories named by the swept keys."""

import os
import subprocess
import sys

import pytest

from selfsup.config import ROOT
from selfsup.runtime.sweep import sweep_jobs
from tests.runs import TINY, val_metrics


def check_sweep(overrides, run_dir, params=None):
    """Compose ``selfsup-train -m <overrides>`` (plus Optuna ``params``) and run the pre-launch check on it."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.types import RunMode
    from omegaconf import open_dict

    from selfsup.config import CONF_DIR
    from selfsup.runtime.errors import running_as
    from selfsup.runtime.sweep import SweepCheck, checking_parts
    from selfsup.train.build import check_parts

    # what selfsup-train's main() sets around its Hydra app
    with (
        running_as("selfsup-train"),
        checking_parts(check_parts),
        initialize_config_dir(str(CONF_DIR), version_base="1.3"),
    ):
        loader = GlobalHydra.instance().config_loader()
        cfg = loader.load_configuration("train", [f"run_dir={run_dir}", *overrides], RunMode.MULTIRUN)
        with open_dict(cfg):
            cfg.hydra.sweeper.params = params or cfg.hydra.sweeper.get("params")
        SweepCheck().on_multirun_start(config=cfg)
        return cfg


@pytest.mark.parametrize(
    "overrides,params,message",
    [
        (["launcher=slurm", "optim.lr=0.1,0.2"], None, "launcher.partition=None: the SLURM launcher needs a partition"),
        (
            [
                "launcher=slurm",
                "launcher.partition=gpu",
                "launcher.max_gpus_per_node=8",
                "launcher.gpus_per_node=16",
                "optim.lr=0.1,0.2",
            ],
            None,
            "launcher.gpus_per_node=16: more GPUs than a node of partition gpu has (8)",
        ),
        (["objective.temprature=0.1,0.2"], None, "Could not override 'objective.temprature'"),
        (
            ["sweeper=optuna"],
            {"objective.temprature": "interval(0.1, 0.5)"},
            "Could not override 'objective.temprature'",
        ),
        (["objective.temperature=0.2,0"], None, "temperature=0"),
        (["projector.out_dim=0,128"], None, "projector.out_dim=0: expected a positive integer"),
        (["sweeper=optuna"], {"optim.lr": "choice(-1, 0.1)"}, "lr=-1"),
    ],
    ids=[
        "no-partition",
        "too-many-gpus",
        "unknown-key",
        "optuna-unknown-key",
        "bad-value-second",
        "zero-width",
        "optuna-bad-value",
    ],
)
def test_bad_sweeps_fail_in_one_line_before_launching(overrides, params, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        check_sweep(overrides, tmp_path, params)
    assert info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("selfsup-train: error: ") and message in lines[0], lines


def test_a_sweep_check_without_a_parts_check_fails_in_one_line(tmp_path, capsys, monkeypatch):
    """SweepCheck runs the parts check the command hands it (selfsup.runtime.sweep.checking_parts); none: one line."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.types import RunMode

    from selfsup.config import CONF_DIR
    from selfsup.runtime.errors import running_as
    from selfsup.runtime.sweep import SweepCheck

    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    with running_as("selfsup-train"), initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = GlobalHydra.instance().config_loader().load_configuration("train", ["seed=1,2"], RunMode.MULTIRUN)
        with pytest.raises(SystemExit) as info:
            SweepCheck().on_multirun_start(config=cfg)
    assert info.value.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("selfsup-train: error: hydra.callbacks: SweepCheck has no parts check"), line


def test_good_sweeps_pass_the_check(tmp_path):
    check_sweep(["optim.lr=0.1,0.2", "seed=1,2"], tmp_path)
    check_sweep(["sweeper=optuna"], tmp_path)  # its default search space exists in the default config
    check_sweep(["launcher=slurm", "launcher.partition=gpu", "launcher.max_gpus_per_node=8", "trainer=ddp"], tmp_path)


def test_sweep_jobs_expand_the_command_line(tmp_path):
    from omegaconf import OmegaConf

    cfg = OmegaConf.create({"hydra": {"overrides": {"task": ["optim.lr=0.1,0.2", "seed=1,2"]}, "sweeper": {}}})
    jobs = sorted(map(sorted, sweep_jobs(cfg)))
    assert jobs == sorted(sorted([f"optim.lr={lr}", f"seed={s}"]) for lr in (0.1, 0.2) for s in (1, 2))
    cfg.hydra.sweeper.params = {
        "optim.lr": "tag(log, interval(1e-4, 1e-2))",
        "objective.temperature": "choice(0.1,0.2)",
    }
    cfg.hydra.overrides.task = []
    assert sweep_jobs(cfg) == [["optim.lr=0.0001", "objective.temperature=0.1"]]


@pytest.mark.slow
def test_local_sweep_cli_checks_first_then_optuna_maximises_rankme(tmp_path):
    """The console script: a sweep over a misspelt key runs no job; Optuna runs 2 trials returning val/rankme."""
    env = dict(os.environ, HYDRA_FULL_ERROR="0")
    base = [sys.executable, "-m", "selfsup.train", "-m", *TINY, "trainer.max_epochs=1"]
    bad = [f"hydra.sweep.dir={tmp_path / 'bad'}", "objective.temperature=0.1,0.2", "optim.lrr=0.1,0.2"]
    proc = subprocess.run(base + bad, capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1].startswith("selfsup-train: error: Could not override 'optim.lrr'")
    assert not any(p.is_dir() for p in (tmp_path / "bad").glob("*")), "no job may have started"
    # a bad value in the second point: refused before the first point trains
    bad = [f"hydra.sweep.dir={tmp_path / 'bad2'}", "objective.temperature=0.2,0"]
    proc = subprocess.run(base + bad, capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert proc.returncode == 2 and "temperature=0" in proc.stderr.strip().splitlines()[-1], proc.stderr[-2000:]
    assert not any(p.is_dir() for p in (tmp_path / "bad2").glob("*")), "no job may have started"
    sweep = tmp_path / "optuna"
    proc = subprocess.run(
        base
        + [
            "sweeper=optuna",
            "hydra.sweeper.n_trials=2",
            f"hydra.sweep.dir={sweep}",
            "hydra.sweep.subdir=${hydra.job.num}",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    from omegaconf import OmegaConf

    result = OmegaConf.load(sweep / "optimization_results.yaml")
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["0", "1"]
    trials = {}  # each trial's last val/rankme, and the values Optuna chose for it
    for trial in ("0", "1"):
        chosen = dict(o.split("=", 1) for o in OmegaConf.load(sweep / trial / ".hydra" / "overrides.yaml"))
        trials[trial] = (val_metrics(sweep / trial)["val/rankme"], chosen)
    best = max(trials.values(), key=lambda t: t[0])
    assert min(t[0] for t in trials.values()) < best[0]  # two different trials: the direction matters
    assert result.best_value == pytest.approx(best[0])  # maximised, not minimised
    assert {k: str(v) for k, v in result.best_params.items()} == {k: best[1][k] for k in result.best_params}
    assert set(result.best_params) == {"objective.temperature", "optim.lr"}


@pytest.mark.slow
def test_sweep_runs_are_named_by_the_swept_keys_only(tmp_path):
    """Fixed overrides (an absolute data.root, TINY's sizes) do not name the run directories: one level below the
    sweep directory, `optim.lr=<value>`."""
    env = dict(os.environ, HYDRA_FULL_ERROR="0")
    cmd = [
        sys.executable,
        "-m",
        "selfsup.train",
        "-m",
        *TINY,
        "trainer.max_steps=2",
        f"data.root={tmp_path}/a/b",
        "optim.lr=0.001,0.002",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = sorted(p.parent.parent.relative_to(tmp_path / "sweep") for p in (tmp_path / "sweep").rglob("last.ckpt"))
    assert [str(r) for r in runs] == ["optim.lr=0.001", "optim.lr=0.002"]
