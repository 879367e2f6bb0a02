"""Every CIFAR-10 recipe at one CPU budget, scored on the full CIFAR-10 test set, next to raw pixels and random init.

    .venv/bin/python bench/cifar_table.py [--only simclr,byol] [--epochs 5] [--out bench/CIFAR.md]
    .venv/bin/python bench/cifar_table.py --only byol --override target.base=0.9 --run-root runs/ablation --out a.md \
        --baselines runs/cifar_table
    .venv/bin/python bench/cifar_table.py --only mae --read-as avg --out /tmp/mae_avg.md   # trains nothing

Each row is ``selfsup-train recipes=cifar10/<name>`` with the recipe's parts (objective, views, projector, target,
memory, predictor, mask, token head) unchanged and the budget swapped in (:func:`budget`):

- data: a stratified 10,000-image subset of the training split (``data.subset``), batch 256, the recipe's views;
- encoder: the 3-block CNN of the quickstart (``backbone=small_cnn``) for the ResNet recipes; the recipes' CIFAR
  ViT-Ti (4 px patches: an 8 x 8 grid) with 4 of its 12 blocks for the masked ones (the 12-block ViT costs 3x;
  data2vec's targets average the top 2 blocks, half of them as the paper's 6 of 12);
- optimiser: the same for every row: AdamW, lr 2e-3 (no batch scaling), weight decay 1e-4 off biases and norms,
  one warm-up epoch then a cosine to 0; EMA targets start at momentum 0.99 (the recipes' 0.996 hardly moves the
  target in 200 steps); VICReg's gradients clipped to a global norm of 3 (``STABILISE``: without it, its covariance
  term spikes at the peak learning rate from some initial heads, lightly's VICReg alike — docs/evidence.md);
- ``--epochs`` epochs (5: 195 steps), seed 0, the 2-core CPU; ``cifar10/e2mc`` continues the SimCLR row's
  checkpoint for as many epochs, as the recipe continues a trained SimCLR run.

The encoder is then scored on the **full** test split (10,000 images) with the **full** training split (50,000) as
the bank and the probe's training set: kNN top-1 (k=200 and k=20, T=0.07), a linear probe (L-BFGS logistic
regression, ``selfsup.metrics.linear_probe``), 5-way 5-shot episodes of the test split and MAP@R of the test rows
against the training bank (``selfsup-eval``'s ``fewshot`` and ``retrieval`` protocols) and RankMe of the test
features — next to raw pixels and each
encoder at random init (the weights every run of that encoder starts from; a ViT row is compared with the ViT read
with the same features: class token, patch mean, or — I-JEPA's ViT — no class token and every token normalised).

Rows are cached: ``<run root>/<name>/table_row.json`` holds the scores and a hash of the composed training config;
a rerun trains only the rows whose config changed (or ``--redo``), and a run cut short resumes where it stopped. A row
scored before a score was added is scored again from its checkpoint, not trained again. ``--read-as token|avg`` trains
nothing: it reads the trained ViT rows' encoders (and the ViT at random init) by the class token or the mean of the
patch tokens, whatever their recipe declares.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
from pathlib import Path

import torch
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from objectives_table import config_hash, initial_backbone, written_rows  # noqa: E402
from objectives_table import table_row as cached_row  # noqa: E402
from tests.config_utils import compose_train  # noqa: E402

from selfsup.evaluate.features import extract  # noqa: E402
from selfsup.evaluate.protocols import fewshot  # noqa: E402
from selfsup.metrics import knn_top1, linear_probe, rankme  # noqa: E402
from selfsup.neighbours import map_at_r  # noqa: E402
from selfsup.runtime import checkpoint  # noqa: E402

CIFAR10 = Path(os.environ.get("SELFSUP_CIFAR10", ROOT.parent / "shared" / "data" / "cifar10"))
# the nine methods lightly also ships first (bench/peer_table.py), then the others; SimCLR before E2MC, which
# continues the SimCLR row
FIRST = ["simclr", "byol", "simsiam", "barlow_twins", "vicreg", "mocov2", "nnclr", "dino", "swav"]
RECIPES = FIRST + sorted({p.stem for p in (ROOT / "recipes" / "cifar10").glob("*.yaml")} - set(FIRST))
# the ViT rows' encoder: the recipes' CIFAR ViT-Ti, 4 of its 12 blocks
VIT_DEPTH = 4
OPTIM = [
    "optim=adamw",
    "optim.lr=2e-3",
    "optim.lr_scaling=none",
    "optim.weight_decay=1e-4",
    "optim.betas=[0.9,0.999]",
    "optim.exclude_bias_and_norm=true",
    "optim.warmup_epochs=1",
    "optim.min_lr_ratio=0.0",
    "optim.weight_decay_end=null",
]
# per-method additions to the budget, each with its evidence in docs/evidence.md (peer_table.py applies them to lightly
# too: it clips lightly's gradients the same way)
STABILISE = {"vicreg": ["trainer.gradient_clip_val=3.0"]}
HEADER = [
    "| encoder | kNN top-1 | kNN k=20 | linear probe | 5-way 5-shot | MAP@R | RankMe | train s |",
    "|---|---|---|---|---|---|---|---|",
]
# the scores of a row (:func:`score`); a cached row without one of them is scored again, not trained again
SCORES = ("knn", "knn20", "probe", "fewshot5", "map_at_r", "rankme")


def run_settings(epochs: int, root: Path = CIFAR10, subset: int = 10_000) -> list[str]:
    """What every row trains with, whatever the recipe: data, schedule, no validation during training."""
    return [
        f"data.root={root}",
        f"data.subset={subset}",
        "data.batch_size=256",
        "trainer=cpu",
        f"trainer.max_epochs={epochs}",
        "trainer.limit_val_batches=0",
        "callbacks.progress=null",
        "trainer.enable_model_summary=false",
        "report_baseline=false",
        *OPTIM,
    ]


def budget(name: str, epochs: int, run_root: Path, root: Path = CIFAR10, subset: int = 10_000) -> list[str]:
    """The overrides of the row of ``recipes/cifar10/<name>.yaml`` (module docstring)."""
    out = [f"recipes=cifar10/{name}", *run_settings(epochs, root, subset), *STABILISE.get(name, [])]
    cfg = compose_train(out, run_root / "probe")
    if cfg.get("mask") is not None:
        out.append(f"++backbone.depth={VIT_DEPTH}")
        if "top_k" in cfg.objective:  # data2vec's targets average the top half of the blocks (the paper: 6 of 12)
            out.append(f"objective.top_k={VIT_DEPTH // 2}")
    else:
        out.append("backbone=small_cnn")
    if "EMA" in str(cfg.get("target", {}).get("_target_", "")):
        out.append("target.base=0.99")
    if "init_from" in OmegaConf.load(ROOT / "recipes" / "cifar10" / f"{name}.yaml"):  # continues a trained run
        out.append(f"init_from={run_root / 'simclr'}")
    return out


def baseline_label(cfg) -> str:
    """The random-init row a row is compared with: its encoder at init, read with its features."""
    if cfg.backbone.name == "small_cnn":
        return "random init (small CNN)"
    if cfg.backbone.get("class_token", True) is False:  # I-JEPA's ViT: every output token normalised
        return "random init (ViT, no class token, normalised patch mean)"
    return f"random init (ViT, {'class token' if cfg.backbone.get('global_pool') == 'token' else 'patch mean'})"


def baselines(epochs: int, run_root: Path, root: Path = CIFAR10) -> dict[str, list[str]]:
    """Overrides that build each random-init encoder exactly as its rows' runs do."""
    common = [*run_settings(epochs, root), "data.subset=64", "data.batch_size=32"]
    vit = ["recipes=cifar10/mae", *common, f"++backbone.depth={VIT_DEPTH}"]  # the CIFAR ViT-Ti of every ViT recipe
    return {
        "random init (small CNN)": ["recipes=cifar10/simclr", *common, "backbone=small_cnn"],
        "random init (ViT, class token)": [*vit, "++backbone.global_pool=token"],
        "random init (ViT, patch mean)": [*vit, "++backbone.global_pool=avg"],
        "random init (ViT, no class token, normalised patch mean)": [
            *vit,
            "++backbone.global_pool=avg",
            "++backbone.class_token=false",
            "++backbone.fc_norm=false",
        ],
    }


def eval_images(root: Path = CIFAR10, train_cap: int | None = None, test_cap: int | None = None):
    """The un-augmented training and test splits (32 px, normalised) as tensor datasets, read once."""
    cfg = compose_train(
        [
            "recipes=cifar10/simclr",
            f"data.root={root}",
            "data.subset=null",  # a subset would also cap the bank
            "data.batch_size=32",
            f"data.eval_train_subset={train_cap or 'null'}",
            f"data.eval_test_subset={test_cap or 'null'}",
        ],
        Path("/nonexistent"),
    )
    from hydra.utils import instantiate

    datamodule = instantiate(cfg.data, _convert_="object")
    datamodule.setup("fit")
    out = []
    for ds in datamodule.eval_datasets():
        loader = torch.utils.data.DataLoader(ds, batch_size=500, num_workers=max(1, (os.cpu_count() or 2) - 1))
        xs, ys = zip(*loader)
        out.append(torch.utils.data.TensorDataset(torch.cat(xs), torch.cat(ys)))
    return out[0], out[1]


def cached(path: Path, key: str, compute) -> dict:
    """The scores in ``path`` if they were computed for ``key``; else ``compute()`` (with ``seconds`` 0), saved."""
    saved = json.loads(path.read_text()) if path.is_file() else {}
    if saved.get("config") == key and set(SCORES) <= saved.keys():
        return saved
    out = compute() | {"seconds": 0, "config": key}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out))
    return out


def score(train_x, train_y, test_x, test_y) -> dict:
    """kNN (k=200, 20), linear probe, 5-way 5-shot episodes of the test split (selfsup-eval's few-shot protocol,
    600 episodes), MAP@R of the test rows against the training bank and RankMe of the test features."""
    return {
        "knn": knn_top1(train_x, train_y, test_x, test_y),
        "knn20": knn_top1(train_x, train_y, test_x, test_y, k=20),
        "probe": linear_probe(train_x, train_y, test_x, test_y)["top1"],
        "fewshot5": fewshot(test_x, test_y, shots=5)["mean"],
        "map_at_r": map_at_r(train_x, train_y, test_x, test_y),
        "rankme": rankme(test_x).item(),
    }


def score_encoder(encoder, train_ds, test_ds) -> dict:
    return score(*extract(encoder, train_ds), *extract(encoder, test_ds))


def table_row(name: str, overrides: list[str], run_dir: Path, train_ds, test_ds, redo: bool = False) -> dict:
    """The row of recipe ``name``: :func:`objectives_table.table_row` scored by :func:`score` on the full splits,
    with the random-init row it is compared with."""
    annotate = lambda cfg: {"baseline": baseline_label(cfg)}  # noqa: E731
    return cached_row(run_dir, overrides, lambda b: score_encoder(b, train_ds, test_ds), SCORES, redo, annotate)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--only", default="", help="comma-separated recipe names (default: all of recipes/cifar10)")
    parser.add_argument("--redo", action="store_true", help="train the chosen rows again even if cached")
    parser.add_argument("--out", default=None, help="default: bench/CIFAR.md (with --read-as: required)")
    parser.add_argument("--run-root", default=str(ROOT / "runs" / "cifar_table"))
    parser.add_argument(
        "--override",
        action="append",
        default=[],
        help="a Hydra override added to every chosen row (ablations: use another --run-root and --out)",
    )
    parser.add_argument(
        "--baselines",
        default=None,
        help="where the scores of raw pixels and of the random-init encoders are cached (default: --run-root); "
        "--override does not change them, so an ablation reuses the table's: --baselines runs/cifar_table",
    )
    parser.add_argument(
        "--read-as",
        choices=("token", "avg"),
        default=None,
        help="train nothing: score the chosen ViT rows' trained encoders, and the ViT at random init, by the class "
        "token or the patch mean instead of their recipe's features",
    )
    args = parser.parse_args()
    if args.read_as and args.out is None:
        raise SystemExit("--read-as: give --out (its table is not bench/CIFAR.md's)")
    out = Path(args.out or ROOT / "bench" / "CIFAR.md")
    run_root = Path(args.run_root)
    base_root = Path(args.baselines) if args.baselines else run_root
    chosen = [n for n in RECIPES if not args.only or n in args.only.split(",")]
    unknown = set(args.only.split(",")) - set(RECIPES) - {""}
    if unknown:
        raise SystemExit(f"--only: no recipes/cifar10/{sorted(unknown)[0]}.yaml (have: {', '.join(RECIPES)})")
    if not (CIFAR10 / "train").is_dir():
        raise SystemExit(f"no CIFAR-10 ImageFolder at {CIFAR10} (set SELFSUP_CIFAR10 to root/{{train,test}}/<class>/)")

    train_ds, test_ds = eval_images()
    if args.read_as:
        read_as(args.read_as, chosen, run_root, args.epochs, train_ds, test_ds, out)
        return
    rows: dict[str, str] = {}
    (pixels, y), (test_pixels, test_y) = (ds.tensors for ds in (train_ds, test_ds))
    rows["raw pixels (32x32x3)"] = format_row(
        "raw pixels (32x32x3)",
        cached(base_root / "raw_pixels.json", "", lambda: score(pixels.flatten(1), y, test_pixels.flatten(1), test_y)),
    )
    for label, overrides in baselines(args.epochs, base_root).items():
        key = config_hash(compose_train(overrides, base_root / "init"))
        path = base_root / f"{label.replace(' ', '_')}.json"
        scores = cached(
            path, key, lambda o=overrides: score_encoder(initial_backbone(o, base_root / "init")[0], train_ds, test_ds)
        )
        rows[label] = format_row(label, scores)
    for name in chosen:
        overrides = [*budget(name, args.epochs, run_root), *args.override]
        row = table_row(name, overrides, run_root / name, train_ds, test_ds, args.redo)
        rows[f"cifar10/{name}"] = format_row(f"cifar10/{name}", row)
        write_table(rows, args.epochs, out)  # after every row: a long run shows its progress
    print(out.read_text())


def read_as(
    pool: str, names: list[str], run_root: Path, epochs: int, train_ds, test_ds, out: Path, root: Path = CIFAR10
) -> dict[str, dict]:
    """``--read-as``: the scores of the trained ViT rows of ``names`` and of the ViT at random init, read with timm's
    ``global_pool`` set to ``pool`` on the encoder as built (its norms unchanged); written to ``out`` as a table."""
    missing = [n for n in names if not (run_root / n / "checkpoints" / "last.ckpt").is_file()]
    if missing:
        raise SystemExit(f"--read-as: {run_root / missing[0]} holds no trained row (train it first)")
    init = initial_backbone(baselines(epochs, run_root, root)["random init (ViT, class token)"], run_root / "init")[0]
    encoders = {"random init (ViT)": init}
    encoders |= {f"cifar10/{n}": checkpoint.backbone_from(checkpoint.load(run_root / n)) for n in names}
    scores = {}
    for label, encoder in encoders.items():
        if not hasattr(encoder, "global_pool"):
            raise SystemExit(f"--read-as: {label} is not a ViT row (its encoder has no global_pool)")
        if pool == "token" and not encoder.has_class_token:
            raise SystemExit(f"--read-as token: {label}'s ViT has no class token (backbone.class_token=false)")
        encoder.global_pool = pool
        scores[f"{label}, read as {pool}"] = score_encoder(encoder.eval(), train_ds, test_ds) | {"seconds": 0}
    lines = [format_row(label, m) for label, m in scores.items()]
    out.write_text(
        "\n".join([f"CIFAR-10 ViT rows read as {pool} ({datetime.date.today()})", "", *HEADER, *lines]) + "\n"
    )
    print(out.read_text())
    return scores


def format_row(name: str, m: dict) -> str:
    percent = " | ".join(f"{100 * m[k]:.1f}%" for k in SCORES[:-1])
    return f"| {name} | {percent} | {m['rankme']:.1f} | {m['seconds']:.0f} |"


def write_table(rows: dict[str, str], epochs: int, out: Path) -> None:
    """Write ``rows`` to ``out``, keeping the rows of ``out`` this run did not score (run with ``--only``)."""
    columns = HEADER[0].count("|")  # rows written before a column was added are dropped, not mixed in
    kept = {n: line for n, line in written_rows(out).items() if line.count("|") == columns} | rows
    order = [n for n in kept if not n.startswith("cifar10/")] + [f"cifar10/{n}" for n in RECIPES]
    lines = [kept[n] for n in order if n in kept]  # baselines first, then the recipes in RECIPES order
    header = [
        f"CIFAR-10, full test split (10,000) against the full training split (50,000); trained {epochs} epochs "
        f"on a stratified 10,000-image subset, batch 256, AdamW 2e-3, seed 0, 2-core CPU ({datetime.date.today()}). "
        f"Command: `.venv/bin/python bench/cifar_table.py --epochs {epochs}`",
        "",
        *HEADER,
    ]
    out.write_text("\n".join(header + lines) + "\n")


if __name__ == "__main__":
    main()
