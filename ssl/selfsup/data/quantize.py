"""Randomized Quantization (Wu et al., "Randomized Quantization: A Generic Augmentation for Data Agnostic
Self-supervised Learning", ICCV 2023, arXiv:2212.08663; official code microsoft/random_quantize,
``randomized_quantization.py``, ``RandomizedQuantizationAugModule`` with its defaults ``spacing="random"``,
``collapse_to_val="inside_random"``).

For each image and channel c with values x over the H x W grid, lo = min x, hi = max x:

- n − 1 cut points c_1..c_{n−1} = lo + u_k (hi − lo), u_k ~ U[0, 1) i.i.d., sorted: bins
  [lo, c_(1)), [c_(1), c_(2)), ..., [c_(n−1), hi];
- a value falls into bin k = #{cuts ≤ x} (the official ``x >= left_end and x < right_end``);
- bin k gets one reproduction value r_k = left_k + v_k (right_k − left_k), v_k ~ U[0, 1) i.i.d. (``inside_random``),
  and every value of bin k becomes r_k.

So every channel keeps at most n distinct values, all inside [lo, hi]. The official code closes the last bin at
hi + 1e-6 (so that hi itself lies inside a half-open bin); here the last bin is [c_(n−1), hi] and its
reproduction value is drawn in [c_(n−1), hi], so outputs never leave the channel's range (a shift of ≤ 1e-6 in
the official code; results are clamped to [lo, hi] against float rounding).

Because lo, hi and the cuts follow any per-channel map x → a x + b with a > 0, the op commutes with per-channel
normalisation (same draws → same image up to float rounding); the view pipeline applies it last, on the
normalised image, as the official code does inside the model's forward.
"""

from __future__ import annotations

import torch

from selfsup import checks


def quantize_with_uniforms(
    x: torch.Tensor, cut_u: torch.Tensor, value_u: torch.Tensor, num_bins: torch.Tensor | int | None = None
) -> torch.Tensor:
    """The deterministic core: ``x`` (..., C, H, W) quantised with given uniforms.

    Args:
        x: float images (..., C, H, W).
        cut_u: (..., C, m − 1) uniforms in [0, 1) placing the cut points (m = the largest bin count).
        value_u: (..., C, m) uniforms in [0, 1) placing each bin's reproduction value (bin k uses entry k).
        num_bins: bins per image (shape ``x.shape[:-3]``, or an int for all): only the first ``num_bins − 1`` cut
            uniforms of an image are used (the rest are padding); None: all m − 1.
    """
    *lead, C, H, W = x.shape
    m1 = cut_u.shape[-1]
    if cut_u.shape != (*lead, C, m1) or value_u.shape != (*lead, C, m1 + 1):
        raise ValueError(
            f"randomized_quantization: uniforms {tuple(cut_u.shape)}, {tuple(value_u.shape)} do not fit x "
            f"{tuple(x.shape)}; expected (..., C, m - 1) and (..., C, m)"
        )
    flat = x.reshape(-1, C, H * W)  # (N, C, HW)
    lo = flat.amin(dim=2, keepdim=True)  # (N, C, 1)
    hi = flat.amax(dim=2, keepdim=True)
    N = flat.shape[0]
    cuts = lo + cut_u.reshape(N, C, m1).to(x.dtype) * (hi - lo)  # (N, C, m-1)
    if num_bins is not None:
        bins = torch.as_tensor(num_bins, device=x.device).expand(lead).reshape(-1, 1, 1)  # (N, 1, 1)
        valid = torch.arange(m1, device=x.device).view(1, 1, -1) < bins - 1
        cuts = torch.where(valid, cuts, torch.inf)  # padding cuts never count and sort to the end
    cuts = cuts.sort(dim=2).values
    k = torch.searchsorted(cuts.contiguous(), flat.contiguous(), right=True)  # (N, C, HW): #{cuts <= x}
    left = torch.cat([lo, cuts], dim=2)  # (N, C, m): bin k = [left_k, right_k]
    right = torch.minimum(torch.cat([cuts, hi], dim=2), hi)  # padded (inf) cuts: the last bin ends at hi
    value = left + value_u.reshape(N, C, m1 + 1).to(x.dtype) * (right - left)  # (N, C, m) reproduction values
    out = value.gather(2, k).clamp_(min=lo, max=hi)
    return out.reshape(x.shape)


def randomized_quantization(x: torch.Tensor, num_bins: int = 8, generator: torch.Generator | None = None):
    """Randomized Quantization of float images ``x`` (..., C, H, W): per image and channel, ``num_bins − 1`` cut
    points uniform in [min, max] of that channel, every value replaced by its bin's one value drawn uniformly inside
    the bin (module docstring; microsoft/random_quantize ``inside_random``, whose README uses 8 bins for images).

    Draws ``torch.rand(..., C, num_bins − 1)`` (cuts), then ``torch.rand(..., C, num_bins)`` (values) from
    ``generator`` (the global generator when None), on ``x``'s device — the official code's order.
    """
    checks.integer("num_bins", num_bins, minimum=1)
    if x.ndim < 3 or not x.dtype.is_floating_point:
        raise ValueError(f"x: expected float images (..., C, H, W), got {x.dtype} {tuple(x.shape)}")
    lead = x.shape[:-2]  # (..., C)
    cut_u = torch.rand(*lead, num_bins - 1, generator=generator, device=x.device)
    value_u = torch.rand(*lead, num_bins, generator=generator, device=x.device)
    return quantize_with_uniforms(x, cut_u, value_u)
