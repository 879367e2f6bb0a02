"""SSLMem at CPU scale: does the encoder memorize its atypical training images most? (docs/memorization.md)

    .venv/bin/python bench/sslmem_table.py --data digits             # quickstart SimCLR, 30 epochs, ~1 minute
    .venv/bin/python bench/sslmem_table.py --data cifar10            # cifar_table's budget, SimCLR small CNN

The training split is cut by a seeded permutation into shared, candidate and independent rows (the paper's CIFAR-10
split is 40,000 / 5,000 / 5,000 of 50,000: sprintml/MemorizationSSL ``SimClr_train.py``; here the same proportions
of the subset). f trains on shared + candidates, g on shared + independent, with the same recipe and seed;
``selfsup-eval`` scores every candidate (``eval.protocols=[memorization]``) and the table reports the mean score,
the mean of the top 10%, the Spearman correlation of the score with atypicality (cosine distance to the class mean
under g), and the atypicality of the 10% most and least memorized candidates. Writes bench/SSLMEM.md (the rows of
other --data are kept).
"""

from __future__ import annotations

import argparse
import csv
import datetime
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from cifar_table import CIFAR10, run_settings  # noqa: E402
from objectives_table import quickstart  # noqa: E402
from tests.config_utils import compose_train  # noqa: E402

from selfsup import evaluate as ev  # noqa: E402
from selfsup.train import run  # noqa: E402

OUT = ROOT / "bench" / "SSLMEM.md"
SPLIT = (0.8, 0.1, 0.1)  # shared, candidates, independent (the paper's 40k / 5k / 5k)


def settings(data: str) -> tuple[list[str], int]:
    """(training overrides, training rows to split)."""
    if data == "digits":
        return quickstart(30), 1437
    cifar = run_settings(5, CIFAR10, 10_000)
    cifar = [o for o in cifar if not o.startswith("data.subset=")]
    return ["recipes=cifar10/simclr", "backbone=small_cnn", *cifar], 50_000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", choices=["digits", "cifar10"], default="digits")
    parser.add_argument(
        "--rows", type=int, default=None, help="training rows to split (default: digits all, CIFAR 10k)"
    )
    parser.add_argument("--views", type=int, default=5)
    parser.add_argument("--run-root", default=str(ROOT / "runs" / "sslmem"))
    args = parser.parse_args()
    overrides, n = settings(args.data)
    rows = args.rows or (n if args.data == "digits" else 10_000)
    root = Path(args.run_root) / args.data
    root.mkdir(parents=True, exist_ok=True)
    perm = np.random.default_rng(0).permutation(n)[:rows]
    a, b = int(SPLIT[0] * rows), int((SPLIT[0] + SPLIT[1]) * rows)
    parts = {"shared": perm[:a], "candidates": perm[a:b], "independent": perm[b:]}
    files = {}
    for name, idx in (
        ("f", np.r_[parts["shared"], parts["candidates"]]),
        ("g", np.r_[parts["shared"], parts["independent"]]),
        ("candidates", parts["candidates"]),
    ):
        files[name] = root / f"{name}.txt"
        files[name].write_text("\n".join(map(str, sorted(idx.tolist()))) + "\n")
    for name in "fg":
        if not (root / name / "checkpoints" / "last.ckpt").is_file():
            run(compose_train([*overrides, f"data.subset_file={files[name]}"], root / name))
    metrics = ev.evaluate(
        compose_eval(
            f"checkpoint={root / 'f'}",
            "eval.protocols=[memorization]",
            f"eval.memorization.reference={root / 'g'}",
            f"eval.memorization.candidates={files['candidates']}",
            f"eval.memorization.views={args.views}",
            "eval.plots=false",
            "eval.lidar.images=0",
        )
    )
    with open(root / "f" / "memorization.csv") as f:
        table = list(csv.DictReader(f))  # sorted by score, descending
    tenth = max(1, len(table) // 10)
    atyp = [float(r["atypicality"]) for r in table]
    line = (
        f"| {args.data} | {len(parts['shared'])} / {len(parts['candidates'])} / {len(parts['independent'])} | "
        f"{metrics['memorization_mean']:.4f} | {metrics['memorization_top10pct']:.4f} | "
        f"{metrics['memorization_atypicality_spearman']:+.2f} | {np.mean(atyp[:tenth]):.3f} | "
        f"{np.mean(atyp[-tenth:]):.3f} |"
    )
    kept = {}
    if OUT.is_file():
        for ln in OUT.read_text().splitlines():
            if ln.startswith("| ") and not ln.startswith("| data") and not ln.startswith("|---"):
                kept[ln.split("|")[1].strip()] = ln
    kept[args.data] = line
    text = "\n".join(
        [
            f"SSLMem of SimCLR (the quickstart recipe on digits; cifar_table's small-CNN budget on CIFAR-10), seed 0, "
            f"{args.views} views, 2-core CPU ({datetime.date.today()}). Command: "
            "`.venv/bin/python bench/sslmem_table.py --data digits|cifar10`",
            "",
            "| data | shared / candidates / independent | mean SSLMem | top 10% | Spearman(SSLMem, atypicality) | "
            "atypicality, top 10% | atypicality, bottom 10% |",
            "|---|---|---|---|---|---|---|",
            *[kept[k] for k in sorted(kept)],
            "",
        ]
    )
    OUT.write_text(text)
    print(text)


def compose_eval(*overrides: str):
    from hydra import compose, initialize_config_dir

    from selfsup.config import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("eval", overrides=list(overrides))


if __name__ == "__main__":
    main()
