// Host emulation build of the Conv2d CUDA kernels (backend "cuda_emu").
#include "cnnkern/cuda_emu.h"
#define CNNKERN_GPU_NS emu
#include "../cuda/conv2d.cu"
