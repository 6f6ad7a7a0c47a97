// Argument checks and shapes shared by every C++ pooling backend (CPU, CUDA,
// emulation). The Python layer validates with torch's messages first; these
// are the ops' own guards against out-of-bounds access.
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include "cnnkern/pool2d_index.h"
#include "conv2d_common.h"

namespace cnnkern {

inline Pool2dShape pool2d_shape(const at::Tensor& input, at::IntArrayRef kernel, at::IntArrayRef stride,
                                at::IntArrayRef padding, at::IntArrayRef dilation, bool ceil_mode) {
  TORCH_CHECK(input.dim() == 4, "cnnkern pool2d: expected a 4-D input, got ", input.dim(), "-D");
  TORCH_CHECK(kernel.size() == 2 && stride.size() == 2 && padding.size() == 2 && dilation.size() == 2,
              "cnnkern pool2d: kernel_size, stride, padding and dilation need two values each");
  Pool2dShape s{};
  s.N = input.size(0);
  s.C = input.size(1);
  s.H = input.size(2);
  s.W = input.size(3);
  s.kernel_h = kernel[0];
  s.kernel_w = kernel[1];
  s.stride_h = stride[0];
  s.stride_w = stride[1];
  s.pad_h = padding[0];
  s.pad_w = padding[1];
  s.dil_h = dilation[0];
  s.dil_w = dilation[1];
  TORCH_CHECK(s.kernel_h > 0 && s.kernel_w > 0 && s.stride_h > 0 && s.stride_w > 0 && s.dil_h > 0 && s.dil_w > 0,
              "cnnkern pool2d: kernel_size, stride and dilation must be positive");
  TORCH_CHECK(s.pad_h >= 0 && s.pad_w >= 0 && 2 * s.pad_h <= s.dil_h * (s.kernel_h - 1) + 1 &&
                  2 * s.pad_w <= s.dil_w * (s.kernel_w - 1) + 1,
              "cnnkern pool2d: pad should be at most half of effective kernel size");
  s.OH = pool_out_size(s.H, s.kernel_h, s.stride_h, s.pad_h, s.dil_h, ceil_mode);
  s.OW = pool_out_size(s.W, s.kernel_w, s.stride_w, s.pad_w, s.dil_w, ceil_mode);
  TORCH_CHECK(s.OH > 0 && s.OW > 0, "cnnkern pool2d: output size is too small (", s.OH, "x", s.OW, ")");
  fill_strides(s.x_stride, input);
  return s;
}

inline Pool2dShape adaptive_pool2d_shape(const at::Tensor& input, at::IntArrayRef output_size) {
  TORCH_CHECK(input.dim() == 4, "cnnkern adaptive_avg_pool2d: expected a 4-D input, got ", input.dim(), "-D");
  TORCH_CHECK(output_size.size() == 2 && output_size[0] > 0 && output_size[1] > 0,
              "cnnkern adaptive_avg_pool2d: output_size must be two positive values");
  TORCH_CHECK(input.size(2) > 0 && input.size(3) > 0, "cnnkern adaptive_avg_pool2d: empty spatial input");
  Pool2dShape s{};
  s.N = input.size(0);
  s.C = input.size(1);
  s.H = input.size(2);
  s.W = input.size(3);
  s.OH = output_size[0];
  s.OW = output_size[1];
  s.kernel_h = s.kernel_w = s.stride_h = s.stride_w = s.dil_h = s.dil_w = 1;
  fill_strides(s.x_stride, input);
  return s;
}

// Pooling keeps the input's memory format, as torch does.
inline at::Tensor empty_pool_output(const at::Tensor& input, const Pool2dShape& s, at::ScalarType dtype) {
  return at::empty({s.N, s.C, s.OH, s.OW}, input.options().dtype(dtype).memory_format(input.suggest_memory_format()));
}

inline void check_pool_grad(const at::Tensor& grad_output, const at::Tensor& input, const Pool2dShape& s) {
  TORCH_CHECK(grad_output.dim() == 4 && grad_output.size(0) == s.N && grad_output.size(1) == s.C &&
                  grad_output.size(2) == s.OH && grad_output.size(3) == s.OW,
              "cnnkern pool2d backward: grad_output of shape ", grad_output.sizes(), " does not match the output [",
              s.N, ", ", s.C, ", ", s.OH, ", ", s.OW, "]");
  TORCH_CHECK(grad_output.scalar_type() == input.scalar_type() && grad_output.device() == input.device(),
              "cnnkern pool2d backward: grad_output must have the input's dtype and device");
}

}  // namespace cnnkern
