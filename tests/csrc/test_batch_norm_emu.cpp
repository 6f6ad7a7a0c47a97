// Standalone check of the fused BatchNorm2d + ReLU CUDA kernels through their
// host emulation (csrc/emu/batch_norm.cu.cpp): every launcher against a naive
// double-precision reference (two-pass mean and variance, the backward
// formulas written out), for float, double, Half and BFloat16, in training and
// eval mode, with and without weight/bias. Shapes cover two values per channel
// (N=2, 1x1), batch 1, odd and prime sizes, C from 1 to 70, shapes that split
// the statistics over several row chunks and channel tiles, and inputs whose
// mean dwarfs their spread (1000 + N(0,1)), where a sum-of-squares variance
// would lose most of its digits in fp32. Layouts: NCHW, channels_last, strided
// views of both, mixed between x, y/dx and dy. Build and run:
// tests/csrc/run_batch_norm.sh
//
// Inputs are filled through their strides and the gaps of non-contiguous
// buffers hold NaN, so a kernel reading outside the view poisons its result;
// outputs and workspaces start as NaN (torch hands the launchers at::empty),
// so an element a kernel forgets to write fails, and the gaps of output
// buffers, and guard elements past every per-channel vector and workspace,
// must still be NaN afterwards. For float and the multi-chunk shapes, the
// reduction passes run twice and must give bitwise identical results (no
// atomics: a fixed merge order). With the argument --acc-types only float and
// double run (the two accumulator types; run_batch_norm.sh uses it for the
// many-short-chunks build).
#include "cnnkern/cuda_emu.h"
#define CNNKERN_GPU_NS emu
#include <array>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

#include "cnnkern/batch_norm_launch.h"

using cnnkern::acc_t;
using cnnkern::BnShape;
namespace kern = cnnkern::emu;

namespace {

constexpr double kEps = 1e-5;
constexpr int64_t kGuard = 8;  // NaN elements after every per-channel vector and workspace

// ---- Strided 4-d buffers -------------------------------------------------------

enum class Layout { Contiguous, ChannelsLast, Strided, ChannelsLastStrided };

const char* layout_name(Layout l) {
  switch (l) {
    case Layout::Contiguous: return "nchw";
    case Layout::ChannelsLast: return "nhwc";
    case Layout::Strided: return "strided";
    case Layout::ChannelsLastStrided: return "nhwc-view";
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
    case Layout::ChannelsLastStrided: {
      // x[:, :C, :, ::2] of a channels_last tensor with C + 3 channels.
      const int64_t cp = d[1] + 3, sw = 2 * cp, sh = d[3] * sw + cp, sn = d[2] * sh + 7;
      return {sn, 1, sh, sw};
    }
  }
  return {};
}

template <typename T>
double to_double(T v) {
  return static_cast<double>(static_cast<float>(v));
}
template <>
double to_double<double>(double v) {
  return v;
}

template <typename T>
struct Buffer {
  Dims dims{}, strides{};
  std::vector<T> data;

  Buffer(const Dims& d, Layout layout) : dims(d), strides(make_strides(layout, d)) {
    int64_t span = 1;
    for (int i = 0; i < 4; ++i) span += (d[i] - 1) * strides[i];
    data.assign(static_cast<size_t>(span), T(std::numeric_limits<float>::quiet_NaN()));
  }
  int64_t offset(int64_t a, int64_t b, int64_t c, int64_t e) const {
    return a * strides[0] + b * strides[1] + c * strides[2] + e * strides[3];
  }
  T& at(int64_t a, int64_t b, int64_t c, int64_t e) { return data[offset(a, b, c, e)]; }
  double get(int64_t a, int64_t b, int64_t c, int64_t e) const { return to_double(data[offset(a, b, c, e)]); }
  template <typename F>
  void for_each(F f) const {
    for (int64_t a = 0; a < dims[0]; ++a)
      for (int64_t b = 0; b < dims[1]; ++b)
        for (int64_t c = 0; c < dims[2]; ++c)
          for (int64_t e = 0; e < dims[3]; ++e) f(a, b, c, e);
  }
  // True when every element outside the view is still the NaN it started as.
  bool gaps_untouched() const {
    std::vector<char> inside(data.size(), 0);
    for_each([&](int64_t a, int64_t b, int64_t c, int64_t e) { inside[offset(a, b, c, e)] = 1; });
    for (size_t i = 0; i < data.size(); ++i)
      if (!inside[i] && !std::isnan(to_double(data[i]))) return false;
    return true;
  }
};

// A per-channel (or workspace) vector of n elements followed by kGuard NaNs.
template <typename A>
struct Guarded {
  std::vector<A> data;
  explicit Guarded(int64_t n) : data(static_cast<size_t>(n + kGuard), std::numeric_limits<A>::quiet_NaN()) {}
  A* ptr() { return data.data(); }
  size_t size() const { return data.size() - kGuard; }
  bool guard_untouched() const {
    for (size_t i = size(); i < data.size(); ++i)
      if (!std::isnan(data[i])) return false;
    return true;
  }
};

template <typename T>
bool same_bits(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0;
}

// ---- Cases and tolerances -------------------------------------------------------

struct Case {
  std::string name;
  int64_t N, C, H, W;
  Layout x_layout, y_layout, dy_layout;  // y_layout: y and dx
  bool affine;
  double offset;  // channel means are offset + U(-1, 1); spreads U(0.5, 2)
  bool many_chunks;  // the shape must split the statistics over several row chunks
};

struct Tolerance {
  double out;   // rounding of a T output, relative to |ref|
  double acc;   // accumulation, relative to the sum of |terms|
  double stat;  // mean and var, relative (see the statistics check)
  double tiny;  // absolute: the spacing of T's subnormals (Half's reach 6e-8)
};

template <typename T> Tolerance tolerance();
template <> Tolerance tolerance<float>() { return {1e-6, 1e-5, 1e-5, 1e-44}; }
template <> Tolerance tolerance<double>() { return {1e-14, 1e-12, 1e-12, 0.0}; }
template <> Tolerance tolerance<c10::Half>() { return {1e-3, 1e-5, 1e-5, 0x1p-24}; }
template <> Tolerance tolerance<c10::BFloat16>() { return {8e-3, 1e-5, 1e-5, 1e-39}; }

template <typename T> const char* type_name();
template <> const char* type_name<float>() { return "float"; }
template <> const char* type_name<double>() { return "double"; }
template <> const char* type_name<c10::Half>() { return "half"; }
template <> const char* type_name<c10::BFloat16>() { return "bfloat16"; }

int g_failures = 0;

// Worst |got - want| / bound over a pass, and whether anything else went wrong.
struct Check {
  double worst = 0.0;
  size_t bad = 0;
  bool other_ok = true;  // gaps, guards, determinism
  std::string why;

  void value(const char* what, int64_t i, double got, double want, double bound) {
    const double ratio = std::fabs(got - want) / (bound + 1e-300);
    if (!(ratio <= 1.0)) {  // NaN fails too
      if (bad++ < 3)
        std::printf("    %s[%lld] got %.12g want %.12g (bound %.3g)\n", what, (long long)i, got, want, bound);
    }
    if (ratio > worst || std::isnan(ratio)) worst = ratio;
  }
  void require(bool ok, const char* what) {
    if (!ok) {
      other_ok = false;
      why += std::string("  ") + what;
    }
  }
  bool ok() const { return bad == 0 && other_ok; }
};

double ms_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}

void report(const char* pass, const char* type, const Case& c, const Check& k, double ms) {
  if (!k.ok()) ++g_failures;
  std::printf("%s  %-16s %-9s %-34s err/tol %.3f%s  (%.0f ms)\n", k.ok() ? "PASS" : "FAIL", pass, type,
              c.name.c_str(), k.worst, k.why.c_str(), ms);
}

// ---- One case ------------------------------------------------------------------

template <typename T>
void run_case(const Case& c, uint32_t seed) {
  using A = acc_t<T>;
  const Tolerance tol = tolerance<T>();
  const Dims dims{c.N, c.C, c.H, c.W};
  const int64_t M = c.N * c.H * c.W;
  std::mt19937 rng(seed);
  std::uniform_real_distribution<double> u(-1.0, 1.0);
  std::normal_distribution<double> normal(0.0, 1.0);

  // x: channel c is offset + mu_c + sigma_c * N(0, 1)
  Buffer<T> x(dims, c.x_layout), dy(dims, c.dy_layout);
  std::vector<double> mu(c.C), sigma(c.C);
  for (int64_t ch = 0; ch < c.C; ++ch) {
    mu[ch] = c.offset + u(rng);
    sigma[ch] = 1.25 + 0.75 * u(rng);
  }
  x.for_each([&](int64_t n, int64_t ch, int64_t h, int64_t w) {
    x.at(n, ch, h, w) = T(mu[ch] + sigma[ch] * normal(rng));
  });
  dy.for_each([&](int64_t n, int64_t ch, int64_t h, int64_t w) { dy.at(n, ch, h, w) = T(u(rng)); });
  std::vector<A> weight(c.C), bias(c.C), run_mean(c.C), run_var(c.C);
  for (int64_t ch = 0; ch < c.C; ++ch) {
    weight[ch] = static_cast<A>(1.5 * u(rng));
    bias[ch] = static_cast<A>(0.5 * u(rng));
    run_mean[ch] = static_cast<A>(c.offset + u(rng));
    run_var[ch] = static_cast<A>(1.25 + 0.75 * u(rng));
  }
  const A* w_ptr = c.affine ? weight.data() : nullptr;
  const A* b_ptr = c.affine ? bias.data() : nullptr;
  auto w_of = [&](int64_t ch) { return c.affine ? static_cast<double>(weight[ch]) : 1.0; };
  auto b_of = [&](int64_t ch) { return c.affine ? static_cast<double>(bias[ch]) : 0.0; };

  BnShape s{c.N, c.C, c.H, c.W, {}, {}, {}};
  const Buffer<T> y_shape(dims, c.y_layout);
  for (int i = 0; i < 4; ++i) {
    s.x_stride[i] = x.strides[i];
    s.y_stride[i] = y_shape.strides[i];
    s.dy_stride[i] = dy.strides[i];
  }
  const int64_t ws_stats = kern::batch_norm_stats_workspace(s);
  const int64_t ws_bwd = kern::batch_norm_backward_workspace(s);

  // ---- statistics (training) ----
  Guarded<A> mean(c.C), var(c.C);
  {
    Check k;
    const auto t0 = std::chrono::steady_clock::now();
    Guarded<A> ws(ws_stats);
    kern::batch_norm_stats<T>(s, x.data.data(), mean.ptr(), var.ptr(), ws.ptr(), cnnkern::BnRunning{}, nullptr);
    const double ms = ms_since(t0);
    if (std::is_same_v<T, float> && c.many_chunks) {
      Guarded<A> mean2(c.C), var2(c.C), ws2(ws_stats);
      kern::batch_norm_stats<T>(s, x.data.data(), mean2.ptr(), var2.ptr(), ws2.ptr(), cnnkern::BnRunning{}, nullptr);
      k.require(same_bits(mean.data, mean2.data) && same_bits(var.data, var2.data), "NOT DETERMINISTIC");
    }
    k.require(mean.guard_untouched() && var.guard_untouched() && ws.guard_untouched(), "WROTE PAST A VECTOR");
    if (c.many_chunks) k.require(ws_stats / (2 * c.C) > 1, "EXPECTED SEVERAL CHUNKS");
    for (int64_t ch = 0; ch < c.C; ++ch) {
      double sum = 0.0, sum_abs = 0.0;
      x.for_each([&](int64_t n, int64_t cc, int64_t h, int64_t w) {
        if (cc != ch) return;
        sum += x.get(n, cc, h, w);
        sum_abs += std::fabs(x.get(n, cc, h, w));
      });
      const double m = sum / M;
      double m2 = 0.0;
      x.for_each([&](int64_t n, int64_t cc, int64_t h, int64_t w) {
        if (cc == ch) m2 += (x.get(n, cc, h, w) - m) * (x.get(n, cc, h, w) - m);
      });
      const double v = m2 / M;
      // mean: relative to the mean |x|. var: relative to var, plus one rounding
      // of the mean propagated into the deviations, u·|mean|·std, which no
      // algorithm avoids (it matters only where std is tiny next to the mean:
      // bfloat16's 1000 + N(0,1) rounds to steps of 4, var 0.15). For fp32's
      // 1000 + N(0,1) that bound is 7e-5·var; the merges stay near 3e-6·var,
      // where an fp32 E[x²] - E[x]² is off by more than 100%.
      const double u = std::is_same_v<A, double> ? 0x1p-53 : 0x1p-24;
      k.value("mean", ch, mean.data[ch], m, tol.stat * sum_abs / M);
      k.value("var", ch, var.data[ch], v, tol.stat * v + u * std::fabs(m) * std::sqrt(v));
    }
    char label[64];
    const long long chunks = ws_stats / (2 * c.C);
    std::snprintf(label, sizeof label, "stats %lld chunk%s", chunks, chunks == 1 ? "" : "s");
    report(label, type_name<T>(), c, k, ms);
  }

  // ---- the running-statistics update inside the statistics finalize ----
  // mean: momentum 0.25 into a double buffer at stride 2; var: cumulative
  // (1 / count, count 4) into a float buffer at stride 3. The gaps must stay.
  {
    Check k;
    const auto t0 = std::chrono::steady_clock::now();
    std::vector<double> rm(2 * c.C, std::numeric_limits<double>::quiet_NaN());
    std::vector<float> rv(3 * c.C, std::numeric_limits<float>::quiet_NaN());
    for (int64_t ch = 0; ch < c.C; ++ch) {
      rm[2 * ch] = static_cast<double>(run_mean[ch]);
      rv[3 * ch] = static_cast<float>(run_var[ch]);
    }
    const int64_t count = 4;
    cnnkern::BnRunning r;
    r.mean = rm.data();
    r.mean_type = cnnkern::BnFloat::Double;
    r.mean_stride = 2;
    r.momentum = 0.25;
    Guarded<A> mean2(c.C), var2(c.C), ws(ws_stats);
    kern::batch_norm_stats<T>(s, x.data.data(), mean2.ptr(), var2.ptr(), ws.ptr(), r, nullptr);
    r = cnnkern::BnRunning{};
    r.var = rv.data();
    r.var_type = cnnkern::BnFloat::Float;
    r.var_stride = 3;
    r.cumulative = true;
    r.count = &count;
    kern::batch_norm_stats<T>(s, x.data.data(), mean2.ptr(), var2.ptr(), ws.ptr(), r, nullptr);
    const double unbias = static_cast<double>(M) / static_cast<double>(M - 1);
    for (int64_t ch = 0; ch < c.C; ++ch) {
      const double want_m = 0.25 * mean2.data[ch] + 0.75 * static_cast<double>(run_mean[ch]);
      const double want_v = 0.25 * var2.data[ch] * unbias + 0.75 * static_cast<double>(static_cast<float>(run_var[ch]));
      k.value("running_mean", ch, rm[2 * ch], want_m, 1e-5 * (std::fabs(want_m) + 1));
      k.value("running_var", ch, rv[3 * ch], want_v, 1e-5 * (std::fabs(want_v) + 1));
      k.require(std::isnan(rm[2 * ch + 1]) && std::isnan(rv[3 * ch + 1]) && std::isnan(rv[3 * ch + 2]),
                "WROTE INTO A RUNNING BUFFER'S GAP");
    }
    report("running update", type_name<T>(), c, k, ms_since(t0));
  }

  for (const bool training : {true, false}) {
    const A* use_mean = training ? mean.ptr() : run_mean.data();
    const A* use_var = training ? var.ptr() : run_var.data();

    // ---- apply ----
    Buffer<T> y(dims, c.y_layout);
    {
      Check k;
      const auto t0 = std::chrono::steady_clock::now();
      kern::batch_norm_relu_apply<T>(s, x.data.data(), use_mean, use_var, w_ptr, b_ptr, kEps, cnnkern::Act::Relu,
                                     y.data.data(), nullptr);
      const double ms = ms_since(t0);
      k.require(y.gaps_untouched(), "WROTE OUTSIDE THE VIEW");
      int64_t i = 0;
      y.for_each([&](int64_t n, int64_t ch, int64_t h, int64_t w) {
        const double invstd = 1.0 / std::sqrt(static_cast<double>(use_var[ch]) + kEps);
        const double z = (x.get(n, ch, h, w) - use_mean[ch]) * invstd * w_of(ch);
        const double want = std::max(0.0, z + b_of(ch));
        const double bound = tol.out * std::fabs(want) + tol.acc * (std::fabs(z) + std::fabs(b_of(ch))) + tol.tiny;
        k.value("y", i++, y.get(n, ch, h, w), want, bound);
      });
      report(training ? "apply train" : "apply eval", type_name<T>(), c, k, ms);
    }

    // ---- backward (mask from the y just computed) ----
    {
      Check k;
      Buffer<T> dx(dims, c.y_layout);
      Guarded<A> gw(c.C), gb(c.C), ws(ws_bwd);
      const auto t0 = std::chrono::steady_clock::now();
      kern::batch_norm_relu_backward<T>(s, dy.data.data(), y.data.data(), x.data.data(), use_mean, use_var, w_ptr, b_ptr,
                                        kEps, cnnkern::Act::Relu, training, dx.data.data(), gw.ptr(), gb.ptr(), ws.ptr(), nullptr);
      const double ms = ms_since(t0);
      if (std::is_same_v<T, float> && c.many_chunks) {
        Buffer<T> dx2(dims, c.y_layout);
        Guarded<A> gw2(c.C), gb2(c.C), ws2(ws_bwd);
        kern::batch_norm_relu_backward<T>(s, dy.data.data(), y.data.data(), x.data.data(), use_mean, use_var, w_ptr,
                                          b_ptr, kEps, cnnkern::Act::Relu, training, dx2.data.data(), gw2.ptr(), gb2.ptr(), ws2.ptr(), nullptr);
        k.require(same_bits(dx.data, dx2.data) && same_bits(gw.data, gw2.data) && same_bits(gb.data, gb2.data),
                  "NOT DETERMINISTIC");
      }
      k.require(dx.gaps_untouched(), "WROTE OUTSIDE THE VIEW");
      k.require(gw.guard_untouched() && gb.guard_untouched() && ws.guard_untouched(), "WROTE PAST A VECTOR");
      for (int64_t ch = 0; ch < c.C; ++ch) {
        const double invstd = 1.0 / std::sqrt(static_cast<double>(use_var[ch]) + kEps);
        auto g_at = [&](int64_t n, int64_t h, int64_t w) {
          return y.get(n, ch, h, w) > 0.0 ? dy.get(n, ch, h, w) : 0.0;
        };
        auto xhat_at = [&](int64_t n, int64_t h, int64_t w) { return (x.get(n, ch, h, w) - use_mean[ch]) * invstd; };
        double sum_g = 0, sum_gx = 0, abs_g = 0, abs_gx = 0;
        for (int64_t n = 0; n < c.N; ++n)
          for (int64_t h = 0; h < c.H; ++h)
            for (int64_t w = 0; w < c.W; ++w) {
              const double g = g_at(n, h, w), gx = g * xhat_at(n, h, w);
              sum_g += g;
              sum_gx += gx;
              abs_g += std::fabs(g);
              abs_gx += std::fabs(gx);
            }
        k.value("grad_bias", ch, gb.data[ch], sum_g, tol.acc * abs_g);
        k.value("grad_weight", ch, gw.data[ch], sum_gx, tol.acc * abs_gx);
        const double scale = w_of(ch) * invstd;
        for (int64_t n = 0; n < c.N; ++n)
          for (int64_t h = 0; h < c.H; ++h)
            for (int64_t w = 0; w < c.W; ++w) {
              const double g = g_at(n, h, w), xhat = xhat_at(n, h, w);
              double want = scale * g, magnitude = std::fabs(scale * g);
              if (training) {
                want = scale * (g - sum_g / M - xhat * sum_gx / M);
                magnitude = std::fabs(scale) * (std::fabs(g) + abs_g / M + std::fabs(xhat) * abs_gx / M);
              }
              k.value("dx", ((n * c.C + ch) * c.H + h) * c.W + w, dx.get(n, ch, h, w), want,
                      tol.out * std::fabs(want) + tol.acc * magnitude + tol.tiny);
            }
      }
      report(training ? "backward train" : "backward eval", type_name<T>(), c, k, ms);
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  using L = Layout;
  const bool acc_types_only = argc > 1 && std::string(argv[1]) == "--acc-types";
  // name, N C H W, layouts x y/dx dy, affine, offset, many_chunks
  const std::vector<Case> cases = {
      {"N=2 C=1 1x1 (2 values)", 2, 1, 1, 1, L::Contiguous, L::Contiguous, L::Contiguous, true, 0.0, false},
      {"N=2 C=3 1x1 (2 values) nhwc", 2, 3, 1, 1, L::ChannelsLast, L::ChannelsLast, L::Contiguous, false, 0.0, false},
      {"N=1 C=3 7x5 nhwc", 1, 3, 7, 5, L::ChannelsLast, L::ChannelsLast, L::ChannelsLast, false, 0.0, false},
      {"N=1 C=4 11x13", 1, 4, 11, 13, L::Contiguous, L::Contiguous, L::Strided, true, 0.0, false},
      {"odd 3x5x7x11 strided", 3, 5, 7, 11, L::Strided, L::Contiguous, L::Contiguous, true, 0.0, false},
      {"prime 2x13x3x17", 2, 13, 3, 17, L::ChannelsLast, L::ChannelsLast, L::Strided, true, 0.0, false},
      {"N=6 C=9 1x1", 6, 9, 1, 1, L::Contiguous, L::Contiguous, L::Contiguous, true, 0.0, false},
      {"C=70 2x70x5x3 nhwc", 2, 70, 5, 3, L::ChannelsLast, L::ChannelsLast, L::ChannelsLast, true, 0.0, false},
      {"C=70 2x70x4x3 nchw", 2, 70, 4, 3, L::Contiguous, L::Contiguous, L::ChannelsLast, false, 0.0, false},
      {"C=1 nhwc 3x1x9x10", 3, 1, 9, 10, L::ChannelsLast, L::ChannelsLast, L::ChannelsLast, true, 0.0, false},
      {"C=33 nhwc-view 2x33x5x6", 2, 33, 5, 6, L::ChannelsLastStrided, L::ChannelsLast, L::Strided, true, 0.0, false},
      {"chunks nchw 4x3x53x59", 4, 3, 53, 59, L::Contiguous, L::Contiguous, L::Contiguous, true, 0.0, true},
      {"chunks nhwc 2x40x13x17", 2, 40, 13, 17, L::ChannelsLast, L::ChannelsLast, L::ChannelsLast, false, 0.0, true},
      {"mean 1000 nchw 4x3x40x40", 4, 3, 40, 40, L::Contiguous, L::Contiguous, L::Contiguous, true, 1000.0, false},
      {"mean 1000 chunks nhwc 5x6x17x19", 5, 6, 17, 19, L::ChannelsLast, L::ChannelsLast, L::ChannelsLast, true,
       1000.0, true},
  };

  const auto t0 = std::chrono::steady_clock::now();
  uint32_t seed = 1;
  for (const Case& c : cases) {
    std::printf("-- %s  (x %s, y/dx %s, dy %s, %s)\n", c.name.c_str(), layout_name(c.x_layout),
                layout_name(c.y_layout), layout_name(c.dy_layout), c.affine ? "affine" : "no weight/bias");
    run_case<float>(c, seed);
    run_case<double>(c, seed);
    if (!acc_types_only) {
      run_case<c10::Half>(c, seed);
      run_case<c10::BFloat16>(c, seed);
    }
    ++seed;
  }
  std::printf("%s: %d failure(s), %.1f s\n", g_failures ? "FAILED" : "ALL PASSED", g_failures, ms_since(t0) / 1000.0);
  return g_failures ? 1 : 0;
}
