// Host-side entry points of the Conv2d GPU kernels (csrc/cuda/conv2d.cu).
//
// The same kernel source is built twice: by nvcc into namespace cnnkern::cuda,
// and as host C++ with the CUDA emulation header into namespace cnnkern::emu
// (the "cuda_emu" test backend). Both builds declare their launchers through
// this header, selected by CNNKERN_GPU_NS. Nothing here includes torch: the
// torch-facing wrappers live in csrc/ops/*.cpp.
//
// T is one of float, double, c10::Half, c10::BFloat16. Pointers address
// tensors through the element strides in Conv2dShape; outputs are fully written
// (no zero-initialisation needed) except `workspace`, which the caller zeroes.
#pragma once
#include "cnnkern/conv2d_index.h"
#include "cnnkern/gpu_types.h"

namespace cnnkern {
namespace CNNKERN_GPU_NS {

// Whether conv2d_forward takes the tensor-core kernel (fp16/bf16 only): x and
// w with channel stride 1 and their other strides multiples of 8 elements,
// 16-byte aligned, C/groups a multiple of 8. The op layer makes channels_last
// copies to get there.
bool conv2d_forward_uses_tensor_cores(const Conv2dShape& s, const void* x, const void* w);

// y = conv(x, w) + bias   (bias may be null)
template <typename T>
void conv2d_forward(const Conv2dShape& s, const T* x, const T* w, const T* bias,
                    T* y, gpu_stream_t stream);

// dx = conv_transpose(dy, w), written through s.x_stride
template <typename T>
void conv2d_backward_input(const Conv2dShape& s, const T* dy, const T* w, T* dx,
                           gpu_stream_t stream);

// Whether conv2d_backward_weight takes the tensor-core kernel (fp16/bf16 only):
// dy and x channels-contiguous with their other strides multiples of 8 elements,
// 16-byte aligned, C/groups and K/groups multiples of 8.
bool conv2d_backward_weight_uses_tensor_cores(const Conv2dShape& s, const void* dy, const void* x);

// dw = sum over (n, p, q) of dy * x, written through s.w_stride.
// workspace: zeroed, K * (C/groups) * R * S elements of acc_t<T>.
// deterministic: one split per tile, so each workspace element receives exactly
// one atomic add and the result is the same bit for bit on every run
// (torch.use_deterministic_algorithms(True)); otherwise split-K over the SMs.
template <typename T>
void conv2d_backward_weight(const Conv2dShape& s, const T* dy, const T* x, T* dw,
                            acc_t<T>* workspace, bool deterministic, gpu_stream_t stream);

// db[k] = sum over (n, p, q) of dy[n][k][p][q]
template <typename T>
void conv2d_backward_bias(const Conv2dShape& s, const T* dy, T* db,
                          gpu_stream_t stream);

}  // namespace CNNKERN_GPU_NS
}  // namespace cnnkern
