"""Mask generators (selfsup.data.masks) against float64 references of the official samplers, written here from the
official code (each reference names the function it follows): same distributions over 2000 draws, reproducible from
the generator alone, and refusals in one line naming the key."""

import math
import pathlib
import random
from collections import Counter

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from selfsup.data.masks import BlockMask, GroupMask, MaskGenerator, MultiBlockMask, RandomMask

CONF = pathlib.Path(__file__).resolve().parents[2] / "conf" / "mask"
N = 2000  # draws per distribution


def draws(gen: MaskGenerator, height: int, width: int, n: int = N, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    return [gen(torch.Generator().manual_seed(seed * 100_003 + i), height, width) for i in range(n)]


def assert_same_mean(ours, ref, z: float = 4.0):
    """The two samples' means agree within z standard errors of their difference."""
    a, b = np.asarray(ours, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    se = math.sqrt(a.var() / len(a) + b.var() / len(b))
    assert abs(a.mean() - b.mean()) <= z * se + 1e-12, (a.mean(), b.mean(), se)


def assert_same_frequencies(ours, ref, z: float = 4.0):
    """Every category's frequency agrees within z binomial standard errors (pooled)."""
    ca, cb = Counter(ours), Counter(ref)
    na, nb = len(ours), len(ref)
    for key in set(ca) | set(cb):
        pa, pb = ca[key] / na, cb[key] / nb
        p = (ca[key] + cb[key]) / (na + nb)
        assert abs(pa - pb) <= z * math.sqrt(p * (1 - p) * (1 / na + 1 / nb)) + 1e-12, (key, pa, pb)


# ---------------------------------------------------------------------------------------------------------------------
# references of the official samplers (float64, numpy's generator)


def mae_reference(rng: np.random.Generator, length: int, ratio: float) -> np.ndarray:
    """facebookresearch/mae models_mae.py, MaskedAutoencoderViT.random_masking, for one sample: 1 = removed."""
    len_keep = int(length * (1 - ratio))
    ids_shuffle = np.argsort(rng.random(length))
    mask = np.ones(length)
    mask[ids_shuffle[:len_keep]] = 0
    return mask


def py_uniform(rng, a: float, b: float) -> float:
    """Python's ``random.uniform(a, b)``: a + (b - a) * U[0, 1), also for b < a (numpy's refuses it)."""
    return a + (b - a) * rng.random()


def beit_reference(rng, height, width, num_masking_patches, min_num_patches=4, min_aspect=0.3, max_aspect=None):
    """microsoft/unilm beit/masking_generator.py, MaskingGenerator.__call__ and ._mask (max_num_patches=None)."""
    max_aspect = max_aspect or 1 / min_aspect
    log_aspect_ratio = (math.log(min_aspect), math.log(max_aspect))
    mask = np.zeros((height, width), dtype=np.int64)
    mask_count = 0
    while mask_count < num_masking_patches:
        max_mask_patches = num_masking_patches - mask_count
        delta = 0
        for _ in range(10):
            target_area = py_uniform(rng, min_num_patches, max_mask_patches)  # may be reversed, as random.uniform
            aspect_ratio = math.exp(py_uniform(rng, *log_aspect_ratio))
            h = int(round(math.sqrt(target_area * aspect_ratio)))
            w = int(round(math.sqrt(target_area / aspect_ratio)))
            if w < width and h < height:
                top = int(rng.integers(0, height - h + 1))  # random.randint includes its upper end
                left = int(rng.integers(0, width - w + 1))
                num_masked = mask[top : top + h, left : left + w].sum()
                if 0 < h * w - num_masked <= max_mask_patches:
                    for i in range(top, top + h):
                        for j in range(left, left + w):
                            if mask[i, j] == 0:
                                mask[i, j] = 1
                                delta += 1
            if delta > 0:
                break
        if delta == 0:
            break
        mask_count += delta
    return mask.reshape(-1)


def dinov2_batch_reference(rng, batch, height, width, ratio_min_max, probability, **beit):
    """facebookresearch/dinov2 dinov2/data/collate.py, collate_data_and_cast: int(B * p) masked samples, the i-th
    with int(N * U(probs[i], probs[i + 1])) patches, the rest unmasked, shuffled."""
    n_tokens = height * width
    n_samples_masked = int(batch * probability)
    probs = np.linspace(*ratio_min_max, n_samples_masked + 1)
    masks = [
        beit_reference(rng, height, width, int(n_tokens * rng.uniform(probs[i], probs[i + 1])), **beit)
        for i in range(n_samples_masked)
    ]
    masks += [np.zeros(n_tokens, dtype=np.int64)] * (batch - n_samples_masked)
    rng.shuffle(masks)
    return masks


def ijepa_reference(
    rng,
    height,
    width,
    official=True,
    enc_mask_scale=(0.85, 1.0),
    pred_mask_scale=(0.15, 0.2),
    aspect_ratio=(0.75, 1.5),
    npred=4,
    min_keep=10,
    allow_overlap=False,
):
    """facebookresearch/ijepa src/masks/multiblock.py, MaskCollator (_sample_block_size, _sample_block_mask,
    __call__) for ONE sample with its own sizes and no truncation; official=False: independent scale / aspect draws,
    h <= height and randint's upper end included (ijepa PR #40). Returns (context, targets) as (H, W) 0/1 arrays."""

    def sample_block_size(scale, aspect_ratio_scale):
        r = rng.random()
        r2 = r if official else rng.random()
        max_keep = int(height * width * (scale[0] + r * (scale[1] - scale[0])))
        ar = aspect_ratio_scale[0] + r2 * (aspect_ratio_scale[1] - aspect_ratio_scale[0])
        h = int(round(math.sqrt(max_keep * ar)))
        w = int(round(math.sqrt(max_keep / ar)))
        while h >= height + (0 if official else 1):
            h -= 1
        while w >= width + (0 if official else 1):
            w -= 1
        return h, w

    def sample_block_mask(b_size, acceptable_regions=None):
        h, w = b_size
        tries, timeout = 0, 20
        while True:
            top = int(rng.integers(0, height - h + (0 if official else 1)))
            left = int(rng.integers(0, width - w + (0 if official else 1)))
            mask = np.zeros((height, width), dtype=np.int64)
            mask[top : top + h, left : left + w] = 1
            if acceptable_regions is not None:
                for k in range(max(len(acceptable_regions) - tries, 0)):
                    mask *= acceptable_regions[k]
            if mask.sum() > min_keep:
                break
            timeout -= 1
            if timeout == 0:
                tries += 1
                timeout = 20
        complement = np.ones((height, width), dtype=np.int64)
        complement[top : top + h, left : left + w] = 0
        return mask, complement

    p_size = sample_block_size(pred_mask_scale, aspect_ratio)
    e_size = sample_block_size(enc_mask_scale, (1.0, 1.0))
    preds, complements = zip(*(sample_block_mask(p_size) for _ in range(npred)))
    context, _ = sample_block_mask(e_size, None if allow_overlap else list(complements))
    return context, np.stack(preds)


def gmml_reference(rng, height, width, patch=16, max_replace=0.75, max_block_sz=0.3, official=True):
    """Sara-Ahmed/GMML datasets/datasets_utils.py, GMML_drop_rand_patches with align = patch on a
    (height * patch) x (width * patch) image, in pixels (numpy's randint excludes its upper end); the mask is kept
    per patch since every block is patch-aligned. official=False also starts blocks on the last row / column."""
    H, W, align = height * patch, width * patch, patch
    n_drop_pix = rng.uniform(min(0.5, max_replace), max_replace) * H * W
    mx_blk_height, mx_blk_width = int(H * max_block_sz), int(W * max_block_sz)
    mask = np.zeros((height, width), dtype=np.int64)
    end = 0 if official else align
    while mask.sum() * align * align < n_drop_pix:
        rnd_r = (int(rng.integers(0, H - align + end)) // align) * align
        rnd_c = (int(rng.integers(0, W - align + end)) // align) * align
        rnd_h = min(int(rng.integers(align, mx_blk_height)), H - rnd_r)
        rnd_h = round(rnd_h / align) * align
        rnd_w = min(int(rng.integers(align, mx_blk_width)), W - rnd_c)
        rnd_w = round(rnd_w / align) * align
        mask[rnd_r // align : (rnd_r + rnd_h) // align, rnd_c // align : (rnd_c + rnd_w) // align] = 1
    return mask.reshape(-1)


def first_overlapped(overlap: np.ndarray) -> list[int]:
    """Per sample, the first target the context overlaps (the number of targets where none)."""
    return [int(np.flatnonzero(row)[0]) if row.any() else len(row) for row in overlap]


def boxes(masks: np.ndarray, height: int, width: int):
    """(top, left, h, w) of each (H*W,) mask that is one rectangle."""
    out = []
    for m in masks.reshape(-1, height, width):
        rows, cols = np.flatnonzero(m.any(1)), np.flatnonzero(m.any(0))
        out.append((rows[0], cols[0], len(rows), len(cols)))
        assert m.sum() == len(rows) * len(cols)
    return out


# ---------------------------------------------------------------------------------------------------------------------
# the contract


GENERATORS = [
    RandomMask(),
    BlockMask(),
    BlockMask(ratio=[0.1, 0.5], probability=0.5),
    MultiBlockMask(),
    MultiBlockMask(official=False),
    GroupMask(),
]


@pytest.mark.parametrize("gen", GENERATORS, ids=repr)
def test_same_generator_same_masks_and_global_rng_untouched(gen):
    gen.check_grid(14, 14, "views.size")
    states = torch.get_rng_state(), np.random.get_state(), random.getstate()
    torch.manual_seed(1)
    a = gen(torch.Generator().manual_seed(7), 14, 14)
    torch.manual_seed(2)
    b = gen(torch.Generator().manual_seed(7), 14, 14)
    torch.set_rng_state(states[0])  # different global seeds above, the same masks: g alone decides
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    others = [gen(torch.Generator().manual_seed(s), 14, 14) for s in range(8, 16)]
    assert any(not torch.equal(o[k], a[k]) for o in others for k in a)
    assert np.array_equal(np.random.get_state()[1], states[1][1]) and random.getstate() == states[2]
    for v in a.values():
        assert v.dtype == torch.bool and v.shape[-1] == 196
    assert gen.apply in ("drop", "token") and gen.views == 1


@pytest.mark.parametrize("gen", GENERATORS, ids=repr)
def test_masks_draw_nothing_from_torch_global_rng(gen):
    state = torch.get_rng_state()
    for seed in range(20):
        gen(torch.Generator().manual_seed(seed), 14, 14)
    assert torch.equal(torch.get_rng_state(), state)


def test_outputs_and_apply():
    g = torch.Generator().manual_seed(0)
    assert RandomMask().apply == "drop" and MultiBlockMask().apply == "drop"
    assert BlockMask().apply == "token" and GroupMask().apply == "token"
    assert set(RandomMask()(g, 4, 6)) == set(BlockMask()(g, 4, 6)) == set(GroupMask(max_block=0.5)(g, 4, 6)) == {"mask"}
    out = MultiBlockMask(num_targets=3, min_keep=2)(g, 10, 12)
    assert out["context"].shape == (120,) and out["targets"].shape == (3, 120)
    assert MultiBlockMask(views=2).views == 2


# ---------------------------------------------------------------------------------------------------------------------
# MAE


@pytest.mark.parametrize("ratio,height,width", [(0.75, 14, 14), (0.6, 7, 5), (0.9, 8, 8), (0.5, 3, 3)])
def test_random_mask_keeps_exactly_int_L_1_minus_r(ratio, height, width):
    gen = RandomMask(ratio)
    for out in draws(gen, height, width, n=50):
        assert int((~out["mask"]).sum()) == int(height * width * (1 - ratio))


def test_random_mask_is_uniform_over_positions_as_mae():
    rng = np.random.default_rng(0)
    ours = torch.stack([d["mask"] for d in draws(RandomMask(0.75), 7, 7)]).double().numpy()
    ref = np.stack([mae_reference(rng, 49, 0.75) for _ in range(N)])
    for p in range(49):  # every position masked with the same frequency 1 - 12/49
        assert_same_mean(ours[:, p], ref[:, p])


# ---------------------------------------------------------------------------------------------------------------------
# BEiT / dinov2


@pytest.mark.parametrize("grid,ratio,min_patches", [((14, 14), 0.4, 16), ((5, 6), 0.5, 4), ((4, 4), 0.5, 4)])
def test_block_mask_matches_beit_masking_generator(grid, ratio, min_patches):
    H, W = grid
    budget = int(H * W * ratio)
    rng = np.random.default_rng(1)
    ours = torch.stack([d["mask"] for d in draws(BlockMask(ratio=ratio, min_patches=min_patches), H, W)]).numpy()
    ref = np.stack([beit_reference(rng, H, W, budget, min_num_patches=min_patches) for _ in range(N)])
    assert ours.sum(1).max() <= budget and ref.sum(1).max() <= budget  # never more than the budget
    assert_same_frequencies(ours.sum(1).tolist(), ref.sum(1).tolist())  # the masked counts' distribution
    for p in range(H * W):  # every position masked as often
        assert_same_mean(ours[:, p], ref[:, p])
    full_row = lambda m: m.reshape(-1, H, W).all(2).any(1)  # noqa: E731  (BEiT's blocks are narrower than the grid)
    assert_same_mean(full_row(ours), full_row(ref))


def test_block_mask_per_sample_ratio_and_probability_match_dinov2_marginals():
    rng = np.random.default_rng(2)
    gen = BlockMask(ratio=[0.1, 0.5], probability=0.5)
    ours = torch.stack([d["mask"] for d in draws(gen, 14, 14)]).numpy().sum(1)
    ref = np.concatenate(
        [np.stack(dinov2_batch_reference(rng, 200, 14, 14, (0.1, 0.5), 0.5)).sum(1) for _ in range(10)]
    )
    assert_same_mean(ours == 0, ref == 0)  # the chance of an unmasked sample (~0.5)
    assert 0.45 < (ours == 0).mean() < 0.55
    masked = ours[ours > 0]
    assert masked.max() <= int(196 * 0.5) and masked.min() >= 1
    assert_same_mean(masked / 196, ref[ref > 0] / 196)  # the masked fraction, uniform in [0.1, 0.5] before packing
    assert 0.1 - 0.02 < (masked / 196).min() and (masked / 196).max() <= 0.5


# ---------------------------------------------------------------------------------------------------------------------
# I-JEPA


def ijepa_stats(contexts, targets, height, width):
    sizes = [(h, w) for _, _, h, w in boxes(targets.reshape(-1, height * width), height, width)]
    tops = [t for t, _, _, _ in boxes(targets.reshape(-1, height * width), height, width)]
    return sizes, tops, contexts.sum(1)


@pytest.mark.parametrize("official", [True, False])
def test_multiblock_matches_ijepa_mask_collator(official):
    H = W = 14
    gen = MultiBlockMask(official=official)
    out = draws(gen, H, W)
    contexts = torch.stack([d["context"] for d in out]).numpy()
    targets = torch.stack([d["targets"] for d in out]).numpy()
    rng = np.random.default_rng(3)
    ref = [ijepa_reference(rng, H, W, official=official) for _ in range(N)]
    ref_contexts = np.stack([c.reshape(-1) for c, _ in ref])
    ref_targets = np.stack([t.reshape(4, -1) for _, t in ref])

    sizes, tops, kept = ijepa_stats(contexts, targets, H, W)
    ref_sizes, ref_tops, ref_kept = ijepa_stats(ref_contexts, ref_targets, H, W)
    assert_same_frequencies(sizes[::4], ref_sizes[::4])  # one size per sample: scale and aspect jointly
    assert_same_frequencies(tops, ref_tops)
    assert_same_mean(kept, ref_kept)
    assert_same_mean(targets.any(1).sum(1), ref_targets.any(1).sum(1))  # the union of the targets

    scales = np.array([h * w for h, w in sizes]) / (H * W)
    aspects = np.array([h / w for h, w in sizes])
    assert scales.min() >= 0.1 and scales.max() <= 0.25 and aspects.min() >= 0.5 and aspects.max() <= 2.0
    assert all(s == sizes[4 * i] for i in range(N) for s in sizes[4 * i : 4 * i + 4])  # one target size per sample
    assert len(set(sizes)) > 1  # but not one per batch
    if official:  # one draw: the scale and the aspect ratio rise together
        assert np.corrcoef(scales, aspects)[0, 1] > 0.5
    else:
        assert abs(np.corrcoef(scales, aspects)[0, 1]) < 0.5

    assert (kept > 10).all()  # > min_keep
    overlap = (contexts[:, None, :] & targets).any(2)  # (N, 4)
    ref_overlap = (ref_contexts[:, None, :] & ref_targets).any(2)
    assert overlap.mean() < 0.01  # disjoint, but for the rare official relaxation
    assert_same_frequencies(first_overlapped(overlap), first_overlapped(ref_overlap))


@pytest.mark.parametrize("official", [True, False])
def test_multiblock_relaxes_like_the_official_when_the_context_cannot_keep_min_keep(official):
    """Targets that often cover the context: after 20 failed placements the official frees the last target, then the
    one before; the frequencies of each relaxation level match."""
    H = W = 10
    settings = dict(context_scale=(0.5, 0.6), target_scale=(0.3, 0.4), num_targets=4, min_keep=10)
    out = draws(MultiBlockMask(official=official, **settings), H, W, n=1000)
    overlap = np.stack([(d["context"] & d["targets"]).any(1).numpy() for d in out])  # (n, 4)
    rng = np.random.default_rng(5)
    ref_settings = dict(enc_mask_scale=(0.5, 0.6), pred_mask_scale=(0.3, 0.4), npred=4, min_keep=10)
    ref = [ijepa_reference(rng, H, W, official=official, **ref_settings) for _ in range(1000)]
    ref_overlap = np.stack([(c.reshape(1, -1) & t.reshape(4, -1)).any(1) for c, t in ref])
    freed, ref_freed = overlap.sum(1), ref_overlap.sum(1)
    assert 0.05 < (freed > 0).mean() < 0.95  # the setting exercises the relaxation
    assert_same_frequencies(freed.tolist(), ref_freed.tolist())
    first, ref_first = first_overlapped(overlap), first_overlapped(ref_overlap)
    assert_same_frequencies(first, ref_first)  # the last targets are freed first
    for k in range(4):
        assert_same_mean(overlap[:, k], ref_overlap[:, k])
    assert all(int(d["context"].sum()) > 10 for d in out)


def test_multiblock_official_never_touches_last_row_or_column_paper_does():
    H, W = 12, 10
    for official in (True, False):
        gen = MultiBlockMask(official=official, min_keep=4)
        gen.check_grid(H, W, "views.size")
        masks = [d[k].view(-1, H, W) for d in draws(gen, H, W, n=500) for k in ("context", "targets")]
        union = torch.cat(masks).any(0)
        touches = bool(union[-1].any() or union[:, -1].any())
        assert touches is not official
        if not official:
            assert union[-1].any() and union[:, -1].any()


def test_multiblock_allow_overlap():
    out = draws(MultiBlockMask(allow_overlap=True), 14, 14, n=300)
    overlap = [bool((d["context"] & d["targets"].any(0)).any()) for d in out]
    assert np.mean(overlap) > 0.5
    assert all(int(d["context"].sum()) == 169 for d in out)  # a whole 13x13 block: nothing removed


@pytest.mark.parametrize("official", [True, False])
@pytest.mark.parametrize("grid", [(14, 14), (16, 16), (8, 8), (9, 13)])
def test_block_sizes_are_every_size_the_sampler_draws(official, grid):
    gen = MultiBlockMask(official=official)
    H, W = grid
    for scale, aspect in ((gen.target_scale, gen.aspect_ratio), (gen.context_scale, (1.0, 1.0))):
        found = gen.block_sizes(scale, aspect, H, W)
        r = np.linspace(0, 1, 4001)[:-1]
        if official:
            brute = {gen._size(scale[0] + x * (scale[1] - scale[0]), aspect[0] + x * (aspect[1] - aspect[0]), H, W)
                     for x in r}  # fmt: skip
        else:
            r = r[::20]
            brute = {
                gen._size(scale[0] + x * (scale[1] - scale[0]), aspect[0] + y * (aspect[1] - aspect[0]), H, W)
                for x in r
                for y in r
            }
        assert brute <= found and min(a * b for a, b in brute) == min(a * b for a, b in found)


# ---------------------------------------------------------------------------------------------------------------------
# GMML


@pytest.mark.parametrize("official", [True, False])
def test_group_mask_matches_gmml_drop_rand_patches(official):
    H = W = 14
    out = torch.stack([d["mask"] for d in draws(GroupMask(official=official), H, W)]).numpy()
    rng = np.random.default_rng(4)
    ref = np.stack([gmml_reference(rng, H, W, official=official) for _ in range(N)])
    ratio, ref_ratio = out.sum(1) / (H * W), ref.sum(1) / (H * W)
    assert ratio.min() >= 0.5 and ratio.max() <= 0.75 + 0.1  # the last block may overshoot U(0.5, 0.75)
    # the side is drawn in patch units, not in pixels: the same mean ratio within 0.005
    assert abs(ratio.mean() - ref_ratio.mean()) < 0.005
    assert_same_mean(ratio, ref_ratio)
    per_row, ref_per_row = out.reshape(N, H, W).mean((0, 2)), ref.reshape(N, H, W).mean((0, 2))
    np.testing.assert_allclose(per_row, ref_per_row, atol=0.03)  # the spatial profile, last row included
    if official:
        assert per_row[-1] < per_row[H // 2] - 0.1  # the last row is only reached by blocks from row H-2
    else:
        assert per_row[-1] > per_row[H // 2] - 0.1


def test_group_mask_ratio_forms():
    assert GroupMask(0.75).ratio == (0.5, 0.75) and GroupMask(0.4).ratio == (0.4, 0.4)  # U(min(0.5, r), r)
    assert GroupMask([0.2, 0.3]).ratio == (0.2, 0.3)
    out = torch.stack([d["mask"] for d in draws(GroupMask(0.4), 14, 14, n=200)]).double()
    assert out.sum(1).min() >= int(0.4 * 196)


# ---------------------------------------------------------------------------------------------------------------------
# refusals


BAD = [
    (RandomMask, {"ratio": 1.2}, "mask.ratio=1.2"),
    (RandomMask, {"ratio": 0}, "mask.ratio=0"),
    (RandomMask, {"views": 0}, "mask.views=0"),
    (BlockMask, {"ratio": [0.5, 0.1]}, "mask.ratio=[0.5, 0.1]"),
    (BlockMask, {"ratio": [0.1, 0.5, 0.7]}, "mask.ratio="),
    (BlockMask, {"ratio": "0.4"}, "mask.ratio='0.4'"),
    (BlockMask, {"min_patches": 0}, "mask.min_patches=0"),
    (BlockMask, {"min_aspect": 0}, "mask.min_aspect=0"),
    (BlockMask, {"min_aspect": 0.5, "max_aspect": 0.4}, "mask.max_aspect=0.4"),
    (BlockMask, {"min_aspect": 2.0}, "mask.min_aspect=2.0"),
    (BlockMask, {"probability": 0}, "mask.probability=0"),
    (BlockMask, {"probability": 1.5}, "mask.probability=1.5"),
    (MultiBlockMask, {"context_scale": [0.85, 1.1]}, "mask.context_scale=[0.85, 1.1]"),
    (MultiBlockMask, {"target_scale": 0.2}, "mask.target_scale=0.2"),
    (MultiBlockMask, {"aspect_ratio": [1.5, 0.75]}, "mask.aspect_ratio=[1.5, 0.75]"),
    (MultiBlockMask, {"num_targets": 0}, "mask.num_targets=0"),
    (MultiBlockMask, {"min_keep": -1}, "mask.min_keep=-1"),
    (MultiBlockMask, {"allow_overlap": "no"}, "mask.allow_overlap='no'"),
    (MultiBlockMask, {"official": 1}, "mask.official=1"),
    (GroupMask, {"ratio": 1.0}, "mask.ratio=1.0"),
    (GroupMask, {"max_block": 0}, "mask.max_block=0"),
    (GroupMask, {"max_block": 1.5}, "mask.max_block=1.5"),
    (GroupMask, {"official": None}, "mask.official=None"),
]


@pytest.mark.parametrize("cls,kwargs,key", BAD, ids=[k for _, _, k in BAD])
def test_bad_settings_raise_one_line_naming_the_key(cls, kwargs, key):
    with pytest.raises(ValueError) as err:
        cls(**kwargs)
    assert str(err.value).startswith(key) and "\n" not in str(err.value)


GRIDS = [
    (RandomMask(0.9), 3, 3, "keeps no patch"),
    (RandomMask(1e-17), 1, 3, "masks no patch"),
    (BlockMask(), 1, 8, "no block fits"),
    (BlockMask(ratio=0.05), 4, 4, "masks no patch"),
    (BlockMask(min_patches=16), 4, 4, "mask.min_patches=16"),
    (MultiBlockMask(), 8, 8, "mask.min_keep=10"),  # CIFAR-10 at patch 4: 3x3 targets
    (MultiBlockMask(min_keep=4, context_scale=(0.05, 0.1)), 8, 8, "context block"),
    (MultiBlockMask(min_keep=0), 1, 5, "official=true"),
    (GroupMask(), 4, 4, "more than the 3x3 patches"),  # 1-patch blocks never reach the last row
    (GroupMask(), 3, 3, "mask.max_block=0.3"),
]


@pytest.mark.parametrize("gen,height,width,why", GRIDS, ids=[f"{type(g).__name__}-{h}x{w}" for g, h, w, _ in GRIDS])
def test_check_grid_refuses_in_one_line_naming_the_key(gen, height, width, why):
    with pytest.raises(ValueError) as err:
        gen.check_grid(height, width, "views.views.v1.size")
    message = str(err.value)
    assert message.startswith("views.views.v1.size:") and why in message and "\n" not in message


def test_check_grid_accepts_the_papers_grids():
    for gen in GENERATORS:
        for grid in ((14, 14), (16, 16), (12, 12)):
            gen.check_grid(*grid, "views.size")
    GroupMask(official=False).check_grid(4, 4, "views.size")  # every row reachable
    MultiBlockMask(min_keep=4).check_grid(8, 8, "views.size")


def test_refused_grid_raises_instead_of_looping():
    for seed in range(10):
        try:
            MultiBlockMask()(torch.Generator().manual_seed(seed), 8, 8)
        except ValueError as err:
            assert "mask.min_keep=10" in str(err)


# ---------------------------------------------------------------------------------------------------------------------
# configs


PAPER = {
    "random": (RandomMask, {"ratio": 0.75, "views": 1}),
    "block": (BlockMask, {"ratio": (0.4, 0.4), "min_patches": 16, "min_aspect": 0.3, "max_aspect": None}),
    "multiblock": (
        MultiBlockMask,
        {
            "context_scale": (0.85, 1.0),
            "target_scale": (0.15, 0.2),
            "aspect_ratio": (0.75, 1.5),
            "num_targets": 4,
            "min_keep": 10,
            "allow_overlap": False,
            "official": True,
        },
    ),
    "group": (GroupMask, {"ratio": (0.5, 0.75), "max_block": 0.3, "official": True, "views": 2}),
}


def test_configs_state_the_papers_values():
    assert sorted(p.stem for p in CONF.glob("*.yaml")) == sorted(PAPER)
    for name, (cls, values) in PAPER.items():
        gen = instantiate(OmegaConf.load(CONF / f"{name}.yaml"))
        assert type(gen) is cls
        assert {k: getattr(gen, k) for k in values} == values
        gen.check_grid(14, 14, "views.size")
        gen(torch.Generator().manual_seed(0), 14, 14)
