// Conv2d on the CPU: im2col + GEMM, the batch split among threads.
//
// Each thread owns a contiguous range of images and walks it a chunk at a
// time: enough images that a GEMM has about kTargetColumns columns, few
// enough that the column buffer stays inside a core's L2. For one chunk and
// one group, with D the chunk's dy packed as (Kg x nb*P*Q):
//   col[(c,r,s)][(n,p,q)]  im2col; a row segment is an input row read at the
//                          conv's stride, its padded ends zero-filled
//   forward  Y = W_g col (+ bias as the GEMM's C), copied into y through y's
//            strides (NCHW or channels_last)
//   wgrad    dW_g += D colᵀ into a per-thread partial; the partials are
//            summed in thread order at the end, so the result is repeatable
//   dgrad    dcol = W_gᵀ D, then col2im adds each dcol row segment into dx;
//            a thread owns its images' dx, so no two threads touch one value
// GEMMs run inside the parallel region, hence single-threaded, on data the
// thread has just written. With fewer images than threads the outer loop is
// one task, and the GEMM and the im2col loops parallelise instead.
// Half and bfloat16 are widened to fp32 as they are gathered; double stays
// double. The only BLAS calls are at::mm_out/addmm_out on our own buffers.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <utility>
#include <vector>

#include "../ops/conv2d_common.h"
#include "parallel.h"

namespace cnnkern::cpu {
namespace {

constexpr int64_t kTargetColumns = 2048;
constexpr int64_t kColumnBudgetBytes = int64_t{1} << 20;

int64_t images_per_chunk(const Conv2dShape& s, int64_t elem_bytes) {
  const int64_t PQ = s.P * s.Q;
  const int64_t by_columns = (kTargetColumns + PQ - 1) / PQ;
  const int64_t by_bytes = kColumnBudgetBytes / std::max<int64_t>(s.c_per_group() * s.R * s.S * PQ * elem_bytes, 1);
  return std::max<int64_t>(std::min(by_columns, by_bytes), 1);
}

// Calls fn(n0, nb) for consecutive chunks of at most `chunk` images, each
// thread over its own contiguous range of the batch.
template <typename F>
void for_each_chunk(int64_t N, int64_t chunk, int64_t work_per_image, F&& fn) {
  parallel_over(N, work_per_image, [&](int64_t begin, int64_t end) {
    for (int64_t n0 = begin; n0 < end; n0 += chunk) fn(n0, std::min(chunk, end - n0));
  });
}

// col[(c, r, s)][(n - n0, p, q)] for images [n0, n0 + nb) of group g.
template <typename T, typename A>
void im2col(const T* x, const Conv2dShape& s, int64_t n0, int64_t nb, int64_t g, A* col) {
  const int64_t Cg = s.c_per_group(), PQ = s.P * s.Q, ld = nb * PQ, RS = s.R * s.S;
  const int64_t step = s.stride_w * s.x_stride[3];
  parallel_over(Cg * RS, ld, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t c = row / RS, r = (row / s.S) % s.R, t = row % s.S;
      int64_t q_lo, q_hi;
      conv_valid_range(s.W, t, s.stride_w, s.pad_w, s.dil_w, s.Q, &q_lo, &q_hi);
      const int64_t iw_lo = conv_in_coord(q_lo, t, s.stride_w, s.pad_w, s.dil_w);
      for (int64_t nl = 0; nl < nb; ++nl) {
        const T* plane = x + (n0 + nl) * s.x_stride[0] + (g * Cg + c) * s.x_stride[1];
        A* out = col + row * ld + nl * PQ;
        for (int64_t p = 0; p < s.P; ++p, out += s.Q) {
          const int64_t ih = conv_in_coord(p, r, s.stride_h, s.pad_h, s.dil_h);
          if (ih < 0 || ih >= s.H) {
            std::fill(out, out + s.Q, A(0));
            continue;
          }
          const T* src = plane + ih * s.x_stride[2] + iw_lo * s.x_stride[3];
          std::fill(out, out + q_lo, A(0));
          if (step == 1) {
            for (int64_t q = q_lo; q < q_hi; ++q) out[q] = static_cast<A>(src[q - q_lo]);
          } else {
            for (int64_t q = q_lo; q < q_hi; ++q) out[q] = static_cast<A>(src[(q - q_lo) * step]);
          }
          std::fill(out + q_hi, out + s.Q, A(0));
        }
      }
    }
  });
}

// dx[n][g*Cg + c][h][w] += every dcol entry whose tap reads (h, w); dx has the
// accumulator type and strides s.x_stride. Planes (n, c) run in parallel.
template <typename A>
void col2im_add(const A* dcol, const Conv2dShape& s, int64_t n0, int64_t nb, int64_t g, A* dx) {
  const int64_t Cg = s.c_per_group(), PQ = s.P * s.Q, ld = nb * PQ;
  const int64_t step = s.stride_w * s.x_stride[3];
  parallel_over(nb * Cg, s.R * s.S * PQ, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t nl = i / Cg, c = i % Cg;
      A* plane = dx + (n0 + nl) * s.x_stride[0] + (g * Cg + c) * s.x_stride[1];
      for (int64_t r = 0; r < s.R; ++r) {
        for (int64_t t = 0; t < s.S; ++t) {
          int64_t q_lo, q_hi;
          conv_valid_range(s.W, t, s.stride_w, s.pad_w, s.dil_w, s.Q, &q_lo, &q_hi);
          const int64_t iw_lo = conv_in_coord(q_lo, t, s.stride_w, s.pad_w, s.dil_w);
          const A* src = dcol + ((c * s.R + r) * s.S + t) * ld + nl * PQ;
          for (int64_t p = 0; p < s.P; ++p) {
            const int64_t ih = conv_in_coord(p, r, s.stride_h, s.pad_h, s.dil_h);
            if (ih < 0 || ih >= s.H) continue;
            A* dst = plane + ih * s.x_stride[2] + iw_lo * s.x_stride[3];
            const A* row = src + p * s.Q;
            if (step == 1) {
              for (int64_t q = q_lo; q < q_hi; ++q) dst[q - q_lo] += row[q];
            } else {
              for (int64_t q = q_lo; q < q_hi; ++q) dst[(q - q_lo) * step] += row[q];
            }
          }
        }
      }
    }
  });
}

// ---- Depthwise (one input channel per group, any channel multiplier M = K/C) ----
// A GEMM per group would be one output row wide: instead each pass is a direct
// loop. Two orders, both through the tensors' strides:
//   planes    (NCHW-like): a thread owns (n, k) planes (dgrad: (n, c) planes,
//             wgrad: output channels k) and runs along output rows, so the
//             innermost loop walks one row of x, y or dy;
//   channels  (x and y channels_last): a thread owns output rows (n, p)
//             (dgrad: input rows (n, h)) and the innermost loop runs over the
//             contiguous channels, with the weight repacked as (r, s, k).
// Every output element is written by one thread (the weight gradient of the
// channels order sums per-thread partials in thread order), so results repeat
// for a given thread count. Accumulation is in acc_t: fp32 for fp16/bf16.

bool depthwise(const Conv2dShape& s) { return s.groups > 1 && s.c_per_group() == 1; }

// Per kernel column t: the output columns [lo, hi) whose tap t reads inside the
// input row, and the input column the first of them reads. Computed once per
// call: conv_valid_range divides, and a row of a small plane is only a few
// multiply-adds per tap.
struct TapColumns {
  int64_t lo, hi, iw_lo;
};
std::vector<TapColumns> tap_columns(const Conv2dShape& s) {
  std::vector<TapColumns> taps(static_cast<size_t>(s.S));
  for (int64_t t = 0; t < s.S; ++t) {
    conv_valid_range(s.W, t, s.stride_w, s.pad_w, s.dil_w, s.Q, &taps[t].lo, &taps[t].hi);
    taps[t].iw_lo = conv_in_coord(taps[t].lo, t, s.stride_w, s.pad_w, s.dil_w);
  }
  return taps;
}
bool channels_inner(const Conv2dShape& s) { return s.x_stride[1] == 1 && s.y_stride[1] == 1; }

// NCHW operands with small planes take the channels order too, on channels_last
// copies: in the planes order a plane of a few rows pays the per-row, per-tap
// overhead for a few multiply-adds each (measured here: a 4x4 plane 4.6x slower
// than the channels order, a 16x16 one 2.4x, a 32x32 one 1.7x, before copies).
constexpr int64_t kSmallPlane = 256;
bool via_channels_last(const Conv2dShape& s) {
  return !channels_inner(s) && s.H * s.W <= kSmallPlane && s.P * s.Q <= kSmallPlane;
}

// The x-side and y-side tensors a depthwise pass runs on, with s's strides set
// from them: x and y themselves, or, via_channels_last, channels_last copies of
// them (of an output side, *_out, only its allocation: the caller copies back).
std::pair<at::Tensor, at::Tensor> depthwise_operands(Conv2dShape& s, const at::Tensor& x, bool x_out,
                                                     const at::Tensor& y, bool y_out) {
  fill_strides(s.x_stride, x);
  fill_strides(s.y_stride, y);
  if (!via_channels_last(s)) return {x, y};
  const auto cl = [](const at::Tensor& t, bool out) {
    return out ? at::empty_like(t, at::MemoryFormat::ChannelsLast) : t.contiguous(at::MemoryFormat::ChannelsLast);
  };
  std::pair<at::Tensor, at::Tensor> copies{cl(x, x_out), cl(y, y_out)};
  fill_strides(s.x_stride, copies.first);
  fill_strides(s.y_stride, copies.second);
  return copies;
}

// The weight (K, 1, R, S) as acc_t, either (k, r, s) or, for the channels order, (r, s, k).
at::Tensor depthwise_weight(const at::Tensor& weight, bool taps_outer) {
  const at::Tensor w = weight.detach().to(acc_dtype(weight.scalar_type())).reshape({weight.size(0), -1});
  return taps_outer ? w.t().contiguous() : w.contiguous();
}

template <typename T, typename A>
void depthwise_forward(const Conv2dShape& s, const T* x, const A* w, const A* bias, T* y) {
  const int64_t M = s.k_per_group(), RS = s.R * s.S;
  if (channels_inner(s)) {
    parallel_over(s.N * s.P, s.Q * s.K * RS, [&](int64_t begin, int64_t end) {
      std::vector<A> acc(static_cast<size_t>(s.K));
      for (int64_t np = begin; np < end; ++np) {
        const int64_t n = np / s.P, p = np % s.P;
        for (int64_t q = 0; q < s.Q; ++q) {
          for (int64_t k = 0; k < s.K; ++k) acc[k] = bias ? bias[k] : A(0);
          for (int64_t r = 0; r < s.R; ++r) {
            const int64_t h = conv_in_coord(p, r, s.stride_h, s.pad_h, s.dil_h);
            if (h < 0 || h >= s.H) continue;
            for (int64_t t = 0; t < s.S; ++t) {
              const int64_t iw = conv_in_coord(q, t, s.stride_w, s.pad_w, s.dil_w);
              if (iw < 0 || iw >= s.W) continue;
              const T* xv = x + n * s.x_stride[0] + h * s.x_stride[2] + iw * s.x_stride[3];
              const A* wv = w + (r * s.S + t) * s.K;
              if (M == 1) {
                for (int64_t k = 0; k < s.K; ++k) acc[k] += wv[k] * static_cast<A>(xv[k]);
              } else {
                for (int64_t c = 0; c < s.C; ++c)
                  for (int64_t j = 0; j < M; ++j) acc[c * M + j] += wv[c * M + j] * static_cast<A>(xv[c]);
              }
            }
          }
          T* yv = y + n * s.y_stride[0] + p * s.y_stride[2] + q * s.y_stride[3];
          for (int64_t k = 0; k < s.K; ++k) yv[k] = static_cast<T>(acc[k]);
        }
      }
    });
    return;
  }
  const std::vector<TapColumns> taps = tap_columns(s);
  parallel_over(s.N * s.K, s.P * s.Q * RS, [&](int64_t begin, int64_t end) {
    std::vector<A> acc(static_cast<size_t>(s.Q));
    for (int64_t nk = begin; nk < end; ++nk) {
      const int64_t n = nk / s.K, k = nk % s.K;
      const T* plane = x + n * s.x_stride[0] + (k / M) * s.x_stride[1];
      const A* wk = w + k * RS;
      for (int64_t p = 0; p < s.P; ++p) {
        std::fill(acc.begin(), acc.end(), bias ? bias[k] : A(0));
        for (int64_t r = 0; r < s.R; ++r) {
          const int64_t h = conv_in_coord(p, r, s.stride_h, s.pad_h, s.dil_h);
          if (h < 0 || h >= s.H) continue;
          for (int64_t t = 0; t < s.S; ++t) {
            const int64_t q_lo = taps[t].lo, q_hi = taps[t].hi;
            const A wv = wk[r * s.S + t];
            const T* src = plane + h * s.x_stride[2] + taps[t].iw_lo * s.x_stride[3];
            const int64_t step = s.stride_w * s.x_stride[3];
            if (step == 1) {  // (the common case, as its own loop so that it vectorises)
              for (int64_t q = q_lo; q < q_hi; ++q) acc[q] += wv * static_cast<A>(src[q - q_lo]);
            } else {
              for (int64_t q = q_lo; q < q_hi; ++q) acc[q] += wv * static_cast<A>(src[(q - q_lo) * step]);
            }
          }
        }
        T* row = y + n * s.y_stride[0] + k * s.y_stride[1] + p * s.y_stride[2];
        for (int64_t q = 0; q < s.Q; ++q) row[q * s.y_stride[3]] = static_cast<T>(acc[q]);
      }
    }
  });
}

// dx (strides s.x_stride, dtype T) from dy (s.y_stride).
template <typename T, typename A>
void depthwise_backward_input(const Conv2dShape& s, const T* dy, const A* w, T* dx) {
  const int64_t M = s.k_per_group(), RS = s.R * s.S;
  if (channels_inner(s)) {
    // a gather: input pixel (h, iw) takes, through tap (r, t), output pixel (p, q) if one reads it
    parallel_over(s.N * s.H, s.W * s.K * RS, [&](int64_t begin, int64_t end) {
      std::vector<A> acc(static_cast<size_t>(s.C));
      std::vector<int64_t> rows(static_cast<size_t>(s.R));
      for (int64_t nh = begin; nh < end; ++nh) {
        const int64_t n = nh / s.H, h = nh % s.H;
        for (int64_t r = 0; r < s.R; ++r)
          if (!conv_out_coord(h, r, s.stride_h, s.pad_h, s.dil_h, s.P, &rows[r])) rows[r] = -1;
        for (int64_t iw = 0; iw < s.W; ++iw) {
          std::fill(acc.begin(), acc.end(), A(0));
          for (int64_t t = 0; t < s.S; ++t) {
            int64_t q;
            if (!conv_out_coord(iw, t, s.stride_w, s.pad_w, s.dil_w, s.Q, &q)) continue;
            for (int64_t r = 0; r < s.R; ++r) {
              if (rows[r] < 0) continue;
              const T* g = dy + n * s.y_stride[0] + rows[r] * s.y_stride[2] + q * s.y_stride[3];
              const A* wv = w + (r * s.S + t) * s.K;
              if (M == 1) {
                for (int64_t c = 0; c < s.C; ++c) acc[c] += wv[c] * static_cast<A>(g[c]);
              } else {
                for (int64_t c = 0; c < s.C; ++c)
                  for (int64_t j = 0; j < M; ++j) acc[c] += wv[c * M + j] * static_cast<A>(g[c * M + j]);
              }
            }
          }
          T* out = dx + n * s.x_stride[0] + h * s.x_stride[2] + iw * s.x_stride[3];
          for (int64_t c = 0; c < s.C; ++c) out[c] = static_cast<T>(acc[c]);
        }
      }
    });
    return;
  }
  // a scatter into the thread's own (n, c) plane, then one cast-and-store pass
  const std::vector<TapColumns> taps = tap_columns(s);
  parallel_over(s.N * s.C, M * s.P * s.Q * RS, [&](int64_t begin, int64_t end) {
    std::vector<A> acc(static_cast<size_t>(s.H * s.W));
    for (int64_t nc = begin; nc < end; ++nc) {
      const int64_t n = nc / s.C, c = nc % s.C;
      std::fill(acc.begin(), acc.end(), A(0));
      for (int64_t j = 0; j < M; ++j) {
        const int64_t k = c * M + j;
        const T* plane = dy + n * s.y_stride[0] + k * s.y_stride[1];
        for (int64_t r = 0; r < s.R; ++r) {
          for (int64_t t = 0; t < s.S; ++t) {
            const int64_t q_lo = taps[t].lo, q_hi = taps[t].hi, iw_lo = taps[t].iw_lo;
            const A wv = w[k * RS + r * s.S + t];
            for (int64_t p = 0; p < s.P; ++p) {
              const int64_t h = conv_in_coord(p, r, s.stride_h, s.pad_h, s.dil_h);
              if (h < 0 || h >= s.H) continue;
              A* dst = acc.data() + h * s.W + iw_lo;
              const T* src = plane + p * s.y_stride[2];
              if (s.stride_w == 1 && s.y_stride[3] == 1) {
                for (int64_t q = q_lo; q < q_hi; ++q) dst[q - q_lo] += wv * static_cast<A>(src[q]);
              } else {
                for (int64_t q = q_lo; q < q_hi; ++q)
                  dst[(q - q_lo) * s.stride_w] += wv * static_cast<A>(src[q * s.y_stride[3]]);
              }
            }
          }
        }
      }
      T* out = dx + n * s.x_stride[0] + c * s.x_stride[1];
      for (int64_t h = 0; h < s.H; ++h)
        for (int64_t iw = 0; iw < s.W; ++iw) out[h * s.x_stride[2] + iw * s.x_stride[3]] = static_cast<T>(acc[h * s.W + iw]);
    }
  });
}

// dw as (K, R*S) acc_t, or (R*S, K) for the channels order.
template <typename T, typename A>
at::Tensor depthwise_backward_weight(const Conv2dShape& s, const T* dy, const T* x, const at::TensorOptions& acc) {
  const int64_t M = s.k_per_group(), RS = s.R * s.S;
  if (channels_inner(s)) {
    at::Tensor partial = at::zeros({at::get_num_threads(), RS, s.K}, acc);
    A* base = partial.data_ptr<A>();
    parallel_over(s.N * s.P, s.Q * s.K * RS, [&](int64_t begin, int64_t end) {
      A* mine = base + at::get_thread_num() * RS * s.K;
      for (int64_t np = begin; np < end; ++np) {
        const int64_t n = np / s.P, p = np % s.P;
        for (int64_t r = 0; r < s.R; ++r) {
          const int64_t h = conv_in_coord(p, r, s.stride_h, s.pad_h, s.dil_h);
          if (h < 0 || h >= s.H) continue;
          for (int64_t q = 0; q < s.Q; ++q) {
            const T* g = dy + n * s.y_stride[0] + p * s.y_stride[2] + q * s.y_stride[3];
            for (int64_t t = 0; t < s.S; ++t) {
              const int64_t iw = conv_in_coord(q, t, s.stride_w, s.pad_w, s.dil_w);
              if (iw < 0 || iw >= s.W) continue;
              const T* xv = x + n * s.x_stride[0] + h * s.x_stride[2] + iw * s.x_stride[3];
              A* dst = mine + (r * s.S + t) * s.K;
              if (M == 1) {
                for (int64_t k = 0; k < s.K; ++k) dst[k] += static_cast<A>(g[k]) * static_cast<A>(xv[k]);
              } else {
                for (int64_t k = 0; k < s.K; ++k) dst[k] += static_cast<A>(g[k]) * static_cast<A>(xv[k / M]);
              }
            }
          }
        }
      }
    });
    return partial.sum(0);
  }
  at::Tensor dw = at::empty({s.K, RS}, acc);
  A* out = dw.data_ptr<A>();
  const std::vector<TapColumns> taps = tap_columns(s);
  parallel_over(s.K, s.N * s.P * s.Q * RS, [&](int64_t begin, int64_t end) {
    for (int64_t k = begin; k < end; ++k) {
      for (int64_t r = 0; r < s.R; ++r) {
        for (int64_t t = 0; t < s.S; ++t) {
          const int64_t q_lo = taps[t].lo, q_hi = taps[t].hi, iw_lo = taps[t].iw_lo;
          const int64_t step = s.stride_w * s.x_stride[3];
          A sum = 0;
          for (int64_t n = 0; n < s.N; ++n) {
            const T* xp = x + n * s.x_stride[0] + (k / M) * s.x_stride[1];
            const T* gp = dy + n * s.y_stride[0] + k * s.y_stride[1];
            for (int64_t p = 0; p < s.P; ++p) {
              const int64_t h = conv_in_coord(p, r, s.stride_h, s.pad_h, s.dil_h);
              if (h < 0 || h >= s.H) continue;
              const T* src = xp + h * s.x_stride[2] + iw_lo * s.x_stride[3];
              const T* g = gp + p * s.y_stride[2];
              if (step == 1 && s.y_stride[3] == 1) {
                for (int64_t q = q_lo; q < q_hi; ++q) sum += static_cast<A>(g[q]) * static_cast<A>(src[q - q_lo]);
              } else {
                for (int64_t q = q_lo; q < q_hi; ++q)
                  sum += static_cast<A>(g[q * s.y_stride[3]]) * static_cast<A>(src[(q - q_lo) * step]);
              }
            }
          }
          out[k * RS + r * s.S + t] = sum;
        }
      }
    }
  });
  return dw;
}

// Images [n0, n0 + nb) of tensor t (N x K x P x Q), channels of group g, as a
// (Kg, nb, P, Q) view: the layout of a GEMM operand with rows k and columns (n, p, q).
at::Tensor chunk_view(const at::Tensor& t, int64_t n0, int64_t nb, int64_t g, int64_t Kg) {
  return t.detach().narrow(0, n0, nb).narrow(1, g * Kg, Kg).transpose(0, 1);
}

// Detached: grad mode and the dispatch guard are thread-local and do not reach
// at::parallel_for's workers, where an out= GEMM refuses operands that require grad.
at::Tensor weight_rows(const at::Tensor& weight, int64_t groups) {
  return weight.detach().to(acc_dtype(weight.scalar_type())).contiguous().view({groups, weight.size(0) / groups, -1});
}

at::Tensor conv2d_forward(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                          at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups) {
  // The ATen calls below are our own arithmetic: below autograd, as any kernel is.
  const at::AutoDispatchBelowADInplaceOrView below_autograd;
  Conv2dShape s = conv2d_shape(input, weight, stride, padding, dilation, groups);
  check_bias(bias, weight);
  at::Tensor y = at::empty({s.N, s.K, s.P, s.Q}, input.options().memory_format(conv2d_memory_format(input, weight)));
  if (y.numel() == 0) return y;
  if (weight.numel() == 0) return bias.has_value() ? y.copy_(bias->view({1, s.K, 1, 1}).expand_as(y)) : y.zero_();

  const auto acc = acc_dtype(input.scalar_type());
  if (depthwise(s)) {
    const auto operands = depthwise_operands(s, input, false, y, true);
    // (no structured bindings: C++17 lambdas cannot capture them)
    const at::Tensor &x = operands.first, &out = operands.second;
    const at::Tensor w = depthwise_weight(weight, channels_inner(s));
    const std::optional<at::Tensor> b = bias.has_value() ? std::optional(bias->detach().to(acc).contiguous()) : std::nullopt;
    CNNKERN_DISPATCH_FLOATS(input.scalar_type(), "cnnkern_conv2d_depthwise_cpu", [&] {
      using A = acc_t<scalar_t>;
      depthwise_forward<scalar_t, A>(s, x.const_data_ptr<scalar_t>(), w.const_data_ptr<A>(),
                                     b.has_value() ? b->const_data_ptr<A>() : nullptr, out.data_ptr<scalar_t>());
    });
    return out.is_same(y) ? y : y.copy_(out);
  }
  const int64_t Kg = s.k_per_group(), CRS = s.c_per_group() * s.R * s.S, PQ = s.P * s.Q;
  const at::Tensor w_rows = weight_rows(weight, groups);
  const std::optional<at::Tensor> b_acc =
      bias.has_value() ? std::optional(bias->detach().to(acc).view({groups, Kg, 1})) : std::nullopt;
  const int64_t chunk = images_per_chunk(s, at::elementSize(acc));

  CNNKERN_DISPATCH_FLOATS(input.scalar_type(), "cnnkern_conv2d_cpu", [&] {
    using A = acc_t<scalar_t>;
    const scalar_t* x = input.const_data_ptr<scalar_t>();
    for_each_chunk(s.N, chunk, weight.numel() * PQ, [&](int64_t n0, int64_t nb) {
      const at::Tensor col = at::empty({CRS, nb * PQ}, input.options().dtype(acc));
      at::Tensor out = at::empty({Kg, nb * PQ}, input.options().dtype(acc));
      for (int64_t g = 0; g < groups; ++g) {
        im2col(x, s, n0, nb, g, col.data_ptr<A>());
        if (b_acc.has_value()) {
          at::addmm_out(out, (*b_acc)[g], w_rows[g], col);
        } else {
          at::mm_out(out, w_rows[g], col);
        }
        chunk_view(y, n0, nb, g, Kg).copy_(out.view({Kg, nb, s.P, s.Q}));
      }
    });
  });
  return y;
}

at::Tensor conv2d_backward_input(const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight,
                                 at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                                 int64_t groups) {
  // The ATen calls below are our own arithmetic: below autograd, as any kernel is.
  const at::AutoDispatchBelowADInplaceOrView below_autograd;
  Conv2dShape s = conv2d_shape(input, weight, stride, padding, dilation, groups);
  check_grad_output(grad_output, input, s);
  const auto acc = acc_dtype(input.scalar_type());
  const auto format = conv2d_memory_format(input, weight);
  if (depthwise(s)) {  // writes every dx element itself: no zero-fill, no accumulator copy
    at::Tensor dx = at::empty(input.sizes(), input.options().memory_format(format));
    if (dx.numel() == 0) return dx;
    if (grad_output.numel() == 0) return dx.zero_();
    const auto operands = depthwise_operands(s, dx, true, grad_output, false);
    const at::Tensor &out = operands.first, &dy = operands.second;
    const at::Tensor w = depthwise_weight(weight, channels_inner(s));
    CNNKERN_DISPATCH_FLOATS(input.scalar_type(), "cnnkern_conv2d_depthwise_dgrad_cpu", [&] {
      using A = acc_t<scalar_t>;
      depthwise_backward_input<scalar_t, A>(s, dy.const_data_ptr<scalar_t>(), w.const_data_ptr<A>(),
                                            out.data_ptr<scalar_t>());
    });
    return out.is_same(dx) ? dx : dx.copy_(out);
  }
  // col2im accumulates into dx, in the accumulator type: each thread zeroes its
  // chunk's images just before, while they are about to be in its cache anyway.
  at::Tensor dx = at::empty(input.sizes(), input.options().dtype(acc).memory_format(format));
  if (dx.numel() == 0 || grad_output.numel() == 0) return dx.zero_().to(input.scalar_type());
  fill_strides(s.x_stride, dx);

  const int64_t Kg = s.k_per_group(), CRS = s.c_per_group() * s.R * s.S, PQ = s.P * s.Q;
  const at::Tensor w_rows = weight_rows(weight, groups);
  const int64_t chunk = images_per_chunk(s, at::elementSize(acc));

  AT_DISPATCH_FLOATING_TYPES(acc, "cnnkern_conv2d_dgrad_cpu", [&] {
    for_each_chunk(s.N, chunk, weight.numel() * PQ, [&](int64_t n0, int64_t nb) {
      const at::Tensor dy = at::empty({Kg, nb * PQ}, dx.options().memory_format(at::MemoryFormat::Contiguous));
      at::Tensor dcol = at::empty({CRS, nb * PQ}, dy.options());
      dx.narrow(0, n0, nb).zero_();
      for (int64_t g = 0; g < groups; ++g) {
        dy.view({Kg, nb, s.P, s.Q}).copy_(chunk_view(grad_output, n0, nb, g, Kg));
        at::mm_out(dcol, w_rows[g].t(), dy);
        col2im_add(dcol.const_data_ptr<scalar_t>(), s, n0, nb, g, dx.data_ptr<scalar_t>());
      }
    });
  });
  return dx.scalar_type() == input.scalar_type() ? dx : dx.to(input.scalar_type());
}

at::Tensor conv2d_backward_weight(const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight,
                                  at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                                  int64_t groups) {
  // The ATen calls below are our own arithmetic: below autograd, as any kernel is.
  const at::AutoDispatchBelowADInplaceOrView below_autograd;
  Conv2dShape s = conv2d_shape(input, weight, stride, padding, dilation, groups);
  check_grad_output(grad_output, input, s);
  const auto acc = acc_dtype(input.scalar_type());
  if (depthwise(s)) {
    at::Tensor dw = at::empty(weight.sizes(), weight.options().memory_format(weight.suggest_memory_format()));
    if (dw.numel() == 0) return dw;
    if (s.N == 0 || s.P * s.Q == 0) return dw.zero_();
    const auto operands = depthwise_operands(s, input, false, grad_output, false);
    const at::Tensor &x = operands.first, &dy = operands.second;
    at::Tensor sums;
    CNNKERN_DISPATCH_FLOATS(input.scalar_type(), "cnnkern_conv2d_depthwise_wgrad_cpu", [&] {
      sums = depthwise_backward_weight<scalar_t, acc_t<scalar_t>>(s, dy.const_data_ptr<scalar_t>(),
                                                                  x.const_data_ptr<scalar_t>(),
                                                                  input.options().dtype(acc));
    });
    return dw.copy_((channels_inner(s) ? sums.t() : sums).reshape(weight.sizes()));
  }
  const int64_t Kg = s.k_per_group(), CRS = s.c_per_group() * s.R * s.S, PQ = s.P * s.Q;
  // One partial per thread, summed in thread order: repeatable for a given thread
  // count. A thread's first chunk writes its partial (no zero-fill of a buffer
  // the size of the weight per thread); partials no thread wrote are skipped.
  const int64_t threads = at::get_num_threads();
  at::Tensor partial = at::empty({threads, groups, Kg, CRS}, input.options().dtype(acc));
  std::vector<char> wrote(static_cast<size_t>(threads), 0);
  if (s.N > 0 && weight.numel() > 0) {
    const int64_t chunk = images_per_chunk(s, at::elementSize(acc));
    CNNKERN_DISPATCH_FLOATS(input.scalar_type(), "cnnkern_conv2d_wgrad_cpu", [&] {
      using A = acc_t<scalar_t>;
      const scalar_t* x = input.const_data_ptr<scalar_t>();
      for_each_chunk(s.N, chunk, weight.numel() * PQ, [&](int64_t n0, int64_t nb) {
        const at::Tensor col = at::empty({CRS, nb * PQ}, input.options().dtype(acc));
        const at::Tensor dy = at::empty({Kg, nb * PQ}, col.options());
        const int64_t thread = at::get_thread_num();
        const at::Tensor mine = partial[thread];
        for (int64_t g = 0; g < groups; ++g) {
          im2col(x, s, n0, nb, g, col.data_ptr<A>());
          dy.view({Kg, nb, s.P, s.Q}).copy_(chunk_view(grad_output, n0, nb, g, Kg));
          if (wrote[thread]) {
            mine[g].addmm_(dy, col.t());
          } else {
            at::Tensor out = mine[g];
            at::mm_out(out, dy, col.t());
          }
        }
        wrote[thread] = 1;
      });
    });
  }
  at::Tensor dw = at::empty(weight.sizes(), weight.options().memory_format(weight.suggest_memory_format()));
  std::optional<at::Tensor> total;
  for (int64_t t = 0; t < threads; ++t) {
    if (!wrote[t]) continue;
    if (total.has_value())
      total->add_(partial[t]);  // into the first written partial: ours, no new buffer
    else
      total = partial[t];
  }
  return total.has_value() ? dw.copy_(total->view(weight.sizes())) : dw.zero_();
}

at::Tensor conv2d_backward_bias(const at::Tensor& grad_output) {
  TORCH_CHECK(grad_output.dim() == 4, "cnnkern conv2d_backward_bias: expected a 4-D grad_output");
  const int64_t N = grad_output.size(0), K = grad_output.size(1), P = grad_output.size(2), Q = grad_output.size(3);
  at::Tensor db = at::empty({K}, grad_output.options());
  CNNKERN_DISPATCH_FLOATS(grad_output.scalar_type(), "cnnkern_conv2d_bgrad_cpu", [&] {
    using A = acc_t<scalar_t>;
    const scalar_t* dy = grad_output.const_data_ptr<scalar_t>();
    const auto st = grad_output.strides();
    const bool rows_contiguous = st[3] == 1 && st[2] == Q;  // each (n, k) plane is one run of P*Q
    scalar_t* out = db.data_ptr<scalar_t>();
    parallel_over(K, N * P * Q, [&](int64_t begin, int64_t end) {
      for (int64_t k = begin; k < end; ++k) {
        // Eight running sums let the loop pipeline (and vectorise) without reassociating one chain.
        A sums[8] = {};
        for (int64_t n = 0; n < N; ++n) {
          const scalar_t* plane = dy + n * st[0] + k * st[1];
          if (rows_contiguous) {
            int64_t i = 0;
            for (; i + 8 <= P * Q; i += 8)
              for (int j = 0; j < 8; ++j) sums[j] += static_cast<A>(plane[i + j]);
            for (; i < P * Q; ++i) sums[0] += static_cast<A>(plane[i]);
          } else {
            for (int64_t p = 0; p < P; ++p)
              for (int64_t q = 0; q < Q; ++q) sums[0] += static_cast<A>(plane[p * st[2] + q * st[3]]);
          }
        }
        A total = 0;
        for (A v : sums) total += v;
        out[k] = static_cast<scalar_t>(total);
      }
    });
  });
  return db;
}

}  // namespace

TORCH_LIBRARY_IMPL(cnnkern, CPU, m) {
  m.impl("conv2d", &conv2d_forward);
  m.impl("conv2d_backward_input", &conv2d_backward_input);
  m.impl("conv2d_backward_weight", &conv2d_backward_weight);
  m.impl("conv2d_backward_bias", &conv2d_backward_bias);
}

}  // namespace cnnkern::cpu
