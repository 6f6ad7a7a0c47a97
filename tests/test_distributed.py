"""Training on several processes (cnnkern.distributed, `torchrun -m cnnkern train`).

SyncBatchNormReLU2d on two processes, each holding part of a batch, against
torch's BatchNorm over the whole batch; DistributedDataParallel training steps in
float64 against one process on the same global batches (no BatchNorm, synchronised
BatchNorm, and per-process BatchNorm, which must differ); cnnkern.train on two
processes against one; the command under torchrun (rank 0 alone writing, exact
--resume, errors); the loader's shards. Every multi-process check runs 2 CPU
processes over gloo, one thread each.
"""
import copy
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

import cnnkern
from cnnkern import data as D
from cnnkern import distributed as DIST
from cnnkern import models as M
from cnnkern import train

WORLD = 2
EXACT = dict(rtol=1e-9, atol=1e-12)  # float64 throughout: only the order of the sums differs


# ---------------------------------------------------------------------------- running workers

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, port, fn, args):
    torch.set_num_threads(1)  # two processes on this two-core machine
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    finished = False
    try:
        with cnnkern.use_backend("cpu"):
            fn(rank, *args)
        finished = True
    finally:
        DIST.end_process_group(wait=finished)  # no process leaves while another still runs


def spawn(fn, *args):
    """fn(rank, *args) in each of WORLD fresh processes in one gloo group."""
    mp.spawn(_worker, args=(_free_port(), fn, args), nprocs=WORLD)


# ---------------------------------------------------------------------------- SyncBatchNormReLU2d

# Each case: how the batch of 8 splits over the two ranks, and the layer's settings.
MODULE_CASES = {
    "halves": dict(split=(4, 4)),
    "momentum None": dict(split=(4, 4), momentum=None),
    "channels_last": dict(split=(4, 4), channels_last=True),
    "uneven 5+3": dict(split=(5, 3)),
    "no affine": dict(split=(4, 4), affine=False),
    "silu": dict(split=(4, 4), activation="silu"),
    # The Triton ops' backward takes other arguments than the C++ ones' (interpreted on the CPU).
    "triton": dict(split=(4, 4), backend="triton"),
    "triton silu": dict(split=(4, 4), backend="triton", activation="silu"),
}
ACTIVATIONS = {"relu": F.relu, "silu": F.silu}


def _module_data(case):
    """Two training batches, the loss weights and the layer's parameters, the same in every process."""
    g = torch.Generator().manual_seed(7)
    shape = (sum(case["split"]), 3, 5, 4)
    batches = [torch.randn(shape, generator=g, dtype=torch.float64) * 2 + 0.5 for _ in range(2)]
    loss_weights = torch.randn(shape, generator=g, dtype=torch.float64)
    weight, bias = torch.randn(3, generator=g, dtype=torch.float64), torch.randn(3, generator=g, dtype=torch.float64)
    return batches, loss_weights, weight, bias


def _layout(x, case):
    return x.contiguous(memory_format=torch.channels_last) if case.get("channels_last") else x


def _run_module_case(module, case, part):
    """Two training steps (the second differentiated through sum(y * loss_weights)) and one eval forward."""
    batches, loss_weights, weight, bias = _module_data(case)
    if module.affine:
        with torch.no_grad():
            module.weight.copy_(weight)
            module.bias.copy_(bias)
    module.train()
    module(_layout(part(batches[0]), case))
    x = _layout(part(batches[1]), case).requires_grad_()
    y = module(x)
    (y * part(loss_weights)).sum().backward()
    module.eval()
    with torch.no_grad():
        y_eval = module(_layout(part(batches[0]), case))
    grads = {"weight": module.weight.grad, "bias": module.bias.grad} if module.affine else {}
    return dict(y=y.detach(), dx=x.grad, y_eval=y_eval, running_mean=module.running_mean.clone(),
                running_var=module.running_var.clone(), num_batches_tracked=module.num_batches_tracked.clone(),
                **grads)


def _sync_module_worker(rank, out):
    results = {}
    for name, case in MODULE_CASES.items():
        backend = case.get("backend", "cpu")
        if backend not in cnnkern.available_backends("cpu"):
            continue
        lo = sum(case["split"][:rank])
        module = DIST.SyncBatchNormReLU2d(3, momentum=case.get("momentum", 0.1), affine=case.get("affine", True))
        module = module.double()
        if "activation" in case:
            module.activation = case["activation"]
        with cnnkern.use_backend(backend):
            results[name] = _run_module_case(module, case, lambda t: t[lo:lo + case["split"][rank]])
    # One value per channel over all processes: the error nn.BatchNorm2d gives for one value.
    try:
        DIST.SyncBatchNormReLU2d(2).double()(torch.ones(1 - rank, 2, 1, 1, dtype=torch.float64))
    except ValueError as exc:
        results["error"] = str(exc)
    torch.save(results, out / f"rank{rank}.pt")


def _reference_module_case(case):
    """The same steps on the whole batch, by torch: act(nn.BatchNorm2d(x))."""
    act = ACTIVATIONS[case.get("activation", "relu")]

    class Reference(nn.BatchNorm2d):
        def forward(self, x):
            return act(super().forward(x))

    module = Reference(3, momentum=case.get("momentum", 0.1), affine=case.get("affine", True)).double()
    return _run_module_case(module, case, lambda t: t)


@pytest.fixture(scope="module")
def sync_module_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("sync_bn")
    spawn(_sync_module_worker, out)
    return [torch.load(out / f"rank{r}.pt") for r in range(WORLD)]


@pytest.mark.parametrize("name", MODULE_CASES)
def test_sync_batch_norm_relu_over_two_processes_is_one_batch_norm_over_the_batch(sync_module_results, name):
    case = MODULE_CASES[name]
    if name not in sync_module_results[0]:
        pytest.skip(f"no {case['backend']} backend for CPU tensors here")
    ref = _reference_module_case(case)
    ranks = [r[name] for r in sync_module_results]
    # Each rank's output and input gradient is its part of the whole batch's: the input gradient of
    # the SUM of the ranks' losses, which is the whole batch's loss.
    for key in ("y", "dx", "y_eval"):
        torch.testing.assert_close(torch.cat([r[key] for r in ranks]), ref[key], **EXACT, msg=key)
    # Each rank returns its own share of the parameter gradients (DDP sums them, then divides by the world size).
    for key in ("weight", "bias"):
        if key in ref:
            torch.testing.assert_close(sum(r[key] for r in ranks), ref[key], **EXACT, msg=key)
    for r in ranks:  # running statistics: the whole batch's, unbiased with the count over all ranks
        for key in ("running_mean", "running_var"):
            torch.testing.assert_close(r[key], ref[key], **EXACT, msg=key)
        assert r["num_batches_tracked"].item() == ref["num_batches_tracked"].item() == 2
        for key in ("y", "dx", "y_eval"):
            assert r[key].dtype == torch.float64
            assert r[key].is_contiguous(memory_format=torch.channels_last) == bool(case.get("channels_last")), key


def test_sync_batch_norm_relu_needs_two_values_per_channel_over_all_processes(sync_module_results):
    for r in sync_module_results:
        assert "Expected more than 1 value per channel when training, got 1 over all processes" in r["error"]


def _fused_net(bn) -> nn.Module:
    return nn.Sequential(nn.Conv2d(2, 4, 3), bn(4), nn.Sequential(nn.Conv2d(4, 4, 1), bn(4)), nn.BatchNorm2d(4))


def test_convert_sync_batchnorm_keeps_tensors_keys_and_single_process_results():
    torch.manual_seed(0)
    kern = _fused_net(cnnkern.BatchNormReLU2d).double()
    kern[1].momentum = None
    kern[2][1].eval()
    reference = copy.deepcopy(kern)
    tensors = kern.state_dict(keep_vars=True)

    group = object()  # stands for a process group: convert only keeps it
    synced = DIST.convert_sync_batchnorm(kern, process_group=group)
    converted = [synced[1], synced[2][1]]
    assert all(type(m) is DIST.SyncBatchNormReLU2d and m.process_group is group for m in converted)
    assert [m.training for m in converted] == [True, False] and converted[0].momentum is None
    assert synced.state_dict().keys() == _fused_net(nn.BatchNorm2d).state_dict().keys()
    for key, value in synced.state_dict(keep_vars=True).items():
        assert value is tensors[key], key  # the same parameters and buffers, not copies
    assert type(synced[3]) is nn.BatchNorm2d  # torch's BatchNorm is left alone
    assert DIST.convert_sync_batchnorm(synced)[1] is converted[0]  # already synchronised: kept
    # Without a process group it is BatchNormReLU2d, bit for bit, running statistics included.
    x = torch.randn(4, 2, 6, 6, dtype=torch.float64)
    for _ in range(2):
        assert torch.equal(synced(x), reference(x))
    for key, value in reference.state_dict().items():
        assert torch.equal(synced.state_dict()[key], value), key


def test_activation_is_carried_over():
    bn = cnnkern.BatchNormReLU2d(3)
    bn.activation = "silu"
    assert DIST.convert_sync_batchnorm(bn).activation == "silu"
    assert getattr(DIST.convert_sync_batchnorm(cnnkern.BatchNormReLU2d(3)), "activation", "relu") == "relu"
    # cnnkern.convert(sync_bn=True): every fused BatchNorm, any activation, identity included
    net = cnnkern.convert(nn.Sequential(nn.BatchNorm2d(3), nn.SiLU(), nn.BatchNorm2d(3)), sync_bn=True)
    from cnnkern.convert import FusedActivation

    assert [type(m) for m in net] == [DIST.SyncBatchNormReLU2d, FusedActivation, DIST.SyncBatchNormReLU2d]
    assert (net[0].activation, net[2].activation) == ("silu", "identity")


# ---------------------------------------------------------------------------- DDP training

def _plain_net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 4, 5, stride=3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(64, 3))


def _bn_net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 4, 5, stride=3, bias=False), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(4, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.Flatten(), nn.Linear(64, 3))


TINY_MODELS = {"test-plain": _plain_net, "test-bn": _bn_net}
# 17 training images in batches of 8: the last batch is one image, so rank 1's part of it is empty.
N_TRAIN, N_TEST, BATCH = 17, 9, 8
# name: (model, sync_bn)
STEP_RUNS = {"plain": ("test-plain", False), "bn, sync": ("test-bn", True), "bn, not sync": ("test-bn", False)}
TRAIN_RUNS = {"plain": ("test-plain", False), "bn, --sync-bn": ("test-bn", True)}


def _tiny_data() -> dict:
    """A small MNIST-format data set with three classes a net can tell apart."""
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", N_TRAIN), ("t10k", N_TEST)):
        labels = rng.integers(0, 3, n).astype(np.uint8)
        images = rng.integers(0, 60, (n, 28, 28)).astype(np.uint8)
        for i, k in enumerate(labels):
            images[i, 9 * k:9 * k + 7] = 255
        arrays[f"{split}-images-idx3-ubyte"], arrays[f"{split}-labels-idx1-ubyte"] = images, labels
    return arrays


def _float64_steps(model_name, sync_bn, distributed):
    """Per-step losses (of the global batches) and final weights of 6 SGD steps in float64,
    by DDP on the process group's shards when `distributed`, else by this process alone."""
    world, rank = (WORLD, dist.get_rank()) if distributed else (1, 0)
    torch.manual_seed(0)
    model = cnnkern.convert(TINY_MODELS[model_name]()).double()
    if sync_bn:
        model = DIST.convert_sync_batchnorm(model)
    net = nn.parallel.DistributedDataParallel(model) if distributed else model
    arrays = _tiny_data()
    images = torch.from_numpy(arrays["train-images-idx3-ubyte"]).unsqueeze(1)
    labels = torch.from_numpy(arrays["train-labels-idx1-ubyte"]).long()
    loader = D.DeviceLoader(images, labels, BATCH, mean=(0.2,), std=(0.3,), shuffle=True, seed=3,
                            dtype=torch.float64, rank=rank, world_size=world)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    losses = []
    for _ in range(2):
        for k, (x, y) in enumerate(loader):
            global_batch = min(BATCH, N_TRAIN - k * BATCH)
            shard_sum = F.cross_entropy(net(x), y, reduction="sum")
            optimizer.zero_grad()
            # DDP averages the ranks' gradients: world/(global batch) · Σ makes it the global batch mean's.
            (shard_sum * (world / global_batch)).backward()
            optimizer.step()
            losses.append(DIST.all_reduce_sum([shard_sum.item()], x.device)[0] / global_batch)
    return torch.tensor(losses, dtype=torch.float64), model.state_dict()


def _ddp_worker(rank, data_dir, out):
    for run, (model, sync_bn) in STEP_RUNS.items():
        torch.save(_float64_steps(model, sync_bn, distributed=True), out / f"steps {run} rank{rank}.pt")
    M.MODELS.update(_tiny_specs())
    for run, (model, sync_bn) in TRAIN_RUNS.items():
        history = train.train(_train_config(model, sync_bn), out / run / f"rank{rank}", data_dir=data_dir,
                              download=False, progress=False)
        torch.save(history, out / run / f"history{rank}.pt")


def _tiny_specs() -> dict:
    recipe = M.Recipe("mnist", epochs=3, batch_size=BATCH, lr=0.05, optimizer="sgd", momentum=0.9)
    return {name: M.ModelSpec(name, (1, 28, 28), 3, recipe, factory) for name, factory in TINY_MODELS.items()}


def _train_config(model, sync_bn):
    return train.recipe_config(model, backend="cpu", dtype="float64", dataset="idx", sync_bn=sync_bn)


@pytest.fixture(scope="module")
def ddp_runs(tmp_path_factory):
    """STEP_RUNS and TRAIN_RUNS on two processes (saved in the returned directory), and the same
    on one process (returned)."""
    from test_data import write_mnist
    root = tmp_path_factory.mktemp("ddp")
    data_dir = write_mnist(root / "data", _tiny_data())
    spawn(_ddp_worker, data_dir, root)
    with cnnkern.use_backend("cpu"):
        steps = {model: _float64_steps(model, False, distributed=False) for model in TINY_MODELS}
    with pytest.MonkeyPatch.context() as patch:
        for name, spec in _tiny_specs().items():
            patch.setitem(M.MODELS, name, spec)
        histories = {model: train.train(_train_config(model, False), root / model, data_dir=data_dir,
                                        download=False, progress=False) for model in TINY_MODELS}
    return root, steps, histories


@pytest.mark.parametrize("run", ["plain", "bn, sync"])
def test_ddp_steps_in_float64_match_one_process(ddp_runs, run):
    root, steps, _ = ddp_runs
    model = STEP_RUNS[run][0]
    ref_losses, ref_state = steps[model]
    assert len(ref_losses) == 6 and ref_losses[-1] < 0.5 * ref_losses[0]  # it trained
    for rank in range(WORLD):
        losses, state = torch.load(root / f"steps {run} rank{rank}.pt")
        torch.testing.assert_close(losses, ref_losses, **EXACT)
        for key, value in ref_state.items():
            torch.testing.assert_close(state[key], value, **EXACT, msg=key)


def test_ddp_steps_without_sync_bn_differ_from_one_process(ddp_runs):
    # Each rank's BatchNorms normalise its half of the batch only: not what one process computes.
    root, steps, _ = ddp_runs
    losses, _ = torch.load(root / "steps bn, not sync rank0.pt")
    ref_losses, _ = steps["test-bn"]
    assert ((losses - ref_losses).abs() / ref_losses).min() > 1e-4


def _summary(history):
    return torch.tensor([[h["train_loss"], h["test_loss"], h["test_accuracy"]] for h in history], dtype=torch.float64)


@pytest.mark.parametrize("run", TRAIN_RUNS)
def test_cnnkern_train_on_two_processes_matches_one_process(ddp_runs, run):
    # cnnkern.train takes the loss of float32 logits (.float()): agreement to float32's precision.
    root, _, histories = ddp_runs
    model = TRAIN_RUNS[run][0]
    got = [torch.load(root / run / f"history{r}.pt") for r in range(WORLD)]
    assert _summary(got[1]).equal(_summary(got[0]))  # every rank reports the same numbers
    torch.testing.assert_close(_summary(got[0]), _summary(histories[model]), rtol=1e-5, atol=1e-6)
    # Rank 0 alone writes; its checkpoint holds the unwrapped model (the same keys).
    assert not (root / run / "rank1").exists()
    ckpt = torch.load(root / run / "rank0" / train.CHECKPOINT, weights_only=False)
    reference = torch.load(root / model / train.CHECKPOINT, weights_only=False)
    assert ckpt["model"].keys() == reference["model"].keys()
    for key, value in reference["model"].items():
        torch.testing.assert_close(ckpt["model"][key], value, rtol=1e-5, atol=1e-6, msg=key)
    metrics = json.loads((root / run / "rank0" / "metrics.json").read_text())
    assert metrics["world_size"] == WORLD and metrics["config"]["sync_bn"] == TRAIN_RUNS[run][1]


# ---------------------------------------------------------------------------- the command under torchrun

def _torchrun(*args, cwd):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={WORLD}",
               "-m", "cnnkern", "train", "mnist", "--data-dir", str(D.SAMPLE_DIR), "--no-download", "--quiet",
               "--backend", "cpu", *args]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run(command, capture_output=True, text=True, env=env, cwd=cwd, timeout=300)


def test_command_under_torchrun_writes_once_and_resumes_exactly(tmp_path):
    """2 processes, Adam, 6 steps an epoch: an uninterrupted run, and one stopped mid second
    epoch then resumed, end with bit-identical weights."""
    flags = ["--optimizer", "adam", "--batch-size", "1000", "--epochs", "2"]
    whole = _torchrun(*flags, "--out", str(tmp_path / "whole"), cwd=tmp_path)
    assert whole.returncode == 0, whole.stderr
    assert whole.stdout.count("2 processes") == 1 and whole.stdout.count("wrote ") == 1, whole.stdout
    assert whole.stdout.count("epoch 2/2:") == 1, whole.stdout
    files = sorted(p.name for p in (tmp_path / "whole").iterdir())
    assert files == ["checkpoint.pt", "curves.png", "metrics.json"], files
    metrics = json.loads((tmp_path / "whole" / "metrics.json").read_text())
    assert metrics["world_size"] == WORLD and len(metrics["epochs"]) == 2
    reference = torch.load(tmp_path / "whole" / train.CHECKPOINT, weights_only=False)
    assert reference["step"] == 12 and reference["model"].keys() == M.build("mnist-lenet").state_dict().keys()

    split = _torchrun(*flags, "--out", str(tmp_path / "split"), "--max-steps", "9", cwd=tmp_path)
    assert split.returncode == 0, split.stderr
    assert split.stdout.count("stopped after 9 steps") == 1, split.stdout
    stopped = torch.load(tmp_path / "split" / train.CHECKPOINT, weights_only=False)
    assert stopped["step"] == 9 and stopped["loader"] == {"epoch": 1, "position": 3, "seed": 1}
    resumed = _torchrun("--resume", str(tmp_path / "split" / train.CHECKPOINT), cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    final = torch.load(tmp_path / "split" / train.CHECKPOINT, weights_only=False)
    assert final["step"] == 12
    for key, value in reference["model"].items():
        assert torch.equal(final["model"][key], value), key
    got = json.loads((tmp_path / "split" / "metrics.json").read_text())["epochs"]
    exact = ("train_loss", "test_loss", "test_accuracy")  # the resumed epoch's train loss covers its last 3 steps
    assert [got[0][k] for k in exact] == [metrics["epochs"][0][k] for k in exact] and got[1]["partial_epoch"]
    assert [got[1][k] for k in exact[1:]] == [metrics["epochs"][1][k] for k in exact[1:]]


def test_command_under_torchrun_rejects_a_batch_it_cannot_split(tmp_path):
    result = _torchrun("--batch-size", "63", "--out", str(tmp_path / "run"), cwd=tmp_path)
    assert result.returncode != 0
    assert "--batch-size 63 is not divisible by the 2 processes" in result.stderr, result.stderr
    assert not (tmp_path / "run").exists()


def test_sharded_loader_rejects_a_rank_outside_the_world():
    images, labels = torch.zeros(4, 1, 2, 2, dtype=torch.uint8), torch.zeros(4, dtype=torch.int64)
    for rank, world in ((2, 2), (-1, 2), (0, 0)):
        with pytest.raises(ValueError, match="rank must be in 0..world_size-1"):
            D.DeviceLoader(images, labels, 2, mean=(0.0,), std=(1.0,), rank=rank, world_size=world)


@pytest.mark.parametrize("world", [2, 3])
def test_sharded_loaders_together_yield_the_unsharded_batches(world):
    # 13 images in batches of 6: the last batch is one image, which leaves the other ranks nothing.
    g = torch.Generator().manual_seed(0)
    images, labels = torch.randint(0, 256, (13, 1, 6, 6), dtype=torch.uint8, generator=g), torch.arange(13)
    options = dict(mean=(0.5,), std=(0.3,), shuffle=True, crop_padding=2, flip=True, seed=4)
    full = list(D.DeviceLoader(images, labels, 6, **options))
    shards = [D.DeviceLoader(images, labels, 6, rank=r, world_size=world, **options) for r in range(world)]
    assert {len(s) for s in shards} == {len(full)} == {3}
    batches = [list(s) for s in shards]
    for k, (x, y) in enumerate(full):
        parts = [b[k] for b in batches]
        assert [len(p[1]) for p in parts] == [len(y[r::world]) for r in range(world)]
        for r, (xr, yr) in enumerate(parts):  # rank r holds samples r, r + world, ... of the batch
            assert torch.equal(xr, x[r::world]) and torch.equal(yr, y[r::world])
    assert all(s.state_dict() == {"epoch": 1, "position": 0, "seed": 4} for s in shards)
