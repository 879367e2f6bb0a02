"""What ``selfsup-eval checkpoint=...`` names: a checkpoint file, a run directory, a sweep directory (runs at any
depth below it) or ``random`` (the same encoder at random initialisation) — each resolved into an :class:`EvalJob`
(one encoder to evaluate and where its results go) whose encoder is built at once, so bad input fails before anything
is written."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from selfsup import checks
from selfsup.runtime import checkpoint as ckpt_io


@dataclass
class EvalJob:
    """One encoder to evaluate (a checkpoint's, or a random initialisation): where it came from, its training config
    and where its results go."""

    name: str
    out_dir: Path
    backbone: nn.Module
    projector: nn.Module | None
    train_config: dict
    source: str  # checkpoint file, or "random"
    cache_id: dict = field(default_factory=dict)
    overrides: list[str] = field(default_factory=list)


def run_dir_of(ckpt_path: Path) -> Path:
    """``<run>/checkpoints/x.ckpt`` → ``<run>``; a checkpoint elsewhere → its folder."""
    return ckpt_path.parent.parent if ckpt_path.parent.name == "checkpoints" else ckpt_path.parent


def find_runs(sweep_dir: Path) -> list[Path]:
    """Run directories (holding ``checkpoints/last.ckpt``) at any depth below ``sweep_dir``, sorted."""
    found = {p.parent.parent for p in sweep_dir.rglob("last.ckpt") if p.parent.name == "checkpoints"}
    return sorted(found, key=lambda p: [int(s) if s.isdigit() else s for s in p.relative_to(sweep_dir).parts])


def _read_overrides(run_dir: Path) -> list[str]:
    path = run_dir / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return []
    return [str(o) for o in (OmegaConf.to_container(OmegaConf.load(path)) or [])]


def checkpoint_job(
    path: Path, name: str, out_dir: Path, trusted: Sequence[str] = (), branch: str = "online"
) -> EvalJob:
    """Rebuild backbone + projector of a selfsup checkpoint (one-line errors for other files and for weights that do
    not fit the saved architecture; its saved config may name only selfsup's own constructors and ``trusted``).
    ``branch="target"``: its EMA target's backbone + projector (``selfsup.runtime.checkpoint.BRANCHES``)."""
    ckpt = ckpt_io.load(path, "checkpoint", trusted)
    config = ckpt["selfsup"]["config"]
    if not isinstance(config, dict) or "backbone" not in config:
        raise ValueError(f"checkpoint={path}: the saved training config has no 'backbone' entry")
    prefix = ckpt_io.branch_prefix(ckpt, branch, path, "eval.branch")
    backbone = ckpt_io.backbone_from(ckpt, path, prefix + "backbone.")
    projector = None
    if config.get("projector") is not None:
        projector = instantiate(config["projector"])(in_dim=backbone.num_features)
        ckpt_io.load_part(projector, ckpt, prefix + "projector.", path)
    stat = path.stat()
    cache_id = {"checkpoint": str(path.resolve()), "mtime_ns": stat.st_mtime_ns, "size": stat.st_size}
    if prefix:  # the online branch's key is unchanged, so features cached before the option existed stay valid
        cache_id["branch"] = branch
        name = f"{name} (target)"
    run_dir = run_dir_of(path)
    return EvalJob(name, out_dir, backbone, projector, config, str(path), cache_id, _read_overrides(run_dir))


def random_init_job(cfg: DictConfig, out_dir: Path) -> EvalJob:
    """``checkpoint=random``: ``cfg.backbone`` at its random initialisation (seeded by ``eval.seed``)."""
    torch.manual_seed(cfg.eval.seed)
    backbone_cfg = OmegaConf.to_container(cfg.backbone, resolve=True)
    backbone = instantiate(cfg.backbone).eval()
    config = {"backbone": backbone_cfg}
    cache_id = {"checkpoint": "random", "backbone": backbone_cfg, "seed": int(cfg.eval.seed)}
    return EvalJob(
        f"random {backbone_cfg.get('name', '')}".strip(), out_dir, backbone, None, config, "random", cache_id
    )


def resolve_jobs(cfg: DictConfig) -> tuple[list[EvalJob], Path | None]:
    """The encoders named by ``checkpoint=`` (built now, so bad input fails before anything is written) and the
    sweep directory when it names one."""
    if OmegaConf.is_missing(cfg, "checkpoint") or cfg.checkpoint in (None, ""):
        raise ValueError("checkpoint is not set: expected checkpoint=<file.ckpt | run dir | sweep dir | random>")
    out = Path(cfg.out) if cfg.out is not None else None
    trusted = list(cfg.get("trusted_targets") or ())
    branch = checks.one_of("eval.branch", cfg.eval.get("branch", "online"), ckpt_io.BRANCHES)
    if str(cfg.checkpoint) == "random":
        if branch != "online":
            raise ValueError(
                "eval.branch=target: checkpoint=random has no EMA target network; expected eval.branch=online"
            )
        name = str(OmegaConf.select(cfg, "backbone.name", default="encoder")).replace("/", "_")
        return [random_init_job(cfg, out or Path("runs") / f"random-{name}")], None
    path = Path(str(cfg.checkpoint)).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"checkpoint={path}: no such file or directory")
    if path.is_file() or ckpt_io.is_sharded(path) or (path / "checkpoints" / "last.ckpt").exists():
        ckpt = ckpt_io.resolve(path, "checkpoint")
        return [
            checkpoint_job(ckpt, run_dir_of(ckpt).name, out or beside(run_dir_of(ckpt), branch), trusted, branch)
        ], None
    runs = find_runs(path)
    if not runs:
        raise FileNotFoundError(
            f"checkpoint={path}: a directory without checkpoints/last.ckpt and without run dirs below it; expected "
            "a .ckpt file, a run dir or a sweep dir"
        )
    jobs = []
    for run in runs:
        name = str(run.relative_to(path))
        run_out = out / name if out is not None else beside(run, branch)
        jobs.append(checkpoint_job(run / "checkpoints" / "last.ckpt", name, run_out, trusted, branch))
    return jobs, path


def beside(run_dir: Path, branch: str) -> Path:
    """Where a run's results go by default: the run dir; the target branch's in ``<run>/target/``, so that they never
    overwrite the online encoder's."""
    return run_dir / "target" if branch == "target" else run_dir
