"""Ours vs lightly's implementation of the same method, side by side on the quickstart data and budget.

    .venv/bin/pip install -e '.[bench]'          # lightly: a benchmark dependency only
    .venv/bin/python bench/peer_table.py [--epochs 20] [--seeds 0,1,2] [--only simsiam,byol] [--out bench/PEERS.md]

Both columns of a row train the same backbone from the same initial weights (the 3-block CNN of
``recipes=quickstart``, per seed) on the same batches of the same views (our digits data module, 16 px, batch 256),
with the same optimiser and schedule (AdamW, lr 2e-3, weight decay 1e-4 off biases and norms, 2 warm-up epochs then
cosine) for ``--epochs`` epochs, and are scored the same way as ``bench/objectives_table.py`` (kNN top-1 at
k=200 and k=20, a probe on 5 labels a class, RankMe of the backbone features on the 360 held-out images). What
differs is the method:

- ours: ``selfsup-train recipes=quickstart`` with the parts of ``recipes/cifar10/<method>.yaml`` — its heads'
  structure, loss, target and memory;
- lightly (``lightly`` from PyPI): its projection/prediction heads (``lightly.models.modules.heads``) at our widths
  (hidden 512, output 64), its loss (``lightly.loss``) with its default hyperparameters, and its momentum update
  (``lightly.models.utils.update_momentum`` with ``lightly.utils.scheduler.cosine_schedule``), in a plain PyTorch
  loop written after lightly's own examples (``examples/pytorch/<method>.py``).

Prints a markdown table (and writes it to ``--out``) with both numbers and the wall time of each run.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import lightning as L
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from objectives_table import quickstart, score, trained_backbone  # noqa: E402
from tests.config_utils import compose_train  # noqa: E402

from selfsup.evaluate.features import extract  # noqa: E402
from selfsup.train import build  # noqa: E402

try:
    from lightly import loss as lightly_loss
    from lightly.models.modules import heads
    from lightly.models.utils import update_momentum
    from lightly.utils.scheduler import cosine_schedule
except ImportError as err:  # pragma: no cover - a benchmark dependency
    raise SystemExit(f"bench/peer_table.py needs lightly: .venv/bin/pip install -e '.[bench]' ({err})") from None

HIDDEN, OUT = 512, 64


class Siamese(nn.Module):
    """Two views through backbone → projection head [→ prediction head], against a target branch: the online
    branch itself (SimCLR, Barlow Twins, VICReg), its detached copy (SimSiam) or a momentum copy (BYOL)."""

    def __init__(self, backbone, projection, loss, prediction=None, momentum: float | None = None, stopgrad=False):
        super().__init__()
        self.backbone, self.projection, self.prediction, self.criterion = backbone, projection, prediction, loss
        self.momentum, self.stopgrad = momentum, stopgrad
        if momentum is not None:  # lightly's examples/pytorch/byol.py: copies with requires_grad off
            self.backbone_momentum = copy.deepcopy(backbone).requires_grad_(False)
            self.projection_momentum = copy.deepcopy(projection).requires_grad_(False)

    def forward(self, x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
        z0, z1 = self.projection(self.backbone(x0)), self.projection(self.backbone(x1))
        if self.prediction is None:
            return self.criterion(z0, z1)
        p0, p1 = self.prediction(z0), self.prediction(z1)
        if self.momentum is not None:
            with torch.no_grad():
                z0, z1 = (self.projection_momentum(self.backbone_momentum(x)) for x in (x0, x1))
        elif self.stopgrad:
            z0, z1 = z0.detach(), z1.detach()
        return 0.5 * (self.criterion(p0, z1) + self.criterion(p1, z0))

    def after_step(self, step: int, total: int) -> None:
        if self.momentum is not None:
            m = cosine_schedule(step, total, self.momentum, 1.0)
            update_momentum(self.backbone, self.backbone_momentum, m=m)
            update_momentum(self.projection, self.projection_momentum, m=m)


def lightly_simclr(backbone, dim, temperature):
    return Siamese(backbone, heads.SimCLRProjectionHead(dim, HIDDEN, OUT), lightly_loss.NTXentLoss(temperature))


def lightly_byol(backbone, dim, momentum):
    return Siamese(
        backbone,
        heads.BYOLProjectionHead(dim, HIDDEN, OUT),
        lightly_loss.NegativeCosineSimilarity(),
        heads.BYOLPredictionHead(OUT, HIDDEN, OUT),
        momentum=momentum,
    )


def lightly_simsiam(backbone, dim):
    return Siamese(
        backbone,
        heads.SimSiamProjectionHead(dim, HIDDEN, OUT),
        lightly_loss.NegativeCosineSimilarity(),
        heads.SimSiamPredictionHead(OUT, HIDDEN, OUT),
        stopgrad=True,
    )


def lightly_barlow_twins(backbone, dim):
    return Siamese(backbone, heads.BarlowTwinsProjectionHead(dim, HIDDEN, OUT), lightly_loss.BarlowTwinsLoss())


def lightly_vicreg(backbone, dim):
    return Siamese(backbone, heads.VICRegProjectionHead(dim, HIDDEN, OUT), lightly_loss.VICRegLoss())


# method: (our overrides on top of recipes=quickstart — the heads' structure of recipes/cifar10/<method>.yaml at the
# quickstart widths —, lightly's model from (backbone, feature dim))
PRED = f"predictor={{_target_:selfsup.models.mlp,_partial_:true,hidden_dim:{HIDDEN},out_dim:{OUT}}}"
THREE_LAYERS = "projector.num_layers=3"
METHODS = {
    "simclr": (["objective=info_nce"], lambda b, d: lightly_simclr(b, d, temperature=0.5)),
    "byol": (
        ["objective=negative_cosine", PRED, "target=ema", "target.base=0.99"],
        lambda b, d: lightly_byol(b, d, momentum=0.99),
    ),
    "simsiam": (
        [
            "objective=negative_cosine",
            "objective.offset=0.0",
            "objective.scale=1.0",
            PRED,
            "target=stopgrad",
            THREE_LAYERS,
            "projector.last_batch_norm=true",
        ],
        lightly_simsiam,
    ),
    "barlow_twins": (["objective=barlow_twins", THREE_LAYERS], lightly_barlow_twins),
    "vicreg": (["objective=vicreg", THREE_LAYERS], lightly_vicreg),
}


def train_lightly(cfg, make_model) -> nn.Module:
    """lightly's model on our batches: seed, backbone init, loader, optimiser and schedule as ``selfsup-train``."""
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule, module, _ = build(cfg)
    model = make_model(module.backbone, module.backbone.num_features)
    plan = datamodule.batch_plan()
    loader = datamodule.train_dataloader()
    online = [p for n, p in model.named_parameters() if "_momentum" not in n]
    opt, sched = module.optim.build(online, [], plan.global_batch, plan.total_steps, plan.steps_per_epoch)
    step = 0
    for epoch in range(cfg.trainer.max_epochs):
        loader.load_state_dict({"epoch": epoch, "batches_done": 0})  # the epoch's shuffle and augmentation seeds
        for batch in loader:
            loss = model(*batch["views"][:2])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            model.after_step(step, plan.total_steps)
    if not torch.isfinite(loss):
        raise RuntimeError(f"lightly's model ended with loss {loss.item()}")
    return model.backbone


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--only", default="", help="comma-separated method names")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (the table shows mean ± std)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "PEERS.md"))
    parser.add_argument("--run-root", default=str(ROOT / "runs" / "peer_table"))
    args = parser.parse_args()
    common = quickstart(args.epochs)
    names = [m for m in METHODS if not args.only or m in args.only.split(",")]
    seeds = [int(x) for x in args.seeds.split(",")]
    rows = {}
    for name in names:
        overrides, make_model = METHODS[name]
        for seed in seeds:
            run_dir = Path(args.run_root) / f"{name}_seed{seed}"
            cfg = compose_train(common + overrides + [f"seed={seed}", "resume=true"], run_dir)
            train_ds, test_ds = build(cfg)[0].eval_datasets()
            for who in ("ours", "lightly"):
                start = time.time()
                backbone = trained_backbone(cfg) if who == "ours" else train_lightly(cfg, make_model)
                seconds = time.time() - start
                result = score(*extract(backbone, train_ds), *extract(backbone, test_ds)) | {"seconds": seconds}
                rows.setdefault((name, who), []).append(result)
                print(name, who, seed, result, flush=True)

    lines = [
        f"Digits (held-out 360 images), {args.epochs} epochs at the quickstart budget, seeds {args.seeds} (mean ± "
        f"std over seeds), 2-core CPU; ours vs lightly {_lightly_version()}. Command: "
        f"`.venv/bin/python bench/peer_table.py --epochs {args.epochs} --seeds {args.seeds}`",
        "",
        "| method | kNN ours | kNN lightly | kNN k=20 ours | kNN k=20 lightly | probe ours | probe lightly "
        "| RankMe ours | RankMe lightly | s ours | s lightly |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in names:
        cells = [name]
        for key, scale, fmt in (
            ("knn", 100, "{:.1f}%"),
            ("knn20", 100, "{:.1f}%"),
            ("probe5", 100, "{:.1f}%"),
            ("rankme", 1, "{:.1f}"),
            ("seconds", 1, "{:.0f}"),
        ):
            for who in ("ours", "lightly"):
                values = torch.tensor([scale * r[key] for r in rows[name, who]], dtype=torch.float64)
                cell = fmt.format(values.mean().item())
                if key in ("knn", "knn20", "probe5") and len(values) > 1:
                    cell += f" ± {values.std().item():.1f}"
                cells.append(cell)
        lines.append("| " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    print(table)
    Path(args.out).write_text(table + "\n")


def _lightly_version() -> str:
    from importlib.metadata import version

    return version("lightly")


if __name__ == "__main__":
    main()
