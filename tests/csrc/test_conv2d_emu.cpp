// Standalone check of the Conv2d CUDA kernels through their host emulation
// (csrc/emu/conv2d.cu.cpp): every launcher against a naive double-precision
// reference, for float, double, Half and BFloat16, over shapes that stress the
// index math (odd sizes, groups, depthwise, dilation, stride > kernel, padding,
// batch 1, C = 1 and 3) and the stride handling (contiguous, channels_last,
// a non-contiguous view, mixed layouts). Build and run: tests/csrc/run.sh
//
// Inputs are filled through their strides and the gaps of non-contiguous
// buffers hold NaN, so a kernel reading outside the view poisons its result;
// outputs start as NaN, so an element a kernel forgets to write fails, and the
// gaps of output buffers must still be NaN afterwards.
#include "cnnkern/cuda_emu.h"  // also the emulated built-ins for the self-test
#define CNNKERN_GPU_NS emu
#include <array>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "cnnkern/conv2d_launch.h"
#include "cnnkern/launch.h"

using cnnkern::acc_t;
using cnnkern::Conv2dShape;
namespace kern = cnnkern::emu;

namespace {

// ---- Strided 4-d buffers -------------------------------------------------------

enum class Layout { Contiguous, ChannelsLast, Strided, KInner };

const char* layout_name(Layout l) {
  switch (l) {
    case Layout::Contiguous: return "nchw";
    case Layout::ChannelsLast: return "nhwc";
    case Layout::Strided: return "strided";
    case Layout::KInner: return "crsk";
  }
  return "?";
}

using Dims = std::array<int64_t, 4>;

Dims make_strides(Layout layout, const Dims& d) {
  switch (layout) {
    case Layout::Contiguous: return {d[1] * d[2] * d[3], d[2] * d[3], d[3], 1};
    case Layout::ChannelsLast: return {d[1] * d[2] * d[3], 1, d[3] * d[1], d[1]};
    case Layout::Strided: {
      // Every dimension padded, like x[:, :, :, ::2] of a larger tensor.
      const int64_t sw = 2, sh = d[3] * sw + 3, sc = d[2] * sh + 1, sn = d[1] * sc + 5;
      return {sn, sc, sh, sw};
    }
    // dim 0 innermost: a weight packed (c, r, s, k), as the op layer hands the
    // 16-bit input gradient its weight
    case Layout::KInner: return {1, d[2] * d[3] * d[0], d[3] * d[0], d[0]};
  }
  return {};
}

template <typename T>
struct Buffer {
  Dims dims{}, strides{};
  std::vector<T> data;

  Buffer(const Dims& d, Layout layout) : dims(d), strides(make_strides(layout, d)) {
    int64_t span = 1;
    for (int i = 0; i < 4; ++i) {
      if (d[i] == 0) span = 0;
    }
    if (span) {
      for (int i = 0; i < 4; ++i) span += (d[i] - 1) * strides[i];
    }
    data.assign(static_cast<size_t>(span), T(std::numeric_limits<float>::quiet_NaN()));
  }
  int64_t offset(int64_t a, int64_t b, int64_t c, int64_t e) const {
    return a * strides[0] + b * strides[1] + c * strides[2] + e * strides[3];
  }
  double get(int64_t a, int64_t b, int64_t c, int64_t e) const {
    return static_cast<double>(static_cast<float>(data[offset(a, b, c, e)]));
  }
  template <typename F>
  void for_each(F f) const {
    for (int64_t a = 0; a < dims[0]; ++a)
      for (int64_t b = 0; b < dims[1]; ++b)
        for (int64_t c = 0; c < dims[2]; ++c)
          for (int64_t e = 0; e < dims[3]; ++e) f(a, b, c, e);
  }
  void randomize(std::mt19937& rng) {
    std::uniform_real_distribution<float> u(-1.f, 1.f);
    for_each([&](int64_t a, int64_t b, int64_t c, int64_t e) { data[offset(a, b, c, e)] = T(u(rng)); });
  }
  // True when every element outside the view is still the NaN it started as.
  bool gaps_untouched() const {
    std::vector<char> inside(data.size(), 0);
    for_each([&](int64_t a, int64_t b, int64_t c, int64_t e) { inside[offset(a, b, c, e)] = 1; });
    for (size_t i = 0; i < data.size(); ++i)
      if (!inside[i] && !std::isnan(static_cast<float>(data[i]))) return false;
    return true;
  }
};

template <>
double Buffer<double>::get(int64_t a, int64_t b, int64_t c, int64_t e) const {
  return data[offset(a, b, c, e)];
}

// ---- Reference: the definition, in double ------------------------------------

// value and sum of |terms| per element, for the error bound
struct Ref {
  std::vector<double> value, magnitude;
  explicit Ref(size_t n) : value(n, 0.0), magnitude(n, 0.0) {}
  void add(size_t i, double term) {
    value[i] += term;
    magnitude[i] += std::fabs(term);
  }
};

// Calls f(n, k, p, q, c, r, s, h, w) for every (output, tap) pair that reads
// an in-bounds input pixel. c is the absolute input channel.
template <typename F>
void for_each_tap(const Conv2dShape& s, F f) {
  const int64_t cpg = s.C / s.groups, kpg = s.K / s.groups;
  for (int64_t n = 0; n < s.N; ++n)
    for (int64_t k = 0; k < s.K; ++k)
      for (int64_t p = 0; p < s.P; ++p)
        for (int64_t q = 0; q < s.Q; ++q)
          for (int64_t cl = 0; cl < cpg; ++cl)
            for (int64_t r = 0; r < s.R; ++r)
              for (int64_t t = 0; t < s.S; ++t) {
                const int64_t h = p * s.stride_h - s.pad_h + r * s.dil_h;
                const int64_t w = q * s.stride_w - s.pad_w + t * s.dil_w;
                if (h < 0 || h >= s.H || w < 0 || w >= s.W) continue;
                f(n, k, p, q, (k / kpg) * cpg + cl, cl, r, t, h, w);
              }
}

// ---- One case ------------------------------------------------------------------

struct Case {
  std::string name;
  int64_t N, C, H, W, K, R, S;
  int64_t stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, groups;
  Layout x_layout, w_layout, y_layout;
  bool bias;
};

struct Tolerance {
  double out, acc;  // output rounding (relative to |ref|), accumulation (relative to sum |terms|)
};

template <typename T>
Tolerance tolerance();
template <> Tolerance tolerance<float>() { return {1e-6, 1e-5}; }
template <> Tolerance tolerance<double>() { return {1e-14, 1e-12}; }
template <> Tolerance tolerance<c10::Half>() { return {1e-3, 1e-5}; }
template <> Tolerance tolerance<c10::BFloat16>() { return {8e-3, 1e-5}; }

template <typename T> const char* type_name();
template <> const char* type_name<float>() { return "float"; }
// fp32 on TF32 tensor cores: each operand rounded to 11 significant bits, so a
// product is within 2^-10 of exact, relative to its own magnitude.
constexpr Tolerance kTf32Tolerance{1e-6, 1.2e-3};
template <> const char* type_name<double>() { return "double"; }
template <> const char* type_name<c10::Half>() { return "half"; }
template <> const char* type_name<c10::BFloat16>() { return "bfloat16"; }

int g_failures = 0;

// Compares a strided result against the reference (flattened in its dims'
// row-major order) and prints one PASS/FAIL line.
template <typename T>
void report(const char* pass, const Case& c, const Buffer<T>& out, const Ref& ref, double ms,
            const Tolerance tol = tolerance<T>()) {
  double worst = 0.0;  // largest error / bound
  size_t i = 0, bad = 0;
  out.for_each([&](int64_t a, int64_t b, int64_t cc, int64_t e) {
    const double got = out.get(a, b, cc, e);
    const double bound = tol.out * std::fabs(ref.value[i]) + tol.acc * ref.magnitude[i] + 1e-30;
    const double ratio = std::fabs(got - ref.value[i]) / bound;
    if (!(ratio <= 1.0)) {  // NaN fails too
      if (bad++ < 3)
        std::printf("    [%lld,%lld,%lld,%lld] got %.9g want %.9g\n", (long long)a, (long long)b,
                    (long long)cc, (long long)e, got, ref.value[i]);
    }
    if (ratio > worst || std::isnan(ratio)) worst = ratio;
    ++i;
  });
  const bool gaps_ok = out.gaps_untouched();
  const bool ok = bad == 0 && gaps_ok;
  if (!ok) ++g_failures;
  std::printf("%s  %-16s %-9s %-44s err/tol %.3f%s  (%.0f ms)\n", ok ? "PASS" : "FAIL", pass,
              type_name<T>(), c.name.c_str(), worst, gaps_ok ? "" : "  WROTE OUTSIDE THE VIEW", ms);
}

double ms_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}

// tf32 (float only): the forward and both gradients through TF32 tensor cores,
// instead of on CUDA cores (the bias gradient has no GEMM: run without).
template <typename T>
void run_case(const Case& c, uint32_t seed, bool tf32 = false) {
  const Tolerance tol = tf32 ? kTf32Tolerance : tolerance<T>();
  Conv2dShape s{};
  s.N = c.N; s.C = c.C; s.H = c.H; s.W = c.W; s.K = c.K; s.R = c.R; s.S = c.S;
  s.stride_h = c.stride_h; s.stride_w = c.stride_w; s.pad_h = c.pad_h; s.pad_w = c.pad_w;
  s.dil_h = c.dil_h; s.dil_w = c.dil_w; s.groups = c.groups;
  s.P = (c.H + 2 * c.pad_h - c.dil_h * (c.R - 1) - 1) / c.stride_h + 1;
  s.Q = (c.W + 2 * c.pad_w - c.dil_w * (c.S - 1) - 1) / c.stride_w + 1;
  const int64_t cpg = c.C / c.groups;
  const Dims xd{c.N, c.C, c.H, c.W}, wd{c.K, cpg, c.R, c.S}, yd{c.N, c.K, s.P, s.Q};

  std::mt19937 rng(seed);
  Buffer<T> x(xd, c.x_layout), w(wd, c.w_layout), dy(yd, c.y_layout);
  x.randomize(rng);
  w.randomize(rng);
  dy.randomize(rng);
  std::vector<T> bias(static_cast<size_t>(c.K));
  for (auto& b : bias) b = T(std::uniform_real_distribution<float>(-1.f, 1.f)(rng));
  for (int i = 0; i < 4; ++i) {
    s.x_stride[i] = x.strides[i];
    s.w_stride[i] = w.strides[i];
    s.y_stride[i] = dy.strides[i];
  }
  auto flat_x = [&](int64_t n, int64_t ch, int64_t h, int64_t ww) { return ((n * c.C + ch) * c.H + h) * c.W + ww; };
  auto flat_w = [&](int64_t k, int64_t cl, int64_t r, int64_t t) { return ((k * cpg + cl) * c.R + r) * c.S + t; };
  auto flat_y = [&](int64_t n, int64_t k, int64_t p, int64_t q) { return ((n * c.K + k) * s.P + p) * s.Q + q; };

  // forward
  {
    Ref ref(static_cast<size_t>(c.N * c.K * s.P * s.Q));
    if (c.bias)
      for (int64_t n = 0; n < c.N; ++n)
        for (int64_t k = 0; k < c.K; ++k)
          for (int64_t pq = 0; pq < s.P * s.Q; ++pq)
            ref.add(flat_y(n, k, 0, pq), static_cast<float>(bias[k]));
    for_each_tap(s, [&](int64_t n, int64_t k, int64_t p, int64_t q, int64_t ch, int64_t cl,
                        int64_t r, int64_t t, int64_t h, int64_t ww) {
      ref.add(flat_y(n, k, p, q), x.get(n, ch, h, ww) * w.get(k, cl, r, t));
    });
    Buffer<T> y(yd, c.y_layout);
    const auto t0 = std::chrono::steady_clock::now();
    kern::conv2d_forward<T>(s, x.data.data(), w.data.data(), c.bias ? bias.data() : nullptr,
                            y.data.data(), nullptr, tf32);
    const bool vec = kern::conv2d_forward_vector_copies(s, x.data.data(), w.data.data(), sizeof(T));
    const bool mma = sizeof(T) == 2 || tf32;
    report(!mma ? "forward" : vec ? "forward (mma)" : "forward (mma, g)", c, y, ref, ms_since(t0), tol);
  }
  // backward input
  {
    Ref ref(static_cast<size_t>(c.N * c.C * c.H * c.W));
    for_each_tap(s, [&](int64_t n, int64_t k, int64_t p, int64_t q, int64_t ch, int64_t cl,
                        int64_t r, int64_t t, int64_t h, int64_t ww) {
      ref.add(flat_x(n, ch, h, ww), dy.get(n, k, p, q) * w.get(k, cl, r, t));
    });
    Buffer<T> dx(xd, c.x_layout);
    const auto t0 = std::chrono::steady_clock::now();
    kern::conv2d_backward_input<T>(s, dy.data.data(), w.data.data(), dx.data.data(), nullptr, tf32);
    report(sizeof(T) == 2 || tf32 ? "bwd_input (mma)" : "backward_input", c, dx, ref, ms_since(t0), tol);
  }
  // backward weight
  {
    Ref ref(static_cast<size_t>(c.K * cpg * c.R * c.S));
    for_each_tap(s, [&](int64_t n, int64_t k, int64_t p, int64_t q, int64_t ch, int64_t cl,
                        int64_t r, int64_t t, int64_t h, int64_t ww) {
      ref.add(flat_w(k, cl, r, t), dy.get(n, k, p, q) * x.get(n, ch, h, ww));
    });
    // split-K (atomics into the workspace), and one split per tile (the deterministic mode)
    for (const bool deterministic : {false, true}) {
      Buffer<T> dw(wd, c.w_layout);
      std::vector<acc_t<T>> workspace(
          static_cast<size_t>(kern::conv2d_backward_weight_workspace<T>(s, deterministic, tf32)), acc_t<T>(0));
      const auto t0 = std::chrono::steady_clock::now();
      kern::conv2d_backward_weight<T>(s, dy.data.data(), x.data.data(), dw.data.data(),
                                      workspace.data(), deterministic, nullptr, tf32);
      const bool vec = kern::conv2d_backward_weight_vector_copies(s, dy.data.data(), x.data.data(), sizeof(T));
      const char* tc = deterministic ? (vec ? "bwd_w_det (mma)" : "bwd_w_det (mma, g)")
                                     : (vec ? "bwd_weight (mma)" : "bwd_weight (mma, g)");
      report(sizeof(T) == 2 || tf32 ? tc : deterministic ? "bwd_weight_det" : "backward_weight", c, dw, ref,
             ms_since(t0), tol);
    }
  }
  if (tf32) return;
  // backward bias (db is a contiguous vector: view it as [K][1][1][1])
  {
    Ref ref(static_cast<size_t>(c.K));
    dy.for_each([&](int64_t n, int64_t k, int64_t p, int64_t q) {
      (void)n; (void)p; (void)q;
      ref.add(static_cast<size_t>(k), dy.get(n, k, p, q));
    });
    Buffer<T> db(Dims{c.K, 1, 1, 1}, Layout::Contiguous);
    const auto t0 = std::chrono::steady_clock::now();
    kern::conv2d_backward_bias<T>(s, dy.data.data(), db.data.data(), nullptr);
    report("backward_bias", c, db, ref, ms_since(t0));
  }
}

// ---- Emulator self-test: the warp shuffles the kernels may use -----------------

void butterfly_kernel(int* out) {
  const int lane = static_cast<int>(threadIdx.x) % 32, warp = static_cast<int>(threadIdx.x) / 32;
  int v = lane + 100 * warp;
  int down = v;
  for (int off = 16; off > 0; off /= 2) down += __shfl_down_sync(0xffffffffu, down, off);
  for (int mask = 16; mask > 0; mask /= 2) v += __shfl_xor_sync(0xffffffffu, v, mask);
  out[2 * threadIdx.x] = v;  // every lane holds the warp sum
  out[2 * threadIdx.x + 1] = lane == 0 ? down : v;
}

void emu_self_test() {
  std::vector<int> out(2 * 64, -1);
  cnnkern::launch_kernel(butterfly_kernel, dim3(1), dim3(64), 0, nullptr, out.data());
  bool ok = true;
  for (int t = 0; t < 64; ++t) {
    const int want = 496 + 3200 * (t / 32);  // sum of lanes + 100 * warp * 32
    ok = ok && out[2 * t] == want && out[2 * t + 1] == want;
  }
  if (!ok) ++g_failures;
  std::printf("%s  emu shuffles (__shfl_down_sync, __shfl_xor_sync)\n", ok ? "PASS" : "FAIL");
}

}  // namespace

int main() {
  using L = Layout;
  // name, N C H W K R S, stride h w, pad h w, dil h w, groups, layouts x w y, bias
  const std::vector<Case> cases = {
      {"basic 2x3x9x9 k4 3x3 pad1", 2, 3, 9, 9, 4, 3, 3, 1, 1, 1, 1, 1, 1, 1, L::Contiguous, L::Contiguous, L::Contiguous, true},
      {"C=1 batch1 7x11 k5 2x3 s(2,1) p(0,1) d(1,2)", 1, 1, 7, 11, 5, 2, 3, 2, 1, 0, 1, 1, 2, 1, L::Contiguous, L::Contiguous, L::Contiguous, true},
      {"groups=2 6->4 8x7 3x1 p(1,0)", 2, 6, 8, 7, 4, 3, 1, 1, 1, 1, 0, 1, 1, 2, L::ChannelsLast, L::ChannelsLast, L::ChannelsLast, false},
      {"depthwise C=K=5 10x9 3x3 s2 p1", 2, 5, 10, 9, 5, 3, 3, 2, 2, 1, 1, 1, 1, 5, L::Contiguous, L::Contiguous, L::Contiguous, true},
      {"depthwise x2 C4 K8 6x6 3x3 p1 strided", 1, 4, 6, 6, 8, 3, 3, 1, 1, 1, 1, 1, 1, 4, L::Strided, L::Strided, L::Strided, true},
      {"stride>kernel 13x12 k6 2x2 s(3,4)", 2, 3, 13, 12, 6, 2, 2, 3, 4, 0, 0, 1, 1, 1, L::ChannelsLast, L::Contiguous, L::ChannelsLast, true},
      {"dilation 12x10 k7 3x2 d(2,3) p(2,1)", 1, 3, 12, 10, 7, 3, 2, 1, 1, 2, 1, 2, 3, 1, L::Strided, L::Contiguous, L::ChannelsLast, false},
      {"1x1 s2 p1 C8 K3 6x5", 2, 8, 6, 5, 3, 1, 1, 2, 2, 1, 1, 1, 1, 1, L::Contiguous, L::ChannelsLast, L::Strided, true},
      {"kernel>input 3x4 k2 5x5 p2", 3, 2, 3, 4, 2, 5, 5, 1, 1, 2, 2, 1, 1, 1, L::Contiguous, L::Contiguous, L::Contiguous, true},
      {"groups=3 C9 K6 s2 d2 p2 7x8", 2, 9, 7, 8, 6, 3, 3, 2, 2, 2, 2, 2, 2, 3, L::Strided, L::ChannelsLast, L::Contiguous, true},
      {"multi-tile 3x20x17x15 k70 3x3 p1", 3, 20, 17, 15, 70, 3, 3, 1, 1, 1, 1, 1, 1, 1, L::ChannelsLast, L::ChannelsLast, L::ChannelsLast, true},
      // Half/BFloat16 forward on tensor cores (channels-contiguous x and w, C/groups % 8 == 0):
      // a ragged N tile; a channel chunk past C (40 = 32 + 8) and two M and N tiles into an NCHW y;
      // groups with 16 channels each; dilation and stride into padding.
      {"tensor cores C32 K20 9x11 3x3 s2 p1", 2, 32, 9, 11, 20, 3, 3, 2, 2, 1, 1, 1, 1, 1, L::ChannelsLast, L::ChannelsLast, L::ChannelsLast, true},
      {"tensor cores C40 K70 9x8 3x3 p1 y nchw", 3, 40, 9, 8, 70, 3, 3, 1, 1, 1, 1, 1, 1, 1, L::ChannelsLast, L::ChannelsLast, L::Contiguous, true},
      {"tensor cores groups=2 C32 K24 6x7 3x3 p1", 2, 32, 6, 7, 24, 3, 3, 1, 1, 1, 1, 1, 1, 2, L::ChannelsLast, L::ChannelsLast, L::ChannelsLast, false},
      {"tensor cores 1x1 C16 K136 5x6 (two 128-wide N tiles)", 2, 16, 5, 6, 136, 1, 1, 1, 1, 0, 0, 1, 1, 1, L::ChannelsLast, L::ChannelsLast, L::ChannelsLast, true},
      {"tensor cores 3x3 C72 K136 s2 p1 (wgrad: 2 k tiles)", 2, 72, 11, 9, 136, 3, 3, 2, 2, 1, 1, 1, 1, 1, L::ChannelsLast, L::ChannelsLast, L::ChannelsLast, true},
      {"tensor cores 3x3 C136 K24 s2 p1 (wgrad: 2 c tiles)", 1, 136, 7, 6, 24, 3, 3, 2, 2, 1, 1, 1, 1, 1, L::ChannelsLast, L::ChannelsLast, L::ChannelsLast, false},
      {"tensor cores 1x1 C16 K16 16x16 (wgrad: split-K)", 2, 16, 16, 16, 16, 1, 1, 1, 1, 0, 0, 1, 1, 1, L::ChannelsLast, L::ChannelsLast, L::ChannelsLast, true},
      {"tensor cores C8 K8 7x7 3x2 d(2,3) p2 s(1,2)", 1, 8, 7, 7, 8, 3, 2, 1, 2, 2, 2, 2, 3, 1, L::ChannelsLast, L::ChannelsLast, L::Strided, true},
      // Half/BFloat16 input gradients of strided convs (one stride-1 conv per phase) with the
      // (c, r, s, k) weight the op layer packs, so their copies are cp.async: a phase no tap
      // reaches (1x1 s2), 3x3 s2 p1 into an NCHW dx, stride 3 with dilation 2 (taps 3 apart)
      // and stride 2 with dilation 2 (every tap or none) in groups.
      {"tensor cores dgrad 1x1 s2 C16 K32 9x8", 2, 16, 9, 8, 32, 1, 1, 2, 2, 0, 0, 1, 1, 1, L::ChannelsLast, L::KInner, L::ChannelsLast, false},
      {"tensor cores dgrad 3x3 s2 p1 C24 K16 11x10", 2, 24, 11, 10, 16, 3, 3, 2, 2, 1, 1, 1, 1, 1, L::Contiguous, L::KInner, L::ChannelsLast, true},
      {"tensor cores dgrad 3x3 s(2,3) p(2,1) d2 g2 C16 K32", 1, 16, 13, 14, 32, 3, 3, 2, 3, 2, 1, 2, 2, 2, L::ChannelsLast, L::KInner, L::ChannelsLast, true},
      // channel counts a multiple of 4 but not of 8: 16-byte copies for fp32 (TF32), gathered
      // ones for 16-bit; the second with the packed (c, r, s, k) weight of the input gradient.
      {"tf32 vec C12 K20 9x10 3x3 s2 p1", 2, 12, 9, 10, 20, 3, 3, 2, 2, 1, 1, 1, 1, 1, L::ChannelsLast, L::ChannelsLast, L::ChannelsLast, true},
      {"tf32 dgrad C20 K12 8x9 3x3 s2 p1 g2", 1, 20, 8, 9, 12, 3, 3, 2, 2, 1, 1, 1, 1, 2, L::ChannelsLast, L::KInner, L::ChannelsLast, false},
  };

  const auto t0 = std::chrono::steady_clock::now();
  emu_self_test();
  uint32_t seed = 1;
  for (const Case& c : cases) {
    std::printf("-- %s  (x %s, w %s, y %s)\n", c.name.c_str(), layout_name(c.x_layout),
                layout_name(c.w_layout), layout_name(c.y_layout));
    run_case<float>(c, seed);
    run_case<float>(c, seed, /*tf32=*/true);
    run_case<double>(c, seed);
    run_case<c10::Half>(c, seed);
    run_case<c10::BFloat16>(c, seed);
    ++seed;
  }
  std::printf("%s: %d failure(s), %.1f s\n", g_failures ? "FAILED" : "ALL PASSED", g_failures,
              ms_since(t0) / 1000.0);
  return g_failures ? 1 : 0;
}
