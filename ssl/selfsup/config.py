"""Where the Hydra config tree lives: ``conf/`` and ``recipes/`` at the repository root (editable install).

``SELFSUP_ROOT`` points Hydra's search path (``conf/train.yaml``: ``hydra.searchpath``) at the root so that
``recipes/<dataset>/<method>.yaml`` is the ``recipes`` config group; set it to use another tree. Importing it
registers the configs' resolvers ``${selfsup.run_id:<run dir>}`` and ``${selfsup.recipes:}`` (the help text).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

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


OmegaConf.register_new_resolver("selfsup.run_id", run_id, replace=True)
OmegaConf.register_new_resolver("selfsup.recipes", recipe_list, replace=True)
