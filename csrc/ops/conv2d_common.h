// Argument checks and shape bookkeeping shared by every C++ Conv2d backend
// (CPU kernels, CUDA kernels, and their host emulation).
//
// The Python functional layer validates arguments with torch.nn's messages
// before any op is called; these checks are the op's own guard, so that a
// direct torch.ops.cnnkern.* call with bad arguments raises instead of
// reading out of bounds.
#pragma once
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <optional>

#include "cnnkern/acc_type.h"
#include "cnnkern/conv2d_index.h"

namespace cnnkern {

// Every kernel is instantiated for these four dtypes.
#define CNNKERN_DISPATCH_FLOATS(dtype, name, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, name, __VA_ARGS__)

// The tensor dtype matching acc_t<T>: statistics, workspaces and widened operands.
inline at::ScalarType acc_dtype(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

inline void fill_strides(int64_t (&dst)[4], const at::Tensor& t) {
  for (int i = 0; i < 4; ++i) dst[i] = t.stride(i);
}

// Output memory format, the rule torch's convolutions follow: channels_last
// if either the input or the weight is channels_last.
inline at::MemoryFormat conv2d_memory_format(const at::Tensor& input, const at::Tensor& weight) {
  if (input.suggest_memory_format() == at::MemoryFormat::ChannelsLast ||
      weight.suggest_memory_format() == at::MemoryFormat::ChannelsLast) {
    return at::MemoryFormat::ChannelsLast;
  }
  return at::MemoryFormat::Contiguous;
}

// Validates the operands and returns the problem shape with input and weight
// strides filled in (output strides are the caller's, once it has allocated).
inline Conv2dShape conv2d_shape(const at::Tensor& input, const at::Tensor& weight,
                                at::IntArrayRef stride, at::IntArrayRef padding,
                                at::IntArrayRef dilation, int64_t groups) {
  TORCH_CHECK(input.dim() == 4, "cnnkern conv2d: expected a 4-D input, got ", input.dim(), "-D");
  TORCH_CHECK(weight.dim() == 4, "cnnkern conv2d: expected a 4-D weight, got ", weight.dim(), "-D");
  TORCH_CHECK(input.scalar_type() == weight.scalar_type(), "cnnkern conv2d: input (",
              input.scalar_type(), ") and weight (", weight.scalar_type(), ") dtypes differ");
  TORCH_CHECK(input.device() == weight.device(), "cnnkern conv2d: input and weight are on different devices");
  TORCH_CHECK(stride.size() == 2 && padding.size() == 2 && dilation.size() == 2,
              "cnnkern conv2d: stride, padding and dilation need two values each");
  TORCH_CHECK(groups > 0, "cnnkern conv2d: groups must be positive");
  Conv2dShape s{};
  s.N = input.size(0);
  s.C = input.size(1);
  s.H = input.size(2);
  s.W = input.size(3);
  s.K = weight.size(0);
  s.R = weight.size(2);
  s.S = weight.size(3);
  s.stride_h = stride[0];
  s.stride_w = stride[1];
  s.pad_h = padding[0];
  s.pad_w = padding[1];
  s.dil_h = dilation[0];
  s.dil_w = dilation[1];
  s.groups = groups;
  TORCH_CHECK(s.stride_h > 0 && s.stride_w > 0, "cnnkern conv2d: stride must be positive");
  TORCH_CHECK(s.dil_h > 0 && s.dil_w > 0, "cnnkern conv2d: dilation must be positive");
  TORCH_CHECK(s.pad_h >= 0 && s.pad_w >= 0, "cnnkern conv2d: padding must be non-negative");
  TORCH_CHECK(s.K % groups == 0, "cnnkern conv2d: out_channels (", s.K, ") not divisible by groups (", groups, ")");
  TORCH_CHECK(weight.size(1) * groups == s.C, "cnnkern conv2d: weight of size ", weight.sizes(),
              " with groups=", groups, " expects ", weight.size(1) * groups, " input channels, got ", s.C);
  s.P = conv_out_size(s.H, s.R, s.stride_h, s.pad_h, s.dil_h);
  s.Q = conv_out_size(s.W, s.S, s.stride_w, s.pad_w, s.dil_w);
  TORCH_CHECK(s.P > 0 && s.Q > 0, "cnnkern conv2d: kernel (", s.R, "x", s.S, ", dilation ", s.dil_h, "x",
              s.dil_w, ") is larger than the padded input (", s.H + 2 * s.pad_h, "x", s.W + 2 * s.pad_w, ")");
  fill_strides(s.x_stride, input);
  fill_strides(s.w_stride, weight);
  return s;
}

inline void check_bias(const std::optional<at::Tensor>& bias, const at::Tensor& weight) {
  if (!bias.has_value()) return;
  TORCH_CHECK(bias->dim() == 1 && bias->size(0) == weight.size(0), "cnnkern conv2d: bias of shape ",
              bias->sizes(), " does not match ", weight.size(0), " output channels");
  TORCH_CHECK(bias->scalar_type() == weight.scalar_type(), "cnnkern conv2d: bias dtype (", bias->scalar_type(),
              ") differs from weight dtype (", weight.scalar_type(), ")");
  TORCH_CHECK(bias->device() == weight.device(), "cnnkern conv2d: bias is on a different device");
}

inline void check_grad_output(const at::Tensor& grad_output, const at::Tensor& input, const Conv2dShape& s) {
  TORCH_CHECK(grad_output.scalar_type() == input.scalar_type() && grad_output.device() == input.device(),
              "cnnkern conv2d backward: grad_output must have the input's dtype and device");
  TORCH_CHECK(grad_output.dim() == 4 && grad_output.size(0) == s.N && grad_output.size(1) == s.K &&
                  grad_output.size(2) == s.P && grad_output.size(3) == s.Q,
              "cnnkern conv2d backward: grad_output of shape ", grad_output.sizes(), " does not match the output [",
              s.N, ", ", s.K, ", ", s.P, ", ", s.Q, "]");
}

}  // namespace cnnkern
