"""The Triton kernels beyond what the interpreter's single config covers:
every GPU autotune config run in the interpreter, and every kernel compiled
ahead of time for sm_80 and sm_90 (registers and spills from the cubin)."""
import json
import os
import subprocess
import sys

import pytest
import torch

import cnnkern
from test_conv2d import CASES, check_against_torch

pytestmark = pytest.mark.skipif("triton" not in cnnkern.available_backends("cpu"),
                                reason="needs triton and TRITON_INTERPRET=1")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _gpu_configs():
    from cnnkern.kernels import conv2d as K
    return K._GEMM_CONFIGS


@pytest.mark.parametrize("config", _gpu_configs(), ids=lambda c: "x".join(map(str, c[:3])) + f"-w{c[3]}")
def test_every_gpu_config_in_the_interpreter(config, monkeypatch):
    import triton

    from cnnkern.kernels import conv2d as K
    m, n, k, warps, stages = config
    tuned = triton.Config({"BLOCK_M": m, "BLOCK_N": n, "BLOCK_K": k, "GROUP_M": 8}, num_warps=warps,
                          num_stages=stages)
    for kernel in (K.conv2d_fwd_kernel, K.conv2d_dgrad_kernel, K.conv2d_wgrad_kernel):
        monkeypatch.setattr(kernel, "configs", [tuned])
        monkeypatch.setattr(kernel, "cache", {})
    with cnnkern.use_backend("triton"):
        # several tiles in every GEMM dimension, a grouped strided case, and fp16
        check_against_torch(CASES[12], torch.float32, "triton", "cpu", "channels_last")
        check_against_torch(CASES[6], torch.float64, "triton", "cpu", "strided")
        check_against_torch(CASES[3], torch.float16, "triton", "cpu")


def test_tensors_beyond_int32_offsets_are_refused():
    from cnnkern.kernels import conv2d as K
    K.check_int32_indexable(torch.empty(2**31 - 1, device="meta"), torch.empty(0, 2**40, device="meta"))
    with pytest.raises(RuntimeError, match="32-bit offsets"):
        K.check_int32_indexable(torch.empty(2**20, 2**11, device="meta"))
    with pytest.raises(RuntimeError, match="32-bit offsets"):  # a small view over a huge stride
        K.check_int32_indexable(torch.empty(2, 2, device="meta").as_strided((2, 2), (2**31, 1)))


def test_ahead_of_time_compile_for_sm80_and_sm90(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    report = tmp_path / "aot.json"
    out = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "triton_aot.py"), "--json", str(report)],
                         env=env, capture_output=True, text=True, cwd=ROOT)
    os.makedirs(os.path.join(ROOT, "build"), exist_ok=True)
    with open(os.path.join(ROOT, "build", "triton_aot.txt"), "w") as f:  # .ci/run prints it
        f.write(out.stdout + out.stderr)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    rows = json.loads(report.read_text())
    assert {r["arch"] for r in rows} == {"sm_80", "sm_90"}
    assert {r["kernel"] for r in rows} == {
        "conv2d_fwd", "conv2d_dgrad", "conv2d_wgrad", "conv2d_bgrad", "max_pool2d_fwd", "max_pool2d_bwd",
        "avg_pool2d_fwd", "avg_pool2d_bwd", "adaptive_avg_fwd", "adaptive_avg_bwd", "bn_stats", "bn_stats_final",
        "bn_relu_apply", "bn_relu_bwd_reduce", "bn_relu_bwd_final", "bn_relu_bwd_dx"}
    assert all(r["ok"] and r["local"] == 0 and r["stack"] == 0 for r in rows)
