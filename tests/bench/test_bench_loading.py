"""bench/bench_loading.py's ``--ops`` breakdown: every step of the view path is timed, the steps add up to the total,
and the library's functions are put back afterwards (the breakdown wraps them)."""

import sys

import pytest

from selfsup.config import ROOT

sys.path.insert(0, str(ROOT / "bench"))
import bench_loading  # noqa: E402


@pytest.mark.slow
def test_ops_times_each_step_of_the_view_path_and_restores_the_library(tmp_path, monkeypatch, cifar10_root):
    from torchvision.transforms.v2 import functional as TF

    from selfsup.data import views

    monkeypatch.setattr(bench_loading, "WORK", tmp_path)
    monkeypatch.setattr(bench_loading, "CIFAR10", cifar10_root)
    before = (views.TF, views.gaussian_blur, views.ViewAugment.sample)
    rows = dict(bench_loading.ops(images=30))  # 3 images a class, each two 224 px views; 20 of them warm up
    assert (views.TF, views.gaussian_blur, views.ViewAugment.sample) == before
    assert all(hasattr(TF, name) for name in bench_loading.VIEW_OPS)  # a renamed torchvision op fails here
    # SimCLR's views at 224 px draw a crop, flip, jitter, grayscale and blur: the costly steps are all timed
    for step in ("read + decode (shard member)", "draw the parameters", "random resized crop (antialiased)"):
        assert rows[step] > 0, step
    assert rows["Gaussian blur (float64 default)"] > 0 and rows["hue"] > 0
    total = rows.pop("total")
    assert sum(rows.values()) == pytest.approx(total, rel=1e-9)
    assert 0 <= rows["the rest"] < total
