"""One training step of each network, with cnnkern layers against torch.nn layers.

What a user of cnnkern.models sees end to end: the op benchmarks leave out the
layers cnnkern does not replace (Linear, ReLU, the loss, the optimizer), which
dilute or amplify the per-op differences in a real step. Both variants start
from the same weights and take the same batch.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cnnkern import models, train

from .conftest import DEVICES, QUICK, batch_size, bench_param, impl_context, impls, model_label

MODEL_NAMES = ["mnist-lenet"] if QUICK else list(models.MODELS)


def setting(name: str, device: str) -> tuple[torch.dtype, bool]:
    """(dtype, channels_last): the recipe's GPU choice on CUDA; float32 NCHW on CPU, as training there does."""
    recipe = models.MODELS[name].recipe
    if device == "cpu":
        return torch.float32, False
    return getattr(torch, recipe.gpu_dtype), recipe.gpu_channels_last


def cases():
    for device in DEVICES:
        for name in MODEL_NAMES:
            dtype, channels_last = setting(name, device)
            where = f"{str(dtype).removeprefix('torch.')}{' channels_last' if channels_last else ''} {device}"
            group = f"train step {model_label(name, device)} | {where}"
            for impl in impls(device):
                yield bench_param(name, device, impl, group=group, id=f"{name}-{where.replace(' ', '-')}-{impl}")


def network(name: str, impl: str) -> torch.nn.Module:
    """Model `name` with impl's layers, initialised identically for every impl."""
    torch.manual_seed(0)
    reference = models.build(name, layers="torch")
    if impl == "torch":
        return reference
    net = models.build(name, layers="cnnkern")
    net.load_state_dict(reference.state_dict())
    return net


@pytest.mark.parametrize("name, device, impl", list(cases()))
def test_train_step(timed, name, device, impl):
    spec = models.MODELS[name]
    dtype, channels_last = setting(name, device)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    net = network(name, impl).to(device=device, dtype=dtype, memory_format=layout).train()
    opt = train.make_optimizer(net, train.recipe_config(name))
    gen = torch.Generator().manual_seed(1)
    batch = batch_size(name, device)
    x = torch.randn(batch, *spec.input_shape, generator=gen).to(device=device, dtype=dtype, memory_format=layout)
    y = torch.randint(spec.num_classes, (batch,), generator=gen).to(device)

    def step():
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(net(x), y, label_smoothing=spec.recipe.label_smoothing).backward()
        opt.step()

    with impl_context(impl):
        timed(step, device, impl=impl, model=name, batch=batch, dtype=str(dtype).removeprefix("torch."),
              channels_last=channels_last, **{"pass": "train step"})
