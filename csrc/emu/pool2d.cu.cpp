// Host emulation build of the pooling CUDA kernels (backend "cuda_emu").
#include "cnnkern/cuda_emu.h"
#define CNNKERN_GPU_NS emu
#include "../cuda/pool2d.cu"
