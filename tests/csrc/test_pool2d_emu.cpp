// Standalone check of the pooling CUDA kernels through their host emulation
// (csrc/emu/pool2d.cu.cpp): all six launchers against naive double-precision
// references written from torch's definitions (independently of
// cnnkern/pool2d_index.h, so the shared helpers are checked too), for float,
// double, Half and BFloat16. Build and run: tests/csrc/run_pool2d.sh
//
// Shapes: odd and prime sizes, 1x1 input, kernel 1, kernel = input, stride !=
// kernel, padding up to kernel/2, dilation 2 and 3, ceil_mode (with a last
// window hanging past the input, and one that would start in the padding and
// is dropped), count_include_pad on and off, divisor_override, adaptive output
// sizes smaller than, equal to and larger than the input. Every case states its
// output size as computed by hand from torch's rule; the harness checks
// pool_out_size against it. Layouts: NCHW, channels_last and a strided view,
// mixed between input and output.
//
// Inputs: uniform random, small integers (ties everywhere: the first index
// must win), and a "special" fill with NaN (must propagate; the last NaN in scan
// order is reported, as `value != value` always takes), -inf (a channel that is
// all -inf: the index is the window's first in-bounds element) and ties. Gaps of
// strided buffers hold NaN, outputs start as NaN (indices as a sentinel), and
// the gaps of output buffers must still hold them afterwards. A few small
// cases are also checked against literal values printed by torch 2.x.
#include "cnnkern/cuda_emu.h"
#define CNNKERN_GPU_NS emu
#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "cnnkern/fast_divmod.h"
#include "cnnkern/pool2d_launch.h"

using cnnkern::Pool2dShape;
namespace kern = cnnkern::emu;

namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
constexpr int64_t kIndexSentinel = -0x5a5a5a5a5a5a;  // "never written" in index buffers

// ---- Strided 4-d buffers ---------------------------------------------------------

enum class Layout { Contiguous, ChannelsLast, Strided };

const char* layout_name(Layout l) {
  switch (l) {
    case Layout::Contiguous: return "nchw";
    case Layout::ChannelsLast: return "nhwc";
    case Layout::Strided: return "strided";
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
  }
  return {};
}

template <typename T>
T fill_value() {
  return T(std::numeric_limits<float>::quiet_NaN());
}
template <>
int64_t fill_value<int64_t>() {
  return kIndexSentinel;
}
template <typename T>
bool is_fill(T v) {
  return std::isnan(static_cast<double>(static_cast<float>(v)));
}
template <>
bool is_fill<double>(double v) {
  return std::isnan(v);
}
template <>
bool is_fill<int64_t>(int64_t v) {
  return v == kIndexSentinel;
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
    data.assign(static_cast<size_t>(span), fill_value<T>());
  }
  int64_t offset(int64_t a, int64_t b, int64_t c, int64_t e) const {
    return a * strides[0] + b * strides[1] + c * strides[2] + e * strides[3];
  }
  T& at(int64_t a, int64_t b, int64_t c, int64_t e) { return data[static_cast<size_t>(offset(a, b, c, e))]; }
  T at(int64_t a, int64_t b, int64_t c, int64_t e) const { return data[static_cast<size_t>(offset(a, b, c, e))]; }
  double get(int64_t a, int64_t b, int64_t c, int64_t e) const { return to_double(at(a, b, c, e)); }
  template <typename F>
  void for_each(F f) const {
    for (int64_t a = 0; a < dims[0]; ++a)
      for (int64_t b = 0; b < dims[1]; ++b)
        for (int64_t c = 0; c < dims[2]; ++c)
          for (int64_t e = 0; e < dims[3]; ++e) f(a, b, c, e);
  }
  // True when every element outside the view still holds its fill value.
  bool gaps_untouched() const {
    std::vector<char> inside(data.size(), 0);
    for_each([&](int64_t a, int64_t b, int64_t c, int64_t e) { inside[static_cast<size_t>(offset(a, b, c, e))] = 1; });
    for (size_t i = 0; i < data.size(); ++i)
      if (!inside[i] && !is_fill(data[i])) return false;
    return true;
  }
};

// Row-major flat index of a 4-d coordinate, for the references.
struct Flat {
  Dims d;
  size_t operator()(int64_t a, int64_t b, int64_t c, int64_t e) const {
    return static_cast<size_t>(((a * d[1] + b) * d[2] + c) * d[3] + e);
  }
  size_t size() const { return static_cast<size_t>(d[0] * d[1] * d[2] * d[3]); }
};

// ---- Cases --------------------------------------------------------------------------

enum class Kind { Max, Avg, Adaptive };
enum class Fill { Random, Ties, Special };

const char* fill_name(Fill f) {
  switch (f) {
    case Fill::Random: return "random";
    case Fill::Ties: return "ties";
    case Fill::Special: return "nan/-inf/ties";
  }
  return "?";
}

using P2 = std::array<int64_t, 2>;  // (h, w)

struct Case {
  std::string name;
  Kind kind;
  Dims x;  // N C H W
  P2 kernel{{1, 1}}, stride{{1, 1}}, pad{{0, 0}}, dil{{1, 1}};
  bool ceil_mode = false;
  bool count_include_pad = true;
  int64_t divisor_override = 0;
  P2 out;  // by hand (pooling) or requested (adaptive)
  Fill fill;
  Layout x_layout, y_layout;
};

Case max_case(std::string name, Dims x, P2 k, P2 s, P2 p, P2 d, bool ceil, P2 out, Fill f, Layout xl, Layout yl) {
  Case c;
  c.name = std::move(name);
  c.kind = Kind::Max;
  c.x = x;
  c.kernel = k;
  c.stride = s;
  c.pad = p;
  c.dil = d;
  c.ceil_mode = ceil;
  c.out = out;
  c.fill = f;
  c.x_layout = xl;
  c.y_layout = yl;
  return c;
}

Case avg_case(std::string name, Dims x, P2 k, P2 s, P2 p, bool ceil, bool count_include_pad, int64_t divisor,
              P2 out, Fill f, Layout xl, Layout yl) {
  Case c = max_case(std::move(name), x, k, s, p, P2{{1, 1}}, ceil, out, f, xl, yl);
  c.kind = Kind::Avg;
  c.count_include_pad = count_include_pad;
  c.divisor_override = divisor;
  return c;
}

Case adaptive_case(std::string name, Dims x, P2 out, Fill f, Layout xl, Layout yl) {
  Case c = max_case(std::move(name), x, P2{{1, 1}}, P2{{1, 1}}, P2{{0, 0}}, P2{{1, 1}}, false, out, f, xl, yl);
  c.kind = Kind::Adaptive;
  return c;
}

// ---- References: torch's definitions, in double ---------------------------------------

// torch's pooling_output_shape, written out again.
int64_t ref_out_size(int64_t in, int64_t k, int64_t s, int64_t p, int64_t d, bool ceil_mode) {
  const int64_t num = in + 2 * p - d * (k - 1) - 1 + (ceil_mode ? s - 1 : 0);
  int64_t out = (num >= 0 ? num / s : -((-num + s - 1) / s)) + 1;
  if (ceil_mode && (out - 1) * s >= in + p) out -= 1;
  return out;
}

// torch's avg_pool2d divisor (aten/src/ATen/native/cuda/AveragePool2d.cu).
int64_t ref_divisor(const Case& c, int64_t H, int64_t W, int64_t oh, int64_t ow) {
  int64_t hstart = oh * c.stride[0] - c.pad[0], wstart = ow * c.stride[1] - c.pad[1];
  int64_t hend = std::min(hstart + c.kernel[0], H + c.pad[0]);
  int64_t wend = std::min(wstart + c.kernel[1], W + c.pad[1]);
  const int64_t pool_size = (hend - hstart) * (wend - wstart);
  hstart = std::max<int64_t>(hstart, 0);
  wstart = std::max<int64_t>(wstart, 0);
  hend = std::min(hend, H);
  wend = std::min(wend, W);
  if (c.divisor_override) return c.divisor_override;
  return c.count_include_pad ? pool_size : (hend - hstart) * (wend - wstart);
}

// Adaptive window [start, end) of output i: floor(i * in / out), ceil((i + 1) * in / out).
int64_t ref_adaptive_start(int64_t i, int64_t in, int64_t out) {
  return static_cast<int64_t>(std::floor(static_cast<double>(i * in) / static_cast<double>(out)));
}
int64_t ref_adaptive_end(int64_t i, int64_t in, int64_t out) {
  return static_cast<int64_t>(std::ceil(static_cast<double>((i + 1) * in) / static_cast<double>(out)));
}

// value and sum of |terms| per element, for the error bound
struct Ref {
  std::vector<double> value, magnitude;
  explicit Ref(size_t n) : value(n, 0.0), magnitude(n, 0.0) {}
};

// ---- Checking -------------------------------------------------------------------------

// output rounding (relative to |ref|), accumulation (relative to sum |terms|),
// and half the spacing of the type's subnormals (absolute: rounding near zero)
struct Tolerance {
  double out, acc, tiny;
};

template <typename T>
Tolerance tolerance();
template <> Tolerance tolerance<float>() { return {1e-6, 1e-5, 0x1p-150}; }
template <> Tolerance tolerance<double>() { return {1e-14, 1e-12, 0.0}; }
template <> Tolerance tolerance<c10::Half>() { return {1e-3, 1e-5, 0x1p-25}; }
template <> Tolerance tolerance<c10::BFloat16>() { return {8e-3, 1e-5, 0x1p-134}; }

template <typename T> const char* type_name();
template <> const char* type_name<float>() { return "float"; }
template <> const char* type_name<double>() { return "double"; }
template <> const char* type_name<c10::Half>() { return "half"; }
template <> const char* type_name<c10::BFloat16>() { return "bfloat16"; }

int g_failures = 0;

void print_line(bool ok, const char* pass, const char* type, const std::string& name, double worst, bool gaps_ok,
                double ms) {
  if (!ok) ++g_failures;
  std::printf("%s  %-10s %-9s %-58s err/tol %.3f%s  (%.0f ms)\n", ok ? "PASS" : "FAIL", pass, type, name.c_str(),
              worst, gaps_ok ? "" : "  WROTE OUTSIDE THE VIEW", ms);
}

// A result element against its reference: NaN must be NaN, infinities exact,
// finite values within the bound.
bool close(double got, double want, double magnitude, const Tolerance& tol, double* ratio) {
  *ratio = 0.0;
  if (std::isnan(want)) return std::isnan(got);
  if (std::isinf(want)) return got == want;
  const double bound = tol.out * std::fabs(want) + tol.acc * magnitude + tol.tiny + 1e-300;
  *ratio = std::fabs(got - want) / bound;
  return *ratio <= 1.0;  // NaN fails
}

template <typename T>
void report(const char* pass, const std::string& name, const Buffer<T>& out, const Ref& ref, double ms) {
  const Tolerance tol = tolerance<T>();
  double worst = 0.0;
  size_t i = 0, bad = 0;
  out.for_each([&](int64_t a, int64_t b, int64_t c, int64_t e) {
    double ratio;
    const double got = out.get(a, b, c, e);
    if (!close(got, ref.value[i], ref.magnitude[i], tol, &ratio)) {
      if (bad++ < 3)
        std::printf("    [%lld,%lld,%lld,%lld] got %.9g want %.9g\n", (long long)a, (long long)b, (long long)c,
                    (long long)e, got, ref.value[i]);
      ratio = std::max(ratio, 1e9);
    }
    worst = std::max(worst, ratio);
    ++i;
  });
  const bool gaps_ok = out.gaps_untouched();
  print_line(bad == 0 && gaps_ok, pass, type_name<T>(), name, worst, gaps_ok, ms);
}

// Max-pool indices: exact.
template <typename T>
void report_indices(const std::string& name, const Buffer<int64_t>& out, const std::vector<int64_t>& want) {
  size_t i = 0, bad = 0;
  out.for_each([&](int64_t a, int64_t b, int64_t c, int64_t e) {
    const int64_t got = out.at(a, b, c, e);
    if (got != want[i] && bad++ < 3)
      std::printf("    [%lld,%lld,%lld,%lld] index got %lld want %lld\n", (long long)a, (long long)b, (long long)c,
                  (long long)e, (long long)got, (long long)want[i]);
    ++i;
  });
  const bool gaps_ok = out.gaps_untouched();
  print_line(bad == 0 && gaps_ok, "max_index", type_name<T>(), name, bad ? 1e9 : 0.0, gaps_ok, 0.0);
}

double ms_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}

// ---- One case ----------------------------------------------------------------------------

template <typename T>
void fill_input(Buffer<T>& x, Fill fill, std::mt19937& rng) {
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  std::uniform_int_distribution<int> small(-2, 2), pick(0, 99);
  x.for_each([&](int64_t a, int64_t b, int64_t c, int64_t e) {
    float v = 0.f;
    switch (fill) {
      case Fill::Random: v = u(rng); break;
      case Fill::Ties: v = static_cast<float>(small(rng)); break;
      case Fill::Special: {
        const int r = pick(rng);
        if (b == 0) v = -std::numeric_limits<float>::infinity();  // all -inf windows
        else if (r < 12) v = std::numeric_limits<float>::quiet_NaN();
        else if (r < 30) v = -std::numeric_limits<float>::infinity();
        else v = static_cast<float>(small(rng));
        break;
      }
    }
    x.at(a, b, c, e) = T(v);
  });
}

template <typename T>
void random_fill(Buffer<T>& b, std::mt19937& rng) {
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  b.for_each([&](int64_t a, int64_t c, int64_t d, int64_t e) { b.at(a, c, d, e) = T(u(rng)); });
}

Pool2dShape make_shape(const Case& c, int64_t OH, int64_t OW, const Dims& xs, const Dims& ys) {
  Pool2dShape s{};
  s.N = c.x[0];
  s.C = c.x[1];
  s.H = c.x[2];
  s.W = c.x[3];
  s.OH = OH;
  s.OW = OW;
  s.kernel_h = c.kernel[0];
  s.kernel_w = c.kernel[1];
  s.stride_h = c.stride[0];
  s.stride_w = c.stride[1];
  s.pad_h = c.pad[0];
  s.pad_w = c.pad[1];
  s.dil_h = c.dil[0];
  s.dil_w = c.dil[1];
  for (int i = 0; i < 4; ++i) {
    s.x_stride[i] = xs[i];
    s.y_stride[i] = ys[i];
  }
  return s;
}

template <typename T>
void run_case(const Case& c, int64_t OH, int64_t OW, uint32_t seed) {
  const int64_t N = c.x[0], C = c.x[1], H = c.x[2], W = c.x[3];
  const Dims yd{N, C, OH, OW};
  const Flat fx{c.x}, fy{yd};
  std::mt19937 rng(seed);
  Buffer<T> x(c.x, c.x_layout), dy(yd, c.y_layout);
  fill_input(x, c.fill, rng);
  random_fill(dy, rng);
  const Pool2dShape s = make_shape(c, OH, OW, x.strides, dy.strides);

  if (c.kind == Kind::Max) {
    // forward, torch's CPU and CUDA kernels: the index starts at the first tap
    // past the padding; scanning in order, v > best or v NaN takes
    Ref ref(fy.size());
    std::vector<int64_t> want_idx(fy.size(), -1);
    Buffer<int64_t> ref_indices(yd, c.y_layout);  // for the backward
    for (int64_t n = 0; n < N; ++n)
      for (int64_t ch = 0; ch < C; ++ch)
        for (int64_t oh = 0; oh < OH; ++oh)
          for (int64_t ow = 0; ow < OW; ++ow) {
            double best = -kInf;
            // torch's seed: skip the padding tap by tap (while (hstart < 0) hstart += dil)
            int64_t h0 = oh * c.stride[0] - c.pad[0], w0 = ow * c.stride[1] - c.pad[1];
            while (h0 < 0) h0 += c.dil[0];
            while (w0 < 0) w0 += c.dil[1];
            int64_t at = h0 * W + w0;
            for (int64_t i = 0; i < c.kernel[0]; ++i)
              for (int64_t j = 0; j < c.kernel[1]; ++j) {
                const int64_t h = oh * c.stride[0] - c.pad[0] + i * c.dil[0];
                const int64_t w = ow * c.stride[1] - c.pad[1] + j * c.dil[1];
                if (h < 0 || h >= H || w < 0 || w >= W) continue;
                const double v = x.get(n, ch, h, w);
                if (v > best || std::isnan(v)) {
                  best = v;
                  at = h * W + w;
                }
              }
            ref.value[fy(n, ch, oh, ow)] = best;
            want_idx[fy(n, ch, oh, ow)] = at;
            ref_indices.at(n, ch, oh, ow) = at;
          }
    Buffer<T> y(yd, c.y_layout);
    Buffer<int64_t> indices(yd, c.y_layout);
    auto t0 = std::chrono::steady_clock::now();
    kern::max_pool2d_forward<T>(s, x.data.data(), y.data.data(), indices.data.data(), nullptr);
    report("max_fwd", c.name, y, ref, ms_since(t0));
    report_indices<T>(c.name, indices, want_idx);

    // backward: scatter-add dy into the recorded argmax (torch's definition)
    Ref dref(fx.size());
    for (int64_t n = 0; n < N; ++n)
      for (int64_t ch = 0; ch < C; ++ch)
        for (int64_t oh = 0; oh < OH; ++oh)
          for (int64_t ow = 0; ow < OW; ++ow) {
            const int64_t at = ref_indices.at(n, ch, oh, ow);
            if (at < 0) continue;
            const double g = dy.get(n, ch, oh, ow);
            dref.value[fx(n, ch, at / W, at % W)] += g;
            dref.magnitude[fx(n, ch, at / W, at % W)] += std::fabs(g);
          }
    Buffer<T> dx(c.x, c.x_layout);
    t0 = std::chrono::steady_clock::now();
    kern::max_pool2d_backward<T>(s, dy.data.data(), ref_indices.data.data(), dx.data.data(), nullptr);
    report("max_bwd", c.name, dx, dref, ms_since(t0));
    return;
  }

  // Average pooling (fixed or adaptive): each output is sum over its window
  // [h0, h1) x [w0, w1) (clipped to the input) divided by a divisor.
  struct Window {
    int64_t h0, h1, w0, w1, divisor;
  };
  auto window = [&](int64_t oh, int64_t ow) {
    Window win{};
    if (c.kind == Kind::Adaptive) {
      win.h0 = ref_adaptive_start(oh, H, OH);
      win.h1 = ref_adaptive_end(oh, H, OH);
      win.w0 = ref_adaptive_start(ow, W, OW);
      win.w1 = ref_adaptive_end(ow, W, OW);
      win.divisor = (win.h1 - win.h0) * (win.w1 - win.w0);
    } else {
      win.h0 = std::max<int64_t>(oh * c.stride[0] - c.pad[0], 0);
      win.w0 = std::max<int64_t>(ow * c.stride[1] - c.pad[1], 0);
      win.h1 = std::min(oh * c.stride[0] - c.pad[0] + c.kernel[0], H);
      win.w1 = std::min(ow * c.stride[1] - c.pad[1] + c.kernel[1], W);
      win.divisor = ref_divisor(c, H, W, oh, ow);
    }
    return win;
  };
  const char* fwd = c.kind == Kind::Adaptive ? "adapt_fwd" : "avg_fwd";
  const char* bwd = c.kind == Kind::Adaptive ? "adapt_bwd" : "avg_bwd";

  Ref ref(fy.size());
  Ref dref(fx.size());
  for (int64_t n = 0; n < N; ++n)
    for (int64_t ch = 0; ch < C; ++ch)
      for (int64_t oh = 0; oh < OH; ++oh)
        for (int64_t ow = 0; ow < OW; ++ow) {
          const Window win = window(oh, ow);
          const double d = static_cast<double>(win.divisor);
          const double g = dy.get(n, ch, oh, ow) / d;
          double sum = 0.0, mag = 0.0;
          for (int64_t h = win.h0; h < win.h1; ++h)
            for (int64_t w = win.w0; w < win.w1; ++w) {
              sum += x.get(n, ch, h, w);
              mag += std::fabs(x.get(n, ch, h, w));
              dref.value[fx(n, ch, h, w)] += g;
              dref.magnitude[fx(n, ch, h, w)] += std::fabs(g);
            }
          ref.value[fy(n, ch, oh, ow)] = sum / d;
          ref.magnitude[fy(n, ch, oh, ow)] = mag / std::fabs(d);
        }

  Buffer<T> y(yd, c.y_layout), dx(c.x, c.x_layout);
  auto t0 = std::chrono::steady_clock::now();
  if (c.kind == Kind::Adaptive)
    kern::adaptive_avg_pool2d_forward<T>(s, x.data.data(), y.data.data(), nullptr);
  else
    kern::avg_pool2d_forward<T>(s, x.data.data(), y.data.data(), c.count_include_pad, c.divisor_override, nullptr);
  report(fwd, c.name, y, ref, ms_since(t0));
  t0 = std::chrono::steady_clock::now();
  if (c.kind == Kind::Adaptive)
    kern::adaptive_avg_pool2d_backward<T>(s, dy.data.data(), dx.data.data(), nullptr);
  else
    kern::avg_pool2d_backward<T>(s, dy.data.data(), dx.data.data(), c.count_include_pad, c.divisor_override,
                                 nullptr);
  report(bwd, c.name, dx, dref, ms_since(t0));
}

// Output size: the hand value in the case must agree with torch's rule as
// written here and with the shared pool_out_size.
bool check_out_size(const Case& c, int64_t* OH, int64_t* OW) {
  if (c.kind == Kind::Adaptive) {
    *OH = c.out[0];
    *OW = c.out[1];
    return true;
  }
  bool ok = true;
  for (int d = 0; d < 2; ++d) {
    const int64_t in = c.x[2 + d];
    const int64_t ref = ref_out_size(in, c.kernel[d], c.stride[d], c.pad[d], c.dil[d], c.ceil_mode);
    const int64_t shared = cnnkern::pool_out_size(in, c.kernel[d], c.stride[d], c.pad[d], c.dil[d], c.ceil_mode);
    if (ref != c.out[d] || shared != c.out[d]) {
      std::printf("FAIL  out_size   %s: dim %d by hand %lld, torch rule %lld, pool_out_size %lld\n", c.name.c_str(),
                  d, (long long)c.out[d], (long long)ref, (long long)shared);
      ++g_failures;
      ok = false;
    }
  }
  *OH = c.out[0];
  *OW = c.out[1];
  return ok;
}

// ---- Literal checks against torch's own output ---------------------------------------------

// One NCHW float plane through the forward launchers, compared with values
// printed by torch (F.max_pool2d(..., return_indices=True), F.avg_pool2d,
// F.adaptive_avg_pool2d) for the same input.
void literal(const char* name, Kind kind, int64_t H, int64_t W, std::vector<float> in, P2 k, P2 s, P2 p, P2 d,
             bool ceil, bool cip, int64_t divisor, P2 out, const std::vector<double>& want,
             const std::vector<int64_t>& want_idx) {
  Case c;
  c.name = name;
  c.kind = kind;
  c.x = Dims{1, 1, H, W};
  c.kernel = k;
  c.stride = s;
  c.pad = p;
  c.dil = d;
  c.ceil_mode = ceil;
  c.count_include_pad = cip;
  c.divisor_override = divisor;
  c.out = out;
  int64_t OH, OW;
  if (!check_out_size(c, &OH, &OW)) return;
  Buffer<float> x(c.x, Layout::Contiguous);
  x.data = in;
  Buffer<float> y(Dims{1, 1, OH, OW}, Layout::Contiguous);
  Buffer<int64_t> idx(Dims{1, 1, OH, OW}, Layout::Contiguous);
  const Pool2dShape sh = make_shape(c, OH, OW, x.strides, y.strides);
  if (kind == Kind::Max) kern::max_pool2d_forward<float>(sh, x.data.data(), y.data.data(), idx.data.data(), nullptr);
  if (kind == Kind::Avg)
    kern::avg_pool2d_forward<float>(sh, x.data.data(), y.data.data(), cip, divisor, nullptr);
  if (kind == Kind::Adaptive) kern::adaptive_avg_pool2d_forward<float>(sh, x.data.data(), y.data.data(), nullptr);
  bool ok = true;
  for (size_t i = 0; i < want.size(); ++i) {
    double ratio;
    const bool good = close(y.data[i], want[i], 0.0, Tolerance{1e-6, 0.0, 0.0}, &ratio) &&
                      (want_idx.empty() || idx.data[i] == want_idx[i]);
    if (!good) {
      std::printf("    [%zu] got %.9g (index %lld) want %.9g (index %lld)\n", i, (double)y.data[i],
                  (long long)idx.data[i], want[i], want_idx.empty() ? -1LL : (long long)want_idx[i]);
      ok = false;
    }
  }
  print_line(ok, "torch", "float", name, ok ? 0.0 : 1e9, true, 0.0);
}

void literal_checks() {
  const float nan = std::numeric_limits<float>::quiet_NaN(), inf = std::numeric_limits<float>::infinity();
  const P2 one{{1, 1}}, zero{{0, 0}};
  // ties: x = [[5,5,1,5],[5,2,5,5],[0,5,5,1]], k2 s1 -> all 5, first index wins
  literal("ties 3x4 k2 s1", Kind::Max, 3, 4, {5, 5, 1, 5, 5, 2, 5, 5, 0, 5, 5, 1}, {{2, 2}}, one, zero, one, false,
          true, 0, {{2, 3}}, {5, 5, 5, 5, 5, 5}, {0, 1, 3, 4, 6, 6});
  // NaN: x = [[1,nan,3,nan],[nan,0,2,1],[4,4,nan,-1]], k2 s1 -> NaN everywhere,
  // index of the last NaN scanned (window 0 holds NaN at 1 and 4: reports 4)
  const std::vector<float> nan_x{1, nan, 3, nan, nan, 0, 2, 1, 4, 4, nan, -1};
  literal("nan 3x4 k2 s1", Kind::Max, 3, 4, nan_x, {{2, 2}}, one, zero, one, false, true, 0, {{2, 3}},
          {kNaN, kNaN, kNaN, kNaN, kNaN, kNaN}, {4, 1, 3, 4, 10, 10});
  // same input, k(3,2) s(1,2) p(1,1) ceil: H 3 -> 3, W 4 -> 3 (span 5, 5/2+1 = 3, (3-1)*2 = 4 < 4+1 kept)
  literal("nan 3x4 k(3,2) s(1,2) p1 ceil", Kind::Max, 3, 4, nan_x, {{3, 2}}, {{1, 2}}, one, one, true, true, 0,
          {{3, 3}}, {kNaN, kNaN, kNaN, kNaN, kNaN, kNaN, kNaN, kNaN, 1.0}, {4, 1, 3, 4, 10, 3, 4, 10, 7});
  // all -inf 3x3, k2 s1 p1 -> 4x4 of -inf, index = first in-bounds element of each window
  literal("all -inf 3x3 k2 s1 p1", Kind::Max, 3, 3, std::vector<float>(9, -inf), {{2, 2}}, one, one, one, false,
          true, 0, {{4, 4}}, std::vector<double>(16, -kInf), {0, 0, 1, 2, 0, 0, 1, 2, 3, 3, 4, 5, 6, 6, 7, 8});
  // A window with no input element at all (2x2, k2 p1 d3: taps at -1 and 2).
  // torch reports -inf and index hstart*W + wstart after skipping the padding
  // (here 2*2 + 2 = 6, outside the plane, so no backward pass credits an element);
  // cnnkern reports the same.
  literal("empty window 2x2 k2 p1 d3 (torch index 6)", Kind::Max, 2, 2, {1, 2, 3, 4}, {{2, 2}}, one, one,
          {{3, 3}}, false, true, 0, {{1, 1}}, {-kInf}, {6});
  // avg, x = arange(30).view(5,6), k3 s2 p1 ceil: H 5 -> 3, W 6 -> 4
  std::vector<float> ar(30);
  for (int i = 0; i < 30; ++i) ar[static_cast<size_t>(i)] = static_cast<float>(i);
  literal("avg arange 5x6 k3 s2 p1 ceil incl", Kind::Avg, 5, 6, ar, {{3, 3}}, {{2, 2}}, one, one, true, true, 0,
          {{3, 4}},
          {1.5555555820, 3.3333332539, 4.6666665077, 2.6666667461, 8.3333330154, 14.0, 16.0, 8.5, 9.5555553436,
           15.3333330154, 16.6666660309, 8.6666669846},
          {});
  literal("avg arange 5x6 k3 s2 p1 ceil excl", Kind::Avg, 5, 6, ar, {{3, 3}}, {{2, 2}}, one, one, true, false, 0,
          {{3, 4}}, {3.5, 5.0, 7.0, 8.0, 12.5, 14.0, 16.0, 17.0, 21.5, 23.0, 25.0, 26.0}, {});
  literal("avg arange 5x6 k3 s2 p1 ceil div4", Kind::Avg, 5, 6, ar, {{3, 3}}, {{2, 2}}, one, one, true, true, 4,
          {{3, 4}}, {3.5, 7.5, 10.5, 4.0, 18.75, 31.5, 36.0, 12.75, 21.5, 34.5, 37.5, 13.0}, {});
  // adaptive 4x4 from arange(9).view(3,3): overlapping windows
  literal("adaptive 4x4 from arange 3x3", Kind::Adaptive, 3, 3, {0, 1, 2, 3, 4, 5, 6, 7, 8}, one, one, zero, one,
          false, true, 0, {{4, 4}},
          {0.0, 0.5, 1.5, 2.0, 1.5, 2.0, 3.0, 3.5, 4.5, 5.0, 6.0, 6.5, 6.0, 6.5, 7.5, 8.0}, {});
}

// The 32-bit magic-number divider against plain division: every divisor up to
// 4096, powers of two and their neighbours up to 2^31 (its upper limit), and random ones, each
// on numerators near 0, near multiples of the divisor and up to 2^31 - 1.
void check_dividers() {
  std::mt19937 rng(7);
  std::vector<uint32_t> divisors;
  for (uint32_t d = 1; d <= 4096; ++d) divisors.push_back(d);
  for (int b = 1; b <= 31; ++b) {
    const uint32_t p = uint32_t{1} << b;
    for (uint32_t d : {p - 1, p, p + 1})
      if (d <= 0x80000000u) divisors.push_back(d);  // the divider's range: 1 <= d <= 2^31
  }
  for (int i = 0; i < 2000; ++i) divisors.push_back(1 + rng() % 0x7fffffffu);
  divisors.push_back(0x7fffffffu);
  int bad = 0;
  for (const uint32_t d : divisors) {
    const cnnkern::Divider<uint32_t> div(d);
    auto check = [&](uint32_t n) {
      if (n > 0x7fffffffu) return;
      uint32_t q = 0;
      const uint32_t r = div.divmod(n, &q);
      if ((q != n / d || r != n % d) && bad++ < 10)
        std::printf("FAIL divider: %u / %u gave %u rem %u\n", n, d, q, r);
    };
    for (uint32_t n = 0; n < 64; ++n) check(n);
    for (uint32_t k : {1u, 2u, 3u, 1000u, 0x7fffffffu / d, 0x7fffffffu / d - 1}) {
      const uint64_t m = uint64_t{k} * d;
      for (int64_t e = -2; e <= 2; ++e)
        if (static_cast<int64_t>(m) + e >= 0 && m + e <= 0x7fffffffu) check(static_cast<uint32_t>(m + e));
    }
    for (int i = 0; i < 64; ++i) check(rng() & 0x7fffffffu);
    check(0x7fffffffu);
  }
  const cnnkern::Divider<uint64_t> wide(12345);
  uint64_t q = 0;
  if (wide.divmod(uint64_t{1} << 40, &q) != (uint64_t{1} << 40) % 12345 || q != (uint64_t{1} << 40) / 12345) ++bad;
  std::printf("-- dividers: %zu divisors, %s\n", divisors.size(), bad ? "FAILED" : "ok");
  g_failures += bad;
}

}  // namespace

int main() {
  using L = Layout;
  using F = Fill;
  const P2 one{{1, 1}}, zero{{0, 0}};
  // Output sizes by hand, torch's rule:
  //   out = floor((H + 2p - d(k-1) - 1 + (ceil ? s-1 : 0)) / s) + 1,
  //   and with ceil, drop the last window if it starts at or after H + p.
  const std::vector<Case> cases = {
      // (9+2-2-1)/2+1 = 5
      max_case("max 2x3x9x9 k3 s2 p1", {2, 3, 9, 9}, {{3, 3}}, {{2, 2}}, one, one, false, {{5, 5}}, F::Random,
               L::Contiguous, L::Contiguous),
      // H: (7-1-1)/1+1 = 6; W: (11+2-2-1)/2+1 = 6
      max_case("max 1x5x7x11 k(2,3) s(1,2) p(0,1)", {1, 5, 7, 11}, {{2, 3}}, {{1, 2}}, {{0, 1}}, one, false,
               {{6, 6}}, F::Ties, L::ChannelsLast, L::ChannelsLast),
      // 1x1 input, kernel 1: 1x1
      max_case("max 1x1 input k1", {2, 3, 1, 1}, one, one, zero, one, false, {{1, 1}}, F::Special, L::Strided,
               L::Contiguous),
      // kernel = input: (13-13)/2+1 = 1, (7-7)/3+1 = 1
      max_case("max kernel=input 13x7 s(2,3)", {2, 3, 13, 7}, {{13, 7}}, {{2, 3}}, zero, one, false, {{1, 1}},
               F::Special, L::Contiguous, L::ChannelsLast),
      // stride > kernel: (11-2)/3+1 = 4, (13-2)/3+1 = 4
      max_case("max stride>kernel 11x13 k2 s3", {1, 4, 11, 13}, {{2, 2}}, {{3, 3}}, zero, one, false, {{4, 4}},
               F::Ties, L::Strided, L::Strided),
      // dilation (2,3): H (12+2-4-1)/1+1 = 10; W (10+2-6-1)/2+1 = 3
      max_case("max dil(2,3) 12x10 k3 s(1,2) p1", {2, 3, 12, 10}, {{3, 3}}, {{1, 2}}, one, {{2, 3}}, false,
               {{10, 3}}, F::Special, L::ChannelsLast, L::Contiguous),
      // dilation 2, kernel 2, pad = kernel/2: (9+2-2-1)/1+1 = 9
      max_case("max dil2 9x9 k2 p1", {1, 3, 9, 9}, {{2, 2}}, one, one, {{2, 2}}, false, {{9, 9}}, F::Random,
               L::Contiguous, L::Strided),
      // ceil, H=5 k2 s2: span 5-1-1+1 = 4 -> 3 (last window = row 4 alone);
      //       W=8: span 7 -> 4, (4-1)*2 = 6 < 8 kept
      max_case("max ceil 5x8 k2 s2", {2, 3, 5, 8}, {{2, 2}}, {{2, 2}}, zero, one, true, {{3, 4}}, F::Special,
               L::Contiguous, L::Contiguous),
      // ceil, H=6 k3 s2 p1: span 6+2-2-1+1 = 6 -> 4, (4-1)*2 = 6 < 6+1 kept
      //       (window 3 starts at row 5: one input row, one pad row, one past);
      //       W=5: span 5 -> 3, (3-1)*2 = 4 < 6 kept (same as floor)
      max_case("max ceil 6x5 k3 s2 p1", {1, 4, 6, 5}, {{3, 3}}, {{2, 2}}, one, one, true, {{4, 3}}, F::Ties,
               L::ChannelsLast, L::Strided),
      // ceil dropped window, H=5 k2 s2 p1: span 5+2-1-1+1 = 6 -> 4, but (4-1)*2 = 6 >= 5+1: drop -> 3;
      //       W=9: span 10 -> 6, (6-1)*2 = 10 >= 10: drop -> 5
      max_case("max ceil drop 5x9 k2 s2 p1", {2, 2, 5, 9}, {{2, 2}}, {{2, 2}}, one, one, true, {{3, 5}}, F::Random,
               L::Contiguous, L::ChannelsLast),
      // ceil with dilation, H=10 k3 d2 s3 p1: span 10+2-4-1+2 = 9 -> 4, 3*3 = 9 < 11 kept (floor: 3);
      //       window 3 taps rows 8, 10, 12: only row 8 in bounds. W=7: span 7+2-4-1+2 = 6 -> 3, 6 < 8 kept
      max_case("max ceil dil2 10x7 k3 s3 p1", {1, 3, 10, 7}, {{3, 3}}, {{3, 3}}, one, {{2, 2}}, true, {{4, 3}},
               F::Special, L::Strided, L::ChannelsLast),
      // many blocks, channels_last: (10+2-3)/2+1 = 5, (9+2-3)/2+1 = 5; 1850 outputs, 6660 inputs
      max_case("max 2x37x10x9 k3 s2 p1 multi-block", {2, 37, 10, 9}, {{3, 3}}, {{2, 2}}, one, one, false, {{5, 5}},
               F::Special, L::ChannelsLast, L::ChannelsLast),

      // (9+2-3)/2+1 = 5
      avg_case("avg 2x3x9x9 k3 s2 p1 incl", {2, 3, 9, 9}, {{3, 3}}, {{2, 2}}, one, false, true, 0, {{5, 5}},
               F::Random, L::Contiguous, L::Contiguous),
      avg_case("avg 2x3x9x9 k3 s2 p1 excl", {2, 3, 9, 9}, {{3, 3}}, {{2, 2}}, one, false, false, 0, {{5, 5}},
               F::Random, L::ChannelsLast, L::Contiguous),
      // ceil 6x5 k3 s2 p1 -> 4x3 (see max above)
      avg_case("avg ceil 6x5 k3 s2 p1 incl", {1, 4, 6, 5}, {{3, 3}}, {{2, 2}}, one, true, true, 0, {{4, 3}},
               F::Random, L::Strided, L::ChannelsLast),
      avg_case("avg ceil 6x5 k3 s2 p1 excl", {1, 4, 6, 5}, {{3, 3}}, {{2, 2}}, one, true, false, 0, {{4, 3}},
               F::Random, L::Contiguous, L::Strided),
      // ceil, H=8 k3 s2: span 8-2-1+1 = 6 -> 4, 6 < 8 kept (window 3 = rows 6, 7 and one past the end);
      //       W=7: span 5 -> 3, 4 < 7 kept
      avg_case("avg ceil 8x7 k3 s2 incl", {2, 3, 8, 7}, {{3, 3}}, {{2, 2}}, zero, true, true, 0, {{4, 3}},
               F::Random, L::ChannelsLast, L::ChannelsLast),
      // ceil dropped window 5x9 k2 s2 p1 -> 3x5 (see max above)
      avg_case("avg ceil drop 5x9 k2 s2 p1 excl", {2, 2, 5, 9}, {{2, 2}}, {{2, 2}}, one, true, false, 0, {{3, 5}},
               F::Random, L::Contiguous, L::Contiguous),
      // divisor_override, with pad and ceil -> 4x3
      avg_case("avg ceil 6x5 k3 s2 p1 div5", {2, 3, 6, 5}, {{3, 3}}, {{2, 2}}, one, true, true, 5, {{4, 3}},
               F::Random, L::Contiguous, L::ChannelsLast),
      avg_case("avg 9x9 k3 s2 p1 div-3", {1, 2, 9, 9}, {{3, 3}}, {{2, 2}}, one, false, false, -3, {{5, 5}},
               F::Random, L::Strided, L::Contiguous),
      // 1x1 input, kernel 1
      avg_case("avg 1x1 input k1", {3, 2, 1, 1}, one, one, zero, false, true, 0, {{1, 1}}, F::Random,
               L::ChannelsLast, L::Contiguous),
      // kernel = input with pad = kernel/2: (7+6-7)/1+1 = 7, (5+4-5)/1+1 = 5
      avg_case("avg k=input 7x5 p(3,2) excl", {1, 3, 7, 5}, {{7, 5}}, one, {{3, 2}}, false, false, 0, {{7, 5}},
               F::Random, L::Contiguous, L::Contiguous),
      avg_case("avg k=input 7x5 p(3,2) incl", {1, 3, 7, 5}, {{7, 5}}, one, {{3, 2}}, false, true, 0, {{7, 5}},
               F::Random, L::ChannelsLast, L::Strided),
      // stride != kernel, primes: (13+2-2)/3+1 = 5, (11+2-3)/2+1 = 6
      avg_case("avg 13x11 k(2,3) s(3,2) p1 excl", {2, 5, 13, 11}, {{2, 3}}, {{3, 2}}, one, false, false, 0, {{5, 6}},
               F::Random, L::ChannelsLast, L::ChannelsLast),
      // NaN and -inf propagate through the sums.
      // ceil, 7 k3 s2 p1: span 7+2-2-1+1 = 7 -> 4, (4-1)*2 = 6 < 7+1 kept (floor: 4 as well)
      avg_case("avg special 2x4x7x7 k3 s2 p1 ceil excl", {2, 4, 7, 7}, {{3, 3}}, {{2, 2}}, one, true, false, 0,
               {{4, 4}}, F::Special, L::Contiguous, L::Contiguous),

      adaptive_case("adaptive global 1x1 from 7x11", {2, 3, 7, 11}, one, F::Random, L::Contiguous, L::Contiguous),
      adaptive_case("adaptive 3x5 from 7x11", {2, 3, 7, 11}, {{3, 5}}, F::Random, L::ChannelsLast, L::ChannelsLast),
      adaptive_case("adaptive 4x4 from 3x3 (overlap)", {1, 4, 3, 3}, {{4, 4}}, F::Random, L::Strided, L::Contiguous),
      adaptive_case("adaptive 5x3 from 5x3 (identity)", {2, 2, 5, 3}, {{5, 3}}, F::Random, L::Contiguous,
                    L::Strided),
      adaptive_case("adaptive 2x7 from 13x4 (mixed)", {1, 3, 13, 4}, {{2, 7}}, F::Random, L::ChannelsLast,
                    L::Contiguous),
      adaptive_case("adaptive 6x5 from 1x1", {2, 3, 1, 1}, {{6, 5}}, F::Random, L::Contiguous, L::ChannelsLast),
      adaptive_case("adaptive 7x7 from 2x37x17x13 multi-block", {2, 37, 17, 13}, {{7, 7}}, F::Random,
                    L::ChannelsLast, L::ChannelsLast),
  };

  const auto t0 = std::chrono::steady_clock::now();
  check_dividers();
  literal_checks();
  uint32_t seed = 1;
  for (const Case& c : cases) {
    int64_t OH, OW;
    const bool ok = check_out_size(c, &OH, &OW);
    std::printf("-- %s -> %lldx%lld  (x %s, y %s, %s)\n", c.name.c_str(), (long long)OH, (long long)OW,
                layout_name(c.x_layout), layout_name(c.y_layout), fill_name(c.fill));
    if (!ok) continue;
    run_case<float>(c, OH, OW, seed);
    run_case<double>(c, OH, OW, seed);
    run_case<c10::Half>(c, OH, OW, seed);
    run_case<c10::BFloat16>(c, OH, OW, seed);
    ++seed;
  }
  std::printf("%s: %d failure(s), %.1f s\n", g_failures ? "FAILED" : "ALL PASSED", g_failures,
              ms_since(t0) / 1000.0);
  return g_failures ? 1 : 0;
}
