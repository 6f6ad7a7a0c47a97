// Autocast of the C++ ops: inside torch.autocast, conv2d computes in the autocast
// dtype (torch's own rule for convolutions, on CPU and CUDA alike): its floating
// tensors, fp64 aside, are cast to that dtype, through autocast's weight cache,
// and the op is called again below the Autocast key. Pooling follows its input
// and BatchNorm+ReLU keeps fp32 parameters and statistics with a low-precision
// input, as torch's ops do, so neither has an Autocast kernel (the dispatcher
// falls through). The Triton backend's eager path skips the dispatcher and applies
// the same rule in cnnkern.functional.
#include <ATen/autocast_mode.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/library.h>

#include "op_handles.h"

namespace cnnkern {
namespace {

template <int NS, c10::DeviceType Device>
Tensor conv2d_autocast(const Tensor& input, const Tensor& weight, const OptTensor& bias, IntArrayRef stride,
                       IntArrayRef padding, IntArrayRef dilation, int64_t groups) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(at::autocast::get_autocast_dispatch_key_from_device_type(Device));
  const at::ScalarType dtype = at::autocast::get_autocast_dtype(Device);
  return Ops<NS>::get().conv2d.call(at::autocast::cached_cast(dtype, input, Device),
                                    at::autocast::cached_cast(dtype, weight, Device),
                                    at::autocast::cached_cast(dtype, bias, Device), stride, padding, dilation, groups);
}

}  // namespace

TORCH_LIBRARY_IMPL(cnnkern, AutocastCPU, m) { m.impl("conv2d", &conv2d_autocast<0, c10::DeviceType::CPU>); }
TORCH_LIBRARY_IMPL(cnnkern, AutocastCUDA, m) { m.impl("conv2d", &conv2d_autocast<0, c10::DeviceType::CUDA>); }
TORCH_LIBRARY_IMPL(cnnkern_emu, AutocastCPU, m) { m.impl("conv2d", &conv2d_autocast<1, c10::DeviceType::CPU>); }

}  // namespace cnnkern
