"""Max, average and adaptive-average pooling in Triton, forward and backward.

Pooling moves bytes rather than doing arithmetic: the floor of a launch is one
read of what it reads and one write of what it writes, so every kernel is laid
out for wide contiguous accesses and keeps integer work off the per-tap path.
The window geometry (kernel, stride, padding, dilation) is compile-time, so tap
coordinates are adds of constants and the divisions that remain are by
constants. Tiles are power-of-two blocks of (n, h, w) pixels or (plane, row)
rows: runtime sizes divide the program id once, and a lane's coordinates are
shifts and masks (the general NCHW fallback divides once per tile row).

Forward (a program owns a 2-D tile of outputs; a window's taps are unrolled up
to 16 taps, larger windows loop over kernel rows at runtime so that registers
hold one row's loads; the tile shrinks with the loads in flight):
- channels_last ("nhwc"): tile [BLOCK_P pixels, BLOCK_C channels], channels
  innermost, so each tap of a row is a contiguous run of channels (16-byte
  vectors when C % 16 == 0).
- NCHW with kernel == stride, no padding or dilation and windows inside the
  input ("strip"): for each kernel row kh a program loads a contiguous
  [BLOCK_R, BLOCK_OW*KW] strip of input rows, splits it into its KW columns
  (tl.reshape + tl.split, in registers) and reduces those; rows are
  (plane (n, c), oh).
- anything else ("rows": strided, padded, dilated, overlapping, ceil_mode with
  a partial window): tile [BLOCK_R rows (n, c, oh), BLOCK_OW], per-tap loads.
Inputs are read once from HBM when windows do not overlap (kernel == stride);
overlapping windows re-read neighbours from L1/L2. Each access of a tile uses
one register layout (contiguity hints where a narrow tensor, e.g. the 1-byte
offsets, would pick another), so tiles do not pass through shared memory; the
exceptions are int64 indices (return_indices=True) and fp64 4-column strips in
backward, whose 16-byte vectors hold fewer elements than a thread's tile row.

Backward passes are gathers: a program owns input positions and sums the
windows that cover them. Nothing is scattered, no atomics, the result is
deterministic. With kernel == stride (no dilation) a pixel lies in exactly one
window (one division by a constant per row); otherwise the window quotient and
remainder (h + pad) / stride are computed once per row/column and stepped
per tap with borrows. When the windows tile the input exactly (kernel ==
stride, no padding, sizes divisible) the backward owns windows instead, reads
their dy (and offsets) once and writes each covered pixel once: "windows" for
channels_last, "strip" for NCHW (rows rebuilt with tl.join + tl.reshape).

Max pooling follows torch exactly: -inf padding, a NaN always wins (so NaN
propagates and reports the last NaN's index), ties keep the first index, and an
all -inf window reports torch's seed index (its first in-bounds tap). What the
forward keeps for backward is the winning tap's window offset kh*KW + kw in one
byte (uint8; int16/int32 for windows of more taps); torch's int64 flat indices
h*W + w are written instead only when the caller asks (return_indices=True),
and the backward accepts either.

Global average pooling (output 1x1) is a per-(n, c) reduction over the H*W
plane, a loop of [BLOCK_C, BLOCK_L] tiles; other adaptive sizes use flat
kernels (one output per lane).
"""
from __future__ import annotations

from typing import List, Optional

import torch
import triton
import triton.language as tl
from torch.library import triton_op

from .._shapes import empty_like_format, memory_format_of, pool2d_output_shape
from ._util import (cdiv, check_int32_indexable, contiguous, fresh, launch, launcher, next_power_of_2,
                    position as _position, target_for)

BLOCK = 256  # flat (adaptive) kernels: elements per program

# ----------------------------------------------------------------------------- shared pieces


@triton.jit
def _max_step(best, best_tap, v, tap):
    # torch's rule, tap by tap in window order: a larger value or any NaN replaces the best
    take = (v > best) | (v != v)
    return tl.where(take, v, best), tl.where(take, tap, best_tap)


@triton.jit
def _seed_tap(s0, D: tl.constexpr):
    # torch's seed: the first tap at or past row/column 0 (cnnkern/pool2d_index.h, max_pool_start_index)
    return tl.where(s0 < 0, (D - 1 - s0) // D, 0)


@triton.jit
def _extent(o, size, S: tl.constexpr, P: tl.constexpr, K: tl.constexpr, COUNT_INCLUDE_PAD: tl.constexpr):
    # one axis of cnnkern/pool2d_index.h's avg_pool_divisor: the divisor is the product of both axes
    s0 = o * S - P
    s1 = tl.minimum(s0 + K, size + P)
    if not COUNT_INCLUDE_PAD:
        s0 = tl.maximum(s0, 0)
        s1 = tl.minimum(s1, size)
    # a real window spans >= 1; a masked lane's candidate may not, and must not divide by 0 (0 * inf is NaN)
    return tl.maximum(s1 - s0, 1)


@triton.jit
def _borrow(q, r, S: tl.constexpr, D: tl.constexpr):
    # (q, r) = divmod(t, S) -> divmod(t - D, S) without dividing
    q = q - D // S
    r = r - D % S
    under = r < 0
    return tl.where(under, q - 1, q), tl.where(under, r + S, r)


@triton.jit
def _true(BLOCK: tl.constexpr):
    return tl.full([BLOCK], 1, tl.int1)


@triton.jit
def _comparable(v):
    # bf16 compares in fp32 (exact, NaN kept): the interpreter cannot compare bf16
    if v.dtype == tl.bfloat16:
        return v.to(tl.float32)
    else:
        return v


@triton.jit
def _neg_inf(shape: tl.constexpr, dtype: tl.constexpr):
    # through fp32 (folded when compiled): the interpreter has no bf16 constants
    return tl.full(shape, float("-inf"), tl.float32).to(dtype)


@triton.jit
def _pixels(pid, N, H, W, BN: tl.constexpr, BH: tl.constexpr, BW: tl.constexpr):
    """The program's [BN, BH, BW] block of (n, h, w) pixels, w fastest: the runtime sizes divide the
    program id once; a pixel's coordinates are shifts and masks of constants."""
    blocks_w = tl.cdiv(W, BW)
    blocks_h = tl.cdiv(H, BH)
    i = tl.arange(0, BN * BH * BW)
    w = pid % blocks_w * BW + i % BW
    h = pid // blocks_w % blocks_h * BH + i // BW % BH
    n = pid // (blocks_w * blocks_h) * BN + i // (BW * BH)
    return n, h, w, (n < N) & (h < H) & (w < W)


@triton.jit
def _plane_rows(pid, PLANES, OH, BPL: tl.constexpr, BOH: tl.constexpr):
    """The program's [BPL planes (n, c), BOH output rows] block of strip rows (NCHW, planes contiguous)."""
    blocks_h = tl.cdiv(OH, BOH)
    i = tl.arange(0, BPL * BOH)
    oh = pid % blocks_h * BOH + i % BOH
    plane = pid // blocks_h * BPL + i // BOH
    return plane, oh, (plane < PLANES) & (oh < OH)


# ----------------------------------------------------------------------------- max pooling, forward
# Every kernel handles one kernel row kh of all its windows in a helper; the kernel calls it from an
# unrolled loop (UNROLL: small windows, all loads in flight at once) or a runtime one (large windows,
# which would otherwise hold every tap's load in registers).


@triton.jit
def _max_nhwc_row(x, best, best_tap, row, h, w0, tap0, c, c_ok, p_ok, H, W, sx_h, sx_w, sx_c,
                  KW: tl.constexpr, DW: tl.constexpr, INSIDE: tl.constexpr, VEC: tl.constexpr):
    h_ok = p_ok if INSIDE else p_ok & (h >= 0) & (h < H)
    for kw in tl.static_range(KW):
        w = w0 + kw * DW
        ok = h_ok if INSIDE else h_ok & (w >= 0) & (w < W)
        at = tl.max_contiguous((row + h * sx_h + w * sx_w)[:, None] + c[None, :] * sx_c, [1, VEC])
        v = tl.load(x + at, mask=ok[:, None] & c_ok[None, :], other=float("-inf"))
        best, best_tap = _max_step(best, best_tap, _comparable(v), tap0 + kw)
    return best, best_tap


@triton.jit
def max_pool2d_fwd_nhwc_kernel(
    x, y, taps, N, C, H, W, OH, OW,
    sx_n, sx_c, sx_h, sx_w, sy_n, sy_c, sy_h, sy_w,
    KH: tl.constexpr, KW: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr, PH: tl.constexpr, PW: tl.constexpr,
    DH: tl.constexpr, DW: tl.constexpr, INSIDE: tl.constexpr, FLAT_INDICES: tl.constexpr, UNROLL: tl.constexpr,
    EVEN_C: tl.constexpr, VEC: tl.constexpr, BN: tl.constexpr, BOH: tl.constexpr, BOW: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    n, oh, ow, p_ok = _pixels(tl.program_id(0), N, OH, OW, BN, BOH, BOW)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = _true(BLOCK_C) if EVEN_C else c < C
    h0 = oh * SH - PH
    w0 = ow * SW - PW
    if INSIDE:
        seed = tl.zeros([BLOCK_P], tl.int32)
    else:
        seed = _seed_tap(h0, DH) * KW + _seed_tap(w0, DW)
    best = _comparable(_neg_inf([BLOCK_P, BLOCK_C], x.dtype.element_ty))
    best_tap = tl.broadcast_to(seed[:, None], [BLOCK_P, BLOCK_C])
    row = n * sx_n
    if UNROLL:
        for kh in tl.static_range(KH):
            best, best_tap = _max_nhwc_row(x, best, best_tap, row, h0 + kh * DH, w0, kh * KW, c, c_ok, p_ok, H, W,
                                           sx_h, sx_w, sx_c, KW, DW, INSIDE, VEC)
    else:
        for kh in range(KH):
            best, best_tap = _max_nhwc_row(x, best, best_tap, row, h0 + kh * DH, w0, kh * KW, c, c_ok, p_ok, H, W,
                                           sx_h, sx_w, sx_c, KW, DW, INSIDE, VEC)
    # VEC channels per thread for every access, the 1-byte taps included: one register layout for the tile
    out = tl.max_contiguous((n * sy_n + oh * sy_h + ow * sy_w)[:, None] + c[None, :] * sy_c, [1, VEC])
    mask = p_ok[:, None] & c_ok[None, :]
    tl.store(y + out, best.to(y.dtype.element_ty), mask=mask)
    if FLAT_INDICES:
        at = (h0[:, None] + best_tap // KW * DH) * W + w0[:, None] + best_tap % KW * DW
        tl.store(taps + out, at.to(tl.int64), mask=mask)
    else:
        tl.store(taps + out, best_tap.to(taps.dtype.element_ty), mask=mask)


@triton.jit
def _strip_load(x, x_row, col, r_ok, col_ok, other, ALIGN_X: tl.constexpr):
    # the hint sits on the 2-D sum: on a 1-D row offset `x_row + 0 * sx_h` it would fold away with it
    at = tl.multiple_of(x_row[:, None] + col[None, :], [1, ALIGN_X])
    return tl.load(x + at, mask=r_ok[:, None] & col_ok[None, :], other=other)


@triton.jit
def _max_strip_row(x, best, best_tap, x_row, col, r_ok, col_ok, tap0,
                   KW: tl.constexpr, ALIGN_X: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_OW: tl.constexpr):
    v = _comparable(_strip_load(x, x_row, col, r_ok, col_ok, float("-inf"), ALIGN_X))
    if KW == 1:
        best, best_tap = _max_step(best, best_tap, v, tap0)
    elif KW == 2:
        t0, t1 = tl.split(tl.reshape(v, [BLOCK_R, BLOCK_OW, 2]))
        best, best_tap = _max_step(best, best_tap, t0, tap0)
        best, best_tap = _max_step(best, best_tap, t1, tap0 + 1)
    else:  # KW == 4: column kw = 2j + k of [.., j, k]
        even, odd = tl.split(tl.reshape(v, [BLOCK_R, BLOCK_OW, 2, 2]))
        t0, t2 = tl.split(even)
        t1, t3 = tl.split(odd)
        best, best_tap = _max_step(best, best_tap, t0, tap0)
        best, best_tap = _max_step(best, best_tap, t1, tap0 + 1)
        best, best_tap = _max_step(best, best_tap, t2, tap0 + 2)
        best, best_tap = _max_step(best, best_tap, t3, tap0 + 3)
    return best, best_tap


@triton.jit
def max_pool2d_fwd_strip_kernel(
    x, y, taps, PLANES, W, OH, OW, sx_p, sx_h, sy_p, sy_h,
    KH: tl.constexpr, KW: tl.constexpr, FLAT_INDICES: tl.constexpr, UNROLL: tl.constexpr, EVEN_OW: tl.constexpr,
    ALIGN_X: tl.constexpr, ALIGN_Y: tl.constexpr, OUT_VEC: tl.constexpr, BPL: tl.constexpr, BOH: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_OW: tl.constexpr,
):
    # rows: BPL planes (n, c) x BOH output rows; planes are contiguous (x.stride(0) == C * x.stride(1))
    plane, oh, r_ok = _plane_rows(tl.program_id(0), PLANES, OH, BPL, BOH)
    ow = tl.program_id(1) * BLOCK_OW + tl.arange(0, BLOCK_OW)
    col = tl.program_id(1) * (BLOCK_OW * KW) + tl.arange(0, BLOCK_OW * KW)
    ow_ok = _true(BLOCK_OW) if EVEN_OW else ow < OW
    col_ok = _true(BLOCK_OW * KW) if EVEN_OW else col < OW * KW
    x_row = plane * sx_p + oh * (KH * sx_h)
    best = _comparable(_neg_inf([BLOCK_R, BLOCK_OW], x.dtype.element_ty))
    best_tap = tl.zeros([BLOCK_R, BLOCK_OW], tl.int32)
    if UNROLL:
        for kh in tl.static_range(KH):
            best, best_tap = _max_strip_row(x, best, best_tap, x_row + kh * sx_h, col, r_ok, col_ok, kh * KW,
                                            KW, ALIGN_X, BLOCK_R, BLOCK_OW)
    else:
        for kh in range(KH):
            best, best_tap = _max_strip_row(x, best, best_tap, x_row + kh * sx_h, col, r_ok, col_ok, kh * KW,
                                            KW, ALIGN_X, BLOCK_R, BLOCK_OW)
    # a thread holds OUT_VEC outputs after the split: store them as they are, without a layout change
    out = tl.max_contiguous(tl.multiple_of((plane * sy_p + oh * sy_h)[:, None] + ow[None, :], [1, ALIGN_Y]),
                            [1, OUT_VEC])
    mask = r_ok[:, None] & ow_ok[None, :]
    tl.store(y + out, best.to(y.dtype.element_ty), mask=mask)
    if FLAT_INDICES:
        at = (oh[:, None] * KH + best_tap // KW) * W + ow[None, :] * KW + best_tap % KW
        tl.store(taps + out, at.to(tl.int64), mask=mask)
    else:
        tl.store(taps + out, best_tap.to(taps.dtype.element_ty), mask=mask)


@triton.jit
def _max_rows_row(x, best, best_tap, plane, h, w0, tap0, r_ok, ow_ok, H, W, sx_h, sx_w,
                  KW: tl.constexpr, DW: tl.constexpr, INSIDE: tl.constexpr):
    h_ok = r_ok if INSIDE else r_ok & (h >= 0) & (h < H)
    for kw in tl.static_range(KW):
        w = w0 + kw * DW
        w_ok = ow_ok if INSIDE else ow_ok & (w >= 0) & (w < W)
        v = tl.load(x + (plane + h * sx_h)[:, None] + (w * sx_w)[None, :], mask=h_ok[:, None] & w_ok[None, :],
                    other=float("-inf"))
        best, best_tap = _max_step(best, best_tap, _comparable(v), tap0 + kw)
    return best, best_tap


@triton.jit
def max_pool2d_fwd_rows_kernel(
    x, y, taps, ROWS, C, H, W, OH, OW,
    sx_n, sx_c, sx_h, sx_w, sy_n, sy_c, sy_h, sy_w,
    KH: tl.constexpr, KW: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr, PH: tl.constexpr, PW: tl.constexpr,
    DH: tl.constexpr, DW: tl.constexpr, INSIDE: tl.constexpr, FLAT_INDICES: tl.constexpr, UNROLL: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_OW: tl.constexpr,
):
    r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    ow = tl.program_id(1) * BLOCK_OW + tl.arange(0, BLOCK_OW)
    r_ok = r < ROWS
    ow_ok = ow < OW
    oh = r % OH
    c = (r // OH) % C
    n = r // (OH * C)
    h0 = oh * SH - PH
    w0 = ow * SW - PW
    if INSIDE:
        best_tap = tl.zeros([BLOCK_R, BLOCK_OW], tl.int32)
    else:
        best_tap = (_seed_tap(h0, DH) * KW)[:, None] + _seed_tap(w0, DW)[None, :]
    best = _comparable(_neg_inf([BLOCK_R, BLOCK_OW], x.dtype.element_ty))
    plane = n * sx_n + c * sx_c
    if UNROLL:
        for kh in tl.static_range(KH):
            best, best_tap = _max_rows_row(x, best, best_tap, plane, h0 + kh * DH, w0, kh * KW, r_ok, ow_ok, H, W,
                                           sx_h, sx_w, KW, DW, INSIDE)
    else:
        for kh in range(KH):
            best, best_tap = _max_rows_row(x, best, best_tap, plane, h0 + kh * DH, w0, kh * KW, r_ok, ow_ok, H, W,
                                           sx_h, sx_w, KW, DW, INSIDE)
    out = (n * sy_n + c * sy_c + oh * sy_h)[:, None] + (ow * sy_w)[None, :]
    mask = r_ok[:, None] & ow_ok[None, :]
    tl.store(y + out, best.to(y.dtype.element_ty), mask=mask)
    if FLAT_INDICES:
        at = (h0[:, None] + best_tap // KW * DH) * W + w0[None, :] + best_tap % KW * DW
        tl.store(taps + out, at.to(tl.int64), mask=mask)
    else:
        tl.store(taps + out, best_tap.to(taps.dtype.element_ty), mask=mask)


# ----------------------------------------------------------------------------- max pooling, backward


@triton.jit
def _picked(t, tap, me, FLAT_INDICES: tl.constexpr):
    # did the window pick this input position? t: the saved offset (or flat index) of the window's winner
    if FLAT_INDICES:
        return t == me
    else:
        return t.to(tl.int32) == tap


@triton.jit
def _max_bwd_nhwc_row(dy, taps, acc, row, qh, h_ok, qw, rw, tap0, c, cm, me, OW, sdy_h, sdy_w, sdy_c,
                      KW: tl.constexpr, SW: tl.constexpr, DW: tl.constexpr, FLAT_INDICES: tl.constexpr,
                      VEC: tl.constexpr):
    # tap (kh, kw) covers w from window (w + PW - kw*DW) / SW when that divides exactly
    for kw in tl.static_range(KW):
        if kw > 0:
            qw, rw = _borrow(qw, rw, SW, DW)
        ok = h_ok & (rw == 0) & (qw >= 0) & (qw < OW)
        at = tl.max_contiguous((row + qh * sdy_h + qw * sdy_w)[:, None] + c[None, :] * sdy_c, [1, VEC])
        g = tl.load(dy + at, mask=ok[:, None] & cm, other=0.0)
        t = tl.load(taps + at, mask=ok[:, None] & cm, other=0)
        acc += tl.where(_picked(t, tap0 + kw, me, FLAT_INDICES), g.to(acc.dtype), 0.0)
    return acc


@triton.jit
def max_pool2d_bwd_nhwc_kernel(
    dy, taps, dx, N, C, H, W, OH, OW,
    sdy_n, sdy_c, sdy_h, sdy_w, sdx_n, sdx_c, sdx_h, sdx_w,
    KH: tl.constexpr, KW: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr, PH: tl.constexpr, PW: tl.constexpr,
    DH: tl.constexpr, DW: tl.constexpr, ONE_WINDOW: tl.constexpr, FLAT_INDICES: tl.constexpr, UNROLL: tl.constexpr,
    EVEN_C: tl.constexpr, ACC: tl.constexpr, VEC: tl.constexpr, BN: tl.constexpr, BOH: tl.constexpr,
    BOW: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    # A program owns input pixels (BOH, BOW: blocks of h, w); dy and taps share strides (the launcher ensures it).
    n, h, w, p_ok = _pixels(tl.program_id(0), N, H, W, BN, BOH, BOW)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = _true(BLOCK_C) if EVEN_C else c < C
    me = (h * W + w)[:, None]
    qh = (h + PH) // SH
    rh = h + PH - qh * SH
    qw = (w + PW) // SW
    rw = w + PW - qw * SW
    cm = c_ok[None, :]
    row = n * sdy_n
    acc = tl.zeros([BLOCK_P, BLOCK_C], ACC)
    if ONE_WINDOW:  # stride == kernel: the window (qh, qw) and its tap (rh, rw)
        ok = p_ok & (qh < OH) & (qw < OW)
        at = tl.max_contiguous((row + qh * sdy_h + qw * sdy_w)[:, None] + c[None, :] * sdy_c, [1, VEC])
        g = tl.load(dy + at, mask=ok[:, None] & cm, other=0.0)
        t = tl.load(taps + at, mask=ok[:, None] & cm, other=0)
        acc = tl.where(_picked(t, (rh * KW + rw)[:, None], me, FLAT_INDICES), g.to(ACC), acc)
    elif UNROLL:  # tap kh covers h from window (h + PH - kh*DH) / SH when that divides exactly
        for kh in tl.static_range(KH):
            h_ok = p_ok & (rh == 0) & (qh >= 0) & (qh < OH)
            acc = _max_bwd_nhwc_row(dy, taps, acc, row, qh, h_ok, qw, rw, kh * KW, c, cm, me, OW, sdy_h, sdy_w,
                                    sdy_c, KW, SW, DW, FLAT_INDICES, VEC)
            qh, rh = _borrow(qh, rh, SH, DH)
    else:
        for kh in range(KH):
            h_ok = p_ok & (rh == 0) & (qh >= 0) & (qh < OH)
            acc = _max_bwd_nhwc_row(dy, taps, acc, row, qh, h_ok, qw, rw, kh * KW, c, cm, me, OW, sdy_h, sdy_w,
                                    sdy_c, KW, SW, DW, FLAT_INDICES, VEC)
            qh, rh = _borrow(qh, rh, SH, DH)
    out = tl.max_contiguous((n * sdx_n + h * sdx_h + w * sdx_w)[:, None] + c[None, :] * sdx_c, [1, VEC])
    tl.store(dx + out, acc.to(dx.dtype.element_ty), mask=p_ok[:, None] & cm)


@triton.jit
def _max_bwd_windows_row(dx, g, t, zero, n, oh, ow, kh, c, mask, me, sdx_n, sdx_c, sdx_h, sdx_w,
                         KH: tl.constexpr, KW: tl.constexpr, FLAT_INDICES: tl.constexpr, VEC: tl.constexpr):
    for kw in tl.static_range(KW):
        val = tl.where(_picked(t, kh * KW + kw, me + kw, FLAT_INDICES), g, zero)
        at = (n * sdx_n + (oh * KH + kh) * sdx_h + (ow * KW + kw) * sdx_w)[:, None] + c[None, :] * sdx_c
        tl.store(dx + tl.max_contiguous(at, [1, VEC]), val.to(dx.dtype.element_ty), mask=mask)


@triton.jit
def max_pool2d_bwd_windows_kernel(
    dy, taps, dx, N, C, W, OH, OW,
    sdy_n, sdy_c, sdy_h, sdy_w, sdx_n, sdx_c, sdx_h, sdx_w,
    KH: tl.constexpr, KW: tl.constexpr, FLAT_INDICES: tl.constexpr, UNROLL: tl.constexpr, EVEN_C: tl.constexpr,
    VEC: tl.constexpr, BN: tl.constexpr, BOH: tl.constexpr, BOW: tl.constexpr, BLOCK_P: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    # channels_last, windows tiling the input exactly (kernel == stride, no padding): a program owns
    # windows, reads their dy and taps once and writes each of their KH*KW pixels once.
    n, oh, ow, p_ok = _pixels(tl.program_id(0), N, OH, OW, BN, BOH, BOW)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = _true(BLOCK_C) if EVEN_C else c < C
    mask = p_ok[:, None] & c_ok[None, :]
    at = tl.max_contiguous((n * sdy_n + oh * sdy_h + ow * sdy_w)[:, None] + c[None, :] * sdy_c, [1, VEC])
    g = tl.load(dy + at, mask=mask, other=0.0)
    t = tl.load(taps + at, mask=mask, other=0)
    zero = tl.zeros([BLOCK_P, BLOCK_C], tl.float32).to(g.dtype)  # no bf16 constants in the interpreter
    me = (oh * (KH * W) + ow * KW)[:, None]  # flat index of the window's tap (0, 0), for FLAT_INDICES
    if UNROLL:
        for kh in tl.static_range(KH):
            _max_bwd_windows_row(dx, g, t, zero, n, oh, ow, kh, c, mask, me + kh * W, sdx_n, sdx_c, sdx_h, sdx_w,
                                 KH, KW, FLAT_INDICES, VEC)
    else:
        for kh in range(KH):
            _max_bwd_windows_row(dx, g, t, zero, n, oh, ow, kh, c, mask, me + kh * W, sdx_n, sdx_c, sdx_h, sdx_w,
                                 KH, KW, FLAT_INDICES, VEC)


@triton.jit
def _max_bwd_strip_row(dx, g, t, dx_row, col, r_ok, col_ok, me, tap0, FLAT_INDICES: tl.constexpr,
                       KW: tl.constexpr, ALIGN_DX: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_OW: tl.constexpr):
    # me + kw: the flat index of column kw of this input row (only used with FLAT_INDICES)
    zero = tl.zeros([BLOCK_R, BLOCK_OW], tl.float32).to(g.dtype)  # no bf16 constants in the interpreter
    if KW == 1:
        row = tl.where(_picked(t, tap0, me, FLAT_INDICES), g, zero)
    elif KW == 2:
        row = tl.reshape(tl.join(tl.where(_picked(t, tap0, me, FLAT_INDICES), g, zero),
                                 tl.where(_picked(t, tap0 + 1, me + 1, FLAT_INDICES), g, zero)),
                         [BLOCK_R, BLOCK_OW * 2])
    else:  # KW == 4: [.., j, k] holds column 2j + k
        even = tl.join(tl.where(_picked(t, tap0, me, FLAT_INDICES), g, zero),
                       tl.where(_picked(t, tap0 + 2, me + 2, FLAT_INDICES), g, zero))
        odd = tl.join(tl.where(_picked(t, tap0 + 1, me + 1, FLAT_INDICES), g, zero),
                      tl.where(_picked(t, tap0 + 3, me + 3, FLAT_INDICES), g, zero))
        row = tl.reshape(tl.join(even, odd), [BLOCK_R, BLOCK_OW * 4])
    out = tl.multiple_of(dx_row[:, None] + col[None, :], [1, ALIGN_DX])
    tl.store(dx + out, row.to(dx.dtype.element_ty), mask=r_ok[:, None] & col_ok[None, :])


@triton.jit
def max_pool2d_bwd_strip_kernel(
    dy, taps, dx, PLANES, W, OH, OW, sdy_p, sdy_h, sdx_p, sdx_h,
    KH: tl.constexpr, KW: tl.constexpr, FLAT_INDICES: tl.constexpr, UNROLL: tl.constexpr, EVEN_OW: tl.constexpr,
    ALIGN_DY: tl.constexpr, ALIGN_DX: tl.constexpr, IN_VEC: tl.constexpr, BPL: tl.constexpr, BOH: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_OW: tl.constexpr,
):
    # Windows tile the input exactly: a program owns output rows and writes the KH input rows they cover.
    plane, oh, r_ok = _plane_rows(tl.program_id(0), PLANES, OH, BPL, BOH)
    ow = tl.program_id(1) * BLOCK_OW + tl.arange(0, BLOCK_OW)
    col = tl.program_id(1) * (BLOCK_OW * KW) + tl.arange(0, BLOCK_OW * KW)
    ow_ok = _true(BLOCK_OW) if EVEN_OW else ow < OW
    col_ok = _true(BLOCK_OW * KW) if EVEN_OW else col < OW * KW
    # IN_VEC outputs per thread join into the dx store's vector width (no layout change)
    at = tl.max_contiguous(tl.multiple_of((plane * sdy_p + oh * sdy_h)[:, None] + ow[None, :],
                                          [1, ALIGN_DY]), [1, IN_VEC])
    g = tl.load(dy + at, mask=r_ok[:, None] & ow_ok[None, :], other=0.0)
    t = tl.load(taps + at, mask=r_ok[:, None] & ow_ok[None, :], other=0)
    dx_row = plane * sdx_p + oh * (KH * sdx_h)
    me = oh[:, None] * (KH * W) + ow[None, :] * KW
    if UNROLL:
        for kh in tl.static_range(KH):
            _max_bwd_strip_row(dx, g, t, dx_row + kh * sdx_h, col, r_ok, col_ok, me + kh * W, kh * KW,
                               FLAT_INDICES, KW, ALIGN_DX, BLOCK_R, BLOCK_OW)
    else:
        for kh in range(KH):
            _max_bwd_strip_row(dx, g, t, dx_row + kh * sdx_h, col, r_ok, col_ok, me + kh * W, kh * KW,
                               FLAT_INDICES, KW, ALIGN_DX, BLOCK_R, BLOCK_OW)


@triton.jit
def _max_bwd_rows_row(dy, taps, acc, plane, qh, h_ok, qw, rw, w_ok, tap0, me, OW, sdy_h, sdy_w,
                      KW: tl.constexpr, SW: tl.constexpr, DW: tl.constexpr, FLAT_INDICES: tl.constexpr):
    for kw in tl.static_range(KW):
        if kw > 0:
            qw, rw = _borrow(qw, rw, SW, DW)
        ok = h_ok[:, None] & (w_ok & (rw == 0) & (qw >= 0) & (qw < OW))[None, :]
        at = (plane + qh * sdy_h)[:, None] + (qw * sdy_w)[None, :]
        g = tl.load(dy + at, mask=ok, other=0.0)
        t = tl.load(taps + at, mask=ok, other=0)
        acc += tl.where(_picked(t, tap0 + kw, me, FLAT_INDICES), g.to(acc.dtype), 0.0)
    return acc


@triton.jit
def max_pool2d_bwd_rows_kernel(
    dy, taps, dx, ROWS, C, H, W, OH, OW,
    sdy_n, sdy_c, sdy_h, sdy_w, sdx_n, sdx_c, sdx_h, sdx_w,
    KH: tl.constexpr, KW: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr, PH: tl.constexpr, PW: tl.constexpr,
    DH: tl.constexpr, DW: tl.constexpr, ONE_WINDOW: tl.constexpr, FLAT_INDICES: tl.constexpr, UNROLL: tl.constexpr,
    ACC: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_W: tl.constexpr,
):
    # Rows are input rows (n, c, h), columns input columns w: window quotients per row and per column.
    r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    w = tl.program_id(1) * BLOCK_W + tl.arange(0, BLOCK_W)
    r_ok = r < ROWS
    w_ok = w < W
    h = r % H
    c = (r // H) % C
    n = r // (H * C)
    me = (h * W)[:, None] + w[None, :]
    plane = n * sdy_n + c * sdy_c
    qh = (h + PH) // SH
    rh = h + PH - qh * SH
    qw = (w + PW) // SW
    rw = w + PW - qw * SW
    acc = tl.zeros([BLOCK_R, BLOCK_W], ACC)
    if ONE_WINDOW:
        ok = (r_ok & (qh < OH))[:, None] & (w_ok & (qw < OW))[None, :]
        at = (plane + qh * sdy_h)[:, None] + (qw * sdy_w)[None, :]
        g = tl.load(dy + at, mask=ok, other=0.0)
        t = tl.load(taps + at, mask=ok, other=0)
        acc = tl.where(_picked(t, (rh * KW)[:, None] + rw[None, :], me, FLAT_INDICES), g.to(ACC), acc)
    elif UNROLL:
        for kh in tl.static_range(KH):
            h_ok = r_ok & (rh == 0) & (qh >= 0) & (qh < OH)
            acc = _max_bwd_rows_row(dy, taps, acc, plane, qh, h_ok, qw, rw, w_ok, kh * KW, me, OW, sdy_h, sdy_w,
                                    KW, SW, DW, FLAT_INDICES)
            qh, rh = _borrow(qh, rh, SH, DH)
    else:
        for kh in range(KH):
            h_ok = r_ok & (rh == 0) & (qh >= 0) & (qh < OH)
            acc = _max_bwd_rows_row(dy, taps, acc, plane, qh, h_ok, qw, rw, w_ok, kh * KW, me, OW, sdy_h, sdy_w,
                                    KW, SW, DW, FLAT_INDICES)
            qh, rh = _borrow(qh, rh, SH, DH)
    out = (n * sdx_n + c * sdx_c + h * sdx_h)[:, None] + (w * sdx_w)[None, :]
    tl.store(dx + out, acc.to(dx.dtype.element_ty), mask=r_ok[:, None] & w_ok[None, :])


# ----------------------------------------------------------------------------- average pooling


@triton.jit
def _avg_nhwc_row(x, acc, row, h, w0, c, c_ok, p_ok, H, W, sx_h, sx_w, sx_c,
                  KW: tl.constexpr, INSIDE: tl.constexpr, VEC: tl.constexpr):
    h_ok = p_ok if INSIDE else p_ok & (h >= 0) & (h < H)
    for kw in tl.static_range(KW):
        w = w0 + kw
        ok = h_ok if INSIDE else h_ok & (w >= 0) & (w < W)
        at = tl.max_contiguous((row + h * sx_h + w * sx_w)[:, None] + c[None, :] * sx_c, [1, VEC])
        acc += tl.load(x + at, mask=ok[:, None] & c_ok[None, :], other=0.0).to(acc.dtype)
    return acc


@triton.jit
def avg_pool2d_fwd_nhwc_kernel(
    x, y, N, C, H, W, OH, OW, DIVISOR,
    sx_n, sx_c, sx_h, sx_w, sy_n, sy_c, sy_h, sy_w,
    KH: tl.constexpr, KW: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr, PH: tl.constexpr, PW: tl.constexpr,
    INSIDE: tl.constexpr, COUNT_INCLUDE_PAD: tl.constexpr, UNROLL: tl.constexpr, EVEN_C: tl.constexpr,
    ACC: tl.constexpr, VEC: tl.constexpr, BN: tl.constexpr, BOH: tl.constexpr, BOW: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    n, oh, ow, p_ok = _pixels(tl.program_id(0), N, OH, OW, BN, BOH, BOW)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = _true(BLOCK_C) if EVEN_C else c < C
    h0 = oh * SH - PH
    w0 = ow * SW - PW
    row = n * sx_n
    acc = tl.zeros([BLOCK_P, BLOCK_C], ACC)
    if UNROLL:
        for kh in tl.static_range(KH):
            acc = _avg_nhwc_row(x, acc, row, h0 + kh, w0, c, c_ok, p_ok, H, W, sx_h, sx_w, sx_c, KW, INSIDE, VEC)
    else:
        for kh in range(KH):
            acc = _avg_nhwc_row(x, acc, row, h0 + kh, w0, c, c_ok, p_ok, H, W, sx_h, sx_w, sx_c, KW, INSIDE, VEC)
    if INSIDE:
        area = tl.full([BLOCK_P], KH * KW, tl.int32)
    else:
        area = _extent(oh, H, SH, PH, KH, COUNT_INCLUDE_PAD) * _extent(ow, W, SW, PW, KW, COUNT_INCLUDE_PAD)
    divisor = tl.where(DIVISOR != 0, DIVISOR, area).to(ACC)
    out = tl.max_contiguous((n * sy_n + oh * sy_h + ow * sy_w)[:, None] + c[None, :] * sy_c, [1, VEC])
    tl.store(y + out, (acc / divisor[:, None]).to(y.dtype.element_ty), mask=p_ok[:, None] & c_ok[None, :])


@triton.jit
def _avg_strip_row(x, acc, x_row, col, r_ok, col_ok,
                   KW: tl.constexpr, ALIGN_X: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_OW: tl.constexpr):
    v = _strip_load(x, x_row, col, r_ok, col_ok, 0.0, ALIGN_X).to(acc.dtype)
    if KW == 1:
        return acc + v
    else:
        return acc + tl.sum(tl.reshape(v, [BLOCK_R, BLOCK_OW, KW]), axis=2)


@triton.jit
def avg_pool2d_fwd_strip_kernel(
    x, y, PLANES, OH, OW, DIVISOR, sx_p, sx_h, sy_p, sy_h,
    KH: tl.constexpr, KW: tl.constexpr, UNROLL: tl.constexpr, EVEN_OW: tl.constexpr, ACC: tl.constexpr,
    ALIGN_X: tl.constexpr, ALIGN_Y: tl.constexpr, OUT_VEC: tl.constexpr, BPL: tl.constexpr, BOH: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_OW: tl.constexpr,
):
    plane, oh, r_ok = _plane_rows(tl.program_id(0), PLANES, OH, BPL, BOH)
    ow = tl.program_id(1) * BLOCK_OW + tl.arange(0, BLOCK_OW)
    col = tl.program_id(1) * (BLOCK_OW * KW) + tl.arange(0, BLOCK_OW * KW)
    ow_ok = _true(BLOCK_OW) if EVEN_OW else ow < OW
    col_ok = _true(BLOCK_OW * KW) if EVEN_OW else col < OW * KW
    x_row = plane * sx_p + oh * (KH * sx_h)
    acc = tl.zeros([BLOCK_R, BLOCK_OW], ACC)
    if UNROLL:
        for kh in tl.static_range(KH):
            acc = _avg_strip_row(x, acc, x_row + kh * sx_h, col, r_ok, col_ok, KW, ALIGN_X, BLOCK_R, BLOCK_OW)
    else:
        for kh in range(KH):
            acc = _avg_strip_row(x, acc, x_row + kh * sx_h, col, r_ok, col_ok, KW, ALIGN_X, BLOCK_R, BLOCK_OW)
    divisor = tl.where(DIVISOR != 0, DIVISOR, KH * KW).to(ACC)
    out = tl.max_contiguous(tl.multiple_of((plane * sy_p + oh * sy_h)[:, None] + ow[None, :], [1, ALIGN_Y]),
                            [1, OUT_VEC])
    tl.store(y + out, (acc / divisor).to(y.dtype.element_ty), mask=r_ok[:, None] & ow_ok[None, :])


@triton.jit
def _avg_rows_row(x, acc, plane, h, w0, r_ok, ow_ok, H, W, sx_h, sx_w, KW: tl.constexpr, INSIDE: tl.constexpr):
    h_ok = r_ok if INSIDE else r_ok & (h >= 0) & (h < H)
    for kw in tl.static_range(KW):
        w = w0 + kw
        w_ok = ow_ok if INSIDE else ow_ok & (w >= 0) & (w < W)
        acc += tl.load(x + (plane + h * sx_h)[:, None] + (w * sx_w)[None, :], mask=h_ok[:, None] & w_ok[None, :],
                       other=0.0).to(acc.dtype)
    return acc


@triton.jit
def avg_pool2d_fwd_rows_kernel(
    x, y, ROWS, C, H, W, OH, OW, DIVISOR,
    sx_n, sx_c, sx_h, sx_w, sy_n, sy_c, sy_h, sy_w,
    KH: tl.constexpr, KW: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr, PH: tl.constexpr, PW: tl.constexpr,
    INSIDE: tl.constexpr, COUNT_INCLUDE_PAD: tl.constexpr, UNROLL: tl.constexpr, ACC: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_OW: tl.constexpr,
):
    r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    ow = tl.program_id(1) * BLOCK_OW + tl.arange(0, BLOCK_OW)
    r_ok = r < ROWS
    ow_ok = ow < OW
    oh = r % OH
    c = (r // OH) % C
    n = r // (OH * C)
    h0 = oh * SH - PH
    w0 = ow * SW - PW
    plane = n * sx_n + c * sx_c
    acc = tl.zeros([BLOCK_R, BLOCK_OW], ACC)
    if UNROLL:
        for kh in tl.static_range(KH):
            acc = _avg_rows_row(x, acc, plane, h0 + kh, w0, r_ok, ow_ok, H, W, sx_h, sx_w, KW, INSIDE)
    else:
        for kh in range(KH):
            acc = _avg_rows_row(x, acc, plane, h0 + kh, w0, r_ok, ow_ok, H, W, sx_h, sx_w, KW, INSIDE)
    if INSIDE:
        area = tl.full([BLOCK_R, BLOCK_OW], KH * KW, tl.int32)
    else:
        area = (_extent(oh, H, SH, PH, KH, COUNT_INCLUDE_PAD)[:, None]
                * _extent(ow, W, SW, PW, KW, COUNT_INCLUDE_PAD)[None, :])
    divisor = tl.where(DIVISOR != 0, DIVISOR, area).to(ACC)
    out = (n * sy_n + c * sy_c + oh * sy_h)[:, None] + (ow * sy_w)[None, :]
    tl.store(y + out, (acc / divisor).to(y.dtype.element_ty), mask=r_ok[:, None] & ow_ok[None, :])


@triton.jit
def _avg_bwd_nhwc_row(dy, acc, row, qh, h_ok, qw, rw, c, cm, H, W, OW, DIVISOR, sdy_h, sdy_w, sdy_c,
                      KH: tl.constexpr, KW: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr, PH: tl.constexpr,
                      PW: tl.constexpr, ONE_WINDOW: tl.constexpr, COUNT_INCLUDE_PAD: tl.constexpr,
                      VEC: tl.constexpr):
    for kw in tl.static_range(1 if ONE_WINDOW else KW):
        if kw > 0:
            qw, rw = _borrow(qw, rw, SW, 1)
        ok = h_ok & (qw < OW) if ONE_WINDOW else h_ok & (rw == 0) & (qw >= 0) & (qw < OW)
        area = _extent(qh, H, SH, PH, KH, COUNT_INCLUDE_PAD) * _extent(qw, W, SW, PW, KW, COUNT_INCLUDE_PAD)
        scale = 1.0 / tl.where(DIVISOR != 0, DIVISOR, area).to(acc.dtype)
        at = tl.max_contiguous((row + qh * sdy_h + qw * sdy_w)[:, None] + c[None, :] * sdy_c, [1, VEC])
        acc += tl.load(dy + at, mask=ok[:, None] & cm, other=0.0).to(acc.dtype) * scale[:, None]
    return acc


@triton.jit
def avg_pool2d_bwd_nhwc_kernel(
    dy, dx, N, C, H, W, OH, OW, DIVISOR,
    sdy_n, sdy_c, sdy_h, sdy_w, sdx_n, sdx_c, sdx_h, sdx_w,
    KH: tl.constexpr, KW: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr, PH: tl.constexpr, PW: tl.constexpr,
    ONE_WINDOW: tl.constexpr, COUNT_INCLUDE_PAD: tl.constexpr, UNROLL: tl.constexpr, EVEN_C: tl.constexpr,
    ACC: tl.constexpr, VEC: tl.constexpr, BN: tl.constexpr, BOH: tl.constexpr, BOW: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    n, h, w, p_ok = _pixels(tl.program_id(0), N, H, W, BN, BOH, BOW)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = _true(BLOCK_C) if EVEN_C else c < C
    cm = c_ok[None, :]
    qh = (h + PH) // SH
    rh = h + PH - qh * SH
    qw = (w + PW) // SW
    rw = w + PW - qw * SW
    row = n * sdy_n
    acc = tl.zeros([BLOCK_P, BLOCK_C], ACC)
    if ONE_WINDOW:
        acc = _avg_bwd_nhwc_row(dy, acc, row, qh, p_ok & (qh < OH), qw, rw, c, cm, H, W, OW, DIVISOR, sdy_h, sdy_w,
                                sdy_c, KH, KW, SH, SW, PH, PW, ONE_WINDOW, COUNT_INCLUDE_PAD, VEC)
    elif UNROLL:
        for kh in tl.static_range(KH):
            h_ok = p_ok & (rh == 0) & (qh >= 0) & (qh < OH)
            acc = _avg_bwd_nhwc_row(dy, acc, row, qh, h_ok, qw, rw, c, cm, H, W, OW, DIVISOR, sdy_h, sdy_w, sdy_c,
                                    KH, KW, SH, SW, PH, PW, ONE_WINDOW, COUNT_INCLUDE_PAD, VEC)
            qh, rh = _borrow(qh, rh, SH, 1)
    else:
        for kh in range(KH):
            h_ok = p_ok & (rh == 0) & (qh >= 0) & (qh < OH)
            acc = _avg_bwd_nhwc_row(dy, acc, row, qh, h_ok, qw, rw, c, cm, H, W, OW, DIVISOR, sdy_h, sdy_w, sdy_c,
                                    KH, KW, SH, SW, PH, PW, ONE_WINDOW, COUNT_INCLUDE_PAD, VEC)
            qh, rh = _borrow(qh, rh, SH, 1)
    out = tl.max_contiguous((n * sdx_n + h * sdx_h + w * sdx_w)[:, None] + c[None, :] * sdx_c, [1, VEC])
    tl.store(dx + out, acc.to(dx.dtype.element_ty), mask=p_ok[:, None] & cm)


@triton.jit
def _avg_bwd_windows_row(dx, val, n, oh, ow, kh, c, mask, sdx_n, sdx_c, sdx_h, sdx_w,
                         KH: tl.constexpr, KW: tl.constexpr, VEC: tl.constexpr):
    for kw in tl.static_range(KW):
        at = (n * sdx_n + (oh * KH + kh) * sdx_h + (ow * KW + kw) * sdx_w)[:, None] + c[None, :] * sdx_c
        tl.store(dx + tl.max_contiguous(at, [1, VEC]), val, mask=mask)


@triton.jit
def avg_pool2d_bwd_windows_kernel(
    dy, dx, N, C, OH, OW, DIVISOR,
    sdy_n, sdy_c, sdy_h, sdy_w, sdx_n, sdx_c, sdx_h, sdx_w,
    KH: tl.constexpr, KW: tl.constexpr, UNROLL: tl.constexpr, EVEN_C: tl.constexpr, ACC: tl.constexpr,
    VEC: tl.constexpr, BN: tl.constexpr, BOH: tl.constexpr, BOW: tl.constexpr, BLOCK_P: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    # channels_last, windows tiling the input exactly: each window writes dy / divisor to its pixels.
    n, oh, ow, p_ok = _pixels(tl.program_id(0), N, OH, OW, BN, BOH, BOW)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = _true(BLOCK_C) if EVEN_C else c < C
    mask = p_ok[:, None] & c_ok[None, :]
    at = tl.max_contiguous((n * sdy_n + oh * sdy_h + ow * sdy_w)[:, None] + c[None, :] * sdy_c, [1, VEC])
    g = tl.load(dy + at, mask=mask, other=0.0).to(ACC)
    val = (g / tl.where(DIVISOR != 0, DIVISOR, KH * KW).to(ACC)).to(dx.dtype.element_ty)
    if UNROLL:
        for kh in tl.static_range(KH):
            _avg_bwd_windows_row(dx, val, n, oh, ow, kh, c, mask, sdx_n, sdx_c, sdx_h, sdx_w, KH, KW, VEC)
    else:
        for kh in range(KH):
            _avg_bwd_windows_row(dx, val, n, oh, ow, kh, c, mask, sdx_n, sdx_c, sdx_h, sdx_w, KH, KW, VEC)


@triton.jit
def avg_pool2d_bwd_strip_kernel(
    dy, dx, PLANES, OH, OW, DIVISOR, sdy_p, sdy_h, sdx_p, sdx_h,
    KH: tl.constexpr, KW: tl.constexpr, UNROLL: tl.constexpr, EVEN_OW: tl.constexpr, ACC: tl.constexpr,
    ALIGN_DY: tl.constexpr, ALIGN_DX: tl.constexpr, IN_VEC: tl.constexpr, BPL: tl.constexpr, BOH: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_OW: tl.constexpr,
):
    plane, oh, r_ok = _plane_rows(tl.program_id(0), PLANES, OH, BPL, BOH)
    ow = tl.program_id(1) * BLOCK_OW + tl.arange(0, BLOCK_OW)
    col = tl.program_id(1) * (BLOCK_OW * KW) + tl.arange(0, BLOCK_OW * KW)
    ow_ok = _true(BLOCK_OW) if EVEN_OW else ow < OW
    col_ok = _true(BLOCK_OW * KW) if EVEN_OW else col < OW * KW
    at = tl.max_contiguous(tl.multiple_of((plane * sdy_p + oh * sdy_h)[:, None] + ow[None, :],
                                          [1, ALIGN_DY]), [1, IN_VEC])
    g = tl.load(dy + at, mask=r_ok[:, None] & ow_ok[None, :], other=0.0).to(ACC)
    g = (g / tl.where(DIVISOR != 0, DIVISOR, KH * KW).to(ACC)).to(dx.dtype.element_ty)
    if KW == 1:
        row = g
    elif KW == 2:
        row = tl.reshape(tl.join(g, g), [BLOCK_R, BLOCK_OW * 2])
    else:
        pair = tl.join(g, g)
        row = tl.reshape(tl.join(pair, pair), [BLOCK_R, BLOCK_OW * 4])
    dx_row = plane * sdx_p + oh * (KH * sdx_h)
    mask = r_ok[:, None] & col_ok[None, :]
    if UNROLL:
        for kh in tl.static_range(KH):
            tl.store(dx + tl.multiple_of((dx_row + kh * sdx_h)[:, None] + col[None, :], [1, ALIGN_DX]), row, mask=mask)
    else:
        for kh in range(KH):
            tl.store(dx + tl.multiple_of((dx_row + kh * sdx_h)[:, None] + col[None, :], [1, ALIGN_DX]), row, mask=mask)


@triton.jit
def _avg_bwd_rows_row(dy, acc, plane, qh, h_ok, qw, rw, w_ok, scale_h, W, OW, DIVISOR, sdy_h, sdy_w,
                      KW: tl.constexpr, SW: tl.constexpr, PW: tl.constexpr, ONE_WINDOW: tl.constexpr,
                      COUNT_INCLUDE_PAD: tl.constexpr):
    for kw in tl.static_range(1 if ONE_WINDOW else KW):
        if kw > 0:
            qw, rw = _borrow(qw, rw, SW, 1)
        ok_w = w_ok & (qw < OW) if ONE_WINDOW else w_ok & (rw == 0) & (qw >= 0) & (qw < OW)
        # 1 / divisor as (1 / rows) * (1 / columns); an override is all in scale_h
        scale_w = tl.where(DIVISOR != 0, 1.0, 1.0 / _extent(qw, W, SW, PW, KW, COUNT_INCLUDE_PAD).to(acc.dtype))
        at = (plane + qh * sdy_h)[:, None] + (qw * sdy_w)[None, :]
        g = tl.load(dy + at, mask=h_ok[:, None] & ok_w[None, :], other=0.0).to(acc.dtype)
        acc += g * scale_h[:, None] * scale_w[None, :]
    return acc


@triton.jit
def avg_pool2d_bwd_rows_kernel(
    dy, dx, ROWS, C, H, W, OH, OW, DIVISOR,
    sdy_n, sdy_c, sdy_h, sdy_w, sdx_n, sdx_c, sdx_h, sdx_w,
    KH: tl.constexpr, KW: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr, PH: tl.constexpr, PW: tl.constexpr,
    ONE_WINDOW: tl.constexpr, COUNT_INCLUDE_PAD: tl.constexpr, UNROLL: tl.constexpr, ACC: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_W: tl.constexpr,
):
    r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    w = tl.program_id(1) * BLOCK_W + tl.arange(0, BLOCK_W)
    r_ok = r < ROWS
    w_ok = w < W
    h = r % H
    c = (r // H) % C
    n = r // (H * C)
    plane = n * sdy_n + c * sdy_c
    qh = (h + PH) // SH
    rh = h + PH - qh * SH
    qw = (w + PW) // SW
    rw = w + PW - qw * SW
    acc = tl.zeros([BLOCK_R, BLOCK_W], ACC)
    if ONE_WINDOW:
        scale_h = 1.0 / tl.where(DIVISOR != 0, DIVISOR, _extent(qh, H, SH, PH, KH, COUNT_INCLUDE_PAD)).to(ACC)
        acc = _avg_bwd_rows_row(dy, acc, plane, qh, r_ok & (qh < OH), qw, rw, w_ok, scale_h, W, OW, DIVISOR,
                                sdy_h, sdy_w, KW, SW, PW, ONE_WINDOW, COUNT_INCLUDE_PAD)
    elif UNROLL:
        for kh in tl.static_range(KH):
            h_ok = r_ok & (rh == 0) & (qh >= 0) & (qh < OH)
            scale_h = 1.0 / tl.where(DIVISOR != 0, DIVISOR, _extent(qh, H, SH, PH, KH, COUNT_INCLUDE_PAD)).to(ACC)
            acc = _avg_bwd_rows_row(dy, acc, plane, qh, h_ok, qw, rw, w_ok, scale_h, W, OW, DIVISOR, sdy_h, sdy_w,
                                    KW, SW, PW, ONE_WINDOW, COUNT_INCLUDE_PAD)
            qh, rh = _borrow(qh, rh, SH, 1)
    else:
        for kh in range(KH):
            h_ok = r_ok & (rh == 0) & (qh >= 0) & (qh < OH)
            scale_h = 1.0 / tl.where(DIVISOR != 0, DIVISOR, _extent(qh, H, SH, PH, KH, COUNT_INCLUDE_PAD)).to(ACC)
            acc = _avg_bwd_rows_row(dy, acc, plane, qh, h_ok, qw, rw, w_ok, scale_h, W, OW, DIVISOR, sdy_h, sdy_w,
                                    KW, SW, PW, ONE_WINDOW, COUNT_INCLUDE_PAD)
            qh, rh = _borrow(qh, rh, SH, 1)
    out = (n * sdx_n + c * sdx_c + h * sdx_h)[:, None] + (w * sdx_w)[None, :]
    tl.store(dx + out, acc.to(dx.dtype.element_ty), mask=r_ok[:, None] & w_ok[None, :])


# ----------------------------------------------------------------------------- adaptive average pooling


@triton.jit
def global_avg_pool2d_fwd_kernel(
    x, y, C, L, sx_n, sx_c, sx_l, sy_n, sy_c,
    EVEN_L: tl.constexpr, ACC: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_L: tl.constexpr,
):
    # Output 1x1: program (n, channel block) sums its planes, viewed as L = H*W positions.
    n = tl.program_id(0)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = c < C
    lane = tl.arange(0, BLOCK_L)
    rows = x + n * sx_n + c[:, None] * sx_c
    acc = tl.zeros([BLOCK_C, BLOCK_L], ACC)
    for l0 in range(0, L, BLOCK_L):
        l_ok = _true(BLOCK_L) if EVEN_L else l0 + lane < L
        acc += tl.load(rows + (l0 + lane)[None, :] * sx_l, mask=c_ok[:, None] & l_ok[None, :], other=0.0).to(ACC)
    total = tl.sum(acc, axis=1)
    tl.store(y + n * sy_n + c * sy_c, (total / L).to(y.dtype.element_ty), mask=c_ok)


@triton.jit
def global_avg_pool2d_bwd_kernel(
    dy, dx, C, L, sdy_n, sdy_c, sdx_n, sdx_c, sdx_l,
    EVEN_L: tl.constexpr, ACC: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_L: tl.constexpr,
):
    n = tl.program_id(0)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    lane = tl.program_id(2) * BLOCK_L + tl.arange(0, BLOCK_L)
    c_ok = c < C
    l_ok = _true(BLOCK_L) if EVEN_L else lane < L
    g = tl.load(dy + n * sdy_n + c * sdy_c, mask=c_ok, other=0.0).to(ACC) / L
    val = tl.broadcast_to(g.to(dx.dtype.element_ty)[:, None], [BLOCK_C, BLOCK_L])
    tl.store(dx + n * sdx_n + c[:, None] * sdx_c + lane[None, :] * sdx_l, val, mask=c_ok[:, None] & l_ok[None, :])


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

_NUM_WARPS = 4
_VECTOR_BYTES = 16  # the widest global access (LDG.E.128)


def _acc(dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def _channels_last(t: torch.Tensor) -> bool:
    return t.stride(1) == 1 and t.shape[1] > 1


def _pow2_dividing(n: int, cap: int) -> int:
    return min(n & -n, cap)


def _align(t: torch.Tensor) -> int:
    """What a launcher can promise tl.multiple_of about the first element of a (n, c, h) row: the largest
    power of two up to 16 dividing the strides of dims 0-2 (a dim of size 1 is never stepped)."""
    a = 16
    for d in range(3):
        if t.shape[d] > 1:
            while t.stride(d) % a:
                a //= 2
    return a


_UNROLL_TAPS = 16  # windows up to this many taps are unrolled; larger ones loop over kernel rows at runtime


def _pow2_floor(n: int) -> int:
    return 1 << (max(n, 1).bit_length() - 1)


def _tile_elements(t: torch.Tensor, loads_in_flight: int = 1, vec: int = 1, width: int = 0) -> int:
    """Elements per program (128 threads): about 256 bytes of loaded registers per thread (128 for scalar
    accesses) across the loads an unrolled body keeps in flight, 1 to 16 elements (at least a vector) per
    thread; width: bytes of the widest tensor accessed (int64 indices), default t's. The interpreter
    runs numpy over a tile, where small tiles reach every masked edge in small tests."""
    if target_for(t).interpreted:
        return 64
    # scalar loads: each fills a 4-byte register, and the selects around them cost more registers still
    width = max(width, t.element_size())
    budget, register_bytes = (128, max(width, 4)) if vec == 1 else (256, width)
    per_thread = max(vec, min(16, _pow2_floor(budget // (loads_in_flight * register_bytes))))
    return 128 * per_thread


def _in_flight(g: dict, loads_per_tap: int, unroll: bool) -> int:
    return loads_per_tap * (g["KH"] * g["KW"] if unroll else g["KW"])


def _nhwc_vec(*tensors: torch.Tensor) -> int:
    """Elements per 16-byte vector along channels when every pixel row starts 16-element aligned (the
    JIT proves it only from strides % 16 == 0), else 1: the width the narrow taps are accessed at."""
    aligned = all(t.stride(d) % 16 == 0 for t in tensors for d in (0, 2, 3) if t.shape[d] > 1)
    return _VECTOR_BYTES // tensors[0].element_size() if aligned else 1


def _nhwc_blocks(t: torch.Tensor, channels: int, vec: int, in_flight: int, width: int = 0) -> tuple[int, int]:
    cap = 16 if target_for(t).interpreted else 128
    block_c = min(next_power_of_2(channels), cap)
    return max(1, _tile_elements(t, in_flight, vec, width) // block_c), block_c


def _strip_blocks(t: torch.Tensor, ow: int, kw: int, in_flight: int) -> tuple[int, int, bool]:
    """(BLOCK_R, BLOCK_OW, EVEN_OW) for a strip: whole column blocks when a power of two divides OW
    (no column mask, so the loads stay vectors), else a masked power-of-two block."""
    cap = 4 if target_for(t).interpreted else 64
    block_ow = _pow2_dividing(ow, cap)
    if block_ow < min(ow, 4):
        block_ow = min(next_power_of_2(ow), cap)
    return max(1, _tile_elements(t, in_flight) // (block_ow * kw)), block_ow, ow % block_ow == 0


def _rows_blocks(t: torch.Tensor, width: int, in_flight: int) -> tuple[int, int]:
    block_w = min(next_power_of_2(width), 8 if target_for(t).interpreted else 64)
    return max(1, _tile_elements(t, in_flight) // block_w), block_w


def _geometry(kernel_size, stride, padding, dilation=(1, 1)) -> dict:
    return dict(KH=kernel_size[0], KW=kernel_size[1], SH=stride[0], SW=stride[1], PH=padding[0], PW=padding[1],
                DH=dilation[0], DW=dilation[1])


def _inside(g: dict, h: int, w: int, oh: int, ow: int) -> bool:
    """Every tap of every window is in the input: no bounds masks, max's seed is tap 0, avg divides by KH*KW."""
    return (g["PH"] == 0 and g["PW"] == 0 and (oh - 1) * g["SH"] + (g["KH"] - 1) * g["DH"] < h
            and (ow - 1) * g["SW"] + (g["KW"] - 1) * g["DW"] < w)


def _one_window(g: dict) -> bool:
    """kernel == stride without dilation: each input pixel lies in at most one window."""
    return g["SH"] == g["KH"] and g["SW"] == g["KW"] and g["DH"] == 1 and g["DW"] == 1


def _strip(g: dict, *tensors: torch.Tensor) -> bool:
    return (_one_window(g) and g["PH"] == 0 and g["PW"] == 0 and g["KW"] in (1, 2, 4)
            and all(t.stride(3) == 1 for t in tensors))


def _no_dilation(g: dict) -> dict:
    return {k: v for k, v in g.items() if k not in ("DH", "DW")}


def _tap_dtype(taps: int) -> torch.dtype:
    """The narrowest integer that holds a window offset kh*KW + kw."""
    return torch.uint8 if taps <= 256 else torch.int16 if taps <= 2**15 else torch.int32


def _launch(kernel, grid, *args, **kwargs):
    launch(kernel, grid, *args, **kwargs, num_warps=_NUM_WARPS)


def _block(size: int, cap: int) -> int:
    """A power-of-two tile extent along one dimension: the largest dividing size (no masked lanes), or
    for an odd size the next power of two (masked)."""
    b = _pow2_dividing(size, cap)
    return min(next_power_of_2(size), cap) if b == 1 and size > 1 else b


def _pixel_blocks(n: int, h: int, w: int, block_p: int) -> tuple[dict, int]:
    """[BN, BOH, BOW] pixels of a channels_last tile of about block_p pixels, and the grid size it needs."""
    bw = _block(w, block_p)
    bh = _block(h, max(1, block_p // bw))
    bn = min(next_power_of_2(n), max(1, block_p // (bw * bh)))
    programs = cdiv(n, bn) * cdiv(h, bh) * cdiv(w, bw)
    return dict(BN=bn, BOH=bh, BOW=bw, BLOCK_P=bn * bh * bw), programs


def _plane_blocks(planes: int, oh: int, block_r: int) -> tuple[dict, int]:
    """[BPL planes, BOH rows] of a strip tile of about block_r rows, and the grid size along rows."""
    bh = _block(oh, block_r)
    bpl = min(next_power_of_2(planes), max(1, block_r // bh))
    return dict(BPL=bpl, BOH=bh, BLOCK_R=bpl * bh), cdiv(planes, bpl) * cdiv(oh, bh)


def _planes_contiguous(*tensors: torch.Tensor) -> bool:
    """(n, c) planes one stride apart: a strip row is plane * stride(1) + row * stride(2)."""
    return all(t.shape[0] == 1 or t.stride(0) == t.shape[1] * t.stride(1) for t in tensors)


def _exact_tiling(g: dict, h: int, w: int, oh: int, ow: int) -> bool:
    """Windows of kernel == stride cover every input pixel exactly once."""
    return _one_window(g) and g["PH"] == 0 and g["PW"] == 0 and oh * g["KH"] == h and ow * g["KW"] == w


def _nhwc_launch(kernel, t, channels, vec, in_flight, n, h, w, args, flags, width=0):
    """A channels_last launch: tiles of [pixels (n, h, w), channels]."""
    block_p, block_c = _nhwc_blocks(t, channels, vec, in_flight, width)
    pixels, programs = _pixel_blocks(n, h, w, block_p)
    _launch(kernel, (programs, cdiv(channels, block_c)), *args, **flags, **pixels,
            VEC=min(vec, block_c),  # the contiguity claim covers one channel block at most
            EVEN_C=channels % block_c == 0, BLOCK_C=block_c)


def _pool_forward(kernels, x, y, extra, g, nhwc_flags, strip_flags, rows_flags, divisor=None):
    """Launch the forward of one pooling op on the path x's layout and the geometry allow.
    extra: (taps,) for max pooling; divisor: avg pooling's runtime divisor (0: the window's)."""
    n, c, h, w = x.shape
    oh, ow = y.shape[2:]
    div = () if divisor is None else (divisor,)
    unroll = g["KH"] * g["KW"] <= _UNROLL_TAPS
    nhwc_flags, strip_flags, rows_flags = (dict(f, UNROLL=unroll) for f in (nhwc_flags, strip_flags, rows_flags))
    width = max(t.element_size() for t in (x, *extra))
    if _channels_last(x):
        _nhwc_launch(kernels[0], x, c, _nhwc_vec(x, y), _in_flight(g, 1, unroll), n, oh, ow,
                     (x, y, *extra, n, c, h, w, oh, ow, *div, *x.stride(), *y.stride()), nhwc_flags, width)
    elif _strip(g, x, y) and _inside(g, h, w, oh, ow) and _planes_contiguous(x, y):
        block_r, block_ow, even = _strip_blocks(x, ow, g["KW"], g["KH"] if unroll else 1)
        rows, programs = _plane_blocks(n * c, oh, block_r)
        # a column block starts at a multiple of its width: the alignment claim holds up to that
        align_x = min(_align(x), block_ow * g["KW"])
        out_vec = max(1, min(_VECTOR_BYTES // x.element_size(), align_x) // g["KW"]) if even else 1
        _launch(kernels[1], (programs, cdiv(ow, block_ow)),
                x, y, *extra, n * c, *strip_flags.pop("sizes"), *div, *x.stride()[1:3], *y.stride()[1:3],
                KH=g["KH"], KW=g["KW"], **strip_flags, EVEN_OW=even, ALIGN_X=align_x,
                ALIGN_Y=min(_align(y), block_ow), OUT_VEC=out_vec, **rows, BLOCK_OW=block_ow)
    else:
        block_r, block_ow = _rows_blocks(x, ow, _in_flight(g, 1, unroll))
        rows = n * c * oh
        _launch(kernels[2], (cdiv(rows, block_r), cdiv(ow, block_ow)),
                x, y, *extra, rows, c, h, w, oh, ow, *div, *x.stride(), *y.stride(),
                **rows_flags, BLOCK_R=block_r, BLOCK_OW=block_ow)


def _pool_backward(kernels, dy, extra, dx, g, nhwc_flags, strip_flags, rows_flags, divisor=None):
    """Launch the backward of one pooling op; dy and extra share dx's memory format.
    kernels: (channels_last gather, NCHW strip, NCHW gather, channels_last windows)."""
    n, c, h, w = dx.shape
    oh, ow = dy.shape[2:]
    div = () if divisor is None else (divisor,)
    unroll = g["KH"] * g["KW"] <= _UNROLL_TAPS
    nhwc_flags, strip_flags, rows_flags = (dict(f, UNROLL=unroll) for f in (nhwc_flags, strip_flags, rows_flags))
    loads = 1 + len(extra)  # per covering window: dy, and max pooling's taps
    in_flight = loads if _one_window(g) else _in_flight(g, loads, unroll)
    width = max(t.element_size() for t in (dy, *extra))
    exact = _exact_tiling(g, h, w, oh, ow)
    if _channels_last(dx) and exact:
        sizes = strip_flags.pop("sizes")
        stores = (g["KH"] * g["KW"] if unroll else g["KW"]) // 2  # unrolled stores hold their values too
        _nhwc_launch(kernels[3], dx, c, _nhwc_vec(dy, dx), loads + stores, n, oh, ow,
                     (dy, *extra, dx, n, c, *sizes, *div, *dy.stride(), *dx.stride()),
                     dict(strip_flags, KH=g["KH"], KW=g["KW"]), width)
    elif _channels_last(dx):
        _nhwc_launch(kernels[0], dx, c, _nhwc_vec(dy, dx), in_flight, n, h, w,
                     (dy, *extra, dx, n, c, h, w, oh, ow, *div, *dy.stride(), *dx.stride()), nhwc_flags, width)
    elif _strip(g, dy, dx) and exact and _planes_contiguous(dy, dx):
        block_r, block_ow, even = _strip_blocks(dx, ow, g["KW"], loads)
        rows, programs = _plane_blocks(n * c, oh, block_r)
        align_dx = min(_align(dx), block_ow * g["KW"])
        dx_vec = min(_VECTOR_BYTES // dx.element_size(), align_dx) if even else 1
        _launch(kernels[1], (programs, cdiv(ow, block_ow)),
                dy, *extra, dx, n * c, *strip_flags.pop("sizes"), *div, *dy.stride()[1:3], *dx.stride()[1:3],
                KH=g["KH"], KW=g["KW"], **strip_flags, EVEN_OW=even, ALIGN_DY=min(_align(dy), block_ow),
                ALIGN_DX=align_dx, IN_VEC=max(1, dx_vec // g["KW"]), **rows, BLOCK_OW=block_ow)
    else:
        block_r, block_w = _rows_blocks(dx, w, in_flight)
        rows = n * c * h
        _launch(kernels[2], (cdiv(rows, block_r), cdiv(w, block_w)),
                dy, *extra, dx, rows, c, h, w, oh, ow, *div, *dy.stride(), *dx.stride(),
                **rows_flags, BLOCK_R=block_r, BLOCK_W=block_w)


_MAX_FWD = (max_pool2d_fwd_nhwc_kernel, max_pool2d_fwd_strip_kernel, max_pool2d_fwd_rows_kernel)
_MAX_BWD = (max_pool2d_bwd_nhwc_kernel, max_pool2d_bwd_strip_kernel, max_pool2d_bwd_rows_kernel,
            max_pool2d_bwd_windows_kernel)
_AVG_FWD = (avg_pool2d_fwd_nhwc_kernel, avg_pool2d_fwd_strip_kernel, avg_pool2d_fwd_rows_kernel)
_AVG_BWD = (avg_pool2d_bwd_nhwc_kernel, avg_pool2d_bwd_strip_kernel, avg_pool2d_bwd_rows_kernel,
            avg_pool2d_bwd_windows_kernel)


@triton_op("cnnkern_triton::max_pool2d", mutates_args={})
@launcher
def max_pool2d(input: torch.Tensor, kernel_size: List[int], stride: List[int], padding: List[int],
               dilation: List[int], ceil_mode: bool, return_indices: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(output, what backward needs): torch's int64 flat indices when return_indices, else the winning
    tap's window offset kh*KW + kw in the narrowest integer (uint8 up to 256 taps)."""
    shape = pool2d_output_shape(input, kernel_size, stride, padding, dilation, ceil_mode)
    y = fresh(empty_like_format(shape, input))
    g = _geometry(kernel_size, stride, padding, dilation)
    taps = fresh(empty_like_format(shape, input, torch.int64 if return_indices else _tap_dtype(g["KH"] * g["KW"])))
    if y.numel():
        check_int32_indexable(input, y)
        inside = _inside(g, *input.shape[2:], *shape[2:])
        flags = dict(g, INSIDE=inside, FLAT_INDICES=return_indices)
        _pool_forward(_MAX_FWD, input, y, (taps,), g, flags,
                      dict(sizes=(input.shape[3], shape[2], shape[3]), FLAT_INDICES=return_indices), flags)
    return y, taps


@triton_op("cnnkern_triton::max_pool2d_backward", mutates_args={})
@launcher
def max_pool2d_backward(grad_output: torch.Tensor, input: torch.Tensor, indices: torch.Tensor,
                        kernel_size: List[int], stride: List[int], padding: List[int], dilation: List[int],
                        ceil_mode: bool) -> torch.Tensor:
    """indices: what max_pool2d returned, int64 flat indices or the compact window offsets."""
    dx = fresh(empty_like_format(input.shape, input))
    if dx.numel():
        fmt = memory_format_of(dx)
        grad_output = contiguous(grad_output, fmt)
        indices = contiguous(indices, fmt)
        check_int32_indexable(grad_output, dx)
        g = _geometry(kernel_size, stride, padding, dilation)
        flat = indices.dtype == torch.int64
        flags = dict(g, ONE_WINDOW=_one_window(g), FLAT_INDICES=flat, ACC=_acc(input.dtype))
        _pool_backward(_MAX_BWD, grad_output, (indices,), dx, g, flags,
                       dict(sizes=(input.shape[3], *grad_output.shape[2:]), FLAT_INDICES=flat), flags)
    return dx


@triton_op("cnnkern_triton::avg_pool2d", mutates_args={})
@launcher
def avg_pool2d(input: torch.Tensor, kernel_size: List[int], stride: List[int], padding: List[int], ceil_mode: bool,
               count_include_pad: bool, divisor_override: Optional[int]) -> torch.Tensor:
    shape = pool2d_output_shape(input, kernel_size, stride, padding, (1, 1), ceil_mode)
    y = fresh(empty_like_format(shape, input))
    if y.numel():
        check_int32_indexable(input, y)
        g = _geometry(kernel_size, stride, padding)
        flags = dict(_no_dilation(g), INSIDE=_inside(g, *input.shape[2:], *shape[2:]),
                     COUNT_INCLUDE_PAD=count_include_pad, ACC=_acc(input.dtype))
        _pool_forward(_AVG_FWD, input, y, (), g, flags, dict(sizes=shape[2:], ACC=_acc(input.dtype)), flags,
                      divisor=divisor_override or 0)
    return y


@triton_op("cnnkern_triton::avg_pool2d_backward", mutates_args={})
@launcher
def avg_pool2d_backward(grad_output: torch.Tensor, input: torch.Tensor, kernel_size: List[int], stride: List[int],
                        padding: List[int], ceil_mode: bool, count_include_pad: bool,
                        divisor_override: Optional[int]) -> torch.Tensor:
    dx = fresh(empty_like_format(input.shape, input))
    if dx.numel():
        grad_output = contiguous(grad_output, memory_format_of(dx))
        check_int32_indexable(grad_output, dx)
        g = _geometry(kernel_size, stride, padding)
        flags = dict(_no_dilation(g), ONE_WINDOW=_one_window(g), COUNT_INCLUDE_PAD=count_include_pad,
                     ACC=_acc(input.dtype))
        _pool_backward(_AVG_BWD, grad_output, (), dx, g, flags,
                       dict(sizes=grad_output.shape[2:], ACC=_acc(input.dtype)), flags, divisor=divisor_override or 0)
    return dx


def _max_window(size: int, out: int) -> int:
    return max(((i + 1) * size + out - 1) // out - (i * size) // out for i in range(out))


def _max_cover(size: int, out: int) -> int:
    return max(sum(1 for o in range(out) if (o * size) // out <= i < ((o + 1) * size + out - 1) // out)
               for i in range(size))


def _plane_stride(t: torch.Tensor) -> Optional[int]:
    """The stride of the flattened h*w position, or None when (h, w) do not flatten into one stride."""
    h, w = t.shape[2:]
    if w == 1:
        return t.stride(2)
    if h == 1 or t.stride(2) == w * t.stride(3):
        return t.stride(3)
    return None


def _global_blocks(t: torch.Tensor, channels: int, plane: int, plane_stride: int, programs_per_c: int):
    """(BLOCK_C, BLOCK_L): along the contiguous dimension first, then enough programs to fill the GPU."""
    target, tile = target_for(t), _tile_elements(t)
    if plane_stride == 1:
        block_l = min(next_power_of_2(plane), 16 if target.interpreted else 512)
        block_c, floor_c = max(1, tile // block_l), 1
    else:
        block_c = min(next_power_of_2(channels), 16 if target.interpreted else 64)
        block_l, floor_c = max(1, min(next_power_of_2(plane), tile // block_c)), 8
    block_c = min(block_c, next_power_of_2(channels))
    while block_c > floor_c and programs_per_c * cdiv(channels, block_c) < 2 * target.sm_count:
        block_c //= 2
    return block_c, block_l


@triton_op("cnnkern_triton::adaptive_avg_pool2d", mutates_args={})
@launcher
def adaptive_avg_pool2d(input: torch.Tensor, output_size: List[int]) -> torch.Tensor:
    y = fresh(empty_like_format((*input.shape[:2], *output_size), input))
    if y.numel():
        check_int32_indexable(input, y)
        n, c, h, w = input.shape
        acc = _acc(input.dtype)
        sx_l = _plane_stride(input)
        if list(output_size) == [1, 1] and sx_l is not None:
            block_c, block_l = _global_blocks(input, c, h * w, sx_l, n)
            _launch(global_avg_pool2d_fwd_kernel, (n, cdiv(c, block_c)),
                    input, y, c, h * w, input.stride(0), input.stride(1), sx_l, y.stride(0), y.stride(1),
                    EVEN_L=(h * w) % block_l == 0, ACC=acc, BLOCK_C=block_c, BLOCK_L=block_l)
        else:
            _launch(adaptive_avg_pool2d_fwd_kernel, (cdiv(y.numel(), BLOCK),),
                    input, y, y.numel(), c, h, w, *output_size, *input.stride(), *y.stride(),
                    MAX_KH=_max_window(h, output_size[0]), MAX_KW=_max_window(w, output_size[1]), ACC=acc,
                    CHANNELS_LAST=_channels_last(y), BLOCK=BLOCK)
    return y


@triton_op("cnnkern_triton::adaptive_avg_pool2d_backward", mutates_args={})
@launcher
def adaptive_avg_pool2d_backward(grad_output: torch.Tensor, input: torch.Tensor) -> torch.Tensor:
    dx = fresh(empty_like_format(input.shape, input))
    if dx.numel():
        check_int32_indexable(grad_output, dx)
        n, c, h, w = input.shape
        oh, ow = grad_output.shape[2:]
        acc = _acc(input.dtype)
        sdx_l = _plane_stride(dx)
        if (oh, ow) == (1, 1) and sdx_l is not None:
            block_c, block_l = _global_blocks(dx, c, h * w, sdx_l, n * cdiv(h * w, 512))
            _launch(global_avg_pool2d_bwd_kernel, (n, cdiv(c, block_c), cdiv(h * w, block_l)),
                    grad_output, dx, c, h * w, grad_output.stride(0), grad_output.stride(1),
                    dx.stride(0), dx.stride(1), sdx_l,
                    EVEN_L=(h * w) % block_l == 0, ACC=acc, BLOCK_C=block_c, BLOCK_L=block_l)
        else:
            _launch(adaptive_avg_pool2d_bwd_kernel, (cdiv(dx.numel(), BLOCK),),
                    grad_output, dx, dx.numel(), c, h, w, oh, ow, *grad_output.stride(), *dx.stride(),
                    MAX_COVER_H=_max_cover(h, oh), MAX_COVER_W=_max_cover(w, ow), ACC=acc,
                    CHANNELS_LAST=_channels_last(dx), BLOCK=BLOCK)
    return dx


# ----------------------------------------------------------------------------- static profile (scripts/gpu_profile.py)


def _nbytes(*tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def _work(reads, writes, flops=lambda a: 0, trips=lambda a: 1):
    """The floor of a launch: each tensor it reads read once, each it writes written once."""
    def work(args: dict, grid: tuple) -> dict:
        return dict(trip_count=int(trips(args)), flops=int(flops(args)),
                    bytes=_nbytes(*(args[k] for k in reads + writes)))
    return work


def _window_adds(out):
    return lambda a: a[out].numel() * a["KH"] * a["KW"]


PROFILE_WORK = {
    **{k.__name__: _work(("x",), ("y", "taps")) for k in _MAX_FWD},
    **{k.__name__: _work(("dy", "taps"), ("dx",)) for k in _MAX_BWD},
    **{k.__name__: _work(("x",), ("y",), _window_adds("y")) for k in _AVG_FWD},
    **{k.__name__: _work(("dy",), ("dx",), _window_adds("dy")) for k in _AVG_BWD},
    "global_avg_pool2d_fwd_kernel": _work(("x",), ("y",), lambda a: a["x"].numel(),
                                          lambda a: cdiv(a["L"], a["BLOCK_L"])),
    "global_avg_pool2d_bwd_kernel": _work(("dy",), ("dx",), lambda a: a["dy"].numel()),
    "adaptive_avg_pool2d_fwd_kernel": _work(("x",), ("y",), lambda a: a["x"].numel()),
    "adaptive_avg_pool2d_bwd_kernel": _work(("dy",), ("dx",), lambda a: a["dx"].numel()),
}
