import os

# Triton kernels run on the CPU through the interpreter; must be set before triton is imported anywhere.
os.environ.setdefault("TRITON_INTERPRET", "1")

import pathlib  # noqa: E402

import pytest  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
CIFAR10 = SHARED / "data" / "cifar10"


@pytest.fixture
def cifar10_root():
    if not (CIFAR10 / "train").is_dir():
        pytest.skip(f"no CIFAR-10 ImageFolder at {CIFAR10}")
    return CIFAR10
