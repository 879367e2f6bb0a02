"""Two-view augmentation throughput (torchvision CPU workers vs ``selfsup.data.gpu_views``) and end-to-end
``recipes=cifar10/simclr`` training throughput with either data path.

    .venv/bin/python bench/bench_views.py                        # CPU here: small e2e (batch 32, 4 steps)
    python bench/bench_views.py --e2e-batch 512 --e2e-steps 30   # GPU machine: appends to bench/RESULTS.md
    python bench/bench_views.py --no-e2e                         # augmentation only (no Hydra needed)

GPU session, one device call (the lent machine lacks Hydra: build .whl here first with
``bash /work/shared/tools/gpu-wheels.sh``; RESULTS.md comes back through $OUT)::

    run(carry=[".whl"], timeout_s=540, command="python3 -m pip install -q --no-index --no-deps --target /tmp/site
        .whl/*.whl; export PYTHONPATH=/tmp/site:$PWD/ssl:$PWD/kernels; python3 -m pytest -q -p no:cacheprovider
        tests/data/test_gpu_views.py; python3 bench/bench_views.py")

Rows, at batch ``--batch`` (512) of CIFAR-size (32 px) uint8 images held in memory, SimCLR's two views:
- ``torchvision, N workers``: MultiViewDataset + GlobalBatchSampler in a DataLoader with workers = cores
  (per-sample torchvision v2 ops, what the CPU path runs).
- ``gpu_views (counter) on <device>``: GpuMultiViewTransform.batch on a device-resident batch (params drawn on the
  device); ``+ loader``: the whole device path (raw-loader keys → gather from the resident split → views).
- ``gpu_views (exact)``: the same with the CPU generators' parameters (the sampler is a Python loop).
gpu_views and end-to-end rows report the median and the best batch (other jobs on a shared machine slow some
batches); the torchvision row is the steady-state mean (its workers prefetch).
End-to-end rows: training images/s (source images, two views each) of the recipe with the CPU views versus
``views.on_device`` (SSLDataModule's device path), timed after one warm-up step; ``epoch s`` = 50,000 / images/s.
Images are synthetic (content does not change the cost). Nothing is written unless CUDA is present; then the
table is appended to bench/RESULTS.md with the card and date.
"""

from __future__ import annotations

import argparse
import datetime
import os
import time
from pathlib import Path
from statistics import median

import torch
from torch.utils.data import DataLoader

from selfsup.data.datasets import GlobalBatchSampler, MultiViewDataset
from selfsup.data.device_loader import DeviceViews
from selfsup.data.gpu_views import GpuMultiViewTransform
from selfsup.data.sources import TensorImages
from selfsup.data.views import MultiViewTransform, ViewAugment

RESULTS = Path(__file__).with_name("RESULTS.md")
CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def synthetic_split(n: int, size: int = 32, seed: int = 0) -> TensorImages:
    g = torch.Generator().manual_seed(seed)
    low = torch.randint(0, 256, (n, 3, size // 4, size // 4), generator=g, dtype=torch.uint8)
    images = low.repeat_interleave(4, 2).repeat_interleave(4, 3).contiguous()  # flat patches and edges
    return TensorImages(images, torch.randint(0, 10, (n,), generator=g), [str(c) for c in range(10)])


def simclr_views(size: int = 32) -> dict[str, ViewAugment]:
    v = ViewAugment(size, mean=CIFAR_MEAN, std=CIFAR_STD)  # conf/views/simclr.yaml's values
    return {"v1": v, "v2": v}


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_torchvision(split: TensorImages, batch: int, steps: int, workers: int) -> tuple[float, float]:
    """Source images/s of the CPU path (two views each)."""
    sampler = GlobalBatchSampler(len(split), batch, seed=0)
    loader = DataLoader(
        MultiViewDataset(split, MultiViewTransform(simclr_views()), 0),
        batch_sampler=sampler,
        num_workers=workers,
        persistent_workers=workers > 0,
    )
    it = iter(loader)
    next(it)  # worker start-up
    t0 = time.perf_counter()
    for _ in range(steps):
        next(it)
    rate = steps * batch / (time.perf_counter() - t0)  # workers prefetch: only the steady-state mean is meaningful
    return rate, rate


def bench_gpu_views(split: TensorImages, batch: int, steps: int, device: torch.device, sampler: str):
    views = GpuMultiViewTransform(simclr_views(), sampler=sampler)
    images = split.images.to(device)
    n = len(split)
    times = []
    for s in range(steps + 1):  # step 0 warms up
        sync(device)
        t0 = time.perf_counter()
        idx = torch.arange(s * batch, (s + 1) * batch, device=device) % n
        keys = torch.stack((torch.zeros_like(idx), idx, torch.full_like(idx, -1)), 1)
        views.batch(images[idx], 0, keys)
        sync(device)
        times.append(time.perf_counter() - t0)
    return batch / median(times[1:]), batch / min(times[1:])  # median and best batch


def bench_device_loader(split: TensorImages, batch: int, steps: int, device: torch.device):
    """The whole device path: key batches from the raw loader, moved to the device, gathered and augmented."""
    dv = DeviceViews(split, MultiViewTransform(simclr_views()), seed=0)
    loader = dv.loader(GlobalBatchSampler(len(split), batch, seed=0), lambda: (0, 0), num_workers=0)
    it = iter(loader)
    times = []
    for _ in range(steps + 1):
        sync(device)
        t0 = time.perf_counter()
        raw = next(it)
        dv({k: v.to(device, non_blocking=True) for k, v in raw.items()})
        sync(device)
        times.append(time.perf_counter() - t0)
    return batch / median(times[1:]), batch / min(times[1:])


def bench_e2e(on_device: bool, batch: int, steps: int, accelerator: str, run_dir: Path):
    """Training images/s of recipes=cifar10/simclr (synthetic 50k-image in-memory split), after one warm-up step."""
    import lightning as L
    from hydra import compose, initialize_config_dir

    from selfsup.config import CONF_DIR
    from selfsup.train import build

    overrides = [
        "recipes=cifar10/simclr",
        f"trainer={'gpu' if accelerator == 'gpu' else 'cpu'}",
        f"data.batch_size={batch}",
        f"trainer.max_steps={steps + 1}",
        "trainer.limit_val_batches=0",
        "callbacks.progress=null",
        "callbacks.last.every_n_epochs=null",
        "callbacks.last.every_n_minutes=null",
        "callbacks.best=null",
        "trainer.enable_model_summary=false",
        "online_probe=false",
        f"data.num_workers={cores() if accelerator == 'gpu' else max(1, cores() - 1)}",
        f"run_dir={run_dir}",
        "logger.csv=null",
        "+trainer.enable_progress_bar=false",
    ]
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    datamodule, module, trainer = build(cfg)
    n = max(50_000 if accelerator == "gpu" else 2048, batch * (steps + 1))
    datamodule._splits = (synthetic_split(n), synthetic_split(512, seed=1))  # skip loading CIFAR from disk
    if on_device:
        datamodule.views = GpuMultiViewTransform.from_transform(datamodule.views)

    class Clock(L.Callback):
        times: list[float] = []

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            sync(pl_module.device)
            self.times.append(time.perf_counter())

    clock = Clock()
    trainer.callbacks.append(clock)
    trainer.fit(module, datamodule=datamodule)
    steps_s = [b - a for a, b in zip(clock.times, clock.times[1:])]
    return batch / median(steps_s), batch / min(steps_s)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--steps", type=int, default=0, help="timed batches per row (0: 6 on CPU, 50 on CUDA)")
    ap.add_argument("--e2e-batch", type=int, default=0, help="0: 32 on CPU, 512 on CUDA")
    ap.add_argument("--e2e-steps", type=int, default=0, help="0: 3 on CPU, 30 on CUDA")
    ap.add_argument("--no-e2e", action="store_true")
    ap.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    args = ap.parse_args()
    cuda = torch.cuda.is_available() and args.device != "cpu"
    device = torch.device("cuda" if cuda else "cpu")
    steps = args.steps or (50 if cuda else 6)
    split = synthetic_split(max(8192, args.batch * (steps + 2)))
    rows = []  # (what, images/s, note)

    workers = cores()
    rows.append((f"torchvision v2, {workers} workers (CPU)", bench_torchvision(split, args.batch, steps, workers), ""))
    for sampler in ("counter", "exact"):
        s = steps if sampler == "counter" else max(1, steps // 10)
        rows.append(
            (f"gpu_views ({sampler}) on {device.type}", bench_gpu_views(split, args.batch, s, device, sampler), "")
        )
    rows.append(
        (f"gpu_views + resident loader on {device.type}", bench_device_loader(split, args.batch, steps, device), "")
    )
    if not args.no_e2e:
        e2e_batch = args.e2e_batch or (512 if cuda else 32)
        e2e_steps = args.e2e_steps or (30 if cuda else 3)
        import tempfile

        for on_device in (False, True):
            name = f"e2e cifar10/simclr, {'gpu_views' if on_device else 'CPU views'}, batch {e2e_batch}"
            try:
                with tempfile.TemporaryDirectory() as tmp:
                    ips = bench_e2e(on_device, e2e_batch, e2e_steps, "gpu" if cuda else "cpu", Path(tmp))
                rows.append((name, ips, f"epoch {50_000 / ips[0]:.1f} s (best batch: {50_000 / ips[1]:.1f} s)"))
            except ImportError as e:
                rows.append((name, (float("nan"),) * 2, f"skipped: {e}"))

    card = torch.cuda.get_device_name(device) if cuda else f"CPU ({cores()} cores)"
    lines = [
        f"### bench_views — {card}, {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, torch "
        f"{torch.__version__}, batch {args.batch}, two views, 32 px",
        "",
        "| pipeline | images/s (median batch) | images/s (best batch) | note |",
        "|---|---:|---:|---|",
        *(f"| {what} | {ips[0]:,.0f} | {ips[1]:,.0f} | {note} |" for what, ips, note in rows),
    ]
    print("\n".join(lines))
    if cuda:
        with RESULTS.open("a") as f:
            f.write("\n".join(lines) + "\n\n")
        print(f"appended to {RESULTS}")
        if os.environ.get("OUT"):  # the device tool returns what is under $OUT
            (Path(os.environ["OUT"]) / RESULTS.name).write_text(RESULTS.read_text())


if __name__ == "__main__":
    main()
