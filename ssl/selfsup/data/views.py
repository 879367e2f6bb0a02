"""Multi-view augmentation that records what it sampled.

Every view of every sample is drawn from its own ``torch.Generator`` seeded by (seed, epoch, sample index, view),
so a run's views do not depend on the number of processes, workers or restarts. A view marked ``shared`` is seeded
by (seed, epoch, chunk id, view) instead: all rows of a contiguous chunk of the global batch then share one draw
(``shared_chunks``, what CARE needs). :func:`view_key` is that key, for the CPU path and the device path's exact
sampler alike.

The parameters of view i form ``params[i]``, a float tensor of ``NUM_PARAMS`` entries (identity values when an
augmentation was not applied):

=====  ==============  ====================================================================
index  name            meaning
=====  ==============  ====================================================================
0-3    crop_x0..crop_h  random-resized-crop box as fractions of the source image: x0, y0, w, h
4      flip            1 if flipped horizontally
5      brightness      colour-jitter factor (1 = unchanged)
6      contrast        colour-jitter factor (1 = unchanged)
7      saturation      colour-jitter factor (1 = unchanged)
8      hue             hue shift in [-0.5, 0.5] (0 = unchanged)
9      jitter_order    index into ``JITTER_ORDERS`` of the order the four jitter ops ran in
10     grayscale       1 if converted to grayscale
11     blur_sigma      Gaussian-blur sigma in pixels of the output (0 = no blur)
12     solarize        1 if solarised (threshold 128 of 255)
13     rotation        rotation angle in degrees (0 when unused)
14     quant           1 if Randomized Quantization was applied
15     quant_bins      number of quantization bins used (0 when not applied)
16     rot_k           quarter turns (counter-clockwise) of the rotated square: RotNet / LoRot's label
17-19  rot_x0..rot_size  that square as fractions of the view: x0, y0, side (0 when ``rot90`` is off; the whole
                       view for RotNet, a random box for LoRot-I, a quadrant for LoRot-E)
20     jigsaw_grid     g of the jigsaw's g x g tiles (0 when ``jigsaw`` is off)
21     jigsaw_perm     the tiles' permutation as its lexicographic rank (:func:`permutation_of` reads it back)
=====  ==============  ====================================================================

The ops run in SimCLR's order (crop → flip → jitter → grayscale → blur → solarise → rotation → rot90) on uint8 images
with ``torchvision.transforms.v2.functional`` (the blur is ours: :func:`gaussian_blur`, float64), then are scaled to
[0, 1] and normalised. The jigsaw (PIRL's view, docs/pirl.md) cuts the finished view into tiles, after everything
else. Randomized Quantization (``selfsup.data.quantize``) runs after the normalisation, on the float image:
its per-channel [min, max] construction commutes with the per-channel normalisation, and it needs float values, not
uint8 levels. Its cut points and bin values are not recorded (3 x (2 x bins − 1) numbers); they are drawn from the
view's generator right after the parameters, so a (seed, epoch, index, view) key still fixes the whole view.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torchvision.transforms.v2 import functional as TF

from selfsup import checks
from selfsup.data.quantize import randomized_quantization

PARAM_NAMES = (
    "crop_x0",
    "crop_y0",
    "crop_w",
    "crop_h",
    "flip",
    "brightness",
    "contrast",
    "saturation",
    "hue",
    "jitter_order",
    "grayscale",
    "blur_sigma",
    "solarize",
    "rotation",
    "quant",
    "quant_bins",
    "rot_k",
    "rot_x0",
    "rot_y0",
    "rot_size",
    "jigsaw_grid",
    "jigsaw_perm",
)
NUM_PARAMS = len(PARAM_NAMES)


class Slot:
    """Where each parameter sits in a view's vector (``p[Slot.FLIP]``, ``p[:, Slot.CROP]``): the table above."""

    CROP_X0, CROP_Y0, CROP_W, CROP_H, FLIP, BRIGHTNESS, CONTRAST, SATURATION, HUE = range(9)
    JITTER_ORDER, GRAYSCALE, BLUR_SIGMA, SOLARIZE, ROTATION, QUANT, QUANT_BINS = range(9, 16)
    ROT_K, ROT_X0, ROT_Y0, ROT_SIZE, JIGSAW_GRID, JIGSAW_PERM = range(16, NUM_PARAMS)
    CROP = slice(CROP_X0, CROP_H + 1)  # x0, y0, w, h
    JITTER = slice(BRIGHTNESS, HUE + 1)  # brightness, contrast, saturation, hue: JITTER_ORDERS' op indices 0-3


JITTER_ORDERS = tuple(itertools.permutations(range(4)))  # 0 brightness, 1 contrast, 2 saturation, 3 hue
CROP_ATTEMPTS = 10  # torchvision's RandomResizedCrop.get_params: tries before the central fallback

RELATIVE_NAMES = (
    "one",
    "shift_x",
    "shift_y",
    "log_scale_w",
    "log_scale_h",
    "flip",
    "log_brightness",
    "log_contrast",
    "log_saturation",
    "hue",
    "grayscale",
    "blur_sigma",
    "solarize",
    "rotation",
)


def relative_transform(p_from: torch.Tensor, p_to: torch.Tensor) -> torch.Tensor:
    """The transform taking view ``p_from`` to view ``p_to``, (B, NUM_PARAMS) → (B, len(RELATIVE_NAMES)), scaled so
    that every entry is of order 1 and the identity is ``[1, 0, ..., 0]`` (docs/params.md, "Relative transform").

    The crop enters as the second box's centre shift and log size ratio in units of the first box; jitter factors as
    log ratios; flip, grayscale and solarise as differences in {-1, 0, 1}; hue and blur sigma as differences;
    rotation as a difference in half turns. The constant 1 lets a linear hypernetwork (SIE) map the identity to a
    non-zero matrix, as the identity quaternion (1, 0, 0, 0) does in SIE's 3DIEBench. The jitter order, an index
    into a list of permutations, has no meaningful difference and is left out.
    """
    a, b = p_from, p_to

    def log_ratio(slot: int) -> torch.Tensor:
        return torch.log(b[:, slot].clamp_min(1e-2) / a[:, slot].clamp_min(1e-2))

    def centre(p: torch.Tensor, origin: int, size: int) -> torch.Tensor:
        return p[:, origin] + p[:, size] / 2

    width, height = a[:, Slot.CROP_W].clamp_min(1e-3), a[:, Slot.CROP_H].clamp_min(1e-3)
    columns = [
        torch.ones_like(a[:, 0]),
        (centre(b, Slot.CROP_X0, Slot.CROP_W) - centre(a, Slot.CROP_X0, Slot.CROP_W)) / width,
        (centre(b, Slot.CROP_Y0, Slot.CROP_H) - centre(a, Slot.CROP_Y0, Slot.CROP_H)) / height,
        log_ratio(Slot.CROP_W),
        log_ratio(Slot.CROP_H),
        b[:, Slot.FLIP] - a[:, Slot.FLIP],
        log_ratio(Slot.BRIGHTNESS),
        log_ratio(Slot.CONTRAST),
        log_ratio(Slot.SATURATION),
        b[:, Slot.HUE] - a[:, Slot.HUE],
        b[:, Slot.GRAYSCALE] - a[:, Slot.GRAYSCALE],
        b[:, Slot.BLUR_SIGMA] - a[:, Slot.BLUR_SIGMA],
        b[:, Slot.SOLARIZE] - a[:, Slot.SOLARIZE],
        (b[:, Slot.ROTATION] - a[:, Slot.ROTATION]) / 180,
    ]
    return torch.stack(columns, dim=1)


ROT90 = ("none", "image", "lorot_i", "lorot_e")  # ViewAugment.rot90
JIGSAW_GRIDS = (2, 3)  # ViewAugment.jigsaw: 9! < 2**24, so a 3 x 3 permutation's rank is exact in a float32 slot


def permutation_rank(perm: Sequence[int]) -> int:
    """The lexicographic rank of a permutation of 0..n-1 (its Lehmer code): 0 for the identity, n! - 1 reversed."""
    perm, rank = list(perm), 0
    for i, p in enumerate(perm):
        rank = rank * (len(perm) - i) + sum(q < p for q in perm[i + 1 :])
    return rank


def permutation_of(rank: int, n: int) -> list[int]:
    """The permutation of 0..n-1 of lexicographic rank ``rank`` (the inverse of :func:`permutation_rank`)."""
    left, perm = list(range(n)), []
    for i in range(n, 0, -1):
        digit, rank = divmod(rank, math.factorial(i - 1))
        perm.append(left.pop(digit))
    return perm


def jigsaw_tiles(x: torch.Tensor, grid: int) -> torch.Tensor:
    """A batch of jigsaw views (B, C, g·t, g·t) → its tiles (B·g², C, t, t), sample-major, each sample's tiles in
    raster order of where they sit (the permuted order the view op placed them in)."""
    b, c, h, w = x.shape
    if h != w or h % grid:
        raise ValueError(f"jigsaw view of {h} x {w} px: expected a square a {grid} x {grid} grid divides")
    t = h // grid
    return x.reshape(b, c, grid, t, grid, t).permute(0, 2, 4, 1, 3, 5).reshape(b * grid * grid, c, t, t)


def blur_kernel1d(k: int, sigma: float) -> torch.Tensor:
    """The float32 1-D Gaussian kernel torchvision's ``gaussian_blur`` builds (its 2-D kernel is the outer product)."""
    half = (k - 1) * 0.5
    pdf = torch.exp(-0.5 * (torch.linspace(-half, half, steps=k) / sigma).pow(2))
    return pdf / pdf.sum()


def gaussian_blur(x: torch.Tensor, k: int, sigma: float) -> torch.Tensor:
    """torchvision's Gaussian blur of a uint8 (C, H, W) image — its kernel, reflected borders, rounded back to uint8
    — summed in float64 as two 1-D passes of shifted slices: the same pixels on every CPU. (torchvision's float32
    convolution goes through oneDNN, whose kernels differ per instruction set: an AVX2 and an AVX-512 machine round a
    few pixels differently. In float64 the sum is exact to ~1e-13 of a grey level, so rounding it never depends on
    the summation order.) At most one grey level from torchvision's, at a few pixels in 10^4."""
    w = blur_kernel1d(k, sigma).tolist()
    _, h, wd = x.shape
    y = torch.nn.functional.pad(x.double()[None], [k // 2] * 4, mode="reflect")[0]
    rows = y[:, :, :wd] * w[0]
    for j in range(1, k):
        rows += y[:, :, j : j + wd] * w[j]  # a product then a sum, each rounded: no fused multiply-add
    out = rows[:, :h] * w[0]
    for j in range(1, k):
        out += rows[:, j : j + h] * w[j]
    return out.round_().clamp_(0, 255).to(x.dtype)


def separable_blur(x: torch.Tensor, k: int, sigma: float) -> torch.Tensor:
    """:func:`gaussian_blur` in float32 convolutions (``views.fast_blur``): ~4x faster at 224 px, equal up to float
    rounding, and like torchvision's own blur not the same pixels on every CPU (a few round the other way)."""
    w, c = blur_kernel1d(k, sigma), x.shape[0]
    y = torch.nn.functional.pad(x.float()[None], [k // 2] * 4, mode="reflect")
    y = torch.nn.functional.conv2d(y, w.view(1, 1, 1, k).expand(c, 1, 1, k), groups=c)
    y = torch.nn.functional.conv2d(y, w.view(1, 1, k, 1).expand(c, 1, k, 1), groups=c)
    return y[0].round_().clamp_(0, 255).to(x.dtype)


def generator_for(*key: int) -> torch.Generator:
    """A CPU generator seeded from a tuple of non-negative ints (order matters, collisions are negligible)."""
    seed = int(np.random.SeedSequence([int(k) & 0xFFFFFFFF for k in key]).generate_state(1, np.uint64)[0])
    return torch.Generator().manual_seed(seed)


def view_key(seed: int, epoch: int, index: int, chunk: int, view: int, shared: bool) -> tuple[int, ...]:
    """The generator key of view ``view`` of training sample ``index``: ``(seed, epoch, 1, chunk, view)`` for a
    shared view of a row in a chunk (chunk ≥ 0), else ``(seed, epoch, 0, index, view)``. The 0/1 tag keeps the
    per-sample and per-chunk streams apart even where index == chunk id (tag 2: ``AugmentedViews``' draws)."""
    return (seed, epoch, 1, chunk, view) if shared and chunk >= 0 else (seed, epoch, 0, index, view)


def _uniform(g: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * torch.rand((), generator=g).item()


def _coin(g: torch.Generator, p: float) -> bool:
    return p > 0 and torch.rand((), generator=g).item() < p


class ViewAugment:
    """One view's augmentation distribution (defaults: SimCLR's CIFAR-10 pipeline without blur).

    Args:
        size: output side length in pixels.
        scale: random-resized-crop area range as fractions of the source image.
        ratio: random-resized-crop aspect-ratio range.
        flip_p: probability of a horizontal flip.
        jitter_p: probability of applying colour jitter.
        brightness, contrast, saturation: jitter strength s, factors drawn from [max(0, 1 - s), 1 + s].
        hue: jitter strength h, shift drawn from [-h, h] (h ≤ 0.5).
        grayscale_p: probability of converting to grayscale.
        blur_p: probability of a Gaussian blur (kernel ≈ 10% of ``size``, odd).
        blur_sigma: sigma range of the blur.
        solarize_p: probability of solarisation.
        rotation: maximal absolute rotation in degrees (0 = no rotation).
        mean, std: per-channel normalisation.
        quant_p: probability of Randomized Quantization (``selfsup.data.randomized_quantization``), applied after
            the normalisation; 0 = off (and no random draws for it).
        quant_bins: its number of bins: an int, or a range [min, max] each application draws from uniformly
            (inclusive), as the paper's ablations vary it.
        rot90: rotate a square of the view by k quarter turns, k uniform in {0, 1, 2, 3}, recorded for a rotation
            task (``selfsup.objectives.RotationPrediction``): ``none``; ``image`` (the whole view: RotNet, Gidaris et
            al. 2018); ``lorot_i`` (a box of side r uniform in {2, ..., size // 2} at a corner uniform in
            {0, ..., size - r - 1}: LoRot-I, Moon et al. 2022, ``rand_bbox`` of wjun0830/Localizable-Rotation);
            ``lorot_e`` (one of the four quadrants, uniform: LoRot-E). Drawn after every other parameter, so the
            other draws are those of the view without it.
        fast_blur: blur in float32 convolutions (:func:`separable_blur`) instead of the default float64 passes
            (:func:`gaussian_blur`): ~4x faster at 224 px (blur is the costliest op there, bench/LOADING.md), equal
            up to float rounding — a few pixels in 10^5 end one grey level apart (tests/data/test_views.py) — but,
            like torchvision's blur, not the same pixels on every CPU. Off by default: the default views are.
        jigsaw: PIRL's jigsaw (Misra & van der Maaten 2020; docs/pirl.md): 0 (off), or g — the finished view is
            cut into g x g cells of ``size // g`` px, a tile of ``jigsaw_tile`` px is taken from each at a random
            offset, and the tiles are laid out in a random permutation (recorded: ``Slot.JIGSAW_PERM``) as one
            (3, g·t, g·t) image, which the training module encodes tile by tile. g is 2 or 3.
        jigsaw_tile: the tile side t ≤ the cell side; null: 3/4 of the cell (PIRL's 64 px tiles of 85 px cells,
            rounded down), so that tiles do not touch.
    """

    def __init__(
        self,
        size: int,
        scale: Sequence[float] = (0.08, 1.0),
        ratio: Sequence[float] = (3 / 4, 4 / 3),
        flip_p: float = 0.5,
        jitter_p: float = 0.8,
        brightness: float = 0.4,
        contrast: float = 0.4,
        saturation: float = 0.4,
        hue: float = 0.1,
        grayscale_p: float = 0.2,
        blur_p: float = 0.0,
        blur_sigma: Sequence[float] = (0.1, 2.0),
        solarize_p: float = 0.0,
        rotation: float = 0.0,
        mean: Sequence[float] = (0.5, 0.5, 0.5),
        std: Sequence[float] = (0.5, 0.5, 0.5),
        quant_p: float = 0.0,
        quant_bins: int | Sequence[int] = 8,
        rot90: str = "none",
        fast_blur: bool = False,
        jigsaw: int = 0,
        jigsaw_tile: int | None = None,
    ):
        checks.integer("views.size", size, minimum=1)
        self.jigsaw, self.jigsaw_tile = _jigsaw_grid(jigsaw, jigsaw_tile, size, rot90)
        if rot90 not in ROT90:
            raise ValueError(f"views.rot90={rot90!r}: expected one of {list(ROT90)}")
        if rot90 == "lorot_i" and size < 5:
            raise ValueError(f"views.rot90=lorot_i: views.size={size} is too small for its boxes (at least 5)")
        if not (0 < scale[0] <= scale[1] <= 1):
            raise ValueError(f"views.scale={list(scale)}: expected 0 < min <= max <= 1")
        if not (0 < ratio[0] <= ratio[1]):
            raise ValueError(f"views.ratio={list(ratio)}: expected 0 < min <= max")
        for key, p in dict(
            flip_p=flip_p,
            jitter_p=jitter_p,
            grayscale_p=grayscale_p,
            blur_p=blur_p,
            solarize_p=solarize_p,
            quant_p=quant_p,
        ).items():
            checks.number(f"views.{key}", p, minimum=0, maximum=1)  # a probability
        checks.number("views.hue", hue, minimum=0, maximum=0.5)
        if len(mean) != len(std):
            raise ValueError(f"views.mean/std: expected equal lengths, got {len(mean)} and {len(std)}")
        self.quant_p, self.quant_bins = quant_p, _bin_range(quant_bins)
        self.size = int(size)
        self.scale, self.ratio = tuple(scale), tuple(ratio)
        self.flip_p, self.jitter_p, self.grayscale_p = flip_p, jitter_p, grayscale_p
        self.brightness, self.contrast, self.saturation, self.hue = brightness, contrast, saturation, hue
        self.blur_p, self.blur_sigma, self.solarize_p, self.rotation = blur_p, tuple(blur_sigma), solarize_p, rotation
        self.mean, self.std = list(mean), list(std)
        self.blur_kernel = max(3, int(0.1 * self.size) // 2 * 2 + 1)
        self.fast_blur, self.rot90 = bool(fast_blur), rot90

    # -- sampling ---------------------------------------------------------------------------------------------
    def _crop(self, g: torch.Generator, height: int, width: int) -> tuple[int, int, int, int]:
        """torchvision's RandomResizedCrop.get_params, drawn from ``g``: (top, left, h, w) in pixels."""
        area = height * width
        log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(CROP_ATTEMPTS):
            target_area = area * _uniform(g, *self.scale)
            aspect = math.exp(_uniform(g, *log_ratio))
            w = int(round(math.sqrt(target_area * aspect)))
            h = int(round(math.sqrt(target_area / aspect)))
            if 0 < w <= width and 0 < h <= height:
                top = int(torch.randint(0, height - h + 1, (), generator=g))
                left = int(torch.randint(0, width - w + 1, (), generator=g))
                return top, left, h, w
        in_ratio = width / height  # fallback: central crop with the ratio clamped into range
        if in_ratio < self.ratio[0]:
            w, h = width, int(round(width / self.ratio[0]))
        elif in_ratio > self.ratio[1]:
            h, w = height, int(round(height * self.ratio[1]))
        else:
            w, h = width, height
        return (height - h) // 2, (width - w) // 2, h, w

    def sample(self, g: torch.Generator, height: int, width: int) -> torch.Tensor:
        """Draw one parameter vector (``NUM_PARAMS``,) for a source image of ``height`` x ``width``."""
        p = torch.zeros(NUM_PARAMS)
        top, left, h, w = self._crop(g, height, width)
        p[Slot.CROP] = torch.tensor([left / width, top / height, w / width, h / height])
        p[Slot.FLIP] = float(_coin(g, self.flip_p))
        p[Slot.JITTER] = torch.tensor([1.0, 1.0, 1.0, 0.0])
        if _coin(g, self.jitter_p):
            p[Slot.BRIGHTNESS] = _uniform(g, max(0.0, 1 - self.brightness), 1 + self.brightness)
            p[Slot.CONTRAST] = _uniform(g, max(0.0, 1 - self.contrast), 1 + self.contrast)
            p[Slot.SATURATION] = _uniform(g, max(0.0, 1 - self.saturation), 1 + self.saturation)
            p[Slot.HUE] = _uniform(g, -self.hue, self.hue)
            p[Slot.JITTER_ORDER] = float(torch.randint(0, len(JITTER_ORDERS), (), generator=g))
        p[Slot.GRAYSCALE] = float(_coin(g, self.grayscale_p))
        if _coin(g, self.blur_p):
            p[Slot.BLUR_SIGMA] = _uniform(g, *self.blur_sigma)
        p[Slot.SOLARIZE] = float(_coin(g, self.solarize_p))
        if self.rotation > 0:
            p[Slot.ROTATION] = _uniform(g, -self.rotation, self.rotation)
        if _coin(g, self.quant_p):  # quant_p = 0: no draw, the stream of every existing config is unchanged
            lo, hi = self.quant_bins
            p[Slot.QUANT] = 1.0
            p[Slot.QUANT_BINS] = float(lo if lo == hi else int(torch.randint(lo, hi + 1, (), generator=g)))
        if self.rot90 != "none":  # drawn last: the stream of every view without it is unchanged
            p[Slot.ROT_X0 : Slot.ROT_SIZE + 1] = torch.tensor(self._rot_box(g)) / self.size
            p[Slot.ROT_K] = float(torch.randint(0, 4, (), generator=g))
        if self.jigsaw:  # likewise last (rot90 and jigsaw exclude each other)
            p[Slot.JIGSAW_GRID] = self.jigsaw
            p[Slot.JIGSAW_PERM] = permutation_rank(torch.randperm(self.jigsaw**2, generator=g).tolist())
        return p

    @property
    def out_size(self) -> int:
        """The side of the image this view yields: ``size``, or g·t for a jigsaw view."""
        return self.jigsaw * self.jigsaw_tile if self.jigsaw else self.size

    def _cut_jigsaw(self, x: torch.Tensor, p: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """The finished view (3, size, size) → its tiles laid out in the recorded permutation (3, g·t, g·t): tile
        j of the output is cell ``perm[j]`` (cells in raster order), cut at an offset drawn per cell in
        {0, ..., cell − t − 1} each way (VISSL's ``ImgPatchesFromTensor``: ``randint(0, patch_jitter)``; 0 when
        t = cell). The offsets are not recorded: they come from ``generator`` after every other draw."""
        g, t, cell = self.jigsaw, self.jigsaw_tile, self.size // self.jigsaw
        offsets = torch.randint(0, max(cell - t, 1), (g * g, 2), generator=generator).tolist()
        tiles = []
        for c, (dy, dx) in enumerate(offsets):
            y0, x0 = (c // g) * cell + dy, (c % g) * cell + dx
            tiles.append(x[:, y0 : y0 + t, x0 : x0 + t])
        order = permutation_of(int(p[Slot.JIGSAW_PERM]), g * g)
        rows = [torch.cat([tiles[order[r * g + col]] for col in range(g)], dim=2) for r in range(g)]
        return torch.cat(rows, dim=1)

    def _rot_box(self, g: torch.Generator) -> tuple[int, int, int]:
        """The rotated square (x0, y0, side) in pixels of the view."""
        s = self.size
        if self.rot90 == "image":
            return 0, 0, s
        if self.rot90 == "lorot_e":
            q, half = int(torch.randint(0, 4, (), generator=g)), s // 2
            return (q % 2) * (s - half), (q // 2) * (s - half), half
        r = int(torch.randint(2, s // 2 + 1, (), generator=g))
        x0, y0 = (int(torch.randint(0, s - r, (), generator=g)) for _ in range(2))
        return x0, y0, r

    # -- application ------------------------------------------------------------------------------------------
    def apply(self, img: torch.Tensor, p: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Apply parameters ``p`` to a uint8 image (3, H, W); returns a normalised float image (3, size, size).

        ``generator`` supplies Randomized Quantization's cut points and bin values when ``p[Slot.QUANT]`` is set
        (torch's global generator when None); nothing else is random here.
        """
        _, height, width = img.shape
        left, top = round(float(p[Slot.CROP_X0]) * width), round(float(p[Slot.CROP_Y0]) * height)
        w, h = round(float(p[Slot.CROP_W]) * width), round(float(p[Slot.CROP_H]) * height)
        x = TF.resized_crop(img, top, left, h, w, [self.size, self.size], antialias=True)
        if p[Slot.FLIP] > 0:
            x = TF.horizontal_flip(x)
        ops = (  # an op at its identity value (1, 1, 1, 0) is skipped
            lambda t: TF.adjust_brightness(t, float(p[Slot.BRIGHTNESS])) if p[Slot.BRIGHTNESS] != 1 else t,
            lambda t: TF.adjust_contrast(t, float(p[Slot.CONTRAST])) if p[Slot.CONTRAST] != 1 else t,
            lambda t: TF.adjust_saturation(t, float(p[Slot.SATURATION])) if p[Slot.SATURATION] != 1 else t,
            lambda t: TF.adjust_hue(t, float(p[Slot.HUE])) if p[Slot.HUE] != 0 else t,
        )
        for i in JITTER_ORDERS[int(p[Slot.JITTER_ORDER])]:
            x = ops[i](x)
        if p[Slot.GRAYSCALE] > 0:
            x = TF.rgb_to_grayscale(x, num_output_channels=3)
        if p[Slot.BLUR_SIGMA] > 0:
            blur = separable_blur if self.fast_blur else gaussian_blur
            x = blur(x, self.blur_kernel, float(p[Slot.BLUR_SIGMA]))
        if p[Slot.SOLARIZE] > 0:
            x = TF.solarize(x, threshold=128)
        if p[Slot.ROTATION] != 0:
            x = TF.rotate(x, float(p[Slot.ROTATION]))
        if p[Slot.ROT_K] != 0:
            x0, y0, r = (round(float(v) * self.size) for v in p[Slot.ROT_X0 : Slot.ROT_SIZE + 1])
            x = x.clone()
            x[:, y0 : y0 + r, x0 : x0 + r] = torch.rot90(x[:, y0 : y0 + r, x0 : x0 + r], int(p[Slot.ROT_K]), (1, 2))
        x = TF.normalize(x.float().div_(255), self.mean, self.std)
        if p[Slot.QUANT] > 0:
            x = randomized_quantization(x, int(p[Slot.QUANT_BINS]), generator)
        if p[Slot.JIGSAW_GRID] > 0:
            x = self._cut_jigsaw(x, p, generator)
        return x

    def __call__(self, img: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        p = self.sample(g, img.shape[-2], img.shape[-1])
        return self.apply(img, p, g), p  # quantization's draws follow the parameters' on the same generator


def _jigsaw_grid(grid, tile, size: int, rot90: str) -> tuple[int, int | None]:
    """``views.jigsaw`` and ``views.jigsaw_tile`` checked against the view's size → (g, t); (0, None) when off."""
    grid = checks.integer("views.jigsaw", grid, minimum=0)
    if not grid:
        return 0, None
    if grid not in JIGSAW_GRIDS:
        raise ValueError(f"views.jigsaw={grid}: expected 0 (off) or a grid side in {list(JIGSAW_GRIDS)}")
    if size % grid:
        raise ValueError(
            f"views.jigsaw={grid}: views.size={size} is not a multiple of {grid} (the view is cut into {grid} x "
            f"{grid} equal cells); e.g. views.size={size + grid - size % grid}"
        )
    if rot90 != "none":
        raise ValueError(f"views.jigsaw={grid} with views.rot90={rot90}: a view is either a jigsaw or rotated")
    cell = size // grid
    tile = cell - cell // 4 if tile is None else tile
    return grid, checks.integer("views.jigsaw_tile", tile, minimum=1, maximum=cell)


def _bin_range(bins) -> tuple[int, int]:
    """``views.quant_bins`` (an int or [min, max]) → (min, max)."""
    if not isinstance(bins, Sequence) or isinstance(bins, str):
        bins = checks.integer("views.quant_bins", bins, minimum=1)
        return bins, bins
    if len(bins) != 2:
        raise ValueError(f"views.quant_bins={bins!r}: expected an integer >= 1 or a range [min, max]")
    lo = checks.integer("views.quant_bins[0]", bins[0], minimum=1)
    return lo, checks.integer("views.quant_bins[1]", bins[1], minimum=lo)


class MultiViewTransform:
    """Several views of one image, each drawn from its own seeded generator.

    Args:
        views: name → :class:`ViewAugment`, in view order (a mapping so that recipes can override one view's
            keys, e.g. ``views.views.v1.blur_p``; a list works too and names its views v1, v2, ...).
        shared: names of the views that share one draw across each chunk of the global batch (CARE).
        shared_chunks: number K of contiguous chunks each global batch is split into for shared views.
        global_views: how many leading views are global (multi-crop: the rest are local crops that only students
            see); null: all of them.

    Subclasses convert each view with :meth:`as_view` (the GPU views: ``selfsup.data.gpu_views``).
    """

    def __init__(
        self,
        views: Mapping[str, ViewAugment] | Sequence[ViewAugment],
        shared: Sequence[str] | None = None,
        shared_chunks: int | None = None,
        global_views: int | None = None,
    ):
        if not isinstance(views, Mapping):
            views = {f"v{i + 1}": v for i, v in enumerate(views)}
        if len(views) < 1:
            raise ValueError("views.views: expected at least one view")
        unknown = sorted(set(shared or ()) - set(views))
        if unknown:
            raise ValueError(f"views.shared={list(shared)}: {unknown} are not view names {list(views)}")
        if shared:  # the chunk count the shared views draw per
            checks.integer("views.shared_chunks", shared_chunks, minimum=1)
        checks.integer("views.global_views", global_views, minimum=1, maximum=len(views), allow_none=True)
        self.names = list(views)
        self.views = [self.as_view(v) for v in views.values()]
        self.shared = [name in (shared or ()) for name in self.names]
        self.shared_chunks = shared_chunks if shared else None
        self.global_views = global_views

    @staticmethod
    def as_view(view: ViewAugment) -> ViewAugment:
        """One entry of ``views`` as this transform keeps it (here: as given)."""
        return view

    def __len__(self) -> int:
        return len(self.views)

    def __call__(self, img: torch.Tensor, seed: int, epoch: int, index: int, chunk: int = -1):
        out, params = [], []
        for v, (view, shared) in enumerate(zip(self.views, self.shared)):
            x, p = view(img, generator_for(*view_key(seed, epoch, index, chunk, v, shared)))
            out.append(x)
            params.append(p)
        return out, params
