"""What every benchmark shares: devices, implementations, batch sizes, quick mode
and the timing itself.

torch and cnnkern are timed in the same run, on the same device, with the same
inputs and the same group name, so pytest-benchmark prints each pair side by
side and scripts/bench_table.py can divide one by the other. Rounds are chosen
here (benchmark.pedantic) rather than by pytest-benchmark's calibration, so
that CUDA can be synchronised before each round outside the timed region and
after it inside, and so that CNNKERN_BENCH_QUICK=1 (CI) can cut the rounds
without anyone having to remember a set of --benchmark-* flags. (No ini file
here: `pytest benchmarks/` would take it instead of pyproject.toml's settings,
whose testpaths keep a plain `pytest` on tests/.)
"""
from __future__ import annotations

import contextlib
import math
import os
import time

import torch

if not torch.cuda.is_available():  # the overhead group's stubbed Triton path runs CPU tensors interpreted
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

import cnnkern  # noqa: E402
from cnnkern import models  # noqa: E402

QUICK = os.environ.get("CNNKERN_BENCH_QUICK") == "1"

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])

# cifar-fast's recipe batch of 1024 is sized for a GPU; on 2 CPU cores it would
# make one benchmark take minutes.
CPU_BATCH_CAP = {"cifar-fast": 64}

# Quick mode: a floor of rounds and a time budget per benchmark small enough
# for the whole subset to finish in well under two minutes on 2 cores.
QUICK_MIN_ROUNDS, QUICK_MAX_TIME, QUICK_WARMUP = 3, 0.1, 1
WARMUP = 3  # untimed calls: Triton autotuning, allocator growth, lazy initialisation


def cnnkern_backends(device: str) -> list[str]:
    """The compiled backends to time on `device` (never cuda_emu or the Triton interpreter: both slow by design)."""
    if device == "cpu":
        return ["cpu"]
    return [b for b in ("triton", "cuda") if b in cnnkern.available_backends(device)]


def impls(device: str) -> list[str]:
    return ["torch"] + [f"cnnkern-{b}" for b in cnnkern_backends(device)]


# The overhead group's Triton host path without a GPU: the Triton backend on CPU tensors with every
# kernel launch stubbed out, so what is timed is everything cnnkern does around the launches.
STUBBED_TRITON = "cnnkern-triton-stubbed"


def stubbed_triton_available() -> bool:
    return not torch.cuda.is_available() and "triton" in cnnkern.available_backends("cpu")


@contextlib.contextmanager
def stubbed_triton_launches():
    """Every Triton kernel's run (the launch, with Triton's own argument binding) does nothing."""
    from triton.runtime.interpreter import InterpretedFunction

    original = InterpretedFunction.run
    InterpretedFunction.run = lambda self, *args, **kwargs: None
    try:
        with cnnkern.use_backend("triton"):
            yield
    finally:
        InterpretedFunction.run = original


def impl_context(impl: str):
    """The backend selection that `impl` runs under."""
    if impl == "torch":
        return contextlib.nullcontext()
    if impl == STUBBED_TRITON:
        return stubbed_triton_launches()
    return cnnkern.use_backend(impl.removeprefix("cnnkern-"))


def batch_size(model: str, device: str) -> int:
    batch = models.MODELS[model].recipe.batch_size
    return min(batch, CPU_BATCH_CAP.get(model, batch)) if device == "cpu" else batch


def model_label(model: str, device: str) -> str:
    """The model's name, saying so where the batch is not the recipe's (the group name carries it)."""
    batch, recipe = batch_size(model, device), models.MODELS[model].recipe.batch_size
    return model if batch == recipe else f"{model} (batch {batch} on {device}, recipe {recipe})"


def bench_param(*values, group: str, id: str):
    """A pytest.param in benchmark group `group`: torch and cnnkern share it, so they sit side by side."""
    return pytest.param(*values, marks=pytest.mark.benchmark(group=group), id=id)


@pytest.fixture
def timed(benchmark, pytestconfig):
    """timed(fn, device, **extra_info): time fn() under benchmark.pedantic.

    On CUDA every round synchronises before the timer starts (pedantic's setup)
    and before it stops, so a round measures the work fn queued, not its launch.
    Rounds: --benchmark-min-rounds at least, more while they fit in
    --benchmark-max-time (quick mode: its own smaller pair), judged from the
    last warm-up call.
    """
    # Converted here: pytest hands over the options' defaults unparsed ("1.0").
    min_rounds = QUICK_MIN_ROUNDS if QUICK else int(pytestconfig.getoption("benchmark_min_rounds"))
    max_time = QUICK_MAX_TIME if QUICK else float(pytestconfig.getoption("benchmark_max_time"))
    warmup = QUICK_WARMUP if QUICK else WARMUP

    def run(fn, device: str, **extra_info):
        # CPU threads: on a shared 2-core machine they decide torch's times as much as the kernels do.
        benchmark.extra_info.update(device=device, threads=torch.get_num_threads(), quick=QUICK, **extra_info)
        sync = torch.cuda.synchronize if device == "cuda" else None

        def round_():
            fn()
            if sync:
                sync()

        for _ in range(warmup):
            if sync:
                sync()
            start = time.perf_counter()
            round_()
            per_call = time.perf_counter() - start
        rounds = max(min_rounds, math.ceil(max_time / max(per_call, 1e-9)))
        benchmark.pedantic(round_, setup=sync, rounds=rounds, iterations=1)

    return run
