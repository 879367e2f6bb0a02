"""E2MC continued pre-training on the quickstart data: a start checkpoint, continued with InfoNCE + E2MC, next to
the honest control — the same extra epochs with InfoNCE alone.

    .venv/bin/python bench/e2mc_table.py [--seeds 0] [--epochs 10] [--out bench/E2MC.md]

1. ``selfsup-train recipes=quickstart`` (30 epochs, seed 0): the start checkpoint.
2. For each seed: ``selfsup-train recipes=digits/e2mc init_from=<start> seed=<s>`` (E2MC) and the same with
   ``objective=info_nce`` (control): ``--epochs`` epochs each, fresh AdamW at a constant LR of 2e-4.
3. ``selfsup-eval checkpoint=<run dir> data=digits`` on every run: kNN top-1 (k=200 and 20), the L-BFGS linear
   probe (all 1,437 training labels) and RankMe of the projector's embeddings (where E2MC acts) and of the
   backbone features, on the 360 held-out images.

Runs and their ``metrics.json`` live under ``--run-root``; a finished run or evaluation is not redone (delete the
folder to redo). Writes a markdown table to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def sh(args: list[str]) -> float:
    start = time.time()
    subprocess.run(args, check=True, cwd=ROOT)
    return time.time() - start


def train(run_dir: Path, overrides: list[str]) -> float:
    if (run_dir / "checkpoints" / "last.ckpt").is_file() and (run_dir / "done").is_file():
        return json.loads((run_dir / "done").read_text())["seconds"]
    seconds = sh(
        [
            str(BIN / "selfsup-train"),
            *overrides,
            f"hydra.run.dir={run_dir}",
            "resume=true",
            "callbacks.progress=null",
            "trainer.enable_model_summary=false",
        ]
    )
    (run_dir / "done").write_text(json.dumps({"seconds": seconds}))
    return seconds


def evaluate(run_dir: Path) -> dict:
    metrics = run_dir / "metrics.json"
    if not metrics.is_file() or metrics.stat().st_mtime < (run_dir / "checkpoints" / "last.ckpt").stat().st_mtime:
        sh([str(BIN / "selfsup-eval"), f"checkpoint={run_dir}", "data=digits", "eval.lidar.images=0"])
    return json.loads(metrics.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", default="0", help="comma-separated seeds of the continued runs")
    parser.add_argument("--epochs", type=int, default=10, help="continued epochs (the recipe's: 10)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "E2MC.md"))
    parser.add_argument("--run-root", default=str(ROOT / "runs" / "e2mc_table"))
    args = parser.parse_args()
    root = Path(args.run_root)
    seeds = [int(s) for s in args.seeds.split(",")]

    start = root / "start"
    seconds = {"start": train(start, ["recipes=quickstart", "report_baseline=false"])}
    results = {"start": [evaluate(start)]}
    rows = {"control": ["objective=info_nce"], "e2mc": []}
    for name, extra in rows.items():
        results[name] = []
        for seed in seeds:
            run_dir = root / f"{name}_seed{seed}"
            overrides = [
                "recipes=digits/e2mc",
                f"init_from={start}",
                f"seed={seed}",
                f"trainer.max_epochs={args.epochs}",
                *extra,
            ]
            seconds[name] = train(run_dir, overrides)
            results[name].append(evaluate(run_dir))

    def cell(name: str, key: str, pct: bool) -> str:
        values = [m[key] * (100 if pct else 1) for m in results[name]]
        text = f"{statistics.mean(values):.1f}"
        if len(values) > 1:
            text += f" ± {statistics.stdev(values):.1f}"
        return text + ("%" if pct else "")

    labels = {
        "start": "start: `recipes=quickstart` (SimCLR, 30 epochs)",
        "control": f"+ {args.epochs} epochs InfoNCE (control)",
        "e2mc": f"+ {args.epochs} epochs InfoNCE + E2MC",
    }
    lines = [
        f"Digits (360 held-out images), seed 0 start checkpoint; continued runs: seeds {args.seeds}, "
        f"{args.epochs} epochs, fresh AdamW at a constant LR 2e-4; 2-core CPU (shared). "
        f"Command: `.venv/bin/python bench/e2mc_table.py --seeds {args.seeds} --epochs {args.epochs}`",
        "",
        "| encoder | kNN top-1 (k=200) | kNN k=20 | linear probe | RankMe (projector) | RankMe (backbone) | train s |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, label in labels.items():
        lines.append(
            f"| {label} | {cell(name, 'knn_top1', True)} | {cell(name, 'knn_top1_k20', True)} | "
            f"{cell(name, 'linear_top1', True)} | {cell(name, 'rankme', False)} | "
            f"{cell(name, 'rankme_backbone', False)} | "
            f"{seconds[name]:.0f} |"
        )
    table = "\n".join(lines)
    print(table)
    Path(args.out).write_text(table + "\n")


if __name__ == "__main__":
    main()
