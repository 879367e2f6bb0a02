"""Benchmark the fused Triton InfoNCE against the eager reference and torch.compile(reference).

    python kernels/bench/bench_info_nce.py                 # CUDA: N ∈ {1k, 4k, 16k, 64k, 256k}, d ∈ {128, 2048}, bf16
    python kernels/bench/bench_info_nce.py --quick         # tiny shapes on the CPU (Triton interpreter): smoke test

One cell = forward + backward of the op on L2-normalised leaves a, b (N, d) in one process (keys = rows,
``negatives="all"`` unless ``--negatives cross``). Columns: median ms of fwd+bwd, peak memory above the inputs
(GiB, CUDA only), achieved TFLOP/s against a floor of 4·(2N)²·d FLOPs (the logits once forward and the two
gradient products once backward; recomputation is not credited), speed-up over eager. A cell that runs out of memory
prints ``OOM``; a cell whose step is predicted (from the previous N, O(N²)) to exceed ``--max-step-s`` prints
``skip``. On CUDA the kernel's tile sizes are autotuned once per d at ``--tune-n`` before the sweep.

Targets (H100/H200, bf16, d = 128, fwd+bwd): N = 16384 pairs ≤ 2.5 ms with ≤ 0.1 GiB extra memory; N = 65536 ≤ 40 ms.
Eager PyTorch measured on an H200 (MACHINE-NOTES.md): 20.9 ms and 12.3 GiB at N = 16384, OOM at 65536.
Numbers come only from a GPU run (kernels/bench/gpu_check.sh writes kernels/bench/RESULTS.md); none are claimed here.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import traceback

FULL_NS = (1024, 4096, 16384, 65536, 262144)
FULL_DS = (128, 2048)
QUICK_NS = (16, 100)
QUICK_DS = (16, 33)


def parse_args(argv, description: str) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="tiny shapes; on a machine without CUDA runs the interpreter")
    p.add_argument("--negatives", default="all", choices=("all", "cross"))
    p.add_argument("--dtype", default=None, choices=("bf16", "fp16", "fp32"), help="default bf16 (fp32 if --quick)")
    p.add_argument("--ns", type=int, nargs="+", default=None, help="numbers of pairs N")
    p.add_argument("--ds", type=int, nargs="+", default=None, help="feature dimensions d")
    p.add_argument("--temperature", type=float, default=0.1)
    p.add_argument("--reps", type=int, default=20, help="timed repetitions at most (fewer when slow)")
    p.add_argument("--cell-budget-s", type=float, default=3.0, help="time allowed for the timed reps of one cell")
    p.add_argument(
        "--max-step-s",
        type=float,
        default=None,
        help="skip a cell whose step is predicted (O(N²) from the previous N) to take longer; default "
        "10 s, no skipping with --quick",
    )
    p.add_argument("--tune-n", type=int, default=16384, help="N at which autotuning happens before the sweep")
    p.add_argument("--no-compile", action="store_true", help="leave out torch.compile(reference)")
    p.add_argument("--no-autotune", action="store_true", help="use the kernel's heuristic tile sizes")
    args = p.parse_args(argv)
    args.ns = args.ns or (QUICK_NS if args.quick else FULL_NS)
    args.ds = args.ds or (QUICK_DS if args.quick else FULL_DS)
    args.dtype = args.dtype or ("fp32" if args.quick else "bf16")
    args.max_step_s = args.max_step_s or (float("inf") if args.quick else 10.0)
    return args


def setup_env(args) -> None:
    """Environment that must be set before triton is imported."""
    if args.quick and os.environ.get("TRITON_INTERPRET") is None and not _has_cuda():
        os.environ["TRITON_INTERPRET"] = "1"
    if not args.no_autotune and os.environ.get("TRITON_INTERPRET") != "1":
        os.environ.setdefault("SELFSUP_KERNELS_AUTOTUNE", "1")


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _is_oom(err: BaseException) -> bool:
    import torch

    return isinstance(err, torch.cuda.OutOfMemoryError) or "out of memory" in str(err).lower()


def measure(step, inputs, reps: int, budget_s: float, device):
    """(median ms, peak GiB above the inputs or None) of ``step(*inputs)`` = one forward + backward."""
    import torch

    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    step(*inputs)  # warm-up: compilation, autotuning, allocator
    sync()
    t0 = time.perf_counter()
    step(*inputs)
    sync()
    first = time.perf_counter() - t0
    n = max(1, min(reps, int(budget_s / max(first, 1e-6))))
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    times = []
    for _ in range(n):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            step(*inputs)
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            step(*inputs)
            times.append(1e3 * (time.perf_counter() - t0))
    peak = (torch.cuda.max_memory_allocated() - base) / 2**30 if cuda else None
    return statistics.median(times), peak, first


def run_table(title: str, impls: dict, make_inputs, args, flops) -> None:
    """Print one row per (N, d, impl). ``impls``: name -> (N, d) -> step(*inputs) (forward + backward)."""
    import torch

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    print(f"# {title}")
    print(
        f"device={torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'} torch={torch.__version__} "
        f"triton={_triton_version()} dtype={args.dtype} negatives={args.negatives} τ={args.temperature} "
        f"interpreter={os.environ.get('TRITON_INTERPRET') == '1'} "
        f"autotune={os.environ.get('SELFSUP_KERNELS_AUTOTUNE') == '1'}"
    )
    header = f"{'impl':<16} {'N':>7} {'d':>5} {'ms fwd+bwd':>11} {'peak GiB':>9} {'TFLOP/s':>8} {'vs eager':>8}"
    print(header)
    print("-" * len(header))
    last = {}  # (impl, d) -> (N, seconds per step) or "OOM"
    for d in args.ds:
        if "triton" in impls and device.type == "cuda" and os.environ.get("SELFSUP_KERNELS_AUTOTUNE") == "1":
            print(f"(autotuning at N={args.tune_n}, d={d})", flush=True)
            impls["triton"](args.tune_n, d)(*make_inputs(args.tune_n, d, dtype, device))
            torch.cuda.synchronize()
        for n in args.ns:
            cells = {
                name: _cell(name, make_step, last, n, d, dtype, device, make_inputs, args)
                for name, make_step in impls.items()
            }
            eager = cells.get("eager")
            for name, cell in cells.items():
                if isinstance(cell, str):
                    print(f"{name:<16} {n:>7} {d:>5}  {cell}", flush=True)
                    continue
                ms, peak = cell
                tflops = flops(n, d) / (ms / 1e3) / 1e12
                speedup = f"{eager[0] / ms:>7.2f}x" if isinstance(eager, tuple) else f"{'-':>8}"
                peak_s = f"{peak:>9.3f}" if peak is not None else f"{'n/a':>9}"
                print(f"{name:<16} {n:>7} {d:>5} {ms:>11.3f} {peak_s} {tflops:>8.3f} {speedup}", flush=True)


def _cell(name, make_step, last, n, d, dtype, device, make_inputs, args):
    """(ms, peak GiB) of one implementation at one shape, or the reason it was not measured."""
    import torch

    prev = last.get((name, d))
    if isinstance(prev, str):
        return f"skip ({prev} below)"
    if prev is not None and prev[1] * (n / prev[0]) ** 2 > args.max_step_s:
        return f"skip (~{prev[1] * (n / prev[0]) ** 2:.0f} s/step)"
    inputs = None
    try:
        inputs = make_inputs(n, d, dtype, device)
        ms, peak, _ = measure(make_step(n, d), inputs, args.reps, args.cell_budget_s, device)
    except Exception as err:  # noqa: BLE001 — one failing cell must not end the table
        if _is_oom(err):
            last[(name, d)] = "OOM"
            return "OOM"
        traceback.print_exc()
        last[(name, d)] = "ERR"
        return f"ERR {type(err).__name__}: {str(err)[:60]}"
    finally:
        del inputs
        if device.type == "cuda":
            torch.cuda.empty_cache()
    last[(name, d)] = (n, ms / 1e3)
    return ms, peak


def _triton_version() -> str:
    try:
        import triton

        return triton.__version__
    except ImportError:
        return "none"


def unit_pair(n, d, dtype, device):
    """L2-normalised leaves a, b (N, d)."""
    import torch
    import torch.nn.functional as F

    g = torch.Generator(device=device).manual_seed(n + d)
    a, b = (F.normalize(torch.randn(n, d, generator=g, device=device), dim=1).to(dtype) for _ in range(2))
    return a.requires_grad_(), b.requires_grad_()


def fwd_bwd(loss_fn):
    def step(a, b):
        a.grad = b.grad = None
        loss_fn(a, b).backward()

    return step


def main(argv=None) -> None:
    args = parse_args(argv, __doc__.splitlines()[0])
    setup_env(args)
    import torch

    from selfsup_kernels import info_nce_ref, info_nce_rows

    t, neg = args.temperature, args.negatives

    ref = torch.compile(info_nce_ref, dynamic=True)  # one symbolic-shape graph for every cell: one compile

    def compiled(n, d):
        return fwd_bwd(lambda a, b: ref(a, b, None, None, 0, t, neg))

    impls = {
        "eager": lambda n, d: fwd_bwd(lambda a, b: info_nce_ref(a, b, None, None, 0, t, neg)),
        "triton": lambda n, d: fwd_bwd(lambda a, b: info_nce_rows(a, b, None, None, 0, t, neg, "triton")),
    }
    if not args.no_compile:
        impls["compile(ref)"] = compiled
    # floor: logits forward + two gradient products backward; "cross" has half the logits of "all"
    scale = 0.5 if neg == "cross" else 1.0
    run_table("InfoNCE fwd+bwd", impls, unit_pair, args, lambda n, d: scale * 4 * (2 * n) ** 2 * d)
    if os.environ.get("SELFSUP_KERNELS_AUTOTUNE") == "1":
        from selfsup_kernels.info_nce_triton import best_configs

        print(f"autotuned: {best_configs()}")


if __name__ == "__main__":
    sys.exit(main())
