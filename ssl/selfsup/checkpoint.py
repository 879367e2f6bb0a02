"""Checkpoints: atomic writes, loading by file or run directory, and architecture checks with one-line errors."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from hydra.utils import instantiate
from lightning.pytorch.plugins.io import TorchCheckpointIO
from omegaconf import OmegaConf
from torch import nn


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write to a temporary file in the target directory, then ``os.replace``: a crash leaves the old file."""

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            torch.save(checkpoint, tmp)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)


def resolve(path: str | os.PathLike, key: str = "checkpoint") -> Path:
    """A checkpoint file, or ``<run dir>/checkpoints/last.ckpt`` for a run directory."""
    path = Path(path)
    if path.is_dir():
        path = path / "checkpoints" / "last.ckpt"
    if not path.is_file():
        raise FileNotFoundError(f"{key}={path}: no such checkpoint (expected a .ckpt file or a run directory)")
    return path


def load(path: str | os.PathLike, key: str = "checkpoint") -> dict:
    """Load a selfsup checkpoint on the CPU; refuse files that are not one."""
    path = resolve(path, key)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 — any unpickling failure means "not a checkpoint we can read"
        raise ValueError(f"{key}={path}: cannot be read as a PyTorch checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(ckpt, dict) or "selfsup" not in ckpt or "state_dict" not in ckpt:
        raise ValueError(f"{key}={path}: not a selfsup checkpoint (no 'selfsup' entry with the training config)")
    return ckpt


def check_compatible(model: nn.Module, ckpt: dict, path, key: str = "ckpt_path") -> None:
    """One-line error when ``ckpt``'s weights do not fit ``model`` (another backbone, width or projector)."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in ckpt["state_dict"].items()}
    missing, unexpected = sorted(expected.keys() - found.keys()), sorted(found.keys() - expected.keys())
    mismatched = sorted(k for k in expected.keys() & found.keys() if expected[k] != found[k])
    if missing or unexpected or mismatched:
        saved = (ckpt.get("selfsup", {}).get("config") or {}).get("backbone", {})
        raise ValueError(
            f"{key}={path}: checkpoint of another architecture (saved backbone {saved.get('name', saved)}): "
            f"{len(missing)} missing keys {missing[:3]}, {len(unexpected)} unexpected {unexpected[:3]}, "
            f"{len(mismatched)} with other shapes {mismatched[:3]}"
        )


def backbone_from(ckpt: dict, path="checkpoint") -> nn.Module:
    """The trained encoder of a checkpoint, rebuilt from its saved config, in eval mode."""
    config = ckpt["selfsup"].get("config")
    if not config or "backbone" not in config:
        raise ValueError(f"checkpoint={path}: holds no backbone config to rebuild the encoder from")
    backbone = instantiate(OmegaConf.create(config).backbone)
    state = {k[len("backbone.") :]: v for k, v in ckpt["state_dict"].items() if k.startswith("backbone.")}
    check_compatible(backbone, {"state_dict": state, "selfsup": ckpt["selfsup"]}, path, key="checkpoint")
    backbone.load_state_dict(state)
    return backbone.eval()
