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

The masked methods (``MASKED``: MAE, I-JEPA, data2vec, iBOT + KoLeo) train a shallow ViT-Ti for more epochs
(``VIT_EPOCHS``, ``SLOW_VIT_EPOCHS``; docs/evidence.md says why) and are compared with the same ViT at random init read
with the same features (``VIT_BASELINES``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import shutil
import sys
import time
from pathlib import Path

import lightning as L
import torch
from omegaconf import OmegaConf

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
# PIRL's jigsaw of an 18 px crop (3 x 3 cells of 6 px, 5 px tiles), digit-safe like the quickstart's image view
PIRL_VIEWS = [f"views.views.v2.{k}" for k in ("size=18", "flip_p=0.0", "saturation=0.0", "hue=0.0", "grayscale_p=0.0")]


# The masked rows' encoder: the recipes' CIFAR ViT-Ti (192 wide, 3 heads) with 4 of its 12 blocks, its position
# embedding made for 16 px. Patches: 4 px (a 4 x 4 grid of 2 x 2 source pixels of the 8 x 8 digits) where the
# method fits that grid; I-JEPA's four target blocks and context need the 8 x 8 grid of 2 px patches (on 4 x 4 its
# context keeps 1-7 tokens). 2 px patches cover one source pixel each: MAE's per-patch normalised targets are then
# noise (a constant patch has no variance), and it scored below random init (docs/evidence.md).
def vit(patch: int) -> list[str]:
    return ["backbone=vit_tiny_cifar", f"backbone.patch_size={patch}", "backbone.img_size=16", "+backbone.depth=4"]


VIT_NAME = "the recipes' ViT-Ti with 4 of its 12 blocks"
# masked methods need hundreds of steps where the others need 100 (MAE on digits: below random init after 100
# steps, above from ~250; docs/evidence.md)
VIT_EPOCHS = 150
SLOW_VIT_EPOCHS = 60  # I-JEPA (an 8 x 8 grid) and iBOT (multi-crop): 3-4x the cost of a step
CLS = "+backbone.global_pool=token"  # features: the class token (MAE's linear probe, DINOv2)
PATCH_MEAN = "+backbone.global_pool=avg"  # features: the mean of the patch tokens (I-JEPA, data2vec)
# I-JEPA's own ViT: no class token, its last LayerNorm on every output token (docs/tokens.md)
IJEPA_VIT = ["+backbone.class_token=false", "+backbone.fc_norm=false"]
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
    # the quickstart's digit views, a quadrant turned (LoRot-E) / the whole view turned, 4 views (RotNet)
    "lorot (+ info_nce)": ("cifar10/simclr_lorot", ["objective=lorot", "+views.views.v1.rot90=lorot_e"]),
    "rotnet (rotation)": (
        "cifar10/rotnet",
        [
            "objective=rotation",
            "projector=identity",
            "+views.views.v1.rot90=image",
            "+views.views.v3=${views.views.v1}",
            "+views.views.v4=${views.views.v1}",
        ],
    ),
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
            "projector.num_layers=3",
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
    # the image (the quickstart's digit view) and its jigsaw (PIRL_VIEWS); the bank holds the 1,437 training
    # images, 1,024 negatives a step
    "pirl (jigsaw, memory bank)": (
        "cifar10/pirl",
        [
            "views=pirl",
            *PIRL_VIEWS,
            "memory=sample_bank",
            "memory.num_negatives=1024",
            "objective=pirl",
            "objective.norm_constant_update=every_step",
            "projector.num_layers=1",
        ],
    ),
    # the paper's Z: one, fixed on the first step from the jigsaw term (vissl); it collapses here (docs/pirl.md)
    "pirl (jigsaw, memory bank, the paper's fixed Z)": (
        "cifar10/pirl",
        [
            "views=pirl",
            *PIRL_VIEWS,
            "memory=sample_bank",
            "memory.num_negatives=1024",
            "objective=pirl",
            "objective.norm_constant_update=first_step",
            "projector.num_layers=1",
        ],
    ),
    # the same with vissl's other loss_type: the positive's cross-entropy among the 1 + K scores (InfoNCE), no Z
    "pirl (jigsaw, memory bank, cross_entropy)": (
        "cifar10/pirl",
        [
            "views=pirl",
            *PIRL_VIEWS,
            "memory=sample_bank",
            "memory.num_negatives=1024",
            "objective=pirl",
            "objective.loss_type=cross_entropy",
            "projector.num_layers=1",
        ],
    ),
    # one view a step (views=diet, kept digit-safe by the quickstart's view overrides), no projector, weight decay
    # 0.05 as recipes/digits/diet.yaml
    "diet (N-way head, one view)": (
        "cifar10/diet",
        ["objective=diet", "projector=identity", "views=diet", "optim.weight_decay=0.05"],
    ),
}
# Masked and predictive methods (docs/tokens.md) on the ViT above, one view (views=masked, kept digit-safe by
# the quickstart's view overrides) unless multi-crop; the token heads of the recipes (MAE's decoder 128 x 4, I-JEPA's
# predictor 96 x 4); EMA targets at 0.99 as every EMA row of this table; VIT_EPOCHS epochs (I-JEPA: fewer, its
# 8 x 8 grid costs 4x a step). Each row's evaluation features are its recipe's, and it is compared with the same
# ViT at random init read with the same features.
MASKED = {
    "mae (ViT, masked pixels)": (
        "cifar10/mae",
        [
            *vit(4),
            f"trainer.max_epochs={VIT_EPOCHS}",
            CLS,
            "views=masked",
            "projector=identity",
            "mask=random",
            "token_head=mae",
            "token_head.dim=128",
            "token_head.depth=4",
            "token_head.heads=4",
            "objective=mae",
        ],
    ),
    "i-jepa (ViT, EMA target blocks)": (
        "cifar10/ijepa",
        [
            *vit(2),
            *IJEPA_VIT,
            f"trainer.max_epochs={SLOW_VIT_EPOCHS}",
            PATCH_MEAN,
            "views=masked",
            "projector=identity",
            EMA,
            "target.base=0.99",
            "mask=multiblock",
            "mask.min_keep=4",  # the recipe's: target blocks hold 9-12 of the 64 tokens
            "token_head=jepa",
            "token_head.dim=96",
            "token_head.depth=4",
            "token_head.heads=4",
            "objective=ijepa",
        ],
    ),
    "data2vec (ViT, EMA top-block targets)": (
        "cifar10/data2vec",
        [
            *vit(4),
            f"trainer.max_epochs={VIT_EPOCHS}",
            PATCH_MEAN,
            "views=masked",
            "projector=identity",
            EMA,
            "target.base=0.99",
            "mask=block",
            "mask.ratio=0.6",
            "mask.min_patches=4",
            "token_head=linear",
            "objective=data2vec",
            "objective.top_k=2",  # half the blocks, as the paper's 6 of 12
        ],
    ),
    "ibot + koleo (ViT, dinov2, multi-crop)": (
        "cifar10/ibot",
        [
            *vit(4),
            f"trainer.max_epochs={SLOW_VIT_EPOCHS}",
            CLS,
            *MULTICROP,
            "projector=dino_head",
            "projector.hidden_dim=512",
            "projector.bottleneck_dim=64",
            "projector.out_dim=256",
            EMA,
            "target.base=0.99",
            "mask=block",
            "mask.views=2",
            "mask.ratio=[0.1,0.5]",
            "mask.min_patches=4",
            "mask.probability=0.5",
            "token_head=projector",
            "objective=dinov2",
            "objective.terms.dino.loss.teacher_temp=0.07",  # as the dino row: no warm-up in 20 epochs
            "objective.terms.ibot.loss.teacher_temp=0.07",
        ],
    ),
}
METHODS.update(MASKED)


def encoder_of(overrides: list[str]) -> tuple[list[str], str]:
    """A masked row's ViT overrides (patch size, depth, class token, norms) and its features (CLS or PATCH_MEAN)."""
    pool = CLS if CLS in overrides else PATCH_MEAN
    vit = [
        o for o in overrides if o.startswith(("backbone=", "backbone.", "+backbone.")) and o not in (CLS, PATCH_MEAN)
    ]
    return vit, pool


def vit_baseline(name: str) -> str:
    """The random-init row a masked row is compared with: the same ViT read with the same features."""
    encoder, pool = encoder_of(METHODS[name][1])
    patch = next(o.split("=")[1] for o in encoder if o.startswith("backbone.patch_size="))
    if set(IJEPA_VIT) <= set(encoder):
        return f"random init (same ViT, {patch} px patches, no class token, normalised patch mean)"
    return f"random init (same ViT, {patch} px patches, {'class token' if pool == CLS else 'patch mean'})"


# The same ViT at random init, read with each masked row's features: the weights the row starts from (seed 0;
# build() creates the backbone first).
VIT_BASELINES = {vit_baseline(name): [*vit, pool] for name in MASKED for vit, pool in [encoder_of(METHODS[name][1])]}


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


SCORES = ("knn", "knn20", "probe5", "rankme")


def score(train_x, train_y, test_x, test_y) -> dict:
    few = torch.as_tensor(stratified_first(train_y, 5 * int(train_y.max() + 1)))
    probe = linear_probe(train_x[few], train_y[few], test_x, test_y, val_fraction=0.2)
    return {
        "knn": knn_top1(train_x, train_y, test_x, test_y),
        "knn20": knn_top1(train_x, train_y, test_x, test_y, k=20),
        "probe5": probe["top1"],
        "rankme": rankme(test_x).item(),
    }


def config_hash(cfg) -> str:
    """What decides a row's result: the composed config without where it runs."""
    cfg = OmegaConf.to_container(cfg, resolve=False)
    cfg.pop("run_dir", None)
    return hashlib.sha256(json.dumps(cfg, sort_keys=True, default=str).encode()).hexdigest()[:16]


def timed(path: Path, train):
    """``train()``, its wall time added to the seconds in ``path``: a row cut short and resumed counts every call."""
    start = time.time()
    try:
        return train()
    finally:
        path.parent.mkdir(parents=True, exist_ok=True)
        before = float(path.read_text()) if path.is_file() else 0.0
        path.write_text(f"{before + time.time() - start:.1f}")


def table_row(
    run_dir: Path,
    overrides: list[str],
    score_backbone,
    scores: tuple[str, ...] = SCORES,
    redo: bool = False,
    annotate=None,
) -> dict:
    """Train ``overrides`` in ``run_dir`` (continuing a run cut short) and score its backbone with
    ``score_backbone(backbone) -> dict``; the row is saved in ``run_dir/table_row.json`` with a hash of the composed
    config (and of the run it continues, ``init_from``).

    A saved row with the same hash is read back (scored again from its checkpoint if it lacks one of ``scores``: a
    column added since); a changed config, or ``redo``, trains again from scratch. ``annotate(cfg) -> dict`` adds
    fields to a new row. ``seconds``: the training time of every call that trained it."""
    cfg = compose_train([*overrides, "resume=auto"], run_dir)
    key = config_hash(cfg)
    if cfg.get("init_from") and (Path(cfg.init_from) / "table_row.json").is_file():  # a retrained start, too
        key += "+" + json.loads((Path(cfg.init_from) / "table_row.json").read_text())["config"]
    done = run_dir / "table_row.json"
    if done.is_file() and not redo:
        row = json.loads(done.read_text())
        if row.get("config") == key:
            if set(scores) <= row.keys():
                print(run_dir.name, "(cached)", flush=True)
                return row
            row |= score_backbone(checkpoint.backbone_from(checkpoint.load(run_dir)))  # the same weights
            done.write_text(json.dumps(row))
            print(run_dir.name, "(scored again)", row, flush=True)
            return row
    if run_dir.exists() and (redo or done.is_file()):  # changed since it was scored: train again from scratch
        shutil.rmtree(run_dir)
    backbone = timed(run_dir / "train_seconds", lambda: trained_backbone(cfg))
    seconds = float((run_dir / "train_seconds").read_text())
    row = score_backbone(backbone) | {"seconds": seconds, "config": key} | (annotate(cfg) if annotate else {})
    done.write_text(json.dumps(row))
    print(run_dir.name, row, flush=True)
    return row


def scorer(train_ds, test_ds):
    """:func:`score` of a backbone's features on the digits splits."""
    return lambda backbone: score(*extract(backbone, train_ds), *extract(backbone, test_ds))


def initial_backbone(overrides: list[str], run_dir: Path):
    """The encoder a run of ``overrides`` starts from (``run()`` seeds with 0 and builds the same way), and the
    datamodule."""
    L.seed_everything(0)
    datamodule, module, _ = build(compose_train(overrides, run_dir))
    return module.backbone, datamodule


def format_row(name: str, m: dict, probe: str = "probe5") -> str:
    return (
        f"| {name} | {100 * m['knn']:.1f}% | {100 * m['knn20']:.1f}% | {100 * m[probe]:.1f}% | "
        f"{m['rankme']:.1f} | {m['seconds']:.0f} |"
    )


def written_rows(path: Path) -> dict[str, str]:
    """The row lines of a table this script wrote, by encoder name (for --merge)."""
    rows = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if line.startswith("| ") and len(cells) > 3 and cells[1].endswith("%"):
                rows[cells[0]] = line
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--only", default="", help="comma-separated prefixes of method names")
    parser.add_argument(
        "--merge",
        action="store_true",
        help="keep the rows of --out that this run does not train, as they are written (with --only: add or redo "
        "some rows without training the others again)",
    )
    parser.add_argument("--out", default=str(ROOT / "bench" / "OBJECTIVES.md"))
    parser.add_argument("--run-root", default=str(ROOT / "runs" / "objectives_table"))
    parser.add_argument(
        "--override",
        action="append",
        default=[],
        help="a Hydra override added to every chosen row (ablations: use another --run-root and --out)",
    )
    args = parser.parse_args()
    common = quickstart(args.epochs)
    root = Path(args.run_root)
    chosen = [n for n in METHODS if not args.only or any(n.startswith(p) for p in args.only.split(","))]

    backbone, datamodule = initial_backbone(common, root / "init")
    train_ds, test_ds = datamodule.eval_datasets()
    rows = {}
    pixels = [torch.stack([x for x, _ in ds]).flatten(1) for ds in (train_ds, test_ds)]
    labels = [torch.stack([y for _, y in ds]) for ds in (train_ds, test_ds)]
    rows["raw pixels (16x16x3)"] = score(pixels[0], labels[0], pixels[1], labels[1]) | {"seconds": 0.0}
    rows["random init (same CNN)"] = score(*extract(backbone, train_ds), *extract(backbone, test_ds))
    rows["random init (same CNN)"]["seconds"] = 0.0
    if any(n in MASKED for n in chosen):
        for label, overrides in VIT_BASELINES.items():
            vit, _ = initial_backbone(common + overrides, root / "init_vit")
            rows[label] = score(*extract(vit, train_ds), *extract(vit, test_ds)) | {"seconds": 0.0}

    for name in chosen:
        run_dir = root / re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")
        rows[name] = table_row(run_dir, common + METHODS[name][1] + args.override, scorer(train_ds, test_ds))

    order = ["raw pixels (16x16x3)", "random init (same CNN)", *METHODS]
    order[order.index(next(iter(MASKED))) : order.index(next(iter(MASKED)))] = list(VIT_BASELINES)
    lines = {name: format_row(name, rows[name]) for name in rows}
    if args.merge:
        kept = written_rows(Path(args.out))
        lines = {name: lines.get(name) or kept.get(name) for name in order if name in lines or name in kept}
    header = [
        f"Digits (held-out 360 images), {args.epochs} epochs of `recipes=quickstart` per method, seed 0, "
        f"2-core CPU. The masked rows train {VIT_NAME} with the same data, batch and optimiser for {VIT_EPOCHS} "
        f"epochs (I-JEPA and iBOT: {SLOW_VIT_EPOCHS}) and are compared with the same ViT at random init read with "
        "the same features. "
        f"Command: `.venv/bin/python bench/objectives_table.py --epochs {args.epochs}`",
        "",
        "| encoder | kNN top-1 | kNN k=20 | 5-labels/class probe | RankMe | train s |",
        "|---|---|---|---|---|---|",
    ]
    table = "\n".join(header + [lines[name] for name in order if name in lines])
    print(table)
    Path(args.out).write_text(table + "\n")


if __name__ == "__main__":
    main()
