"""Static GPU profile of cnnkern's Triton kernels: compiled exactly as the JIT
would compile them on an H100 (sm_90) and an A100 (sm_80), read from the SASS,
and put through a first-order throughput model. No GPU needed.

1. Replay. For a table of layer shapes (the four models' layers at their recipe
   batch sizes, plus ResNet-style 3x3 layers L3/L4/L5) every Triton launcher
   behind torch.ops.cnnkern_triton.* is called on CPU tensors (torch.empty:
   nothing runs) inside planning_for(arch, sm_count), under
   intercept_launches(record_launch): every launch's kernel, grid, arguments
   and keyword arguments are captured as the launcher made them. A
   TorchDispatchMode records the torch ops the launcher runs itself (copies,
   fills, casts, reductions): on a GPU those are launches too ("torch" rows).
2. Compile. Each Triton launch is bound and specialised by Triton's own JIT
   binder (==1 constants, divisibility by 16, pointer alignment) and compiled
   with triton.compile for the target: the chosen config of a plain launch, or
   every config of an Autotuner that survives its pruning. Identical compiles
   are done once (in parallel) and cached under build/gpu_profile_cache.
3. Read. Per kernel and config, from the cubin (cuobjdump): registers, spills,
   shared memory, occupancy; in the main loop (the loop that holds the most MMA
   instructions, else the most global loads; loop-free kernels: the whole
   body): tensor-core instructions, async copies (LDGSTS = cp.async,
   UTMALDG/UBLKCP = TMA), global loads by width, the share of load bytes that
   are vectorised (>= 8 B per lane) or asynchronous, whether the last HGMMA of
   an iteration is followed by a full wait, instructions per iteration.
4. Estimate (a first-order model, `estimate_launch`; every figure it produces
   is an ESTIMATE, to be calibrated with --measure on a GPU).
5. Gates (non-zero exit): compile failures, a block that cannot fit the SM,
   any spill, a conv main loop without tensor-core instructions (fp16/bf16),
   scalar 2-byte global loads in the main loop of a conv pass for channels_last
   fp16/bf16 with C >= 16. --no-gate reports without failing.

    python scripts/gpu_profile.py [--arch 90 80] [--shapes ci|resnet|models|all|NAME...] [--dtypes fp16 bf16 ...]
                                  [--layouts cl nchw] [--json out.json] [--jobs N] [--no-gate] [--measure]
"""
from __future__ import annotations

import argparse
import bisect
import contextlib
import dataclasses
import functools
import gzip
import hashlib
import importlib
import json
import math
import multiprocessing
import os
import pkgutil
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

if os.environ.get("TRITON_INTERPRET") == "1":
    sys.exit("gpu_profile.py: unset TRITON_INTERPRET: the profile compiles the real kernels, not the interpreter's")

import torch  # noqa: E402
import triton  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource, make_backend  # noqa: E402
from triton.runtime.autotuner import Autotuner, Heuristics  # noqa: E402
from triton.runtime.jit import JITFunction, create_function_from_signature  # noqa: E402

import cnnkern  # noqa: E402,F401  (registers the ops)
import cnnkern.kernels  # noqa: E402
from cnnkern import models  # noqa: E402
from cnnkern.kernels import _util  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CACHE_DIR = os.path.join(ROOT, "build", "gpu_profile_cache")
CUOBJDUMP = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
ESTIMATE_NOTE = ("ESTIMATES: times, TFLOP/s and GB/s below come from a first-order model of the compiled code "
                 "(see estimate_launch in scripts/gpu_profile.py), not from a GPU; treat them as +-50% until "
                 "calibrated with --measure.")

# ============================================================================ GPU model constants


@dataclass(frozen=True)
class GPU:
    """What the model and the occupancy calculation know of a GPU. Sources:
    NVIDIA H100 / A100 datasheets and whitepapers (SM counts, clocks, dense
    tensor-core peaks), CUDA C Programming Guide "Compute capabilities" table
    (registers, shared memory, threads and blocks per SM)."""

    name: str
    arch: int
    sms: int
    clock_hz: float
    hbm_bytes_per_s: float
    # Dense FLOP per clock per SM, by instruction family.
    flop_per_clk: dict
    regs_per_sm: int = 65536
    smem_per_sm: int = 228 * 1024
    smem_per_block: int = 227 * 1024
    smem_reserved_per_block: int = 1024  # sm_80+: 1 KB of shared memory the system reserves per block
    threads_per_sm: int = 2048
    blocks_per_sm: int = 32
    schedulers: int = 4                  # warp schedulers per SM, one instruction per clock each
    l1_bytes_per_clk: int = 64           # L1/L2 -> SM: one 64-byte wavefront per clock per SM (assumed)


# H100 SXM5: 132 SMs, 1.83 GHz (the clock NVIDIA's ~990 TFLOP/s dense fp16 figure implies: 4096 FLOP/clk/SM
# x 132 x 1.83e9), HBM3 3.35 TB/s. HMMA (mma.sync) on sm_90 runs at about half the wgmma rate.
H100 = GPU("H100 SXM", 90, sms=132, clock_hz=1.83e9, hbm_bytes_per_s=3.35e12, flop_per_clk={
    "hgmma_16": 4096, "hgmma_tf32": 2048, "hgmma_8": 8192,
    "hmma_16": 2048, "hmma_tf32": 1024, "hmma_8": 4096,
    "dmma": 128,   # brief's conservative figure; NVIDIA's 67 TFLOP/s fp64 tensor peak would be ~256
    "ffma": 256,   # 128 FP32 lanes x 2
    "dfma": 128,   # 64 FP64 lanes x 2
    "hfma2": 512,
})
# A100 SXM4: 108 SMs, 1.41 GHz boost, HBM2e 2.04 TB/s (80 GB part); 312 TFLOP/s dense fp16 = 2048 FLOP/clk/SM.
A100 = GPU("A100 SXM", 80, sms=108, clock_hz=1.41e9, hbm_bytes_per_s=2.04e12, flop_per_clk={
    "hmma_16": 2048, "hmma_tf32": 1024, "hmma_8": 4096,
    "dmma": 128,   # 19.5 TFLOP/s fp64 tensor
    "ffma": 128,   # 64 FP32 lanes x 2 (19.5 TFLOP/s)
    "dfma": 64,    # 9.7 TFLOP/s
    "hfma2": 256,
}, smem_per_sm=164 * 1024, smem_per_block=163 * 1024)
GPUS = {90: H100, 80: A100}

SECTOR_BYTES = 32                # the unit of L1/L2 traffic: a scalar lane is charged one whole sector
LAUNCH_LATENCY_S = 3e-6          # per kernel launch in a stream (back-to-back launches, a few microseconds)
GLOBAL_LOAD_LATENCY_CYCLES = 500  # an unpipelined global load's round trip (L2/HBM mix; microbenchmarks of
#                                   Hopper put L2 hits near 260 cycles and HBM near 500): assumed, calibrate
CUDNN_FRACTION_OF_PEAK = 0.65     # the issue's assumption for cuDNN on these layers
DONE_WHEN = dict(vectorised=0.80, cudnn_ratio=0.5)  # issue 8's bar: >= 80% vectorised/async, within 2x of cuDNN


def tensor_core_peak(gpu: GPU, dtype: str) -> float:
    """Dense peak FLOP/s of the unit a conv of this dtype should use."""
    if dtype in ("fp16", "bf16"):
        rate = gpu.flop_per_clk.get("hgmma_16", gpu.flop_per_clk["hmma_16"])
    elif dtype == "fp32":
        if torch.backends.cudnn.allow_tf32:
            rate = gpu.flop_per_clk.get("hgmma_tf32", gpu.flop_per_clk["hmma_tf32"])
        else:
            rate = gpu.flop_per_clk["ffma"]
    else:
        rate = gpu.flop_per_clk["dmma"]
    return rate * gpu.sms * gpu.clock_hz


# ============================================================================ shape table

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32, "fp64": torch.float64}
LAYOUTS = ("cl", "nchw")


@dataclass(frozen=True)
class Layer:
    name: str                  # "L4", "cifar-fast:3", ...
    family: str                # "conv" | "max_pool" | "avg_pool" | "adaptive_pool" | "bn"
    shape: tuple               # input, NCHW
    params: tuple = ()         # (name, value) pairs
    sets: tuple = ()           # selections it belongs to: "ci", "resnet", "models", "all"
    fp64: bool = False         # cheap enough to profile in float64 too

    @property
    def kw(self) -> dict:
        return dict(self.params)

    def describe(self) -> str:
        kw = self.kw
        if self.family == "conv":
            k, c, r, s = kw["weight"]
            return (f"{'x'.join(map(str, self.shape))}->{k} {r}x{s} s{kw['stride'][0]} p{kw['padding'][0]}"
                    f"{' g' + str(kw['groups']) if kw['groups'] != 1 else ''}{' +bias' if kw['bias'] else ''}")
        if self.family in ("max_pool", "avg_pool"):
            return f"{'x'.join(map(str, self.shape))} k{kw['kernel_size'][0]} s{kw['stride'][0]}"
        if self.family == "adaptive_pool":
            return f"{'x'.join(map(str, self.shape))} -> {kw['output_size']}"
        return "x".join(map(str, self.shape))


@dataclass(frozen=True)
class Case:
    layer: Layer
    dtype: str
    layout: str

    @property
    def name(self) -> str:
        return f"{self.layer.name} {self.dtype} {self.layout}"


def _conv_layer(name, shape, k, r, stride=1, padding=0, dilation=1, groups=1, bias=False, **kw):
    params = (("weight", (k, shape[1] // groups, r, r)), ("bias", bias), ("stride", (stride, stride)),
              ("padding", (padding, padding)), ("dilation", (dilation, dilation)), ("groups", groups))
    return Layer(name, "conv", tuple(shape), params, **kw)


def _model_layers() -> list[Layer]:
    """Every distinct conv, pooling and fused BatchNorm+ReLU layer of the four
    models at their recipe batch sizes, read off the models (one forward on the
    meta device with hooks), as benchmarks/test_ops.py does."""
    found: dict[tuple, Layer] = {}
    for model_name, spec in models.MODELS.items():
        net = models.build(model_name, layers="torch")
        fused = {n for n, m in cnnkern.convert(net).named_modules() if isinstance(m, cnnkern.BatchNormReLU2d)}
        small = spec.recipe.batch_size * math.prod(spec.input_shape) <= 128 * 3 * 32 * 32

        def hook(module, args, out, module_name):
            shape = tuple(args[0].shape)
            name = f"{model_name}:{module_name}"
            if isinstance(module, torch.nn.Conv2d):
                layer = _conv_layer(name, shape, module.out_channels, module.kernel_size[0], module.stride[0],
                                    module.padding[0], module.dilation[0], module.groups, module.bias is not None,
                                    sets=("models", "all"), fp64=small)
                key = ("conv", shape, layer.params)
                found.setdefault(key, layer)
            elif isinstance(module, torch.nn.MaxPool2d):
                geometry = (("kernel_size", _pair(module.kernel_size)), ("stride", _pair(module.stride)),
                            ("padding", _pair(module.padding)))
                for family, extra in (("max_pool", (("dilation", _pair(module.dilation)),
                                                    ("ceil_mode", module.ceil_mode))),
                                      ("avg_pool", (("ceil_mode", module.ceil_mode),))):
                    # No model average-pools: its kernels are profiled on every max pool's shape instead.
                    layer = Layer(f"{name}{'' if family == 'max_pool' else '(avg)'}", family, shape,
                                  geometry + extra, sets=("models", "all"), fp64=small)
                    found.setdefault((family, shape, layer.params), layer)
            elif isinstance(module, torch.nn.BatchNorm2d) and module_name in fused:
                layer = Layer(name, "bn", shape, (("eps", module.eps), ("momentum", module.momentum)),
                              sets=("models", "all"), fp64=small)
                found.setdefault(("bn", shape), layer)

        for module_name, module in net.named_modules():
            module.register_forward_hook(lambda m, a, o, n=module_name: hook(m, a, o, n))
        net.to("meta")(torch.empty(spec.recipe.batch_size, *spec.input_shape, device="meta"))
    return list(found.values())


def _pair(v):
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


def shape_table() -> list[Layer]:
    resnet = [
        _conv_layer("L3", (1024, 64, 32, 32), 64, 3, padding=1, sets=("resnet", "all")),
        _conv_layer("L4", (1024, 256, 16, 16), 256, 3, padding=1, sets=("resnet", "all", "ci")),
        _conv_layer("L5", (1024, 256, 8, 8), 256, 3, padding=1, sets=("resnet", "all")),
    ]
    extra = [Layer("adaptive", "adaptive_pool", (1024, 256, 4, 4), (("output_size", (1, 1)),),
                   sets=("all", "ci"))]
    # The fused BatchNorm's other activations (mobilenet's ReLU6, efficientnet's SiLU, mobilenet_v3's
    # Hardswish), at a mid-network shape.
    extra += [Layer(f"bn-{act}", "bn", (256, 64, 16, 16), (("eps", 1e-5), ("momentum", 0.1), ("activation", act)),
                    sets=("all", "ci") if act == "silu" else ("all",)) for act in ("relu6", "silu", "hardswish")]
    layers = resnet + _model_layers() + extra
    # The CI subset: L4 (above), one first layer (C=3), one pooling and one BatchNorm shape, and the fp32 and
    # fp64 cases picked in ci_cases().
    ci = {"cifar-fast:0", "cifar-fast:4", "cifar-fast:4(avg)", "cifar-fast:5", "cifar-lenet5:2", "mnist-lenet:0"}
    return [dataclasses.replace(l, sets=l.sets + ("ci",)) if l.name in ci else l for l in layers]


def _ci_variants(layer: Layer) -> list[tuple[str, str]]:
    """(dtype, layout) the CI subset profiles for each of its layers."""
    if layer.name == "L4":
        return [("fp16", "cl"), ("bf16", "cl")]
    if layer.name == "cifar-lenet5:2":   # C=16 5x5 conv, fp32 NCHW: TF32 and the NCHW path
        return [("fp32", "nchw")]
    if layer.name == "mnist-lenet:0":    # C=1 5x5 conv with bias, fp64
        return [("fp64", "nchw")]
    return [("bf16", "cl")]             # cifar-fast's recipe: bf16 channels_last


def select_cases(selection: list[str], dtypes: list[str], layouts: list[str]) -> list[Case]:
    layers = shape_table()
    cases = []
    for layer in layers:
        if selection == ["ci"]:
            if "ci" in layer.sets:
                cases += [Case(layer, d, l) for d, l in _ci_variants(layer) if d in dtypes and l in layouts]
            continue
        wanted = any(s in layer.sets or layer.name == s or layer.name.split(":")[0] == s for s in selection)
        if not wanted:
            continue
        for dtype in dtypes:
            if dtype == "fp64" and not layer.fp64:
                continue
            for layout in layouts:
                if dtype == "fp64" and layout == "cl":
                    continue
                cases.append(Case(layer, dtype, layout))
    return cases


# ============================================================================ replay


@functools.lru_cache(maxsize=None)
def _launchers() -> dict:
    """op name -> the Python launcher behind torch.ops.cnnkern_triton.<op> (triton_op's function)."""
    found = {}
    for info in pkgutil.iter_modules(cnnkern.kernels.__path__):
        module = importlib.import_module(f"cnnkern.kernels.{info.name}")
        for value in vars(module).values():
            qualname = getattr(value, "_qualname", "")
            if isinstance(qualname, str) and qualname.startswith("cnnkern_triton::") and hasattr(value, "_init_fn"):
                found[qualname.split("::")[1]] = value._init_fn
    return found


class _ReplayState:
    events: list | None = None   # the current op's launches, in order
    arch: int = 90


_STATE = _ReplayState()


def record_launch(kernel, grid, args, kwargs):
    """The intercept_launches hook (cnnkern.kernels._util): records a launch instead of running it."""
    if _STATE.events is None:
        raise RuntimeError("a Triton launch outside a profiled op")
    _STATE.events.append(dict(kind="triton", kernel=kernel, grid=grid, args=args, kwargs=kwargs))


# aten ops that move no data on a GPU (allocation, views, metadata).
_NO_TRAFFIC = {"empty", "empty_strided", "empty_like", "new_empty", "new_empty_strided", "detach", "alias",
               "lift_fresh", "view", "_unsafe_view", "as_strided", "_reshape_alias", "t", "transpose", "permute",
               "expand", "unsqueeze", "squeeze", "select", "slice", "split", "unbind", "sym_size", "sym_stride",
               "sym_numel", "sym_storage_offset", "is_same_size", "_to_copy_noop", "resize_", "set_", "unfold",
               "diagonal", "narrow", "view_as_real", "view_as_complex", "_conj", "_neg_view", "reshape"}


def _tensors(value):
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _tensors(v)


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


class TorchOpRecorder(TorchDispatchMode):
    """Records the aten ops a launcher runs that would be kernels on a GPU, with
    the bytes they move: tensor inputs read once, outputs written once (a fill
    only writes)."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = func.overloadpacket.__name__
        schema = func._schema
        is_view = any(r.alias_info is not None and not r.alias_info.is_write for r in schema.returns)
        if name in _NO_TRAFFIC or name.startswith("empty") or is_view or _STATE.events is None:
            return out
        written, read = 0, 0
        bound = list(args) + [kwargs.get(a.name) for a in schema.arguments[len(args):]]
        for arg, value in zip(schema.arguments, bound):
            for t in _tensors(value):
                if arg.alias_info is not None and arg.alias_info.is_write:
                    written += _nbytes(t)
                elif not name.endswith("fill_") and name not in ("zero_",):
                    read += _nbytes(t)
        if not any(r.alias_info is not None for r in schema.returns):
            written += sum(_nbytes(t) for t in _tensors(out))
        if name in ("_local_scalar_dense",):
            _STATE.events.append(dict(kind="torch", op=str(func), bytes=read, note="host sync"))
        elif read + written:
            shapes = [tuple(t.shape) for t in _tensors(args)][:2]
            _STATE.events.append(dict(kind="torch", op=str(func), bytes=read + written, shapes=shapes))
        return out


def _empty(shape, dtype, layout):
    t = torch.empty(shape, dtype=dtype)
    return t.to(memory_format=torch.channels_last) if layout == "cl" and len(shape) == 4 else t


def call_op(op: str, values: dict, record: bool = True):
    """Call the launcher of torch.ops.cnnkern_triton.<op> (record=True: the Python
    function itself, so that the TorchDispatchMode sees the torch ops inside it;
    record=False: through the dispatcher) with arguments taken by name from
    `values`: the op's current schema decides what it needs."""
    schema = getattr(torch.ops.cnnkern_triton, op).default._schema
    args, kwargs = [], {}
    for a in schema.arguments:
        if a.name in values:
            value = values[a.name]
        elif a.has_default_value():
            value = a.default_value
        else:
            raise KeyError(f"gpu_profile.py does not know what to pass for {op}'s parameter {a.name!r} ({a.type}): "
                           f"add it to the values of its pass in scripts/gpu_profile.py")
        if a.kwarg_only:
            kwargs[a.name] = value
        else:
            args.append(value)
    fn = _launchers()[op] if record else getattr(torch.ops.cnnkern_triton, op)
    return fn(*args, **kwargs)


def passes(case: Case, device: str = "cpu"):
    """(pass name, op, values) for each pass of the case's layer, in order: a generator that receives each
    op's outputs (send), so that the backward passes get what the forward produced."""
    layer, dtype, layout = case.layer, DTYPES[case.dtype], case.layout
    kw = layer.kw
    make = (lambda shape, dt=dtype, fmt=layout: _empty(shape, dt, fmt)) if device == "cpu" else \
        (lambda shape, dt=dtype, fmt=layout: _randn(shape, dt, fmt, device))
    x = make(layer.shape)
    if layer.family == "conv":
        w = make(kw["weight"])
        b = make((kw["weight"][0],), fmt="nchw") if kw["bias"] else None
        geometry = dict(stride=list(kw["stride"]), padding=list(kw["padding"]), dilation=list(kw["dilation"]),
                        groups=kw["groups"])
        y = yield "forward", "conv2d", dict(input=x, weight=w, bias=b, **geometry)
        dy = make(tuple(y.shape)) if device != "cpu" else torch.empty_like(y)
        yield "input_grad", "conv2d_backward_input", dict(grad_output=dy, input=x, weight=w, **geometry)
        yield "weight_grad", "conv2d_backward_weight", dict(grad_output=dy, input=x, weight=w, **geometry)
        if b is not None:
            yield "bias_grad", "conv2d_backward_bias", dict(grad_output=dy)
    elif layer.family == "max_pool":
        geometry = dict(kernel_size=list(kw["kernel_size"]), stride=list(kw["stride"]), padding=list(kw["padding"]),
                        dilation=list(kw["dilation"]), ceil_mode=kw["ceil_mode"])
        out = yield "forward", "max_pool2d", dict(input=x, return_indices=False, **geometry)
        y, indices = out[0], out[1]
        dy = make(tuple(y.shape)) if device != "cpu" else torch.empty_like(y)
        yield "backward", "max_pool2d_backward", dict(grad_output=dy, input=x, indices=indices, **geometry)
    elif layer.family == "avg_pool":
        geometry = dict(kernel_size=list(kw["kernel_size"]), stride=list(kw["stride"]), padding=list(kw["padding"]),
                        ceil_mode=kw["ceil_mode"], count_include_pad=True, divisor_override=None)
        y = yield "forward", "avg_pool2d", dict(input=x, **geometry)
        dy = make(tuple(y.shape)) if device != "cpu" else torch.empty_like(y)
        yield "backward", "avg_pool2d_backward", dict(grad_output=dy, input=x, **geometry)
    elif layer.family == "adaptive_pool":
        y = yield "forward", "adaptive_avg_pool2d", dict(input=x, output_size=list(kw["output_size"]))
        dy = make(tuple(y.shape)) if device != "cpu" else torch.empty_like(y)
        yield "backward", "adaptive_avg_pool2d_backward", dict(grad_output=dy, input=x)
    elif layer.family == "bn":
        c = layer.shape[1]
        vec = (lambda: make((c,), fmt="nchw"))
        weight, bias = vec(), vec()
        for training in (True, False):
            mode = "train" if training else "eval"
            running_mean = make((c,), torch.float32, "nchw")
            running_var = make((c,), torch.float32, "nchw").abs_() if device != "cpu" else \
                torch.empty(c, dtype=torch.float32)
            nbt = torch.zeros((), dtype=torch.int64, device=device)
            common = dict(weight=weight, bias=bias, training=training, eps=kw["eps"],
                          activation=kw.get("activation", "relu"))
            out = yield f"{mode}_forward", "batch_norm_relu", dict(
                input=x, running_mean=running_mean, running_var=running_var, momentum=kw["momentum"],
                num_batches_tracked=nbt, **common)
            y, mean, var = out[0], out[1], out[2]
            dy = make(tuple(y.shape)) if device != "cpu" else torch.empty_like(y)
            yield f"{mode}_backward", "batch_norm_relu_backward", dict(
                grad_output=dy, output=y, input=x, mean=mean, var=var, output_mask=[True, True, True], **common)


def _randn(shape, dtype, layout, device):
    t = torch.randn(shape, device=device).to(dtype)
    return t.to(memory_format=torch.channels_last) if layout == "cl" and len(shape) == 4 else t


# Arguments an op needs only for their shape: not part of its one-read-one-write floor.
SHAPE_ONLY = {"conv2d_backward_input": {"input"}, "conv2d_backward_weight": {"weight"},
              "max_pool2d_backward": {"input"}, "avg_pool2d_backward": {"input"},
              "adaptive_avg_pool2d_backward": {"input"}}


def _flops(case: Case, pass_name: str) -> int:
    """Useful FLOPs of a conv pass from its shape: 2·N·K·P·Q·C/groups·R·S (bias grad: N·K·P·Q adds)."""
    layer = case.layer
    if layer.family != "conv":
        return 0
    kw = layer.kw
    n, c, h, w = layer.shape
    k, c_g, r, s = kw["weight"]
    p = (h + 2 * kw["padding"][0] - kw["dilation"][0] * (r - 1) - 1) // kw["stride"][0] + 1
    q = (w + 2 * kw["padding"][1] - kw["dilation"][1] * (s - 1) - 1) // kw["stride"][1] + 1
    if pass_name == "bias_grad":
        return n * k * p * q
    return 2 * n * k * p * q * c_g * r * s


# ---------------------------------------------------------------------------- binding (the JIT's own path)

_BINDERS: dict = {}


def _unwrap(kernel, args, kwargs):
    """[(JITFunction, kwargs incl. config meta, config or None)] for every config
    the runtime could launch: an Autotuner's configs after its own pruning, a
    Heuristics' computed values, a plain JITFunction as launched."""
    if isinstance(kernel, Heuristics):
        kwargs = dict(kwargs)
        for name, heur in kernel.values.items():
            kwargs[name] = heur({**dict(zip(kernel.arg_names, args)), **kwargs})
        return _unwrap(kernel.fn, args, kwargs)
    if isinstance(kernel, Autotuner):
        if len(kernel.configs) > 1:
            kernel.nargs = dict(zip(kernel.arg_names, args))
            try:
                configs = kernel.prune_configs(kwargs)  # early_config_prune (and perf_model/top_k) as the tuner does
            finally:
                kernel.nargs = None
        else:
            configs = kernel.configs
        out = []
        for config in configs:
            for fn, kw, _ in _unwrap(kernel.fn, args, {**kwargs, **config.all_kwargs()}):
                out.append((fn, kw, config))
        return out
    if isinstance(kernel, JITFunction):
        return [(kernel, dict(kwargs), None)]
    raise TypeError(f"cannot profile a launch of {kernel!r}")


def bind(jitfn: JITFunction, args, kwargs, arch: int):
    """What JITFunction.run would hand to triton.compile for this launch on `arch`:
    (signature, constexprs, attrs, options dict, bound arguments)."""
    from triton import knobs
    kwargs = dict(kwargs)
    kwargs["debug"] = kwargs.get("debug", jitfn.debug) or knobs.runtime.debug
    if hasattr(knobs.compilation, "instrumentation_mode"):
        kwargs["instrumentation_mode"] = knobs.compilation.instrumentation_mode
    key = (id(jitfn), arch)
    if key not in _BINDERS:
        backend = make_backend(GPUTarget("cuda", arch, 32))
        _BINDERS[key] = (backend, create_function_from_signature(jitfn.signature, jitfn.params, backend))
    backend, binder = _BINDERS[key]
    bound, specialization, options = binder(*args, **kwargs)
    if hasattr(jitfn, "_pack_args"):  # triton >= 3.7
        options, signature, constexprs, attrs = jitfn._pack_args(backend, kwargs, bound, specialization, options)
    else:  # triton 3.6 (the lent GPU image): the same steps, inline in JITFunction.run there
        from triton.runtime.jit import find_paths_if, get_iterable_path
        options = backend.parse_options(kwargs)
        sigvals = [x[0] for x in specialization]
        signature = {p.name: v for p, v in zip(jitfn.params, sigvals)}
        constexprs = find_paths_if(sigvals, lambda _, val: val == "constexpr")
        constexprs = {path: get_iterable_path(list(bound.values()), path) for path in constexprs}
        attrvals = [x[1] for x in specialization]
        attrs = find_paths_if(attrvals, lambda _, x: isinstance(x, str))
        attrs = {k: backend.parse_attr(get_iterable_path(attrvals, k)) for k in attrs}
    return signature, constexprs, attrs, options.__dict__, bound


def _jit_name(jitfn: JITFunction) -> tuple[str, str]:
    return jitfn.fn.__module__, jitfn.fn.__qualname__


def _config_label(constexprs_by_name: dict, options: dict) -> str:
    """BLOCK_M x BLOCK_N x BLOCK_K (or whichever BLOCK_* the kernel has), warps, stages."""
    blocks = {k: v for k, v in constexprs_by_name.items() if k.startswith("BLOCK") and isinstance(v, int)}
    if all(k in blocks for k in ("BLOCK_M", "BLOCK_N", "BLOCK_K")):
        words = ["x".join(str(blocks.pop(k)) for k in ("BLOCK_M", "BLOCK_N", "BLOCK_K"))]
    else:
        words = []
    words += [f"{k.removeprefix('BLOCK_') if k != 'BLOCK' else 'B'}{v}" for k, v in sorted(blocks.items())]
    words += [f"w{options.get('num_warps')}", f"s{options.get('num_stages')}"]
    return " ".join(words)


def _specialisation(jitfn, signature, constexprs, attrs) -> dict:
    """name -> what the compile specialised it to: constexpr values, 'div16' / '==1' of runtime ints and
    pointers (the JIT's specialisation), for telling rows apart in the report."""
    out = {}
    for i, p in enumerate(jitfn.params):
        if signature.get(p.name) == "constexpr":
            v = constexprs.get((i,))
            out[p.name] = v if isinstance(v, (int, float, bool, str)) or v is None else repr(v)
        elif attrs.get((i,)):
            out[p.name] = "div16"
    return out


def _identity(jitfn, signature, constexprs, attrs, options, arch) -> str:
    text = repr((jitfn.cache_key, _jit_name(jitfn), sorted(signature.items()), sorted(
        (k, repr(v)) for k, v in constexprs.items()), sorted((k, repr(v)) for k, v in attrs.items()),
        sorted((k, repr(v)) for k, v in options.items() if k != "extern_libs"), arch, triton.__version__))
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def _work(jitfn, named: dict, grid: tuple):
    """PROFILE_WORK of the kernel's module, else a guess (documented in the report)."""
    module = sys.modules[jitfn.fn.__module__]
    fn = getattr(module, "PROFILE_WORK", {}).get(jitfn.fn.__name__)
    if fn is not None:
        work = dict(fn(named, grid))
        work["source"] = "PROFILE_WORK"
        return work
    tensors = {t.data_ptr(): _nbytes(t) for t in named.values() if isinstance(t, torch.Tensor)}
    work = dict(trip_count=1, flops=0, bytes=sum(tensors.values()), source="default")
    # Kernels that predate PROFILE_WORK (the HEAD kernels): the trip count of their
    # reduction loops from the names they use, flagged as a guess.
    g = tuple(grid) + (1, 1)
    if "GEMM_K" in named and "BLOCK_K" in named:
        work.update(trip_count=triton.cdiv(triton.cdiv(named["GEMM_K"], named["BLOCK_K"]), g[2]), source="guessed")
        if "GEMM_M" in named and "GEMM_N" in named:
            work["flops"] = 2 * named["GEMM_M"] * named["GEMM_N"] * named["GEMM_K"] * g[1]
    elif "ROWS" in named and "BLOCK_R" in named:
        work.update(trip_count=triton.cdiv(triton.cdiv(named["ROWS"], named["BLOCK_R"]), g[1]), source="guessed")
    return work


def replay(case: Case, arch: int, gpu: GPU, jobs: dict) -> list[dict]:
    """Run every pass of the case through its launchers, recording launches; adds
    the compile jobs they need to `jobs` (identity -> job)."""
    records = []
    gen = passes(case)
    outputs = None
    with _util.planning_for(arch, gpu.sms):
        while True:
            try:
                pass_name, op, values = gen.send(outputs) if outputs is not None else next(gen)
            except StopIteration:
                break
            _STATE.events = []
            try:
                with TorchOpRecorder():
                    outputs = call_op(op, values)
            finally:
                events, _STATE.events = _STATE.events, None
            floor = sum(_nbytes(t) for name, v in values.items() if name not in SHAPE_ONLY.get(op, ())
                        for t in _tensors(v)) + sum(_nbytes(t) for t in _tensors(outputs))
            launches = [_launch_record(e, arch, jobs) for e in events]
            records.append(dict(case=case.name, layer=case.layer.name, family=case.layer.family,
                                shape=case.layer.describe(), dtype=case.dtype, layout=case.layout, arch=arch,
                                pass_name=pass_name, op=op, flops=_flops(case, pass_name), floor_bytes=floor,
                                channels=case.layer.shape[1], launches=launches))
    return records


def _launch_record(event, arch, jobs):
    if event["kind"] == "torch":
        return dict(event)
    kernel, grid, args, kwargs = event["kernel"], event["grid"], event["args"], event["kwargs"]
    configs = []
    for jitfn, kw, config in _unwrap(kernel, args, kwargs):
        signature, constexprs, attrs, options, bound = bind(jitfn, args, kw, arch)
        named = dict(bound)
        named.update(num_warps=options["num_warps"], num_stages=options["num_stages"])
        g = grid(named) if callable(grid) else grid
        g = tuple(int(v) for v in g)
        key = _identity(jitfn, signature, constexprs, attrs, options, arch)
        by_name = {jitfn.params[path[0]].name: v for path, v in constexprs.items() if len(path) == 1}
        label = _config_label(by_name, options)
        if key not in jobs:
            module, qualname = _jit_name(jitfn)
            jobs[key] = dict(key=key, module=module, qualname=qualname, kernel=jitfn.fn.__name__, arch=arch,
                             signature=signature, constexprs=constexprs, attrs=attrs, options=options, label=label,
                             spec=_specialisation(jitfn, signature, constexprs, attrs),
                             dtype=next((v.lstrip("*") for v in signature.values() if v.startswith("*")), "-"))
        configs.append(dict(key=key, label=label, grid=g, work=_work(jitfn, named, g)))
    return dict(kind="triton", kernel=jobs[configs[0]["key"]]["kernel"], configs=configs)


# ============================================================================ compile (workers)


def _find_jit(module: str, qualname: str) -> JITFunction:
    registry = getattr(sys.modules.get("triton.runtime.jit"), "_triton_jit_function_registry", {})
    fn = registry.get(f"{module}:{qualname}")
    if fn is None:
        fn = getattr(importlib.import_module(module), qualname)
    while not isinstance(fn, JITFunction):
        fn = fn.fn
    return fn


def compile_job(job: dict) -> dict:
    """Compile one specialisation (or read it from the cache) and analyse it."""
    path = os.path.join(CACHE_DIR, job["key"] + ".json.gz")
    raw = None
    if os.path.exists(path):
        try:
            with gzip.open(path, "rt") as f:
                raw = json.load(f)
        except (OSError, ValueError):
            raw = None
    if raw is None:
        start = time.time()
        try:
            jitfn = _find_jit(job["module"], job["qualname"])
            target = GPUTarget("cuda", job["arch"], 32)
            compiled = triton.compile(ASTSource(jitfn, job["signature"], job["constexprs"], job["attrs"]),
                                      target=target, options=job["options"])
            cubin = compiled.asm["cubin"]
            with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
                f.write(cubin)
                f.flush()
                sass = subprocess.run([CUOBJDUMP, "-sass", f.name], capture_output=True, text=True,
                                      check=True).stdout
                usage = subprocess.run([CUOBJDUMP, "--dump-resource-usage", f.name], capture_output=True,
                                       text=True, check=True).stdout
            res = dict(re.findall(r"\b(REG|STACK|LOCAL|SHARED):(\d+)", usage))
            raw = dict(ok=True, sass=sass, ttgir=compiled.asm["ttgir"], regs=int(res.get("REG", 0)),
                       stack=int(res.get("STACK", 0)), local=int(res.get("LOCAL", 0)),
                       shared=int(compiled.metadata.shared), num_warps=int(compiled.metadata.num_warps),
                       seconds=round(time.time() - start, 2))
        except Exception as exc:  # report every failure, not only the first
            return dict(job_key=job["key"], ok=False,
                        error=f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}")
        os.makedirs(CACHE_DIR, exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp"
        with gzip.open(tmp, "wt") as f:
            json.dump(raw, f)
        os.replace(tmp, path)
        cached = False
    else:
        cached = True
    stats = analyse(raw["sass"], raw["ttgir"], raw["num_warps"])
    return dict(job_key=job["key"], ok=True, cached=cached, regs=raw["regs"], stack=raw["stack"], local=raw["local"],
                shared=raw["shared"], num_warps=raw["num_warps"], seconds=raw.get("seconds"), **stats)


# ============================================================================ SASS analysis

_INSTR = re.compile(r"^\s*/\*([0-9a-f]{4,})\*/\s*(.*?)\s*;", re.M)
_MMA_ROOTS = {"HGMMA", "HMMA", "DMMA", "IMMA", "QGMMA", "BMMA"}
_GLOBAL_LOADS = {"LDG", "LD"}
_ASYNC = {"LDGSTS"}
_TMA = {"UTMALDG", "UBLKCP"}
_STORES = {"STG", "ST", "RED", "REDG", "ATOM", "ATOMG"}
_DTYPE_BYTES = {"f16": 2, "bf16": 2, "f32": 4, "f64": 8, "i8": 1, "i16": 2, "i32": 4, "i64": 8, "f8E4M3FN": 1,
                "f8E5M2": 1}


def parse_sass(text: str) -> list[tuple[int, str, str]]:
    """[(address, opcode, operands)] of the (first) function, predicates dropped."""
    out = []
    for addr, body in _INSTR.findall(text):
        body = re.sub(r"^@!?U?P[T0-9]+\s+", "", body.strip())
        opcode, _, operands = body.partition(" ")
        out.append((int(addr, 16), opcode, operands.strip()))
    return out


def _width(opcode: str) -> int:
    """Bytes per lane of a global memory instruction."""
    tokens = opcode.split(".")[1:]
    if "128" in tokens:
        return 16
    if "64" in tokens or "F64" in tokens or "S64" in tokens or "U64" in tokens:
        return 8
    if "U16" in tokens or "S16" in tokens:
        return 2
    if "U8" in tokens or "S8" in tokens:
        return 1
    return 4


def _mma_flops(opcode: str) -> tuple[str, int]:
    """(rate family, FLOPs per instruction per warp) of a tensor-core instruction."""
    root, *mods = opcode.split(".")
    if root in ("HGMMA", "QGMMA"):
        m, n, k = (int(v) for v in mods[0].split("x"))
        bits = "tf32" if k == 8 else ("8" if k == 32 else "16")
        return f"hgmma_{bits}", 2 * m * n * k // 4  # one warpgroup instruction = 4 warps
    shape = mods[0] if mods else ""
    dims = {"16816": (16, 8, 16), "1688": (16, 8, 8), "884": (8, 8, 4), "16832": (16, 8, 32), "8816": (8, 8, 16),
            "16864": (16, 8, 64), "1684": (16, 8, 4)}.get(shape, (16, 8, 16))
    m, n, k = dims
    if root == "DMMA":
        return "dmma", 2 * m * n * k
    if root == "HMMA":
        return ("hmma_tf32" if "TF32" in mods else "hmma_16"), 2 * m * n * k
    return "hmma_8", 2 * m * n * k


def _loops(instrs):
    """(first index, last index) of the loop closed by each backward branch."""
    addrs = [addr for addr, _, _ in instrs]
    loops = []
    for i, (addr, opcode, operands) in enumerate(instrs):
        m = re.search(r"0x([0-9a-f]+)", operands) if opcode.split(".")[0] == "BRA" else None
        if m and int(m.group(1), 16) < addr:
            loops.append((bisect.bisect_left(addrs, int(m.group(1), 16)), i))
    return loops


def _tma_box_bytes(ttgir: str) -> list[int]:
    """Bytes of each TMA copy in the TTGIR (box shape of the descriptor)."""
    sizes = []
    for line in ttgir.splitlines():
        if "async_tma_copy_global_to_local" in line or "async_tma_gather" in line:
            m = re.search(r"tensor<([0-9x]+)x([a-z0-9A-Z]+)", line)
            if m:
                sizes.append(math.prod(int(v) for v in m.group(1).split("x")) * _DTYPE_BYTES.get(m.group(2), 4))
    return sizes


def analyse(sass: str, ttgir: str, num_warps: int) -> dict:
    """What the model and the gates read from one kernel's SASS (counts per warp
    unless said otherwise)."""
    # NOPs (padding) are dropped; the self-branch after EXIT is neither a loop nor work.
    instrs = [i for i in parse_sass(sass) if i[1] != "NOP"
              and not (i[1] == "BRA" and i[2].startswith("0x") and int(i[2].split()[0], 16) == i[0])]

    def root(op):
        return op.split(".")[0]

    def count(lo, hi, roots):
        return sum(1 for _, op, _ in instrs[lo:hi + 1] if root(op) in roots)

    loops = _loops(instrs)
    if loops:
        best = max(loops, key=lambda l: (count(*l, _MMA_ROOTS), count(*l, _GLOBAL_LOADS | _ASYNC | _TMA),
                                         -(l[1] - l[0])))
        if count(*best, _MMA_ROOTS | _GLOBAL_LOADS | _ASYNC | _TMA) == 0:
            best = None
    else:
        best = None
    lo, hi = best if best else (0, len(instrs) - 1)
    body = instrs[lo:hi + 1]

    mma = Counter(op for _, op, _ in body if root(op) in _MMA_ROOTS)
    mma_flops = defaultdict(int)  # rate family -> FLOPs per iteration per CTA
    for op, n in mma.items():
        family, flops = _mma_flops(op)
        mma_flops[family] += n * flops * num_warps
    for op, n in Counter(op for _, op, _ in body).items():
        fam = {"FFMA": ("ffma", 64), "DFMA": ("dfma", 64), "HFMA2": ("hfma2", 128)}.get(root(op))
        if fam and not op.endswith(".MMA"):  # HFMA2.MMA is a move on the MMA pipe
            mma_flops[fam[0]] += n * fam[1] * num_warps

    loads = Counter()          # width label -> instructions (per warp)
    load_bytes = 0             # per CTA per iteration
    fast_bytes = 0             # of which vectorised (>= 8 B per lane) or asynchronous
    wavefront_bytes = 0        # L1/L2 bytes moved, scalar lanes charged a whole sector each
    store_bytes = 0
    sync_bytes = 0             # loaded by plain LDG/LD: the warp waits for them within the iteration
    tma = ldgsts = 0
    boxes = _tma_box_bytes(ttgir)
    box = (sum(boxes) / len(boxes)) if boxes else 0
    lanes = 32
    for _, op, _ in body:
        r = root(op)
        if r in _TMA:
            tma += 1
            load_bytes += box
            fast_bytes += box
            wavefront_bytes += box
        elif r in _ASYNC or r in _GLOBAL_LOADS or r in _STORES:
            w = _width(op)
            real = lanes * w * num_warps
            moved = real if w >= 8 else lanes * SECTOR_BYTES * num_warps  # scalar: a sector per lane (worst case)
            wavefront_bytes += moved
            if r in _STORES:
                store_bytes += real
                continue
            if r in _ASYNC:
                ldgsts += 1
                label = f"LDGSTS.{w * 8}"
            else:
                label = {16: "128", 8: "64", 4: "32", 2: "U16", 1: "U8"}[w]
            loads[label] += 1
            load_bytes += real
            if r in _GLOBAL_LOADS:
                sync_bytes += real
            if w >= 8 or r in _ASYNC:
                fast_bytes += real

    # Does the last HGMMA of an iteration wait for everything (no MMA left in flight)?
    full_wait = None
    hgmma_at = [i for i, (_, op, _) in enumerate(body) if root(op) == "HGMMA"]
    if hgmma_at and best:
        full_wait = False
        for _, op, operands in body[hgmma_at[-1] + 1:]:
            if op.startswith("WARPGROUP.DEPBAR"):
                full_wait = operands.replace(" ", "").endswith(",0x0")
                break
    whole_mma = Counter(op for _, op, _ in instrs if root(op) in _MMA_ROOTS)
    return dict(
        loop=bool(best), loop_instructions=len(body), outside_instructions=len(instrs) - (len(body) if best else 0),
        mma=dict(mma), mma_any=dict(whole_mma), mma_flops=dict(mma_flops),
        loads=dict(loads), load_bytes=load_bytes, fast_bytes=fast_bytes, wavefront_bytes=wavefront_bytes,
        store_bytes=store_bytes, sync_load_bytes=sync_bytes, ldgsts=ldgsts, tma=tma,
        ldgsts_total=sum(1 for _, op, _ in instrs if root(op) in _ASYNC),
        tma_total=sum(1 for _, op, _ in instrs if root(op) in _TMA),
        vectorised=(fast_bytes / load_bytes) if load_bytes else None, full_wait=full_wait,
        dot_in_ttgir=bool(re.search(r"\btt\.dot\b|warp_group_dot|tc_gen5_mma", ttgir)))


def occupancy(gpu: GPU, regs: int, num_warps: int, shared: int) -> int:
    """Resident blocks per SM (CUDA occupancy calculator rules): 0 if a block does not fit."""
    if shared > gpu.smem_per_block or regs > 255:
        return 0
    regs_per_warp = math.ceil(max(regs, 1) * 32 / 256) * 256  # registers are allocated per warp, 256 at a time
    by_regs = (gpu.regs_per_sm // regs_per_warp) // num_warps
    by_smem = gpu.smem_per_sm // (shared + gpu.smem_reserved_per_block)
    by_threads = gpu.threads_per_sm // (32 * num_warps)
    return max(0, min(by_regs, by_smem, by_threads, gpu.blocks_per_sm))


# ============================================================================ the model


def estimate_launch(stats: dict, work: dict, grid: tuple, gpu: GPU) -> dict:
    """First-order time of one Triton launch (an ESTIMATE).

    Per CTA and per main-loop iteration, three throughput limits of the SM:
      math   = tile FLOPs / (FLOP per clock per SM of the unit: HGMMA, HMMA, DMMA, FFMA...)
      issue  = instructions per warp x warps / 4 schedulers
      l1     = L1/L2 bytes / 64 B per clock (vectorised or async: the bytes; scalar loads:
               one 32-byte sector per lane, the worst case)
    and one latency chain: a warp's own instructions (one per clock at best),
    plus a global load's round trip when the loop has synchronous loads (plain
    LDG: not software-pipelined), plus the MMA time when the MMA is waited for
    within the iteration (a full wait after the last HGMMA, or synchronous loads).
    The R CTAs resident on an SM share its units: an iteration of all of them
    takes max(R x max(math, issue, l1), chain). A CTA runs trip_count
    iterations plus its code outside the loop (issued once). The grid runs in
    waves of SMs x occupancy CTAs (the last one counts as full: quantisation).
    Launch time = max(SM time, HBM bytes / bandwidth) + launch latency.
    """
    warps = stats["num_warps"]
    occ = occupancy(gpu, stats["regs"], warps, stats["shared"])
    programs = math.prod(grid) if grid else 1
    trip = max(1, int(work.get("trip_count", 1)))
    math_cycles = sum(flops / gpu.flop_per_clk.get(family, gpu.flop_per_clk["ffma"])
                      for family, flops in stats["mma_flops"].items())
    issue = stats["loop_instructions"] * warps / gpu.schedulers
    l1 = stats["wavefront_bytes"] / gpu.l1_bytes_per_clk
    synchronous = stats["sync_load_bytes"] > 0
    chain = (stats["loop_instructions"] + (GLOBAL_LOAD_LATENCY_CYCLES if synchronous else 0)
             + (math_cycles if synchronous or stats["full_wait"] else 0))
    if occ == 0 or programs == 0:
        return dict(occupancy=occ, seconds=float("inf"), bound="does not fit")
    resident = min(occ, math.ceil(programs / gpu.sms))
    waves = math.ceil(programs / (gpu.sms * occ))
    limits = dict(math=math_cycles, issue=issue, l1=l1)
    per_iter = max(resident * max(limits.values()), chain)
    wave_cycles = trip * per_iter + resident * stats["outside_instructions"] * warps / gpu.schedulers
    sm_seconds = waves * wave_cycles / gpu.clock_hz
    hbm_seconds = work.get("bytes", 0) / gpu.hbm_bytes_per_s
    bound = "hbm" if hbm_seconds >= sm_seconds else (
        "latency" if chain >= resident * max(limits.values()) else max(limits, key=limits.get))
    return dict(occupancy=occ, resident=resident, waves=waves, per_iter_cycles=per_iter, sm_s=sm_seconds,
                hbm_s=hbm_seconds, bound=bound, seconds=max(sm_seconds, hbm_seconds) + LAUNCH_LATENCY_S)


def estimate_torch(row: dict, gpu: GPU) -> float:
    """A torch op the launcher runs: its bytes at HBM bandwidth plus a launch."""
    return row["bytes"] / gpu.hbm_bytes_per_s + LAUNCH_LATENCY_S


# ============================================================================ driver


def run_profile(cases, archs, jobs_n, log=print):
    jobs: dict = {}
    records = []
    start = time.time()
    for arch in archs:
        gpu = GPUS[arch]
        for case in cases:
            records += replay(case, arch, gpu, jobs)
    log(f"replayed {len(cases)} cases x {len(archs)} archs: {sum(len(r['launches']) for r in records)} launches, "
        f"{len(jobs)} distinct compiles ({time.time() - start:.1f} s)")
    start = time.time()
    todo = list(jobs.values())
    results = {}
    if jobs_n > 1 and len(todo) > 1:
        with ProcessPoolExecutor(jobs_n, mp_context=multiprocessing.get_context("fork")) as pool:
            for res in pool.map(compile_job, todo):
                results[res["job_key"]] = res
    else:
        for job in todo:
            res = compile_job(job)
            results[res["job_key"]] = res
    fresh = sum(1 for r in results.values() if not r.get("cached"))
    log(f"compiled {len(todo)} specialisations, {fresh} of them not in {os.path.relpath(CACHE_DIR, ROOT)} "
        f"({time.time() - start:.1f} s)")
    compiles = []
    for key, job in jobs.items():
        res = results[key]
        row = dict(key=key, kernel=job["kernel"], module=job["module"], arch=job["arch"], label=job["label"],
                   dtype=job["dtype"], spec=job["spec"], **{k: v for k, v in res.items() if k != "job_key"})
        if res["ok"]:
            row["occupancy"] = occupancy(GPUS[job["arch"]], res["regs"], res["num_warps"], res["shared"])
            row["spills"] = res["local"] + res["stack"]
        compiles.append(row)
    by_key = {c["key"]: c for c in compiles}
    for rec in records:
        estimate_op(rec, by_key, GPUS[rec["arch"]])
        for launch in rec["launches"]:
            for cfg in launch.get("configs", ()):
                by_key[cfg["key"]].setdefault("used_by", []).append(f"{rec['case']} {rec['pass_name']}")
    return records, compiles


def estimate_op(rec: dict, by_key: dict, gpu: GPU):
    """Estimates of each launch (the best surviving config, as an autotuner would
    pick) and of the op (sum of its launches)."""
    total = 0.0
    for launch in rec["launches"]:
        if launch["kind"] == "torch":
            launch["seconds"] = estimate_torch(launch, gpu)
        else:
            for cfg in launch["configs"]:
                stats = by_key[cfg["key"]]
                cfg["estimate"] = estimate_launch(stats, cfg["work"], cfg["grid"], gpu) if stats["ok"] else \
                    dict(seconds=float("inf"), bound="compile failed")
                if cfg["work"].get("flops"):
                    cfg["estimate"]["tflops"] = cfg["work"]["flops"] / cfg["estimate"]["seconds"] / 1e12
            chosen = min(launch["configs"], key=lambda c: c["estimate"]["seconds"])
            launch["chosen"] = chosen["key"]
            launch["seconds"] = chosen["estimate"]["seconds"]
        total += launch["seconds"]
    rec["seconds"] = total
    roof_bytes = rec["floor_bytes"] / gpu.hbm_bytes_per_s
    if rec["flops"] and rec["pass_name"] != "bias_grad":
        peak = tensor_core_peak(gpu, rec["dtype"])
        rec["tflops"] = rec["flops"] / total / 1e12
        rec["roofline_s"] = max(rec["flops"] / peak, roof_bytes)
        rec["cudnn_s"] = max(rec["flops"] / (CUDNN_FRACTION_OF_PEAK * peak), roof_bytes)
        rec["cudnn_tflops"] = CUDNN_FRACTION_OF_PEAK * peak / 1e12
        rec["cudnn_ratio"] = rec["cudnn_s"] / total
    else:
        rec["roofline_s"] = roof_bytes + LAUNCH_LATENCY_S
    rec["gbs"] = rec["floor_bytes"] / total / 1e9
    rec["of_roofline"] = rec["roofline_s"] / total


# ---------------------------------------------------------------------------- gates and the Done-when table

CONV_GEMM_OPS = {"conv2d", "conv2d_backward_input", "conv2d_backward_weight"}


def _gemm_configs(rec, by_key):
    """The compiled configs of a conv pass's GEMM launches (a dot in the TTGIR, or useful FLOPs)."""
    out = []
    for launch in rec["launches"]:
        for cfg in launch.get("configs", ()):
            c = by_key[cfg["key"]]
            if c["ok"] and (c["dot_in_ttgir"] or cfg["work"].get("flops", 0) > 0):
                out.append(c)
    return out


def gates(records, compiles) -> list[str]:
    by_key = {c["key"]: c for c in compiles}
    failures = []
    for c in compiles:
        where = f"{c['kernel']} [{c['label']}] sm_{c['arch']} {c['dtype']}"
        if not c["ok"]:
            failures.append(f"COMPILE FAILED  {where}: {c['error']}")
        elif c["spills"]:
            failures.append(f"SPILL           {where}: LOCAL {c['local']} B, STACK {c['stack']} B")
        elif c["occupancy"] == 0:
            failures.append(f"DOES NOT FIT    {where}: {c['shared']} B shared, {c['regs']} registers, "
                            f"{c['num_warps']} warps")
    seen = set()
    for rec in records:
        if rec["op"] not in CONV_GEMM_OPS or rec["dtype"] not in ("fp16", "bf16"):
            continue
        gemm = _gemm_configs(rec, by_key)
        where = f"{rec['case']} {rec['pass_name']} sm_{rec['arch']}"
        if not gemm:
            failures.append(f"NO GEMM KERNEL  {where}: no launch with a dot or useful FLOPs")
        for c in gemm:
            if not c["mma"] and (c["key"], "tc") not in seen:
                seen.add((c["key"], "tc"))
                failures.append(f"NO TENSOR CORES {where}: {c['kernel']} [{c['label']}] main loop has no HGMMA/HMMA")
            if rec["layout"] == "cl" and rec["channels"] >= 16 and c["loads"].get("U16") and \
                    (c["key"], "u16") not in seen:
                seen.add((c["key"], "u16"))
                failures.append(f"SCALAR U16      {where}: {c['kernel']} [{c['label']}] main loop has "
                                f"{c['loads']['U16']} LDG.E.U16 per warp")
    return failures


def done_when(records, compiles) -> list[dict]:
    """Issue 8's bar, per pass, for L3/L4/L5 fp16/bf16 channels_last."""
    by_key = {c["key"]: c for c in compiles}
    rows = []
    for rec in records:
        if rec["layer"] not in ("L3", "L4", "L5") or rec["layout"] != "cl" or rec["dtype"] not in ("fp16", "bf16") \
                or rec["op"] not in CONV_GEMM_OPS:
            continue
        gemm = _gemm_configs(rec, by_key)
        tc = bool(gemm) and all(c["mma"] for c in gemm)
        load = sum(c["load_bytes"] for c in gemm)
        vec = sum(c["fast_bytes"] for c in gemm) / load if load else 0.0
        spills = sum(by_key[cfg["key"]].get("spills", 0) or 0 for l in rec["launches"] for cfg in l.get("configs", ()))
        ratio = rec.get("cudnn_ratio", 0.0)
        meets = tc and vec >= DONE_WHEN["vectorised"] and spills == 0 and ratio >= DONE_WHEN["cudnn_ratio"]
        rows.append(dict(layer=rec["layer"], dtype=rec["dtype"], pass_name=rec["pass_name"], arch=rec["arch"],
                         tensor_cores=tc,
                         vectorised=vec, spills=spills, tflops=rec.get("tflops", 0.0),
                         cudnn_tflops=rec.get("cudnn_tflops", 0.0), ratio=ratio, meets=meets))
    return rows


# ---------------------------------------------------------------------------- report


def _us(s):
    return "inf" if s == float("inf") else f"{s * 1e6:.1f}"


def _loads(c):
    order = ["128", "64", "32", "U16", "U8", "LDGSTS.128", "LDGSTS.64", "LDGSTS.32", "LDGSTS.16", "LDGSTS.8"]
    words = [f"{k}:{c['loads'][k]}" for k in order if c["loads"].get(k)]
    if c["tma"]:
        words.append(f"TMA:{c['tma']}")
    return " ".join(words) or "-"


def _mma(c):
    if not c["mma"]:
        return "none" + (" (outside loop)" if c["mma_any"] else "")
    return ", ".join(f"{op} x{n}" for op, n in sorted(c["mma"].items()))


def report(records, compiles, failures, done, gate: bool, out=print):
    out(ESTIMATE_NOTE)
    out(f"cudnn.allow_tf32={torch.backends.cudnn.allow_tf32} (fp32 convs use TF32 exactly when it is True); "
        f"triton {triton.__version__}, torch {torch.__version__}")
    for arch in sorted({c["arch"] for c in compiles}, reverse=True):
        gpu = GPUS[arch]
        out(f"\n=== sm_{arch} ({gpu.name}: {gpu.sms} SMs at {gpu.clock_hz / 1e9:.2f} GHz, "
            f"HBM {gpu.hbm_bytes_per_s / 1e12:.2f} TB/s): kernels as compiled, per config; main-loop counts per warp")
        out(f"{'kernel':<30} {'config':<22} {'dtype':<5} {'regs':>4} {'spill':>5} {'smem':>6} {'occ':>3} "
            f"{'instr/it':>8} {'vec%':>5} {'wait':>4}  {'tensor cores (main loop)':<30} {'global loads (main loop)'}")
        rows = sorted((c for c in compiles if c["arch"] == arch), key=lambda c: (c["kernel"], c["dtype"], c["label"]))
        siblings = defaultdict(list)
        for c in rows:
            siblings[(c["kernel"], c["dtype"], c["label"])].append(c)
        for c in rows:
            group = siblings[(c["kernel"], c["dtype"], c["label"])]
            differing = sorted({k for g in group for k in set(g["spec"]) | set(c["spec"])
                                if g["spec"].get(k) != c["spec"].get(k)})
            spec = ("  {" + " ".join(f"{k}={c['spec'].get(k, '-')}" for k in differing) + "}") if differing else ""
            if not c["ok"]:
                out(f"{c['kernel']:<30} {c['label']:<22} {c['dtype']:<5} COMPILE FAILED: {c['error'][:150]}")
                continue
            vec = "-" if c["vectorised"] is None else f"{100 * c['vectorised']:.0f}"
            wait = {None: "-", True: "full", False: "no"}[c["full_wait"]]
            async_ = f" async:{c['ldgsts_total']}" if c["ldgsts_total"] and not c["ldgsts"] else ""
            out(f"{c['kernel']:<30} {c['label']:<22} {c['dtype']:<5} {c['regs']:>4} {c['spills']:>5} "
                f"{c['shared']:>6} {c['occupancy']:>3} {c['loop_instructions']:>8} {vec:>5} {wait:>4}  "
                f"{_mma(c):<34} {_loads(c)}{async_}{'' if c['loop'] else ' (no loop)'}{spec}")
        out(f"\n--- sm_{arch} per op (ESTIMATED times; conv: TFLOP/s, others: GB/s of the one-read-one-write floor; "
            f"'cuDNN' = {CUDNN_FRACTION_OF_PEAK:.0%} of tensor-core peak, capped by HBM)")
        out(f"{'case':<34} {'pass':<15} {'launches':>8} {'est us':>9} {'TFLOP/s':>8} {'GB/s':>7} {'of roof':>7} "
            f"{'vs cuDNN':>8}  launches (est us, bound)")
        for rec in (r for r in records if r["arch"] == arch):
            tfl = f"{rec['tflops']:.1f}" if "tflops" in rec else "-"
            cud = f"{rec['cudnn_ratio']:.2f}x" if "cudnn_ratio" in rec else "-"
            parts = []
            for l in rec["launches"]:
                if l["kind"] == "torch":
                    parts.append(f"torch:{l['op'].removeprefix('aten.')}({l['bytes'] / 1e6:.1f}MB) {_us(l['seconds'])}")
                else:
                    cfg = next(c for c in l["configs"] if c["key"] == l["chosen"])
                    more = f"/{len(l['configs'])}cfg" if len(l["configs"]) > 1 else ""
                    guess = "" if cfg["work"]["source"] == "PROFILE_WORK" else f" trip:{cfg['work']['source']}"
                    parts.append(f"{l['kernel']}[{cfg['label']}{more}] {_us(l['seconds'])} "
                                 f"{cfg['estimate']['bound']}{guess}")
            out(f"{rec['case']:<34} {rec['pass_name']:<15} {len(rec['launches']):>8} {_us(rec['seconds']):>9} {tfl:>8} "
                f"{rec['gbs']:>7.0f} {rec['of_roofline']:>6.0%} {cud:>8}  " + "; ".join(parts))
    if done:
        out("\n=== issue 8 'Done when' (L3/L4/L5 3x3, channels_last; ESTIMATED throughput): tensor cores, >= 80% of "
            "main-loop global-load bytes vectorised or async, no spills, within 2x of cuDNN's assumed "
            f"{CUDNN_FRACTION_OF_PEAK:.0%} of peak")
        out(f"{'arch':<6} {'layer':<5} {'dtype':<5} {'pass':<12} {'TC':>3} {'vec/async':>9} {'spills':>6} "
            f"{'est TFLOP/s':>11} {'cuDNN assumed':>13} {'ratio':>6}  meets")
        for r in sorted(done, key=lambda r: (-r["arch"], r["layer"], r["dtype"])):
            tc = "yes" if r["tensor_cores"] else "no"
            out(f"sm_{r['arch']:<3} {r['layer']:<5} {r['dtype']:<5} {r['pass_name']:<12} {tc:>3} "
                f"{100 * r['vectorised']:>8.0f}% {r['spills']:>6} {r['tflops']:>11.1f} {r['cudnn_tflops']:>13.0f} "
                f"{r['ratio']:>5.2f}x  {'yes' if r['meets'] else 'NO'}")
    out("")
    if failures:
        out(f"=== GATES: {len(failures)} failure(s)" + ("" if gate else " (--no-gate: reported, not enforced)"))
        for f in failures:
            out("  " + f)
    else:
        out("=== GATES: passed (no compile failure, no spill, every block fits, conv main loops on tensor cores, "
            "no scalar 2-byte loads in channels_last fp16/bf16 conv main loops with C >= 16)")


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and math.isinf(value):
        return None
    if isinstance(value, (int, float, str, bool)) or value is None:
        return value
    return repr(value)


# ---------------------------------------------------------------------------- --measure (a machine with a GPU)


def measure(cases, records, reps=10, batches=5, warmup=3, out=print):
    """Time each op on the GPU with CUDA events and print it beside its estimate:
    `warmup` calls (compiles included), then the median over `batches` of the
    mean time of `reps` back-to-back calls (so the queue stays fed and host-side
    launch overhead overlaps, as in a training step)."""
    estimates = {(r["case"], r["pass_name"]): r for r in records}
    rows = []
    out(f"\n=== measured on {torch.cuda.get_device_name()} (CUDA events: median over {batches} batches of "
        f"{reps} calls, after {warmup} warm-up calls) beside the ESTIMATE")
    out(f"{'case':<34} {'pass':<15} {'est us':>9} {'measured us':>11} {'measured/est':>12}")
    for case in cases:
        gen = passes(case, device="cuda")
        outputs = None
        while True:
            try:
                pass_name, op, values = gen.send(outputs) if outputs is not None else next(gen)
            except StopIteration:
                break
            try:
                for _ in range(warmup):
                    outputs = call_op(op, values, record=False)
                torch.cuda.synchronize()
                times = []
                for _ in range(batches):
                    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    start.record()
                    for _ in range(reps):
                        call_op(op, values, record=False)
                    end.record()
                    end.synchronize()
                    times.append(start.elapsed_time(end) * 1e-3 / reps)
                seconds = statistics.median(times)
            except Exception as exc:  # keep timing the other cases
                out(f"{case.name:<34} {pass_name:<15} FAILED {type(exc).__name__}: {' '.join(str(exc).split())[:150]}")
                rows.append(dict(case=case.name, pass_name=pass_name, error=f"{type(exc).__name__}: {exc}"[:300]))
                break
            est = estimates.get((case.name, pass_name))
            est_s = est["seconds"] if est else float("nan")
            rows.append(dict(case=case.name, pass_name=pass_name, measured_s=seconds, estimated_s=est_s))
            out(f"{case.name:<34} {pass_name:<15} {_us(est_s):>9} {seconds * 1e6:>11.1f} {seconds / est_s:>11.2f}x")
    ratios = [r["measured_s"] / r["estimated_s"] for r in rows if "measured_s" in r and 0 < r["estimated_s"] < 1e9]
    if ratios:
        out(f"measured/estimated over {len(ratios)} ops: median {statistics.median(ratios):.2f}x, "
            f"range {min(ratios):.2f}x-{max(ratios):.2f}x")
    return rows


def gpu_of_device() -> GPU:
    props = torch.cuda.get_device_properties(0)
    arch = props.major * 10 + props.minor
    base = GPUS.get(arch, H100 if arch >= 90 else A100)
    bw = 4.8e12 if "H200" in props.name else base.hbm_bytes_per_s  # H200: HBM3e 4.8 TB/s
    return dataclasses.replace(base, name=props.name, arch=arch, sms=props.multi_processor_count,
                               hbm_bytes_per_s=bw)


# ---------------------------------------------------------------------------- main


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", nargs="+", type=int, default=[90, 80], choices=sorted(GPUS))
    parser.add_argument("--shapes", nargs="+", default=["all"],
                        help="ci | resnet | models | all | layer names (L4, cifar-fast:3) or model names")
    parser.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=list(DTYPES))
    parser.add_argument("--layouts", nargs="+", default=list(LAYOUTS), choices=list(LAYOUTS))
    parser.add_argument("--json", help="write the full results here")
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1), help="parallel compiles")
    parser.add_argument("--no-gate", action="store_true", help="report the gates without failing")
    parser.add_argument("--measure", action="store_true",
                        help="on a machine with a GPU: also time each op (CUDA events) beside its estimate")
    parser.add_argument("--output", help="also write the report to this file")
    args = parser.parse_args(argv)

    lines = []

    def out(text=""):
        print(text, flush=True)
        lines.append(text)

    cases = select_cases(args.shapes, args.dtypes, args.layouts)
    if not cases:
        sys.exit(f"no case matches --shapes {' '.join(args.shapes)} --dtypes {' '.join(args.dtypes)}")
    cnnkern._ops.load_triton()  # registers torch.ops.cnnkern_triton.*
    from cnnkern.kernels import _util
    recording = contextlib.ExitStack()
    recording.enter_context(_util.intercept_launches(record_launch))
    archs = args.arch
    if args.measure:
        if not torch.cuda.is_available():
            sys.exit("--measure needs a GPU")
        device_gpu = gpu_of_device()
        GPUS[device_gpu.arch] = device_gpu
        archs = [device_gpu.arch]
    start = time.time()
    records, compiles = run_profile(cases, archs, args.jobs, log=out)
    failures = gates(records, compiles)
    done = done_when(records, compiles)
    report(records, compiles, failures, done, gate=not args.no_gate, out=out)
    measured = []
    if args.measure:
        recording.close()  # launch for real from here
        measured = measure(cases, records, out=out)
    out(f"\n{len(cases)} cases, {len(compiles)} compiles, {time.time() - start:.0f} s")
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(_jsonable(dict(note=ESTIMATE_NOTE, archs=archs, cases=[c.name for c in cases],
                                     model=dict(gpus={a: dataclasses.asdict(g) for a, g in GPUS.items()},
                                                launch_latency_s=LAUNCH_LATENCY_S,
                                                global_load_latency_cycles=GLOBAL_LOAD_LATENCY_CYCLES,
                                                cudnn_fraction_of_peak=CUDNN_FRACTION_OF_PEAK),
                                     compiles=compiles, ops=records, done_when=done, gates=failures,
                                     measured=measured)), f, indent=1)
    if args.output:
        with open(args.output, "w") as f:
            f.write("\n".join(lines) + "\n")
    return 1 if failures and not args.no_gate else 0


if __name__ == "__main__":
    sys.exit(main())
