"""Which implementation runs an op: "triton", "cuda", "cpu" or "cuda_emu".

Default: "triton" for CUDA tensors, "cpu" for CPU tensors. CNNKERN_BACKEND sets
an override for the whole process; `use_backend` changes it, as a plain setter
or as a context manager that restores the previous choice on exit.
"""
from __future__ import annotations

import os

import torch

BACKENDS = ("triton", "cuda", "cpu", "cuda_emu")
_DEFAULT = {"cuda": "triton", "cpu": "cpu"}


def _check_name(name):
    if name is not None and name not in BACKENDS:
        raise ValueError(f"unknown cnnkern backend {name!r}; choose one of {', '.join(BACKENDS)}")
    return name


_override: str | None = None


def _set_override(name: str | None) -> None:
    """The one writer of _override; cnnkern._C keeps a copy for its pooling entry points."""
    global _override
    from . import _C

    _override = _check_name(name)
    _C.set_backend(-1 if name is None else BACKENDS.index(name))


_set_override(os.environ.get("CNNKERN_BACKEND") or None)


class use_backend:
    """Select the backend for every cnnkern op (None: the per-device default).

    `cnnkern.use_backend("cuda")` sets it; `with cnnkern.use_backend("cuda"): ...`
    sets it for the block and restores the previous choice afterwards.
    """

    def __init__(self, name: str | None):
        self._previous = _override
        _set_override(name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        _set_override(self._previous)
        return False


def current_backend() -> str | None:
    """The explicit choice in force, or None when the per-device default applies."""
    return _override


def _triton_interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def _unavailable_reason(name: str, device: torch.device) -> str | None:
    """Why backend `name` cannot run tensors on `device` here, or None if it can."""
    from . import _ops

    if name == "cpu":
        return None if device.type == "cpu" else "it runs CPU tensors only"
    if name == "cuda_emu":
        return None if device.type == "cpu" else "it emulates the CUDA kernels on CPU tensors only"
    if name == "cuda":
        if device.type != "cuda":
            return "it runs CUDA tensors only (use 'cuda_emu' to run the CUDA kernels on CPU tensors)"
        if not _ops.cuda_built():
            return "cnnkern._C was built without CUDA kernels (rebuild with nvcc on PATH or FORCE_CUDA=1)"
        return None
    if name == "triton":
        if not _ops.triton_available():
            return f"triton is not importable ({_ops.triton_import_error()})"
        if device.type == "cuda":
            return None
        if device.type == "cpu":
            return None if _triton_interpreting() else (
                "on CPU tensors it needs the Triton interpreter: set TRITON_INTERPRET=1 before importing cnnkern")
        return f"it does not support {device.type} tensors"
    raise ValueError(f"unknown cnnkern backend {name!r}")


def available_backends(device: str | torch.device = "cpu") -> list[str]:
    """Backends that can run tensors on `device` on this machine."""
    device = torch.device(device)
    return [name for name in BACKENDS if _unavailable_reason(name, device) is None]


_RESOLVED: dict = {}  # (override, device) -> the backend that passed _unavailable_reason


def resolve(device: torch.device) -> str:
    """The backend to run an op on `device`, or a RuntimeError saying what is missing."""
    name = _RESOLVED.get((_override, device))  # every layer call asks: keep the answer
    if name is not None:
        return name
    name = _override or _DEFAULT.get(device.type)
    if name is None:
        raise RuntimeError(f"cnnkern has no backend for {device.type} tensors")
    reason = _unavailable_reason(name, device)
    if reason is not None:
        raise RuntimeError(
            f"cnnkern backend {name!r} cannot run {device.type} tensors here: {reason}. "
            f"Available for {device.type}: {available_backends(device) or 'none'}"
        )
    _RESOLVED[(_override, device)] = name
    return name

