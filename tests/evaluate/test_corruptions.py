"""The corruptions against the published CIFAR-10-C functions (hendrycks/robustness
``ImageNet-C/create_c/make_cifar_c.py``), transcribed below and run with the libraries they were written for —
scikit-image and OpenCV (test dependencies only; ``multichannel=True`` is today's ``channel_axis=-1``) — on a few
images at every severity. The published code draws from numpy's global generator; the references draw the same
numbers from a ``Generator`` passed in, in the same order."""

from io import BytesIO

import numpy as np
import pytest
import torch
from PIL import Image as PILImage

from selfsup.evaluate import corruptions as C

cv2 = pytest.importorskip("cv2")
sk = pytest.importorskip("skimage")
from scipy.ndimage import map_coordinates  # noqa: E402
from scipy.ndimage import zoom as scizoom  # noqa: E402
from skimage.filters import gaussian  # noqa: E402


# ------------------------------------------------------------------ make_cifar_c.py, transcribed (rng passed in)
def ref_gaussian_noise(x, severity, rng):
    c = [0.04, 0.06, 0.08, 0.09, 0.10][severity - 1]
    x = np.array(x) / 255.0
    return np.clip(x + rng.normal(size=x.shape, scale=c), 0, 1) * 255


def ref_shot_noise(x, severity, rng):
    c = [500, 250, 100, 75, 50][severity - 1]
    x = np.array(x) / 255.0
    return np.clip(rng.poisson(x * c) / c, 0, 1) * 255


def ref_impulse_noise(x, severity, rng):
    c = [0.01, 0.02, 0.03, 0.05, 0.07][severity - 1]
    x = sk.util.random_noise(np.array(x) / 255.0, mode="s&p", amount=c, rng=rng)
    return np.clip(x, 0, 1) * 255


def ref_disk(radius, alias_blur=0.1, dtype=np.float32):
    L = np.arange(-8, 8 + 1)
    ksize = (3, 3)
    X, Y = np.meshgrid(L, L)
    aliased_disk = np.array((X**2 + Y**2) <= radius**2, dtype=dtype)
    aliased_disk /= np.sum(aliased_disk)
    return cv2.GaussianBlur(aliased_disk, ksize=ksize, sigmaX=alias_blur)


def ref_defocus_blur(x, severity, rng):
    c = [(0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)][severity - 1]
    x = np.array(x) / 255.0
    kernel = ref_disk(radius=c[0], alias_blur=c[1])
    channels = [cv2.filter2D(x[:, :, d], -1, kernel) for d in range(3)]
    return np.clip(np.array(channels).transpose((1, 2, 0)), 0, 1) * 255


def ref_glass_blur(x, severity, rng):
    c = [(0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2)][severity - 1]
    x = np.uint8(gaussian(np.array(x) / 255.0, sigma=c[0], channel_axis=-1) * 255)
    for _ in range(c[2]):
        for h in range(32 - c[1], c[1], -1):
            for w in range(32 - c[1], c[1], -1):
                dx, dy = rng.integers(-c[1], c[1], size=(2,))
                h_prime, w_prime = h + dy, w + dx
                x[h, w], x[h_prime, w_prime] = x[h_prime, w_prime], x[h, w]
    return np.clip(gaussian(x / 255.0, sigma=c[0], channel_axis=-1), 0, 1) * 255


def ref_clipped_zoom(img, zoom_factor):
    h = img.shape[0]
    ch = int(np.ceil(h / zoom_factor))
    top = (h - ch) // 2
    img = scizoom(img[top : top + ch, top : top + ch], (zoom_factor, zoom_factor, 1), order=1)
    trim_top = (img.shape[0] - h) // 2
    return img[trim_top : trim_top + h, trim_top : trim_top + h]


def ref_zoom_blur(x, severity, rng):
    c = [
        np.arange(1, 1.06, 0.01),
        np.arange(1, 1.11, 0.01),
        np.arange(1, 1.16, 0.01),
        np.arange(1, 1.21, 0.01),
        np.arange(1, 1.26, 0.01),
    ][severity - 1]
    x = (np.array(x) / 255.0).astype(np.float32)
    out = np.zeros_like(x)
    for zoom_factor in c:
        out += ref_clipped_zoom(x, zoom_factor)
    x = (x + out) / (len(c) + 1)
    return np.clip(x, 0, 1) * 255


def ref_plasma_fractal(rng, mapsize=32, wibbledecay=3):
    maparray = np.empty((mapsize, mapsize), dtype=np.float64)
    maparray[0, 0] = 0
    stepsize = mapsize
    wibble = 100

    def wibbledmean(array):
        return array / 4 + wibble * rng.uniform(-wibble, wibble, array.shape)

    def fillsquares():
        cornerref = maparray[0:mapsize:stepsize, 0:mapsize:stepsize]
        squareaccum = cornerref + np.roll(cornerref, shift=-1, axis=0)
        squareaccum += np.roll(squareaccum, shift=-1, axis=1)
        maparray[stepsize // 2 : mapsize : stepsize, stepsize // 2 : mapsize : stepsize] = wibbledmean(squareaccum)

    def filldiamonds():
        mapsize_ = maparray.shape[0]
        drgrid = maparray[stepsize // 2 : mapsize_ : stepsize, stepsize // 2 : mapsize_ : stepsize]
        ulgrid = maparray[0:mapsize_:stepsize, 0:mapsize_:stepsize]
        ldrsum = drgrid + np.roll(drgrid, 1, axis=0)
        lulsum = ulgrid + np.roll(ulgrid, -1, axis=1)
        ltsum = ldrsum + lulsum
        maparray[0:mapsize_:stepsize, stepsize // 2 : mapsize_ : stepsize] = wibbledmean(ltsum)
        tdrsum = drgrid + np.roll(drgrid, 1, axis=1)
        tulsum = ulgrid + np.roll(ulgrid, -1, axis=0)
        ttsum = tdrsum + tulsum
        maparray[stepsize // 2 : mapsize_ : stepsize, 0:mapsize_:stepsize] = wibbledmean(ttsum)

    while stepsize >= 2:
        fillsquares()
        filldiamonds()
        stepsize //= 2
        wibble /= wibbledecay
    maparray -= maparray.min()
    return maparray / maparray.max()


def ref_fog(x, severity, rng):
    c = [(0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75)][severity - 1]
    x = np.array(x) / 255.0
    max_val = x.max()
    x += c[0] * ref_plasma_fractal(rng, wibbledecay=c[1])[:32, :32][..., np.newaxis]
    return np.clip(x * max_val / (max_val + c[0]), 0, 1) * 255


def ref_contrast(x, severity, rng):
    c = [0.75, 0.5, 0.4, 0.3, 0.15][severity - 1]
    x = np.array(x) / 255.0
    means = np.mean(x, axis=(0, 1), keepdims=True)
    return np.clip((x - means) * c + means, 0, 1) * 255


def ref_brightness(x, severity, rng):
    c = [0.05, 0.1, 0.15, 0.2, 0.3][severity - 1]
    x = np.array(x) / 255.0
    x = sk.color.rgb2hsv(x)
    x[:, :, 2] = np.clip(x[:, :, 2] + c, 0, 1)
    x = sk.color.hsv2rgb(x)
    return np.clip(x, 0, 1) * 255


def ref_jpeg_compression(x, severity, rng):
    c = [80, 65, 58, 50, 40][severity - 1]
    output = BytesIO()
    PILImage.fromarray(x).save(output, "JPEG", quality=c)
    return np.array(PILImage.open(output))


def ref_pixelate(x, severity, rng):
    c = [0.95, 0.9, 0.85, 0.75, 0.65][severity - 1]
    x = PILImage.fromarray(x).resize((int(32 * c), int(32 * c)), PILImage.BOX)
    return np.array(x.resize((32, 32), PILImage.BOX))


def ref_elastic_transform(image, severity, rng):
    IMSIZE = 32
    c = [
        (IMSIZE * 0, IMSIZE * 0, IMSIZE * 0.08),
        (IMSIZE * 0.05, IMSIZE * 0.2, IMSIZE * 0.07),
        (IMSIZE * 0.08, IMSIZE * 0.06, IMSIZE * 0.06),
        (IMSIZE * 0.1, IMSIZE * 0.04, IMSIZE * 0.05),
        (IMSIZE * 0.1, IMSIZE * 0.03, IMSIZE * 0.03),
    ][severity - 1]
    image = np.array(image, dtype=np.float32) / 255.0
    shape = image.shape
    shape_size = shape[:2]
    center_square = np.float32(shape_size) // 2
    square_size = min(shape_size) // 3
    pts1 = np.float32(
        [
            center_square + square_size,
            [center_square[0] + square_size, center_square[1] - square_size],
            center_square - square_size,
        ]
    )
    pts2 = pts1 + rng.uniform(-c[2], c[2], size=pts1.shape).astype(np.float32)
    M = cv2.getAffineTransform(pts1, pts2)
    image = cv2.warpAffine(image, M, shape_size[::-1], borderMode=cv2.BORDER_REFLECT_101)
    dx = (gaussian(rng.uniform(-1, 1, size=shape[:2]), c[1], mode="reflect", truncate=3) * c[0]).astype(np.float32)
    dy = (gaussian(rng.uniform(-1, 1, size=shape[:2]), c[1], mode="reflect", truncate=3) * c[0]).astype(np.float32)
    dx, dy = dx[..., np.newaxis], dy[..., np.newaxis]
    x, y, z = np.meshgrid(np.arange(shape[1]), np.arange(shape[0]), np.arange(shape[2]))
    indices = np.reshape(y + dy, (-1, 1)), np.reshape(x + dx, (-1, 1)), np.reshape(z, (-1, 1))
    return np.clip(map_coordinates(image, indices, order=1, mode="reflect").reshape(shape), 0, 1) * 255


REFERENCES = {name: globals()[f"ref_{name}"] for name in C.CORRUPTIONS}
# Exact in float64 where the same arithmetic runs; OpenCV's filter2D (a DFT for a 17 x 17 kernel) and its bilinear
# warp (weights quantised to 1/32) agree to these bounds, in pixel values of 0-255.
TOLERANCE = {"defocus_blur": 1e-4, "elastic_transform": 1.0}


def images(n=3):
    """Real CIFAR-like content is not needed: smooth gradients plus texture, as uint8 (32, 32, 3)."""
    g = np.random.default_rng(7)
    yy, xx = np.mgrid[0:32, 0:32]
    out = []
    for i in range(n):
        base = np.stack([xx * 8, yy * 8, (xx + yy) * 4], -1) * (0.3 + 0.3 * i)
        out.append(np.clip(base + g.normal(0, 20, (32, 32, 3)), 0, 255).astype(np.uint8))
    return out


@pytest.mark.parametrize("name", list(C.CORRUPTIONS))
def test_each_corruption_equals_the_published_function_at_every_severity(name):
    for severity in range(1, 6):
        for i, x in enumerate(images()):
            ours = C.CORRUPTIONS[name](x.copy(), severity, np.random.default_rng(i))
            ref = np.asarray(REFERENCES[name](x.copy(), severity, np.random.default_rng(i)), dtype=np.float64)
            tol = TOLERANCE.get(name, 1e-9)
            assert ours.shape == ref.shape == (32, 32, 3)
            if name == "elastic_transform":  # OpenCV's quantised bilinear weights: close on average, a pixel at most
                diff = np.abs(ours - ref)
                assert diff.mean() < 0.2 and diff.max() < 8 * tol, (severity, diff.mean(), diff.max())
            else:
                np.testing.assert_allclose(ours, ref, rtol=0, atol=tol, err_msg=f"{name} severity {severity}")
            assert not np.array_equal(C.corrupt(x, name, severity, np.random.default_rng(i)), x) or name == "contrast"


def test_severity_orders_the_damage():
    """Severity 5 changes the pixels more than severity 1 (elastic aside: its published levels trade the affine
    warp's size against the displacement field's, not monotone in pixel change)."""
    x = images(1)[0]
    for name in set(C.CORRUPTIONS) - {"elastic_transform"}:
        damage = [np.abs(C.corrupt(x, name, s, np.random.default_rng(0)).astype(float) - x).mean() for s in (1, 5)]
        assert damage[1] > damage[0], (name, damage)


def test_bad_types_and_severities_are_refused_in_one_line():
    assert C.check(["fog"], [1, 5]) == (["fog"], [1, 5])
    with pytest.raises(ValueError, match=r"eval.corruptions.types: 'snow' \(not generated here"):
        C.check(["snow"], [1])
    with pytest.raises(ValueError, match=r"eval.corruptions.types: 'blurr'; expected names from"):
        C.check(["blurr"], [1])
    with pytest.raises(ValueError, match=r"eval.corruptions.severities: 6; expected integers 1 to 5"):
        C.check(["fog"], [6])


def test_corrupted_images_are_seeded_per_image_and_capped_class_by_class():
    from selfsup.data.datasets import EvalDataset
    from selfsup.data.sources import TensorImages

    g = torch.Generator().manual_seed(0)
    images_ = torch.randint(0, 256, (20, 3, 32, 32), dtype=torch.uint8, generator=g)
    source = TensorImages(images_, torch.arange(20) % 4, ["a", "b", "c", "d"])
    eval_ds = EvalDataset(source, 32, [0.5] * 3, [0.25] * 3)
    full = C.CorruptedImages(eval_ds, "gaussian_noise", 3, seed=1)
    capped = C.CorruptedImages(eval_ds, "gaussian_noise", 3, seed=1, images=8)
    assert (
        len(full) == 20 and len(capped) == 8 and sorted(int(capped[i][1]) for i in range(8)) == [0, 0, 1, 1, 2, 2, 3, 3]
    )
    row = capped.rows[5]
    assert torch.equal(capped[5][0], full[row][0])  # the same image, the same noise, whatever the subset
    x, _ = full[3]
    expected = C.corrupt(
        eval_ds.image(3).permute(1, 2, 0).numpy(), "gaussian_noise", 3, np.random.default_rng([1, 0, 3, 3])
    )
    torch.testing.assert_close(x, eval_ds.normalize(torch.from_numpy(expected).permute(2, 0, 1)))
    assert not torch.equal(x, C.CorruptedImages(eval_ds, "gaussian_noise", 3, seed=2)[3][0])
