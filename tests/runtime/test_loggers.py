"""Weights & Biases (logger=wandb, offline) as a tested path: the training is logged, a resume continues the run."""

import json

import pytest
import torch

from selfsup.train import run
from tests.config_utils import compose_train
from tests.runs import TINY


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
        run(compose_train(TINY + logger + ["+callbacks.stop._target_=tests.runs.InterruptAt",
                                           "+callbacks.stop.step=7"], tmp_path))  # fmt: skip
    run(compose_train(TINY + logger + ["resume=true"], tmp_path))
    logs = sorted(tmp_path.glob("wandb/offline-run-*/run-*.wandb"))  # one per start (unless in the same second)
    ids = {p.stem.removeprefix("run-") for p in logs}
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert ids == {ckpt["selfsup"]["config"]["logger"]["wandb"]["id"]}  # the resume continued the same W&B run
    history = [row for p in logs for row in wandb_history(p)]
    steps = {r["trainer/global_step"] for r in history if "train/loss" in r}
    assert steps == set(range(10))  # steps 0-6 before the crash, 5-9 after the resume from step 5
    assert any("val/knn_top1" in r for r in history) and any("train/lr" in r for r in history)
