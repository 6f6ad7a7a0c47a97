"""Functional forms of cnnkern's layers, with torch.nn.functional's signatures.

Each function validates its arguments the way torch does (same exception
types, messages in the same words), normalises them, picks the backend for the
input's device and calls that backend's op. Nothing here computes.
"""
from __future__ import annotations

import operator

import torch
import torch.nn.functional as F
from torch.nn.modules.utils import _pair

from . import _C, _backend, _ops
from ._shapes import pool_out_size

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _positive(values, message):
    if any(v <= 0 for v in values):
        raise RuntimeError(message)


# torch's names for dtypes in its messages: c10's type names, and ScalarType's
_C10_NAME = {torch.float16: "c10::Half", torch.bfloat16: "c10::BFloat16", torch.float32: "float",
             torch.float64: "double"}
_SCALAR_NAME = {torch.float16: "Half", torch.bfloat16: "BFloat16", torch.float32: "Float", torch.float64: "Double"}


def _dtype_name(names, dtype):
    return names.get(dtype, str(dtype).removeprefix("torch."))


def _check_conv2d_bias_dtype(input, bias):
    if bias is not None and bias.dtype != input.dtype:
        raise RuntimeError(f"Input type ({_dtype_name(_C10_NAME, input.dtype)}) and bias type "
                           f"({_dtype_name(_C10_NAME, bias.dtype)}) should be the same")


def _check_conv2d_tensors(input, weight, bias):
    """The checks of conv2d's arguments that their shapes do not decide: dtype and device
    (the bias dtype is checked first, as torch does; the weight's where its kernel would)."""
    _check_conv2d_bias_dtype(input, bias)
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and t.device != input.device:
            raise RuntimeError(
                f"Expected all tensors to be on the same device, but found input on {input.device} "
                f"and {name} on {t.device}")
    if weight.dtype != input.dtype:
        raise RuntimeError(f"expected scalar type {_dtype_name(_SCALAR_NAME, input.dtype)} but found "
                           f"{_dtype_name(_SCALAR_NAME, weight.dtype)}")
    _check_float(input, "conv2d")


def _conv_param(name, value):
    """stride, padding or dilation as torch's parser reads `int[2]`: an int, or a sequence of ints."""
    if isinstance(value, (bool, str, float)) or value is None:
        raise TypeError(f"conv2d() received an invalid combination of arguments - got {name}="
                        f"{type(value).__name__}, but expected a tuple of ints {name}")
    values = _int_list("conv2d", name, value, None)
    return values * 2 if len(values) == 1 else values


def _check_conv2d(input, weight, bias, stride, padding, dilation, groups):
    """torch's checks in torch's order (at::conv2d, then _convolution's check_shape_forward)."""
    _check_conv2d_bias_dtype(input, bias)
    if input.dim() not in (3, 4):
        raise RuntimeError(
            f"Expected 3D (unbatched) or 4D (batched) input to conv2d, but got input of size: {list(input.shape)}")
    if weight.dim() < 3:
        raise RuntimeError("weight should have at least three dimensions")
    for name, values in (("stride", stride), ("padding", padding), ("dilation", dilation)):
        if len(values) != weight.dim() - 2:
            raise RuntimeError(f"expected {name} to be a single integer value or a list of {weight.dim() - 2} "
                               f"values to match the convolution dimensions, but got {name}={list(values)}")
    if groups <= 0:
        raise RuntimeError("non-positive groups is not supported")
    if any(p < 0 for p in padding):
        raise RuntimeError("negative padding is not supported")
    _positive(stride, "non-positive stride is not supported")
    if any(d < 0 for d in dilation):
        raise RuntimeError("dilation should be greater than zero")
    k = weight.shape[0]
    if k < groups:
        raise RuntimeError(f"Given groups={groups}, expected weight to be at least {groups} at dimension 0, "
                           f"but got weight of size {list(weight.shape)} instead")
    if k % groups != 0:
        raise RuntimeError(
            f"Given groups={groups}, expected weight to be divisible by {groups} at dimension 0, "
            f"but got weight of size [{list(weight.shape)}] instead")
    channels = input.shape[-3]
    if weight.shape[1] * groups != channels:
        raise RuntimeError(
            f"Given groups={groups}, weight of size {list(weight.shape)}, expected input{list(input.shape)} "
            f"to have {weight.shape[1] * groups} channels, but got {channels} channels instead")
    if bias is not None and (bias.dim() != 1 or bias.shape[0] != k):
        raise RuntimeError(
            f"Given weight of size {list(weight.shape)}, expected bias to be 1-dimensional with {k} elements, "
            f"but got bias of size {list(bias.shape)} instead")
    padded = [input.shape[-2 + i] + 2 * padding[i] for i in range(2)]
    extent = [dilation[i] * (weight.shape[2 + i] - 1) + 1 for i in range(2)]
    if any(e > p for e, p in zip(extent, padded)):
        raise RuntimeError(
            f"Calculated padded input size per channel: ({padded[0]} x {padded[1]}). "
            f"Kernel size: ({extent[0]} x {extent[1]}). Kernel size can't be greater than actual input size")
    if any(d == 0 for d in dilation):  # zero dilation: torch refuses it only after the shape checks
        raise RuntimeError(f"dilation should be greater than zero, but got {list(dilation)}")
    if any(d == 0 for d in input.shape[-2:]):
        raise RuntimeError(f"Only zero batch or zero channel inputs are supported, but got input shape: "
                           f"{list(input.shape)}")
    _check_conv2d_tensors(input, weight, bias)


def _same_padding(input, weight, stride, dilation):
    """padding='same': torch's split, the odd leftover going right/bottom (padded explicitly)."""
    if any(s != 1 for s in stride):
        raise RuntimeError("padding='same' is not supported for strided convolutions")
    if weight.dim() != 4:  # _check_conv2d says what is wrong
        return input, (0,) * max(weight.dim() - 2, 0)
    total = [dilation[i] * (weight.shape[2 + i] - 1) for i in range(2)]
    left = [t // 2 for t in total]
    extra = [t - 2 * l for t, l in zip(total, left)]
    if any(extra):
        input = F.pad(input, [0, extra[1], 0, extra[0]])
    return input, tuple(left)


def conv2d(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, stride=1, padding=0,
           dilation=1, groups: int = 1) -> torch.Tensor:
    """Like torch.nn.functional.conv2d, on cnnkern's kernels."""
    if torch.is_autocast_enabled(input.device.type):
        input, weight, bias = _autocast(input, weight, bias)
    # A call with plain int arguments that passed before (a module's every call) skips to the op.
    key = ("conv2d", input.shape, weight.shape, None if bias is None else bias.shape, stride, padding, dilation,
           groups)
    plain = type(groups) is int and all(_plain_ints(a) for a in (stride, padding, dilation))
    geometry = _cached(key) if plain else None
    if geometry is None:
        input, geometry = _conv2d_geometry(input, weight, bias, stride, padding, dilation, groups)
        if plain:
            _remember(key, geometry)
    else:
        _check_conv2d_tensors(input, weight, bias)
    stride, padding, dilation = geometry
    unbatched = input.dim() == 3
    if unbatched:
        input = input.unsqueeze(0)
    ops = _ops.ops_for(_backend.resolve(input.device))
    out = ops.conv2d(input, weight, bias, stride, padding, dilation, groups)
    return out.squeeze(0) if unbatched else out


def _conv2d_geometry(input, weight, bias, stride, padding, dilation, groups):
    """(input, [stride, padding, dilation] as lists) after torch's checks; padding='same'
    pads the input's odd leftover explicitly."""
    if not isinstance(groups, int) or isinstance(groups, bool):
        raise TypeError(f"conv2d() received an invalid combination of arguments - got groups="
                        f"{type(groups).__name__}, but expected int groups")
    stride, dilation = _conv_param("stride", stride), _conv_param("dilation", dilation)
    if isinstance(padding, str):
        if padding == "valid":
            padding = (0, 0)
        elif padding == "same":
            input, padding = _same_padding(input, weight, stride, dilation)
        else:
            raise RuntimeError(f"Invalid padding string: '{padding}'")
    else:
        padding = _conv_param("padding", padding)
    _check_conv2d(input, weight, bias, stride, padding, dilation, groups)
    return input, (list(stride), list(padding), list(dilation))


def _autocast(*tensors):
    """Inside torch.autocast, convolutions compute in the autocast dtype (torch's own
    rule for conv2d, on CUDA and CPU alike): floating tensors are cast to it. Pooling
    follows its input and BatchNorm keeps its fp32 parameters and statistics, as
    torch's ops do, so only conv2d needs this. The C++ ops apply the same rule in
    their own Autocast kernels (csrc/ops/autocast.cpp); it is applied here too because
    the checks below compare the dtypes the op will see, and because the eager Triton
    path does not go through the dispatcher."""
    dtype = torch.get_autocast_dtype(tensors[0].device.type)
    return tuple(t.to(dtype) if t is not None and t.is_floating_point() and t.dtype != torch.float64 else t
                 for t in tensors)


def _check_float(input, op):
    if input.dtype not in _FLOAT_DTYPES:
        raise NotImplementedError(f"cnnkern {op} supports float16, bfloat16, float32 and float64, not {input.dtype}")


# Checked arguments, by value and input shape: a layer called again with what
# passed before skips straight to the op (the checks cost more than a small
# CPU kernel). Only what passed is kept, so every bad call still raises; the
# dtype and device checks, which the key does not cover, run on every call.
_CHECKED: dict = {}
_CHECKED_MAX = 4096


def _remember(key, value):
    if len(_CHECKED) >= _CHECKED_MAX:
        _CHECKED.clear()
    _CHECKED[key] = value
    return value


def _cached(key):
    """The remembered result for key, or None (also for an unhashable key: lists, tensors)."""
    try:
        return _CHECKED.get(key)
    except TypeError:
        return None


def _plain_ints(a) -> bool:
    """None, an int or a tuple of ints, of exactly those types (no bool, float, numpy or list)."""
    t = type(a)
    return a is None or t is int or (t is tuple and all(type(v) is int for v in a))


def _pool_geometry(op, input, kernel_size, stride, padding, dilation, ceil_mode, divisor_override=None):
    """Normalise and validate pooling arguments as torch does; returns 2-element lists."""
    key = (op, input.shape, kernel_size, stride, padding, dilation, ceil_mode, divisor_override)
    # Only plain ints are looked up: True == 1 and 2.0 == 2 as keys, but torch refuses them.
    plain = all(_plain_ints(a) for a in key[2:6])
    hit = _cached(key) if plain else None
    if hit is not None:
        _check_float(input, op)
        return hit
    geometry = _pool_geometry_checked(op, input, kernel_size, stride, padding, dilation, ceil_mode, divisor_override)
    return _remember(key, geometry) if plain else geometry


def _int_list(op, name, value, position):
    """An int or a sequence of ints, read as torch's argument parser reads `int[2]`;
    position: the argument's place in torch's message (None: torch's message names none)."""
    where = f"argument '{name}'" + ("" if position is None else f" (position {position})")
    if isinstance(value, bool) or not isinstance(value, (int, tuple, list, torch.Size)) and not hasattr(
            value, "__index__"):
        raise TypeError(f"{op}(): {where} must be tuple of ints, not {type(value).__name__}")
    if not isinstance(value, (tuple, list, torch.Size)):
        return (operator.index(value),)
    items = []
    for i, v in enumerate(value):
        if not hasattr(v, "__index__"):
            raise TypeError(f"{op}(): argument '{name}' failed to unpack the object at pos {i + 1} with error "
                            f"\"type must be tuple of ints,but got {type(v).__name__}\"")
        items.append(operator.index(v))
    return tuple(items)


def _two(op, name, values, rule, allow_empty=False):
    """One or two values (a single one stands for both), else torch's message; () when allowed and empty."""
    if len(values) == 2 or (allow_empty and not values):
        return values
    if len(values) == 1:
        return values * 2
    raise RuntimeError(f"{op}: {name} {rule}")


def _trunc_half(v: int) -> int:
    return v // 2 if v >= 0 else -((-v) // 2)  # C++ integer division


def _pool_geometry_checked(op, input, kernel_size, stride, padding, dilation, ceil_mode, divisor_override=None):
    """torch's checks, in torch's order (aten's pooling meta functions): the argument
    forms, avg_pool2d's divisor, max_pool2d's input rank, each output extent (stride,
    padding), then the shape check (kernel, stride, dilation, empty dimensions,
    padding against the kernel, output size)."""
    position = None if op == "avg_pool2d" else 2
    kernel = _int_list(op, "kernel_size", kernel_size, position)
    stride = () if stride is None else _int_list(op, "stride", stride, position and 3)
    padding = _int_list(op, "padding", padding, position and 4)
    dilation = _int_list(op, "dilation", dilation, position and 5)
    one_or_two = "must either be a single int, or a tuple of two ints"
    kernel = _two(op, "kernel_size", kernel, one_or_two)
    stride = _two(op, "stride", stride, "must either be omitted, a single int, or a tuple of two ints",
                  allow_empty=True) or kernel
    padding = _two(op, "padding", padding, one_or_two)
    dilation = _two(op, "dilation", dilation, "must be either a single int, or a tuple of two ints")
    if divisor_override is not None and divisor_override == 0:
        raise RuntimeError("divisor must be not zero")
    if op == "max_pool2d" and input.dim() not in (3, 4):
        raise RuntimeError("non-empty 3D or 4D (batch mode) tensor expected for input")
    out = []
    for i in range(2):
        k, st, pad, dil = kernel[i], stride[i], padding[i], dilation[i]
        if st == 0:
            raise RuntimeError("stride should not be zero")
        if pad < 0:
            raise RuntimeError(f"pad must be non-negative, but got pad: {pad}")
        if pad > _trunc_half((k - 1) * dil + 1):
            raise RuntimeError(f"pad should be at most half of effective kernel size, but got pad={pad}, "
                               f"kernel_size={k} and dilation={dil}")
        out.append(pool_out_size(input.shape[-2 + i], k, st, pad, dil, ceil_mode) if input.dim() >= 2 else 0)
    if any(k <= 0 for k in kernel):
        raise RuntimeError(f"kernel size should be greater than zero, but got kH: {kernel[0]} kW: {kernel[1]}")
    _positive(stride, f"stride should be greater than zero, but got dH: {stride[0]} dW: {stride[1]}")
    _positive(dilation, f"dilation should be greater than zero, but got dilationH: {dilation[0]} "
                        f"dilationW: {dilation[1]}")
    if input.dim() not in (3, 4) or any(s == 0 for s in input.shape[-3:]):
        raise RuntimeError("Expected 3D or 4D (batch mode) tensor with optional 0 dim batch size for input, "
                           f"but got:{list(input.shape)}")
    if _trunc_half(kernel[1]) < padding[1] or _trunc_half(kernel[0]) < padding[0]:
        raise RuntimeError(f"pad should be smaller than or equal to half of kernel size, but got padW = {padding[1]}, "
                           f"padH = {padding[0]}, kW = {kernel[1]}, kH = {kernel[0]}")
    if any(o < 1 for o in out):
        c, h, w = input.shape[-3:]
        raise RuntimeError(f"Given input size: ({c}x{h}x{w}). Calculated output size: ({c}x{out[0]}x{out[1]}). "
                           "Output size is too small")
    _check_float(input, op)
    return list(kernel), list(stride), list(padding), list(dilation)


def _batched(input, fn):
    """Run fn on a 4-D view of a 3-D (unbatched) input, as torch accepts both."""
    if input.dim() == 3:
        out = fn(input.unsqueeze(0))
        return tuple(o.squeeze(0) for o in out) if isinstance(out, tuple) else out.squeeze(0)
    return fn(input)


# The pooling layers' first stop is their C++ entry point (csrc/ops/python.cpp): plain, valid
# arguments on a C++ backend run from there; it answers NotImplemented for anything else
# (other argument forms, errors to raise, Triton), and torch.compile traces the Python path.


def max_pool2d(input: torch.Tensor, kernel_size, stride=None, padding=0, dilation=1, ceil_mode: bool = False,
               return_indices: bool = False):
    """Like torch.nn.functional.max_pool2d (indices in torch's layout, usable with nn.MaxUnpool2d)."""
    if not torch.compiler.is_compiling():
        out = _C.max_pool2d(input, kernel_size, stride, padding, dilation, ceil_mode, return_indices)
        if out is not NotImplemented:
            return out
    geometry = _pool_geometry("max_pool2d", input, kernel_size, stride, padding, dilation, ceil_mode)
    backend = _backend.resolve(input.device)
    ops = _ops.ops_for(backend)
    # The Triton op writes int64 indices only when asked (else a 1-byte window offset for backward);
    # the C++ ops always return int64 indices.
    extra = (return_indices,) if backend == "triton" else ()
    out, indices = _batched(input, lambda x: ops.max_pool2d(x, *geometry, ceil_mode, *extra))
    return (out, indices) if return_indices else out


def avg_pool2d(input: torch.Tensor, kernel_size, stride=None, padding=0, ceil_mode: bool = False,
               count_include_pad: bool = True, divisor_override: int | None = None) -> torch.Tensor:
    """Like torch.nn.functional.avg_pool2d."""
    if not torch.compiler.is_compiling():
        out = _C.avg_pool2d(input, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override)
        if out is not NotImplemented:
            return out
    kernel, stride, padding, _ = _pool_geometry("avg_pool2d", input, kernel_size, stride, padding, 1, ceil_mode,
                                                divisor_override)
    ops = _ops.ops_for(_backend.resolve(input.device))
    return _batched(input, lambda x: ops.avg_pool2d(x, kernel, stride, padding, ceil_mode, count_include_pad,
                                                    divisor_override))


def adaptive_avg_pool2d(input: torch.Tensor, output_size) -> torch.Tensor:
    """Like torch.nn.functional.adaptive_avg_pool2d (None in output_size keeps that input size)."""
    if not torch.compiler.is_compiling():
        out = _C.adaptive_avg_pool2d(input, output_size)
        if out is not NotImplemented:
            return out
    if input.dim() not in (3, 4) or any(s == 0 for s in input.shape[-2:]):
        raise RuntimeError(f"adaptive_avg_pool2d(): Expected 3D or 4D tensor with non-zero sizes for non-batch "
                           f"dimensions, but input has sizes {list(input.shape)}")
    _check_float(input, "adaptive_avg_pool2d")
    size = [input.shape[-2 + i] if o is None else o for i, o in enumerate(_pair(output_size))]
    if any(o < 0 for o in size):
        raise RuntimeError(f"adaptive_avg_pool2d: elements of output_size must be greater than or equal to 0 "
                           f"but received {tuple(size)}")
    if any(o == 0 for o in size):
        raise NotImplementedError("cnnkern adaptive_avg_pool2d: an output size of 0 is not supported")
    ops = _ops.ops_for(_backend.resolve(input.device))
    return _batched(input, lambda x: ops.adaptive_avg_pool2d(x, size))


def batch_norm_relu(input: torch.Tensor, running_mean: torch.Tensor | None, running_var: torch.Tensor | None,
                    weight: torch.Tensor | None = None, bias: torch.Tensor | None = None, training: bool = False,
                    momentum: float | None = 0.1, eps: float = 1e-5, *,
                    num_batches_tracked: torch.Tensor | None = None, activation: str = "relu") -> torch.Tensor:
    """relu(F.batch_norm(...)) in one fused op, with F.batch_norm's arguments.

    `activation` picks the function applied to the normalised output: "relu",
    "relu6", "silu", "hardswish" (torch's F.relu, F.relu6, F.silu, F.hardswish)
    or "identity" (F.batch_norm alone).

    Training normalises with the batch statistics (reduced in fp32 whatever the
    input dtype) and, when running statistics are given, the op updates them in
    place as F.batch_norm does: running = (1 - momentum)·running + momentum·batch,
    with the unbiased batch variance. Eval normalises with the running statistics.
    num_batches_tracked (nn.BatchNorm2d's counter, optional) is bumped by one in
    training, and momentum=None then means the cumulative average (factor
    1 / num_batches_tracked), as nn.BatchNorm2d does; without a counter,
    momentum=None is a factor of 0.
    """
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {', '.join(ACTIVATIONS)}, got {activation!r}")
    if input.dim() != 4:
        raise ValueError(f"expected 4D input (got {input.dim()}D input)")
    _check_float(input, "batch_norm_relu")
    channels = input.shape[1]
    for name, t in (("weight", weight), ("bias", bias), ("running_mean", running_mean), ("running_var", running_var)):
        if t is not None and t.numel() != channels:
            raise RuntimeError(f"running_mean should contain {channels} elements not {t.numel()}"
                               if name.startswith("running") else
                               f"{name} should contain {channels} elements not {t.numel()}")
    if training:
        size = input.numel() // channels if channels else 0
        if size == 1:
            raise ValueError(f"Expected more than 1 value per channel when training, got input size {input.shape}")
    elif running_mean is None or running_var is None:
        raise RuntimeError("batch_norm_relu: running_mean and running_var must be defined in evaluation mode")
    ops = _ops.ops_for(_backend.resolve(input.device))
    out, _, _ = ops.batch_norm_relu(input, weight, bias, running_mean, running_var, num_batches_tracked, training,
                                    momentum, eps, activation)
    return out


# The activations the fused BatchNorm ends in (csrc/include/cnnkern/activation.h).
ACTIVATIONS = ("relu", "relu6", "silu", "hardswish", "identity")

__all__ = ["ACTIVATIONS", "adaptive_avg_pool2d", "avg_pool2d", "batch_norm_relu", "conv2d", "max_pool2d"]
