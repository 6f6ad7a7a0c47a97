// Kernel launch helper shared by every GPU launcher, so one launcher source
// serves the CUDA build (real <<<>>> launch, error checked) and the host
// emulation build (cuda_emu.h runs the kernel on CPU threads).
#pragma once
#include <cstddef>
#include <stdexcept>
#include <string>

#include "cnnkern/gpu_types.h"

#if defined(CNNKERN_EMU)
#include "cnnkern/cuda_emu.h"
#else
#include <cuda_runtime.h>
#endif

// Declares `type* name` pointing at the launch's dynamic shared memory.
#if defined(CNNKERN_EMU)
#define CNNKERN_DYNAMIC_SHARED(type, name) \
  type* name = static_cast<type*>(::cnnkern::emu_runtime::dynamic_shared())
#else
#define CNNKERN_DYNAMIC_SHARED(type, name)                           \
  extern __shared__ __align__(16) unsigned char cnnkern_dynamic_smem_[]; \
  type* name = reinterpret_cast<type*>(cnnkern_dynamic_smem_)
#endif

// Fully unroll a loop over a register array, or keep one rolled where its
// unrolled body would spill (nvcc only: g++ would warn about an unknown
// pragma, and the emulation does not care).
#if defined(__CUDACC__)
#define CNNKERN_UNROLL _Pragma("unroll")
#define CNNKERN_NO_UNROLL _Pragma("unroll 1")
#else
#define CNNKERN_UNROLL
#define CNNKERN_NO_UNROLL
#endif

namespace cnnkern {

// kernel<<<grid, block, shared_bytes, stream>>>(args...), throwing
// std::runtime_error when the launch is rejected.
template <typename... KernelArgs, typename... Args>
void launch_kernel(void (*kernel)(KernelArgs...), dim3 grid, dim3 block,
                   std::size_t shared_bytes, gpu_stream_t stream, const Args&... args) {
#if defined(CNNKERN_EMU)
  (void)stream;
  emu_runtime::launch(grid, block, shared_bytes, [&] { kernel(args...); });
#else
  kernel<<<grid, block, shared_bytes, stream>>>(args...);
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess)
    throw std::runtime_error(std::string("cnnkern: CUDA kernel launch failed: ") +
                             cudaGetErrorString(err));
#endif
}

// Streaming multiprocessors of the current device, for sizing grids (split-K).
// The emulation pretends to be a small GPU so that split-K is still exercised.
inline int multiprocessor_count() {
#if defined(CNNKERN_EMU)
  return 4;
#else
  int device = 0, count = 0;
  if (cudaGetDevice(&device) != cudaSuccess ||
      cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device) != cudaSuccess) {
    cudaGetLastError();  // not sticky: clear it so the next launch check does not report it
    return 1;
  }
  return count;
#endif
}

}  // namespace cnnkern
