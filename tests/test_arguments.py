"""Every argument form torch.nn.functional accepts, and every bad argument it rejects, as
torch does: the same result, or the same exception type with torch's message, checked in
torch's order. Compared against the installed torch itself, on every backend."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import cnnkern
from cnnkern import functional as CF

from conftest import BACKEND_DEVICES, IDS

# int, 1- and 2-element sequences, a torch.Size and a numpy int are forms torch takes;
# the rest it rejects, with a TypeError (the parser) or a RuntimeError (the op).
FORMS = [3, (3,), [3], (3, 3), [3, 2], torch.Size([2, 2]), np.int64(2), (2, 3, 4), (), [], None, 0, -1, (0, 1),
         2.0, (2, 2.0), True]


def _outcome(fn):
    try:
        out = fn()
    except Exception as exc:  # noqa: BLE001  (the exception is what is compared)
        return type(exc), str(exc)
    return "ok", tuple(out.shape)


def _pool_cases(op):
    x = torch.randn(1, 2, 9, 9)
    names = ["kernel_size", "stride", "padding"] + (["dilation"] if op == "max_pool2d" else [])
    for name in names:
        for value in FORMS:
            kw = dict(kernel_size=3, stride=1, padding=0)
            kw[name] = value
            yield f"{name}={value!r}", x, kw
    values = [dict(kernel_size=0), dict(kernel_size=-1), dict(kernel_size=(1, 0), stride=1), dict(kernel_size=3, stride=0),
              dict(kernel_size=3, stride=-1), dict(kernel_size=3, padding=-1), dict(kernel_size=3, padding=2),
              dict(kernel_size=10), dict(kernel_size=3, stride=None), dict(kernel_size=3, stride=[]),
              dict(kernel_size=0, padding=-1), dict(kernel_size=-1, padding=-1), dict(kernel_size=3, ceil_mode=True)]
    if op == "max_pool2d":
        values += [dict(kernel_size=2, dilation=3, padding=2), dict(kernel_size=3, dilation=0),
                   dict(kernel_size=-1, dilation=0), dict(kernel_size=3, stride=0, dilation=0)]
    else:
        values += [dict(kernel_size=3, divisor_override=0), dict(kernel_size=(2, 3, 4), divisor_override=0)]
    for kw in values:
        yield repr(kw), x, kw
    shapes = {"5d": (1, 1, 2, 9, 9), "empty C": (1, 0, 9, 9), "empty H": (1, 2, 0, 9), "batch 0": (0, 2, 9, 9),
              "3d": (2, 9, 9)}
    for label, shape in shapes.items():
        for kernel in (3, 0, (2, 3, 4)):
            yield f"{label} k={kernel}", torch.randn(shape), dict(kernel_size=kernel)


@pytest.mark.parametrize("backend_device", BACKEND_DEVICES, ids=IDS)
@pytest.mark.parametrize("op", ["max_pool2d", "avg_pool2d"])
def test_pool_arguments_as_torch_takes_them(backend_device, op):
    backend, device = backend_device
    ours, theirs = getattr(CF, op), getattr(F, op)
    with cnnkern.use_backend(backend):
        for label, x, kw in _pool_cases(op):
            x = x.to(device)
            assert _outcome(lambda: ours(x, **kw)) == _outcome(lambda: theirs(x, **kw)), label


def _conv_cases():
    x, w, b = torch.randn(1, 2, 9, 9), torch.randn(4, 2, 3, 3), torch.randn(4)
    for name in ("stride", "padding", "dilation"):
        for value in FORMS + ["same", "valid", "bad"]:
            yield f"{name}={value!r}", x, w, b, {name: value}
    for groups in (0, -1, 3, 2.0, True, None):
        yield f"groups={groups!r}", x, w, b, dict(groups=groups)
    yield "3-d weight", x, torch.randn(4, 2, 3), b, {}
    yield "2-d weight", x, torch.randn(4, 2), b, {}
    yield "5-d input", torch.randn(1, 1, 2, 9, 9), w, b, {}
    yield "empty H", torch.randn(1, 2, 0, 9), w, b, {}
    yield "empty H, padded", torch.randn(1, 2, 0, 9), w, b, dict(padding=2)
    yield "batch 0", torch.randn(0, 2, 9, 9), w, b, {}
    yield "bias shape", x, w, torch.randn(3), {}
    yield "kernel too big", x, torch.randn(4, 2, 11, 11), b, {}
    yield "channels", torch.randn(1, 3, 9, 9), w, b, {}
    yield "groups divide K", x, torch.randn(3, 1, 3, 3), None, dict(groups=2)
    yield "input dtype", x.double(), w, None, {}
    yield "bias dtype", x, w, b.double(), {}
    yield "same and strided", x, w, b, dict(padding="same", stride=2)
    yield "unbatched", torch.randn(2, 9, 9), w, b, {}
    yield "negative padding and zero dilation", x, w, b, dict(padding=-1, dilation=0)
    yield "zero dilation, wrong channels", torch.randn(1, 3, 9, 9), w, b, dict(dilation=0)


@pytest.mark.parametrize("backend_device", BACKEND_DEVICES, ids=IDS)
def test_conv_arguments_as_torch_takes_them(backend_device):
    backend, device = backend_device
    with cnnkern.use_backend(backend):
        for label, x, w, b, kw in _conv_cases():
            x, w, b = (t if t is None else t.to(device) for t in (x, w, b))
            got, want = _outcome(lambda: CF.conv2d(x, w, b, **kw)), _outcome(lambda: F.conv2d(x, w, b, **kw))
            if want[0] is TypeError:  # the parser's message spells out the call as written: the type is compared
                assert got[0] is TypeError, (label, got, want)
            else:
                assert got == want, label
