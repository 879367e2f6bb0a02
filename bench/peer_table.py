"""Ours vs lightly's implementation of the same method, side by side: on digits at the quickstart budget, or on
CIFAR-10 at the budget of bench/cifar_table.py.

    .venv/bin/pip install -e '.[bench]'          # lightly: a benchmark dependency only
    .venv/bin/python bench/peer_table.py [--data digits|cifar10] [--epochs N] [--seeds 0,1,2] [--only simsiam,byol]
    .venv/bin/python bench/peer_table.py --data cifar10 --cached   # the table of what is trained so far

Both columns of a row train the same backbone from the same initial weights (per seed) on the same batches of the
same views, with the same optimiser, schedule and gradient clipping, and are scored the same way. What differs is
the method's implementation:

- ours: ``selfsup-train`` with the parts of ``recipes/cifar10/<method>.yaml`` — its heads' structure, loss, target
  and memory;
- lightly (``lightly`` from PyPI): its projection/prediction heads (``lightly.models.modules.heads``) at our
  recipe's widths, its loss (``lightly.loss``) at our recipe's temperatures, its memory banks and its momentum update
  (``lightly.models.utils.update_momentum`` with ``lightly.utils.scheduler.cosine_schedule``), in a plain PyTorch
  loop written after lightly's own examples (``examples/pytorch/<method>.py``) and, for DINO, its benchmark
  (``benchmarks/imagenet/resnet50/dino.py``: the teacher head is its own initialisation, not a copy).

Settings (``--data``):

- ``digits`` (``bench/PEERS.md``): SimCLR, BYOL, SimSiam, Barlow Twins, VICReg on ``recipes=quickstart`` (the
  3-block CNN, 16 px, batch 256, AdamW 2e-3, heads 512 → 64), ``--epochs`` 20; scored as ``bench/objectives_table.py``
  (kNN k=200 and 20, a probe on 5 labels a class, RankMe; the 360 held-out images).
- ``cifar10`` (``bench/PEERS_CIFAR.md``): the nine methods lightly ships and we do (those five, MoCo v2, NNCLR, DINO,
  SwAV) as rows of ``bench/cifar_table.py`` (the recipe at its budget: small CNN, 10,000 training images, batch 256,
  AdamW 2e-3, ``--epochs`` 5; multi-crop for DINO and SwAV), scored as there (full test split against the full
  training split: kNN, linear probe, 5-way 5-shot, MAP@R, RankMe).

Each side of each run's scores are recorded in ``bench/records/peer_table/<data>/<method>_seed<k>_{ours,lightly}.json``
(committed: a later session, or a clone, adds seeds to what is recorded instead of training them all again) under a
hash of the composed config: a rerun trains only what changed; our side's run directory
(``<run root>/<data>/<method>_seed<k>``) resumes a run cut short, or, once the config changed, starts again. Prints a
markdown table (and writes it to ``--out``) with both numbers, mean ± std over seeds, and the wall time of each run. A
row of the table already written that has more seeds than the records hold (measured before the records were
committed) is kept, its seed count marked ``*``.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import os
import shutil
import sys
import time
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
RECORDS = ROOT / "bench" / "records" / "peer_table"
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import cifar_table  # noqa: E402
from objectives_table import METHODS, config_hash, quickstart, score, timed, trained_backbone  # noqa: E402
from tests.config_utils import compose_train  # noqa: E402

from selfsup.evaluate.features import extract  # noqa: E402
from selfsup.train import build  # noqa: E402

try:
    from lightly import loss as lightly_loss
    from lightly.models.modules import NNMemoryBankModule, heads
    from lightly.models.utils import update_momentum
    from lightly.utils.scheduler import cosine_schedule
except ImportError as err:  # pragma: no cover - a benchmark dependency
    raise SystemExit(f"bench/peer_table.py needs lightly: .venv/bin/pip install -e '.[bench]' ({err})") from None


def frozen_copy(module: nn.Module) -> nn.Module:
    """lightly's momentum copies: ``copy.deepcopy`` then ``deactivate_requires_grad``."""
    return copy.deepcopy(module).requires_grad_(False)


class Siamese(nn.Module):
    """Two views through backbone → projection head [→ prediction head], against a target branch: the online
    branch itself (SimCLR, Barlow Twins, VICReg), its detached copy (SimSiam) or a momentum copy (BYOL)."""

    def __init__(self, backbone, projection, loss, prediction=None, momentum: float | None = None, stopgrad=False):
        super().__init__()
        self.backbone, self.projection, self.prediction, self.criterion = backbone, projection, prediction, loss
        self.momentum, self.stopgrad = momentum, stopgrad
        if momentum is not None:  # lightly's examples/pytorch/byol.py: copies with requires_grad off
            self.backbone_momentum, self.projection_momentum = frozen_copy(backbone), frozen_copy(projection)

    def forward(self, views: list[torch.Tensor], epoch: int) -> torch.Tensor:
        x0, x1 = views[:2]
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

    def after_backward(self, epoch: int) -> None:
        pass

    def after_step(self, step: int, total: int) -> None:
        if self.momentum is not None:
            m = cosine_schedule(step, total, self.momentum, 1.0)
            update_momentum(self.backbone, self.backbone_momentum, m=m)
            update_momentum(self.projection, self.projection_momentum, m=m)


class MoCo(Siamese):
    """lightly's examples/pytorch/moco.py: queries of the first view against the momentum keys of the second,
    ``NTXentLoss`` with a memory bank of past keys (``memory_bank_size=(queue, dim)``)."""

    def forward(self, views: list[torch.Tensor], epoch: int) -> torch.Tensor:
        query = self.projection(self.backbone(views[0]))
        with torch.no_grad():
            key = self.projection_momentum(self.backbone_momentum(views[1]))
        return self.criterion(query, key)


class NNCLR(Siamese):
    """lightly's examples/pytorch/nnclr.py: each view's projection replaced by its nearest neighbour in
    ``NNMemoryBankModule`` (updated with the second view's), against the other view's prediction."""

    def __init__(self, backbone, projection, prediction, loss, bank):
        super().__init__(backbone, projection, loss, prediction)
        self.bank = bank

    def forward(self, views: list[torch.Tensor], epoch: int) -> torch.Tensor:
        (z0, p0), (z1, p1) = (self._zp(x) for x in views[:2])
        z0, z1 = self.bank(z0, update=False), self.bank(z1, update=True)
        return 0.5 * (self.criterion(z0, p1) + self.criterion(z1, p0))

    def _zp(self, x):
        z = self.projection(self.backbone(x))
        return z.detach(), self.prediction(z)


class DINO(nn.Module):
    """lightly's benchmarks/imagenet/resnet50/dino.py: a teacher (momentum copies of the student's backbone and
    ``DINOProjectionHead``, so it starts with the student's weights, as there and in DINO's main_dino.py) on the
    global views, the student on every view, ``DINOLoss``; the student head's last layer frozen for its first epochs
    (``cancel_last_layer_gradients``); each gradient clipped as our recipe's."""

    def __init__(self, backbone, make_head, loss, momentum: float, clip: float | None, frozen_epochs: int):
        super().__init__()
        self.backbone, self.projection, self.criterion = backbone, make_head(freeze_last_layer=frozen_epochs), loss
        self.backbone_momentum, self.projection_momentum = frozen_copy(backbone), make_head().requires_grad_(False)
        # the head's weight norm cannot be deep-copied: its weights are loaded instead, as main_dino.py does
        self.projection_momentum.load_state_dict(self.projection.state_dict())
        self.momentum, self.clip = momentum, clip

    def forward(self, views: list[torch.Tensor], epoch: int) -> torch.Tensor:
        with torch.no_grad():
            teacher = [self.projection_momentum(self.backbone_momentum(x)) for x in views[:2]]
        student = [self.projection(self.backbone(x)) for x in views]
        return self.criterion(teacher, student, epoch=epoch)

    def after_backward(self, epoch: int) -> None:
        self.projection.cancel_last_layer_gradients(current_epoch=epoch)
        if self.clip is not None:
            for p in self.parameters():
                if p.grad is not None:
                    torch.nn.utils.clip_grad_norm_(p, self.clip)

    after_step = Siamese.after_step


class SwaV(nn.Module):
    """lightly's examples/pytorch/swav.py: normalised projections scored by ``SwaVPrototypes`` (normalised every
    step, frozen for their first epochs), ``SwaVLoss`` of the high- against the low-resolution crops."""

    def __init__(self, backbone, projection, prototypes, loss):
        super().__init__()
        self.backbone, self.projection, self.prototypes, self.criterion = backbone, projection, prototypes, loss

    def forward(self, views: list[torch.Tensor], epoch: int) -> torch.Tensor:
        self.prototypes.normalize()
        scores = [self.prototypes(F.normalize(self.projection(self.backbone(x)), dim=1), epoch) for x in views]
        return self.criterion(scores[:2], scores[2:])

    def after_backward(self, epoch: int) -> None:
        pass

    def after_step(self, step: int, total: int) -> None:
        pass


def widths(cfg, part: str = "projector") -> tuple[int, int]:
    return int(cfg[part].hidden_dim), int(cfg[part].out_dim)


def lightly_simclr(backbone, dim, cfg):
    head = heads.SimCLRProjectionHead(dim, *widths(cfg))
    return Siamese(backbone, head, lightly_loss.NTXentLoss(cfg.objective.temperature))


def lightly_byol(backbone, dim, cfg):
    return Siamese(
        backbone,
        heads.BYOLProjectionHead(dim, *widths(cfg)),
        lightly_loss.NegativeCosineSimilarity(),
        heads.BYOLPredictionHead(cfg.projector.out_dim, *widths(cfg, "predictor")),
        momentum=cfg.target.base,
    )


def lightly_simsiam(backbone, dim, cfg):
    return Siamese(
        backbone,
        heads.SimSiamProjectionHead(dim, *widths(cfg)),
        lightly_loss.NegativeCosineSimilarity(),
        heads.SimSiamPredictionHead(cfg.projector.out_dim, *widths(cfg, "predictor")),
        stopgrad=True,
    )


def lightly_barlow_twins(backbone, dim, cfg):
    return Siamese(backbone, heads.BarlowTwinsProjectionHead(dim, *widths(cfg)), lightly_loss.BarlowTwinsLoss())


def lightly_vicreg(backbone, dim, cfg):
    return Siamese(backbone, heads.VICRegProjectionHead(dim, *widths(cfg)), lightly_loss.VICRegLoss())


def lightly_mocov2(backbone, dim, cfg):
    hidden, out = widths(cfg)
    head = heads.MoCoProjectionHead(dim, hidden, out, batch_norm=bool(cfg.projector.batch_norm))
    loss = lightly_loss.NTXentLoss(cfg.objective.temperature, memory_bank_size=(int(cfg.memory.size), out))
    return MoCo(backbone, head, loss, momentum=cfg.target.base)


def lightly_nnclr(backbone, dim, cfg):
    hidden, out = widths(cfg)
    return NNCLR(
        backbone,
        heads.NNCLRProjectionHead(dim, hidden, out),
        heads.NNCLRPredictionHead(out, *widths(cfg, "predictor")),
        lightly_loss.NTXentLoss(cfg.objective.temperature),
        NNMemoryBankModule(size=(int(cfg.memory.size), out)),
    )


def lightly_dino(backbone, dim, cfg):
    p, teacher_temp = cfg.projector, cfg.callbacks.teacher_temp

    def make_head(**kw):
        return heads.DINOProjectionHead(
            dim, p.hidden_dim, p.bottleneck_dim, p.out_dim, p.batch_norm, norm_last_layer=p.norm_last_layer, **kw
        )

    loss = lightly_loss.DINOLoss(
        output_dim=p.out_dim,
        warmup_teacher_temp=teacher_temp.start,
        teacher_temp=teacher_temp.end,
        warmup_teacher_temp_epochs=teacher_temp.warmup_epochs,
        student_temp=cfg.objective.student_temp,
        center_momentum=cfg.objective.center_momentum,
    )
    frozen = int(cfg.callbacks.freeze_last_layer.epochs)
    return DINO(backbone, make_head, loss, cfg.target.base, cfg.callbacks.clip.max_norm, frozen)


def lightly_swav(backbone, dim, cfg):
    hidden, out = widths(cfg)
    frozen = int(cfg.callbacks.freeze_prototypes.epochs)
    prototypes = heads.SwaVPrototypes(out, int(cfg.memory.num_prototypes), n_steps_frozen_prototypes=frozen)
    loss = lightly_loss.SwaVLoss(cfg.objective.temperature, cfg.objective.sinkhorn_iters, cfg.objective.epsilon)
    return SwaV(backbone, heads.SwaVProjectionHead(dim, hidden, out), prototypes, loss)


WHO = ("ours", "lightly")  # the two sides of a row
LIGHTLY = {
    "simclr": lightly_simclr,
    "byol": lightly_byol,
    "simsiam": lightly_simsiam,
    "barlow_twins": lightly_barlow_twins,
    "vicreg": lightly_vicreg,
    "mocov2": lightly_mocov2,
    "nnclr": lightly_nnclr,
    "dino": lightly_dino,
    "swav": lightly_swav,
}
# digits: our overrides on top of recipes=quickstart — the rows of bench/objectives_table.py (the heads' structure of
# recipes/cifar10/<method>.yaml at the quickstart widths); Barlow Twins at the default λ, as lightly's loss has it
DIGITS = {
    "simclr": METHODS["simclr (info_nce)"][1],
    "byol": METHODS["byol (negative_cosine + EMA)"][1],
    "simsiam": METHODS["simsiam (negative_cosine)"][1],
    "barlow_twins": [o for o in METHODS["barlow_twins"][1] if not o.startswith("objective.lambd=")],
    "vicreg": METHODS["vicreg"][1],
}


def lightly_model(cfg, name: str):
    """(lightly's model of ``name`` around the backbone ``selfsup-train`` starts ``cfg`` from, our datamodule, our
    module): the same seed and build order, hence the same initial backbone weights."""
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule, module, _ = build(cfg)
    return LIGHTLY[name](module.backbone, module.backbone.num_features, cfg), datamodule, module


def train_lightly(cfg, name: str) -> nn.Module:
    """lightly's model on our batches: seed, backbone init, loader, optimiser and schedule as ``selfsup-train``."""
    model, datamodule, module = lightly_model(cfg, name)
    plan = datamodule.batch_plan()
    loader = datamodule.train_dataloader()
    # the momentum branches are frozen copies: param_groups leaves out what does not require a gradient
    opt, sched = module.optim.build(model.parameters(), [], plan.global_batch, plan.total_steps, plan.steps_per_epoch)
    step = 0
    for epoch in range(cfg.trainer.max_epochs):
        loader.load_state_dict({"epoch": epoch, "batches_done": 0})  # the epoch's shuffle and augmentation seeds
        for batch in loader:
            loss = model(batch["views"], epoch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            model.after_backward(epoch)
            clip_gradients(model.parameters(), cfg.trainer)
            opt.step()
            sched.step()
            step += 1
            model.after_step(step, plan.total_steps)
    if not torch.isfinite(loss):
        raise RuntimeError(f"lightly's model ended with loss {loss.item()}")
    return model.backbone


def clip_gradients(params, trainer_cfg) -> None:
    """``trainer.gradient_clip_val`` (and ``gradient_clip_algorithm``, Lightning's default "norm") as Lightning applies
    it to our run, on lightly's parameters."""
    value = trainer_cfg.get("gradient_clip_val")
    if not value:
        return
    if trainer_cfg.get("gradient_clip_algorithm") == "value":
        torch.nn.utils.clip_grad_value_(params, value)
    else:
        torch.nn.utils.clip_grad_norm_(params, value)


def setting(name: str, data: str, epochs: int, seed: int, run_dir: Path) -> list[str]:
    """Our overrides of one run: the digits quickstart with the method's heads, or the method's CIFAR-10 recipe at
    the budget of bench/cifar_table.py."""
    if data == "digits":
        return [*quickstart(epochs), *DIGITS[name], f"seed={seed}", "resume=auto"]
    return [*cifar_table.budget(name, epochs, run_dir.parent), f"seed={seed}", "resume=auto"]


def run_once(name: str, cfg, who: str, path: Path, score_backbone, train: bool = True) -> dict | None:
    """One side of one row, trained and scored; read back from the record ``path`` while the config is unchanged
    (the hash of ``cfg`` as composed: training gets a copy, since a run completes its config in place). None when it
    is not recorded and ``train`` is false."""
    key = config_hash(cfg) + ":" + who
    try:
        saved = json.loads(path.read_text()) if path.is_file() else {}
    except json.JSONDecodeError as e:
        raise SystemExit(f"record={path}: not JSON ({e}); delete it to train that side again") from None
    if saved.get("config") == key:
        return saved
    if not train:
        return None
    run_dir = Path(cfg.run_dir)
    if who == "ours" and saved and run_dir.is_dir():  # scored under another config: start again, not resume that
        for item in run_dir.iterdir():
            shutil.rmtree(item) if item.is_dir() else item.unlink()
    cfg = copy.deepcopy(cfg)
    if who == "ours":  # a run cut short resumes its run dir: its seconds are every call's, as in objectives_table
        backbone = timed(run_dir / "train_seconds", lambda: trained_backbone(cfg))
        seconds = float((run_dir / "train_seconds").read_text())
    else:  # lightly's side has no run dir to resume: a call cut short is trained again from scratch
        start = time.time()
        backbone = train_lightly(cfg, name)
        seconds = time.time() - start
    start = time.time()  # scoring counts on both sides, as it always has
    scores = score_backbone(backbone)
    result = scores | {"seconds": seconds + time.time() - start, "config": key}
    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_name(f".{path.name}.{os.getpid()}.part")  # two runs at once never share a part file
    part.write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
    part.replace(path)  # a record is whole or absent
    return result


def scorer(data: str, cfg, cifar_images: dict):
    """Scores of a backbone: digits as bench/objectives_table.py (the run's own splits), CIFAR-10 as
    bench/cifar_table.py (the full splits, read once into ``cifar_images``)."""
    if data == "digits":
        train_ds, test_ds = build(cfg)[0].eval_datasets()
        return lambda b: score(*extract(b, train_ds), *extract(b, test_ds))

    def score_cifar(backbone):  # the 60,000 images are read on the first row to score, not for cached rows
        if not cifar_images:
            cifar_images["train"], cifar_images["test"] = cifar_table.eval_images()
        return cifar_table.score_encoder(backbone, cifar_images["train"], cifar_images["test"])

    return score_cifar


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", choices=("digits", "cifar10"), default="digits")
    parser.add_argument("--epochs", type=int, default=None, help="default: 20 on digits, 5 on CIFAR-10")
    parser.add_argument("--only", default="", help="comma-separated method names")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (the table shows mean ± std)")
    parser.add_argument("--out", default=None, help="default: bench/PEERS.md (digits), bench/PEERS_CIFAR.md")
    parser.add_argument("--run-root", default=str(ROOT / "runs" / "peer_table"))
    parser.add_argument("--records", default=str(RECORDS), help="where each side's scores are recorded")
    parser.add_argument(
        "--cached",
        action="store_true",
        help="train nothing: the table of the cached runs (a method-seed pair lacking "
        "a side is left out, and the table says how many seeds each row has)",
    )
    args = parser.parse_args()
    epochs = args.epochs or (20 if args.data == "digits" else 5)
    out = Path(args.out or ROOT / "bench" / ("PEERS.md" if args.data == "digits" else "PEERS_CIFAR.md"))
    names = [m for m in (DIGITS if args.data == "digits" else LIGHTLY) if not args.only or m in args.only.split(",")]
    seeds = [int(x) for x in args.seeds.split(",")]
    run_root, records = Path(args.run_root) / args.data, Path(args.records) / args.data
    rows, cifar_images = {}, {}
    for name in names:
        for seed in seeds:
            run_dir = run_root / f"{name}_seed{seed}"
            cfg = compose_train(setting(name, args.data, epochs, seed, run_dir), run_dir)
            score_backbone = scorer(args.data, cfg, cifar_images)
            pair = {
                w: run_once(name, cfg, w, records / f"{name}_seed{seed}_{w}.json", score_backbone, not args.cached)
                for w in WHO
            }
            if None in pair.values():
                print(name, seed, "not recorded: left out", flush=True)
                continue
            for who, result in pair.items():
                rows.setdefault((name, who), []).append(result)
                print(name, who, seed, result, flush=True)
    write_table(out, rows, names, args.data, epochs, args.seeds)


def earlier_rows(out: Path) -> dict[str, list[str]]:
    """The rows of the table already at ``out``: method → its cells, the seed count without its ``*``."""
    if not out.is_file():
        return {}
    rows = {}
    for line in out.read_text().splitlines()[4:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) > 2 and cells[1].rstrip("*").isdigit():
            rows[cells[0]] = [cells[0], cells[1].rstrip("*"), *cells[2:]]
    return rows


def write_table(out: Path, rows: dict, names: list[str], data: str, epochs: int, seeds: str) -> None:
    """The table of the recorded ``rows`` in the order of ``names``; a method whose row at ``out`` has more seeds
    than its records keeps that row, its seed count marked ``*`` (measured before the records were committed)."""
    probe = "probe5" if data == "digits" else "probe"
    scores = [("knn", "kNN"), ("knn20", "kNN k=20"), (probe, "probe")]
    if data == "digits":
        intro = f"Digits (held-out 360 images), {epochs} epochs at the quickstart budget"
    else:
        scores += [("fewshot5", "5-shot"), ("map_at_r", "MAP@R")]
        intro = (
            f"CIFAR-10 (full test split, full training split as bank), {epochs} epochs at bench/cifar_table.py's budget"
        )
    columns = [
        *((k, 100, "{:.1f}%", label) for k, label in scores),
        ("rankme", 1, "{:.1f}", "RankMe"),
        ("seconds", 1, "{:.0f}", "s"),
    ]
    lines = [
        f"{intro}, seeds {seeds} (mean ± std over seeds), 2-core CPU; ours vs lightly {_lightly_version()}; "
        f"written {datetime.date.today().isoformat()} from the records. "
        f"Command: `.venv/bin/python bench/peer_table.py --data {data} --epochs {epochs} --seeds {seeds}`",
        "",
        "| method | seeds | " + " | ".join(f"{label} {who}" for *_, label in columns for who in WHO) + " |",
        "|---|---|" + "---|" * (2 * len(columns)),
    ]
    earlier = earlier_rows(out)
    for name in names:
        count = len(rows.get((name, "ours"), []))
        if name in earlier and int(earlier[name][1]) > count:
            _, seeds_written, *written = earlier[name]
            lines.append("| " + " | ".join([name, f"{seeds_written}*", *written]) + " |")
            continue
        if not count:
            continue
        cells = [name, str(count)]
        for key, scale, fmt, _ in columns:
            for who in WHO:
                values = torch.tensor([scale * r[key] for r in rows[name, who]], dtype=torch.float64)
                cell = fmt.format(values.mean().item())
                if scale == 100 and len(values) > 1:
                    cell += f" ± {values.std().item():.1f}"
                cells.append(cell)
        lines.append("| " + " | ".join(cells) + " |")
    if any(line.split("|")[2].strip().endswith("*") for line in lines[4:]):
        lines[0] += " Seeds marked * were measured before bench/records/ kept each seed's scores: kept as written."
    table = "\n".join(lines)
    print(table)
    out.write_text(table + "\n")


def _lightly_version() -> str:
    from importlib.metadata import version

    return version("lightly")


if __name__ == "__main__":
    main()
