"""The datamodule, image sources and the recorded multi-view augmentation (see ``selfsup.data.views``)."""

from selfsup.data.datamodules import DATASETS, SSLDataModule
from selfsup.data.gpu_views import GpuMultiViewTransform, GpuViewAugment
from selfsup.data.quantize import randomized_quantization
from selfsup.data.views import NUM_PARAMS, PARAM_NAMES, MultiViewTransform, Slot, ViewAugment

__all__ = [
    "DATASETS",
    "SSLDataModule",
    "MultiViewTransform",
    "ViewAugment",
    "GpuMultiViewTransform",
    "GpuViewAugment",
    "NUM_PARAMS",
    "PARAM_NAMES",
    "Slot",
    "randomized_quantization",
]
