import math

import pytest
import torch
from torchvision.transforms.v2 import functional as TF

from selfsup.data.datasets import GlobalBatchSampler
from selfsup.data.views import JITTER_ORDERS, NUM_PARAMS, PARAM_NAMES, MultiViewTransform, ViewAugment


def image(seed=0, h=32, w=40):
    return torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def simclr(**kw):
    return ViewAugment(size=24, blur_p=0.5, solarize_p=0.3, rotation=15.0, **kw)


def test_params_layout_and_ranges():
    aug = simclr()
    p = torch.stack([aug.sample(torch.Generator().manual_seed(i), 32, 40) for i in range(400)])
    assert p.shape == (400, NUM_PARAMS) == (400, len(PARAM_NAMES))
    x0, y0, w, h = p[:, 0], p[:, 1], p[:, 2], p[:, 3]
    assert (x0 >= 0).all() and (x0 + w <= 1 + 1e-6).all() and (y0 + h <= 1 + 1e-6).all()
    area = w * h
    assert area.min() >= 0.08 - 0.02 and area.max() <= 1.0
    assert set(p[:, 4].unique().tolist()) == {0.0, 1.0}
    jittered = p[:, 5:9] != torch.tensor([1.0, 1.0, 1.0, 0.0])
    assert 0.7 < jittered.any(1).float().mean() < 0.9  # jitter_p = 0.8
    assert (p[:, 5:8] >= 0.6 - 1e-6).all() and (p[:, 5:8] <= 1.4 + 1e-6).all() and (p[:, 8].abs() <= 0.1).all()
    assert p[:, 9].max() < len(JITTER_ORDERS)
    assert 0.1 < p[:, 10].mean() < 0.3  # grayscale_p = 0.2
    blurred = p[:, 11] > 0
    assert 0.4 < blurred.float().mean() < 0.6 and (p[blurred, 11] >= 0.1).all() and (p[:, 11] <= 2.0).all()
    assert p[:, 13].abs().max() <= 15.0


def test_same_key_same_view_and_params_reproduce_the_image():
    t = MultiViewTransform([simclr(), simclr()])
    img = image()
    views_a, params_a = t(img, seed=3, epoch=1, index=7)
    views_b, params_b = t(img, seed=3, epoch=1, index=7)
    assert all(torch.equal(a, b) for a, b in zip(views_a + params_a, views_b + params_b))
    assert not torch.equal(params_a[0], params_a[1])  # two views, two draws
    assert not torch.equal(t(img, seed=3, epoch=2, index=7)[1][0], params_a[0])  # a new epoch, new draws
    assert views_a[0].shape == (3, 24, 24)
    torch.testing.assert_close(t.views[0].apply(img, params_a[0]), views_a[0])  # params fully determine the view


def test_shared_views_share_one_draw_per_chunk():
    t = MultiViewTransform({"v1": simclr(), "c1": simclr()}, shared=["c1"], shared_chunks=4)
    p = lambda index, chunk: t(image(index), 0, 0, index, chunk)[1]  # noqa: E731
    assert torch.equal(p(1, 5)[1], p(2, 5)[1])  # same chunk: same shared draw, different images
    assert not torch.equal(p(1, 5)[0], p(2, 5)[0])  # the independent view differs
    assert not torch.equal(p(1, 5)[1], p(1, 6)[1])


def test_global_batches_do_not_depend_on_world_size():
    one = list(GlobalBatchSampler(50, 8, world_size=1, seed=1, shared_chunks=4))
    two = [list(GlobalBatchSampler(50, 4, world_size=2, rank=r, seed=1, shared_chunks=4)) for r in range(2)]
    assert len(one) == len(two[0]) == len(two[1]) == 6  # 50 // 8, the rest dropped
    for s, batch in enumerate(one):
        assert batch == two[0][s] + two[1][s]
        assert [c for _, _, c in batch] == [s * 4 + p // 2 for p in range(8)]


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(size=0), "views.size"),
        (dict(size=8, scale=(0.5, 0.2)), "views.scale"),
        (dict(size=8, flip_p=1.5), "views.flip_p"),
        (dict(size=8, hue=0.7), "views.hue"),
        (dict(size=8.5), r"views.size=8.5: expected a positive integer"),
        (dict(size=8, jitter_p=True), r"views.jitter_p=True: expected a number in \[0, 1\]"),
        (dict(size=8, quant_bins=[4, 2]), r"views.quant_bins\[1\]=2: expected an integer >= 4"),
    ],
)
def test_bad_view_arguments_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ViewAugment(**kwargs)


def test_bad_shared_views_are_refused():
    with pytest.raises(ValueError, match="not view names"):
        MultiViewTransform({"v1": simclr()}, shared=["c1"], shared_chunks=2)
    with pytest.raises(ValueError, match="views.shared_chunks=None: expected a positive integer"):
        MultiViewTransform({"v1": simclr()}, shared=["v1"])
    with pytest.raises(ValueError, match=r"views.global_views=3: expected an integer in \[1, 2\] or null"):
        MultiViewTransform([simclr(), simclr()], global_views=3)


def test_slots_name_the_parameter_layout():
    from selfsup.data.views import PARAM_NAMES, Slot

    slots = {name: i for name, i in vars(Slot).items() if isinstance(i, int) and name.isupper()}
    assert len(slots) == NUM_PARAMS and all(PARAM_NAMES[i] == name.lower() for name, i in slots.items())
    assert [PARAM_NAMES[i] for i in range(NUM_PARAMS)[Slot.CROP]] == ["crop_x0", "crop_y0", "crop_w", "crop_h"]
    assert [PARAM_NAMES[i] for i in range(NUM_PARAMS)[Slot.JITTER]] == ["brightness", "contrast", "saturation", "hue"]


def test_relative_transform_by_hand():
    from selfsup.data.views import RELATIVE_NAMES, relative_transform

    #                     x0   y0   w     h    flip bri  con  sat  hue   order gray blur solar rot
    a = torch.tensor([[0.1, 0.2, 0.5, 0.4, 0.0, 0.8, 1.0, 1.0, 0.1, 3.0, 1.0, 0.0, 0.0, -10.0]], dtype=torch.float64)
    b = torch.tensor([[0.3, 0.1, 0.25, 0.8, 1.0, 1.2, 1.0, 0.5, -0.05, 17.0, 0.0, 1.5, 1.0, 20.0]], dtype=torch.float64)
    got = dict(zip(RELATIVE_NAMES, relative_transform(a, b)[0].tolist(), strict=True))
    expected = {
        "one": 1.0,
        "shift_x": ((0.3 + 0.125) - (0.1 + 0.25)) / 0.5,  # centre shift in widths of the first crop
        "shift_y": ((0.1 + 0.4) - (0.2 + 0.2)) / 0.4,
        "log_scale_w": math.log(0.5),
        "log_scale_h": math.log(2.0),
        "flip": 1.0,
        "log_brightness": math.log(1.5),
        "log_contrast": 0.0,
        "log_saturation": math.log(0.5),
        "hue": -0.15,
        "grayscale": -1.0,
        "blur_sigma": 1.5,
        "solarize": 1.0,
        "rotation": 30 / 180,
    }
    assert got == pytest.approx(expected, abs=1e-12)  # the jitter order (3 -> 17) is not in it
    assert relative_transform(b, b)[0].tolist() == [1.0] + [0.0] * (len(RELATIVE_NAMES) - 1)  # identity


def test_relative_transform_of_default_views_is_of_order_one():
    from selfsup.data.views import relative_transform

    aug = simclr()
    p = [
        torch.stack([aug.sample(torch.Generator().manual_seed(2 * i + v), 32, 40) for i in range(500)]) for v in (0, 1)
    ]
    code = relative_transform(*p)
    raw = p[1] - p[0]
    assert raw.abs().max() > 10  # what SIE read before: jitter-order and rotation differences dwarf the rest
    assert code.abs().max() < 4 and (code[:, 1:].std(0) < 1.5).all()
    assert (code[:, 1:].std(0) > 0).sum() >= 12  # every applied augmentation moves its entry


def _smooth_images(g: torch.Generator):
    """(image, kernel size, sigma): smooth uint8 images (upsampled noise) at CIFAR-like, 96 and 224 px kernels over
    the whole sigma range."""
    for size, k in ((32, 3), (96, 9), (224, 23)):
        for _ in range(8):
            x = torch.randint(0, 256, (3, size // 8, size // 8), generator=g, dtype=torch.uint8)
            x = torch.nn.functional.interpolate(x[None].float(), size=size, mode="bilinear")[0].round().byte()
            yield x, k, 0.1 + 1.9 * float(torch.rand((), generator=g))


@pytest.mark.parametrize("blur", ["gaussian_blur", "separable_blur"])
def test_blurs_equal_torchvision_blur_up_to_rounding(blur):
    """The default blur (float64) and views.fast_blur (float32 passes) against torchvision's 2-D float32 kernel: at
    most one grey level apart, on fewer than 1 pixel in 10^4."""
    from selfsup.data import views

    differ = total = 0
    for x, k, sigma in _smooth_images(torch.Generator().manual_seed(0)):
        a, b = TF.gaussian_blur(x, [k, k], [sigma, sigma]), getattr(views, blur)(x, k, sigma)
        assert a.dtype == b.dtype == torch.uint8 and a.shape == b.shape
        d = (a.int() - b.int()).abs()
        assert int(d.max()) <= 1
        differ, total = differ + int((d > 0).sum()), total + d.numel()
    assert differ / total < 1e-4


@pytest.mark.filterwarnings("ignore:TF32 acceleration")
def test_default_blur_is_the_rounded_exact_sum_whatever_the_kernels():
    """The default blur rounds the float64 sum, which no summation order moves across .5: a float64 2-D convolution
    with the (exact in float64) outer-product kernel — another order, other kernels, with and without oneDNN — gives
    the same pixels. That is what makes the default views the same on every CPU (float32 blurs are not: oneDNN's
    float32 convolution rounds a few pixels differently per instruction set)."""
    from selfsup.data.views import blur_kernel1d, gaussian_blur

    for x, k, sigma in _smooth_images(torch.Generator().manual_seed(1)):
        w = blur_kernel1d(k, sigma).double()
        kernel = (w[:, None] * w[None]).expand(3, 1, k, k)
        padded = torch.nn.functional.pad(x.double()[None], [k // 2] * 4, mode="reflect")
        for onednn in (True, False):
            with torch.backends.mkldnn.flags(enabled=onednn):
                ref = torch.nn.functional.conv2d(padded, kernel, groups=3)[0].round().clamp(0, 255).byte()
            assert torch.equal(gaussian_blur(x, k, sigma), ref), (k, sigma, onednn)


def test_fast_blur_view_is_the_default_view_up_to_one_grey_level():
    v = ViewAugment(64, blur_p=1.0, fast_blur=True)
    img = torch.randint(0, 256, (3, 80, 80), generator=torch.Generator().manual_seed(2), dtype=torch.uint8)
    p = v.sample(torch.Generator().manual_seed(1), 80, 80)
    ref = ViewAugment(64, blur_p=1.0).apply(img, p)
    assert (v.apply(img, p) - ref).abs().max() <= 1 / 255 / 0.5 + 1e-6  # one grey level, std 0.5
