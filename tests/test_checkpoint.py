import pytest
import torch

from selfsup.runtime import checkpoint as ckpt_io


class Unpicklable:
    def __reduce__(self):
        raise RuntimeError("disk full")  # a failure in the middle of torch.save


def test_atomic_save_keeps_the_previous_checkpoint(tmp_path):
    path = tmp_path / "checkpoints" / "last.ckpt"
    io = ckpt_io.AtomicCheckpointIO()
    io.save_checkpoint({"step": 1}, path)
    with pytest.raises(RuntimeError, match="disk full"):
        io.save_checkpoint({"step": 2, "bad": Unpicklable()}, path)
    assert torch.load(path, weights_only=False) == {"step": 1}
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]  # no temporary file left behind


def test_load_refuses_missing_and_foreign_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint=.*no such checkpoint"):
        ckpt_io.load(tmp_path / "missing.ckpt")
    with pytest.raises(FileNotFoundError, match="no such checkpoint"):
        ckpt_io.load(tmp_path)  # a directory without checkpoints/last.ckpt
    foreign = tmp_path / "other.ckpt"
    torch.save({"state_dict": {}, "epoch": 3}, foreign)  # e.g. another framework's Lightning checkpoint
    with pytest.raises(ValueError, match="not a selfsup checkpoint"):
        ckpt_io.load(foreign)
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot be read as a PyTorch checkpoint"):
        ckpt_io.load(garbage)
