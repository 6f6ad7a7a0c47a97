"""cnnkern.convert and cnnkern.models: the swap keeps every weight, key and
mode, fuses exactly BatchNorm2d-then-activation, round-trips, and the converted
networks compute what the torch.nn ones do (float64, forward and every gradient)."""
import copy
import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import cnnkern
from cnnkern import models
from cnnkern.convert import BatchNorm2dAct, BatchNorm2dReLU, FusedActivation, FusedReLU


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


def test_fusion_needs_batchnorm_directly_followed_by_an_activation():
    net = nn.Sequential(nn.BatchNorm2d(2), nn.Conv2d(2, 2, 1), nn.BatchNorm2d(2), nn.Identity(), nn.ReLU(),
                        nn.BatchNorm2d(2), nn.ReLU6(), nn.BatchNorm2d(2), nn.SiLU(inplace=True), nn.BatchNorm2d(2),
                        nn.Hardswish(), nn.BatchNorm2d(2), nn.GELU())
    out = cnnkern.convert(net)
    assert [type(m) for m in out] == [cnnkern.BatchNormAct2d, cnnkern.Conv2d, cnnkern.BatchNormAct2d, nn.Identity,
                                      nn.ReLU] + [cnnkern.BatchNormAct2d, FusedActivation] * 3 + [
                                      cnnkern.BatchNormAct2d, nn.GELU]
    assert [out[i].activation for i in (0, 2, 5, 7, 9, 11)] == ["identity", "identity", "relu6", "silu",
                                                                 "hardswish", "identity"]
    assert out[8].inplace and out[8].activation == "silu"
    x = torch.randn(3, 2, 4, 4, dtype=torch.float64)
    net.double(), out.double()
    torch.testing.assert_close(out(x), net(x), rtol=1e-12, atol=1e-12)
    back = cnnkern.convert(out, to="torch")
    assert [type(m) for m in back] == [type(m) for m in net] and back[8].inplace
    assert "activation" not in back[5].__dict__


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
    for activation in ("silu", "identity"):
        bn = cnnkern.BatchNormAct2d(3, activation=activation).double()
        torch_bn = cnnkern.convert(bn, to="torch")
        assert type(torch_bn) is (BatchNorm2dAct if activation == "silu" else nn.BatchNorm2d)
        torch.testing.assert_close(torch_bn(x), bn(x))
        again = cnnkern.convert(torch_bn)
        assert type(again) is cnnkern.BatchNormAct2d and again.activation == activation


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


# ---- convert() on forward(): BatchNorm -> ReLU pairs and functional pools found by torch.fx ----

class _ResidualBlock(nn.Module):
    """torchvision's BasicBlock pattern: one ReLU module shared by two calls, bn2 into an add."""

    def __init__(self, c):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None

    def forward(self, x):
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return self.relu(out)


class _FunctionalBlock(nn.Module):
    """googlenet/inception's BasicConv2d (F.relu in forward), torch.relu and x.relu(), a ReLU6 pair,
    and every functional pool cnnkern routes."""

    def __init__(self, c):
        super().__init__()
        self.conv = nn.Conv2d(3, c, 3, padding=1)
        self.bn_a, self.bn_b, self.bn_c, self.bn_d = (nn.BatchNorm2d(c) for _ in range(4))
        self.relu6 = nn.ReLU6()

    def forward(self, x):
        x = F.relu(self.bn_a(self.conv(x)), inplace=True)
        x = F.max_pool2d(torch.relu(self.bn_b(x)), 3, stride=2, padding=1)
        x = F.avg_pool2d(self.bn_c(x).relu(), 2, ceil_mode=True)
        x = self.relu6(self.bn_d(x))
        pooled = F.adaptive_avg_pool2d(x, (2, 1))
        return x.mean([2, 3]) + torch.mean(x, (-2, -1), keepdim=True).flatten(1) + pooled.sum((2, 3))


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = _FunctionalBlock(6)
        self.proj = nn.Conv2d(6, 6, 1)
        self.block = _ResidualBlock(6)
        self.bn = nn.BatchNorm2d(6)
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        h = self.stem(x)[:, :, None, None].expand(-1, -1, 5, 5).contiguous()
        h = self.block(self.proj(h))
        return self.fc(F.relu(self.bn(h)).mean([2, 3]))


def _run(net, x, labels):
    net.zero_grad()
    out = net(x)
    nn.functional.cross_entropy(out, labels).backward()
    return out


def test_convert_fuses_pairs_called_in_forward_and_routes_functional_pools():
    torch.manual_seed(0)
    net = _Net().double()
    kern, report = cnnkern.convert(net, report=True)
    assert sorted((p, act) for p, _, act in report.fused) == sorted(
        [("bn", "relu"), ("block.bn1", "relu"), ("stem.bn_a", "relu"), ("stem.bn_b", "relu"), ("stem.bn_c", "relu"),
         ("stem.bn_d", "relu6")])
    assert all(where == "forward()" for _, where, _ in report.fused)
    assert report.alone == [("block.bn2", "its output goes to add, not only to one activation")]
    assert report.left == []
    assert sorted(f for _, f in report.routed) == [
        "mean over H and W", "mean over H and W", "mean over H and W", "torch.nn.functional.adaptive_avg_pool2d",
        "torch.nn.functional.avg_pool2d", "torch.nn.functional.max_pool2d"]
    assert report.counts()["swapped"] == {"Conv2d": 4, "BatchNorm2d": 1}
    for path in ("bn", "block.bn1", "stem.bn_a", "stem.bn_b", "stem.bn_c"):
        assert type(kern.get_submodule(path)) is cnnkern.BatchNormReLU2d, path
    assert type(kern.stem.bn_d) is cnnkern.BatchNormAct2d and kern.stem.bn_d.activation == "relu6"
    assert kern.block.bn2.activation == "identity" and type(kern.block.relu) is nn.ReLU  # shared: still called
    code = kern.stem.__dict__["forward"].code
    assert "cnnkern_functional_max_pool2d(" in code and "cnnkern_convert_spatial_mean(" in code
    assert "relu" not in code  # the three ReLUs and the ReLU6 after fused BatchNorms are gone
    assert str(report).startswith("cnnkern.convert: 1 BatchNorm2d, 4 Conv2d swapped; BatchNorm2d+activation "
                                  "fused: 5 relu, 1 relu6; 1 BatchNorm2d alone; 6 functional")
    # the same network, in train and eval mode: outputs, every gradient, running statistics
    x = torch.randn(3, 3, 9, 7, dtype=torch.float64)
    labels = torch.tensor([0, 2, 1])
    for train in (True, False):
        net.train(train), kern.train(train)
        torch.testing.assert_close(_run(kern, x, labels), _run(net, x, labels), rtol=1e-10, atol=1e-12)
        for (name, a), b in zip(net.named_parameters(), kern.parameters()):
            torch.testing.assert_close(b.grad, a.grad, rtol=1e-9, atol=1e-12, msg=name)
        for (name, a), b in zip(net.named_buffers(), kern.buffers()):
            torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-14, msg=name)
    # state_dict keys unchanged, strict loads both ways; converting back restores forward() exactly
    assert list(kern.state_dict()) == list(net.state_dict())
    kern.load_state_dict(net.state_dict(), strict=True)
    back = cnnkern.convert(kern, to="torch")
    assert "forward" not in back.stem.__dict__ and "forward" not in back.block.__dict__
    assert [type(m) for m in back.modules()] == [type(m) for m in net.modules()]
    net.load_state_dict(back.state_dict(), strict=True)


def test_converted_forward_survives_deepcopy_and_pickling():
    torch.manual_seed(1)
    kern = cnnkern.convert(_Net().double()).eval()
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    buffer = io.BytesIO()
    torch.save(kern, buffer)
    buffer.seek(0)
    for other in (copy.deepcopy(kern), torch.load(buffer, weights_only=False)):
        torch.testing.assert_close(other(x), kern(x), rtol=0, atol=0)
        assert other.stem.__dict__["forward"].module is other.stem  # its own children, not kern's


class _DataDependent(nn.Module):
    def __init__(self):
        super().__init__()
        self.bn = nn.BatchNorm2d(2)

    def forward(self, x):
        return F.relu(self.bn(x)) if x.sum() > 0 else -x


class _ModeDependent(_DataDependent):
    def forward(self, x):
        return F.relu(self.bn(x)) * (2 if self.training else 1)


class _OwnParameter(_DataDependent):
    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1))

    def forward(self, x):
        return F.relu(self.bn(x)) * self.scale


@pytest.mark.parametrize("cls,why", [(_DataDependent, "forward() does not trace with torch.fx (TraceError"),
                                     (_ModeDependent, "forward() differs between train and eval mode"),
                                     (_OwnParameter, "forward() reads its own parameters")])
def test_forward_that_cannot_be_rewritten_is_left_alone_and_reported(cls, why):
    kern, report = cnnkern.convert(cls(), report=True)
    assert "forward" not in kern.__dict__ and kern.bn.activation == "identity"  # on cnnkern, nothing fused
    ((path, reason),) = report.alone
    assert path == "bn" and reason.startswith(why), reason
    assert report.untraced[0][1] == cls.__name__


def test_sequential_fusion_and_lone_batchnorms_are_reported():
    net = nn.Sequential(nn.Conv2d(2, 2, 1), nn.BatchNorm2d(2), nn.ReLU(), nn.BatchNorm2d(2), nn.ReLU6())
    _, report = cnnkern.convert(net, report=True)
    assert report.fused == [("1", "nn.Sequential", "relu"), ("3", "nn.Sequential", "relu6")]
    assert report.alone == [] and report.left == []
    _, report = cnnkern.convert(nn.Sequential(nn.BatchNorm2d(2), nn.GELU(), nn.BatchNorm2d(2)), report=True)
    assert report.alone == [("0", "followed by GELU in its nn.Sequential"),
                            ("2", "last in its nn.Sequential (what its output goes to is not seen)")]
