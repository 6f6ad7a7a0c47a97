"""Functional forms of cnnkern's layers, with torch.nn.functional's signatures.

Each function validates its arguments the way torch does (same exception
types, messages in the same words), normalises them, picks the backend for the
input's device and calls that backend's op. Nothing here computes.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn.modules.utils import _pair

from . import _backend, _ops
from ._shapes import pool_out_size

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _positive(values, message):
    if any(v <= 0 for v in values):
        raise RuntimeError(message)


def _check_conv2d_tensors(input, weight, bias):
    """The checks of conv2d's arguments that their shapes do not decide: dtype and device."""
    for name, t in (("weight", weight), ("bias", bias)):
        if t is None:
            continue
        if t.dtype != input.dtype:
            raise RuntimeError(f"Input type ({input.dtype}) and {name} type ({t.dtype}) should be the same")
        if t.device != input.device:
            raise RuntimeError(
                f"Expected all tensors to be on the same device, but found input on {input.device} "
                f"and {name} on {t.device}")
    _check_float(input, "conv2d")


def _check_conv2d(input, weight, bias, stride, padding, dilation, groups):
    if weight.dim() != 4:
        raise RuntimeError(f"Expected 4-dimensional weight for conv2d, but got weight of size {list(weight.shape)}")
    if input.dim() not in (3, 4):
        raise RuntimeError(
            f"Expected 3D (unbatched) or 4D (batched) input to conv2d, but got input of size: {list(input.shape)}")
    _check_conv2d_tensors(input, weight, bias)
    if groups <= 0:
        raise RuntimeError("non-positive groups is not supported")
    _positive(stride, "non-positive stride is not supported")
    _positive(dilation, "dilation should be greater than zero")
    if any(p < 0 for p in padding):
        raise RuntimeError("negative padding is not supported")
    if any(s == 0 for s in input.shape[-2:]):
        raise RuntimeError(
            f"Expected input's non-batch dimensions to have positive length, but got input of size: "
            f"{list(input.shape)}")
    k = weight.shape[0]
    if k % groups != 0:
        raise RuntimeError(
            f"Given groups={groups}, expected weight to be divisible by {groups} at dimension 0, "
            f"but got weight of size {list(weight.shape)} instead")
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


def _same_padding(input, weight, stride, dilation):
    """padding='same': torch's split, the odd leftover going right/bottom (padded explicitly)."""
    if any(s != 1 for s in stride):
        raise RuntimeError("padding='same' is not supported for strided convolutions")
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
    stride, dilation = _pair(stride), _pair(dilation)
    if isinstance(padding, str):
        if padding == "valid":
            padding = (0, 0)
        elif padding == "same":
            input, padding = _same_padding(input, weight, stride, dilation)
        else:
            raise RuntimeError(f"Invalid padding string: '{padding}'")
    else:
        padding = _pair(padding)
    key = ("conv2d", input.shape, weight.shape, None if bias is None else bias.shape, stride, padding, dilation,
           groups)
    if _cached(key) is None:
        _check_conv2d(input, weight, bias, stride, padding, dilation, groups)
        _remember(key, True)
    else:
        _check_conv2d_tensors(input, weight, bias)
    unbatched = input.dim() == 3
    if unbatched:
        input = input.unsqueeze(0)
    ops = _ops.ops_for(_backend.resolve(input.device))
    out = ops.conv2d(input, weight, bias, list(stride), list(padding), list(dilation), groups)
    return out.squeeze(0) if unbatched else out


def _autocast(*tensors):
    """Inside torch.autocast, convolutions compute in the autocast dtype (torch's own
    rule for conv2d, on CUDA and CPU alike): floating tensors are cast to it. Pooling
    follows its input and BatchNorm keeps its fp32 parameters and statistics, as
    torch's ops do, so only conv2d needs this."""
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


def _pool_geometry(op, input, kernel_size, stride, padding, dilation, ceil_mode):
    """Normalise and validate pooling arguments as torch does; returns 2-element lists."""
    key = (op, input.shape, kernel_size, stride, padding, dilation, ceil_mode)
    hit = _cached(key)
    if hit is not None:
        _check_float(input, op)
        return hit
    geometry = _pool_geometry_checked(op, input, kernel_size, stride, padding, dilation, ceil_mode)
    try:
        return _remember(key, geometry)
    except TypeError:
        return geometry


def _pool_geometry_checked(op, input, kernel_size, stride, padding, dilation, ceil_mode):
    kernel = _pair(kernel_size)
    stride = kernel if stride is None or (isinstance(stride, (list, tuple)) and len(stride) == 0) else _pair(stride)
    padding, dilation = _pair(padding), _pair(dilation)
    if input.dim() not in (3, 4) or any(s == 0 for s in input.shape[-3:]):
        raise RuntimeError(f"non-empty 3D or 4D (batch mode) tensor expected for input, got {list(input.shape)}")
    _check_float(input, op)
    if any(k <= 0 for k in kernel):
        raise RuntimeError(f"{op}: kernel_size must be greater than zero, but got kH: {kernel[0]} kW: {kernel[1]}")
    _positive(stride, f"stride should be greater than zero, but got dH: {stride[0]} dW: {stride[1]}")
    _positive(dilation, f"dilation should be greater than zero, but got dilationH: {dilation[0]} "
                        f"dilationW: {dilation[1]}")
    if any(p < 0 for p in padding):
        raise RuntimeError("pad must be non-negative")
    for i in range(2):
        if 2 * padding[i] > dilation[i] * (kernel[i] - 1) + 1:
            raise RuntimeError(f"pad should be at most half of effective kernel size, but got pad={padding[i]}, "
                               f"kernel_size={kernel[i]} and dilation={dilation[i]}")
    out = [pool_out_size(input.shape[-2 + i], kernel[i], stride[i], padding[i], dilation[i], ceil_mode)
           for i in range(2)]
    if any(o < 1 for o in out):
        c, h, w = input.shape[-3:]
        raise RuntimeError(f"Given input size: ({c}x{h}x{w}). Calculated output size: ({c}x{out[0]}x{out[1]}). "
                           "Output size is too small")
    return list(kernel), list(stride), list(padding), list(dilation)


def _batched(input, fn):
    """Run fn on a 4-D view of a 3-D (unbatched) input, as torch accepts both."""
    if input.dim() == 3:
        out = fn(input.unsqueeze(0))
        return tuple(o.squeeze(0) for o in out) if isinstance(out, tuple) else out.squeeze(0)
    return fn(input)


def max_pool2d(input: torch.Tensor, kernel_size, stride=None, padding=0, dilation=1, ceil_mode: bool = False,
               return_indices: bool = False):
    """Like torch.nn.functional.max_pool2d (indices in torch's layout, usable with nn.MaxUnpool2d)."""
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
    kernel, stride, padding, _ = _pool_geometry("avg_pool2d", input, kernel_size, stride, padding, 1, ceil_mode)
    if divisor_override is not None and divisor_override == 0:
        raise RuntimeError("divisor must be not zero")
    ops = _ops.ops_for(_backend.resolve(input.device))
    return _batched(input, lambda x: ops.avg_pool2d(x, kernel, stride, padding, ceil_mode, count_include_pad,
                                                    divisor_override))


def adaptive_avg_pool2d(input: torch.Tensor, output_size) -> torch.Tensor:
    """Like torch.nn.functional.adaptive_avg_pool2d (None in output_size keeps that input size)."""
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
                    num_batches_tracked: torch.Tensor | None = None) -> torch.Tensor:
    """relu(F.batch_norm(...)) in one fused op, with F.batch_norm's arguments.

    Training normalises with the batch statistics (reduced in fp32 whatever the
    input dtype) and, when running statistics are given, the op updates them in
    place as F.batch_norm does: running = (1 - momentum)·running + momentum·batch,
    with the unbiased batch variance. Eval normalises with the running statistics.
    num_batches_tracked (nn.BatchNorm2d's counter, optional) is bumped by one in
    training, and momentum=None then means the cumulative average (factor
    1 / num_batches_tracked), as nn.BatchNorm2d does; without a counter,
    momentum=None is a factor of 0.
    """
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
                                    momentum, eps)
    return out


__all__ = ["adaptive_avg_pool2d", "avg_pool2d", "batch_norm_relu", "conv2d", "max_pool2d"]
