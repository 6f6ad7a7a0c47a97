"""cnnkern.convert over torchvision's model zoo (issue: real models): how much of each net it
takes over, and that the converted net computes what torch does, in float64 on the cpu backend:
outputs, every parameter gradient and the running statistics, in train and eval mode, and
state_dicts that load both ways strictly."""
import copy

import pytest
import torch
import torchvision
from torch import nn

import cnnkern

# name: (input size, BatchNorm2d+activation pairs fused, functional pools routed, BatchNorm2d alone)
ZOO = {
    "resnet18": (64, 9, 0, 11),              # bn1 -> shared self.relu in forward(); bn2 -> residual add
    "mobilenet_v2": (64, 35, 1, 17),         # BN -> ReLU6; F.adaptive_avg_pool2d; 17 BNs end a Sequential
    "efficientnet_b0": (64, 33, 0, 16),      # BN -> SiLU
    "densenet121": (64, 120, 1, 1),          # norm -> relu in _DenseLayer.forward(); the last BN -> F.relu
    "googlenet": (64, 57, 0, 0),             # F.relu(bn(x)) in BasicConv2d.forward()
    "shufflenet_v2_x0_5": (64, 37, 1, 19),   # x.mean([2, 3]) as the global pool
    "inception_v3": (80, 94, 11, 0),         # F.max_pool2d / F.avg_pool2d in the Inception blocks
}


def _build(name):
    kwargs = {"aux_logits": False, "init_weights": False} if name in ("googlenet", "inception_v3") else {}
    torch.manual_seed(0)
    return getattr(torchvision.models, name)(weights=None, num_classes=10, **kwargs).double()


def _step(net, x, labels, seed):
    net.zero_grad()
    torch.manual_seed(seed)  # dropout and stochastic depth draw the same masks in both nets
    out = net(x)
    nn.functional.cross_entropy(out, labels).backward()
    return out


@pytest.mark.parametrize("name", sorted(ZOO))
def test_converted_torchvision_model_matches_torch(name):
    size, fused, routed, alone = ZOO[name]
    net = _build(name)
    with torch.no_grad():  # running statistics away from their initial 0 / 1
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5), m.running_var.uniform_(0.5, 2.0)
    kern, report = cnnkern.convert(net, report=True)
    assert (len(report.fused), len(report.routed), len(report.alone)) == (fused, routed, alone), str(report)
    assert report.left == []  # every Conv2d, pool and BatchNorm2d runs on cnnkern
    assert not any(type(m) in (nn.Conv2d, nn.BatchNorm2d, nn.MaxPool2d, nn.AvgPool2d) for m in kern.modules())
    convs = sum(type(m) is nn.Conv2d for m in net.modules())
    assert report.counts()["swapped"].get("Conv2d") == convs and not report.untraced
    assert list(kern.state_dict()) == list(net.state_dict())

    x = torch.randn(2, 3, size, size, dtype=torch.float64)
    labels = torch.tensor([3, 7])
    for train in (True, False):
        net.train(train), kern.train(train)
        torch.testing.assert_close(_step(kern, x, labels, 1), _step(net, x, labels, 1), rtol=1e-9, atol=1e-10)
        for (key, a), b in zip(net.named_parameters(), kern.parameters()):
            # elementwise against the gradient's own scale: an element that cancels to ~0 through
            # a deep net keeps an absolute error of the order of the float64 rounding of the rest
            scale = a.grad.abs().max().item()
            torch.testing.assert_close(b.grad, a.grad, rtol=1e-8, atol=1e-10 * max(scale, 1.0),
                                       msg=lambda m, key=key: f"{key}: {m}")
        for (key, a), b in zip(net.named_buffers(), kern.buffers()):
            torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-12, msg=key)

    back = cnnkern.convert(kern, to="torch")
    assert [type(m) for m in back.modules()] == [type(m) for m in net.modules()]
    fresh = _build(name)
    fresh.load_state_dict(kern.state_dict(), strict=True)
    again = cnnkern.convert(copy.deepcopy(fresh))
    again.load_state_dict(net.state_dict(), strict=True)
