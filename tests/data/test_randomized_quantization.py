"""Randomized Quantization (``selfsup.data.quantize``) and its view op on the CPU and device paths.

References: a float64 loop over bins written from the paper's definition (Wu et al. 2023, arXiv:2212.08663,
microsoft/random_quantize ``inside_random``), distributions of the cut points and bin values, and the device path
against the CPU path (exact sampler: the same draws; counter sampler: KS tests, as tests/data/test_gpu_views.py).
"""

import numpy as np
import pytest
import torch
from scipy import stats

from selfsup.data import randomized_quantization
from selfsup.data.gpu_views import GpuMultiViewTransform
from selfsup.data.quantize import quantize_with_uniforms
from selfsup.data.views import (
    NUM_PARAMS,
    RELATIVE_NAMES,
    MultiViewTransform,
    Slot,
    ViewAugment,
    generator_for,
    relative_transform,
)
from tests.data.test_gpu_views import exact_and_cpu_views, levels, smooth_images, view_pair


def reference(x: np.ndarray, cut_u: np.ndarray, value_u: np.ndarray) -> np.ndarray:
    """float64 loop: x (C, H, W), cut_u (C, n-1), value_u (C, n); bin k = [left_k, right_k) with the last closed
    at max; each value becomes left_k + v_k (right_k - left_k)."""
    out = np.empty_like(x)
    for c in range(x.shape[0]):
        lo, hi = x[c].min(), x[c].max()
        cuts = np.sort(lo + cut_u[c] * (hi - lo))
        left, right = np.concatenate([[lo], cuts]), np.concatenate([cuts, [hi]])
        values = left + value_u[c] * (right - left)
        for idx, v in np.ndenumerate(x[c]):
            k = next(k for k in range(len(left)) if left[k] <= v and (v < right[k] or k == len(left) - 1))
            while k + 1 < len(left) and left[k + 1] <= v:  # coinciding cuts: the last bin starting at or below v
                k += 1
            out[(c, *idx)] = values[k]
    return out


def test_matches_the_float64_reference():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 7, 9, generator=g, dtype=torch.float64)
    for bins in (1, 2, 5, 8, 64):
        cut_u, value_u = torch.rand(2, 3, bins - 1, generator=g).double(), torch.rand(2, 3, bins, generator=g).double()
        got = quantize_with_uniforms(x, cut_u, value_u)
        want = np.stack([reference(x[i].numpy(), cut_u[i].numpy(), value_u[i].numpy()) for i in range(2)])
        np.testing.assert_allclose(got.numpy(), want, rtol=0, atol=1e-12)


def test_draw_order_is_cuts_then_values():
    x = torch.rand(4, 3, 8, 8)
    got = randomized_quantization(x, 6, torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)
    cut_u, value_u = torch.rand(4, 3, 5, generator=g), torch.rand(4, 3, 6, generator=g)
    assert torch.equal(got, quantize_with_uniforms(x, cut_u, value_u))


@pytest.mark.parametrize("bins", [2, 8, 30])
def test_values_stay_in_each_channels_range_and_bins_bound_distinct_values(bins):
    x = torch.randn(16, 3, 12, 12, dtype=torch.float64) * torch.tensor([1.0, 10.0, 0.01]).view(1, 3, 1, 1)
    y = randomized_quantization(x, bins, torch.Generator().manual_seed(bins))
    assert (y.amin(dim=(2, 3)) >= x.amin(dim=(2, 3))).all() and (y.amax(dim=(2, 3)) <= x.amax(dim=(2, 3))).all()
    distinct = torch.tensor([[len(y[i, c].unique()) for c in range(3)] for i in range(16)])
    assert (distinct <= bins).all() and distinct.float().mean() > 0.6 * bins  # ≤ bins, most bins hit
    # order preserving: a larger input never gets a smaller value (bins are intervals, values inside them)
    order = x.flatten(2).argsort(dim=2)
    assert (y.flatten(2).gather(2, order).diff(dim=2) >= 0).all()


def test_constant_channels_and_one_bin():
    x = torch.rand(2, 3, 5, 5)
    x[:, 1] = 0.25
    y = randomized_quantization(x, 8, torch.Generator().manual_seed(0))
    assert torch.equal(y[:, 1], x[:, 1])  # min == max: nothing to quantise
    one = randomized_quantization(x, 1, torch.Generator().manual_seed(0))
    assert (one.flatten(2).std(dim=2) == 0).all()  # one bin: the channel collapses to one value in range


def test_cut_points_and_values_are_uniform():
    """On a ramp with 2 bins the share of pixels in the lower bin is the cut point u ~ U[0, 1), and each bin's value
    sits uniformly inside the bin."""
    n = 600
    x = torch.linspace(0, 1, 4096, dtype=torch.float64).view(1, 1, 64, 64).expand(n, 1, 64, 64)
    y = randomized_quantization(x, 2, torch.Generator().manual_seed(1)).flatten(1)
    low = y.amin(dim=1, keepdim=True)
    share = (y == low).double().mean(dim=1)  # ≈ cut point
    assert stats.kstest(share.numpy(), "uniform").pvalue > 1e-3
    inside = (low[:, 0] / share.clamp_min(1e-9)).numpy()  # value / cut: U[0, 1) given the cut
    assert stats.kstest(inside[share.numpy() > 0.05].clip(0, 1), "uniform").pvalue > 1e-3


def test_commutes_with_a_per_channel_affine_map():
    """Normalising before or after gives the same image (the view op runs after the normalisation)."""
    x = torch.rand(4, 3, 10, 10, dtype=torch.float64)
    a, b = torch.tensor([2.0, 0.5, 4.0]).view(1, 3, 1, 1), torch.tensor([-1.0, 0.3, 2.0]).view(1, 3, 1, 1)
    after = randomized_quantization(x * a + b, 8, torch.Generator().manual_seed(5))
    before = randomized_quantization(x, 8, torch.Generator().manual_seed(5)) * a + b
    torch.testing.assert_close(after, before, rtol=0, atol=1e-12)


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="num_bins"):
        randomized_quantization(torch.rand(3, 4, 4), 0)
    with pytest.raises(ValueError, match="x: expected float"):
        randomized_quantization(torch.zeros(3, 4, 4, dtype=torch.uint8))
    for bad in (0, [4, 2], [2, 3, 4], 2.5, "8"):
        with pytest.raises(ValueError, match="views.quant_bins"):
            ViewAugment(16, quant_bins=bad)
    with pytest.raises(ValueError, match="views.quant_p"):
        ViewAugment(16, quant_p=1.5)


# -- the view op ----------------------------------------------------------------------------------------------------
def test_off_draws_nothing_and_shifts_no_other_parameter():
    img = smooth_images(1, 24)[0]
    for i in range(20):
        g_call, g_sample = generator_for(9, i), generator_for(9, i)
        x, p = ViewAugment(16, blur_p=0.5)(img, g_call)
        ViewAugment(16, blur_p=0.5).sample(g_sample, 24, 24)
        assert torch.equal(g_call.get_state(), g_sample.get_state())  # apply drew nothing
        assert p[Slot.QUANT] == 0 and p[Slot.QUANT_BINS] == 0
        q = ViewAugment(16, blur_p=0.5, quant_p=0.5, quant_bins=[2, 9]).sample(generator_for(9, i), 24, 24)
        assert torch.equal(q[: Slot.QUANT], p[: Slot.QUANT])  # quantization's draws come after all others
    keys = torch.tensor([[0, i, -1] for i in range(64)])
    sizes = torch.tensor([[24, 24]]).expand(64, 2)
    off = GpuMultiViewTransform([ViewAugment(16, blur_p=0.5)]).sample(4, keys, sizes)[0]
    on = GpuMultiViewTransform([ViewAugment(16, blur_p=0.5, quant_p=0.5)]).sample(4, keys, sizes)[0]
    assert torch.equal(on[:, : Slot.QUANT], off[:, : Slot.QUANT]) and (off[:, Slot.QUANT :] == 0).all()


def test_params_record_bins_and_flag():
    view = ViewAugment(16, quant_p=0.6, quant_bins=[3, 10])
    p = torch.stack([view.sample(generator_for(2, i), 20, 20) for i in range(3000)])
    assert p.shape == (3000, NUM_PARAMS)
    applied = p[:, Slot.QUANT] > 0
    assert abs(applied.double().mean() - 0.6) < 4 * (0.24 / 3000) ** 0.5
    assert (p[~applied, Slot.QUANT_BINS] == 0).all()
    counts = torch.bincount(p[applied, Slot.QUANT_BINS].long(), minlength=11)[3:]
    assert len(counts) == 8 and stats.chisquare(counts.numpy()).pvalue > 1e-3  # uniform over 3..10
    assert relative_transform(p[:5], p[5:10]).shape == (5, len(RELATIVE_NAMES)) == (5, 14)  # SIE's input unchanged


def test_cpu_view_is_quantised_after_normalisation():
    cpu = ViewAugment(16, quant_p=1.0, quant_bins=5, mean=(0.2, 0.4, 0.6), std=(0.3, 0.2, 0.1))
    img = smooth_images(1, 24)[0]
    x, p = cpu(img, generator_for(1, 0))
    off = p.clone()
    off[Slot.QUANT :] = 0
    plain = cpu.apply(img, off)  # the same view, not quantised
    g = generator_for(1, 0)
    cpu.sample(g, 24, 24)
    assert torch.equal(x, randomized_quantization(plain, 5, g))
    assert all(len(x[c].unique()) <= 5 for c in range(3))


def test_fixed_params_and_generator_give_the_cpu_image():
    cpu, gpu = view_pair(quant_p=1.0, quant_bins=[2, 12])
    images = smooth_images(12)
    for i, img in enumerate(images):
        p = cpu.sample(generator_for(7, i), 32, 32)
        want = cpu.apply(img, p, generator_for(8, i))
        got = gpu.apply(img, p, generator_for(8, i))
        assert (levels(got, want) > 1e-3).float().mean() <= 0.01  # a uint8 level off may switch a pixel's bin


def test_exact_sampler_reproduces_the_cpu_views():
    views = {
        "v1": ViewAugment(16, quant_p=0.7, quant_bins=[3, 10]),
        "v2": ViewAugment(16, quant_p=1.0),
        "c1": ViewAugment(16, quant_p=0.5, blur_p=0.5),
    }
    quantised = 0
    for _, _, (got, p), (want, want_p) in exact_and_cpu_views(views, 8):
        assert torch.equal(p, want_p)
        assert (levels(got, want) > 1e-3).float().mean() <= 0.01
        quantised += int(p[Slot.QUANT] > 0)
    assert quantised >= 8  # quantised rows were compared


def test_counter_sampler_matches_cpu_distributions():
    kw = dict(size=16, jitter_p=0.0, grayscale_p=0.0, quant_p=0.6, quant_bins=[2, 12])  # crop, flip and RQ
    n = 600
    cpu = MultiViewTransform([ViewAugment(**kw)])
    gpu = GpuMultiViewTransform([ViewAugment(**kw)], sampler="counter")
    images = smooth_images(n, 24)
    keys = torch.stack([torch.zeros(n, dtype=torch.long), torch.arange(n), -torch.ones(n, dtype=torch.long)], 1)
    (got,), (got_p,) = gpu.batch(images, 0, keys)
    pairs = [cpu(img, 1, 0, i) for i, img in enumerate(images)]
    want, want_p = torch.stack([v[0] for v, _ in pairs]), torch.stack([p[0] for _, p in pairs])
    a, b = got_p[:, Slot.QUANT].double().mean(), want_p[:, Slot.QUANT].double().mean()
    assert abs(a - b) < 4 * (2 * 0.24 / n) ** 0.5
    assert stats.ks_2samp(got_p[:, Slot.QUANT_BINS].numpy(), want_p[:, Slot.QUANT_BINS].numpy()).pvalue > 1e-3

    def distinct(x):  # per image: distinct values of channel 0
        return torch.tensor([float(len(r.unique())) for r in x[:, 0]])

    def lower_share(x):  # per image: share of channel 0 at its minimum (≈ the lowest cut point's quantile)
        flat = x[:, 0].flatten(1)
        return (flat == flat.amin(dim=1, keepdim=True)).double().mean(dim=1)

    for stat in (distinct, lower_share, lambda x: x.mean(dim=(1, 2, 3)), lambda x: x.std(dim=(1, 2, 3))):
        for applied in (True, False):  # quantised rows against quantised rows, the others against the others
            a, b = got[(got_p[:, Slot.QUANT] > 0) == applied], want[(want_p[:, Slot.QUANT] > 0) == applied]
            assert stats.ks_2samp(stat(a).numpy(), stat(b).numpy()).pvalue > 1e-3, (stat, applied)
    assert (distinct(got[got_p[:, Slot.QUANT] > 0]) <= 12).all()


def test_views_configs_switch_it_on(tmp_path):
    from tests.config_utils import compose_train

    for name, scale in (("randquant", [1.0, 1.0]), ("gpu_randquant_crop", [0.08, 1.0])):
        cfg = compose_train([f"views={name}"], tmp_path / name)
        v1 = cfg.views.views.v1
        assert v1.quant_p == 1.0 and v1.quant_bins == 8 and list(v1.scale) == scale
    cfg = compose_train(["recipes=quickstart"], tmp_path / "quickstart")
    assert cfg.views.views.v1.quant_p == 0.0  # every existing views config: off
