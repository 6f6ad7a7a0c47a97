// Pooling index math, written once for the CPU kernels, the CUDA kernels and
// their host emulation. Rules are torch's (aten/src/ATen/native/Pool.h).
//
// Conventions: input x[n][c][h][w], output y[n][c][oh][ow]; every tensor is
// addressed through its own element strides. Max-pool indices are flat
// positions h * W + w within the input plane, stored at y's strides.
#pragma once
#include <cstdint>

#include "cnnkern/conv2d_index.h"
#include "cnnkern/macros.h"

namespace cnnkern {

struct Pool2dShape {
  int64_t N, C, H, W;  // input
  int64_t OH, OW;      // output
  int64_t kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w;
  int64_t x_stride[4];  // input (or its gradient), order n c h w
  int64_t y_stride[4];  // output, indices and output gradient, order n c oh ow
};

// Output extent of one dimension. With ceil_mode the last window may start
// past the input's end only if it still starts inside the left padding...
// precisely torch's rule: it must start at or before the last input element
// plus the left padding.
CNNKERN_HD int64_t pool_out_size(int64_t in, int64_t kernel, int64_t stride, int64_t pad, int64_t dil,
                                 bool ceil_mode) {
  const int64_t span = in + 2 * pad - dil * (kernel - 1) - 1 + (ceil_mode ? stride - 1 : 0);
  // floor division that rounds toward -inf, as torch's div_rtn
  int64_t out = (span >= 0 ? span / stride : -((-span + stride - 1) / stride)) + 1;
  if (ceil_mode && (out - 1) * stride >= in + pad) --out;
  return out;
}

// Average pooling's divisor for output (oh, ow): torch clips the window to the
// padded input for count_include_pad, to the input itself otherwise.
CNNKERN_HD int64_t avg_pool_divisor(const Pool2dShape& s, int64_t oh, int64_t ow, bool count_include_pad,
                                    int64_t divisor_override) {
  if (divisor_override != 0) return divisor_override;
  int64_t h0 = oh * s.stride_h - s.pad_h, w0 = ow * s.stride_w - s.pad_w;
  int64_t h1 = h0 + s.kernel_h, w1 = w0 + s.kernel_w;
  h1 = h1 < s.H + s.pad_h ? h1 : s.H + s.pad_h;
  w1 = w1 < s.W + s.pad_w ? w1 : s.W + s.pad_w;
  if (count_include_pad) return (h1 - h0) * (w1 - w0);
  h0 = h0 > 0 ? h0 : 0;
  w0 = w0 > 0 ? w0 : 0;
  h1 = h1 < s.H ? h1 : s.H;
  w1 = w1 < s.W ? w1 : s.W;
  return (h1 - h0) * (w1 - w0);
}

// Adaptive pooling: output i of `out` covers input [start, end) of `in`.
CNNKERN_HD int64_t adaptive_start(int64_t i, int64_t in, int64_t out) { return (i * in) / out; }
CNNKERN_HD int64_t adaptive_end(int64_t i, int64_t in, int64_t out) { return ((i + 1) * in + out - 1) / out; }

// The adaptive windows covering input coordinate i form the contiguous range
// [*first, *last): start from the window i falls in proportionally, widen.
CNNKERN_HD void adaptive_covering(int64_t i, int64_t in, int64_t out, int64_t* first, int64_t* last) {
  int64_t f = (i * out) / in;
  while (f > 0 && adaptive_end(f - 1, in, out) > i) --f;
  while (f < out && adaptive_end(f, in, out) <= i) ++f;
  int64_t l = f;
  while (l < out && adaptive_start(l, in, out) <= i) ++l;
  *first = f;
  *last = l;
}

// The index a max-pool window reports before any element beats -inf, as torch
// computes it: the first tap at or past row 0 and column 0. For any window with
// an input element that is its first in-bounds element; for a dilated window
// lying wholly in the padding it points past the plane, as torch's does.
CNNKERN_HD int64_t max_pool_start_index(const Pool2dShape& s, int64_t oh, int64_t ow) {
  int64_t h = oh * s.stride_h - s.pad_h, w = ow * s.stride_w - s.pad_w;
  if (h < 0) h += (-h + s.dil_h - 1) / s.dil_h * s.dil_h;
  if (w < 0) w += (-w + s.dil_w - 1) / s.dil_w * s.dil_w;
  return h * s.W + w;
}

// The max-pool update, torch's: a NaN always wins (so NaN propagates), and a
// value equal to the best so far does not (so ties keep the first index).
template <typename A>
CNNKERN_HD bool max_pool_takes(A value, A best) {
  return (value > best) | (value != value);  // "|": no short-circuit branch in the CPU loops
}

}  // namespace cnnkern
