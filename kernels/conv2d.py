"""Conv2d in Triton: forward, input gradient and weight gradient as implicit GEMMs.

    pass          GEMM M            GEMM N          GEMM K (reduction)
    forward       N·P·Q (outputs)   K/groups        C/groups·R·S
    input grad    N·H·W (inputs)    C/groups        K/groups·R·S
    weight grad   K/groups          C/groups·R·S    N·P·Q  (split-K)

Each program owns one BLOCK_M × BLOCK_N tile of one group's GEMM output
(group = program_id(1)) and walks the reduction in BLOCK_K steps. The A and B
tiles are gathered straight from the 4-D tensors through their strides, so
im2col happens in registers and never in memory, and NCHW, channels_last and
strided views take the same path. tl.dot accumulates in fp32 (fp64 for
double); the tile is written once. Traffic per tile: its A rows and B columns
once per K step (re-reads of overlapping windows mostly hit L2), one store.

The reduction index is flattened over (c, r, s) rather than looping over taps
with an inner channel block: a first layer with 1 or 3 input channels and a
5×5 kernel still fills BLOCK_K with 25 or 75 real products instead of padding
C up to 16 on every tap, and configs with BLOCK_K = 16 serve those shapes.

The input gradient gathers dy: input pixel h reads output p = (h + pad - r·dil)
/ stride through tap r when that division is exact, which replaces both
zero-insertion and scattered atomics (for stride s a fraction 1 - 1/s² of the
gathered taps are masked off: the price of a single simple kernel).
The weight gradient's reduction runs over every output pixel of the batch; it
is split over program_id(2) so that a small batch still fills the GPU, and the
splits meet in an fp32 workspace through atomic adds.
"""
from __future__ import annotations

from typing import List, Optional

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

from .._shapes import conv2d_memory_format, conv2d_output_shape, memory_format_of
from ._util import check_int32_indexable, interpreting

# Programs the weight-gradient split aims for: two waves of an H100's 132 SMs.
_WGRAD_TARGET_PROGRAMS = 264


# (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages). Every tile the gathers can
# afford: scripts/triton_aot.py compiles each for sm_80 and sm_90 and fails on
# any spill. 128-row tiles spilled (up to 690 B) or sat at 255 registers in the
# input-gradient kernel, whose per-element stride divisions are the costliest.
_GEMM_CONFIGS = [
    (64, 128, 32, 8, 3),
    (64, 64, 32, 8, 3),
    (32, 32, 32, 4, 3),
    (64, 16, 16, 4, 3),  # few output channels, tiny reduction: the 1- and 3-channel first layers
]
# The interpreter runs one modest config: autotuning there would only time numpy.
_INTERPRETER_CONFIG = (32, 32, 16, 4, 1)


def gemm_configs() -> list[triton.Config]:
    return [
        triton.Config({"BLOCK_M": m, "BLOCK_N": n, "BLOCK_K": k, "GROUP_M": 8}, num_warps=w, num_stages=s)
        for m, n, k, w, s in ([_INTERPRETER_CONFIG] if interpreting() else _GEMM_CONFIGS)
    ]


def config_fits_dtype(kwargs: dict, dtype: torch.dtype) -> bool:
    """Double tiles take twice the registers: past 64x64, or with 16-wide tiles, they spill."""
    if dtype == torch.float64:
        return kwargs["BLOCK_M"] * kwargs["BLOCK_N"] <= 64 * 64 and kwargs["BLOCK_N"] >= 32
    return True


def _prune(configs, named_args, **kwargs):
    """Keep the tiles this dtype affords, then drop tiles far larger than the GEMM."""
    dtype = next(a.dtype for a in named_args.values() if isinstance(a, torch.Tensor))
    fitting = [c for c in configs if config_fits_dtype(c.kwargs, dtype)] or configs
    n_cap = max(16, triton.next_power_of_2(named_args["GEMM_N"]))
    k_cap = max(16, triton.next_power_of_2(named_args["GEMM_K"]))
    kept = [c for c in fitting if c.kwargs["BLOCK_N"] <= n_cap and c.kwargs["BLOCK_K"] <= k_cap]
    return kept or fitting


_AUTOTUNE_KEY = ["GEMM_M", "GEMM_N", "GEMM_K"]


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
def _mma(a, b, acc, DOT_PRECISION: tl.constexpr, DOT_IN_FP32: tl.constexpr):
    if DOT_IN_FP32:
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    return tl.dot(a, b, acc, input_precision=DOT_PRECISION)


@triton.autotune(configs=gemm_configs(), key=_AUTOTUNE_KEY, prune_configs_by={"early_config_prune": _prune})
@triton.jit
def conv2d_fwd_kernel(
    x, w, bias, y,
    H, W, P, Q,
    sx_n, sx_c, sx_h, sx_w, sw_k, sw_c, sw_r, sw_s, sy_n, sy_k, sy_p, sy_q,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    GEMM_M, GEMM_N, GEMM_K,
    R: tl.constexpr, S: tl.constexpr, HAS_BIAS: tl.constexpr, ACC: tl.constexpr, DOT_PRECISION: tl.constexpr,
    DOT_IN_FP32: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    pid_m, pid_n = _tile(tl.program_id(0), GEMM_M, GEMM_N, BLOCK_M, BLOCK_N, GROUP_M)
    g = tl.program_id(1)
    c_per_group = GEMM_K // (R * S)
    # An element's address is a row term (which window) plus a column term
    # (which tap): only those two vectors live in registers, as int32 offsets
    # from a scalar base (the launcher rejects tensors of 2**31 elements or more).
    x_base = x + g * c_per_group * sx_c
    w_base = w + g * GEMM_N * sw_k

    # Rows: output pixels (n, p, q), and the top-left input pixel of each window.
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    m_ok = offs_m < GEMM_M
    img = offs_m // (P * Q)
    p = (offs_m // Q) % P
    q = offs_m % Q
    ih0 = p * stride_h - pad_h
    iw0 = q * stride_w - pad_w
    x_row = img * sx_n + ih0 * sx_h + iw0 * sx_w
    # Columns: this group's output channels.
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


@triton.autotune(configs=gemm_configs(), key=_AUTOTUNE_KEY, prune_configs_by={"early_config_prune": _prune})
@triton.jit
def conv2d_dgrad_kernel(
    dy, w, dx,
    H, W, P, Q,
    sdy_n, sdy_k, sdy_p, sdy_q, sw_k, sw_c, sw_r, sw_s, sdx_n, sdx_c, sdx_h, sdx_w,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    GEMM_M, GEMM_N, GEMM_K,
    R: tl.constexpr, S: tl.constexpr, ACC: tl.constexpr, DOT_PRECISION: tl.constexpr, DOT_IN_FP32: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    pid_m, pid_n = _tile(tl.program_id(0), GEMM_M, GEMM_N, BLOCK_M, BLOCK_N, GROUP_M)
    g = tl.program_id(1)
    k_per_group = GEMM_K // (R * S)
    dy_base = dy + g * k_per_group * sdy_k
    w_base = w + g * k_per_group * sw_k

    # Rows: input pixels (n, h, w).
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    m_ok = offs_m < GEMM_M
    img = offs_m // (H * W)
    h = (offs_m // W) % H
    wi = offs_m % W
    # Columns: this group's input channels.
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = offs_n < GEMM_N

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC)
    for k0 in range(0, GEMM_K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        k_ok = offs_k < GEMM_K
        kk = offs_k // (R * S)
        r = (offs_k // S) % R
        s = offs_k % S
        # Which output reads (h, w) through tap (r, s)? Only one the stride divides exactly.
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


@triton.autotune(configs=gemm_configs(), key=_AUTOTUNE_KEY, prune_configs_by={"early_config_prune": _prune},
                 reset_to_zero=["dw_acc"])
@triton.jit
def conv2d_wgrad_kernel(
    dy, x, dw_acc,
    H, W, P, Q,
    sdy_n, sdy_k, sdy_p, sdy_q, sx_n, sx_c, sx_h, sx_w,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    GEMM_M, GEMM_N, GEMM_K,
    R: tl.constexpr, S: tl.constexpr, ACC: tl.constexpr, DOT_PRECISION: tl.constexpr, DOT_IN_FP32: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    pid_m, pid_n = _tile(tl.program_id(0), GEMM_M, GEMM_N, BLOCK_M, BLOCK_N, GROUP_M)
    g = tl.program_id(1)
    # This program's share of the N·P·Q reduction, a whole number of BLOCK_K steps.
    k_span = tl.cdiv(tl.cdiv(GEMM_K, BLOCK_K), tl.num_programs(2)) * BLOCK_K
    k_begin = tl.program_id(2) * k_span
    k_end = tl.minimum(k_begin + k_span, GEMM_K)
    c_per_group = GEMM_N // (R * S)
    dy_base = dy + g * GEMM_M * sdy_k
    x_base = x + g * c_per_group * sx_c

    # Rows: this group's output channels.
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    m_ok = offs_m < GEMM_M
    # Columns: weight taps (c, r, s), and the offset each adds to a window's corner.
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

    out = dw_acc + (g * GEMM_M + offs_m)[:, None] * GEMM_N + offs_n[None, :]
    tl.atomic_add(out, acc, mask=m_ok[:, None] & n_ok[None, :])


@triton.jit
def conv2d_bgrad_kernel(
    dy, db_acc, K, P, Q, ROWS,
    sdy_n, sdy_k, sdy_p, sdy_q,
    BLOCK_C: tl.constexpr, BLOCK_R: tl.constexpr, ACC: tl.constexpr,
):
    # Program (i, j) sums channels [i·BLOCK_C, …) over its slice j of the N·P·Q
    # rows; slices meet through atomic adds, so every channel count fills the GPU.
    offs_c = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = offs_c < K
    span = tl.cdiv(tl.cdiv(ROWS, BLOCK_R), tl.num_programs(1)) * BLOCK_R
    begin = tl.program_id(1) * span
    end = tl.minimum(begin + span, ROWS)
    acc = tl.zeros((BLOCK_R, BLOCK_C), dtype=ACC)
    for r0 in range(begin, end, BLOCK_R):
        rows = r0 + tl.arange(0, BLOCK_R)
        img = rows // (P * Q)
        offs = (img * sdy_n + ((rows // Q) % P) * sdy_p + (rows % Q) * sdy_q)[:, None] + (offs_c * sdy_k)[None, :]
        acc += tl.load(dy + offs, mask=(rows < end)[:, None] & c_ok[None, :], other=0.0).to(ACC)
    tl.atomic_add(db_acc + offs_c, tl.sum(acc, axis=0), mask=c_ok)


# ----------------------------------------------------------------------------- launchers


def _acc(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _dot_in_fp32(dtype: torch.dtype) -> bool:
    # Triton 3.8's interpreter miscomputes tl.dot on bfloat16 tiles (fp32 tiles
    # are exact), so there, and only there, bf16 tiles are widened first. On a
    # GPU the dot stays a native bf16 tensor-core MMA.
    return interpreting() and dtype == torch.bfloat16


def _dot_precision(dtype: torch.dtype) -> str:
    # fp32 convolutions may use TF32 exactly when nn.Conv2d may (cuDNN's switch).
    return "tf32" if dtype == torch.float32 and torch.backends.cudnn.allow_tf32 else "ieee"


def _geometry(stride, padding, dilation):
    return (stride[0], stride[1], padding[0], padding[1], dilation[0], dilation[1])


def _gemm_grid(gemm_m, gemm_n, groups):
    return lambda META: (triton.cdiv(gemm_m, META["BLOCK_M"]) * triton.cdiv(gemm_n, META["BLOCK_N"]), groups)


@triton_op("cnnkern_triton::conv2d", mutates_args={})
def conv2d(input: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], stride: List[int],
           padding: List[int], dilation: List[int], groups: int) -> torch.Tensor:
    n, k, p, q = conv2d_output_shape(input, weight, stride, padding, dilation)
    y = torch.empty((n, k, p, q), dtype=input.dtype, device=input.device,
                    memory_format=conv2d_memory_format(input, weight))
    if y.numel() == 0:
        return y
    check_int32_indexable(input, weight, y)
    _, c_g, r, s = weight.shape
    gemm_m, gemm_n, gemm_k = n * p * q, k // groups, c_g * r * s
    wrap_triton(conv2d_fwd_kernel)[_gemm_grid(gemm_m, gemm_n, groups)](
        input, weight, bias if bias is not None else weight, y,
        input.shape[2], input.shape[3], p, q,
        *input.stride(), *weight.stride(), *y.stride(),
        *_geometry(stride, padding, dilation),
        gemm_m, gemm_n, gemm_k,
        R=r, S=s, HAS_BIAS=bias is not None, ACC=_acc(input.dtype), DOT_PRECISION=_dot_precision(input.dtype),
        DOT_IN_FP32=_dot_in_fp32(input.dtype),
    )
    return y


@triton_op("cnnkern_triton::conv2d_backward_input", mutates_args={})
def conv2d_backward_input(grad_output: torch.Tensor, input: torch.Tensor, weight: torch.Tensor, stride: List[int],
                          padding: List[int], dilation: List[int], groups: int) -> torch.Tensor:
    dx = torch.empty(input.shape, dtype=input.dtype, device=input.device,
                     memory_format=conv2d_memory_format(input, weight))
    if dx.numel() == 0:
        return dx
    if grad_output.numel() == 0:
        return dx.zero_()
    check_int32_indexable(grad_output, weight, dx)
    n, c, h, w = input.shape
    k, _, r, s = weight.shape
    gemm_m, gemm_n, gemm_k = n * h * w, c // groups, (k // groups) * r * s
    wrap_triton(conv2d_dgrad_kernel)[_gemm_grid(gemm_m, gemm_n, groups)](
        grad_output, weight, dx,
        h, w, grad_output.shape[2], grad_output.shape[3],
        *grad_output.stride(), *weight.stride(), *dx.stride(),
        *_geometry(stride, padding, dilation),
        gemm_m, gemm_n, gemm_k,
        R=r, S=s, ACC=_acc(input.dtype), DOT_PRECISION=_dot_precision(input.dtype),
        DOT_IN_FP32=_dot_in_fp32(input.dtype),
    )
    return dx


@triton_op("cnnkern_triton::conv2d_backward_weight", mutates_args={})
def conv2d_backward_weight(grad_output: torch.Tensor, input: torch.Tensor, weight: torch.Tensor, stride: List[int],
                           padding: List[int], dilation: List[int], groups: int) -> torch.Tensor:
    k, c_g, r, s = weight.shape
    dw_acc = torch.zeros((k, c_g * r * s), dtype=_acc_dtype(input.dtype), device=input.device)
    n, _, p, q = grad_output.shape
    if n * p * q > 0 and dw_acc.numel() > 0:
        check_int32_indexable(grad_output, input, dw_acc)
        gemm_m, gemm_n, gemm_k = k // groups, c_g * r * s, n * p * q

        def grid(META):
            tiles = triton.cdiv(gemm_m, META["BLOCK_M"]) * triton.cdiv(gemm_n, META["BLOCK_N"])
            split = min(triton.cdiv(gemm_k, 4 * META["BLOCK_K"]), triton.cdiv(_WGRAD_TARGET_PROGRAMS, tiles * groups))
            return (tiles, groups, max(1, split))

        wrap_triton(conv2d_wgrad_kernel)[grid](
            grad_output, input, dw_acc,
            input.shape[2], input.shape[3], p, q,
            *grad_output.stride(), *input.stride(),
            *_geometry(stride, padding, dilation),
            gemm_m, gemm_n, gemm_k,
            R=r, S=s, ACC=_acc(input.dtype), DOT_PRECISION=_dot_precision(input.dtype),
        DOT_IN_FP32=_dot_in_fp32(input.dtype),
        )
    return dw_acc.view(weight.shape).to(dtype=weight.dtype, memory_format=memory_format_of(weight))


_BGRAD_BLOCK_C, _BGRAD_BLOCK_R = 32, 64


@triton_op("cnnkern_triton::conv2d_backward_bias", mutates_args={})
def conv2d_backward_bias(grad_output: torch.Tensor) -> torch.Tensor:
    n, k, p, q = grad_output.shape
    db_acc = torch.zeros((k,), dtype=_acc_dtype(grad_output.dtype), device=grad_output.device)
    rows = n * p * q
    if rows > 0 and k > 0:
        check_int32_indexable(grad_output)
        col_blocks = triton.cdiv(k, _BGRAD_BLOCK_C)
        split = max(1, min(triton.cdiv(rows, 4 * _BGRAD_BLOCK_R), triton.cdiv(_WGRAD_TARGET_PROGRAMS, col_blocks)))
        wrap_triton(conv2d_bgrad_kernel)[(col_blocks, split)](
            grad_output, db_acc, k, p, q, rows, *grad_output.stride(),
            BLOCK_C=_BGRAD_BLOCK_C, BLOCK_R=_BGRAD_BLOCK_R, ACC=_acc(grad_output.dtype),
        )
    return db_acc.to(grad_output.dtype)
