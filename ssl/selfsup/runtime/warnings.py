"""The one place that silences messages known to be harmless (each with the reason); everything else is shown.

- Lightning 2.6's ``_pytree`` calls ``isinstance(spec, LeafSpec)``, deprecated in torch 2.14: Lightning's to fix.
- torchvision 0.29 deprecates its image decoders for torchcodec's; they stay (2x faster than PIL on small JPEGs)
  until torchcodec is a dependency.
- DeepSpeed 0.19 calls ``all_gather_into_tensor``/``reduce_scatter_tensor``, deprecated in torch 2.14: DeepSpeed's.
- Lightning prints a hint when ``srun`` exists but a process was not started by it: the local runs and tests of a
  SLURM login node are meant that way, and ``slurm/train.sbatch`` does use srun.
- Lightning advertises its hosted logger ("💡 Tip: ... litlogger") on every run.
"""

from __future__ import annotations

import logging
import warnings

_HARMLESS_WARNINGS = (
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",
    r"The `srun` command is available on your system but is not used",
    r"The image decoding and encoding capabilities of TorchVision are deprecated",
    r"`torch.distributed.(all_gather_into_tensor|reduce_scatter_tensor)` is deprecated",
)
_HARMLESS_LOGS = ("💡 Tip: For seamless cloud logging",)


class _DropMessages(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(_HARMLESS_LOGS)


def quiet_known_warnings() -> None:
    """Install the filters (idempotent; call at the start of a command, and of each test)."""
    for pattern in _HARMLESS_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    log = logging.getLogger("lightning.pytorch.utilities.rank_zero")  # rank_zero_info's logger
    if not any(isinstance(f, _DropMessages) for f in log.filters):
        log.addFilter(_DropMessages())
