"""Training-step time per image of the masked methods next to SimCLR, with the same ViT, on this machine.

    .venv/bin/python bench/bench_token_step.py [--batch 64] [--steps 5] [--threads 1] [--out bench/TOKENS.md]

Each row builds its CIFAR-10 recipe's parts (``recipes/cifar10/<method>.yaml``) on 32 px inputs with the CIFAR ViT-Ti
(4 px patches: 64 tokens), times ``--steps`` optimiser steps (forward, backward, AdamW, the EMA update where there is
one) after one warm-up step on random images, and reports milliseconds per image and the tokens the online encoder
sees. MAE's encoder sees the 25% of the tokens it keeps — what makes it cheaper than a two-view method — plus a light
decoder over all 64. Prints a markdown table (and writes it to ``--out``).
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from datetime import date
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.config_utils import compose_train  # noqa: E402

from selfsup.data.datasets import MaskDraw  # noqa: E402
from selfsup.train.build import build_module, views_and_objective  # noqa: E402
from selfsup.train.label_free import LabelFree  # noqa: E402

METHODS = ("simclr", "mae", "ijepa", "data2vec", "ibot")
VIT = ["backbone=vit_tiny_cifar", "online_probe=false"]


def batch_of(cfg, views, masking, batch: int) -> dict:
    """Random images at each view's size, the recipe's masks drawn for rows 0..B-1."""
    g = torch.Generator().manual_seed(0)
    imgs = [torch.randn(batch, 3, v.size, v.size, generator=g) for v in views.views]
    out = {"views": imgs, "params": [None] * len(imgs), "index": torch.arange(batch), "label": torch.zeros(batch)}
    if masking is not None:
        draw = MaskDraw(masking, cfg.backbone.patch_size)
        rows = [draw([x[i] for x in imgs], 0, 0, i) for i in range(batch)]
        out["masks"] = [{k: torch.stack([r[v][k] for r in rows]) for k in rows[0][v]} for v in range(len(rows[0]))]
    return out


def time_method(method: str, batch: int, steps: int) -> dict:
    overrides = [f"recipes=cifar10/{method}", *VIT, "data.root=unused"]
    cfg = compose_train(overrides, "/tmp/bench_token_step")
    if cfg.backbone.get("cifar_stem"):  # SimCLR's ResNet stem: the ViT has none
        cfg = compose_train([*overrides, "backbone.cifar_stem=false"], "/tmp/bench_token_step")
    views, objective, masking = views_and_objective(cfg)
    torch.manual_seed(0)
    module = build_module(cfg, views, objective, LabelFree.from_config(cfg.get("label_free")), masking=masking)
    module.train()
    opt = torch.optim.AdamW([p for n, p in module.named_parameters() if not n.startswith("target.")], lr=1e-4)
    data = batch_of(cfg, views, masking, batch)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        module.objective.forward_views(module.step_outputs(data)).backward()
        opt.step()
        module.target.step(module.backbone, module.projector, 1, 100)

    step()  # warm-up
    start = time.perf_counter()
    for _ in range(steps):
        step()
    seconds = (time.perf_counter() - start) / steps
    grid = [(v.size // cfg.backbone.patch_size) ** 2 for v in views.views]
    seen = float(sum(grid))
    if masking is not None and masking.apply == "drop":  # the encoder sees the kept patches of the masked views
        for v, masks in enumerate(data["masks"]):
            kept = masks["context"] if "context" in masks else ~masks["mask"]
            seen += kept.sum(1).float().mean().item() - grid[v]
    return {"method": method, "views": len(views.views), "tokens": seen, "ms_per_image": 1000 * seconds / batch}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--only", default=",".join(METHODS))
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = [time_method(m, args.batch, args.steps) for m in args.only.split(",")]
    base = next((r for r in rows if r["method"] == "simclr"), None)
    lines = [
        f"Step time per image, CIFAR ViT-Ti (32 px, 4 px patches, 64 tokens), batch {args.batch}, "
        f"{args.steps} timed steps after one warm-up; {platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}, {date.today()}.",
        "",
        "| method | views | tokens the online encoder sees per image | ms / image | vs SimCLR |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        ratio = f"{r['ms_per_image'] / base['ms_per_image']:.2f}x" if base else "—"
        lines.append(f"| {r['method']} | {r['views']} | {r['tokens']:.0f} | {r['ms_per_image']:.2f} | {ratio} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
