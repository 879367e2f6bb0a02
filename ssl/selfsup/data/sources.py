"""Image sources: a split of a dataset as uint8 RGB images (3, H, W) plus integer labels (-1 when unknown)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch
from torchvision.io import ImageReadMode, decode_image

log = logging.getLogger(__name__)

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


class TensorImages:
    """A split held in memory as one uint8 tensor (N, 3, H, W)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, classes: list[str]):
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected uint8 images of shape (N, 3, H, W), got {images.dtype} {tuple(images.shape)}")
        self.images, self.labels, self.classes = images, labels.long(), classes

    def __len__(self) -> int:
        return len(self.images)

    def image(self, i: int) -> torch.Tensor:
        return self.images[i]


class FileImages:
    """An ImageFolder split: ``root/<class>/<image>``; classes are the sorted folder names.

    Files without an image extension are skipped with one warning that counts them; a file with an image
    extension that cannot be decoded raises an error naming it.
    """

    def __init__(self, root: str | os.PathLike, key: str = "data.root"):
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"{key}={root}: directory does not exist")
        self.classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
        if not self.classes:
            raise ValueError(f"{key}={root}: expected class folders (root/<class>/<image>), found none")
        self.paths, labels, skipped = [], [], []
        for label, cls in enumerate(self.classes):
            for dirpath, _, files in sorted(os.walk(root / cls, followlinks=True)):
                for name in sorted(files):
                    if name.lower().endswith(IMG_EXTENSIONS):
                        self.paths.append(os.path.join(dirpath, name))
                        labels.append(label)
                    elif not name.startswith("."):
                        skipped.append(os.path.join(dirpath, name))
        if skipped:
            log.warning("%s=%s: skipped %d non-image files (e.g. %s)", key, root, len(skipped), skipped[0])
        if not self.paths:
            raise ValueError(f"{key}={root}: class folders {self.classes[:5]} hold no images {IMG_EXTENSIONS}")
        self.labels = torch.tensor(labels, dtype=torch.long)
        self.root = root

    def __len__(self) -> int:
        return len(self.paths)

    def image(self, i: int) -> torch.Tensor:
        path = self.paths[i]
        try:
            return decode_image(path, mode=ImageReadMode.RGB)
        except RuntimeError as e:
            raise ValueError(f"cannot decode image {path}: {e}") from None


class Subset:
    """The rows ``indices`` of a source."""

    def __init__(self, source, indices: np.ndarray):
        self.source, self.indices = source, np.asarray(indices)
        self.labels = source.labels[torch.as_tensor(self.indices)]
        self.classes = source.classes

    def __len__(self) -> int:
        return len(self.indices)

    def image(self, i: int) -> torch.Tensor:
        return self.source.image(int(self.indices[i]))


def stratified_first(labels: torch.Tensor, k: int) -> np.ndarray:
    """Indices of the first ``k`` samples taken class by class in turn (dataset order within each class)."""
    labels = labels.numpy()
    per_class = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    order = [idx[r] for r in range(max(map(len, per_class))) for idx in per_class if r < len(idx)]
    return np.sort(np.asarray(order[:k], dtype=np.int64))
