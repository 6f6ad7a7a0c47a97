// Fused BatchNorm2d + activation on CUDA cores: batch statistics, the fused
// normalise-affine-activation pass, and its backward. The activation (ReLU,
// ReLU6, SiLU, Hardswish or none: cnnkern/activation.h) is a template argument
// of the elementwise and backward kernels; the statistics do not depend on it.
//
// Work split. Every kernel but the two finalizes runs on a 2-D grid:
// blockIdx.x picks a tile of channels, blockIdx.y a chunk of the M = N*H*W
// rows (a row is one (n, h, w) position). A block of 256 threads is tc channel
// lanes x tr row lanes (tc * tr = 256, tc a power of two); a thread owns one
// channel and the rows r, r + tr, r + 2 tr, ... of its block's chunk. Which
// lane index runs fastest across a warp follows x's layout: for channels_last
// (the channel stride is the smallest) consecutive threads take consecutive
// channels (tc = 32, or the power of two at or above a smaller C), otherwise
// consecutive rows (tr = 32..256, so a warp reads a run of one channel's
// plane). Threads walk their rows with a carry-propagating (n, h, w) counter:
// one division per thread per chunk, none per element, for any strides (views
// included). Per-channel parameters are loaded and combined once per thread,
// and loads are issued kUnroll rows at a time.
//
// Offsets. Each walking pass has a 32-bit instantiation, taken whenever every
// offset of x, y/dx and dy fits in int32, and a 64-bit one for larger tensors:
// the per-element address math is then 32-bit multiply-adds (64-bit products
// took twice the instructions), and the once-per-chunk (n, h, w) decode
// divides in 32 bits instead of calling the 64-bit division routine.
//
// Chunking. Reductions: enough row chunks that tiles x chunks is one wave of
// kReduceBlocksPerSm resident blocks per SM, each chunk at least
// kMinRowsPerThread rows per thread. Elementwise passes: chunks of
// kElementwiseRowsPerThread rows per thread, as many blocks as that takes.
//
// Statistics (2 launches). Each thread folds its rows kUnroll at a time into a
// Welford state (count, mean, M2): the batch of up to kUnroll values gets an
// exact two-pass mean and M2, then joins the state with Chan's formula
//   delta = mb - ma; n = na + nb; mean = ma + delta*nb/n; M2 = M2a + M2b + delta^2*na*nb/n,
// which never subtracts two large sums, so var stays accurate when the mean
// dwarfs the spread. Threads of one channel then merge through shared memory
// and warp shuffles (same formula, fixed order), and the block writes its
// per-channel partial (mean, M2) to the workspace ([2][C][chunks] of acc_t);
// a chunk's count is its length, so it is not stored. A finalize kernel (one
// warp per channel) merges a channel's partials, lane-strided then a shuffle
// tree, with int64 counts, and writes mean and the biased var = M2 / M. In
// training it also updates the running statistics from them (momentum, or
// 1 / num_batches_tracked read on the device for momentum=None; unbiased
// var; each buffer in its own dtype and stride), as the Triton finalize
// does: the op runs no tensor ops of its own for it and never syncs.
//
// Apply (1 launch): y = act((x - mean) * weight * invstd + bias), each
// element read and written once; (x - mean) first, so a large mean cancels
// exactly instead of being folded into a shift.
//
// Backward (3 launches). A reduction pass like the statistics gathers per
// channel Σg and Σg·(x - mean) with g = dy·act'(z) (partials to the workspace,
// plain sums merged in a fixed order: deterministic, no atomics); a finalize
// writes grad_bias = Σg and grad_weight = invstd·Σg·(x - mean). An elementwise
// pass then writes dx (training also uses the two sums; eval does not read x).
//
// Memory traffic: statistics read x once; apply reads x and writes y once;
// backward reads dy, y and x twice (reduction, then dx; eval skips x the
// second time) and writes dx once. SiLU and Hardswish read x instead of y
// (they recompute z; eval then reads x in the dx pass too), identity neither. The workspace adds 2 * C * chunks values.
// Everything accumulates in acc_t<T> (fp32 for Half/BFloat16, double for
// double). No vectorised loads yet: a thread owns one channel, so
// channels_last rows are read one element per thread.
#ifndef CNNKERN_GPU_NS
#define CNNKERN_GPU_NS cuda
#endif

#include <climits>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <initializer_list>
#include <limits>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "cnnkern/activation.h"
#include "cnnkern/batch_norm_launch.h"
#include "cnnkern/gpu_types.h"
#include "cnnkern/launch.h"

namespace cnnkern {
namespace CNNKERN_GPU_NS {
namespace {

constexpr int kThreads = 256;
constexpr int kWarpSize = 32;
constexpr int kWarps = kThreads / kWarpSize;
constexpr int kMaxChannelLanes = kWarpSize;  // channels_last: one warp spans <= 32 channels
constexpr int kMinRowLanes = kWarpSize;      // NCHW: a warp stays within one channel
// Rows a thread loads before combining them: independent loads in flight.
constexpr int kUnroll = 4;
constexpr int kWarpsPerFinalizeBlock = kWarps;

// Residency. The row-chunk reductions are sized to exactly one wave of
// kReduceBlocksPerSm blocks per SM, which __launch_bounds__ guarantees: 6 for
// the fp32-accumulating types (40 registers, which they fit without spilling),
// 4 for double (its divisions need more). The elementwise passes and the
// finalizes only promise 4 (64 registers): they are not sized to one wave.
template <typename Acc>
constexpr int kReduceBlocksPerSm = sizeof(Acc) == 8 ? 4 : 6;
constexpr int kMaxReduceBlocksPerSm = 6;  // sizes the workspace for every type
constexpr int kMinBlocksPerSm = 4;

// Chunking. Reductions: at least kMinRowsPerThread rows per thread (a build may
// lower it; the emulation tests set 1 to get many short chunks, empty threads
// included). Elementwise passes: kElementwiseRowsPerThread rows per thread,
// as many blocks as that takes, so they run at the occupancy the registers
// allow and the hardware balances the tail.
#ifndef CNNKERN_BN_MIN_ROWS_PER_THREAD
#define CNNKERN_BN_MIN_ROWS_PER_THREAD 16
#endif
constexpr int64_t kMinRowsPerThread = CNNKERN_BN_MIN_ROWS_PER_THREAD;
static_assert(kMinRowsPerThread >= 1, "chunks need at least one row per thread");
constexpr int64_t kElementwiseRowsPerThread = 4 * kUnroll;
constexpr int64_t kMaxChunks = 65535;                // of a reduction
constexpr int64_t kMaxChunkRows = int64_t{1} << 30;  // per-block counts stay int
// Chunks beyond grid.y are looped over by the blocks (the emulation tests set
// a tiny limit to exercise that loop).
#ifndef CNNKERN_BN_MAX_GRID_Y
#define CNNKERN_BN_MAX_GRID_Y 65535
#endif
constexpr int64_t kMaxGridY = CNNKERN_BN_MAX_GRID_Y;
static_assert(kMaxGridY >= 1 && kMaxGridY <= 65535, "grid.y limit");

static_assert(kThreads % kWarpSize == 0 && kThreads / kMaxChannelLanes >= 1, "block shape");

// ---- Geometry ------------------------------------------------------------------

// What a kernel needs to find its rows (one pass's tiling and chunking).
struct Grid {
  int64_t C;
  int64_t M;          // N*H*W rows
  int64_t chunk_len;  // rows per chunk (the last may be shorter)
  int64_t chunks;
  int H, W;
  int tc, tr;              // channel lanes x row lanes = kThreads
  int channel_fast;        // 1: lane index t = r * tc + c (channels_last), 0: t = c * tr + r
  int step_n, step_h, step_w;  // tr rows as (n, h, w) increments, each below its extent
};

// A thread's position in the rows of one channel, as (n, h, w).
struct RowPos {
  int n, h, w;
};

// Once per thread and chunk; the 32-bit paths (M < 2^31) divide in 32 bits.
template <typename Off>
__device__ __forceinline__ RowPos row_pos(const Grid& g, int64_t m) {
  using U = std::conditional_t<sizeof(Off) == 4, uint32_t, uint64_t>;
  const U HW = static_cast<U>(g.H) * static_cast<U>(g.W), mm = static_cast<U>(m);
  const U n = mm / HW, hw = mm - n * HW;
  const U h = hw / static_cast<U>(g.W);
  return {static_cast<int>(n), static_cast<int>(h), static_cast<int>(hw - h * static_cast<U>(g.W))};
}

// Next row of the same thread (tr rows further): add the increments with
// carries; each component plus its increment stays below twice its extent.
__device__ __forceinline__ void advance(const Grid& g, RowPos& p) {
  p.w += g.step_w;
  const int carry_w = p.w >= g.W;
  p.w -= carry_w ? g.W : 0;
  p.h += g.step_h + carry_w;
  const int carry_h = p.h >= g.H;
  p.h -= carry_h ? g.H : 0;
  p.n += g.step_n + carry_h;
}

// Element strides of x, y (and dx) and dy, order n c h w, in the pass's
// offset width: int32 whenever every offset of every tensor fits, so the
// per-element address math is three 32-bit multiply-adds per tensor.
template <typename Off>
struct Strides {
  Off x[4], y[4], dy[4];
};

template <typename Off>
__device__ __forceinline__ Off offset(const Off* stride, const RowPos& p) {
  return static_cast<Off>(p.n) * stride[0] + static_cast<Off>(p.h) * stride[2] + static_cast<Off>(p.w) * stride[3];
}

// This thread's channel (may be >= C in a partial tile), first row and number
// of rows within block (blockIdx.x, chunk).
struct ThreadRows {
  int64_t c;
  int rows;  // 0 for lanes past C or past the chunk's end
  RowPos first;
};

template <typename Off>
__device__ __forceinline__ ThreadRows thread_rows(const Grid& g, int64_t chunk) {
  const int t = static_cast<int>(threadIdx.x);
  const int lane_c = g.channel_fast ? t % g.tc : t / g.tr;
  const int lane_r = g.channel_fast ? t / g.tc : t % g.tr;
  ThreadRows tr{};
  tr.c = static_cast<int64_t>(blockIdx.x) * g.tc + lane_c;
  const int64_t m0 = chunk * g.chunk_len;
  const int64_t left = g.M - m0;
  const int len = static_cast<int>(left < g.chunk_len ? left : g.chunk_len);
  tr.rows = (tr.c < g.C && len > lane_r) ? (len - lane_r - 1) / g.tr + 1 : 0;
  tr.first = tr.rows > 0 ? row_pos<Off>(g, m0 + lane_r) : RowPos{0, 0, 0};
  return tr;
}

template <typename T>
__device__ __forceinline__ acc_t<T> to_acc(T v) {
  return static_cast<acc_t<T>>(v);
}

template <typename Acc>
__device__ __forceinline__ Acc inv_std(Acc var, Acc eps) {
  return Acc(1) / std::sqrt(var + eps);
}

// dL/dz of one element from dy = grad and what the activation reads (activation.h):
// the output y, or the input x, whose z it rounds to T as an unfused BatchNorm2d's output.
template <Act kAct, typename T, typename Acc>
__device__ __forceinline__ Acc dz(Acc grad, Acc y, Acc x, Acc mu, Acc scale, Acc beta) {
  if constexpr (grad_from_output<kAct>) {
    return activation_grad<kAct>(y, grad);
  } else if constexpr (grad_from_pre_activation<kAct>) {
    return activation_grad<kAct>(to_acc(static_cast<T>((x - mu) * scale + beta)), grad);
  } else {
    return grad;
  }
}

// ---- Welford / Chan --------------------------------------------------------------

template <typename Acc>
struct Welford {
  int n;
  Acc mean, m2;
};

// a <- a merged with (nb, mb, m2b), Chan et al.; an empty b leaves a as it is,
// an empty a becomes b exactly.
template <typename Acc>
__device__ __forceinline__ void merge(Welford<Acc>& a, int nb, Acc mb, Acc m2b) {
  if (nb == 0) return;
  const int n = a.n + nb;
  const Acc delta = mb - a.mean;
  const Acc frac = static_cast<Acc>(nb) / static_cast<Acc>(n);
  a.mean += delta * frac;
  a.m2 += m2b + delta * delta * static_cast<Acc>(a.n) * frac;
  a.n = n;
}

// Block-wide merges. Every thread stores its state in shared memory at its
// thread index; after one barrier, warp 0 finishes: lane l takes channel lane
// l % tc and folds every (32 / tc)-th row lane of it, 256 / 32 = 8 states in a
// fixed order, then the lanes of one channel (tc apart) meet in a shuffle tree.
// Channel lane c's result lands in thread c (threads 0..tc-1; tc <= 32 always).
// Every thread must call them; the caller syncs before reusing them.
__device__ __forceinline__ int smem_index(const Grid& g, int lane_c, int lane_r) {
  return g.channel_fast ? lane_r * g.tc + lane_c : lane_c * g.tr + lane_r;  // = the thread index
}

template <typename Acc>
__device__ __forceinline__ Welford<Acc> block_merge(const Grid& g, const Welford<Acc>& s) {
  __shared__ int n_smem[kThreads];
  __shared__ Acc mean_smem[kThreads];
  __shared__ Acc m2_smem[kThreads];
  const int t = static_cast<int>(threadIdx.x);
  n_smem[t] = s.n;
  mean_smem[t] = s.mean;
  m2_smem[t] = s.m2;
  __syncthreads();
  Welford<Acc> out{0, Acc(0), Acc(0)};
  if (t < kWarpSize) {
    const int lane_c = t % g.tc, subs = kWarpSize / g.tc;
    for (int r = t / g.tc; r < g.tr; r += subs) {
      const int i = smem_index(g, lane_c, r);
      merge(out, n_smem[i], mean_smem[i], m2_smem[i]);
    }
    for (int off = kWarpSize / 2; off >= g.tc; off /= 2) {
      const int nb = __shfl_down_sync(0xffffffffu, out.n, off);
      const Acc mb = __shfl_down_sync(0xffffffffu, out.mean, off);
      const Acc m2b = __shfl_down_sync(0xffffffffu, out.m2, off);
      if (t + off < kWarpSize) merge(out, nb, mb, m2b);  // no partner past the warp
    }
  }
  return out;
}

// Same for plain sums of two values.
template <typename Acc>
__device__ __forceinline__ void block_sum2(const Grid& g, Acc& a, Acc& b) {
  __shared__ Acc a_smem[kThreads];
  __shared__ Acc b_smem[kThreads];
  const int t = static_cast<int>(threadIdx.x);
  a_smem[t] = a;
  b_smem[t] = b;
  __syncthreads();
  a = Acc(0);
  b = Acc(0);
  if (t < kWarpSize) {
    const int lane_c = t % g.tc, subs = kWarpSize / g.tc;
    for (int r = t / g.tc; r < g.tr; r += subs) {
      const int i = smem_index(g, lane_c, r);
      a += a_smem[i];
      b += b_smem[i];
    }
    for (int off = kWarpSize / 2; off >= g.tc; off /= 2) {
      a += __shfl_down_sync(0xffffffffu, a, off);
      b += __shfl_down_sync(0xffffffffu, b, off);
    }
  }
}

// Rows of chunk k: the last chunk may be short.
__device__ __forceinline__ int64_t chunk_rows(const Grid& g, int64_t k) {
  const int64_t left = g.M - k * g.chunk_len;
  return left < g.chunk_len ? left : g.chunk_len;
}

// Lanes of a finalize warp that hold partials: min(chunks, 32) rounded up to a
// power of two; its shuffle tree needs no level above that (none for 1 chunk).
__device__ __forceinline__ int tree_top(const Grid& g) {
  int top = 1;
  while (top < g.chunks && top < kWarpSize) top *= 2;
  return top;
}

// ---- Statistics -------------------------------------------------------------------

// Block (tile, chunk): per-channel (mean, M2) of the chunk's rows into
// workspace[0][c][chunk] and workspace[1][c][chunk].
template <typename T, typename Off>
__global__ void __launch_bounds__(kThreads, kReduceBlocksPerSm<acc_t<T>>)
    stats_partial_kernel(const Grid g, const Strides<Off> st, const T* x, acc_t<T>* workspace) {
  using Acc = acc_t<T>;
  for (int64_t chunk = blockIdx.y; chunk < g.chunks; chunk += gridDim.y) {
    const ThreadRows tr = thread_rows<Off>(g, chunk);
    const T* xc = x + (tr.rows > 0 ? static_cast<Off>(tr.c) * st.x[1] : Off(0));
    RowPos p = tr.first;
    Welford<Acc> state{0, Acc(0), Acc(0)};
    for (int i = 0; i < tr.rows; i += kUnroll) {
      const int b = tr.rows - i < kUnroll ? tr.rows - i : kUnroll;
      Acc v[kUnroll];
      CNNKERN_UNROLL
      for (int u = 0; u < kUnroll; ++u) {
        if (u < b) {
          v[u] = to_acc(xc[offset(st.x, p)]);
          advance(g, p);
        }
      }
      // Exact enough two-pass statistics of the batch, then one Chan merge.
      Acc sum = Acc(0);
      CNNKERN_UNROLL
      for (int u = 0; u < kUnroll; ++u) sum += u < b ? v[u] : Acc(0);
      const Acc bmean = sum / static_cast<Acc>(b);
      Acc bm2 = Acc(0);
      CNNKERN_UNROLL
      for (int u = 0; u < kUnroll; ++u) {
        const Acc d = u < b ? v[u] - bmean : Acc(0);
        bm2 += d * d;
      }
      merge(state, b, bmean, bm2);
    }
    const Welford<Acc> block = block_merge(g, state);
    const int64_t c = static_cast<int64_t>(blockIdx.x) * g.tc + threadIdx.x;
    if (static_cast<int>(threadIdx.x) < g.tc && c < g.C) {
      workspace[c * g.chunks + chunk] = block.mean;
      workspace[(g.C + c) * g.chunks + chunk] = block.m2;
    }
    __syncthreads();  // the shared partials are reused by the next chunk
  }
}

// running = f·batch + (1 - f)·running in Acc, the buffer read and written in its own dtype.
template <typename Acc>
__device__ __forceinline__ void update_running(void* buffer, BnFloat type, int64_t at, Acc batch, Acc f) {
  auto update = [&](auto* r) {
    using R = std::remove_pointer_t<decltype(r)>;
    r[at] = static_cast<R>(batch * f + static_cast<Acc>(r[at]) * (Acc(1) - f));
  };
  switch (type) {
    case BnFloat::Float: update(static_cast<float*>(buffer)); break;
    case BnFloat::Double: update(static_cast<double*>(buffer)); break;
    case BnFloat::Half: update(static_cast<c10::Half*>(buffer)); break;
    case BnFloat::BFloat16: update(static_cast<c10::BFloat16*>(buffer)); break;
  }
}

// One warp per channel: merges the channel's chunk partials (lane-strided, then
// a shuffle tree: a fixed order), writes mean and biased var, and updates the
// running statistics from them (the op no longer runs tensor ops for it).
template <typename Acc>
__global__ void __launch_bounds__(kThreads, kMinBlocksPerSm)
    stats_finalize_kernel(const Grid g, const Acc* workspace, Acc* mean, Acc* var, Acc empty,
                          const BnRunning running) {
  const int lane = static_cast<int>(threadIdx.x) % kWarpSize;
  const int64_t c =
      static_cast<int64_t>(blockIdx.x) * kWarpsPerFinalizeBlock + static_cast<int>(threadIdx.x) / kWarpSize;
  if (c >= g.C) return;  // whole warps leave together
  // Counts reach M here: int64, converted to Acc only for the weights.
  int64_t n = 0;
  Acc m = Acc(0), m2 = Acc(0);
  auto join = [&](int64_t nb, Acc mb, Acc m2b) {
    if (nb == 0) return;
    const int64_t total = n + nb;
    const Acc delta = mb - m;
    const Acc frac = static_cast<Acc>(nb) / static_cast<Acc>(total);
    m += delta * frac;
    m2 += m2b + delta * delta * static_cast<Acc>(n) * frac;
    n = total;
  };
  for (int64_t k = lane; k < g.chunks; k += kWarpSize)
    join(chunk_rows(g, k), workspace[c * g.chunks + k], workspace[(g.C + c) * g.chunks + k]);
  for (int off = tree_top(g) / 2; off > 0; off /= 2) {
    const int64_t nb = __shfl_down_sync(0xffffffffu, n, off);
    const Acc mb = __shfl_down_sync(0xffffffffu, m, off);
    const Acc m2b = __shfl_down_sync(0xffffffffu, m2, off);
    if (lane + off < kWarpSize) join(nb, mb, m2b);
  }
  if (lane == 0) {
    const Acc batch_var = m2 / static_cast<Acc>(n);
    mean[c] = n > 0 ? m : empty;
    var[c] = n > 0 ? batch_var : empty;
    // The op checks M > 1 before training, so the unbiasing factor is finite.
    if (n > 1 && (running.mean != nullptr || running.var != nullptr)) {
      Acc f = static_cast<Acc>(running.momentum);
      if (running.cumulative) f = running.count != nullptr ? Acc(1) / static_cast<Acc>(*running.count) : Acc(0);
      if (running.mean != nullptr) update_running(running.mean, running.mean_type, c * running.mean_stride, m, f);
      if (running.var != nullptr)
        update_running(running.var, running.var_type, c * running.var_stride,
                       batch_var * (static_cast<Acc>(n) / static_cast<Acc>(n - 1)), f);
    }
  }
}

// ---- Apply ------------------------------------------------------------------------

template <typename T, typename Off, Act kAct>
__global__ void __launch_bounds__(kThreads, kMinBlocksPerSm)
    apply_kernel(const Grid g, const Strides<Off> st, const T* x, const acc_t<T>* mean, const acc_t<T>* var,
                 const acc_t<T>* weight, const acc_t<T>* bias, acc_t<T> eps, T* y) {
  using Acc = acc_t<T>;
  for (int64_t chunk = blockIdx.y; chunk < g.chunks; chunk += gridDim.y) {
    const ThreadRows tr = thread_rows<Off>(g, chunk);
    if (tr.rows == 0) continue;  // no barriers here
    const int64_t c = tr.c;
    const Acc mu = mean[c];
    const Acc scale = (weight ? weight[c] : Acc(1)) * inv_std(var[c], eps);
    const Acc shift = bias ? bias[c] : Acc(0);
    const T* xc = x + static_cast<Off>(c) * st.x[1];
    T* yc = y + static_cast<Off>(c) * st.y[1];
    // Two walkers over the same rows: loads run kUnroll ahead of the stores
    // (cheaper in registers than keeping kUnroll positions).
    RowPos load = tr.first, store = tr.first;
    for (int i = 0; i < tr.rows; i += kUnroll) {
      const int b = tr.rows - i < kUnroll ? tr.rows - i : kUnroll;
      Acc v[kUnroll];
      CNNKERN_UNROLL
      for (int u = 0; u < kUnroll; ++u) {
        if (u < b) {
          v[u] = to_acc(xc[offset(st.x, load)]);
          advance(g, load);
        }
      }
      CNNKERN_UNROLL
      for (int u = 0; u < kUnroll; ++u) {
        if (u < b) {
          yc[offset(st.y, store)] = static_cast<T>(activate<kAct>((v[u] - mu) * scale + shift));
          advance(g, store);
        }
      }
    }
  }
}

// ---- Backward -----------------------------------------------------------------------

// Block (tile, chunk): per-channel Σg and Σg·(x - mean) into workspace[0][c][chunk]
// and workspace[1][c][chunk].
template <typename T, typename Off, Act kAct>
__global__ void __launch_bounds__(kThreads, kReduceBlocksPerSm<acc_t<T>>)
    backward_partial_kernel(const Grid g, const Strides<Off> st, const T* dy, const T* y, const T* x,
                            const acc_t<T>* mean, const acc_t<T>* var, const acc_t<T>* weight,
                            const acc_t<T>* bias, acc_t<T> eps, acc_t<T>* workspace) {
  using Acc = acc_t<T>;
  for (int64_t chunk = blockIdx.y; chunk < g.chunks; chunk += gridDim.y) {
    const ThreadRows tr = thread_rows<Off>(g, chunk);
    Acc sum_g = Acc(0), sum_gx = Acc(0);
    if (tr.rows > 0) {
      const int64_t c = tr.c;
      const Acc mu = mean[c];
      Acc scale = Acc(0), beta = Acc(0);  // only to recompute z
      if constexpr (grad_from_pre_activation<kAct>) {
        scale = (weight ? weight[c] : Acc(1)) * inv_std(var[c], eps);
        beta = bias ? bias[c] : Acc(0);
      }
      const T* dyc = dy + static_cast<Off>(c) * st.dy[1];
      const T* yc = y + static_cast<Off>(c) * st.y[1];
      const T* xc = x + static_cast<Off>(c) * st.x[1];
      RowPos p = tr.first;
      for (int i = 0; i < tr.rows; i += kUnroll) {
        const int b = tr.rows - i < kUnroll ? tr.rows - i : kUnroll;
        Acc gv[kUnroll], xv[kUnroll];
        CNNKERN_UNROLL
        for (int u = 0; u < kUnroll; ++u) {
          if (u < b) {
            const Acc out = grad_from_output<kAct> ? to_acc(yc[offset(st.y, p)]) : Acc(0);
            const Acc grad = to_acc(dyc[offset(st.dy, p)]);  // unconditional: see backward_dx_kernel
            xv[u] = to_acc(xc[offset(st.x, p)]);
            gv[u] = dz<kAct, T>(grad, out, xv[u], mu, scale, beta);
            advance(g, p);
          }
        }
        CNNKERN_UNROLL
        for (int u = 0; u < kUnroll; ++u) {
          if (u < b) {
            sum_g += gv[u];
            sum_gx += gv[u] * (xv[u] - mu);
          }
        }
      }
    }
    block_sum2(g, sum_g, sum_gx);
    const int64_t c = static_cast<int64_t>(blockIdx.x) * g.tc + threadIdx.x;
    if (static_cast<int>(threadIdx.x) < g.tc && c < g.C) {
      workspace[c * g.chunks + chunk] = sum_g;
      workspace[(g.C + c) * g.chunks + chunk] = sum_gx;
    }
    __syncthreads();  // the shared partials are reused by the next chunk
  }
}

// One warp per channel, fixed summation order: grad_bias = Σg,
// grad_weight = invstd · Σg·(x - mean).
template <typename Acc>
__global__ void __launch_bounds__(kThreads, kMinBlocksPerSm)
    backward_finalize_kernel(const Grid g, const Acc* workspace, const Acc* var, Acc eps, Acc* grad_weight,
                             Acc* grad_bias) {
  const int lane = static_cast<int>(threadIdx.x) % kWarpSize;
  const int64_t c =
      static_cast<int64_t>(blockIdx.x) * kWarpsPerFinalizeBlock + static_cast<int>(threadIdx.x) / kWarpSize;
  if (c >= g.C) return;  // whole warps leave together
  Acc sum_g = Acc(0), sum_gx = Acc(0);
  for (int64_t k = lane; k < g.chunks; k += kWarpSize) {
    sum_g += workspace[c * g.chunks + k];
    sum_gx += workspace[(g.C + c) * g.chunks + k];
  }
  for (int off = tree_top(g) / 2; off > 0; off /= 2) {
    sum_g += __shfl_down_sync(0xffffffffu, sum_g, off);
    sum_gx += __shfl_down_sync(0xffffffffu, sum_gx, off);
  }
  if (lane == 0) {
    grad_bias[c] = sum_g;
    grad_weight[c] = sum_gx * inv_std(var[c], eps);
  }
}

// dx = weight·invstd·(g - Σg/M - xhat·Σ(g·xhat)/M)  (training),  weight·invstd·g  (eval).
// Eval (kTraining false) reads x only to recompute z (SiLU, Hardswish).
template <typename T, bool kTraining, typename Off, Act kAct>
__global__ void __launch_bounds__(kThreads, kMinBlocksPerSm)
    backward_dx_kernel(const Grid g, const Strides<Off> st, const T* dy, const T* y, const T* x,
                       const acc_t<T>* mean, const acc_t<T>* var, const acc_t<T>* weight, const acc_t<T>* bias,
                       acc_t<T> eps, const acc_t<T>* grad_weight, const acc_t<T>* grad_bias, T* dx) {
  using Acc = acc_t<T>;
  for (int64_t chunk = blockIdx.y; chunk < g.chunks; chunk += gridDim.y) {
    const ThreadRows tr = thread_rows<Off>(g, chunk);
    if (tr.rows == 0) continue;  // no barriers here
    const int64_t c = tr.c;
    const Acc invstd = inv_std(var[c], eps);
    const Acc scale = (weight ? weight[c] : Acc(1)) * invstd;
    const Acc mu = mean[c];
    const Acc beta = grad_from_pre_activation<kAct> && bias ? bias[c] : Acc(0);
    const Acc inv_m = Acc(1) / static_cast<Acc>(g.M);
    // training: dx = scale·(g - mean_g - (x - mu)·k), k = invstd² · Σg(x-mu)/M
    const Acc mean_g = kTraining ? grad_bias[c] * inv_m : Acc(0);
    const Acc k = kTraining ? grad_weight[c] * invstd * inv_m : Acc(0);
    const T* dyc = dy + static_cast<Off>(c) * st.dy[1];
    const T* yc = y + static_cast<Off>(c) * st.y[1];
    const T* xc = x + static_cast<Off>(c) * st.x[1];
    T* dxc = dx + static_cast<Off>(c) * st.y[1];
    RowPos load = tr.first, store = tr.first;  // as in apply_kernel
    for (int i = 0; i < tr.rows; i += kUnroll) {
      const int b = tr.rows - i < kUnroll ? tr.rows - i : kUnroll;
      Acc gv[kUnroll], xv[kUnroll];
      CNNKERN_UNROLL
      for (int u = 0; u < kUnroll; ++u) {
        if (u < b) {
          // dy is read whatever y is: both loads issue at once, and the DRAM
          // sectors are fetched anyway unless whole runs of y are zero.
          const Acc out = grad_from_output<kAct> ? to_acc(yc[offset(st.y, load)]) : Acc(0);
          const Acc grad = to_acc(dyc[offset(st.dy, load)]);
          xv[u] = kTraining || grad_from_pre_activation<kAct> ? to_acc(xc[offset(st.x, load)]) : mu;
          gv[u] = dz<kAct, T>(grad, out, xv[u], mu, scale, beta);
          advance(g, load);
        }
      }
      CNNKERN_UNROLL
      for (int u = 0; u < kUnroll; ++u) {
        if (u < b) {
          const Acc d = gv[u] - mean_g - (xv[u] - mu) * k;  // k = 0 in eval
          dxc[offset(st.y, store)] = static_cast<T>(scale * d);
          advance(g, store);
        }
      }
    }
  }
}

// ---- Vectorised elementwise passes (channels_last) ------------------------------

// kVec<T> consecutive channels: the unit of a vectorised pass. 16 bytes for
// float and double; 4 channels (8 bytes) for Half/BFloat16, because 8 would
// need 8 x 4 per-channel parameters in the backward and spill.
template <typename T>
constexpr int kVec = sizeof(T) >= 4 ? 16 / static_cast<int>(sizeof(T)) : 4;
template <typename T>
constexpr int kVecBytes = kVec<T> * static_cast<int>(sizeof(T));

template <typename T>
struct alignas(kVecBytes<T>) Vec16 {
  T v[kVec<T>];
};

// One vector load or store (LDG.128 / LDG.64); the emulation copies bytes,
// so it does not alias T through another type.
template <typename T>
__device__ __forceinline__ Vec16<T> load16(const T* p) {
#if defined(__CUDA_ARCH__)
  return *reinterpret_cast<const Vec16<T>*>(p);
#else
  Vec16<T> r;
  std::memcpy(&r, p, sizeof r);
  return r;
#endif
}
template <typename T>
__device__ __forceinline__ void store16(T* p, const Vec16<T>& v) {
#if defined(__CUDA_ARCH__)
  *reinterpret_cast<Vec16<T>*>(p) = v;
#else
  std::memcpy(p, &v, sizeof v);
#endif
}

// The vectorised passes run on the grid of C / kVec "vector channels": a
// thread owns kVec consecutive channels of its rows, so a warp reads 256 or
// 512 contiguous bytes per row in one instruction instead of 32 elements.
// Launched only with 32-bit offsets, unit channel strides, every row stride a
// multiple of kVec and pointers aligned to the vector (vector_width), so
// every access is aligned.
// Rows per step: kUnroll for apply; backward_dx holds three vectors per row
// and four parameters per channel, so it takes kUnroll / 2 (no spills).
template <typename T, Act kAct>
__global__ void __launch_bounds__(kThreads, kMinBlocksPerSm)
    apply_vec_kernel(const Grid g, const Strides<int32_t> st, const T* x, const acc_t<T>* mean,
                     const acc_t<T>* var, const acc_t<T>* weight, const acc_t<T>* bias, acc_t<T> eps, T* y) {
  using Acc = acc_t<T>;
  using Off = int32_t;
  constexpr int V = kVec<T>;
  for (int64_t chunk = blockIdx.y; chunk < g.chunks; chunk += gridDim.y) {
    const ThreadRows tr = thread_rows<Off>(g, chunk);
    if (tr.rows == 0) continue;  // no barriers here
    const int64_t c0 = tr.c * V;
    Acc mu[V], scale[V], shift[V];
    CNNKERN_UNROLL
    for (int j = 0; j < V; ++j) {
      mu[j] = mean[c0 + j];
      scale[j] = (weight ? weight[c0 + j] : Acc(1)) * inv_std(var[c0 + j], eps);
      shift[j] = bias ? bias[c0 + j] : Acc(0);
    }
    const T* xc = x + c0;
    T* yc = y + c0;
    RowPos load = tr.first, store = tr.first;
    for (int i = 0; i < tr.rows; i += kUnroll) {
      const int b = tr.rows - i < kUnroll ? tr.rows - i : kUnroll;
      Vec16<T> v[kUnroll];
      CNNKERN_UNROLL
      for (int u = 0; u < kUnroll; ++u) {
        if (u < b) {
          v[u] = load16(xc + offset(st.x, load));
          advance(g, load);
        }
      }
      CNNKERN_UNROLL
      for (int u = 0; u < kUnroll; ++u) {
        if (u < b) {
          Vec16<T> out;
          CNNKERN_UNROLL
          for (int j = 0; j < V; ++j) {
            out.v[j] = static_cast<T>(activate<kAct>((to_acc(v[u].v[j]) - mu[j]) * scale[j] + shift[j]));
          }
          store16(yc + offset(st.y, store), out);
          advance(g, store);
        }
      }
    }
  }
}

template <typename T, bool kTraining, Act kAct>
__global__ void __launch_bounds__(kThreads, kMinBlocksPerSm)
    backward_dx_vec_kernel(const Grid g, const Strides<int32_t> st, const T* dy, const T* y, const T* x,
                           const acc_t<T>* mean, const acc_t<T>* var, const acc_t<T>* weight,
                           const acc_t<T>* bias, acc_t<T> eps, const acc_t<T>* grad_weight,
                           const acc_t<T>* grad_bias, T* dx) {
  using Acc = acc_t<T>;
  using Off = int32_t;
  constexpr int V = kVec<T>;
  constexpr int U = kUnroll / 2;
  for (int64_t chunk = blockIdx.y; chunk < g.chunks; chunk += gridDim.y) {
    const ThreadRows tr = thread_rows<Off>(g, chunk);
    if (tr.rows == 0) continue;  // no barriers here
    const int64_t c0 = tr.c * V;
    const Acc inv_m = Acc(1) / static_cast<Acc>(g.M);
    // dx = scale·(g - mean_g - (x - mu)·k), as backward_dx_kernel
    constexpr bool kReadX = kTraining || grad_from_pre_activation<kAct>;
    Acc scale[V], mu[V], mean_g[V], k[V], beta[V];
    CNNKERN_UNROLL
    for (int j = 0; j < V; ++j) {
      const Acc invstd = inv_std(var[c0 + j], eps);
      scale[j] = (weight ? weight[c0 + j] : Acc(1)) * invstd;
      mu[j] = mean[c0 + j];
      beta[j] = grad_from_pre_activation<kAct> && bias ? bias[c0 + j] : Acc(0);
      mean_g[j] = kTraining ? grad_bias[c0 + j] * inv_m : Acc(0);
      k[j] = kTraining ? grad_weight[c0 + j] * invstd * inv_m : Acc(0);
    }
    const T* dyc = dy + c0;
    const T* yc = y + c0;
    const T* xc = x + c0;
    T* dxc = dx + c0;
    RowPos load = tr.first, store = tr.first;
    for (int i = 0; i < tr.rows; i += U) {
      const int b = tr.rows - i < U ? tr.rows - i : U;
      Vec16<T> yv[U], gv[U], xv[U];
      CNNKERN_UNROLL
      for (int u = 0; u < U; ++u) {
        if (u < b) {
          if (grad_from_output<kAct>) yv[u] = load16(yc + offset(st.y, load));
          gv[u] = load16(dyc + offset(st.dy, load));
          if (kReadX) xv[u] = load16(xc + offset(st.x, load));
          advance(g, load);
        }
      }
      CNNKERN_UNROLL
      for (int u = 0; u < U; ++u) {
        if (u < b) {
          Vec16<T> out;
          CNNKERN_UNROLL
          for (int j = 0; j < V; ++j) {
            const Acc xj = kReadX ? to_acc(xv[u].v[j]) : mu[j];
            const Acc yj = grad_from_output<kAct> ? to_acc(yv[u].v[j]) : Acc(0);
            const Acc grad = dz<kAct, T>(to_acc(gv[u].v[j]), yj, xj, mu[j], scale[j], beta[j]);
            out.v[j] = static_cast<T>(scale[j] * (grad - mean_g[j] - (xj - mu[j]) * k[j]));
          }
          store16(dxc + offset(st.y, store), out);
          advance(g, store);
        }
      }
    }
  }
}

// ---- Launch helpers ------------------------------------------------------------------

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

int pow2_at_least(int64_t v) {
  int p = 1;
  while (p < v && p < kThreads) p *= 2;
  return p;
}

// Smallest |stride| among the row dimensions that have more than one position.
int64_t row_stride(const BnShape& s) {
  int64_t best = INT64_MAX;
  const int64_t extent[3] = {s.N, s.H, s.W};
  const int64_t stride[3] = {s.x_stride[0], s.x_stride[2], s.x_stride[3]};
  for (int i = 0; i < 3; ++i) {
    const int64_t a = stride[i] < 0 ? -stride[i] : stride[i];
    if (extent[i] > 1 && a < best) best = a;
  }
  return best;
}

void check_extent(int64_t v, const char* what) {
  if (v < 0 || v > INT_MAX)
    throw std::invalid_argument(std::string("cnnkern batch_norm_relu (GPU): ") + what + " = " +
                                std::to_string(v) + " is too large for the kernels");
}

// The grid of one pass: blocks_per_sm > 0 sizes a reduction (one wave of that
// many blocks per SM, chunks no shorter than kMinRowsPerThread rows per thread),
// 0 an elementwise pass (kElementwiseRowsPerThread rows per thread). Tiles and
// the lane layout depend on the shape alone, so every pass agrees on them.
Grid make_grid(const BnShape& s, int64_t blocks_per_sm) {
  check_extent(s.N, "N");
  check_extent(s.H, "H");
  check_extent(s.W, "W");
  Grid g{};
  g.C = s.C;
  g.M = s.N * s.H * s.W;
  g.H = static_cast<int>(s.H);
  g.W = static_cast<int>(s.W);
  const int64_t cs = s.x_stride[1] < 0 ? -s.x_stride[1] : s.x_stride[1];
  g.channel_fast = s.C > 1 && cs < row_stride(s);
  if (g.channel_fast) {
    g.tc = pow2_at_least(s.C < kMaxChannelLanes ? s.C : kMaxChannelLanes);
    g.tr = kThreads / g.tc;
  } else {
    g.tr = pow2_at_least(g.M < kMinRowLanes ? kMinRowLanes : g.M);
    g.tc = kThreads / g.tr;
  }
  if (g.C == 0 || g.M == 0) return g;  // chunks = 0: nothing to do

  const int64_t tiles = ceil_div(g.C, g.tc);
  if (tiles > INT_MAX) throw std::invalid_argument("cnnkern batch_norm_relu (GPU): too many channels");
  int64_t chunks;
  if (blocks_per_sm > 0) {
    chunks = ceil_div(blocks_per_sm * multiprocessor_count(), tiles);
    const int64_t by_length = g.M / (g.tr * kMinRowsPerThread);  // chunks of at least the minimum
    if (chunks > by_length) chunks = by_length;
    if (chunks > kMaxChunks) chunks = kMaxChunks;
  } else {
    chunks = ceil_div(g.M, g.tr * kElementwiseRowsPerThread);
  }
  if (chunks < ceil_div(g.M, kMaxChunkRows)) chunks = ceil_div(g.M, kMaxChunkRows);
  if (chunks < 1) chunks = 1;
  g.chunk_len = ceil_div(g.M, chunks);
  g.chunks = ceil_div(g.M, g.chunk_len);  // no empty chunk

  const int64_t HW = s.H * s.W;
  g.step_n = static_cast<int>(g.tr / HW);  // tr <= 256: fits
  g.step_h = static_cast<int>(g.tr % HW / s.W);
  g.step_w = static_cast<int>(g.tr % s.W);
  return g;
}

template <typename T>
Grid reduce_plan(const BnShape& s) {
  return make_grid(s, kReduceBlocksPerSm<acc_t<T>>);
}

Grid elementwise_plan(const BnShape& s) { return make_grid(s, 0); }

dim3 block_grid(const Grid& g) {
  // More chunks than grid.y allows are walked by the kernels' chunk loop.
  const int64_t y = g.chunks < kMaxGridY ? g.chunks : kMaxGridY;
  return dim3(static_cast<unsigned>(ceil_div(g.C, g.tc)), static_cast<unsigned>(y));
}

dim3 finalize_grid(const Grid& g) {
  return dim3(static_cast<unsigned>(ceil_div(g.C, kWarpsPerFinalizeBlock)));
}

// The most chunks any type's reduction uses (chunks grow with blocks_per_sm);
// each type indexes the workspace by its own chunk count.
int64_t workspace_elements(const BnShape& s) {
  const Grid g = make_grid(s, kMaxReduceBlocksPerSm);
  return 2 * g.C * g.chunks;
}

// The passes walk with 32-bit offsets when every offset of x, y/dx and dy
// fits (a build may lower the element limit: the emulation tests set 0 to
// send everything through the 64-bit path, and the emulation reads
// CNNKERN_EMU_INDEX64=1 at each launch so that the Python tests run both).
#ifndef CNNKERN_BN_MAX_ELEMENTS32
#define CNNKERN_BN_MAX_ELEMENTS32 INT32_MAX
#endif
constexpr int64_t kMaxElements32 = CNNKERN_BN_MAX_ELEMENTS32;

bool offsets_fit_32_bits(const BnShape& s) {
#if defined(CNNKERN_EMU)
  const char* wide = std::getenv("CNNKERN_EMU_INDEX64");
  if (wide != nullptr && wide[0] == '1') return false;
#endif
  if (s.N * s.C * s.H * s.W > kMaxElements32) return false;
  const int64_t extent[4] = {s.N, s.C, s.H, s.W};
  for (const int64_t* stride : {s.x_stride, s.y_stride, s.dy_stride}) {
    int64_t span = 0;
    for (int d = 0; d < 4; ++d) span += (extent[d] - 1) * (stride[d] < 0 ? -stride[d] : stride[d]);
    if (span >= INT32_MAX) return false;
  }
  return true;
}

template <typename Off>
Strides<Off> strides_of(const BnShape& s) {
  Strides<Off> st{};
  for (int d = 0; d < 4; ++d) {
    st.x[d] = static_cast<Off>(s.x_stride[d]);
    st.y[d] = static_cast<Off>(s.y_stride[d]);
    st.dy[d] = static_cast<Off>(s.dy_stride[d]);
  }
  return st;
}

// Calls go(Off{}) with the offset width the shape allows; both are compiled.
template <typename Go>
void with_offsets(const BnShape& s, Go go) {
  if (offsets_fit_32_bits(s))
    go(int32_t{});
  else
    go(int64_t{});
}

BnRunning no_running_update() { return BnRunning{}; }

// kVec<T> when an elementwise pass over these tensors can run vectorised (see
// apply_vec_kernel), else 1. `with_dy`: the backward also reads dy.
template <typename T>
int vector_width(const BnShape& s, bool with_dy, std::initializer_list<const void*> pointers) {
  constexpr int V = kVec<T>;
  if (s.C % V != 0 || !offsets_fit_32_bits(s)) return 1;
  const int64_t extent[4] = {s.N, s.C, s.H, s.W};
  for (const int64_t* stride : {s.x_stride, s.y_stride, with_dy ? s.dy_stride : s.x_stride}) {
    if (stride[1] != 1) return 1;
    for (int d : {0, 2, 3})
      if (extent[d] > 1 && stride[d] % V != 0) return 1;
  }
  for (const void* p : pointers)
    if (p != nullptr && reinterpret_cast<std::uintptr_t>(p) % kVecBytes<T> != 0) return 1;
  return V;
}

// The grid of the vector channels (C / V of them; strides stay in elements:
// only the channel count and lanes change).
Grid vector_plan(const BnShape& s, int V) {
  BnShape sv = s;
  sv.C = s.C / V;
  return elementwise_plan(sv);
}

// The launchers, in this namespace so that their lambdas (capturing a Grid) do
// too; the public entry points below forward to them.

template <typename T>
void stats_impl(const BnShape& s, const T* x, acc_t<T>* mean, acc_t<T>* var, acc_t<T>* workspace,
                const BnRunning& running, gpu_stream_t stream) {
  using Acc = acc_t<T>;
  const Grid g = reduce_plan<T>(s);
  if (g.C == 0) return;
  if (g.chunks > 0)
    with_offsets(s, [&](auto off) {
      using Off = decltype(off);
      launch_kernel(stats_partial_kernel<T, Off>, block_grid(g), dim3(kThreads), 0, stream, g, strides_of<Off>(s),
                    x, workspace);
    });
  // No rows: the statistics are undefined (NaN), as torch reports them, and
  // the running statistics stay as they are.
  launch_kernel(stats_finalize_kernel<Acc>, finalize_grid(g), dim3(kThreads), 0, stream, g,
                static_cast<const Acc*>(workspace), mean, var, std::numeric_limits<Acc>::quiet_NaN(),
                g.chunks > 0 ? running : no_running_update());
}

template <typename T>
void apply_impl(const BnShape& s, const T* x, const acc_t<T>* mean, const acc_t<T>* var, const acc_t<T>* weight,
                const acc_t<T>* bias, double eps, Act act, T* y, gpu_stream_t stream) {
  using Acc = acc_t<T>;
  if (s.C == 0 || s.N * s.H * s.W == 0) return;
  with_activation(act, [&](auto a) {
    constexpr Act kAct = decltype(a)::value;
    if (const int V = vector_width<T>(s, false, {x, y}); V > 1) {
      const Grid gv = vector_plan(s, V);
      launch_kernel(apply_vec_kernel<T, kAct>, block_grid(gv), dim3(kThreads), 0, stream, gv,
                    strides_of<int32_t>(s), x, mean, var, weight, bias, static_cast<Acc>(eps), y);
      return;
    }
    const Grid g = elementwise_plan(s);
    if (g.chunks == 0) return;
    with_offsets(s, [&](auto off) {
      using Off = decltype(off);
      launch_kernel(apply_kernel<T, Off, kAct>, block_grid(g), dim3(kThreads), 0, stream, g, strides_of<Off>(s), x,
                    mean, var, weight, bias, static_cast<Acc>(eps), y);
    });
  });
}

template <typename T>
void backward_impl(const BnShape& s, const T* dy, const T* y, const T* x, const acc_t<T>* mean,
                   const acc_t<T>* var, const acc_t<T>* weight, const acc_t<T>* bias, double eps, Act act,
                   bool training, T* dx, acc_t<T>* grad_weight, acc_t<T>* grad_bias, acc_t<T>* workspace,
                   gpu_stream_t stream) {
  using Acc = acc_t<T>;
  const Grid g = reduce_plan<T>(s);
  if (g.C == 0) return;
  const Acc e = static_cast<Acc>(eps);
  const Acc* gw = grad_weight;
  const Acc* gb = grad_bias;
  with_activation(act, [&](auto a) {
    constexpr Act kAct = decltype(a)::value;
    if (g.chunks > 0)
      with_offsets(s, [&](auto off) {
        using Off = decltype(off);
        launch_kernel(backward_partial_kernel<T, Off, kAct>, block_grid(g), dim3(kThreads), 0, stream, g,
                      strides_of<Off>(s), dy, y, x, mean, var, weight, bias, e, workspace);
      });
    // With no rows the gradients are zero sums.
    launch_kernel(backward_finalize_kernel<Acc>, finalize_grid(g), dim3(kThreads), 0, stream, g,
                  static_cast<const Acc*>(workspace), var, e, grad_weight, grad_bias);
    if (s.N * s.H * s.W == 0) return;
    if (const int V = vector_width<T>(s, true, {dy, y, x, dx}); V > 1) {
      const Grid gv = vector_plan(s, V);
      launch_kernel(training ? backward_dx_vec_kernel<T, true, kAct> : backward_dx_vec_kernel<T, false, kAct>,
                    block_grid(gv), dim3(kThreads), 0, stream, gv, strides_of<int32_t>(s), dy, y, x, mean, var,
                    weight, bias, e, gw, gb, dx);
      return;
    }
    const Grid ge = elementwise_plan(s);
    if (ge.chunks == 0) return;
    with_offsets(s, [&](auto off) {
      using Off = decltype(off);
      launch_kernel(training ? backward_dx_kernel<T, true, Off, kAct> : backward_dx_kernel<T, false, Off, kAct>,
                    block_grid(ge), dim3(kThreads), 0, stream, ge, strides_of<Off>(s), dy, y, x, mean, var, weight,
                    bias, e, gw, gb, dx);
    });
  });
}

}  // namespace

int64_t batch_norm_stats_workspace(const BnShape& s) { return workspace_elements(s); }

int64_t batch_norm_backward_workspace(const BnShape& s) { return workspace_elements(s); }

template <typename T>
void batch_norm_stats(const BnShape& s, const T* x, acc_t<T>* mean, acc_t<T>* var, acc_t<T>* workspace,
                      const BnRunning& running, gpu_stream_t stream) {
  stats_impl<T>(s, x, mean, var, workspace, running, stream);
}

template <typename T>
void batch_norm_relu_apply(const BnShape& s, const T* x, const acc_t<T>* mean, const acc_t<T>* var,
                           const acc_t<T>* weight, const acc_t<T>* bias, double eps, Act act, T* y,
                           gpu_stream_t stream) {
  apply_impl<T>(s, x, mean, var, weight, bias, eps, act, y, stream);
}

template <typename T>
void batch_norm_relu_backward(const BnShape& s, const T* dy, const T* y, const T* x, const acc_t<T>* mean,
                              const acc_t<T>* var, const acc_t<T>* weight, const acc_t<T>* bias, double eps,
                              Act act, bool training, T* dx, acc_t<T>* grad_weight, acc_t<T>* grad_bias,
                              acc_t<T>* workspace, gpu_stream_t stream) {
  backward_impl<T>(s, dy, y, x, mean, var, weight, bias, eps, act, training, dx, grad_weight, grad_bias, workspace,
                   stream);
}

#define CNNKERN_INSTANTIATE_BATCH_NORM(T)                                                                     \
  template void batch_norm_stats<T>(const BnShape&, const T*, acc_t<T>*, acc_t<T>*, acc_t<T>*,               \
                                    const BnRunning&, gpu_stream_t);                                          \
  template void batch_norm_relu_apply<T>(const BnShape&, const T*, const acc_t<T>*, const acc_t<T>*,          \
                                         const acc_t<T>*, const acc_t<T>*, double, Act, T*, gpu_stream_t);    \
  template void batch_norm_relu_backward<T>(const BnShape&, const T*, const T*, const T*, const acc_t<T>*,    \
                                            const acc_t<T>*, const acc_t<T>*, const acc_t<T>*, double, Act,   \
                                            bool, T*, acc_t<T>*, acc_t<T>*, acc_t<T>*, gpu_stream_t);

CNNKERN_INSTANTIATE_BATCH_NORM(float)
CNNKERN_INSTANTIATE_BATCH_NORM(double)
CNNKERN_INSTANTIATE_BATCH_NORM(c10::Half)
CNNKERN_INSTANTIATE_BATCH_NORM(c10::BFloat16)
#undef CNNKERN_INSTANTIATE_BATCH_NORM

}  // namespace CNNKERN_GPU_NS
}  // namespace cnnkern
