"""SSLMem (selfsup.evaluate.memorization, docs/memorization.md): the score against a float64 loop over the
definition, the splits it is defined on (refused in one line when they overlap or miss candidates), and the protocol
end to end on two short digits runs."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from selfsup import evaluate as ev
from selfsup.evaluate.memorization import alignment, sslmem
from selfsup.train import run
from tests.config_utils import compose_train
from tests.evaluate.test_evaluate import eval_cfg
from tests.runs import TINY


def test_score_against_the_definition():
    """a(E, x) = mean_j ‖x̂ − v̂_j‖ with L2-normalised rows; SSLMem = a_g − a_f, divided by its range."""
    g = torch.Generator().manual_seed(0)
    clean = {k: torch.randn(6, 5, generator=g, dtype=torch.float64) for k in "fg"}
    views = {k: torch.randn(6, 3, 5, generator=g, dtype=torch.float64) for k in "fg"}
    expected = {}
    for k in "fg":
        rows = []
        for i in range(6):
            c = clean[k][i] / clean[k][i].norm()
            rows.append(sum(float((c - v / v.norm()).norm()) for v in views[k][i]) / 3)
        expected[k] = torch.tensor(rows, dtype=torch.float64)
        torch.testing.assert_close(alignment(clean[k], views[k]), expected[k], rtol=1e-12, atol=0)
    score, normalised = sslmem(alignment(clean["f"], views["f"]), alignment(clean["g"], views["g"]))
    torch.testing.assert_close(score, expected["g"] - expected["f"], rtol=1e-12, atol=0)
    assert float(normalised.max() - normalised.min()) == pytest.approx(1.0)
    same, flat = sslmem(expected["f"], expected["f"])  # f = g: nothing memorized, and no division by zero
    assert same.abs().max() == 0 and flat.abs().max() == 0


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """f trained on shared + candidates, g on shared + independent (digits rows; 1 epoch of TINY each)."""
    root = tmp_path_factory.mktemp("sslmem")
    shared, cand, indep = np.arange(0, 280), np.arange(280, 320), np.arange(320, 360)
    files = {}
    for name, rows in (("f", np.r_[shared, cand]), ("g", np.r_[shared, indep]), ("cand", cand)):
        files[name] = root / f"{name}.txt"
        files[name].write_text("\n".join(map(str, rows)))
    tiny = [o for o in TINY if not o.startswith("data.subset=")] + ["trainer.max_epochs=1"]
    for name in "fg":
        run(compose_train([*tiny, f"data.subset_file={files[name]}"], root / name))
    return root, files


def test_memorization_protocol_end_to_end(runs):
    root, files = runs
    metrics = ev.evaluate(
        eval_cfg(
            f"checkpoint={root / 'f'}",
            "eval.protocols=[memorization]",
            f"eval.memorization.reference={root / 'g'}",
            f"eval.memorization.candidates={files['cand']}",
            "eval.memorization.views=3",
            "eval.plots=false",
        )
    )
    assert metrics["memorization_candidates"] == 40 and metrics["memorization_views"] == 3
    with open(root / "f" / "memorization.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted(int(r["index"]) for r in rows) == list(range(280, 320))
    scores = [float(r["sslmem"]) for r in rows]
    assert scores == sorted(scores, reverse=True)
    assert all(float(r["sslmem"]) == pytest.approx(float(r["align_g"]) - float(r["align_f"])) for r in rows)
    assert metrics["memorization_mean"] == pytest.approx(np.mean(scores))
    assert -1 <= metrics["memorization_atypicality_spearman"] <= 1


def test_splits_that_do_not_define_sslmem_are_refused(runs):
    root, files = runs
    common = ["eval.protocols=[memorization]", "eval.memorization.views=2", "eval.plots=false"]
    with pytest.raises(ValueError, match=r"eval.memorization.reference=.*/f: its training set holds 40 of the cand"):
        ev.evaluate(
            eval_cfg(
                f"checkpoint={root / 'f'}",
                f"eval.memorization.reference={root / 'f'}",
                f"eval.memorization.candidates={files['cand']}",
                *common,
            )
        )
    with pytest.raises(ValueError, match=r"candidates=.*cand.txt: 40 candidates \(e.g. 280\) are not in the evaluated"):
        ev.evaluate(
            eval_cfg(
                f"checkpoint={root / 'g'}",
                f"eval.memorization.reference={root / 'f'}",
                f"eval.memorization.candidates={files['cand']}",
                *common,
            )
        )
    with pytest.raises(ValueError, match=r"eval.memorization.reference is not set: SSLMem needs the reference run"):
        ev.evaluate(eval_cfg(f"checkpoint={root / 'f'}", *common))
