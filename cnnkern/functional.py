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
from ._shapes import conv_out_size

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _positive(values, message):
    if any(v <= 0 for v in values):
        raise RuntimeError(message)


def _check_conv2d(input, weight, bias, stride, padding, dilation, groups):
    if weight.dim() != 4:
        raise RuntimeError(f"Expected 4-dimensional weight for conv2d, but got weight of size {list(weight.shape)}")
    if input.dim() not in (3, 4):
        raise RuntimeError(
            f"Expected 3D (unbatched) or 4D (batched) input to conv2d, but got input of size: {list(input.shape)}")
    for name, t in (("weight", weight), ("bias", bias)):
        if t is None:
            continue
        if t.dtype != input.dtype:
            raise RuntimeError(f"Input type ({input.dtype}) and {name} type ({t.dtype}) should be the same")
        if t.device != input.device:
            raise RuntimeError(
                f"Expected all tensors to be on the same device, but found input on {input.device} "
                f"and {name} on {t.device}")
    if input.dtype not in _FLOAT_DTYPES:
        raise NotImplementedError(
            f"cnnkern conv2d supports float16, bfloat16, float32 and float64, not {input.dtype}")
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
    _check_conv2d(input, weight, bias, stride, padding, dilation, groups)
    unbatched = input.dim() == 3
    if unbatched:
        input = input.unsqueeze(0)
    ops = _ops.ops_for(_backend.resolve(input.device))
    out = ops.conv2d(input, weight, bias, list(stride), list(padding), list(dilation), groups)
    return out.squeeze(0) if unbatched else out


__all__ = ["conv2d", "conv_out_size"]
