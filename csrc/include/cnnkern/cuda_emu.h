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
// Warp collectives (the shuffles here, the tensor-core instructions of mma.h)
// go through warp_collective(), which checks that rule instead of trusting it:
// a lane that reaches another collective, a __syncthreads or the end of the
// kernel while lanes of its warp wait in one is reported, where a GPU would
// hang or compute garbage. Any exception thrown by a kernel thread (these
// reports included) stops the launch: the other threads are released from
// their barriers, and launch() rethrows the first one to its caller.
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
#include <exception>
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
constexpr std::size_t kMaxCollectiveBytes = 64;  // one lane's operands or results

// Thrown out of the barriers of a launch once one of its threads has failed, so
// that the others stop instead of waiting for it forever.
struct LaunchAborted : std::runtime_error {
  LaunchAborted() : std::runtime_error("cuda_emu: launch aborted (another thread failed)") {}
};

// Reusable barrier for a fixed number of threads (std::barrier is C++20).
// Arrivals are counted under the mutex, so every write a thread made before
// arriving is visible to every thread after the barrier (release/acquire on
// the generation below), which is what __syncthreads and the shuffles rely on.
class Barrier {
 public:
  explicit Barrier(unsigned count) : count_(count) {}
  Barrier(const Barrier&) = delete;
  Barrier& operator=(const Barrier&) = delete;

  // `on_arrival(arrived)` runs first, under the lock, with the number of
  // threads already waiting in this phase (the warp collectives check and
  // combine their operands there). Should it throw, this thread has not arrived.
  template <typename OnArrival>
  void arrive_and_wait(OnArrival&& on_arrival) {
    std::unique_lock<std::mutex> lock(mutex_);
    if (aborted_.load(std::memory_order_relaxed)) throw LaunchAborted();
    on_arrival(unsigned{arrived_});
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
      if (aborted_.load(std::memory_order_relaxed)) throw LaunchAborted();
      std::this_thread::yield();
    }
    lock.lock();
    wakeup_.wait(lock, [&] {
      return generation_.load(std::memory_order_acquire) != generation ||
             aborted_.load(std::memory_order_relaxed);
    });
    if (generation_.load(std::memory_order_relaxed) == generation) throw LaunchAborted();
  }
  void arrive_and_wait() { arrive_and_wait([](unsigned) {}); }

  // Runs f(arrived) under the lock, `arrived` as for on_arrival above.
  template <typename F>
  void inspect(F&& f) {
    std::lock_guard<std::mutex> lock(mutex_);
    f(unsigned{arrived_});
  }

  // Phases completed so far.
  unsigned phase() const { return generation_.load(std::memory_order_acquire); }

  // From now on every waiter, present or future, throws LaunchAborted.
  void abort() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      aborted_.store(true, std::memory_order_relaxed);
    }
    wakeup_.notify_all();
  }

 private:
  static constexpr int kYieldsBeforeSleep = 64;
  const unsigned count_;
  unsigned arrived_ = 0;                 // guarded by mutex_
  std::atomic<unsigned> generation_{0};  // written under mutex_, read without it
  std::atomic<bool> aborted_{false};     // likewise
  std::mutex mutex_;
  std::condition_variable wakeup_;
};

// State shared by the threads of one launch.
struct Launch {
  struct Warp {
    explicit Warp(unsigned lanes) : size(lanes), barrier(lanes) {}
    unsigned size;  // < 32 only for a trailing partial warp
    Barrier barrier;
    // Guarded by barrier's lock, see warp_collective() and block_sync():
    const char* op = nullptr;  // the collective some lanes wait in (while any do)
    unsigned waiting = 0;      // mask of those lanes
    const char* parked_at[kWarpSize] = {};  // a lane's last block barrier, if any,
    unsigned parked_phase[kWarpSize] = {};  // and that barrier's phase then
    alignas(16) unsigned char in[kWarpSize][kMaxCollectiveBytes];
    alignas(16) unsigned char out[kWarpSize][kMaxCollectiveBytes];
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

  // Records the first failure and releases every thread from every barrier.
  void fail(std::exception_ptr e) {
    {
      std::lock_guard<std::mutex> lock(failure_mutex);
      if (!failure) failure = e;
    }
    block_barrier.abort();
    for (auto& warp : warps) warp->barrier.abort();
  }

  Barrier block_barrier;
  std::vector<std::unique_ptr<Warp>> warps;
  std::vector<std::max_align_t> dynamic_shared;
  std::mutex failure_mutex;
  std::exception_ptr failure;  // guarded by failure_mutex
};

inline thread_local Launch* current = nullptr;
inline thread_local unsigned linear_tid = 0;

inline std::mutex& launch_mutex() {
  static std::mutex m;
  return m;
}

inline Launch::Warp& my_warp() { return *current->warps[linear_tid / kWarpSize]; }
inline unsigned my_lane() { return linear_tid % kWarpSize; }

// "0-4,6,9-31"
inline std::string lane_list(unsigned mask) {
  std::string s;
  for (unsigned l = 0; l < kWarpSize; ++l) {
    if (!(mask >> l & 1u)) continue;
    unsigned last = l;
    while (last + 1 < kWarpSize && (mask >> (last + 1) & 1u)) ++last;
    if (!s.empty()) s += ',';
    s += std::to_string(l);
    if (last > l) s += '-' + std::to_string(last);
    l = last;
  }
  return s;
}

inline std::string warp_name() {
  return "warp " + std::to_string(linear_tid / kWarpSize) + " of block (" +
         std::to_string(blockIdx.x) + "," + std::to_string(blockIdx.y) + "," +
         std::to_string(blockIdx.z) + ")";
}

// A block-wide barrier: __syncthreads(), and the end of each block. A lane
// that waits here while lanes of its warp wait in a warp collective deadlocks
// the warp (the GPU would hang, or run the collective with lanes missing):
// reported here when the collective came first, else by warp_collective().
inline void block_sync(const char* where) {
  Launch::Warp& warp = my_warp();
  const unsigned lane = my_lane();
  warp.barrier.inspect([&](unsigned arrived) {
    if (arrived > 0)
      throw std::runtime_error("cuda_emu: lane " + std::to_string(lane) + " of " + warp_name() +
                               " reached " + where + " while lanes " + lane_list(warp.waiting) +
                               " wait in " + warp.op +
                               ": every lane of a warp must execute each warp-collective "
                               "instruction together");
    // This thread has not arrived, so the barrier's phase cannot move before it does.
    warp.parked_at[lane] = where;
    warp.parked_phase[lane] = current->block_barrier.phase();
  });
  current->block_barrier.arrive_and_wait();
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
    try {
      for (unsigned z = 0; z < grid.z; ++z)
        for (unsigned y = 0; y < grid.y; ++y)
          for (unsigned x = 0; x < grid.x; ++x) {
            blockIdx = dim3(x, y, z);
            body();
            // The next block reuses the statics: nobody starts it early.
            block_sync("the end of the kernel");
          }
    } catch (...) {
      state.fail(std::current_exception());
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
  if (state.failure) std::rethrow_exception(state.failure);
}

inline void* dynamic_shared() { return current->dynamic_shared.data(); }

// One warp-collective instruction, named `op`: each lane of the warp hands in
// its operands `in`; when the last one arrives, it runs
// compute(const In* ins, Out* outs, unsigned lanes) over every lane's operands
// (under the warp's lock, so the instruction happens at one point in time, as
// on the GPU), and each lane returns outs[its lane]. Every lane must execute
// the same instruction: a lane arriving at another collective, or lanes
// waiting at a block barrier meanwhile (block_sync() covers the other order),
// throw std::runtime_error; so does a partial warp when `full_warp` is set.
// The outs stay valid until every lane has read its own: the next collective
// only completes once every lane has arrived at it.
template <typename Out, typename In, typename Compute>
Out warp_collective(const char* op, const In& in, bool full_warp, Compute&& compute) {
  static_assert(std::is_trivially_copyable_v<In> && sizeof(In) <= kMaxCollectiveBytes);
  static_assert(std::is_trivially_copyable_v<Out> && sizeof(Out) <= kMaxCollectiveBytes);
  Launch::Warp& warp = my_warp();
  const unsigned lane = my_lane();
  if (full_warp && warp.size != kWarpSize)
    throw std::runtime_error(std::string("cuda_emu: ") + op + " needs all 32 lanes, " +
                             warp_name() + " has " + std::to_string(warp.size));
  warp.barrier.arrive_and_wait([&](unsigned arrived) {
    if (arrived == 0) {
      unsigned parked = 0;
      for (unsigned l = 0; l < warp.size; ++l)
        if (warp.parked_at[l] && warp.parked_phase[l] == current->block_barrier.phase())
          parked |= 1u << l;
      if (parked)
        throw std::runtime_error("cuda_emu: lane " + std::to_string(lane) + " of " + warp_name() +
                                 " executes " + op + " while lanes " + lane_list(parked) +
                                 " wait at " + warp.parked_at[__builtin_ctz(parked)] +
                                 ": every lane of a warp must execute each warp-collective "
                                 "instruction together");
      warp.op = op;
      warp.waiting = 0;
    } else if (std::strcmp(warp.op, op) != 0) {
      throw std::runtime_error("cuda_emu: lane " + std::to_string(lane) + " of " + warp_name() +
                               " executes " + op + " while lanes " + lane_list(warp.waiting) +
                               " execute " + warp.op +
                               ": the lanes of a warp diverged at a warp-collective instruction");
    }
    warp.waiting |= 1u << lane;
    std::memcpy(warp.in[lane], &in, sizeof(In));
    if (arrived + 1 == warp.size) {  // the last lane: execute the instruction
      In ins[kWarpSize];
      Out outs[kWarpSize];
      for (unsigned l = 0; l < warp.size; ++l) std::memcpy(&ins[l], warp.in[l], sizeof(In));
      compute(static_cast<const In*>(ins), static_cast<Out*>(outs), warp.size);
      for (unsigned l = 0; l < warp.size; ++l) std::memcpy(warp.out[l], &outs[l], sizeof(Out));
    }
  });
  Out out;
  std::memcpy(&out, warp.out[lane], sizeof(Out));
  return out;
}

// Lane `lane` publishes v; returns what lane `src(lane)` published, or v when
// that lane does not exist (CUDA returns the caller's own value then).
template <typename T, typename SrcLane>
T warp_exchange(T v, SrcLane src, const char* op = "a warp shuffle") {
  static_assert(std::is_trivially_copyable_v<T> && sizeof(T) <= kMaxShuffleBytes);
  struct In {
    T value;
    unsigned from;
  };
  return warp_collective<T>(op, In{v, src(my_lane())}, /*full_warp=*/false,
                            [](const In* ins, T* outs, unsigned lanes) {
                              for (unsigned l = 0; l < lanes; ++l) {
                                const unsigned from = ins[l].from < lanes ? ins[l].from : l;
                                outs[l] = ins[from].value;
                              }
                            });
}

}  // namespace emu_runtime
}  // namespace cnnkern

// ---- Built-ins ---------------------------------------------------------------
inline void __syncthreads() { cnnkern::emu_runtime::block_sync("__syncthreads()"); }

// The mask is ignored: the emulation requires the whole warp, as the kernels do.
template <typename T>
T __shfl_down_sync(unsigned /*mask*/, T v, unsigned delta, int width = 32) {
  return cnnkern::emu_runtime::warp_exchange(v, [&](unsigned lane) {
    const unsigned w = static_cast<unsigned>(width);
    const unsigned src = lane + delta;
    return (lane % w) + delta < w ? src : cnnkern::emu_runtime::kWarpSize;
  }, "__shfl_down_sync");
}

template <typename T>
T __shfl_xor_sync(unsigned /*mask*/, T v, int lane_mask, int width = 32) {
  return cnnkern::emu_runtime::warp_exchange(v, [&](unsigned lane) {
    const unsigned w = static_cast<unsigned>(width);
    const unsigned src = lane ^ static_cast<unsigned>(lane_mask);
    return src / w == lane / w ? src : lane;
  }, "__shfl_xor_sync");
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
