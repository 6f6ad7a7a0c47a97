// Torch-facing wrappers of the Conv2d GPU launchers, shared by the real CUDA
// build (csrc/cuda/ops.cpp: dispatch key CUDA of the cnnkern op namespace) and
// its host emulation (csrc/emu/ops.cpp: key CPU of the cnnkern_emu namespace).
// The includer defines CNNKERN_GPU_NS and `gpu_stream_t current_stream(const at::Tensor&)`
// before including this file.
#pragma once
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include "cnnkern/conv2d_launch.h"
#include "conv2d_common.h"

namespace cnnkern::CNNKERN_GPU_NS {

gpu_stream_t current_stream(const at::Tensor& t);

inline bool is_16_bit(at::ScalarType t) { return t == at::kHalf || t == at::kBFloat16; }

// fp32 convs may use TF32 tensor cores when torch lets cuDNN's convs do so
// (torch.backends.cudnn.allow_tf32, or .conv.fp32_precision = "tf32"), in all
// three passes.
inline bool allow_tf32(at::ScalarType t) {
  return t == at::kFloat && at::globalContext().allowTF32CuDNN(at::Float32Op::CONV);
}

// Whether a pass of dtype t runs on tensor cores: fp16/bf16 always, fp32 when tf32.
inline bool on_tensor_cores(at::ScalarType t, bool tf32) { return is_16_bit(t) || tf32; }

// The channel multiple a tensor-core pass's 16-byte operand copies need (8
// halves or 4 floats).
inline int64_t chunk_elems(at::ScalarType t) { return 16 / static_cast<int64_t>(c10::elementSize(t)); }

// Tensor-core convs run with any layout, but copy their operands 16 bytes at a
// time only when the channels sit in 16-byte rows (channels_in_16_byte_rows).
// `fast` says whether the channel counts allow it; then t itself if it already
// does, else a channels_last copy (one read and one write, small beside the GEMM).
inline at::Tensor channels_inner(const at::Tensor& t, bool fast) {
  if (!fast) return t;
  int64_t st[4];
  fill_strides(st, t);
  return channels_in_16_byte_rows(st, t.const_data_ptr(), t.element_size()) ? t
                                                                           : t.clone(at::MemoryFormat::ChannelsLast);
}

inline at::Tensor conv2d_op(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                            at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups) {
  Conv2dShape s = conv2d_shape(input, weight, stride, padding, dilation, groups);
  check_bias(bias, weight);
  at::Tensor y = at::empty({s.N, s.K, s.P, s.Q}, input.options().memory_format(conv2d_memory_format(input, weight)));
  if (y.numel() == 0) return y;
  fill_strides(s.y_stride, y);
  const std::optional<at::Tensor> b = bias.has_value() ? std::optional(bias->contiguous()) : std::nullopt;
  const bool tf32 = allow_tf32(input.scalar_type());
  const bool fast = on_tensor_cores(input.scalar_type(), tf32) && s.c_per_group() % chunk_elems(input.scalar_type()) == 0;
  const at::Tensor x = channels_inner(input, fast), w = channels_inner(weight, fast);
  fill_strides(s.x_stride, x);
  fill_strides(s.w_stride, w);
  CNNKERN_DISPATCH_FLOATS(input.scalar_type(), "cnnkern_conv2d_gpu", [&] {
    conv2d_forward<scalar_t>(s, x.const_data_ptr<scalar_t>(), w.const_data_ptr<scalar_t>(),
                             b.has_value() ? b->const_data_ptr<scalar_t>() : nullptr, y.data_ptr<scalar_t>(),
                             current_stream(input), tf32);
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
  // On tensor cores the input gradient reduces over dy's channels (convolutions
  // of dy: see conv2d_backward_input), so the fast copies want dy
  // channels-contiguous and the weight with k innermost: one small copy packs
  // it as (c, r, s, k), viewed as (k, c, r, s).
  const bool tf32 = allow_tf32(input.scalar_type());
  const bool fast = on_tensor_cores(input.scalar_type(), tf32) && s.k_per_group() % chunk_elems(input.scalar_type()) == 0;
  const at::Tensor dy = channels_inner(grad_output, fast);
  const at::Tensor w = fast ? weight.permute({1, 2, 3, 0}).contiguous().permute({3, 0, 1, 2}) : weight;
  fill_strides(s.x_stride, dx);
  fill_strides(s.y_stride, dy);
  fill_strides(s.w_stride, w);
  CNNKERN_DISPATCH_FLOATS(input.scalar_type(), "cnnkern_conv2d_dgrad_gpu", [&] {
    conv2d_backward_input<scalar_t>(s, dy.const_data_ptr<scalar_t>(), w.const_data_ptr<scalar_t>(),
                                    dx.data_ptr<scalar_t>(), current_stream(input), tf32);
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
  const bool tf32 = allow_tf32(input.scalar_type());
  const int64_t e = chunk_elems(input.scalar_type());
  const bool fast = on_tensor_cores(input.scalar_type(), tf32) && s.c_per_group() % e == 0 && s.k_per_group() % e == 0;
  const at::Tensor dy = channels_inner(grad_output, fast), x = channels_inner(input, fast);
  fill_strides(s.y_stride, dy);
  fill_strides(s.x_stride, x);
  const auto acc = acc_dtype(input.scalar_type());
  const bool deterministic = at::globalContext().deterministicAlgorithms();
  CNNKERN_DISPATCH_FLOATS(input.scalar_type(), "cnnkern_conv2d_wgrad_gpu", [&] {
    at::Tensor workspace =
        at::zeros({conv2d_backward_weight_workspace<scalar_t>(s, deterministic, tf32)}, input.options().dtype(acc));
    conv2d_backward_weight<scalar_t>(s, dy.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(),
                                     dw.data_ptr<scalar_t>(), workspace.data_ptr<acc_t<scalar_t>>(), deterministic,
                                     current_stream(input), tf32);
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
