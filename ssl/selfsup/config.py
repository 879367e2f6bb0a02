"""Where the Hydra config tree lives: ``conf/`` and ``recipes/`` at the repository root (editable install).

``SELFSUP_ROOT`` points Hydra's search path (``conf/train.yaml``: ``hydra.searchpath``) at the root so that
``recipes/<dataset>/<method>.yaml`` is the ``recipes`` config group; set it to use another tree. Importing it
registers the configs' resolvers ``${selfsup.run_id:<run dir>}`` and ``${selfsup.recipes:}`` (the help text).

A config read back from disk — a checkpoint's ``selfsup.config``, a run directory's ``.hydra/`` — is data a stranger
may have written, and Hydra would call whatever its ``_target_`` names. :func:`check_saved_config` admits only the
constructors that ``conf/`` and ``recipes/`` themselves name (:func:`allowed_targets`), plus those a command line
trusts (``trusted_targets=[...]``), and no interpolation (docs/runs.md, "Configs read from disk").
"""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Iterable
from pathlib import Path

import yaml
from omegaconf import OmegaConf

ROOT = Path(os.environ.setdefault("SELFSUP_ROOT", str(Path(__file__).resolve().parents[2])))
CONF_DIR = ROOT / "conf"
RECIPES_DIR = ROOT / "recipes"


def run_id(run_dir: str) -> str:
    """A stable 12-hex-digit id of a run directory (the W&B run id: a resumed run continues its W&B run)."""
    return hashlib.sha1(str(Path(run_dir).resolve()).encode()).hexdigest()[:12]


def recipe_list() -> str:
    """The recipes as ``recipes=<name>`` lines (``selfsup-train --help``)."""
    names = sorted(str(p.relative_to(RECIPES_DIR).with_suffix("")) for p in RECIPES_DIR.rglob("*.yaml"))
    return "\n".join(f"  recipes={n}" for n in names)


class UnsafeConfigError(ValueError):
    """A saved config names code outside :func:`allowed_targets` (or holds an interpolation)."""


@functools.cache
def allowed_targets() -> frozenset[str]:
    """Every ``_target_`` that a YAML file under ``conf/`` or ``recipes/`` names: the constructors selfsup builds."""
    found: set[str] = set()

    def walk(node) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "_target_" and isinstance(value, str):
                    found.add(value)
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    for folder in (CONF_DIR, RECIPES_DIR):
        for path in sorted(folder.rglob("*.yaml")):
            walk(yaml.safe_load(path.read_text()))
    return frozenset(found)


def check_saved_config(tree, source: str, trusted: Iterable[str] = ()) -> None:
    """Refuse, in one line naming ``source`` and the key, a config read from disk that would run code when
    instantiated: a ``_target_`` (at any depth, inside ``_args_`` lists included) that is neither in
    :func:`allowed_targets` nor in ``trusted`` (names, or ``pkg.*`` for every name below ``pkg``), or an ``${...}``
    interpolation (saved configs are written resolved, so one can only have been put there by hand; resolvers could
    build a ``_target_`` after this check)."""
    allowed = allowed_targets() | frozenset(trusted)
    prefixes = tuple(t[:-1] for t in trusted if t.endswith(".*"))  # "mypkg.*" -> "mypkg."

    def admitted(target) -> bool:
        return target in allowed or (bool(prefixes) and isinstance(target, str) and target.startswith(prefixes))

    def walk(node, key: str) -> None:
        if isinstance(node, dict):
            for k, value in node.items():
                path = f"{key}.{k}" if key else str(k)
                if k == "_target_" and not admitted(value):
                    raise UnsafeConfigError(
                        f"{source}: refused: {path}={value!r} is not a constructor selfsup's configs use (a saved "
                        f"config is data, not code); pass trusted_targets=[{value}] if you trust this file"
                    )
                walk(value, path)
        elif isinstance(node, list | tuple):
            for i, value in enumerate(node):
                walk(value, f"{key}[{i}]")
        elif isinstance(node, str) and "${" in node:
            raise UnsafeConfigError(
                f"{source}: refused: {key}={node!r} is an interpolation; a saved config holds resolved values only"
            )

    walk(tree, "")


OmegaConf.register_new_resolver("selfsup.run_id", run_id, replace=True)
OmegaConf.register_new_resolver("selfsup.recipes", recipe_list, replace=True)
