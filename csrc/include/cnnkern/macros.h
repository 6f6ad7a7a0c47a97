// Portability macros shared by the CPU, CUDA and CUDA-emulation builds.
#pragma once

#if defined(__CUDACC__)
#define CNNKERN_HD __host__ __device__ __forceinline__
#else
#define CNNKERN_HD inline
#endif
