"""Feature matrices in, reduced vectors and the encoder out.

Inputs (``features=<path>``), never unpickled beyond plain tensors and containers:
    ``.npy``            a 2-D array (``np.load(allow_pickle=False)``: an object array is refused)
    ``.pt`` / ``.pth``  a tensor, a dict of tensors (pick one with ``key=``), or a ``selfsup-eval`` feature cache
                        (``{"train"|"test": {"backbone", "embedding", "labels"}}``) — loaded with
                        ``torch.load(weights_only=True)`` through :func:`selfsup.runtime.checkpoint.load_file`,
                        which refuses pickles that would run code
    ``.safetensors``    one tensor, or pick one with ``key=``
    a directory         the newest ``eval_cache/*.pt`` below it (a run dir or ``out`` dir that ``selfsup-eval`` used)
A feature cache (its layout: :mod:`selfsup.feature_cache`) gives a ``train`` split (the encoder is fitted on it) and a
``test`` split (only transformed), with labels; ``key`` picks ``backbone`` (default: what kNN and the linear probe
use) or ``embedding``.

Outputs (``out=<dir>``), written atomically:
    ``encoder.safetensors``   f's weights; metadata ``selfsup_tldr`` = the architecture (JSON) for :func:`load_encoder`
    ``reduced.safetensors``   ``train`` (N, d) [+ ``test`` (M, d)] float32, ``train_labels`` / ``test_labels``
                              when known
    ``summary.json``          the config, the input, the neighbour and training statistics
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import nn

from selfsup import feature_cache
from selfsup.reduce.tldr import build_encoder
from selfsup.runtime.checkpoint import load_file, safetensors_metadata
from selfsup.runtime.files import atomic_write, atomic_write_text

SUFFIXES = (".npy", ".pt", ".pth", ".safetensors")
META_KEY = "selfsup_tldr"


def _pick(tensors: dict, key: str | None, path: Path) -> torch.Tensor:
    names = sorted(k for k, v in tensors.items() if isinstance(v, torch.Tensor))
    if key is None:
        if len(names) != 1:
            raise ValueError(f"key=null: features={path} holds tensors {names}; expected key=<one of them>")
        key = names[0]
    if key not in names:
        raise ValueError(f"key={key!r}: features={path} holds tensors {names}; expected one of them")
    return tensors[key]


def _resolve(path: Path) -> Path:
    if not path.exists():
        raise FileNotFoundError(f"features={path}: no such file or directory")
    if path.is_dir():
        cache = feature_cache.newest(path)
        if cache is None:
            raise FileNotFoundError(
                f"features={path}: a directory without {feature_cache.DIR}/*.pt (run selfsup-eval first, "
                f"or pass a {'/'.join(SUFFIXES)} file)"
            )
        return cache
    if path.suffix not in SUFFIXES:
        raise ValueError(f"features={path}: expected a {', '.join(SUFFIXES)} file or a selfsup-eval output directory")
    return path


def load_features(path: str | os.PathLike, key: str | None = None) -> tuple[Path, dict]:
    """(resolved file, ``{"train": {"features", "labels"}, ["test": {...}]}``); features (N, D) float, labels or None.

    Raises one-line ``ValueError`` / ``FileNotFoundError`` naming ``features=`` or ``key=`` for a missing or
    unreadable file, a pickle, a missing key, a matrix that is not 2-D floating point, or non-finite values."""
    path = _resolve(Path(path))
    splits: dict[str, dict] = {}
    if path.suffix == ".npy":
        try:
            array = np.load(path, allow_pickle=False)
        except ValueError as e:  # object arrays need pickle
            raise ValueError(f"features={path}: refused: {str(e).splitlines()[0]} (expected a numeric array)") from None
        except OSError as e:
            raise ValueError(f"features={path}: cannot be read as .npy ({e})") from None
        splits["train"] = {"features": torch.from_numpy(np.ascontiguousarray(array)), "labels": None}
    elif path.suffix == ".safetensors":
        try:
            tensors = load_safetensors(str(path))
        except Exception as e:  # noqa: BLE001 — safetensors raises its own error types for a damaged header
            raise ValueError(f"features={path}: cannot be read as safetensors ({str(e).splitlines()[0]})") from None
        splits["train"] = {"features": _pick(tensors, key, path), "labels": None}
    else:
        obj = load_file(path, "features")
        if isinstance(obj, torch.Tensor):
            splits["train"] = {"features": obj, "labels": None}
        elif feature_cache.is_cache(obj):
            splits.update(feature_cache.read_part(obj, "backbone" if key is None else key, path))
        elif isinstance(obj, dict):
            splits["train"] = {"features": _pick(obj, key, path), "labels": None}
        else:
            raise ValueError(f"features={path}: holds a {type(obj).__name__}; expected a tensor or a dict of tensors")
    for split, d in splits.items():
        d["features"] = check_matrix(d["features"], f"features={path}" + ("" if split == "train" else f" ({split})"))
        if d["labels"] is not None and d["labels"].shape[0] != d["features"].shape[0]:
            d["labels"] = None
    if "test" in splits and splits["test"]["features"].shape[1] != splits["train"]["features"].shape[1]:
        raise ValueError(
            f"features={path}: test width {splits['test']['features'].shape[1]} != train width "
            f"{splits['train']['features'].shape[1]}; expected equal"
        )
    return path, splits


def check_matrix(x, name: str) -> torch.Tensor:
    """A finite 2-D floating-point (N ≥ 2, D ≥ 1) tensor (integers are converted to float32), else ValueError."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name}: holds a {type(x).__name__}; expected a 2-D tensor (N, D)")
    if x.ndim != 2:
        raise ValueError(f"{name}: got shape {tuple(x.shape)}; expected a 2-D matrix (N rows, D features)")
    if x.shape[0] < 2 or x.shape[1] < 1:
        raise ValueError(f"{name}: got shape {tuple(x.shape)}; expected at least 2 rows and 1 column")
    if x.is_complex() or x.dtype == torch.bool:
        raise ValueError(f"{name}: got dtype {x.dtype}; expected real numbers")
    if not x.is_floating_point():
        x = x.float()
    elif x.dtype in (torch.float16, torch.bfloat16):
        x = x.float()
    bad = ~torch.isfinite(x)
    if bad.any():
        rows = bad.any(1).nonzero().flatten()
        raise ValueError(
            f"{name}: {int(bad.sum())} non-finite values (NaN/inf) in {rows.numel()} rows, first row "
            f"{int(rows[0])}; expected finite features"
        )
    return x


def save_outputs(out: str | os.PathLike, encoder: nn.Module, architecture: dict, reduced: dict, summary: dict) -> dict:
    """Write ``encoder.safetensors``, ``reduced.safetensors`` and ``summary.json`` into ``out``; returns the paths."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"out={out}: is a file; expected a directory (created if missing)")
    state = {k: v.detach().float().contiguous().cpu() for k, v in encoder.state_dict().items()}
    meta = {"format": "pt", META_KEY: json.dumps(architecture, sort_keys=True)}
    paths = {
        "encoder": out / "encoder.safetensors",
        "reduced": out / "reduced.safetensors",
        "summary": out / "summary.json",
    }
    atomic_write(paths["encoder"], lambda f: f.write(save_safetensors(state, metadata=meta)))
    tensors = {k: v.contiguous().cpu() for k, v in reduced.items() if v is not None}
    atomic_write(paths["reduced"], lambda f: f.write(save_safetensors(tensors, metadata={"format": "pt"})))
    atomic_write_text(paths["summary"], json.dumps(summary, indent=2, sort_keys=True, default=str) + "\n")
    return paths


def load_encoder(path: str | os.PathLike) -> nn.Sequential:
    """The encoder f written by ``selfsup-reduce`` (``encoder.safetensors``), rebuilt and loaded, in eval mode."""
    meta = safetensors_metadata(Path(path), META_KEY, "selfsup-reduce")
    arch = json.loads(meta[META_KEY])
    encoder = build_encoder(int(arch["input_dim"]), int(arch["n_components"]), arch["encoder"])
    encoder.load_state_dict(load_safetensors(str(path)))
    return encoder.eval()
