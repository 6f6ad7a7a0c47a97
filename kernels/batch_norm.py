"""Fused BatchNorm2d + activation in Triton, at its memory floor.

The activation (ReLU, ReLU6, SiLU, Hardswish or identity; `ACTIVATIONS`) is a
constexpr of the apply and backward kernels, with csrc/include/cnnkern/
activation.h's formulas and derivatives; "ReLU" below stands for any of them.

Layouts. Every kernel sees a 4-D tensor as tiles [BLOCK_A, BLOCK_B] whose B
axis is contiguous in memory, with no per-element division:
- ROWS (channels_last, and channel slices of it): the N·H·W positions form
  rows at one stride, channels the columns (stride 1). A program owns BLOCK_C
  channels (one 128-byte line of a row, 16-byte vector loads) and a chunk of
  the rows.
- PLANES (NCHW; also views whose every (n, c) plane is one run at a stride,
  e.g. x[..., ::2]): a program owns one channel and a chunk of the N planes; a
  tile is BLOCK_N planes x BLOCK_I positions of each, the positions walked in
  bands of BLOCK_I when a plane is longer.
Tensors that fit neither are copied into the output's layout first (the one
extra pass the general strided case costs). Every data kernel of one op uses
the same grid, chunks and tiles, planned from the GPU's SM count
(`target_for`): one resident wave of about _WARPS_PER_SM warps per SM,
each streaming several tiles, and chunks long enough that a program's partial
result is a few percent of what it reads.

Training forward, 3 launches. (1) Partial statistics: each program runs
Welford's update per tile position (one scalar reciprocal per tile, so four
flops an element; robust when the mean dwarfs the spread), then merges its
positions exactly into (count, mean, M2) per channel. It also bumps
num_batches_tracked (one program; the finalize launch reads it after).
(2) Finalize: per channel, merges the chunks in a fixed order (deterministic),
writes the batch mean and biased variance, and updates running_mean/var as
nn.BatchNorm2d does (momentum or the cumulative factor 1/num_batches_tracked,
unbiased variance, in the statistics' own dtype). (3) Apply:
y = relu(fma(x - mean, weight·invstd, bias)), each program walking its chunk in
the reverse order of pass 1, so the data pass 1 touched last (still in L2) is
read first; pass 1 loads x with an L2 evict_last hint (so y's writes evict
other lines before x's) and the apply with evict_first (its last use). Eval
forward is
the apply alone (it also writes the statistics it used). Parameters are read
in their own dtype and widened in registers; nothing is zero-filled or cast.

Backward, 3 launches, no y: the ReLU mask is recomputed from x with the same
helper and the same fma as the forward, and rounded to x's dtype as y was, so
it is the forward's mask bit for bit. (1) Σg and Σg·(x - mean) per program
(g = dy·mask), (2) a finalize that writes grad_weight/grad_bias in the
parameters' dtype and the dx coefficients, (3) dx, in reverse order again
(the same L2 hints). Eval without parameter gradients is the dx pass alone.

HBM traffic (T = one activation tensor's bytes, L = the bytes of the first
pass's tail still in L2 when the second pass reads them, at most min(T, L2) per
re-read tensor): forward ≈ 3T - L against the floor 2T; backward (reads dy and
x twice, writes dx) ≈ 5T - L against the floor 3T; the partial results add
about 1-3%. So tensors that fit in L2 run at the floor, and the largest
(T > L2) cannot: forward tends to 1.5x and backward to 1.67x of the floor.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Optional

import torch
import triton
import triton.language as tl
from torch.library import triton_op

from .._shapes import empty_like_format, memory_format_of
from ._util import cdiv, check_int32_indexable, contiguous, fresh, launch, launcher, next_power_of_2, target_for

# Resident warps per SM that a grid is sized for (one wave, enough loads in flight
# for HBM bandwidth), from the kernels' sm_90 register counts: the forward data
# kernels take <= 56 registers (32 warps fit), the ROWS backward ones ~74 (a
# thread holds 8 channels' worth of per-channel terms: 24 warps fit).
_WARPS_PER_SM = 32
_WARPS_PER_SM_BACKWARD_ROWS = 24
_NUM_WARPS = 4  # forward and finalize programs: 16 elements a thread per tile
_NUM_WARPS_BACKWARD = 8  # backward data passes: 8 a thread (two tensors in flight)
_TILE = 2048  # elements per tile
_TILE_INTERPRETED = 512
_LINE_BYTES = 128  # a ROWS tile row: one cache line of channels
_MIN_TILES_PER_PROGRAM = 4
_PARTIAL_RATIO = 32  # a program reads at least this many times the bytes of its partial result


# ----------------------------------------------------------------------------- shared device helpers


@triton.jit
def _chunk(A_EXT, TILES, BLOCK_A: tl.constexpr):
    """This program's rows (ROWS) or planes (PLANES): [begin, end), in `steps` tiles."""
    begin = tl.program_id(1) * (TILES * BLOCK_A)
    end = tl.minimum(begin + TILES * BLOCK_A, A_EXT)
    return begin, end, tl.cdiv(end - begin, BLOCK_A)


@triton.jit
def _channels(C, PLANES: tl.constexpr, BLOCK_B: tl.constexpr):
    """The program's channels: a block, one per tile column (ROWS), or its one channel, a scalar (PLANES)."""
    if PLANES:
        chan = tl.program_id(0)
    else:
        chan = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    return chan, chan < C


@triton.jit
def _per_channel(p, PLANES: tl.constexpr):
    """A per-channel value shaped to broadcast over a tile."""
    if PLANES:
        out = p
    else:
        out = p[None, :]
    return out


@triton.jit
def _columns(chan, c_ok, band, B_EXT, PLANES: tl.constexpr, BLOCK_B: tl.constexpr):
    """Tile columns and their validity: the channels (ROWS) or one band of plane positions (PLANES)."""
    if PLANES:
        cols = band * BLOCK_B + tl.arange(0, BLOCK_B)
        ok = cols < B_EXT
    else:
        cols = chan
        ok = c_ok
    return cols, ok


@triton.jit
def _inv_std(v, eps, ACC: tl.constexpr):
    # IEEE square root (sqrt_rn is fp32 only; fp64 sqrt is correctly rounded anyway).
    if ACC == tl.float64:
        r = 1.0 / tl.sqrt(v + eps)
    else:
        r = 1.0 / tl.sqrt_rn(v + eps)
    return r


@triton.jit
def _affine(mean, var, s_mean, s_var, weight, bias, chan, c_ok, eps,
            PLANES: tl.constexpr, HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr, ACC: tl.constexpr):
    """Per-channel (mean, scale = weight·invstd, bias), widened in registers. The one
    place forward and backward derive them: the backward's ReLU mask depends on
    computing the pre-activation exactly as the forward did."""
    mu = tl.load(mean + chan * s_mean, mask=c_ok, other=0.0).to(ACC)
    scale = _inv_std(tl.load(var + chan * s_var, mask=c_ok, other=1.0).to(ACC), eps, ACC)
    if HAS_WEIGHT:
        scale = scale * tl.load(weight + chan, mask=c_ok, other=1.0).to(ACC)
    if HAS_BIAS:
        b = tl.load(bias + chan, mask=c_ok, other=0.0).to(ACC)
    else:
        b = mu * 0.0
    return _per_channel(mu, PLANES), _per_channel(scale, PLANES), _per_channel(b, PLANES)


@triton.jit
def _pre_activation(v, mu, scale, b):
    """(x - mean, the pre-activation): one explicit fma, so no kernel contracts it differently."""
    xm = v - mu
    return xm, tl.fma(xm, scale, b)


# The op's activation argument, in the constexpr ACT's order (as cnnkern/activation.h's enum).
ACTIVATIONS = ("relu", "relu6", "silu", "hardswish", "identity")


def _act_code(activation: str) -> int:
    if activation not in ACTIVATIONS:
        raise ValueError(f"cnnkern batch_norm_relu: unknown activation '{activation}' "
                         f"(expected relu, relu6, silu, hardswish or identity)")
    return ACTIVATIONS.index(activation)


@triton.jit
def _activate(pre, ACT: tl.constexpr):
    """y = act(z); ReLU and ReLU6 keep NaN, as torch's."""
    if ACT == 0:
        out = tl.where(pre <= 0.0, 0.0, pre)
    elif ACT == 1:
        out = tl.where(pre <= 0.0, 0.0, tl.where(pre >= 6.0, 6.0, pre))
    elif ACT == 2:
        out = pre / (1.0 + tl.exp(-pre))
    elif ACT == 3:
        out = tl.where(pre <= -3.0, 0.0, tl.where(pre >= 3.0, pre, pre * (pre + 3.0) / 6.0))
    else:
        out = pre
    return out


@triton.jit
def _rounded(v, OUT: tl.constexpr):
    """v rounded to OUT (to nearest even), as a value of v's dtype. bf16 is rounded by hand:
    on a GPU that is exactly what cvt.rn.bf16.f32 gives, and Triton's interpreter truncates
    fp32 -> bf16 casts, which would move z across Hardswish's and ReLU6's kinks."""
    if OUT == tl.bfloat16:
        bits = v.to(tl.uint32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
        r = bits.to(tl.float32, bitcast=True)
    else:
        r = v.to(OUT).to(v.dtype)
    return r


@triton.jit
def _activation_grad(d, pre, OUT: tl.constexpr, ACT: tl.constexpr):
    """dL/dz from dL/dy = d at the pre-activation rounded to y's dtype: that gives the
    forward's ReLU/ReLU6 mask bit for bit (y is clamped exactly where the rounded z is)
    and SiLU/Hardswish their derivative at an unfused BatchNorm2d's output."""
    z = _rounded(pre, OUT)
    if ACT == 0:
        g = tl.where(z > 0.0, d, 0.0)
    elif ACT == 1:
        g = tl.where((z > 0.0) & (z < 6.0), d, 0.0)
    elif ACT == 2:
        sig = 1.0 / (1.0 + tl.exp(-z))
        g = d * sig * (1.0 + z * (1.0 - sig))
    elif ACT == 3:
        g = tl.where(z <= -3.0, 0.0, tl.where(z < 3.0, d * (z / 3.0 + 0.5), d))  # torch's ends
    else:
        g = d
    return g


@triton.jit
def _merge_rows(cnt, mean, m2):
    """Exact merge of per-position Welford states down the rows: per column (count, mean, M2)."""
    n = tl.sum(cnt, axis=0)
    mu = tl.sum(cnt * mean, axis=0) / tl.maximum(n, 1.0)
    d = mean - mu[None, :]
    return n, mu, tl.sum(m2, axis=0) + tl.sum(cnt * d * d, axis=0)


@triton.jit
def _merge_vector(cnt, mean, m2):
    n = tl.sum(cnt, axis=0)
    mu = tl.sum(cnt * mean, axis=0) / tl.maximum(n, 1.0)
    d = mean - mu
    return n, mu, tl.sum(m2, axis=0) + tl.sum(cnt * d * d, axis=0)


@triton.jit
def _chan_merge(n_a, mean_a, m2_a, n_b, mean_b, m2_b):
    """Chan et al.: (count, mean, M2) of the union of two disjoint sets."""
    n = n_a + n_b
    delta = mean_b - mean_a
    frac = n_b / tl.maximum(n, 1.0)
    return n, mean_a + delta * frac, m2_a + m2_b + delta * delta * n_a * frac


# ----------------------------------------------------------------------------- forward


@triton.jit
def bn_stats_partial_kernel(
    x, part, batches, A_EXT, B_EXT, C, BANDS, TILES, CHUNKS, x_a, x_b, x_c,
    PLANES: tl.constexpr, COUNT_BATCH: tl.constexpr, ACC: tl.constexpr,
    BLOCK_A: tl.constexpr, BLOCK_B: tl.constexpr,
):
    chan, c_ok = _channels(C, PLANES, BLOCK_B)
    begin, end, steps = _chunk(A_EXT, TILES, BLOCK_A)
    src = x + tl.program_id(0) * x_c  # PLANES: the channel's planes (x_c = 0 for ROWS)
    rows = tl.arange(0, BLOCK_A)
    one = tl.full([], 1.0, ACC)
    tot_n = tl.full([], 0.0, ACC)
    tot_mean = tl.full([], 0.0, ACC)
    tot_m2 = tl.full([], 0.0, ACC)
    for band in range(BANDS):
        cols, col_ok = _columns(chan, c_ok, band, B_EXT, PLANES, BLOCK_B)
        # Welford per tile position: a position valid at a step was valid at every earlier
        # step (only the chunk's last tile is partial), so its count is the step number.
        mean = tl.zeros([BLOCK_A, BLOCK_B], ACC)
        m2 = tl.zeros([BLOCK_A, BLOCK_B], ACC)
        for t in range(steps):
            a = begin + t * BLOCK_A + rows
            ok = (a < end)[:, None] & col_ok[None, :]
            # evict_last: keep x in L2 for the apply pass
            v = tl.load(src + a[:, None] * x_a + cols[None, :] * x_b, mask=ok, other=0.0,
                        eviction_policy="evict_last").to(ACC)
            delta = v - mean
            stepped = tl.fma(delta, one / (t + one), mean)
            m2 = tl.where(ok, tl.fma(delta, v - stepped, m2), m2)
            mean = tl.where(ok, stepped, mean)
        last = begin + (steps - 1) * BLOCK_A + rows
        cnt = tl.where(col_ok[None, :], (steps - 1 + (last < end).to(tl.int32))[:, None], 0).to(ACC)
        n_b, mean_b, m2_b = _merge_rows(cnt, mean, m2)
        if PLANES:
            n_s, mean_s, m2_s = _merge_vector(n_b, mean_b, m2_b)
            tot_n, tot_mean, tot_m2 = _chan_merge(tot_n, tot_mean, tot_m2, n_s, mean_s, m2_s)
        else:  # one band: the columns are the channels
            at = chan * CHUNKS + tl.program_id(1)  # partials laid out [3, C, CHUNKS]
            tl.store(part + at, n_b, mask=c_ok)
            tl.store(part + C * CHUNKS + at, mean_b, mask=c_ok)
            tl.store(part + 2 * C * CHUNKS + at, m2_b, mask=c_ok)
    if PLANES:
        at = tl.program_id(0) * CHUNKS + tl.program_id(1)
        tl.store(part + at, tot_n)
        tl.store(part + C * CHUNKS + at, tot_mean)
        tl.store(part + 2 * C * CHUNKS + at, tot_m2)
    if COUNT_BATCH:
        # nn.BatchNorm2d's counter, bumped here so that every finalize program,
        # one launch later, reads the new count (momentum=None needs it).
        if (tl.program_id(0) == 0) & (tl.program_id(1) == 0):
            tl.store(batches, tl.load(batches) + 1)


@triton.jit
def bn_stats_finalize_kernel(
    part, mean, var, running_mean, running_var, batches, C, CHUNKS, s_rm, s_rv, momentum_hi, momentum_lo, COUNT,
    UPDATE_MEAN: tl.constexpr, UPDATE_VAR: tl.constexpr, CUMULATIVE: tl.constexpr, ACC: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr,
):
    # Each block of BLOCK_S chunks (usually all of them: one pass, one load
    # latency) merged in closed form, mean = Σ n_i m_i / n and
    # M2 = Σ M2_i + Σ n_i (m_i - mean)², then into the channel's total by Chan's formula.
    chan = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = chan < C
    offs_s = tl.arange(0, BLOCK_S)
    total = tl.zeros([BLOCK_C], ACC)
    mu = tl.zeros([BLOCK_C], ACC)
    m2 = tl.zeros([BLOCK_C], ACC)
    for s0 in range(0, CHUNKS, BLOCK_S):
        ok = c_ok[:, None] & (s0 + offs_s < CHUNKS)[None, :]
        at = chan[:, None] * CHUNKS + (s0 + offs_s)[None, :]
        n_i = tl.load(part + at, mask=ok, other=0.0)  # 0 past the edges: those lanes weigh nothing
        m_i = tl.load(part + C * CHUNKS + at, mask=ok, other=0.0)
        m2_i = tl.load(part + 2 * C * CHUNKS + at, mask=ok, other=0.0)
        n_b = tl.sum(n_i, axis=1)
        mean_b = tl.sum(n_i * m_i, axis=1) / tl.maximum(n_b, 1.0)
        d = m_i - mean_b[:, None]
        total, mu, m2 = _chan_merge(total, mu, m2, n_b, mean_b, tl.sum(m2_i + n_i * d * d, axis=1))
    v = m2 / tl.maximum(total, 1.0)
    tl.store(mean + chan, mu, mask=c_ok)
    tl.store(var + chan, v, mask=c_ok)
    if UPDATE_MEAN or UPDATE_VAR:
        # running = factor·batch + (1 - factor)·running, as torch writes it; the
        # variance unbiased (x M / (M - 1), M = COUNT values per channel); stored
        # in the buffers' dtype. A float argument arrives as fp32: momentum comes
        # as fp32 head + tail, which fp64 statistics add back to double precision.
        zero = tl.zeros([], ACC)  # scalar arguments widened to ACC by adding them to it
        if CUMULATIVE:
            factor = 1.0 / tl.load(batches).to(ACC)
        else:
            factor = (zero + momentum_hi) + momentum_lo
        m = zero + COUNT
        unbias = m / (m - 1.0)
        if UPDATE_MEAN:
            rm = tl.load(running_mean + chan * s_rm, mask=c_ok, other=0.0).to(ACC)
            tl.store(running_mean + chan * s_rm, (mu * factor + rm * (1.0 - factor)).to(running_mean.dtype.element_ty),
                     mask=c_ok)
        if UPDATE_VAR:
            rv = tl.load(running_var + chan * s_rv, mask=c_ok, other=0.0).to(ACC)
            tl.store(running_var + chan * s_rv,
                     (v * unbias * factor + rv * (1.0 - factor)).to(running_var.dtype.element_ty), mask=c_ok)


@triton.jit
def bn_relu_apply_kernel(
    x, y, mean, var, weight, bias, mean_out, var_out, A_EXT, B_EXT, C, BANDS, TILES, s_mean, s_var,
    x_a, x_b, x_c, y_a, y_b, y_c, eps,
    PLANES: tl.constexpr, HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr, SAVE_STATS: tl.constexpr,
    ACT: tl.constexpr, ACC: tl.constexpr, BLOCK_A: tl.constexpr, BLOCK_B: tl.constexpr,
):
    chan, c_ok = _channels(C, PLANES, BLOCK_B)
    mu, scale, b = _affine(mean, var, s_mean, s_var, weight, bias, chan, c_ok, eps, PLANES, HAS_WEIGHT, HAS_BIAS,
                           ACC)
    if SAVE_STATS:  # eval: the op returns the (widened) running statistics it normalised with
        if tl.program_id(1) == 0:
            tl.store(mean_out + chan, tl.load(mean + chan * s_mean, mask=c_ok, other=0.0).to(ACC), mask=c_ok)
            tl.store(var_out + chan, tl.load(var + chan * s_var, mask=c_ok, other=1.0).to(ACC), mask=c_ok)
    begin, end, steps = _chunk(A_EXT, TILES, BLOCK_A)
    src = x + tl.program_id(0) * x_c
    dst = y + tl.program_id(0) * y_c
    rows = tl.arange(0, BLOCK_A)
    for band_r in range(BANDS):  # the statistics pass's order, reversed
        cols, col_ok = _columns(chan, c_ok, BANDS - 1 - band_r, B_EXT, PLANES, BLOCK_B)
        for t in range(steps):
            a = begin + (steps - 1 - t) * BLOCK_A + rows
            ok = (a < end)[:, None] & col_ok[None, :]
            v = tl.load(src + a[:, None] * x_a + cols[None, :] * x_b, mask=ok, other=0.0,
                        eviction_policy="evict_first").to(ACC)  # its last use
            _, pre = _pre_activation(v, mu, scale, b)
            out = _activate(pre, ACT)
            tl.store(dst + a[:, None] * y_a + cols[None, :] * y_b, out.to(y.dtype.element_ty), mask=ok)


# ----------------------------------------------------------------------------- backward


@triton.jit
def bn_relu_bwd_reduce_kernel(
    dy, x, mean, var, weight, bias, part, A_EXT, B_EXT, C, BANDS, TILES, CHUNKS,
    dy_a, dy_b, dy_c, x_a, x_b, x_c, eps,
    PLANES: tl.constexpr, HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr, ACT: tl.constexpr, ACC: tl.constexpr,
    BLOCK_A: tl.constexpr, BLOCK_B: tl.constexpr,
):
    chan, c_ok = _channels(C, PLANES, BLOCK_B)
    mu, scale, b = _affine(mean, var, 1, 1, weight, bias, chan, c_ok, eps, PLANES, HAS_WEIGHT, HAS_BIAS, ACC)
    begin, end, steps = _chunk(A_EXT, TILES, BLOCK_A)
    src = x + tl.program_id(0) * x_c
    grad = dy + tl.program_id(0) * dy_c
    rows = tl.arange(0, BLOCK_A)
    tot_g = tl.full([], 0.0, ACC)
    tot_gx = tl.full([], 0.0, ACC)
    for band in range(BANDS):
        cols, col_ok = _columns(chan, c_ok, band, B_EXT, PLANES, BLOCK_B)
        acc_g = tl.zeros([BLOCK_A, BLOCK_B], ACC)
        acc_gx = tl.zeros([BLOCK_A, BLOCK_B], ACC)
        for t in range(steps):
            a = begin + t * BLOCK_A + rows
            ok = (a < end)[:, None] & col_ok[None, :]
            v = tl.load(src + a[:, None] * x_a + cols[None, :] * x_b, mask=ok, other=0.0,
                        eviction_policy="evict_last").to(ACC)  # kept in L2 for the dx pass
            d = tl.load(grad + a[:, None] * dy_a + cols[None, :] * dy_b, mask=ok, other=0.0,
                        eviction_policy="evict_last").to(ACC)
            xm, pre = _pre_activation(v, mu, scale, b)
            g = _activation_grad(d, pre, x.dtype.element_ty, ACT)  # 0 past the edges: d was loaded as 0
            acc_g += g
            acc_gx = tl.fma(g, xm, acc_gx)
        s_g = tl.sum(acc_g, axis=0)
        s_gx = tl.sum(acc_gx, axis=0)
        if PLANES:
            tot_g += tl.sum(s_g, axis=0)
            tot_gx += tl.sum(s_gx, axis=0)
        else:
            at = chan * CHUNKS + tl.program_id(1)  # partials laid out [2, C, CHUNKS]
            tl.store(part + at, s_g, mask=c_ok)
            tl.store(part + C * CHUNKS + at, s_gx, mask=c_ok)
    if PLANES:
        at = tl.program_id(0) * CHUNKS + tl.program_id(1)
        tl.store(part + at, tot_g)
        tl.store(part + C * CHUNKS + at, tot_gx)


@triton.jit
def bn_relu_bwd_finalize_kernel(
    part, var, grad_weight, grad_bias, coef, C, CHUNKS, COUNT, eps,
    TRAINING: tl.constexpr, WRITE_WEIGHT: tl.constexpr, WRITE_BIAS: tl.constexpr, ACC: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr,
):
    # Chunks summed in a fixed order: the backward is deterministic (no atomics).
    chan = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = chan < C
    offs_s = tl.arange(0, BLOCK_S)
    acc_g = tl.zeros([BLOCK_C, BLOCK_S], ACC)
    acc_gx = tl.zeros([BLOCK_C, BLOCK_S], ACC)
    for s0 in range(0, CHUNKS, BLOCK_S):
        ok = c_ok[:, None] & (s0 + offs_s < CHUNKS)[None, :]
        at = chan[:, None] * CHUNKS + (s0 + offs_s)[None, :]
        acc_g += tl.load(part + at, mask=ok, other=0.0)
        acc_gx += tl.load(part + C * CHUNKS + at, mask=ok, other=0.0)
    s_g = tl.sum(acc_g, axis=1)
    s_gx = tl.sum(acc_gx, axis=1)
    invstd = _inv_std(tl.load(var + chan, mask=c_ok, other=1.0), eps, ACC)
    if WRITE_BIAS:
        tl.store(grad_bias + chan, s_g.to(grad_bias.dtype.element_ty), mask=c_ok)
    if WRITE_WEIGHT:
        tl.store(grad_weight + chan, (s_gx * invstd).to(grad_weight.dtype.element_ty), mask=c_ok)
    if TRAINING:  # dx = scale·(g - mean_g - (x - mean)·k), k = invstd²·Σg(x - mean) / M
        m = tl.zeros([], ACC) + COUNT
        tl.store(coef + chan, s_g / m, mask=c_ok)
        tl.store(coef + C + chan, s_gx * invstd * invstd / m, mask=c_ok)


@triton.jit
def bn_relu_bwd_dx_kernel(
    dy, x, dx, mean, var, weight, bias, coef, A_EXT, B_EXT, C, BANDS, TILES,
    dy_a, dy_b, dy_c, x_a, x_b, x_c, dx_a, dx_b, dx_c, eps,
    PLANES: tl.constexpr, HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr, TRAINING: tl.constexpr,
    ACT: tl.constexpr, ACC: tl.constexpr, BLOCK_A: tl.constexpr, BLOCK_B: tl.constexpr,
):
    chan, c_ok = _channels(C, PLANES, BLOCK_B)
    mu, scale, b = _affine(mean, var, 1, 1, weight, bias, chan, c_ok, eps, PLANES, HAS_WEIGHT, HAS_BIAS, ACC)
    if TRAINING:
        mean_g = _per_channel(tl.load(coef + chan, mask=c_ok, other=0.0), PLANES)
        k = _per_channel(tl.load(coef + C + chan, mask=c_ok, other=0.0), PLANES)
    begin, end, steps = _chunk(A_EXT, TILES, BLOCK_A)
    src = x + tl.program_id(0) * x_c
    grad = dy + tl.program_id(0) * dy_c
    dst = dx + tl.program_id(0) * dx_c
    rows = tl.arange(0, BLOCK_A)
    for band_r in range(BANDS):  # the reduction's order, reversed
        cols, col_ok = _columns(chan, c_ok, BANDS - 1 - band_r, B_EXT, PLANES, BLOCK_B)
        for t in range(steps):
            a = begin + (steps - 1 - t) * BLOCK_A + rows
            ok = (a < end)[:, None] & col_ok[None, :]
            v = tl.load(src + a[:, None] * x_a + cols[None, :] * x_b, mask=ok, other=0.0,
                        eviction_policy="evict_first").to(ACC)
            d = tl.load(grad + a[:, None] * dy_a + cols[None, :] * dy_b, mask=ok, other=0.0,
                        eviction_policy="evict_first").to(ACC)
            xm, pre = _pre_activation(v, mu, scale, b)
            g = _activation_grad(d, pre, x.dtype.element_ty, ACT)
            if TRAINING:
                g = tl.fma(-xm, k, g - mean_g)
            tl.store(dst + a[:, None] * dx_a + cols[None, :] * dx_b, (scale * g).to(dx.dtype.element_ty), mask=ok)


# ----------------------------------------------------------------------------- static-profile work model


def _element_bytes(a, name):
    t = a[name]
    return t.element_size() if isinstance(t, torch.Tensor) else 0


def _elements(a):
    # Tile columns past B_EXT are masked: a launch touches A_EXT x B_EXT elements per channel (PLANES)
    # or A_EXT x C in all (ROWS).
    return a["A_EXT"] * a["B_EXT"] * (a["C"] if a["PLANES"] else 1)


def _partial_bytes(a, values):
    return values * a["C"] * a["CHUNKS"] * _element_bytes(a, "part")


def _trips(a):
    return a["TILES"] * a["BANDS"]


def _work_stats(a, grid):
    n = _elements(a)
    return dict(trip_count=_trips(a), flops=4 * n, bytes=n * _element_bytes(a, "x") + _partial_bytes(a, 3))


def _work_stats_finalize(a, grid):
    c = a["C"]
    stat = _element_bytes(a, "mean")
    running = (2 * c * _element_bytes(a, "running_mean") if a["UPDATE_MEAN"] else 0) + \
              (2 * c * _element_bytes(a, "running_var") if a["UPDATE_VAR"] else 0)
    return dict(trip_count=cdiv(a["CHUNKS"], a["BLOCK_S"]), flops=0,
                bytes=_partial_bytes(a, 3) + 2 * c * stat + running)


def _work_apply(a, grid):
    n = _elements(a)
    return dict(trip_count=_trips(a), flops=3 * n, bytes=n * (_element_bytes(a, "x") + _element_bytes(a, "y")))


def _work_bwd_reduce(a, grid):
    n = _elements(a)
    return dict(trip_count=_trips(a), flops=6 * n,
                bytes=n * (_element_bytes(a, "x") + _element_bytes(a, "dy")) + _partial_bytes(a, 2))


def _work_bwd_finalize(a, grid):
    per_channel = (_element_bytes(a, "var") + (2 * _element_bytes(a, "coef") if a["TRAINING"] else 0)
                   + (_element_bytes(a, "grad_weight") if a["WRITE_WEIGHT"] else 0)
                   + (_element_bytes(a, "grad_bias") if a["WRITE_BIAS"] else 0))
    return dict(trip_count=cdiv(a["CHUNKS"], a["BLOCK_S"]), flops=0,
                bytes=_partial_bytes(a, 2) + a["C"] * per_channel)


def _work_bwd_dx(a, grid):
    n = _elements(a)
    return dict(trip_count=_trips(a), flops=(8 if a["TRAINING"] else 5) * n,
                bytes=n * (_element_bytes(a, "x") + _element_bytes(a, "dy") + _element_bytes(a, "dx")))


PROFILE_WORK = {
    "bn_stats_partial_kernel": _work_stats,
    "bn_stats_finalize_kernel": _work_stats_finalize,
    "bn_relu_apply_kernel": _work_apply,
    "bn_relu_bwd_reduce_kernel": _work_bwd_reduce,
    "bn_relu_bwd_finalize_kernel": _work_bwd_finalize,
    "bn_relu_bwd_dx_kernel": _work_bwd_dx,
}

# ----------------------------------------------------------------------------- launch planning


def _acc_dtype(t):
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _acc(t):
    return tl.float64 if t.dtype == torch.float64 else tl.float32


def _rows_strides(t):
    """(row stride, channel stride) when t's (n, h, w) positions are rows at one stride, else None."""
    n, c, h, w = t.shape
    sn, sc, sh, sw = t.stride()
    s_r = sw if w > 1 else sh if h > 1 else sn if n > 1 else 1
    if (w == 1 or sw == s_r) and (h == 1 or sh == w * s_r) and (n == 1 or sn == h * w * s_r):
        return s_r, (sc if c > 1 else 1)
    return None


def _plane_strides(t):
    """(plane stride, channel stride, position stride) when each (n, c) plane is one run, else None."""
    n, c, h, w = t.shape
    sn, sc, sh, sw = t.stride()
    s_i = sw if w > 1 else sh if h > 1 else 1
    if (w == 1 or sw == s_i) and (h == 1 or sh == w * s_i):
        return sn, sc, s_i
    return None


@dataclass(frozen=True)
class _Plan:
    """The geometry every data kernel of one op shares (so a second pass can walk the first's chunks backwards)."""

    planes: bool
    a_ext: int  # rows (ROWS) or planes N (PLANES)
    b_ext: int  # channels (ROWS) or plane length H·W (PLANES)
    block_a: int
    block_b: int
    bands: int
    tiles: int  # tiles per program
    chunks: int
    grid: tuple
    num_warps: int

    def strides(self, t: torch.Tensor):
        """(a, b, c) strides of t in this layout, or None if t's strides do not fit it."""
        if self.planes:
            s = _plane_strides(t)
            return None if s is None else (s[0], s[2], s[1])
        s = _rows_strides(t)
        return None if s is None else (s[0], s[1], 0)

    def meta(self):
        return dict(PLANES=self.planes, BLOCK_A=self.block_a, BLOCK_B=self.block_b, num_warps=self.num_warps)


def _plan(out: torch.Tensor, backward: bool) -> _Plan:
    """Tiles and chunks for an op whose dense output is `out` (its layout decides ROWS or PLANES):
    one resident wave of programs, so that a second pass can walk the same chunks back."""
    target = target_for(out)
    n, c, h, w = out.shape
    es = out.element_size()
    tile = _TILE_INTERPRETED if target.interpreted else _TILE
    planes = not (out.stride(1) == 1 or h * w == 1)
    num_warps = _NUM_WARPS_BACKWARD if backward else _NUM_WARPS
    warps_per_sm = _WARPS_PER_SM_BACKWARD_ROWS if backward and not planes else _WARPS_PER_SM
    want = target.sm_count * (warps_per_sm // num_warps)
    min_tiles = 2 if target.interpreted else _MIN_TILES_PER_PROGRAM
    # a program's partial result (3 values per channel) is at most 1/_PARTIAL_RATIO of what it reads
    partial = 1 if target.interpreted else _PARTIAL_RATIO * 3 * 4

    def chunking(a_ext, block_a, blocks, bytes_per_a):
        tiles_total = cdiv(a_ext, block_a)
        per = max(min_tiles, cdiv(partial, block_a * bytes_per_a),
                  cdiv(tiles_total, max(1, cdiv(want, blocks))))
        per = min(per, tiles_total)
        return per, cdiv(tiles_total, per)

    if planes:
        hw = h * w
        block_b = min(next_power_of_2(hw), tile)
        block_a = max(1, tile // block_b)
        per, chunks = chunking(n, block_a, c, hw * es)
        return _Plan(True, n, hw, block_a, block_b, cdiv(hw, block_b), per, chunks, (c, chunks), num_warps)
    rows = n * h * w
    widest = min(next_power_of_2(c), max(1, (32 if target.interpreted else _LINE_BYTES // es)))
    best = None
    for block_b in (widest, max(1, widest // 2)):  # half-line rows when full lines leave SMs idle
        if block_b * es < 64 and block_b != widest and not target.interpreted:
            break
        block_a = max(1, tile // block_b)
        blocks = cdiv(c, block_b)
        per, chunks = chunking(rows, block_a, blocks, es)
        cand = _Plan(False, rows, c, block_a, block_b, 1, per, chunks, (blocks, chunks), num_warps)
        if best is None or blocks * chunks > best.grid[0] * best.grid[1] * 1.25:
            best = cand
        if blocks * chunks >= want:
            break
    return best


def _finalize_blocks(plan: _Plan, channels: int, sm_count: int):
    # all of a channel's chunks in one tile where they fit; channels spread over the SMs
    block_s = min(next_power_of_2(plan.chunks), _TILE)
    block_c = max(1, min(next_power_of_2(channels), _TILE // block_s,
                         next_power_of_2(cdiv(channels, sm_count))))
    return block_c, block_s


def _fit(t: torch.Tensor, plan: _Plan, like: torch.Tensor):
    """t (or, when its strides fit neither layout, a copy in `like`'s layout) and its strides in the plan."""
    s = plan.strides(t)
    if s is None:
        t = contiguous(t, memory_format_of(like))
        s = plan.strides(t)
    return t, s


def _head_tail(value: float):
    """value as two fp32 numbers whose sum (in fp64) is value to ~48 bits."""
    head = struct.unpack("f", struct.pack("f", value))[0]
    return head, value - head


def _param(t: Optional[torch.Tensor]):
    return None if t is None else contiguous(t)


# ----------------------------------------------------------------------------- ops


@triton_op("cnnkern_triton::batch_norm_relu", mutates_args={"running_mean", "running_var", "num_batches_tracked"})
@launcher
def batch_norm_relu(input: torch.Tensor, weight: Optional[torch.Tensor], bias: Optional[torch.Tensor],
                    running_mean: Optional[torch.Tensor], running_var: Optional[torch.Tensor],
                    num_batches_tracked: Optional[torch.Tensor], training: bool, momentum: Optional[float],
                    eps: float, activation: str = "relu") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    act = _act_code(activation)
    n, c, h, w = input.shape
    acc = _acc_dtype(input)
    y = fresh(empty_like_format(input.shape, input))
    mean = fresh(torch.empty(c, dtype=acc, device=input.device))
    var = fresh(torch.empty(c, dtype=acc, device=input.device))
    counting = training and num_batches_tracked is not None
    if input.numel() == 0:  # torch's batch_norm leaves the statistics of an empty batch alone
        if counting:
            num_batches_tracked.add_(1)
        if training:
            mean.fill_(float("nan"))
            var.fill_(float("nan"))
        elif c:
            mean.copy_(running_mean)
            var.copy_(running_var)
        return y, mean, var
    plan = _plan(y, backward=False)
    x, xs = _fit(input, plan, y)
    ys = plan.strides(y)
    check_int32_indexable(x, y)
    wt, bs = _param(weight), _param(bias)
    common = dict(A_EXT=plan.a_ext, B_EXT=plan.b_ext, C=c, BANDS=plan.bands, TILES=plan.tiles)
    if training:
        part = fresh(torch.empty(3 * c * plan.chunks, dtype=acc, device=input.device))
        launch(bn_stats_partial_kernel, plan.grid,
               x, part, num_batches_tracked if counting else part, **common, CHUNKS=plan.chunks,
               x_a=xs[0], x_b=xs[1], x_c=xs[2], COUNT_BATCH=counting, ACC=_acc(input), **plan.meta())
        block_c, block_s = _finalize_blocks(plan, c, target_for(y).sm_count)
        launch(bn_stats_finalize_kernel, (cdiv(c, block_c),),
               part, mean, var, running_mean if running_mean is not None else mean,
               running_var if running_var is not None else var, num_batches_tracked if counting else part, c,
               plan.chunks, running_mean.stride(0) if running_mean is not None else 1,
               running_var.stride(0) if running_var is not None else 1,
               *_head_tail(0.0 if momentum is None else momentum), n * h * w,
               UPDATE_MEAN=running_mean is not None, UPDATE_VAR=running_var is not None,
               CUMULATIVE=momentum is None and counting, ACC=_acc(input), BLOCK_C=block_c, BLOCK_S=block_s,
               num_warps=_NUM_WARPS)
        stats, s_stats = (mean, var), (1, 1)
    else:
        stats, s_stats = (running_mean, running_var), (running_mean.stride(0), running_var.stride(0))
    launch(bn_relu_apply_kernel, plan.grid,
           x, y, *stats, wt if wt is not None else mean, bs if bs is not None else mean, mean, var, **common,
           s_mean=s_stats[0], s_var=s_stats[1], x_a=xs[0], x_b=xs[1], x_c=xs[2], y_a=ys[0], y_b=ys[1], y_c=ys[2],
           eps=eps, HAS_WEIGHT=wt is not None, HAS_BIAS=bs is not None, SAVE_STATS=not training, ACT=act,
           ACC=_acc(input), **plan.meta())
    return y, mean, var


@triton_op("cnnkern_triton::batch_norm_relu_backward", mutates_args={})
@launcher
def batch_norm_relu_backward(grad_output: torch.Tensor, input: torch.Tensor, mean: torch.Tensor, var: torch.Tensor,
                             weight: Optional[torch.Tensor], bias: Optional[torch.Tensor], training: bool, eps: float,
                             output_mask: list[bool], activation: str = "relu"
                             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of (input, weight, bias); output_mask says which are wanted (the
    others come back uninitialised). The activation's derivative is recomputed from input."""
    act = _act_code(activation)
    n, c, h, w = input.shape
    acc = _acc_dtype(input)
    dx = fresh(empty_like_format(input.shape, input))
    grad_weight = fresh(torch.empty(c, dtype=weight.dtype if weight is not None else acc, device=input.device))
    grad_bias = fresh(torch.empty(c, dtype=bias.dtype if bias is not None else acc, device=input.device))
    want_dx, want_w, want_b = output_mask
    want_w, want_b = want_w and weight is not None, want_b and bias is not None
    if input.numel() == 0:
        grad_weight.zero_()
        grad_bias.zero_()
        return dx, grad_weight, grad_bias
    plan = _plan(dx, backward=True)
    x, xs = _fit(input, plan, dx)
    dy, dys = _fit(grad_output, plan, dx)
    dxs = plan.strides(dx)
    check_int32_indexable(dy, x, dx)
    wt, bs = _param(weight), _param(bias)
    common = dict(A_EXT=plan.a_ext, B_EXT=plan.b_ext, C=c, BANDS=plan.bands, TILES=plan.tiles)
    affine = dict(HAS_WEIGHT=wt is not None, HAS_BIAS=bs is not None, ACT=act, ACC=_acc(input))
    dummy = mean
    reduce = training and want_dx or want_w or want_b
    coef = fresh(torch.empty(2 * c, dtype=acc, device=input.device)) if training and want_dx else dummy
    if reduce:
        part = fresh(torch.empty(2 * c * plan.chunks, dtype=acc, device=input.device))
        launch(bn_relu_bwd_reduce_kernel, plan.grid,
               dy, x, mean, var, wt if wt is not None else dummy, bs if bs is not None else dummy, part, **common,
               CHUNKS=plan.chunks, dy_a=dys[0], dy_b=dys[1], dy_c=dys[2], x_a=xs[0], x_b=xs[1], x_c=xs[2], eps=eps,
               **affine, **plan.meta())
        block_c, block_s = _finalize_blocks(plan, c, target_for(dx).sm_count)
        launch(bn_relu_bwd_finalize_kernel, (cdiv(c, block_c),),
               part, var, grad_weight, grad_bias, coef, c, plan.chunks, n * h * w, eps,
               TRAINING=training and want_dx, WRITE_WEIGHT=want_w, WRITE_BIAS=want_b, ACC=_acc(input),
               BLOCK_C=block_c, BLOCK_S=block_s, num_warps=_NUM_WARPS)
    if want_dx:
        launch(bn_relu_bwd_dx_kernel, plan.grid,
               dy, x, dx, mean, var, wt if wt is not None else dummy, bs if bs is not None else dummy, coef, **common,
               dy_a=dys[0], dy_b=dys[1], dy_c=dys[2], x_a=xs[0], x_b=xs[1], x_c=xs[2], dx_a=dxs[0], dx_b=dxs[1],
               dx_c=dxs[2], eps=eps, TRAINING=training, **affine, **plan.meta())
    return dx, grad_weight, grad_bias
