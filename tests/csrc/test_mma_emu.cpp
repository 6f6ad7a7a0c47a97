// Standalone check of the tensor-core building blocks (csrc/include/cnnkern/
// mma.h) through their host emulation: small one- and few-warp kernels stage
// tiles in shared memory with cp.async, fetch fragments with ldmatrix
// (.x1/.x2/.x4, plain and .trans) or plain loads, run mma.sync (f16, bf16,
// tf32) and store D through the C/D fragment layout; the results are compared
// with the matrix product computed here in double. Also: per-lane fragment
// contents against values read off the PTX ISA figures, cp.async groups and
// zero fill, kernels with a deliberately wrong fragment index (which must
// fail the comparison), and divergent warps (which must raise an error).
// Build and run: tests/csrc/run_mma.sh
//
// Nothing here reuses the header's layout code: the kernels index fragments
// with their own copy of the ISA formulas, and the expected per-lane values
// are literal numbers, so a layout mistake in the emulation cannot cancel out.
#include "cnnkern/cuda_emu.h"
#include "cnnkern/mma.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace tc = cnnkern::tc;
using cnnkern::emu_runtime::launch;

namespace {

constexpr int kMaxWarps = 4;  // per block, in the kernels below

int g_cases = 0, g_failures = 0;

void report(bool ok, const std::string& name, const std::string& detail = "") {
  ++g_cases;
  if (!ok) ++g_failures;
  std::printf("%s  %-58s %s\n", ok ? "PASS" : "FAIL", name.c_str(), detail.c_str());
}

// ---- Values: encoded here, decoded here (not with the header's code) ---------

double f16_value(uint16_t h) {
  const int e = (h >> 10) & 31, m = h & 1023;
  const double v = e ? std::ldexp(1024 + m, e - 25) : std::ldexp(m, -24);
  return (h & 0x8000) ? -v : v;
}
double bf16_value(uint16_t b) {
  const int e = (b >> 7) & 255, m = b & 127;
  const double v = e ? std::ldexp(128 + m, e - 134) : std::ldexp(m, -133);
  return (b & 0x8000) ? -v : v;
}
// v must be a normal number with at most `bits` significant bits.
uint16_t encode16(double v, int bits, int bias) {
  if (v == 0) return 0;
  int e;
  const double f = std::frexp(std::fabs(v), &e);  // |v| = f * 2^e, f in [0.5, 1)
  const double sig = std::ldexp(f, bits);         // in [2^(bits-1), 2^bits)
  if (sig != std::floor(sig)) throw std::logic_error("encode16: not representable");
  const int mantissa = static_cast<int>(sig) - (1 << (bits - 1));
  return static_cast<uint16_t>((v < 0 ? 0x8000 : 0) | (e - 1 + bias) << (bits - 1) | mantissa);
}
uint16_t f16_of(double v) { return encode16(v, 11, 15); }
uint16_t bf16_of(double v) { return encode16(v, 8, 127); }

uint32_t bits_of(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
float float_of(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// x with its significand cut to 11 bits (tf32): toward zero, or to nearest
// with ties away from zero.
double tf32_round(float x, bool nearest) {
  if (x == 0) return 0;
  int e;
  const double f = std::frexp(static_cast<double>(x), &e);
  const double sig = std::ldexp(std::fabs(f), 11);
  const double r = nearest ? std::floor(sig + 0.5) : std::floor(sig);
  return std::copysign(std::ldexp(r, e - 11), x);
}

// Random finite 16-bit values: mostly normal, of magnitude 2^-4 .. 4, one in
// 16 subnormal (fp16) or tiny (bf16); a few zeros.
uint16_t random_f16(std::mt19937& rng) {
  const uint32_t r = rng();
  const uint32_t sign = (r & 1) << 15, man = (r >> 1) & 1023, kind = (r >> 11) & 15;
  const uint32_t exp = kind == 0 ? 0 : 11 + (r >> 15) % 7;
  return static_cast<uint16_t>(kind == 1 && (r >> 20) % 4 == 0 ? 0 : sign | exp << 10 | man);
}
uint16_t random_bf16(std::mt19937& rng) {
  const uint32_t r = rng();
  const uint32_t sign = (r & 1) << 15, man = (r >> 1) & 127, kind = (r >> 8) & 15;
  const uint32_t exp = kind == 0 ? 90 + (r >> 12) % 8 : 122 + (r >> 12) % 7;
  return static_cast<uint16_t>(kind == 1 && (r >> 20) % 4 == 0 ? 0 : sign | exp << 7 | man);
}

// ---- Reference and comparison -------------------------------------------------

// D = C + A * B for one problem, in double; mag = |C| + sum |A * B|.
struct Reference {
  std::vector<double> value, mag;
};
Reference reference(int M, int N, int K, const std::vector<double>& A /*[M][K]*/,
                    const std::vector<double>& B /*[K][N]*/, const std::vector<double>& C) {
  Reference r{std::vector<double>(M * N), std::vector<double>(M * N)};
  for (int m = 0; m < M; ++m)
    for (int n = 0; n < N; ++n) {
      double v = C[m * N + n], mag = std::fabs(v);
      for (int k = 0; k < K; ++k) {
        v += A[m * K + k] * B[k * N + n];
        mag += std::fabs(A[m * K + k] * B[k * N + n]);
      }
      r.value[m * N + n] = v;
      r.mag[m * N + n] = mag;
    }
  return r;
}

// Worst |got - ref| / bound over the elements (NaN counts as infinitely bad).
// bound: the products of fp16, bf16 or tf32 operands are exact in fp32, and
// the fp32 accumulation of the K products and C rounds at most K times, each
// time by at most half an ulp of a partial sum no larger than sum |terms|: so
// |error| <= K * 2^-24 * (|C| + sum |A * B|) (+ tiny, for all-zero rows). That
// is a few fp32 ulps of the magnitude sum, the most rounding can explain, and
// far below the error of a single misplaced operand.
double worst_ratio(const float* got, const Reference& ref, int K) {
  double worst = 0;
  for (size_t i = 0; i < ref.value.size(); ++i) {
    const double bound = K * std::ldexp(ref.mag[i], -24) + 1e-30;
    const double ratio = std::fabs(got[i] - ref.value[i]) / bound;
    if (!(ratio <= worst)) worst = std::isnan(ratio) ? INFINITY : ratio;
  }
  return worst;
}

std::string ratio_text(double r) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "err/tol %.3g", r);
  return buf;
}

double ms_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}

// ---- m16n8k16 (f16, bf16): two n8 tiles of a 16x16x16 product per warp -----------
//
// Every warp of the launch solves its own problem: A [16 m][16 k] row-major;
// B [16 k][16 n] stored twice, "col" (Bt[n][k], k contiguous: plain ldmatrix)
// and row-major (Bn[k][n], n contiguous: ldmatrix .trans); C, D [16][16].

enum class Mutation { None, SwapA12, SwapB01, SwapD12, LdsmRows, NoTrans };
const char* mutation_name(Mutation m) {
  switch (m) {
    case Mutation::None: return "none";
    case Mutation::SwapA12: return "A registers 1 and 2 swapped";
    case Mutation::SwapB01: return "B registers 0 and 1 swapped";
    case Mutation::SwapD12: return "D elements 1 and 2 stored at each other's place";
    case Mutation::LdsmRows: return "ldmatrix A row address from lane % 8, not lane % 16";
    case Mutation::NoTrans: return "row-major B loaded without .trans";
  }
  return "?";
}

struct Mma16Args {
  const uint16_t *A, *Bt, *Bn;
  const float* C;
  float *D_bt, *D_bn;
  int width;  // ldmatrix .x1, .x2 or .x4
  Mutation mutation;
};

// The C/D fragment (ISA Figure 83) of n8 tile `nt` of a [16][16] float matrix.
void load_c(float (&c)[4], const float* C, unsigned lane, int nt) {
  const unsigned g = lane / 4, t = lane % 4;
  for (unsigned i = 0; i < 4; ++i) c[i] = C[(g + 8 * (i / 2)) * 16 + 8 * nt + 2 * t + i % 2];
}
void store_d(float* D, const float (&d)[4], unsigned lane, int nt, int ld, bool swap12) {
  const unsigned g = lane / 4, t = lane % 4;
  for (unsigned i = 0; i < 4; ++i) {
    const unsigned j = swap12 && (i == 1 || i == 2) ? 3 - i : i;  // the mutation
    D[(g + 8 * (j / 2)) * ld + 8 * nt + 2 * t + j % 2] = d[i];
  }
}

template <bool BF16>
void mma16(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2], const float (&c)[4]) {
  if constexpr (BF16)
    tc::mma_m16n8k16_bf16(d, a, b, c);
  else
    tc::mma_m16n8k16_f16(d, a, b, c);
}

template <bool BF16>
void mma16_kernel(const Mma16Args args) {
  __shared__ __align__(16) uint16_t sA[kMaxWarps][256];
  __shared__ __align__(16) uint16_t sBt[kMaxWarps][256];
  __shared__ __align__(16) uint16_t sBn[kMaxWarps][256];
  const unsigned lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const size_t problem = blockIdx.x * (blockDim.x / 32) + warp;
  const uint16_t* A = sA[warp];
  const uint16_t* Bt = sBt[warp];
  const uint16_t* Bn = sBn[warp];

  // Each tile is 512 bytes, 32 chunks of 16: lane l copies chunk l. Two groups,
  // so that the second wait really is needed.
  tc::cp_async_16(&sA[warp][8 * lane], args.A + 256 * problem + 8 * lane);
  tc::cp_async_16(&sBt[warp][8 * lane], args.Bt + 256 * problem + 8 * lane);
  tc::cp_async_commit_group();
  tc::cp_async_16(&sBn[warp][8 * lane], args.Bn + 256 * problem + 8 * lane);
  tc::cp_async_commit_group();
  tc::cp_async_wait_group<1>();  // this thread's A and Bt chunks have landed,
  __syncthreads();               // and everyone's

  // A (ISA Figure 79): register j = 8x8 matrix (rows 8*(j%2).., k 8*(j/2)..).
  uint32_t a[4];
  if (args.width == 4) {
    const unsigned row = args.mutation == Mutation::LdsmRows ? lane % 8 : lane % 16;
    tc::ldmatrix(a, &A[row * 16 + (lane / 16) * 8]);
  } else if (args.width == 2) {
    uint32_t lo[2], hi[2];  // lanes 0-15 address rows 0-15; the others are ignored
    tc::ldmatrix(lo, &A[(lane % 16) * 16]);
    tc::ldmatrix(hi, &A[(lane % 16) * 16 + 8]);
    a[0] = lo[0], a[1] = lo[1], a[2] = hi[0], a[3] = hi[1];
  } else {
    for (unsigned j = 0; j < 4; ++j) {
      uint32_t r[1];  // lanes 0-7 address the rows, the others pass null
      tc::ldmatrix(r, lane < 8 ? &A[(8 * (j % 2) + lane) * 16 + 8 * (j / 2)] : nullptr);
      a[j] = r[0];
    }
  }
  if (args.mutation == Mutation::SwapA12) std::swap(a[1], a[2]);

  // B (ISA Figure 81) of n8 tile nt: register j = k 8*j .. 8*j+7. From Bt the
  // 8x8 matrices are (n rows, k columns): plain ldmatrix.
  uint32_t b[2][2];
  // D = A * B + C for both n8 tiles of B, stored (with the mutations under test) to D
  auto mma_and_store = [&](float* D) {
    for (int nt = 0; nt < 2; ++nt) {
      if (args.mutation == Mutation::SwapB01) std::swap(b[nt][0], b[nt][1]);
      float c[4], d[4];
      load_c(c, args.C + 256 * problem, lane, nt);
      mma16<BF16>(d, a, b[nt], c);
      store_d(D + 256 * problem, d, lane, nt, 16, args.mutation == Mutation::SwapD12);
    }
  };
  if (args.width == 4) {
    uint32_t r[4];  // matrix q = lane / 8: tile q / 2, register q % 2
    const unsigned q = lane / 8;
    tc::ldmatrix(r, &Bt[(8 * (q / 2) + lane % 8) * 16 + 8 * (q % 2)]);
    b[0][0] = r[0], b[0][1] = r[1], b[1][0] = r[2], b[1][1] = r[3];
  } else {
    for (int nt = 0; nt < 2; ++nt) {
      if (args.width == 2) {
        tc::ldmatrix(b[nt], lane < 16 ? &Bt[(8 * nt + lane % 8) * 16 + 8 * (lane / 8)] : nullptr);
      } else {
        for (unsigned j = 0; j < 2; ++j) {
          uint32_t r[1];
          tc::ldmatrix(r, lane < 8 ? &Bt[(8 * nt + lane) * 16 + 8 * j] : nullptr);
          b[nt][j] = r[0];
        }
      }
    }
  }
  mma_and_store(args.D_bt);

  tc::cp_async_wait_group<0>();
  __syncthreads();
  // From Bn the 8x8 matrices are (k rows, n columns): ldmatrix .trans.
  auto load_bn = [&](auto& r, const uint16_t* row) {
    if (args.mutation == Mutation::NoTrans)
      tc::ldmatrix(r, row);
    else
      tc::ldmatrix_trans(r, row);
  };
  if (args.width == 4) {
    uint32_t r[4];
    const unsigned q = lane / 8;
    load_bn(r, &Bn[(8 * (q % 2) + lane % 8) * 16 + 8 * (q / 2)]);
    b[0][0] = r[0], b[0][1] = r[1], b[1][0] = r[2], b[1][1] = r[3];
  } else {
    for (int nt = 0; nt < 2; ++nt) {
      if (args.width == 2) {
        load_bn(b[nt], lane < 16 ? &Bn[lane * 16 + 8 * nt] : nullptr);
      } else {
        for (unsigned j = 0; j < 2; ++j) {
          uint32_t r[1];
          load_bn(r, lane < 8 ? &Bn[(8 * j + lane) * 16 + 8 * nt] : nullptr);
          b[nt][j] = r[0];
        }
      }
    }
  }
  mma_and_store(args.D_bn);
}

struct Mma16Result {
  double bt, bn;  // worst err/tol of D through Bt and through Bn
};

// blocks x warps problems; `exact`: small integers (every sum exact in fp32).
template <bool BF16>
Mma16Result run_mma16(int width, Mutation mutation, unsigned blocks, unsigned warps, bool exact,
                      uint32_t seed) {
  const int P = static_cast<int>(blocks * warps);
  std::mt19937 rng(seed);
  std::vector<uint16_t> A(256 * P), Bt(256 * P), Bn(256 * P);
  std::vector<float> C(256 * P), D_bt(256 * P, NAN), D_bn(256 * P, NAN);
  auto draw = [&]() -> uint16_t {
    if (!exact) return BF16 ? random_bf16(rng) : random_f16(rng);
    const double v = static_cast<int>(rng() % 7) - 3;
    return BF16 ? bf16_of(v) : f16_of(v);
  };
  auto value = [](uint16_t bits) { return BF16 ? bf16_value(bits) : f16_value(bits); };
  std::vector<Reference> refs;
  for (int p = 0; p < P; ++p) {
    std::vector<double> a(256), b(256), c(256);
    for (int i = 0; i < 256; ++i) {
      A[256 * p + i] = draw();
      a[i] = value(A[256 * p + i]);
    }
    for (int k = 0; k < 16; ++k)
      for (int n = 0; n < 16; ++n) {
        const uint16_t bits = draw();
        Bt[256 * p + n * 16 + k] = bits;
        Bn[256 * p + k * 16 + n] = bits;
        b[k * 16 + n] = value(bits);
      }
    for (int i = 0; i < 256; ++i) {
      C[256 * p + i] = exact ? static_cast<float>(static_cast<int>(rng() % 21) - 10)
                             : std::uniform_real_distribution<float>(-4.f, 4.f)(rng);
      c[i] = C[256 * p + i];
    }
    refs.push_back(reference(16, 16, 16, a, b, c));
  }
  const Mma16Args args{A.data(), Bt.data(), Bn.data(), C.data(), D_bt.data(), D_bn.data(),
                       width, mutation};
  launch(dim3(blocks), dim3(32 * warps), 0, [&] { mma16_kernel<BF16>(args); });
  Mma16Result r{0, 0};
  for (int p = 0; p < P; ++p) {
    r.bt = std::max(r.bt, worst_ratio(&D_bt[256 * p], refs[p], 16));
    r.bn = std::max(r.bn, worst_ratio(&D_bn[256 * p], refs[p], 16));
    if (exact)  // then nothing may differ at all
      for (int i = 0; i < 256; ++i)
        if (D_bt[256 * p + i] != refs[p].value[i] || D_bn[256 * p + i] != refs[p].value[i])
          r.bt = r.bn = INFINITY;
  }
  return r;
}

// ---- m16n8k8 tf32 ------------------------------------------------------------------
// A [16 m][8 k], B [8 k][8 n] as Bt[n][k] (ldmatrix: an 8x8 b16 matrix is 8 rows
// of four 32-bit values) and Bn[k][n] (per-lane loads, ISA Figure 75), C, D [16][8].

struct Tf32Args {
  const float *A, *Bt, *Bn, *C;
  float *D_bt, *D_bn;
  bool rna;  // convert with cvt.rna.tf32.f32, or hand raw fp32 bits to the mma
};

void tf32_kernel(const Tf32Args args) {
  __shared__ __align__(16) float sA[kMaxWarps][128];
  __shared__ __align__(16) float sBt[kMaxWarps][64];
  __shared__ __align__(16) float sBn[kMaxWarps][64];
  const unsigned lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const unsigned g = lane / 4, t = lane % 4;
  const size_t problem = blockIdx.x * (blockDim.x / 32) + warp;
  // A: 32 chunks of four floats; Bt: lanes 0-15, Bn: lanes 16-31 (zero-fill form
  // with all 16 bytes real), one group, then wait_all.
  tc::cp_async_16(&sA[warp][4 * lane], args.A + 128 * problem + 4 * lane);
  if (lane < 16)
    tc::cp_async_16(&sBt[warp][4 * lane], args.Bt + 64 * problem + 4 * lane);
  else
    tc::cp_async_16(&sBn[warp][4 * (lane - 16)], args.Bn + 64 * problem + 4 * (lane - 16), 16);
  tc::cp_async_wait_all();
  __syncthreads();

  auto convert = [&](uint32_t x) { return args.rna ? tc::f32_to_tf32(float_of(x)) : x; };
  // A (ISA Figure 72): a0 (g, t), a1 (g+8, t), a2 (g, t+4), a3 (g+8, t+4): the
  // four 8x4 quarters, rows 0-7 / 8-15 and k 0-3 / 4-7.
  uint32_t a[4];
  tc::ldmatrix(a, &sA[warp][(lane % 16) * 8 + (lane / 16) * 4]);
  for (uint32_t& x : a) x = convert(x);
  float c[4], d[4];
  auto cd = [&](unsigned i) { return 128 * problem + (g + 8 * (i / 2)) * 8 + 2 * t + i % 2; };
  for (unsigned i = 0; i < 4; ++i) c[i] = args.C[cd(i)];  // ISA Figure 77
  auto store = [&](float* D) {
    for (unsigned i = 0; i < 4; ++i) D[cd(i)] = d[i];
  };

  // B (ISA Figure 75): b0 (k t, n g), b1 (k t+4, n g).
  uint32_t b[2];
  tc::ldmatrix(b, lane < 16 ? &sBt[warp][(lane % 8) * 8 + (lane / 8) * 4] : nullptr);
  for (uint32_t& x : b) x = convert(x);
  tc::mma_m16n8k8_tf32(d, a, b, c);
  store(args.D_bt);

  for (unsigned i = 0; i < 2; ++i) b[i] = convert(bits_of(sBn[warp][(t + 4 * i) * 8 + g]));
  tc::mma_m16n8k8_tf32(d, a, b, c);
  store(args.D_bn);
}

struct Tf32Result {
  double bt, bn, bt_vs_other;  // the last: against the reference of the other rounding
};

Tf32Result run_tf32(bool rna, unsigned blocks, unsigned warps, bool exact, uint32_t seed) {
  const int P = static_cast<int>(blocks * warps);
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(-2.f, 2.f);
  std::vector<float> A(128 * P), Bt(64 * P), Bn(64 * P), C(128 * P), D_bt(128 * P, NAN),
      D_bn(128 * P, NAN);
  std::vector<Reference> refs, others;
  for (int p = 0; p < P; ++p) {
    std::vector<double> a(128), b(64), c(128), a2(128), b2(64);
    auto value = [&] {
      return exact ? static_cast<float>(static_cast<int>(rng() % 7) - 3) : u(rng);
    };
    for (int i = 0; i < 128; ++i) {
      A[128 * p + i] = value();
      a[i] = tf32_round(A[128 * p + i], rna);
      a2[i] = tf32_round(A[128 * p + i], !rna);
    }
    for (int k = 0; k < 8; ++k)
      for (int n = 0; n < 8; ++n) {
        const float v = value();
        Bt[64 * p + n * 8 + k] = Bn[64 * p + k * 8 + n] = v;
        b[k * 8 + n] = tf32_round(v, rna);
        b2[k * 8 + n] = tf32_round(v, !rna);
      }
    for (int i = 0; i < 128; ++i) c[i] = C[128 * p + i] = value();
    refs.push_back(reference(16, 8, 8, a, b, c));
    others.push_back(reference(16, 8, 8, a2, b2, c));
  }
  const Tf32Args args{A.data(), Bt.data(), Bn.data(), C.data(), D_bt.data(), D_bn.data(), rna};
  launch(dim3(blocks), dim3(32 * warps), 0, [&] { tf32_kernel(args); });
  Tf32Result r{0, 0, 0};
  for (int p = 0; p < P; ++p) {
    r.bt = std::max(r.bt, worst_ratio(&D_bt[128 * p], refs[p], 8));
    r.bn = std::max(r.bn, worst_ratio(&D_bn[128 * p], refs[p], 8));
    r.bt_vs_other = std::max(r.bt_vs_other, worst_ratio(&D_bt[128 * p], others[p], 8));
    if (exact)
      for (int i = 0; i < 128; ++i)
        if (D_bt[128 * p + i] != refs[p].value[i] || D_bn[128 * p + i] != refs[p].value[i])
          r.bt = r.bn = INFINITY;
  }
  return r;
}

// ---- Per-lane fragments against the ISA figures ----------------------------------
// f16: A[m][k] = 16m + k; B[k][n] = 8k + n (16x8, row-major, via .trans);
// D = I * B (so D[m][n] = 8m + n). tf32: A[m][k] = 8m + k; B[k][n] = 8k + n
// (as Bt); D = A' * B with A'[m][k] = (k == m % 8) * (m < 8 ? 1 : 2).

struct Probe {
  uint32_t a16[32][4], b16[32][2], a32[32][4], b32[32][2];
  float d16[32][4], d32[32][4];
};

void probe_kernel(Probe* out) {
  __shared__ __align__(16) uint16_t A[256], I[256], Bn[128];
  __shared__ __align__(16) float A32[128], Ap[128], Bt32[64];
  const unsigned lane = threadIdx.x;
  for (unsigned i = lane; i < 256; i += 32) {
    A[i] = f16_of(i);  // 16m + k
    I[i] = i / 16 == i % 16 ? f16_of(1) : 0;
    if (i < 128) {
      Bn[i] = f16_of(i);  // 8k + n
      A32[i] = static_cast<float>(i);
      Ap[i] = i % 8 == (i / 8) % 8 ? (i < 64 ? 1.f : 2.f) : 0.f;
    }
    if (i < 64) Bt32[i] = static_cast<float>((i % 8) * 8 + i / 8);  // Bt[n][k] = B[k][n] = 8k + n
  }
  __syncthreads();
  const float zero[4] = {0, 0, 0, 0};
  tc::ldmatrix(out->a16[lane], &A[(lane % 16) * 16 + (lane / 16) * 8]);
  tc::ldmatrix_trans(out->b16[lane], &Bn[(lane % 16) * 8]);
  uint32_t id[4];
  tc::ldmatrix(id, &I[(lane % 16) * 16 + (lane / 16) * 8]);
  tc::mma_m16n8k16_f16(out->d16[lane], id, out->b16[lane], zero);

  tc::ldmatrix(out->a32[lane], &A32[(lane % 16) * 8 + (lane / 16) * 4]);
  // Matrix 0: rows n = lane (k 0-3), matrix 1: rows n = lane - 8 (k 4-7).
  tc::ldmatrix(out->b32[lane], &Bt32[(lane % 8) * 8 + (lane / 8 % 2) * 4]);
  uint32_t ap[4];
  tc::ldmatrix(ap, &Ap[(lane % 16) * 8 + (lane / 16) * 4]);
  tc::mma_m16n8k8_tf32(out->d32[lane], ap, out->b32[lane], zero);
}

void check_probe() {
  Probe p{};
  launch(dim3(1), dim3(32), 0, [&] { probe_kernel(&p); });
  auto halves = [](const uint32_t* r, int n) {
    std::vector<double> v;
    for (int i = 0; i < n; ++i) {
      v.push_back(f16_value(static_cast<uint16_t>(r[i] & 0xffff)));
      v.push_back(f16_value(static_cast<uint16_t>(r[i] >> 16)));
    }
    return v;
  };
  auto floats = [](const uint32_t* r, int n) {
    std::vector<double> v;
    for (int i = 0; i < n; ++i) v.push_back(float_of(r[i]));
    return v;
  };
  auto same = [](const std::vector<double>& got, const std::vector<double>& want) {
    return got == want;
  };
  auto d = [](const float* r) { return std::vector<double>(r, r + 4); };
  // Read off Figures 79, 81, 83 (f16) and 72, 75, 77 (tf32) for lane 5
  // (groupID 1, threadID_in_group 1) and lane 30 (groupID 7, threadID_in_group 2).
  bool ok = same(halves(p.a16[5], 4), {18, 19, 146, 147, 26, 27, 154, 155}) &&
            same(halves(p.a16[30], 4), {116, 117, 244, 245, 124, 125, 252, 253});
  report(ok, "f16 A fragment (ldmatrix.x4) of lanes 5, 30 = ISA Fig. 79");
  ok = same(halves(p.b16[5], 2), {17, 25, 81, 89}) &&
       same(halves(p.b16[30], 2), {39, 47, 103, 111});
  report(ok, "f16 B fragment (ldmatrix.x2.trans) of lanes 5, 30 = ISA Fig. 81");
  ok = same(d(p.d16[5]), {10, 11, 74, 75}) && same(d(p.d16[30]), {60, 61, 124, 125});
  report(ok, "f16 D fragment of lanes 5, 30 = ISA Fig. 83");
  ok = same(floats(p.a32[5], 4), {9, 73, 13, 77}) && same(floats(p.a32[30], 4), {58, 122, 62, 126});
  report(ok, "tf32 A fragment (ldmatrix.x4 of 32-bit rows) of lanes 5, 30 = Fig. 72");
  ok = same(floats(p.b32[5], 2), {9, 41}) && same(floats(p.b32[30], 2), {23, 55});
  report(ok, "tf32 B fragment (ldmatrix.x2 of 32-bit rows) of lanes 5, 30 = Fig. 75");
  ok = same(d(p.d32[5]), {10, 11, 20, 22}) && same(d(p.d32[30]), {60, 61, 120, 122});
  report(ok, "tf32 D fragment of lanes 5, 30 = ISA Fig. 77");
  // Every lane, against the formulas.
  ok = true;
  for (unsigned l = 0; l < 32; ++l) {
    const unsigned g = l / 4, t = l % 4;
    const std::vector<double> a = halves(p.a16[l], 4), b = halves(p.b16[l], 2);
    for (unsigned i = 0; i < 8; ++i) {
      const unsigned row = (i % 4 < 2 ? g : g + 8), col = 2 * t + i % 2 + (i < 4 ? 0 : 8);
      ok = ok && a[i] == 16.0 * row + col;
    }
    for (unsigned i = 0; i < 4; ++i) {
      ok = ok && b[i] == 8.0 * (2 * t + i % 2 + (i < 2 ? 0 : 8)) + g;
      ok = ok && p.d16[l][i] == 8.0 * (i < 2 ? g : g + 8) + 2 * t + i % 2;
      ok = ok && float_of(p.a32[l][i]) == 8.0 * (i % 2 ? g + 8 : g) + (i < 2 ? t : t + 4);
    }
    for (unsigned i = 0; i < 2; ++i) ok = ok && float_of(p.b32[l][i]) == 8.0 * (t + 4 * i) + g;
  }
  report(ok, "every lane's fragments = the ISA formulas");
}

// ---- cvt.rna.tf32.f32 -------------------------------------------------------------

void check_tf32_conversion() {
  struct Case {
    uint32_t in, want;
  };
  const Case cases[] = {
      {0x3f800000u, 0x3f800000u},  // 1
      {0x3f801000u, 0x3f802000u},  // 1 + 2^-11: a tie, away from zero (even would keep 1)
      {0xbf801000u, 0xbf802000u},  // its negative
      {0x3f800fffu, 0x3f800000u},  // just below the tie
      {0x3f803000u, 0x3f804000u},  // 1 + 3 * 2^-11: a tie
      {0x3f9fffffu, 0x3fa00000u},  // carries out of the mantissa
      {0x7f7fffffu, 0x7f800000u},  // largest float: rounds to infinity
      {0xff800000u, 0xff800000u},  // -inf
      {0x00001000u, 0x00002000u},  // subnormal tie
      {0x00000fffu, 0x00000000u},
      {0x80000000u, 0x80000000u},  // -0
  };
  bool ok = true;
  for (const Case& c : cases) ok = ok && tc::f32_to_tf32(float_of(c.in)) == c.want;
  const uint32_t nan = tc::f32_to_tf32(float_of(0x7fc00001u));
  ok = ok && (nan & 0x7f800000u) == 0x7f800000u && (nan & 0x007fe000u) != 0 && (nan & 0x1fffu) == 0;
  report(ok, "cvt.rna.tf32.f32: ties away, carry, overflow, inf, NaN, subnormals");
}

// ---- cp.async ----------------------------------------------------------------------

constexpr int kFlags = 5;

void cp_async_kernel(const unsigned char* src, int* flags) {
  __shared__ __align__(16) unsigned char s[64 * 16];
  const unsigned l = threadIdx.x;
  int* f = flags + kFlags * l;
  std::memset(&s[16 * l], 0xab, 16);
  std::memset(&s[16 * (32 + l)], 0xab, 16);
  __syncthreads();
  auto chunk_is = [&](unsigned chunk, const unsigned char* want, unsigned n) {
    for (unsigned i = 0; i < 16; ++i)
      if (s[16 * chunk + i] != (i < n ? want[i] : 0)) return false;
    return true;
  };
  tc::cp_async_16(&s[16 * l], src + 16 * l);  // group 1
  tc::cp_async_commit_group();
  const unsigned n = l % 17;  // 0..16 bytes: lanes 0 and 17 are predicated off
  tc::cp_async_16(&s[16 * (32 + l)], n ? src + 16 * (32 + l) : nullptr, n);  // group 2
  tc::cp_async_commit_group();
  tc::cp_async_commit_group();  // group 3, empty
  tc::cp_async_wait_group<2>();  // group 1 done; 2 and 3 may be in flight
  f[0] = chunk_is(l, src + 16 * l, 16);
  // The emulation performs a copy only when a wait requires it, so a read that
  // comes too early sees the old bytes (on a GPU it may see either).
  bool untouched = true;
  for (unsigned i = 0; i < 16; ++i) untouched = untouched && s[16 * (32 + l) + i] == 0xab;
  f[1] = untouched;
  tc::cp_async_wait_group<0>();
  f[2] = chunk_is(32 + l, src + 16 * (32 + l), n);
  tc::cp_async_16(&s[16 * l], src + 16 * ((l + 1) % 64));  // left uncommitted:
  tc::cp_async_wait_all();                                 // wait_all commits it
  f[3] = chunk_is(l, src + 16 * ((l + 1) % 64), 16);
  __syncthreads();  // other threads' copies, visible after their wait and a barrier
  const unsigned other = (l + 1) % 32;
  f[4] = chunk_is(other, src + 16 * ((other + 1) % 64), 16);
}

// Block 0 leaves a copy unwaited; block 1 (the same threads) must not see it land.
void cp_async_dropped_kernel(const unsigned char* src, int* flag) {
  __shared__ __align__(16) unsigned char s[16];
  if (threadIdx.x != 0) return;
  if (blockIdx.x == 0) {
    tc::cp_async_16(s, src);
    tc::cp_async_commit_group();
  } else {
    std::memset(s, 0xcd, 16);
    tc::cp_async_wait_all();
    *flag = s[0] == 0xcd && s[15] == 0xcd;
  }
}

void check_cp_async() {
  std::vector<unsigned char> src(64 * 16);
  for (size_t i = 0; i < src.size(); ++i) src[i] = static_cast<unsigned char>(i * 7 + 1);
  std::vector<int> flags(32 * kFlags, -1);
  launch(dim3(1), dim3(32), 0, [&] { cp_async_kernel(src.data(), flags.data()); });
  const char* names[kFlags] = {
      "cp.async: wait_group 2 completes the oldest of 3 groups",
      "cp.async: a group still pending is not visible yet (emulation)",
      "cp.async: zero fill, src-size 0..16 (0 = predicated off)",
      "cp.async: wait_all commits and completes uncommitted copies",
      "cp.async: other threads' copies visible after __syncthreads",
  };
  for (int k = 0; k < kFlags; ++k) {
    bool ok = true;
    for (int l = 0; l < 32; ++l) ok = ok && flags[kFlags * l + k] == 1;
    report(ok, names[k]);
  }
  int flag = -1;
  launch(dim3(2), dim3(32), 0, [&] { cp_async_dropped_kernel(src.data(), &flag); });
  report(flag == 1, "cp.async: copies never waited for end with their block");
}

// ---- Errors: divergent warps and bad operands must be reported --------------------

enum class Fault {
  SkipMma,            // lane 7 skips the mma
  ShortLoop,          // lane 9 runs one mma of a loop of two
  LdmatrixVsMma,      // lane 3 executes an ldmatrix while the others execute an mma
  SyncVsLdmatrix,     // lanes 0-15 go to __syncthreads while 16-31 do an ldmatrix
  SkipShuffle,        // lane 0 skips a __shfl_xor_sync (the shuffles share the checks)
  PartialWarp,        // mma in a warp of 16 threads
  MisalignedRow,      // ldmatrix row address not 16-byte aligned
  MisalignedCpAsync,  // cp.async destination not 16-byte aligned
  SrcSizeTooBig,      // cp.async src-size 17
};

void fault_kernel(Fault fault, float* out) {
  __shared__ __align__(16) uint16_t tile[16 * 16 + 8];
  const unsigned lane = threadIdx.x % 32;
  for (unsigned i = threadIdx.x; i < 16 * 16 + 8; i += blockDim.x) tile[i] = f16_of(1);
  __syncthreads();
  uint32_t a[4] = {0x3c003c00u, 0x3c003c00u, 0x3c003c00u, 0x3c003c00u}, b[2] = {0x3c003c00u, 0};
  float c[4] = {0, 0, 0, 0}, d[4] = {0, 0, 0, 0};
  const uint16_t* row = &tile[(lane % 16) * 16 + (lane / 16) * 8];
  switch (fault) {
    case Fault::SkipMma:
      tc::ldmatrix(a, row);
      if (lane != 7) tc::mma_m16n8k16_f16(d, a, b, c);
      break;
    case Fault::ShortLoop:
      for (int i = 0; i < (lane == 9 ? 1 : 2); ++i) tc::mma_m16n8k16_f16(d, a, b, d);
      break;
    case Fault::LdmatrixVsMma:
      if (lane == 3)
        tc::ldmatrix(a, row);
      else
        tc::mma_m16n8k16_f16(d, a, b, c);
      break;
    case Fault::SyncVsLdmatrix:
      if (lane < 16) __syncthreads();
      tc::ldmatrix(a, row);
      break;
    case Fault::SkipShuffle:
      d[0] = static_cast<float>(lane);
      if (lane != 0) d[0] = __shfl_xor_sync(0xffffffffu, d[0], 1);
      break;
    case Fault::PartialWarp:
      tc::mma_m16n8k16_bf16(d, a, b, c);
      break;
    case Fault::MisalignedRow:
      tc::ldmatrix(a, row + (lane == 5 ? 1 : 0));
      break;
    case Fault::MisalignedCpAsync:
      tc::cp_async_16(&tile[8 + (lane == 2 ? 1 : 0)], out);
      break;
    case Fault::SrcSizeTooBig:
      tc::cp_async_16(&tile[8], out, 17);
      break;
  }
  out[threadIdx.x] = d[0] + static_cast<float>(a[0] & 1);
}

void expect_error(Fault fault, unsigned threads, const std::string& name, const char* must_say) {
  std::vector<float> out(64 * 4, 0.f);  // 16-byte aligned enough for cp.async's source
  std::string what = "(no error)";
  bool raised = false;
  const auto t0 = std::chrono::steady_clock::now();
  try {
    launch(dim3(1), dim3(threads), 0, [&] { fault_kernel(fault, out.data()); });
  } catch (const cnnkern::emu_runtime::LaunchAborted& e) {
    what = std::string("the wrong error: ") + e.what();
  } catch (const std::runtime_error& e) {
    what = e.what();
    raised = what.find(must_say) != std::string::npos;
  }
  char ms[32];
  std::snprintf(ms, sizeof ms, "(%.0f ms)", ms_since(t0));
  report(raised, name, std::string(ms) + (raised ? "" : " got: " + what));
  if (raised) std::printf("      -> %s\n", what.c_str());
}

// ---- The mutations: a kernel with a wrong fragment index must fail ----------------

void check_mutation(Mutation m) {
  const Mma16Result r = run_mma16<false>(4, m, 1, 1, false, 99);
  // The comparison of whichever result the mistake touches must fail clearly.
  const double worst = m == Mutation::NoTrans ? r.bn : std::min(r.bt, r.bn);
  report(worst > 100, std::string("wrong result detected: ") + mutation_name(m), ratio_text(worst));
}

}  // namespace

int main() {
  const auto t0 = std::chrono::steady_clock::now();
  std::printf("-- per-lane fragments, tf32 conversion\n");
  check_probe();
  check_tf32_conversion();

  std::printf("-- mma.m16n8k16 f16 / bf16, 2 blocks x 2 warps, D = C + A B vs double\n");
  uint32_t seed = 1;
  for (const bool bf16 : {false, true})
    for (const int width : {4, 2, 1}) {
      const Mma16Result r = bf16 ? run_mma16<true>(width, Mutation::None, 2, 2, false, seed++)
                                 : run_mma16<false>(width, Mutation::None, 2, 2, false, seed++);
      const std::string what = std::string(bf16 ? "bf16" : "f16") + ", ldmatrix.x" +
                               std::to_string(width);
      report(r.bt <= 1, what + ", B k-major (plain)", ratio_text(r.bt));
      report(r.bn <= 1, what + ", B n-major (.trans)", ratio_text(r.bn));
    }
  for (const bool bf16 : {false, true}) {
    const Mma16Result r = bf16 ? run_mma16<true>(4, Mutation::None, 1, 3, true, seed++)
                               : run_mma16<false>(4, Mutation::None, 1, 3, true, seed++);
    report(r.bt == 0 && r.bn == 0,
           std::string(bf16 ? "bf16" : "f16") + ", small integers: exact, 3 warps");
  }

  std::printf("-- mma.m16n8k8 tf32, 2 blocks x 2 warps\n");
  for (const bool rna : {true, false}) {
    const Tf32Result r = run_tf32(rna, 2, 2, false, seed++);
    const std::string what = rna ? "tf32, cvt.rna operands" : "tf32, raw fp32 operands (truncated)";
    report(r.bt <= 1, what + ", B via ldmatrix", ratio_text(r.bt));
    report(r.bn <= 1, what + ", B via per-lane loads", ratio_text(r.bn));
    report(r.bt_vs_other > 1, what + ": the other rounding does not match",
           ratio_text(r.bt_vs_other));
  }
  {
    const Tf32Result r = run_tf32(true, 1, 1, true, seed++);
    report(r.bt == 0 && r.bn == 0, "tf32, small integers: exact");
  }

  std::printf("-- cp.async\n");
  check_cp_async();

  std::printf("-- deliberately wrong fragments must give a wrong result\n");
  for (const Mutation m : {Mutation::SwapA12, Mutation::SwapB01, Mutation::SwapD12,
                           Mutation::LdsmRows, Mutation::NoTrans})
    check_mutation(m);

  std::printf("-- divergent warps and bad operands must raise an error\n");
  expect_error(Fault::SkipMma, 32, "lane 7 skips an mma", "mma.sync.aligned.m16n8k16");
  expect_error(Fault::ShortLoop, 64, "lane 9 skips the 2nd mma of a loop (2 warps)",
               "the end of the kernel");
  expect_error(Fault::LdmatrixVsMma, 32, "lane 3 runs ldmatrix while the others run mma",
               "diverged");
  expect_error(Fault::SyncVsLdmatrix, 32, "lanes 0-15 at __syncthreads, 16-31 at ldmatrix",
               "__syncthreads()");
  expect_error(Fault::SkipShuffle, 32, "lane 0 skips a __shfl_xor_sync", "__shfl_xor_sync");
  expect_error(Fault::PartialWarp, 48, "mma in a partial warp (block of 48 threads)",
               "needs all 32 lanes");
  expect_error(Fault::MisalignedRow, 32, "ldmatrix row address not 16-byte aligned",
               "not 16-byte aligned");
  expect_error(Fault::MisalignedCpAsync, 32, "cp.async destination not 16-byte aligned",
               "not 16-byte aligned");
  expect_error(Fault::SrcSizeTooBig, 32, "cp.async src-size 17", "src-size 17");
  {
    const Mma16Result r = run_mma16<false>(4, Mutation::None, 1, 2, false, seed++);
    report(r.bt <= 1 && r.bn <= 1, "the emulator still works after failed launches",
           ratio_text(std::max(r.bt, r.bn)));
  }

  std::printf("%s: %d of %d case(s) failed, %.1f s\n", g_failures ? "FAILED" : "ALL PASSED",
              g_failures, g_cases, ms_since(t0) / 1000.0);
  return g_failures ? 1 : 0;
}
