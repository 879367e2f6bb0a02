"""Mask generators for masked and predictive methods: which patches of a token grid a view hides (docs/masks.md).

A generator draws ONE sample's masks on a ``height x width`` patch grid from the ``torch.Generator`` it is given and
from nothing else; the framework keys that generator per sample and view (``generator_for(seed, epoch, 3, index,
view)``), so a sample's masks are the same whatever the batch, worker or process it lands in, and on resume. Every
tensor is ``torch.bool`` over the ``L = height * width`` positions in row-major order.

=================  =========  ================================================================================
generator          apply      output
=================  =========  ================================================================================
``RandomMask``     ``drop``   ``{"mask": (L,)}``, True = removed (MAE)
``BlockMask``      ``token``  ``{"mask": (L,)}``, True = replaced by the mask token (BEiT, data2vec, iBOT)
``MultiBlockMask`` ``drop``   ``{"context": (L,), "targets": (num_targets, L)}`` (I-JEPA)
``GroupMask``      ``token``  ``{"mask": (L,)}``, True = replaced by the mask token (SiT / GMML)
=================  =========  ================================================================================

``apply`` says how the model uses the mask: ``"drop"``, the encoder sees only the kept patches; ``"token"``, the
masked patches are replaced by a learned mask token. ``check_grid`` refuses, at start and in one line, the grids on
which the settings cannot be met (where the official code would loop forever or silently mask nothing).
"""

from __future__ import annotations

import abc
import math
from collections.abc import Sequence

import numpy as np
import torch

from selfsup import checks

__all__ = ["MaskGenerator", "RandomMask", "BlockMask", "MultiBlockMask", "GroupMask"]


class _Uniforms:
    """U[0, 1) float64 numbers drawn from ``g`` in chunks (one ``torch.rand`` call per 64 numbers, not per number)."""

    def __init__(self, g: torch.Generator, chunk: int = 64):
        self.g, self.chunk, self.buffer, self.i = g, chunk, [], 0

    def __call__(self) -> float:
        if self.i == len(self.buffer):
            self.buffer, self.i = torch.rand(self.chunk, generator=self.g, dtype=torch.float64).tolist(), 0
        self.i += 1
        return self.buffer[self.i - 1]

    def uniform(self, lo: float, hi: float) -> float:
        return lo + (hi - lo) * self()

    def integer(self, lo: int, hi: int) -> int:
        """An integer in [lo, hi], both included."""
        return lo + min(int(self() * (hi - lo + 1)), hi - lo)


def _flag(key: str, value) -> bool:
    if isinstance(value, bool):
        return value
    raise ValueError(f"{key}={value!r}: expected true or false")


class MaskGenerator(abc.ABC):
    """One sample's masks on a token grid (the contract the module is written against; docs/masks.md).

    Attributes:
        apply: ``"drop"`` (the encoder sees only the kept patches: MAE, I-JEPA) or ``"token"`` (masked patches are
            replaced by a learned mask token: BEiT, data2vec, iBOT, GMML).
        views: how many leading views of a sample get a mask (>= 1).
    """

    apply: str

    def __init__(self, views: int = 1):
        self.views = checks.integer("mask.views", views, minimum=1)

    @abc.abstractmethod
    def __call__(self, g: torch.Generator, height: int, width: int) -> dict[str, torch.Tensor]:
        """This sample's masks on a ``height x width`` grid, drawn from ``g`` only (bool tensors, row-major)."""

    def check_grid(self, height: int, width: int, key: str) -> None:
        """Raise one ``ValueError`` line naming ``key`` when the settings cannot be met on this grid."""
        if not (isinstance(height, int) and isinstance(width, int) and height >= 1 and width >= 1):
            raise ValueError(f"{key}: a {height}x{width} token grid; expected at least 1x1 patches")

    def _refuse(self, key: str, height: int, width: int, why: str):
        raise ValueError(f"{key}: on a {height}x{width} token grid {why}")

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({args})"


class RandomMask(MaskGenerator):
    """MAE's per-sample random masking: exactly ``int(L * (1 - ratio))`` patches kept, uniformly at random.

    He et al., "Masked Autoencoders Are Scalable Vision Learners", arXiv:2111.06377; follows facebookresearch/mae
    ``models_mae.py``, ``MaskedAutoencoderViT.random_masking``: ``len_keep = int(L * (1 - mask_ratio))``, uniform
    noise per patch, argsort, the ``len_keep`` lowest-noise patches are kept (the noise comes from ``g`` instead of
    the global RNG).

    Args:
        ratio: the fraction of patches removed, in (0, 1) (MAE: 0.75).
        views: how many leading views of a sample are masked.

    Returns ``{"mask": (L,) bool}``, True = removed.
    """

    apply = "drop"

    def __init__(self, ratio: float = 0.75, views: int = 1):
        super().__init__(views)
        self.ratio = checks.number("mask.ratio", ratio, above=0, below=1)

    def kept(self, height: int, width: int) -> int:
        return int(height * width * (1 - self.ratio))

    def __call__(self, g: torch.Generator, height: int, width: int) -> dict[str, torch.Tensor]:
        L = height * width
        noise = torch.rand(L, generator=g)  # (L,): the lowest len_keep are kept
        keep = torch.argsort(noise)[: self.kept(height, width)]
        mask = torch.ones(L, dtype=torch.bool)
        mask[keep] = False
        return {"mask": mask}

    def check_grid(self, height: int, width: int, key: str) -> None:
        super().check_grid(height, width, key)
        kept, L = self.kept(height, width), height * width
        if kept == 0 or kept == L:
            what = "keeps no patch" if kept == 0 else "masks no patch"
            self._refuse(key, height, width, f"mask.ratio={self.ratio} {what} (int({L} * (1 - ratio)) = {kept} kept)")


class BlockMask(MaskGenerator):
    """BEiT's block-wise masking: rectangles of random area and aspect ratio until a patch budget is spent.

    Bao et al., "BEiT: BERT Pre-Training of Image Transformers", arXiv:2106.08254; follows microsoft/unilm
    ``beit/masking_generator.py``, ``MaskingGenerator`` (identical in facebookresearch/dinov2
    ``dinov2/data/masking.py``, ``MaskingGenerator``). The budget is ``int(L * r)`` patches; each block takes up to
    10 attempts: area ~ U(min_patches, remaining budget), log-aspect ~ U(log min_aspect, log max_aspect),
    ``h = round(sqrt(area * aspect))``, ``w = round(sqrt(area / aspect))``; a block with ``h < height`` and
    ``w < width`` is placed uniformly (top in [0, height - h], both ends included) and kept when it adds between 1
    and the remaining budget new patches. The sample stops when the budget is spent or 10 attempts add nothing, so
    at most ``int(L * r)`` patches are masked (often a few less). The per-block maximum is the remaining budget:
    BEiT's default (``max_mask_patches_per_block=None``) and equal to dinov2's ``0.5 * L`` and data2vec's 196
    whenever the budget is at most that.

    The per-sample ratio ``r`` and ``probability`` follow dinov2 ``dinov2/data/collate.py``,
    ``collate_data_and_cast``: a sample is masked with probability ``probability`` (else its mask is all False)
    and its ratio is drawn from ``ratio = [min, max]``. dinov2 stratifies over the batch (``int(B * p)`` masked
    samples, one ratio in each of ``int(B * p)`` equal slices of [min, max], shuffled); we draw both per sample, so
    the per-sample distribution is the same, the batch's spread is not, and no sample depends on its batch.

    Args:
        ratio: the fraction of patches to mask, in (0, 1), or ``[min, max]`` drawn uniformly per sample (BEiT: 0.4,
            75 of 196 patches in its code; iBOT/dinov2: ``[0.1, 0.5]``).
        min_patches: the smallest block area drawn (BEiT's ``min_num_patches``; BEiT and data2vec pass 16).
        min_aspect: the smallest block aspect ratio h / w.
        max_aspect: the largest (None: ``1 / min_aspect``).
        probability: the chance a sample is masked at all, in (0, 1] (dinov2: 0.5).
        views: how many leading views of a sample are masked.

    Returns ``{"mask": (L,) bool}``, True = replaced by the mask token.
    """

    apply = "token"

    def __init__(
        self,
        ratio: float | Sequence[float] = 0.4,
        min_patches: int = 4,
        min_aspect: float = 0.3,
        max_aspect: float | None = None,
        probability: float = 1.0,
        views: int = 1,
    ):
        super().__init__(views)
        self.ratio = checks.interval("mask.ratio", ratio, above=0, below=1)
        self.min_patches = checks.integer("mask.min_patches", min_patches, minimum=1)
        self.min_aspect = checks.number("mask.min_aspect", min_aspect, above=0)
        self.max_aspect = checks.number("mask.max_aspect", max_aspect, minimum=self.min_aspect, allow_none=True)
        self.probability = checks.number("mask.probability", probability, above=0, maximum=1)
        hi = self.max_aspect if self.max_aspect is not None else 1 / self.min_aspect
        if hi < self.min_aspect:
            raise ValueError(f"mask.min_aspect={min_aspect!r}: expected <= 1 when mask.max_aspect is null")
        self._log_aspect = (math.log(self.min_aspect), math.log(hi))

    def __call__(self, g: torch.Generator, height: int, width: int) -> dict[str, torch.Tensor]:
        u = _Uniforms(g)
        mask = np.zeros((height, width), dtype=bool)
        if self.probability == 1 or u() < self.probability:
            lo, hi = self.ratio
            budget = int(height * width * (u.uniform(lo, hi) if hi > lo else lo))
            count = 0
            while count < budget:
                added = self._block(u, mask, budget - count)
                if added == 0:
                    break
                count += added
        return {"mask": torch.from_numpy(mask.reshape(-1))}

    def _block(self, u: _Uniforms, mask: np.ndarray, budget: int) -> int:
        """Place one block adding 1..budget new patches (10 attempts, as MaskingGenerator._mask); how many it added."""
        height, width = mask.shape
        for _ in range(10):
            area = u.uniform(self.min_patches, budget)
            aspect = math.exp(u.uniform(*self._log_aspect))
            h, w = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
            if w < width and h < height:
                top, left = u.integer(0, height - h), u.integer(0, width - w)
                block = mask[top : top + h, left : left + w]
                added = h * w - int(block.sum())
                if 0 < added <= budget:
                    block[...] = True
                    return added
        return 0

    def check_grid(self, height: int, width: int, key: str) -> None:
        super().check_grid(height, width, key)
        budget = int(height * width * self.ratio[1])
        if height < 2 or width < 2:
            self._refuse(key, height, width, "no block fits (BEiT's blocks need h < height and w < width)")
        if budget == 0:
            self._refuse(key, height, width, f"mask.ratio={list(self.ratio)} masks no patch")
        if self.min_patches > budget:
            why = f"mask.min_patches={self.min_patches} exceeds the {budget} patches mask.ratio={self.ratio[1]} masks"
            self._refuse(key, height, width, why)


class MultiBlockMask(MaskGenerator):
    """I-JEPA's multi-block masks: one large context block and ``num_targets`` target blocks to predict.

    Assran et al., "Self-Supervised Learning from Images with a Joint-Embedding Predictive Architecture",
    arXiv:2301.08243; follows facebookresearch/ijepa ``src/masks/multiblock.py``, ``MaskCollator``, with the
    settings of ``configs/in1k_vith14_ep300.yaml`` as defaults. Per block size (``_sample_block_size``):
    scale s ~ U(scale), aspect a ~ U(aspect_ratio) (the context uses a = 1), ``K = int(L * s)``,
    ``h = round(sqrt(K * a))``, ``w = round(sqrt(K / a))``. Per block (``_sample_block_mask``): a uniform top-left
    corner. Each target must hold more than ``min_keep`` patches; with ``allow_overlap=False`` the context loses the
    target patches and is redrawn until it keeps more than ``min_keep``: after every 20 failures the last remaining
    target stops constraining it (the official relaxation), so a rare context may overlap the last targets.

    ``official=True`` reproduces two quirks of the official code (facebookresearch/ijepa PR #40): one U(0, 1) draw
    sets both the scale and the aspect ratio (large blocks are always tall), and ``top = randint(0, height - h)``
    excludes its upper end (with h clamped to ``height - 1``), so no block ever covers the last row or column.
    ``official=False`` is the paper's sampler: independent scale and aspect draws, h clamped to ``height``, every
    position in [0, height - h].

    Deliberate differences (docs/masks.md): the official collator draws ONE target size and ONE context size per
    batch (from a seed shared by the workers, facebookresearch/ijepa issue #38) and the positions from the global
    RNG, then truncates every sample's index lists to the batch's shortest; we draw the sizes per sample, everything
    from ``g``, and keep every sample's whole blocks (the model pads the variable counts with an attention mask), so
    a sample's masks do not depend on which batch or process it lands in. One context block (``num_enc_masks=1``).

    Args:
        context_scale: ``[min, max]`` fraction of the grid for the context block (``enc_mask_scale``).
        target_scale: ``[min, max]`` fraction of the grid per target block (``pred_mask_scale``).
        aspect_ratio: ``[min, max]`` aspect ratio h / w of the targets.
        num_targets: target blocks per sample (``num_pred_masks``).
        min_keep: every block keeps more than this many patches.
        allow_overlap: whether the context may include target patches.
        official: reproduce the official sampler's quirks (above).
        views: how many leading views of a sample are masked.

    Returns ``{"context": (L,) bool, "targets": (num_targets, L) bool}``: True = in the encoder's context / in
    target block k.
    """

    apply = "drop"
    TRIES = 20  # context placements per relaxation step (the official ``og_timeout``)

    def __init__(
        self,
        context_scale: Sequence[float] = (0.85, 1.0),
        target_scale: Sequence[float] = (0.15, 0.2),
        aspect_ratio: Sequence[float] = (0.75, 1.5),
        num_targets: int = 4,
        min_keep: int = 10,
        allow_overlap: bool = False,
        official: bool = True,
        views: int = 1,
    ):
        super().__init__(views)
        self.context_scale = checks.interval("mask.context_scale", context_scale, above=0, maximum=1, scalar=False)
        self.target_scale = checks.interval("mask.target_scale", target_scale, above=0, maximum=1, scalar=False)
        self.aspect_ratio = checks.interval("mask.aspect_ratio", aspect_ratio, above=0, scalar=False)
        self.num_targets = checks.integer("mask.num_targets", num_targets, minimum=1)
        self.min_keep = checks.integer("mask.min_keep", min_keep, minimum=0)
        self.allow_overlap = _flag("mask.allow_overlap", allow_overlap)
        self.official = _flag("mask.official", official)

    def _size(self, s: float, a: float, height: int, width: int) -> tuple[int, int]:
        """A block's (h, w) for scale s and aspect a (``_sample_block_size`` after its draws)."""
        k = int(height * width * s)
        h, w = round(math.sqrt(k * a)), round(math.sqrt(k / a))
        cut = 1 if self.official else 0  # official: h < height, so that randint(0, height - h) has a value
        return min(h, height - cut), min(w, width - cut)

    def _draw_size(self, u: _Uniforms, scale, aspect, height: int, width: int) -> tuple[int, int]:
        r = u()
        r2 = r if self.official else u()  # official: one draw sets both
        return self._size(scale[0] + r * (scale[1] - scale[0]), aspect[0] + r2 * (aspect[1] - aspect[0]), height, width)

    def _draw_block(self, u: _Uniforms, size: tuple[int, int], height: int, width: int) -> np.ndarray:
        h, w = size
        cut = 1 if self.official else 0  # official: randint excludes height - h
        top, left = u.integer(0, height - h - cut), u.integer(0, width - w - cut)
        block = np.zeros((height, width), dtype=bool)
        block[top : top + h, left : left + w] = True
        return block

    def __call__(self, g: torch.Generator, height: int, width: int) -> dict[str, torch.Tensor]:
        u = _Uniforms(g)
        target_size = self._draw_size(u, self.target_scale, self.aspect_ratio, height, width)
        context_size = self._draw_size(u, self.context_scale, (1.0, 1.0), height, width)
        for size in (target_size, context_size):
            if size[0] * size[1] <= self.min_keep:  # the official sampler would loop forever; check_grid refuses it
                self.check_grid(height, width, "mask")
        targets = np.stack([self._draw_block(u, target_size, height, width) for _ in range(self.num_targets)])
        excluded = 0 if self.allow_overlap else self.num_targets  # targets[:excluded] constrain the context
        failures = 0
        while True:
            context = self._draw_block(u, context_size, height, width)
            if excluded:
                context &= ~targets[:excluded].any(0)
            if int(context.sum()) > self.min_keep:
                break
            failures += 1
            if failures % self.TRIES == 0:
                excluded -= 1  # the official relaxation: the last constraining target no longer counts
        return {
            "context": torch.from_numpy(context.reshape(-1)),
            "targets": torch.from_numpy(targets.reshape(self.num_targets, -1)),
        }

    def block_sizes(self, scale, aspect, height: int, width: int) -> set[tuple[int, int]]:
        """Every (h, w) the sampler can draw for these ranges on this grid.

        (h, w) is piecewise constant in the draws, changing only where ``L * s`` crosses an integer k or
        ``k * a`` (for h) or ``k / a`` (for w) crosses j + 1/2; the sizes at those points and between them are all.
        """
        L = height * width

        def cuts(lo: float, hi: float, points) -> list[float]:
            inner = sorted({lo, *(p for p in points if lo < p < hi)})
            return inner + [(a + b) / 2 for a, b in zip(inner, inner[1:] + [hi])] if hi > lo else [lo]

        def aspect_points(k: int) -> list[float]:
            if k == 0:
                return []
            j_max = int(math.sqrt(k * max(aspect[1], 1 / aspect[0]))) + 2
            return [p for j in range(j_max) for p in ((j + 0.5) ** 2 / k, k / (j + 0.5) ** 2)]

        k_range = range(int(L * scale[0]), int(L * scale[1]) + 2)
        sizes = set()
        if self.official:  # s and a move together with the one draw r in [0, 1)
            ds, da = scale[1] - scale[0], aspect[1] - aspect[0]
            at_k = [(k / L - scale[0]) / ds for k in k_range] if ds > 0 else []
            at_a = [(p - aspect[0]) / da for k in k_range for p in aspect_points(k)] if da > 0 else []
            for r in cuts(0.0, 1.0, at_k + at_a):
                sizes.add(self._size(scale[0] + r * ds, aspect[0] + r * da, height, width))
        else:  # independent draws
            for s in cuts(scale[0], scale[1], [k / L for k in k_range]):
                for a in cuts(aspect[0], aspect[1], aspect_points(int(L * s))):
                    sizes.add(self._size(s, a, height, width))
        return sizes

    def check_grid(self, height: int, width: int, key: str) -> None:
        super().check_grid(height, width, key)
        if self.official and (height < 2 or width < 2):
            self._refuse(key, height, width, "official=true places no block (its blocks need h < height)")
        blocks = (
            ("target", "mask.target_scale", self.target_scale, self.aspect_ratio),
            ("context", "mask.context_scale", self.context_scale, (1.0, 1.0)),
        )
        for name, arg, scale, aspect in blocks:
            h, w = min(self.block_sizes(scale, aspect, height, width), key=lambda hw: hw[0] * hw[1])
            if h * w <= self.min_keep:
                why = (
                    f"{arg}={list(scale)} can draw a {h}x{w} {name} block, not more than mask.min_keep={self.min_keep}"
                    " patches (I-JEPA's sampler would loop forever)"
                )
                self._refuse(key, height, width, why)


class GroupMask(MaskGenerator):
    """SiT / GMML's group masking: random rectangles of patches until a drawn fraction of the grid is covered.

    Atito et al., "SiT: Self-supervised vIsion Transformer", arXiv:2104.03602, and "GMML is All you Need",
    arXiv:2205.14986; follows Sara-Ahmed/GMML (and Sara-Ahmed/SiT) ``datasets/datasets_utils.py``,
    ``GMML_drop_rand_patches`` with its corruption aligned to the patches (``align`` = the patch size, which SiT's
    ``--drop_align`` help recommends), counted in patches: the target is ``U(min(0.5, ratio), ratio) * L``; while
    fewer patches are masked, a block is placed: top row ~ U{0..height-2} (the official
    ``randint(0, H - align) // align`` never starts a block on the last row or column), height
    ``min(round(U[1, max_block * height)), height - top)`` (width alike), and masked (blocks may overlap; the last
    one may overshoot the target). The official draws the side in pixels in [align, int(max_block * H)) and rounds it
    to patches; drawing it in patch units on [1, max_block * height) gives nearly the same sizes without knowing the
    patch size.

    Not reproduced: what fills the masked patches (GMML: noise, zeros or another image's patches; here the
    learned mask token, ``apply="token"``) and ``GMML_replace_list``'s re-corruption of half the samples at
    ``--drop_replace`` 0.3 with another image's patches.

    Args:
        ratio: the largest fraction masked (``--drop_perc``; GMML: 0.75, SiT: 0.5), in (0, 1): the fraction is drawn
            from U(min(0.5, ratio), ratio); or ``[min, max]`` for U(min, max).
        max_block: the largest block side as a fraction of the grid side (``max_block_sz``, 0.3), in (0, 1].
        official: start blocks only on rows 0..height-2 and columns 0..width-2, as the official code; False: on
            every row and column.
        views: how many leading views of a sample are masked (GMML masks both global crops).

    Returns ``{"mask": (L,) bool}``, True = replaced by the mask token.
    """

    apply = "token"

    def __init__(
        self,
        ratio: float | Sequence[float] = 0.75,
        max_block: float = 0.3,
        official: bool = True,
        views: int = 1,
    ):
        super().__init__(views)
        lo, hi = checks.interval("mask.ratio", ratio, above=0, below=1)
        is_number = isinstance(ratio, int | float)
        self.ratio = (min(0.5, hi), hi) if is_number else (lo, hi)
        self.max_block = checks.number("mask.max_block", max_block, above=0, maximum=1)
        self.official = _flag("mask.official", official)

    def _longest(self, side: int) -> int:
        """The longest block side: the largest round(x) for x in [1, max_block * side)."""
        a = self.max_block * side
        return math.floor(a) + (1 if a - math.floor(a) > 0.5 else 0)

    def __call__(self, g: torch.Generator, height: int, width: int) -> dict[str, torch.Tensor]:
        u = _Uniforms(g)
        target = u.uniform(*self.ratio) * height * width
        mask = np.zeros((height, width), dtype=bool)
        cut = 1 if self.official else 0
        a_h, a_w = self.max_block * height, self.max_block * width
        count = 0
        while count < target:
            top, left = u.integer(0, height - 1 - cut), u.integer(0, width - 1 - cut)
            h = min(round(u.uniform(1, a_h)), height - top)
            w = min(round(u.uniform(1, a_w)), width - left)
            block = mask[top : top + h, left : left + w]
            count += h * w - int(block.sum())
            block[...] = True
        return {"mask": torch.from_numpy(mask.reshape(-1))}

    def check_grid(self, height: int, width: int, key: str) -> None:
        super().check_grid(height, width, key)
        if self.official and (height < 2 or width < 2):
            self._refuse(key, height, width, "official=true starts no block (rows 0..height-2 only)")
        if self.max_block * min(height, width) <= 1:
            why = f"mask.max_block={self.max_block} allows no block side of 1 patch or more (the official would fail)"
            self._refuse(key, height, width, why)
        cut = 1 if self.official else 0
        rows = height - (cut if self._longest(height) < 2 else 0)  # a 1-row block from row height-2 misses the last
        cols = width - (cut if self._longest(width) < 2 else 0)
        if self.ratio[1] * height * width > rows * cols:
            why = (
                f"mask.ratio={self.ratio[1]} asks for more than the {rows}x{cols} patches its blocks can reach"
                " (the official loop would not end)"
            )
            self._refuse(key, height, width, why)
