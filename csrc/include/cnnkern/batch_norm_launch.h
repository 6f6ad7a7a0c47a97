// Host-side entry points of the fused BatchNorm2d + ReLU GPU kernels
// (csrc/cuda/batch_norm.cu), built twice like conv2d_launch.h: cnnkern::cuda
// by nvcc, cnnkern::emu as host C++. T (activations) is float, double,
// c10::Half or c10::BFloat16; P (per-channel parameters and statistics) is
// acc_t<T>: the wrappers convert weight, bias and running statistics to it.
//
// Activations x, y, dy, dx are addressed through BnShape's element strides
// (NCHW, channels_last and strided views alike). Per-channel vectors are
// contiguous. weight/bias may be null (affine=False: weight 1, bias 0).
#pragma once
#include <cstdint>

#include "cnnkern/activation.h"
#include "cnnkern/gpu_types.h"

namespace cnnkern {

struct BnShape {
  int64_t N, C, H, W;
  int64_t x_stride[4];   // input, order n c h w
  int64_t y_stride[4];   // output, and dx (the wrappers allocate both in x's memory format)
  int64_t dy_stride[4];  // output gradient
};

// The running statistics a training forward updates, inside the statistics
// finalize (nn.BatchNorm2d's rule, as batch_norm_common.h states it):
// running = f·batch + (1 - f)·running, the variance unbiased by M / (M - 1),
// computed in acc_t<T> and stored in each buffer's own dtype at its stride.
// f is `momentum`, or for momentum=None (cumulative) 1 / *count, the counter
// the op has already bumped (0 without a counter). Null buffers are left alone.
enum class BnFloat : int { Float, Double, Half, BFloat16 };
struct BnRunning {
  void* mean = nullptr;
  void* var = nullptr;
  BnFloat mean_type = BnFloat::Float, var_type = BnFloat::Float;
  int64_t mean_stride = 1, var_stride = 1;
  double momentum = 0;
  bool cumulative = false;
  const int64_t* count = nullptr;  // num_batches_tracked, read on the device when cumulative
};

namespace CNNKERN_GPU_NS {

// Batch statistics: mean[c] and biased var[c] over N·H·W, in acc_t<T>. The
// reduction is split over many blocks (chunks of N·H·W per channel) whose
// partial (count, mean, M2) are merged with Chan's formula in a finalize
// kernel; workspace holds those partials (see batch_norm_stats_workspace).
// The finalize also updates `running` (a default BnRunning updates nothing).
template <typename T>
void batch_norm_stats(const BnShape& s, const T* x, acc_t<T>* mean, acc_t<T>* var, acc_t<T>* workspace,
                      const BnRunning& running, gpu_stream_t stream);
// Elements of acc_t<T> the stats workspace needs.
int64_t batch_norm_stats_workspace(const BnShape& s);

// y = act((x - mean[c]) * rsqrt(var[c] + eps) * weight[c] + bias[c]), one pass.
// Training passes the batch statistics, eval the running ones.
template <typename T>
void batch_norm_relu_apply(const BnShape& s, const T* x, const acc_t<T>* mean, const acc_t<T>* var,
                           const acc_t<T>* weight, const acc_t<T>* bias, double eps, Act act, T* y,
                           gpu_stream_t stream);

// Backward from the saved output y and input x (activation.h says which an
// activation reads; bias is read only to recompute z):
//   g = dy·act'(z), xhat = (x - mean)·invstd
//   grad_bias[c] = Σ g, grad_weight[c] = Σ g·xhat       (one reduction pass, split like the stats)
//   training: dx = weight·invstd·(g - Σg/M - xhat·Σ(g·xhat)/M)     eval: dx = weight·invstd·g
// grad_weight and grad_bias are always written (acc_t<T>); workspace as for the stats.
template <typename T>
void batch_norm_relu_backward(const BnShape& s, const T* dy, const T* y, const T* x, const acc_t<T>* mean,
                              const acc_t<T>* var, const acc_t<T>* weight, const acc_t<T>* bias, double eps,
                              Act act, bool training, T* dx, acc_t<T>* grad_weight, acc_t<T>* grad_bias,
                              acc_t<T>* workspace, gpu_stream_t stream);
int64_t batch_norm_backward_workspace(const BnShape& s);

}  // namespace CNNKERN_GPU_NS
}  // namespace cnnkern
