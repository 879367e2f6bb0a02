"""CIFAR-10-C-style corruptions generated here, no download (``eval.protocols=[...,corruptions]``,
docs/evaluation.md "Corruptions").

The definitions and severity parameters are those of Hendrycks & Dietterich 2019, "Benchmarking Neural Network
Robustness to Common Corruptions and Perturbations" (hendrycks/robustness ``ImageNet-C/create_c/make_cifar_c.py``,
written for 32 px images). Each function takes an RGB image as a (H, W, 3) uint8 array, a severity 1–5 and a
``numpy.random.Generator``, and returns floats in [0, 255]; like the published set, the image is then truncated to
uint8 (``np.uint8``). Randomness comes from the generator only, seeded per (seed, corruption, severity, image), so
a corrupted set is the same in every run and process.

The published code relies on scikit-image and OpenCV; here the same operations are written with numpy, SciPy
(``scipy.ndimage``: skimage's ``gaussian`` is ``gaussian_filter`` with ``mode="nearest"``, ``truncate=4``; OpenCV's
``BORDER_REFLECT_101`` is SciPy's ``mode="mirror"``) and Pillow (pixelate, JPEG), and ``tests/evaluate/
test_corruptions.py`` checks them against the published functions run with scikit-image and OpenCV.

Twelve of the fifteen standard types are here. Motion blur and snow use ImageMagick's motion-blur kernel (through
Wand) and frost blends photographs of frost shipped with the original code; those three are left out.
"""

from __future__ import annotations

import io
import math

import numpy as np
import torch
from PIL import Image
from scipy import ndimage

from selfsup.data.gpu_views import hsv_to_rgb, rgb_to_hsv
from selfsup.data.sources import stratified_first

# ------------------------------------------------------------------------------------------------ the corruptions


def gaussian_noise(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    c = [0.04, 0.06, 0.08, 0.09, 0.10][severity - 1]
    x = x / 255.0
    return np.clip(x + rng.normal(size=x.shape, scale=c), 0, 1) * 255


def shot_noise(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    c = [500, 250, 100, 75, 50][severity - 1]
    x = x / 255.0
    return np.clip(rng.poisson(x * c) / c, 0, 1) * 255


def impulse_noise(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Salt and pepper on a fraction ``c`` of the values, half each (skimage ``random_noise(mode="s&p")``)."""
    c = [0.01, 0.02, 0.03, 0.05, 0.07][severity - 1]
    x = x / 255.0
    flipped = rng.random(x.shape) <= c  # skimage's Bernoulli draws, in its order
    salted = rng.random(x.shape) <= 0.5
    x[flipped & salted] = 1.0
    x[flipped & ~salted] = 0.0
    return np.clip(x, 0, 1) * 255


def _gaussian(x: np.ndarray, sigma: float, mode: str = "nearest", truncate: float = 4.0) -> np.ndarray:
    """skimage ``filters.gaussian`` on a (H, W[, C]) float image: each channel blurred alone."""
    sigmas = (sigma, sigma, 0) if x.ndim == 3 else sigma
    return ndimage.gaussian_filter(x, sigmas, mode=mode, truncate=truncate)


def _gaussian_kernel3(sigma: float) -> np.ndarray:
    """OpenCV ``getGaussianKernel(3, sigma)``: exp(−i²/2σ²) at i = −1, 0, 1, normalised."""
    k = np.exp(-(np.arange(-1, 2) ** 2) / (2 * sigma**2))
    return k / k.sum()


def _disk(radius: float, alias_blur: float) -> np.ndarray:
    """The published ``disk``: a normalised disc on a 17 x 17 grid (the CIFAR radii are <= 8), blurred by a 3 x 3
    Gaussian (OpenCV ``GaussianBlur``, reflected border)."""
    grid = np.arange(-8, 8 + 1)
    xx, yy = np.meshgrid(grid, grid)
    disk = ((xx**2 + yy**2) <= radius**2).astype(np.float32)
    disk /= disk.sum()
    k = _gaussian_kernel3(alias_blur)
    disk = ndimage.correlate1d(disk.astype(np.float64), k, axis=0, mode="mirror")
    return ndimage.correlate1d(disk, k, axis=1, mode="mirror").astype(np.float32)


def defocus_blur(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    c = [(0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)][severity - 1]
    x = x / 255.0
    kernel = _disk(c[0], c[1]).astype(np.float64)
    out = np.stack([ndimage.correlate(x[:, :, d], kernel, mode="mirror") for d in range(3)], axis=-1)
    return np.clip(out, 0, 1) * 255


def glass_blur(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Blur, then give each pixel a random neighbour's value (bottom-right to top-left, ``iterations`` times), blur."""
    sigma, delta, iterations = [(0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2)][severity - 1]
    x = np.uint8(_gaussian(x / 255.0, sigma) * 255)
    h_size, w_size = x.shape[:2]
    for _ in range(iterations):
        for h in range(h_size - delta, delta, -1):
            for w in range(w_size - delta, delta, -1):
                dx, dy = rng.integers(-delta, delta, size=(2,))
                hp, wp = h + dy, w + dx
                # the published statement: with numpy views it copies the neighbour in rather than swapping
                x[h, w], x[hp, wp] = x[hp, wp], x[h, w]
    return np.clip(_gaussian(x / 255.0, sigma), 0, 1) * 255


def _clipped_zoom(img: np.ndarray, zoom_factor: float) -> np.ndarray:
    h = img.shape[0]
    ch = int(np.ceil(h / zoom_factor))
    top = (h - ch) // 2
    img = ndimage.zoom(img[top : top + ch, top : top + ch], (zoom_factor, zoom_factor, 1), order=1)
    trim_top = (img.shape[0] - h) // 2
    return img[trim_top : trim_top + h, trim_top : trim_top + h]


def zoom_blur(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    c = [
        np.arange(1, 1.06, 0.01),
        np.arange(1, 1.11, 0.01),
        np.arange(1, 1.16, 0.01),
        np.arange(1, 1.21, 0.01),
        np.arange(1, 1.26, 0.01),
    ][severity - 1]
    x = (x / 255.0).astype(np.float32)
    out = np.zeros_like(x)
    for zoom_factor in c:
        out += _clipped_zoom(x, zoom_factor)
    return np.clip((x + out) / (len(c) + 1), 0, 1) * 255


def plasma_fractal(rng: np.random.Generator, mapsize: int = 32, wibbledecay: float = 3) -> np.ndarray:
    """A (mapsize, mapsize) height map in [0, 1] by the diamond-square algorithm (``mapsize`` a power of two)."""
    maparray = np.empty((mapsize, mapsize), dtype=np.float64)
    maparray[0, 0] = 0
    stepsize, wibble = mapsize, 100.0

    def wibbledmean(array):
        return array / 4 + wibble * rng.uniform(-wibble, wibble, array.shape)

    while stepsize >= 2:
        half = stepsize // 2
        cornerref = maparray[0:mapsize:stepsize, 0:mapsize:stepsize]
        squareaccum = cornerref + np.roll(cornerref, shift=-1, axis=0)
        squareaccum += np.roll(squareaccum, shift=-1, axis=1)
        maparray[half:mapsize:stepsize, half:mapsize:stepsize] = wibbledmean(squareaccum)
        drgrid = maparray[half:mapsize:stepsize, half:mapsize:stepsize]
        ulgrid = maparray[0:mapsize:stepsize, 0:mapsize:stepsize]
        ltsum = drgrid + np.roll(drgrid, 1, axis=0) + ulgrid + np.roll(ulgrid, -1, axis=1)
        maparray[0:mapsize:stepsize, half:mapsize:stepsize] = wibbledmean(ltsum)
        ttsum = drgrid + np.roll(drgrid, 1, axis=1) + ulgrid + np.roll(ulgrid, -1, axis=0)
        maparray[half:mapsize:stepsize, 0:mapsize:stepsize] = wibbledmean(ttsum)
        stepsize //= 2
        wibble /= wibbledecay
    maparray -= maparray.min()
    return maparray / maparray.max()


def fog(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    c = [(0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75)][severity - 1]
    h, w = x.shape[:2]
    x = x / 255.0
    max_val = x.max()
    mapsize = max(32, 1 << math.ceil(math.log2(max(h, w))))  # 32 for CIFAR, as published
    x += c[0] * plasma_fractal(rng, mapsize, wibbledecay=c[1])[:h, :w][..., np.newaxis]
    return np.clip(x * max_val / (max_val + c[0]), 0, 1) * 255


def brightness(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    c = [0.05, 0.1, 0.15, 0.2, 0.3][severity - 1]
    hsv = rgb_to_hsv(torch.from_numpy(x / 255.0).permute(2, 0, 1)[None])  # (1, 3, H, W)
    hsv[:, 2] = (hsv[:, 2] + c).clamp(0, 1)
    return np.clip(hsv_to_rgb(hsv)[0].permute(1, 2, 0).numpy(), 0, 1) * 255


def contrast(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    c = [0.75, 0.5, 0.4, 0.3, 0.15][severity - 1]
    x = x / 255.0
    means = np.mean(x, axis=(0, 1), keepdims=True)
    return np.clip((x - means) * c + means, 0, 1) * 255


def _affine_from_points(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The 2 x 3 matrix M with M · [src, 1] = dst for three (x, y) points (OpenCV ``getAffineTransform``)."""
    a = np.hstack([src.astype(np.float64), np.ones((3, 1))])
    return np.linalg.solve(a, dst.astype(np.float64)).T


def elastic_transform(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """A random affine warp of the centre square's corners (bilinear, reflected border), then a smooth random
    displacement field (bilinear, reflected)."""
    size = x.shape[0]
    c = [
        (size * 0, size * 0, size * 0.08),
        (size * 0.05, size * 0.2, size * 0.07),
        (size * 0.08, size * 0.06, size * 0.06),
        (size * 0.1, size * 0.04, size * 0.05),
        (size * 0.1, size * 0.03, size * 0.03),
    ][severity - 1]
    image = np.array(x, dtype=np.float32) / 255.0
    shape = image.shape
    center_square = np.float32(shape[:2]) // 2
    square_size = min(shape[:2]) // 3
    pts1 = np.float32(
        [
            center_square + square_size,
            [center_square[0] + square_size, center_square[1] - square_size],
            center_square - square_size,
        ]
    )
    pts2 = pts1 + rng.uniform(-c[2], c[2], size=pts1.shape).astype(np.float32)
    m = _affine_from_points(pts1, pts2)  # (x, y) of the source → (x, y) of the output
    inverse = np.linalg.inv(np.vstack([m, [0, 0, 1]]))[:2]  # output (x, y) → source (x, y)
    # scipy indexes (row, col) = (y, x): swap both axes of the inverse map
    matrix = inverse[::-1, 1::-1]
    offset = inverse[::-1, 2]
    image = np.stack(
        [ndimage.affine_transform(image[..., d], matrix, offset, order=1, mode="mirror") for d in range(shape[2])],
        axis=-1,
    )
    dx = (_gaussian(rng.uniform(-1, 1, size=shape[:2]), c[1], mode="reflect", truncate=3) * c[0]).astype(np.float32)
    dy = (_gaussian(rng.uniform(-1, 1, size=shape[:2]), c[1], mode="reflect", truncate=3) * c[0]).astype(np.float32)
    dx, dy = dx[..., np.newaxis], dy[..., np.newaxis]
    xx, yy, zz = np.meshgrid(np.arange(shape[1]), np.arange(shape[0]), np.arange(shape[2]))
    indices = np.reshape(yy + dy, (-1, 1)), np.reshape(xx + dx, (-1, 1)), np.reshape(zz, (-1, 1))
    out = ndimage.map_coordinates(image, indices, order=1, mode="reflect").reshape(shape)
    return np.clip(out, 0, 1) * 255


def pixelate(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    c = [0.95, 0.9, 0.85, 0.75, 0.65][severity - 1]
    h, w = x.shape[:2]
    img = Image.fromarray(x).resize((int(w * c), int(h * c)), Image.BOX).resize((w, h), Image.BOX)
    return np.asarray(img, dtype=np.float64)


def jpeg_compression(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    c = [80, 65, 58, 50, 40][severity - 1]
    out = io.BytesIO()
    Image.fromarray(x).save(out, "JPEG", quality=c)
    return np.asarray(Image.open(out), dtype=np.float64)


CORRUPTIONS = {
    "gaussian_noise": gaussian_noise,
    "shot_noise": shot_noise,
    "impulse_noise": impulse_noise,
    "defocus_blur": defocus_blur,
    "glass_blur": glass_blur,
    "zoom_blur": zoom_blur,
    "fog": fog,
    "brightness": brightness,
    "contrast": contrast,
    "elastic_transform": elastic_transform,
    "pixelate": pixelate,
    "jpeg_compression": jpeg_compression,
}
LEFT_OUT = ("motion_blur", "snow", "frost")  # module docstring


def check(types, severities) -> tuple[list[str], list[int]]:
    """``eval.corruptions.types`` / ``severities`` as lists, each name and level checked (one-line errors)."""
    types, severities = list(types), list(severities)
    for name in types:
        if name not in CORRUPTIONS:
            why = " (not generated here: docs/evaluation.md)" if name in LEFT_OUT else ""
            raise ValueError(f"eval.corruptions.types: {name!r}{why}; expected names from {list(CORRUPTIONS)}")
    for s in severities:
        if isinstance(s, bool) or not isinstance(s, int) or not 1 <= s <= 5:
            raise ValueError(f"eval.corruptions.severities: {s!r}; expected integers 1 to 5")
    if not types or not severities:
        raise ValueError("eval.corruptions: expected at least one type and one severity")
    return types, severities


def corrupt(x: np.ndarray, name: str, severity: int, rng: np.random.Generator) -> np.ndarray:
    """(H, W, 3) uint8 → the corrupted (H, W, 3) uint8 image (``np.uint8`` of the published float output)."""
    return np.uint8(CORRUPTIONS[name](x.copy(), severity, rng))


class CorruptedImages(torch.utils.data.Dataset):
    """The held-out split under one corruption and severity: each image as :class:`selfsup.data.EvalDataset` yields
    it (resized, centre-cropped), corrupted as uint8, then normalised; ``images`` caps it to the first images of
    each class in turn (``stratified_first``). Image ``i``'s randomness is seeded by (seed, corruption, severity,
    i)."""

    def __init__(self, eval_ds, name: str, severity: int, seed: int = 0, images: int | None = None):
        self.eval_ds, self.name, self.severity, self.seed = eval_ds, name, severity, seed
        labels = eval_ds.source.labels
        n = len(eval_ds)
        self.rows = (
            list(range(n)) if images is None or images >= n else [int(r) for r in stratified_first(labels, images)]
        )
        self.tag = list(CORRUPTIONS).index(name)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        row = self.rows[i]
        x = self.eval_ds.image(row)  # (C, H, W) uint8
        if x.shape[0] != 3:
            raise ValueError(f"eval.corruptions: image {row} has {x.shape[0]} channels; the corruptions need RGB")
        rng = np.random.default_rng([self.seed, self.tag, self.severity, row])
        y = corrupt(x.permute(1, 2, 0).numpy(), self.name, self.severity, rng)
        return self.eval_ds.normalize(torch.from_numpy(y).permute(2, 0, 1)), self.eval_ds.source.labels[row]
