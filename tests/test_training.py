"""Training with cnnkern layers: the convergence checks on real data, the
step-by-step agreement with torch.nn in float64, and the training command
(outputs, the sample fallback, exact resume).

The real data sets are read from ../shared/data beside the checkout (CI has
them there); without them these checks skip locally and fail in CI.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import cnnkern
from cnnkern import data as D
from cnnkern import models, train

ROOT = Path(__file__).resolve().parents[1]
SHARED = (ROOT / ".." / "shared" / "data").resolve()


def shared(name):
    path = SHARED / name
    if not path.is_dir():
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI needs the real data in {path}")
        pytest.skip(f"no {path}")
    return path


@pytest.fixture(scope="module")
def mnist():
    return D.load_dataset("mnist", shared("mnist"), download=False)


@pytest.fixture(scope="module")
def cifar_dir(tmp_path_factory):
    """CIFAR-10 in the official python-batches layout, converted from ../shared/data/cifar10."""
    source = shared("cifar10")
    out = tmp_path_factory.mktemp("cifar")
    subprocess.run([sys.executable, str(source / "to_batches.py"), str(out)], check=True, capture_output=True)
    return out


def _config(model, **overrides):
    return train.recipe_config(model, backend="cpu", **overrides)


def test_mnist_lenet_one_epoch_reaches_97_percent(mnist, tmp_path):
    # The recipe's lr 0.01 is tuned for 10 epochs (about 98%); after one epoch it
    # gave 96.3-96.9% over seeds 1-4 here. A one-epoch run uses lr 0.05 (97.8-98.0%
    # over seeds 1-3), otherwise the recipe: SGD momentum 0.5, batch 64.
    history = train.train(_config("mnist-lenet", epochs=1, lr=0.05), tmp_path, data_dir=mnist.source,
                          download=False, progress=False)
    assert history[0]["test_accuracy"] >= 97.0, history


def test_cifar_lenet5_one_epoch_beats_chance(cifar_dir, tmp_path):
    history = train.train(_config("cifar-lenet5", epochs=1), tmp_path, data_dir=cifar_dir, download=False,
                          progress=False)
    assert history[0]["test_accuracy"] >= 35.0, history  # chance is 10%


def test_cnnkern_and_torch_layers_agree_for_50_steps_in_float64(mnist):
    torch.manual_seed(0)
    torch_net = models.build("mnist-lenet", "torch").double()
    kern_net = cnnkern.convert(torch_net)
    assert type(kern_net[0]) is cnnkern.Conv2d and type(kern_net[1]) is cnnkern.MaxPool2d
    optimizers = [torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.5) for net in (torch_net, kern_net)]
    loader = D.DeviceLoader(mnist.train_images, mnist.train_labels, 64, mean=mnist.mean, std=mnist.std,
                            shuffle=True, seed=3, dtype=torch.float64)
    losses = {"torch": [], "cnnkern": []}
    with cnnkern.use_backend("cpu"):
        for step, (images, labels) in enumerate(loader):
            if step == 50:
                break
            for name, net, opt in zip(losses, (torch_net, kern_net), optimizers):
                loss = F.cross_entropy(net(images), labels)
                opt.zero_grad()
                loss.backward()
                opt.step()
                losses[name].append(loss.item())
    ref, got = torch.tensor(losses["torch"]), torch.tensor(losses["cnnkern"])
    assert len(ref) == 50 and ref[-1] < 0.8 * ref[0]  # it trained
    torch.testing.assert_close(got, ref, rtol=1e-9, atol=0)


def _run(*args, env_extra=None, cwd=None):
    env = dict(os.environ, **(env_extra or {}))
    return subprocess.run([sys.executable, "-m", "cnnkern", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=600)


def test_command_trains_on_the_shipped_sample_when_data_is_missing(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "run"
    result = _run("train", "mnist", "--epochs", "1", "--data-dir", str(empty), "--no-download", "--out", str(out),
                  "--quiet", env_extra={"CNNKERN_DATA": str(empty), "HOME": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if "sample" in line]
    assert lines and "6,000-image sample" in lines[0], result.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["config"]["model"] == "mnist-lenet" and metrics["config"]["layers"] == "cnnkern"
    assert len(metrics["epochs"]) == 1 and metrics["epochs"][0]["test_accuracy"] > 80.0
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "checkpoint.pt").is_file()


def test_command_rejects_bad_arguments(tmp_path):
    assert _run("train", "imagenet").returncode == 2
    result = _run("train", "cifar10", "--model", "mnist-lenet", "--out", str(tmp_path))
    assert result.returncode != 0 and "is for mnist" in result.stderr


def test_resume_continues_exactly(tmp_path):
    """Stop mid-epoch, resume from the checkpoint: the weights after the last
    step are bit-identical to an uninterrupted run's (sample data, 2 epochs)."""
    cfg = _config("mnist-cnn", epochs=2, batch_size=256)  # Adam: optimizer state must survive too
    sample = D.SAMPLE_DIR
    whole = train.train(cfg, tmp_path / "whole", data_dir=sample, download=False, progress=False)
    reference = torch.load(tmp_path / "whole" / train.CHECKPOINT, weights_only=False)

    train.train(cfg, tmp_path / "split", data_dir=sample, download=False, progress=False, max_steps=30)
    stopped = torch.load(tmp_path / "split" / train.CHECKPOINT, weights_only=False)
    assert stopped["step"] == 30 and stopped["loader"]["epoch"] == 1  # mid second epoch (24 steps per epoch)
    resumed = train.train(stopped["config"], tmp_path / "split", data_dir=sample, download=False, progress=False,
                          resume=stopped)
    final = torch.load(tmp_path / "split" / train.CHECKPOINT, weights_only=False)
    assert final["step"] == reference["step"] == 48
    for key, value in reference["model"].items():
        assert torch.equal(final["model"][key], value), key
    assert resumed[-1]["test_accuracy"] == whole[-1]["test_accuracy"]


def test_compiled_training_steps_match_eager(tmp_path):
    # --compile: torch.compile over cnnkern's layers (on CUDA mode="reduce-overhead", CUDA graphs). On the
    # CPU the same compiled steps must track the eager ones; checkpoints keep the model's own keys.
    cfg = _config("mnist-lenet", epochs=1, batch_size=32)
    runs = {}
    from torch._dynamo.utils import counters

    for compiled in (False, True):
        out = tmp_path / f"compile-{compiled}"
        counters.clear()
        train.train(dict(cfg, compile=compiled), out, data_dir=D.SAMPLE_DIR, download=False, progress=False,
                    max_steps=4)
        assert (counters["stats"]["unique_graphs"] > 0) == compiled, dict(counters["stats"])
        assert not counters["graph_break"], dict(counters["graph_break"])  # the model compiles as one graph
        runs[compiled] = torch.load(out / train.CHECKPOINT, weights_only=False)["model"]
    assert runs[True].keys() == runs[False].keys()
    for key in runs[False]:
        torch.testing.assert_close(runs[True][key], runs[False][key], rtol=1e-4, atol=1e-5, msg=key)
