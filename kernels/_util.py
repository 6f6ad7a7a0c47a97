"""What the Triton kernel files share: interpreter detection, the int32 guard,
the GPU a launch is planned for, and element numbering for the flat (one
element per lane) kernels."""
from __future__ import annotations

import contextlib
import functools
import os
from dataclasses import dataclass
from typing import List, Optional  # noqa: F401  (see on_tensor_device)

import torch
import triton
import triton.language as tl

_INT32_LIMIT = 2**31


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def check_int32_indexable(*tensors: torch.Tensor) -> None:
    """The kernels address elements with int32 offsets: refuse what they cannot reach."""
    for t in tensors:
        extent = 1 + sum((size - 1) * abs(stride) for size, stride in zip(t.shape, t.stride()) if size > 0)
        if t.numel() and extent >= _INT32_LIMIT:
            raise RuntimeError(
                f"cnnkern's triton backend indexes with 32-bit offsets and a tensor of shape {tuple(t.shape)} "
                f"spans {extent} elements (limit {_INT32_LIMIT - 1}); use the 'cuda' backend or split the batch")


@dataclass(frozen=True)
class Target:
    """What a launcher needs to know of the GPU it plans for: compute capability
    (90 for sm_90) and SM count (grid sizing, split-K). interpreted=True: the
    Triton interpreter on CPU tensors, where one small tile is all that runs."""

    arch: int
    sm_count: int
    interpreted: bool = False


_INTERPRETER_TARGET = Target(arch=0, sm_count=4, interpreted=True)
_planning: list[Target] = []  # scripts/gpu_profile.py plans launches for a GPU this machine does not have


@contextlib.contextmanager
def planning_for(arch: int, sm_count: int):
    """Launchers plan for this GPU, whatever device the tensors are on: how
    scripts/gpu_profile.py replays the real launch arguments without a GPU."""
    _planning.append(Target(arch, sm_count))
    try:
        yield
    finally:
        _planning.pop()


@functools.lru_cache(maxsize=None)
def _cuda_target(index: int) -> Target:
    props = torch.cuda.get_device_properties(index)
    return Target(arch=props.major * 10 + props.minor, sm_count=props.multi_processor_count)


def target_for(t: torch.Tensor) -> Target:
    """The GPU the launch for tensor t is planned for."""
    if _planning:
        return _planning[-1]
    if t.device.type == "cuda":
        return _cuda_target(t.device.index if t.device.index is not None else torch.cuda.current_device())
    return _INTERPRETER_TARGET


@triton.jit
def position(offs, C, H, W, CHANNELS_LAST: tl.constexpr):
    """Element number -> (n, c, h, w), numbered in the tensor's memory order
    (channel fastest for channels_last) so a program's accesses are contiguous."""
    if CHANNELS_LAST:
        c = offs % C
        w = (offs // C) % W
        h = (offs // (C * W)) % H
        n = offs // (C * W * H)
    else:
        w = offs % W
        h = (offs // W) % H
        c = (offs // (W * H)) % C
        n = offs // (W * H * C)
    return n, c, h, w


def on_tensor_device(launcher):
    """Run a launcher with its first tensor's CUDA device current: Triton launches on
    the current device and its stream, not on the tensors' (the C++ CUDA ops guard
    the same way). Under torch.compile the generated code places launches itself.
    (triton_op infers the op's schema from the launcher's string annotations, which
    it evaluates in this wrapper's globals: hence this module's typing imports.)"""

    @functools.wraps(launcher)
    def guarded(first, *args, **kwargs):
        index = first.device.index
        if (first.device.type == "cuda" and index is not None and not torch.compiler.is_compiling()
                and index != torch.cuda.current_device()):
            with torch.cuda.device(index):
                return launcher(first, *args, **kwargs)
        return launcher(first, *args, **kwargs)

    return guarded
