// The one place where cnnkern's operator schemas are declared.
//
// Namespace cnnkern holds the real ops: the CPU kernels register under the CPU
// dispatch key (csrc/cpu), the CUDA kernels under CUDA (csrc/cuda).
// Namespace cnnkern_emu carries the same schemas for the "cuda_emu" backend:
// the CUDA kernel sources built as host code and run on CPU tensors (csrc/emu).
// Autograd is registered in C++ (autograd.cpp), fake (meta) implementations
// from Python (cnnkern/_ops.py); the Python module itself is python.cpp.
#include <torch/library.h>

namespace {

void define_schemas(torch::Library& m) {
  m.def(
      "conv2d(Tensor input, Tensor weight, Tensor? bias, int[2] stride, "
      "int[2] padding, int[2] dilation, int groups) -> Tensor");
  m.def(
      "conv2d_backward_input(Tensor grad_output, Tensor input, Tensor weight, "
      "int[2] stride, int[2] padding, int[2] dilation, int groups) -> Tensor");
  m.def(
      "conv2d_backward_weight(Tensor grad_output, Tensor input, Tensor weight, "
      "int[2] stride, int[2] padding, int[2] dilation, int groups) -> Tensor");
  m.def("conv2d_backward_bias(Tensor grad_output) -> Tensor");

  m.def(
      "max_pool2d(Tensor input, int[2] kernel_size, int[2] stride, int[2] padding, int[2] dilation, "
      "bool ceil_mode) -> (Tensor, Tensor)");
  m.def(
      "max_pool2d_backward(Tensor grad_output, Tensor input, Tensor indices, int[2] kernel_size, "
      "int[2] stride, int[2] padding, int[2] dilation, bool ceil_mode) -> Tensor");
  m.def(
      "avg_pool2d(Tensor input, int[2] kernel_size, int[2] stride, int[2] padding, bool ceil_mode, "
      "bool count_include_pad, int? divisor_override) -> Tensor");
  m.def(
      "avg_pool2d_backward(Tensor grad_output, Tensor input, int[2] kernel_size, int[2] stride, "
      "int[2] padding, bool ceil_mode, bool count_include_pad, int? divisor_override) -> Tensor");
  m.def("adaptive_avg_pool2d(Tensor input, int[2] output_size) -> Tensor");
  m.def("adaptive_avg_pool2d_backward(Tensor grad_output, Tensor input) -> Tensor");

  // Fused act(batch_norm(x)), act one of "relu", "relu6", "silu", "hardswish"
  // or "identity" (cnnkern/activation.h). Returns the output and the statistics it used
  // (batch mean and biased variance when training, the running ones otherwise),
  // in fp32 (fp64 for double). In training it updates the buffers in place as
  // nn.BatchNorm2d does (batch_norm_common.h): num_batches_tracked += 1, then
  // running = (1 - f)·running + f·batch (unbiased variance), f = momentum, or
  // 1 / num_batches_tracked for momentum=None. The Triton op
  // (kernels/batch_norm.py) takes the same arguments.
  m.def(
      "batch_norm_relu(Tensor input, Tensor? weight, Tensor? bias, Tensor(a!)? running_mean, "
      "Tensor(b!)? running_var, Tensor(c!)? num_batches_tracked, bool training, float? momentum, float eps, "
      "str activation=\"relu\") -> (Tensor, Tensor, Tensor)");
  // Gradients of input, weight and bias (the last two in fp32, fp64 for double).
  // ReLU and ReLU6 take their mask from the saved output; SiLU and Hardswish
  // recompute the pre-activation from input, the statistics, weight and bias:
  // no pre-activation tensor is kept.
  m.def(
      "batch_norm_relu_backward(Tensor grad_output, Tensor output, Tensor input, Tensor mean, Tensor var, "
      "Tensor? weight, bool training, float eps, Tensor? bias=None, str activation=\"relu\") "
      "-> (Tensor, Tensor, Tensor)");
}

}  // namespace

TORCH_LIBRARY(cnnkern, m) { define_schemas(m); }
TORCH_LIBRARY(cnnkern_emu, m) { define_schemas(m); }
