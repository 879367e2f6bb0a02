"""``data.subset=K``: the first K training images, stratified by class (issue 28).

What "stratified" means here (``SSLDataModule`` docstring, ``selfsup.data.sources.stratified_first``): images are
taken class by class in turn — the sorted classes, each in dataset order — until K are taken. So every class holds
K // C or K // C + 1 of them (the first K % C classes the extra one, while no class runs out), and within each class
they are its first images in dataset order. The expected rows are derived here from the labels alone.
"""

import pathlib
from collections import Counter

import numpy as np
import pytest
import torch

from selfsup.data import SSLDataModule
from tests.config_utils import tiny_imagefolder


def expected_rows(labels: torch.Tensor, k: int) -> list[int]:
    """The first k rows of the class-by-class order: per sorted class c, its first n_c rows (dataset order), with
    n_c = k // C + (c is among the first k % C classes), for classes with enough rows."""
    labels = labels.tolist()
    classes = sorted(set(labels))
    assert all(labels.count(c) > k // len(classes) for c in classes), "the formula assumes no class runs out"
    rows = []
    for rank, c in enumerate(classes):
        n_c = k // len(classes) + (1 if rank < k % len(classes) else 0)
        rows += [i for i, y in enumerate(labels) if y == c][:n_c]
    return sorted(rows)


def check_subset(full: SSLDataModule, sub: SSLDataModule, k: int) -> None:
    source, train = full.splits[0], sub.splits[0]
    want = expected_rows(source.labels, k)
    assert len(train) == k
    assert np.asarray(train.indices).tolist() == want
    counts = Counter(train.labels.tolist())
    assert set(counts) == set(source.labels.tolist())  # every class is represented
    assert max(counts.values()) - min(counts.values()) <= 1, counts
    torch.testing.assert_close(train.labels, source.labels[want])
    for i in (0, k // 2, k - 1):  # the subset's images are those rows' images
        assert torch.equal(train.image(i), source.image(want[i]))
    # the held-out split is untouched, and an epoch is K images (the last incomplete batch dropped)
    assert len(sub.splits[1]) == len(full.splits[1])
    assert sub.batch_plan().batches_per_epoch == k // sub.batch_size


@pytest.mark.parametrize("k", [37, 100])
def test_digits_subset_is_stratified_first_k(k):
    full = SSLDataModule("digits", num_workers=0, batch_size=8)
    sub = SSLDataModule("digits", num_workers=0, batch_size=8, subset=k)
    # the premise: digits' first K training images are not balanced, so plain first-K would show here
    first_k = Counter(full.splits[0].labels[:k].tolist())
    assert max(first_k.values()) - min(first_k.values()) > 1
    check_subset(full, sub, k)


@pytest.mark.parametrize("k", [5, 7])
def test_imagefolder_subset_is_stratified_first_k(tmp_path, k):
    # class folders a, b, c of 4 images each: dataset order is a a a a b b b b c c c c (plain first-K: a-heavy)
    root = tiny_imagefolder(tmp_path, classes=("a", "b", "c"), per_class=4, size=8)
    full = SSLDataModule("imagefolder", root=str(root), num_workers=0, batch_size=2, image_size=8)
    sub = SSLDataModule("imagefolder", root=str(root), num_workers=0, batch_size=2, image_size=8, subset=k)
    assert full.splits[0].labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    check_subset(full, sub, k)
    names = [list(pathlib.Path(sub.splits[0].source.paths[i]).parts[-2:]) for i in sub.splits[0].indices]
    # taken in turn a0 b0 c0 a1 b1 | c1 a2: k=5 → a 2, b 2, c 1; k=7 → a 3, b 2, c 2
    want = {
        5: [["a", "0.jpg"], ["a", "1.jpg"], ["b", "0.jpg"], ["b", "1.jpg"], ["c", "0.jpg"]],
        7: [
            ["a", "0.jpg"],
            ["a", "1.jpg"],
            ["a", "2.jpg"],
            ["b", "0.jpg"],
            ["b", "1.jpg"],
            ["c", "0.jpg"],
            ["c", "1.jpg"],
        ],
    }[k]
    assert names == want


def test_subset_larger_than_the_split_is_refused(tmp_path):
    root = tiny_imagefolder(tmp_path, per_class=2, size=8)
    sub = SSLDataModule("imagefolder", root=str(root), num_workers=0, batch_size=2, image_size=8, subset=5)
    with pytest.raises(ValueError, match="data.subset=5"):
        _ = sub.splits


def test_subset_file_trains_on_the_listed_images_and_refuses_bad_files(tmp_path):
    """data.subset_file: the listed rows (text or .npy, sorted), the same source as data.subset for the same rows;
    unknown, duplicated or non-integer indices, an empty or missing file and subset + subset_file refused in one
    line naming the file."""
    full = SSLDataModule(dataset="digits", num_workers=0).splits[0]
    rows = expected_rows(full.labels, 100)
    (tmp_path / "rows.txt").write_text("# the stratified first 100\n" + "\n".join(map(str, reversed(rows))) + "\n")
    np.save(tmp_path / "rows.npy", np.array(rows, dtype=np.int64))
    by_count = SSLDataModule(dataset="digits", num_workers=0, subset=100).splits[0]
    for name in ("rows.txt", "rows.npy"):
        train = SSLDataModule(dataset="digits", num_workers=0, subset_file=str(tmp_path / name)).splits[0]
        assert train.indices.tolist() == rows == by_count.indices.tolist()
        assert train.fingerprint() == by_count.fingerprint()
    bad = {
        "unknown.txt": ("3\n1797\n", r"1 unknown indices \(e.g. 1797\): the training split has 1437 images"),
        "twice.txt": ("3\n5\n3\n", r"index 3 is listed 2 times"),
        "words.txt": ("3\nfive\n", r"expected integer indices"),
        "empty.txt": ("# nothing\n", r"lists no index"),
    }
    for name, (text, message) in bad.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(ValueError, match=rf"data.subset_file=.*{name}: {message}"):
            _ = SSLDataModule(dataset="digits", num_workers=0, subset_file=str(tmp_path / name)).splits
    np.save(tmp_path / "floats.npy", np.array([0.5, 1.0]))
    with pytest.raises(ValueError, match=r"floats.npy: expected a 1-D array of integer indices, got float64"):
        _ = SSLDataModule(dataset="digits", num_workers=0, subset_file=str(tmp_path / "floats.npy")).splits
    with pytest.raises(FileNotFoundError, match=r"data.subset_file=.*nowhere.txt: no such file"):
        _ = SSLDataModule(dataset="digits", num_workers=0, subset_file=str(tmp_path / "nowhere.txt")).splits
    with pytest.raises(ValueError, match=r"data.subset and data.subset_file: choose one"):
        SSLDataModule(dataset="digits", num_workers=0, subset=10, subset_file=str(tmp_path / "rows.txt"))
