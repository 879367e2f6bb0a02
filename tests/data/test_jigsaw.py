"""PIRL's jigsaw view op (``views.jigsaw``): tiles cut from their cells at offsets inside vissl's range, laid out in
the recorded permutation; the other draws untouched; the module's tile split the inverse of the layout; refusals."""

import math
from collections import Counter

import pytest
import torch

from selfsup.data.gpu_views import as_gpu_view
from selfsup.data.views import (
    NUM_PARAMS,
    MultiViewTransform,
    Slot,
    ViewAugment,
    generator_for,
    jigsaw_tiles,
    permutation_of,
    permutation_rank,
)


def positions(size: int) -> torch.Tensor:
    """A uint8 image whose pixel (y, x) holds y in channel 0, x in channel 1: where a pixel came from."""
    y, x = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    return torch.stack([y, x, torch.zeros_like(x)]).to(torch.uint8)


def plain(size: int, **kw) -> ViewAugment:
    """No resize (scale 1 of a size x size source), no flip, no colour: a view that only cuts; values unnormalised."""
    return ViewAugment(
        size, scale=(1, 1), ratio=(1, 1), flip_p=0, jitter_p=0, grayscale_p=0, mean=(0,) * 3, std=(1 / 255,) * 3, **kw
    )


def test_permutation_ranks_are_lexicographic_and_invertible():
    assert permutation_rank(range(9)) == 0 and permutation_rank(range(8, -1, -1)) == math.factorial(9) - 1
    assert [permutation_rank(p) for p in ([0, 2, 1], [1, 0, 2], [2, 1, 0])] == [1, 2, 5]
    for rank in (0, 1, 4321, 362879):
        assert permutation_rank(permutation_of(rank, 9)) == rank
    assert float(torch.tensor(362879.0)) == 362879  # 9! - 1 is exact in a float32 parameter slot


@pytest.mark.parametrize("grid,size,tile", [(3, 36, None), (3, 255, None), (2, 16, 8), (3, 18, 5)])
def test_each_tile_comes_from_the_cell_the_permutation_names(grid, size, tile):
    view = plain(size, jigsaw=grid, jigsaw_tile=tile)
    cell, t = size // grid, view.jigsaw_tile
    assert view.out_size == grid * t and (tile is not None or t == cell - cell // 4)  # 255 px: 85 px cells, 64 px
    src = positions(size)
    for seed in range(5):
        g = generator_for(seed)
        x, p = view(src, g)
        assert x.shape == (3, grid * t, grid * t) and p.shape == (NUM_PARAMS,)
        assert p[Slot.JIGSAW_GRID] == grid
        perm = permutation_of(int(p[Slot.JIGSAW_PERM]), grid * grid)
        for j, tile_x in enumerate(jigsaw_tiles(x[None], grid)):
            ys, xs = tile_x[0].round().long(), tile_x[1].round().long()
            cy, cx = divmod(perm[j], grid)  # the cell, raster order
            dy, dx = int(ys[0, 0]) - cy * cell, int(xs[0, 0]) - cx * cell
            assert 0 <= dy <= max(cell - t - 1, 0) and 0 <= dx <= max(cell - t - 1, 0)  # vissl: randint(0, jitter)
            assert torch.equal(ys, cy * cell + dy + torch.arange(t)[:, None].expand(t, t))  # a contiguous tile
            assert torch.equal(xs, cx * cell + dx + torch.arange(t)[None, :].expand(t, t))


def test_permutations_and_offsets_cover_their_ranges():
    view, src = plain(36, jigsaw=3), positions(36)
    ranks, offsets = Counter(), Counter()
    for seed in range(300):
        x, p = view(src, generator_for(seed))
        ranks[int(p[Slot.JIGSAW_PERM])] += 1
        first = permutation_of(int(p[Slot.JIGSAW_PERM]), 9)[0]
        offsets[int(x[0, 0, 0].round()) - (first // 3) * 12] += 1
    assert len(ranks) > 290  # 9! permutations: 300 draws are nearly all distinct
    assert set(offsets) == {0, 1, 2}  # 12 px cells, 9 px tiles: offsets 0..2 (vissl never uses 3)


def test_the_other_draws_and_pixels_are_those_of_the_view_without_the_jigsaw():
    """The jigsaw's draws come after every other: same crop, flip and colour; the tiles are pieces of that view."""
    base = ViewAugment(36, hue=0.2, jitter_p=1.0)
    view = ViewAugment(36, hue=0.2, jitter_p=1.0, jigsaw=3)
    img = torch.randint(0, 256, (3, 40, 44), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    for seed in range(3):
        whole, p_whole = base(img, generator_for(seed))
        tiled, p = view(img, generator_for(seed))
        assert torch.equal(p[: Slot.JIGSAW_GRID], p_whole[: Slot.JIGSAW_GRID])
        perm = permutation_of(int(p[Slot.JIGSAW_PERM]), 9)
        for j, t in enumerate(jigsaw_tiles(tiled[None], 3)):
            cy, cx = divmod(perm[j], 3)
            cell = whole[:, cy * 12 : cy * 12 + 12, cx * 12 : cx * 12 + 12]
            assert any(torch.equal(cell[:, dy : dy + 9, dx : dx + 9], t) for dy in range(3) for dx in range(3))
    assert torch.equal(view.apply(img, p, generator_for(99)), view.apply(img, p, generator_for(99)))


def test_a_jigsaw_view_is_the_same_whatever_the_process_and_worker_count():
    """Drawn from the sample's own generator like every view: the same (seed, epoch, index) gives the same tiles."""
    t = MultiViewTransform({"v1": ViewAugment(32), "v2": ViewAugment(36, jigsaw=3)})
    img = torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    a, b = t(img, seed=0, epoch=2, index=5), t(img, seed=0, epoch=2, index=5)
    assert all(torch.equal(x, y) for x, y in zip(a[0] + a[1], b[0] + b[1]))
    assert a[0][1].shape == (3, 27, 27) and a[1][0][Slot.JIGSAW_GRID] == 0


def test_the_tile_split_is_sample_major_in_raster_order():
    x = torch.arange(2 * 1 * 4 * 4, dtype=torch.float64).reshape(2, 1, 4, 4)
    tiles = jigsaw_tiles(x, 2)
    assert tiles.shape == (8, 1, 2, 2)
    assert torch.equal(tiles[1, 0], x[0, 0, :2, 2:]) and torch.equal(tiles[2, 0], x[0, 0, 2:, :2])
    assert torch.equal(tiles[7, 0], x[1, 0, 2:, 2:])
    with pytest.raises(ValueError, match="jigsaw view of 5 x 5 px: expected a square a 2 x 2 grid divides"):
        jigsaw_tiles(torch.zeros(1, 1, 5, 5), 2)


@pytest.mark.parametrize(
    "kw,message",
    [
        ({"size": 32, "jigsaw": 3}, r"views.jigsaw=3: views.size=32 is not a multiple of 3 .* e.g. views.size=33"),
        ({"size": 32, "jigsaw": 4}, r"views.jigsaw=4: expected 0 \(off\) or a grid side in \[2, 3\]"),
        ({"size": 36, "jigsaw": 3, "jigsaw_tile": 13}, r"views.jigsaw_tile=13: expected an integer in \[1, 12\]"),
        ({"size": 36, "jigsaw": 3, "rot90": "image"}, r"views.jigsaw=3 with views.rot90=image"),
        ({"size": 36, "jigsaw": -1}, r"views.jigsaw=-1"),
    ],
)
def test_bad_jigsaws_are_refused_in_one_line(kw, message):
    with pytest.raises(ValueError, match=message):
        ViewAugment(**kw)


def test_the_device_path_refuses_the_jigsaw():
    with pytest.raises(ValueError, match=r"views.jigsaw=3: the device path does not cut jigsaw tiles"):
        as_gpu_view(ViewAugment(36, jigsaw=3))
