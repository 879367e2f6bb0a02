"""Training batches of raw images that are augmented on the training device (``selfsup.data.gpu_views``).

The loader yields ``{"key" (B, 3) = (epoch, index, chunk), "label" (B,), "index" (B,)}`` plus ``"image"`` — uint8
(B, 3, H, W), or a list of (3, H_i, W_i) when sizes differ — unless the split lives in memory: then the whole split
is copied once to the training device and rows are gathered there, so a step moves only keys (no workers, no
per-sample Python). After Lightning moves the batch, :class:`DeviceViews` turns it into the training batch
``{"views", "params", "label", "index"}`` (docs/api.md, "Batch format"). Sample keys come from the same
``GlobalBatchSampler``, so data order, resume and DDP sharding are those of the CPU path; ImageFolder decoding stays
in CPU workers.
"""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

from selfsup import checks
from selfsup.data.datasets import GlobalBatchSampler, ResumableLoader
from selfsup.data.gpu_views import GpuMultiViewTransform, augment_batch
from selfsup.data.sources import Subset, TensorImages
from selfsup.data.views import MultiViewTransform


def in_memory(source) -> torch.Tensor | None:
    """The split as one uint8 tensor (N, 3, H, W) when it is held in memory (TensorImages or a Subset of one)."""
    if isinstance(source, TensorImages):
        return source.images
    if isinstance(source, Subset):
        base = in_memory(source.source)
        return None if base is None else base[torch.as_tensor(source.indices, dtype=torch.long)]
    return None


class RawImages(Dataset):
    """``dataset[(epoch, index, chunk)]`` → a raw sample; ``__getitems__`` returns a whole batch at once.

    Args:
        source: a split (``selfsup.data.sources``).
        resident: the batch omits ``image`` (the images are gathered on the device by :class:`DeviceViews`).
    """

    def __init__(self, source, resident: bool):
        self.source, self.resident = source, resident

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, key: tuple[int, int, int]) -> dict:
        sample = {"key": torch.tensor(key, dtype=torch.long), "label": self.source.labels[key[1]], "index": key[1]}
        if not self.resident:
            sample["image"] = self.source.image(key[1])
        return sample

    def __getitems__(self, keys: list[tuple[int, int, int]]):
        if not self.resident:
            return [self[k] for k in keys]  # decoded one by one (in workers for ImageFolder)
        key = torch.tensor(keys, dtype=torch.long).view(-1, 3)  # (B, 3)
        return {"key": key, "label": self.source.labels[key[:, 1]], "index": key[:, 1]}


def collate_raw(samples) -> dict:
    """A batch from ``__getitems__``: passed through when already batched, else stacked (images: stacked when
    all sizes agree, else kept as a list)."""
    if isinstance(samples, dict):
        return samples
    out = {
        "key": torch.stack([s["key"] for s in samples]),
        "label": torch.as_tensor([int(s["label"]) for s in samples], dtype=torch.long),
        "index": torch.as_tensor([int(s["index"]) for s in samples], dtype=torch.long),
    }
    if "image" in samples[0]:
        images = [s["image"] for s in samples]
        same = len({tuple(t.shape) for t in images}) == 1
        out["image"] = torch.stack(images) if same else images
    return out


class DeviceViews:
    """The GPU-view training path of one datamodule: builds the raw loader and augments transferred batches.

    Args:
        source: the training split.
        views: the views config (a CPU :class:`MultiViewTransform` is converted, same settings).
        seed: the run's seed.
        resident: keep the split on the training device (default: whenever it is held in memory).
    """

    def __init__(self, source, views: MultiViewTransform, seed: int, resident: bool | None = None):
        self.source, self.seed = source, seed
        self.views = GpuMultiViewTransform.from_transform(views)
        self.images = in_memory(source)
        if resident and self.images is None:
            raise ValueError("data.resident=true: the training split is not held in memory (an ImageFolder)")
        self.resident = self.images is not None if resident is None else resident
        self._device_images: torch.Tensor | None = None

    def loader(self, batch_sampler: GlobalBatchSampler, position, num_workers: int) -> ResumableLoader:
        """The raw-image loader (same resume state as the CPU path's), batches by :func:`collate_raw`."""
        workers = 0 if self.resident else num_workers  # nothing to decode: no worker processes
        pin = torch.cuda.is_available() and not self.resident
        return ResumableLoader(
            RawImages(self.source, self.resident), batch_sampler, position, workers, pin, collate_fn=collate_raw
        )

    def device_images(self, device: torch.device) -> torch.Tensor:
        """The split on ``device`` (copied once)."""
        if self._device_images is None or self._device_images.device != device:
            self._device_images = self.images.to(device, non_blocking=False)
        return self._device_images

    def __call__(self, batch: dict) -> dict:
        """Raw batch (already on the training device) → the training batch (docs/api.md)."""
        images = self.device_images(batch["key"].device) if self.resident else None
        return augment_batch(batch, self.views, self.seed, images)


VIEWS_ON_DEVICE = ("auto", "true", "false")


def use_device_views(views: MultiViewTransform, trainer, setting: str = "auto") -> bool:
    """Whether training batches are augmented on the training device.

    Args:
        views: the views config; a :class:`GpuMultiViewTransform` states its own ``on_device``.
        trainer: the Lightning trainer (None: not attached).
        setting: ``"auto"`` — GPU views as configured, and CPU views too when the trainer runs on CUDA (they are
            converted with the same settings and the batched ``counter`` sampler: same distributions, other
            draws); ``"true"`` / ``"false"`` force either path.
    """
    setting = checks.one_of("data.views_on_device", str(setting).lower(), VIEWS_ON_DEVICE)
    if setting != "auto":
        return setting == "true"
    if isinstance(views, GpuMultiViewTransform):
        return views.on_device
    return trainer is not None and trainer.strategy.root_device.type == "cuda"
