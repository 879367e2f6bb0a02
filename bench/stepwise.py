"""Stepwise learning in a run's logged eigenvalues: the step at which each of the top eigenvalues of the projections'
covariance (``train/eigval_<k>``, callbacks.collapse.eigenvalues) first reaches half its peak — learned one
eigendirection after another, as in Simon et al. 2023 (arXiv:2303.15438, Fig. 1).

    .venv/bin/python bench/stepwise.py <run dir> [...]   # prints a markdown table; the plot: selfsup-eval's report
"""

from __future__ import annotations

import sys
from pathlib import Path

from selfsup.evaluate.report import read_metrics_csv


def half_peak_steps(run_dir: Path) -> dict[int, tuple[int, float]]:
    """k → (first logged step where λ_k >= half its peak, the peak)."""
    series = read_metrics_csv(run_dir / "metrics.csv")
    out = {}
    for key in sorted((k for k in series if k.startswith("train/eigval_")), key=lambda k: int(k.rsplit("_", 1)[1])):
        steps, values = series[key]
        peak = max(values)
        out[int(key.rsplit("_", 1)[1])] = (next(s for s, v in zip(steps, values) if v >= peak / 2) + 1, peak)
    return out


def main(run_dirs: list[str]) -> None:
    for run_dir in map(Path, run_dirs):
        steps = half_peak_steps(run_dir)
        if not steps:
            raise SystemExit(f"{run_dir}/metrics.csv: no train/eigval_<k> columns (callbacks.collapse.eigenvalues=0?)")
        print(f"\n{run_dir.name}\n\n| eigenvalue | reaches half its peak at step | peak |\n|---|---|---|")
        for k, (step, peak) in steps.items():
            print(f"| λ{k} | {step} | {peak:.3g} |")


if __name__ == "__main__":
    main(sys.argv[1:])
