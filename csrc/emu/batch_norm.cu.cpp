// Host emulation build of the fused BatchNorm2d + ReLU CUDA kernels (backend "cuda_emu").
#include "cnnkern/cuda_emu.h"
#define CNNKERN_GPU_NS emu
#include "../cuda/batch_norm.cu"
