"""Max, average and adaptive-average pooling in Triton, forward and backward.

Pooling moves bytes rather than doing arithmetic, so every kernel is a flat
1-D launch: a program owns BLOCK consecutive elements of the tensor it writes
and each element reads its window (taps unrolled: the kernel size is a
compile-time constant). Traffic is one read per tap, mostly served by L1/L2
since neighbouring windows overlap, and one write per element. Elements are
numbered in the memory order of the tensor (channel fastest for channels_last)
so that a program's loads and stores are contiguous.

Backward passes are gathers: program elements are *input* positions, and each
sums the windows that cover it (a tap covers h when (h + pad - k·dil) is a
non-negative multiple of the stride below the output extent; for max pooling
the window must also have picked h). Nothing is scattered, no atomics, and the
result is deterministic.

Max pooling follows torch exactly: -inf padding, a NaN always wins (so NaN
propagates and reports the last NaN's index), ties keep the first index, and an
all -inf window reports torch's seed index (its first in-bounds element).
"""
from __future__ import annotations

from typing import List, Optional

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

from .._shapes import empty_like_format, pool2d_output_shape
from ._util import check_int32_indexable, position as _position

BLOCK = 256


@triton.jit
def max_pool2d_fwd_kernel(
    x, y, indices, TOTAL, C, H, W, OH, OW,
    sx_n, sx_c, sx_h, sx_w, sy_n, sy_c, sy_h, sy_w,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    KH: tl.constexpr, KW: tl.constexpr, ACC: tl.constexpr, CHANNELS_LAST: tl.constexpr, BLOCK: tl.constexpr,
):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < TOTAL
    n, c, oh, ow = _position(offs, C, OH, OW, CHANNELS_LAST)
    plane = n * sx_n + c * sx_c
    best = tl.full((BLOCK,), float("-inf"), ACC)
    # torch's seed (cnnkern/pool2d_index.h, max_pool_start_index): the first tap at or past row/column 0
    h0 = oh * stride_h - pad_h
    w0 = ow * stride_w - pad_w
    h0 = tl.where(h0 < 0, h0 + (-h0 + dil_h - 1) // dil_h * dil_h, h0)
    w0 = tl.where(w0 < 0, w0 + (-w0 + dil_w - 1) // dil_w * dil_w, w0)
    best_at = h0 * W + w0
    for kh in tl.static_range(KH):
        h = oh * stride_h - pad_h + kh * dil_h
        for kw in tl.static_range(KW):
            w = ow * stride_w - pad_w + kw * dil_w
            inside = ok & (h >= 0) & (h < H) & (w >= 0) & (w < W)
            v = tl.load(x + plane + h * sx_h + w * sx_w, mask=inside, other=float("-inf")).to(ACC)
            at = h * W + w
            take = inside & ((v > best) | (v != v))
            best = tl.where(take, v, best)
            best_at = tl.where(take, at, best_at)
    out = n * sy_n + c * sy_c + oh * sy_h + ow * sy_w
    tl.store(y + out, best.to(y.dtype.element_ty), mask=ok)
    tl.store(indices + out, best_at.to(tl.int64), mask=ok)


@triton.jit
def max_pool2d_bwd_kernel(
    dy, indices, dx, TOTAL, C, H, W, OH, OW,
    sdy_n, sdy_c, sdy_h, sdy_w, sdx_n, sdx_c, sdx_h, sdx_w,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    KH: tl.constexpr, KW: tl.constexpr, ACC: tl.constexpr, CHANNELS_LAST: tl.constexpr, BLOCK: tl.constexpr,
):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < TOTAL
    n, c, h, w = _position(offs, C, H, W, CHANNELS_LAST)
    plane = n * sdy_n + c * sdy_c
    acc = tl.zeros((BLOCK,), ACC)
    for kh in tl.static_range(KH):
        th = h + pad_h - kh * dil_h
        oh = th // stride_h
        row_ok = (th >= 0) & (th % stride_h == 0) & (oh < OH)
        for kw in tl.static_range(KW):
            tw = w + pad_w - kw * dil_w
            ow = tw // stride_w
            covers = ok & row_ok & (tw >= 0) & (tw % stride_w == 0) & (ow < OW)
            at = plane + oh * sdy_h + ow * sdy_w  # dy and indices share strides (the launcher ensures it)
            picked = tl.load(indices + at, mask=covers, other=-1) == (h * W + w)
            acc += tl.load(dy + at, mask=covers & picked, other=0.0).to(ACC)
    tl.store(dx + n * sdx_n + c * sdx_c + h * sdx_h + w * sdx_w, acc.to(dx.dtype.element_ty), mask=ok)


@triton.jit
def _avg_divisor(oh, ow, H, W, stride_h, stride_w, pad_h, pad_w, KH: tl.constexpr, KW: tl.constexpr,
                 COUNT_INCLUDE_PAD: tl.constexpr, DIVISOR):
    # cnnkern/pool2d_index.h's avg_pool_divisor, vectorised.
    h0 = oh * stride_h - pad_h
    w0 = ow * stride_w - pad_w
    h1 = tl.minimum(h0 + KH, H + pad_h)
    w1 = tl.minimum(w0 + KW, W + pad_w)
    if not COUNT_INCLUDE_PAD:
        h0 = tl.maximum(h0, 0)
        w0 = tl.maximum(w0, 0)
        h1 = tl.minimum(h1, H)
        w1 = tl.minimum(w1, W)
    area = (h1 - h0) * (w1 - w0)
    return tl.where(DIVISOR != 0, DIVISOR, area)


@triton.jit
def avg_pool2d_fwd_kernel(
    x, y, TOTAL, C, H, W, OH, OW,
    sx_n, sx_c, sx_h, sx_w, sy_n, sy_c, sy_h, sy_w,
    stride_h, stride_w, pad_h, pad_w, DIVISOR,
    KH: tl.constexpr, KW: tl.constexpr, COUNT_INCLUDE_PAD: tl.constexpr, ACC: tl.constexpr,
    CHANNELS_LAST: tl.constexpr, BLOCK: tl.constexpr,
):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < TOTAL
    n, c, oh, ow = _position(offs, C, OH, OW, CHANNELS_LAST)
    plane = n * sx_n + c * sx_c
    acc = tl.zeros((BLOCK,), ACC)
    for kh in tl.static_range(KH):
        h = oh * stride_h - pad_h + kh
        for kw in tl.static_range(KW):
            w = ow * stride_w - pad_w + kw
            inside = ok & (h >= 0) & (h < H) & (w >= 0) & (w < W)
            acc += tl.load(x + plane + h * sx_h + w * sx_w, mask=inside, other=0.0).to(ACC)
    divisor = _avg_divisor(oh, ow, H, W, stride_h, stride_w, pad_h, pad_w, KH, KW, COUNT_INCLUDE_PAD, DIVISOR)
    tl.store(y + n * sy_n + c * sy_c + oh * sy_h + ow * sy_w, (acc / divisor.to(ACC)).to(y.dtype.element_ty),
             mask=ok)


@triton.jit
def avg_pool2d_bwd_kernel(
    dy, dx, TOTAL, C, H, W, OH, OW,
    sdy_n, sdy_c, sdy_h, sdy_w, sdx_n, sdx_c, sdx_h, sdx_w,
    stride_h, stride_w, pad_h, pad_w, DIVISOR,
    KH: tl.constexpr, KW: tl.constexpr, COUNT_INCLUDE_PAD: tl.constexpr, ACC: tl.constexpr,
    CHANNELS_LAST: tl.constexpr, BLOCK: tl.constexpr,
):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < TOTAL
    n, c, h, w = _position(offs, C, H, W, CHANNELS_LAST)
    plane = n * sdy_n + c * sdy_c
    acc = tl.zeros((BLOCK,), ACC)
    for kh in tl.static_range(KH):
        th = h + pad_h - kh
        oh = th // stride_h
        row_ok = (th >= 0) & (th % stride_h == 0) & (oh < OH)
        for kw in tl.static_range(KW):
            tw = w + pad_w - kw
            ow = tw // stride_w
            covers = ok & row_ok & (tw >= 0) & (tw % stride_w == 0) & (ow < OW)
            g = tl.load(dy + plane + oh * sdy_h + ow * sdy_w, mask=covers, other=0.0).to(ACC)
            divisor = _avg_divisor(oh, ow, H, W, stride_h, stride_w, pad_h, pad_w, KH, KW, COUNT_INCLUDE_PAD,
                                   DIVISOR)
            acc += tl.where(covers, g / divisor.to(ACC), 0.0)
    tl.store(dx + n * sdx_n + c * sdx_c + h * sdx_h + w * sdx_w, acc.to(dx.dtype.element_ty), mask=ok)


@triton.jit
def adaptive_avg_pool2d_fwd_kernel(
    x, y, TOTAL, C, H, W, OH, OW,
    sx_n, sx_c, sx_h, sx_w, sy_n, sy_c, sy_h, sy_w,
    MAX_KH: tl.constexpr, MAX_KW: tl.constexpr, ACC: tl.constexpr, CHANNELS_LAST: tl.constexpr,
    BLOCK: tl.constexpr,
):
    # Output (i, j) averages rows [i·H/OH floored, (i+1)·H/OH ceiled) and likewise columns;
    # MAX_KH x MAX_KW bounds every window, taps past a window's end are masked.
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < TOTAL
    n, c, oh, ow = _position(offs, C, OH, OW, CHANNELS_LAST)
    h0 = (oh * H) // OH
    h1 = ((oh + 1) * H + OH - 1) // OH
    w0 = (ow * W) // OW
    w1 = ((ow + 1) * W + OW - 1) // OW
    plane = n * sx_n + c * sx_c
    acc = tl.zeros((BLOCK,), ACC)
    for kh in tl.static_range(MAX_KH):
        for kw in tl.static_range(MAX_KW):
            inside = ok & (h0 + kh < h1) & (w0 + kw < w1)
            acc += tl.load(x + plane + (h0 + kh) * sx_h + (w0 + kw) * sx_w, mask=inside, other=0.0).to(ACC)
    area = ((h1 - h0) * (w1 - w0)).to(ACC)
    tl.store(y + n * sy_n + c * sy_c + oh * sy_h + ow * sy_w, (acc / area).to(y.dtype.element_ty), mask=ok)


@triton.jit
def adaptive_avg_pool2d_bwd_kernel(
    dy, dx, TOTAL, C, H, W, OH, OW,
    sdy_n, sdy_c, sdy_h, sdy_w, sdx_n, sdx_c, sdx_h, sdx_w,
    MAX_COVER_H: tl.constexpr, MAX_COVER_W: tl.constexpr, ACC: tl.constexpr, CHANNELS_LAST: tl.constexpr,
    BLOCK: tl.constexpr,
):
    # The windows covering row h are consecutive and start at floor(h·OH/H)
    # (the one h falls in proportionally; the window before it ends at or
    # before h); at most MAX_COVER_H of them, each kept while it starts <= h.
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < TOTAL
    n, c, h, w = _position(offs, C, H, W, CHANNELS_LAST)
    first_h = (h * OH) // H
    first_w = (w * OW) // W
    plane = n * sdy_n + c * sdy_c
    acc = tl.zeros((BLOCK,), ACC)
    for i in tl.static_range(MAX_COVER_H):
        oh = first_h + i
        h0 = (oh * H) // OH
        h1 = ((oh + 1) * H + OH - 1) // OH
        row_ok = (oh < OH) & (h0 <= h)
        for j in tl.static_range(MAX_COVER_W):
            ow = first_w + j
            w0 = (ow * W) // OW
            w1 = ((ow + 1) * W + OW - 1) // OW
            covers = ok & row_ok & (ow < OW) & (w0 <= w)
            g = tl.load(dy + plane + oh * sdy_h + ow * sdy_w, mask=covers, other=0.0).to(ACC)
            acc += tl.where(covers, g / ((h1 - h0) * (w1 - w0)).to(ACC), 0.0)
    tl.store(dx + n * sdx_n + c * sdx_c + h * sdx_h + w * sdx_w, acc.to(dx.dtype.element_ty), mask=ok)


# ----------------------------------------------------------------------------- launchers


def _acc(dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def _channels_last(t: torch.Tensor) -> bool:
    return t.stride(1) == 1 and t.shape[1] > 1


def _format(t):
    return torch.channels_last if _channels_last(t) and t.dim() == 4 else torch.contiguous_format


def _grid(t):
    return (triton.cdiv(t.numel(), BLOCK),)


@triton_op("cnnkern_triton::max_pool2d", mutates_args={})
def max_pool2d(input: torch.Tensor, kernel_size: List[int], stride: List[int], padding: List[int],
               dilation: List[int], ceil_mode: bool) -> tuple[torch.Tensor, torch.Tensor]:
    shape = pool2d_output_shape(input, kernel_size, stride, padding, dilation, ceil_mode)
    y = empty_like_format(shape, input)
    indices = empty_like_format(shape, input, torch.int64)
    if y.numel():
        check_int32_indexable(input, y)
        wrap_triton(max_pool2d_fwd_kernel)[_grid(y)](
            input, y, indices, y.numel(), input.shape[1], input.shape[2], input.shape[3], shape[2], shape[3],
            *input.stride(), *y.stride(), *stride, *padding, *dilation,
            KH=kernel_size[0], KW=kernel_size[1], ACC=_acc(input.dtype), CHANNELS_LAST=_channels_last(y), BLOCK=BLOCK)
    return y, indices


@triton_op("cnnkern_triton::max_pool2d_backward", mutates_args={})
def max_pool2d_backward(grad_output: torch.Tensor, input: torch.Tensor, indices: torch.Tensor,
                        kernel_size: List[int], stride: List[int], padding: List[int], dilation: List[int],
                        ceil_mode: bool) -> torch.Tensor:
    dx = empty_like_format(input.shape, input)
    if dx.numel():
        grad_output = grad_output.contiguous(memory_format=_format(indices))
        indices = indices.contiguous(memory_format=_format(indices))
        check_int32_indexable(grad_output, dx)
        wrap_triton(max_pool2d_bwd_kernel)[_grid(dx)](
            grad_output, indices, dx, dx.numel(), *input.shape[1:], *grad_output.shape[2:],
            *grad_output.stride(), *dx.stride(), *stride, *padding, *dilation,
            KH=kernel_size[0], KW=kernel_size[1], ACC=_acc(input.dtype), CHANNELS_LAST=_channels_last(dx),
            BLOCK=BLOCK)
    return dx


@triton_op("cnnkern_triton::avg_pool2d", mutates_args={})
def avg_pool2d(input: torch.Tensor, kernel_size: List[int], stride: List[int], padding: List[int], ceil_mode: bool,
               count_include_pad: bool, divisor_override: Optional[int]) -> torch.Tensor:
    shape = pool2d_output_shape(input, kernel_size, stride, padding, (1, 1), ceil_mode)
    y = empty_like_format(shape, input)
    if y.numel():
        check_int32_indexable(input, y)
        wrap_triton(avg_pool2d_fwd_kernel)[_grid(y)](
            input, y, y.numel(), input.shape[1], input.shape[2], input.shape[3], shape[2], shape[3],
            *input.stride(), *y.stride(), *stride, *padding, divisor_override or 0,
            KH=kernel_size[0], KW=kernel_size[1], COUNT_INCLUDE_PAD=count_include_pad, ACC=_acc(input.dtype),
            CHANNELS_LAST=_channels_last(y), BLOCK=BLOCK)
    return y


@triton_op("cnnkern_triton::avg_pool2d_backward", mutates_args={})
def avg_pool2d_backward(grad_output: torch.Tensor, input: torch.Tensor, kernel_size: List[int], stride: List[int],
                        padding: List[int], ceil_mode: bool, count_include_pad: bool,
                        divisor_override: Optional[int]) -> torch.Tensor:
    dx = empty_like_format(input.shape, input)
    if dx.numel():
        check_int32_indexable(grad_output, dx)
        wrap_triton(avg_pool2d_bwd_kernel)[_grid(dx)](
            grad_output, dx, dx.numel(), *input.shape[1:], *grad_output.shape[2:],
            *grad_output.stride(), *dx.stride(), *stride, *padding, divisor_override or 0,
            KH=kernel_size[0], KW=kernel_size[1], COUNT_INCLUDE_PAD=count_include_pad, ACC=_acc(input.dtype),
            CHANNELS_LAST=_channels_last(dx), BLOCK=BLOCK)
    return dx


def _max_window(size: int, out: int) -> int:
    return max(((i + 1) * size + out - 1) // out - (i * size) // out for i in range(out))


def _max_cover(size: int, out: int) -> int:
    return max(sum(1 for o in range(out) if (o * size) // out <= i < ((o + 1) * size + out - 1) // out)
               for i in range(size))


@triton_op("cnnkern_triton::adaptive_avg_pool2d", mutates_args={})
def adaptive_avg_pool2d(input: torch.Tensor, output_size: List[int]) -> torch.Tensor:
    y = empty_like_format((*input.shape[:2], *output_size), input)
    if y.numel():
        check_int32_indexable(input, y)
        h, w = input.shape[2:]
        wrap_triton(adaptive_avg_pool2d_fwd_kernel)[_grid(y)](
            input, y, y.numel(), input.shape[1], h, w, *output_size, *input.stride(), *y.stride(),
            MAX_KH=_max_window(h, output_size[0]), MAX_KW=_max_window(w, output_size[1]), ACC=_acc(input.dtype),
            CHANNELS_LAST=_channels_last(y), BLOCK=BLOCK)
    return y


@triton_op("cnnkern_triton::adaptive_avg_pool2d_backward", mutates_args={})
def adaptive_avg_pool2d_backward(grad_output: torch.Tensor, input: torch.Tensor) -> torch.Tensor:
    dx = empty_like_format(input.shape, input)
    if dx.numel():
        check_int32_indexable(grad_output, dx)
        (h, w), (oh, ow) = input.shape[2:], grad_output.shape[2:]
        wrap_triton(adaptive_avg_pool2d_bwd_kernel)[_grid(dx)](
            grad_output, dx, dx.numel(), input.shape[1], h, w, oh, ow, *grad_output.stride(), *dx.stride(),
            MAX_COVER_H=_max_cover(h, oh), MAX_COVER_W=_max_cover(w, ow), ACC=_acc(input.dtype),
            CHANNELS_LAST=_channels_last(dx), BLOCK=BLOCK)
    return dx
