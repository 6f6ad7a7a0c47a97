// The accumulator type of every cnnkern kernel, CPU and GPU alike: reduced
// precision (half, bfloat16) and float accumulate in float, double in double.
#pragma once
#include <type_traits>

namespace cnnkern {
template <typename T>
using acc_t = std::conditional_t<std::is_same_v<T, double>, double, float>;
}  // namespace cnnkern
