"""The run's loggers: metrics.csv holds every row of last.ckpt's steps whenever the run is killed; Weights & Biases
(logger=wandb, offline) as a tested path: the training is logged, a resume continues the run."""

import json
import os
import signal
import subprocess
import sys

import lightning as L
import pytest
import torch

from selfsup.config import ROOT
from selfsup.train import run
from tests.config_utils import compose_train
from tests.runs import TINY, assert_same_run, losses, saved_step


def wandb_history(path):
    """History rows ({key: value}) of a W&B transaction log: a 7-byte ':W&B' header, then LevelDB-log records
    (32 KiB blocks; each chunk has crc32c(4) length(2, LE) type(1): 1 full, 2 first, 3 middle, 4 last) holding
    protobuf ``Record`` messages."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B", path
    pos, block, records, partial = 7, 32768, [], b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        length, kind = int.from_bytes(data[pos + 4 : pos + 6], "little"), data[pos + 6]
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind == 1:
            records.append(chunk)
        elif kind in (2, 3):
            partial = (partial if kind == 3 else b"") + chunk
        elif kind == 4:
            records.append(partial + chunk)
    rows = []
    for raw in records:
        record = wandb_internal_pb2.Record()
        record.ParseFromString(raw)
        if record.WhichOneof("record_type") == "history":
            rows.append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item})
    return rows


@pytest.mark.slow
def test_wandb_offline_logs_the_training_and_a_resume_continues_the_same_run(tmp_path):
    pytest.importorskip("wandb")
    logger = ["logger=wandb", "trainer.max_epochs=1", "callbacks.last.every_n_train_steps=5"]
    with pytest.raises(RuntimeError, match="interrupted at step 7"):
        run(
            compose_train(
                TINY + logger + ["+callbacks.stop._target_=tests.runs.InterruptAt", "+callbacks.stop.step=7"], tmp_path
            )
        )
    run(compose_train(TINY + logger + ["resume=true"], tmp_path))
    logs = sorted(tmp_path.glob("wandb/offline-run-*/run-*.wandb"))  # one per start (unless in the same second)
    ids = {p.stem.removeprefix("run-") for p in logs}
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert ids == {ckpt["selfsup"]["config"]["logger"]["wandb"]["id"]}  # the resume continued the same W&B run
    history = [row for p in logs for row in wandb_history(p)]
    steps = {r["trainer/global_step"] for r in history if "train/loss" in r}
    assert steps == set(range(10))  # steps 0-6 before the crash, 5-9 after the resume from step 5
    assert any("val/knn_top1" in r for r in history) and any("train/lr" in r for r in history)


class KillAt(L.Callback):
    """SIGKILL this process at the end of optimiser step ``step``, right after the checkpoint callbacks ran (before
    Lightning logs the step's metrics row)."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, *args):
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


@pytest.mark.slow
def test_kill_9_right_after_a_checkpoint_keeps_its_metric_rows(tmp_path):
    """callbacks.last.every_n_train_steps=4 and kill -9 just after the save at step 8: last.ckpt is the checkpoint
    whose rows metrics.csv holds on disk (step 4: step 8's is not published before its row is written); resume=true
    then ends with the uninterrupted run's metrics.csv, bit for bit."""
    every = TINY + ["callbacks.last.every_n_train_steps=4"]
    run(compose_train(every, tmp_path / "whole"))
    cut = tmp_path / "cut"
    cmd = [
        sys.executable,
        "-m",
        "selfsup.train",
        *every,
        "+callbacks.kill._target_=tests.runtime.test_loggers.KillAt",
        "+callbacks.kill.step=8",
        f"hydra.run.dir={cut}",
    ]
    proc = subprocess.run(
        cmd, cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    saved = saved_step(cut)
    assert set(range(saved)) <= set(losses(cut))  # every row the resume keeps is on disk
    assert saved == 4
    run(compose_train(every + ["resume=true"], cut))
    assert_same_run(tmp_path / "whole", cut)
