"""selfsup.evaluate.jobs: ``eval.branch=target`` scores a checkpoint's EMA target network (DINO's teacher) in place
of the trained encoder, its results kept apart from the online encoder's."""

import json

import pytest
import torch

from selfsup import evaluate as ev
from selfsup.evaluate.jobs import resolve_jobs
from tests.evaluate.test_evaluate import FAST, eval_cfg, make_run

SCORES = ("knn_top1", "knn_top1_k20", "linear_top1", "rankme", "rankme_backbone")


def with_target(run, target_run):
    """``run``'s checkpoint with ``target_run``'s backbone and projector as its EMA target, as target=ema saves."""
    path = run / "checkpoints" / "last.ckpt"
    ckpt = torch.load(path, weights_only=False)
    other = torch.load(target_run / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    ckpt["state_dict"].update({f"target.{k}": v for k, v in other.items()})
    ckpt["selfsup"]["config"]["target"] = {"_target_": "selfsup.train.target.EMATarget"}
    torch.save(ckpt, path)
    return run


def test_the_target_branch_scores_the_ema_weights_and_writes_beside_the_online_results(tmp_path):
    teacher = make_run(tmp_path / "teacher", seed=1)  # a run whose online weights are the other run's target
    run = with_target(make_run(tmp_path / "run", seed=0), teacher)
    job = resolve_jobs(eval_cfg(f"checkpoint={run}", "eval.branch=target"))[0][0]
    expected = torch.load(teacher / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    for part, module in (("backbone", job.backbone), ("projector", job.projector)):
        for k, v in module.state_dict().items():
            assert torch.equal(v, expected[f"{part}.{k}"]), f"{part}.{k}"
    assert job.out_dir == run / "target" and job.name == "run (target)" and job.cache_id["branch"] == "target"

    online = ev.evaluate(eval_cfg(f"checkpoint={run}", *FAST))
    target = ev.evaluate(eval_cfg(f"checkpoint={run}", "eval.branch=target", *FAST))
    reference = ev.evaluate(eval_cfg(f"checkpoint={teacher}", *FAST))
    assert target["branch"] == "target" and online["branch"] == "online"
    assert [target[k] for k in SCORES] == pytest.approx([reference[k] for k in SCORES])
    assert [target[k] for k in SCORES] != pytest.approx([online[k] for k in SCORES])  # not the online cache read back
    assert json.loads((run / "metrics.json").read_text())["knn_top1"] == online["knn_top1"]  # not overwritten
    assert json.loads((run / "target" / "metrics.json").read_text())["knn_top1"] == target["knn_top1"]
    assert (run / "target" / "report.md").is_file()


def test_a_target_branch_that_is_not_there_is_a_one_line_error(tmp_path):
    run = make_run(tmp_path / "run")  # InfoNCE: no EMA target saved
    with pytest.raises(ValueError, match=r"^eval.branch=target: checkpoint=.*last.ckpt holds no EMA target network"):
        resolve_jobs(eval_cfg(f"checkpoint={run}", "eval.branch=target"))
    with pytest.raises(ValueError, match=r"^eval.branch=target: checkpoint=random has no EMA target network"):
        resolve_jobs(eval_cfg("checkpoint=random", "backbone.name=test_resnet", "eval.branch=target"))
    with pytest.raises(ValueError, match=r"^eval.branch='teacher': expected one of 'online', 'target'"):
        resolve_jobs(eval_cfg(f"checkpoint={run}", "eval.branch=teacher"))
    assert sorted(p.name for p in run.iterdir()) == [".hydra", "checkpoints"]  # nothing written


def test_a_sweep_of_target_branches_ranks_them_in_the_sweep_dirs_target_folder(tmp_path):
    sweep = tmp_path / "sweep"
    for i in range(2):
        with_target(make_run(sweep / str(i), seed=i, overrides=[f"seed={i}"]), make_run(tmp_path / f"t{i}", seed=5 + i))
    ev.evaluate(eval_cfg(f"checkpoint={sweep}", "eval.branch=target", "eval.protocols=[knn]", *FAST))
    assert (sweep / "target" / "sweep.json").is_file() and not (sweep / "sweep.json").exists()
    assert all((sweep / str(i) / "target" / "metrics.json").is_file() for i in range(2))
    assert not any((sweep / str(i) / "metrics.json").exists() for i in range(2))
