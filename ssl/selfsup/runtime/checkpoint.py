"""Checkpoint files: atomic writes, loading that cannot run code, architecture checks, and DeepSpeed shards.

A selfsup checkpoint is a Lightning checkpoint whose every entry is a tensor or a plain container (dict, list,
str, number, bool, None) — the training config under ``checkpoint["selfsup"]["config"]`` included. So every load
uses ``torch.load(weights_only=True)``: a file whose pickle names any other class or function (a ``__reduce__``
that calls ``os.system``, say) is refused in one line that names the file, before any of it runs. DeepSpeed's
shard files also pickle three of DeepSpeed's own plain classes (``DEEPSPEED_SAFE_GLOBALS``); a shard directory is
scanned for anything beyond those before DeepSpeed (which loads with ``weights_only=False``) may read it.

The saved config is data too: :func:`load` and :func:`run_info` refuse one whose ``_target_`` names anything but
the constructors of selfsup's own configs (:func:`selfsup.config.check_saved_config`), before anything is built
from it.
"""

from __future__ import annotations

import os
import pickle
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch
from hydra.utils import instantiate
from lightning.pytorch.plugins.io import TorchCheckpointIO
from omegaconf import OmegaConf
from torch import nn

from selfsup.config import check_saved_config
from selfsup.runtime.files import atomic_write

# Classes DeepSpeed pickles into its optimizer-state shards (plain data holders, no code run on load).
DEEPSPEED_SAFE_GLOBALS = (
    "deepspeed.runtime.fp16.loss_scaler.LossScaler",
    "deepspeed.runtime.fp16.loss_scaler.DynamicLossScaler",
    "deepspeed.utils.tensor_fragment.fragment_address",
    "deepspeed.runtime.zero.config.ZeroStageEnum",
)


class UnsafeCheckpointError(ValueError):
    """The file's pickle names classes or functions outside the tensor/plain-container allow-list."""


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint I/O with atomic writes (:func:`selfsup.runtime.files.atomic_write`: a crash or a full
    disk leaves the previous file) and weights-only loading (:func:`load_file`), whatever Lightning asks for."""

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        atomic_write(path, lambda f: torch.save(checkpoint, f))

    def load_checkpoint(self, path, map_location=None, weights_only=None) -> dict:
        return load_file(Path(path), "ckpt_path", map_location=map_location or "cpu")


def load_file(path: Path, key: str = "checkpoint", map_location="cpu", mmap: bool = False):
    """``torch.load(path, weights_only=True)``; a pickle that needs anything else is refused in one line.
    ``mmap=True`` maps the tensors instead of reading them (shape checks of a large file)."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        unsafe = _unsafe_globals(path)
        if unsafe is None:  # a raw or legacy pickle, or no pickle at all: torch's message names a global, if any
            unsafe = re.findall(r"GLOBAL ([\w.]+)", str(e))[:1]
            if not unsafe:  # (torch's own text would advise weights_only=False: not quoted)
                raise ValueError(
                    f"{key}={path}: cannot be read as a PyTorch checkpoint (neither a zip archive of "
                    "tensors nor a pickle of plain data)"
                ) from None
        raise UnsafeCheckpointError(
            f"{key}={path}: refused: loading it would run code from the file ({', '.join(unsafe) or 'custom'} "
            "objects); selfsup checkpoints hold only tensors and plain containers"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise ValueError(f"{key}={path}: cannot be read as a PyTorch checkpoint ({_first_line(e)})") from None


def _unsafe_globals(path: Path) -> list[str] | None:
    try:
        return torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # noqa: BLE001 — not a zip archive of a pickle at all
        return None


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0] if text else ''}"


def resolve(path: str | os.PathLike, key: str = "checkpoint") -> Path:
    """A checkpoint file or shard directory, or ``<run dir>/checkpoints/last.ckpt`` for a run directory."""
    path = Path(path)
    if path.is_dir() and not is_sharded(path):
        path = path / "checkpoints" / "last.ckpt"
    if not path.exists():
        raise FileNotFoundError(f"{key}={path}: no such checkpoint (expected a .ckpt file or a run directory)")
    return path


def load(path: str | os.PathLike, key: str = "checkpoint", trusted: Sequence[str] = ()) -> dict:
    """Load a selfsup checkpoint on the CPU (a DeepSpeed shard directory is consolidated into one state dict);
    refuse files that are not one, that would run code, whose saved config names constructors outside selfsup's
    configs and ``trusted``, or whose weights or buffers hold NaN/Inf."""
    path = resolve(path, key)
    if path.is_dir():
        ckpt = _consolidate_sharded(path, key)
    else:
        ckpt = load_file(path, key)
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise ValueError(f"{key}={path}: not a selfsup checkpoint (no 'selfsup' entry with the training config)")
    _saved_config(ckpt, path, key, trusted)
    bad = non_finite(ckpt["state_dict"])
    if bad:
        raise ValueError(
            f"{key}={path}: refused: {len(bad)} weights or buffers hold NaN/Inf ({', '.join(bad[:3])}); "
            "the run diverged before this checkpoint was written — evaluate an earlier one"
        )
    return ckpt


def run_info(path: str | os.PathLike, key: str = "ckpt_path", trusted: Sequence[str] = ()) -> tuple[dict, int]:
    """(``checkpoint["selfsup"]``: the training config and run facts, global step) of a checkpoint file or shard
    directory; the shards are checked for unsafe content on the way, the config as :func:`load` checks it."""
    path = Path(path)
    ckpt = load_file(_model_states(check_sharded(path, key), key), key) if path.is_dir() else load_file(path, key)
    return _saved_config(ckpt, path, key, trusted), int(ckpt.get("global_step", 0))


def _saved_config(ckpt, path, key: str, trusted: Sequence[str]) -> dict:
    """``ckpt["selfsup"]`` once its training config is known to be data (:func:`check_saved_config`)."""
    info = ckpt.get("selfsup") if isinstance(ckpt, dict) else None
    if not isinstance(info, dict) or not isinstance(info.get("config"), dict):
        raise ValueError(f"{key}={path}: not a selfsup checkpoint (no 'selfsup' entry with the training config)")
    check_saved_config(info["config"], f"{key}={path}", trusted)
    return info


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


def non_finite(state_dict: dict) -> list[str]:
    """Names of floating-point tensors in ``state_dict`` holding NaN or Inf."""
    return [
        k
        for k, v in state_dict.items()
        if torch.is_tensor(v) and v.is_floating_point() and not bool(torch.isfinite(v).all())
    ]


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


# -- sharded checkpoints (DeepSpeed ZeRO: a directory with a 'latest' tag file) -------------------------------------


def is_sharded(path: Path) -> bool:
    return path.is_dir() and (path / "latest").is_file()


def _tag_dir(path: Path, key: str) -> Path:
    if not is_sharded(path):
        raise FileNotFoundError(f"{key}={path}: not a DeepSpeed ZeRO checkpoint directory (no 'latest' file)")
    tag = (path / "latest").read_text().strip()
    tag_dir = path / tag
    if not tag or "/" in tag or not tag_dir.is_dir():
        raise ValueError(f"{key}={path}: its 'latest' file names {tag!r}, not a shard folder beside it")
    return tag_dir


def _model_states(path: Path, key: str) -> Path:
    states = sorted(_tag_dir(path, key).glob("*model_states.pt"))
    if not states:
        raise FileNotFoundError(
            f"{key}={path}: no model states under {_tag_dir(path, key).name}/ (not a DeepSpeed checkpoint)"
        )
    return states[0]


def check_sharded(path: str | os.PathLike, key: str = "ckpt_path") -> Path:
    """Refuse a DeepSpeed shard directory whose files pickle anything beyond tensors, plain containers and
    ``DEEPSPEED_SAFE_GLOBALS`` (DeepSpeed itself loads them with ``weights_only=False``)."""
    path = Path(path)
    for shard in sorted(_tag_dir(path, key).glob("*.pt")):
        unsafe = _unsafe_globals(shard)
        if unsafe is None:
            raise ValueError(f"{key}={shard}: cannot be read as a PyTorch checkpoint shard")
        unsafe = [g for g in unsafe if g not in DEEPSPEED_SAFE_GLOBALS]
        if unsafe:
            raise UnsafeCheckpointError(
                f"{key}={shard}: refused: loading it would run code from the file ({', '.join(unsafe)} objects); "
                "DeepSpeed shards hold only tensors, plain containers and DeepSpeed's loss-scaler records"
            )
    return path


def zero_to_checkpoint(zero_dir, out) -> str:
    """A DeepSpeed ZeRO checkpoint directory (``last.ckpt/`` of a ``trainer=deepspeed_stage_*`` run) as one plain
    fp32 Lightning checkpoint ``out`` that ``selfsup-eval``/``selfsup-export``/:func:`backbone_from` read."""
    from lightning.pytorch.utilities.deepspeed import convert_zero_checkpoint_to_fp32_state_dict

    check_sharded(zero_dir, "checkpoint")
    convert_zero_checkpoint_to_fp32_state_dict(str(zero_dir), str(out))
    return str(out)


def _consolidate_sharded(path: Path, key: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "consolidated.ckpt"
        try:
            zero_to_checkpoint(path, out)
        except (ValueError, FileNotFoundError) as e:
            raise type(e)(str(e).replace("checkpoint=", f"{key}=", 1)) from None
        return load_file(out, key)
