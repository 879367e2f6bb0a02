"""SAS at CPU scale: does an 80% subset chosen by SAS train SimCLR as well as all the images, and better than a
random 80%? (docs/subsets.md)

    .venv/bin/python bench/sas_table.py --data digits             # quickstart SimCLR, 30 epochs, 3 seeds, ~8 min
    .venv/bin/python bench/sas_table.py --data cifar10            # cifar_table's small-CNN budget, 1 seed, ~20 min

The run on all the images (digits: the 1,437 training rows; CIFAR-10: cifar_table's stratified 10,000) is also the
proxy encoder: ``selfsup-subset`` embeds the same rows with it, takes the labels as latent classes and keeps 80% of
each class, by SAS (``order=official`` and ``greedy``) and at random (balanced, seed 0). Each subset trains the same
recipe for the same number of epochs, as in the paper (fewer steps than the full run). Every run is scored by
``selfsup-eval`` (kNN and linear probe on the full training split against the full test split). Writes
bench/SUBSETS.md (the rows of other --data are kept).
"""

from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from sslmem_table import compose_eval, settings  # noqa: E402
from tests.config_utils import compose_train  # noqa: E402

from selfsup import evaluate as ev  # noqa: E402
from selfsup.subsets import main as subset  # noqa: E402
from selfsup.train import run  # noqa: E402

OUT = ROOT / "bench" / "SUBSETS.md"
SUBSETS = {  # row label: selfsup-subset arguments (None: every row of the pool)
    "100% (all rows)": None,
    "SAS 80% (official order)": ["method=sas", "order=official"],
    "SAS 80% (greedy)": ["method=sas", "order=greedy"],
    "random 80% (balanced)": ["method=random", "seed=0"],
}


def trained(overrides: list[str], run_dir: Path) -> dict:
    if not (run_dir / "checkpoints" / "last.ckpt").is_file():
        run(compose_train(overrides, run_dir))
    cfg = compose_eval(
        f"checkpoint={run_dir}", "eval.protocols=[knn,linear]", "eval.plots=false", "eval.lidar.images=0"
    )
    return ev.evaluate(cfg)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", choices=["digits", "cifar10"], default="digits")
    parser.add_argument("--seeds", type=int, default=None, help="training seeds (default: digits 3, CIFAR 1)")
    parser.add_argument("--run-root", default=str(ROOT / "runs" / "sas"))
    args = parser.parse_args()
    overrides, n = settings(args.data)
    seeds = range(args.seeds or (3 if args.data == "digits" else 1))
    root = Path(args.run_root) / args.data
    root.mkdir(parents=True, exist_ok=True)
    if args.data == "cifar10":  # the table's 10,000 stratified rows: the pool SAS selects from
        from hydra.utils import instantiate

        from selfsup.data.sources import stratified_first

        data = compose_train(overrides, root / "probe").data
        pool = stratified_first(instantiate(data, views=None, num_workers=0).splits[0].labels, 10_000)
    else:
        pool = np.arange(n)
    pool_file = root / "pool.txt"
    pool_file.write_text("\n".join(map(str, pool.tolist())) + "\n")
    base = [*overrides, f"data.subset_file={pool_file}"]
    scores: dict[str, list[tuple[float, float]]] = {}
    sizes = {}
    for label, how in SUBSETS.items():
        for seed in seeds:
            if how is None:
                file = pool_file
            else:
                file = root / f"{how[0].split('=')[1]}_{how[1].split('=')[1]}.txt"
                if not file.is_file():  # selected once, with the seed-0 run on every row as the proxy
                    subset([f"checkpoint={root / 'full_s0'}", f"out={file}", f"pool={pool_file}", "fraction=0.8", *how])
            sizes[label] = sum(1 for ln in file.read_text().splitlines() if ln and not ln.startswith("#"))
            name = "full" if how is None else file.stem
            m = trained([*base, f"data.subset_file={file}", f"seed={seed}"], root / f"{name}_s{seed}")
            scores.setdefault(label, []).append((m["knn_top1"], m["linear_top1"]))

    def cell(values):
        v = 100 * np.asarray(values)
        return f"{v.mean():.1f}%" + (f" ± {v.std(ddof=1):.1f}" if len(v) > 1 else "")

    lines = [
        f"| {args.data} | {label} | {sizes[label]} | {cell([s[0] for s in got])} | {cell([s[1] for s in got])} |"
        for label, got in scores.items()
    ]
    kept = {}
    if OUT.is_file():
        for ln in OUT.read_text().splitlines():
            if ln.startswith("| ") and not ln.startswith("| data") and ln.split("|")[1].strip() != args.data:
                kept.setdefault(ln.split("|")[1].strip(), []).append(ln)
    kept[args.data] = lines
    text = "\n".join(
        [
            "SimCLR trained on all the pool's rows, on SAS's 80% and on a random 80% (bench/sas_table.py; digits: the "
            "quickstart recipe, 30 epochs, 3 training seeds, mean ± sd; CIFAR-10: cifar_table's small-CNN budget, 5 "
            f"epochs, 1 seed), 2-core CPU ({datetime.date.today()}). Command: "
            "`.venv/bin/python bench/sas_table.py --data digits|cifar10`",
            "",
            "| data | training rows | images | kNN top-1 | linear probe |",
            "|---|---|---|---|---|",
            *[ln for k in sorted(kept) for ln in kept[k]],
            "",
        ]
    )
    OUT.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
