// Torch-facing wrappers of the Conv2d GPU launchers, shared by the real CUDA
// build (csrc/cuda/conv2d_ops.cpp, dispatch key CUDA, namespace cnnkern) and
// its host emulation (csrc/emu/conv2d_ops.cpp, key CPU, namespace cnnkern_emu).
// The includer defines CNNKERN_GPU_NS and `gpu_stream_t current_stream(const at::Tensor&)`
// before including this file.
#pragma once
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <algorithm>
#include <iterator>

#include "cnnkern/conv2d_launch.h"
#include "conv2d_common.h"

namespace cnnkern::CNNKERN_GPU_NS {

gpu_stream_t current_stream(const at::Tensor& t);

// t itself when its channels are contiguous (and its other strides whole
// 16-byte multiples), else a channels_last copy.
inline at::Tensor channels_inner(const at::Tensor& t) {
  const bool ok = t.stride(1) == 1 && t.stride(0) % 8 == 0 && t.stride(2) % 8 == 0 && t.stride(3) % 8 == 0;
  return ok ? t : t.contiguous(at::MemoryFormat::ChannelsLast);
}

inline at::Tensor conv2d_op(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                            at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups) {
  Conv2dShape s = conv2d_shape(input, weight, stride, padding, dilation, groups);
  check_bias(bias, weight);
  at::Tensor y = at::empty({s.N, s.K, s.P, s.Q}, input.options().memory_format(conv2d_memory_format(input, weight)));
  if (y.numel() == 0) return y;
  fill_strides(s.y_stride, y);
  const std::optional<at::Tensor> b = bias.has_value() ? std::optional(bias->contiguous()) : std::nullopt;
  // fp16/bf16 with whole 16-byte channel chunks run on tensor cores, which gather
  // channels_last x and weight (copied here when they are not: one read and one
  // write each, small beside the GEMM); y keeps torch's memory format.
  const auto dtype = input.scalar_type();
  const bool tensor_cores = (dtype == at::kHalf || dtype == at::kBFloat16) && s.c_per_group() % 8 == 0;
  const at::Tensor x = tensor_cores ? channels_inner(input) : input;
  const at::Tensor w = tensor_cores ? channels_inner(weight) : weight;
  fill_strides(s.x_stride, x);
  fill_strides(s.w_stride, w);
  CNNKERN_DISPATCH_FLOATS(input.scalar_type(), "cnnkern_conv2d_gpu", [&] {
    conv2d_forward<scalar_t>(s, x.const_data_ptr<scalar_t>(), w.const_data_ptr<scalar_t>(),
                             b.has_value() ? b->const_data_ptr<scalar_t>() : nullptr, y.data_ptr<scalar_t>(),
                             current_stream(input));
  });
  return y;
}

inline at::Tensor conv2d_backward_input_op(const at::Tensor& grad_output, const at::Tensor& input,
                                           const at::Tensor& weight, at::IntArrayRef stride, at::IntArrayRef padding,
                                           at::IntArrayRef dilation, int64_t groups) {
  Conv2dShape s = conv2d_shape(input, weight, stride, padding, dilation, groups);
  check_grad_output(grad_output, input, s);
  at::Tensor dx = at::empty(input.sizes(), input.options().memory_format(conv2d_memory_format(input, weight)));
  if (dx.numel() == 0) return dx;
  if (grad_output.numel() == 0) return dx.zero_();
  fill_strides(s.x_stride, dx);
  fill_strides(s.y_stride, grad_output);
  const auto dtype = input.scalar_type();
  if ((dtype == at::kHalf || dtype == at::kBFloat16) && s.stride_h == 1 && s.stride_w == 1 &&
      s.k_per_group() % 8 == 0) {
    // With stride 1 the input gradient is itself a convolution: of dy, padded by
    // dil*(R-1) - pad, through the weight with its taps flipped and its channel
    // roles swapped, W'[g c][k][r][s] = W[g k][c][R-1-r][S-1-s]. That runs on the
    // forward's tensor-core kernel. One copy packs W as (g, c, r, s, k), the
    // reduction over k contiguous; the flip is negative tap strides from the
    // last tap.
    const at::Tensor dy = channels_inner(grad_output);
    const int64_t k_g = s.k_per_group();
    const at::Tensor w_t =
        weight.view({s.groups, k_g, s.c_per_group(), s.R, s.S}).permute({0, 2, 3, 4, 1}).contiguous();
    Conv2dShape t = s;
    t.C = s.K, t.H = s.P, t.W = s.Q, t.K = s.C, t.P = s.H, t.Q = s.W;
    t.pad_h = s.dil_h * (s.R - 1) - s.pad_h;
    t.pad_w = s.dil_w * (s.S - 1) - s.pad_w;
    fill_strides(t.x_stride, dy);
    const int64_t w_t_stride[4] = {s.R * s.S * k_g, 1, -s.S * k_g, -k_g};
    std::copy(std::begin(w_t_stride), std::end(w_t_stride), std::begin(t.w_stride));
    const int64_t last_tap = (s.R - 1) * s.S * k_g + (s.S - 1) * k_g;
    std::copy(std::begin(s.x_stride), std::end(s.x_stride), std::begin(t.y_stride));
    const void* w_last = static_cast<const char*>(w_t.const_data_ptr()) + last_tap * w_t.element_size();
    if (conv2d_forward_uses_tensor_cores(t, dy.const_data_ptr(), w_last)) {
      CNNKERN_DISPATCH_FLOATS(dtype, "cnnkern_conv2d_dgrad_gpu", [&] {
        conv2d_forward<scalar_t>(t, dy.const_data_ptr<scalar_t>(), static_cast<const scalar_t*>(w_last), nullptr,
                                 dx.data_ptr<scalar_t>(), current_stream(input));
      });
      return dx;
    }
  }
  CNNKERN_DISPATCH_FLOATS(input.scalar_type(), "cnnkern_conv2d_dgrad_gpu", [&] {
    conv2d_backward_input<scalar_t>(s, grad_output.const_data_ptr<scalar_t>(), weight.const_data_ptr<scalar_t>(),
                                    dx.data_ptr<scalar_t>(), current_stream(input));
  });
  return dx;
}

inline at::Tensor conv2d_backward_weight_op(const at::Tensor& grad_output, const at::Tensor& input,
                                            const at::Tensor& weight, at::IntArrayRef stride, at::IntArrayRef padding,
                                            at::IntArrayRef dilation, int64_t groups) {
  Conv2dShape s = conv2d_shape(input, weight, stride, padding, dilation, groups);
  check_grad_output(grad_output, input, s);
  at::Tensor dw = at::empty(weight.sizes(), weight.options().memory_format(weight.suggest_memory_format()));
  if (dw.numel() == 0) return dw;
  if (s.N == 0) return dw.zero_();
  fill_strides(s.w_stride, dw);
  // fp16/bf16 with whole 16-byte channel chunks on both sides run on tensor
  // cores, which gather channels_last dy and x (copied here when they are not).
  const auto dtype = input.scalar_type();
  const bool tensor_cores = (dtype == at::kHalf || dtype == at::kBFloat16) && s.c_per_group() % 8 == 0 &&
                            s.k_per_group() % 8 == 0;
  const at::Tensor dy = tensor_cores ? channels_inner(grad_output) : grad_output;
  const at::Tensor x = tensor_cores ? channels_inner(input) : input;
  fill_strides(s.y_stride, dy);
  fill_strides(s.x_stride, x);
  const auto acc = acc_dtype(input.scalar_type());
  at::Tensor workspace = at::zeros({dw.numel()}, input.options().dtype(acc));
  CNNKERN_DISPATCH_FLOATS(input.scalar_type(), "cnnkern_conv2d_wgrad_gpu", [&] {
    conv2d_backward_weight<scalar_t>(s, dy.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(),
                                     dw.data_ptr<scalar_t>(), workspace.data_ptr<acc_t<scalar_t>>(),
                                     at::globalContext().deterministicAlgorithms(), current_stream(input));
  });
  return dw;
}

inline at::Tensor conv2d_backward_bias_op(const at::Tensor& grad_output) {
  TORCH_CHECK(grad_output.dim() == 4, "cnnkern conv2d_backward_bias: expected a 4-D grad_output");
  at::Tensor db = at::empty({grad_output.size(1)}, grad_output.options());
  if (db.numel() == 0) return db;
  if (grad_output.numel() == 0) return db.zero_();
  Conv2dShape s{};
  s.N = grad_output.size(0);
  s.K = grad_output.size(1);
  s.P = grad_output.size(2);
  s.Q = grad_output.size(3);
  s.groups = 1;
  fill_strides(s.y_stride, grad_output);
  CNNKERN_DISPATCH_FLOATS(grad_output.scalar_type(), "cnnkern_conv2d_bgrad_gpu", [&] {
    conv2d_backward_bias<scalar_t>(s, grad_output.const_data_ptr<scalar_t>(), db.data_ptr<scalar_t>(),
                                   current_stream(grad_output));
  });
  return db;
}

inline void register_conv2d(torch::Library& m) {
  m.impl("conv2d", &conv2d_op);
  m.impl("conv2d_backward_input", &conv2d_backward_input_op);
  m.impl("conv2d_backward_weight", &conv2d_backward_weight_op);
  m.impl("conv2d_backward_bias", &conv2d_backward_bias_op);
}

}  // namespace cnnkern::CNNKERN_GPU_NS
