"""Fused BatchNorm2d + ReLU in Triton: batch statistics, normalise+affine+ReLU,
and the backward pass.

Statistics are reduced by a 2-D grid of programs: program (i, j) owns
BLOCK_C channels and chunk j of the N·H·W rows. It walks its chunk in tiles of
BLOCK_R rows; each tile's mean and sum of squared deviations (two passes over
registers) are merged into the running (count, mean, M2) with Chan's formula,
so a large mean never swamps the variance. A finalize program per channel
block combines the chunks the same way. The split makes every channel count
fill the GPU: few channels get many chunks.

Apply is one flat pass in the tensor's memory order (channel fastest for
channels_last). Backward takes the ReLU mask from the saved output (y > 0),
reduces Σg and Σg·x̂ per channel with the same grid (partials per chunk,
summed in chunk order by the finalize: deterministic), then one flat pass
writes dx. Traffic: stats read x once; apply reads x, writes y; backward reads
dy, y, x twice and writes dx.
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

from .._shapes import empty_like_format
from ._util import check_int32_indexable, position as _position

BLOCK_C = 32  # channels per reduction program
BLOCK_R = 64  # rows per reduction tile
BLOCK = 512  # elements per elementwise program
_TARGET_PROGRAMS = 264  # two waves of an H100's SMs


@triton.jit
def _rows_offsets(rows, C, H, W, s_n, s_c, s_h, s_w, offs_c):
    # Row r = (n, h, w) of the N·H·W rows, times channels: element offsets.
    n = rows // (H * W)
    hw = rows % (H * W)
    return (n * s_n + (hw // W) * s_h + (hw % W) * s_w)[:, None] + (offs_c * s_c)[None, :]


@triton.jit
def _chunk(ROWS, BLOCK_R: tl.constexpr):
    span = tl.cdiv(tl.cdiv(ROWS, BLOCK_R), tl.num_programs(1)) * BLOCK_R
    begin = tl.program_id(1) * span
    return begin, tl.minimum(begin + span, ROWS)


@triton.jit
def bn_stats_partial_kernel(
    x, part, C, H, W, ROWS, sx_n, sx_c, sx_h, sx_w,
    ACC: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_R: tl.constexpr,
):
    offs_c = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = offs_c < C
    begin, end = _chunk(ROWS, BLOCK_R)
    count = tl.zeros((BLOCK_C,), ACC)
    mean = tl.zeros((BLOCK_C,), ACC)
    m2 = tl.zeros((BLOCK_C,), ACC)
    for r0 in range(begin, end, BLOCK_R):
        rows = r0 + tl.arange(0, BLOCK_R)
        ok = (rows < end)[:, None] & c_ok[None, :]
        v = tl.load(x + _rows_offsets(rows, C, H, W, sx_n, sx_c, sx_h, sx_w, offs_c), mask=ok, other=0.0).to(ACC)
        n_t = tl.minimum(end - r0, BLOCK_R).to(ACC)
        mean_t = tl.sum(v, axis=0) / n_t
        d = tl.where(ok, v - mean_t[None, :], 0.0)
        m2_t = tl.sum(d * d, axis=0)
        total = count + n_t
        delta = mean_t - mean
        mean += delta * n_t / total
        m2 += m2_t + delta * delta * count * n_t / total
        count = total
    # partials laid out [3, chunks, C]: count, mean, M2
    at = tl.program_id(1) * C + offs_c
    chunks_c = tl.num_programs(1) * C
    tl.store(part + at, count, mask=c_ok)
    tl.store(part + chunks_c + at, mean, mask=c_ok)
    tl.store(part + 2 * chunks_c + at, m2, mask=c_ok)


@triton.jit
def bn_stats_finalize_kernel(part, mean_out, var_out, C, CHUNKS, BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr):
    # Combine the chunks: mean = Σ n_i m_i / n, M2 = Σ M2_i + Σ n_i (m_i - mean)², the closed form of Chan's merge.
    offs_c = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = offs_c < C
    offs_s = tl.arange(0, BLOCK_S)
    ok = (offs_s < CHUNKS)[:, None] & c_ok[None, :]
    at = offs_s[:, None] * C + offs_c[None, :]
    count = tl.load(part + at, mask=ok, other=0.0)
    mean_i = tl.load(part + CHUNKS * C + at, mask=ok, other=0.0)
    m2_i = tl.load(part + 2 * CHUNKS * C + at, mask=ok, other=0.0)
    total = tl.maximum(tl.sum(count, axis=0), 1.0)  # lanes past C hold no rows
    mean = tl.sum(count * mean_i, axis=0) / total
    d = mean_i - mean[None, :]
    m2 = tl.sum(m2_i, axis=0) + tl.sum(count * d * d, axis=0)
    tl.store(mean_out + offs_c, mean, mask=c_ok)
    tl.store(var_out + offs_c, m2 / total, mask=c_ok)


@triton.jit
def bn_relu_apply_kernel(
    x, mean, var, weight, bias, y, TOTAL, C, H, W, sx_n, sx_c, sx_h, sx_w, sy_n, sy_c, sy_h, sy_w, eps,
    HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr, ACC: tl.constexpr, CHANNELS_LAST: tl.constexpr,
    BLOCK: tl.constexpr,
):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < TOTAL
    n, c, h, w = _position(offs, C, H, W, CHANNELS_LAST)
    scale = 1.0 / tl.sqrt(tl.load(var + c, mask=ok, other=1.0) + eps)
    if HAS_WEIGHT:
        scale *= tl.load(weight + c, mask=ok, other=1.0)
    shift = -tl.load(mean + c, mask=ok, other=0.0) * scale
    if HAS_BIAS:
        shift += tl.load(bias + c, mask=ok, other=0.0)
    v = tl.load(x + n * sx_n + c * sx_c + h * sx_h + w * sx_w, mask=ok, other=0.0).to(ACC) * scale + shift
    tl.store(y + n * sy_n + c * sy_c + h * sy_h + w * sy_w, tl.maximum(v, 0.0).to(y.dtype.element_ty), mask=ok)


@triton.jit
def bn_relu_bwd_reduce_kernel(
    dy, y, x, mean, var, part, C, H, W, ROWS, eps,
    sdy_n, sdy_c, sdy_h, sdy_w, sy_n, sy_c, sy_h, sy_w, sx_n, sx_c, sx_h, sx_w,
    ACC: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_R: tl.constexpr,
):
    offs_c = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = offs_c < C
    mu = tl.load(mean + offs_c, mask=c_ok, other=0.0)
    invstd = 1.0 / tl.sqrt(tl.load(var + offs_c, mask=c_ok, other=1.0) + eps)
    begin, end = _chunk(ROWS, BLOCK_R)
    sum_g = tl.zeros((BLOCK_C,), ACC)
    sum_gx = tl.zeros((BLOCK_C,), ACC)
    for r0 in range(begin, end, BLOCK_R):
        rows = r0 + tl.arange(0, BLOCK_R)
        ok = (rows < end)[:, None] & c_ok[None, :]
        out = tl.load(y + _rows_offsets(rows, C, H, W, sy_n, sy_c, sy_h, sy_w, offs_c), mask=ok, other=0.0)
        g = tl.load(dy + _rows_offsets(rows, C, H, W, sdy_n, sdy_c, sdy_h, sdy_w, offs_c), mask=ok & (out > 0),
                    other=0.0).to(ACC)
        v = tl.load(x + _rows_offsets(rows, C, H, W, sx_n, sx_c, sx_h, sx_w, offs_c), mask=ok, other=0.0).to(ACC)
        sum_g += tl.sum(g, axis=0)
        sum_gx += tl.sum(g * (v - mu[None, :]) * invstd[None, :], axis=0)
    at = tl.program_id(1) * C + offs_c
    tl.store(part + at, sum_g, mask=c_ok)
    tl.store(part + tl.num_programs(1) * C + at, sum_gx, mask=c_ok)


@triton.jit
def bn_relu_bwd_finalize_kernel(part, grad_weight, grad_bias, C, CHUNKS, BLOCK_C: tl.constexpr,
                                BLOCK_S: tl.constexpr):
    offs_c = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = offs_c < C
    offs_s = tl.arange(0, BLOCK_S)
    ok = (offs_s < CHUNKS)[:, None] & c_ok[None, :]
    at = offs_s[:, None] * C + offs_c[None, :]
    tl.store(grad_bias + offs_c, tl.sum(tl.load(part + at, mask=ok, other=0.0), axis=0), mask=c_ok)
    tl.store(grad_weight + offs_c, tl.sum(tl.load(part + CHUNKS * C + at, mask=ok, other=0.0), axis=0), mask=c_ok)


@triton.jit
def bn_relu_bwd_dx_kernel(
    dy, y, x, mean, var, weight, sum_gx, sum_g, dx, TOTAL, C, H, W, COUNT, eps,
    sdy_n, sdy_c, sdy_h, sdy_w, sy_n, sy_c, sy_h, sy_w, sx_n, sx_c, sx_h, sx_w, sdx_n, sdx_c, sdx_h, sdx_w,
    HAS_WEIGHT: tl.constexpr, TRAINING: tl.constexpr, ACC: tl.constexpr, CHANNELS_LAST: tl.constexpr,
    BLOCK: tl.constexpr,
):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < TOTAL
    n, c, h, w = _position(offs, C, H, W, CHANNELS_LAST)
    invstd = 1.0 / tl.sqrt(tl.load(var + c, mask=ok, other=1.0) + eps)
    out = tl.load(y + n * sy_n + c * sy_c + h * sy_h + w * sy_w, mask=ok, other=0.0)
    d = tl.load(dy + n * sdy_n + c * sdy_c + h * sdy_h + w * sdy_w, mask=ok & (out > 0), other=0.0).to(ACC)
    if TRAINING:
        xhat = (tl.load(x + n * sx_n + c * sx_c + h * sx_h + w * sx_w, mask=ok, other=0.0).to(ACC)
                - tl.load(mean + c, mask=ok, other=0.0)) * invstd
        d -= (tl.load(sum_g + c, mask=ok, other=0.0) + xhat * tl.load(sum_gx + c, mask=ok, other=0.0)) / COUNT
    scale = invstd
    if HAS_WEIGHT:
        scale *= tl.load(weight + c, mask=ok, other=1.0)
    tl.store(dx + n * sdx_n + c * sdx_c + h * sdx_h + w * sdx_w, (scale * d).to(dx.dtype.element_ty), mask=ok)


# ----------------------------------------------------------------------------- launchers


def _acc_dtype(t):
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _acc(t):
    return tl.float64 if t.dtype == torch.float64 else tl.float32


def _channel_vector(t, like):
    return None if t is None else t.to(_acc_dtype(like)).contiguous()


def _channels_last(t):
    return t.stride(1) == 1 and t.shape[1] > 1


def _chunks(rows, channels):
    """Row chunks per channel block: enough programs to fill the GPU, tiles long enough to matter."""
    blocks = triton.cdiv(channels, BLOCK_C)
    return max(1, min(triton.cdiv(rows, 4 * BLOCK_R), triton.cdiv(_TARGET_PROGRAMS, blocks), 128))


@triton_op("cnnkern_triton::batch_norm_relu", mutates_args={})
def batch_norm_relu(input: torch.Tensor, weight: Optional[torch.Tensor], bias: Optional[torch.Tensor],
                    running_mean: Optional[torch.Tensor], running_var: Optional[torch.Tensor], training: bool,
                    eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    n, c, h, w = input.shape
    y = empty_like_format(input.shape, input)
    if training:
        mean = torch.empty(c, dtype=_acc_dtype(input), device=input.device)
        var = torch.empty(c, dtype=_acc_dtype(input), device=input.device)
    else:
        mean = _channel_vector(running_mean, input).clone()
        var = _channel_vector(running_var, input).clone()
    if input.numel() == 0:
        if training:
            mean.fill_(float("nan"))
            var.fill_(float("nan"))
        return y, mean, var
    check_int32_indexable(input, y)
    if training:
        rows = n * h * w
        chunks = _chunks(rows, c)
        part = torch.empty(3 * chunks * c, dtype=_acc_dtype(input), device=input.device)
        wrap_triton(bn_stats_partial_kernel)[(triton.cdiv(c, BLOCK_C), chunks)](
            input, part, c, h, w, rows, *input.stride(), ACC=_acc(input), BLOCK_C=BLOCK_C, BLOCK_R=BLOCK_R)
        wrap_triton(bn_stats_finalize_kernel)[(triton.cdiv(c, BLOCK_C),)](
            part, mean, var, c, chunks, BLOCK_C=BLOCK_C, BLOCK_S=triton.next_power_of_2(chunks))
    wt, bs = _channel_vector(weight, input), _channel_vector(bias, input)
    wrap_triton(bn_relu_apply_kernel)[(triton.cdiv(y.numel(), BLOCK),)](
        input, mean, var, wt if wt is not None else mean, bs if bs is not None else mean, y, y.numel(), c, h, w,
        *input.stride(), *y.stride(), eps,
        HAS_WEIGHT=wt is not None, HAS_BIAS=bs is not None, ACC=_acc(input), CHANNELS_LAST=_channels_last(y),
        BLOCK=BLOCK)
    return y, mean, var


@triton_op("cnnkern_triton::batch_norm_relu_backward", mutates_args={})
def batch_norm_relu_backward(grad_output: torch.Tensor, output: torch.Tensor, input: torch.Tensor,
                             mean: torch.Tensor, var: torch.Tensor, weight: Optional[torch.Tensor], training: bool,
                             eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    n, c, h, w = input.shape
    dx = empty_like_format(input.shape, input)
    grad_weight = torch.zeros(c, dtype=_acc_dtype(input), device=input.device)
    grad_bias = torch.zeros(c, dtype=_acc_dtype(input), device=input.device)
    if input.numel() == 0:
        return dx, grad_weight, grad_bias
    check_int32_indexable(grad_output, output, input, dx)
    mean, var, wt = _channel_vector(mean, input), _channel_vector(var, input), _channel_vector(weight, input)
    rows = n * h * w
    chunks = _chunks(rows, c)
    part = torch.empty(2 * chunks * c, dtype=_acc_dtype(input), device=input.device)
    wrap_triton(bn_relu_bwd_reduce_kernel)[(triton.cdiv(c, BLOCK_C), chunks)](
        grad_output, output, input, mean, var, part, c, h, w, rows, eps,
        *grad_output.stride(), *output.stride(), *input.stride(), ACC=_acc(input), BLOCK_C=BLOCK_C, BLOCK_R=BLOCK_R)
    wrap_triton(bn_relu_bwd_finalize_kernel)[(triton.cdiv(c, BLOCK_C),)](
        part, grad_weight, grad_bias, c, chunks, BLOCK_C=BLOCK_C, BLOCK_S=triton.next_power_of_2(chunks))
    wrap_triton(bn_relu_bwd_dx_kernel)[(triton.cdiv(dx.numel(), BLOCK),)](
        grad_output, output, input, mean, var, wt if wt is not None else mean, grad_weight, grad_bias, dx,
        dx.numel(), c, h, w, float(rows), eps,
        *grad_output.stride(), *output.stride(), *input.stride(), *dx.stride(),
        HAS_WEIGHT=wt is not None, TRAINING=training, ACC=_acc(input), CHANNELS_LAST=_channels_last(dx), BLOCK=BLOCK)
    return dx, grad_weight, grad_bias
