"""End-to-end fine-tuning: the whole encoder trained with a linear head on the labelled training split, scored on the
held-out split (``eval.protocols=[...,finetune]``, docs/evaluation.md).

The recipe is MAE's (He et al. 2021; facebookresearch/mae ``main_finetune.py``, ``util/lr_decay.py``,
``util/lr_sched.py``), at the budget of ``eval.finetune``:

- AdamW (β 0.9, 0.999), ``lr = blr × batch / 256``; per iteration a linear warm-up over ``warmup_epochs`` then a
  half-cycle cosine to ``min_lr`` (``adjust_learning_rate``, called with the fractional epoch);
- layer-wise LR decay for ViTs (``param_groups_lrd``): parameter ``n`` of layer ``get_layer_id_for_vit(n)`` — 0 for
  ``cls_token``, ``pos_embed`` and ``patch_embed``, ``i + 1`` for ``blocks.i``, ``depth + 1`` for the rest and the
  head — trains at ``lr × layer_decay^(depth + 1 − layer)``; other encoders train every layer at ``lr``;
- weight decay on matrices only (1-D parameters and the encoder's ``no_weight_decay()`` names are exempt);
- cross-entropy with label smoothing (timm's ``LabelSmoothingCrossEntropy``: the same as ``F.cross_entropy``'s
  ``label_smoothing``); the head's weight drawn from a truncated normal of std 2e-5, its bias 0;
- training images: random-resized crop (0.08–1) and flip, normalised. MAE's RandAugment, random erasing, mixup /
  cutmix and drop path are left out at this budget.
"""

from __future__ import annotations

import copy
import logging
import math
import time

import torch
import torch.nn.functional as F
from torch import nn

from selfsup import checks

log = logging.getLogger(__name__)


def layer_id(name: str, num_layers: int) -> int:
    """MAE's ``get_layer_id_for_vit`` (after BEiT): the layer a ViT parameter belongs to, 0 … ``num_layers``."""
    if name in ("cls_token", "pos_embed", "reg_token") or name.startswith("patch_embed"):
        return 0
    if name.startswith("blocks."):
        return int(name.split(".")[1]) + 1
    return num_layers


def param_groups(encoder: nn.Module, head: nn.Module, weight_decay: float, layer_decay: float) -> list[dict]:
    """AdamW groups with an ``lr_scale`` each (MAE ``param_groups_lrd``); a ViT's layers decay by ``layer_decay``
    from the head down, any other encoder keeps scale 1."""
    blocks = getattr(encoder, "blocks", None)
    num_layers = len(blocks) + 1 if isinstance(blocks, nn.Sequential | nn.ModuleList) else None
    exempt = set(encoder.no_weight_decay()) if hasattr(encoder, "no_weight_decay") else set()
    groups: dict[tuple[int, bool], dict] = {}
    named = [(n, p) for n, p in encoder.named_parameters()] + [(f"head.{n}", p) for n, p in head.named_parameters()]
    for name, p in named:
        if not p.requires_grad:
            continue
        decay = p.ndim > 1 and name not in exempt
        layer = layer_id(name, num_layers) if num_layers is not None else 0
        scale = layer_decay ** (num_layers - layer) if num_layers is not None else 1.0
        group = groups.setdefault(
            (layer, decay), {"params": [], "names": [], "lr_scale": scale, "weight_decay": weight_decay * decay}
        )
        group["params"].append(p)
        group["names"].append(name)
    return list(groups.values())


def lr_at(epoch: float, lr: float, min_lr: float, warmup_epochs: float, epochs: float) -> float:
    """MAE ``adjust_learning_rate`` at a fractional epoch: linear warm-up, then a half-cycle cosine to ``min_lr``."""
    if epoch < warmup_epochs:
        return lr * epoch / warmup_epochs
    return min_lr + (lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * (epoch - warmup_epochs) / (epochs - warmup_epochs)))


def check_settings(
    epochs: int,
    warmup_epochs: float,
    batch_size: int,
    blr: float,
    min_lr: float,
    weight_decay: float,
    layer_decay: float,
    smoothing: float,
) -> None:
    """One-line errors for ``eval.finetune`` values that cannot train (checked before any feature is extracted)."""
    checks.integer("eval.finetune.epochs", epochs, minimum=1)
    checks.number("eval.finetune.warmup_epochs", warmup_epochs, minimum=0, below=epochs)
    checks.integer("eval.finetune.batch_size", batch_size, minimum=1)
    checks.number("eval.finetune.blr", blr, above=0)
    checks.number("eval.finetune.min_lr", min_lr, minimum=0)
    checks.number("eval.finetune.weight_decay", weight_decay, minimum=0)
    checks.number("eval.finetune.layer_decay", layer_decay, above=0, maximum=1)
    checks.number("eval.finetune.smoothing", smoothing, minimum=0, below=1)


def finetune(
    encoder: nn.Module,
    train_images,
    test_images,
    num_classes: int,
    epochs: int = 10,
    warmup_epochs: float = 1,
    batch_size: int = 128,
    blr: float = 1e-3,
    min_lr: float = 1e-6,
    weight_decay: float = 0.05,
    layer_decay: float = 0.75,
    smoothing: float = 0.1,
    seed: int = 0,
    device: str | torch.device = "cpu",
    num_workers: int = 0,
) -> dict:
    """Fine-tune a copy of ``encoder`` (``encoder`` itself is left as it was) and return ``{"top1", "train_loss",
    "seconds"}``, top-1 on ``test_images``.

    Args:
        train_images: yields (augmented image, label): the training split under the fine-tuning transform.
        test_images: yields (image, label): the held-out split under the evaluation transform.
    """
    check_settings(epochs, warmup_epochs, batch_size, blr, min_lr, weight_decay, layer_decay, smoothing)
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    encoder = copy.deepcopy(encoder).to(device).train()
    head = nn.Linear(encoder.num_features, num_classes).to(device)
    nn.init.trunc_normal_(head.weight, std=2e-5)
    nn.init.zeros_(head.bias)
    groups = param_groups(encoder, head, weight_decay, layer_decay)
    opt = torch.optim.AdamW(groups, lr=0.0)  # the groups keep their "names" and "lr_scale"
    lr = blr * batch_size / 256
    g = torch.Generator().manual_seed(seed)
    loader = torch.utils.data.DataLoader(
        train_images,
        batch_size=batch_size,
        shuffle=True,
        generator=g,
        num_workers=num_workers,
        drop_last=len(train_images) > batch_size,
    )
    steps = len(loader)
    for epoch in range(epochs):
        total = 0.0
        for i, (x, y) in enumerate(loader):
            step_lr = lr_at(epoch + i / steps, lr, min_lr, warmup_epochs, epochs)
            for group in opt.param_groups:
                group["lr"] = step_lr * group["lr_scale"]
            logits = head(encoder(x.to(device)).flatten(1))
            loss = F.cross_entropy(logits, y.to(device), label_smoothing=smoothing)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"eval.finetune: loss {loss.item()} at epoch {epoch}, step {i}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item()
        log.info("finetune epoch %d/%d loss %.4f", epoch + 1, epochs, total / steps)
    encoder.eval()
    correct = seen = 0
    with torch.no_grad():
        for x, y in torch.utils.data.DataLoader(test_images, batch_size=256, num_workers=num_workers):
            correct += int((head(encoder(x.to(device)).flatten(1)).argmax(1).cpu() == y).sum())
            seen += len(y)
    return {"top1": correct / seen, "train_loss": total / steps, "seconds": time.perf_counter() - t0}
