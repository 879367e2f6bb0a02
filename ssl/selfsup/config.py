"""Where the Hydra config tree lives: ``conf/`` and ``recipes/`` at the repository root (editable install).

``SELFSUP_ROOT`` points Hydra's search path (``conf/train.yaml``: ``hydra.searchpath``) at the root so that
``recipes/<dataset>/<method>.yaml`` is the ``recipes`` config group; set it to use another tree.
"""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(os.environ.setdefault("SELFSUP_ROOT", str(Path(__file__).resolve().parents[2])))
CONF_DIR = ROOT / "conf"
RECIPES_DIR = ROOT / "recipes"
