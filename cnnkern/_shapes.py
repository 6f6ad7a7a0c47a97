"""Shape and memory-format rules shared by every backend's Python side."""
from __future__ import annotations

import torch
from torch._prims_common import suggest_memory_format


def conv_out_size(size: int, kernel: int, stride: int, pad: int, dil: int) -> int:
    return (size + 2 * pad - dil * (kernel - 1) - 1) // stride + 1


def conv2d_output_shape(input, weight, stride, padding, dilation) -> tuple[int, int, int, int]:
    n, _, h, w = input.shape
    k, _, r, s = weight.shape
    return (n, k, conv_out_size(h, r, stride[0], padding[0], dilation[0]),
            conv_out_size(w, s, stride[1], padding[1], dilation[1]))


def memory_format_of(t: torch.Tensor) -> torch.memory_format:
    """The C++ suggest_memory_format: the layout t's strides follow. A dense 4-D
    tensor without size-1 dimensions is answered from its cached contiguity flags
    (the Python rule costs ~10 µs a call); size-1 dimensions make strides
    ambiguous, and those take torch's own rule."""
    if t.dim() == 4 and 1 not in t.shape[1:]:
        if t.is_contiguous():
            return torch.contiguous_format
        if t.is_contiguous(memory_format=torch.channels_last):
            return torch.channels_last
    return suggest_memory_format(t)


def conv2d_memory_format(input: torch.Tensor, weight: torch.Tensor) -> torch.memory_format:
    """torch's rule: channels_last output if the input or the weight is channels_last."""
    if torch.channels_last in (memory_format_of(input), memory_format_of(weight)):
        return torch.channels_last
    return torch.contiguous_format


def pool_out_size(size: int, kernel: int, stride: int, pad: int, dil: int, ceil_mode: bool) -> int:
    """torch's pooling output size (the C++ twin is cnnkern/pool2d_index.h)."""
    span = size + 2 * pad - dil * (kernel - 1) - 1 + (stride - 1 if ceil_mode else 0)
    out = span // stride + 1
    if ceil_mode and (out - 1) * stride >= size + pad:
        out -= 1
    return out


def pool2d_output_shape(input, kernel, stride, padding, dilation, ceil_mode) -> tuple[int, int, int, int]:
    n, c, h, w = input.shape
    return (n, c, pool_out_size(h, kernel[0], stride[0], padding[0], dilation[0], ceil_mode),
            pool_out_size(w, kernel[1], stride[1], padding[1], dilation[1], ceil_mode))


def empty_like_format(shape, like: torch.Tensor, dtype=None) -> torch.Tensor:
    """A new tensor of `shape` in `like`'s memory format (pooling keeps the input's)."""
    return torch.empty(shape, dtype=dtype or like.dtype, device=like.device, memory_format=memory_format_of(like))
