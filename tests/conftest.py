import os

# Triton kernels run on the CPU through the interpreter; must be set before triton is imported anywhere.
os.environ.setdefault("TRITON_INTERPRET", "1")

import pathlib  # noqa: E402
import sys  # noqa: E402

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
    """Also closes a process group a test left behind (Lightning leaves a one-process DeepSpeed run's open): a later
    trainer=ddp_cpu forks the test process, and check_fork_start refuses a fork that would inherit it. DeepSpeed's
    own destroy_process_group also drops the groups it cached, which its next run would otherwise reuse."""
    for var in DIST_VARS:
        os.environ.pop(var, None)
    yield
    for var in DIST_VARS:
        os.environ.pop(var, None)
    import torch.distributed as dist

    if "deepspeed.comm" in sys.modules and sys.modules["deepspeed.comm"].is_initialized():
        sys.modules["deepspeed.comm"].destroy_process_group()
    elif dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


@pytest.fixture(autouse=True)
def known_warnings_quiet():
    """The product's own filters of harmless third-party warnings (pytest resets the filters for every test)."""
    from selfsup.runtime.warnings import quiet_known_warnings

    quiet_known_warnings()


@pytest.fixture
def small_disk(tmp_path):
    """``small_disk(size)``: a tmpfs of that size (e.g. "280k") mounted below tmp_path, unmounted afterwards; the test
    is skipped where this machine does not let us mount one (root and mount permission are needed)."""
    import subprocess

    mounts = []

    def mount(size: str):
        path = tmp_path / f"disk{len(mounts)}"
        path.mkdir()
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
        if proc.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.decode().strip()}")
        mounts.append(path)
        return path

    yield mount
    for path in mounts:
        subprocess.run(["umount", "-l", str(path)], check=False)
