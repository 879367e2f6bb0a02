"""Frozen feature extraction shared by validation tables, ``selfsup-eval`` and the quickstart report."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset


@torch.no_grad()
def extract(
    encoder: nn.Module,
    dataset: Dataset,
    batch_size: int = 256,
    num_workers: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = False,
    description: str = "features",
) -> tuple[torch.Tensor, torch.Tensor]:
    """(features (N, F) float32 on the CPU, labels (N,)) of ``encoder`` in eval mode over ``(image, label)`` items."""
    was_training = encoder.training
    encoder.eval().to(device)
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, shuffle=False)
    feats, labels = [], []
    batches = loader
    if progress:
        from rich.progress import track

        batches = track(loader, description=description, total=len(loader))
    for x, y in batches:
        feats.append(encoder(x.to(device, non_blocking=True)).float().flatten(1).cpu())
        labels.append(torch.as_tensor(y))
    encoder.train(was_training)
    return torch.cat(feats), torch.cat(labels)
