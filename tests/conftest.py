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


# torch.distributed rendezvous variables that Lightning's spawn launcher leaves in os.environ: a later test (or a
# SLURM job submitted from the test process) would reuse the same MASTER_PORT and can hit EADDRINUSE.
DIST_VARS = ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK")


@pytest.fixture(autouse=True)
def fresh_rendezvous_env():
    for var in DIST_VARS:
        os.environ.pop(var, None)
    yield
    for var in DIST_VARS:
        os.environ.pop(var, None)


@pytest.fixture(autouse=True)
def known_warnings_quiet():
    """The product's own filters of harmless third-party warnings (pytest resets the filters for every test)."""
    from selfsup.runtime.warnings import quiet_known_warnings

    quiet_known_warnings()
