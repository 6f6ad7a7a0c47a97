"""Seed training run: the classic MNIST LeNet with cnnkern's Conv2d.

conv(1->10, 5x5) -> maxpool 2 -> ReLU -> conv(10->20, 5x5) -> maxpool 2 -> ReLU
-> linear(320->10), SGD lr 0.01 momentum 0.5, batch 64. Pooling, ReLU and the
linear layer are still torch's (pooling moves to cnnkern with its own issue).
Reads the gzip IDX files from --data-dir (default: $CNNKERN_DATA, else
../shared/data/mnist beside the checkout).
"""
from __future__ import annotations

import argparse
import gzip
import os
import struct
import time

import torch
import torch.nn.functional as F
from torch import nn

import cnnkern

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def read_idx(path: str) -> torch.Tensor:
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]  # IDX header: two zero bytes, a type code, the number of dimensions
    dims = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
    return torch.frombuffer(bytearray(data[4 + 4 * ndim:]), dtype=torch.uint8).view(*dims)


def load(data_dir: str, split: str, device):
    prefix = "train" if split == "train" else "t10k"
    images = read_idx(os.path.join(data_dir, f"{prefix}-images-idx3-ubyte.gz"))
    labels = read_idx(os.path.join(data_dir, f"{prefix}-labels-idx1-ubyte.gz"))
    images = ((images.float() / 255.0 - 0.1307) / 0.3081).unsqueeze(1)
    return images.to(device), labels.long().to(device)


class LeNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = cnnkern.Conv2d(1, 10, 5)
        self.conv2 = cnnkern.Conv2d(10, 20, 5)
        self.fc = nn.Linear(320, 10)

    def forward(self, x):
        x = F.relu(F.max_pool2d(self.conv1(x), 2))
        x = F.relu(F.max_pool2d(self.conv2(x), 2))
        return self.fc(x.flatten(1))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=os.environ.get("CNNKERN_DATA",
                                                             os.path.join(ROOT, "..", "shared", "data", "mnist")))
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    try:
        train_x, train_y = load(args.data_dir, "train", device)
        test_x, test_y = load(args.data_dir, "test", device)
    except FileNotFoundError as exc:
        raise SystemExit(f"MNIST not found: {exc.filename}. Pass --data-dir or set CNNKERN_DATA.") from None

    model = LeNet().to(device)
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.5)
    print(f"mnist-lenet on {device}, cnnkern backend for conv: {cnnkern.current_backend() or 'default'}")
    for epoch in range(1, args.epochs + 1):
        model.train()
        start = time.time()
        order = torch.randperm(len(train_x), device=device)
        for i in range(0, len(order), args.batch_size):
            idx = order[i:i + args.batch_size]
            loss = F.cross_entropy(model(train_x[idx]), train_y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        seconds = time.time() - start
        model.eval()
        with torch.no_grad():
            correct = sum((model(test_x[i:i + 1000]).argmax(1) == test_y[i:i + 1000]).sum().item()
                          for i in range(0, len(test_x), 1000))
        print(f"epoch {epoch}: last loss {loss.item():.4f}, test accuracy {100.0 * correct / len(test_x):.2f}%, "
              f"{len(train_x) / seconds:.0f} images/s")


if __name__ == "__main__":
    main()
