"""Conv2d in Triton: forward, input gradient and weight gradient as implicit GEMMs.

    pass          GEMM M                 GEMM N           GEMM K (reduction)
    forward       N·P·Q (outputs)        K/groups         R·S taps × C/groups
    input grad    N·H·W (inputs)         C/groups         R·S taps × K/groups
    weight grad   K/groups               R·S taps × C/g   N·P·Q (split over programs)

Each program owns one BLOCK_M × BLOCK_N tile of one group's GEMM output (the
group is program_id(1)) and walks its reduction in BLOCK_K steps; tl.dot
accumulates in fp32 (fp64 for double) and the tile is written once. Operands
are gathered straight from the 4-D tensors, so im2col happens on the way into
shared memory and never in global memory.

Two families, chosen per pass by shape (`_BLOCKED_MIN_CHANNELS`):

* Channel-blocked (the tensor-core path, every layer with 16 or more channels
  in its reduction). The reduction is ordered (r, s, c): one K step is BLOCK_K
  channels of one tap, so with channels innermost in memory every row of the
  gathered tile is one contiguous run of BLOCK_K elements, which Triton loads
  as 16-byte vectors and, with num_stages > 1, as cp.async copies pipelined
  ahead of the tensor-core MMAs. The tap and channel position advance by
  counters (no division in the main loop). The launcher provides that layout:
  activations whose channel stride is not 1 (NCHW) are copied to channels_last
  first (one read and one write of the tensor, small beside the GEMM, and what
  lets every load of the main loop be a vector), and the weight is packed once
  per call so that one tap's channels are contiguous too: (K, R, S, C/g) for
  the forward pass, and for the input gradient the same layout read with
  input channels as the contiguous GEMM N (16-bit) or (g, C/g, R, S, K/g)
  (fp32: TF32 MMAs want B K-major). A channels_last weight needs no pack for
  the forward and the 16-bit input gradient. Outputs are written through
  their strides in torch's memory format.
  - The input gradient is a gather, one sub-problem per stride phase: input
    pixels h ≡ ph (mod stride) are reached only through the taps r with
    (ph + pad - r·dil) ≡ 0 (mod stride), which are evenly spaced, so each
    phase is a dense convolution over its own taps and no masked tap is ever
    loaded (program_id(2) is the phase).
  - The weight gradient gives each program one tap and BLOCK_N channels of it,
    and splits the N·P·Q reduction over program_id(2), sized from the SM
    count. One split stores dw itself (cast, in the weight's memory format).
    More splits meet through relaxed atomics into the zeroed dw when it is
    fp32 (fp64) and determinism is not asked for, else through per-split
    fp32 partials summed in a fixed order by the finalize kernel, which casts
    and writes the memory format: one launch, or two (_SplitOutput). The bias
    gradient's row-chunked sum follows the same rule (partials only).
* Flattened (first layers: 1 to 15 channels in the reduction, depthwise and
  other thin groups). The reduction index runs over (c, r, s) together, so a
  1- or 3-channel 5×5 layer fills a BLOCK_K of 16 with 16 real products
  instead of padding every tap to 16 channels; its index math divides per
  element, which these small layers afford.

Traffic per tile: its A rows and B columns once per K step (overlapping
windows mostly hit L2), one store; the weight-gradient partials add
splits × |dw| fp32 bytes.
"""
from __future__ import annotations

import os
from typing import List, Optional

import torch
import triton
import triton.language as tl
from torch.library import triton_op

from .._shapes import conv2d_memory_format, conv2d_output_shape, memory_format_of
from ._util import _INTERPRETER_TARGET, Target, check_int32_indexable, launch, launcher, target_for

# ----------------------------------------------------------------------------- tiles

# (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages): the candidates of the
# autotuner (CNNKERN_TRITON_AUTOTUNE=1) for the channel-blocked kernels. The
# default path picks one of them per shape without timing anything
# (`_pick_blocked`), so a new shape costs one compile, not a tuning sweep.
_BLOCKED_CONFIGS = [
    (128, 256, 64, 8, 3),
    (256, 128, 64, 8, 3),
    (128, 128, 64, 8, 4),
    (128, 128, 64, 4, 3),
    (128, 64, 64, 4, 4),
    (64, 128, 64, 4, 4),
    (64, 64, 64, 4, 4),
    (128, 128, 32, 8, 4),
    (128, 64, 32, 4, 4),
    (64, 64, 32, 4, 4),
    (64, 32, 32, 4, 4),
    (32, 32, 32, 4, 3),
    (64, 64, 16, 4, 3),
    (64, 32, 16, 4, 2),
]
# The flattened kernels: every tile their per-element index math affords
# without spilling (128-row tiles spilled or sat at 255 registers there).
_FLAT_CONFIGS = [
    (64, 128, 32, 8, 3),
    (64, 64, 32, 8, 3),
    (32, 32, 32, 4, 3),
    (64, 16, 16, 4, 3),  # few output channels, tiny reduction: the 1- and 3-channel first layers
]
# The interpreter runs one modest tile: autotuning there would only time numpy.
_INTERPRETER_CONFIG = (32, 32, 16, 4, 1)
GROUP_M = 8
# Shared memory a block may claim: sm_90 227 KB, sm_80 163 KB, others 99 KB.
_SMEM_LIMIT = {90: 227 * 1024, 80: 163 * 1024}


def _smem_limit(arch: int) -> int:
    return _SMEM_LIMIT.get(arch, 227 * 1024 if arch > 90 else 99 * 1024)


def _smem_bytes(cfg, itemsize: int) -> int:
    m, n, k, _, stages = cfg
    return max(1, stages) * (m * k + k * n) * itemsize


def _fits(cfg, dtype: torch.dtype, arch: int) -> bool:
    m, n, k, _, _ = cfg
    if dtype == torch.float64:  # double tiles take twice the registers: past 64x64 they spill
        return m * n <= 64 * 64 and k <= 32 and n >= 32
    return _smem_bytes(cfg, dtype.itemsize) <= _smem_limit(arch)


def _candidates(configs, dtype, arch, n, k_per_tap):
    """The configs worth trying: they fit, and their tiles are not far larger than the GEMM."""
    n_cap = max(16, triton.next_power_of_2(n))
    k_cap = max(16, triton.next_power_of_2(k_per_tap))
    fitting = [c for c in configs if _fits(c, dtype, arch)] or configs[-1:]
    kept = [c for c in fitting if c[1] <= n_cap and c[2] <= k_cap]
    return kept or fitting[-1:]


def _pick_blocked(target: Target, dtype: torch.dtype, m: int, n: int, k_per_tap: int, programs_per_tile: int = 1,
                  wide_m: bool = False):
    """One tile for a channel-blocked GEMM of M x N with k_per_tap channels per tap.

    K steps as deep as the channels allow (64 for 16-bit types, 32 for fp32);
    for a 16-bit GEMM with 256 or more columns a 128x256 tile (256x128 with
    wide_m, for the weight gradient whose M side is the cheap one to gather),
    which halves the address arithmetic per MMA against 128x128; as many
    stages as shared memory holds (up to 4); BLOCK_M halved while the grid
    would leave SMs idle."""
    if target.interpreted:
        return _INTERPRETER_CONFIG
    if dtype == torch.float64:
        return (64, 64 if n > 32 else 32, 16, 4, 2)
    k_max = 64 if dtype.itemsize == 2 else 32
    bk = min(k_max, max(16, triton.next_power_of_2(k_per_tap)))
    while bk > 16 and k_per_tap % bk and k_per_tap > bk:  # prefer a depth that divides the channels
        bk //= 2
    bm = min(128, max(64, triton.next_power_of_2(m)))
    bn = 128 if n > 64 else max(16, triton.next_power_of_2(n))
    if dtype.itemsize == 2 and target.arch >= 90:  # on sm_80 the 256-wide accumulators spill
        if wide_m and m >= 256 and n >= 128:
            bm = 256
        elif not wide_m and n >= 256:
            bn = 256
    while bm > 64 and triton.cdiv(m, bm) * triton.cdiv(n, bn) * programs_per_tile < target.sm_count:
        bm //= 2
    warps = 8 if bm * bn >= 128 * 128 else 4
    stages = 4
    while stages > 2 and _smem_bytes((bm, bn, bk, warps, stages), dtype.itemsize) > _smem_limit(target.arch):
        stages -= 1
    return (bm, bn, bk, warps, stages)


def _pick_flat(target: Target, dtype: torch.dtype, n: int, k: int):
    if target.interpreted:
        return _INTERPRETER_CONFIG
    return _candidates(_FLAT_CONFIGS, dtype, target.arch, n, k)[0]


def _autotuning() -> bool:
    return os.environ.get("CNNKERN_TRITON_AUTOTUNE") == "1"


def _meta(cfg) -> dict:
    m, n, k, warps, stages = cfg
    return dict(BLOCK_M=m, BLOCK_N=n, BLOCK_K=k, GROUP_M=GROUP_M, num_warps=warps, num_stages=stages)


def _config(cfg) -> triton.Config:
    m, n, k, warps, stages = cfg
    return triton.Config({"BLOCK_M": m, "BLOCK_N": n, "BLOCK_K": k, "GROUP_M": GROUP_M}, num_warps=warps,
                         num_stages=stages)


def _tuned(kernel, configs, key, zeroed=None):
    """kernel behind an autotuner over `configs`, pruned per call to what fits the call (opt-in path);
    `zeroed`: accumulators to clear before each timed run."""

    def prune(configs, named_args, **kwargs):
        arch = named_args["TUNE_ARCH"]
        if arch == _INTERPRETER_TARGET.arch:  # the interpreter: its one tile, nothing to time
            return [_config(_INTERPRETER_CONFIG)]
        dtype = next(a.dtype for a in named_args.values() if isinstance(a, torch.Tensor))
        n, k = named_args["TUNE_N"], named_args["TUNE_K"]
        as_tuples = {(c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.kwargs["BLOCK_K"], c.num_warps, c.num_stages): c
                     for c in configs if c.kwargs["BLOCK_N"] >= kwargs.get("TAP_CHANNELS", 0)}
        return [as_tuples[t] for t in _candidates(list(as_tuples), dtype, arch, n, k)]

    return triton.autotune(
        configs=[_config(c) for c in configs],
        key=key, prune_configs_by={"early_config_prune": prune}, reset_to_zero=zeroed, cache_results=True)(kernel)


# ----------------------------------------------------------------------------- shared pieces


@triton.jit
def _tile(pid, GEMM_M, GEMM_N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
    # Grouped order: GROUP_M row-tiles sweep the column tiles together, so the
    # B columns they share stay in L2.
    num_m = tl.cdiv(GEMM_M, BLOCK_M)
    num_n = tl.cdiv(GEMM_N, BLOCK_N)
    width = GROUP_M * num_n
    first_m = (pid // width) * GROUP_M
    rows = tl.minimum(num_m - first_m, GROUP_M)
    return first_m + (pid % width) % rows, (pid % width) // rows


@triton.jit
def _inside(i, j, H, W):
    # 0 <= i < H and 0 <= j < W in two unsigned compares: a negative index wraps past H.
    return (i.to(tl.uint32) < H.to(tl.uint32)) & (j.to(tl.uint32) < W.to(tl.uint32))


@triton.jit
def _mma(a, b, acc, DOT_PRECISION: tl.constexpr, DOT_IN_FP32: tl.constexpr):
    if DOT_IN_FP32:
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    return tl.dot(a, b, acc, input_precision=DOT_PRECISION)


# ----------------------------------------------------------------------------- channel-blocked kernels


@triton.jit
def _write(dst, acc, mask, ATOMIC: tl.constexpr):
    # A split reduction's result: relaxed atomic adds into a zeroed buffer of
    # the accumulator's dtype, or a plain store cast to the destination's.
    if ATOMIC:
        tl.atomic_add(dst, acc, mask=mask, sem="relaxed")
    else:
        tl.store(dst, acc.to(dst.dtype.element_ty), mask=mask)


@triton.jit
def conv2d_fwd_blocked_kernel(
    x, w, bias, y,
    H, W, P, Q, C_G, K_G,
    sx_n, sx_h, sx_w, sy_n, sy_k, sy_p, sy_q,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    GEMM_M, TUNE_N, TUNE_K, TUNE_M, TUNE_ARCH,
    R: tl.constexpr, S: tl.constexpr, HAS_BIAS: tl.constexpr, EVEN_K: tl.constexpr, ACC: tl.constexpr,
    DOT_PRECISION: tl.constexpr, DOT_IN_FP32: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    # x: channel stride 1; w: packed (K, R, S, C_G), reduction contiguous.
    pid_m, pid_n = _tile(tl.program_id(0), GEMM_M, K_G, BLOCK_M, BLOCK_N, GROUP_M)
    g = tl.program_id(1)

    # Rows: output pixels (n, p, q) and the top-left input pixel of each window,
    # decoded once; an element's address is this row term plus a scalar tap
    # term plus the channel, all int32 (the launcher checks the extents).
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    m_ok = offs_m < GEMM_M
    q = offs_m % Q
    p = (offs_m // Q) % P
    img = offs_m // (P * Q)
    ih0 = p * stride_h - pad_h
    iw0 = q * stride_w - pad_w
    x_row = img * sx_n + ih0 * sx_h + iw0 * sx_w
    ih0 = tl.where(m_ok, ih0, -(1 << 30))  # rows past the GEMM fail the bounds test below
    x_base = x + g * C_G
    # Columns: this group's output channels, each a contiguous row of the packed weight.
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = offs_n < K_G
    w_col = (g * K_G + offs_n) * (R * S * C_G)
    offs_k = tl.arange(0, BLOCK_K)

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC)
    # K step = BLOCK_K channels of tap (r, s); the counters below replace any division.
    c0 = 0
    s = 0
    dh = 0  # r * dil_h
    dw = 0  # s * dil_w
    x_tap = 0  # dh * sx_h + dw * sx_w
    w_tap = 0  # (r * S + s) * C_G
    for _ in range(0, R * S * tl.cdiv(C_G, BLOCK_K)):
        row_ok = _inside(ih0 + dh, iw0 + dw, H, W)
        cs = c0 + offs_k
        if EVEN_K:
            a_ok = row_ok[:, None]
            b_ok = n_ok[None, :]
        else:
            a_ok = row_ok[:, None] & (cs < C_G)[None, :]
            b_ok = (cs < C_G)[:, None] & n_ok[None, :]
        a = tl.load(x_base + (x_row + x_tap)[:, None] + cs[None, :], mask=a_ok, other=0.0)
        b = tl.load(w + (w_col + w_tap)[None, :] + cs[:, None], mask=b_ok, other=0.0)
        acc = _mma(a, b, acc, DOT_PRECISION, DOT_IN_FP32)
        c0 += BLOCK_K
        next_tap = c0 >= C_G
        c0 = tl.where(next_tap, 0, c0)
        s = tl.where(next_tap, s + 1, s)
        dw = tl.where(next_tap, dw + dil_w, dw)
        x_tap = tl.where(next_tap, x_tap + dil_w * sx_w, x_tap)
        w_tap = tl.where(next_tap, w_tap + C_G, w_tap)
        next_row = s == S
        s = tl.where(next_row, 0, s)
        dw = tl.where(next_row, 0, dw)
        dh = tl.where(next_row, dh + dil_h, dh)
        x_tap = tl.where(next_row, x_tap + dil_h * sx_h - S * dil_w * sx_w, x_tap)

    if HAS_BIAS:
        acc += tl.load(bias + g * K_G + offs_n, mask=n_ok, other=0.0).to(ACC)[None, :]
    y_ptrs = y + (img * sy_n + p * sy_p + q * sy_q)[:, None] + ((g * K_G + offs_n) * sy_k)[None, :]
    tl.store(y_ptrs, acc.to(y.dtype.element_ty), mask=m_ok[:, None] & n_ok[None, :])


@triton.jit
def _first_tap(phase, pad, dil, stride, TAPS: tl.constexpr):
    # The smallest tap t with (phase + pad - t·dil) ≡ 0 (mod stride), or TAPS if none.
    first = TAPS
    for t in tl.static_range(TAPS):
        hit = ((phase + pad - t * dil) % stride == 0) & (first == TAPS)
        first = tl.where(hit, t, first)
    return first


@triton.jit
def conv2d_dgrad_blocked_kernel(
    dy, w, dx,
    H, W, P, Q, C_G, K_G,
    sdy_n, sdy_p, sdy_q, sdx_n, sdx_c, sdx_h, sdx_w, sw_g, sw_k, sw_c, sw_r, sw_s,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    HS, WS, STEP_R, STEP_S,
    GEMM_M, TUNE_N, TUNE_K, TUNE_M, TUNE_ARCH,
    R: tl.constexpr, S: tl.constexpr, EVEN_K: tl.constexpr, ACC: tl.constexpr, DOT_PRECISION: tl.constexpr,
    DOT_IN_FP32: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    # dy: channel stride 1; w: (G, K_G, C_G, R, S) strides sw_*, with sw_k == 1
    # (packed, reduction contiguous) or sw_c == 1 (a channels_last weight).
    # Phase (ph, pw) owns input pixels (ph + i·stride_h, pw + j·stride_w); its
    # taps are r = r0, r0 + STEP_R, ... (STEP_R = stride_h / gcd(stride_h, dil_h)),
    # and tap r reads output row p = i + (ph + pad_h - r·dil_h) / stride_h exactly.
    pid_m, pid_n = _tile(tl.program_id(0), GEMM_M, C_G, BLOCK_M, BLOCK_N, GROUP_M)
    g = tl.program_id(1)
    ph = tl.program_id(2) // stride_w
    pw = tl.program_id(2) % stride_w
    r0 = _first_tap(ph, pad_h, dil_h, stride_h, R)
    s0 = _first_tap(pw, pad_w, dil_w, stride_w, S)
    n_r = tl.where(r0 < R, (R - 1 - r0) // STEP_R + 1, 0)
    n_s = tl.where(s0 < S, (S - 1 - s0) // STEP_S + 1, 0)
    p_first = (ph + pad_h - r0 * dil_h) // stride_h  # exact: stride_h divides it
    q_first = (pw + pad_w - s0 * dil_w) // stride_w
    p_step = STEP_R * dil_h // stride_h  # p moves back this much per tap step
    q_step = STEP_S * dil_w // stride_w

    # Rows: input pixels of this phase, decoded once.
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    j = offs_m % WS
    i = (offs_m // WS) % HS
    img = offs_m // (HS * WS)
    h = ph + i * stride_h
    wi = pw + j * stride_w
    m_ok = (offs_m < GEMM_M) & (h < H) & (wi < W)
    dy_row = img * sdy_n + i * sdy_p + j * sdy_q
    i_row = tl.where(m_ok, i, -(1 << 30))  # rows outside the phase fail the bounds test below
    dy_base = dy + g * K_G
    # Columns: this group's input channels.
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = offs_n < C_G
    w_col = g * sw_g + offs_n * sw_c
    offs_k = tl.arange(0, BLOCK_K)

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC)
    k0 = 0
    r = r0
    s = s0
    ns = 0  # taps of this row done
    dp = p_first
    dq = q_first
    dy_tap = p_first * sdy_p + q_first * sdy_q
    w_tap = r0 * sw_r + s0 * sw_s
    for _ in range(0, n_r * n_s * tl.cdiv(K_G, BLOCK_K)):
        row_ok = _inside(i_row + dp, j + dq, P, Q)
        ks = k0 + offs_k
        if EVEN_K:
            a_ok = row_ok[:, None]
            b_ok = n_ok[None, :]
        else:
            a_ok = row_ok[:, None] & (ks < K_G)[None, :]
            b_ok = (ks < K_G)[:, None] & n_ok[None, :]
        a = tl.load(dy_base + (dy_row + dy_tap)[:, None] + ks[None, :], mask=a_ok, other=0.0)
        b = tl.load(w + (w_col + w_tap)[None, :] + (ks * sw_k)[:, None], mask=b_ok, other=0.0)
        acc = _mma(a, b, acc, DOT_PRECISION, DOT_IN_FP32)
        k0 += BLOCK_K
        next_tap = k0 >= K_G
        k0 = tl.where(next_tap, 0, k0)
        ns = tl.where(next_tap, ns + 1, ns)
        s = tl.where(next_tap, s + STEP_S, s)
        dq = tl.where(next_tap, dq - q_step, dq)
        next_row = ns == n_s
        ns = tl.where(next_row, 0, ns)
        s = tl.where(next_row, s0, s)
        dq = tl.where(next_row, q_first, dq)
        r = tl.where(next_row, r + STEP_R, r)
        dp = tl.where(next_row, dp - p_step, dp)
        dy_tap = dp * sdy_p + dq * sdy_q
        w_tap = r * sw_r + s * sw_s

    dx_ptrs = dx + (img * sdx_n + h * sdx_h + wi * sdx_w)[:, None] + ((g * C_G + offs_n) * sdx_c)[None, :]
    tl.store(dx_ptrs, acc.to(dx.dtype.element_ty), mask=m_ok[:, None] & n_ok[None, :])


@triton.jit
def conv2d_wgrad_blocked_kernel(
    dy, x, out,
    H, W, P, Q, C_G, K_G,
    sdy_n, sdy_p, sdy_q, sx_n, sx_h, sx_w, so_split, so_k, so_c, so_r, so_s,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    NPQ, SPLIT_PIX, TUNE_N, TUNE_K, TUNE_M, TUNE_ARCH,
    R: tl.constexpr, S: tl.constexpr, TAP_CHANNELS: tl.constexpr, ATOMIC: tl.constexpr, DY_FLAT: tl.constexpr,
    ACC: tl.constexpr, DOT_PRECISION: tl.constexpr, DOT_IN_FP32: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    # dy, x: channel stride 1 (DY_FLAT: dy channels_last contiguous, so pixel
    # i's channels start at i·sdy_q and dy needs no pixel decoding).
    # out: dw itself (one split, or the splits' atomic adds) or this split's
    # slice (so_split apart) of the fp32 partials; (k, c, r, s) strides so_*.
    # A program owns output channels [BLOCK_M) x BLOCK_N columns of the
    # (r, s, c) axis, and SPLIT_PIX consecutive output pixels of the reduction
    # (a multiple of every BLOCK_K, so the split does not depend on the tile).
    # TAP_CHANNELS == 0: the columns are BLOCK_N channels of one tap. Otherwise
    # each column tile holds BLOCK_N // TAP_CHANNELS whole taps of TAP_CHANNELS
    # (>= C_G) channels: a layer with few channels (L3: 64) still gets a wide
    # tile, so each gathered dy tile feeds several taps' MMAs.
    CT: tl.constexpr = BLOCK_N if TAP_CHANNELS == 0 else TAP_CHANNELS
    TAPS: tl.constexpr = BLOCK_N // CT
    c_blocks = tl.cdiv(C_G, CT)
    tap_tiles = tl.cdiv(R * S, TAPS)
    pid_m, pid_n = _tile(tl.program_id(0), K_G, tap_tiles * c_blocks * BLOCK_N, BLOCK_M, BLOCK_N, GROUP_M)
    g = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    m_ok = offs_m < K_G
    cols = tl.arange(0, BLOCK_N)
    tap0 = (pid_n // c_blocks) * TAPS
    offs_c = (pid_n % c_blocks) * CT + cols % CT
    tap = tap0 + cols // CT
    c_ok = (offs_c < C_G) & (tap < R * S)
    r = tap // S
    s = tap % S
    h_col = r * dil_h - pad_h  # input row of output row 0 through this column's tap
    w_col = s * dil_w - pad_w
    x_col = g * C_G + offs_c + h_col * sx_h + w_col * sx_w

    # This program's pixels; (img, p, q) of each lane advance by a fixed
    # mixed-radix step with carries, never by division in the loop.
    begin = tl.program_id(2) * SPLIT_PIX
    end = tl.minimum(begin + SPLIT_PIX, NPQ)
    pix = begin + tl.arange(0, BLOCK_K)
    q = pix % Q
    p = (pix // Q) % P
    img = pix // (P * Q)
    step_q = BLOCK_K % Q
    step_p = (BLOCK_K // Q) % P
    step_n = BLOCK_K // (P * Q)
    dy_base = dy + g * K_G + offs_m
    h0 = tap0 // S * dil_h - pad_h  # one tap per tile: its offsets as scalars
    w0 = tap0 % S * dil_w - pad_w

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC)
    for k0 in range(begin, end, BLOCK_K):
        pix = k0 + tl.arange(0, BLOCK_K)
        pix_ok = pix < end
        if TAPS == 1:
            x_ok = (pix_ok & _inside(p * stride_h + h0, q * stride_w + w0, H, W))[:, None] & c_ok[None, :]
        else:
            x_ok = (pix_ok[:, None] & c_ok[None, :]
                    & _inside((p * stride_h)[:, None] + h_col[None, :], (q * stride_w)[:, None] + w_col[None, :],
                              H, W))
        if DY_FLAT:
            dy_col = pix * sdy_q
        else:
            dy_col = img * sdy_n + p * sdy_p + q * sdy_q
        a = tl.load(dy_base[:, None] + dy_col[None, :], mask=m_ok[:, None] & pix_ok[None, :], other=0.0)
        b = tl.load(x + x_col[None, :] + (img * sx_n + p * stride_h * sx_h + q * stride_w * sx_w)[:, None],
                    mask=x_ok, other=0.0)
        if DOT_PRECISION == "tf32":
            # TF32 MMAs read both operands K-major (pixel-contiguous here), which
            # neither tile is. Left as they are, Triton copies them into that
            # layout 4 bytes at a time straight from global memory (one sector per
            # lane); a register op in between makes it load 16-byte vectors and
            # transpose on the way into shared memory instead (5x, estimated).
            a = tl.where(m_ok[:, None], a, 0.0)
            b = tl.where(c_ok[None, :], b, 0.0)
        acc = _mma(a, b, acc, DOT_PRECISION, DOT_IN_FP32)
        q += step_q
        carry = q >= Q
        q = tl.where(carry, q - Q, q)
        p += step_p + carry.to(tl.int32)
        carry = p >= P
        p = tl.where(carry, p - P, p)
        img += step_n + carry.to(tl.int32)

    dst = out + tl.program_id(2) * so_split + ((g * K_G + offs_m) * so_k)[:, None] \
        + (offs_c * so_c + r * so_r + s * so_s)[None, :]
    _write(dst, acc, m_ok[:, None] & c_ok[None, :], ATOMIC)


# ----------------------------------------------------------------------------- flattened kernels (first layers)


@triton.jit
def conv2d_fwd_flat_kernel(
    x, w, bias, y,
    H, W, P, Q,
    sx_n, sx_c, sx_h, sx_w, sw_k, sw_c, sw_r, sw_s, sy_n, sy_k, sy_p, sy_q,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    GEMM_M, GEMM_N, GEMM_K, TUNE_N, TUNE_K, TUNE_M, TUNE_ARCH,
    R: tl.constexpr, S: tl.constexpr, HAS_BIAS: tl.constexpr, ACC: tl.constexpr, DOT_PRECISION: tl.constexpr,
    DOT_IN_FP32: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    pid_m, pid_n = _tile(tl.program_id(0), GEMM_M, GEMM_N, BLOCK_M, BLOCK_N, GROUP_M)
    g = tl.program_id(1)
    c_per_group = GEMM_K // (R * S)
    x_base = x + g * c_per_group * sx_c
    w_base = w + g * GEMM_N * sw_k

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    m_ok = offs_m < GEMM_M
    img = offs_m // (P * Q)
    p = (offs_m // Q) % P
    q = offs_m % Q
    ih0 = p * stride_h - pad_h
    iw0 = q * stride_w - pad_w
    x_row = img * sx_n + ih0 * sx_h + iw0 * sx_w
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = offs_n < GEMM_N

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC)
    for k0 in range(0, GEMM_K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        k_ok = offs_k < GEMM_K
        c = offs_k // (R * S)
        r = (offs_k // S) % R
        s = offs_k % S
        ih = ih0[:, None] + (r * dil_h)[None, :]
        iw = iw0[:, None] + (s * dil_w)[None, :]
        a_ok = m_ok[:, None] & k_ok[None, :] & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
        x_col = c * sx_c + r * dil_h * sx_h + s * dil_w * sx_w
        a = tl.load(x_base + x_row[:, None] + x_col[None, :], mask=a_ok, other=0.0)
        b = tl.load(w_base + (c * sw_c + r * sw_r + s * sw_s)[:, None] + (offs_n * sw_k)[None, :],
                    mask=k_ok[:, None] & n_ok[None, :], other=0.0)
        acc = _mma(a, b, acc, DOT_PRECISION, DOT_IN_FP32)

    if HAS_BIAS:
        acc += tl.load(bias + g * GEMM_N + offs_n, mask=n_ok, other=0.0).to(ACC)[None, :]
    y_ptrs = y + (img * sy_n + p * sy_p + q * sy_q)[:, None] + ((g * GEMM_N + offs_n) * sy_k)[None, :]
    tl.store(y_ptrs, acc.to(y.dtype.element_ty), mask=m_ok[:, None] & n_ok[None, :])


@triton.jit
def conv2d_dgrad_flat_kernel(
    dy, w, dx,
    H, W, P, Q,
    sdy_n, sdy_k, sdy_p, sdy_q, sw_k, sw_c, sw_r, sw_s, sdx_n, sdx_c, sdx_h, sdx_w,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    GEMM_M, GEMM_N, GEMM_K, TUNE_N, TUNE_K, TUNE_M, TUNE_ARCH,
    R: tl.constexpr, S: tl.constexpr, ACC: tl.constexpr, DOT_PRECISION: tl.constexpr, DOT_IN_FP32: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    # Input pixel h reads output p = (h + pad - r·dil) / stride through tap r
    # when that division is exact; the other taps are masked off.
    pid_m, pid_n = _tile(tl.program_id(0), GEMM_M, GEMM_N, BLOCK_M, BLOCK_N, GROUP_M)
    g = tl.program_id(1)
    k_per_group = GEMM_K // (R * S)
    dy_base = dy + g * k_per_group * sdy_k
    w_base = w + g * k_per_group * sw_k

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    m_ok = offs_m < GEMM_M
    img = offs_m // (H * W)
    h = (offs_m // W) % H
    wi = offs_m % W
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = offs_n < GEMM_N

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC)
    for k0 in range(0, GEMM_K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        k_ok = offs_k < GEMM_K
        kk = offs_k // (R * S)
        r = (offs_k // S) % R
        s = offs_k % S
        th = h[:, None] + pad_h - (r * dil_h)[None, :]
        tw = wi[:, None] + pad_w - (s * dil_w)[None, :]
        p = th // stride_h
        q = tw // stride_w
        a_ok = (m_ok[:, None] & k_ok[None, :] & (th >= 0) & (tw >= 0)
                & (th % stride_h == 0) & (tw % stride_w == 0) & (p < P) & (q < Q))
        a = tl.load(dy_base + (img * sdy_n)[:, None] + (kk * sdy_k)[None, :] + p * sdy_p + q * sdy_q,
                    mask=a_ok, other=0.0)
        b = tl.load(w_base + (kk * sw_k + r * sw_r + s * sw_s)[:, None] + (offs_n * sw_c)[None, :],
                    mask=k_ok[:, None] & n_ok[None, :], other=0.0)
        acc = _mma(a, b, acc, DOT_PRECISION, DOT_IN_FP32)

    dx_ptrs = dx + (img * sdx_n + h * sdx_h + wi * sdx_w)[:, None] + ((g * GEMM_N + offs_n) * sdx_c)[None, :]
    tl.store(dx_ptrs, acc.to(dx.dtype.element_ty), mask=m_ok[:, None] & n_ok[None, :])


@triton.jit
def conv2d_wgrad_flat_kernel(
    dy, x, out,
    H, W, P, Q,
    sdy_n, sdy_k, sdy_p, sdy_q, sx_n, sx_c, sx_h, sx_w, so_split, so_k, so_c, so_r, so_s,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    GEMM_M, GEMM_N, GEMM_K, SPLIT_PIX, TUNE_N, TUNE_K, TUNE_M, TUNE_ARCH,
    R: tl.constexpr, S: tl.constexpr, ATOMIC: tl.constexpr, ACC: tl.constexpr, DOT_PRECISION: tl.constexpr,
    DOT_IN_FP32: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    # out: as in conv2d_wgrad_blocked_kernel.
    pid_m, pid_n = _tile(tl.program_id(0), GEMM_M, GEMM_N, BLOCK_M, BLOCK_N, GROUP_M)
    g = tl.program_id(1)
    k_begin = tl.program_id(2) * SPLIT_PIX
    k_end = tl.minimum(k_begin + SPLIT_PIX, GEMM_K)
    c_per_group = GEMM_N // (R * S)
    dy_base = dy + g * GEMM_M * sdy_k
    x_base = x + g * c_per_group * sx_c

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    m_ok = offs_m < GEMM_M
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = offs_n < GEMM_N
    c = offs_n // (R * S)
    r = (offs_n // S) % R
    s = offs_n % S
    x_col = c * sx_c + r * dil_h * sx_h + s * dil_w * sx_w

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC)
    for k0 in range(k_begin, k_end, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        k_ok = offs_k < k_end
        img = offs_k // (P * Q)
        p = (offs_k // Q) % P
        q = offs_k % Q
        a = tl.load(dy_base + (offs_m * sdy_k)[:, None] + (img * sdy_n + p * sdy_p + q * sdy_q)[None, :],
                    mask=m_ok[:, None] & k_ok[None, :], other=0.0)
        ih0 = p * stride_h - pad_h
        iw0 = q * stride_w - pad_w
        ih = ih0[:, None] + (r * dil_h)[None, :]
        iw = iw0[:, None] + (s * dil_w)[None, :]
        b_ok = k_ok[:, None] & n_ok[None, :] & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
        x_row = img * sx_n + ih0 * sx_h + iw0 * sx_w
        b = tl.load(x_base + x_row[:, None] + x_col[None, :], mask=b_ok, other=0.0)
        acc = _mma(a, b, acc, DOT_PRECISION, DOT_IN_FP32)

    dst = out + tl.program_id(2) * so_split + ((g * GEMM_M + offs_m) * so_k)[:, None] \
        + (c * so_c + r * so_r + s * so_s)[None, :]
    _write(dst, acc, m_ok[:, None] & n_ok[None, :], ATOMIC)


# ----------------------------------------------------------------------------- reductions


@triton.jit
def conv2d_wgrad_finalize_kernel(
    part, dw, SPLITS, K, C_G,
    sp_split, sp_k, sp_c, sp_r, sp_s, sdw_k, sdw_c, sdw_r, sdw_s,
    S: tl.constexpr, ACC: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_C: tl.constexpr,
):
    # Program (i, tap, j): output channels [i·BLOCK_K, ...) x input channels
    # [j·BLOCK_C, ...) of one tap. Sums the splits in order (the deterministic
    # reduction), casts to the weight's dtype and writes its memory format.
    offs_k = tl.program_id(0) * BLOCK_K + tl.arange(0, BLOCK_K)
    offs_c = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)
    r = tl.program_id(1) // S
    s = tl.program_id(1) % S
    ok = (offs_k < K)[:, None] & (offs_c < C_G)[None, :]
    at = offs_k[:, None] * sp_k + offs_c[None, :] * sp_c + r * sp_r + s * sp_s
    total = tl.zeros((BLOCK_K, BLOCK_C), ACC)
    for z in range(0, SPLITS):
        total += tl.load(part + z * sp_split + at, mask=ok, other=0.0)
    out = dw + offs_k[:, None] * sdw_k + offs_c[None, :] * sdw_c + r * sdw_r + s * sdw_s
    tl.store(out, total.to(dw.dtype.element_ty), mask=ok)


@triton.jit
def conv2d_bgrad_kernel(
    dy, part, K, P, Q, ROWS, CHUNK,
    sdy_n, sdy_k, sdy_p, sdy_q,
    BLOCK_C: tl.constexpr, BLOCK_R: tl.constexpr, ACC: tl.constexpr, ROWS_FLAT: tl.constexpr,
):
    # Program (i, j) sums channels [i·BLOCK_C, ...) over rows [j·CHUNK, ...) of
    # the N·P·Q rows into partial j. ROWS_FLAT: dy is channels_last contiguous,
    # so row r sits at r·K and no row needs decoding.
    offs_c = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = offs_c < K
    begin = tl.program_id(1) * CHUNK
    end = tl.minimum(begin + CHUNK, ROWS)
    acc = tl.zeros((BLOCK_R, BLOCK_C), dtype=ACC)
    for r0 in range(begin, end, BLOCK_R):
        rows = r0 + tl.arange(0, BLOCK_R)
        if ROWS_FLAT:
            row_off = rows * K
        else:
            row_off = (rows // (P * Q)) * sdy_n + ((rows // Q) % P) * sdy_p + (rows % Q) * sdy_q
        offs = row_off[:, None] + (offs_c * sdy_k)[None, :]
        acc += tl.load(dy + offs, mask=(rows < end)[:, None] & c_ok[None, :], other=0.0).to(ACC)
    tl.store(part + tl.program_id(1) * K + offs_c, tl.sum(acc, axis=0).to(part.dtype.element_ty), mask=c_ok)


# ----------------------------------------------------------------------------- static-profile work model


def _bytes(*tensors) -> int:
    return int(sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor)))


def _work_fwd_blocked(a, grid):
    trip = a["R"] * a["S"] * triton.cdiv(a["C_G"], a["BLOCK_K"])
    flops = 2 * a["GEMM_M"] * a["K_G"] * a["C_G"] * a["R"] * a["S"] * grid[1]
    return dict(trip_count=trip, flops=flops, bytes=_bytes(a["x"], a["w"], a["y"]))


def _work_dgrad_blocked(a, grid):
    trip = triton.cdiv(a["R"], a["STEP_R"]) * triton.cdiv(a["S"], a["STEP_S"]) * triton.cdiv(a["K_G"], a["BLOCK_K"])
    flops = 2 * a["dy"].numel() * a["C_G"] * a["R"] * a["S"]
    return dict(trip_count=trip, flops=flops, bytes=_bytes(a["dy"], a["w"], a["dx"]))


def _work_wgrad_blocked(a, grid):
    flops = 2 * a["NPQ"] * a["K_G"] * a["C_G"] * a["R"] * a["S"] * grid[1]
    return dict(trip_count=triton.cdiv(a["SPLIT_PIX"], a["BLOCK_K"]), flops=flops,
                bytes=_bytes(a["dy"], a["x"], a["out"]))


def _work_flat(a, grid):
    flops = 2 * a["GEMM_M"] * a["GEMM_N"] * a["GEMM_K"] * grid[1]
    trip = triton.cdiv(a.get("SPLIT_PIX", a["GEMM_K"]), a["BLOCK_K"])
    return dict(trip_count=trip, flops=flops, bytes=_bytes(*(a[k] for k in ("x", "w", "y", "dy", "dx", "out") if k in a)))


PROFILE_WORK = {
    "conv2d_fwd_blocked_kernel": _work_fwd_blocked,
    "conv2d_dgrad_blocked_kernel": _work_dgrad_blocked,
    "conv2d_wgrad_blocked_kernel": _work_wgrad_blocked,
    "conv2d_fwd_flat_kernel": _work_flat,
    "conv2d_dgrad_flat_kernel": _work_flat,
    "conv2d_wgrad_flat_kernel": _work_flat,
    "conv2d_wgrad_finalize_kernel": lambda a, grid: dict(trip_count=a["SPLITS"], flops=0,
                                                         bytes=_bytes(a["part"], a["dw"])),
    "conv2d_bgrad_kernel": lambda a, grid: dict(trip_count=triton.cdiv(a["CHUNK"], a["BLOCK_R"]), flops=0,
                                                bytes=_bytes(a["dy"], a["part"])),
}

# ----------------------------------------------------------------------------- launchers

# A reduction of this many channels per tap or more takes the channel-blocked kernels.
_BLOCKED_MIN_CHANNELS = 16
# The autotuner's key buckets GEMM M by its power of two, so a new batch size does not retune.
_TUNE_KEY = ["TUNE_M", "TUNE_N", "TUNE_K", "R", "S", "stride_h", "stride_w", "TUNE_ARCH"]
_TUNED = {
    conv2d_fwd_blocked_kernel: _tuned(conv2d_fwd_blocked_kernel, _BLOCKED_CONFIGS, _TUNE_KEY),
    conv2d_dgrad_blocked_kernel: _tuned(conv2d_dgrad_blocked_kernel, _BLOCKED_CONFIGS, _TUNE_KEY),
    conv2d_wgrad_blocked_kernel: _tuned(conv2d_wgrad_blocked_kernel, _BLOCKED_CONFIGS, _TUNE_KEY, zeroed=["out"]),
    conv2d_fwd_flat_kernel: _tuned(conv2d_fwd_flat_kernel, _FLAT_CONFIGS, _TUNE_KEY),
    conv2d_dgrad_flat_kernel: _tuned(conv2d_dgrad_flat_kernel, _FLAT_CONFIGS, _TUNE_KEY),
    conv2d_wgrad_flat_kernel: _tuned(conv2d_wgrad_flat_kernel, _FLAT_CONFIGS, _TUNE_KEY, zeroed=["out"]),
}


def _acc(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _dot_in_fp32(target: Target, dtype: torch.dtype) -> bool:
    # Triton 3.8's interpreter miscomputes tl.dot on bfloat16 tiles (fp32 tiles
    # are exact), so there, and only there, bf16 tiles are widened first. On a
    # GPU the dot stays a native bf16 tensor-core MMA.
    return target.interpreted and dtype == torch.bfloat16


def _dot_precision(dtype: torch.dtype) -> str:
    # fp32 convolutions may use TF32 exactly when nn.Conv2d may (cuDNN's switch).
    return "tf32" if dtype == torch.float32 and torch.backends.cudnn.allow_tf32 else "ieee"


def _geometry(stride, padding, dilation):
    return (stride[0], stride[1], padding[0], padding[1], dilation[0], dilation[1])


def _channels_inner(t: torch.Tensor) -> torch.Tensor:
    """t with channel stride 1 (a channels_last copy when it is not), as the blocked kernels gather it."""
    return t if t.stride(1) == 1 or t.shape[1] == 1 else t.contiguous(memory_format=torch.channels_last)


def backward_grad_output(grad: torch.Tensor, weight: torch.Tensor, groups: int, need_input: bool,
                         need_weight: bool) -> torch.Tensor:
    """dy for the backward launchers: copied to channels_last here, once, when a
    channel-blocked pass will gather it (else each would copy it)."""
    k, c_g = weight.shape[:2]
    blocked = (need_input and k // groups >= _BLOCKED_MIN_CHANNELS) or (need_weight and c_g >= _BLOCKED_MIN_CHANNELS)
    return _channels_inner(grad) if blocked else grad


class _Plan:
    """One GEMM launch: the target, the tile, and what the autotuner's key and pruning read."""

    def __init__(self, target: Target, dtype: torch.dtype, cfg, m: int, n: int, k: int):
        self.target, self.dtype, self.cfg = target, dtype, cfg
        self.tune_args = (n, k, triton.next_power_of_2(max(m, 1)), target.arch)

    @property
    def autotuned(self) -> bool:
        return _autotuning()

    def even(self, channels: int) -> bool:
        """Whether every K step is full: with autotuning, for any of its depths (16, 32, 64)."""
        return channels % (64 if self.autotuned else self.cfg[2]) == 0

    def common(self, r: int, s: int) -> dict:
        return dict(R=r, S=s, ACC=_acc(self.dtype), DOT_PRECISION=_dot_precision(self.dtype),
                    DOT_IN_FP32=_dot_in_fp32(self.target, self.dtype))

    def launch(self, kernel, grid, args, constexprs):
        """grid(BLOCK_M, BLOCK_N) -> the launch grid, evaluated for whichever tile runs."""
        if self.autotuned:
            launch(_TUNED[kernel], lambda meta: grid(meta["BLOCK_M"], meta["BLOCK_N"]),
                   *args, *self.tune_args, **constexprs)
        else:
            launch(kernel, grid(*self.cfg[:2]), *args, *self.tune_args, **constexprs, **_meta(self.cfg))


def _gemm_grid(gemm_m, gemm_n, groups, depth=1):
    return lambda bm, bn: (triton.cdiv(gemm_m, bm) * triton.cdiv(gemm_n, bn), groups, depth)


@triton_op("cnnkern_triton::conv2d", mutates_args={})
@launcher(plans=False)  # conv's host path already costs less than torch's
def conv2d(input: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], stride: List[int],
           padding: List[int], dilation: List[int], groups: int) -> torch.Tensor:
    n, k, p, q = conv2d_output_shape(input, weight, stride, padding, dilation)
    y = torch.empty((n, k, p, q), dtype=input.dtype, device=input.device,
                    memory_format=conv2d_memory_format(input, weight))
    if y.numel() == 0:
        return y
    target = target_for(input)
    _, c_g, r, s = weight.shape
    h, w = input.shape[2:]
    k_g = k // groups
    gemm_m = n * p * q
    if c_g >= _BLOCKED_MIN_CHANNELS:
        x = _channels_inner(input)
        w_packed = weight.permute(0, 2, 3, 1).contiguous()  # (K, R, S, C/g): a view for a channels_last weight
        check_int32_indexable(x, w_packed, y)
        plan = _Plan(target, input.dtype, _pick_blocked(target, input.dtype, gemm_m, k_g, c_g, groups),
                     gemm_m, k_g, c_g)
        plan.launch(conv2d_fwd_blocked_kernel, _gemm_grid(gemm_m, k_g, groups), (
            x, w_packed, bias if bias is not None else w_packed, y,
            h, w, p, q, c_g, k_g,
            x.stride(0), x.stride(2), x.stride(3), *y.stride(),
            *_geometry(stride, padding, dilation), gemm_m),
            dict(plan.common(r, s), HAS_BIAS=bias is not None, EVEN_K=plan.even(c_g)))
    else:
        check_int32_indexable(input, weight, y)
        gemm_k = c_g * r * s
        plan = _Plan(target, input.dtype, _pick_flat(target, input.dtype, k_g, gemm_k), gemm_m, k_g, gemm_k)
        plan.launch(conv2d_fwd_flat_kernel, _gemm_grid(gemm_m, k_g, groups), (
            input, weight, bias if bias is not None else weight, y,
            h, w, p, q,
            *input.stride(), *weight.stride(), *y.stride(),
            *_geometry(stride, padding, dilation), gemm_m, k_g, gemm_k),
            dict(plan.common(r, s), HAS_BIAS=bias is not None))
    return y


def _dgrad_weight(w_g: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The input gradient's weight operand, (G, K/g, C/g, R, S) with channels of
    one tap contiguous in one of its GEMM dimensions. A channels_last weight has
    input channels (GEMM N) innermost: 16-bit MMAs take that B operand as it is
    (ldmatrix .trans / wgmma's transposed B), so no copy. Otherwise the weight
    is packed once per call to (G, C/g, R, S, K/g), the reduction over output
    channels contiguous; so is fp32's: sm_90's TF32 wgmma takes B K-major only,
    and fed N-major it loads B 4 bytes at a time (L4 on sm_90, estimated by
    scripts/gpu_profile.py: 0.33x of cuDNN unpacked against 1.38x packed)."""
    if w_g.stride(2) == 1 and dtype.itemsize == 2:
        return w_g
    return w_g.permute(0, 2, 3, 4, 1).contiguous().permute(0, 4, 1, 2, 3)


def _gcd(a: int, b: int) -> int:
    while b:
        a, b = b, a % b
    return a


@triton_op("cnnkern_triton::conv2d_backward_input", mutates_args={})
@launcher(plans=False)  # conv's host path already costs less than torch's
def conv2d_backward_input(grad_output: torch.Tensor, input: torch.Tensor, weight: torch.Tensor, stride: List[int],
                          padding: List[int], dilation: List[int], groups: int) -> torch.Tensor:
    dx = torch.empty(input.shape, dtype=input.dtype, device=input.device,
                     memory_format=conv2d_memory_format(input, weight))
    if dx.numel() == 0:
        return dx
    if grad_output.numel() == 0:
        return dx.zero_()
    target = target_for(input)
    n, c, h, w = input.shape
    k, c_g, r, s = weight.shape
    k_g = k // groups
    p, q = grad_output.shape[2:]
    if k_g >= _BLOCKED_MIN_CHANNELS:
        dy = _channels_inner(grad_output)
        w_g = _dgrad_weight(weight.view(groups, k_g, c_g, r, s), input.dtype)
        check_int32_indexable(dy, w_g, dx)
        hs, ws = triton.cdiv(h, stride[0]), triton.cdiv(w, stride[1])
        gemm_m, phases = n * hs * ws, stride[0] * stride[1]
        plan = _Plan(target, input.dtype, _pick_blocked(target, input.dtype, gemm_m, c_g, k_g, groups * phases),
                     gemm_m, c_g, k_g)
        plan.launch(conv2d_dgrad_blocked_kernel, _gemm_grid(gemm_m, c_g, groups, phases), (
            dy, w_g, dx,
            h, w, p, q, c_g, k_g,
            dy.stride(0), dy.stride(2), dy.stride(3), *dx.stride(), *w_g.stride(),
            *_geometry(stride, padding, dilation),
            hs, ws, stride[0] // _gcd(stride[0], dilation[0]), stride[1] // _gcd(stride[1], dilation[1]), gemm_m),
            dict(plan.common(r, s), EVEN_K=plan.even(k_g)))
    else:
        check_int32_indexable(grad_output, weight, dx)
        gemm_m, gemm_k = n * h * w, k_g * r * s
        plan = _Plan(target, input.dtype, _pick_flat(target, input.dtype, c_g, gemm_k), gemm_m, c_g, gemm_k)
        plan.launch(conv2d_dgrad_flat_kernel, _gemm_grid(gemm_m, c_g, groups), (
            grad_output, weight, dx,
            h, w, p, q,
            *grad_output.stride(), *weight.stride(), *dx.stride(),
            *_geometry(stride, padding, dilation), gemm_m, c_g, gemm_k),
            plan.common(r, s))
    return dx


# Weight-gradient tiles of a layer with few channels per tap hold up to this
# many whole taps (L3 on sm_90, estimated: 1 tap 0.50x of cuDNN, 2 taps 0.44x,
# whose 64x128 tile pays per-element masks for too few MMAs, 4 taps 0.83x).
_WGRAD_TAPS_PER_TILE = 4


def _tap_channels(target: Target, dtype: torch.dtype, c_g: int, taps: int) -> int:
    """Channels per tap in a weight-gradient column tile: 0 for tiles of one
    tap (enough channels to fill one), else the channels padded to a power of
    two, with several whole taps per tile (the widest tile the dtype affords
    would otherwise be mostly empty: L3's 64 channels against 128 or 256)."""
    per_tap = max(16, triton.next_power_of_2(c_g))
    widest = _INTERPRETER_CONFIG[1] if target.interpreted else (256 if dtype.itemsize == 2 else 128)
    if taps == 1 or dtype == torch.float64 or 2 * per_tap > widest:
        return 0
    return per_tap


def _with_block_n(cfg, bn: int, dtype: torch.dtype, target: Target):
    bm, _, bk, warps, stages = cfg
    warps = 8 if bm * bn >= 128 * 128 else warps
    while stages > 2 and _smem_bytes((bm, bn, bk, warps, stages), dtype.itemsize) > _smem_limit(target.arch):
        stages -= 1
    return (bm, bn, bk, warps, stages)


# Pixels of one weight-gradient split are a multiple of this, the deepest BLOCK_K.
_SPLIT_QUANTUM = 64


def _split(target: Target, tiles: int, rows: int):
    """(splits, rows per split) for a reduction over `rows`: two waves of the
    GPU's SMs, each split long enough (8 deep K steps) to fill its pipeline."""
    if target.interpreted:
        splits = 2 if rows > 16 else 1  # the interpreter still exercises the split path
        return splits, triton.cdiv(triton.cdiv(rows, splits), 16) * 16
    splits = max(1, min(triton.cdiv(2 * target.sm_count, tiles), rows // (8 * _SPLIT_QUANTUM)))
    per = triton.cdiv(triton.cdiv(rows, splits), _SPLIT_QUANTUM) * _SPLIT_QUANTUM
    return triton.cdiv(rows, per), per


class _SplitOutput:
    """Where the programs of a reduction split `splits` ways write its result `out`.

    One split stores the result itself (cast to out's dtype, in its memory format):
    one launch. More splits take one of two second halves: relaxed atomic adds
    straight into out, zeroed first, when out has the accumulator's dtype and
    determinism is not asked for; otherwise one accumulator-dtype slice per split
    (laid out as `memory_format`, so the stores are as contiguous as the kernel's
    columns), written whole and summed in a fixed order by the finalize kernel,
    which also casts. Either way two launches, never three."""

    def __init__(self, splits: int, out: torch.Tensor, memory_format=torch.contiguous_format, atomics: bool = True):
        acc = _acc_dtype(out.dtype)
        self.out, self.splits = out, splits
        self.atomic = (atomics and splits > 1 and out.dtype == acc
                       and not torch.are_deterministic_algorithms_enabled())
        if splits == 1 or self.atomic:
            self.buffer, self.split_stride = out.zero_() if self.atomic else out, 0
        else:
            self.buffer = torch.empty((splits * out.shape[0], *out.shape[1:]), dtype=acc, device=out.device,
                                      memory_format=memory_format)
            self.split_stride = out.shape[0] * self.buffer.stride(0)

    @property
    def partial(self) -> bool:
        return self.buffer is not self.out

    def finalize(self, target: Target) -> torch.Tensor:
        """The second pass over the per-split partials, if there are any; returns out."""
        if self.partial:
            out = self.out.view(-1, 1, 1, 1) if self.out.dim() == 1 else self.out
            part = self.buffer.view(-1, 1, 1, 1) if self.buffer.dim() == 1 else self.buffer
            k, c_g, r, s = out.shape
            block = 16 if target.interpreted else 32
            launch(conv2d_wgrad_finalize_kernel, (triton.cdiv(k, block), r * s, triton.cdiv(c_g, block)),
                   part, out, self.splits, k, c_g, self.split_stride, *part.stride(), *out.stride(),
                   S=s, ACC=_acc(out.dtype), BLOCK_K=block, BLOCK_C=block)
        return self.out


@triton_op("cnnkern_triton::conv2d_backward_weight", mutates_args={})
@launcher(plans=False)  # conv's host path already costs less than torch's
def conv2d_backward_weight(grad_output: torch.Tensor, input: torch.Tensor, weight: torch.Tensor, stride: List[int],
                           padding: List[int], dilation: List[int], groups: int) -> torch.Tensor:
    k, c_g, r, s = weight.shape
    dw = torch.empty(weight.shape, dtype=weight.dtype, device=weight.device, memory_format=memory_format_of(weight))
    n, _, p, q = grad_output.shape
    npq = n * p * q
    if npq == 0 or dw.numel() == 0:
        return dw.zero_()
    target = target_for(input)
    k_g = k // groups
    h, w = input.shape[2:]
    geometry = _geometry(stride, padding, dilation)
    if c_g >= _BLOCKED_MIN_CHANNELS:
        dy, x = _channels_inner(grad_output), _channels_inner(input)
        tap_channels = _tap_channels(target, input.dtype, c_g, r * s)
        # BLOCK_N: one tap's channels, or whole taps of tap_channels each
        n = c_g if tap_channels == 0 else tap_channels * min(_WGRAD_TAPS_PER_TILE, triton.next_power_of_2(r * s))
        cfg = _pick_blocked(target, input.dtype, k_g, n, npq, 2 * target.sm_count, wide_m=True)
        if tap_channels:
            cfg = _with_block_n(cfg, n, input.dtype, target)
        plan = _Plan(target, input.dtype, cfg, k_g, r * s * c_g, npq)

        def column_tiles(bn):
            per_tap = bn if tap_channels == 0 else tap_channels
            return triton.cdiv(r * s, bn // per_tap) * triton.cdiv(c_g, per_tap)

        tiles = triton.cdiv(k_g, cfg[0]) * column_tiles(cfg[1]) * groups
        splits, per = _split(target, tiles, npq)
        # partials in (k, r, s, c) order: a tile's columns are channels of a tap
        dst = _SplitOutput(splits, dw, torch.channels_last)
        check_int32_indexable(dy, x, dst.buffer)
        grid = lambda bm, bn: (triton.cdiv(k_g, bm) * column_tiles(bn), groups, splits)  # noqa: E731
        plan.launch(conv2d_wgrad_blocked_kernel, grid, (
            dy, x, dst.buffer,
            h, w, p, q, c_g, k_g,
            dy.stride(0), dy.stride(2), dy.stride(3), x.stride(0), x.stride(2), x.stride(3),
            dst.split_stride, *dst.buffer.stride(),
            *geometry, npq, per),
            dict(plan.common(r, s), TAP_CHANNELS=tap_channels, ATOMIC=dst.atomic,
                 DY_FLAT=dy.is_contiguous(memory_format=torch.channels_last)))
    else:
        gemm_m, gemm_n = k_g, c_g * r * s
        plan = _Plan(target, input.dtype, _pick_flat(target, input.dtype, gemm_n, npq), gemm_m, gemm_n, npq)
        tiles = triton.cdiv(gemm_m, plan.cfg[0]) * triton.cdiv(gemm_n, plan.cfg[1]) * groups
        splits, per = _split(target, tiles, npq)
        dst = _SplitOutput(splits, dw)  # partials in (k, c, r, s) order, the flat kernel's columns
        check_int32_indexable(grad_output, input, dst.buffer)
        plan.launch(conv2d_wgrad_flat_kernel, _gemm_grid(gemm_m, gemm_n, groups, splits), (
            grad_output, input, dst.buffer,
            h, w, p, q,
            *grad_output.stride(), *input.stride(), dst.split_stride, *dst.buffer.stride(),
            *geometry, gemm_m, gemm_n, npq, per),
            dict(plan.common(r, s), ATOMIC=dst.atomic))
    return dst.finalize(target)


_BGRAD_BLOCK_C, _BGRAD_BLOCK_R = 32, 64


@triton_op("cnnkern_triton::conv2d_backward_bias", mutates_args={})
@launcher(plans=False)  # conv's host path already costs less than torch's
def conv2d_backward_bias(grad_output: torch.Tensor) -> torch.Tensor:
    n, k, p, q = grad_output.shape
    db = torch.empty((k,), dtype=grad_output.dtype, device=grad_output.device)
    rows = n * p * q
    if k == 0:
        return db
    if rows == 0:
        return db.zero_()
    check_int32_indexable(grad_output)
    target = target_for(grad_output)
    col_blocks = triton.cdiv(k, _BGRAD_BLOCK_C)
    # Row chunks: enough programs for two waves; each chunk's sum is a partial,
    # and the partials meet in order in the finalize (deterministic, no atomics).
    chunks, per = _split(target, col_blocks, rows)
    dst = _SplitOutput(chunks, db, atomics=False)  # the kernel stores each chunk's sum
    launch(conv2d_bgrad_kernel, (col_blocks, chunks),
           grad_output, dst.buffer, k, p, q, rows, per, *grad_output.stride(),
           BLOCK_C=_BGRAD_BLOCK_C, BLOCK_R=_BGRAD_BLOCK_R, ACC=_acc(grad_output.dtype),
           ROWS_FLAT=grad_output.is_contiguous(memory_format=torch.channels_last))
    return dst.finalize(target)
