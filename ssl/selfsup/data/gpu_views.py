"""Batched multi-view augmentation on device tensors, recording the same parameters as ``selfsup.data.views``.

:class:`GpuViewAugment` takes exactly :class:`~selfsup.data.views.ViewAugment`'s arguments (so ``conf/views/gpu_*``
reuse the same keys) and applies a whole batch at once, each row with its own parameters, on whatever device the
images live on:

- random resized crop + horizontal flip: ONE batched separable resampling ``Wy @ x @ Wxᵀ`` with per-row weight
  matrices (B, S, H) and (B, S, W) holding torchvision's antialiased bilinear filter (triangle of width
  max(1, scale), what ``resize(antialias=True)`` uses) restricted to the crop box; a flip reverses Wx's rows.
  Exact for up- and down-scaling and for mixed source sizes (rows padded to the largest image).
- colour jitter: brightness, contrast, saturation, hue in each row's own order
  ``JITTER_ORDERS[p[Slot.JITTER_ORDER]]`` (four steps; at step k every row runs the op its order names, identity
  factors elsewhere; hue via batched RGB↔HSV).
- grayscale, Gaussian blur (per-row sigma, separable: two batched matmuls with banded (S, S) matrices that fold
  in the reflect padding), solarise (128/255), rotation (nearest, zero fill), then ``(x / 255 - mean) / std``.
- Randomized Quantization last, on the normalised rows that drew it (``selfsup.data.quantize``, per-row bin
  counts padded to the view's largest), from uniforms the sampler supplies with the parameters.

Arithmetic follows torchvision's dtype semantics: for uint8 input every op rounds/truncates like the uint8 kernels
(values stay integers in float32: truncating blends, floored grey, rounded resize and blur), for float input in
[0, 1] nothing is quantised. A fixed parameter vector therefore gives ``ViewAugment.apply``'s image up to the
float rounding of the weights: uint8 results agree to within a few levels of 255 at a few pixels, most pixels
exactly (tests/data/test_gpu_views.py states the tolerances). Resampling and blur run in float64 for uint8 input
(exact integer sums whatever TF32 settings a GPU run has) and autocast is switched off inside.

Parameters come from one of two samplers with ``ViewAugment.sample``'s distributions:

- ``"exact"``: ``ViewAugment.sample`` itself, one seeded CPU generator per (sample, view) — the identical draws
  of the CPU pipeline (a Python loop: ~50 µs per view, fine for tests and small batches), quantization's
  uniforms included (drawn from the same generator right after the parameters, as ``ViewAugment.__call__`` does).
- ``"counter"`` (default): a counter-based hash of (seed, epoch, 0/1 tag, index or chunk, view, draw) computed
  batched on the device (draw j's column named by :class:`Draw`): still a pure function of the sample key
  (independent of processes, workers and restarts; ``shared`` views key on the chunk), but not the same numbers as
  the CPU generators.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F

from selfsup import checks
from selfsup.data.quantize import quantize_with_uniforms
from selfsup.data.views import (
    CROP_ATTEMPTS,
    JITTER_ORDERS,
    NUM_PARAMS,
    MultiViewTransform,
    Slot,
    ViewAugment,
    generator_for,
    view_key,
)

SAMPLERS = ("counter", "exact")
_MASK32 = 0xFFFFFFFF
_ORDERS = torch.tensor(JITTER_ORDERS, dtype=torch.long)  # (24, 4)
QUANT_CHANNELS = 3  # the views are RGB


class Draw:
    """Where each uniform sits in a row of the counter sampler's draws ``u`` (B, num_draws): ``u[:, Draw.FLIP]``.

    :class:`~selfsup.data.views.Slot`'s counterpart for draws instead of parameters, in the order
    :meth:`ViewAugment.sample` draws them; each offset is the previous one's plus its width. The layout is part of
    every counter-sampled run's views (docs/params.md, "How a view is drawn"): moving or inserting an entry changes
    them all.
    """

    CROP_TRIES = 0  # CROP_ATTEMPTS x (area, log aspect) interleaved: attempt i at CROP_TRIES + 2i, + 2i + 1
    CROP_TOP = CROP_TRIES + 2 * CROP_ATTEMPTS  # the first valid attempt's box position
    CROP_LEFT = CROP_TOP + 1
    FLIP = CROP_LEFT + 1
    JITTER = FLIP + 1  # coin
    BRIGHTNESS = JITTER + 1  # the four factors, drawn whether or not the coin applies jitter
    CONTRAST = BRIGHTNESS + 1
    SATURATION = CONTRAST + 1
    HUE = SATURATION + 1
    JITTER_ORDER = HUE + 1
    GRAYSCALE = JITTER_ORDER + 1
    BLUR = GRAYSCALE + 1  # coin
    BLUR_SIGMA = BLUR + 1
    SOLARIZE = BLUR_SIGMA + 1
    ROTATION = SOLARIZE + 1
    NUM = ROTATION + 1  # the draws of every view; quantization's follow only where quant_p > 0
    QUANT = NUM  # coin
    QUANT_BINS = QUANT + 1
    QUANT_CUTS = QUANT_BINS + 1  # QUANT_CHANNELS x (m − 1) cut uniforms, then QUANT_CHANNELS x m value uniforms

    CROP_AREA = slice(CROP_TRIES, CROP_TOP, 2)  # (B, CROP_ATTEMPTS)
    CROP_ASPECT = slice(CROP_TRIES + 1, CROP_TOP, 2)

    @staticmethod
    def quant_cuts(m: int) -> slice:
        """The cut uniforms for a largest bin count ``m``."""
        return slice(Draw.QUANT_CUTS, Draw.QUANT_CUTS + QUANT_CHANNELS * (m - 1))

    @staticmethod
    def quant_values(m: int) -> slice:
        """The value uniforms for a largest bin count ``m`` (right after the cuts)."""
        return slice(Draw.quant_cuts(m).stop, Draw.quant_cuts(m).stop + QUANT_CHANNELS * m)


# -- counter-based uniforms -------------------------------------------------------------------------------------
def _mix32(x):
    """A 32-bit integer hash (xorshift-multiply rounds) of a Python int or an int64 tensor, values in [0, 2^32).

    Multipliers are < 2^31 so every product stays below 2^63: no signed overflow on any device.
    """
    for mult, shift in ((0x5BD1E995, 15), (0x27D4EB2D, 16), (0x165667B1, 15)):
        x = x ^ (x >> 17)
        x = (x * mult) & _MASK32
        x = x ^ (x >> shift)
    return x


def counter_uniforms(seed: int, epoch: torch.Tensor, tag: torch.Tensor, ident: torch.Tensor, view: int, n: int):
    """(B, n) float64 uniforms in (0, 1), a pure function of (seed, epoch, tag, ident, view, draw j)."""
    h = _mix32(_mix32(int(seed) & _MASK32) ^ int(view))  # host-side: the same for every row
    for part in (epoch, tag, ident):
        h = _mix32(h ^ (part & _MASK32))
    j = torch.arange(n, device=ident.device, dtype=torch.long)
    u = _mix32(_mix32(h[:, None] ^ ((j * 0x61C88647 + 0x2545F491) & _MASK32)[None]))  # (B, n)
    return (u.double() + 0.5) / 2.0**32


class GpuViewAugment(ViewAugment):
    """:class:`~selfsup.data.views.ViewAugment` with batched sampling and application on device tensors.

    Takes exactly ViewAugment's arguments (see there); ``apply`` on one image runs the batched path with B = 1.
    """

    # -- sampling ---------------------------------------------------------------------------------------------
    @property
    def num_draws(self) -> int:
        """Uniforms per row: ``Draw.NUM``, plus (quant_p > 0 only) quantization's coin, bin count, then its cut
        and value uniforms for the largest bin count m: 3 x (m − 1) + 3 x m. Column j's value does not depend on
        how many are drawn, so views without quantization draw exactly what they drew before it existed."""
        if self.quant_p <= 0:
            return Draw.NUM
        return Draw.quant_values(self.quant_bins[1]).stop

    def quant_uniforms(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Quantization's (cut (B, 3, m − 1), value (B, 3, m)) float32 uniforms from ``u`` (B, num_draws)."""
        m = self.quant_bins[1]
        cut = u[:, Draw.quant_cuts(m)].reshape(-1, QUANT_CHANNELS, m - 1)
        value = u[:, Draw.quant_values(m)].reshape(-1, QUANT_CHANNELS, m)
        return cut.float(), value.float()

    def sample_batch(self, u: torch.Tensor, heights: torch.Tensor, widths: torch.Tensor) -> torch.Tensor:
        """Parameters (B, NUM_PARAMS) from uniforms ``u`` (B, num_draws) laid out as :class:`Draw`, for sources of
        the given sizes (B,).

        Same distributions as :meth:`ViewAugment.sample` (``CROP_ATTEMPTS`` crop attempts then torchvision's
        central fallback, Python's round-half-even for the box sides).
        """
        B, dev = u.shape[0], u.device
        H, W = heights.to(dev, torch.float64), widths.to(dev, torch.float64)
        area = (H * W)[:, None]
        target = area * (self.scale[0] + (self.scale[1] - self.scale[0]) * u[:, Draw.CROP_AREA])  # (B, attempts)
        lr = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        aspect = torch.exp(lr[0] + (lr[1] - lr[0]) * u[:, Draw.CROP_ASPECT])
        w = torch.round(torch.sqrt(target * aspect))
        h = torch.round(torch.sqrt(target / aspect))
        ok = (w > 0) & (w <= W[:, None]) & (h > 0) & (h <= H[:, None])
        first = torch.argmax(ok.to(torch.uint8), dim=1, keepdim=True)  # first valid attempt
        any_ok = ok.any(dim=1)
        w, h = w.gather(1, first)[:, 0], h.gather(1, first)[:, 0]
        top = torch.floor(u[:, Draw.CROP_TOP] * (H - h + 1)).clamp(max=H - h)
        left = torch.floor(u[:, Draw.CROP_LEFT] * (W - w + 1)).clamp(max=W - w)
        # fallback: central crop with the aspect ratio clamped into range
        in_ratio = W / H
        fw = torch.where(
            in_ratio < self.ratio[0], W, torch.where(in_ratio > self.ratio[1], torch.round(H * self.ratio[1]), W)
        )
        fh = torch.where(in_ratio < self.ratio[0], torch.round(W / self.ratio[0]), H)
        w, h = torch.where(any_ok, w, fw), torch.where(any_ok, h, fh)
        top = torch.where(any_ok, top, torch.div(H - h, 2, rounding_mode="floor"))
        left = torch.where(any_ok, left, torch.div(W - w, 2, rounding_mode="floor"))

        p = torch.zeros(B, NUM_PARAMS, dtype=torch.float64, device=dev)
        p[:, Slot.CROP] = torch.stack([left / W, top / H, w / W, h / H], dim=1)
        p[:, Slot.FLIP] = (u[:, Draw.FLIP] < self.flip_p).double()
        jitter = u[:, Draw.JITTER] < self.jitter_p
        lo = lambda s: max(0.0, 1 - s)  # noqa: E731
        factors = (  # (slot, draw, range, identity: factors 1, hue shift 0)
            (Slot.BRIGHTNESS, Draw.BRIGHTNESS, (lo(self.brightness), 1 + self.brightness), 1.0),
            (Slot.CONTRAST, Draw.CONTRAST, (lo(self.contrast), 1 + self.contrast), 1.0),
            (Slot.SATURATION, Draw.SATURATION, (lo(self.saturation), 1 + self.saturation), 1.0),
            (Slot.HUE, Draw.HUE, (-self.hue, self.hue), 0.0),
        )
        for slot, draw, (f_lo, f_hi), identity in factors:
            p[:, slot] = torch.where(jitter, f_lo + (f_hi - f_lo) * u[:, draw], identity)
        p[:, Slot.JITTER_ORDER] = torch.where(
            jitter, torch.floor(u[:, Draw.JITTER_ORDER] * len(JITTER_ORDERS)).clamp(max=len(JITTER_ORDERS) - 1), 0.0
        )
        p[:, Slot.GRAYSCALE] = (u[:, Draw.GRAYSCALE] < self.grayscale_p).double()
        blur = u[:, Draw.BLUR] < self.blur_p
        sigma_lo, sigma_hi = self.blur_sigma
        p[:, Slot.BLUR_SIGMA] = torch.where(blur, sigma_lo + (sigma_hi - sigma_lo) * u[:, Draw.BLUR_SIGMA], 0.0)
        p[:, Slot.SOLARIZE] = (u[:, Draw.SOLARIZE] < self.solarize_p).double()
        if self.rotation > 0:
            p[:, Slot.ROTATION] = -self.rotation + 2 * self.rotation * u[:, Draw.ROTATION]
        if self.quant_p > 0:
            bins_lo, bins_hi = self.quant_bins
            quant = u[:, Draw.QUANT] < self.quant_p
            bins = (bins_lo + torch.floor(u[:, Draw.QUANT_BINS] * (bins_hi - bins_lo + 1))).clamp(max=bins_hi)
            p[:, Slot.QUANT] = quant.double()
            p[:, Slot.QUANT_BINS] = torch.where(quant, bins, 0.0)
        return p.float()  # the CPU path stores float32 too

    # -- application ------------------------------------------------------------------------------------------
    def apply(self, img: torch.Tensor, p: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """One image (3, H, W) → normalised view (3, size, size), through the batched path; quantization draws
        from ``generator`` exactly as :meth:`ViewAugment.apply` does."""
        noise = None
        if p[Slot.QUANT] > 0:
            bins = int(p[Slot.QUANT_BINS])
            cut = torch.rand(QUANT_CHANNELS, bins - 1, generator=generator)
            value = torch.rand(QUANT_CHANNELS, bins, generator=generator)
            noise = cut[None].to(img.device), value[None].to(img.device)
        return self.apply_batch(img[None], p[None], noise)[0]

    def apply_batch(self, images, params: torch.Tensor, quant_uniforms=None) -> torch.Tensor:
        """Apply per-row parameters ``params`` (B, NUM_PARAMS) to a batch; returns (B, 3, size, size) float32.

        Args:
            images: uint8 or float (in [0, 1]) tensor (B, 3, H, W), or a list of (3, H_i, W_i) tensors of one
                dtype (mixed sizes are padded; each row's crop box is a fraction of its own size).
            params: parameter rows in ``selfsup.data.views``' layout, e.g. from :meth:`sample_batch`.
            quant_uniforms: (cut (B, 3, m − 1), value (B, 3, m)) uniforms for the rows that quantise
                (``params[:, Slot.QUANT]``), m ≥ their bin counts, e.g. from :meth:`quant_uniforms`; None: drawn
                from torch's global generator.
        """
        x, sizes, quant = as_batch(images)  # (B, 3, Hmax, Wmax) float32, (B, 2) long, uint8 semantics
        with torch.autocast(x.device.type, enabled=False):  # exact arithmetic even inside a bf16 autocast region
            x = self._apply(x, sizes, quant, params)
            return self._quantize(x, params.to(x.device), quant_uniforms)

    def _quantize(self, x: torch.Tensor, p: torch.Tensor, noise) -> torch.Tensor:
        """Randomized Quantization of the rows whose ``QUANT`` slot is set, each with its own bin count."""
        rows = torch.nonzero(p[:, Slot.QUANT] > 0)[:, 0]
        if not rows.numel():
            return x
        bins = p[rows, Slot.QUANT_BINS].long()
        if noise is None:
            m = int(bins.max())
            noise = (
                torch.rand(len(rows), x.shape[1], m - 1, device=x.device),
                torch.rand(len(rows), x.shape[1], m, device=x.device),
            )
        else:
            cut, value = noise
            if cut.shape[0] != x.shape[0] or value.shape[-1] != cut.shape[-1] + 1 or int(bins.max()) > value.shape[-1]:
                raise ValueError(
                    f"quant_uniforms: shapes {tuple(cut.shape)}, {tuple(value.shape)}; expected (B, 3, m - 1), "
                    f"(B, 3, m) with B = {x.shape[0]} and m >= {int(bins.max())} (the largest bin count)"
                )
            noise = cut[rows].to(x.device), value[rows].to(x.device)
        x.index_copy_(0, rows, quantize_with_uniforms(x[rows], noise[0], noise[1], bins))
        return x

    def _apply(self, x: torch.Tensor, sizes: torch.Tensor, quant: bool, params: torch.Tensor) -> torch.Tensor:
        B, dev = x.shape[0], x.device
        if params.shape != (B, NUM_PARAMS):
            raise ValueError(f"params: expected shape ({B}, {NUM_PARAMS}), got {tuple(params.shape)}")
        p = params.to(dev, torch.float32)
        bound = 255.0 if quant else 1.0
        floor = torch.floor if quant else (lambda t: t)

        x = self._resized_crop(x, sizes, p, quant)  # (B, 3, S, S)
        # colour jitter: four steps; at each, every row runs the op its own order names (rows at the op's identity
        # value skip it, as ViewAugment.apply does), so each row is touched by at most four ops in all
        order = _ORDERS.to(dev)[p[:, Slot.JITTER_ORDER].long()]  # (B, 4)
        ident = (1.0, 1.0, 1.0, 0.0)
        for step in range(4):
            for o in range(4):
                rows = torch.nonzero((order[:, step] == o) & (p[:, Slot.BRIGHTNESS + o] != ident[o]))[:, 0]
                if rows.numel():
                    f = p[rows, Slot.BRIGHTNESS + o]
                    xr = (
                        _adjust_hue(x[rows], f, quant)
                        if o == 3
                        else _BLENDS[o](x[rows], f.view(-1, 1, 1, 1), bound, floor)
                    )
                    x.index_copy_(0, rows, xr)
        gray = p[:, Slot.GRAYSCALE] > 0
        if bool(gray.any()):
            x = torch.where(gray.view(B, 1, 1, 1), floor(_gray(x)).expand_as(x), x)
        rows = torch.nonzero(p[:, Slot.BLUR_SIGMA] > 0)[:, 0]
        if rows.numel():
            if self.blur_kernel // 2 >= self.size:
                raise ValueError(f"views.size={self.size}: too small for a {self.blur_kernel}-pixel blur kernel")
            blurred = _gaussian_blur(x[rows], p[rows, 11], self.blur_kernel, torch.float64 if quant else torch.float32)
            x.index_copy_(0, rows, torch.round(blurred) if quant else blurred)
        sol = (p[:, Slot.SOLARIZE] > 0).view(B, 1, 1, 1)
        x = torch.where(sol & (x >= (128.0 if quant else 128.0 / 255.0)), bound - x, x)
        rows = torch.nonzero(p[:, Slot.ROTATION] != 0)[:, 0]
        if rows.numel():
            x.index_copy_(0, rows, _rotate(x[rows], p[rows, 13]))
        mean = torch.tensor(self.mean, device=dev, dtype=torch.float32).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=dev, dtype=torch.float32).view(1, -1, 1, 1)
        if mean.shape[1] not in (1, 3):
            raise ValueError(f"views.mean={self.mean}: expected 1 or 3 channel statistics")
        return (x / bound - mean) / std

    def _resized_crop(self, x: torch.Tensor, sizes: torch.Tensor, p: torch.Tensor, quant: bool) -> torch.Tensor:
        """Crop box → size x size with antialiased bilinear weights, flipping via Wx; (B, 3, S, S)."""
        H, W = sizes[:, 0].double(), sizes[:, 1].double()
        # integer box exactly as ViewAugment.apply rounds it (Python round = half-even = torch.round)
        left, top = torch.round(p[:, Slot.CROP_X0].double() * W), torch.round(p[:, Slot.CROP_Y0].double() * H)
        w, h = torch.round(p[:, Slot.CROP_W].double() * W), torch.round(p[:, Slot.CROP_H].double() * H)
        if bool(((w < 1) | (h < 1) | (left + w > W) | (top + h > H)).any()):
            raise ValueError("params[:, 0:4]: crop box outside the image or empty (expected fractions in [0, 1])")
        wy = _aa_weights(top, h, self.size, x.shape[2])  # (B, S, Hmax)
        wx = _aa_weights(left, w, self.size, x.shape[3])  # (B, S, Wmax)
        wx = torch.where((p[:, Slot.FLIP] > 0).view(-1, 1, 1), wx.flip(1), wx)
        if quant:  # ATen's uint8 kernel: int16 fixed-point weights, horizontal pass rounded, then vertical
            wx, wy = _fixed_point(wx), _fixed_point(wy)
        # uint8: float64 keeps the integer sums exact (fp32 holds 24 bits; TF32 would lose more on a GPU)
        dt = torch.float64 if quant else torch.float32
        x = torch.matmul(x.to(dt), wx.to(dt).transpose(1, 2).unsqueeze(1))  # (B, 3, Hmax, S)
        if quant:  # floor(. + 0.5) = ATen's (acc + 2^(p-1)) >> p; an identity pass (no resize) stays exact
            x = torch.floor(x + 0.5).clamp_(0, 255)
        x = torch.matmul(wy.to(dt).unsqueeze(1), x)  # (B, 3, S, S)
        return (torch.floor(x + 0.5).clamp_(0, 255) if quant else x.clamp_(0, 1)).float()


def _fixed_point(w: torch.Tensor) -> torch.Tensor:
    """Weights (B, S, N) rounded as ATen's uint8 resampling does: to int16 / 2^p, p the largest precision (< 22)
    keeping the table's largest weight below 2^15 (``compute_index_ranges_int16_weights``); values exact in fp32."""
    wmax = w.amax(dim=(1, 2))  # (B,)
    prec = torch.arange(22, device=w.device, dtype=torch.float64)
    stop = torch.floor(0.5 + wmax[:, None] * torch.exp2(prec + 1)) >= 2**15  # (B, 22)
    p = torch.where(stop.any(1), torch.argmax(stop.to(torch.uint8), 1).double(), 22.0).view(-1, 1, 1)
    return torch.floor(w * torch.exp2(p) + 0.5) / torch.exp2(p)


def _aa_weights(start: torch.Tensor, length: torch.Tensor, out: int, full: int) -> torch.Tensor:
    """(B, out, full) float64 resampling rows: ATen's antialiased bilinear (``_compute_indices_weights_aa``)
    from the source interval [start, start + length) to ``out`` samples, zero outside the interval."""
    scale = (length / out)[:, None, None]  # (B, 1, 1)
    support = torch.clamp(scale, min=1.0)  # triangle half-width in source pixels
    center = scale * (torch.arange(out, device=start.device, dtype=torch.float64)[None, :, None] + 0.5)
    j = torch.arange(full, device=start.device, dtype=torch.float64)[None, None, :] - start[:, None, None]
    inside = (j >= 0) & (j < length[:, None, None])
    # ATen's window: [trunc(center - support + 0.5), trunc(center + support + 0.5)) — implied by the filter
    wgt = torch.clamp(1 - torch.abs((j - center + 0.5) * (1.0 / support)), min=0) * inside
    xmin = torch.clamp(torch.floor(center - support + 0.5), min=0)
    xmax = torch.minimum(torch.floor(center + support + 0.5), length[:, None, None])
    wgt = wgt * ((j >= xmin) & (j < xmax))
    return wgt / wgt.sum(dim=2, keepdim=True)


def as_batch(images) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """(float32 (B, 3, Hmax, Wmax) in [0, 255] for uint8 or [0, 1] for float input, sizes (B, 2), is_uint8).

    Refuses (ValueError) anything but 3-channel uint8/float images; a list of differently sized images is padded.
    """
    if isinstance(images, torch.Tensor):
        if images.ndim != 4:
            raise ValueError(
                f"images: expected a (B, 3, H, W) tensor or a list of (3, H, W), got {tuple(images.shape)}"
            )
        rows = [images]
    elif isinstance(images, Sequence) and len(images) > 0 and all(isinstance(t, torch.Tensor) for t in images):
        if any(t.ndim != 3 for t in images):
            raise ValueError(
                f"images: expected (3, H, W) list entries, got shapes {[tuple(t.shape) for t in images][:4]}"
            )
        rows = list(images)
    else:
        raise ValueError(
            f"images: expected a tensor (B, 3, H, W) or a non-empty list of (3, H, W) tensors, got {type(images)}"
        )
    dtypes = {t.dtype for t in rows}
    if len(dtypes) != 1:
        raise ValueError(f"images: mixed dtypes {sorted(map(str, dtypes))} in one batch; expected one")
    dtype = dtypes.pop()
    if dtype != torch.uint8 and not dtype.is_floating_point:
        raise ValueError(f"images.dtype={dtype}: expected uint8 (0..255) or float (0..1)")
    channels = {t.shape[-3] for t in rows}
    if channels != {3}:
        raise ValueError(
            f"images: {sorted(channels)} channels; the view pipeline expects RGB (3 channels) — convert grayscale "
            "with x.expand(..., 3, H, W) (as the digits datamodule does) before augmenting"
        )
    if any(t.shape[-1] < 1 or t.shape[-2] < 1 for t in rows):
        raise ValueError("images: an image with zero height or width")
    quant = dtype == torch.uint8
    if isinstance(images, torch.Tensor):
        B, _, H, W = images.shape
        sizes = torch.tensor([[H, W]], device=images.device).expand(B, 2)
        return images.float(), sizes, quant
    Hm, Wm = max(t.shape[-2] for t in rows), max(t.shape[-1] for t in rows)
    x = rows[0].new_zeros((len(rows), 3, Hm, Wm), dtype=torch.float32)
    for i, t in enumerate(rows):  # only for mixed-size lists (ImageFolder batches)
        x[i, :, : t.shape[-2], : t.shape[-1]] = t
    sizes = torch.tensor([t.shape[-2:] for t in rows], device=x.device)
    return x, sizes, quant


# -- colour ops on float images in [0, bound]; ``floor`` is the uint8 truncation (identity for float input) ------
def _gray(x: torch.Tensor) -> torch.Tensor:
    r, g, b = x.unbind(dim=1)
    return (r * 0.2989 + g * 0.587 + b * 0.114).unsqueeze(1)  # (B, 1, H, W), torchvision's weights and order


def _brightness(x, f, bound, floor):
    return floor((x * f).clamp_(0, bound))


def _contrast(x, f, bound, floor):
    mean = floor(_gray(x)).mean(dim=(1, 2, 3), keepdim=True)
    return floor((x * f + mean * (1 - f)).clamp_(0, bound))


def _saturation(x, f, bound, floor):
    return floor((x * f + floor(_gray(x)) * (1 - f)).clamp_(0, bound))


_BLENDS = (_brightness, _contrast, _saturation)


def rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) RGB in [0, 1] → HSV in [0, 1] (Pillow's formulas, as torchvision)."""
    r, g, b = x.unbind(dim=1)
    maxc, _ = x.max(dim=1)
    minc, _ = x.min(dim=1)
    eqc = maxc == minc
    crange = maxc - minc
    s = crange / torch.where(eqc, torch.ones_like(maxc), maxc)
    div = torch.where(eqc, torch.ones_like(crange), crange)
    rc, gc, bc = (maxc - r) / div, (maxc - g) / div, (maxc - b) / div
    h = torch.where(maxc == r, bc - gc, torch.where(maxc == g, 2.0 + rc - bc, 4.0 + gc - rc))
    h = torch.fmod(h * (1.0 / 6.0) + 1.0, 1.0)
    return torch.stack((h, s, maxc), dim=1)


def hsv_to_rgb(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) HSV in [0, 1] → RGB in [0, 1]."""
    h, s, v = x.unbind(dim=1)
    h6 = h * 6
    i = torch.floor(h6)
    f = h6 - i
    i = i.long().remainder(6)
    sxf, one_minus_s = s * f, 1.0 - s  # torchvision's operation order, for identical float rounding
    q = ((1.0 - sxf) * v).clamp(0, 1)
    t = ((sxf + one_minus_s) * v).clamp(0, 1)
    p = (one_minus_s * v).clamp(0, 1)
    vpqt = torch.stack((v, p, q, t), dim=1)  # (B, 4, H, W)
    select = torch.tensor([[0, 2, 1, 1, 3, 0], [3, 0, 0, 2, 1, 1], [1, 1, 3, 0, 0, 2]], device=x.device)
    return vpqt.gather(1, select[:, i].permute(1, 0, 2, 3))  # (B, 3, H, W)


def _adjust_hue(x: torch.Tensor, hue: torch.Tensor, quant: bool) -> torch.Tensor:
    hsv = rgb_to_hsv(x * (1.0 / 255) if quant else x)
    h = torch.remainder(hsv[:, 0] + hue.view(-1, 1, 1), 1.0)
    rgb = hsv_to_rgb(torch.stack((h, hsv[:, 1], hsv[:, 2]), dim=1))
    return torch.floor(rgb * (255 + 1.0 - 1e-3)) if quant else rgb  # torchvision's float → uint8 conversion


def _gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, k: int, dtype: torch.dtype) -> torch.Tensor:
    """Per-row sigma, odd kernel k, reflect padding, as two batched matmuls ``K @ x @ Kᵀ`` with K (n, S, S) the
    banded blur matrix (reflection folded in); square images."""
    n, c, S, _ = x.shape
    lim = (k - 1) / (2.0 * math.sqrt(2.0))
    t = torch.linspace(-lim, lim, steps=k, device=x.device, dtype=torch.float32)
    kern = torch.softmax(-(t[None] / sigma.view(-1, 1).float()).pow(2), dim=1)  # (n, k), torchvision's kernel
    src = torch.arange(S, device=x.device)[:, None] + torch.arange(k, device=x.device)[None] - k // 2  # (S, k)
    src = torch.where(src < 0, -src, torch.where(src >= S, 2 * (S - 1) - src, src))  # reflect (no edge repeat)
    K = torch.zeros(n, S, S, device=x.device, dtype=dtype)
    K.scatter_add_(2, src.expand(n, S, k), kern.to(dtype)[:, None, :].expand(n, S, k))
    return torch.matmul(torch.matmul(K.unsqueeze(1), x.to(dtype)), K.transpose(1, 2).unsqueeze(1)).float()


def _rotate(x: torch.Tensor, degrees: torch.Tensor) -> torch.Tensor:
    """torchvision's rotate (nearest, zero fill, about the centre, no expand) for square images, per row."""
    a = torch.deg2rad(degrees.float())
    cos, sin = torch.cos(a), torch.sin(a)
    zero = torch.zeros_like(a)
    theta = torch.stack((torch.stack((cos, -sin, zero), 1), torch.stack((sin, cos, zero), 1)), 1)  # (n, 2, 3)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="nearest", padding_mode="zeros", align_corners=False)


# -- multi-view ---------------------------------------------------------------------------------------------------
class GpuMultiViewTransform(MultiViewTransform):
    """:class:`~selfsup.data.views.MultiViewTransform` that augments whole batches on the images' device.

    Args:
        views: name → :class:`GpuViewAugment` (or plain ViewAugment, converted), in view order; views may have
            different sizes (multi-crop: 2 global + k local views).
        sampler: ``"counter"`` (batched, on the device) or ``"exact"`` (``ViewAugment.sample``'s CPU generators:
            the CPU pipeline's very parameters).
        on_device: ask the datamodule to ship raw uint8 images and augment after the batch transfer (the
            per-sample ``__call__`` still works for loaders that augment in workers).
        layout: :class:`~selfsup.data.views.MultiViewTransform`'s ``shared``, ``shared_chunks`` and
            ``global_views``, by keyword.
    """

    def __init__(
        self,
        views: Mapping[str, ViewAugment] | Sequence[ViewAugment],
        *,
        sampler: str = "counter",
        on_device: bool = True,
        **layout,
    ):
        self.sampler = checks.one_of("views.sampler", sampler, SAMPLERS)
        self.on_device = on_device
        super().__init__(views, **layout)

    @staticmethod
    def as_view(view: ViewAugment) -> GpuViewAugment:
        return as_gpu_view(view)

    @classmethod
    def from_transform(cls, t: MultiViewTransform, sampler: str = "counter") -> GpuMultiViewTransform:
        """The GPU version of a CPU views config (same views, sharing and chunks)."""
        if isinstance(t, GpuMultiViewTransform):
            return t
        shared = [n for n, s in zip(t.names, t.shared) if s] or None
        views = dict(zip(t.names, t.views))
        return cls(views, sampler=sampler, shared=shared, shared_chunks=t.shared_chunks, global_views=t.global_views)

    def sample(self, seed: int, keys: torch.Tensor, sizes: torch.Tensor) -> list[torch.Tensor]:
        """Parameters of every view: V x (B, NUM_PARAMS) for sample keys (B, 3) = (epoch, index, chunk) and source
        sizes (B, 2), on ``keys``' device."""
        return self.sample_with_uniforms(seed, keys, sizes)[0]

    def sample_with_uniforms(self, seed: int, keys: torch.Tensor, sizes: torch.Tensor):
        """(parameters V x (B, NUM_PARAMS), quantization uniforms V x ((B, 3, m − 1), (B, 3, m)) or None for a view
        with ``quant_p = 0``): :meth:`sample` plus the draws :meth:`GpuViewAugment.apply_batch` quantises with."""
        if keys.ndim != 2 or keys.shape[1] != 3:
            raise ValueError(f"keys: expected (B, 3) rows (epoch, index, chunk), got {tuple(keys.shape)}")
        keys = keys.long()
        epoch, index, chunk = keys.unbind(1)
        out, noise = [], []
        for v, (view, shared) in enumerate(zip(self.views, self.shared)):
            by_chunk = (chunk >= 0) if shared else torch.zeros_like(chunk, dtype=torch.bool)
            if self.sampler == "exact":
                rows, cuts, values = [], [], []
                m, c = view.quant_bins[1], QUANT_CHANNELS
                for e, i, ch, (hh, ww) in zip(epoch.tolist(), index.tolist(), chunk.tolist(), sizes.tolist()):
                    g = generator_for(*view_key(seed, e, i, ch, v, shared))  # = MultiViewTransform's generators
                    rows.append(ViewAugment.sample(view, g, hh, ww))
                    if view.quant_p > 0:  # ViewAugment.apply's next draws on the same generator, padded to m
                        bins = max(int(rows[-1][Slot.QUANT_BINS]), 1)
                        cut, value = torch.ones(c, m - 1), torch.ones(c, m)
                        if rows[-1][Slot.QUANT] > 0:
                            cut[:, : bins - 1] = torch.rand(c, bins - 1, generator=g)
                            value[:, :bins] = torch.rand(c, bins, generator=g)
                        cuts.append(cut)
                        values.append(value)
                out.append(torch.stack(rows).to(keys.device))
                noise.append((torch.stack(cuts).to(keys.device), torch.stack(values).to(keys.device)) if cuts else None)
            else:
                u = counter_uniforms(
                    seed, epoch, by_chunk.long(), torch.where(by_chunk, chunk, index), v, view.num_draws
                )
                out.append(view.sample_batch(u, sizes[:, 0], sizes[:, 1]))
                noise.append(view.quant_uniforms(u) if view.quant_p > 0 else None)
        return out, noise

    def batch(self, images, seed: int, keys: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """(views V x (B, 3, size_v, size_v), params V x (B, NUM_PARAMS)) for a batch of raw images.

        Args:
            images: uint8/float (B, 3, H, W) or a list of (3, H_i, W_i) (see :meth:`GpuViewAugment.apply_batch`).
            seed: the run's seed.
            keys: (B, 3) long rows (epoch, index, chunk) from ``GlobalBatchSampler``.
        """
        x, sizes, _ = as_batch(images)
        if keys.shape[0] != x.shape[0]:
            raise ValueError(f"keys: {keys.shape[0]} rows for {x.shape[0]} images")
        params, noise = self.sample_with_uniforms(seed, keys.to(x.device), sizes)
        if not isinstance(images, torch.Tensor):
            images = list(images)
        return [view.apply_batch(images, p, u) for view, p, u in zip(self.views, params, noise)], params

    def __call__(self, img: torch.Tensor, seed: int, epoch: int, index: int, chunk: int = -1):
        views, params = self.batch(img[None], seed, torch.tensor([[epoch, index, chunk]]))
        return [v[0] for v in views], [p[0].cpu() for p in params]


def as_gpu_view(view: ViewAugment) -> GpuViewAugment:
    """The same augmentation as a :class:`GpuViewAugment` (a copy of ``view``'s settings)."""
    if isinstance(view, GpuViewAugment):
        return view
    if not isinstance(view, ViewAugment):
        raise ValueError(f"views.views: expected ViewAugment entries, got {type(view).__name__}")
    if getattr(view, "rot90", "none") != "none":
        raise ValueError(
            f"views.rot90={view.rot90}: the device path does not rotate squares; use the CPU views "
            "(data.views_on_device=false)"
        )
    if getattr(view, "jigsaw", 0):
        raise ValueError(
            f"views.jigsaw={view.jigsaw}: the device path does not cut jigsaw tiles; use the CPU views "
            "(data.views_on_device=false)"
        )
    out = GpuViewAugment.__new__(GpuViewAugment)
    out.__dict__.update(view.__dict__)
    return out


def augment_batch(batch: dict, views: GpuMultiViewTransform, seed: int, images: torch.Tensor | None = None) -> dict:
    """A raw device batch ``{"image" | (images), "key", "label", "index"}`` → the training batch (docs/api.md).

    Args:
        batch: from ``selfsup.data.device_loader``: ``key`` (B, 3) = (epoch, index, chunk); ``image`` uint8
            (B, 3, H, W) or a list of (3, H_i, W_i), absent when the images already live on the device.
        views: the GPU views.
        seed: the run's seed.
        images: the whole training split (N, 3, H, W) on the device, indexed by ``batch["index"]`` when the batch
            carries no ``image``.
    """
    if "image" in batch:
        x = batch["image"]
    elif images is not None:
        x = images[batch["index"].to(images.device)]
    else:
        raise ValueError(f"batch: expected an 'image' entry or device-resident images, got keys {sorted(batch)}")
    out, params = views.batch(x, seed, batch["key"])
    return {"views": out, "params": params, "label": batch["label"], "index": batch["index"]}
