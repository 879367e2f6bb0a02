"""Training: ``selfsup-train`` (``python -m selfsup.train``).

``cli`` is the Hydra entry point (compose → plan new run or resume → build → fit), ``build`` instantiates the
datamodule, module and trainer and derives the batch facts once (``BatchPlan``), ``module`` is the LightningModule,
``optim`` the optimisers and schedules.
"""

from selfsup.train.build import build
from selfsup.train.cli import main, run

__all__ = ["build", "main", "run"]
