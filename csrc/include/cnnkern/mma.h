// Tensor-core building blocks (sm_80+): warp-level mma.sync, ldmatrix, cp.async
// and the tf32 conversion, as small device functions. On the GPU each is one
// inline PTX instruction; under the host emulation (cuda_emu.h) each is
// emulated as the PTX ISA defines it, lane by lane (fragment layouts, ldmatrix
// addressing, tf32 rounding and cp.async groups exactly, the fp32 accumulation
// up to rounding), so that a kernel that gets a fragment index, an ldmatrix
// address or a cp.async wait wrong gets a wrong result there too.
//
// Fragment layouts: PTX ISA, "Warp-level Matrix Fragments for mma" (section
// 9.7.14.5 up to ISA 8.7, 9.7.15.5 in later ones; the figures keep their
// numbers). With
//   g = laneid >> 2 ("groupID"), t = laneid % 4 ("threadID_in_group"),
// element i of a lane's fragment sits at (row, col) of its matrix:
//   m16n8k16 .f16/.bf16 (9.7.14.5.8, Figures 79, 81, 83); registers hold two
//   16-bit elements each, element 2j in the low half of register j:
//     A 16x16, a0..a7: row g + 8*((i >> 1) & 1), col 2t + (i & 1) + 8*(i >> 2)
//     B 16x8,  b0..b3: row 2t + (i & 1) + 8*(i >> 1), col g
//     C/D 16x8, c0..c3 (f32): row g + 8*(i >> 1), col 2t + (i & 1)
//   m16n8k8 .tf32 (9.7.14.5.7, Figures 72, 75, 77); one element per register:
//     A 16x8, a0..a3: row g + 8*(i & 1), col t + 4*(i >> 1)
//     B 8x8,  b0..b1: row t + 4*i, col g
//     C/D as for m16n8k16.
//   ("row.col": A is indexed [m][k], B [k][n], whatever the memory layout.)
// ldmatrix (section 9.7.14.5.15 / 9.7.15.5.15, Figure 104): matrix m of .xN is
// the 8x8 matrix of 16-bit elements whose rows start at the addresses given by
// lanes 8m .. 8m+7 (lane 8m + r: row r). Lane l receives in register m the
// elements (row l/4, cols 2(l%4) and 2(l%4)+1), the lower column in the low
// half; with .trans, the elements (rows 2(l%4) and 2(l%4)+1, col l/4), i.e. the
// same positions of the transposed matrix. Row addresses: 16-byte aligned, in
// shared memory; lanes past 8N pass anything (ignored from sm_80 on).
//
// Every mma and ldmatrix must be executed by all 32 lanes of the warp together
// (the .sync.aligned forms): the emulation throws when a lane diverges.
#pragma once
#include <cstdint>

#if defined(CNNKERN_EMU)
#include <cstring>
#include <deque>
#include <stdexcept>
#include <string>
#include <vector>

#include "cnnkern/cuda_emu.h"
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
#define CNNKERN_TC_PTX 1
#endif

namespace cnnkern {
namespace tc {

#if defined(CNNKERN_EMU)
// ---- Host emulation ----------------------------------------------------------
namespace emulation {

inline float bits_to_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}
inline uint32_t float_to_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}

// Operand decoding: every fp16 and bf16 value is exactly a float.
inline float f16_to_float(uint32_t h) {
  const uint32_t sign = (h & 0x8000u) << 16, exp = (h >> 10) & 0x1fu, man = h & 0x3ffu;
  if (exp == 0x1f) return bits_to_float(sign | 0x7f800000u | (man << 13));  // inf, NaN
  if (exp != 0) return bits_to_float(sign | ((exp + 112) << 23) | (man << 13));
  const float mag = static_cast<float>(man) * 0x1p-24f;  // subnormal (or zero): exact
  return sign ? -mag : mag;
}
inline float bf16_to_float(uint32_t b) { return bits_to_float((b & 0xffffu) << 16); }
// A .tf32 operand is a 32-bit register of which the MMA unit reads the sign,
// the exponent and the top 10 mantissa bits: the low 13 bits are dropped
// (truncation), which is a no-op on the output of cvt.rna.tf32.f32.
inline float tf32_operand(uint32_t x) { return bits_to_float(x & 0xffffe000u); }

// cvt.rna.tf32.f32: round the mantissa to 10 bits, to nearest, ties away from
// zero (adding half an ulp to the magnitude does exactly that, carrying into
// the exponent, up to infinity); the low 13 bits of the result are zero.
inline uint32_t f32_to_tf32(float x) {
  const uint32_t u = float_to_bits(x);
  if ((u & 0x7f800000u) == 0x7f800000u)  // inf stays inf, NaN stays NaN
    return (u & 0x007fffffu) ? ((u | 0x00400000u) & 0xffffe000u) : u;
  return (u + 0x1000u) & 0xffffe000u;
}

struct MmaIn {
  uint32_t a[4], b[2];
  float c[4];
};
struct MmaOut {
  float d[4];
};

// m16n8k16 with 16-bit operands (decode: f16_to_float or bf16_to_float).
template <float (*Decode)(uint32_t)>
void mma_m16n8k16(const MmaIn* in, MmaOut* out, unsigned) {
  float A[16][16], B[16][8];
  for (unsigned lane = 0; lane < 32; ++lane) {
    const unsigned g = lane >> 2, t = lane % 4;
    for (unsigned i = 0; i < 8; ++i)  // Figure 79
      A[g + 8 * ((i >> 1) & 1)][2 * t + (i & 1) + 8 * (i >> 2)] =
          Decode(in[lane].a[i / 2] >> (16 * (i % 2)));
    for (unsigned i = 0; i < 4; ++i)  // Figure 81
      B[2 * t + (i & 1) + 8 * (i >> 1)][g] = Decode(in[lane].b[i / 2] >> (16 * (i % 2)));
  }
  for (unsigned lane = 0; lane < 32; ++lane) {
    const unsigned g = lane >> 2, t = lane % 4;
    for (unsigned i = 0; i < 4; ++i) {  // Figure 83
      const unsigned row = g + 8 * (i >> 1), col = 2 * t + (i & 1);
      // Products of 11-bit (f16) or 8-bit (bf16) significands are exact in
      // float; the sum is rounded once per term, in k order, after C. The
      // hardware may add in another order and round otherwise inside: tests of
      // kernels allow a few fp32 ulps of sum |terms|, not bit equality.
      float acc = in[lane].c[i];
      for (unsigned k = 0; k < 16; ++k) acc += A[row][k] * B[k][col];
      out[lane].d[i] = acc;
    }
  }
}

inline void mma_m16n8k8_tf32(const MmaIn* in, MmaOut* out, unsigned) {
  float A[16][8], B[8][8];
  for (unsigned lane = 0; lane < 32; ++lane) {
    const unsigned g = lane >> 2, t = lane % 4;
    for (unsigned i = 0; i < 4; ++i)  // Figure 72
      A[g + 8 * (i & 1)][t + 4 * (i >> 1)] = tf32_operand(in[lane].a[i]);
    for (unsigned i = 0; i < 2; ++i)  // Figure 75
      B[t + 4 * i][g] = tf32_operand(in[lane].b[i]);
  }
  for (unsigned lane = 0; lane < 32; ++lane) {
    const unsigned g = lane >> 2, t = lane % 4;
    for (unsigned i = 0; i < 4; ++i) {  // Figure 77
      const unsigned row = g + 8 * (i >> 1), col = 2 * t + (i & 1);
      float acc = in[lane].c[i];  // 11-bit significands: exact products, as above
      for (unsigned k = 0; k < 8; ++k) acc += A[row][k] * B[k][col];
      out[lane].d[i] = acc;
    }
  }
}

inline void mma(const char* op, void (*compute)(const MmaIn*, MmaOut*, unsigned), float (&d)[4],
                const uint32_t (&a)[4], const uint32_t (&b)[2], const float (&c)[4]) {
  const MmaIn in{{a[0], a[1], a[2], a[3]}, {b[0], b[1]}, {c[0], c[1], c[2], c[3]}};
  const MmaOut out = emu_runtime::warp_collective<MmaOut>(op, in, /*full_warp=*/true, compute);
  for (int i = 0; i < 4; ++i) d[i] = out.d[i];
}

template <int N, bool Trans>
void ldmatrix(uint32_t (&r)[N], const void* row) {
  struct In {
    const unsigned char* row;
  };
  struct Out {
    uint32_t r[4];
  };
  static const std::string op = std::string("ldmatrix.sync.aligned.m8n8.x") + char('0' + N) +
                                (Trans ? ".trans" : "") + ".shared.b16";
  const Out out = emu_runtime::warp_collective<Out>(
      op.c_str(), In{static_cast<const unsigned char*>(row)}, /*full_warp=*/true,
      [](const In* in, Out* res, unsigned) {
        for (int l = 0; l < 8 * N; ++l)  // only lanes 0 .. 8N-1 give addresses
          if (!in[l].row || reinterpret_cast<std::uintptr_t>(in[l].row) % 16 != 0)
            throw std::runtime_error("cuda_emu: " + op + ": lane " + std::to_string(l) +
                                     "'s row address is null or not 16-byte aligned");
        for (unsigned lane = 0; lane < 32; ++lane)
          for (int m = 0; m < N; ++m) {
            const In* rows = in + 8 * m;
            uint16_t e[2];  // e[0] goes to the low half
            for (unsigned j = 0; j < 2; ++j) {
              if (Trans)  // (row 2(l%4)+j, col l/4)
                std::memcpy(&e[j], rows[2 * (lane % 4) + j].row + 2 * (lane / 4), 2);
              else  // (row l/4, col 2(l%4)+j)
                std::memcpy(&e[j], rows[lane / 4].row + 2 * (2 * (lane % 4) + j), 2);
            }
            res[lane].r[m] = e[0] | static_cast<uint32_t>(e[1]) << 16;
          }
      });
  for (int m = 0; m < N; ++m) r[m] = out.r[m];
}

// cp.async: each thread keeps its copies and performs them when a wait needs
// them complete, not at issue. The PTX ISA ("cp.async.wait_group") makes their
// writes visible to the thread only once a wait_group covering their group,
// or a wait_all, has completed; so a kernel that reads its shared tile before
// the matching wait (and, for other threads' copies, __syncthreads) reads stale
// data here too. Copies nobody waited for are dropped with their block (its
// shared memory is gone). The source is read when the copy is performed.
struct AsyncCopy {
  void* dst;
  const void* src;
  unsigned src_bytes;
};
struct AsyncCopies {
  unsigned long long block = ~0ull;  // the block they belong to
  std::vector<AsyncCopy> uncommitted;
  std::deque<std::vector<AsyncCopy>> groups;  // committed, oldest first
};

// This thread's copies, those of an earlier block dropped.
inline AsyncCopies& async_copies() {
  thread_local AsyncCopies copies;
  const unsigned long long block =
      (static_cast<unsigned long long>(blockIdx.z) * gridDim.y + blockIdx.y) * gridDim.x +
      blockIdx.x;
  if (copies.block != block) {
    copies = AsyncCopies{};
    copies.block = block;
  }
  return copies;
}

inline void cp_async_16(void* dst, const void* src, unsigned src_bytes) {
  if (src_bytes > 16)
    throw std::runtime_error("cuda_emu: cp.async.cg: src-size " + std::to_string(src_bytes) +
                             " > cp-size 16");
  // Both addresses must be aligned to cp-size; the source is not read (and
  // not checked) when src-size is 0.
  if (reinterpret_cast<std::uintptr_t>(dst) % 16 != 0 ||
      (src_bytes > 0 && reinterpret_cast<std::uintptr_t>(src) % 16 != 0))
    throw std::runtime_error("cuda_emu: cp.async.cg: address not 16-byte aligned");
  async_copies().uncommitted.push_back({dst, src, src_bytes});
}

inline void cp_async_commit_group() {
  AsyncCopies& copies = async_copies();
  copies.groups.push_back(std::move(copies.uncommitted));  // may be an empty group
  copies.uncommitted.clear();
}

// Completes all but the `pending` most recent committed groups.
inline void cp_async_wait_group(unsigned pending) {
  AsyncCopies& copies = async_copies();
  while (copies.groups.size() > pending) {
    for (const AsyncCopy& c : copies.groups.front()) {
      unsigned char* dst = static_cast<unsigned char*>(c.dst);
      if (c.src_bytes) std::memcpy(dst, c.src, c.src_bytes);
      std::memset(dst + c.src_bytes, 0, 16 - c.src_bytes);  // the zero fill
    }
    copies.groups.pop_front();
  }
}

}  // namespace emulation
#else
// Device code for an architecture below sm_80, or nvcc's host pass (which
// never calls these): not supported.
__device__ __forceinline__ void unsupported() {
#if defined(__CUDA_ARCH__)
  __trap();
#endif
}
#endif  // CNNKERN_EMU

// ---- mma.sync: D = A * B + C, fp32 accumulators -------------------------------
// Operands as the PTX ISA types them: A and B fragments are 32-bit registers
// (two packed 16-bit elements, or one .tf32), C and D are floats. d may alias c.

__device__ __forceinline__ void mma_m16n8k16_f16(float (&d)[4], const uint32_t (&a)[4],
                                                 const uint32_t (&b)[2], const float (&c)[4]) {
#if defined(CNNKERN_TC_PTX)
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
      "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%10, %11, %12, %13};\n"
      : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]),
        "f"(c[2]), "f"(c[3]));
#elif defined(CNNKERN_EMU)
  emulation::mma("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32",
                 emulation::mma_m16n8k16<emulation::f16_to_float>, d, a, b, c);
#else
  (void)a, (void)b, d[0] = c[0], d[1] = c[1], d[2] = c[2], d[3] = c[3];
  unsupported();
#endif
}

__device__ __forceinline__ void mma_m16n8k16_bf16(float (&d)[4], const uint32_t (&a)[4],
                                                  const uint32_t (&b)[2], const float (&c)[4]) {
#if defined(CNNKERN_TC_PTX)
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
      "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%10, %11, %12, %13};\n"
      : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]),
        "f"(c[2]), "f"(c[3]));
#elif defined(CNNKERN_EMU)
  emulation::mma("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32",
                 emulation::mma_m16n8k16<emulation::bf16_to_float>, d, a, b, c);
#else
  (void)a, (void)b, d[0] = c[0], d[1] = c[1], d[2] = c[2], d[3] = c[3];
  unsupported();
#endif
}

// a and b: .tf32 registers, normally from f32_to_tf32(); raw fp32 bits work
// too, the low 13 mantissa bits being ignored (truncation).
__device__ __forceinline__ void mma_m16n8k8_tf32(float (&d)[4], const uint32_t (&a)[4],
                                                 const uint32_t (&b)[2], const float (&c)[4]) {
#if defined(CNNKERN_TC_PTX)
  asm volatile(
      "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 "
      "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%10, %11, %12, %13};\n"
      : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]),
        "f"(c[2]), "f"(c[3]));
#elif defined(CNNKERN_EMU)
  emulation::mma("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32",
                 emulation::mma_m16n8k8_tf32, d, a, b, c);
#else
  (void)a, (void)b, d[0] = c[0], d[1] = c[1], d[2] = c[2], d[3] = c[3];
  unsupported();
#endif
}

// cvt.rna.tf32.f32: x rounded to tf32 (nearest, ties away from zero), as the
// .b32 register mma_m16n8k8_tf32 takes (its low 13 bits zero).
__device__ __forceinline__ uint32_t f32_to_tf32(float x) {
#if defined(CNNKERN_TC_PTX)
  uint32_t r;
  asm("cvt.rna.tf32.f32 %0, %1;\n" : "=r"(r) : "f"(x));
  return r;
#elif defined(CNNKERN_EMU)
  return emulation::f32_to_tf32(x);
#else
  (void)x;
  unsupported();
  return 0;
#endif
}

// The same for an fp32 value held as its bits (an ldmatrix register).
__device__ __forceinline__ uint32_t f32_bits_to_tf32(uint32_t bits) {
#if defined(CNNKERN_TC_PTX)
  return f32_to_tf32(__uint_as_float(bits));
#elif defined(CNNKERN_EMU)
  return emulation::f32_to_tf32(emulation::bits_to_float(bits));
#else
  (void)bits;
  unsupported();
  return 0;
#endif
}

// ---- ldmatrix.sync.aligned.m8n8.{x1,x2,x4}{,.trans}.shared.b16 -------------------
// N = 1, 2 or 4 matrices, one register each (see the layout at the top); `row`
// is this lane's row address in shared memory. The "memory" clobber keeps the
// compiler from moving shared-memory stores of this thread across the load.

template <int N>
__device__ __forceinline__ void ldmatrix(uint32_t (&r)[N], const void* row) {
  static_assert(N == 1 || N == 2 || N == 4, "ldmatrix loads 1, 2 or 4 matrices");
#if defined(CNNKERN_TC_PTX)
  const unsigned addr = static_cast<unsigned>(__cvta_generic_to_shared(row));
  if constexpr (N == 1)
    asm volatile("ldmatrix.sync.aligned.m8n8.x1.shared.b16 {%0}, [%1];\n"
                 : "=r"(r[0]) : "r"(addr) : "memory");
  else if constexpr (N == 2)
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0, %1}, [%2];\n"
                 : "=r"(r[0]), "=r"(r[1]) : "r"(addr) : "memory");
  else
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(addr) : "memory");
#elif defined(CNNKERN_EMU)
  emulation::ldmatrix<N, false>(r, row);
#else
  (void)row;
  for (int i = 0; i < N; ++i) r[i] = 0;
  unsupported();
#endif
}

template <int N>
__device__ __forceinline__ void ldmatrix_trans(uint32_t (&r)[N], const void* row) {
  static_assert(N == 1 || N == 2 || N == 4, "ldmatrix loads 1, 2 or 4 matrices");
#if defined(CNNKERN_TC_PTX)
  const unsigned addr = static_cast<unsigned>(__cvta_generic_to_shared(row));
  if constexpr (N == 1)
    asm volatile("ldmatrix.sync.aligned.m8n8.x1.trans.shared.b16 {%0}, [%1];\n"
                 : "=r"(r[0]) : "r"(addr) : "memory");
  else if constexpr (N == 2)
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0, %1}, [%2];\n"
                 : "=r"(r[0]), "=r"(r[1]) : "r"(addr) : "memory");
  else
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(addr) : "memory");
#elif defined(CNNKERN_EMU)
  emulation::ldmatrix<N, true>(r, row);
#else
  (void)row;
  for (int i = 0; i < N; ++i) r[i] = 0;
  unsupported();
#endif
}

// ---- ld.shared{,.v2}.b32: one lane's 4 or 8 bytes (LDS, LDS.64) ----------------
// For 32-bit fragments that ldmatrix cannot transpose: the N words at p, a
// 4N-byte aligned shared-memory address (checked under emulation), into
// registers the mma can take as they are.
template <int N>
__device__ __forceinline__ void lds(uint32_t (&r)[N], const void* p) {
  static_assert(N == 1 || N == 2, "one or two words");
#if defined(CNNKERN_EMU)
  if (reinterpret_cast<std::uintptr_t>(p) % (4 * N) != 0)
    throw std::runtime_error("cuda_emu: ld.shared: address not aligned to its size");
  std::memcpy(r, p, 4 * N);
#else
  if constexpr (N == 1) {
    r[0] = *static_cast<const uint32_t*>(p);
  } else {
    const uint2 v = *static_cast<const uint2*>(p);
    r[0] = v.x, r[1] = v.y;
  }
#endif
}

// ---- cp.async.cg.shared.global: 16-byte global -> shared copies ------------------
// Per thread: copies join a group at cp_async_commit_group(); the data may be
// read once cp_async_wait_group<N>() has left at most the N newest groups in
// flight (and, for other threads' copies, after a __syncthreads). Both
// addresses 16-byte aligned. "memory" clobbers: the compiler must not move
// shared-memory accesses across these.

__device__ __forceinline__ void cp_async_16(void* smem_dst, const void* gmem_src) {
#if defined(CNNKERN_TC_PTX)
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(
                   static_cast<unsigned>(__cvta_generic_to_shared(smem_dst))),
               "l"(__cvta_generic_to_global(gmem_src))
               : "memory");
#elif defined(CNNKERN_EMU)
  emulation::cp_async_16(smem_dst, gmem_src, 16);
#else
  (void)smem_dst, (void)gmem_src;
  unsupported();
#endif
}

// Copies the first src_bytes (0..16) bytes and zero-fills the rest of the 16:
// src_bytes = 0 is the predicated-off copy (the source is not read).
__device__ __forceinline__ void cp_async_16(void* smem_dst, const void* gmem_src,
                                            unsigned src_bytes) {
#if defined(CNNKERN_TC_PTX)
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(
                   static_cast<unsigned>(__cvta_generic_to_shared(smem_dst))),
               "l"(__cvta_generic_to_global(gmem_src)), "r"(src_bytes)
               : "memory");
#elif defined(CNNKERN_EMU)
  emulation::cp_async_16(smem_dst, gmem_src, src_bytes);
#else
  (void)smem_dst, (void)gmem_src, (void)src_bytes;
  unsupported();
#endif
}

__device__ __forceinline__ void cp_async_commit_group() {
#if defined(CNNKERN_TC_PTX)
  asm volatile("cp.async.commit_group;\n" ::: "memory");
#elif defined(CNNKERN_EMU)
  emulation::cp_async_commit_group();
#else
  unsupported();
#endif
}

template <int N>
__device__ __forceinline__ void cp_async_wait_group() {
  static_assert(N >= 0, "cp.async.wait_group takes a count of groups");
#if defined(CNNKERN_TC_PTX)
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
#elif defined(CNNKERN_EMU)
  emulation::cp_async_wait_group(N);
#else
  unsupported();
#endif
}

// Every copy of this thread, committed or not (commit_group + wait_group 0).
__device__ __forceinline__ void cp_async_wait_all() {
#if defined(CNNKERN_TC_PTX)
  asm volatile("cp.async.wait_all;\n" ::: "memory");
#elif defined(CNNKERN_EMU)
  emulation::cp_async_commit_group();
  emulation::cp_async_wait_group(0);
#else
  unsupported();
#endif
}

}  // namespace tc
}  // namespace cnnkern

#undef CNNKERN_TC_PTX
