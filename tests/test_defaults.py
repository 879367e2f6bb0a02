"""The documented run-safety defaults are the code's (issue 28): the README's numbers, parsed from its text, equal the
constructors' defaults, conf/ and the behaviour —

- ``last.ckpt`` every 30 minutes (``LastCheckpoint(every_n_minutes=30)``, conf/callbacks/default.yaml);
- a lock without a heartbeat for 5 minutes is stale (``selfsup.runtime.lock.STALE_AFTER_S``; taken over after it,
  refused before it);
- collapse logged every 10 steps (``CollapseMonitor(every_n_steps=10)``, conf/callbacks/default.yaml).
"""

import inspect
import json
import os
import re
import time

import pytest
from hydra.utils import instantiate

from selfsup.runtime import lock
from selfsup.runtime.autosave import LastCheckpoint
from selfsup.runtime.guards import CollapseMonitor
from tests.config_utils import compose_train
from tests.conftest import ROOT


def text_of(path) -> str:
    return " ".join((ROOT / path).read_text().split())  # line breaks inside sentences become spaces


def number(pattern: str, path: str = "README.md") -> float:
    found = re.findall(pattern, text_of(path))
    assert len(found) == 1, f"{path}: expected one match of {pattern!r}, found {found}"
    return float(found[0])


def readme_minutes_between_saves() -> float:
    return number(r"every `callbacks\.last\.every_n_minutes` \((\d+) by default\)")


def readme_stale_minutes() -> float:
    return number(r"no heartbeat for (\d+) minutes")


def readme_collapse_steps() -> float:
    return number(r"`train/rankme` every (\d+) steps")


def default_of(cls, name: str):
    return inspect.signature(cls.__init__).parameters[name].default


@pytest.fixture(scope="module")
def callbacks_conf(tmp_path_factory):
    return compose_train([], tmp_path_factory.mktemp("run")).callbacks


def test_readme_states_the_numbers():
    assert (readme_minutes_between_saves(), readme_stale_minutes(), readme_collapse_steps()) == (30, 5, 10)


def test_last_checkpoint_every_30_minutes(callbacks_conf, tmp_path):
    minutes = readme_minutes_between_saves()
    assert default_of(LastCheckpoint, "every_n_minutes") == minutes
    assert LastCheckpoint(tmp_path).every_n_minutes == minutes
    assert callbacks_conf.last.every_n_minutes == minutes
    assert instantiate(callbacks_conf.last).every_n_minutes == minutes
    assert number(r"`every_n_minutes` have passed since the previous save \(default (\d+)", "docs/runs.md") == minutes


def test_collapse_logged_every_10_steps(callbacks_conf):
    steps = readme_collapse_steps()
    assert default_of(CollapseMonitor, "every_n_steps") == steps
    assert CollapseMonitor().every_n_steps == steps
    assert callbacks_conf.collapse.every_n_steps == steps
    assert instantiate(callbacks_conf.collapse).every_n_steps == steps
    assert number(r"every `every_n_steps` \((\d+)\) optimiser steps", "docs/runs.md") == steps


def lock_of_another_host(run_dir, age_s: float):
    """A lock file as a run on another host leaves it, its heartbeat ``age_s`` seconds old."""
    run_dir.mkdir(exist_ok=True)
    path = run_dir / lock.LOCK_NAME
    path.write_text(
        json.dumps(
            {
                "host": "another-host.invalid",
                "pid": 1,
                "start": None,
                "slurm_job": None,
                "since": "2026-01-01 00:00:00",
                "argv": ["selfsup-train"],
            }
        )
    )
    then = time.time() - age_s
    os.utime(path, (then, then))
    return path


def test_lock_stale_after_5_minutes(tmp_path):
    stale_s = 60 * readme_stale_minutes()
    assert lock.STALE_AFTER_S == stale_s
    assert number(r"heartbeat is older than (\d+) minutes", "docs/runs.md") == readme_stale_minutes()
    assert lock.HEARTBEAT_S < stale_s  # a live run refreshes it well within that

    fresh = tmp_path / "fresh"
    lock_of_another_host(fresh, stale_s - 30)
    with pytest.raises(lock.RunDirBusy, match="another-host.invalid"):
        lock.RunLock(fresh).acquire()

    old = tmp_path / "old"
    path = lock_of_another_host(old, stale_s + 30)
    with lock.RunLock(old):
        assert json.loads(path.read_text())["pid"] == os.getpid()  # taken over
    assert not path.exists()
