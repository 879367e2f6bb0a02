"""The training datamodule: digits (offline default), CIFAR-10/100, STL-10 and any ImageFolder — one class, the
datasets differ only in where their images come from (:data:`DATASETS`).

It yields training batches ``{"views", "params", "label", "index"}`` (docs/api.md, "Batch format") and, for
validation, two loaders of un-augmented images: the kNN bank (training split) and the queries (held-out split).
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

from selfsup import checks
from selfsup.data.batches import BatchPlan, TrainerFacts
from selfsup.data.datasets import (
    AugmentedViews,
    EvalDataset,
    GlobalBatchSampler,
    MaskDraw,
    MultiViewDataset,
    ResumableLoader,
    default_num_workers,
)
from selfsup.data.device_loader import DeviceViews, use_device_views
from selfsup.data.shards import EXTRA_SPLIT, ShardImages, is_shard_dir, read_manifest
from selfsup.data.sources import FileImages, Subset, TensorImages, stratified_first
from selfsup.data.views import MultiViewTransform


class ShardSampler(Sampler):
    """Indices ``rank::world_size``, padded by repeats to equal length (the module drops duplicates by index)."""

    def __init__(self, n: int, rank: int, world_size: int):
        per_rank = -(-n // world_size)
        self.indices = [min(i, n - 1) for i in range(rank, per_rank * world_size, world_size)]

    def __len__(self) -> int:
        return len(self.indices)

    def __iter__(self):
        return iter(self.indices)


def _digits(dm: SSLDataModule):
    """scikit-learn's bundled 8x8 digits (1,797 images, offline): a fixed stratified 80/20 split, 3-channel."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = torch.from_numpy(np.round(digits.images * (255 / 16)).astype(np.uint8))  # (N, 8, 8)
    images = images[:, None].expand(-1, 3, -1, -1).contiguous()
    labels = torch.from_numpy(digits.target)
    train_idx, test_idx = train_test_split(
        np.arange(len(labels)), test_size=0.2, stratify=digits.target, random_state=0
    )
    classes = [str(c) for c in range(10)]
    return tuple(TensorImages(images[np.sort(i)], labels[np.sort(i)], classes) for i in (train_idx, test_idx))


def _shards(dm: SSLDataModule):
    """A shard directory written by ``selfsup-shards`` (``selfsup.data.shards``): its splits ``train_dir`` and
    ``val_dir`` (and STL-10's labelled train split for evaluation, when it was written)."""
    manifest = read_manifest(dm.root)
    names = [dm.train_dir, dm.val_dir] + ([EXTRA_SPLIT] if EXTRA_SPLIT in manifest.get("splits", {}) else [])
    return tuple(ShardImages(dm.root, name) for name in names)


def _imagefolder(dm: SSLDataModule):
    """``root/<train_dir>/<class>/<image>`` and ``root/<val_dir>/<class>/<image>``, or shards written from such a
    tree (a directory with a shard manifest)."""
    if is_shard_dir(dm.root):
        return _shards(dm)
    root = Path(dm.root)
    if not root.is_dir():
        raise FileNotFoundError(f"data.root={root}: directory does not exist")
    missing = [d for d in (dm.train_dir, dm.val_dir) if not (root / d).is_dir()]
    if missing:
        raise FileNotFoundError(
            f"data.root={root}: missing split folder(s) {missing}; expected {root}/{dm.train_dir}/<class>/<image> "
            f"and {root}/{dm.val_dir}/<class>/<image>"
        )
    return tuple(FileImages(root / d, f"data.root/{d}") for d in (dm.train_dir, dm.val_dir))


def _torchvision(dm: SSLDataModule):
    """CIFAR-10/100 or STL-10 through torchvision (``download`` passed through), or the same data laid out as an
    ImageFolder tree (e.g. ../shared/data/cifar10). STL-10 trains on train+unlabeled (labels -1 on the unlabeled
    part) and evaluates on its labelled train/test splits."""
    root = Path(dm.root)
    if (root / dm.train_dir).is_dir() or (root / dm.val_dir).is_dir() or is_shard_dir(dm.root):  # ImageFolder, shards
        return _imagefolder(dm)
    if not root.is_dir() and not dm.download:
        raise FileNotFoundError(f"data.root={root}: directory does not exist (pass data.download=true to fetch)")
    import torchvision.datasets as tvd

    tensor = lambda images, labels, classes: TensorImages(  # noqa: E731
        torch.as_tensor(images).contiguous(), torch.as_tensor(np.asarray(labels), dtype=torch.long), list(classes)
    )
    try:
        if dm.dataset == "stl10":
            splits = (tvd.STL10(str(root), split=s, download=dm.download) for s in ("train+unlabeled", "test", "train"))
            return tuple(tensor(d.data, d.labels, d.classes) for d in splits)
        cls = tvd.CIFAR10 if dm.dataset == "cifar10" else tvd.CIFAR100
        splits = (cls(str(root), train=t, download=dm.download) for t in (True, False))
        # (N, H, W, C) -> (N, C, H, W)
        return tuple(tensor(torch.from_numpy(d.data).permute(0, 3, 1, 2), d.targets, d.classes) for d in splits)
    except RuntimeError as e:  # torchvision: "Dataset not found or corrupted. You can use download=True ..."
        raise FileNotFoundError(
            f"data.root={root}: no {dm.dataset} found ({e}); expected torchvision's files or an ImageFolder "
            f"tree {dm.train_dir}/<class>/, {dm.val_dir}/<class>/ — pass data.download=true to fetch it"
        ) from None


# dataset -> (train, held-out[, labelled train for evaluation]) sources (selfsup.data.sources)
DATASETS = {
    "digits": _digits,
    "cifar10": _torchvision,
    "cifar100": _torchvision,
    "stl10": _torchvision,
    "imagefolder": _imagefolder,
    "shards": _shards,
}
# evaluation: resize the short side to image_size / this, centre-crop
CROP_FRACTION = {"imagefolder": 0.875, "shards": 0.875}


def read_indices(path, n: int, key: str) -> np.ndarray:
    """Sorted training-split indices from an index file (``.npy`` of integers, or text with one per line and ``#``
    comments); one-line errors for a missing or unreadable file, non-integers, duplicates and indices outside
    [0, n)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{key}={path}: no such file")
    try:
        if path.suffix == ".npy":
            raw = np.load(path, allow_pickle=False)
        else:
            lines = [ln.split("#", 1)[0].strip() for ln in path.read_text().splitlines()]
            raw = np.array([int(ln) for ln in lines if ln], dtype=np.int64)
    except (ValueError, OSError) as e:
        raise ValueError(f"{key}={path}: expected integer indices ({str(e).splitlines()[0]})") from None
    if raw.ndim != 1 or not (raw.size == 0 or np.issubdtype(raw.dtype, np.integer)):
        raise ValueError(f"{key}={path}: expected a 1-D array of integer indices, got {raw.dtype} {raw.shape}")
    if raw.size == 0:
        raise ValueError(f"{key}={path}: lists no index")
    bad = raw[(raw < 0) | (raw >= n)]
    if bad.size:
        raise ValueError(
            f"{key}={path}: {bad.size} unknown indices (e.g. {int(bad[0])}): the training split has {n} images, "
            f"indices 0-{n - 1}"
        )
    indices, counts = np.unique(raw.astype(np.int64), return_counts=True)
    if (counts > 1).any():
        raise ValueError(f"{key}={path}: index {int(indices[counts > 1][0])} is listed {int(counts.max())} times")
    return indices


class SSLDataModule(L.LightningDataModule):
    """Multi-view training batches and validation loaders of one dataset (defaults of each in ``conf/data/``).

    Args:
        dataset: one of :data:`DATASETS` — ``digits`` (scikit-learn's, offline; ``root`` unused), ``cifar10``,
            ``cifar100``, ``stl10`` (torchvision files, or an ImageFolder tree of the same data), ``imagefolder``,
            ``shards`` (written by ``selfsup-shards``; any dataset reads shards when ``root`` holds their manifest).
        root: dataset directory.
        batch_size: per-process training batch (the global batch is batch_size x processes).
        image_size: side length of training views and evaluation images.
        mean, std: normalisation statistics.
        num_workers: loader processes per training process (null: cores - 1, at most 8).
        subset: use only the first K training images, stratified by class.
        subset_file: train on the training images listed in this file (``.npy`` of integers, or text: one index per
            line, ``#`` comments), indices into the training split as loaded (``selfsup-subset`` writes one; SSLMem's
            runs are defined by two). Not with ``subset``.
        eval_train_subset, eval_test_subset: cap the kNN bank / query sets of the validation during training
            (stratified); ``selfsup-eval`` uses the whole splits unless told otherwise.
        download: let torchvision download the dataset if it is missing.
        verify: check every image file before training (parallel header checks); unreadable ones are listed.
        skip_bad: with ``verify``, leave unreadable images out (with a warning counting them) instead of stopping.
        train_dir, val_dir: split folder names under ``root`` (ImageFolder trees).
        views_on_device: augment training batches on the training device after the transfer: ``auto`` (GPU views
            as configured, CPU views too when the trainer runs on CUDA), ``true`` or ``false``
            (:func:`selfsup.data.device_loader.use_device_views`).
        resident: on the device path, keep the training split on the device (null: whenever it is held in memory).
        views: the multi-view transform of training samples (null for evaluation-only use).
        seed: seeds shuffling and every augmentation draw.
        trainer_facts: processes, accumulation, run length and ``global_batch_size`` (``selfsup.train.build``
            passes the Trainer's); None: those of the Trainer it is attached to, one process without one.
        lidar: (images, views) of LiDAR's validation set (``label_free``); None: no val/lidar.
        masks: draws each training sample's masks (masked methods; ``selfsup.train.build`` passes the mask part's);
            None: no ``masks`` in the batch.
    """

    device_views = None

    def __init__(
        self,
        dataset: str = "digits",
        root: str | None = None,
        batch_size: int = 256,
        image_size: int = 32,
        mean: tuple[float, ...] = (0.5, 0.5, 0.5),
        std: tuple[float, ...] = (0.5, 0.5, 0.5),
        num_workers: int | None = None,
        subset: int | None = None,
        subset_file: str | None = None,
        eval_train_subset: int | None = None,
        eval_test_subset: int | None = None,
        download: bool = False,
        verify: bool = False,
        skip_bad: bool = False,
        train_dir: str = "train",
        val_dir: str = "val",
        views_on_device: str = "auto",
        resident: bool | None = None,
        views: MultiViewTransform | None = None,
        seed: int = 0,
        trainer_facts: TrainerFacts | None = None,
        lidar: tuple[int, int] | None = None,
        masks: MaskDraw | None = None,
    ):
        super().__init__()
        if dataset not in DATASETS:
            raise ValueError(f"data.dataset={dataset!r}: expected one of {sorted(DATASETS)}")
        if dataset != "digits" and root is None:
            raise ValueError(f"data.root is not set: expected the directory that holds (or will hold) {dataset}")
        if download and dataset in ("imagefolder", "shards"):
            raise ValueError(f"data.download=true: {dataset} cannot be downloaded; point data.root at it")
        self.batch_size = checks.integer("data.batch_size", batch_size, minimum=2)  # BatchNorm, pairs
        self.image_size = checks.integer("data.image_size", image_size, minimum=1)
        for key, value in dict(
            subset=subset,
            eval_train_subset=eval_train_subset,
            eval_test_subset=eval_test_subset,
            num_workers=num_workers,
        ).items():
            checks.integer(f"data.{key}", value, minimum=0 if key == "num_workers" else 1, allow_none=True)
        self.dataset, self.root = dataset, root
        self.mean, self.std = tuple(mean), tuple(std)
        self.num_workers = default_num_workers() if num_workers is None else num_workers
        self.subset, self.eval_train_subset, self.eval_test_subset = subset, eval_train_subset, eval_test_subset
        if subset is not None and subset_file is not None:
            raise ValueError("data.subset and data.subset_file: choose one")
        self.subset_file = subset_file
        self.download, self.verify, self.skip_bad = download, verify or skip_bad, skip_bad
        self.train_dir, self.val_dir = train_dir, val_dir
        self.views_on_device, self.resident = views_on_device, resident
        self.views, self.seed = views, seed
        self.trainer_facts, self.lidar, self.masks = trainer_facts, lidar, masks
        self._plan: BatchPlan | None = None  # derived once, by batch_plan()
        self.crop_fraction = CROP_FRACTION.get(dataset, 1.0)
        self._splits, self._eval_train = None, None

    # -- sources ------------------------------------------------------------------------------------------------
    def load_splits(self):
        """(train, held-out[, labelled train for evaluation]) sources (selfsup.data.sources)."""
        splits = DATASETS[self.dataset](self)
        if self.verify:
            for source, split in zip(splits, ("train", "held-out", "labelled train")):
                if hasattr(source, "verify"):  # image files, shards
                    source.verify(skip=self.skip_bad, split=split)
        return splits

    @property
    def splits(self):
        if self._splits is None:
            train, test, *eval_train = self.load_splits()
            self._eval_train = eval_train[0] if eval_train else None
            if self.subset is not None:
                if self.subset > len(train):
                    raise ValueError(f"data.subset={self.subset}: the training split has only {len(train)} images")
                train = Subset(train, stratified_first(train.labels, self.subset))
            if self.subset_file is not None:
                train = Subset(train, read_indices(self.subset_file, len(train), "data.subset_file"))
            self._splits = train, test
        return self._splits

    def setup(self, stage: str | None = None) -> None:
        """Load and validate the splits and the batch plan (missing folders, empty classes, sizes) before anything
        runs."""
        self.batch_plan()

    @property
    def num_classes(self) -> int:
        return len(self.splits[0].classes)

    def _world(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)

    # -- loaders ------------------------------------------------------------------------------------------------
    def batch_plan(self) -> BatchPlan:
        """The run's :class:`~selfsup.data.batches.BatchPlan`, derived once from the training split's size,
        ``batch_size``, the views' shared chunks and :attr:`trainer_facts` (else the attached Trainer's)."""
        if self._plan is None:
            self._plan = BatchPlan.derive(
                batch_size=self.batch_size,
                num_samples=len(self.splits[0]),
                facts=self.trainer_facts or TrainerFacts.of(self.trainer),
                shared_chunks=self.views.shared_chunks if self.views is not None else None,
            )
        return self._plan

    def train_dataloader(self) -> DataLoader:
        """CPU path: workers augment each sample. Device path (``use_device_views``: GPU views, or any views when
        the trainer runs on CUDA): raw images + keys, augmented in :meth:`on_after_batch_transfer`."""
        if self.views is None:
            raise ValueError("data.views is not set: training needs a views config (e.g. views=simclr)")
        plan, (world_size, rank), trainer = self.batch_plan(), self._world(), self.trainer
        sampler = GlobalBatchSampler(
            len(self.splits[0]), plan.per_device, world_size, rank, self.seed, True, self.views.shared_chunks
        )

        def position() -> tuple[int, int]:
            """(epoch, batches of it already trained on) from the optimiser step count and the plan alone:
            Lightning's epoch and batch counters of a restored checkpoint are settled only after the loader's first
            iterator exists (read from them, a checkpoint on an epoch's last step skipped the next epoch and one
            taken after the epoch replayed it)."""
            return plan.position(trainer.global_step) if trainer is not None else (0, 0)

        self.device_views = None
        on_device = use_device_views(self.views, trainer, self.views_on_device)
        if on_device and self.masks is not None:  # masks are drawn with the views, by the CPU workers
            if use_device_views(self.views, None, self.views_on_device):  # GPU views or views_on_device=true
                raise ValueError(
                    f"data.views_on_device={self.views_on_device}: masks (mask=...) are drawn on the CPU path only; "
                    "use CPU views with data.views_on_device=false or auto"
                )
            on_device = False
        if on_device:
            self.device_views = DeviceViews(self.splits[0], self.views, self.seed, self.resident)
            return self.device_views.loader(sampler, position, self.num_workers)
        dataset = MultiViewDataset(self.splits[0], self.views, self.seed, self.masks)
        return ResumableLoader(dataset, sampler, position, self.num_workers, pin_memory=torch.cuda.is_available())

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        """Device path: the raw batch, now on the training device, becomes the training batch (docs/api.md)."""
        if self.device_views is not None and isinstance(batch, dict) and "key" in batch:
            return self.device_views(batch)
        return batch

    def eval_datasets(self) -> tuple[EvalDataset, EvalDataset]:
        """Un-augmented (train, held-out) datasets yielding (image, label), capped by eval_*_subset."""
        train, test = self.splits
        train = train if self._eval_train is None else self._eval_train
        out = []
        for source, cap in zip((train, test), (self.eval_train_subset, self.eval_test_subset)):
            if cap is not None and cap < len(source):
                source = Subset(source, stratified_first(source.labels, cap))
            out.append(EvalDataset(source, self.image_size, self.mean, self.std, self.crop_fraction))
        return out[0], out[1]

    def lidar_dataset(self) -> AugmentedViews | None:
        """LiDAR's validation set (:attr:`lidar` = (n, q)): q views, drawn as the first training view is, of each of
        the first n held-out images taken class by class; None when off or without training views."""
        if self.lidar is None or self.views is None:
            return None
        n, q = self.lidar
        return AugmentedViews(self.splits[1], self.views.views[0], n, q, self.seed)

    def val_dataloader(self) -> list[DataLoader]:
        """The kNN bank (training split), the queries (held-out split) and, with :attr:`lidar`, LiDAR's views."""
        world_size, rank = self._world()
        lidar = self.lidar_dataset()
        return [
            DataLoader(
                _Indexed(ds),
                batch_size=min(self.batch_plan().per_device, 512),
                sampler=ShardSampler(len(ds), rank, world_size),
                num_workers=self.num_workers,
            )
            for ds in (*self.eval_datasets(), *([lidar] if lidar is not None else []))
        ]


class _Indexed(torch.utils.data.Dataset):
    """(image, label, index) so that sharded evaluation can drop padding duplicates after gathering."""

    def __init__(self, ds):
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int):
        x, y = self.ds[i]
        return x, y, i
