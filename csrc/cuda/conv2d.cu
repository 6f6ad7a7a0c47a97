// Conv2d forward and backward on CUDA cores, as implicit GEMMs.
//
// Each pass is, per group, a GEMM  C[M x Ngemm] = A[M x Kgemm] * B[Kgemm x Ngemm]
// whose operands are never materialised: a "problem" struct says how to gather
// A(m, kk) and B(kk, n) straight from the tensors (im2col happens in the load,
// padding reads as zero) and how to store C(m, n):
//
//   pass             M          Ngemm           Kgemm           A      B
//   forward          N*P*Q      K/groups        C/groups*R*S    x      w
//   backward input   N*H*W      C/groups        K/groups*R*S    dy     w^T
//   backward weight  K/groups   C/groups*R*S    N*P*Q           dy^T   x
//
// Tiling: one mainloop serves all three. A block of 256 threads owns a 64x64
// tile of C for one group (grid.x: M tiles, grid.y: Ngemm tiles, grid.z: the
// group, times the Kgemm split for backward weight) and walks Kgemm 16 deep at
// a time. Each thread gathers 4 elements of the 64x16 A slab and 4 of the 16x64
// B slab into registers (as acc_t) while the block computes on the previous
// slab, then stores them into the other half of a double-buffered shared tile:
// one __syncthreads per step. Each thread accumulates a 4x4 micro-tile in
// registers, so 8 shared-memory values (two 16-byte loads for fp32) feed 16
// FMAs. Shared memory: 16 KiB per block (32 KiB for double).
//
// Memory traffic: a gathered element is read from global memory once per block
// and used 64 times from shared memory, so across the grid A is read
// ceil(Ngemm/64) times and B ceil(M/64) times. The im2col gather touches each
// input element up to R*S times; L1/L2 absorb that because neighbouring rows m
// read neighbouring pixels. C is written exactly once: the forward and
// input-gradient passes gather (input gradient through conv_out_coord) rather
// than scatter, so they need no atomics, no zero-fill and no zero-insertion.
// Backward weight has a short M and N but a long Kgemm, so it splits Kgemm over
// grid.z to fill the GPU even at batch 1; each split atomically adds its tile
// into an acc_t workspace, and a small kernel converts that to dw.
//
// Backward bias is a plain reduction: one block per output channel, warp
// shuffles, then the per-warp partials meet in dynamic shared memory.
//
// GEMM coordinates are int (the launchers check the extents); memory offsets
// are int64 through each tensor's element strides, so NCHW, channels_last and
// arbitrary views take the same path.
//
// Tensor cores: every fp16/bf16 pass runs on mma.sync m16n8k16 with fp32
// accumulators, and, when torch.backends.cudnn.allow_tf32 is set (torch's
// default, as for nn.Conv2d), every fp32 pass on m16n8k8 .tf32 (operands
// rounded to TF32 by cvt.rna); the CUDA-core GEMM above serves fp32 without
// TF32, and double. The TF32 kernels are the 16-bit ones with 4-byte elements:
// a slab row is still 64 bytes (16 channels instead of 32), one mma eats 32
// bytes of a row either way, so the forward's copies, swizzle and ldmatrix
// addresses are shared; the weight gradient reads its fp32 fragments with
// LDS.64 and LDS instead of ldmatrix .trans (see there).
// The forward (conv2d_forward_tc_kernel) is an implicit GEMM ordered (r, s, c):
// one K step is 32 channels of one tap, so every row of the A slab (one output
// pixel) and of the B slab (one output channel) is 64 contiguous bytes when x
// and the weight have their channels contiguous: four 16-byte cp.async copies,
// zero-filled where the tap falls in the padding or past C. Otherwise (C/groups
// not a multiple of 8, or other strides: the kVec = false instantiations) the
// same slabs are gathered element by element. A block of 8 warps owns a
// 128x128 tile (pixels x output channels; 4 warps and 128x64 when K/groups <=
// 64), each warp 64x32 (4x4 mma tiles, 64 fp32 accumulators per thread), and
// keeps 3 stages of slabs in flight (48 KB of shared memory, 36 KB for 128x64),
// so the copies of steps i+1 and i+2 overlap the MMAs of step i. Fragments come
// from shared memory by ldmatrix.x4; the slabs' 16-byte chunks are XOR-swizzled
// by row so that the 8 rows one ldmatrix phase reads fall in 8 different bank
// groups. Each x element is read from global memory once per tap and N tile
// (L2 absorbs the R*S overlap), each weight element once per M tile; y is
// written once, in its memory format.
//
// The input gradient is convolutions of dy on the same kernel, one per phase
// of the input coordinate mod the stride (conv_dgrad_taps): a stride-1 conv
// over the taps that reach that phase, flipped (negative tap strides from its
// last tap), through the weight with its channel roles swapped, written to the
// phase's pixels of dx. No zero-insertion, no atomics, no division per element.
// The weight gradient (conv2d_backward_weight_tc_kernel) is described there.
#ifndef CNNKERN_GPU_NS
#define CNNKERN_GPU_NS cuda
#endif

#include <climits>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "cnnkern/conv2d_index.h"
#include "cnnkern/conv2d_launch.h"
#include "cnnkern/gpu_types.h"
#include "cnnkern/launch.h"
#include "cnnkern/mma.h"

namespace cnnkern {
namespace CNNKERN_GPU_NS {
namespace {

constexpr int kTileM = 64;
constexpr int kTileN = 64;
constexpr int kTileK = 16;
constexpr int kThreads = 256;
constexpr int kMinBlocksPerSm = 2;
constexpr int kMicroM = 4;
constexpr int kMicroN = 4;
constexpr int kThreadsM = kTileM / kMicroM;  // threads along M in the compute layout
static_assert(kThreadsM * (kTileN / kMicroN) == kThreads, "micro-tiles must cover the tile");

// Gather layout: thread t loads row t % 64 of the A slab and column t % 64 of
// the B slab, at reduction rows t / 64 + 4 i. A thread's row and column stay
// fixed for the whole mainloop, so their (n, p, q) or (c, r, s) decomposition
// is computed once; only the reduction index is decoded per step.
static_assert(kTileM == kTileN, "A and B slabs share one gather layout");
constexpr int kGatherRowsK = kThreads / kTileM;  // reduction rows per gather pass
constexpr int kGathers = kTileK / kGatherRowsK;  // elements of A (and of B) per thread per step
static_assert(kGatherRowsK * kGathers == kTileK, "gather layout must cover the slab");

// Tile origins plus a tile must still fit in int.
constexpr int64_t kMaxGemmExtent = INT_MAX - 2 * kTileM;
constexpr int64_t kMaxGridYZ = 65535;

// Split-K for backward weight: aim for this many blocks per SM, but keep at
// least kMinStepsPerSplit Kgemm steps per split so the atomics (one per C
// element per split) stay cheap next to the 64*64*16 FMAs of each step.
constexpr int64_t kTargetBlocksPerSm = 4;
constexpr int64_t kMinStepsPerSplit = 8;

constexpr int kWarpSize = 32;
constexpr int kBiasThreads = 256;
constexpr int kConvertThreads = 256;
constexpr int64_t kMaxConvertBlocks = 4096;

template <typename T>
__device__ __forceinline__ acc_t<T> to_acc(T v) {
  return static_cast<acc_t<T>>(v);
}

__device__ __forceinline__ bool in_range(int64_t i, int64_t extent) {
  return i >= 0 && i < extent;
}

// ---- Problems --------------------------------------------------------------
// A problem describes one pass to implicit_gemm_kernel:
//   gemm_m, gemm_n, gemm_k     GEMM extents, per group
//   decode_k(kk)      -> KIdx  reduction index split into tensor coordinates
//   a_row(g, m)       -> ARow  what stays fixed along row m of A
//   load_a(ARow, KIdx)         A(m, kk) as Acc, zero when outside the tensors
//   b_col(g, n), load_b(BCol, KIdx)   the same for B(kk, n)
//   c_row(g, m)       -> CRow, store(CRow, n, acc)   the epilogue
// Every struct carries `valid` so the mainloop needs no bounds logic of its own.

template <typename T>
struct ForwardProblem {
  using Acc = acc_t<T>;
  Conv2dShape shape;
  const T* x;
  const T* weight;
  const T* bias;  // may be null
  T* y;
  int gemm_m, gemm_n, gemm_k;  // N*P*Q, K/groups, C/groups*R*S
  int PQ, Q, RS, S;

  struct KIdx { int c, r, s; bool valid; };
  struct ARow { const T* x; int p, q; bool valid; };
  struct BCol { const T* weight; bool valid; };
  struct CRow { T* y; const T* bias; bool valid; };

  __device__ __forceinline__ KIdx decode_k(int kk) const {
    const int c = kk / RS, rs = kk - c * RS, r = rs / S;
    return {c, r, rs - r * S, kk < gemm_k};
  }
  __device__ __forceinline__ ARow a_row(int g, int m) const {
    const int n = m / PQ, pq = m - n * PQ, p = pq / Q;
    const T* base = x + n * shape.x_stride[0] + g * shape.c_per_group() * shape.x_stride[1];
    return {base, p, pq - p * Q, m < gemm_m};
  }
  __device__ __forceinline__ Acc load_a(const ARow& a, const KIdx& k) const {
    const int64_t h = conv_in_coord(a.p, k.r, shape.stride_h, shape.pad_h, shape.dil_h);
    const int64_t w = conv_in_coord(a.q, k.s, shape.stride_w, shape.pad_w, shape.dil_w);
    if (!(a.valid && k.valid && in_range(h, shape.H) && in_range(w, shape.W))) return Acc(0);
    return to_acc(a.x[k.c * shape.x_stride[1] + h * shape.x_stride[2] + w * shape.x_stride[3]]);
  }
  __device__ __forceinline__ BCol b_col(int g, int n) const {
    return {weight + (g * shape.k_per_group() + n) * shape.w_stride[0], n < gemm_n};
  }
  __device__ __forceinline__ Acc load_b(const BCol& b, const KIdx& k) const {
    if (!(b.valid && k.valid)) return Acc(0);
    return to_acc(
        b.weight[k.c * shape.w_stride[1] + k.r * shape.w_stride[2] + k.s * shape.w_stride[3]]);
  }
  __device__ __forceinline__ CRow c_row(int g, int m) const {
    const int n = m / PQ, pq = m - n * PQ, p = pq / Q, q = pq - p * Q;
    const int64_t k0 = g * shape.k_per_group();
    T* out = y + n * shape.y_stride[0] + k0 * shape.y_stride[1] + p * shape.y_stride[2] +
             q * shape.y_stride[3];
    return {out, bias ? bias + k0 : nullptr, m < gemm_m};
  }
  __device__ __forceinline__ void store(const CRow& c, int n, Acc v) const {
    if (c.bias) v += to_acc(c.bias[n]);
    c.y[n * shape.y_stride[1]] = static_cast<T>(v);
  }
};

template <typename T>
struct BackwardInputProblem {
  using Acc = acc_t<T>;
  Conv2dShape shape;
  const T* dy;
  const T* weight;
  T* dx;
  int gemm_m, gemm_n, gemm_k;  // N*H*W, C/groups, K/groups*R*S
  int HW, W, RS, S;

  struct KIdx { int k, r, s; bool valid; };
  struct ARow { const T* dy; int h, w; bool valid; };
  struct BCol { const T* weight; bool valid; };
  struct CRow { T* dx; bool valid; };

  __device__ __forceinline__ KIdx decode_k(int kk) const {
    const int k = kk / RS, rs = kk - k * RS, r = rs / S;
    return {k, r, rs - r * S, kk < gemm_k};
  }
  __device__ __forceinline__ ARow a_row(int g, int m) const {
    const int n = m / HW, hw = m - n * HW, h = hw / W;
    const T* base = dy + n * shape.y_stride[0] + g * shape.k_per_group() * shape.y_stride[1];
    return {base, h, hw - h * W, m < gemm_m};
  }
  // dx[h][w] gathers dy[p][q] for the taps (r, s) that map (p, q) onto (h, w).
  __device__ __forceinline__ Acc load_a(const ARow& a, const KIdx& k) const {
    int64_t p = 0, q = 0;
    if (!(a.valid && k.valid) ||
        !conv_out_coord(a.h, k.r, shape.stride_h, shape.pad_h, shape.dil_h, shape.P, &p) ||
        !conv_out_coord(a.w, k.s, shape.stride_w, shape.pad_w, shape.dil_w, shape.Q, &q))
      return Acc(0);
    return to_acc(a.dy[k.k * shape.y_stride[1] + p * shape.y_stride[2] + q * shape.y_stride[3]]);
  }
  __device__ __forceinline__ BCol b_col(int g, int c) const {
    return {weight + g * shape.k_per_group() * shape.w_stride[0] + c * shape.w_stride[1],
            c < gemm_n};
  }
  __device__ __forceinline__ Acc load_b(const BCol& b, const KIdx& k) const {
    if (!(b.valid && k.valid)) return Acc(0);
    return to_acc(
        b.weight[k.k * shape.w_stride[0] + k.r * shape.w_stride[2] + k.s * shape.w_stride[3]]);
  }
  __device__ __forceinline__ CRow c_row(int g, int m) const {
    const int n = m / HW, hw = m - n * HW, h = hw / W, w = hw - h * W;
    T* out = dx + n * shape.x_stride[0] + g * shape.c_per_group() * shape.x_stride[1] +
             h * shape.x_stride[2] + w * shape.x_stride[3];
    return {out, m < gemm_m};
  }
  __device__ __forceinline__ void store(const CRow& c, int n, Acc v) const {
    c.dx[n * shape.x_stride[1]] = static_cast<T>(v);
  }
};

template <typename T>
struct BackwardWeightProblem {
  using Acc = acc_t<T>;
  Conv2dShape shape;
  const T* dy;
  const T* x;
  Acc* workspace;  // [K][C/groups * R * S], zeroed by the caller
  int gemm_m, gemm_n, gemm_k;  // K/groups, C/groups*R*S, N*P*Q
  int PQ, Q, RS, S;

  struct KIdx { int n, p, q; bool valid; };
  struct ARow { const T* dy; bool valid; };
  struct BCol { const T* x; int r, s; bool valid; };
  struct CRow { Acc* ws; bool valid; };

  __device__ __forceinline__ KIdx decode_k(int kk) const {
    const int n = kk / PQ, pq = kk - n * PQ, p = pq / Q;
    return {n, p, pq - p * Q, kk < gemm_k};
  }
  __device__ __forceinline__ ARow a_row(int g, int m) const {
    return {dy + (g * shape.k_per_group() + m) * shape.y_stride[1], m < gemm_m};
  }
  __device__ __forceinline__ Acc load_a(const ARow& a, const KIdx& k) const {
    if (!(a.valid && k.valid)) return Acc(0);
    return to_acc(a.dy[k.n * shape.y_stride[0] + k.p * shape.y_stride[2] + k.q * shape.y_stride[3]]);
  }
  __device__ __forceinline__ BCol b_col(int g, int col) const {
    const int c = col / RS, rs = col - c * RS, r = rs / S;
    return {x + (g * shape.c_per_group() + c) * shape.x_stride[1], r, rs - r * S, col < gemm_n};
  }
  __device__ __forceinline__ Acc load_b(const BCol& b, const KIdx& k) const {
    const int64_t h = conv_in_coord(k.p, b.r, shape.stride_h, shape.pad_h, shape.dil_h);
    const int64_t w = conv_in_coord(k.q, b.s, shape.stride_w, shape.pad_w, shape.dil_w);
    if (!(b.valid && k.valid && in_range(h, shape.H) && in_range(w, shape.W))) return Acc(0);
    return to_acc(b.x[k.n * shape.x_stride[0] + h * shape.x_stride[2] + w * shape.x_stride[3]]);
  }
  __device__ __forceinline__ CRow c_row(int g, int m) const {
    return {workspace + (g * static_cast<int64_t>(gemm_m) + m) * gemm_n, m < gemm_m};
  }
  // Several Kgemm splits add into the same element.
  __device__ __forceinline__ void store(const CRow& c, int col, Acc v) const {
    atomicAdd(c.ws + col, v);
  }
};

// ---- The shared mainloop -----------------------------------------------------

// Block (x, y, z) computes C tile (x, y) of group z / splits over the Kgemm
// range [split * steps_per_split, (split + 1) * steps_per_split) * kTileK.
//
// The second __launch_bounds__ argument (2 blocks per SM) caps registers at
// 128; without it ptxas squeezed some instantiations into 64 and spilled.
template <typename Problem>
__global__ void __launch_bounds__(kThreads, kMinBlocksPerSm)
    implicit_gemm_kernel(const Problem prob, const int splits, const int steps_per_split) {
  using Acc = typename Problem::Acc;
  // [buffer][kk][m or n]: the gather writes and the micro-tile reads both walk
  // the last index across a warp, so neither conflicts on banks, and a
  // thread's 4 micro-tile values are one 16-byte aligned vector (float).
  __shared__ __align__(16) Acc a_smem[2][kTileK][kTileM];
  __shared__ __align__(16) Acc b_smem[2][kTileK][kTileN];

  const int tid = static_cast<int>(threadIdx.x);
  const int m0 = static_cast<int>(blockIdx.x) * kTileM;
  const int n0 = static_cast<int>(blockIdx.y) * kTileN;
  const int group = static_cast<int>(blockIdx.z) / splits;
  const int k_begin = static_cast<int>(blockIdx.z) % splits * steps_per_split * kTileK;
  const int k_left = prob.gemm_k - k_begin;
  const int k_steps_left = k_left > 0 ? (k_left + kTileK - 1) / kTileK : 0;
  const int k_steps = k_steps_left < steps_per_split ? k_steps_left : steps_per_split;

  const int gather_mn = tid % kTileM;
  const int gather_k = tid / kTileM;
  const auto a_row = prob.a_row(group, m0 + gather_mn);
  const auto b_col = prob.b_col(group, n0 + gather_mn);
  Acc a_next[kGathers], b_next[kGathers];
  auto gather = [&](int k0) {
    CNNKERN_UNROLL
    for (int i = 0; i < kGathers; ++i) {
      const auto k = prob.decode_k(k0 + gather_k + i * kGatherRowsK);
      a_next[i] = prob.load_a(a_row, k);
      b_next[i] = prob.load_b(b_col, k);
    }
  };
  auto stage = [&](int buf) {
    CNNKERN_UNROLL
    for (int i = 0; i < kGathers; ++i) {
      a_smem[buf][gather_k + i * kGatherRowsK][gather_mn] = a_next[i];
      b_smem[buf][gather_k + i * kGatherRowsK][gather_mn] = b_next[i];
    }
  };

  // M is the fast thread index: for NCHW tensors neighbouring m are
  // neighbouring pixels, which keeps the epilogue's stores close together.
  const int tm = tid % kThreadsM;
  const int tn = tid / kThreadsM;
  Acc acc[kMicroM][kMicroN] = {};

  if (k_steps > 0) {
    gather(k_begin);
    stage(0);
  }
  __syncthreads();
  for (int step = 0; step < k_steps; ++step) {
    const int buf = step & 1;
    const bool more = step + 1 < k_steps;
    // Issued before the FMAs so the global loads overlap them.
    if (more) gather(k_begin + (step + 1) * kTileK);
    CNNKERN_UNROLL
    for (int kk = 0; kk < kTileK; ++kk) {
      Acc a[kMicroM], b[kMicroN];
      CNNKERN_UNROLL
      for (int i = 0; i < kMicroM; ++i) a[i] = a_smem[buf][kk][tm * kMicroM + i];
      CNNKERN_UNROLL
      for (int j = 0; j < kMicroN; ++j) b[j] = b_smem[buf][kk][tn * kMicroN + j];
      CNNKERN_UNROLL
      for (int i = 0; i < kMicroM; ++i) {
        CNNKERN_UNROLL
        for (int j = 0; j < kMicroN; ++j) acc[i][j] += a[i] * b[j];
      }
    }
    // The other buffer was last read in the previous step, which every thread
    // has finished (barrier below), so one barrier per step suffices.
    if (more) stage(buf ^ 1);
    __syncthreads();
  }

  CNNKERN_UNROLL
  for (int i = 0; i < kMicroM; ++i) {
    const auto out = prob.c_row(group, m0 + tm * kMicroM + i);
    if (!out.valid) continue;
    CNNKERN_UNROLL
    for (int j = 0; j < kMicroN; ++j) {
      const int n = n0 + tn * kMicroN + j;
      if (n < prob.gemm_n) prob.store(out, n, acc[i][j]);
    }
  }
}

// ---- Tensor-core forward (fp16/bf16) ------------------------------------------

// Shared by the tensor-core kernels: the mma, the warp tile, the pipeline.
namespace tc_conv {
// Block tile: 128 pixels x BN output channels x 32 channels of one tap, BN = 128
// (8 warps) or 64 (4 warps, for layers with 64 or fewer output channels per
// group); warp tile 64 x 32, i.e. 4 x 4 mma.m16n8k16 tiles.
constexpr int kBM = 128, kBK = 32;
constexpr int kWarpM = 64, kWarpN = 32;
constexpr int kWarpsM = kBM / kWarpM;
constexpr int kStages = 3;
constexpr int kChunks = kBK / 8;  // 16-byte chunks per slab row
template <int BN>
struct Tile {
  static constexpr int kThreads = kWarpsM * (BN / kWarpN) * 32;
  static constexpr int kRowsPerPass = kThreads / kChunks;  // slab rows one pass of copies covers
  static constexpr int kACopies = kBM / kRowsPerPass;      // copies per thread per stage
  static constexpr int kBCopies = BN / kRowsPerPass;
  static_assert(kACopies * kRowsPerPass == kBM && kBCopies * kRowsPerPass == BN, "copies cover the slabs");
  // 3 stages of A and B slabs: 36 KB (BN 64) or 48 KB (BN 128), within the static limit
  static_assert(kStages * (kBM + BN) * kBK * 2 <= 48 * 1024, "static shared memory");
};

// Element offset of chunk `chunk` of slab row `row`. Rows are 64 bytes, so
// without the XOR rows r and r+2 would share banks and one ldmatrix phase (8
// rows, one chunk column) would conflict 4 ways; with it, the 8 rows land in
// 8 distinct 16-byte bank groups.
__device__ __forceinline__ int swizzle(int row, int chunk) {
  return row * kBK + ((chunk ^ ((row >> 1) & 3)) << 3);
}

// Elements of T in one 16-byte chunk, and channels in one K step (a 64-byte
// slab row): 8 and 32 for fp16/bf16, 4 and 16 for fp32 (TF32).
template <typename T>
constexpr int kChunkElems = 16 / static_cast<int>(sizeof(T));
template <typename T>
constexpr int kStepChannels = kChunks * kChunkElems<T>;

// One 16-byte slab chunk: the kChunkElems<T> elements src[e * stride], zero
// where !ok or e >= valid. kVec (channel stride 1, whole chunks, 16-byte
// aligned rows): one cp.async, zero-filled when !ok. Otherwise (channel counts
// not a multiple of the chunk, any strides) the chunk is gathered element by
// element and stored synchronously: the stage it fills is not read before the
// barrier that starts its step, so the pipeline stays correct, only without
// the overlap of those loads.
template <bool kVec, typename T>
__device__ __forceinline__ void load_chunk(uint16_t* dst, const T* src, int64_t stride, bool ok, int valid,
                                           const T* any_valid_address) {
  if constexpr (kVec) {
    tc::cp_async_16(dst, ok ? src : any_valid_address, ok ? 16 : 0);
  } else if constexpr (sizeof(T) == 2) {
    const uint16_t* p = reinterpret_cast<const uint16_t*>(src);
    uint32_t* d = reinterpret_cast<uint32_t*>(dst);
    CNNKERN_UNROLL
    for (int e = 0; e < 8; e += 2) {
      const uint32_t lo = ok && e < valid ? p[e * stride] : 0u;
      const uint32_t hi = ok && e + 1 < valid ? p[(e + 1) * stride] : 0u;
      d[e / 2] = lo | (hi << 16);
    }
  } else {
    static_assert(sizeof(T) == 4, "tensor-core operands are 16- or 32-bit");
    const uint32_t* p = reinterpret_cast<const uint32_t*>(src);
    uint32_t* d = reinterpret_cast<uint32_t*>(dst);
    CNNKERN_UNROLL
    for (int e = 0; e < 4; ++e) d[e] = ok && e < valid ? p[e * stride] : 0u;
  }
}

// One mma over a k16 (fp16/bf16) or k8 (TF32) slice: either way 32 bytes of
// each row, so the ldmatrix addressing of the slabs is the same for both.
template <typename T>
__device__ __forceinline__ void mma(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  if constexpr (std::is_same_v<T, c10::Half>)
    tc::mma_m16n8k16_f16(d, a, b, d);
  else if constexpr (std::is_same_v<T, c10::BFloat16>)
    tc::mma_m16n8k16_bf16(d, a, b, d);
  else
    tc::mma_m16n8k8_tf32(d, a, b, d);
}

// fp32 fragments as ldmatrix loaded them (raw bits) rounded to TF32 (cvt.rna),
// as cuDNN and CUTLASS do, rather than truncated by the MMA unit; 16-bit
// fragments are used as they are.
template <typename T, int N>
__device__ __forceinline__ void to_operand(uint32_t (&r)[N]) {
  if constexpr (std::is_same_v<T, float>) {
    CNNKERN_UNROLL
    for (int i = 0; i < N; ++i) r[i] = tc::f32_bits_to_tf32(r[i]);
  }
}

// A warp's 64x32 tile for one k16 step: 4 x 4 mma tiles of 16x8.
template <typename T>
__device__ __forceinline__ void warp_tile_mma(float (&acc)[4][4][4], const uint32_t (&a)[4][4],
                                              const uint32_t (&b)[4][2]) {
  CNNKERN_UNROLL
  for (int mi = 0; mi < 4; ++mi) {
    CNNKERN_UNROLL
    for (int nj = 0; nj < 4; ++nj) mma<T>(acc[mi][nj], a[mi], b[nj]);
  }
}

// The cp.async pipeline of both tensor-core kernels: the slabs of steps i+1 ..
// i+kStages-1 are in flight while step i computes. load_stage(stage) issues
// one step's copies into a stage; compute(stage) consumes one. Every thread
// commits a group per step (empty ones too), so wait_group<kStages-2> means
// "this step's copies have landed", and the barrier after it makes everyone's
// visible and frees the stage the previous step read.
template <typename LoadStage, typename Compute>
__device__ __forceinline__ void pipeline(int steps, LoadStage&& load_stage, Compute&& compute) {
  CNNKERN_UNROLL
  for (int st = 0; st < kStages - 1; ++st) {
    if (st < steps) load_stage(st);
    tc::cp_async_commit_group();
  }
  for (int step = 0; step < steps; ++step) {
    tc::cp_async_wait_group<kStages - 2>();
    __syncthreads();
    if (step + kStages - 1 < steps) load_stage((step + kStages - 1) % kStages);
    tc::cp_async_commit_group();
    compute(step % kStages);
  }
  tc::cp_async_wait_all();
}

// The lane's 8 rows of a warp's 64x32 tile at row m0, and its 8 columns at n0:
// it holds rows g, g+8 and columns 2t, 2t+1 of each 16x8 tile (g = lane / 4,
// t = lane % 4). f(i, j, m, n, v) gets each accumulator with the numbers i of
// its row and j of its column among the lane's 8.
__device__ __forceinline__ int acc_row(int lane, int m0, int i) { return m0 + 16 * (i / 2) + lane / 4 + 8 * (i % 2); }
template <typename F>
__device__ __forceinline__ void for_each_acc(const float (&acc)[4][4][4], int lane, int m0, int n0, F&& f) {
  CNNKERN_UNROLL
  for (int i = 0; i < 8; ++i) {
    CNNKERN_UNROLL
    for (int nj = 0; nj < 4; ++nj) {
      CNNKERN_UNROLL
      for (int e = 0; e < 2; ++e)
        f(i, 2 * nj + e, acc_row(lane, m0, i), n0 + 8 * nj + 2 * (lane % 4) + e, acc[i / 2][nj][2 * (i % 2) + e]);
    }
  }
}
}  // namespace tc_conv

// Block (x, y, z): pixels [x*128, +128) x output channels [y*BN, +BN) of group z.
// Weight element (group, k, c, r, s) at w + group * w_group_stride + k * w_stride[0]
// + c * w_stride[1] + ...: the forward's is k/groups * w_stride[0], the input
// gradient's (a transposed weight) is not. kVec: see load_chunk (checked by the launcher).
template <typename T, int BN, bool kVec>
__global__ void __launch_bounds__(tc_conv::Tile<BN>::kThreads)
    conv2d_forward_tc_kernel(const Conv2dShape s, const T* x, const T* w, const int64_t w_group_stride,
                             const T* bias, T* y, const int gemm_m, const int PQ, const int Q) {
  using namespace tc_conv;
  constexpr int kBN = BN, kRowsPerPass = Tile<BN>::kRowsPerPass;
  constexpr int kACopies = Tile<BN>::kACopies, kBCopies = Tile<BN>::kBCopies;
  constexpr int kE = kChunkElems<T>, kC = kStepChannels<T>;
  // (slabs in 16-bit units: a row is kBK = 32 of them, 64 bytes, whatever T is)
  __shared__ __align__(128) uint16_t a_smem[kStages][kBM * kBK];
  __shared__ __align__(128) uint16_t b_smem[kStages][kBN * kBK];

  const int tid = static_cast<int>(threadIdx.x);
  const int lane = tid % 32, warp = tid / 32;
  const int warp_m = warp % kWarpsM, warp_n = warp / kWarpsM;
  const int m0 = static_cast<int>(blockIdx.x) * kBM;
  const int n0 = static_cast<int>(blockIdx.y) * kBN;
  const int group = static_cast<int>(blockIdx.z);
  const int c_g = static_cast<int>(s.c_per_group()), k_g = static_cast<int>(s.k_per_group());
  const int64_t xc = kVec ? 1 : s.x_stride[1], wc = kVec ? 1 : s.w_stride[1];  // channel strides

  // This thread copies chunk `chunk` of slab rows copy_row + kRowsPerPass * i.
  // Per A row: the image's base pointer and the input pixel of tap (0, 0).
  const int chunk = tid % kChunks, copy_row = tid / kChunks;
  const T* a_base[kACopies];
  int a_h[kACopies], a_w[kACopies];
  CNNKERN_UNROLL
  for (int i = 0; i < kACopies; ++i) {
    const int m = m0 + copy_row + kRowsPerPass * i;
    const int mm = m < gemm_m ? m : 0;
    const int n = mm / PQ, pq = mm - n * PQ, p = pq / Q, q = pq - p * Q;
    a_base[i] = x + n * s.x_stride[0] + (static_cast<int64_t>(group) * c_g + chunk * kE) * xc;
    a_h[i] = m < gemm_m ? p * static_cast<int>(s.stride_h) - static_cast<int>(s.pad_h) : INT_MIN / 2;
    a_w[i] = q * static_cast<int>(s.stride_w) - static_cast<int>(s.pad_w);
  }
  const T* b_base[kBCopies];
  bool b_ok[kBCopies];
  CNNKERN_UNROLL
  for (int j = 0; j < kBCopies; ++j) {
    const int k = n0 + copy_row + kRowsPerPass * j;
    b_ok[j] = k < k_g;
    b_base[j] = w + group * w_group_stride + (b_ok[j] ? k : 0) * s.w_stride[0] + chunk * kE * wc;
  }

  // K steps walk (r, s, c0) with counters: c0 fastest, then s, then r.
  const int c_steps = (c_g + kC - 1) / kC;
  const int steps = static_cast<int>(s.R * s.S) * c_steps;
  int load_r = 0, load_s = 0, load_c = 0;
  auto load_stage = [&](int stage) {
    const int valid = c_g - load_c - chunk * kE;  // channels of this chunk inside C/groups
    const bool c_ok = valid > 0;
    const int dh = load_r * static_cast<int>(s.dil_h), dw = load_s * static_cast<int>(s.dil_w);
    CNNKERN_UNROLL
    for (int i = 0; i < kACopies; ++i) {
      const int h = a_h[i] + dh, wi = a_w[i] + dw;
      const bool ok = c_ok && h >= 0 && h < s.H && wi >= 0 && wi < s.W;
      const T* src = ok ? a_base[i] + h * s.x_stride[2] + wi * s.x_stride[3] + load_c * xc : x;
      load_chunk<kVec>(&a_smem[stage][swizzle(copy_row + kRowsPerPass * i, chunk)], src, xc, ok, valid, x);
    }
    CNNKERN_UNROLL
    for (int j = 0; j < kBCopies; ++j) {
      const bool ok = c_ok && b_ok[j];
      const T* src = ok ? b_base[j] + load_r * s.w_stride[2] + load_s * s.w_stride[3] + load_c * wc : w;
      load_chunk<kVec>(&b_smem[stage][swizzle(copy_row + kRowsPerPass * j, chunk)], src, wc, ok, valid, w);
    }
    load_c += kC;
    if (load_c >= c_g) {
      load_c = 0;
      if (++load_s == s.S) load_s = 0, ++load_r;
    }
  };

  // ldmatrix.x4 row addresses (see cnnkern/mma.h), in 16-byte chunks of a row: A, matrices
  // (rows 0-7 | 8-15) x (chunk 0 | 1) as registers a0..a3; B (rows = output channels), matrices
  // (n 0-7, chunk 0), (n 0-7, chunk 1), (n 8-15, chunk 0), (n 8-15, chunk 1): b0, b1 of two n8
  // tiles. A chunk is k 0-7 of m16n8k16 or k 0-3 of m16n8k8 .tf32, and an fp32 lane of a
  // non-transposed ldmatrix gets element (lane / 4, lane % 4) of its 8x4 matrix: exactly the
  // TF32 fragment layout, so both use the same addresses.
  const int a_row = warp_m * kWarpM + lane % 8 + 8 * ((lane / 8) % 2), a_chunk = lane / 16;
  const int b_row = warp_n * kWarpN + lane % 8 + 8 * (lane / 16), b_chunk = (lane / 8) % 2;
  float acc[4][4][4] = {};
  pipeline(steps, load_stage, [&](int stage) {
    CNNKERN_UNROLL
    for (int kk = 0; kk < kChunks / 2; ++kk) {  // two chunks (32 bytes) per mma
      uint32_t a[4][4], b[4][2];
      CNNKERN_UNROLL
      for (int mi = 0; mi < 4; ++mi) {
        tc::ldmatrix(a[mi], a_smem[stage] + swizzle(a_row + 16 * mi, 2 * kk + a_chunk));
        to_operand<T>(a[mi]);
      }
      CNNKERN_UNROLL
      for (int nj = 0; nj < 4; nj += 2) {
        uint32_t r[4];
        tc::ldmatrix(r, b_smem[stage] + swizzle(b_row + 8 * nj, 2 * kk + b_chunk));
        to_operand<T>(r);
        b[nj][0] = r[0], b[nj][1] = r[1], b[nj + 1][0] = r[2], b[nj + 1][1] = r[3];
      }
      warp_tile_mma<T>(acc, a, b);
    }
  });

  // Epilogue: rows are pixels (each decoded once), columns output channels.
  const int64_t k_base = static_cast<int64_t>(group) * k_g;
  T* out[8];
  CNNKERN_UNROLL
  for (int i = 0; i < 8; ++i) {
    const int m = acc_row(lane, m0 + warp_m * kWarpM, i);
    const int n = m / PQ, pq = m - n * PQ, p = pq / Q, q = pq - p * Q;
    out[i] = m < gemm_m ? y + n * s.y_stride[0] + k_base * s.y_stride[1] + p * s.y_stride[2] + q * s.y_stride[3]
                        : nullptr;
  }
  // the lane's 8 columns' bias, loaded once (not once per accumulator)
  float bias_col[8] = {};
  if (bias) {
    CNNKERN_UNROLL
    for (int j = 0; j < 8; ++j) {
      const int k = n0 + warp_n * kWarpN + 8 * (j / 2) + 2 * (lane % 4) + j % 2;
      bias_col[j] = k < k_g ? static_cast<float>(bias[k_base + k]) : 0.f;
    }
  }
  for_each_acc(acc, lane, m0 + warp_m * kWarpM, n0 + warp_n * kWarpN, [&](int i, int j, int, int k, float v) {
    if (out[i] && k < k_g) out[i][k * s.y_stride[1]] = static_cast<T>(v + bias_col[j]);
  });
}

// ---- Tensor-core weight gradient (fp16/bf16) -----------------------------------
// dw[k][(r, s, c)] = sum over pixels of dy[pixel][k] * x[pixel shifted by (r, s)][c]:
// a GEMM with M = K/groups, N = one tap's C/groups channels, reduction = the
// N*P*Q output pixels, split over grid.z like the CUDA-core path (fp32 atomics
// into the zeroed workspace, one split in deterministic mode). A K step is 32
// pixels: the A slab holds their dy rows (128 output channels, 16 chunks of 16
// bytes each) and the B slab their x rows at this block's tap (BN channels),
// both channels-contiguous, so both operands are M/N-major in shared memory and
// reach the MMAs through ldmatrix .trans. Tiles, warps, stages and the cp.async
// pipeline are the forward's; chunks are swizzled by row % 8 (256-byte rows).

namespace tc_wgrad {
constexpr int kBM = 128;  // output channels per block tile
constexpr int kWarpM = 64, kWarpN = 32, kWarpsM = kBM / kWarpM;
using tc_conv::kStages;  // the shared pipeline's depth sizes the slabs
// Pixels per K step: 32 (fp16/bf16, two k16 mma slices) or 16 (fp32, two k8
// TF32 slices); slab bytes are the same either way.
template <typename T>
constexpr int kBK = 64 / static_cast<int>(sizeof(T));
template <typename T, int BN>
struct Tile {
  static constexpr int kThreads = kWarpsM * (BN / kWarpN) * 32;
  static constexpr int kE = tc_conv::kChunkElems<T>;
  static constexpr int kAChunks = kBM / kE, kBChunks = BN / kE;  // 16-byte chunks per slab row
  static constexpr int kACopies = kBK<T> * kAChunks / kThreads, kBCopies = kBK<T> * kBChunks / kThreads;
  static_assert(kACopies * kThreads == kBK<T> * kAChunks && kBCopies * kThreads == kBK<T> * kBChunks, "copies");
  static constexpr int kSlabA = kBK<T> * kBM * static_cast<int>(sizeof(T)) / 2;  // in uint16_t
  static constexpr int kSlabB = kBK<T> * BN * static_cast<int>(sizeof(T)) / 2;
  static_assert(kStages * (kSlabA + kSlabB) * 2 <= 48 * 1024, "static shared memory");
};

// Blocks per SM that __launch_bounds__ asks registers for: 2 of 8 warps or 4
// of 4 (at most 128 registers) for the cp.async variants, except fp32's 4-warp
// tile, which would spill within 128 and gets 3 (170); the element-gathering
// variants (a slow path) take what they need rather than spill.
template <typename T, int BN, bool kVec>
constexpr int kMinBlocks = !kVec ? 1 : sizeof(T) == 4 && BN == 64 ? 3 : 512 / Tile<T, BN>::kThreads;

// uint16_t offset of 16-byte chunk `chunk` of row `row` in a slab with `chunks`
// per row (rows are a multiple of 128 bytes, so a chunk's bank group is its
// swizzled index mod 8). 16-bit: ldmatrix.trans reads one chunk column of 8
// consecutive rows per phase; the XOR with row % 8 spreads them over the 8
// groups. fp32: lanes read pixel rows t = lane % 4 at chunks whose low bit
// comes from the lane's g = lane / 4; the XOR with 2 (row % 4) = 2t moves the
// four rows to four different pairs of groups, so the 16 lanes of an LDS.64
// phase hit 16 distinct 8-byte slots and the 32 of an LDS 32 distinct banks.
template <typename T>
__device__ __forceinline__ int swizzle(int row, int chunk, int chunks) {
  const int x = sizeof(T) == 2 ? row & 7 : (row & 3) << 1;
  return (row * chunks + (chunk ^ x)) << 3;
}
}  // namespace tc_wgrad

// Block (x, y, z): output channels [x*128, +128) x channels [c0, c0 + BN) of tap
// y / c_tiles (c0 = y % c_tiles * BN), group z / splits, pixels of split z % splits.
// Registers: see kMinBlocks.
template <typename T, int BN, bool kVec>
__global__ void __launch_bounds__(tc_wgrad::Tile<T, BN>::kThreads, tc_wgrad::kMinBlocks<T, BN, kVec>)
    conv2d_backward_weight_tc_kernel(const Conv2dShape s, const T* dy, const T* x, float* workspace,
                                     const int64_t split_stride, const int npq, const int PQ, const int Q,
                                     const int c_tiles, const int splits, const int steps_per_split) {
  using namespace tc_wgrad;
  using Tl = Tile<T, BN>;
  constexpr int kStep = kBK<T>, kE = Tl::kE;
  __shared__ __align__(128) uint16_t a_smem[kStages][Tl::kSlabA];
  __shared__ __align__(128) uint16_t b_smem[kStages][Tl::kSlabB];

  const int tid = static_cast<int>(threadIdx.x);
  const int lane = tid % 32, warp = tid / 32;
  const int warp_m = warp % kWarpsM, warp_n = warp / kWarpsM;
  const int c_g = static_cast<int>(s.c_per_group()), k_g = static_cast<int>(s.k_per_group());
  const int m0 = static_cast<int>(blockIdx.x) * kBM;
  const int tap = static_cast<int>(blockIdx.y) / c_tiles, c0 = static_cast<int>(blockIdx.y) % c_tiles * BN;
  const int r = tap / static_cast<int>(s.S), t_s = tap % static_cast<int>(s.S);
  const int group = static_cast<int>(blockIdx.z) / splits;
  const int pix_begin = static_cast<int>(blockIdx.z) % splits * steps_per_split * kStep;
  const int pix_end = npq - pix_begin < steps_per_split * kStep ? npq : pix_begin + steps_per_split * kStep;
  const int steps = pix_end > pix_begin ? (pix_end - pix_begin + kStep - 1) / kStep : 0;

  // Copy layout: A chunk tid % kAChunks of pixel rows tid / kAChunks + (threads / kAChunks) * i; B likewise.
  const int a_chunk = tid % Tl::kAChunks, a_row0 = tid / Tl::kAChunks;
  const int b_chunk = tid % Tl::kBChunks, b_row0 = tid / Tl::kBChunks;
  const int64_t yc = kVec ? 1 : s.y_stride[1], xc = kVec ? 1 : s.x_stride[1];  // channel strides
  const int a_valid = k_g - m0 - a_chunk * kE, b_valid = c_g - c0 - b_chunk * kE;  // channels inside the chunk
  const bool a_chunk_ok = a_valid > 0, b_chunk_ok = b_valid > 0;
  const T* dy_col = dy + (static_cast<int64_t>(group) * k_g + m0 + a_chunk * kE) * yc;
  const T* x_col = x + (static_cast<int64_t>(group) * c_g + c0 + b_chunk * kE) * xc;
  const int dh = r * static_cast<int>(s.dil_h) - static_cast<int>(s.pad_h);
  const int dw = t_s * static_cast<int>(s.dil_w) - static_cast<int>(s.pad_w);
  // Each copy slot's pixel as (n, p, q); slot row `row` of a step is pixel
  // number (first pixel of the step) + row, inside the split while row < left.
  // A step moves every slot kStep pixels on: a fixed mixed-radix increment with
  // carries, no division in the loop.
  struct Pixel { int n, p, q; };
  auto pixel_at = [&](int pix) {
    const int n = pix / PQ, pq = pix - n * PQ, p = pq / Q;
    return Pixel{n, p, pq - p * Q};
  };
  int left = pix_end - pix_begin;  // pixels of the split from the next step to load on
  const int P = PQ / Q, step_q = kStep % Q, step_p = kStep / Q % P, step_n = kStep / PQ;
  auto advance = [&](Pixel& px) {
    px.q += step_q;
    const int carry_q = px.q >= Q;
    px.q -= carry_q * Q;
    px.p += step_p + carry_q;
    const int carry_p = px.p >= P;
    px.p -= carry_p * P;
    px.n += step_n + carry_p;
  };
  Pixel a_px[Tl::kACopies], b_px[Tl::kBCopies];
  CNNKERN_UNROLL
  for (int i = 0; i < Tl::kACopies; ++i) a_px[i] = pixel_at(pix_begin + a_row0 + (Tl::kThreads / Tl::kAChunks) * i);
  CNNKERN_UNROLL
  for (int i = 0; i < Tl::kBCopies; ++i) b_px[i] = pixel_at(pix_begin + b_row0 + (Tl::kThreads / Tl::kBChunks) * i);
  auto load_stage = [&](int stage) {
    CNNKERN_UNROLL
    for (int i = 0; i < Tl::kACopies; ++i) {
      const Pixel& px = a_px[i];
      const int row = a_row0 + (Tl::kThreads / Tl::kAChunks) * i;
      const bool ok = a_chunk_ok && row < left;
      const T* src = ok ? dy_col + px.n * s.y_stride[0] + px.p * s.y_stride[2] + px.q * s.y_stride[3] : dy;
      tc_conv::load_chunk<kVec>(&a_smem[stage][swizzle<T>(row, a_chunk, Tl::kAChunks)], src, yc, ok, a_valid, dy);
      advance(a_px[i]);
    }
    CNNKERN_UNROLL
    for (int i = 0; i < Tl::kBCopies; ++i) {
      const Pixel& px = b_px[i];
      const int row = b_row0 + (Tl::kThreads / Tl::kBChunks) * i;
      const int h = px.p * static_cast<int>(s.stride_h) + dh, w = px.q * static_cast<int>(s.stride_w) + dw;
      const bool ok = b_chunk_ok && row < left && h >= 0 && h < s.H && w >= 0 && w < s.W;
      const T* src = ok ? x_col + px.n * s.x_stride[0] + h * s.x_stride[2] + w * s.x_stride[3] : x;
      tc_conv::load_chunk<kVec>(&b_smem[stage][swizzle<T>(row, b_chunk, Tl::kBChunks)], src, xc, ok, b_valid, x);
      advance(b_px[i]);
    }
    left -= kStep;
  };

  // workspace[k][c][r][s] (the CUDA-core path's layout): one atomic add per
  // element and split, or (split_stride > 0, deterministic) a plain store into
  // this split's own slice, which the convert kernel sums in split order
  const int64_t rs = s.R * s.S, crs = c_g * rs;
  const int split = static_cast<int>(blockIdx.z) % splits;
  float* ws = workspace + split * split_stride + static_cast<int64_t>(group) * k_g * crs + tap;
  auto store = [&](int k, int c, float v) {
    if (k >= k_g || c >= c_g) return;
    if (split_stride > 0)
      ws[k * crs + c * rs] = v;
    else
      atomicAdd(ws + k * crs + c * rs, v);
  };
  float acc[4][4][4] = {};
  const int wm0 = warp_m * kWarpM, wn0 = warp_n * kWarpN;  // the warp's tile in the block's
  if constexpr (sizeof(T) == 2) {
    // ldmatrix.x4.trans: slab rows are pixels (the reduction). Lane i addresses row
    // i % 8 of matrix j = i / 8. A matrices (m 0-7 | 8-15) x (k 0-7 | 8-15) in the
    // order of a0..a3; B matrices (k 0-7, n 0-7), (k 8-15, n 0-7), (k 0-7, n 8-15),
    // (k 8-15, n 8-15): b0, b1 of two n8 tiles.
    const int j = lane / 8;
    const int a_row = lane % 8 + 8 * (j / 2), a_col = wm0 / 8 + j % 2;
    const int b_row = lane % 8 + 8 * (j % 2), b_col = wn0 / 8 + j / 2;
    tc_conv::pipeline(steps, load_stage, [&](int stage) {
      CNNKERN_UNROLL
      for (int kk = 0; kk < kStep / 16; ++kk) {
        uint32_t a[4][4], b[4][2];
        CNNKERN_UNROLL
        for (int mi = 0; mi < 4; ++mi)
          tc::ldmatrix_trans(a[mi], a_smem[stage] + swizzle<T>(16 * kk + a_row, a_col + 2 * mi, Tl::kAChunks));
        CNNKERN_UNROLL
        for (int nj = 0; nj < 4; nj += 2) {
          uint32_t q[4];
          tc::ldmatrix_trans(q, b_smem[stage] + swizzle<T>(16 * kk + b_row, b_col + nj, Tl::kBChunks));
          b[nj][0] = q[0], b[nj][1] = q[1], b[nj + 1][0] = q[2], b[nj + 1][1] = q[3];
        }
        tc_conv::warp_tile_mma<T>(acc, a, b);
      }
    });
    tc_conv::for_each_acc(acc, lane, m0 + wm0, c0 + wn0, [&](int, int, int k, int c, float v) { store(k, c, v); });
  } else {
    // TF32 m16n8k8 wants A (channels x pixels) and B (pixels x channels) with
    // lane (g, t) = (lane / 4, lane % 4) holding pixels t and t + 4 of rows or
    // columns g (and g + 8 of A): a transposed read of the pixel-major slabs,
    // which ldmatrix cannot do for 32-bit elements, so the lanes read their
    // words themselves. Which channel an mma row stands for is ours to choose:
    // A tile mi's rows g and g + 8 are the warp's channels 16 mi + 2g and
    // 16 mi + 2g + 1, so (a0, a1) and (a2, a3) are one LDS.64 each from pixel
    // rows t and t + 4, into the registers the mma reads; B's pair (b0, b1) is
    // two LDS. Per k8 slice: 8 LDS.64 + 8 LDS for 16 mma, and with the swizzle
    // no bank conflicts (each half-warp's LDS.64 covers 16 distinct 8-byte
    // slots, each warp's LDS 32 distinct banks).
    const int g = lane / 4, t = lane % 4;
    // Lane bases (uint16_t offsets at pixel row t; rows t + 8 kk + 4 u add a
    // constant, since swizzle<T> XORs with 2 (row % 4) = 2t): A for even and odd
    // mi (tiles mi + 2 are 8 chunks on, outside the XOR's bits), B per nj.
    int a_lane[2], b_lane[4];
    CNNKERN_UNROLL
    for (int j = 0; j < 2; ++j) a_lane[j] = swizzle<T>(t, wm0 / kE + 4 * j + g / 2, Tl::kAChunks) + 2 * (g % 2) * 2;
    CNNKERN_UNROLL
    for (int nj = 0; nj < 4; ++nj) b_lane[nj] = swizzle<T>(t, wn0 / kE + 2 * nj + g / 4, Tl::kBChunks) + (g % 4) * 2;
    tc_conv::pipeline(steps, load_stage, [&](int stage) {
      // rolled: unrolled, the 8-warp tile spills within its 128 registers
      CNNKERN_NO_UNROLL
      for (int kk = 0; kk < kStep / 8; ++kk) {
        uint32_t a[4][4], b[4][2];
        CNNKERN_UNROLL
        for (int u = 0; u < 2; ++u) {  // pixel t (a0, a1, b0), then pixel t + 4 (a2, a3, b1)
          const int row = 8 * kk + 4 * u;
          CNNKERN_UNROLL
          for (int nj = 0; nj < 4; ++nj) {
            uint32_t w[1];
            tc::lds(w, b_smem[stage] + b_lane[nj] + (row * Tl::kBChunks << 3));
            b[nj][u] = w[0];
          }
          CNNKERN_UNROLL
          for (int mi = 0; mi < 4; ++mi) {
            uint32_t w[2];
            tc::lds(w, a_smem[stage] + a_lane[mi % 2] + ((row * Tl::kAChunks + 8 * (mi / 2)) << 3));
            a[mi][2 * u] = w[0], a[mi][2 * u + 1] = w[1];
          }
        }
        CNNKERN_UNROLL
        for (int i = 0; i < 4; ++i) tc_conv::to_operand<T>(a[i]), tc_conv::to_operand<T>(b[i]);
        tc_conv::warp_tile_mma<T>(acc, a, b);
      }
    });
    // accumulator e of tile (mi, nj): row g + 8 (e / 2), column 2t + e % 2
    CNNKERN_UNROLL
    for (int mi = 0; mi < 4; ++mi) {
      CNNKERN_UNROLL
      for (int nj = 0; nj < 4; ++nj) {
        CNNKERN_UNROLL
        for (int e = 0; e < 4; ++e)
          store(m0 + wm0 + 16 * mi + 2 * g + e / 2, c0 + wn0 + 8 * nj + 2 * t + e % 2, acc[mi][nj][e]);
      }
    }
  }
}

// ---- Small kernels -----------------------------------------------------------

// dw[k][c][r][s] = the sum over splits of workspace[split][k][c][r][s], in
// split order (one split unless the deterministic weight gradient kept its
// splits), through dw's strides and dtype.
template <typename T>
__global__ void __launch_bounds__(kConvertThreads)
    weight_grad_convert_kernel(const Conv2dShape shape, const acc_t<T>* workspace, const int splits, T* dw) {
  const int64_t RS = shape.R * shape.S;
  const int64_t CRS = shape.c_per_group() * RS;
  const int64_t total = shape.K * CRS;
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += step) {
    const int64_t k = i / CRS, crs = i - k * CRS, c = crs / RS, rs = crs - c * RS;
    const int64_t r = rs / shape.S, s = rs - r * shape.S;
    acc_t<T> sum = workspace[i];
    for (int split = 1; split < splits; ++split) sum += workspace[split * total + i];
    dw[k * shape.w_stride[0] + c * shape.w_stride[1] + r * shape.w_stride[2] +
       s * shape.w_stride[3]] = static_cast<T>(sum);
  }
}

template <typename Acc>
__device__ __forceinline__ Acc warp_sum(Acc v) {
  CNNKERN_UNROLL
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2)
    v += __shfl_down_sync(0xffffffffu, v, offset);
  return v;  // complete in lane 0
}

// db[k] = sum over (n, p, q) of dy[n][k][p][q]; block k owns channel k.
// Dynamic shared memory: one Acc per warp.
template <typename T>
__global__ void __launch_bounds__(kBiasThreads)
    bias_grad_kernel(const Conv2dShape shape, const T* dy, T* db) {
  using Acc = acc_t<T>;
  CNNKERN_DYNAMIC_SHARED(Acc, warp_partials);
  const int64_t k = blockIdx.x;
  const int64_t PQ = shape.P * shape.Q;
  const int64_t total = shape.N * PQ;
  const T* channel = dy + k * shape.y_stride[1];

  // Neighbouring threads take neighbouring (p, q): coalesced for NCHW.
  Acc sum = Acc(0);
  for (int64_t i = threadIdx.x; i < total; i += blockDim.x) {
    const int64_t n = i / PQ, pq = i - n * PQ, p = pq / shape.Q, q = pq - p * shape.Q;
    sum += to_acc(channel[n * shape.y_stride[0] + p * shape.y_stride[2] + q * shape.y_stride[3]]);
  }

  const int lane = static_cast<int>(threadIdx.x) % kWarpSize;
  const int warp = static_cast<int>(threadIdx.x) / kWarpSize;
  const int warps = static_cast<int>(blockDim.x) / kWarpSize;
  sum = warp_sum(sum);
  if (lane == 0) warp_partials[warp] = sum;
  __syncthreads();
  if (warp == 0) {
    sum = warp_sum(lane < warps ? warp_partials[lane] : Acc(0));
    if (lane == 0) db[k] = static_cast<T>(sum);
  }
}

// ---- Launch helpers ------------------------------------------------------------

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

int checked_extent(int64_t v, const char* what) {
  if (v < 0 || v > kMaxGemmExtent)
    throw std::invalid_argument(std::string("cnnkern conv2d (GPU): ") + what + " = " +
                                std::to_string(v) + " is too large for the kernels");
  return static_cast<int>(v);
}

// Launches implicit_gemm_kernel<Problem> over every C tile of every group.
template <typename Problem>
void launch_gemm(const Problem& prob, int64_t groups, int64_t splits, int64_t steps_per_split,
                 gpu_stream_t stream) {
  if (prob.gemm_m == 0 || prob.gemm_n == 0 || groups == 0) return;
  const int64_t tiles_m = ceil_div(prob.gemm_m, kTileM);
  const int64_t tiles_n = ceil_div(prob.gemm_n, kTileN);
  if (tiles_n > kMaxGridYZ || groups * splits > kMaxGridYZ)
    throw std::invalid_argument("cnnkern conv2d (GPU): too many channel tiles or groups for the grid");
  const dim3 grid(static_cast<unsigned>(tiles_m), static_cast<unsigned>(tiles_n),
                  static_cast<unsigned>(groups * splits));
  launch_kernel(implicit_gemm_kernel<Problem>, grid, dim3(kThreads), 0, stream, prob,
                static_cast<int>(splits), static_cast<int>(steps_per_split));
}

// One split covering the whole reduction.
template <typename Problem>
void launch_gemm(const Problem& prob, int64_t groups, gpu_stream_t stream) {
  launch_gemm(prob, groups, 1, ceil_div(prob.gemm_k, kTileK), stream);
}

template <typename T>
constexpr bool kTensorCores = std::is_same_v<T, c10::Half> || std::is_same_v<T, c10::BFloat16>;

// Whether a pass of dtype T runs on tensor cores: always for fp16/bf16, for
// fp32 (as TF32) when allow_tf32.
template <typename T>
bool on_tensor_cores(bool allow_tf32) {
  return kTensorCores<T> || (std::is_same_v<T, float> && allow_tf32);
}

// The tensor-core forward (fp16/bf16, fp32 as TF32), and each sub-convolution
// of the input gradient, on conv2d_forward_tc_kernel: 128-wide N tiles when there are more than 64
// output channels per group, cp.async copies when the operands allow.
template <typename T>
void launch_forward_tc(const Conv2dShape& s, const T* x, const T* w, int64_t w_group_stride, const T* bias, T* y,
                       gpu_stream_t stream) {
  const int gemm_m = checked_extent(s.N * s.P * s.Q, "N*P*Q");
  const int gemm_n = checked_extent(s.k_per_group(), "K/groups");
  checked_extent(s.c_per_group() * s.R * s.S, "C/groups*R*S");
  const int PQ = checked_extent(s.P * s.Q, "P*Q"), Q = static_cast<int>(s.Q);
  if (gemm_m == 0 || gemm_n == 0 || s.groups == 0) return;
  if (s.H > INT_MAX / 4 || s.W > INT_MAX / 4 || s.P > INT_MAX / 4 || s.Q > INT_MAX / 4)
    throw std::invalid_argument("cnnkern conv2d (GPU): spatial extents too large for the tensor-core kernels");
  auto launch = [&](auto bn, auto vec) {
    constexpr int BN = decltype(bn)::value;
    const dim3 grid(static_cast<unsigned>(ceil_div(gemm_m, tc_conv::kBM)), static_cast<unsigned>(ceil_div(gemm_n, BN)),
                    static_cast<unsigned>(s.groups));
    if (grid.y > kMaxGridYZ || grid.z > kMaxGridYZ)
      throw std::invalid_argument("cnnkern conv2d (GPU): too many channel tiles or groups for the grid");
    launch_kernel(conv2d_forward_tc_kernel<T, BN, decltype(vec)::value>, grid, dim3(tc_conv::Tile<BN>::kThreads), 0,
                  stream, s, x, w, w_group_stride, bias, y, gemm_m, PQ, Q);
  };
  using Wide = std::integral_constant<int, 128>;
  using Narrow = std::integral_constant<int, 64>;
  // (a group's weight must start on a 16-byte boundary too)
  const bool vec = conv2d_forward_vector_copies(s, x, w, sizeof(T)) && w_group_stride % tc_conv::kChunkElems<T> == 0;
  if (gemm_n > 64)
    vec ? launch(Wide{}, std::true_type{}) : launch(Wide{}, std::false_type{});
  else
    vec ? launch(Narrow{}, std::true_type{}) : launch(Narrow{}, std::false_type{});
}

// The fp16/bf16 input gradient as stride_h * stride_w stride-1 convolutions of
// dy, one per phase (ph, pw) of the input coordinate (conv_dgrad_taps): each
// writes the dx pixels (ph + stride_h i, pw + stride_w j) through the weight
// transposed (its two channel roles swapped) with its taps of that phase
// flipped. The flip is negative tap strides from the phase's last tap; a phase
// no tap reaches is a convolution over no taps, which writes its zeros.
template <typename T>
void backward_input_tc(const Conv2dShape& s, const T* dy, const T* w, T* dx, gpu_stream_t stream) {
  for (int64_t ph = 0; ph < s.stride_h && ph < s.H; ++ph) {
    const DgradTaps th = conv_dgrad_taps(ph, s.R, s.stride_h, s.pad_h, s.dil_h);
    for (int64_t pw = 0; pw < s.stride_w && pw < s.W; ++pw) {
      const DgradTaps tw = conv_dgrad_taps(pw, s.S, s.stride_w, s.pad_w, s.dil_w);
      Conv2dShape t = s;
      t.C = s.K, t.H = s.P, t.W = s.Q;
      t.K = s.C, t.P = ceil_div(s.H - ph, s.stride_h), t.Q = ceil_div(s.W - pw, s.stride_w);
      t.R = th.count, t.S = tw.count;
      t.stride_h = t.stride_w = 1;
      t.pad_h = th.pad, t.pad_w = tw.pad, t.dil_h = th.dil, t.dil_w = tw.dil;
      const int64_t x_stride[4] = {s.y_stride[0], s.y_stride[1], s.y_stride[2], s.y_stride[3]};
      const int64_t w_stride[4] = {s.w_stride[1], s.w_stride[0], -th.step * s.w_stride[2], -tw.step * s.w_stride[3]};
      const int64_t y_stride[4] = {s.x_stride[0], s.x_stride[1], s.x_stride[2] * s.stride_h,
                                   s.x_stride[3] * s.stride_w};
      for (int i = 0; i < 4; ++i) t.x_stride[i] = x_stride[i], t.w_stride[i] = w_stride[i], t.y_stride[i] = y_stride[i];
      const T* w_last = w + th.last() * s.w_stride[2] + tw.last() * s.w_stride[3];
      launch_forward_tc(t, dy, w_last, s.k_per_group() * s.w_stride[0], static_cast<const T*>(nullptr),
                        dx + ph * s.x_stride[2] + pw * s.x_stride[3], stream);
    }
  }
}

// The tensor-core weight gradient's split of the pixels over grid.z: as many
// splits as fill the SMs once with their resident blocks (kMinBlocks, which
// __launch_bounds__ reserves registers for; ceil would start a second, mostly
// empty wave), each at
// least kMinStepsPerSplit steps. Deterministic mode keeps them: each split
// stores into its own workspace slice instead of adding atomically.
struct WgradTcPlan {
  int bn;  // channels per block tile: 128 when C/groups > 64, else 64
  int64_t c_tiles, splits, steps_per_split;
};
template <typename T>
WgradTcPlan plan_backward_weight_tc(const Conv2dShape& s) {
  WgradTcPlan p{s.c_per_group() > 64 ? 128 : 64, 0, 1, 0};
  const int64_t resident = p.bn == 128 ? tc_wgrad::kMinBlocks<T, 128, true> : tc_wgrad::kMinBlocks<T, 64, true>;
  p.c_tiles = ceil_div(s.c_per_group(), p.bn);
  const int64_t tiles = ceil_div(s.k_per_group(), tc_wgrad::kBM) * s.R * s.S * p.c_tiles * s.groups;
  const int64_t steps = ceil_div(s.N * s.P * s.Q, tc_wgrad::kBK<T>);
  if (tiles == 0 || steps == 0) return p;
  int64_t splits = resident * multiprocessor_count() / tiles;
  if (splits > ceil_div(steps, kMinStepsPerSplit)) splits = ceil_div(steps, kMinStepsPerSplit);
  if (splits > kMaxGridYZ / s.groups) splits = kMaxGridYZ / s.groups;
  if (splits < 1) splits = 1;
  p.steps_per_split = ceil_div(steps, splits);
  p.splits = ceil_div(steps, p.steps_per_split);  // drop splits that would get no work
  return p;
}

template <typename T>
void launch_backward_weight_tc(const Conv2dShape& s, const T* dy, const T* x, float* workspace, bool deterministic,
                               gpu_stream_t stream) {
  const int gemm_m = checked_extent(s.k_per_group(), "K/groups");
  const int gemm_n = checked_extent(s.c_per_group() * s.R * s.S, "C/groups*R*S");
  const int gemm_k = checked_extent(s.N * s.P * s.Q, "N*P*Q");
  const int PQ = checked_extent(s.P * s.Q, "P*Q"), Q = static_cast<int>(s.Q);
  if (gemm_m == 0 || gemm_n == 0 || gemm_k == 0 || s.groups == 0) return;
  if (s.H > INT_MAX / 4 || s.W > INT_MAX / 4 || s.P > INT_MAX / 4 || s.Q > INT_MAX / 4)
    throw std::invalid_argument("cnnkern conv2d (GPU): spatial extents too large for the tensor-core kernels");
  const WgradTcPlan plan = plan_backward_weight_tc<T>(s);
  if (s.R * s.S * plan.c_tiles > kMaxGridYZ)
    throw std::invalid_argument("cnnkern conv2d (GPU): too many taps and channel tiles for the grid");
  const int64_t split_stride = deterministic && plan.splits > 1 ? s.K * s.c_per_group() * s.R * s.S : 0;
  auto launch = [&](auto bn, auto vec) {
    constexpr int BN = decltype(bn)::value;
    const dim3 grid(static_cast<unsigned>(ceil_div(gemm_m, tc_wgrad::kBM)),
                    static_cast<unsigned>(s.R * s.S * plan.c_tiles), static_cast<unsigned>(s.groups * plan.splits));
    launch_kernel(conv2d_backward_weight_tc_kernel<T, BN, decltype(vec)::value>, grid,
                  dim3(tc_wgrad::Tile<T, BN>::kThreads), 0, stream, s, dy, x, workspace, split_stride, gemm_k, PQ, Q,
                  static_cast<int>(plan.c_tiles), static_cast<int>(plan.splits),
                  static_cast<int>(plan.steps_per_split));
  };
  using Wide = std::integral_constant<int, 128>;
  using Narrow = std::integral_constant<int, 64>;
  const bool vec = conv2d_backward_weight_vector_copies(s, dy, x, sizeof(T));
  if (plan.bn == 128)
    vec ? launch(Wide{}, std::true_type{}) : launch(Wide{}, std::false_type{});
  else
    vec ? launch(Narrow{}, std::true_type{}) : launch(Narrow{}, std::false_type{});
}

// The CUDA-core weight gradient (float, double; fp32 without TF32): split-K
// over the pixels into the workspace, one split when deterministic.
template <typename T>
void backward_weight_ffma(const Conv2dShape& s, const T* dy, const T* x, acc_t<T>* workspace, bool deterministic,
                          gpu_stream_t stream) {
  BackwardWeightProblem<T> prob{};
  prob.shape = s;
  prob.dy = dy;
  prob.x = x;
  prob.workspace = workspace;
  prob.gemm_m = checked_extent(s.k_per_group(), "K/groups");
  prob.gemm_n = checked_extent(s.c_per_group() * s.R * s.S, "C/groups*R*S");
  prob.gemm_k = checked_extent(s.N * s.P * s.Q, "N*P*Q");
  prob.PQ = checked_extent(s.P * s.Q, "P*Q");
  prob.Q = static_cast<int>(s.Q);
  prob.RS = checked_extent(s.R * s.S, "R*S");
  prob.S = static_cast<int>(s.S);
  if (prob.gemm_m > 0 && prob.gemm_n > 0 && prob.gemm_k > 0 && s.groups > 0) {
    const int64_t tiles = ceil_div(prob.gemm_m, kTileM) * ceil_div(prob.gemm_n, kTileN) * s.groups;
    const int64_t steps = ceil_div(prob.gemm_k, kTileK);
    int64_t splits = ceil_div(kTargetBlocksPerSm * multiprocessor_count(), tiles);
    if (splits > ceil_div(steps, kMinStepsPerSplit)) splits = ceil_div(steps, kMinStepsPerSplit);
    if (splits > kMaxGridYZ / s.groups) splits = kMaxGridYZ / s.groups;
    if (splits < 1 || deterministic) splits = 1;
    const int64_t steps_per_split = ceil_div(steps, splits);
    splits = ceil_div(steps, steps_per_split);  // drop splits that would get no work
    launch_gemm(prob, s.groups, splits, steps_per_split, stream);
  }
}

}  // namespace

bool conv2d_forward_vector_copies(const Conv2dShape& s, const void* x, const void* w, std::size_t elem_bytes) {
  const int64_t e = 16 / static_cast<int64_t>(elem_bytes);
  return s.groups > 0 && s.c_per_group() % e == 0 && channels_in_16_byte_rows(s.x_stride, x, elem_bytes) &&
         channels_in_16_byte_rows(s.w_stride, w, elem_bytes);
}

bool conv2d_backward_weight_vector_copies(const Conv2dShape& s, const void* dy, const void* x,
                                          std::size_t elem_bytes) {
  const int64_t e = 16 / static_cast<int64_t>(elem_bytes);
  return s.groups > 0 && s.c_per_group() % e == 0 && s.k_per_group() % e == 0 &&
         channels_in_16_byte_rows(s.x_stride, x, elem_bytes) && channels_in_16_byte_rows(s.y_stride, dy, elem_bytes);
}

template <typename T>
void conv2d_forward(const Conv2dShape& s, const T* x, const T* w, const T* bias, T* y, gpu_stream_t stream,
                    bool allow_tf32) {
  if constexpr (kTensorCores<T>) {
    launch_forward_tc(s, x, w, s.k_per_group() * s.w_stride[0], bias, y, stream);
  } else {
    if constexpr (std::is_same_v<T, float>) {
      if (allow_tf32) return launch_forward_tc(s, x, w, s.k_per_group() * s.w_stride[0], bias, y, stream);
    }
    ForwardProblem<T> prob{};
    prob.shape = s;
    prob.x = x;
    prob.weight = w;
    prob.bias = bias;
    prob.y = y;
    prob.gemm_m = checked_extent(s.N * s.P * s.Q, "N*P*Q");
    prob.gemm_n = checked_extent(s.k_per_group(), "K/groups");
    prob.gemm_k = checked_extent(s.c_per_group() * s.R * s.S, "C/groups*R*S");
    prob.PQ = checked_extent(s.P * s.Q, "P*Q");
    prob.Q = static_cast<int>(s.Q);
    prob.RS = checked_extent(s.R * s.S, "R*S");
    prob.S = static_cast<int>(s.S);
    launch_gemm(prob, s.groups, stream);
  }
}

template <typename T>
void conv2d_backward_input(const Conv2dShape& s, const T* dy, const T* w, T* dx, gpu_stream_t stream,
                           bool allow_tf32) {
  if constexpr (kTensorCores<T>) {
    backward_input_tc(s, dy, w, dx, stream);
  } else {
    if constexpr (std::is_same_v<T, float>) {
      if (allow_tf32) return backward_input_tc(s, dy, w, dx, stream);
    }
    BackwardInputProblem<T> prob{};
    prob.shape = s;
    prob.dy = dy;
    prob.weight = w;
    prob.dx = dx;
    prob.gemm_m = checked_extent(s.N * s.H * s.W, "N*H*W");
    prob.gemm_n = checked_extent(s.c_per_group(), "C/groups");
    prob.gemm_k = checked_extent(s.k_per_group() * s.R * s.S, "K/groups*R*S");
    prob.HW = checked_extent(s.H * s.W, "H*W");
    prob.W = static_cast<int>(s.W);
    prob.RS = checked_extent(s.R * s.S, "R*S");
    prob.S = static_cast<int>(s.S);
    launch_gemm(prob, s.groups, stream);
  }
}

template <typename T>
void conv2d_backward_weight(const Conv2dShape& s, const T* dy, const T* x, T* dw, acc_t<T>* workspace,
                            bool deterministic, gpu_stream_t stream, bool allow_tf32) {
  if constexpr (kTensorCores<T>)
    launch_backward_weight_tc(s, dy, x, static_cast<float*>(workspace), deterministic, stream);
  else if constexpr (std::is_same_v<T, float>)
    allow_tf32 ? launch_backward_weight_tc(s, dy, x, workspace, deterministic, stream)
               : backward_weight_ffma(s, dy, x, workspace, deterministic, stream);
  else
    backward_weight_ffma(s, dy, x, workspace, deterministic, stream);

  // Runs even when the GEMM is empty: dw is then the zeroed workspace.
  const int64_t total = s.K * s.c_per_group() * s.R * s.S;
  if (total == 0) return;
  const int64_t splits = conv2d_backward_weight_workspace<T>(s, deterministic, allow_tf32) / total;
  int64_t blocks = ceil_div(total, kConvertThreads);
  if (blocks > kMaxConvertBlocks) blocks = kMaxConvertBlocks;
  launch_kernel(weight_grad_convert_kernel<T>, dim3(static_cast<unsigned>(blocks)), dim3(kConvertThreads), 0,
                stream, s, static_cast<const acc_t<T>*>(workspace), static_cast<int>(splits), dw);
}

template <typename T>
int64_t conv2d_backward_weight_workspace(const Conv2dShape& s, bool deterministic, bool allow_tf32) {
  const int64_t total = s.K * s.c_per_group() * s.R * s.S;
  if (!on_tensor_cores<T>(allow_tf32) || !deterministic || s.N * s.P * s.Q == 0 || total == 0) return total;
  return total * plan_backward_weight_tc<T>(s).splits;
}

template <typename T>
void conv2d_backward_bias(const Conv2dShape& s, const T* dy, T* db, gpu_stream_t stream) {
  if (s.K == 0) return;
  if (s.K > INT_MAX) throw std::invalid_argument("cnnkern conv2d (GPU): too many output channels");
  const std::size_t shared_bytes = (kBiasThreads / kWarpSize) * sizeof(acc_t<T>);
  launch_kernel(bias_grad_kernel<T>, dim3(static_cast<unsigned>(s.K)), dim3(kBiasThreads),
                shared_bytes, stream, s, dy, db);
}

#define CNNKERN_INSTANTIATE_CONV2D(T)                                                      \
  template void conv2d_forward<T>(const Conv2dShape&, const T*, const T*, const T*, T*,    \
                                  gpu_stream_t, bool);                                     \
  template void conv2d_backward_input<T>(const Conv2dShape&, const T*, const T*, T*,       \
                                         gpu_stream_t, bool);                              \
  template void conv2d_backward_weight<T>(const Conv2dShape&, const T*, const T*, T*,      \
                                          acc_t<T>*, bool, gpu_stream_t, bool);            \
  template void conv2d_backward_bias<T>(const Conv2dShape&, const T*, T*, gpu_stream_t);          \
  template int64_t conv2d_backward_weight_workspace<T>(const Conv2dShape&, bool, bool);

CNNKERN_INSTANTIATE_CONV2D(float)
CNNKERN_INSTANTIATE_CONV2D(double)
CNNKERN_INSTANTIATE_CONV2D(c10::Half)
CNNKERN_INSTANTIATE_CONV2D(c10::BFloat16)
#undef CNNKERN_INSTANTIATE_CONV2D

}  // namespace CNNKERN_GPU_NS
}  // namespace cnnkern
