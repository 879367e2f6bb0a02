"""``selfsup-eval``'s on-disk feature cache — the one owner of its layout, written by
:func:`selfsup.evaluate.features.features` and read back by it and by ``selfsup-reduce`` (docs/reduce.md).

A cache file is ``<out dir>/eval_cache/<digest>.pt``: ``digest`` is the first 20 hex digits of the sha256 of the
JSON of its key (sorted keys; anything else written as ``str``), and the file holds ::

    {"key": <that key, as JSON would read it back>,
     "<split>": {"backbone": (N, F) float32, "embedding": (N, D) float32, "labels": (N,)}, ...}

for the splits ``train`` and ``test`` (and ``lidar``: LiDAR's augmented views). Tensors and plain containers only,
loaded with ``torch.load(weights_only=True)`` (:func:`selfsup.runtime.checkpoint.load_file`).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

from selfsup.runtime.checkpoint import load_file
from selfsup.runtime.files import atomic_write

DIR = "eval_cache"  # below the evaluation's output directory
PARTS = ("backbone", "embedding")  # what every split stores beside its labels
LABELS = "labels"


def _json(key: dict) -> str:
    return json.dumps(key, sort_keys=True, default=str)


def path_of(out_dir: str | os.PathLike, key: dict) -> Path:
    """Where the features of ``key`` (what they were computed from) are cached below ``out_dir``."""
    return Path(out_dir) / DIR / f"{hashlib.sha256(_json(key).encode()).hexdigest()[:20]}.pt"


def split(backbone: torch.Tensor, embedding: torch.Tensor, labels: torch.Tensor) -> dict:
    """One split's entry: backbone features (N, F), embeddings (N, D) and labels (N,)."""
    return {"backbone": backbone.contiguous(), "embedding": embedding.contiguous(), LABELS: labels}


def contents(key: dict, splits: dict) -> dict:
    """What a cache file holds: ``{"key": key (as JSON reads it back), **splits}``."""
    return {"key": json.loads(_json(key)), **splits}


def save(path: Path, cache: dict) -> None:
    """Write :func:`contents` to ``path`` atomically."""
    atomic_write(path, lambda f: torch.save(cache, f))


def load(path: Path, key: dict) -> dict | None:
    """The cache at ``path`` when it was written for ``key``, else None (ValueError for an unreadable file)."""
    cached = load_file(path, "features") if path.is_file() else None
    return cached if is_cache(cached) and cached.get("key") == json.loads(_json(key)) else None


def newest(directory: str | os.PathLike) -> Path | None:
    """The most recently written cache file below ``directory`` (an evaluation's output directory), if any."""
    caches = sorted((Path(directory) / DIR).glob("*.pt"), key=lambda p: p.stat().st_mtime)
    return caches[-1] if caches else None


def is_cache(obj) -> bool:
    """Whether a loaded object has a feature cache's layout (a ``train`` split at least)."""
    return isinstance(obj, dict) and isinstance(obj.get("train"), dict)


def read_part(cache: dict, part: str, source, splits=("train", "test")) -> dict:
    """``{split: {"features": cache[split][part], "labels": ...}}`` for each of ``splits`` the cache holds;
    ``source``: the file it came from, for the one-line error about another ``part``."""
    if part not in PARTS:
        raise ValueError(f"key={part!r}: features={source} is a selfsup-eval feature cache; expected one of {PARTS}")
    return {
        s: {"features": cache[s][part], "labels": cache[s].get(LABELS)}
        for s in splits
        if isinstance(cache.get(s), dict) and part in cache[s]
    }
