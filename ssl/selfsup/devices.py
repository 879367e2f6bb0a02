"""The device a command's ``device``-like option names (``auto``, ``cpu``, ``cuda``, ``cuda:<i>``)."""

from __future__ import annotations

import torch


def device_of(name: str, key: str = "device") -> torch.device:
    """``auto``: CUDA when available, else the CPU; otherwise ``torch.device(name)``; one-line ValueError naming
    ``key`` for anything else."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(name)
    except (RuntimeError, TypeError):
        raise ValueError(f"{key}={name!r}: expected auto, cpu, cuda or cuda:<i>") from None
