"""Image sources: non-image files skipped with a count; image files that cannot be read named in one line (from
DataLoader workers too), found up front by data.verify=true, left out by data.skip_bad=true."""

import os
import subprocess
import sys

import pytest

from selfsup.config import ROOT
from selfsup.data import SSLDataModule
from selfsup.data.sources import FileImages, check_image
from selfsup.train import build
from tests.config_utils import compose_train, tiny_imagefolder


@pytest.fixture
def damaged(tmp_path):
    """A tiny ImageFolder with a garbage .jpg, an empty .png and a JPEG cut in half."""
    root = tiny_imagefolder(tmp_path / "data", per_class=6)
    (root / "train" / "a" / "garbage.jpg").write_bytes(b"this is not an image")
    (root / "train" / "b" / "empty.png").write_bytes(b"")
    good = (root / "train" / "a" / "0.jpg").read_bytes()
    (root / "train" / "b" / "cut.jpg").write_bytes(good[: len(good) // 2])
    return root


def test_check_image_names_each_problem(damaged):
    train = damaged / "train"
    assert check_image(str(train / "a" / "0.jpg")) is None
    assert "cannot identify image file" in check_image(str(train / "a" / "garbage.jpg"))
    assert check_image(str(train / "b" / "empty.png")) is not None
    assert check_image(str(train / "b" / "cut.jpg")) == "truncated JPEG: no end-of-image marker"


def test_verify_refuses_then_skip_bad_leaves_them_out(damaged, caplog):
    dm = SSLDataModule(
        dataset="imagefolder", root=str(damaged), batch_size=4, image_size=16, num_workers=0, verify=True
    )
    with pytest.raises(
        ValueError,
        match=r"data.verify: 3 unreadable image\(s\) in the train split, e.g. .*(garbage|"
        r"empty|cut)\..* pass data.skip_bad=true to leave them out",
    ):
        dm.load_splits()
    dm = SSLDataModule(
        dataset="imagefolder", root=str(damaged), batch_size=4, image_size=16, num_workers=0, skip_bad=True
    )
    with caplog.at_level("WARNING"):
        train, _ = dm.splits
    assert len(train) == 12 and "left out 3 unreadable image(s)" in caplog.text
    assert train.labels.tolist() == [0] * 6 + [1] * 6


def test_decode_error_names_the_file(damaged):
    source = FileImages(damaged / "train")
    with pytest.raises(ValueError, match=r"cannot decode image .*garbage.jpg .*data.verify=true data.skip_bad=true"):
        source.image(source.paths.index(str(damaged / "train" / "a" / "garbage.jpg")))


@pytest.mark.slow
@pytest.mark.parametrize("workers", [0, 2])
def test_corrupt_image_ends_training_in_one_line_naming_it(damaged, tmp_path, workers):
    """Whatever the worker count: `selfsup-train: error: cannot decode image <path> ...`, exit 2."""
    env = dict(os.environ, HYDRA_FULL_ERROR="0")
    cmd = [
        sys.executable,
        "-m",
        "selfsup.train",
        "data=imagefolder",
        f"data.root={damaged}",
        "data.val_dir=val",
        "data.batch_size=15",
        "data.image_size=16",
        f"data.num_workers={workers}",
        "backbone=small_cnn",
        "trainer.max_epochs=1",
        "callbacks.progress=null",
        f"hydra.run.dir={tmp_path / 'run'}",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("selfsup-train: error: cannot decode image ") and str(damaged) in last, last
    assert "data.skip_bad=true" in last and "worker" not in last


def test_non_image_files_are_skipped_with_a_count(tmp_path, caplog):
    root = tiny_imagefolder(tmp_path / "data", per_class=3)
    (root / "train" / "a" / "notes.txt").write_text("not an image")
    cfg = compose_train(
        ["data=imagefolder", f"data.root={root}", "data.batch_size=2", "data.image_size=32"], tmp_path / "run"
    )
    datamodule, _, _ = build(cfg)
    with caplog.at_level("WARNING"):
        assert len(datamodule.splits[0]) == 6
    assert "skipped 1 non-image files" in caplog.text
