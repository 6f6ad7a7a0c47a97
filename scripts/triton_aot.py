"""Compile every cnnkern Triton kernel ahead of time for real GPUs, without one.

For each kernel, each autotune config and each dtype, triton.compile builds a
cubin for the target architectures (sm_80 and sm_90 by default); cuobjdump from
Triton's wheel reports registers, spills (local memory) and shared memory.
A kernel that only works in the interpreter fails here. Prints a table and
writes JSON; exits non-zero if any compile fails or any kernel spills.

    python scripts/triton_aot.py [--arch 80 90] [--json out.json] [--dtypes fp16 bf16 fp32 fp64]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor

if os.environ.get("TRITON_INTERPRET") == "1":
    sys.exit("run without TRITON_INTERPRET: ahead-of-time compilation needs the real kernels")

import torch  # noqa: E402
import triton  # noqa: E402
import triton.language as tl  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from cnnkern.kernels import conv2d as K  # noqa: E402
from cnnkern.kernels import batch_norm as B  # noqa: E402
from cnnkern.kernels import pool2d as P  # noqa: E402

ACC = {"fp16": tl.float32, "bf16": tl.float32, "fp32": tl.float32, "fp64": tl.float64}
# Pointers that are not in the data dtype: the fp32/fp64 accumulation workspaces.
WORKSPACE_ARGS = {"dw_acc", "db_acc", "part", "mean", "var", "weight", "mean_out", "var_out", "sum_g", "sum_gx",
                  "grad_weight", "grad_bias"}


def kernels():
    """(name, JITFunction, configs, constexprs common to all configs)."""
    gemm = dict(R=3, S=3)
    layout = dict(CHANNELS_LAST=True, BLOCK=P.BLOCK)
    pool = dict(KH=3, KW=3, **layout)
    reduce = dict(BLOCK_C=B.BLOCK_C, BLOCK_R=B.BLOCK_R)
    flat = dict(CHANNELS_LAST=True, BLOCK=B.BLOCK)
    return [
        ("conv2d_fwd", K.conv2d_fwd_kernel, dict(gemm, HAS_BIAS=True)),
        ("conv2d_dgrad", K.conv2d_dgrad_kernel, dict(gemm)),
        ("conv2d_wgrad", K.conv2d_wgrad_kernel, dict(gemm)),
        ("conv2d_bgrad", K.conv2d_bgrad_kernel, dict(BLOCK_C=K._BGRAD_BLOCK_C, BLOCK_R=K._BGRAD_BLOCK_R)),
        ("max_pool2d_fwd", P.max_pool2d_fwd_kernel, dict(pool)),
        ("max_pool2d_bwd", P.max_pool2d_bwd_kernel, dict(pool)),
        ("avg_pool2d_fwd", P.avg_pool2d_fwd_kernel, dict(pool, COUNT_INCLUDE_PAD=False)),
        ("avg_pool2d_bwd", P.avg_pool2d_bwd_kernel, dict(pool, COUNT_INCLUDE_PAD=False)),
        ("adaptive_avg_fwd", P.adaptive_avg_pool2d_fwd_kernel, dict(MAX_KH=4, MAX_KW=4, **layout)),
        ("adaptive_avg_bwd", P.adaptive_avg_pool2d_bwd_kernel, dict(MAX_COVER_H=2, MAX_COVER_W=2, **layout)),
        ("bn_stats", B.bn_stats_partial_kernel, dict(reduce)),
        ("bn_stats_final", B.bn_stats_finalize_kernel, dict(BLOCK_C=B.BLOCK_C, BLOCK_S=128)),
        ("bn_relu_apply", B.bn_relu_apply_kernel, dict(HAS_WEIGHT=True, HAS_BIAS=True, **flat)),
        ("bn_relu_bwd_reduce", B.bn_relu_bwd_reduce_kernel, dict(reduce)),
        ("bn_relu_bwd_final", B.bn_relu_bwd_finalize_kernel, dict(BLOCK_C=B.BLOCK_C, BLOCK_S=128)),
        ("bn_relu_bwd_dx", B.bn_relu_bwd_dx_kernel, dict(HAS_WEIGHT=True, TRAINING=True, **flat)),
    ]


def job_list(dtypes, archs):
    jobs = []
    for name, kernel, fixed in kernels():
        if isinstance(kernel, triton.runtime.Autotuner):
            configs = [(c.kwargs, c.num_warps, c.num_stages) for c in kernel.configs]
        else:
            configs = [({}, 4, 1)]
        for dtype in dtypes:
            torch_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32,
                           "fp64": torch.float64}[dtype]
            for kwargs, warps, stages in configs:
                if kwargs and not K.config_fits_dtype(kwargs, torch_dtype):
                    continue  # the autotuner prunes it for this dtype: it never runs
                for arch in archs:
                    jobs.append((name, dtype, kwargs, warps, stages, arch, fixed))
    return jobs


def _fn(name):
    kernel = dict((n, k) for n, k, _ in kernels())[name]
    return kernel.fn if isinstance(kernel, triton.runtime.Autotuner) else kernel


def compile_one(job):
    name, dtype, kwargs, warps, stages, arch, fixed = job
    fn = _fn(name)
    constexprs = dict(fixed, **kwargs)
    precision = "tf32" if dtype == "fp32" else "ieee"
    for key, value in (("ACC", ACC[dtype]), ("DOT_PRECISION", precision), ("DOT_IN_FP32", False)):
        if key in fn.arg_names:
            constexprs[key] = value
    signature = {}
    for param in fn.params:
        arg = param.name
        if param.is_constexpr:
            signature[arg] = "constexpr"
        elif arg in WORKSPACE_ARGS:
            signature[arg] = "*" + ("fp64" if dtype == "fp64" else "fp32")
        elif arg == "bias" and name.startswith("bn"):
            signature[arg] = "*" + ("fp64" if dtype == "fp64" else "fp32")
        elif arg in ("x", "w", "bias", "y", "dy", "dx"):
            signature[arg] = "*" + dtype
        elif arg == "indices":
            signature[arg] = "*i64"
        elif arg in ("eps", "COUNT"):
            signature[arg] = "fp32"
        else:
            signature[arg] = "i32"
    row = dict(kernel=name, dtype=dtype, arch=f"sm_{arch}", warps=warps, stages=stages,
               tile="x".join(str(kwargs[k]) for k in ("BLOCK_M", "BLOCK_N", "BLOCK_K") if k in kwargs) or "-")
    start = time.time()
    try:
        src = ASTSource(fn=fn, signature=signature, constexprs=constexprs)
        compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32),
                                  options={"num_warps": warps, "num_stages": stages})
    except Exception as exc:  # report every failure, not just the first
        row.update(ok=False, error=f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
        return row
    row.update(ok=True, seconds=round(time.time() - start, 2), shared=compiled.metadata.shared)
    row.update(resource_usage(compiled.asm["cubin"]))
    return row


def resource_usage(cubin: bytes) -> dict:
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run([tool, "--dump-resource-usage", f.name], capture_output=True, text=True, check=True).stdout
    usage = dict(re.findall(r"\b(REG|STACK|LOCAL|SHARED):(\d+)", out))
    return {"regs": int(usage.get("REG", -1)), "stack": int(usage.get("STACK", 0)),
            "local": int(usage.get("LOCAL", 0))}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", nargs="+", type=int, default=[80, 90])
    parser.add_argument("--dtypes", nargs="+", default=["fp16", "bf16", "fp32", "fp64"])
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--json", help="write the rows here")
    args = parser.parse_args()

    jobs = job_list(args.dtypes, args.arch)
    with ProcessPoolExecutor(args.jobs) as pool:
        rows = list(pool.map(compile_one, jobs))

    print(f"{'kernel':<13} {'dtype':<5} {'arch':<6} {'tile':<10} {'warps':>5} {'stages':>6} "
          f"{'regs':>5} {'spill(B)':>8} {'smem(B)':>8}")
    for r in rows:
        if r["ok"]:
            print(f"{r['kernel']:<13} {r['dtype']:<5} {r['arch']:<6} {r['tile']:<10} {r['warps']:>5} {r['stages']:>6} "
                  f"{r['regs']:>5} {r['local'] + r['stack']:>8} {r['shared']:>8}")
        else:
            print(f"{r['kernel']:<13} {r['dtype']:<5} {r['arch']:<6} {r['tile']:<10} FAILED {r['error']}")
    failed = [r for r in rows if not r["ok"]]
    spilled = [r for r in rows if r["ok"] and (r["local"] or r["stack"])]
    print(f"\n{len(rows)} compiles: {len(rows) - len(failed)} ok, {len(failed)} failed, {len(spilled)} spilling")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 1 if failed or spilled else 0


if __name__ == "__main__":
    sys.exit(main())
