"""Atomic writes: the previous file survives a failed or killed write and a full disk (one-line error)."""

import errno
import os
import stat

import pytest

from selfsup.runtime.files import NoSpaceError, atomic_write, atomic_write_text, remove_stale_temps


def test_a_failed_write_keeps_the_previous_file(tmp_path):
    path = atomic_write_text(tmp_path / "a.json", "old")

    def half_then_fail(f):
        f.write(b"new but incomp")
        raise RuntimeError("writer died")

    with pytest.raises(RuntimeError, match="writer died"):
        atomic_write(path, half_then_fail)
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["a.json"]


def test_files_get_the_usual_mode(tmp_path):
    old = os.umask(0o022)
    try:
        path = atomic_write_text(tmp_path / "x.safetensors", "data")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644  # not mkstemp's 0600


def test_enospc_becomes_one_line(tmp_path):
    path = atomic_write_text(tmp_path / "last.ckpt", "previous")

    def disk_full(f):
        f.write(b"x" * 100)
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(
        NoSpaceError,
        match=rf"no space left on {tmp_path} writing last.ckpt \(.* MiB free\); "
        r"the previous last.ckpt is kept",
    ):
        atomic_write(path, disk_full)
    assert path.read_text() == "previous" and os.listdir(tmp_path) == ["last.ckpt"]


def test_stale_temporaries_are_removed(tmp_path):
    (tmp_path / ".last.ckpt.4242.tmp").write_bytes(b"x" * 1000)  # a write killed by kill -9
    (tmp_path / ".last.ckpt.17.tmp").mkdir()  # a killed sharded (directory) write
    (tmp_path / "last.ckpt").write_text("keep")
    (tmp_path / ".hidden").write_text("keep")
    removed = remove_stale_temps(tmp_path)
    assert sorted(p.name for p in removed) == [".last.ckpt.17.tmp", ".last.ckpt.4242.tmp"]
    assert sorted(os.listdir(tmp_path)) == [".hidden", "last.ckpt"]


def test_real_full_disk(small_disk):
    disk = small_disk("1536k")
    path = atomic_write_text(disk / "last.ckpt", "previous")
    with pytest.raises(NoSpaceError, match=f"no space left on {disk} writing last.ckpt"):
        atomic_write(path, lambda f: f.write(b"\0" * 4 * 2**20))
    assert path.read_text() == "previous" and os.listdir(disk) == ["last.ckpt"]
