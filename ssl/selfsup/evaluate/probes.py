"""The standard linear-evaluation protocol on augmented images (``eval.protocol=sgd``, ``eval.sgd.augment=true``);
the fast probes on cached features are ``selfsup.metrics.linear_probe`` / ``linear_probe_sgd``, and the SGD loop both
SGD probes run is ``selfsup.metrics.train_head_sgd``."""

from __future__ import annotations

import logging
import time

import torch
from omegaconf import DictConfig
from torch import nn

from selfsup.devices import device_of
from selfsup.metrics import train_head_sgd

log = logging.getLogger(__name__)


class AugmentedImages(torch.utils.data.Dataset):
    """Training images for the SGD protocol and fine-tuning: random-resized crop (area ``scale``, default 0.08–1) +
    horizontal flip, normalised."""

    def __init__(self, eval_ds, scale: tuple[float, float] = (0.08, 1.0)):
        from torchvision.transforms import v2

        self.source = eval_ds.source
        self.transform = v2.Compose(
            [
                v2.RandomResizedCrop(eval_ds.size, scale=tuple(scale), antialias=True),
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
    :func:`selfsup.metrics.train_head_sgd` on augmented images, re-encoded every epoch; scored on the cached
    centre-crop test features."""
    opts, device = cfg.eval.sgd, device_of(cfg.eval.device, "eval.device")
    t0 = time.perf_counter()
    torch.manual_seed(cfg.eval.seed)
    width = backbone.num_features
    head = nn.Sequential(nn.BatchNorm1d(width, affine=False), nn.Linear(width, num_classes))
    head.to(device)
    backbone.eval().to(device)
    loader = torch.utils.data.DataLoader(
        AugmentedImages(train_ds),
        batch_size=opts.batch_size,
        shuffle=True,
        num_workers=cfg.eval.num_workers,
        drop_last=len(train_ds) > opts.batch_size,
    )

    def batches():  # one epoch of augmented images through the frozen backbone
        for x, y in loader:
            with torch.no_grad():
                f = backbone(x.to(device)).flatten(1)
            yield f, y.to(device)

    def on_epoch(epoch: int, loss: float) -> None:
        log.info("sgd probe epoch %d/%d loss %.4f", epoch + 1, opts.epochs, loss)

    train_head_sgd(
        head, batches, opts.epochs, len(loader), opts.batch_size, opts.lr, opts.momentum, opts.weight_decay, on_epoch
    )
    head.eval()
    backbone.cpu()
    with torch.no_grad():
        pred = head(feats["test"]["backbone"].to(device)).argmax(1).cpu()
    head.cpu()
    return {"top1": float((pred == feats["test"]["labels"]).double().mean()), "seconds": time.perf_counter() - t0}
