"""One run per directory: a live holder is refused in one line, a dead one's lock is taken over."""

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from selfsup.config import ROOT
from selfsup.runtime import lock as lock_mod
from selfsup.runtime.lock import RunDirBusy, RunLock
from tests.config_utils import TRUST_TESTS
from tests.runs import TINY

HOLD = (
    "import sys, time; from selfsup.runtime.lock import RunLock; l = RunLock(sys.argv[1]); l.acquire(); "
    "print('held', flush=True); time.sleep(60)"
)


@pytest.fixture
def holder(tmp_path):
    """Another live process holding tmp_path/'run'."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path / "run")], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    yield proc
    proc.kill()
    proc.wait()


def test_a_live_holder_is_refused_with_its_name(holder, tmp_path):
    with pytest.raises(
        RunDirBusy,
        match=rf"hydra.run.dir=.*run: in use by pid {holder.pid} on "
        rf"{socket.gethostname()} since .*heartbeat",
    ):
        RunLock(tmp_path / "run").acquire()


def test_the_lock_of_a_killed_process_is_taken_over(holder, tmp_path, caplog):
    holder.kill()  # kill -9: the lock file stays behind
    holder.wait()
    assert (tmp_path / "run" / ".lock").is_file()
    with caplog.at_level("WARNING"), RunLock(tmp_path / "run"):
        assert json.loads((tmp_path / "run" / ".lock").read_text())["pid"] == os.getpid()
    assert f"pid {holder.pid} on this host is gone" in caplog.text
    assert not (tmp_path / "run" / ".lock").exists()  # released


def test_requeued_slurm_job_and_silent_remote_host_are_stale(tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    remote = {"host": "elsewhere", "pid": 1, "slurm_job": "4242", "since": "then"}
    (run_dir / ".lock").write_text(json.dumps(remote))
    with pytest.raises(RunDirBusy, match="in use by pid 1 on elsewhere .SLURM job 4242."):
        RunLock(run_dir).acquire()  # another host, fresh heartbeat: may be alive
    monkeypatch.setenv("SLURM_JOB_ID", "4242")  # the same job, requeued: its earlier run is over
    with RunLock(run_dir):
        pass
    monkeypatch.delenv("SLURM_JOB_ID")
    (run_dir / ".lock").write_text(json.dumps(remote))
    old = time.time() - lock_mod.STALE_AFTER_S - 5
    os.utime(run_dir / ".lock", (old, old))  # no heartbeat for longer than STALE_AFTER_S
    with RunLock(run_dir):
        pass


def test_heartbeat_refreshes_the_lock(tmp_path, monkeypatch):
    monkeypatch.setattr(lock_mod, "HEARTBEAT_S", 0.05)
    with RunLock(tmp_path / "run") as held:
        old = time.time() - 100
        os.utime(held.path, (old, old))
        time.sleep(0.3)
        assert time.time() - held.path.stat().st_mtime < 5


@pytest.mark.slow
def test_two_trainings_in_one_directory(tmp_path):
    """The second `selfsup-train` into a directory a live run holds (resume=true, so it would continue it) is
    refused in one line, and the first finishes with an intact metrics.csv. The first run waits at step 4 (after
    its step-2 checkpoint) until the second has been refused."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), HYDRA_FULL_ERROR="0")
    run_dir, release = tmp_path / "run", tmp_path / "release"
    cmd = [sys.executable, "-m", "selfsup.train", *TINY, "callbacks.last.every_n_train_steps=2"]
    cmd += [f"hydra.run.dir={run_dir}", TRUST_TESTS]
    pause = [
        "+callbacks.pause._target_=tests.runs.PauseAt",
        "+callbacks.pause.step=4",
        f"+callbacks.pause.release={release}",
    ]
    first = subprocess.Popen(
        cmd + pause, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT
    )
    try:
        deadline = time.monotonic() + 120
        while not (run_dir / "checkpoints" / "last.ckpt").exists():
            assert first.poll() is None and time.monotonic() < deadline, first.stderr.read()[-2000:]
            time.sleep(0.2)
        second = subprocess.run(cmd + ["resume=true"], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
        assert second.returncode == 2, second.stderr[-2000:]
        last = second.stderr.strip().splitlines()[-1]
        assert last.startswith(f"selfsup-train: error: hydra.run.dir={run_dir}: in use by pid {first.pid}"), last
        assert first.poll() is None  # still held at step 4
        release.touch()
        assert first.wait(timeout=600) == 0, first.stderr.read()[-2000:]
    finally:
        first.kill()
    import csv

    with open(run_dir / "metrics.csv") as f:
        steps = [int(r["step"]) for r in csv.DictReader(f) if r.get("train/loss")]
    assert steps == list(range(20))  # TINY: 2 epochs of 10 steps
    assert not (run_dir / ".lock").exists()
