"""Benchmark the fused Triton debiased / hard-negative InfoNCE against the eager reference and torch.compile(ref).

    python kernels/bench/bench_debiased_info_nce.py            # CUDA: N ∈ {1k, ..., 256k}, d ∈ {128, 2048}, bf16
    python kernels/bench/bench_debiased_info_nce.py --quick    # tiny shapes on the CPU (Triton interpreter)

Same table, harness and FLOP floor 4·(2N)²·d as ``bench_info_nce.py`` (``--negatives`` is ignored: this loss
always uses all 2M − 2 negatives); ``--tau-plus`` and ``--beta`` (default 0.1 and 1.0: the hard-negative path, the
costlier one) pick the variant. Expect the kernel slightly slower than InfoNCE (two exponentials per logit when
β > 0) with the same O(N·d) memory. No numbers are claimed here; kernels/bench/gpu_check.sh records them.
"""

from __future__ import annotations

import sys

from bench_info_nce import fwd_bwd, parse_args, run_table, setup_env, unit_pair


def main(argv=None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    tau_plus, beta = 0.1, 1.0
    for flag in ("--tau-plus", "--beta"):  # op-specific flags, taken out before the shared parser
        if flag in argv:
            i = argv.index(flag)
            value = float(argv[i + 1])
            del argv[i : i + 2]
            tau_plus, beta = (value, beta) if flag == "--tau-plus" else (tau_plus, value)
    args = parse_args(argv, __doc__.splitlines()[0])
    setup_env(args)
    import torch

    from selfsup_kernels import debiased_info_nce_ref, debiased_info_nce_rows

    t = args.temperature

    ref = torch.compile(debiased_info_nce_ref, dynamic=True)

    def compiled(n, d):
        return fwd_bwd(lambda a, b: ref(a, b, None, None, 0, t, tau_plus, beta))

    impls = {
        "eager": lambda n, d: fwd_bwd(lambda a, b: debiased_info_nce_ref(a, b, None, None, 0, t, tau_plus, beta)),
        "triton": lambda n, d: fwd_bwd(
            lambda a, b: debiased_info_nce_rows(a, b, None, None, 0, t, tau_plus, beta, "triton")
        ),
    }
    if not args.no_compile:
        impls["compile(ref)"] = compiled
    args.negatives = "all"
    title = f"Debiased InfoNCE fwd+bwd (tau_plus={tau_plus}, beta={beta})"
    run_table(title, impls, unit_pair, args, lambda n, d: 4 * (2 * n) ** 2 * d)


if __name__ == "__main__":
    sys.exit(main())
