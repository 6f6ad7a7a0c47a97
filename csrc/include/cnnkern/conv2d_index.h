// Conv2d index math, written once and used by the CPU kernels, the CUDA kernels
// and (through the CUDA sources) the host emulation of the CUDA kernels.
//
// Conventions: input  x[n][c][h][w], weight w[k][c/groups][r][s],
//              output y[n][k][p][q]; every tensor is addressed through its own
// element strides, so NCHW, channels_last and non-contiguous views share one path.
#pragma once
#include <cstdint>

#include "cnnkern/macros.h"

namespace cnnkern {

struct Conv2dShape {
  int64_t N, C, H, W;  // input batch, channels, height, width
  int64_t K, R, S;     // output channels, kernel height, kernel width
  int64_t P, Q;        // output height, width
  int64_t stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, groups;
  int64_t x_stride[4];  // input (or its gradient), order n c h w
  int64_t w_stride[4];  // weight (or its gradient), order k c r s
  int64_t y_stride[4];  // output (or its gradient), order n k p q

  CNNKERN_HD int64_t c_per_group() const { return C / groups; }
  CNNKERN_HD int64_t k_per_group() const { return K / groups; }
};

// Output extent of one spatial dimension, torch's rule (floor division).
CNNKERN_HD int64_t conv_out_size(int64_t in, int64_t kernel, int64_t stride,
                                 int64_t pad, int64_t dil) {
  return (in + 2 * pad - dil * (kernel - 1) - 1) / stride + 1;
}

// Input coordinate read by output coordinate `o` through kernel tap `k`;
// it may fall in the padding (< 0 or >= extent): callers bounds-check.
CNNKERN_HD int64_t conv_in_coord(int64_t o, int64_t k, int64_t stride,
                                 int64_t pad, int64_t dil) {
  return o * stride - pad + k * dil;
}

// The inverse, for gathers in the input-gradient pass: which output coordinate
// reads input coordinate `i` through tap `k`? False when none does (the tap
// lands between strided outputs, or outside [0, out_extent)).
CNNKERN_HD bool conv_out_coord(int64_t i, int64_t k, int64_t stride, int64_t pad,
                               int64_t dil, int64_t out_extent, int64_t* o) {
  const int64_t t = i + pad - k * dil;
  if (t < 0 || t % stride != 0) return false;
  *o = t / stride;
  return *o < out_extent;
}

// The output coordinates o in [*lo, *hi) whose tap k reads inside [0, in).
// The rest read padding: im2col zero-fills them, col2im and pooling skip them,
// and neither needs a bounds test per element.
CNNKERN_HD void conv_valid_range(int64_t in, int64_t k, int64_t stride, int64_t pad, int64_t dil,
                                 int64_t out_extent, int64_t* lo, int64_t* hi) {
  const int64_t first = pad - k * dil;    // o * stride >= first
  const int64_t limit = in + pad - k * dil;  // o * stride <  limit
  int64_t l = first <= 0 ? 0 : (first + stride - 1) / stride;
  int64_t h = limit <= 0 ? 0 : (limit + stride - 1) / stride;
  l = l < out_extent ? l : out_extent;
  h = h < out_extent ? h : out_extent;
  *lo = l;
  *hi = h > l ? h : l;
}

// The input gradient of a strided conv, split by the phase of the input
// coordinate (i = phase + stride * j): only the taps k = first + step * t
// (t < count) reach phase, and through them dx at j is a stride-1 conv of dy at
// j - pad + dil * t' with the taps flipped (t' = count - 1 - t). step is
// stride / gcd(stride, dil), dil here is dil / gcd; no taps: count = 0.
struct DgradTaps {
  int64_t first, count, step, dil, pad;
  CNNKERN_HD int64_t last() const { return count > 0 ? first + (count - 1) * step : 0; }
};
CNNKERN_HD DgradTaps conv_dgrad_taps(int64_t phase, int64_t kernel, int64_t stride, int64_t pad, int64_t dil) {
  int64_t a = stride, b = dil;
  while (b != 0) {
    const int64_t r = a % b;
    a = b;
    b = r;
  }
  DgradTaps t{0, 0, stride / a, dil / a, 0};
  // tap k reaches the phase when (phase + pad - k * dil) is a multiple of the
  // stride; the k that do are one residue class mod step
  while (t.first < t.step && t.first < kernel && (phase + pad - t.first * dil) % stride != 0) ++t.first;
  if (t.first >= t.step || t.first >= kernel) return DgradTaps{0, 0, t.step, t.dil, 0};
  t.count = (kernel - 1 - t.first) / t.step + 1;
  t.pad = (t.count - 1) * t.dil - (phase + pad - t.first * dil) / stride;
  return t;
}

// The taps k in [*lo, *hi) of a window starting at `base` (dilation `dil`)
// that land inside [0, in): the window loops of pooling run over these only.
CNNKERN_HD void conv_tap_range(int64_t base, int64_t in, int64_t kernel, int64_t dil, int64_t* lo, int64_t* hi) {
  int64_t l = 0, h = 0;
  if (dil == 1) {
    l = base < 0 ? -base : 0;
    h = in - base;
  } else {
    l = base < 0 ? (-base + dil - 1) / dil : 0;
    h = in - base <= 0 ? 0 : (in - base + dil - 1) / dil;
  }
  h = h < kernel ? h : kernel;
  h = h > 0 ? h : 0;
  *lo = l < h ? l : h;
  *hi = h;
}

}  // namespace cnnkern
