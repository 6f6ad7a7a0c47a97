"""cnnkern.convert and cnnkern.models: the swap keeps every weight, key and
mode, fuses exactly BatchNorm2d-then-ReLU, round-trips, and the converted
networks compute what the torch.nn ones do (float64, forward and every gradient)."""
import copy

import pytest
import torch
from torch import nn

import cnnkern
from cnnkern import models
from cnnkern.convert import BatchNorm2dReLU, FusedReLU


def _classes(module):
    return [type(m) for m in module.modules()]


def test_convert_swaps_each_layer_and_keeps_its_tensors():
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(inplace=True),
                        nn.MaxPool2d(2), nn.AvgPool2d(2), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2))
    net.eval()
    out = cnnkern.convert(net, inplace=True)
    assert out is net
    assert [type(m) for m in out] == [cnnkern.Conv2d, cnnkern.BatchNormReLU2d, FusedReLU, cnnkern.MaxPool2d,
                                      cnnkern.AvgPool2d, cnnkern.AdaptiveAvgPool2d, nn.Flatten, nn.Linear]
    assert not out.training and not out[1].training
    assert out[2].inplace
    back = cnnkern.convert(out, to="torch", inplace=True)
    assert [type(m) for m in back] == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.MaxPool2d, nn.AvgPool2d,
                                       nn.AdaptiveAvgPool2d, nn.Flatten, nn.Linear]
    assert back[2].inplace


def test_convert_copies_by_default_and_keeps_values_and_keys():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU())
    net[1].running_mean.uniform_()
    original = copy.deepcopy(net.state_dict())
    converted = cnnkern.convert(net)
    assert type(net[0]) is nn.Conv2d and type(net[2]) is nn.ReLU  # the input is untouched
    assert converted[0].weight is not net[0].weight
    assert list(converted.state_dict()) == list(original)
    for key, value in converted.state_dict().items():
        assert torch.equal(value, original[key]), key
    shared = cnnkern.convert(net, inplace=True)
    assert shared[0].weight is net[0].weight


def test_fusion_needs_batchnorm_directly_followed_by_relu():
    net = nn.Sequential(nn.BatchNorm2d(2), nn.Conv2d(2, 2, 1), nn.BatchNorm2d(2), nn.Identity(), nn.ReLU(),
                        nn.BatchNorm2d(2), nn.ReLU6())
    out = cnnkern.convert(net)
    assert [type(m) for m in out] == [nn.BatchNorm2d, cnnkern.Conv2d, nn.BatchNorm2d, nn.Identity, nn.ReLU,
                                      nn.BatchNorm2d, nn.ReLU6]


def test_subclasses_are_left_alone_and_children_are_visited():
    class MyConv(nn.Conv2d):
        pass

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.mine = MyConv(1, 1, 1)
            self.inner = nn.Sequential(nn.Conv2d(1, 1, 1), nn.BatchNorm2d(1), nn.ReLU())

        def forward(self, x):
            return self.inner(self.mine(x))

    out = cnnkern.convert(Block())
    assert type(out.mine) is MyConv
    assert [type(m) for m in out.inner] == [cnnkern.Conv2d, cnnkern.BatchNormReLU2d, FusedReLU]


def test_lone_batch_norm_relu_converts_to_a_torch_module_and_back():
    bn = cnnkern.BatchNormReLU2d(3)
    torch_bn = cnnkern.convert(bn, to="torch")
    assert type(torch_bn) is BatchNorm2dReLU
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    bn.double(), torch_bn.double()
    torch.testing.assert_close(torch_bn(x), bn(x))
    assert type(cnnkern.convert(torch_bn)) is cnnkern.BatchNormReLU2d


def test_bad_arguments():
    with pytest.raises(ValueError):
        cnnkern.convert(nn.Conv2d(1, 1, 1), to="jax")
    with pytest.raises(TypeError):
        cnnkern.convert(torch.zeros(1))
    with pytest.raises(ValueError):
        models.build("resnet-50")
    with pytest.raises(ValueError):
        models.build("mnist-lenet", layers="numpy")


@pytest.mark.parametrize("name", list(models.MODELS))
def test_model_output_shape_and_state_dict_exchange(name):
    spec = models.MODELS[name]
    torch_net = models.build(name, "torch")
    kern_net = models.build(name, "cnnkern")
    assert list(torch_net.state_dict()) == list(kern_net.state_dict())
    kern_net.load_state_dict(torch_net.state_dict())
    assert kern_net(torch.randn(3, *spec.input_shape)).shape == (3, spec.num_classes)
    kernel_layers = {cnnkern.Conv2d, cnnkern.MaxPool2d}
    assert kernel_layers <= set(_classes(kern_net))
    assert not kernel_layers & set(_classes(torch_net))


@pytest.mark.parametrize("name", list(models.MODELS))
def test_models_match_torch_in_float64(name):
    spec = models.MODELS[name]
    torch.manual_seed(0)
    torch_net = models.build(name, "torch").double()
    kern_net = cnnkern.convert(torch_net)
    x = torch.randn(4, *spec.input_shape, dtype=torch.float64)
    labels = torch.arange(4) % spec.num_classes
    for net in (torch_net, kern_net):
        nn.functional.cross_entropy(net(x), labels).backward()
    for (key, a), b in zip(torch_net.named_parameters(), kern_net.parameters()):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-10, atol=1e-12, msg=key)
    for (key, a), b in zip(torch_net.named_buffers(), kern_net.buffers()):  # BatchNorm running statistics
        torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-12, msg=key)
    torch_net.eval(), kern_net.eval()
    torch.testing.assert_close(kern_net(x), torch_net(x), rtol=1e-10, atol=1e-12)
