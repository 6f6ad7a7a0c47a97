// Types shared by the CUDA build and its host emulation: the stream handle,
// the accumulator type, and the build's namespace (cuda or emu).
#pragma once
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include "cnnkern/acc_type.h"

#ifndef CNNKERN_GPU_NS
#error "define CNNKERN_GPU_NS (cuda or emu) before including cnnkern GPU headers"
#endif

#if defined(CNNKERN_EMU)
using gpu_stream_t = void*;
#else
#include <cuda_runtime_api.h>
using gpu_stream_t = cudaStream_t;
#endif

