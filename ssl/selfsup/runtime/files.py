"""Atomic file writes: a file is either its previous version or the complete new one, never a mix.

Every file selfsup writes into a run directory (checkpoints, ``.hydra/*.yaml``, ``metrics.json``, reports, exported
weights, the feature cache) goes through :func:`atomic_write`: the bytes go to ``.<name>.<pid>.tmp`` beside the
target, are flushed to disk, and ``os.replace`` swaps them in. A full disk ends in :class:`NoSpaceError` (one line,
the previous file kept); a killed writer leaves only a temporary file that :func:`remove_stale_temps` deletes when
the next run takes the directory's lock.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

TEMP_PATTERN = re.compile(r"^\..+\.\d+\.tmp$")  # .<name>.<pid>.tmp
FULL_BELOW = 1 << 20  # a write that failed with less than this free (before its partial file is removed): disk full


class NoSpaceError(OSError):
    """The disk filled up while writing ``path``; the previous version of the file is untouched."""

    def __init__(self, path: Path):
        free = shutil.disk_usage(path.parent).free
        super().__init__(
            errno.ENOSPC,
            f"no space left on {path.parent} writing {path.name} "
            f"({free / 2**20:.1f} MiB free); the previous {path.name} is kept",
        )

    def __str__(self) -> str:
        return self.strerror


def _file_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> Path:
    """Call ``write(f)`` on a temporary file beside ``path``, fsync it, then atomically rename it to ``path``.

    The file gets the usual permissions (0666 less the umask). Raises :class:`NoSpaceError` when the disk is full;
    on any error the temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _file_mode())
        os.replace(tmp, path)
    except BaseException as e:
        # torch.save reports a full disk as a RuntimeError of its zip writer: judge by the space left
        full = getattr(e, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or (
            isinstance(e, OSError | RuntimeError) and shutil.disk_usage(path.parent).free < FULL_BELOW
        )
        tmp.unlink(missing_ok=True)
        if full:
            raise NoSpaceError(path) from None
        raise
    fsync_dir(path.parent)
    return path


def atomic_write_text(path: str | os.PathLike, data: str | bytes) -> Path:
    """``data`` (text, UTF-8 encoded, or bytes) to ``path`` atomically."""
    return atomic_write(path, lambda f: f.write(data.encode() if isinstance(data, str) else data))


def fsync_dir(directory: Path) -> None:
    """Persist the rename itself (a crash right after ``os.replace`` must not bring the old file back)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def remove_stale_temps(directory: str | os.PathLike) -> list[Path]:
    """Delete temporary files (``.<name>.<pid>.tmp``) and directories that killed writers left in ``directory``.

    Call it only while holding the run directory's lock: then no other process is writing there.
    """
    directory = Path(directory)
    if not directory.is_dir():
        return []
    removed = []
    for p in directory.iterdir():
        if TEMP_PATTERN.match(p.name):
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink(missing_ok=True)
            removed.append(p)
    return removed
