"""Against a real SLURM (``.ci/slurm-up.sh``, which ``.ci/run`` starts): the sbatch template, a Hydra sweep through
hydra-submitit-launcher, and a job requeued mid-run that finishes from its checkpoint. Skipped without SLURM."""

import csv
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from selfsup.config import ROOT
from selfsup.train import run
from tests.config_utils import compose_train
from tests.runs import TINY, losses

# No reruns: a requeue landing at an epoch boundary used to resume one epoch short (the loader read Lightning's
# epoch counter before Lightning adjusted it); the loader position now comes from the step count, and
# tests/runtime/test_resume.py resumes at every position of an epoch.
# one cluster: its tests run in one worker
pytestmark = [pytest.mark.slurm, pytest.mark.slow, pytest.mark.xdist_group("slurm")]
SLURM_DIR = Path(os.environ.get("SELFSUP_SLURM_DIR", "/tmp/selfsup-slurm"))
TRAIN = f"{sys.executable} -m selfsup.train"
CPU_JOB = ["--ntasks-per-node=1", "--gpus-per-node=0", "--cpus-per-task=1", "--time=5"]


def _slurm_env() -> dict | str:
    """Environment for SLURM clients, or why there is no usable cluster."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    if "SLURM_CONF" not in env and (SLURM_DIR / "slurm.conf").is_file():
        env["SLURM_CONF"] = str(SLURM_DIR / "slurm.conf")
    for var in [v for v in env if v.startswith("SLURM_") and v != "SLURM_CONF"]:
        del env[var]  # running inside a job allocation must not leak into the jobs we submit
    for var in ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK", "LOCAL_RANK", "NODE_RANK"):
        env.pop(var, None)  # nor a rendezvous of this test process: jobs get theirs from SLURM
    if shutil.which("sbatch") is None or shutil.which("sinfo") is None:
        return "no SLURM client (sbatch/sinfo) on PATH: run .ci/slurm-up.sh (as root) to start a local cluster"
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%P %t"], capture_output=True, text=True, env=env, timeout=15)
    except subprocess.TimeoutExpired:
        return "sinfo did not answer in 15 s: no reachable slurmctld"
    states = out.stdout.split()
    if out.returncode != 0 or not any(s in ("idle", "mix", "alloc") for s in states[1::2]):
        return f"no usable SLURM node (sinfo: {out.stdout.strip() or out.stderr.strip()!r}): run .ci/slurm-up.sh"
    env["SELFSUP_TEST_PARTITION"] = states[0].rstrip("*")
    return env


@pytest.fixture(scope="module")
def slurm():
    env = _slurm_env()
    if isinstance(env, str):
        pytest.skip(env)
    return env


def sbatch(env, args: list[str], overrides: list[str], run_dir: Path, log: Path) -> str:
    env = dict(env, RUN_DIR=str(run_dir), SELFSUP_TRAIN=TRAIN)
    cmd = ["sbatch", "--parsable", f"--output={log}", *args, str(ROOT / "slurm" / "train.sbatch"), *overrides]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=log.parent, timeout=30, check=True)
    return out.stdout.strip().split(";")[0]


def wait_for(predicate, timeout: float, what: str, poll: float = 0.5):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(poll)
    raise TimeoutError(f"{what} not within {timeout} s")


def job_gone(env, job: str) -> bool:
    out = subprocess.run(["squeue", "-h", "-j", job], capture_output=True, text=True, env=env, timeout=15)
    return out.returncode != 0 or not out.stdout.strip()


def steps_logged(run_dir: Path) -> list[int]:
    try:
        with open(run_dir / "metrics.csv") as f:
            return [int(r["step"]) for r in csv.DictReader(f) if r.get("train/loss")]
    except (FileNotFoundError, KeyError, ValueError):
        return []


def test_sbatch_template_two_ranks_requeue_themselves_on_usr1(slurm, tmp_path):
    """(a) slurm/train.sbatch: srun starts 2 CPU tasks, Lightning's SLURMEnvironment makes them DDP ranks (global
    batch 32 = 2 x 16). SIGUSR1 (what --signal=USR1@120 sends) at step >= 12 of 30: both ranks save at the same
    step, rank 0 requeues the job, the restart resumes and completes every step once."""
    run_dir, log = tmp_path / "run", tmp_path / "job.out"
    two_tasks = ["--ntasks-per-node=2", *CPU_JOB[1:]]
    ddp = ["trainer.max_epochs=3", "global_batch_size=32", "trainer.strategy=ddp"]
    job = sbatch(slurm, two_tasks, TINY + ddp, run_dir, log)
    try:
        wait_for(lambda: len(steps_logged(run_dir)) >= 12, 90, "12 logged steps", poll=0.2)
        subprocess.run(["scancel", "--signal=USR1", job], env=slurm, timeout=15, check=True)
        wait_for(lambda: job_gone(slurm, job), 150, f"job {job}", poll=1)
    finally:
        subprocess.run(["scancel", job], env=slurm, timeout=15)  # never leave a job running after a failure
    text = log.read_text()
    assert "requeued SLURM job" in text and f"selfsup: job {job} restart 1" in text, text[-3000:]
    saved = re.findall(r"rank (\d): saved .* at step (\d+) after SIGUSR1", text)
    assert sorted(r for r, _ in saved) == ["0", "1"] and len({s for _, s in saved}) == 1, text[-3000:]
    assert "resuming from" in text, text[-3000:]
    assert sorted(steps_logged(run_dir)) == list(range(30)), text[-3000:]
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 30


def test_hydra_sweep_through_submitit_with_a_preempted_point(slurm, tmp_path):
    """(b) a 2-point sweep with launcher=slurm: one SLURM job and one run directory per point, named by its
    overrides. Point 0 gets submitit's time-limit signal (SIGUSR2) mid-run: it saves, submitit requeues it, and it
    resumes; both finish every step once."""
    cmd = [
        sys.executable,
        "-m",
        "selfsup.train",
        "-m",
        *TINY,
        "trainer.max_epochs=3",
        "launcher=slurm",
        f"launcher.partition={slurm['SELFSUP_TEST_PARTITION']}",
        "launcher.gpus_per_node=null",
        "launcher.tasks_per_node=1",
        "launcher.cpus_per_task=1",
        "launcher.time_min=5",
        f"hydra.sweep.dir={tmp_path}",
        "optim.lr=0.001,0.002",
    ]  # run dirs named by the swept key
    with open(tmp_path / "sweep.err", "w") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, env=slurm, cwd=tmp_path)
        try:
            first = tmp_path / "optim.lr=0.001"
            wait_for(lambda: len(steps_logged(first)) >= 12, 120, "12 logged steps of point 0", poll=0.2)
            array = next(p.name for p in (tmp_path / ".submitit").iterdir() if p.name.endswith("_0"))
            subprocess.run(["scancel", "--signal=USR2", array], env=slurm, timeout=15, check=True)
            assert proc.wait(timeout=150) == 0, (tmp_path / "sweep.err").read_text()[-3000:]
        finally:
            if proc.poll() is None:
                proc.kill()
                jobs = {p.name.split("_")[0] for p in (tmp_path / ".submitit").glob("*_*")}
                if jobs:  # never leave the sweep's jobs running after a failure
                    subprocess.run(["scancel", *sorted(jobs)], env=slurm, timeout=15)
    for lr in ("0.001", "0.002"):
        run_dir = tmp_path / f"optim.lr={lr}"
        assert sorted(steps_logged(run_dir)) == list(range(30)), run_dir
        ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
        assert ckpt["selfsup"]["config"]["optim"]["lr"] == float(lr)
        assert ckpt["selfsup"]["config"]["resume"] == "auto"  # a requeued job continues its directory
    logs = "".join(p.read_text() for p in (tmp_path / ".submitit").glob(f"{array}/*_log.*"))
    assert "saved" in logs and "resuming from" in logs, logs[-3000:]
    assert len(list((tmp_path / ".submitit").glob("*/*_result.pkl"))) == 2


def test_scontrol_requeue_mid_run_resumes_from_checkpoint(slurm, tmp_path):
    """(c) `scontrol requeue` (SIGTERM) at step >= 12 of 40: the run saves last.ckpt, SLURM restarts the job, it
    resumes from the checkpoint and its loss curve equals an uninterrupted run of the same seed, bit for bit."""
    overrides = TINY + ["trainer.max_epochs=4"]
    run_dir, log = tmp_path / "run", tmp_path / "job.out"
    job = sbatch(slurm, CPU_JOB, overrides, run_dir, log)
    try:
        wait_for(lambda: len(steps_logged(run_dir)) >= 12, 90, "12 logged steps", poll=0.2)
        subprocess.run(["scontrol", "requeue", job], env=slurm, timeout=15, check=True)
        run(compose_train(overrides, tmp_path / "reference"))  # meanwhile: the same run, uninterrupted, here
        wait_for(lambda: job_gone(slurm, job), 150, f"requeued job {job}", poll=1)
    finally:
        subprocess.run(["scancel", job], env=slurm, timeout=15)  # never leave a job running after a failure
    text = log.read_text()
    assert "saved" in text and f"selfsup: job {job} restart 1" in text and "resuming from" in text, text[-3000:]
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 40
    steps = steps_logged(run_dir)
    assert sorted(steps) == list(range(40)), "every step logged exactly once"
    assert losses(run_dir) == losses(tmp_path / "reference")  # bit for bit: the CLI path is exact (commit f799707)


def test_bad_launcher_input_submits_nothing(slurm, tmp_path):
    """More GPUs than the partition's nodes have (none here): one line, exit 2, no job in the queue."""
    cmd = [
        sys.executable,
        "-m",
        "selfsup.train",
        "-m",
        *TINY,
        "launcher=slurm",
        f"launcher.partition={slurm['SELFSUP_TEST_PARTITION']}",
        "launcher.gpus_per_node=1",
        f"hydra.sweep.dir={tmp_path}",
        "optim.lr=1e-3,2e-3",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=slurm, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1].startswith("selfsup-train: error: launcher.gpus_per_node=1: more GPUs")
    assert not (tmp_path / ".submitit").exists()
