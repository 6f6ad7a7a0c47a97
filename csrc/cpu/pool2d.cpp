// Max, average and adaptive-average pooling on the CPU.
//
// Forward: rows (n, c, oh) run in parallel; each output scans the taps of
// its window that fall inside the input (conv_tap_range), in the accumulator
// type. Max and average backward scatter each output's gradient into an
// accumulator for its plane, one plane per thread at a time (O(outputs), no
// index inversion, no races, a repeatable order); adaptive backward is a
// gather, since the windows covering an input form a short contiguous range.
// All index rules (output size, divisor, NaN and ties) come from
// cnnkern/pool2d_index.h, which the CUDA kernels share.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <type_traits>
#include <vector>

#include "../ops/pool2d_common.h"
#include "parallel.h"

namespace cnnkern::cpu {
namespace {



// Rows (n, c, r) of an N x C x rows plane stack, in parallel.
template <typename F>
void for_each_row(const Pool2dShape& s, int64_t rows, F&& fn) {
  parallel_over(s.N * s.C * rows, s.OW * s.kernel_h * s.kernel_w, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) fn(i / (s.C * rows), (i / rows) % s.C, i % rows);
  });
}

std::tuple<at::Tensor, at::Tensor> max_pool2d(const at::Tensor& input, at::IntArrayRef kernel, at::IntArrayRef stride,
                                              at::IntArrayRef padding, at::IntArrayRef dilation, bool ceil_mode) {
  Pool2dShape s = pool2d_shape(input, kernel, stride, padding, dilation, ceil_mode);
  at::Tensor y = empty_pool_output(input, s, input.scalar_type());
  at::Tensor indices = empty_pool_output(input, s, at::kLong);
  if (y.numel() == 0) return {y, indices};
  fill_strides(s.y_stride, y);
  CNNKERN_DISPATCH_FLOATS(input.scalar_type(), "cnnkern_max_pool2d_cpu", [&] {
    using A = acc_t<scalar_t>;
    const scalar_t* x = input.const_data_ptr<scalar_t>();
    scalar_t* out = y.data_ptr<scalar_t>();
    int64_t* idx = indices.data_ptr<int64_t>();
    for_each_row(s, s.OH, [&](int64_t n, int64_t c, int64_t oh) {
      const scalar_t* plane = x + n * s.x_stride[0] + c * s.x_stride[1];
      const int64_t row = n * s.y_stride[0] + c * s.y_stride[1] + oh * s.y_stride[2];
      const int64_t h0 = oh * s.stride_h - s.pad_h;
      int64_t kh_lo, kh_hi;
      conv_tap_range(h0, s.H, s.kernel_h, s.dil_h, &kh_lo, &kh_hi);
      // Columns whose window lies wholly inside the row: the window's first and
      // last taps are both in bounds. They skip the per-output range and seed logic.
      int64_t in_lo = 0, in_hi = 0, last_lo, last_hi;
      if (kh_lo < kh_hi) {
        conv_valid_range(s.W, 0, s.stride_w, s.pad_w, s.dil_w, s.OW, &in_lo, &in_hi);
        conv_valid_range(s.W, s.kernel_w - 1, s.stride_w, s.pad_w, s.dil_w, s.OW, &last_lo, &last_hi);
        in_lo = std::max(in_lo, last_lo);
        in_hi = std::max(in_lo, std::min(in_hi, last_hi));
      }
      const int64_t xs_h = s.x_stride[2], xs_w = s.x_stride[3];
      for (int64_t ow = in_lo; ow < in_hi; ++ow) {
        const int64_t w0 = ow * s.stride_w - s.pad_w;
        // max_pool_takes, written so that it compiles without branches (which
        // tap wins is unpredictable, and mispredictions cost more than the
        // loads): the running max is a plain max, a NaN is tracked beside it
        // and, as in max_pool_takes, every later NaN takes the index.
        A best = -std::numeric_limits<A>::infinity();
        int64_t best_at = (h0 + kh_lo * s.dil_h) * s.W + w0;
        bool seen_nan = false;
        for (int64_t kh = kh_lo; kh < kh_hi; ++kh) {
          const int64_t h = h0 + kh * s.dil_h;
          const scalar_t* src = plane + h * xs_h + w0 * xs_w;
          for (int64_t kw = 0; kw < s.kernel_w; ++kw) {
            const A v = static_cast<A>(src[kw * s.dil_w * xs_w]);
            const bool is_nan = v != v;
            const bool take = ((v > best) & !seen_nan) | is_nan;
            best = std::max(best, v);
            best_at = take ? h * s.W + w0 + kw * s.dil_w : best_at;
            seen_nan |= is_nan;
          }
        }
        if (seen_nan) best = std::numeric_limits<A>::quiet_NaN();
        out[row + ow * s.y_stride[3]] = static_cast<scalar_t>(best);
        idx[row + ow * s.y_stride[3]] = best_at;
      }
      // Windows reaching into the padding (or past the end): few, so the general
      // rule per tap, max_pool_takes, and the seed index torch would report.
      auto edge = [&](int64_t ow) {
        const int64_t w0 = ow * s.stride_w - s.pad_w;
        int64_t kw_lo, kw_hi;
        conv_tap_range(w0, s.W, s.kernel_w, s.dil_w, &kw_lo, &kw_hi);
        A best = -std::numeric_limits<A>::infinity();
        int64_t best_at = max_pool_start_index(s, oh, ow);
        for (int64_t kh = kh_lo; kh < kh_hi; ++kh) {
          const int64_t h = h0 + kh * s.dil_h;
          const scalar_t* src = plane + h * s.x_stride[2];
          for (int64_t kw = kw_lo; kw < kw_hi; ++kw) {
            const int64_t w = w0 + kw * s.dil_w;
            const A v = static_cast<A>(src[w * s.x_stride[3]]);
            if (max_pool_takes(v, best)) {
              best = v;
              best_at = h * s.W + w;
            }
          }
        }
        out[row + ow * s.y_stride[3]] = static_cast<scalar_t>(best);
        idx[row + ow * s.y_stride[3]] = best_at;
      };
      for (int64_t ow = 0; ow < in_lo; ++ow) edge(ow);
      for (int64_t ow = in_hi; ow < s.OW; ++ow) edge(ow);
    });
  });
  return {y, indices};
}

// Runs fn(n, c, buf) for every plane, buf being a zeroed H*W accumulator the
// gradient is scattered into, then writes buf to dx through dx's strides
// (or, for a contiguous fp32/fp64 plane, is the plane itself).
// A plane belongs to one thread and is filled in output order: no races and
// a repeatable sum, at the cost of one plane-sized buffer per task.
template <typename scalar_t, typename F>
void scatter_planes(const Pool2dShape& s, scalar_t* dx, F&& fn) {
  using A = acc_t<scalar_t>;
  // A contiguous plane of the accumulator type is its own accumulator.
  const bool in_place = std::is_same_v<scalar_t, A> && s.x_stride[3] == 1 && s.x_stride[2] == s.W;
  parallel_over(s.N * s.C, s.H * s.W + s.OH * s.OW * s.kernel_h * s.kernel_w, [&](int64_t begin, int64_t end) {
    if constexpr (std::is_same_v<scalar_t, A>) {
      if (in_place) {
        for (int64_t i = begin; i < end; ++i) {
          const int64_t n = i / s.C, c = i % s.C;
          A* plane = dx + n * s.x_stride[0] + c * s.x_stride[1];
          std::fill(plane, plane + s.H * s.W, A(0));
          fn(n, c, plane);
        }
        return;
      }
    }
    std::vector<A> buf(s.H * s.W);
    for (int64_t i = begin; i < end; ++i) {
      const int64_t n = i / s.C, c = i % s.C;
      std::fill(buf.begin(), buf.end(), A(0));
      fn(n, c, buf.data());
      scalar_t* plane = dx + n * s.x_stride[0] + c * s.x_stride[1];
      for (int64_t h = 0; h < s.H; ++h)
        for (int64_t w = 0; w < s.W; ++w)
          plane[h * s.x_stride[2] + w * s.x_stride[3]] = static_cast<scalar_t>(buf[h * s.W + w]);
    }
  });
}

at::Tensor max_pool2d_backward(const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& indices,
                               at::IntArrayRef kernel, at::IntArrayRef stride, at::IntArrayRef padding,
                               at::IntArrayRef dilation, bool ceil_mode) {
  Pool2dShape s = pool2d_shape(input, kernel, stride, padding, dilation, ceil_mode);
  check_pool_grad(grad_output, input, s);
  TORCH_CHECK(indices.sizes() == grad_output.sizes() && indices.scalar_type() == at::kLong,
              "cnnkern max_pool2d_backward: indices must be int64 with grad_output's shape");
  at::Tensor dx = at::empty(input.sizes(), input.options().memory_format(input.suggest_memory_format()));
  if (dx.numel() == 0) return dx;
  fill_strides(s.x_stride, dx);
  CNNKERN_DISPATCH_FLOATS(input.scalar_type(), "cnnkern_max_pool2d_backward_cpu", [&] {
    using A = acc_t<scalar_t>;
    const scalar_t* dy = grad_output.const_data_ptr<scalar_t>();
    const int64_t* idx = indices.const_data_ptr<int64_t>();
    const auto gs = grad_output.strides(), is = indices.strides();
    const int64_t plane_size = s.H * s.W;
    scatter_planes(s, dx.data_ptr<scalar_t>(), [&](int64_t n, int64_t c, A* buf) {
      for (int64_t oh = 0; oh < s.OH; ++oh) {
        for (int64_t ow = 0; ow < s.OW; ++ow) {
          const int64_t at = idx[n * is[0] + c * is[1] + oh * is[2] + ow * is[3]];
          // A window wholly in the padding reports an index past the plane (as torch does): it has no input to credit.
          if (at >= 0 && at < plane_size) buf[at] += static_cast<A>(dy[n * gs[0] + c * gs[1] + oh * gs[2] + ow * gs[3]]);
        }
      }
    });
  });
  return dx;
}

int64_t divisor_or_zero(std::optional<int64_t> divisor_override) {
  TORCH_CHECK(!divisor_override.has_value() || *divisor_override != 0, "cnnkern avg_pool2d: divisor must be not zero");
  return divisor_override.value_or(0);
}

at::Tensor avg_pool2d(const at::Tensor& input, at::IntArrayRef kernel, at::IntArrayRef stride, at::IntArrayRef padding,
                      bool ceil_mode, bool count_include_pad, std::optional<int64_t> divisor_override) {
  Pool2dShape s = pool2d_shape(input, kernel, stride, padding, {1, 1}, ceil_mode);
  const int64_t divisor = divisor_or_zero(divisor_override);
  at::Tensor y = empty_pool_output(input, s, input.scalar_type());
  if (y.numel() == 0) return y;
  fill_strides(s.y_stride, y);
  CNNKERN_DISPATCH_FLOATS(input.scalar_type(), "cnnkern_avg_pool2d_cpu", [&] {
    using A = acc_t<scalar_t>;
    const scalar_t* x = input.const_data_ptr<scalar_t>();
    scalar_t* out = y.data_ptr<scalar_t>();
    for_each_row(s, s.OH, [&](int64_t n, int64_t c, int64_t oh) {
      const scalar_t* plane = x + n * s.x_stride[0] + c * s.x_stride[1];
      for (int64_t ow = 0; ow < s.OW; ++ow) {
        A sum = 0;
        for (int64_t kh = 0; kh < s.kernel_h; ++kh) {
          const int64_t h = conv_in_coord(oh, kh, s.stride_h, s.pad_h, 1);
          if (h < 0 || h >= s.H) continue;
          for (int64_t kw = 0; kw < s.kernel_w; ++kw) {
            const int64_t w = conv_in_coord(ow, kw, s.stride_w, s.pad_w, 1);
            if (w >= 0 && w < s.W) sum += static_cast<A>(plane[h * s.x_stride[2] + w * s.x_stride[3]]);
          }
        }
        out[n * s.y_stride[0] + c * s.y_stride[1] + oh * s.y_stride[2] + ow * s.y_stride[3]] =
            static_cast<scalar_t>(sum / static_cast<A>(avg_pool_divisor(s, oh, ow, count_include_pad, divisor)));
      }
    });
  });
  return y;
}

at::Tensor avg_pool2d_backward(const at::Tensor& grad_output, const at::Tensor& input, at::IntArrayRef kernel,
                               at::IntArrayRef stride, at::IntArrayRef padding, bool ceil_mode, bool count_include_pad,
                               std::optional<int64_t> divisor_override) {
  Pool2dShape s = pool2d_shape(input, kernel, stride, padding, {1, 1}, ceil_mode);
  check_pool_grad(grad_output, input, s);
  const int64_t divisor = divisor_or_zero(divisor_override);
  at::Tensor dx = at::empty(input.sizes(), input.options().memory_format(input.suggest_memory_format()));
  if (dx.numel() == 0) return dx;
  fill_strides(s.x_stride, dx);
  CNNKERN_DISPATCH_FLOATS(input.scalar_type(), "cnnkern_avg_pool2d_backward_cpu", [&] {
    using A = acc_t<scalar_t>;
    const scalar_t* dy = grad_output.const_data_ptr<scalar_t>();
    const auto gs = grad_output.strides();
    scatter_planes(s, dx.data_ptr<scalar_t>(), [&](int64_t n, int64_t c, A* buf) {
      for (int64_t oh = 0; oh < s.OH; ++oh) {
        const int64_t h0 = oh * s.stride_h - s.pad_h;
        int64_t kh_lo, kh_hi;
        conv_tap_range(h0, s.H, s.kernel_h, 1, &kh_lo, &kh_hi);
        for (int64_t ow = 0; ow < s.OW; ++ow) {
          const int64_t w0 = ow * s.stride_w - s.pad_w;
          int64_t kw_lo, kw_hi;
          conv_tap_range(w0, s.W, s.kernel_w, 1, &kw_lo, &kw_hi);
          const A g = static_cast<A>(dy[n * gs[0] + c * gs[1] + oh * gs[2] + ow * gs[3]]) /
                      static_cast<A>(avg_pool_divisor(s, oh, ow, count_include_pad, divisor));
          for (int64_t kh = kh_lo; kh < kh_hi; ++kh)
            for (int64_t kw = kw_lo; kw < kw_hi; ++kw) buf[(h0 + kh) * s.W + w0 + kw] += g;
        }
      }
    });
  });
  return dx;
}

at::Tensor adaptive_avg_pool2d(const at::Tensor& input, at::IntArrayRef output_size) {
  Pool2dShape s = adaptive_pool2d_shape(input, output_size);
  at::Tensor y = empty_pool_output(input, s, input.scalar_type());
  if (y.numel() == 0) return y;
  fill_strides(s.y_stride, y);
  CNNKERN_DISPATCH_FLOATS(input.scalar_type(), "cnnkern_adaptive_avg_pool2d_cpu", [&] {
    using A = acc_t<scalar_t>;
    const scalar_t* x = input.const_data_ptr<scalar_t>();
    scalar_t* out = y.data_ptr<scalar_t>();
    for_each_row(s, s.OH, [&](int64_t n, int64_t c, int64_t oh) {
      const scalar_t* plane = x + n * s.x_stride[0] + c * s.x_stride[1];
      const int64_t h0 = adaptive_start(oh, s.H, s.OH), h1 = adaptive_end(oh, s.H, s.OH);
      for (int64_t ow = 0; ow < s.OW; ++ow) {
        const int64_t w0 = adaptive_start(ow, s.W, s.OW), w1 = adaptive_end(ow, s.W, s.OW);
        A sum = 0;
        for (int64_t h = h0; h < h1; ++h)
          for (int64_t w = w0; w < w1; ++w) sum += static_cast<A>(plane[h * s.x_stride[2] + w * s.x_stride[3]]);
        out[n * s.y_stride[0] + c * s.y_stride[1] + oh * s.y_stride[2] + ow * s.y_stride[3]] =
            static_cast<scalar_t>(sum / static_cast<A>((h1 - h0) * (w1 - w0)));
      }
    });
  });
  return y;
}

at::Tensor adaptive_avg_pool2d_backward(const at::Tensor& grad_output, const at::Tensor& input) {
  TORCH_CHECK(grad_output.dim() == 4, "cnnkern adaptive_avg_pool2d_backward: expected a 4-D grad_output");
  Pool2dShape s = adaptive_pool2d_shape(input, {grad_output.size(2), grad_output.size(3)});
  check_pool_grad(grad_output, input, s);
  at::Tensor dx = at::empty(input.sizes(), input.options().memory_format(input.suggest_memory_format()));
  if (dx.numel() == 0) return dx;
  fill_strides(s.x_stride, dx);
  CNNKERN_DISPATCH_FLOATS(input.scalar_type(), "cnnkern_adaptive_avg_pool2d_backward_cpu", [&] {
    using A = acc_t<scalar_t>;
    const scalar_t* dy = grad_output.const_data_ptr<scalar_t>();
    const auto gs = grad_output.strides();
    scalar_t* out = dx.data_ptr<scalar_t>();
    // Which windows cover each column, and their widths, are the same on every row: found
    // once here, so the row loop does no integer division (it dominated small calls).
    std::vector<int64_t> col_first(s.W), col_last(s.W), cols(s.OW);
    for (int64_t w = 0; w < s.W; ++w) adaptive_covering(w, s.W, s.OW, &col_first[w], &col_last[w]);
    for (int64_t ow = 0; ow < s.OW; ++ow) cols[ow] = adaptive_end(ow, s.W, s.OW) - adaptive_start(ow, s.W, s.OW);
    for_each_row(s, s.H, [&](int64_t n, int64_t c, int64_t h) {
      int64_t oh0, oh1;
      adaptive_covering(h, s.H, s.OH, &oh0, &oh1);
      const scalar_t* dy_plane = dy + n * gs[0] + c * gs[1];
      scalar_t* dx_row = out + n * s.x_stride[0] + c * s.x_stride[1] + h * s.x_stride[2];
      for (int64_t w = 0; w < s.W; ++w) {
        A sum = 0;
        for (int64_t oh = oh0; oh < oh1; ++oh) {
          const int64_t rows = adaptive_end(oh, s.H, s.OH) - adaptive_start(oh, s.H, s.OH);
          for (int64_t ow = col_first[w]; ow < col_last[w]; ++ow)
            sum += static_cast<A>(dy_plane[oh * gs[2] + ow * gs[3]]) / static_cast<A>(rows * cols[ow]);
        }
        dx_row[w * s.x_stride[3]] = static_cast<scalar_t>(sum);
      }
    });
  });
  return dx;
}

}  // namespace

TORCH_LIBRARY_IMPL(cnnkern, CPU, m) {
  m.impl("max_pool2d", &max_pool2d);
  m.impl("max_pool2d_backward", &max_pool2d_backward);
  m.impl("avg_pool2d", &avg_pool2d);
  m.impl("avg_pool2d_backward", &avg_pool2d_backward);
  m.impl("adaptive_avg_pool2d", &adaptive_avg_pool2d);
  m.impl("adaptive_avg_pool2d_backward", &adaptive_avg_pool2d_backward);
}

}  // namespace cnnkern::cpu
