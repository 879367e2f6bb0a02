"""Randomized Quantization on the quickstart data: the quickstart's own views vs RQ alone vs crops + RQ.

    .venv/bin/python bench/randquant_table.py [--epochs 30] [--out bench/RANDQUANT.md]

Every row is ``recipes=quickstart`` (SimCLR on scikit-learn's digits at 16 px, the 3-block CNN, batch 256, AdamW,
seed 0) with only the views swapped, scored like bench/objectives_table.py (kNN top-1 with k=200 and k=20 over
the 1,437 training images, a 5-labels-a-class linear probe, RankMe; held-out 360 images):

- quickstart views: its crop (scale 0.4-1), brightness/contrast jitter (p 0.8), no flip, no colour;
- crops alone: the same crop, nothing else (what RQ is added to in the last row);
- RQ alone: ``views=randquant`` — no crop (scale 1: the whole digit), 8 bins, p 1 (data agnostic);
- crops + RQ: ``views=randquant_crop`` at the quickstart's crop range (0.4-1), 8 bins, p 1.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import lightning as L
import torch

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))
sys.path.insert(0, str(ROOT))

from objectives_table import quickstart, score, scorer, table_row  # noqa: E402
from tests.config_utils import compose_train  # noqa: E402

from selfsup.evaluate.features import extract  # noqa: E402
from selfsup.train import build  # noqa: E402

# name: overrides on top of recipes=quickstart (whose views.views.v1 keys apply to any views config: reset them)
ROWS = {
    "quickstart views (crop + jitter)": [],
    "crops alone": ["views.views.v1.jitter_p=0.0"],
    "RQ alone (8 bins, no crop)": ["views=randquant", "views.views.v1.scale=[1.0,1.0]"],
    "crops + RQ (8 bins)": ["views=randquant_crop"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--out", default=str(ROOT / "RANDQUANT.md"))
    parser.add_argument("--run-root", default=str(ROOT.parent / "runs" / "randquant_table"))
    args = parser.parse_args()
    common = quickstart(args.epochs)

    L.seed_everything(0)
    datamodule, module, _ = build(compose_train(common, Path(args.run_root) / "init"))
    train_ds, test_ds = datamodule.eval_datasets()
    rows = {"random init (same CNN)": score(*extract(module.backbone, train_ds), *extract(module.backbone, test_ds))}
    rows["random init (same CNN)"]["seconds"] = 0.0
    for name, overrides in ROWS.items():
        run_dir = Path(args.run_root) / name.split(" (")[0].replace(" ", "_").replace("+", "plus")
        rows[name] = table_row(run_dir, common + overrides, scorer(train_ds, test_ds))

    lines = [
        f"Digits (held-out 360 images), {args.epochs} epochs of `recipes=quickstart` (SimCLR) per row, only the views "
        f"differ, seed 0, 2-core CPU. Command: `.venv/bin/python bench/randquant_table.py --epochs {args.epochs}`",
        "",
        "| views | kNN top-1 | kNN k=20 | 5-labels/class probe | RankMe | train s |",
        "|---|---|---|---|---|---|",
    ]
    for name, m in rows.items():
        lines.append(
            f"| {name} | {100 * m['knn']:.1f}% | {100 * m['knn20']:.1f}% | {100 * m['probe5']:.1f}% | "
            f"{m['rankme']:.1f} | {m['seconds']:.0f} |"
        )
    table = "\n".join(lines)
    print(table)
    Path(args.out).write_text(table + "\n")


if __name__ == "__main__":
    torch.set_num_threads(max(1, torch.get_num_threads()))
    main()
