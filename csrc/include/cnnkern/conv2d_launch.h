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
#include <cstddef>
#include <cstdint>

#include "cnnkern/conv2d_index.h"
#include "cnnkern/gpu_types.h"

namespace cnnkern {
namespace CNNKERN_GPU_NS {

// Whether a tensor's channels sit in 16-byte rows: channel stride (index 1) 1,
// every other stride a multiple of 16 bytes, the base 16-byte aligned. The
// tensor-core kernels copy such operands with cp.async (else element by
// element); the op layer makes channels_last copies to get there.
inline bool channels_in_16_byte_rows(const int64_t (&stride)[4], const void* base, std::size_t elem_bytes) {
  const int64_t e = 16 / static_cast<int64_t>(elem_bytes);
  return stride[1] == 1 && stride[0] % e == 0 && stride[2] % e == 0 && stride[3] % e == 0 &&
         reinterpret_cast<std::uintptr_t>(base) % 16 == 0;
}

// fp16/bf16 convs run on tensor cores (mma.sync) in all three passes, and fp32
// ones too when allow_tf32 says so (TF32 mma, as torch.backends.cudnn.allow_tf32
// lets nn.Conv2d), with any strides and channel counts. These say whether
// their operand copies are the fast ones: C/groups (and, for the weight
// gradient, K/groups) a multiple of 16 bytes' worth of elements (8 or 4) and
// the operands in 16-byte rows.
bool conv2d_forward_vector_copies(const Conv2dShape& s, const void* x, const void* w, std::size_t elem_bytes);
bool conv2d_backward_weight_vector_copies(const Conv2dShape& s, const void* dy, const void* x,
                                          std::size_t elem_bytes);

// y = conv(x, w) + bias   (bias may be null). allow_tf32 only matters for float.
template <typename T>
void conv2d_forward(const Conv2dShape& s, const T* x, const T* w, const T* bias,
                    T* y, gpu_stream_t stream, bool allow_tf32 = false);

// dx = conv_transpose(dy, w), written through s.x_stride. On tensor cores
// (fp16/bf16, fp32 with allow_tf32): one convolution of dy per phase of the
// stride; their copies are cp.async when K/groups is a multiple of 8 (4 for
// fp32), dy is in 16-byte rows and w has k innermost (stride 1: the op layer
// packs it as (c, r, s, k)).
template <typename T>
void conv2d_backward_input(const Conv2dShape& s, const T* dy, const T* w, T* dx,
                           gpu_stream_t stream, bool allow_tf32 = false);

// dw = sum over (n, p, q) of dy * x, written through s.w_stride.
// workspace: zeroed, conv2d_backward_weight_workspace<T>(s, deterministic,
// allow_tf32) elements of acc_t<T>. The pixels are split over the SMs; the
// splits add into the workspace atomically, or, deterministic
// (torch.use_deterministic_algorithms(True)), tensor-core splits store into
// slices of their own that one kernel sums in a fixed order, and CUDA-core
// ones (double, fp32 without TF32) take one split (one add per element).
// Either way the deterministic result is the same bit for bit on every run.
template <typename T>
void conv2d_backward_weight(const Conv2dShape& s, const T* dy, const T* x, T* dw,
                            acc_t<T>* workspace, bool deterministic, gpu_stream_t stream,
                            bool allow_tf32 = false);
template <typename T>
int64_t conv2d_backward_weight_workspace(const Conv2dShape& s, bool deterministic, bool allow_tf32 = false);

// db[k] = sum over (n, p, q) of dy[n][k][p][q]
template <typename T>
void conv2d_backward_bias(const Conv2dShape& s, const T* dy, T* db,
                          gpu_stream_t stream);

}  // namespace CNNKERN_GPU_NS
}  // namespace cnnkern
