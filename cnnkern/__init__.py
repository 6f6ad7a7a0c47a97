"""cnnkern: convolutional-network layers on hand-written Triton, CUDA C++ and CPU kernels.

    import cnnkern
    conv = cnnkern.Conv2d(3, 16, 3, padding=1)      # drop-in for nn.Conv2d
    with cnnkern.use_backend("cuda"): ...           # "triton", "cuda", "cpu", "cuda_emu"
    model = cnnkern.convert(torch_model)            # swap a whole network's layers
"""
from . import _ops  # noqa: F401  (loads the compiled and Triton ops)
from . import functional
from ._backend import BACKENDS, available_backends, current_backend, use_backend
from .modules import AdaptiveAvgPool2d, AvgPool2d, BatchNormAct2d, BatchNormReLU2d, Conv2d, MaxPool2d
from .convert import convert
from . import models

__all__ = ["AdaptiveAvgPool2d", "AvgPool2d", "BACKENDS", "BatchNormAct2d", "BatchNormReLU2d", "Conv2d", "MaxPool2d", "available_backends", "convert", "models", "current_backend", "functional", "use_backend"]
__version__ = "0.1.0"
