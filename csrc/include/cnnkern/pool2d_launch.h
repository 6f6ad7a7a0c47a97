// Host-side entry points of the pooling GPU kernels (csrc/cuda/pool2d.cu),
// built twice like conv2d_launch.h: cnnkern::cuda by nvcc, cnnkern::emu as
// host C++. T is float, double, c10::Half or c10::BFloat16. Every output is
// fully written. Backward passes are gathers (each input element sums the
// windows that cover it, via conv_out_coord): deterministic, no atomics.
#pragma once
#include "cnnkern/gpu_types.h"
#include "cnnkern/pool2d_index.h"

namespace cnnkern {
namespace CNNKERN_GPU_NS {

// y = max over each window, indices = flat h * W + w of the max (torch's rules:
// -inf padding, NaN propagates, ties keep the first). Uses kernel/stride/pad/dil.
template <typename T>
void max_pool2d_forward(const Pool2dShape& s, const T* x, T* y, int64_t* indices, gpu_stream_t stream);

// dx[h][w] = sum of dy over the windows covering (h, w) whose index is h * W + w;
// dx written through s.x_stride.
template <typename T>
void max_pool2d_backward(const Pool2dShape& s, const T* dy, const int64_t* indices, T* dx, gpu_stream_t stream);

// y = sum over the window / avg_pool_divisor(...), accumulated in acc_t<T>.
// divisor_override == 0 means none. Dilation is 1 for average pooling.
template <typename T>
void avg_pool2d_forward(const Pool2dShape& s, const T* x, T* y, bool count_include_pad, int64_t divisor_override,
                        gpu_stream_t stream);

template <typename T>
void avg_pool2d_backward(const Pool2dShape& s, const T* dy, T* dx, bool count_include_pad, int64_t divisor_override,
                         gpu_stream_t stream);

// Adaptive average pooling (s.OH, s.OW given; kernel/stride/pad unused):
// output (i, j) averages input rows [adaptive_start(i, H, OH), adaptive_end(i, H, OH)) and likewise for columns.
template <typename T>
void adaptive_avg_pool2d_forward(const Pool2dShape& s, const T* x, T* y, gpu_stream_t stream);

template <typename T>
void adaptive_avg_pool2d_backward(const Pool2dShape& s, const T* dy, T* dx, gpu_stream_t stream);

}  // namespace CNNKERN_GPU_NS
}  // namespace cnnkern
