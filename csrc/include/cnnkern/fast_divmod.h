// Division by a value fixed at launch, for the index math of the pooling and
// BatchNorm kernels. GPUs have no integer divider: a division by a runtime
// value is a ~20-instruction sequence in 32 bits and a subroutine call of
// several hundred in 64 bits. A divider built once on the host turns n / d
// into one multiply-high, an add and a shift (Granlund and Montgomery,
// "Division by invariant integers using multiplication", 1994):
//   shift = ceil(log2 d), magic = floor(2^32 (2^shift - d) / d) + 1,
//   n / d = (umulhi(n, magic) + n) >> shift.
// Valid for 1 <= d <= 2^31 and 0 <= n < 2^31 (umulhi(n, magic) + n then stays
// below 2^32), which the 32-bit kernel paths guarantee; the 64-bit paths use
// Divider<uint64_t>, a plain division.
#pragma once
#include <cstdint>

#include "cnnkern/macros.h"

namespace cnnkern {

template <typename Index>
struct Divider;

template <>
struct Divider<uint32_t> {
  uint32_t divisor = 1, magic = 1, shift = 0;

  Divider() = default;
  explicit Divider(uint32_t d) : divisor(d) {
    while (shift < 32 && (uint64_t{1} << shift) < d) ++shift;
    magic = static_cast<uint32_t>(((uint64_t{1} << 32) * ((uint64_t{1} << shift) - d)) / d + 1);
  }

  CNNKERN_HD uint32_t div(uint32_t n) const {
#if defined(__CUDA_ARCH__)
    const uint32_t hi = __umulhi(n, magic);
#else
    const uint32_t hi = static_cast<uint32_t>((static_cast<uint64_t>(n) * magic) >> 32);
#endif
    return (hi + n) >> shift;
  }
  // q = n / d, returns n - q * d.
  CNNKERN_HD uint32_t divmod(uint32_t n, uint32_t* q) const {
    *q = div(n);
    return n - *q * divisor;
  }
};

template <>
struct Divider<uint64_t> {
  uint64_t divisor = 1;

  Divider() = default;
  explicit Divider(uint64_t d) : divisor(d) {}

  CNNKERN_HD uint64_t div(uint64_t n) const { return n / divisor; }
  CNNKERN_HD uint64_t divmod(uint64_t n, uint64_t* q) const {
    *q = n / divisor;
    return n - *q * divisor;
  }
};

}  // namespace cnnkern
