"""Image sources: a split of a dataset as uint8 RGB images (3, H, W) plus integer labels (-1 when unknown)."""

from __future__ import annotations

import hashlib
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
    extension that cannot be decoded raises an error naming it (in a DataLoader worker too). :meth:`verify` checks
    every file up front.
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

    def fingerprint(self) -> str:
        """What the files are now: a digest of every path with its size and modification time (a file replaced,
        added or removed changes it); feature caches key on it."""
        digest = hashlib.sha256()
        for path in self.paths:
            st = os.stat(path)
            digest.update(f"{path}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        return digest.hexdigest()[:20]

    def image(self, i: int) -> torch.Tensor:
        path = self.paths[i]
        try:
            return decode_image(path, mode=ImageReadMode.RGB)  # ~2x faster than PIL on small JPEGs
        except (RuntimeError, OSError) as e:
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ValueError(
                f"cannot decode image {path} ({reason}): fix or remove it, or pass data.verify=true "
                "data.skip_bad=true to check every image before training and leave unreadable ones out"
            ) from None

    def verify(self, skip: bool = False, split: str = "train", workers: int | None = None) -> list[str]:
        """Check every file (:func:`check_image`, in parallel); returns the unreadable paths. Unless ``skip``, any
        unreadable file stops here with one line naming it; with ``skip`` they leave the split."""
        from concurrent.futures import ThreadPoolExecutor

        workers = workers or min(32, 4 * (os.cpu_count() or 1))
        with ThreadPoolExecutor(workers) as pool:
            problems = list(pool.map(check_image, self.paths, chunksize=64))
        bad = [(p, why) for p, why in zip(self.paths, problems) if why is not None]
        if bad and not skip:
            raise ValueError(
                f"data.verify: {len(bad)} unreadable image(s) in the {split} split, e.g. {bad[0][0]} ({bad[0][1]}): "
                "fix or remove them, or pass data.skip_bad=true to leave them out"
            )
        if bad:
            keep = [why is None for why in problems]
            self.paths = [p for p, k in zip(self.paths, keep) if k]
            self.labels = self.labels[torch.tensor(keep)]
            log.warning(
                "data.skip_bad: left out %d unreadable image(s) of the %s split, e.g. %s (%s)",
                len(bad),
                split,
                bad[0][0],
                bad[0][1],
            )
            if not self.paths:
                raise ValueError(f"data.root={self.root}: every image of the {split} split is unreadable")
        return [p for p, _ in bad]


def check_image(path: str) -> str | None:
    """Why ``path`` is not a readable image (None: it is): PIL parses its header and structure (``verify``, which
    checks PNG chunk CRCs), and a JPEG must end with its end-of-image marker (a cut-off download does not)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            fmt = im.format
            im.verify()
        if fmt == "JPEG":
            with open(path, "rb") as f:
                f.seek(max(0, os.path.getsize(path) - 1024))
                if b"\xff\xd9" not in f.read():
                    return "truncated JPEG: no end-of-image marker"
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return None


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

    def fingerprint(self) -> str:
        rows = hashlib.sha256(np.ascontiguousarray(self.indices, dtype=np.int64).tobytes()).hexdigest()[:20]
        return f"{fingerprint(self.source)}:{rows}"


def fingerprint(source) -> str:
    """A source's content digest where it can change under the same config (image folders, subsets of them); ""
    for in-memory sources loaded from fixed files (digits, torchvision's datasets)."""
    return source.fingerprint() if hasattr(source, "fingerprint") else ""


def stratified_first(labels: torch.Tensor, k: int) -> np.ndarray:
    """Indices of the first ``k`` samples taken class by class in turn (dataset order within each class)."""
    labels = labels.numpy()
    per_class = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    order = [idx[r] for r in range(max(map(len, per_class))) for idx in per_class if r < len(idx)]
    return np.sort(np.asarray(order[:k], dtype=np.int64))
