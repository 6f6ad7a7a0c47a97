"""Command line: `python -m cnnkern train {mnist,cifar10} [options]` (see --help)."""
from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cnnkern", description="cnnkern: conv-net layers on our own kernels")
    commands = parser.add_subparsers(dest="command", required=True)
    from . import train

    train_parser = commands.add_parser("train", help="train an MNIST or CIFAR-10 CNN",
                                       description=train.__doc__.splitlines()[0])
    train.add_arguments(train_parser)
    args = parser.parse_args(argv)
    return train.main(args)


if __name__ == "__main__":
    sys.exit(main())
