"""The Triton kernels beyond what the interpreter's single config covers:
every GPU autotune config run in the interpreter, and the static GPU profile
(scripts/gpu_profile.py: every kernel the CI shapes launch, compiled for sm_90
and sm_80 as the JIT would, with its gates)."""
import json
import os
import subprocess
import sys

import pytest
import torch

import cnnkern
from test_conv2d import NAMED_CASES, check_against_torch

pytestmark = pytest.mark.skipif("triton" not in cnnkern.available_backends("cpu"),
                                reason="needs triton and TRITON_INTERPRET=1")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _configs(family):
    from cnnkern.kernels import conv2d as K
    return {"blocked": K._BLOCKED_CONFIGS, "flat": K._FLAT_CONFIGS}[family]


def _config_id(c):
    return "x".join(map(str, c[:3])) + f"-w{c[3]}-s{c[4]}"


@pytest.mark.parametrize("config", _configs("blocked"), ids=_config_id)
def test_every_blocked_gpu_config_in_the_interpreter(config, monkeypatch):
    # The channel-blocked kernels with each tile a GPU may pick (the default
    # path's choice or the autotuner's): whole-tile and ragged shapes, phases.
    from cnnkern.kernels import conv2d as K
    from test_conv2d import BLOCKED_CASES
    monkeypatch.setattr(K, "_pick_blocked", lambda *args, **kwargs: config)
    with cnnkern.use_backend("triton"):
        check_against_torch(BLOCKED_CASES["c17-k33-3x3"], torch.float16, "triton", "cpu", "channels_last")
        check_against_torch(BLOCKED_CASES["c32-k20-3x3-s2"], torch.float32, "triton", "cpu", "contiguous")


@pytest.mark.parametrize("config", _configs("flat"), ids=_config_id)
def test_every_flat_gpu_config_in_the_interpreter(config, monkeypatch):
    from cnnkern.kernels import conv2d as K
    monkeypatch.setattr(K, "_pick_flat", lambda *args, **kwargs: config)
    with cnnkern.use_backend("triton"):
        check_against_torch(NAMED_CASES["c6-k4-3x1-d2x1-g2"], torch.float64, "triton", "cpu", "strided")  # grouped, dilated
        check_against_torch(NAMED_CASES["c3-k7-3x5-s2x3"], torch.float16, "triton", "cpu")  # 3 channels, strided, 3x5


def test_autotuned_path_in_the_interpreter(monkeypatch):
    # CNNKERN_TRITON_AUTOTUNE=1 launches through triton.autotune; in the
    # interpreter its pruning leaves the one interpreter tile (nothing to time).
    from cnnkern.kernels import conv2d as K
    from test_conv2d import BLOCKED_CASES
    monkeypatch.setenv("CNNKERN_TRITON_AUTOTUNE", "1")
    for tuner in K._TUNED.values():
        monkeypatch.setattr(tuner, "cache", {})
    with cnnkern.use_backend("triton"):
        check_against_torch(BLOCKED_CASES["c32-k20-3x3-s2"], torch.float32, "triton", "cpu", "channels_last")
        check_against_torch(NAMED_CASES["c3-k7-3x5-s2x3"], torch.float32, "triton", "cpu")
    assert all(tuner.cache for tuner in K._TUNED.values())  # every conv kernel went through its autotuner


def test_autotuner_candidates_fit_the_gpu():
    # What the autotuner would time: only tiles that fit shared memory, no
    # double tiles that spill, none far wider than the GEMM.
    from cnnkern.kernels import conv2d as K
    for arch, limit in ((90, 227 * 1024), (80, 163 * 1024)):
        for dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
            for n, k in ((256, 256), (64, 64), (20, 17)):
                got = K._candidates(K._BLOCKED_CONFIGS, dtype, arch, n, k)
                assert got and all(K._smem_bytes(c, dtype.itemsize) <= limit for c in got)
                assert all(c[1] <= max(16, 2 ** (n - 1).bit_length()) for c in got)
                if dtype == torch.float64:
                    assert all(c[0] * c[1] <= 64 * 64 for c in got)


def test_default_tiles_fit_the_gpu():
    # The tile the default path picks, for each dtype and GPU, fits its shared memory.
    from cnnkern.kernels import conv2d as K
    from cnnkern.kernels._util import Target
    for arch in (80, 90):
        target = Target(arch=arch, sm_count=132)
        for dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
            for m, n, k in ((262144, 256, 256), (65536, 64, 64), (100, 20, 17), (256, 256, 262144)):
                for wide_m in (False, True):
                    cfg = K._pick_blocked(target, dtype, m, n, k, wide_m=wide_m)
                    assert K._fits(cfg, dtype, arch), (arch, dtype, m, n, k, cfg)


def test_tensors_beyond_int32_offsets_are_refused():
    from cnnkern.kernels import conv2d as K
    K.check_int32_indexable(torch.empty(2**31 - 1, device="meta"), torch.empty(0, 2**40, device="meta"))
    with pytest.raises(RuntimeError, match="32-bit offsets"):
        K.check_int32_indexable(torch.empty(2**20, 2**11, device="meta"))
    with pytest.raises(RuntimeError, match="32-bit offsets"):  # a small view over a huge stride
        K.check_int32_indexable(torch.empty(2, 2, device="meta").as_strided((2, 2), (2**31, 1)))


def _profile(args):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # it compiles the real kernels
    return subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "gpu_profile.py"), *args], env=env,
                          capture_output=True, text=True, cwd=ROOT)


def test_static_gpu_profile_of_the_ci_shapes():
    """scripts/gpu_profile.py --shapes ci: every kernel the CI shapes launch, compiled for sm_90 and sm_80
    as the JIT specialises it, and the issue's gates (no spill, conv main loops on tensor cores, no scalar
    2-byte loads in channels_last fp16/bf16 conv main loops with C >= 16)."""
    os.makedirs(os.path.join(ROOT, "build"), exist_ok=True)
    report = os.path.join(ROOT, "build", "gpu_profile.json")
    out = _profile(["--shapes", "ci", "--json", report])
    with open(os.path.join(ROOT, "build", "gpu_profile.txt"), "w") as f:  # scripts/test.sh prints it
        f.write(out.stdout + out.stderr)
    assert out.returncode == 0, out.stdout[-6000:] + out.stderr[-4000:]
    with open(report) as f:
        data = json.load(f)
    compiles = {c["key"]: c for c in data["compiles"]}
    assert set(data["archs"]) == {80, 90}
    for op in data["ops"]:
        configs = [cfg for launch in op["launches"] if launch["kind"] == "triton" for cfg in launch["configs"]]
        assert configs, f"{op['case']} {op['pass_name']}: no Triton launch recorded"
        for cfg in configs:  # every launch's every surviving config compiled for its arch
            assert compiles[cfg["key"]]["ok"] and compiles[cfg["key"]]["arch"] == op["arch"], compiles[cfg["key"]]
    # The CI shapes reach every public Triton op, on both architectures.
    ops = {n for n in dir(torch.ops.cnnkern_triton) if hasattr(getattr(torch.ops.cnnkern_triton, n), "default")}
    for arch in (80, 90):
        assert {op["op"] for op in data["ops"] if op["arch"] == arch} == ops


@pytest.mark.skipif(os.environ.get("CNNKERN_PROFILE_ALL") != "1",
                    reason="the full shape table is not part of CI (tens of minutes on 2 cores): "
                           "CNNKERN_PROFILE_ALL=1 runs it")
def test_static_gpu_profile_of_every_shape(tmp_path):
    out = _profile(["--shapes", "all", "--json", str(tmp_path / "all.json"),
                    "--output", os.path.join(ROOT, "build", "gpu_profile_all.txt")])
    assert out.returncode == 0, out.stdout[-6000:] + out.stderr[-4000:]


# --- launches per op and pass: Triton kernels plus the torch ops that would launch on a GPU ------------------------

_NO_LAUNCH = {"aten.empty.memory_format", "aten.empty_strided.default", "aten.view.default", "aten.permute.default",
              "aten.detach.default", "aten.as_strided.default", "aten.unsqueeze.default", "aten.squeeze.dim",
              "aten.alias.default", "aten._unsafe_view.default", "aten.expand.default", "aten.new_empty.default",
              "aten.empty_like.default", "aten.slice.Tensor", "aten.select.int", "aten.ones_like.default"}
# (layout, layer) -> (forward, backward) launches; conv has a bias, its weight and bias gradients split
# their reductions (the interpreter splits every reduction of more than 16 rows: atomics into the
# zeroed fp32 weight gradient; the bias's partials summed by the finalize), NCHW tensors are copied
# to channels_last for the channel-blocked kernels (dy once for both gradients), and the fp32 input
# gradient packs the weight.
_LAUNCHES = {
    ("channels_last", "conv"): (["conv2d_fwd_blocked_kernel"],
                                ["aten.clone.default", "conv2d_dgrad_blocked_kernel", "aten.zero_.default",
                                 "conv2d_wgrad_blocked_kernel", "conv2d_bgrad_kernel", "conv2d_wgrad_finalize_kernel"]),
    ("nchw", "conv"): (["aten.clone.default"] * 2 + ["conv2d_fwd_blocked_kernel"],
                       ["aten.clone.default"] * 2 + ["conv2d_dgrad_blocked_kernel"] + ["aten.clone.default"] +
                       ["aten.zero_.default", "conv2d_wgrad_blocked_kernel", "conv2d_bgrad_kernel",
                        "conv2d_wgrad_finalize_kernel"]),
    ("channels_last", "maxpool"): (["max_pool2d_fwd_nhwc_kernel"], ["max_pool2d_bwd_windows_kernel"]),
    ("nchw", "maxpool"): (["max_pool2d_fwd_strip_kernel"], ["max_pool2d_bwd_strip_kernel"]),
    ("channels_last", "avgpool"): (["avg_pool2d_fwd_nhwc_kernel"], ["avg_pool2d_bwd_windows_kernel"]),
    ("nchw", "avgpool"): (["avg_pool2d_fwd_strip_kernel"], ["avg_pool2d_bwd_strip_kernel"]),
    ("channels_last", "bnrelu"): (["bn_stats_partial_kernel", "bn_stats_finalize_kernel", "bn_relu_apply_kernel"],
                                  ["bn_relu_bwd_reduce_kernel", "bn_relu_bwd_finalize_kernel", "bn_relu_bwd_dx_kernel"]),
    ("channels_last", "gap"): (["global_avg_pool2d_fwd_kernel"], ["global_avg_pool2d_bwd_kernel"]),
}
_LAUNCHES[("nchw", "bnrelu")] = _LAUNCHES[("channels_last", "bnrelu")]
_LAUNCHES[("nchw", "gap")] = _LAUNCHES[("channels_last", "gap")]


def test_launches_per_op_and_pass(monkeypatch):
    from torch.utils._python_dispatch import TorchDispatchMode
    from triton.runtime import interpreter

    log, inside = [], [0]
    run = interpreter.InterpretedFunction.run

    def counted(self, *args, **kwargs):  # a Triton launch; what the interpreter does inside is not a launch
        log.append(self.fn.__name__)
        inside[0] += 1
        try:
            return run(self, *args, **kwargs)
        finally:
            inside[0] -= 1

    class TorchOps(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if str(func) not in _NO_LAUNCH and not inside[0]:
                log.append(str(func))
            return out

    def launches(fn):
        log.clear()
        with TorchOps():
            fn()
        return list(log)

    monkeypatch.setattr(interpreter.InterpretedFunction, "run", counted)
    torch.manual_seed(0)
    with cnnkern.use_backend("triton"):
        for layout in ("channels_last", "nchw"):
            fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
            layers = {"conv": cnnkern.Conv2d(16, 16, 3, padding=1).to(memory_format=fmt),
                      "maxpool": cnnkern.MaxPool2d(2), "avgpool": cnnkern.AvgPool2d(2),
                      "bnrelu": cnnkern.BatchNormReLU2d(16), "gap": cnnkern.AdaptiveAvgPool2d(1)}
            for name, layer in layers.items():
                x = torch.randn(2, 16, 8, 8).contiguous(memory_format=fmt).requires_grad_()
                forward = launches(lambda: layer(x))
                y = layer(x)
                backward = launches(lambda: y.backward(torch.ones_like(y)))
                print(f"{layout:13s} {name:8s} forward {len(forward)}, backward {len(backward)}")
                assert (forward, backward) == _LAUNCHES[(layout, name)], (layout, name, forward, backward)


# Planned for an H100 (132 SMs), recorded instead of run: what a GPU launches for one conv layer.
# torch (cuDNN) launches one kernel per pass and one reduction for the bias gradient: forward 1
# (+1 bias add on some paths), backward 3 (dgrad, wgrad, bias sum).
_GPU_CONV_LAUNCHES = {
    # 2x16x8x8, 16 -> 16, 3x3: 128 output pixels, one split of every reduction
    ("small", "channels_last", torch.bfloat16, False): (
        ["conv2d_fwd_blocked_kernel"],
        ["conv2d_dgrad_blocked_kernel", "conv2d_wgrad_blocked_kernel", "conv2d_bgrad_kernel"]),
    ("small", "channels_last", torch.float32, False): (  # TF32 wants the weight K-major: one pack
        ["conv2d_fwd_blocked_kernel"],
        ["aten.clone.default", "conv2d_dgrad_blocked_kernel", "conv2d_wgrad_blocked_kernel", "conv2d_bgrad_kernel"]),
    ("small", "nchw", torch.bfloat16, False): (  # channels_last copies of x, the weight, and dy (once)
        ["aten.clone.default"] * 2 + ["conv2d_fwd_blocked_kernel"],
        ["aten.clone.default"] * 2 + ["conv2d_dgrad_blocked_kernel", "aten.clone.default",
                                      "conv2d_wgrad_blocked_kernel", "conv2d_bgrad_kernel"]),
    # 32x64x32x32, 64 -> 64, 3x3: 32768 output pixels, split reductions
    ("large", "channels_last", torch.float32, False): (  # atomics straight into the zeroed fp32 gradient
        ["conv2d_fwd_blocked_kernel"],
        ["aten.clone.default", "conv2d_dgrad_blocked_kernel", "aten.zero_.default", "conv2d_wgrad_blocked_kernel",
         "conv2d_bgrad_kernel", "conv2d_wgrad_finalize_kernel"]),
    ("large", "channels_last", torch.float32, True): (  # deterministic: per-split partials, summed in order
        ["conv2d_fwd_blocked_kernel"],
        ["aten.clone.default", "conv2d_dgrad_blocked_kernel", "conv2d_wgrad_blocked_kernel",
         "conv2d_wgrad_finalize_kernel", "conv2d_bgrad_kernel", "conv2d_wgrad_finalize_kernel"]),
    ("large", "channels_last", torch.bfloat16, False): (  # a bf16 gradient: fp32 partials, then the cast
        ["conv2d_fwd_blocked_kernel"],
        ["conv2d_dgrad_blocked_kernel", "conv2d_wgrad_blocked_kernel", "conv2d_wgrad_finalize_kernel",
         "conv2d_bgrad_kernel", "conv2d_wgrad_finalize_kernel"]),
}


@pytest.mark.parametrize("size,layout,dtype,deterministic", sorted(_GPU_CONV_LAUNCHES, key=str), ids=str)
def test_conv_launches_planned_for_a_gpu(size, layout, dtype, deterministic):
    from torch.utils._python_dispatch import TorchDispatchMode
    from cnnkern.kernels import _util

    log = []

    class TorchOps(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if str(func) not in _NO_LAUNCH:
                log.append(str(func))
            return func(*args, **(kwargs or {}))

    def launches(fn):
        log.clear()
        with TorchOps():
            fn()
        return list(log)

    n, c, hw = (2, 16, 8) if size == "small" else (32, 64, 32)
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    conv = cnnkern.Conv2d(c, c, 3, padding=1).to(dtype=dtype, memory_format=fmt)
    x = torch.empty(n, c, hw, hw, dtype=dtype).contiguous(memory_format=fmt).requires_grad_()
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(deterministic)
    try:
        with cnnkern.use_backend("triton"), _util.planning_for(90, 132), \
                _util.intercept_launches(lambda kernel, *_: log.append(kernel.__name__)):
            forward = launches(lambda: conv(x))
            y = conv(x)
            backward = launches(lambda: y.backward(torch.ones_like(y)))
    finally:
        torch.use_deterministic_algorithms(before)
    assert (forward, backward) == _GPU_CONV_LAUNCHES[(size, layout, dtype, deterministic)], (forward, backward)
