// Registers the host-emulated build of the CUDA kernels (csrc/emu/*.cu.cpp)
// as namespace cnnkern_emu on CPU tensors: the "cuda_emu" test backend.
#define CNNKERN_EMU 1
#define CNNKERN_GPU_NS emu
#include "../ops/batch_norm_gpu.h"
#include "../ops/conv2d_gpu.h"
#include "../ops/pool2d_gpu.h"

namespace cnnkern::emu {

gpu_stream_t current_stream(const at::Tensor&) { return nullptr; }

TORCH_LIBRARY_IMPL(cnnkern_emu, CPU, m) {
  register_conv2d(m);
  register_pool2d(m);
  register_batch_norm(m);
}

}  // namespace cnnkern::emu
