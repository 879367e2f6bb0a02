"""selfsup-train from the command line: a sweep point's directory (docs/runs.md) as ``hydra.run.dir``,
``ckpt_path=`` and ``init_from=``, unquoted; the run directory named at the start; ``<run dir>/train.log`` holding
selfsup's lines, Lightning's and Python's warnings (conf/train.yaml, ``hydra.job_logging``)."""

import os
import subprocess
import sys

import pytest

from selfsup.config import ROOT
from tests.runs import TINY


def train(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, HYDRA_FULL_ERROR="0")
    proc = subprocess.run(
        [sys.executable, "-m", "selfsup.train", *TINY, *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.mark.slow
def test_sweep_point_directories_as_arguments_and_what_train_log_holds(tmp_path):
    point = tmp_path / "multirun" / "2026-12-05" / "19-07-45" / "objective.temperature=0.2,optim.lr=0.1"
    # 10 steps an epoch, logged every 50: Lightning warns through warnings.warn
    first = train("trainer.max_epochs=1", "trainer.log_every_n_steps=50", f"hydra.run.dir={point}")
    assert f"[selfsup.train.cli][INFO] - run directory {point}\n" in first.stdout  # also what `make train` shows
    log = (point / "train.log").read_text()
    for line in (
        f"[selfsup.train.cli][INFO] - run directory {point}\n",
        "[INFO] - GPU available: False",
        "smaller than the logging interval Trainer(log_every_n_steps=50)",
        "[INFO] - `Trainer.fit` stopped: `max_epochs=1` reached.\n",
    ):
        assert log.count(line) == 1, (line, log)
    # the console as before: Lightning's lines and the warning as bare lines on stderr, once each
    stderr = first.stderr.splitlines()
    assert "GPU available: False, used: False" in stderr and "`Trainer.fit` stopped: `max_epochs=1` reached." in stderr
    assert sum("smaller than the logging interval" in line for line in stderr) == 1

    last = point / "checkpoints" / "last.ckpt"
    train("trainer.max_epochs=2", f"ckpt_path={last}", f"hydra.run.dir={point}")
    assert f"[selfsup.runtime.resume][INFO] - resuming from {last} (step 10)" in (point / "train.log").read_text()

    second = tmp_path / "multirun" / "init_from=first"
    train("trainer.max_steps=2", f"init_from={point}", f"hydra.run.dir={second}")
    assert f"init_from: loaded 10 weights from {last} (step 20" in (second / "train.log").read_text()
