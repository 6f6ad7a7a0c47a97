// Max, average and adaptive-average pooling, forward and backward, on CUDA cores.
//
// Forward: one thread per output element (n, c, oh, ow). It scans its window
// in acc_t<T> (fp32 for Half/BFloat16) and writes y (and, for max, the flat
// index h * W + w) exactly once. Backward: one thread per input element
// (n, c, h, w). It gathers the windows that cover it (a tap walk inverts the
// window map tap by tap; adaptive windows form a short contiguous range) and
// writes dx exactly once: no atomics, no zero-fill, deterministic.
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
// Index math: the window rules (output size, divisor, NaN and ties, adaptive
// ranges) are cnnkern/pool2d_index.h's, shared with the CPU kernels, restated
// here in the pass's integer width. Integer division is the main ALU cost of
// pooling (a 64-bit one is a call of several hundred instructions), so:
//  - every launch whose element count, offsets and window arithmetic fit in
//    int32 runs a 32-bit instantiation (counter, coordinates, offsets); only
//    larger tensors take the 64-bit one;
//  - divisions by runtime extents (the element decode, the adaptive window
//    bounds) go through Dividers built on the host (cnnkern/fast_divmod.h):
//    a multiply-high and a shift in the 32-bit path;
//  - the backward gathers divide once per dimension, not per tap:
//    h + pad - k * dil is kept as quotient and remainder by the stride and
//    stepped by -dil (a tap reads a window iff the remainder is 0).
// So the 32-bit paths have no division routine in their SASS. There are no
// vector loads yet: channels_last passes stay one element per thread.
#ifndef CNNKERN_GPU_NS
#define CNNKERN_GPU_NS cuda
#endif

#include <climits>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <stdexcept>
#include <type_traits>

#include "cnnkern/fast_divmod.h"
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
static_assert(kMaxElements32 <= INT32_MAX, "Divider<uint32_t> takes numerators below 2^31");

// Keeps a tap loop rolled (nvcc only; g++ would warn about the pragma). The
// backward gathers reject most taps (all but about one in `stride` per
// dimension), so unrolling them buys little and costs registers.
#if defined(__CUDACC__)
#define CNNKERN_POOL_NO_UNROLL _Pragma("unroll 1")
#else
#define CNNKERN_POOL_NO_UNROLL
#endif

template <typename T>
__device__ __forceinline__ acc_t<T> to_acc(T v) {
  return static_cast<acc_t<T>>(v);
}

// Signed coordinates and offsets in the width of the pass's counter: windows
// start in the padding, so coordinates go negative.
template <typename Index>
using Coord = std::conditional_t<sizeof(Index) == 4, int32_t, int64_t>;

// The elements one pass owns: an N x C x rows x cols stack, walked in the
// order that matches its memory layout; its extents as dividers (decode runs
// once per element).
template <typename Index>
struct Walk {
  Index total;
  Divider<Index> C, rows, cols;
  bool channel_fastest;
};

// The pooling geometry in the pass's width. Dividers replace the divisions
// by runtime values the window maps need: the stride (backward gathers), the
// output extents (adaptive windows) and the input extents (adaptive covering).
template <typename Index>
struct Geometry {
  using I = Coord<Index>;
  I H, W, OH, OW;
  I kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w;
  I dil_q_h, dil_r_h, dil_q_w, dil_r_w;  // dil / stride and dil % stride: one tap's step in (quotient, remainder)
  Divider<Index> div_stride_h, div_stride_w, div_H, div_W, div_OH, div_OW;
  I x_stride[4];  // input (or its gradient), order n c h w
  I y_stride[4];  // output, indices and output gradient
};

// (n, c, row, col) of one element of a Walk.
template <typename I>
struct Pos {
  I n, c, row, col;
};

template <typename Index>
__device__ __forceinline__ Pos<Coord<Index>> decode(const Walk<Index>& wk, Index i) {
  Index n, c, row, col, q;
  if (wk.channel_fastest) {  // i = ((n * rows + row) * cols + col) * C + c
    c = wk.C.divmod(i, &q);
    col = wk.cols.divmod(q, &q);
    row = wk.rows.divmod(q, &n);
  } else {  // i = ((n * C + c) * rows + row) * cols + col
    col = wk.cols.divmod(i, &q);
    row = wk.rows.divmod(q, &q);
    c = wk.C.divmod(q, &n);
  }
  using I = Coord<Index>;
  return {static_cast<I>(n), static_cast<I>(c), static_cast<I>(row), static_cast<I>(col)};
}

// Offset of the (n, c) plane and of (row, col) within it, for strides in n c h w order.
template <typename I>
__device__ __forceinline__ I plane_offset(const I* stride, const Pos<I>& p) {
  return p.n * stride[0] + p.c * stride[1];
}
template <typename I>
__device__ __forceinline__ I pixel_offset(const I* stride, I row, I col) {
  return row * stride[2] + col * stride[3];
}

template <typename I>
__device__ __forceinline__ I min_of(I a, I b) {
  return a < b ? a : b;
}
template <typename I>
__device__ __forceinline__ I max_of(I a, I b) {
  return a > b ? a : b;
}

// avg_pool_divisor (pool2d_index.h) in the pass's width.
template <typename Index, typename I = Coord<Index>>
__device__ __forceinline__ I avg_divisor(const Geometry<Index>& g, I oh, I ow, bool count_include_pad) {
  I h0 = oh * g.stride_h - g.pad_h, w0 = ow * g.stride_w - g.pad_w;
  const I h1 = min_of<I>(h0 + g.kernel_h, g.H + g.pad_h), w1 = min_of<I>(w0 + g.kernel_w, g.W + g.pad_w);
  if (count_include_pad) return (h1 - h0) * (w1 - w0);
  return (min_of<I>(h1, g.H) - max_of<I>(h0, 0)) * (min_of<I>(w1, g.W) - max_of<I>(w0, 0));
}

// Adaptive windows (pool2d_index.h's adaptive_start/end/covering) through
// dividers; the 32-bit path guarantees (out + 1) * in < 2^31.
template <typename Index>
__device__ __forceinline__ Coord<Index> ad_start(Coord<Index> i, Coord<Index> in, const Divider<Index>& out) {
  return static_cast<Coord<Index>>(out.div(static_cast<Index>(i * in)));
}
template <typename Index>
__device__ __forceinline__ Coord<Index> ad_end(Coord<Index> i, Coord<Index> in, const Divider<Index>& out) {
  return static_cast<Coord<Index>>(out.div(static_cast<Index>((i + 1) * in + static_cast<Coord<Index>>(out.divisor) - 1)));
}
template <typename Index>
__device__ __forceinline__ void ad_covering(Coord<Index> i, Coord<Index> in, Coord<Index> out,
                                            const Divider<Index>& div_in, const Divider<Index>& div_out,
                                            Coord<Index>* first, Coord<Index>* last) {
  using I = Coord<Index>;
  I f = static_cast<I>(div_in.div(static_cast<Index>(i * out)));
  while (f > 0 && ad_end(f - 1, in, div_out) > i) --f;
  while (f < out && ad_end(f, in, div_out) <= i) ++f;
  I l = f;
  while (l < out && ad_start(l, in, div_out) <= i) ++l;
  *first = f;
  *last = l;
}

// The taps of one dimension of a backward gather: tap k of output o reads
// o * stride - pad + k * dil, so input i is read by tap k of o = t / stride
// when t = i + pad - k * dil is a non-negative multiple of the stride. t is
// kept as (q, r) = (t / stride, t % stride) and stepped by -dil, so only the
// first tap divides (through the divider).
template <typename I>
struct TapWalk {
  I q, r;
};

template <typename Index>
__device__ __forceinline__ TapWalk<Coord<Index>> first_tap(Coord<Index> i, Coord<Index> pad,
                                                          const Divider<Index>& stride) {
  Index q;
  const Index r = stride.divmod(static_cast<Index>(i + pad), &q);
  return {static_cast<Coord<Index>>(q), static_cast<Coord<Index>>(r)};
}

template <typename I>
__device__ __forceinline__ void next_tap(TapWalk<I>& t, I dil_q, I dil_r, I stride) {
  t.r -= dil_r;
  t.q -= dil_q;
  if (t.r < 0) {
    t.r += stride;
    --t.q;
  }
}

// Grid-stride loop header: `i` runs over this thread's elements of `wk`.
#define CNNKERN_POOL_FOR_EACH(i, wk)                                                         \
  for (Index i = static_cast<Index>(blockIdx.x) * static_cast<Index>(blockDim.x) + threadIdx.x; \
       i < (wk).total; i += static_cast<Index>(gridDim.x) * static_cast<Index>(blockDim.x))

// ---- Forward kernels: one thread per output element ---------------------------

template <typename T, typename Index>
__global__ void __launch_bounds__(kThreads, kMinBlocksPerSm)
    max_pool2d_forward_kernel(const Walk<Index> wk, const Geometry<Index> g, const T* x, T* y, int64_t* indices) {
  using Acc = acc_t<T>;
  using I = Coord<Index>;
  CNNKERN_POOL_FOR_EACH(i, wk) {
    const Pos<I> p = decode(wk, i);  // row, col = oh, ow
    const T* plane = x + plane_offset(g.x_stride, p);
    const I h0 = p.row * g.stride_h - g.pad_h, w0 = p.col * g.stride_w - g.pad_w;
    // torch's seed, even for an all-padding window: the first tap at or past
    // row 0 and column 0 (max_pool_start_index; pad <= kernel / 2 bounds the steps).
    I hs = h0, ws = w0;
    while (hs < 0) hs += g.dil_h;
    while (ws < 0) ws += g.dil_w;
    Acc best = -static_cast<Acc>(INFINITY);
    I best_at = hs * g.W + ws;
    for (I kh = 0; kh < g.kernel_h; ++kh) {
      const I h = h0 + kh * g.dil_h;
      if (h < 0 || h >= g.H) continue;
      for (I kw = 0; kw < g.kernel_w; ++kw) {
        const I w = w0 + kw * g.dil_w;
        if (w < 0 || w >= g.W) continue;
        const Acc v = to_acc(plane[pixel_offset(g.x_stride, h, w)]);
        // NaN always takes and ties do not; an all -inf window keeps the seed.
        if (max_pool_takes(v, best)) {
          best = v;
          best_at = h * g.W + w;
        }
      }
    }
    const I out = plane_offset(g.y_stride, p) + pixel_offset(g.y_stride, p.row, p.col);
    y[out] = static_cast<T>(best);
    indices[out] = static_cast<int64_t>(best_at);
  }
}

template <typename T, typename Index>
__global__ void __launch_bounds__(kThreads, kMinBlocksPerSm)
    avg_pool2d_forward_kernel(const Walk<Index> wk, const Geometry<Index> g, const T* x, T* y,
                              const bool count_include_pad, const int64_t divisor_override) {
  using Acc = acc_t<T>;
  using I = Coord<Index>;
  CNNKERN_POOL_FOR_EACH(i, wk) {
    const Pos<I> p = decode(wk, i);  // row, col = oh, ow
    const T* plane = x + plane_offset(g.x_stride, p);
    // Dilation 1: the window is the box [h0, h0 + kernel_h) x [w0, w0 + kernel_w),
    // clipped to the input (padding adds zeros).
    const I h0 = p.row * g.stride_h - g.pad_h, w0 = p.col * g.stride_w - g.pad_w;
    const I h_begin = max_of<I>(h0, 0), w_begin = max_of<I>(w0, 0);
    const I h_end = min_of<I>(h0 + g.kernel_h, g.H), w_end = min_of<I>(w0 + g.kernel_w, g.W);
    Acc sum = Acc(0);
    for (I h = h_begin; h < h_end; ++h)
      for (I w = w_begin; w < w_end; ++w) sum += to_acc(plane[pixel_offset(g.x_stride, h, w)]);
    const Acc divisor = divisor_override != 0 ? static_cast<Acc>(divisor_override)
                                              : static_cast<Acc>(avg_divisor(g, p.row, p.col, count_include_pad));
    y[plane_offset(g.y_stride, p) + pixel_offset(g.y_stride, p.row, p.col)] = static_cast<T>(sum / divisor);
  }
}

template <typename T, typename Index>
__global__ void __launch_bounds__(kThreads, kMinBlocksPerSm)
    adaptive_avg_pool2d_forward_kernel(const Walk<Index> wk, const Geometry<Index> g, const T* x, T* y) {
  using Acc = acc_t<T>;
  using I = Coord<Index>;
  CNNKERN_POOL_FOR_EACH(i, wk) {
    const Pos<I> p = decode(wk, i);  // row, col = oh, ow
    const T* plane = x + plane_offset(g.x_stride, p);
    const I h0 = ad_start(p.row, g.H, g.div_OH), h1 = ad_end(p.row, g.H, g.div_OH);
    const I w0 = ad_start(p.col, g.W, g.div_OW), w1 = ad_end(p.col, g.W, g.div_OW);
    Acc sum = Acc(0);
    for (I h = h0; h < h1; ++h)
      for (I w = w0; w < w1; ++w) sum += to_acc(plane[pixel_offset(g.x_stride, h, w)]);
    const Acc area = static_cast<Acc>((h1 - h0) * (w1 - w0));
    y[plane_offset(g.y_stride, p) + pixel_offset(g.y_stride, p.row, p.col)] = static_cast<T>(sum / area);
  }
}

// ---- Backward kernels: one thread per input element, gathering ------------------

// dx[h][w] = sum of dy over the windows covering (h, w) that picked it. The
// tap walks enumerate the covering windows once each (TapWalk); t only
// decreases, so the first tap with a negative quotient ends a dimension.
template <typename T, typename Index>
__global__ void __launch_bounds__(kThreads, kMinBlocksPerSm)
    max_pool2d_backward_kernel(const Walk<Index> wk, const Geometry<Index> g, const T* dy, const int64_t* indices,
                               T* dx) {
  using Acc = acc_t<T>;
  using I = Coord<Index>;
  CNNKERN_POOL_FOR_EACH(i, wk) {
    const Pos<I> p = decode(wk, i);  // row, col = h, w
    const I plane = plane_offset(g.y_stride, p);
    const T* dy_plane = dy + plane;
    const int64_t* idx_plane = indices + plane;
    const int64_t me = static_cast<int64_t>(p.row * g.W + p.col);
    Acc sum = Acc(0);
    TapWalk<I> th = first_tap(p.row, g.pad_h, g.div_stride_h);
    const TapWalk<I> tw0 = first_tap(p.col, g.pad_w, g.div_stride_w);
    CNNKERN_POOL_NO_UNROLL
    for (I kh = 0; kh < g.kernel_h && th.q >= 0; ++kh, next_tap(th, g.dil_q_h, g.dil_r_h, g.stride_h)) {
      if (th.r != 0 || th.q >= g.OH) continue;
      TapWalk<I> tw = tw0;
      CNNKERN_POOL_NO_UNROLL
      for (I kw = 0; kw < g.kernel_w && tw.q >= 0; ++kw, next_tap(tw, g.dil_q_w, g.dil_r_w, g.stride_w)) {
        if (tw.r != 0 || tw.q >= g.OW) continue;
        const I at = pixel_offset(g.y_stride, th.q, tw.q);
        if (idx_plane[at] == me) sum += to_acc(dy_plane[at]);
      }
    }
    dx[plane_offset(g.x_stride, p) + pixel_offset(g.x_stride, p.row, p.col)] = static_cast<T>(sum);
  }
}

// dx[h][w] = sum over the windows covering (h, w) of dy / divisor (dilation 1).
template <typename T, typename Index>
__global__ void __launch_bounds__(kThreads, kMinBlocksPerSm)
    avg_pool2d_backward_kernel(const Walk<Index> wk, const Geometry<Index> g, const T* dy, T* dx,
                               const bool count_include_pad, const int64_t divisor_override) {
  using Acc = acc_t<T>;
  using I = Coord<Index>;
  CNNKERN_POOL_FOR_EACH(i, wk) {
    const Pos<I> p = decode(wk, i);  // row, col = h, w
    const T* dy_plane = dy + plane_offset(g.y_stride, p);
    Acc sum = Acc(0);
    TapWalk<I> th = first_tap(p.row, g.pad_h, g.div_stride_h);
    const TapWalk<I> tw0 = first_tap(p.col, g.pad_w, g.div_stride_w);
    CNNKERN_POOL_NO_UNROLL
    for (I kh = 0; kh < g.kernel_h && th.q >= 0; ++kh, next_tap(th, g.dil_q_h, g.dil_r_h, g.stride_h)) {
      if (th.r != 0 || th.q >= g.OH) continue;
      TapWalk<I> tw = tw0;
      CNNKERN_POOL_NO_UNROLL
      for (I kw = 0; kw < g.kernel_w && tw.q >= 0; ++kw, next_tap(tw, g.dil_q_w, g.dil_r_w, g.stride_w)) {
        if (tw.r != 0 || tw.q >= g.OW) continue;
        const Acc divisor = divisor_override != 0
                                ? static_cast<Acc>(divisor_override)
                                : static_cast<Acc>(avg_divisor(g, th.q, tw.q, count_include_pad));
        sum += to_acc(dy_plane[pixel_offset(g.y_stride, th.q, tw.q)]) / divisor;
      }
    }
    dx[plane_offset(g.x_stride, p) + pixel_offset(g.x_stride, p.row, p.col)] = static_cast<T>(sum);
  }
}

// dx[h][w] = sum over the adaptive windows covering (h, w) of dy / area; those
// windows are [oh0, oh1) x [ow0, ow1), usually one or two per dimension.
template <typename T, typename Index>
__global__ void __launch_bounds__(kThreads, kMinBlocksPerSm)
    adaptive_avg_pool2d_backward_kernel(const Walk<Index> wk, const Geometry<Index> g, const T* dy, T* dx) {
  using Acc = acc_t<T>;
  using I = Coord<Index>;
  CNNKERN_POOL_FOR_EACH(i, wk) {
    const Pos<I> p = decode(wk, i);  // row, col = h, w
    const T* dy_plane = dy + plane_offset(g.y_stride, p);
    Acc sum = Acc(0);
    if (g.OH > 0 && g.OW > 0) {  // an empty output covers nothing: dx = 0
      I oh0, oh1, ow0, ow1;
      ad_covering(p.row, g.H, g.OH, g.div_H, g.div_OH, &oh0, &oh1);
      ad_covering(p.col, g.W, g.OW, g.div_W, g.div_OW, &ow0, &ow1);
      for (I oh = oh0; oh < oh1; ++oh) {
        const I rows = ad_end(oh, g.H, g.div_OH) - ad_start(oh, g.H, g.div_OH);
        for (I ow = ow0; ow < ow1; ++ow) {
          const I cols = ad_end(ow, g.W, g.div_OW) - ad_start(ow, g.W, g.div_OW);
          sum += to_acc(dy_plane[pixel_offset(g.y_stride, oh, ow)]) / static_cast<Acc>(rows * cols);
        }
      }
    }
    dx[plane_offset(g.x_stride, p) + pixel_offset(g.x_stride, p.row, p.col)] = static_cast<T>(sum);
  }
}

#undef CNNKERN_POOL_FOR_EACH
#undef CNNKERN_POOL_NO_UNROLL

// ---- Launch helpers -------------------------------------------------------------

// The most elements a launch walks with 32-bit counters. The emulation build
// reads CNNKERN_EMU_INDEX64=1 at each launch to send everything through the
// 64-bit path, so the Python tests run both.
int64_t max_elements32() {
#if defined(CNNKERN_EMU)
  const char* wide = std::getenv("CNNKERN_EMU_INDEX64");
  if (wide != nullptr && wide[0] == '1') return -1;
#endif
  return kMaxElements32;
}

// Whether every coordinate, offset and intermediate of the window maps fits
// int32 (and the dividers' numerators stay below 2^31): each extent and window
// parameter below 2^28, so sums of a few of them cannot overflow, and the
// products the kernels form (flat indices, adaptive numerators, offsets)
// bounded here.
bool fits_32_bits(const Pool2dShape& s, int64_t total) {
  if (total > max_elements32()) return false;
  constexpr int64_t kSmall = int64_t{1} << 28, kLimit = INT32_MAX;
  for (const int64_t v : {s.N, s.C, s.H, s.W, s.OH, s.OW, s.stride_h, s.stride_w, s.pad_h, s.pad_w, s.dil_h,
                          s.dil_w, s.kernel_h * s.dil_h, s.kernel_w * s.dil_w})
    if (v >= kSmall) return false;
  auto span = [](const int64_t* stride, int64_t n, int64_t c, int64_t h, int64_t w) {
    return (n - 1) * stride[0] + (c - 1) * stride[1] + (h - 1) * stride[2] + (w - 1) * stride[3];
  };
  return span(s.x_stride, s.N, s.C, s.H, s.W) < kLimit && span(s.y_stride, s.N, s.C, s.OH, s.OW) < kLimit &&
         s.H * s.W < kLimit && (s.OH + 1) * s.H < kLimit && (s.OW + 1) * s.W < kLimit &&
         s.OH * s.stride_h + s.kernel_h * s.dil_h < kSmall && s.OW * s.stride_w + s.kernel_w * s.dil_w < kSmall;
}

template <typename Index>
Geometry<Index> make_geometry(const Pool2dShape& s) {
  using I = Coord<Index>;
  Geometry<Index> g{};
  g.H = static_cast<I>(s.H), g.W = static_cast<I>(s.W), g.OH = static_cast<I>(s.OH), g.OW = static_cast<I>(s.OW);
  g.kernel_h = static_cast<I>(s.kernel_h), g.kernel_w = static_cast<I>(s.kernel_w);
  g.stride_h = static_cast<I>(s.stride_h), g.stride_w = static_cast<I>(s.stride_w);
  g.pad_h = static_cast<I>(s.pad_h), g.pad_w = static_cast<I>(s.pad_w);
  g.dil_h = static_cast<I>(s.dil_h), g.dil_w = static_cast<I>(s.dil_w);
  g.dil_q_h = static_cast<I>(s.dil_h / s.stride_h), g.dil_r_h = static_cast<I>(s.dil_h % s.stride_h);
  g.dil_q_w = static_cast<I>(s.dil_w / s.stride_w), g.dil_r_w = static_cast<I>(s.dil_w % s.stride_w);
  g.div_stride_h = Divider<Index>(static_cast<Index>(s.stride_h));
  g.div_stride_w = Divider<Index>(static_cast<Index>(s.stride_w));
  g.div_H = Divider<Index>(static_cast<Index>(s.H > 0 ? s.H : 1));
  g.div_W = Divider<Index>(static_cast<Index>(s.W > 0 ? s.W : 1));
  g.div_OH = Divider<Index>(static_cast<Index>(s.OH > 0 ? s.OH : 1));
  g.div_OW = Divider<Index>(static_cast<Index>(s.OW > 0 ? s.OW : 1));
  for (int d = 0; d < 4; ++d) {
    g.x_stride[d] = static_cast<I>(s.x_stride[d]);
    g.y_stride[d] = static_cast<I>(s.y_stride[d]);
  }
  return g;
}

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
    const Walk<Index> wk{static_cast<Index>(total), Divider<Index>(static_cast<Index>(s.C)),
                         Divider<Index>(static_cast<Index>(rows)), Divider<Index>(static_cast<Index>(cols)),
                         channel_fastest};
    launch_kernel(make(index_tag), grid, dim3(kThreads), 0, stream, wk, make_geometry<Index>(s), args...);
  };
  if (fits_32_bits(s, total))
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
