"""Training and evaluation datasets over image sources, and the resumable global-batch loader.

Training samples are addressed by keys ``(epoch, index, chunk)`` produced by :class:`GlobalBatchSampler`, so the
augmentation of every sample is a pure function of (seed, epoch, index) — whatever the process count, worker count
or restarts — and the global batch at step s is the same slice of the epoch's permutation for any world size.
"""

from __future__ import annotations

import os

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision.transforms.v2 import functional as TF

from selfsup.data.sources import stratified_first
from selfsup.data.views import MultiViewTransform, ViewAugment, generator_for

MASK_TAG = 3  # generator keys (seed, epoch, 3, index, view): apart from the views' tags 0, 1 and AugmentedViews' 2


class MaskDraw:
    """The masks of one training sample (masked methods, docs/tokens.md): mask ``generator`` (``selfsup.data.masks``)
    on the token grid of each of the leading ``generator.views`` views, ``patch_size`` pixels per token, each view's
    drawn from its own generator seeded by (seed, epoch, 3, index, view) — so a sample's masks are the same whatever
    the process or worker count, and a resumed run redraws them exactly."""

    def __init__(self, generator, patch_size: int):
        self.generator, self.patch_size = generator, patch_size

    def __call__(self, views: list[torch.Tensor], seed: int, epoch: int, index: int) -> list[dict]:
        p = self.patch_size
        return [
            self.generator(generator_for(seed, epoch, MASK_TAG, index, v), x.shape[-2] // p, x.shape[-1] // p)
            for v, x in enumerate(views[: self.generator.views])
        ]


class MultiViewDataset(Dataset):
    """``dataset[(epoch, index, chunk)]`` → one sample of the training batch format (docs/api.md), with its
    ``masks`` when a :class:`MaskDraw` is given."""

    def __init__(self, source, transform: MultiViewTransform, seed: int, masks: MaskDraw | None = None):
        self.source, self.transform, self.seed, self.masks = source, transform, seed, masks

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, key: tuple[int, int, int]) -> dict:
        epoch, index, chunk = key
        views, params = self.transform(self.source.image(index), self.seed, epoch, index, chunk)
        sample = {"views": views, "params": params, "label": self.source.labels[index], "index": index}
        if self.masks is not None:
            sample["masks"] = self.masks(views, self.seed, epoch, index)
        return sample


class EvalDataset(Dataset):
    """Deterministic view for features: resize the short side to ``size / crop_fraction``, centre-crop ``size``."""

    def __init__(self, source, size: int, mean, std, crop_fraction: float = 1.0):
        self.source, self.size, self.mean, self.std = source, size, list(mean), list(std)
        self.resize = int(round(size / crop_fraction))

    def __len__(self) -> int:
        return len(self.source)

    def image(self, index: int) -> torch.Tensor:
        """The resized, centre-cropped image, uint8 (C, size, size), before normalisation."""
        x = self.source.image(index)
        if min(x.shape[-2:]) != self.resize:
            x = TF.resize(x, [self.resize], antialias=True)
        return TF.center_crop(x, [self.size, self.size])

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return TF.normalize(x.float().div_(255), self.mean, self.std)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.normalize(self.image(index)), self.source.labels[index]


class AugmentedViews(Dataset):
    """q augmented views of each of the first n images of ``source`` taken class by class (all of them if fewer),
    flattened image-major: item ``i * q + j`` is view j of image ``rows[i]`` — LiDAR's surrogate classes
    (``selfsup.metrics.lidar``). View j of source row r is drawn from its own generator seeded by (seed, tag, r, j)
    (tag 2: LiDAR's; 4: SSLMem's), so the set is the same in every evaluation, process and restart.

    Yields ``(image, label)`` as :class:`EvalDataset` does.
    """

    def __init__(self, source, view: ViewAugment, images: int, views: int, seed: int = 0, tag: int = 2):
        self.source, self.view, self.q, self.seed, self.tag = source, view, views, seed, tag
        self.rows = [int(r) for r in stratified_first(source.labels, min(images, len(source)))]

    def __len__(self) -> int:
        return len(self.rows) * self.q

    def __getitem__(self, item: int) -> tuple[torch.Tensor, torch.Tensor]:
        i, j = divmod(item, self.q)
        row = self.rows[i]
        x, _ = self.view(self.source.image(row), generator_for(self.seed, self.tag, row, j))  # not a training draw
        return x, self.source.labels[row]


class GlobalBatchSampler(Sampler):
    """Batches of keys ``(epoch, index, chunk)`` for one rank.

    The epoch's permutation is drawn from (seed, epoch); global batch s is ``perm[s*G:(s+1)*G]`` with
    G = batch_size * world_size, and rank r takes rows ``[r*B, (r+1)*B)`` of it. The last incomplete global batch
    is dropped, so every rank sees the same number of equal-sized batches. With ``shared_chunks = K`` row p of a
    global batch belongs to chunk ``p // (G // K)`` (rows past K chunks get chunk -1 = their own draw).
    """

    def __init__(
        self,
        num_samples: int,
        batch_size: int,
        world_size: int = 1,
        rank: int = 0,
        seed: int = 0,
        shuffle: bool = True,
        shared_chunks: int | None = None,
    ):
        self.n, self.batch_size, self.world_size, self.rank = num_samples, batch_size, world_size, rank
        self.seed, self.shuffle, self.shared_chunks = seed, shuffle, shared_chunks
        self.global_batch = batch_size * world_size
        self.epoch, self.start = 0, 0  # set by ResumableLoader before each iteration

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n // self.global_batch

    def __iter__(self):
        if self.shuffle:
            perm = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed * 100003 + self.epoch))
        else:
            perm = torch.arange(self.n)
        chunk_size = self.global_batch // self.shared_chunks if self.shared_chunks else 0
        for s in range(self.start, len(self)):
            lo = s * self.global_batch + self.rank * self.batch_size
            rows = range(self.rank * self.batch_size, (self.rank + 1) * self.batch_size)  # positions in global batch
            chunks = [
                s * self.shared_chunks + p // chunk_size if chunk_size and p // chunk_size < self.shared_chunks else -1
                for p in rows
            ]
            yield [(self.epoch, int(i), c) for i, c in zip(perm[lo : lo + self.batch_size].tolist(), chunks)]


class ResumableLoader(DataLoader):
    """A DataLoader over a :class:`GlobalBatchSampler` that Lightning checkpoints mid-epoch.

    ``position()`` returns (epoch, batches of that epoch already trained on), derived from the optimiser step count;
    its value at save time goes into the checkpoint, and the first iterator after a restart yields that epoch from
    that batch on, so a resumed run sees exactly the data order of an uninterrupted one — whether the checkpoint was
    taken mid-epoch, on an epoch's last step or between epochs. Later iterators follow ``position()``.
    """

    def __init__(
        self,
        dataset,
        batch_sampler: GlobalBatchSampler,
        position,
        num_workers: int = 0,
        pin_memory: bool = False,
        collate_fn=None,
    ):
        super().__init__(
            dataset,
            batch_sampler=batch_sampler,
            num_workers=num_workers,
            pin_memory=pin_memory,
            persistent_workers=num_workers > 0,
            collate_fn=collate_fn,
        )
        self._position, self._resume = position, None

    def __iter__(self):
        epoch, start = self._resume if self._resume is not None else self._position()
        self._resume = None
        self.batch_sampler.set_epoch(epoch)
        self.batch_sampler.start = start
        return super().__iter__()

    def state_dict(self) -> dict:
        epoch, done = self._position()
        return {"epoch": epoch, "batches_done": done}

    def load_state_dict(self, state: dict) -> None:
        self._resume = (state["epoch"], state["batches_done"])


def default_num_workers() -> int:
    """Data-loading processes: the cores this process may use, less one for the training loop, at most 8."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        cores = os.cpu_count() or 1
    return int(np.clip(cores - 1, 0, 8))
