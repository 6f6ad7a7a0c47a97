"""`python -m cnnkern train {mnist,fashion-mnist,idx,cifar10}`: train a model of cnnkern.models.

Defaults reproduce each model's recipe (cnnkern.models.MODELS). The data live
on the device as one tensor (cnnkern.data.DeviceLoader); every epoch prints its
test loss and accuracy; --out receives metrics.json, curves.png and
checkpoint.pt. A checkpoint holds the model, the optimizer, the schedule, the
loader's position and the RNG states, so --resume continues with exactly the
batch and the optimizer state an uninterrupted run would have had.

Under torchrun (`torchrun --nproc-per-node N -m cnnkern train ...`) each of the N
processes trains a DistributedDataParallel replica on its shard of every batch:
--batch-size is the global batch, and rank r takes samples r, r+N, r+2N, ... of
it (cnnkern.data.DeviceLoader's sharding), so the N shards together are the
single-process batch. Each process's loss is its shard's share of the global
batch's mean, so the averaged gradient, the step and the reported losses are
those of one process (up to rounding) when the model has no BatchNorm, or with
--sync-bn, whose BatchNorms normalise over the whole batch. Only rank 0 prints
and writes files; --resume under the same number of processes is exact.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from . import data as D
from . import distributed as DIST
from . import models as M
from ._backend import BACKENDS, use_backend

DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16, "float16": torch.float16}
CHECKPOINT = "checkpoint.pt"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset", choices=sorted(M.DEFAULT_MODEL),
                        help="data set to train on (idx: any MNIST-format data set, in --data-dir)")
    parser.add_argument("--model", type=_model_name, metavar="{" + ",".join(sorted(M.MODELS)) + ",torchvision:NAME}",
                        help="model (default: mnist-lenet, or cifar-lenet5 for cifar10); torchvision:NAME is "
                             "torchvision.models' NAME (e.g. torchvision:resnet18) for cifar10, converted")
    parser.add_argument("--epochs", type=int, help="epochs to train (default: the model's recipe)")
    parser.add_argument("--batch-size", type=int, help="training batch size (default: the recipe's)")
    parser.add_argument("--lr", type=float, help="learning rate (peak rate for a one-cycle schedule)")
    parser.add_argument("--optimizer", choices=("sgd", "adam"), help="optimizer (default: the recipe's)")
    parser.add_argument("--layers", choices=("cnnkern", "torch"), default="cnnkern",
                        help="build the model from cnnkern's layers or torch.nn's (default: cnnkern)")
    parser.add_argument("--backend", choices=BACKENDS, help="cnnkern backend (default: cpu on CPU, triton on CUDA)")
    parser.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda when available, else cpu")
    parser.add_argument("--dtype", choices=sorted(DTYPES),
                        help="parameter and activation dtype (default: float32; the recipe's on a GPU)")
    parser.add_argument("--data-dir", help="directory with the data set (else $CNNKERN_DATA, ~/.cache/cnnkern)")
    parser.add_argument("--no-download", action="store_true", help="never download the data set")
    parser.add_argument("--no-verify", action="store_true",
                        help="do not check the official files' checksums (a copy of the data set you changed)")
    parser.add_argument("--seed", type=int, default=1, help="seed for initialisation, shuffling, augmentation")
    parser.add_argument("--out", help="output directory (default: runs/<model>)")
    parser.add_argument("--resume", metavar="CKPT", help="continue from this checkpoint.pt")
    parser.add_argument("--save-every", type=int, default=0, metavar="STEPS",
                        help="also checkpoint every STEPS steps within an epoch (default: at epoch ends only)")
    parser.add_argument("--max-steps", type=int, default=0,
                        help="stop after this many steps in total (0: train all epochs)")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the model (on CUDA mode='reduce-overhead': the step's kernels replay "
                             "as CUDA graphs, so the host's per-layer cost leaves the step time)")
    parser.add_argument("--sync-bn", action="store_true",
                        help="under torchrun: cnnkern's fused BatchNorms compute their statistics over all "
                             "processes' shards (cnnkern.distributed.SyncBatchNormReLU2d), as in one process")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def _model_name(name: str) -> str:
    try:
        M.spec(name)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return name


def recipe_config(model: str, *, device: str = "cpu", layers: str = "cnnkern", backend: str | None = None,
                  seed: int = 1, **overrides) -> dict:
    """A run's full configuration: model `model`'s recipe, with `overrides` (any
    key of the result, e.g. epochs=1, lr=0.05, dataset="fashion-mnist") taking precedence."""
    r = M.spec(model).recipe
    gpu = device == "cuda"
    cfg = {
        "dataset": r.dataset, "model": model, "layers": layers, "backend": backend, "device": device,
        "dtype": r.gpu_dtype if gpu else "float32", "channels_last": gpu and r.gpu_channels_last,
        "epochs": r.epochs, "batch_size": r.batch_size, "lr": r.lr, "optimizer": r.optimizer,
        "momentum": r.momentum, "nesterov": r.nesterov, "weight_decay": r.weight_decay,
        "label_smoothing": r.label_smoothing, "schedule": r.schedule, "warmup_frac": r.warmup_frac,
        "crop_padding": r.crop_padding, "flip": r.flip, "seed": seed, "compile": False, "verify": True,
        "sync_bn": False,
    }
    unknown = set(overrides) - set(cfg)
    if unknown:
        raise ValueError(f"unknown configuration keys: {', '.join(sorted(unknown))}")
    cfg.update(overrides)
    return cfg


def _config(args: argparse.Namespace) -> dict:
    """The command line's configuration: explicit flags over the model's recipe."""
    model = args.model or M.DEFAULT_MODEL[args.dataset]
    if M.FAMILY[M.spec(model).recipe.dataset] != M.FAMILY[args.dataset]:
        raise SystemExit(f"model {model} is for {M.spec(model).recipe.dataset}-shaped images, not {args.dataset}")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available (use --device cpu)")
    flags = {"epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr, "optimizer": args.optimizer,
             "dtype": args.dtype, "compile": args.compile or None, "dataset": args.dataset,
             "verify": False if args.no_verify else None, "sync_bn": args.sync_bn or None}
    return recipe_config(model, device=device, layers=args.layers, backend=args.backend, seed=args.seed,
                         **{key: value for key, value in flags.items() if value is not None})


def make_optimizer(model: torch.nn.Module, cfg: dict) -> torch.optim.Optimizer:
    if cfg["optimizer"] == "sgd":
        return torch.optim.SGD(model.parameters(), lr=cfg["lr"], momentum=cfg["momentum"],
                               nesterov=cfg["nesterov"], weight_decay=cfg["weight_decay"])
    return torch.optim.Adam(model.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"])


def make_schedule(optimizer: torch.optim.Optimizer, cfg: dict, total_steps: int):
    if cfg["schedule"] == "constant":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    warmup = max(1, int(cfg["warmup_frac"] * total_steps))

    def one_cycle(step: int) -> float:  # linear up to the peak, linear down to zero
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, one_cycle)


def load_data(cfg: dict, data_dir: str | None, download: bool) -> D.ImageDataset:
    try:
        data = D.load_dataset(cfg["dataset"], data_dir, download=download, verify=cfg.get("verify", True))
    except (D.DatasetNotFoundError, ValueError) as exc:
        if cfg["dataset"] != "mnist" or not isinstance(exc, D.DatasetNotFoundError):
            raise SystemExit(str(exc)) from None
        data = D.load_dataset("mnist", data_dir, download=False, allow_sample=True)
        _print_main(f"MNIST not found and not downloadable: training on the {len(data.train_labels):,}-image "
                    f"sample shipped with cnnkern (pass --data-dir for the full set)")
    spec = M.spec(cfg["model"])
    shape = tuple(data.train_images.shape[1:])
    if shape != spec.input_shape or len(data.classes) > spec.num_classes:
        raise SystemExit(f"model {cfg['model']} takes {'x'.join(map(str, spec.input_shape))} images in at most "
                         f"{spec.num_classes} classes; {data.source} has {'x'.join(map(str, shape))} images in "
                         f"{len(data.classes)} classes")
    return data


def _print_main(*args) -> None:
    """print, on the main process only."""
    if DIST.is_main():
        print(*args, flush=True)


def evaluate(model: torch.nn.Module, loader: D.DeviceLoader) -> tuple[float, float]:
    """Test loss and accuracy over the loader's whole data set (summed over the processes' shards)."""
    model.eval()
    loss_sum, correct = 0.0, 0
    with torch.no_grad():
        for images, labels in loader:
            logits = model(images)
            loss_sum += F.cross_entropy(logits.float(), labels, reduction="sum").item()
            correct += (logits.argmax(1) == labels).sum().item()
    model.train()
    loss_sum, correct = DIST.all_reduce_sum((loss_sum, correct), loader.device)
    return loss_sum / loader.num_samples, 100.0 * correct / loader.num_samples


def _rng_state(device: str) -> dict:
    state = {"cpu": torch.get_rng_state()}
    if device == "cuda":
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def save_checkpoint(path: Path, cfg, model, optimizer, schedule, loader, step, history) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save({"config": cfg, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "schedule": schedule.state_dict(), "loader": loader.state_dict(), "step": step,
                "history": history, "rng": _rng_state(cfg["device"])}, tmp)
    os.replace(tmp, path)


def plot_curves(history: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, [h["train_loss"] for h in history], "o-", label="train")
    ax_loss.plot(epochs, [h["test_loss"] for h in history], "o-", label="test")
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy loss", title="loss")
    ax_loss.legend()
    ax_acc.plot(epochs, [h["test_accuracy"] for h in history], "o-", color="C2")
    ax_acc.set(xlabel="epoch", ylabel="test accuracy (%)", title="accuracy")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _check_batch_size(cfg: dict, world: int) -> None:
    if cfg["batch_size"] % world:
        raise SystemExit(f"--batch-size {cfg['batch_size']} is not divisible by the {world} processes: each takes "
                         f"an equal part of every batch (use a multiple of {world})")


def _unsynchronised_batch_norms(model: torch.nn.Module) -> int:
    """BatchNorm layers that --sync-bn leaves with per-process statistics (those convert_sync_batchnorm
    does not take: torch's own, in a model not converted to cnnkern's layers)."""
    return sum(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and not isinstance(m, DIST.SyncBatchNormReLU2d)
               for m in model.modules())


def train(cfg: dict, out: Path, *, data_dir=None, download=True, resume: dict | None = None,
          save_every: int = 0, max_steps: int = 0, progress: bool = True) -> list[dict]:
    """Runs (or continues) training as configured; returns the per-epoch history.

    In a process group of more than one process (main() sets torchrun's up), every process
    calls this: each trains a DistributedDataParallel replica on its shard of every batch,
    and rank 0 alone prints and writes to `out`. Every process returns the same losses."""
    world, main_process = DIST.world_size(), DIST.is_main()
    _check_batch_size(cfg, world)
    device, dtype = DIST.local_device(cfg["device"]), DTYPES[cfg["dtype"]]
    if main_process:
        out.mkdir(parents=True, exist_ok=True)
    with DIST.main_first():  # a download happens once, into the directory the others then read
        data = load_data(cfg, data_dir, download)
    torch.manual_seed(cfg["seed"])  # the same initial model on every process
    model = M.build(cfg["model"], cfg["layers"])
    if cfg.get("sync_bn"):
        model = DIST.convert_sync_batchnorm(model)
    model = model.to(device=device, dtype=dtype)
    if cfg["channels_last"]:
        model = model.to(memory_format=torch.channels_last)
    common = dict(mean=data.mean, std=data.std, device=device, dtype=dtype, channels_last=cfg["channels_last"],
                  rank=DIST.rank(), world_size=world)
    train_loader = D.DeviceLoader(data.train_images, data.train_labels, cfg["batch_size"], shuffle=True,
                                  drop_last=False, crop_padding=cfg["crop_padding"], flip=cfg["flip"],
                                  seed=cfg["seed"], **common)
    test_loader = D.DeviceLoader(data.test_images, data.test_labels, 1000, **common)
    steps_per_epoch = len(train_loader)
    optimizer = make_optimizer(model, cfg)
    schedule = make_schedule(optimizer, cfg, cfg["epochs"] * steps_per_epoch)
    history: list[dict] = []
    step = 0
    if resume is not None:
        # Every process loads the same state (rank 0's): the processes' RNG streams are identical
        # throughout, as all start from the same seed.
        model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        schedule.load_state_dict(resume["schedule"])
        train_loader.load_state_dict(resume["loader"])
        step, history = resume["step"], resume["history"]
        torch.set_rng_state(resume["rng"]["cpu"])
        if "cuda" in resume["rng"]:
            torch.cuda.set_rng_state(resume["rng"]["cuda"])
    # DDP averages the gradients over the processes; `model` stays the unwrapped module, whose
    # state_dict keys the checkpoints keep.
    replica = model if world == 1 else torch.nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None)

    ckpt = out / CHECKPOINT
    source = "the shipped sample" if data.is_sample else data.source
    processes = ""
    if world > 1:
        processes = f", {world} processes" + (" with synchronised BatchNorm" if cfg.get("sync_bn") else "")
    _print_main(f"{cfg['model']} on {cfg['dataset']} ({len(data.train_labels):,} train / {len(data.test_labels):,} "
                f"test images from {source}); {cfg['layers']} layers, backend {cfg['backend'] or 'default'}, "
                f"{cfg['device']} {cfg['dtype']}{processes}")
    unsynchronised = _unsynchronised_batch_norms(model) if cfg.get("sync_bn") else 0
    if unsynchronised:
        _print_main(f"--sync-bn: {unsynchronised} BatchNorm layers are not cnnkern BatchNormReLU2d and keep "
                    f"per-process statistics")
    from tqdm import tqdm

    # The compiled module shares the model's parameters; checkpoints keep the model's own state_dict keys.
    forward = (torch.compile(replica, mode="reduce-overhead" if device.type == "cuda" else "default")
               if cfg.get("compile") else replica)
    with use_backend(cfg["backend"]):
        while train_loader.state_dict()["epoch"] < cfg["epochs"]:
            epoch = train_loader.state_dict()["epoch"]
            first = train_loader.state_dict()["position"]
            bar = tqdm(total=steps_per_epoch, initial=first, desc=f"epoch {epoch + 1}/{cfg['epochs']}",
                       disable=not progress or not main_process, mininterval=1.0, file=sys.stderr, leave=False)
            loss_sum, seen, start = 0.0, 0, time.perf_counter()
            for k, (images, labels) in enumerate(train_loader, start=first):
                logits = forward(images).float()
                if world == 1:
                    loss = F.cross_entropy(logits, labels, label_smoothing=cfg["label_smoothing"])
                else:
                    # DDP averages the processes' gradients: world/(global batch size) times the shard's
                    # summed loss makes that average the gradient of the global batch's mean loss, also
                    # for a last batch that splits unevenly.
                    shard_sum = F.cross_entropy(logits, labels, label_smoothing=cfg["label_smoothing"],
                                                reduction="sum")
                    global_batch = min(cfg["batch_size"], train_loader.num_samples - k * cfg["batch_size"])
                    loss = shard_sum * (world / global_batch)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                step += 1
                batch_sum = loss.item() * len(labels) if world == 1 else shard_sum.item()
                loss_sum += batch_sum
                seen += len(labels)
                bar.update(1)
                bar.set_postfix(loss=f"{batch_sum / max(len(labels), 1):.4f}",
                                img_s=f"{seen / (time.perf_counter() - start):.0f}", refresh=False)
                stop = max_steps and step >= max_steps
                if main_process and ((save_every and step % save_every == 0) or stop):
                    save_checkpoint(ckpt, cfg, model, optimizer, schedule, train_loader, step, history)
                if stop:
                    bar.close()
                    _print_main(f"stopped after {step} steps; checkpoint in {ckpt}")
                    return history
            bar.close()
            seconds = time.perf_counter() - start
            loss_sum, seen = DIST.all_reduce_sum((loss_sum, seen), device)
            DIST.broadcast_buffers(model)  # evaluate and save rank 0's running statistics on every process
            test_loss, test_acc = evaluate(model, test_loader)
            history.append({"epoch": epoch + 1, "train_loss": loss_sum / max(seen, 1), "test_loss": test_loss,
                            "test_accuracy": test_acc, "seconds": seconds,
                            "images_per_second": seen / seconds if seconds > 0 else math.nan,
                            "partial_epoch": first > 0})
            _print_main(f"epoch {epoch + 1}/{cfg['epochs']}: train loss {history[-1]['train_loss']:.4f}, "
                        f"test loss {test_loss:.4f}, test accuracy {test_acc:.2f}%, "
                        f"{history[-1]['images_per_second']:.0f} images/s, {seconds:.1f} s")
            if main_process:
                save_checkpoint(ckpt, cfg, model, optimizer, schedule, train_loader, step, history)

    if main_process:
        launch = {"world_size": world} if world > 1 else {}
        (out / "metrics.json").write_text(json.dumps({"config": cfg, "data_source": source, **launch,
                                                      "epochs": history}, indent=2) + "\n")
        if history:
            plot_curves(history, out / "curves.png", f"{cfg['model']} ({cfg['layers']} layers)")
    _print_main(f"wrote {out / 'metrics.json'}, {out / 'curves.png'} and {ckpt}")
    return history


def main(args: argparse.Namespace) -> int:
    resume = None
    if args.resume:
        resume = torch.load(args.resume, map_location="cpu", weights_only=False)
        cfg = dict(resume["config"])
        if cfg["dataset"] != args.dataset:
            raise SystemExit(f"{args.resume} is a {cfg['dataset']} run, not {args.dataset}")
        if args.epochs is not None:
            cfg["epochs"] = args.epochs
        if args.sync_bn:
            cfg["sync_bn"] = True
        out = Path(args.out) if args.out else Path(args.resume).parent
    else:
        cfg = _config(args)
        out = Path(args.out or os.path.join("runs", cfg["model"]))
    # Under torchrun with several processes: every process runs train() in one process group.
    with DIST.process_group_from_env(cfg["device"]):
        train(cfg, out, data_dir=args.data_dir, download=not args.no_download, resume=resume,
              save_every=args.save_every, max_steps=args.max_steps, progress=not args.quiet)
    return 0
