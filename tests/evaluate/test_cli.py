"""selfsup-eval's command line: a sweep point's run directory as an argument, the files it wrote, and an ``out=`` it
cannot write into refused before any work."""

import json
import logging
import sys

import pytest

from tests.evaluate.test_evaluate import FAST, make_run

SWEEP_POINT = ("multirun", "2026-12-05", "19-07-45", "objective.temperature=0.2,optim.lr=0.1")  # docs/runs.md


def eval_main(monkeypatch, *args: str) -> None:
    """``selfsup-eval <args>`` in this process (the root logger's handlers given back afterwards: Hydra's job logging
    binds one to this test's captured stdout)."""
    from selfsup.evaluate.cli import main

    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    monkeypatch.setattr(logging.getLogger(), "handlers", logging.getLogger().handlers[:])
    monkeypatch.setattr(sys, "argv", ["selfsup-eval", *args])
    main()


@pytest.mark.slow
def test_a_sweep_point_is_evaluated_unquoted_and_the_files_are_named(tmp_path, monkeypatch, capsys):
    run = make_run(tmp_path.joinpath(*SWEEP_POINT))
    out = tmp_path / "eval" / "knn=200,probe=fast"
    eval_main(
        monkeypatch,
        f"checkpoint={run}",
        f"out={out}",
        "eval.lidar.images=0",
        "eval.rankme_samples=200",
        "data.eval_train_subset=200",
        "data.eval_test_subset=100",
        *FAST,
    )
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["checkpoint"] == str(run / "checkpoints" / "last.ckpt") and metrics["num_test"] == 100
    assert f"wrote {out / 'metrics.json'}, {out / 'report.md'}, {out / 'report.html'}" in capsys.readouterr().out


def test_out_that_is_a_file_is_refused_before_any_work(tmp_path, monkeypatch, capsys):
    run = make_run(tmp_path / "run")
    notes = tmp_path / "notes.txt"
    notes.write_text("mine\n")
    cases = {notes: "is a file", notes / "eval": f"{notes} is a file"}
    for out, what in cases.items():
        with pytest.raises(SystemExit) as exit_info:
            eval_main(monkeypatch, f"checkpoint={run}", f"out={out}", *FAST)
        assert exit_info.value.code == 2
        assert capsys.readouterr().err.strip().splitlines() == [
            f"selfsup-eval: error: out={out}: {what}; expected a directory (created if missing)"
        ]
    assert notes.read_text() == "mine\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", "run"]  # no feature cache anywhere
    assert not (run / "eval_cache").exists() and not (run / "metrics.json").exists()
