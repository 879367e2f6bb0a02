"""``init_from=<ckpt | run dir>``: exactly the checkpoint's weights, a fresh optimiser at step 0, the source recorded;
a resumed init_from run continues its own run; files that are not selfsup checkpoints, pickles that run code and
weights of another shape are refused in one line."""

import hashlib
import os
import pickle

import pytest
import torch
import yaml

from selfsup.runtime.checkpoint import UnsafeCheckpointError
from selfsup.train import build, run
from selfsup.train import init_from as init
from tests.config_utils import compose_train
from tests.runs import TINY, assert_same_run, losses, rows, saved_step

ONE_EPOCH = TINY + ["trainer.max_epochs=1"]  # 10 optimiser steps


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A trained run (2 epochs, 20 steps) to start from."""
    run_dir = tmp_path_factory.mktemp("source")
    run(compose_train(TINY, run_dir))
    return run_dir


def ckpt_of(run_dir):
    return torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)


def built(overrides, tmp_path):
    return build(compose_train(overrides, tmp_path / "new"))[1]


def test_loads_exactly_the_checkpoint_weights_from_a_file_or_a_run_dir(source, tmp_path):
    saved = ckpt_of(source)["state_dict"]
    for where in (source, source / "checkpoints" / "last.ckpt"):
        cfg = compose_train(ONE_EPOCH + [f"init_from={where}"], tmp_path / "new")
        module = build(cfg)[1]
        record = module.run_info["init_from"]  # loaded when the module was built
        state = module.state_dict()
        weights = [k for k in state if not k.startswith(("probe.", "memory."))]
        assert weights and all(torch.equal(state[k], saved[k]) for k in weights)
        assert any(k.startswith("backbone.") for k in weights) and any(k.startswith("projector.") for k in weights)
        assert not torch.equal(module.probe.weight, saved["probe.weight"])  # the online probe restarts
        assert record["sha256"] == hashlib.sha256((source / "checkpoints" / "last.ckpt").read_bytes()).hexdigest()
        assert record["global_step"] == 20 and record["loaded"] == len(weights)
        assert module.run_info["init_from"] == record  # apply's return, recorded by the module it built


def test_a_run_from_init_starts_at_step_zero_with_a_fresh_optimiser(source, tmp_path):
    run(compose_train(ONE_EPOCH + [f"init_from={source}"], tmp_path / "cont"))
    run(compose_train(ONE_EPOCH, tmp_path / "scratch"))
    ckpt = ckpt_of(tmp_path / "cont")
    assert saved_step(tmp_path / "cont") == 10  # its own 10 steps, not 20 + 10
    adam_steps = {float(s["step"]) for s in ckpt["optimizer_states"][0]["state"].values()}
    assert adam_steps == {10.0}  # AdamW moments from this run only
    lr = {k: v for (step, k), v in rows(tmp_path / "cont").items() if k == "train/lr" and step == 0}
    lr_scratch = {k: v for (step, k), v in rows(tmp_path / "scratch").items() if k == "train/lr" and step == 0}
    assert lr == lr_scratch  # the schedule restarts (warm-up step 0)
    assert losses(tmp_path / "cont")[0] < losses(tmp_path / "scratch")[0]  # ... from the trained weights
    # the source, recorded in every checkpoint and in the run's .hydra
    expected = hashlib.sha256((source / "checkpoints" / "last.ckpt").read_bytes()).hexdigest()
    assert ckpt["selfsup"]["init_from"]["sha256"] == expected
    assert ckpt["selfsup"]["config"]["init_from"] == str(source)
    saved = yaml.safe_load((tmp_path / "cont" / ".hydra" / "init_from.yaml").read_text())
    assert saved["sha256"] == expected and saved["path"] == str((source / "checkpoints" / "last.ckpt").resolve())


@pytest.mark.slow
def test_a_resumed_init_from_run_continues_its_own_run(source, tmp_path):
    """Crashed mid-way through epoch 2, resumed: the same run as the uninterrupted one, although the source
    checkpoint is gone by then (a resume reads its own last.ckpt, never init_from again)."""
    copy = tmp_path / "source"
    (copy / "checkpoints").mkdir(parents=True)
    (copy / "checkpoints" / "last.ckpt").write_bytes((source / "checkpoints" / "last.ckpt").read_bytes())
    overrides = TINY + [f"init_from={copy}"]
    run(compose_train(overrides, tmp_path / "whole"))
    with pytest.raises(RuntimeError, match="interrupted at step 15"):
        run(
            compose_train(
                overrides + ["+callbacks.stop._target_=tests.runs.InterruptAt", "+callbacks.stop.step=15"],
                tmp_path / "cut",
            )
        )
    assert saved_step(tmp_path / "cut") == 10
    os.remove(copy / "checkpoints" / "last.ckpt")
    run(compose_train(overrides + ["resume=true"], tmp_path / "cut"))
    assert_same_run(tmp_path / "whole", tmp_path / "cut")
    assert ckpt_of(tmp_path / "cut")["selfsup"]["init_from"] == ckpt_of(tmp_path / "whole")["selfsup"]["init_from"]


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_bad_files_are_refused_in_one_line(source, tmp_path):
    module = built(ONE_EPOCH, tmp_path)
    text = tmp_path / "notes.ckpt"
    text.write_text("not a checkpoint")
    plain = tmp_path / "plain.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, plain)
    evil = tmp_path / "evil.ckpt"
    torch.save({"selfsup": {"config": {}}, "state_dict": {}, "x": _RunsCode()}, evil)
    cases = [
        (tmp_path / "missing.ckpt", FileNotFoundError, "init_from=.*missing.ckpt: no such checkpoint"),
        (tmp_path, FileNotFoundError, "init_from=.*: no such checkpoint"),  # a directory without a run
        (text, ValueError, "init_from=.*notes.ckpt: cannot be read as a PyTorch checkpoint"),
        (plain, ValueError, "init_from=.*plain.ckpt: not a selfsup checkpoint"),
        (evil, UnsafeCheckpointError, "init_from=.*evil.ckpt: refused: loading it would run code"),
    ]
    for path, error, match in cases:
        with pytest.raises(error, match=match) as info:
            init.load_weights(module, path)
        assert "\n" not in str(info.value)
    with pytest.raises(pickle.UnpicklingError):  # what the refusal protects from: the file does carry code
        torch.load(evil, weights_only=True)


def test_other_shapes_and_missing_weights_are_named(source, tmp_path):
    predictor = "predictor={_target_:selfsup.models.mlp,_partial_:true,hidden_dim:64,out_dim:64}"
    cases = {
        "projector.out_dim=32": r"0 missing \[\], 2 with other shapes .*'projector\.\S+ \(64, 64\) vs \(32, 64\)'",
        predictor: r"init_from=.*: checkpoint of another architecture .*its weights do not fit this run's model: "
        r"\d+ missing \['predictor\.",
    }
    for override, message in cases.items():
        with pytest.raises(ValueError, match=message) as info:
            init.load_weights(built(ONE_EPOCH + [override], tmp_path), source)
        assert "\n" not in str(info.value)


def test_weights_the_new_model_lacks_are_left_out_and_listed(source, tmp_path):
    """The other direction: a model with a predictor continued without one (BYOL → SimCLR-like)."""
    predictor = ["predictor={_target_:selfsup.models.mlp,_partial_:true,hidden_dim:64,out_dim:64}"]
    run(compose_train(TINY + predictor + ["trainer.max_steps=2"], tmp_path / "byol_like"))
    module = built(ONE_EPOCH, tmp_path)
    record = init.load_weights(module, tmp_path / "byol_like")
    assert record["left_out"] and all(k.startswith("predictor.") for k in record["left_out"])
    saved = ckpt_of(tmp_path / "byol_like")["state_dict"]
    assert all(torch.equal(v, saved[k]) for k, v in module.state_dict().items() if k.startswith("backbone."))


def test_a_memory_parts_trained_weights_are_copied_and_its_state_restarts(tmp_path):
    """SwAV's prototypes are weights (copied); its feature queue is state of the old network (restarts)."""
    swav = TINY + ["memory=swav", "objective=swav", "memory.num_prototypes=16", "memory.queue_size=64"]
    swav += ["memory.queue_start_epoch=0", "trainer.max_steps=3"]
    run(compose_train(swav, tmp_path / "swav"))
    saved = ckpt_of(tmp_path / "swav")["state_dict"]
    assert saved["memory.queue"].any()  # the run filled some of its queue
    module = build(compose_train(swav + [f"init_from={tmp_path / 'swav'}"], tmp_path / "new"))[1]
    assert torch.equal(module.memory.prototypes.weight, saved["memory.prototypes.weight"])
    assert not module.memory.queue.any()
    assert "memory.prototypes.weight" not in module.run_info["init_from"]["left_out"]
