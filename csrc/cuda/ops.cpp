// Registers the CUDA kernels (csrc/cuda/*.cu) for CUDA tensors. Compiled by
// the host compiler, so the .cu files stay free of torch headers.
#define CNNKERN_GPU_NS cuda
// c10/cuda only: ATen/cuda/CUDAContext.h would drag in cuBLAS/cuSPARSE headers.
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "../ops/batch_norm_gpu.h"
#include "../ops/conv2d_gpu.h"
#include "../ops/pool2d_gpu.h"

namespace cnnkern::cuda {

gpu_stream_t current_stream(const at::Tensor& t) { return c10::cuda::getCurrentCUDAStream(t.device().index()).stream(); }

namespace {
// Every launch must target the tensors' device: each op runs under a guard
// for its first tensor argument's device.
template <auto Op>
struct Guarded;
template <typename R, typename... Args, R (*Op)(const at::Tensor&, Args...)>
struct Guarded<Op> {
  static R call(const at::Tensor& first, Args... args) {
    c10::cuda::CUDAGuard guard(first.device());
    return Op(first, args...);
  }
};
}  // namespace

TORCH_LIBRARY_IMPL(cnnkern, CUDA, m) {
  m.impl("conv2d", &Guarded<&conv2d_op>::call);
  m.impl("conv2d_backward_input", &Guarded<&conv2d_backward_input_op>::call);
  m.impl("conv2d_backward_weight", &Guarded<&conv2d_backward_weight_op>::call);
  m.impl("conv2d_backward_bias", &Guarded<&conv2d_backward_bias_op>::call);
  m.impl("max_pool2d", &Guarded<&max_pool2d_op>::call);
  m.impl("max_pool2d_backward", &Guarded<&max_pool2d_backward_op>::call);
  m.impl("avg_pool2d", &Guarded<&avg_pool2d_op>::call);
  m.impl("avg_pool2d_backward", &Guarded<&avg_pool2d_backward_op>::call);
  m.impl("adaptive_avg_pool2d", &Guarded<&adaptive_avg_pool2d_op>::call);
  m.impl("adaptive_avg_pool2d_backward", &Guarded<&adaptive_avg_pool2d_backward_op>::call);
  m.impl("batch_norm_relu", &Guarded<&batch_norm_relu_op>::call);
  m.impl("batch_norm_relu_backward", &Guarded<&batch_norm_relu_backward_op>::call);
}

}  // namespace cnnkern::cuda
