"""Where a ViT row of bench/objectives_table.py collapses: the first steps of the row, under ablations, and the
token statistics of its online encoder afterwards.

    .venv/bin/python bench/collapse_probe.py [--row i-jepa] [--steps 40] [--init timm|ijepa] [--override k=v ...]

Trains the digits row (``objectives_table.METHODS``, at its own epochs and schedule) for ``--steps`` steps, logging
every step, and prints ``train/embed_std``, ``train/rankme`` and ``train/loss`` every 10 steps, then, on 512 digits
through the online encoder of ``last.ckpt``, the share of the patch tokens' energy that is not one constant vector
(after each block and after the last norm), at step 0 and at the last step: 63% at timm's random init for the 2 px
patches of the I-JEPA row; a collapsed encoder gives every token of every image nearly the same vector.

``--init ijepa`` starts the encoder as facebookresearch/ijepa ``src/models/vision_transformer.py`` does instead of
timm's ViT init: fixed 2-D sine-cosine position embedding (``requires_grad=False``), the patch embedding's conv
truncated-normal of std 0.02, and the residual projections divided by sqrt(2·layer) (``fix_init_weight``); the
linear layers are already truncated-normal of std 0.02 in both. docs/evidence.md gives the table these commands
give.
"""

from __future__ import annotations

import argparse
import csv
import shutil
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from objectives_table import METHODS, VIT_EPOCHS, initial_backbone, quickstart  # noqa: E402
from tests.config_utils import compose_train  # noqa: E402

import selfsup.models as models  # noqa: E402
from selfsup.models.token_heads import sincos_2d  # noqa: E402
from selfsup.runtime import checkpoint  # noqa: E402
from selfsup.train import run  # noqa: E402


def ijepa_init(vit: torch.nn.Module) -> torch.nn.Module:
    """I-JEPA's encoder init on a timm ViT, in place (module docstring)."""
    grid = vit.patch_embed.grid_size
    with torch.no_grad():
        torch.nn.init.trunc_normal_(vit.patch_embed.proj.weight, std=0.02, a=-2.0, b=2.0)
        torch.nn.init.zeros_(vit.patch_embed.proj.bias)
        prefix = vit.pos_embed.shape[1] - grid[0] * grid[1]
        vit.pos_embed[:, prefix:] = sincos_2d(vit.pos_embed.shape[-1], *grid)
        vit.pos_embed[:, :prefix] = 0
    vit.pos_embed.requires_grad_(False)
    vit.fix_init_weight()
    return vit


def constant_shares(vit: torch.nn.Module, x: torch.Tensor) -> list[float]:
    """The share of the patch tokens' energy off their mean over images and positions, after each block and after
    the last norm."""

    def share(t: torch.Tensor) -> float:
        t = t[:, vit.num_prefix_tokens :]
        return ((t - t.mean((0, 1), keepdim=True)).pow(2).mean() / t.pow(2).mean()).item()

    with torch.no_grad():
        h = vit.norm_pre(vit._pos_embed(vit.patch_embed(x)))
        shares = []
        for block in vit.blocks:
            h = block(h)
            shares.append(share(h))
        return [*shares, share(vit.norm(h))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--row", default="i-jepa", help="a prefix of a digits-table row name")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--init", choices=("timm", "ijepa"), default="timm")
    parser.add_argument("--override", action="append", default=[], help="a Hydra override on top of the row's")
    parser.add_argument("--run-dir", default=str(ROOT / "runs" / "collapse_probe"))
    args = parser.parse_args()
    name = next((n for n in METHODS if n.startswith(args.row)), None)
    if name is None:
        raise SystemExit(f"--row={args.row}: no row of bench/objectives_table.py starts so")
    run_dir = Path(args.run_dir)
    shutil.rmtree(run_dir, ignore_errors=True)  # a probe starts from step 0
    overrides = [*quickstart(VIT_EPOCHS), *METHODS[name][1], f"trainer.max_steps={args.steps}", *args.override]
    cfg = compose_train([*overrides, "trainer.log_every_n_steps=1"], run_dir)
    if args.init == "ijepa":
        build_backbone = models.build_backbone
        models.build_backbone = lambda *a, **k: ijepa_init(build_backbone(*a, **k))  # what the config instantiates
    run(cfg)
    rows = list(csv.DictReader(open(next(run_dir.rglob("metrics.csv")))))
    print(f"{name}, {args.steps} steps, init {args.init}, overrides {args.override or 'none'}")
    print("| step | embed_std | rankme | loss |\n|---|---|---|---|")
    by_step: dict[int, dict] = {}
    for r in rows:
        logged = {k: float(v) for k, v in r.items() if v and k.startswith("train/")}
        by_step.setdefault(int(r["step"]), {}).update(logged)
    for step in sorted(by_step):
        m = by_step[step]
        if "train/embed_std" in m:
            loss = m.get("train/loss", by_step.get(step + 1, {}).get("train/loss", float("nan")))
            print(f"| {step} | {m['train/embed_std']:.3f} | {m['train/rankme']:.2f} | {loss:.3f} |")
    start, datamodule = initial_backbone(overrides, run_dir.with_name(run_dir.name + "_init"))
    train_ds, _ = datamodule.eval_datasets()
    x = torch.stack([train_ds[i][0] for i in range(min(512, len(train_ds)))])
    print("non-constant share of the token energy after each block, then the last norm:")
    for when, vit in (
        ("step 0", start.eval()),
        (f"step {args.steps}", checkpoint.backbone_from(checkpoint.load(run_dir))),
    ):
        print(f"- {when}:", ", ".join(f"{s:.1%}" for s in constant_shares(vit, x)))


if __name__ == "__main__":
    main()
