"""What the Triton kernel files share: interpreter detection, the int32 guard,
the GPU a launch is planned for, element numbering for the flat (one element
per lane) kernels, the one launch function every launcher calls, and launch
plans: what a launcher did for given argument shapes, replayed without its
Python."""
from __future__ import annotations

import contextlib
import functools
import os
import threading
from dataclasses import dataclass
from typing import List, Optional  # noqa: F401  (see on_tensor_device)

import torch
import triton
import triton.language as tl
from torch._library.triton import is_wrap_triton_enabled, wrap_triton, wrap_triton_enabled

from .. import _C

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
    _C.set_plans_enabled(False)  # no replayed plan: they were made for this machine's tensors
    try:
        yield
    finally:
        _planning.pop()
        _C.set_plans_enabled(not _planning)


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


# ----------------------------------------------------------------------------- host-side integer helpers
# triton.cdiv and triton.next_power_of_2 are constexpr_functions: ~1.5 us a call from the host.


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def next_power_of_2(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()


# ----------------------------------------------------------------------------- launches

_launch_hook = None  # intercept_launches: tests count launches, scripts/gpu_profile.py records them


def launch(kernel, grid, *args, **kwargs):
    """Every Triton launch cnnkern makes goes through here. Under tracing (torch.compile, make_fx:
    wrap_triton enabled) the kernel is wrapped so the trace captures it; with real tensors it is
    called directly. A launch plan being recorded sees it, and so does an intercept_launches hook."""
    if _thread.recording:
        _thread.recording[-1].launches.append((kernel, grid, args, kwargs))
    if _launch_hook is not None:
        return _launch_hook(kernel, grid, args, kwargs)
    return run_launch(kernel, grid, args, kwargs)


def run_launch(kernel, grid, args, kwargs):
    if is_wrap_triton_enabled():
        return wrap_triton(kernel)[grid](*args, **kwargs)
    return kernel[grid](*args, **kwargs)


@contextlib.contextmanager
def intercept_launches(hook):
    """hook(kernel, grid, args, kwargs) runs in place of every launch (run_launch launches for real)."""
    global _launch_hook
    previous, _launch_hook = _launch_hook, hook
    _C.set_launch_hook(hook)  # replayed plans launch from C++
    try:
        yield
    finally:
        _launch_hook = previous
        _C.set_launch_hook(previous)


# ----------------------------------------------------------------------------- launch plans
# A launcher's Python (memory format, tile sizes, grid, flags, int32 check) depends only on its
# arguments' shapes, strides, dtypes and devices and on its plain arguments. The first eager call
# with a given set of those is recorded: the tensors it allocated (fresh()) or copied into another
# layout (contiguous()), in order, and the launches it made. Later calls redo those steps and make
# the same launches with the new tensors swapped in. A call whose launches or outputs involve any
# other tensor (a view, a result of some other op) is not replayable and always runs the launcher;
# so is one that launches nothing (its work, if any, was not a kernel).

class _ThreadState(threading.local):
    def __init__(self):
        self.recording = []  # this thread's recordings in progress, the innermost last


_thread = _ThreadState()
_MAX_PLANS = 256  # per launcher; a training run sees a handful of shapes per layer


class _Recording:
    def __init__(self):
        self.steps, self.launches = [], []  # steps: (tensor made, how to make it again)


def fresh(t: torch.Tensor) -> torch.Tensor:
    """Declare t an uninitialised allocation of the launcher, which a plan may redo with empty_strided."""
    if _thread.recording:
        _thread.recording[-1].steps.append((t, (t.shape, t.stride(), t.dtype, t.device)))
    return t


def contiguous(t: torch.Tensor, memory_format=torch.contiguous_format) -> torch.Tensor:
    """t.contiguous(memory_format=...), as a step a plan redoes (nothing to redo when t already was)."""
    out = t.contiguous(memory_format=memory_format)
    if _thread.recording and out is not t:
        _thread.recording[-1].steps.append((out, (t, memory_format)))
    return out


# _key(args): bytes naming every tensor argument's shape, strides, dtype and device and every
# plain argument's value, or None when an argument is of a kind it does not cover.
_key = _C.plan_key


class _NotReplayable(Exception):
    pass


def _native_plan(args, recording: _Recording, output):
    """The recorded call as a plan cnnkern._C replays (csrc/ops/launch_plan.cpp), tensors named by
    slot: an argument's position, or len(args) + the number of the step that made it."""
    slots = {id(a): i for i, a in enumerate(args) if isinstance(a, torch.Tensor)}
    steps = []
    for t, how in recording.steps:
        if len(how) == 2:  # a copy of an earlier tensor in another memory format
            steps.append(("copy", _slots_of(slots, (how[0],))[0], how[1]))
        else:
            steps.append(("alloc", *how))
        slots[id(t)] = len(args) + len(steps) - 1
    launches = tuple(_plan_launch(slots, *launch) for launch in recording.launches)
    single = not isinstance(output, tuple)
    first = next(a for a in args if isinstance(a, torch.Tensor))
    return _C.native_plan(len(args), tuple(steps), launches, _slots_of(slots, (output,) if single else output),
                          single, first.device.index if first.device.type == "cuda" else -1)


def _slots_of(slots: dict, tensors) -> tuple:
    try:
        return tuple(slots[id(t)] for t in tensors)
    except KeyError:
        raise _NotReplayable from None


def _plan_launch(slots, kernel, grid, args, kwargs):
    if any(isinstance(v, torch.Tensor) for v in kwargs.values()) or not isinstance(grid, tuple):
        raise _NotReplayable
    positions = [i for i, a in enumerate(args) if isinstance(a, torch.Tensor)]
    subs = tuple(zip(positions, _slots_of(slots, [args[i] for i in positions])))
    template = tuple(None if isinstance(a, torch.Tensor) else a for a in args)
    return kernel, grid, template, subs, dict(kwargs)


EAGER: dict = {}  # launcher name -> its eager entry (cnnkern._ops._triton_eager and cnnkern._C call these)


def launcher(fn=None, *, plans: bool = True):
    """The decorator under each triton_op: fn with the device guard (what the op runs), and fn's
    eager entry in EAGER: real tensors outside any trace, so launches need no wrap_triton (triton_op's
    own eager entry says so with a context manager, which costs more than a replayed plan), and with
    plans=True launch plans. A launcher that declares no allocation fresh() could never replay its
    plans: it says plans=False and saves the key."""
    if fn is None:
        return functools.partial(launcher, plans=plans)
    guarded = on_tensor_device(fn)
    EAGER[fn.__name__] = _eager_entry(guarded, plans)
    return guarded


def clear_plans() -> None:
    """Forget every recorded plan (tests that patch a launcher's helpers need it to run again)."""
    for entry in EAGER.values():
        entry.plans.clear()


def _eager_entry(guarded, plans_on: bool):
    plans: dict = {}

    @functools.wraps(guarded)
    def call(*args):
        key = _key(args) if plans_on and not _planning else None
        if key is not None:
            plan = plans.get(key, False)
            if plan:
                return _C.replay(plan, args)
            if plan is None:  # recorded once, not replayable
                key = None
        previous = getattr(wrap_triton_enabled, "value", True)
        wrap_triton_enabled.value = False
        try:
            if key is None:
                return guarded(*args)
            stack = _thread.recording
            stack.append(_Recording())
            try:
                output = guarded(*args)
            finally:
                recording = stack.pop()
        finally:
            wrap_triton_enabled.value = previous
        if len(plans) >= _MAX_PLANS:
            plans.clear()
        try:
            plans[key] = _native_plan(args, recording, output) if recording.launches else None
        except _NotReplayable:
            plans[key] = None
        return output

    call.plans = plans
    return call
