// Max, average and adaptive-average pooling, forward and backward, on CUDA cores.
//
// Forward: one thread per output element (n, c, oh, ow). It scans its window
// in acc_t<T> (fp32 for Half/BFloat16) and writes y (and, for max, the flat
// index h * W + w) exactly once. Backward: one thread per input element
// (n, c, h, w). It gathers the windows that cover it (conv_out_coord inverts
// the window map tap by tap; adaptive windows form a short contiguous range)
// and writes dx exactly once: no atomics, no zero-fill, deterministic.
//
// Work is a 1-D grid-stride loop over the N*C*rows*cols elements a pass owns.
// The linearisation follows the memory layout so that the 32 threads of a
// warp touch neighbouring addresses: when the channel stride of x (the input,
// or dx) is 1 (channels_last) the channel is the fastest index, otherwise the
// column. Tensors are addressed through their element strides, so NCHW,
// channels_last and arbitrary views share one path.
//
// Memory traffic: every output (forward) or input-gradient (backward) element
// is written once. Each input element is read by every window covering it,
// about (kernel/stride)^2 times for the forward passes, and each dy (and
// indices) element about as often by the backward gathers; neighbouring
// threads share those reads, so L1/L2 absorb the repeats and DRAM sees roughly
// one pass over x and y. Pooling is bandwidth-bound: there is no shared memory.
//
// Index math: every window rule (output size, divisor, NaN and ties, adaptive
// ranges) comes from cnnkern/pool2d_index.h, shared with the CPU kernels. The
// element counter and its decomposition use 32-bit unsigned arithmetic when
// the count allows (integer division is the main ALU cost here), 64-bit
// otherwise; coordinates and memory offsets are int64.
#ifndef CNNKERN_GPU_NS
#define CNNKERN_GPU_NS cuda
#endif

#include <climits>
#include <cmath>
#include <cstdint>
#include <stdexcept>

#include "cnnkern/conv2d_index.h"
#include "cnnkern/gpu_types.h"
#include "cnnkern/launch.h"
#include "cnnkern/pool2d_index.h"
#include "cnnkern/pool2d_launch.h"

namespace cnnkern {
namespace CNNKERN_GPU_NS {
namespace {

constexpr int kThreads = 256;
// At least 4 resident blocks (half of an SM's 2048 threads) caps registers at
// 64: the kernels are bandwidth-bound and need warps in flight to hide latency.
// Without it the adaptive backward gather took up to 76 registers.
constexpr int kMinBlocksPerSm = 4;
// Grid-stride cap: 2^16 blocks of 256 threads keep ~16M threads in flight,
// far beyond what any GPU holds, so larger tensors just loop.
constexpr int64_t kMaxBlocks = int64_t{1} << 16;
// Most elements walked with a 32-bit counter, which must not wrap when a grid
// stride is added to it. A build may lower it (the emulation tests set 0 to
// push every launch through the 64-bit path).
#ifndef CNNKERN_POOL2D_MAX_ELEMENTS32
#define CNNKERN_POOL2D_MAX_ELEMENTS32 ((int64_t{1} << 31) - 1)
#endif
constexpr int64_t kMaxElements32 = CNNKERN_POOL2D_MAX_ELEMENTS32;
static_assert(kMaxElements32 + kMaxBlocks * kThreads <= int64_t{UINT32_MAX}, "32-bit counter would wrap");

// Keeps a tap loop rolled (nvcc only; g++ would warn about the pragma). The
// backward gathers reject most taps (all but about one in `stride` per
// dimension), so unrolling them only multiplies the division code around
// conv_out_coord; rolled, no instantiation spills.
#if defined(__CUDACC__)
#define CNNKERN_POOL_NO_UNROLL _Pragma("unroll 1")
#else
#define CNNKERN_POOL_NO_UNROLL
#endif

template <typename T>
__device__ __forceinline__ acc_t<T> to_acc(T v) {
  return static_cast<acc_t<T>>(v);
}

__device__ __forceinline__ bool in_range(int64_t i, int64_t extent) { return i >= 0 && i < extent; }

// The elements one pass owns: an N x C x rows x cols stack, walked in the
// order that matches its memory layout.
template <typename Index>
struct Walk {
  Index total, C, rows, cols;
  bool channel_fastest;
};

// (n, c, row, col) of one element of a Walk.
struct Pos {
  int64_t n, c, row, col;
};

template <typename Index>
__device__ __forceinline__ Pos decode(const Walk<Index>& wk, Index i) {
  Index n, c, row, col;
  if (wk.channel_fastest) {  // i = ((n * rows + row) * cols + col) * C + c
    Index q = i / wk.C;
    c = i - q * wk.C;
    i = q;
    q = i / wk.cols;
    col = i - q * wk.cols;
    n = q / wk.rows;
    row = q - n * wk.rows;
  } else {  // i = ((n * C + c) * rows + row) * cols + col
    Index q = i / wk.cols;
    col = i - q * wk.cols;
    i = q;
    q = i / wk.rows;
    row = i - q * wk.rows;
    n = q / wk.C;
    c = q - n * wk.C;
  }
  return {static_cast<int64_t>(n), static_cast<int64_t>(c), static_cast<int64_t>(row), static_cast<int64_t>(col)};
}

// Offset of the (n, c) plane and of (row, col) within it, for strides in n c h w order.
__device__ __forceinline__ int64_t plane_offset(const int64_t* stride, const Pos& p) {
  return p.n * stride[0] + p.c * stride[1];
}
__device__ __forceinline__ int64_t pixel_offset(const int64_t* stride, int64_t row, int64_t col) {
  return row * stride[2] + col * stride[3];
}

// Grid-stride loop header: `i` runs over this thread's elements of `wk`.
#define CNNKERN_POOL_FOR_EACH(i, wk)                                                         \
  for (Index i = static_cast<Index>(blockIdx.x) * static_cast<Index>(blockDim.x) + threadIdx.x; \
       i < (wk).total; i += static_cast<Index>(gridDim.x) * static_cast<Index>(blockDim.x))

// ---- Forward kernels: one thread per output element ---------------------------

template <typename T, typename Index>
__global__ void __launch_bounds__(kThreads, kMinBlocksPerSm)
    max_pool2d_forward_kernel(const Walk<Index> wk, const Pool2dShape s, const T* x, T* y, int64_t* indices) {
  using Acc = acc_t<T>;
  CNNKERN_POOL_FOR_EACH(i, wk) {
    const Pos p = decode(wk, i);  // row, col = oh, ow
    const T* plane = x + plane_offset(s.x_stride, p);
    Acc best = -static_cast<Acc>(INFINITY);
    int64_t best_at = max_pool_start_index(s, p.row, p.col);  // torch's seed, even for an all-padding window
    for (int kh = 0; kh < static_cast<int>(s.kernel_h); ++kh) {
      const int64_t h = conv_in_coord(p.row, kh, s.stride_h, s.pad_h, s.dil_h);
      if (!in_range(h, s.H)) continue;
      for (int kw = 0; kw < static_cast<int>(s.kernel_w); ++kw) {
        const int64_t w = conv_in_coord(p.col, kw, s.stride_w, s.pad_w, s.dil_w);
        if (!in_range(w, s.W)) continue;
        const Acc v = to_acc(plane[pixel_offset(s.x_stride, h, w)]);
        // NaN always takes and ties do not; an all -inf window keeps the seed.
        if (max_pool_takes(v, best)) {
          best = v;
          best_at = h * s.W + w;
        }
      }
    }
    const int64_t out = plane_offset(s.y_stride, p) + pixel_offset(s.y_stride, p.row, p.col);
    y[out] = static_cast<T>(best);
    indices[out] = best_at;
  }
}

template <typename T, typename Index>
__global__ void __launch_bounds__(kThreads, kMinBlocksPerSm)
    avg_pool2d_forward_kernel(const Walk<Index> wk, const Pool2dShape s, const T* x, T* y,
                              const bool count_include_pad, const int64_t divisor_override) {
  using Acc = acc_t<T>;
  CNNKERN_POOL_FOR_EACH(i, wk) {
    const Pos p = decode(wk, i);  // row, col = oh, ow
    const T* plane = x + plane_offset(s.x_stride, p);
    // Dilation 1: the window is the box [h0, h0 + kernel_h) x [w0, w0 + kernel_w),
    // clipped to the input (padding adds zeros).
    const int64_t h0 = conv_in_coord(p.row, 0, s.stride_h, s.pad_h, 1);
    const int64_t w0 = conv_in_coord(p.col, 0, s.stride_w, s.pad_w, 1);
    const int64_t h_begin = h0 > 0 ? h0 : 0, w_begin = w0 > 0 ? w0 : 0;
    const int64_t h_end = h0 + s.kernel_h < s.H ? h0 + s.kernel_h : s.H;
    const int64_t w_end = w0 + s.kernel_w < s.W ? w0 + s.kernel_w : s.W;
    Acc sum = Acc(0);
    for (int64_t h = h_begin; h < h_end; ++h)
      for (int64_t w = w_begin; w < w_end; ++w) sum += to_acc(plane[pixel_offset(s.x_stride, h, w)]);
    const Acc divisor = static_cast<Acc>(avg_pool_divisor(s, p.row, p.col, count_include_pad, divisor_override));
    y[plane_offset(s.y_stride, p) + pixel_offset(s.y_stride, p.row, p.col)] = static_cast<T>(sum / divisor);
  }
}

template <typename T, typename Index>
__global__ void __launch_bounds__(kThreads, kMinBlocksPerSm)
    adaptive_avg_pool2d_forward_kernel(const Walk<Index> wk, const Pool2dShape s, const T* x, T* y) {
  using Acc = acc_t<T>;
  CNNKERN_POOL_FOR_EACH(i, wk) {
    const Pos p = decode(wk, i);  // row, col = oh, ow
    const T* plane = x + plane_offset(s.x_stride, p);
    const int64_t h0 = adaptive_start(p.row, s.H, s.OH), h1 = adaptive_end(p.row, s.H, s.OH);
    const int64_t w0 = adaptive_start(p.col, s.W, s.OW), w1 = adaptive_end(p.col, s.W, s.OW);
    Acc sum = Acc(0);
    for (int64_t h = h0; h < h1; ++h)
      for (int64_t w = w0; w < w1; ++w) sum += to_acc(plane[pixel_offset(s.x_stride, h, w)]);
    const Acc area = static_cast<Acc>((h1 - h0) * (w1 - w0));
    y[plane_offset(s.y_stride, p) + pixel_offset(s.y_stride, p.row, p.col)] = static_cast<T>(sum / area);
  }
}

// ---- Backward kernels: one thread per input element, gathering ------------------

// dx[h][w] = sum of dy over the windows covering (h, w) that picked it.
// Tap (kh, kw) of window (oh, ow) reads (h, w) iff conv_out_coord maps (h, kh)
// to oh and (w, kw) to ow, so the taps enumerate the covering windows once each.
template <typename T, typename Index>
__global__ void __launch_bounds__(kThreads, kMinBlocksPerSm)
    max_pool2d_backward_kernel(const Walk<Index> wk, const Pool2dShape s, const T* dy, const int64_t* indices,
                               T* dx) {
  using Acc = acc_t<T>;
  CNNKERN_POOL_FOR_EACH(i, wk) {
    const Pos p = decode(wk, i);  // row, col = h, w
    const int64_t plane = plane_offset(s.y_stride, p);
    const T* dy_plane = dy + plane;
    const int64_t* idx_plane = indices + plane;
    const int64_t me = p.row * s.W + p.col;
    Acc sum = Acc(0);
    CNNKERN_POOL_NO_UNROLL
    for (int kh = 0; kh < static_cast<int>(s.kernel_h); ++kh) {
      int64_t oh;
      if (!conv_out_coord(p.row, kh, s.stride_h, s.pad_h, s.dil_h, s.OH, &oh)) continue;
      CNNKERN_POOL_NO_UNROLL
      for (int kw = 0; kw < static_cast<int>(s.kernel_w); ++kw) {
        int64_t ow;
        if (!conv_out_coord(p.col, kw, s.stride_w, s.pad_w, s.dil_w, s.OW, &ow)) continue;
        const int64_t at = pixel_offset(s.y_stride, oh, ow);
        if (idx_plane[at] == me) sum += to_acc(dy_plane[at]);
      }
    }
    dx[plane_offset(s.x_stride, p) + pixel_offset(s.x_stride, p.row, p.col)] = static_cast<T>(sum);
  }
}

// dx[h][w] = sum over the windows covering (h, w) of dy / divisor (dilation 1).
template <typename T, typename Index>
__global__ void __launch_bounds__(kThreads, kMinBlocksPerSm)
    avg_pool2d_backward_kernel(const Walk<Index> wk, const Pool2dShape s, const T* dy, T* dx,
                               const bool count_include_pad, const int64_t divisor_override) {
  using Acc = acc_t<T>;
  CNNKERN_POOL_FOR_EACH(i, wk) {
    const Pos p = decode(wk, i);  // row, col = h, w
    const T* dy_plane = dy + plane_offset(s.y_stride, p);
    Acc sum = Acc(0);
    CNNKERN_POOL_NO_UNROLL
    for (int kh = 0; kh < static_cast<int>(s.kernel_h); ++kh) {
      int64_t oh;
      if (!conv_out_coord(p.row, kh, s.stride_h, s.pad_h, 1, s.OH, &oh)) continue;
      CNNKERN_POOL_NO_UNROLL
      for (int kw = 0; kw < static_cast<int>(s.kernel_w); ++kw) {
        int64_t ow;
        if (!conv_out_coord(p.col, kw, s.stride_w, s.pad_w, 1, s.OW, &ow)) continue;
        const Acc divisor = static_cast<Acc>(avg_pool_divisor(s, oh, ow, count_include_pad, divisor_override));
        sum += to_acc(dy_plane[pixel_offset(s.y_stride, oh, ow)]) / divisor;
      }
    }
    dx[plane_offset(s.x_stride, p) + pixel_offset(s.x_stride, p.row, p.col)] = static_cast<T>(sum);
  }
}

// dx[h][w] = sum over the adaptive windows covering (h, w) of dy / area; those
// windows are [oh0, oh1) x [ow0, ow1), usually one or two per dimension.
template <typename T, typename Index>
__global__ void __launch_bounds__(kThreads, kMinBlocksPerSm)
    adaptive_avg_pool2d_backward_kernel(const Walk<Index> wk, const Pool2dShape s, const T* dy, T* dx) {
  using Acc = acc_t<T>;
  CNNKERN_POOL_FOR_EACH(i, wk) {
    const Pos p = decode(wk, i);  // row, col = h, w
    const T* dy_plane = dy + plane_offset(s.y_stride, p);
    Acc sum = Acc(0);
    if (s.OH > 0 && s.OW > 0) {  // an empty output covers nothing: dx = 0
      int64_t oh0, oh1, ow0, ow1;
      adaptive_covering(p.row, s.H, s.OH, &oh0, &oh1);
      adaptive_covering(p.col, s.W, s.OW, &ow0, &ow1);
      for (int64_t oh = oh0; oh < oh1; ++oh) {
        const int64_t rows = adaptive_end(oh, s.H, s.OH) - adaptive_start(oh, s.H, s.OH);
        for (int64_t ow = ow0; ow < ow1; ++ow) {
          const int64_t cols = adaptive_end(ow, s.W, s.OW) - adaptive_start(ow, s.W, s.OW);
          sum += to_acc(dy_plane[pixel_offset(s.y_stride, oh, ow)]) / static_cast<Acc>(rows * cols);
        }
      }
    }
    dx[plane_offset(s.x_stride, p) + pixel_offset(s.x_stride, p.row, p.col)] = static_cast<T>(sum);
  }
}

#undef CNNKERN_POOL_FOR_EACH
#undef CNNKERN_POOL_NO_UNROLL

// ---- Launch helpers -------------------------------------------------------------

// Launches kernel<Index> over the N x C x rows x cols elements, the channel
// fastest when x_stride (that of x, or of dx) says channels_last. `make` maps
// an Index tag to the kernel instantiation, so both widths are built.
template <typename MakeKernel, typename... Args>
void launch_walk(const Pool2dShape& s, int64_t rows, int64_t cols, MakeKernel make, gpu_stream_t stream,
                 const Args&... args) {
  const int64_t total = s.N * s.C * rows * cols;
  if (total <= 0) return;
  if (s.kernel_h > INT_MAX || s.kernel_w > INT_MAX)
    throw std::invalid_argument("cnnkern pool2d (GPU): kernel size too large for the kernels");
  const bool channel_fastest = s.x_stride[1] == 1 && s.C > 1;
  const int64_t wanted = (total + kThreads - 1) / kThreads;
  const dim3 grid(static_cast<unsigned>(wanted < kMaxBlocks ? wanted : kMaxBlocks));
  auto go = [&](auto index_tag) {
    using Index = decltype(index_tag);
    const Walk<Index> wk{static_cast<Index>(total), static_cast<Index>(s.C), static_cast<Index>(rows),
                         static_cast<Index>(cols), channel_fastest};
    launch_kernel(make(index_tag), grid, dim3(kThreads), 0, stream, wk, s, args...);
  };
  if (total <= kMaxElements32)
    go(uint32_t{});
  else
    go(uint64_t{});
}

}  // namespace

template <typename T>
void max_pool2d_forward(const Pool2dShape& s, const T* x, T* y, int64_t* indices, gpu_stream_t stream) {
  launch_walk(
      s, s.OH, s.OW, [](auto tag) { return max_pool2d_forward_kernel<T, decltype(tag)>; }, stream, x, y, indices);
}

template <typename T>
void max_pool2d_backward(const Pool2dShape& s, const T* dy, const int64_t* indices, T* dx, gpu_stream_t stream) {
  launch_walk(
      s, s.H, s.W, [](auto tag) { return max_pool2d_backward_kernel<T, decltype(tag)>; }, stream, dy, indices, dx);
}

template <typename T>
void avg_pool2d_forward(const Pool2dShape& s, const T* x, T* y, bool count_include_pad, int64_t divisor_override,
                        gpu_stream_t stream) {
  launch_walk(
      s, s.OH, s.OW, [](auto tag) { return avg_pool2d_forward_kernel<T, decltype(tag)>; }, stream, x, y,
      count_include_pad, divisor_override);
}

template <typename T>
void avg_pool2d_backward(const Pool2dShape& s, const T* dy, T* dx, bool count_include_pad, int64_t divisor_override,
                         gpu_stream_t stream) {
  launch_walk(
      s, s.H, s.W, [](auto tag) { return avg_pool2d_backward_kernel<T, decltype(tag)>; }, stream, dy, dx,
      count_include_pad, divisor_override);
}

template <typename T>
void adaptive_avg_pool2d_forward(const Pool2dShape& s, const T* x, T* y, gpu_stream_t stream) {
  launch_walk(
      s, s.OH, s.OW, [](auto tag) { return adaptive_avg_pool2d_forward_kernel<T, decltype(tag)>; }, stream, x, y);
}

template <typename T>
void adaptive_avg_pool2d_backward(const Pool2dShape& s, const T* dy, T* dx, gpu_stream_t stream) {
  launch_walk(
      s, s.H, s.W, [](auto tag) { return adaptive_avg_pool2d_backward_kernel<T, decltype(tag)>; }, stream, dy, dx);
}

#define CNNKERN_INSTANTIATE_POOL2D(T)                                                                          \
  template void max_pool2d_forward<T>(const Pool2dShape&, const T*, T*, int64_t*, gpu_stream_t);               \
  template void max_pool2d_backward<T>(const Pool2dShape&, const T*, const int64_t*, T*, gpu_stream_t);        \
  template void avg_pool2d_forward<T>(const Pool2dShape&, const T*, T*, bool, int64_t, gpu_stream_t);          \
  template void avg_pool2d_backward<T>(const Pool2dShape&, const T*, T*, bool, int64_t, gpu_stream_t);         \
  template void adaptive_avg_pool2d_forward<T>(const Pool2dShape&, const T*, T*, gpu_stream_t);                \
  template void adaptive_avg_pool2d_backward<T>(const Pool2dShape&, const T*, T*, gpu_stream_t);

CNNKERN_INSTANTIATE_POOL2D(float)
CNNKERN_INSTANTIATE_POOL2D(double)
CNNKERN_INSTANTIATE_POOL2D(c10::Half)
CNNKERN_INSTANTIATE_POOL2D(c10::BFloat16)
#undef CNNKERN_INSTANTIATE_POOL2D

}  // namespace CNNKERN_GPU_NS
}  // namespace cnnkern
