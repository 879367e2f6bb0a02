"""Run a function on several CPU processes joined by a gloo process group (forked: a spawned process would
re-import torch and the test module, ~10 s each on 2 cores)."""

from __future__ import annotations

import os
import socket
import tempfile

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world_size: int, port: int, fn, args, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        torch.save(fn(rank, world_size, *args), os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def run_distributed(fn, world_size: int = 2, *args):
    """``[fn(rank, world_size, *args) for each rank]``, computed in ``world_size`` forked gloo processes.

    ``fn`` must return something ``torch.save`` can write.
    """
    with tempfile.TemporaryDirectory() as out_dir:
        worker_args = (world_size, _free_port(), fn, args, out_dir)
        mp.start_processes(_worker, args=worker_args, nprocs=world_size, join=True, start_method="fork")
        return [torch.load(os.path.join(out_dir, f"rank{r}.pt"), weights_only=False) for r in range(world_size)]
