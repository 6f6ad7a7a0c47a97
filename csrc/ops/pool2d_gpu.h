// Torch-facing wrappers of the pooling GPU launchers, shared by the CUDA build
// and its host emulation exactly as conv2d_gpu.h is (same includer contract).
#pragma once
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include "cnnkern/pool2d_launch.h"
#include "pool2d_common.h"

namespace cnnkern::CNNKERN_GPU_NS {

gpu_stream_t current_stream(const at::Tensor& t);

// The launchers address dy (and indices) through one set of strides: lay the
// gradient out like the forward output.
inline at::Tensor like_output(const at::Tensor& grad_output, const at::Tensor& input) {
  return grad_output.contiguous(input.suggest_memory_format());
}

inline std::tuple<at::Tensor, at::Tensor> max_pool2d_op(const at::Tensor& input, at::IntArrayRef kernel,
                                                        at::IntArrayRef stride, at::IntArrayRef padding,
                                                        at::IntArrayRef dilation, bool ceil_mode) {
  Pool2dShape s = pool2d_shape(input, kernel, stride, padding, dilation, ceil_mode);
  at::Tensor y = empty_pool_output(input, s, input.scalar_type());
  at::Tensor indices = empty_pool_output(input, s, at::kLong);
  if (y.numel() == 0) return {y, indices};
  fill_strides(s.y_stride, y);
  CNNKERN_DISPATCH_FLOATS(input.scalar_type(), "cnnkern_max_pool2d_gpu", [&] {
    max_pool2d_forward<scalar_t>(s, input.const_data_ptr<scalar_t>(), y.data_ptr<scalar_t>(),
                                 indices.data_ptr<int64_t>(), current_stream(input));
  });
  return {y, indices};
}

inline at::Tensor max_pool2d_backward_op(const at::Tensor& grad_output, const at::Tensor& input,
                                         const at::Tensor& indices, at::IntArrayRef kernel, at::IntArrayRef stride,
                                         at::IntArrayRef padding, at::IntArrayRef dilation, bool ceil_mode) {
  Pool2dShape s = pool2d_shape(input, kernel, stride, padding, dilation, ceil_mode);
  check_pool_grad(grad_output, input, s);
  TORCH_CHECK(indices.sizes() == grad_output.sizes() && indices.scalar_type() == at::kLong,
              "cnnkern max_pool2d_backward: indices must be int64 with grad_output's shape");
  at::Tensor dx = at::empty(input.sizes(), input.options().memory_format(input.suggest_memory_format()));
  if (dx.numel() == 0) return dx;
  const at::Tensor dy = like_output(grad_output, input);
  const at::Tensor idx = indices.contiguous(input.suggest_memory_format());
  fill_strides(s.x_stride, dx);
  fill_strides(s.y_stride, dy);
  CNNKERN_DISPATCH_FLOATS(input.scalar_type(), "cnnkern_max_pool2d_backward_gpu", [&] {
    max_pool2d_backward<scalar_t>(s, dy.const_data_ptr<scalar_t>(), idx.const_data_ptr<int64_t>(),
                                  dx.data_ptr<scalar_t>(), current_stream(input));
  });
  return dx;
}

inline int64_t divisor_value(std::optional<int64_t> divisor_override) {
  TORCH_CHECK(!divisor_override.has_value() || *divisor_override != 0, "cnnkern avg_pool2d: divisor must be not zero");
  return divisor_override.value_or(0);
}

inline at::Tensor avg_pool2d_op(const at::Tensor& input, at::IntArrayRef kernel, at::IntArrayRef stride,
                                at::IntArrayRef padding, bool ceil_mode, bool count_include_pad,
                                std::optional<int64_t> divisor_override) {
  Pool2dShape s = pool2d_shape(input, kernel, stride, padding, {1, 1}, ceil_mode);
  const int64_t divisor = divisor_value(divisor_override);
  at::Tensor y = empty_pool_output(input, s, input.scalar_type());
  if (y.numel() == 0) return y;
  fill_strides(s.y_stride, y);
  CNNKERN_DISPATCH_FLOATS(input.scalar_type(), "cnnkern_avg_pool2d_gpu", [&] {
    avg_pool2d_forward<scalar_t>(s, input.const_data_ptr<scalar_t>(), y.data_ptr<scalar_t>(), count_include_pad,
                                 divisor, current_stream(input));
  });
  return y;
}

inline at::Tensor avg_pool2d_backward_op(const at::Tensor& grad_output, const at::Tensor& input,
                                         at::IntArrayRef kernel, at::IntArrayRef stride, at::IntArrayRef padding,
                                         bool ceil_mode, bool count_include_pad,
                                         std::optional<int64_t> divisor_override) {
  Pool2dShape s = pool2d_shape(input, kernel, stride, padding, {1, 1}, ceil_mode);
  check_pool_grad(grad_output, input, s);
  const int64_t divisor = divisor_value(divisor_override);
  at::Tensor dx = at::empty(input.sizes(), input.options().memory_format(input.suggest_memory_format()));
  if (dx.numel() == 0) return dx;
  const at::Tensor dy = like_output(grad_output, input);
  fill_strides(s.x_stride, dx);
  fill_strides(s.y_stride, dy);
  CNNKERN_DISPATCH_FLOATS(input.scalar_type(), "cnnkern_avg_pool2d_backward_gpu", [&] {
    avg_pool2d_backward<scalar_t>(s, dy.const_data_ptr<scalar_t>(), dx.data_ptr<scalar_t>(), count_include_pad,
                                  divisor, current_stream(input));
  });
  return dx;
}

inline at::Tensor adaptive_avg_pool2d_op(const at::Tensor& input, at::IntArrayRef output_size) {
  Pool2dShape s = adaptive_pool2d_shape(input, output_size);
  at::Tensor y = empty_pool_output(input, s, input.scalar_type());
  if (y.numel() == 0) return y;
  fill_strides(s.y_stride, y);
  CNNKERN_DISPATCH_FLOATS(input.scalar_type(), "cnnkern_adaptive_avg_pool2d_gpu", [&] {
    adaptive_avg_pool2d_forward<scalar_t>(s, input.const_data_ptr<scalar_t>(), y.data_ptr<scalar_t>(),
                                          current_stream(input));
  });
  return y;
}

inline at::Tensor adaptive_avg_pool2d_backward_op(const at::Tensor& grad_output, const at::Tensor& input) {
  TORCH_CHECK(grad_output.dim() == 4, "cnnkern adaptive_avg_pool2d_backward: expected a 4-D grad_output");
  Pool2dShape s = adaptive_pool2d_shape(input, {grad_output.size(2), grad_output.size(3)});
  check_pool_grad(grad_output, input, s);
  at::Tensor dx = at::empty(input.sizes(), input.options().memory_format(input.suggest_memory_format()));
  if (dx.numel() == 0) return dx;
  const at::Tensor dy = like_output(grad_output, input);
  fill_strides(s.x_stride, dx);
  fill_strides(s.y_stride, dy);
  CNNKERN_DISPATCH_FLOATS(input.scalar_type(), "cnnkern_adaptive_avg_pool2d_backward_gpu", [&] {
    adaptive_avg_pool2d_backward<scalar_t>(s, dy.const_data_ptr<scalar_t>(), dx.data_ptr<scalar_t>(),
                                           current_stream(input));
  });
  return dx;
}

inline void register_pool2d(torch::Library& m) {
  m.impl("max_pool2d", &max_pool2d_op);
  m.impl("max_pool2d_backward", &max_pool2d_backward_op);
  m.impl("avg_pool2d", &avg_pool2d_op);
  m.impl("avg_pool2d_backward", &avg_pool2d_backward_op);
  m.impl("adaptive_avg_pool2d", &adaptive_avg_pool2d_op);
  m.impl("adaptive_avg_pool2d_backward", &adaptive_avg_pool2d_backward_op);
}

}  // namespace cnnkern::CNNKERN_GPU_NS
