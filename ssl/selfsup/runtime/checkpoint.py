"""Checkpoint files: atomic writes, loading that cannot run code, architecture checks, and DeepSpeed shards.

Whether a checkpoint's weights fit a model is decided here, once (:func:`fit`; a part's weights are the entries under
its prefix, :func:`sub_state`): for a resume, ``init_from=``, ``selfsup-eval`` and ``selfsup-export`` alike.

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

from selfsup import checks
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


def sub_state(state: dict, prefix: str) -> dict:
    """The entries of ``state`` under ``prefix`` (``"backbone."``), named without it: a part's own state dict."""
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def listed(keys: list[str], limit: int = 3) -> str:
    """The first ``limit`` names, and how many more: the lists of one-line errors and warnings."""
    more = f" (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return f"{keys[:limit]}{more}"


def fit(
    expected: dict,
    found: dict,
    source,
    key: str,
    saved_config: dict | None = None,
    model: str = "this run's model",
    extra_ok: bool = False,
) -> list[str]:
    """Whether the weights ``found`` (name → tensor) fit a model whose state dict is ``expected``: the one check of
    "does this checkpoint fit this model" (resume, ``init_from=``, ``selfsup-eval``, ``selfsup-export``).

    Every name of ``expected`` must be in ``found`` with the same shape, and — unless ``extra_ok`` — nothing else;
    otherwise one ValueError line names ``key=source``, the checkpoint's saved backbone (from ``saved_config``) and
    the first missing, reshaped and unexpected names. Returns the names only ``found`` has (sorted)."""
    shape = {k: tuple(v.shape) for k, v in expected.items()}
    saved = {k: tuple(v.shape) for k, v in found.items()}
    missing, unexpected = sorted(shape.keys() - saved.keys()), sorted(saved.keys() - shape.keys())
    reshaped = [f"{k} {saved[k]} vs {shape[k]}" for k in sorted(shape.keys() & saved.keys()) if saved[k] != shape[k]]
    if missing or reshaped or (unexpected and not extra_ok):
        backbone = ((saved_config or {}).get("backbone") or {}).get("name", "?")
        raise ValueError(
            f"{key}={source}: checkpoint of another architecture (saved backbone {backbone}): its weights do not fit "
            f"{model}: {len(missing)} missing {listed(missing)}, {len(reshaped)} with other shapes (saved vs now) "
            f"{listed(reshaped)}, {len(unexpected)} unexpected {listed(unexpected)}"
        )
    return unexpected


def check_compatible(model: nn.Module, ckpt: dict, path, key: str = "ckpt_path") -> None:
    """One-line error when ``ckpt``'s weights do not fit ``model`` (another backbone, width or projector):
    :func:`fit`."""
    fit(model.state_dict(), ckpt["state_dict"], path, key, ckpt.get("selfsup", {}).get("config"))


def load_part(part: nn.Module, ckpt: dict, prefix: str, path, key: str = "checkpoint") -> nn.Module:
    """Load the entries of ``ckpt["state_dict"]`` under ``prefix`` (``"backbone."``, ``"projector."``) into ``part``
    (built from the checkpoint's saved config), after :func:`fit` checked they are exactly its weights; eval mode."""
    state = sub_state(ckpt["state_dict"], prefix)
    config = ckpt["selfsup"].get("config")
    fit(part.state_dict(), state, path, key, config, model=f"the {prefix.rstrip('.')} its saved config builds")
    part.load_state_dict(state)
    return part.eval()


def non_finite(state_dict: dict) -> list[str]:
    """Names of floating-point tensors in ``state_dict`` holding NaN or Inf."""
    return [
        k
        for k, v in state_dict.items()
        if torch.is_tensor(v) and v.is_floating_point() and not bool(torch.isfinite(v).all())
    ]


def backbone_from(ckpt: dict, path="checkpoint", prefix: str = "backbone.") -> nn.Module:
    """The trained encoder of a checkpoint, rebuilt from its saved config, in eval mode; ``prefix="target.backbone."``:
    its EMA target's (:func:`branch_prefix`)."""
    config = ckpt["selfsup"].get("config")
    if not config or "backbone" not in config:
        raise ValueError(f"checkpoint={path}: holds no backbone config to rebuild the encoder from")
    return load_part(instantiate(OmegaConf.create(config).backbone), ckpt, prefix, path)


BRANCHES = ("online", "target")  # the trained encoder, or its EMA target (DINO evaluates its teacher)


def branch_prefix(ckpt: dict, branch: str, path, key: str = "branch") -> str:
    """The state-dict prefix of a checkpoint's ``branch`` (:data:`BRANCHES`): ``""`` for the trained networks,
    ``"target."`` for the EMA target (``target=ema``: BYOL, MoCo, DINO's teacher, iBOT, I-JEPA); a one-line error
    naming ``key`` for another name, or for a target the checkpoint does not hold."""
    if checks.one_of(key, branch, BRANCHES) == "online":
        return ""
    if not any(k.startswith("target.backbone.") for k in ckpt["state_dict"]):
        target = ((ckpt["selfsup"].get("config") or {}).get("target") or {}).get("_target_", "none")
        raise ValueError(
            f"{key}=target: checkpoint={path} holds no EMA target network (its target: {target}); expected {key}=online"
        )
    return "target."


def safetensors_metadata(path: Path, key: str, writer: str) -> dict:
    """The metadata of the safetensors file ``path`` (an exported encoder: ``selfsup-export``, ``selfsup-reduce``),
    which must hold ``key`` (one-line errors name the file and ``writer``, the command that writes such files)."""
    from safetensors import safe_open

    if not path.is_file():
        raise FileNotFoundError(f"path={path}: no such file")
    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
    if key not in meta:
        raise ValueError(f"path={path}: no '{key}' in the safetensors metadata (not written by {writer})")
    return meta


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
