// Registers the CUDA Conv2d kernels (csrc/cuda/conv2d.cu) for CUDA tensors.
// Compiled by the host compiler: the .cu file stays free of torch headers.
#define CNNKERN_GPU_NS cuda
// c10/cuda only: ATen/cuda/CUDAContext.h would drag in cuBLAS/cuSPARSE headers.
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "../ops/conv2d_gpu.h"

namespace cnnkern::cuda {

gpu_stream_t current_stream(const at::Tensor& t) { return c10::cuda::getCurrentCUDAStream(t.device().index()).stream(); }

TORCH_LIBRARY_IMPL(cnnkern, CUDA, m) {
  m.impl("conv2d", [](const at::Tensor& x, const at::Tensor& w, const std::optional<at::Tensor>& b,
                      at::IntArrayRef st, at::IntArrayRef pd, at::IntArrayRef dl, int64_t g) {
    c10::cuda::CUDAGuard guard(x.device());
    return conv2d_op(x, w, b, st, pd, dl, g);
  });
  m.impl("conv2d_backward_input", [](const at::Tensor& dy, const at::Tensor& x, const at::Tensor& w,
                                     at::IntArrayRef st, at::IntArrayRef pd, at::IntArrayRef dl, int64_t g) {
    c10::cuda::CUDAGuard guard(x.device());
    return conv2d_backward_input_op(dy, x, w, st, pd, dl, g);
  });
  m.impl("conv2d_backward_weight", [](const at::Tensor& dy, const at::Tensor& x, const at::Tensor& w,
                                      at::IntArrayRef st, at::IntArrayRef pd, at::IntArrayRef dl, int64_t g) {
    c10::cuda::CUDAGuard guard(x.device());
    return conv2d_backward_weight_op(dy, x, w, st, pd, dl, g);
  });
  m.impl("conv2d_backward_bias", [](const at::Tensor& dy) {
    c10::cuda::CUDAGuard guard(dy.device());
    return conv2d_backward_bias_op(dy);
  });
}

}  // namespace cnnkern::cuda
