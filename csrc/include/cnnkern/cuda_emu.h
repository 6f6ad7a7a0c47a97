// Host emulation of the CUDA built-ins used by csrc/cuda/*.cu, so the very
// same kernel source compiles with a plain C++ compiler and runs on the CPU
// (backend "cuda_emu"). It exists to test the kernels' index math, tiling and
// synchronisation where there is no GPU; it is not a fast path.
//
// Execution model: a launch runs its blocks one after another, each block with
// one OS thread per CUDA thread. The same blockDim OS threads serve every block
// of the launch (thread t runs thread t of block 0, 1, 2, ... with a block-wide
// barrier in between), which is what lets `__shared__` be a plain `static`:
// only one block is alive at a time, and all its threads see the same object.
// Launches are serialised by a global mutex for the same reason.
//
// Rules the kernels must follow (they are CUDA's rules too): every thread of a
// block reaches every __syncthreads(), and every thread of a warp takes part in
// each warp shuffle.
//
// Language level: C++17 or later, same behaviour under both. torch chooses the
// -std of extension builds (C++17 up to torch 2.11, C++20 from 2.12), so this
// header avoids the C++20 std::barrier, std::jthread and std::atomic_ref.
#pragma once

#define CNNKERN_EMU 1

#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <cstring>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

// ---- Qualifiers: host code already is "device" code here. -------------------
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
// One block runs at a time and its threads share the object: see above.
#define __shared__ static

struct dim3 {
  unsigned x = 1, y = 1, z = 1;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1)
      : x(x_), y(y_), z(z_) {}
};

inline thread_local dim3 threadIdx;
inline thread_local dim3 blockIdx;
inline thread_local dim3 blockDim;
inline thread_local dim3 gridDim;

namespace cnnkern {
namespace emu_runtime {

constexpr unsigned kWarpSize = 32;
constexpr std::size_t kMaxShuffleBytes = 16;

// Reusable barrier for a fixed number of threads (std::barrier is C++20).
// Arrivals are counted under the mutex, so every write a thread made before
// arriving is visible to every thread after the barrier (release/acquire on
// the generation below), which is what __syncthreads and the shuffles rely on.
class Barrier {
 public:
  explicit Barrier(unsigned count) : count_(count) {}
  Barrier(const Barrier&) = delete;
  Barrier& operator=(const Barrier&) = delete;

  void arrive_and_wait() {
    std::unique_lock<std::mutex> lock(mutex_);
    // Waiters watch the generation, not the arrival count: the count restarts
    // at 0 for the next phase as soon as the last thread arrives, and a thread
    // released early may arrive again before every waiter has looked.
    const unsigned generation = generation_.load(std::memory_order_relaxed);
    if (++arrived_ == count_) {
      arrived_ = 0;
      generation_.store(generation + 1, std::memory_order_release);
      // Unlocked first so the woken threads do not block on the mutex again.
      // Safe: the barrier outlives the call, as its owner joins every thread.
      lock.unlock();
      wakeup_.notify_all();
      return;
    }
    lock.unlock();
    // Yield for a while before sleeping: with hundreds of threads on a few
    // cores, a barrier that only slept made the emulation about 2x slower,
    // since every thread woken by notify_all has to retake the mutex in turn.
    for (int i = 0; i < kYieldsBeforeSleep; ++i) {
      if (generation_.load(std::memory_order_acquire) != generation) return;
      std::this_thread::yield();
    }
    lock.lock();
    wakeup_.wait(lock, [&] { return generation_.load(std::memory_order_acquire) != generation; });
  }

 private:
  static constexpr int kYieldsBeforeSleep = 64;
  const unsigned count_;
  unsigned arrived_ = 0;                 // guarded by mutex_
  std::atomic<unsigned> generation_{0};  // written under mutex_, read without it
  std::mutex mutex_;
  std::condition_variable wakeup_;
};

// State shared by the threads of one launch.
struct Launch {
  struct Warp {
    explicit Warp(unsigned lanes) : size(lanes), barrier(lanes) {}
    unsigned size;  // < 32 only for a trailing partial warp
    Barrier barrier;
    alignas(16) unsigned char slots[kWarpSize][kMaxShuffleBytes];
  };

  Launch(unsigned nthreads, std::size_t shared_bytes)
      : block_barrier(nthreads),
        dynamic_shared((shared_bytes + sizeof(std::max_align_t) - 1) /
                       sizeof(std::max_align_t)) {
    for (unsigned first = 0; first < nthreads; first += kWarpSize) {
      const unsigned lanes = nthreads - first < kWarpSize ? nthreads - first : kWarpSize;
      warps.push_back(std::make_unique<Warp>(lanes));
    }
  }

  Barrier block_barrier;
  std::vector<std::unique_ptr<Warp>> warps;
  std::vector<std::max_align_t> dynamic_shared;
};

inline thread_local Launch* current = nullptr;
inline thread_local unsigned linear_tid = 0;

inline std::mutex& launch_mutex() {
  static std::mutex m;
  return m;
}

// Runs `body` (the kernel call, arguments bound) as a grid x block launch.
template <typename Body>
void launch(dim3 grid, dim3 block, std::size_t shared_bytes, const Body& body) {
  const unsigned long long nthreads =
      static_cast<unsigned long long>(block.x) * block.y * block.z;
  if (grid.x == 0 || grid.y == 0 || grid.z == 0 || nthreads == 0 || nthreads > 1024)
    throw std::runtime_error("cuda_emu: invalid launch configuration");

  std::lock_guard<std::mutex> lock(launch_mutex());
  Launch state(static_cast<unsigned>(nthreads), shared_bytes);
  auto run_thread = [&](unsigned t) {
    current = &state;
    linear_tid = t;
    threadIdx = dim3(t % block.x, (t / block.x) % block.y, t / (block.x * block.y));
    blockDim = block;
    gridDim = grid;
    for (unsigned z = 0; z < grid.z; ++z)
      for (unsigned y = 0; y < grid.y; ++y)
        for (unsigned x = 0; x < grid.x; ++x) {
          blockIdx = dim3(x, y, z);
          body();
          // The next block reuses the statics: nobody starts it early.
          state.block_barrier.arrive_and_wait();
        }
    current = nullptr;
  };
  // Plain std::thread (std::jthread is C++20), joined before `state` goes away.
  // Should starting a thread throw, `threads` is destroyed with joinable threads
  // and the process terminates: better than joining, which would hang, since
  // the threads already started wait at the barrier for the missing ones.
  std::vector<std::thread> threads;
  threads.reserve(nthreads);
  for (unsigned t = 0; t < nthreads; ++t) threads.emplace_back(run_thread, t);
  for (std::thread& t : threads) t.join();
}

inline void* dynamic_shared() { return current->dynamic_shared.data(); }

// Lane `lane` publishes v; returns what lane `src(lane)` published, or v when
// that lane does not exist (CUDA returns the caller's own value then).
template <typename T, typename SrcLane>
T warp_exchange(T v, SrcLane src) {
  static_assert(std::is_trivially_copyable_v<T> && sizeof(T) <= kMaxShuffleBytes);
  Launch::Warp& warp = *current->warps[linear_tid / kWarpSize];
  const unsigned lane = linear_tid % kWarpSize;
  std::memcpy(warp.slots[lane], &v, sizeof(T));
  warp.barrier.arrive_and_wait();  // every lane has published
  const unsigned from = src(lane);
  T out = v;
  if (from < warp.size) std::memcpy(&out, warp.slots[from], sizeof(T));
  warp.barrier.arrive_and_wait();  // every lane has read before slots are reused
  return out;
}

}  // namespace emu_runtime
}  // namespace cnnkern

// ---- Built-ins ---------------------------------------------------------------
inline void __syncthreads() { cnnkern::emu_runtime::current->block_barrier.arrive_and_wait(); }

// The mask is ignored: the emulation requires the whole warp, as the kernels do.
template <typename T>
T __shfl_down_sync(unsigned /*mask*/, T v, unsigned delta, int width = 32) {
  return cnnkern::emu_runtime::warp_exchange(v, [&](unsigned lane) {
    const unsigned w = static_cast<unsigned>(width);
    const unsigned src = lane + delta;
    return (lane % w) + delta < w ? src : cnnkern::emu_runtime::kWarpSize;
  });
}

template <typename T>
T __shfl_xor_sync(unsigned /*mask*/, T v, int lane_mask, int width = 32) {
  return cnnkern::emu_runtime::warp_exchange(v, [&](unsigned lane) {
    const unsigned w = static_cast<unsigned>(width);
    const unsigned src = lane ^ static_cast<unsigned>(lane_mask);
    return src / w == lane / w ? src : lane;
  });
}

// A compare-exchange loop, as neither C++17 (no std::atomic_ref) nor the GCC
// builtins (integers only) add floats atomically in place. The generic
// __atomic_* builtins compare the bits, so a NaN in *address still matches.
// Relaxed: like CUDA's atomicAdd, it orders nothing but the addition itself.
template <typename T>
T atomicAdd(T* address, T value) {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>,
                "cuda_emu atomicAdd: float and double only");
  T old;
  __atomic_load(address, &old, __ATOMIC_RELAXED);
  T sum = old + value;
  // On failure `old` is reloaded with the current value: retry from there.
  while (!__atomic_compare_exchange(address, &old, &sum, /*weak=*/true, __ATOMIC_RELAXED,
                                    __ATOMIC_RELAXED))
    sum = old + value;
  return old;
}
