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


# ---- the command on any MNIST-format data set, and on torchvision models ----

def _idx_set(directory, n_train=48, n_test=16, size=28, classes=3, seed=0):
    """A small MNIST-format data set whose classes a net can tell apart (class k lights row band k)."""
    import numpy as np
    from test_data import write_mnist
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in (("train", n_train), ("t10k", n_test)):
        labels = rng.integers(0, classes, n).astype(np.uint8)
        images = rng.integers(0, 40, (n, size, size)).astype(np.uint8)
        for i, k in enumerate(labels):
            images[i, 8 * k:8 * k + 6] = 255
        arrays[f"{split}-images-idx3-ubyte"], arrays[f"{split}-labels-idx1-ubyte"] = images, labels
    return write_mnist(directory, arrays)


@pytest.mark.parametrize("dataset", ["idx", "fashion-mnist"])
def test_command_trains_on_an_mnist_format_directory(tmp_path, dataset):
    data_dir, out = _idx_set(tmp_path / "data"), tmp_path / "run"
    result = _run("train", dataset, "--data-dir", str(data_dir), "--no-download", "--epochs", "3", "--lr", "0.05",
                  "--out", str(out), "--quiet", env_extra={"CNNKERN_DATA": str(tmp_path / "none"),
                                                           "HOME": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["config"]["dataset"] == dataset and metrics["config"]["model"] == "mnist-lenet"
    assert len(metrics["epochs"]) == 3 and metrics["epochs"][-1]["test_accuracy"] > 50.0, metrics["epochs"]
    ds = D.load_dataset(dataset, data_dir, download=False)
    if dataset == "idx":  # its classes from its labels, mean and std from its training images
        assert ds.classes == ["0", "1", "2"]
        pixels = ds.train_images.double() / 255
        assert ds.mean == pytest.approx((pixels.mean().item(),)) and ds.std == pytest.approx((pixels.std().item(),))


def test_command_refuses_idx_data_it_cannot_train_on(tmp_path):
    result = _run("train", "idx", "--out", str(tmp_path / "run"))
    assert result.returncode != 0 and "needs data_dir" in result.stderr
    small = _idx_set(tmp_path / "small", size=20)
    result = _run("train", "idx", "--data-dir", str(small), "--out", str(tmp_path / "run"))
    assert result.returncode != 0 and "takes 1x28x28 images" in result.stderr and "1x20x20" in result.stderr
    result = _run("train", "mnist", "--model", "torchvision:resnet18", "--out", str(tmp_path / "run"))
    assert result.returncode != 0 and "is for cifar10-shaped images" in result.stderr
    assert _run("train", "cifar10", "--model", "torchvision:no_such_net").returncode == 2


def test_official_checksums_are_checked_unless_told_not_to(tmp_path):
    import numpy as np
    from test_data import write_mnist
    arrays = {"train-images-idx3-ubyte": np.zeros((60000, 28, 28), np.uint8),
              "train-labels-idx1-ubyte": np.zeros(60000, np.uint8),
              "t10k-images-idx3-ubyte": np.zeros((10000, 28, 28), np.uint8),
              "t10k-labels-idx1-ubyte": np.zeros(10000, np.uint8)}
    directory = write_mnist(tmp_path / "mnist", arrays, gz=False)  # the official sizes, not its contents
    with pytest.raises(ValueError, match="not the official MNIST file"):
        D.load_dataset("mnist", directory, download=False)
    assert len(D.load_dataset("mnist", directory, download=False, verify=False).train_labels) == 60000


def test_torchvision_model_trains_on_cifar10_converted(tmp_path):
    from test_data import write_cifar
    write_cifar(tmp_path / "cifar" / "cifar-10-batches-py", per_batch=4)
    cfg = _config("torchvision:resnet18", epochs=1, batch_size=8, dataset="cifar10")
    assert cfg["optimizer"] == "sgd" and cfg["crop_padding"] == 4
    history = train.train(cfg, tmp_path / "run", data_dir=tmp_path / "cifar", download=False, progress=False)
    assert len(history) == 1 and history[0]["train_loss"] > 0
    net = models.build("torchvision:resnet18")
    assert sum(type(m) is cnnkern.BatchNormReLU2d for m in net.modules()) == 9
    assert sum(type(m) is cnnkern.Conv2d for m in net.modules()) == 20
    with pytest.raises(ValueError, match="unknown model"):
        models.spec("resnet18")
