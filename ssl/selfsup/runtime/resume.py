"""New run or resumed run: which checkpoint to continue from, and the config it continues with.

A resumed run (``resume=true`` with ``<run dir>/checkpoints/last.ckpt``, or ``ckpt_path=<file>``) continues with the
config saved in its checkpoint, not with what the command line would compose from the defaults: ``resume=true
hydra.run.dir=<run>`` is enough. Overrides on a resume command line are compared with the saved config: equal
values are fine (a requeued job repeats its command line), keys in ``SAFE_ON_RESUME`` may change (recorded in
``<run dir>/.hydra/resumes.yaml``), and any other difference is refused in one line. Paths inside the saved config
that pointed into the old run directory follow the run when it was moved or copied.

A new run is refused where the directory already holds one (a checkpoint or a logged metrics row: an attempt that
stopped before its first logged step, leaving only ``.hydra/`` and ``train.log``, is started over by the same
command). ``resume=true`` on a directory that holds no run is refused (a mistyped path must not start over);
``resume=auto`` continues a run where there is one and starts it where there is none — what a SLURM job's first
start and its requeues share. ``ckpt_path=<checkpoint of run A>`` into a directory that holds another run B is
refused (B's checkpoints and metrics would be overwritten); into A's own directory or an empty one it continues A.
"""

from __future__ import annotations

import copy
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from selfsup.runtime.checkpoint import run_info

log = logging.getLogger(__name__)

# Keys a resume may change: how long to train, how many processes and data loaders run it (the global batch is
# checked separately: selfsup.train.cli.check_resumable), where the data lives, logging (label-free validation
# scores included), checkpoint cadence and launcher settings.
SAFE_ON_RESUME = (
    "trainer.max_epochs",
    "trainer.max_steps",
    "trainer.devices",
    "trainer.num_nodes",
    "trainer.log_every_n_steps",
    "trainer.enable_model_summary",
    "trainer.enable_progress_bar",
    "trainer.limit_val_batches",
    "trainer.check_val_every_n_epoch",
    "trainer.val_check_interval",
    "trainer.num_sanity_val_steps",
    "data.root",
    "data.num_workers",
    "data.download",
    "data.verify",
    "data.skip_bad",
    "data.batch_size",
    "global_batch_size",
    "callbacks",
    "logger",
    "launcher",
    "resume",
    "ckpt_path",
    "run_dir",
    "report_baseline",
    "optimize_metric",
    "label_free",
)


# how this command was started, not the run's settings (what this command trusts, too: never the file's word)
_THIS_INVOCATION = ("run_dir", "resume", "ckpt_path", "trusted_targets")


@dataclass
class Plan:
    """What ``selfsup-train`` will do: the config to build, the checkpoint to continue from (None: a new run) and
    the keys a resume changed (key -> [saved, new])."""

    cfg: DictConfig
    ckpt_path: str | None = None
    step: int = 0
    changes: dict = field(default_factory=dict)
    saved: dict = field(default_factory=dict)  # the checkpoint's "selfsup" entry


def holds_run(run_dir: Path) -> str | None:
    """What shows that ``run_dir`` holds a run that trained: a checkpoint or a logged metrics row (None: nothing
    does — ``.hydra/``, ``train.log`` and the lock of an attempt that stopped before its first logged step do not
    count; a live run's lock refuses a second run by itself, :class:`selfsup.runtime.lock.RunLock`)."""
    checkpoints = run_dir / "checkpoints"
    if (checkpoints / "last.ckpt").exists():
        return str(checkpoints / "last.ckpt")
    if checkpoints.is_dir() and any(checkpoints.iterdir()):
        return str(checkpoints)
    metrics = run_dir / "metrics.csv"
    if metrics.is_file():
        with open(metrics, "rb") as f:
            if len(f.read(1 << 16).splitlines()) > 1:  # a header and at least one row
                return str(metrics)
    return None


RESUME_CHOICES = (False, True, "auto")


def plan(cfg: DictConfig, overrides: list[str] | None = None, rank_zero: bool = True) -> Plan:
    """Decide new run vs resume for ``cfg`` (composed from ``overrides``; None: every key counts as given).

    Only global rank 0 refuses a used directory (the other ranks of a job start while rank 0 writes into it).
    """
    run_dir = Path(cfg.run_dir)
    last = run_dir / "checkpoints" / "last.ckpt"
    resume = cfg.resume
    if resume not in RESUME_CHOICES:
        raise ValueError(
            f"resume={resume!r}: expected true (continue the run in hydra.run.dir), false (a new run) or "
            "auto (continue it where there is one, else start it)"
        )
    if cfg.ckpt_path is not None:
        path = last if str(cfg.ckpt_path) == "last" else Path(str(cfg.ckpt_path))
        if not path.exists():
            raise FileNotFoundError(f"ckpt_path={cfg.ckpt_path}: no checkpoint at {path}")
        resumed = _resume_plan(cfg, overrides, path)
        if rank_zero:
            _check_same_run(run_dir, path, resumed.saved)
        return resumed
    if resume:
        if last.exists():  # a file, or a directory of shards (DeepSpeed)
            return _resume_plan(cfg, overrides, last)
        found = holds_run(run_dir) if rank_zero else None
        if found is not None:
            raise FileNotFoundError(
                f"resume={str(resume).lower()}: hydra.run.dir={run_dir} holds a run ({found}) but no "
                "checkpoints/last.ckpt to continue from (it stopped before its first checkpoint): delete the "
                "directory to start it over, or choose another hydra.run.dir"
            )
        if resume is True:
            raise FileNotFoundError(
                f"resume=true: hydra.run.dir={run_dir} holds no run to continue (no checkpoints/last.ckpt): check "
                "the path; resume=auto starts the run where there is none (SLURM jobs)"
            )
        log.info("resume=auto and %s holds no run yet: starting a new run", run_dir)
    elif rank_zero and (found := holds_run(run_dir)) is not None:
        raise ValueError(
            f"hydra.run.dir={run_dir} already holds a run ({found}): pass resume=true to continue it or choose "
            "another hydra.run.dir"
        )
    return Plan(cfg)


def written_in(run_dir: Path, ckpt_path) -> bool:
    """Whether the checkpoint file ``ckpt_path`` lies inside ``run_dir`` (that run's own checkpoint)."""
    return Path(run_dir).resolve() in Path(ckpt_path).resolve().parents


def _check_same_run(run_dir: Path, path: Path, saved: dict) -> None:
    """``ckpt_path=`` continues its run in ``run_dir`` only where that holds no other run: the checkpoint lies
    inside it, or was written by a run in it (its saved ``run_dir``), or it holds no run at all."""
    own = saved.get("config", {}).get("run_dir")
    if written_in(run_dir, path) or (own is not None and Path(str(own)).resolve() == run_dir.resolve()):
        return
    found = holds_run(run_dir)
    if found is not None:
        raise ValueError(
            f"ckpt_path={path}: hydra.run.dir={run_dir} holds another run ({found}) that continuing this checkpoint "
            "there would overwrite: choose an empty hydra.run.dir (or the checkpoint's own run directory)"
        )


def _resume_plan(cfg: DictConfig, overrides: list[str] | None, path: Path) -> Plan:
    info, step = run_info(path, "ckpt_path", cfg.get("trusted_targets") or ())
    saved = info["config"]
    current = OmegaConf.to_container(cfg, resolve=True)
    saved = _relocate(saved, saved.get("run_dir"), current["run_dir"])
    touched = [""] if overrides is None else [_touched(cfg, o) for o in overrides]
    result, changes, refused = copy.deepcopy(saved), {}, []
    for key in _differences(current, saved):
        if key in _THIS_INVOCATION or not any(_related(key, t) for t in touched if t is not None):
            continue  # not on the command line: the run's own value stands
        old, new = _get(saved, key), _get(current, key)
        if any(key == s or key.startswith(s + ".") for s in SAFE_ON_RESUME):
            _set(result, key, new)
            changes[key] = [None if v is _ABSENT else v for v in (old, new)]
        else:
            refused.append((key, old, new))
    if refused:
        key, old, new = refused[0]
        more = f" (and {len(refused) - 1} more: {', '.join(k for k, _, _ in refused[1:4])})" if len(refused) > 1 else ""
        raise ValueError(
            f"resume: {key}={_show(new)} differs from the run's {key}={_show(old)} (saved in {path}){more}: a resumed "
            "run keeps its config; only trainer.max_epochs/max_steps, the process count, data.root/num_workers, "
            "logging and checkpoint settings may change — start a new run (another hydra.run.dir) to change it"
        )
    for key in _THIS_INVOCATION:
        result[key] = current[key]
    new_cfg = OmegaConf.create(result)
    OmegaConf.set_struct(new_cfg, True)
    log.info(
        "resuming from %s (step %d) with the run's saved config%s",
        path,
        step,
        f"; changed {sorted(changes)}" if changes else "",
    )
    return Plan(new_cfg, str(path), step, changes, info)


def record(run_dir: Path, plan_: Plan, overrides: list[str] | None) -> None:
    """Append this resume (time, checkpoint, step, command-line overrides, changed keys) to ``.hydra/resumes.yaml``."""
    from selfsup.runtime.files import atomic_write_text

    path = run_dir / ".hydra" / "resumes.yaml"
    entries = OmegaConf.to_container(OmegaConf.load(path)) if path.is_file() else []
    entries.append(
        {
            "time": time.strftime("%Y-%m-%d %H:%M:%S"),
            "checkpoint": plan_.ckpt_path,
            "step": plan_.step,
            "overrides": list(overrides or []),
            "changed": plan_.changes,
            "pid": os.getpid(),
        }
    )
    atomic_write_text(path, OmegaConf.to_yaml(OmegaConf.create(entries)))


# -- config trees as plain dicts ----------------------------------------------------------------------------------


def _touched(cfg: DictConfig, override: str) -> str | None:
    """The config key an override sets: its key for values (``trainer.max_epochs=5``, ``+a.b=1``, ``~a``), the
    group's node for a group choice (``trainer=ddp``), "" (everything) for a global-package group (``recipes=...``),
    None for Hydra's own settings."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_override(override)
    key = parsed.key_or_group
    if key.startswith("hydra.") or key == "hydra" or key.startswith("hydra/"):
        return None
    key = key.replace("/", ".")
    if parsed.package is not None:  # trainer@x=..., or a group placed in the global package
        package = parsed.package
        key = package[len("_global_") :].lstrip(".") if package.startswith("_global_") else package
    return key if OmegaConf.select(cfg, key, default="__missing__") != "__missing__" or "." in key else ""


def _related(key: str, touched: str) -> bool:
    return touched == "" or key == touched or key.startswith(touched + ".") or touched.startswith(key + ".")


def _differences(a, b, prefix: str = ""):
    """Keys (dotted) where two config trees differ, at the highest level where their shapes differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(a.keys() | b.keys(), key=str):
            key = f"{prefix}.{k}" if prefix else str(k)
            if k not in a or k not in b:
                yield key
            else:
                yield from _differences(a[k], b[k], key)
    elif a != b:
        yield prefix


_ABSENT = object()


def _get(tree: dict, key: str):
    for part in key.split("."):
        if not isinstance(tree, dict) or part not in tree:
            return _ABSENT
        tree = tree[part]
    return tree


def _set(tree: dict, key: str, value) -> None:
    *parents, last = key.split(".")
    for part in parents:
        if not isinstance(tree.get(part), dict):
            tree[part] = {}
        tree = tree[part]
    if value is _ABSENT:
        tree.pop(last, None)
    else:
        tree[last] = copy.deepcopy(value)


def _show(value) -> str:
    return "<absent>" if value is _ABSENT else str(value)


def _relocate(tree, old: str | None, new: str):
    """String values under the old run directory, moved under ``new`` (a moved or copied run)."""
    if not old or old == new:
        return tree
    if isinstance(tree, dict):
        return {k: _relocate(v, old, new) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_relocate(v, old, new) for v in tree]
    if isinstance(tree, str) and (tree == old or tree.startswith(old.rstrip("/") + "/")):
        return new + tree[len(old) :]
    return tree
