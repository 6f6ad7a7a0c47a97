#!/usr/bin/env python3
"""Regenerate cnnkern/_data/mnist-sample/ from the official MNIST files.

    python scripts/make_mnist_sample.py SRC_DIR [--out DIR] [--train 6000] [--test 1000]

SRC_DIR holds the four official files (gzip or uncompressed IDX). The sample keeps the
first N records of each, with the count in the header rewritten, gzip-compressed with
mtime 0 and no file name so that the same input gives the same bytes. Standalone (no
cnnkern import), so it runs before the extension is built.
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import struct
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
         "t10k": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def read(src: Path, stem: str) -> bytes:
    for path in (src / (stem + ".gz"), src / stem):
        if path.is_file():
            data = path.read_bytes()
            return gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data
    raise SystemExit(f"{src}: neither {stem}.gz nor {stem}")


def cut(data: bytes, count: int, stem: str) -> bytes:
    if data[:3] != b"\x00\x00\x08":
        raise SystemExit(f"{stem}: not a uint8 IDX file")
    ndim = data[3]
    dims = list(struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim]))
    if count > dims[0]:
        raise SystemExit(f"{stem}: has {dims[0]} records, asked for {count}")
    record = 1
    for d in dims[1:]:
        record *= d
    body = data[4 + 4 * ndim:4 + 4 * ndim + count * record]
    return data[:4] + struct.pack(f">{ndim}I", count, *dims[1:]) + body


def gzip_bytes(data: bytes) -> bytes:
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, compresslevel=9, mtime=0) as f:
        f.write(data)
    return buf.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("src", type=Path, help="directory with the official MNIST files")
    parser.add_argument("--out", type=Path, default=ROOT / "cnnkern" / "_data" / "mnist-sample")
    parser.add_argument("--train", type=int, default=6000)
    parser.add_argument("--test", type=int, default=1000)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for prefix, count in (("train", args.train), ("t10k", args.test)):
        for stem in FILES[prefix]:
            raw = cut(read(args.src, stem), count, stem)
            gz = gzip_bytes(raw)
            (args.out / (stem + ".gz")).write_bytes(gz)
            print(f"{stem}.gz  {count} records  {len(gz)} bytes  md5 (uncompressed) {hashlib.md5(raw).hexdigest()}")


if __name__ == "__main__":
    main()
