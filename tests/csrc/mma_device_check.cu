// Compile-only check of the device side of csrc/include/cnnkern/mma.h: one
// kernel that uses every wrapper, so that tests/csrc/run_mma.sh can compile it
// for sm_80 and sm_90 (nvcc -cubin) and look for the tensor-core SASS each
// wrapper must become: HMMA (f16, bf16, tf32), LDSM (plain and .MT88 for
// .trans), LDGSTS (cp.async) and its group barriers. Not run anywhere.
#include <cstdint>

#include "cnnkern/mma.h"

namespace tc = cnnkern::tc;

// One warp: A 16x16 and B 16x8 halves, tf32 A 16x8 and B 8x8 floats; results
// to out (so nothing is optimised away).
__global__ void mma_device_check(const uint16_t* a16, const uint16_t* b16, const float* a32,
                                 const float* b32, unsigned tail_bytes, float* out) {
  __shared__ __align__(16) uint16_t sA[256], sB[128];
  __shared__ __align__(16) float sA32[128], sB32[64];
  const unsigned lane = threadIdx.x % 32;

  tc::cp_async_16(&sA[8 * lane], a16 + 8 * lane);
  if (lane < 16) tc::cp_async_16(&sB[8 * lane], b16 + 8 * lane, lane == 15 ? tail_bytes : 16);
  tc::cp_async_commit_group();
  tc::cp_async_16(&sA32[4 * lane], a32 + 4 * lane);
  if (lane < 16) tc::cp_async_16(&sB32[4 * lane], b32 + 4 * lane);
  tc::cp_async_commit_group();
  tc::cp_async_wait_group<1>();
  __syncthreads();

  const float c[4] = {out[0], out[1], out[2], out[3]};
  float d[4], e[4], f[4];
  uint32_t a[4], b[2], a1[1], b1[1];
  tc::ldmatrix(a, &sA[(lane % 16) * 16 + (lane / 16) * 8]);
  tc::ldmatrix_trans(b, &sB[(lane % 16) * 8]);
  tc::mma_m16n8k16_f16(d, a, b, c);
  tc::ldmatrix(b, &sA[(lane % 16) * 16]);
  tc::ldmatrix(a1, &sA[(lane % 8) * 16 + 8]);
  tc::ldmatrix_trans(b1, &sB[(lane % 8) * 8]);
  a[0] ^= a1[0];
  b[1] ^= b1[0];
  uint32_t a4t[4], b2t[2];
  tc::ldmatrix_trans(a4t, &sA[(lane % 16) * 16 + (lane / 16) * 8]);
  tc::ldmatrix_trans(b2t, &sB[(lane % 16) * 8]);
  a[1] ^= a4t[1];
  b[0] ^= b2t[0];
  tc::mma_m16n8k16_bf16(e, a, b, d);

  tc::cp_async_wait_all();
  __syncthreads();
  uint32_t t[4], u[2];
  tc::ldmatrix(t, &sA32[(lane % 16) * 8 + (lane / 16) * 4]);
  for (uint32_t& x : t) x = tc::f32_to_tf32(__uint_as_float(x));
  for (int i = 0; i < 2; ++i) u[i] = tc::f32_to_tf32(sB32[(lane % 4 + 4 * i) * 8 + lane / 4]);
  tc::mma_m16n8k8_tf32(f, t, u, e);
  for (int i = 0; i < 4; ++i) out[4 * threadIdx.x + i] = f[i] + a4t[i];
}
