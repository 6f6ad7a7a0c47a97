// Argument checks and per-channel parameter handling shared by every C++
// BatchNorm+ReLU backend (CPU, CUDA, emulation).
#pragma once
#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <optional>

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

}  // namespace cnnkern
