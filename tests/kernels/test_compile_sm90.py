"""Compile every Triton kernel for an H100 (sm_90) ahead of time, on the CPU, with the launch configs the GPU uses.

The interpreter (TRITON_INTERPRET=1) runs kernels as NumPy and accepts code the real compiler rejects (e.g. a
non-constexpr global inside @triton.jit); triton ships ptxas, so a CUDA compile needs no GPU. This catches such errors
here instead of in a short GPU session. Nothing runs: correctness is test_info_nce / test_debiased_info_nce.
The compile happens in a child process because the interpreter flag is fixed once triton is imported.
"""

import os
import subprocess
import sys

import pytest

VARIANTS = [  # (module, kernel, flags)
    ("nce", "_fwd_kernel", dict(CROSS=False, SYMMETRIC=True)),
    ("nce", "_dq_kernel", dict(CROSS=False, SYMMETRIC=True, ROW_WEIGHTS=False)),
    ("nce", "_dq_kernel", dict(CROSS=True, SYMMETRIC=False, ROW_WEIGHTS=True)),
    ("nce", "_dk_kernel", dict(CROSS=True, SYMMETRIC=False, ROW_WEIGHTS=False)),
    ("dcl", "_fwd_kernel", dict(HARD=True, SYMMETRIC=True)),
    ("dcl", "_dq_kernel", dict(HARD=True, SYMMETRIC=True)),
    ("dcl", "_dk_kernel", dict(HARD=False, SYMMETRIC=False)),
]
DS = (128, 2048)
ROLES = {"_fwd_kernel": "fwd", "_dq_kernel": "dq", "_dk_kernel": "dk"}  # each kernel's launch role (_tiles.config)


def compile_all() -> None:
    """Child process: compile each variant at each D with the heuristic config; print one line per kernel."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from selfsup_kernels import _tiles as tiles
    from selfsup_kernels import debiased_info_nce_triton as dcl
    from selfsup_kernels import info_nce_triton as nce

    modules = {"nce": nce, "dcl": dcl}
    ints = {"N", "M", "offset", "stride_q", "stride_k", "stride_dq", "stride_dk"}
    for mod, name, flags in VARIANTS:
        kernel = getattr(modules[mod], name)
        for d in DS:
            cfg = tiles.heuristic_config(ROLES[name], d)  # what a plain (untuned) GPU run launches
            signature = {}
            for param in kernel.params:
                p = param.name
                if param.is_constexpr:
                    signature[p] = "constexpr"
                elif p in ints:
                    signature[p] = "i32"
                elif p.isupper():  # pointers: Q, K, outputs in the input dtype; statistics in fp32
                    fp32 = p in ("LSE", "LOSS", "STATS", "W") or (p == "GRAD" and mod == "nce")
                    signature[p] = "*fp32" if fp32 else "*bf16"
                else:
                    signature[p] = "fp32"
            consts = dict(D=d, UPCAST=False, PREC="tf32", **flags, **{k: v for k, v in cfg.items() if "BLOCK" in k})
            consts = {k: v for k, v in consts.items() if k in signature}
            src = ASTSource(fn=kernel, signature=signature, constexprs=consts)
            opts = dict(num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])
            compiled = triton.compile(src, target=GPUTarget("cuda", 90, 32), options=opts)
            assert compiled.asm["cubin"], (mod, name, d)
            print(f"ok {mod}.{name} d={d} {flags} {cfg}", flush=True)


@pytest.mark.slow
def test_kernels_compile_for_sm90():
    env = dict(os.environ, TRITON_INTERPRET="0")
    env.pop("SELFSUP_KERNELS_AUTOTUNE", None)
    proc = subprocess.run([sys.executable, __file__], env=env, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0 and "ptxas" in proc.stderr and "error" not in proc.stderr.lower():
        pytest.skip(f"no usable ptxas here: {proc.stderr[-300:]}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("ok ") == len(VARIANTS) * len(DS), proc.stdout


if __name__ == "__main__":
    compile_all()
