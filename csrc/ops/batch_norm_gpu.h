// Torch-facing wrappers of the fused BatchNorm+ReLU GPU launchers, shared by
// the CUDA build and its host emulation (same includer contract as conv2d_gpu.h).
#pragma once
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <cmath>

#include "batch_norm_common.h"
#include "cnnkern/batch_norm_launch.h"
#include "conv2d_common.h"

namespace cnnkern::CNNKERN_GPU_NS {

gpu_stream_t current_stream(const at::Tensor& t);

template <typename A>
const A* ptr_or_null(const std::optional<at::Tensor>& t) {
  return t.has_value() ? t->const_data_ptr<A>() : nullptr;
}

// The running statistics as the statistics finalize updates them (null
// buffers: no update). The counter is read on the device when it is int64;
// another dtype is read here once (a host sync; nn.BatchNorm2d's is int64).
inline BnRunning running_update_args(const RunningUpdate& u, const std::optional<at::Tensor>& running_mean,
                                     const std::optional<at::Tensor>& running_var,
                                     const std::optional<at::Tensor>& num_batches_tracked) {
  auto type_of = [](const at::Tensor& t) {
    switch (t.scalar_type()) {
      case at::kDouble: return BnFloat::Double;
      case at::kHalf: return BnFloat::Half;
      case at::kBFloat16: return BnFloat::BFloat16;
      case at::kFloat: return BnFloat::Float;
      default: TORCH_CHECK(false, "cnnkern batch_norm_relu: running statistics of dtype ", t.scalar_type());
    }
  };
  BnRunning r;
  if (u.mean) r.mean = running_mean->data_ptr(), r.mean_type = type_of(*running_mean), r.mean_stride = running_mean->stride(0);
  if (u.var) r.var = running_var->data_ptr(), r.var_type = type_of(*running_var), r.var_stride = running_var->stride(0);
  r.momentum = u.factor;
  if (u.cumulative) {
    if (num_batches_tracked->scalar_type() == at::kLong)
      r.cumulative = true, r.count = num_batches_tracked->const_data_ptr<int64_t>();
    else
      r.momentum = 1.0 / num_batches_tracked->item<double>();
  }
  return r;
}

// Training also updates the running statistics, inside the statistics kernels.
inline std::tuple<at::Tensor, at::Tensor, at::Tensor> batch_norm_relu_op(
    const at::Tensor& input, const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias,
    const std::optional<at::Tensor>& running_mean, const std::optional<at::Tensor>& running_var,
    const std::optional<at::Tensor>& num_batches_tracked, bool training, std::optional<double> momentum,
    double eps, c10::string_view activation) {
  check_batch_norm_input(input);
  const Act act = parse_activation(activation);
  const auto w = channel_vector(weight, input, "weight");
  const auto b = channel_vector(bias, input, "bias");
  const auto acc = acc_dtype(input.scalar_type());
  const RunningUpdate update =
      start_running_update(input, running_mean, running_var, num_batches_tracked, training, momentum);
  at::Tensor mean, var;
  if (training) {
    mean = at::empty({input.size(1)}, input.options().dtype(acc));
    var = at::empty({input.size(1)}, input.options().dtype(acc));
  } else {
    std::tie(mean, var) = running_statistics(running_mean, running_var, input);
  }
  at::Tensor y = at::empty(input.sizes(), input.options().memory_format(input.suggest_memory_format()));
  if (input.numel() == 0) {
    if (training) mean.fill_(NAN), var.fill_(NAN);
    return {y, mean, var};
  }
  BnShape s{input.size(0), input.size(1), input.size(2), input.size(3)};
  fill_strides(s.x_stride, input);
  fill_strides(s.y_stride, y);
  CNNKERN_DISPATCH_FLOATS(input.scalar_type(), "cnnkern_bn_relu_gpu", [&] {
    using A = acc_t<scalar_t>;
    if (training) {
      at::Tensor workspace = at::empty({batch_norm_stats_workspace(s)}, input.options().dtype(acc));
      batch_norm_stats<scalar_t>(s, input.const_data_ptr<scalar_t>(), mean.data_ptr<A>(), var.data_ptr<A>(),
                                 workspace.data_ptr<A>(),
                                 running_update_args(update, running_mean, running_var, num_batches_tracked),
                                 current_stream(input));
    }
    batch_norm_relu_apply<scalar_t>(s, input.const_data_ptr<scalar_t>(), mean.const_data_ptr<A>(),
                                    var.const_data_ptr<A>(), ptr_or_null<A>(w), ptr_or_null<A>(b), eps, act,
                                    y.data_ptr<scalar_t>(), current_stream(input));
  });
  return {y, mean, var};
}

inline std::tuple<at::Tensor, at::Tensor, at::Tensor> batch_norm_relu_backward_op(
    const at::Tensor& grad_output, const at::Tensor& output, const at::Tensor& input, const at::Tensor& mean,
    const at::Tensor& var, const std::optional<at::Tensor>& weight, bool training, double eps,
    const std::optional<at::Tensor>& bias, c10::string_view activation) {
  check_batch_norm_backward(grad_output, output, input);
  const Act act = parse_activation(activation);
  const auto w = channel_vector(weight, input, "weight");
  const auto b = channel_vector(bias, input, "bias");
  const auto m = channel_vector(mean, input, "mean");
  const auto v = channel_vector(var, input, "var");
  const auto acc = acc_dtype(input.scalar_type());
  const auto format = input.suggest_memory_format();
  at::Tensor dx = at::empty(input.sizes(), input.options().memory_format(format));
  at::Tensor grad_weight = at::zeros({input.size(1)}, input.options().dtype(acc));
  at::Tensor grad_bias = at::zeros({input.size(1)}, input.options().dtype(acc));
  if (input.numel() == 0) return {dx, grad_weight, grad_bias};
  const at::Tensor y = output.contiguous(format);  // the launcher reads y and writes dx through one set of strides
  BnShape s{input.size(0), input.size(1), input.size(2), input.size(3)};
  fill_strides(s.x_stride, input);
  fill_strides(s.y_stride, dx);
  fill_strides(s.dy_stride, grad_output);
  CNNKERN_DISPATCH_FLOATS(input.scalar_type(), "cnnkern_bn_relu_bwd_gpu", [&] {
    using A = acc_t<scalar_t>;
    at::Tensor workspace = at::empty({batch_norm_backward_workspace(s)}, input.options().dtype(acc));
    batch_norm_relu_backward<scalar_t>(s, grad_output.const_data_ptr<scalar_t>(), y.const_data_ptr<scalar_t>(),
                                       input.const_data_ptr<scalar_t>(), m->const_data_ptr<A>(),
                                       v->const_data_ptr<A>(), ptr_or_null<A>(w), ptr_or_null<A>(b), eps, act, training,
                                       dx.data_ptr<scalar_t>(), grad_weight.data_ptr<A>(), grad_bias.data_ptr<A>(),
                                       workspace.data_ptr<A>(), current_stream(input));
  });
  return {dx, grad_weight, grad_bias};
}

inline void register_batch_norm(torch::Library& m) {
  m.impl("batch_norm_relu", &batch_norm_relu_op);
  m.impl("batch_norm_relu_backward", &batch_norm_relu_backward_op);
}

}  // namespace cnnkern::CNNKERN_GPU_NS
