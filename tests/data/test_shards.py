"""Shards (selfsup.data.shards, docs/data.md): written from an ImageFolder or an in-memory dataset they hold the same
images in the same order; wids reads them too; a run from shards equals the run from the ImageFolder, resumes
mid-epoch bit for bit and splits over 2 processes as before; damaged, truncated, missing shards and a manifest that
does not match stop in one line naming the shard and member, with nothing written to the run's checkpoints."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from selfsup.config import ROOT
from selfsup.data import SSLDataModule
from selfsup.data.shards import ShardImages, parse_args, shards_from, write_shards
from selfsup.data.sources import FileImages
from selfsup.train import run
from tests.config_utils import compose_train, tiny_imagefolder
from tests.runs import losses, weights


def write(src, out, **kw):
    args = parse_args([f"src={src}", f"out={out}", *[f"{k}={v}" for k, v in kw.items()]])
    return shards_from(args, progress=False)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """40 training JPEGs of 2 classes (PNG and JPEG mixed), 8 held out; written as shards of at most 7 samples."""
    root = tiny_imagefolder(tmp_path_factory.mktemp("data") / "folder", per_class=20, size=24)
    from PIL import Image

    Image.new("RGB", (30, 20), (10, 200, 30)).save(root / "train" / "b" / "zz.png")  # a PNG among the JPEGs
    for c in "ab":
        for p in sorted((root / "val" / c).iterdir())[4:]:
            p.unlink()
    shards = write(root, root.parent / "shards", shard_samples=7)
    return root, shards


def test_shards_hold_the_folder_exactly(folder):
    root, shards = folder
    for split in ("train", "val"):
        files, sh = FileImages(root / split), ShardImages(shards, split)
        assert sh.classes == files.classes and torch.equal(sh.labels, files.labels) and len(sh) == len(files)
        for i in range(len(files)):
            assert torch.equal(sh.image(i), files.image(i)), (split, i)
    assert len(ShardImages(shards, "train").shards) == 6  # 41 samples, 7 a shard
    manifest = json.loads((shards / "manifest.json").read_text())
    assert manifest["splits"]["train"]["nsamples"] == 41 and manifest["classes"] == ["a", "b"]
    assert ShardImages(shards, "train").fingerprint() == ShardImages(shards, "train").fingerprint()
    assert ShardImages(shards, "train").fingerprint() != ShardImages(shards, "val").fingerprint()


def test_in_memory_images_are_written_losslessly(tmp_path):
    """A torchvision-style dataset held in memory (digits here) is written as PNGs: the same pixels come back."""
    dm = SSLDataModule(dataset="digits", num_workers=0)
    train, test = dm.load_splits()
    write_shards({"train": train, "val": test}, tmp_path / "s", train.classes, shard_samples=500, progress=False)
    back = ShardImages(tmp_path / "s", "train")
    assert torch.equal(back.labels, train.labels)
    assert all(torch.equal(back.image(i), train.image(i)) for i in range(0, len(train), 37))
    shard_dm = SSLDataModule(dataset="shards", root=str(tmp_path / "s"), image_size=16, num_workers=0)
    assert torch.equal(shard_dm.splits[1].image(5), test.image(5))


def test_wids_reads_our_shards(folder):
    """The index is wids' own format: wids.ShardListDataset returns each sample's stored bytes and label."""
    wids = pytest.importorskip("wids")
    _, shards = folder
    ours = ShardImages(shards, "train")
    theirs = wids.ShardListDataset(str(shards / "train.json"), cache_dir=str(shards), transformations=[])
    assert len(theirs) == len(ours)
    for i in (0, 6, 7, 40):
        sample = theirs[i]
        data = next(v for k, v in sample.items() if k in (".jpg", ".png")).read()
        assert data == ours.encoded(i) and int(sample[".cls"].read()) == int(ours.labels[i])


def test_any_data_config_reads_shards_and_eval_sees_the_same_images(folder):
    root, shards = folder
    kw = dict(batch_size=4, image_size=16, num_workers=0)
    from_files = SSLDataModule(dataset="imagefolder", root=str(root), **kw).eval_datasets()
    from_shards = SSLDataModule(dataset="shards", root=str(shards), **kw).eval_datasets()
    as_folder = SSLDataModule(dataset="imagefolder", root=str(shards), **kw).eval_datasets()
    for a, b, c in zip(from_files, from_shards, as_folder):
        assert len(a) == len(b) == len(c)
        for i in range(len(a)):
            assert torch.equal(a[i][0], b[i][0]) and torch.equal(a[i][0], c[i][0])


TRAIN = [
    "backbone=small_cnn",
    "+backbone.width=8",
    "+backbone.norm=none",
    "projector.batch_norm=false",
    "projector.hidden_dim=32",
    "data.image_size=16",
    "data.batch_size=8",
    "data.num_workers=2",
    "trainer.max_epochs=6",  # 5 steps an epoch
    "trainer.check_val_every_n_epoch=3",
    "trainer.log_every_n_steps=1",
    "callbacks.progress=null",
    "report_baseline=false",
    "callbacks.last.every_n_train_steps=4",
    "callbacks.last.every_n_epochs=null",
]


def data(root):
    return ["data=imagefolder", f"data.root={root}", "data.eval_train_subset=null", "data.eval_test_subset=null"]


def test_run_from_shards_equals_run_from_the_folder_and_resumes_mid_epoch(folder, tmp_path):
    """30 steps with 2 workers: the same losses and weights bit for bit; stopped at step 13 (epoch 2, batch 3) and
    resumed, the run from shards ends where the uninterrupted one does."""
    root, shards = folder
    run(compose_train(data(root) + TRAIN, tmp_path / "files"))
    run(compose_train(data(shards) + TRAIN, tmp_path / "shards"))
    assert sorted(losses(tmp_path / "files")) == list(range(30))
    assert losses(tmp_path / "files") == losses(tmp_path / "shards")
    wa, wb = weights(tmp_path / "files"), weights(tmp_path / "shards")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    stop = ["+callbacks.stop._target_=tests.runs.InterruptAt", "+callbacks.stop.step=13"]
    with pytest.raises(RuntimeError, match="interrupted at step 13"):
        run(compose_train(data(shards) + TRAIN + stop, tmp_path / "resumed"))
    run(compose_train(data(shards) + TRAIN + ["resume=true"], tmp_path / "resumed"))
    assert losses(tmp_path / "resumed") == losses(tmp_path / "shards")
    wc = weights(tmp_path / "resumed")
    assert all(torch.equal(wb[k], wc[k]) for k in wb)


@pytest.mark.ddp
@pytest.mark.slow
def test_two_processes_from_shards_follow_one(folder, tmp_path):
    _, shards = folder
    one = data(shards) + TRAIN + ["trainer.max_epochs=2", "data.num_workers=0"]
    run(compose_train(one, tmp_path / "one"))
    run(compose_train(one + ["trainer=ddp_cpu", "data.batch_size=4"], tmp_path / "two"))
    a, b = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert sorted(a) == sorted(b) == list(range(10))
    for step in a:
        assert b[step] == pytest.approx(a[step], rel=1e-5, abs=1e-6), step


@pytest.fixture
def copy_of(folder, tmp_path):
    import shutil

    _, shards = folder
    shutil.copytree(shards, tmp_path / "copy")
    return tmp_path / "copy"


def open_train(root):
    return SSLDataModule(dataset="shards", root=str(root), batch_size=4, image_size=16, num_workers=0).splits


def test_truncated_missing_and_mismatched_shards_are_named_before_training(copy_of):
    tar = copy_of / "train" / "train-000002.tar"
    data = tar.read_bytes()
    tar.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"shard train/train-000002.tar is \d+ bytes, train.json says \d+: truncated"):
        open_train(copy_of)
    tar.unlink()
    with pytest.raises(FileNotFoundError, match=r"shard train/train-000002.tar is missing \(train.json lists 6"):
        open_train(copy_of)
    tar.write_bytes(data)
    open_train(copy_of)
    index = json.loads((copy_of / "train.json").read_text())
    index["shardlist"][0]["nsamples"] = 8
    (copy_of / "train.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match=r"train.json does not match manifest.json \(sha256 differs\)"):
        open_train(copy_of)
    (copy_of / "manifest.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"no manifest.json: not a shard directory, or its selfsup-shards"):
        open_train(copy_of)


def test_a_shard_swapped_for_another_is_named(copy_of):
    a, b = copy_of / "train" / "train-000000.tar", copy_of / "train" / "train-000001.tar"
    if a.stat().st_size != b.stat().st_size:
        pytest.skip("shards of different sizes: the size check names the swap first")
    a.write_bytes(b.read_bytes())
    with pytest.raises(ValueError, match=r"member 00000000: the tar header there names '00000007"):
        open_train(copy_of)[0].image(0)


def flip_byte(shards, i):
    """Damage sample i's stored bytes (one byte in the middle of its payload)."""
    source = ShardImages(shards, "train")
    s, offset, size = int(source.shard_of[i]), int(source.members[i]["offset"]), int(source.members[i]["size"])
    path = shards / source.shards[s]
    with open(path, "r+b") as f:
        f.seek(offset + size // 2)
        byte = f.read(1)
        f.seek(offset + size // 2)
        f.write(bytes([byte[0] ^ 0xFF]))
    return source.shards[s]


def test_verify_names_a_damaged_member_and_skip_bad_leaves_it_out(copy_of, caplog):
    shard = flip_byte(copy_of, 9)
    with pytest.raises(ValueError, match=rf"data.verify: .*shard {shard} member 00000009 \(00000009.jpg\) is corrupt"):
        SSLDataModule(dataset="shards", root=str(copy_of), image_size=16, num_workers=0, verify=True).load_splits()
    dm = SSLDataModule(dataset="shards", root=str(copy_of), image_size=16, num_workers=0, skip_bad=True)
    with caplog.at_level("WARNING"):
        train, _ = dm.splits
    assert len(train) == 40 and "left out 1 damaged sample(s)" in caplog.text
    full = ShardImages(copy_of, "train")
    assert torch.equal(train.image(9), full.image(10)) and train.labels[9] == full.labels[10]


@pytest.mark.slow
def test_damaged_member_stops_training_in_one_line_and_writes_no_checkpoint(copy_of, tmp_path):
    """Read by a DataLoader worker mid-run: `selfsup-train: error: data.root=... shard ... member ... is corrupt`,
    exit 2, and the run directory holds no checkpoint."""
    shard = flip_byte(copy_of, 30)
    env = dict(os.environ, HYDRA_FULL_ERROR="0")
    cmd = [sys.executable, "-m", "selfsup.train", *data(copy_of), *TRAIN, f"hydra.run.dir={tmp_path / 'run'}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"selfsup-train: error: data.root={copy_of}: shard {shard} member 000000"), last
    assert "is corrupt" in last and "worker" not in last
    assert not list((tmp_path / "run").glob("checkpoints/*"))


def test_writer_refuses_bad_arguments_and_a_used_directory(folder, tmp_path):
    root, shards = folder
    with pytest.raises(ValueError, match=rf"out={shards}: exists and is not an empty directory"):
        write(root, shards)
    with pytest.raises(ValueError, match=r"shard_mb=abc: expected float"):
        parse_args([f"src={root}", f"out={tmp_path}", "shard_mb=abc"])
    with pytest.raises(ValueError, match=r"argument 'shards=3': expected key=value with key one of"):
        parse_args([f"src={root}", f"out={tmp_path}", "shards=3"])
    with pytest.raises(ValueError, match=r"out not set"):
        parse_args([f"src={root}"])
    with pytest.raises(FileNotFoundError, match=r"data.root=.*nowhere: directory does not exist"):
        write(tmp_path / "nowhere", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_cli_writes_shards_and_reports_errors_in_one_line(folder, tmp_path):
    root, _ = folder
    cli = [sys.executable, "-m", "selfsup.data.shards"]
    ok = subprocess.run([*cli, f"src={root}", f"out={tmp_path / 's'}"], capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0 and (tmp_path / "s" / "manifest.json").is_file(), ok.stderr[-2000:]
    bad = subprocess.run([*cli, f"src={root}", f"out={tmp_path / 's'}"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines()[-1].startswith("selfsup-shards: error: out=")
    assert np.load(tmp_path / "s" / "train" / "train-000000.idx.npy").shape == (41,)


@pytest.fixture
def served(folder, tmp_path, monkeypatch):
    """The shards served over HTTP on 127.0.0.1 (a copy, which a test may damage), and an empty shard cache."""
    import functools
    import shutil
    import threading
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    shutil.copytree(folder[1], tmp_path / "served" / "shards")

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    handler = functools.partial(Quiet, directory=str(tmp_path / "served"))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("SELFSUP_SHARD_CACHE", str(tmp_path / "cache"))
    yield f"http://127.0.0.1:{server.server_address[1]}/shards", tmp_path / "served" / "shards"
    server.shutdown()


def test_shards_from_a_url_are_fetched_checked_and_cached(folder, served, tmp_path):
    """data.root=http://...: the same images and the same training run as from the directory; each shard is fetched
    on its first read into the cache; a shard damaged on the server is refused at download, naming it."""
    _, shards = folder
    url, served_dir = served
    remote, local = ShardImages(url, "train"), ShardImages(shards, "train")
    assert not list((tmp_path / "cache").rglob("*.tar"))  # nothing fetched before a read
    assert torch.equal(remote.labels, local.labels)
    assert all(torch.equal(remote.image(i), local.image(i)) for i in range(len(local)))
    assert len(list((tmp_path / "cache").rglob("*.tar"))) == 6
    short = [*TRAIN, "trainer.max_epochs=1", "trainer.check_val_every_n_epoch=1"]
    run(compose_train(data(shards) + short, tmp_path / "local"))
    run(compose_train(data(url) + short, tmp_path / "remote"))
    assert losses(tmp_path / "local") == losses(tmp_path / "remote")
    import shutil

    shutil.rmtree(tmp_path / "cache")
    shard = flip_byte(served_dir, 3)
    with pytest.raises(ValueError, match=rf"data.root={url}: shard {shard}: {url}/{shard} downloaded as \d+ bytes"):
        ShardImages(url, "train").image(3)
    assert not list((tmp_path / "cache").rglob("*.tar*"))  # no partial or damaged shard left in the cache


@pytest.mark.slow
def test_cifar10_from_shards_equals_the_image_folder_over_hundreds_of_steps(cifar10_root, tmp_path):
    """Real CIFAR-10 JPEGs: SimCLR's views, 2 workers, 250 steps from the shards equal those from the ImageFolder."""
    shards = write(cifar10_root, tmp_path / "shards", val_dir="test")
    steps = [
        "recipes=cifar10/simclr",
        "backbone=small_cnn",
        "+backbone.width=8",
        "projector.hidden_dim=64",
        "projector.out_dim=32",
        "data.subset=4000",
        "data.batch_size=16",
        "data.num_workers=2",
        "data.eval_train_subset=200",
        "data.eval_test_subset=100",
        "trainer.max_steps=250",
        "trainer.log_every_n_steps=1",
        "callbacks.progress=null",
        "report_baseline=false",
    ]
    run(compose_train(steps + [f"data.root={cifar10_root}"], tmp_path / "files"))
    run(compose_train(steps + [f"data.root={shards}"], tmp_path / "shards_run"))
    a, b = losses(tmp_path / "files"), losses(tmp_path / "shards_run")
    assert sorted(a) == list(range(250)) and a == b
