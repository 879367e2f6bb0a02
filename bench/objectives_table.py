"""Every objective on the quickstart data with the same short CPU budget, next to random init and raw pixels.

    .venv/bin/python bench/objectives_table.py [--epochs 30] [--only simclr,byol] [--out bench/OBJECTIVES.md]

Each row is ``recipes=quickstart`` (digits at 16 px, the 3-block CNN, batch 256, AdamW) with the parts of the
method's recipe swapped in (``METHODS``: objective, target, memory, predictor and the projector's structure of
``recipes/cifar10/<method>.yaml``, at the quickstart's widths; ``tests/bench`` checks each row against its recipe),
trained for ``--epochs`` epochs with seed 0; the encoder is then scored on the held-out split: kNN top-1 (k=200,
T=0.07, bank = the 1,437 training images; and k=20: digits has ~144 training images a class, so k=200 — the
CIFAR/ImageNet convention, 5,000+ a class — also votes with other classes' images), a linear probe trained on 5
labelled images a class (``selfsup.metrics.linear_probe``), and RankMe of the backbone features. Prints a markdown
table (and writes it to ``--out``) with the wall time of each run on this machine.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

import lightning as L
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.config_utils composes configs exactly like selfsup-train

from tests.config_utils import compose_train  # noqa: E402

from selfsup.data.sources import stratified_first  # noqa: E402
from selfsup.evaluate.features import extract  # noqa: E402
from selfsup.metrics import knn_top1, linear_probe, rankme  # noqa: E402
from selfsup.runtime import checkpoint  # noqa: E402
from selfsup.train import build, run  # noqa: E402

PRED = "predictor={_target_:selfsup.models.mlp,_partial_:true,hidden_dim:512,out_dim:64}"
EMA = "target=ema"
# 2 x 16 px + 6 x 12 px. Local crops of 20-50% (globals 50-100%): the ImageNet default of 5-14% cuts 2-3 source
# pixels out of an 8 x 8 digit, and SwAV/DINO then scored below random init (57.8% / 71.9% kNN; docs/evidence.md)
MULTICROP = [
    "views=multicrop",
    "views.views.l1.size=12",
    "views.views.l1.scale=[0.2,0.5]",
    "views.views.v1.scale=[0.5,1.0]",
    "batch_views=true",
]
THREE_LAYERS = "projector.num_layers=3"
# name: (the recipe whose parts the row uses — objective, target, memory, predictor, the projector's structure; at
# the quickstart's widths, data and optimiser —, the overrides on top of recipes=quickstart)
METHODS = {
    "simclr (info_nce)": ("cifar10/simclr", ["objective=info_nce"]),
    "moco v3 (one-way info_nce + EMA)": (
        "cifar10/mocov3",
        ["objective=moco_v3", PRED, EMA, "target.base=0.99", THREE_LAYERS, "projector.last_batch_norm=true"],
    ),
    "dcl (debiased_info_nce)": ("cifar10/dcl", ["objective=debiased_info_nce"]),
    "hcl (debiased, beta=1)": ("cifar10/hcl", ["objective=debiased_info_nce", "objective.beta=1.0"]),
    "barlow_twins": ("cifar10/barlow_twins", ["objective=barlow_twins", "objective.lambd=0.0078", THREE_LAYERS]),
    "vicreg": ("cifar10/vicreg", ["objective=vicreg", THREE_LAYERS]),
    "intl": ("cifar10/intl", ["objective=intl", THREE_LAYERS]),
    "ldreg (+ info_nce)": ("cifar10/ldreg", ["objective=ldreg"]),
    "care (+ info_nce)": ("cifar10/care", ["objective=care", "views=care"]),
    "sie": (
        "cifar10/sie",
        ["objective=sie", "objective.inv_dim=32", "objective.equi_dim=32", "projector.out_dim=64", THREE_LAYERS],
    ),
    "byol (negative_cosine + EMA)": ("cifar10/byol", ["objective=negative_cosine", PRED, EMA, "target.base=0.99"]),
    "simsiam (negative_cosine)": (
        "cifar10/simsiam",
        [
            "objective=negative_cosine",
            "objective.offset=0.0",
            "objective.scale=1.0",
            PRED,
            "target=stopgrad",
            THREE_LAYERS,
            "projector.last_batch_norm=true",
        ],
    ),
    "moco v2 (EMA + key queue)": (
        "cifar10/mocov2",
        [
            EMA,
            "target.base=0.99",
            "memory=key_queue",
            "memory.size=1024",
            "objective.negatives=queue",
            "objective.temperature=0.2",
            "symmetric=false",
            "projector.batch_norm=false",
        ],
    ),
    "nnclr (support set)": (
        "cifar10/nnclr",
        [
            PRED,
            "memory=support_set",
            "memory.size=1024",
            "objective.negatives=cross",
            "objective.temperature=0.2",
            "projector.last_batch_norm=true",
        ],
    ),
    "dino (multi-crop, EMA teacher)": (
        "cifar10/dino",
        [
            "projector=dino_head",
            "projector.hidden_dim=512",
            "projector.bottleneck_dim=64",
            "projector.out_dim=256",
            "projector.batch_norm=true",
            EMA,
            "target.base=0.99",
            "objective=dino",
            "objective.teacher_temp=0.07",
            *MULTICROP,
        ],
    ),
    "swav (prototypes)": ("cifar10/swav", ["memory=swav", "memory.num_prototypes=300", "objective=swav"]),
    "swav (prototypes, multi-crop)": (
        "cifar10/swav",
        ["memory=swav", "memory.num_prototypes=300", "objective=swav", *MULTICROP],
    ),
    # one view a step (views=diet, kept digit-safe by the quickstart's view overrides), no projector, weight decay
    # 0.05 as recipes/digits/diet.yaml
    "diet (N-way head, one view)": (
        "cifar10/diet",
        ["objective=diet", "projector=identity", "views=diet", "optim.weight_decay=0.05"],
    ),
}


def quickstart(epochs: int) -> list[str]:
    """The overrides every row (and bench/peer_table.py) trains with."""
    return [
        "recipes=quickstart",
        "report_baseline=false",
        f"trainer.max_epochs={epochs}",
        "callbacks.progress=null",
        "trainer.enable_model_summary=false",
    ]


def trained_backbone(cfg):
    """Train ``cfg`` as selfsup-train does (resuming where its run directory stopped) and return the encoder as
    selfsup-eval reads it from ``last.ckpt``."""
    run(cfg)
    return checkpoint.backbone_from(checkpoint.load(cfg.run_dir))


def score(train_x, train_y, test_x, test_y) -> dict:
    few = torch.as_tensor(stratified_first(train_y, 5 * int(train_y.max() + 1)))
    probe = linear_probe(train_x[few], train_y[few], test_x, test_y, val_fraction=0.2)
    return {
        "knn": knn_top1(train_x, train_y, test_x, test_y),
        "knn20": knn_top1(train_x, train_y, test_x, test_y, k=20),
        "probe5": probe["top1"],
        "rankme": rankme(test_x).item(),
    }


def table_row(run_dir: Path, overrides: list[str], train_ds, test_ds) -> dict:
    """Train ``overrides`` in ``run_dir`` (continuing a run cut short) and score its backbone; a finished row is read
    from ``run_dir/table_row.json`` instead of trained again (delete the run root to redo all)."""
    done = run_dir / "table_row.json"
    if done.is_file():
        print(run_dir.name, "(from", done, ")", flush=True)
        return json.loads(done.read_text())
    start = time.time()
    backbone = trained_backbone(compose_train(overrides + ["resume=true"], run_dir))
    row = score(*extract(backbone, train_ds), *extract(backbone, test_ds))
    row["seconds"] = time.time() - start
    done.write_text(json.dumps(row))
    print(run_dir.name, row, flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--only", default="", help="comma-separated prefixes of method names")
    parser.add_argument("--out", default=str(ROOT / "bench" / "OBJECTIVES.md"))
    parser.add_argument("--run-root", default=str(ROOT / "runs" / "objectives_table"))
    args = parser.parse_args()
    common = quickstart(args.epochs)

    L.seed_everything(0)  # the initial weights every run starts from (run() seeds the same way)
    datamodule, module, _ = build(compose_train(common, Path(args.run_root) / "init"))
    train_ds, test_ds = datamodule.eval_datasets()
    rows = {}
    pixels = [torch.stack([x for x, _ in ds]).flatten(1) for ds in (train_ds, test_ds)]
    labels = [torch.stack([y for _, y in ds]) for ds in (train_ds, test_ds)]
    rows["raw pixels (16x16x3)"] = score(pixels[0], labels[0], pixels[1], labels[1]) | {"seconds": 0.0}
    rows["random init (same CNN)"] = score(*extract(module.backbone, train_ds), *extract(module.backbone, test_ds))
    rows["random init (same CNN)"]["seconds"] = 0.0

    for name, (_, overrides) in METHODS.items():
        if args.only and not any(name.startswith(p) for p in args.only.split(",")):
            continue
        run_dir = Path(args.run_root) / re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")
        rows[name] = table_row(run_dir, common + overrides, train_ds, test_ds)

    lines = [
        f"Digits (held-out 360 images), {args.epochs} epochs of `recipes=quickstart` per method, seed 0, "
        f"2-core CPU. Command: `.venv/bin/python bench/objectives_table.py --epochs {args.epochs}`",
        "",
        "| encoder | kNN top-1 | kNN k=20 | 5-labels/class probe | RankMe | train s |",
        "|---|---|---|---|---|---|",
    ]
    for name, m in rows.items():
        lines.append(
            f"| {name} | {100 * m['knn']:.1f}% | {100 * m['knn20']:.1f}% | {100 * m['probe5']:.1f}% | "
            f"{m['rankme']:.1f} | "
            f"{m['seconds']:.0f} |"
        )
    table = "\n".join(lines)
    print(table)
    Path(args.out).write_text(table + "\n")


if __name__ == "__main__":
    main()
