"""SAS (selfsup.subsets, docs/subsets.md): both orders against float64 transcriptions of the released selection (a
max-heap lazy greedy whose ``add`` zeroes the chosen row) and of the greedy as its gain is written; per-class
budgets, the seeded balanced random subset, and the command end to end on a short digits run (its file trains with
data.subset_file=), with bad settings refused in one line."""

from __future__ import annotations

import heapq
import json

import numpy as np
import pytest
import torch

from selfsup.data.datamodules import read_indices
from selfsup.subsets import main, rank, select
from selfsup.train import run
from tests.config_utils import compose_train
from tests.runs import TINY


def similarity(z: torch.Tensor, threshold: float) -> np.ndarray:
    z = torch.nn.functional.normalize(z.double(), dim=1).numpy()
    s = z @ z.T
    return s * (s >= threshold)


def released_order(s: np.ndarray) -> list[int]:
    """The released selection, transcribed: a max-heap of (gain, index), the gain recomputed when popped as
    row sum minus the column entries of the chosen rows, and each chosen row set to 0 afterwards."""
    s = s.copy()
    chosen: list[int] = []

    def gain(i):
        return s[i].sum() - sum(s[j, i] for j in chosen)

    heap = [(-gain(i), -i) for i in range(len(s))]  # heapq is a min-heap: negate for (gain, index) max-first
    heapq.heapify(heap)
    while heap:
        _, neg_i = heapq.heappop(heap)
        i = -neg_i
        now = gain(i)
        if not heap or now >= -heap[0][0]:
            chosen.append(i)
            s[i] = 0
        else:
            heapq.heappush(heap, (-now, -i))
    return chosen


def check_greedy(s: np.ndarray, order: list[int]) -> None:
    """Each pick has the largest gain(i | S) = Σ_j s_ij − Σ_{j∈S} s_ji (s unchanged) among the images left, by a
    loop over every candidate (up to rounding: late in the order gains tie at s_ii = 1)."""
    assert sorted(order) == list(range(len(s)))
    for step, pick in enumerate(order):
        chosen = order[:step]
        gains = {i: sum(s[i, j] for j in range(len(s))) - sum(s[j, i] for j in chosen) for i in order[step:]}
        assert gains[pick] >= max(gains.values()) - 1e-12, f"step {step}: {pick} is not a largest gain"


@pytest.mark.parametrize("threshold", [0.0, 0.3, -1.0])
def test_both_orders_against_their_transcriptions(threshold):
    z = torch.randn(40, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64) + 0.5
    s = similarity(z, threshold)
    assert rank(z, threshold, "official").tolist() == released_order(s)
    check_greedy(s, rank(z, threshold, "greedy").tolist())
    assert rank(z, threshold, "greedy").tolist() != released_order(s)  # the redundancy term changes the choice


def test_budgets_per_latent_class_and_the_seeded_random_subset():
    g = torch.Generator().manual_seed(0)
    features = torch.randn(103, 5, generator=g)
    parts = np.repeat([0, 1, 2], [50, 33, 20])
    kept = select(features, parts, 0.5)
    assert [int((parts[kept] == c).sum()) for c in range(3)] == [25, 16, 10]
    first = np.flatnonzero(parts == 0)
    assert set(kept[parts[kept] == 0]) == set(first[rank(features[:50])[:25]])
    random = select(features, parts, 0.5, method="random", seed=3)
    assert (random == select(features, parts, 0.5, method="random", seed=3)).all()
    assert [int((parts[random] == c).sum()) for c in range(3)] == [25, 16, 10]
    assert not (random == select(features, parts, 0.5, method="random", seed=4)).all()
    assert (select(features, parts, 1.0) == np.arange(103)).all()


@pytest.fixture(scope="module")
def proxy(tmp_path_factory):
    root = tmp_path_factory.mktemp("sas")
    run(compose_train([*TINY, "trainer.max_epochs=1"], root / "proxy"))
    return root


@pytest.mark.parametrize("extra", [[], ["partition=kmeans", "classes=5", "order=greedy"]])
def test_command_writes_an_index_file_that_trains(proxy, extra, capsys):
    out = proxy / f"sas{len(extra)}.txt"
    main([f"checkpoint={proxy / 'proxy'}", f"out={out}", "fraction=0.25", *extra])
    assert f"wrote {out}" in capsys.readouterr().out
    header = json.loads(out.read_text().splitlines()[0].removeprefix("# selfsup-subset "))
    kept = read_indices(out, 1437, "data.subset_file")
    assert header["kept"] == len(kept) and header["of"] == 1437
    assert header["latent_classes"] == (5 if extra else 10)
    assert 0.2 * 1437 < len(kept) <= 0.25 * 1437
    if not extra:  # data.subset_file= trains on it
        run_dir = proxy / "on_subset"
        run(compose_train([*TINY, "data.subset=null", f"data.subset_file={out}", "trainer.max_steps=2"], run_dir))
        assert (run_dir / "checkpoints" / "last.ckpt").is_file()


def test_pool_selects_among_its_rows_only(proxy):
    pool, out = proxy / "pool.txt", proxy / "from_pool.txt"
    rows = np.arange(1, 801, 2)
    pool.write_text("\n".join(map(str, rows)))
    main([f"checkpoint={proxy / 'proxy'}", f"out={out}", f"pool={pool}", "fraction=0.5"])
    kept = read_indices(out, 1437, "data.subset_file")
    assert set(kept) <= set(rows) and 190 <= len(kept) <= 200
    assert json.loads(out.read_text().splitlines()[0].removeprefix("# selfsup-subset "))["of"] == 400


@pytest.mark.parametrize(
    "args, message",
    [
        (["fraction=0"], "fraction=0.0: expected the kept share of each class, in (0, 1]"),
        (["method=best"], "method=best: expected one of ['sas', 'random']"),
        (["threshold=2"], "threshold=2.0: expected a cosine similarity in [-1, 1]"),
        (["classes=x"], "classes=x: expected int"),
        (["size=3"], "argument 'size=3': expected key=value with key one of"),
    ],
)
def test_bad_settings_are_refused_in_one_line(proxy, args, message, capsys):
    with pytest.raises(SystemExit) as e:
        main([f"checkpoint={proxy / 'proxy'}", f"out={proxy / 'x.txt'}", *args])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not (proxy / "x.txt").exists()


def test_an_output_directory_and_a_missing_checkpoint_are_named(proxy, capsys):
    for args, message in (
        ([f"checkpoint={proxy / 'proxy'}", f"out={proxy}"], f"out={proxy}: is a directory"),
        ([f"checkpoint={proxy / 'none'}", f"out={proxy / 'y.txt'}"], "checkpoint="),
    ):
        with pytest.raises(SystemExit):
            main(args)
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0]
