"""What the Triton kernel files share: interpreter detection, the int32 guard,
and element numbering for the flat (one element per lane) kernels."""
from __future__ import annotations

import os

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
