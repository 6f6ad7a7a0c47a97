// How the CPU kernels split work over threads.
#pragma once
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>

namespace cnnkern::cpu {

// at::parallel_for over `items`, each about `work_per_item` elementary steps:
// the range is split only into chunks of at least at::internal::GRAIN_SIZE
// (32768) steps, as ATen's own kernels do, so that a small tensor runs on the
// calling thread instead of paying an OpenMP wake-up (several µs) that its
// work cannot repay.
template <typename F>
void parallel_over(int64_t items, int64_t work_per_item, const F& fn) {
  const int64_t grain = std::max<int64_t>(1, at::internal::GRAIN_SIZE / std::max<int64_t>(work_per_item, 1));
  at::parallel_for(0, items, grain, fn);
}

}  // namespace cnnkern::cpu
