"""GPU views (run here on CPU tensors) against the torchvision CPU views of ``selfsup.data.views``.

Tolerances, in levels of 255 on the image before normalisation:
- uint8 input, resized crop + flip alone: bit-exact (the weights reproduce ATen's int16 fixed-point antialiased
  bilinear, horizontal pass rounded before the vertical one).
- uint8 input, the whole pipeline: ≤ 2 levels at ≤ 0.5% of pixels. Every op truncates/rounds like torchvision's
  uint8 kernel, but float32 sums taken in another order (x·f + m·(1-f) with or without FMA, the separable blur
  versus torchvision's 2-D kernel) can land on the other side of an integer, and a later op may double that step.
- rotation (nearest): ≤ 2% of pixels differ (samples on a pixel-centre tie may pick the neighbour).
- float input: no quantisation at all, so it differs from the uint8 path by the truncations it skips: mean
  absolute difference < 1.5 levels.
"""

import pytest
import torch
from scipy import stats

from selfsup.data.gpu_views import GpuMultiViewTransform, GpuViewAugment, as_gpu_view
from selfsup.data.views import NUM_PARAMS, MultiViewTransform, ViewAugment, generator_for

UNIT = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)  # mean, std: views in [0, 1]


def smooth_images(n: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    """uint8 (n, 3, size, size) natural-ish images: upsampled noise (edges and flat areas, all hues)."""
    g = torch.Generator().manual_seed(seed)
    low = torch.randint(0, 256, (n, 3, size // 4, size // 4), generator=g).float()
    return torch.nn.functional.interpolate(low, size=size, mode="bilinear").round().clamp(0, 255).byte()


def levels(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a - b).abs() * 255


def view_pair(**kw):
    cpu = ViewAugment(32, mean=UNIT[0], std=UNIT[1], **kw)
    return cpu, as_gpu_view(cpu)


def test_fixed_params_give_torchvision_images():
    cpu, gpu = view_pair(blur_p=0.5, solarize_p=0.3)
    images = smooth_images(48)
    params = torch.stack([cpu.sample(generator_for(1, i), 32, 32) for i in range(len(images))])
    want = torch.stack([cpu.apply(img, p) for img, p in zip(images, params)])
    got = gpu.apply_batch(images, params)  # one batched call, each row its own parameters
    d = levels(got, want)
    assert d.max() <= 2.0 + 1e-4, d.max()
    assert (d > 1e-3).float().mean() <= 0.005

    crop_only = params.clone()
    crop_only[:, 5:14] = torch.tensor([1.0, 1, 1, 0, 0, 0, 0, 0, 0])
    want = torch.stack([cpu.apply(img, p) for img, p in zip(images, crop_only)])
    assert torch.equal(gpu.apply_batch(images, crop_only), want)  # resampling is bit-exact


@pytest.mark.parametrize("size,source", [(32, 96), (12, 40), (16, 8)], ids=["down", "down-odd", "up-from-8px"])
def test_resized_crop_exact_for_any_scale(size, source):
    cpu = ViewAugment(size, mean=UNIT[0], std=UNIT[1], jitter_p=0, grayscale_p=0)
    gpu = as_gpu_view(cpu)
    images = smooth_images(8, source)
    params = torch.stack([cpu.sample(generator_for(2, i), source, source) for i in range(8)])
    want = torch.stack([cpu.apply(img, p) for img, p in zip(images, params)])
    assert torch.equal(gpu.apply_batch(images, params), want)


def test_rotation_within_nearest_neighbour_ties():
    cpu, gpu = view_pair(rotation=30.0)
    images = smooth_images(16)
    params = torch.stack([cpu.sample(generator_for(3, i), 32, 32) for i in range(16)])
    want = torch.stack([cpu.apply(img, p) for img, p in zip(images, params)])
    assert (levels(gpu.apply_batch(images, params), want) > 2).float().mean() < 0.02


def test_float_input_is_the_unquantised_pipeline():
    cpu, gpu = view_pair(blur_p=0.5, solarize_p=0.2)
    images = smooth_images(32)
    params = torch.stack([cpu.sample(generator_for(4, i), 32, 32) for i in range(32)])
    d = levels(gpu.apply_batch(images.float() / 255, params), gpu.apply_batch(images, params))
    assert d.mean() < 1.5, d.mean()


def exact_and_cpu_views(views: dict, rows: int):
    """The exact sampler's batch and the CPU pipeline's views, row by row, of the same keys (epoch 3, seed 7, view
    c1 shared across two chunks): yields (row, view, (got image, got params), (CPU image, CPU params))."""
    cpu = MultiViewTransform(views, shared=["c1"], shared_chunks=2)
    gpu = GpuMultiViewTransform(views, shared=["c1"], shared_chunks=2, sampler="exact")
    images = smooth_images(rows, 24)
    chunk = rows // 2
    got_views, got_params = gpu.batch(images, 7, torch.tensor([[3, i, i // chunk] for i in range(rows)]))
    for i in range(rows):
        want_views, want_params = cpu(images[i], 7, 3, i, i // chunk)
        for v in range(len(views)):
            yield i, v, (got_views[v][i], got_params[v][i]), (want_views[v], want_params[v])


def test_exact_sampler_reproduces_cpu_views_including_shared_chunks():
    views = {"v1": ViewAugment(16, blur_p=0.5), "v2": ViewAugment(16, solarize_p=0.5), "c1": ViewAugment(16)}
    got_params = {}
    for i, v, (got, p), (want, want_p) in exact_and_cpu_views(views, 6):
        assert torch.equal(p, want_p)
        assert levels(got, want).max() * 0.5 <= 2 + 1e-3  # views normalised by std 0.5
        got_params[i, v] = p
    assert torch.equal(got_params[0, 2], got_params[2, 2]) and not torch.equal(got_params[0, 2], got_params[3, 2])


def test_counter_sampler_matches_cpu_distributions():
    cpu = ViewAugment(32, blur_p=0.5, solarize_p=0.2, rotation=10.0)
    n = 3000
    want = torch.stack([cpu.sample(generator_for(5, i), 32, 40) for i in range(n)])
    gpu = GpuMultiViewTransform([cpu], sampler="counter")
    keys = torch.stack([torch.zeros(n, dtype=torch.long), torch.arange(n), -torch.ones(n, dtype=torch.long)], 1)
    got = gpu.sample(5, keys, torch.tensor([[32, 40]]).expand(n, 2))[0]
    for j in range(NUM_PARAMS):
        a, b = got[:, j].numpy(), want[:, j].numpy()
        if j in (4, 10, 12):  # Bernoulli: flip, grayscale, solarise
            assert abs(a.mean() - b.mean()) < 4 * (b.mean() * (1 - b.mean()) / n) ** 0.5 + 1e-9, j
        else:
            assert stats.ks_2samp(a, b).pvalue > 1e-3, (j, stats.ks_2samp(a, b))
    for col in range(13):  # draws are mutually uncorrelated (separate hash streams)
        assert abs(torch.corrcoef(torch.stack([got[:, col], got[:, 13]]))[0, 1]) < 0.1 or got[:, col].std() == 0


def test_counter_uniforms_are_uniform_and_independent():
    from selfsup.data.gpu_views import counter_uniforms

    ident = torch.arange(4000)
    u = counter_uniforms(0, torch.zeros_like(ident), torch.zeros_like(ident), ident, 0, 8)  # (4000, 8)
    assert stats.kstest(u.flatten().numpy(), "uniform").pvalue > 1e-3
    corr = torch.corrcoef(u.T)
    assert (corr - torch.eye(8)).abs().max() < 0.06  # draws of one row
    assert abs(torch.corrcoef(torch.stack([u[:-1, 0], u[1:, 0]]))[0, 1]) < 0.06  # neighbouring keys
    v = counter_uniforms(0, torch.zeros_like(ident), torch.zeros_like(ident), ident, 1, 8)
    assert abs(torch.corrcoef(torch.stack([u[:, 0], v[:, 0]]))[0, 1]) < 0.06  # views


def test_counter_sampler_is_a_pure_function_of_the_key():
    gpu = GpuMultiViewTransform([ViewAugment(16), ViewAugment(16)], shared=["v2"], shared_chunks=4)
    keys = torch.tensor([[1, i, i // 4] for i in range(16)])
    sizes = torch.tensor([[20, 20]]).expand(16, 2)
    full = gpu.sample(0, keys, sizes)
    perm = torch.randperm(16, generator=torch.Generator().manual_seed(0))
    part = gpu.sample(0, keys[perm], sizes)  # any order, any split across processes
    assert all(torch.equal(f[perm], p) for f, p in zip(full, part))
    assert len({tuple(r.tolist()) for r in full[0]}) == 16  # per-sample view: all distinct
    assert all(torch.equal(full[1][4 * c], full[1][4 * c + k]) for c in range(4) for k in range(4))  # shared chunks
    assert not torch.equal(gpu.sample(1, keys, sizes)[0], full[0])  # seed changes the draws


def test_draws_are_named_in_sampling_order():
    """``Draw`` names every column of a counter-sampled row, contiguously and in ``ViewAugment.sample``'s order;
    the offsets are part of every counter-sampled run's views, so they are pinned here."""
    from selfsup.data.gpu_views import Draw

    names = ["CROP_TOP", "CROP_LEFT", "FLIP", "JITTER", "BRIGHTNESS", "CONTRAST", "SATURATION", "HUE"]
    names += ["JITTER_ORDER", "GRAYSCALE", "BLUR", "BLUR_SIGMA", "SOLARIZE", "ROTATION", "QUANT", "QUANT_BINS"]
    assert [getattr(Draw, n) for n in names] == list(range(20, 36))
    assert list(range(34))[Draw.CROP_AREA] == list(range(0, 20, 2))
    assert list(range(34))[Draw.CROP_ASPECT] == list(range(1, 20, 2))
    assert Draw.NUM == GpuViewAugment(8).num_draws == 34
    assert (Draw.quant_cuts(5), Draw.quant_values(5)) == (slice(36, 48), slice(48, 63))
    assert GpuViewAugment(8, quant_p=0.5, quant_bins=(2, 5)).num_draws == 63


def test_output_pixel_statistics_agree_with_cpu_pipeline():
    kw = dict(size=24, blur_p=0.5, solarize_p=0.2)
    cpu = MultiViewTransform([ViewAugment(**kw)])
    gpu = GpuMultiViewTransform([ViewAugment(**kw)])
    images = smooth_images(600, 32)
    keys = torch.stack([torch.zeros(600, dtype=torch.long), torch.arange(600), -torch.ones(600, dtype=torch.long)], 1)
    got = gpu.batch(images, 0, keys)[0][0]
    want = torch.stack([cpu(img, 1, 0, i)[0][0] for i, img in enumerate(images)])
    for stat in (lambda x: x.mean(dim=(1, 2, 3)), lambda x: x.std(dim=(1, 2, 3)), lambda x: x[:, 0].mean((1, 2))):
        assert stats.ks_2samp(stat(got).numpy(), stat(want).numpy()).pvalue > 1e-3


def test_mixed_sizes_and_small_images_are_handled():
    gpu = GpuMultiViewTransform([ViewAugment(16), ViewAugment(16)], sampler="exact")
    imgs = [smooth_images(1, s, seed=s)[0] for s in (8, 40, 24)]  # 8 px: smaller than the 16 px output
    keys = torch.tensor([[0, i, -1] for i in range(3)])
    views, params = gpu.batch(imgs, 0, keys)
    assert views[0].shape == (3, 3, 16, 16)
    for i, img in enumerate(imgs):  # each padded row equals that image augmented alone
        alone, p = gpu(img, 0, 0, i)
        assert torch.equal(params[0][i], p[0]) and torch.allclose(views[0][i], alone[0], atol=1e-5)


@pytest.mark.parametrize(
    "images,match",
    [
        (torch.zeros(2, 1, 8, 8, dtype=torch.uint8), "channels"),
        (torch.zeros(2, 4, 8, 8, dtype=torch.uint8), "channels"),
        ([torch.zeros(3, 8, 8, dtype=torch.uint8), torch.zeros(3, 8, 8)], "mixed dtypes"),
        (torch.zeros(2, 3, 8, 8, dtype=torch.int32), "dtype"),
        (torch.zeros(3, 8, 8, dtype=torch.uint8), "images"),
        (torch.zeros(2, 3, 0, 8, dtype=torch.uint8), "zero"),
    ],
    ids=["grayscale-1ch", "rgba", "mixed-dtypes", "int32", "unbatched", "empty"],
)
def test_bad_images_are_refused(images, match):
    gpu = GpuMultiViewTransform([ViewAugment(8)])
    with pytest.raises(ValueError, match=match):
        gpu.batch(images, 0, torch.tensor([[0, 0, -1], [0, 1, -1]]))


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="views.sampler"):
        GpuMultiViewTransform([ViewAugment(8)], sampler="philox")
    view = GpuViewAugment(8)
    with pytest.raises(ValueError, match="params"):
        view.apply_batch(torch.zeros(2, 3, 8, 8, dtype=torch.uint8), torch.zeros(2, 5))
    bad = torch.zeros(1, NUM_PARAMS)
    bad[0, :4] = torch.tensor([0.5, 0.0, 0.9, 1.0])  # box leaves the image
    with pytest.raises(ValueError, match="crop box"):
        view.apply_batch(torch.zeros(1, 3, 8, 8, dtype=torch.uint8), bad)
    with pytest.raises(ValueError, match="keys"):
        GpuMultiViewTransform([view]).batch(torch.zeros(2, 3, 8, 8, dtype=torch.uint8), 0, torch.zeros(3, 3))


def test_multicrop_views_have_their_own_sizes():
    local = ViewAugment(12, scale=(0.05, 0.14))
    gpu = GpuMultiViewTransform({"g1": ViewAugment(32), "g2": ViewAugment(32), "l1": local, "l2": local})
    views, params = gpu.batch(smooth_images(4), 0, torch.tensor([[0, i, -1] for i in range(4)]))
    assert [tuple(v.shape) for v in views] == [(4, 3, 32, 32)] * 2 + [(4, 3, 12, 12)] * 2
    assert all(p.shape == (4, NUM_PARAMS) for p in params) and (params[2][:, 2] * params[2][:, 3] <= 0.2).all()


# -- the device path: raw batches from the datamodule, views after the transfer --------------------------------
from selfsup.data import SSLDataModule  # noqa: E402


def simclr_views(cls, **kw):
    v = ViewAugment(16, mean=(0.5,) * 3, std=(0.5,) * 3)
    return cls({"v1": v, "v2": v}, **kw)


def test_device_path_yields_the_cpu_path_batch():
    cpu = SSLDataModule(batch_size=32, image_size=16, num_workers=0, views=simclr_views(MultiViewTransform))
    dev = SSLDataModule(
        batch_size=32, image_size=16, num_workers=0, views=simclr_views(GpuMultiViewTransform, sampler="exact")
    )
    want = next(iter(cpu.train_dataloader()))
    raw = next(iter(dev.train_dataloader()))
    assert "image" not in raw and raw["key"].shape == (32, 3)  # the split is resident: only keys travel
    got = dev.on_after_batch_transfer(raw, 0)
    assert sorted(got) == ["index", "label", "params", "views"]
    assert torch.equal(got["index"], want["index"]) and torch.equal(got["label"], want["label"])
    for v in range(2):
        assert torch.equal(got["params"][v], want["params"][v])
        assert levels(got["views"][v], want["views"][v]).max() * 0.5 <= 2 + 1e-3
    assert dev.on_after_batch_transfer((1, 2), 1) == (1, 2)  # validation batches pass through


def test_views_gpu_simclr_trains_through_the_device_path(tmp_path):
    from selfsup.train import build
    from tests.config_utils import compose_train

    cfg = compose_train(
        [
            "views=gpu_simclr",
            "data.batch_size=32",
            "trainer.max_steps=2",
            "trainer.limit_val_batches=0",
            "callbacks.progress=null",
            "trainer.enable_model_summary=false",
            "trainer.log_every_n_steps=1",
        ],
        tmp_path / "run",
    )
    datamodule, module, trainer = build(cfg)
    seen = []
    module.on_train_batch_start = lambda batch, i: seen.append([v.shape for v in batch["views"]])
    trainer.fit(module, datamodule=datamodule)
    assert trainer.global_step == 2 and torch.isfinite(trainer.callback_metrics["train/loss"])
    assert seen[0] == [(32, 3, 16, 16)] * 2


def test_imagefolder_batches_carry_decoded_images(tmp_path):
    from selfsup.data.device_loader import collate_raw
    from tests.config_utils import tiny_imagefolder

    root = tiny_imagefolder(tmp_path / "folder", per_class=4)
    dm = SSLDataModule(
        dataset="imagefolder",
        root=str(root),
        batch_size=4,
        image_size=16,
        num_workers=0,
        views=simclr_views(GpuMultiViewTransform),
    )
    raw = next(iter(dm.train_dataloader()))
    assert raw["image"].dtype == torch.uint8 and raw["image"].shape == (4, 3, 40, 48)  # decoded on the CPU
    assert [tuple(v.shape) for v in dm.on_after_batch_transfer(raw, 0)["views"]] == [(4, 3, 16, 16)] * 2
    mixed = collate_raw(
        [
            {"key": torch.tensor([0, i, -1]), "label": 0, "index": i, "image": smooth_images(1, s)[0]}
            for i, s in enumerate((8, 20))
        ]
    )
    assert isinstance(mixed["image"], list)
    assert dm.device_views(mixed)["views"][0].shape == (2, 3, 16, 16)


def test_autocast_does_not_touch_the_views():
    cpu, gpu = view_pair(blur_p=0.5)
    images = smooth_images(8)
    params = torch.stack([cpu.sample(generator_for(6, i), 32, 32) for i in range(8)])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = gpu.apply_batch(images, params)
    assert inside.dtype == torch.float32 and torch.equal(inside, gpu.apply_batch(images, params))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    views = {"v1": ViewAugment(32, blur_p=0.5, solarize_p=0.2), "v2": ViewAugment(16, scale=(0.05, 0.3))}
    gpu = GpuMultiViewTransform(views, shared=["v2"], shared_chunks=4)
    images = smooth_images(64)
    keys = torch.tensor([[0, i, i // 16] for i in range(64)])
    v_cpu, p_cpu = gpu.batch(images, 3, keys)
    v_gpu, p_gpu = gpu.batch(images.cuda(), 3, keys.cuda())
    for a, b in zip(p_cpu, p_gpu):
        torch.testing.assert_close(b.cpu(), a, rtol=0, atol=1e-6)
    for a, b in zip(v_cpu, v_gpu):
        d = levels(
            b.cpu() * torch.tensor(views["v1"].std).view(1, 3, 1, 1), a * torch.tensor(views["v1"].std).view(1, 3, 1, 1)
        )
        assert d.max() <= 2 + 1e-3 and (d > 1e-3).float().mean() <= 0.005


def test_device_views_choice():
    from types import SimpleNamespace

    from selfsup.data.device_loader import use_device_views

    def on(kind):  # a trainer whose root device is of this type
        return SimpleNamespace(strategy=SimpleNamespace(root_device=SimpleNamespace(type=kind)))

    cpu_views, gpu_views = simclr_views(MultiViewTransform), simclr_views(GpuMultiViewTransform)
    assert use_device_views(gpu_views, None) and use_device_views(gpu_views, on("cpu"))  # as configured
    assert not use_device_views(cpu_views, on("cpu")) and not use_device_views(cpu_views, None)
    assert use_device_views(cpu_views, on("cuda"))  # trainer=gpu: every recipe's views move to the device
    assert use_device_views(cpu_views, None, "true") and not use_device_views(gpu_views, None, "false")
    with pytest.raises(ValueError, match="views_on_device"):
        use_device_views(cpu_views, None, "yes")


def test_device_path_settings_are_config_keys(tmp_path):
    """data.views_on_device and data.resident reach the datamodule from the config (no hidden class attributes)."""
    from selfsup.train import build
    from tests.config_utils import compose_train, tiny_imagefolder

    cfg = compose_train(["data.batch_size=32", "data.views_on_device=true"], tmp_path / "run")
    datamodule, _, _ = build(cfg)
    raw = next(iter(datamodule.train_dataloader()))
    assert datamodule.device_views is not None and raw["key"].shape == (32, 3)  # CPU views, converted, on device
    assert [v.shape for v in datamodule.on_after_batch_transfer(raw, 0)["views"]] == [(32, 3, 16, 16)] * 2
    root = tiny_imagefolder(tmp_path / "folder", per_class=4)
    cfg = compose_train(
        [
            "data=imagefolder",
            f"data.root={root}",
            "data.batch_size=4",
            "data.image_size=16",
            "data.views_on_device=true",
            "data.resident=true",
        ],
        tmp_path / "run2",
    )
    with pytest.raises(ValueError, match="data.resident=true: the training split is not held in memory"):
        build(cfg)[0].train_dataloader()
