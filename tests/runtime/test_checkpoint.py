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


# -- files that would run code when loaded -----------------------------------------------------------------------


class Trap:
    """Unpickling this calls ``pathlib.Path.touch(marker)``: the harmless stand-in for ``os.system``."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import pathlib

        return pathlib.Path.touch, (pathlib.Path(self.marker),)


def trapped_checkpoint(path, marker):
    """A file that looks like a selfsup checkpoint, with one booby-trapped entry."""
    torch.save(
        {"state_dict": {"backbone.w": torch.zeros(2)}, "selfsup": {"config": {}}, "global_step": 3, "x": Trap(marker)},
        path,
    )
    return path


def test_load_refuses_a_booby_trapped_checkpoint(tmp_path):
    marker = tmp_path / "ran"
    path = trapped_checkpoint(tmp_path / "evil.ckpt", marker)
    with pytest.raises(
        ckpt_io.UnsafeCheckpointError,
        match=r"evil.ckpt: refused: loading it would run code from "
        r"the file \(.*builtins.getattr",
    ):
        ckpt_io.load(path)
    with pytest.raises(ckpt_io.UnsafeCheckpointError):
        ckpt_io.AtomicCheckpointIO().load_checkpoint(path)  # what Lightning's fit(ckpt_path=...) calls
    assert not marker.exists()


def cli(*args, cwd):
    import os
    import subprocess
    import sys

    from selfsup.config import ROOT

    env = dict(os.environ, HYDRA_FULL_ERROR="0", PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=300)


@pytest.mark.slow
def test_no_command_runs_code_from_a_checkpoint(tmp_path):
    """selfsup-eval, selfsup-export, selfsup-train ckpt_path= and resume=true each refuse the file in one line
    naming it, and the trap never fires."""
    marker = tmp_path / "ran"
    evil = trapped_checkpoint(tmp_path / "evil.ckpt", marker)
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    trapped_checkpoint(run_dir / "checkpoints" / "last.ckpt", marker)
    commands = {
        "eval": ("selfsup.evaluate", f"checkpoint={evil}"),
        "export": ("selfsup.export", f"checkpoint={evil}", f"out={tmp_path / 'e.safetensors'}"),
        "train ckpt_path": ("selfsup.train", f"ckpt_path={evil}", f"hydra.run.dir={tmp_path / 'new'}"),
        "train resume": ("selfsup.train", "resume=true", f"hydra.run.dir={run_dir}"),
    }
    for name, args in commands.items():
        proc = cli(*args, cwd=tmp_path)
        assert proc.returncode == 2, (name, proc.stderr[-2000:])
        last = proc.stderr.strip().splitlines()[-1]
        assert "refused: loading it would run code from the file" in last and ".ckpt" in last, (name, last)
        assert len(proc.stderr.strip().splitlines()) == 1 or "Traceback" not in proc.stderr, name
    assert not marker.exists()
    assert not (tmp_path / "e.safetensors").exists()


def test_a_booby_trapped_deepspeed_shard_is_refused(tmp_path):
    marker = tmp_path / "ran"
    shards = tmp_path / "last.ckpt"
    (shards / "checkpoint").mkdir(parents=True)
    (shards / "latest").write_text("checkpoint")
    torch.save(
        {"module": {}, "global_step": 1, "selfsup": {"config": {}}},
        shards / "checkpoint" / "mp_rank_00_model_states.pt",
    )
    torch.save(
        {"optimizer_state_dict": {"loss_scaler": Trap(marker)}},
        shards / "checkpoint" / "zero_pp_rank_0_mp_rank_00_optim_states.pt",
    )
    with pytest.raises(ckpt_io.UnsafeCheckpointError, match=r"optim_states.pt: refused: .*builtins.getattr"):
        ckpt_io.run_info(shards)  # what resume reads first
    with pytest.raises(ckpt_io.UnsafeCheckpointError):
        ckpt_io.load(shards)  # what selfsup-eval / selfsup-export read
    assert not marker.exists()


def test_non_finite_weights_are_named():
    state = {
        "a": torch.zeros(3),
        "b": torch.tensor([1.0, float("nan")]),
        "c": torch.tensor([1, 2]),
        "d": torch.tensor([float("inf")]),
    }
    assert ckpt_io.non_finite(state) == ["b", "d"]
