// Argument checks, per-channel parameter handling and the running-statistics
// rules shared by every C++ BatchNorm+ReLU backend (CPU, CUDA, emulation).
#pragma once
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/util/Exception.h>

#include <optional>

#include "cnnkern/activation.h"
#include "conv2d_common.h"

namespace cnnkern {

inline void check_batch_norm_input(const at::Tensor& input) {
  TORCH_CHECK(input.dim() == 4, "cnnkern batch_norm_relu: expected a 4-D input, got ", input.dim(), "-D");
  TORCH_CHECK(at::isFloatingType(input.scalar_type()), "cnnkern batch_norm_relu: expected a floating-point input");
}

inline void check_batch_norm_backward(const at::Tensor& grad_output, const at::Tensor& output, const at::Tensor& input) {
  check_batch_norm_input(input);
  TORCH_CHECK(grad_output.sizes() == input.sizes() && output.sizes() == input.sizes(),
              "cnnkern batch_norm_relu_backward: grad_output and output must have the input's shape");
  TORCH_CHECK(grad_output.scalar_type() == input.scalar_type() && output.scalar_type() == input.scalar_type(),
              "cnnkern batch_norm_relu_backward: grad_output and output must have the input's dtype");
}

// The op's activation argument (cnnkern/activation.h names them in enum order).
inline Act parse_activation(c10::string_view name) {
  static constexpr const char* kNames[] = {"relu", "relu6", "silu", "hardswish", "identity"};
  for (int i = 0; i < 5; ++i)
    if (name == kNames[i]) return static_cast<Act>(i);
  TORCH_CHECK_VALUE(false, "cnnkern batch_norm_relu: unknown activation '", std::string(name),
                    "' (expected relu, relu6, silu, hardswish or identity)");
}

// A per-channel vector as a contiguous accumulator-typed tensor (null if absent).
inline std::optional<at::Tensor> channel_vector(const std::optional<at::Tensor>& t, const at::Tensor& input,
                                                const char* name) {
  if (!t.has_value()) return std::nullopt;
  TORCH_CHECK(t->dim() == 1 && t->size(0) == input.size(1), "cnnkern batch_norm_relu: ", name, " of shape ",
              t->sizes(), " does not match ", input.size(1), " channels");
  TORCH_CHECK(t->device() == input.device(), "cnnkern batch_norm_relu: ", name, " is on a different device");
  return t->to(acc_dtype(input.scalar_type())).contiguous();
}

// Eval mode returns copies of the running statistics (an op's outputs may not alias its inputs).
inline std::pair<at::Tensor, at::Tensor> running_statistics(const std::optional<at::Tensor>& running_mean,
                                                           const std::optional<at::Tensor>& running_var,
                                                           const at::Tensor& input) {
  TORCH_CHECK(running_mean.has_value() && running_var.has_value(),
              "cnnkern batch_norm_relu: running_mean and running_var are required when not training");
  auto mean = channel_vector(running_mean, input, "running_mean")->clone();
  auto var = channel_vector(running_var, input, "running_var")->clone();
  return {mean, var};
}

// ---- Running statistics: nn.BatchNorm2d's rules, written once ------------------
// (kernels/batch_norm.py's finalize kernel implements the same for Triton.)
// In a training forward: num_batches_tracked, when given, is bumped by one; the
// momentum factor f is `momentum`, or 1 / num_batches_tracked after the bump for
// momentum=None (a cumulative average; 0 without a counter, as nn.BatchNorm2d);
// then running = f·batch + (1 - f)·running, the variance unbiased (x M/(M-1),
// M = N·H·W values per channel), computed in the accumulator type and stored in
// the buffers' own dtype (a bf16 module keeps bf16 buffers). An empty batch
// bumps the counter and leaves the statistics, as torch's batch_norm does.

// The update itself, in the accumulator type (the CPU loop below; the GPU
// statistics finalize writes the same expression).
template <typename T, typename F>
T momentum_update(const T& running, const T& batch, const F& factor) {
  return batch * factor + running * (1 - factor);
}

struct RunningUpdate {
  bool mean = false, var = false;  // which buffers to update
  double factor = 0;               // f, when known on the host
  bool cumulative = false;         // f = 1 / num_batches_tracked (after the bump); on the host when it is a CPU tensor
  double unbias = 1;               // M / (M - 1)
};

// Checks the buffers, bumps the counter and decides the update; call before the
// kernels (the CPU backend reads the bumped counter on the host, the GPU
// statistics kernel reads it on the device: no host sync).
inline RunningUpdate start_running_update(const at::Tensor& input, const std::optional<at::Tensor>& running_mean,
                                          const std::optional<at::Tensor>& running_var,
                                          const std::optional<at::Tensor>& num_batches_tracked, bool training,
                                          std::optional<double> momentum) {
  for (const auto* t : {&running_mean, &running_var}) {
    if (!t->has_value()) continue;
    const at::Tensor& r = **t;
    TORCH_CHECK(r.dim() == 1 && r.size(0) == input.size(1), "cnnkern batch_norm_relu: running statistics of shape ",
                r.sizes(), " do not match ", input.size(1), " channels");
    TORCH_CHECK(r.device() == input.device(), "cnnkern batch_norm_relu: running statistics are on a different device");
    TORCH_CHECK(at::isFloatingType(r.scalar_type()),
                "cnnkern batch_norm_relu: running statistics must be floating point");
  }
  RunningUpdate u;
  if (!training) return u;
  if (num_batches_tracked.has_value()) {
    TORCH_CHECK(num_batches_tracked->numel() == 1 && num_batches_tracked->device() == input.device(),
                "cnnkern batch_norm_relu: num_batches_tracked must be one element on the input's device");
    num_batches_tracked->add_(1);
  }
  const int64_t per_channel = input.size(1) > 0 ? input.numel() / input.size(1) : 0;
  if (per_channel == 0) return u;
  TORCH_CHECK(per_channel > 1, "cnnkern batch_norm_relu: expected more than 1 value per channel when training");
  u.mean = running_mean.has_value();
  u.var = running_var.has_value();
  u.unbias = static_cast<double>(per_channel) / static_cast<double>(per_channel - 1);
  if (momentum.has_value()) {
    u.factor = *momentum;
  } else if (num_batches_tracked.has_value() && (u.mean || u.var)) {
    u.cumulative = true;
    if (num_batches_tracked->device().is_cpu())
      u.factor = 1.0 / static_cast<double>(num_batches_tracked->item<int64_t>());
  }
  return u;
}

// CPU: the update as a loop over the channels, in the accumulator type A.
template <typename A>
void finish_running_update_host(const RunningUpdate& u, const std::optional<at::Tensor>& running_mean,
                                const std::optional<at::Tensor>& running_var, const A* batch_mean,
                                const A* batch_var) {
  auto update = [&](const at::Tensor& running, const A* batch, A unbias) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, running.scalar_type(), "cnnkern_bn_running", [&] {
      scalar_t* r = running.data_ptr<scalar_t>();
      const int64_t stride = running.stride(0);
      const A f = static_cast<A>(u.factor);
      for (int64_t c = 0; c < running.size(0); ++c)
        r[c * stride] = static_cast<scalar_t>(momentum_update(static_cast<A>(r[c * stride]), batch[c] * unbias, f));
    });
  };
  if (u.mean) update(*running_mean, batch_mean, A(1));
  if (u.var) update(*running_var, batch_var, static_cast<A>(u.unbias));
}

}  // namespace cnnkern
