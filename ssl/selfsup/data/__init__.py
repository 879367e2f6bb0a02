"""Datamodules, image sources and the recorded multi-view augmentation (see ``selfsup.data.views``)."""

from selfsup.data.datamodules import DigitsDataModule, ImageFolderDataModule, SSLDataModule, TorchvisionDataModule
from selfsup.data.views import NUM_PARAMS, PARAM_NAMES, MultiViewTransform, ViewAugment

__all__ = [
    "DigitsDataModule", "ImageFolderDataModule", "SSLDataModule", "TorchvisionDataModule",
    "MultiViewTransform", "ViewAugment", "NUM_PARAMS", "PARAM_NAMES",
]  # fmt: skip
