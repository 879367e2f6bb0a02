"""The settings of the label-free scores a training run logs at validation (``label_free`` in conf/train.yaml,
docs/metrics.md): α-ReQ's fit range and LiDAR's images, views and regulariser.

Their defaults have one owner, ``conf/train.yaml``: a config without the key (a run saved before it existed, a
module built by hand) gets the values written there.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from omegaconf import OmegaConf

from selfsup import checks
from selfsup.config import CONF_DIR

KEYS = ("alpha_fit_range", "lidar_images", "lidar_views", "lidar_delta")


@functools.cache
def _defaults() -> dict:
    path = CONF_DIR / "train.yaml"
    defaults = OmegaConf.load(path).get("label_free")
    if defaults is None or set(defaults) != set(KEYS):
        raise ValueError(f"{path}: expected a label_free block with {list(KEYS)} (the defaults' one owner)")
    return OmegaConf.to_container(defaults)


@dataclass(frozen=True)
class LabelFree:
    """Checked ``label_free`` settings.

    Attributes:
        alpha_fit_range: (first, last) 1-based eigenvalue ranks of α-ReQ's power-law fit.
        lidar_images, lidar_views: LiDAR's n held-out images x q views (n < 2: no val/lidar).
        lidar_delta: LiDAR's within-class regulariser (> 0).
    """

    alpha_fit_range: tuple[int, int]
    lidar_images: int
    lidar_views: int
    lidar_delta: float

    def __post_init__(self):
        fit = self.alpha_fit_range
        if not (
            isinstance(fit, list | tuple)
            and len(fit) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) for v in fit)
            and 1 <= fit[0] < fit[1]
        ):
            raise ValueError(
                f"label_free.alpha_fit_range={fit}: expected [first, last] 1-based ranks, 1 <= first < last"
            )
        checks.integer("label_free.lidar_images", self.lidar_images, minimum=0)
        checks.integer("label_free.lidar_views", self.lidar_views, minimum=2)
        checks.number("label_free.lidar_delta", self.lidar_delta, above=0)
        object.__setattr__(self, "alpha_fit_range", tuple(fit))
        object.__setattr__(self, "lidar_delta", float(self.lidar_delta))

    @classmethod
    def from_config(cls, node=None) -> LabelFree:
        """From a config's ``label_free`` node (a DictConfig, a dict or None); missing keys take conf/train.yaml's
        values, unknown keys are refused."""
        given = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else dict(node or {})
        unknown = sorted(set(given) - set(KEYS))
        if unknown:
            raise ValueError(f"label_free: unexpected keys {unknown}, expected {list(KEYS)}")
        return cls(**{**_defaults(), **given})

    @property
    def lidar(self) -> tuple[int, int] | None:
        """(images, views) of LiDAR's validation set, None when off."""
        return (self.lidar_images, self.lidar_views) if self.lidar_images >= 2 else None
