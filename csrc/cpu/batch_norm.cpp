// Fused BatchNorm2d + activation (ReLU, ReLU6, SiLU, Hardswish or none) on the CPU.
//
// Statistics: each channel (channels in parallel) folds its N planes one by
// one: a plane's mean and sum of squared deviations are taken in two passes,
// then merged into the channel's running (count, mean, M2) with Chan's
// formula, which keeps the variance accurate even when the mean dwarfs the
// spread. Apply: one pass per element, y = act((x - mean)·scale + bias) with
// scale = weight·invstd (the mean subtracted first, so a large mean cancels
// exactly); the activation is a template argument (cnnkern/activation.h). The
// running statistics (and the counter) are updated inside the op, by one loop
// over the channels after the statistics (batch_norm_common.h's rules). Backward: per channel, one pass
// reduces Σg and Σg·x̂ (g = dy·act'(z): ReLU's and ReLU6's mask read from the
// saved output, SiLU's and Hardswish's derivative at z recomputed from x), one
// more writes dx. Everything accumulates in fp32 (double for double).
// When every tensor's (n, c) plane is one contiguous run (NCHW), the loops run
// over that run with eight partial sums, which lets the compiler vectorise
// them without reassociating a single sum chain; other layouts take the
// general strided loops.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "../ops/batch_norm_common.h"
#include "parallel.h"

namespace cnnkern::cpu {
namespace {


// Visits channel c's elements plane by plane: fn(plane pointer offset base) per n.
struct Planes {
  int64_t N, H, W, sn, sc, sh, sw;
  explicit Planes(const at::Tensor& t)
      : N(t.size(0)), H(t.size(2)), W(t.size(3)), sn(t.stride(0)), sc(t.stride(1)), sh(t.stride(2)),
        sw(t.stride(3)) {}
  int64_t at(int64_t n, int64_t c, int64_t h, int64_t w) const { return n * sn + c * sc + h * sh + w * sw; }
  bool contiguous_planes() const { return sw == 1 && (sh == W || H == 1); }
};

constexpr int kLanes = 8;

// g where keep, else +0, by masking g's bits: a select on the ReLU mask
// compiled to a branch, mispredicted on about half of all elements (5x
// slower than this), and multiplying by the mask would turn a masked inf
// or NaN into NaN.
template <typename A>
A masked(bool keep, A g) {
  using Bits = std::conditional_t<sizeof(A) == 4, uint32_t, uint64_t>;
  Bits bits;
  std::memcpy(&bits, &g, sizeof(A));
  bits &= Bits(0) - static_cast<Bits>(keep);
  std::memcpy(&g, &bits, sizeof(A));
  return g;
}

// The scale both passes use, so the backward's recomputed z is the forward's bit for bit.
template <typename A>
A affine_scale(const A* weight, const A* var, int64_t c, double eps) {
  return (weight ? weight[c] : A(1)) * (A(1) / std::sqrt(var[c] + static_cast<A>(eps)));
}

// dL/dz at one element. y is the saved output, x the input (z = (x - mu)·scale + beta,
// rounded to T as the forward's was); each activation reads only what it needs.
template <Act kAct, typename T, typename A>
A grad_at(A x, A y, A g, A mu, A scale, A beta) {
  if constexpr (kAct == Act::Relu) {
    return masked(y > A(0), g);
  } else if constexpr (kAct == Act::Relu6) {
    return masked((y > A(0)) & (y < A(6)), g);
  } else if constexpr (grad_from_pre_activation<kAct>) {
    return activation_grad<kAct>(static_cast<A>(static_cast<T>((x - mu) * scale + beta)), g);
  } else {
    return g;
  }
}

template <typename A>
A lanes_total(const A (&lanes)[kLanes]) {
  A total = 0;
  for (A v : lanes) total += v;
  return total;
}

// Σ x and Σ (x - mean)² over one contiguous run.
template <typename T, typename A>
A run_sum(const T* x, int64_t len) {
  A lanes[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= len; i += kLanes)
    for (int j = 0; j < kLanes; ++j) lanes[j] += static_cast<A>(x[i + j]);
  for (; i < len; ++i) lanes[0] += static_cast<A>(x[i]);
  return lanes_total(lanes);
}

template <typename T, typename A>
A run_m2(const T* x, int64_t len, A mean) {
  A lanes[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= len; i += kLanes)
    for (int j = 0; j < kLanes; ++j) {
      const A d = static_cast<A>(x[i + j]) - mean;
      lanes[j] += d * d;
    }
  for (; i < len; ++i) {
    const A d = static_cast<A>(x[i]) - mean;
    lanes[0] += d * d;
  }
  return lanes_total(lanes);
}

template <typename T, typename A>
void channel_statistics(const T* x, const Planes& p, int64_t c, A* mean_out, A* var_out) {
  A count = 0, mean = 0, m2 = 0;
  const A plane_count = static_cast<A>(p.H * p.W);
  for (int64_t n = 0; n < p.N; ++n) {
    A plane_mean, plane_m2 = 0;
    if (p.contiguous_planes()) {
      const T* run = x + p.at(n, c, 0, 0);
      plane_mean = run_sum<T, A>(run, p.H * p.W) / plane_count;
      plane_m2 = run_m2<T, A>(run, p.H * p.W, plane_mean);
    } else {
      A sum = 0;
      for (int64_t h = 0; h < p.H; ++h)
        for (int64_t w = 0; w < p.W; ++w) sum += static_cast<A>(x[p.at(n, c, h, w)]);
      plane_mean = sum / plane_count;
      for (int64_t h = 0; h < p.H; ++h)
        for (int64_t w = 0; w < p.W; ++w) {
          const A d = static_cast<A>(x[p.at(n, c, h, w)]) - plane_mean;
          plane_m2 += d * d;
        }
    }
    // Chan et al.: merge (count, mean, m2) with the plane's statistics.
    const A total = count + plane_count, delta = plane_mean - mean;
    mean += delta * plane_count / total;
    m2 += plane_m2 + delta * delta * count * plane_count / total;
    count = total;
  }
  *mean_out = mean;
  *var_out = m2 / count;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> batch_norm_relu(
    const at::Tensor& input, const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias,
    const std::optional<at::Tensor>& running_mean, const std::optional<at::Tensor>& running_var,
    const std::optional<at::Tensor>& num_batches_tracked, bool training, std::optional<double> momentum,
    double eps, c10::string_view activation) {
  check_batch_norm_input(input);
  const Act act = parse_activation(activation);
  const auto w = channel_vector(weight, input, "weight");
  const auto b = channel_vector(bias, input, "bias");
  const int64_t C = input.size(1);
  const RunningUpdate update =
      start_running_update(input, running_mean, running_var, num_batches_tracked, training, momentum);
  at::Tensor mean, var;
  if (training) {
    mean = at::empty({C}, input.options().dtype(acc_dtype(input.scalar_type())));
    var = at::empty({C}, input.options().dtype(acc_dtype(input.scalar_type())));
  } else {
    std::tie(mean, var) = running_statistics(running_mean, running_var, input);
  }
  at::Tensor y = at::empty(input.sizes(), input.options().memory_format(input.suggest_memory_format()));
  if (input.numel() == 0) {
    if (training) mean.fill_(NAN), var.fill_(NAN);
    return {y, mean, var};
  }
  CNNKERN_DISPATCH_FLOATS(input.scalar_type(), "cnnkern_bn_relu_cpu", [&] {
    using A = acc_t<scalar_t>;
    const scalar_t* x = input.const_data_ptr<scalar_t>();
    const Planes px(input), py(y);
    A* mean_p = mean.data_ptr<A>();
    A* var_p = var.data_ptr<A>();
    const A* w_p = w ? w->const_data_ptr<A>() : nullptr;
    const A* b_p = b ? b->const_data_ptr<A>() : nullptr;
    scalar_t* out = y.data_ptr<scalar_t>();
    with_activation(act, [&](auto a) {
      constexpr Act kAct = decltype(a)::value;
      parallel_over(C, input.numel() / std::max<int64_t>(C, 1), [&](int64_t begin, int64_t end) {
        for (int64_t c = begin; c < end; ++c) {
          if (training) channel_statistics(x, px, c, &mean_p[c], &var_p[c]);
          const A mu = mean_p[c];
          const A scale = affine_scale(w_p, var_p, c, eps);
          const A beta = b_p ? b_p[c] : A(0);
          if (px.contiguous_planes() && py.contiguous_planes()) {
            for (int64_t n = 0; n < px.N; ++n) {
              const scalar_t* src = x + px.at(n, c, 0, 0);
              scalar_t* dst = out + py.at(n, c, 0, 0);
              for (int64_t i = 0; i < px.H * px.W; ++i)
                dst[i] = static_cast<scalar_t>(activate<kAct>((static_cast<A>(src[i]) - mu) * scale + beta));
            }
            continue;
          }
          for (int64_t n = 0; n < px.N; ++n)
            for (int64_t h = 0; h < px.H; ++h)
              for (int64_t ww = 0; ww < px.W; ++ww)
                out[py.at(n, c, h, ww)] = static_cast<scalar_t>(
                    activate<kAct>((static_cast<A>(x[px.at(n, c, h, ww)]) - mu) * scale + beta));
        }
      });
    });
    finish_running_update_host<A>(update, running_mean, running_var, mean_p, var_p);
  });
  return {y, mean, var};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> batch_norm_relu_backward(
    const at::Tensor& grad_output, const at::Tensor& output, const at::Tensor& input, const at::Tensor& mean,
    const at::Tensor& var, const std::optional<at::Tensor>& weight, bool training, double eps,
    const std::optional<at::Tensor>& bias, c10::string_view activation) {
  check_batch_norm_backward(grad_output, output, input);
  const Act act = parse_activation(activation);
  const auto w = channel_vector(weight, input, "weight");
  const auto b = channel_vector(bias, input, "bias");
  const auto m = channel_vector(mean, input, "mean");
  const auto v = channel_vector(var, input, "var");
  const int64_t C = input.size(1);
  at::Tensor dx = at::empty(input.sizes(), input.options().memory_format(input.suggest_memory_format()));
  at::Tensor grad_weight = at::zeros({C}, input.options().dtype(acc_dtype(input.scalar_type())));
  at::Tensor grad_bias = at::zeros({C}, input.options().dtype(acc_dtype(input.scalar_type())));
  if (input.numel() == 0) return {dx, grad_weight, grad_bias};
  CNNKERN_DISPATCH_FLOATS(input.scalar_type(), "cnnkern_bn_relu_bwd_cpu", [&] {
    using A = acc_t<scalar_t>;
    const scalar_t* x = input.const_data_ptr<scalar_t>();
    const scalar_t* y = output.const_data_ptr<scalar_t>();
    const scalar_t* dy = grad_output.const_data_ptr<scalar_t>();
    const Planes px(input), py(output), pdy(grad_output), pdx(dx);
    const A* w_p = w ? w->const_data_ptr<A>() : nullptr;
    const A* b_p = b ? b->const_data_ptr<A>() : nullptr;
    const A* mean_p = m->const_data_ptr<A>();
    const A* var_p = v->const_data_ptr<A>();
    A* gw = grad_weight.data_ptr<A>();
    A* gb = grad_bias.data_ptr<A>();
    scalar_t* out = dx.data_ptr<scalar_t>();
    const A count = static_cast<A>(px.N * px.H * px.W);
    with_activation(act, [&](auto a) {
      constexpr Act kAct = decltype(a)::value;
      parallel_over(C, input.numel() / std::max<int64_t>(C, 1), [&](int64_t begin, int64_t end) {
        std::vector<A> g_run;  // one plane's dL/dz (fast path)
        for (int64_t c = begin; c < end; ++c) {
          const A invstd = A(1) / std::sqrt(var_p[c] + static_cast<A>(eps));
          const A mu = mean_p[c];
          const A scale = affine_scale(w_p, var_p, c, eps);
          const A beta = b_p ? b_p[c] : A(0);
          auto g_of = [&](scalar_t xv, scalar_t yv, scalar_t gv) {
            return grad_at<kAct, scalar_t>(static_cast<A>(xv), static_cast<A>(yv), static_cast<A>(gv), mu, scale,
                                           beta);
          };
          if (px.contiguous_planes() && py.contiguous_planes() && pdy.contiguous_planes() &&
              pdx.contiguous_planes()) {
            const int64_t len = px.H * px.W;
            A lanes_g[kLanes] = {}, lanes_gx[kLanes] = {};
            g_run.resize(len);
            for (int64_t n = 0; n < px.N; ++n) {
              const scalar_t* xs = x + px.at(n, c, 0, 0);
              const scalar_t* ys = y + py.at(n, c, 0, 0);
              const scalar_t* gs = dy + pdy.at(n, c, 0, 0);
              A* g = g_run.data();
              for (int64_t i = 0; i < len; ++i) g[i] = g_of(xs[i], ys[i], gs[i]);
              int64_t i = 0;
              for (; i + kLanes <= len; i += kLanes)
                for (int j = 0; j < kLanes; ++j) {
                  lanes_g[j] += g[i + j];
                  lanes_gx[j] += g[i + j] * (static_cast<A>(xs[i + j]) - mu);
                }
              for (; i < len; ++i) {
                lanes_g[0] += g[i];
                lanes_gx[0] += g[i] * (static_cast<A>(xs[i]) - mu);
              }
            }
            const A sum_g = lanes_total(lanes_g), sum_gx = lanes_total(lanes_gx) * invstd;
            gb[c] = sum_g;
            gw[c] = sum_gx;
            // dx = scale * (g - mean(g) - x̂ * mean(g x̂)), with x̂ = (x - mu) * invstd folded into k.
            const A g_mean = training ? sum_g / count : A(0);
            const A k = training ? sum_gx / count * invstd : A(0);
            for (int64_t n = 0; n < px.N; ++n) {
              const scalar_t* xs = x + px.at(n, c, 0, 0);
              const scalar_t* ys = y + py.at(n, c, 0, 0);
              const scalar_t* gs = dy + pdy.at(n, c, 0, 0);
              scalar_t* ds = out + pdx.at(n, c, 0, 0);
              for (int64_t i = 0; i < len; ++i) {
                const A g = g_of(xs[i], ys[i], gs[i]);
                ds[i] = static_cast<scalar_t>(scale * (g - g_mean - (static_cast<A>(xs[i]) - mu) * k));
              }
            }
            continue;
          }
          auto g_at = [&](int64_t n, int64_t h, int64_t ww) {
            return g_of(x[px.at(n, c, h, ww)], y[py.at(n, c, h, ww)], dy[pdy.at(n, c, h, ww)]);
          };
          A sum_g = 0, sum_gx = 0;
          for (int64_t n = 0; n < px.N; ++n)
            for (int64_t h = 0; h < px.H; ++h)
              for (int64_t ww = 0; ww < px.W; ++ww) {
                const A g = g_at(n, h, ww);
                sum_g += g;
                sum_gx += g * (static_cast<A>(x[px.at(n, c, h, ww)]) - mu) * invstd;
              }
          gb[c] = sum_g;
          gw[c] = sum_gx;
          for (int64_t n = 0; n < px.N; ++n)
            for (int64_t h = 0; h < px.H; ++h)
              for (int64_t ww = 0; ww < px.W; ++ww) {
                A d = g_at(n, h, ww);
                if (training) {
                  const A xhat = (static_cast<A>(x[px.at(n, c, h, ww)]) - mu) * invstd;
                  d -= sum_g / count + xhat * sum_gx / count;
                }
                out[pdx.at(n, c, h, ww)] = static_cast<scalar_t>(scale * d);
              }
        }
      });
    });
  });
  return {dx, grad_weight, grad_bias};
}

}  // namespace

TORCH_LIBRARY_IMPL(cnnkern, CPU, m) {
  m.impl("batch_norm_relu", &batch_norm_relu);
  m.impl("batch_norm_relu_backward", &batch_norm_relu_backward);
}

}  // namespace cnnkern::cpu
