"""The CPU speed target, measured: one epoch of mnist-lenet (batch 64, its SGD
recipe) with torch.nn layers and with cnnkern layers on the cpu backend, side
by side in one process, alternating so that drift on a shared machine hits
both alike. Prints each epoch's time and the ratio cnnkern / torch (the target
is <= 1.0) from the medians.

    python scripts/epoch_ratio.py [--data-dir DIR] [--repeats 2] [--steps N]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

import cnnkern
from cnnkern import data as D
from cnnkern import models, train


def epoch_seconds(layers: str, dataset: D.ImageDataset, steps: int) -> float:
    torch.manual_seed(0)
    model = models.build("mnist-lenet", layers)
    cfg = train.recipe_config("mnist-lenet")
    opt = train.make_optimizer(model, cfg)
    loader = D.DeviceLoader(dataset.train_images, dataset.train_labels, cfg["batch_size"], mean=dataset.mean,
                            std=dataset.std, shuffle=True, seed=0)
    start = time.perf_counter()
    for step, (images, labels) in enumerate(loader):
        if steps and step == steps:
            break
        loss = F.cross_entropy(model(images), labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", help="MNIST directory (default: the usual search, else the shipped sample)")
    parser.add_argument("--repeats", type=int, default=2, help="epochs per variant (alternating)")
    parser.add_argument("--steps", type=int, default=0, help="stop each epoch after this many steps (0: whole)")
    args = parser.parse_args()
    dataset = D.load_dataset("mnist", args.data_dir, download=False, allow_sample=True)
    print(f"mnist-lenet, batch 64, {len(dataset.train_labels):,} images from "
          f"{'the shipped sample' if dataset.is_sample else dataset.source}, {torch.get_num_threads()} threads")
    times: dict[str, list[float]] = {"torch": [], "cnnkern": []}
    with cnnkern.use_backend("cpu"):
        epoch_seconds("cnnkern", dataset, 20)  # warm-up: first calls allocate and load
        for _ in range(args.repeats):
            for layers in ("torch", "cnnkern"):
                times[layers].append(epoch_seconds(layers, dataset, args.steps))
                print(f"  {layers:8s} epoch {times[layers][-1]:.2f} s")
    torch_s, kern_s = statistics.median(times["torch"]), statistics.median(times["cnnkern"])
    print(f"median epoch: torch {torch_s:.2f} s, cnnkern {kern_s:.2f} s; ratio cnnkern/torch {kern_s / torch_s:.3f} "
          f"(target <= 1.0)")


if __name__ == "__main__":
    main()
