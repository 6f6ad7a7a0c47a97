"""Triton kernels of cnnkern, one file per op family (installed as cnnkern.kernels).

Importing a module registers its ops as torch.ops.cnnkern_triton.*.
"""
