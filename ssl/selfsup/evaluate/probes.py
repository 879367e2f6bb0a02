"""The standard linear-evaluation protocol on augmented images (``eval.protocol=sgd``, ``eval.sgd.augment=true``);
the fast probes on cached features are ``selfsup.metrics.linear_probe`` / ``linear_probe_sgd``."""

from __future__ import annotations

import logging
import time

import torch
from omegaconf import DictConfig
from torch import nn

from selfsup.evaluate.features import device_of

log = logging.getLogger("selfsup.eval")


class _Augmented(torch.utils.data.Dataset):
    """Training images for the SGD protocol: random-resized crop (0.08–1) + horizontal flip, normalised."""

    def __init__(self, eval_ds):
        from torchvision.transforms import v2

        self.source = eval_ds.source
        self.transform = v2.Compose(
            [
                v2.RandomResizedCrop(eval_ds.size, antialias=True),
                v2.RandomHorizontalFlip(),
                v2.ToDtype(torch.float32, scale=True),
                v2.Normalize(eval_ds.mean, eval_ds.std),
            ]
        )

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int):
        return self.transform(self.source.image(i)), self.source.labels[i]


def sgd_probe_augmented(backbone: nn.Module, train_ds, feats: dict, cfg: DictConfig, num_classes: int) -> dict:
    """Standard linear evaluation: frozen backbone (eval mode), BatchNorm without affine + linear head trained by
    SGD with momentum and a cosine schedule on augmented images; scored on the cached centre-crop test features."""
    import torch.nn.functional as F

    opts, device = cfg.eval.sgd, device_of(cfg.eval.device)
    t0 = time.perf_counter()
    torch.manual_seed(cfg.eval.seed)
    width = backbone.num_features
    head = nn.Sequential(nn.BatchNorm1d(width, affine=False), nn.Linear(width, num_classes))
    head.to(device)
    backbone.eval().to(device)
    loader = torch.utils.data.DataLoader(
        _Augmented(train_ds),
        batch_size=opts.batch_size,
        shuffle=True,
        num_workers=cfg.eval.num_workers,
        drop_last=len(train_ds) > opts.batch_size,
    )
    opt = torch.optim.SGD(
        head.parameters(), lr=opts.lr * opts.batch_size / 256, momentum=opts.momentum, weight_decay=opts.weight_decay
    )
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=opts.epochs * len(loader))
    for epoch in range(opts.epochs):
        for x, y in loader:
            with torch.no_grad():
                f = backbone(x.to(device)).flatten(1)
            loss = F.cross_entropy(head(f), y.to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        log.info("sgd probe epoch %d/%d loss %.4f", epoch + 1, opts.epochs, loss.item())
    head.eval()
    backbone.cpu()
    with torch.no_grad():
        pred = head(feats["test"]["backbone"].to(device)).argmax(1).cpu()
    head.cpu()
    return {"top1": float((pred == feats["test"]["labels"]).double().mean()), "seconds": time.perf_counter() - t0}
