"""The GPU check, sized for a lent machine: every stage time-boxed, GPU work first,
results written as they come (JSON lines and a markdown table) into $OUT when it is
set, else build/.

    python scripts/gpu_check.py [--budget 540] [--out DIR] [--dry-run]

Stages, in order (each a subprocess with its own time box, cut to what is left of
the budget): preflight (devices, versions, whether nvcc's CUDA major matches
torch's: if not, the C++ CUDA backend is not built and the check runs Triton only),
build (the extension in place, CUDA kernels for the visible GPU), ops (per op and
pass on benchmark layer shapes: CUDA-event time of cnnkern-triton, cnnkern-cuda
and torch, TFLOP/s or GB/s against the roofline, max error against a float64
reference, kernels per call, host µs per call, first-call time), determinism
(weight gradients bit for bit twice), cuda-graph (a captured training step of
each model), compile (torch.compile(fullgraph=True) of a model on the Triton
ops), train (short timed runs of mnist-lenet and cifar-fast), profile (the static
GPU profile's estimates beside CUDA-event times: its calibration), tests (the
suite's CUDA-device cases, with whatever time is left).

--dry-run runs the same logic on the CPU (cpu backend and the Triton interpreter,
tiny shapes, wall-clock timing, graph capture skipped, compile with the eager
backend), so CI exercises the script without a GPU.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAGES = [  # (name, time box in seconds)
    ("preflight", 60), ("build", 300), ("ops", 180), ("determinism", 60), ("cuda-graph", 90), ("compile", 120),
    ("train", 120), ("profile", 120), ("tests", 600),
]
# Roofline of the H100/H200 class: dense fp16/bf16 tensor cores, TF32, HBM.
PEAK = {"fp16": 990e12, "bf16": 990e12, "fp32": 495e12, "bytes": 3.35e12}


# ----------------------------------------------------------------------------- output


class Report:
    def __init__(self, out: Path):
        self.out = out
        out.mkdir(parents=True, exist_ok=True)
        self.jsonl, self.md = out / "gpu_check.jsonl", out / "gpu_check.md"

    def record(self, **row):
        with self.jsonl.open("a") as f:
            f.write(json.dumps(row, default=str) + "\n")

    def markdown(self, text: str):
        with self.md.open("a") as f:
            f.write(text + "\n")
        print(text, flush=True)


# ----------------------------------------------------------------------------- the driver


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--budget", type=float, default=540.0, help="seconds for the whole check")
    p.add_argument("--out", default=os.environ.get("OUT") or str(ROOT / "build"))
    p.add_argument("--dry-run", action="store_true", help="exercise every stage on the CPU")
    p.add_argument("--stage", help=argparse.SUPPRESS)  # run one stage in this process
    p.add_argument("--only", nargs="*", help="run only these stages")
    args = p.parse_args(argv)
    report = Report(Path(args.out))
    if args.stage:
        return STAGE_FNS[args.stage](report, args.dry_run)
    deadline = time.monotonic() + args.budget
    report.markdown(f"# cnnkern GPU check{' (dry run, CPU)' if args.dry_run else ''}\n")
    status = 0
    for name, box in STAGES:
        if args.only and name not in args.only:
            continue
        left = deadline - time.monotonic()
        if left < 10:
            report.record(stage=name, status="skipped", why="budget spent")
            report.markdown(f"- {name}: skipped (budget spent)")
            continue
        limit = min(box, left)
        start = time.monotonic()
        cmd = [sys.executable, __file__, "--stage", name, "--out", args.out] + (["--dry-run"] if args.dry_run else [])
        try:
            rc = subprocess.run(cmd, cwd=ROOT, timeout=limit).returncode
            state = "ok" if rc == 0 else f"failed (rc {rc})"
        except subprocess.TimeoutExpired:
            rc, state = 124, f"timed out after {limit:.0f} s"
        seconds = time.monotonic() - start
        report.record(stage=name, status=state, seconds=round(seconds, 1))
        report.markdown(f"- stage {name}: {state}, {seconds:.0f} s")
        if name == "preflight" and rc != 0:
            return 1
        status = status or rc
    return status


# ----------------------------------------------------------------------------- stages


def _env_setup(dry: bool):
    if dry:
        os.environ.setdefault("TRITON_INTERPRET", "1")
    sys.path.insert(0, str(ROOT))


def _cuda_major_of_nvcc() -> int | None:
    nvcc = Path(os.environ.get("CUDA_HOME", "/usr/local/cuda")) / "bin" / "nvcc"
    try:
        out = subprocess.run([str(nvcc), "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    for word in out.replace(",", " ").split():
        if word.startswith("V") and word[1:2].isdigit():
            return int(word[1:].split(".")[0])
    return None


def stage_preflight(report: Report, dry: bool) -> int:
    import torch

    cuda = torch.cuda.is_available()
    if not cuda and not dry:
        report.markdown("preflight: no GPU visible (use --dry-run on a CPU machine)")
        return 1
    torch_major = int(torch.version.cuda.split(".")[0]) if torch.version.cuda else None
    nvcc_major = _cuda_major_of_nvcc()
    build_cuda = cuda and torch_major is not None and nvcc_major == torch_major
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    info = dict(torch=torch.__version__, torch_cuda=torch.version.cuda, nvcc_major=nvcc_major, triton=triton_version,
                device=torch.cuda.get_device_name() if cuda else "cpu (dry run)", build_cuda=build_cuda,
                python=sys.version.split()[0])
    report.record(stage="preflight", **info)
    (report.out / "gpu_check_plan.json").write_text(json.dumps(info))
    report.markdown("## preflight\n\n" + "\n".join(f"- {k}: {v}" for k, v in info.items()) +
                    ("" if build_cuda or not cuda else "\n- nvcc and torch disagree on the CUDA major: "
                                                       "Triton only (the C++ CUDA backend is not built)") + "\n")
    return 0


def stage_build(report: Report, dry: bool) -> int:
    plan = json.loads((report.out / "gpu_check_plan.json").read_text())
    env = dict(os.environ, MAX_JOBS=os.environ.get("MAX_JOBS", str(os.cpu_count() or 2)))
    if plan["build_cuda"]:
        import torch

        env.update(FORCE_CUDA="1", TORCH_CUDA_ARCH_LIST="%d.%d" % torch.cuda.get_device_capability())
    else:
        env["FORCE_CUDA"] = "0"
    if dry and any((ROOT / "cnnkern").glob("_C*.so")):
        report.markdown("build: dry run, the installed extension is used")
        return 0
    rc = subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--inplace"], cwd=ROOT, env=env).returncode
    report.markdown(f"build: {'ok' if rc == 0 else 'FAILED'} (CUDA kernels: {plan['build_cuda']})")
    return rc


def _timer(dry: bool):
    """fn -> (median ms of a call, host µs per call): CUDA events on a GPU, wall clock in a dry run."""
    import statistics

    import torch

    def run(fn, reps):
        if dry:
            times = []
            for _ in range(reps):
                t = time.perf_counter()
                fn()
                times.append((time.perf_counter() - t) * 1e3)
            return statistics.median(times), statistics.median(times) * 1e3
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(reps)]
        host = []
        torch.cuda.synchronize()
        for start, end in events:
            start.record()
            t = time.perf_counter()
            fn()
            host.append((time.perf_counter() - t) * 1e6)
            end.record()
        torch.cuda.synchronize()
        return statistics.median(s.elapsed_time(e) for s, e in events), statistics.median(host)

    return run


def _kernels_per_call(fn, dry: bool) -> int | None:
    if dry:
        return None
    import torch
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return sum(1 for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA)


def _layers(dry: bool):
    """(label, op, input shape, kwargs, weight shape): the ResNet-style 3x3 layers of issue 8, cifar-fast's
    BatchNorm+ReLU and pooling layers; a dry run takes tiny ones."""
    if dry:
        return [("conv 16->16 3x3", "conv2d", (2, 16, 8, 8), dict(padding=1), (16, 16, 3, 3)),
                ("maxpool 2", "max_pool2d", (2, 16, 8, 8), dict(kernel_size=2), None),
                ("bn+relu", "batch_norm_relu", (2, 16, 8, 8), {}, None)]
    return [("L3 conv 64->64 3x3", "conv2d", (1024, 64, 32, 32), dict(padding=1), (64, 64, 3, 3)),
            ("L4 conv 256->256 3x3", "conv2d", (1024, 256, 16, 16), dict(padding=1), (256, 256, 3, 3)),
            ("L5 conv 256->256 3x3", "conv2d", (1024, 256, 8, 8), dict(padding=1), (256, 256, 3, 3)),
            ("maxpool 2 (cifar-fast)", "max_pool2d", (1024, 64, 32, 32), dict(kernel_size=2), None),
            ("avgpool 3/2", "avg_pool2d", (1024, 64, 32, 32), dict(kernel_size=3, stride=2, padding=1), None),
            ("bn+relu train (cifar-fast)", "batch_norm_relu", (1024, 64, 32, 32), {}, None)]


def _work(op, shape, weight, out_shape, itemsize):
    """(FLOPs, bytes) of one forward: conv 2·N·K·P·Q·C/g·R·S; the rest one read and one write."""
    import math

    if op == "conv2d":
        n, k, p, q = out_shape
        return 2 * n * k * p * q * math.prod(weight[1:]), None
    return None, (math.prod(shape) + math.prod(out_shape)) * itemsize


def stage_ops(report: Report, dry: bool) -> int:
    _env_setup(dry)
    import torch
    import torch.nn.functional as F

    import cnnkern
    from cnnkern import functional as CF

    device = "cpu" if dry else "cuda"
    backends = [b for b in (["cpu"] if dry else ["triton", "cuda"]) if b in cnnkern.available_backends(device)]
    timer = _timer(dry)
    reps = 3 if dry else 20
    dtypes = [torch.float32] if dry else [torch.float16, torch.bfloat16]
    report.markdown("## ops\n\n| layer | dtype | pass | impl | ms | TFLOP/s or GB/s | of peak | max err | kernels |"
                    " host µs | first call s |\n|" + "---|" * 11)
    for label, op, shape, kw, wshape in _layers(dry):
        for dtype in dtypes:
            gen = torch.Generator().manual_seed(0)
            x = torch.randn(shape, generator=gen).to(device, dtype).contiguous(memory_format=torch.channels_last)
            w = None if wshape is None else (torch.randn(wshape, generator=gen) / (wshape[1] * 9) ** 0.5).to(
                device, dtype).contiguous(memory_format=torch.channels_last)
            c = shape[1]
            bn = (torch.rand(c, generator=gen).add(0.5).to(device), torch.randn(c, generator=gen).to(device))

            def call(impl, x=x, w=w):
                if op == "conv2d":
                    return (F.conv2d if impl == "torch" else CF.conv2d)(x, w, **kw)
                if op == "batch_norm_relu":
                    if impl == "torch":
                        return F.relu(F.batch_norm(x, None, None, bn[0].to(x.dtype) if x.dtype == torch.float64
                                                   else bn[0], bn[1].to(x.dtype) if x.dtype == torch.float64
                                                   else bn[1], training=True))
                    return CF.batch_norm_relu(x, None, None, *bn, training=True)
                return getattr(F if impl == "torch" else CF, op)(x, **kw)

            with torch.no_grad():
                ref = call("torch", x.double(), None if w is None else w.double()).float()
            for pass_ in ("forward", "forward+backward"):
                for impl in ["torch"] + backends:
                    ctx = cnnkern.use_backend(impl) if impl != "torch" else cnnkern.use_backend(None)
                    with ctx:
                        leaf = x.detach().requires_grad_(pass_ != "forward")
                        wl = None if w is None else w.detach().requires_grad_(pass_ != "forward")

                        def fn():
                            y = call(impl, leaf, wl)
                            if pass_ != "forward":
                                y.backward(torch.ones_like(y))
                            return y

                        t0 = time.perf_counter()
                        y = fn()
                        if not dry:
                            torch.cuda.synchronize()
                        first = time.perf_counter() - t0
                        err = ((y.detach().float() - ref).abs().max() / ref.abs().max().clamp_min(1e-30)).item()
                        ms, host_us = timer(fn, reps)
                        kernels = _kernels_per_call(fn, dry)
                    flops, nbytes = _work(op, shape, wshape, tuple(y.shape), x.element_size())
                    scale = 3 if pass_ != "forward" else 1  # backward: about two more forward passes of work
                    dname = str(dtype).removeprefix("torch.").replace("float16", "fp16").replace("bfloat16", "bf16")
                    if flops:
                        rate, peak = flops * scale / (ms * 1e-3), PEAK.get(dname, PEAK["fp32"])
                        rate_s = f"{rate / 1e12:.1f} TF"
                    else:
                        rate, peak = nbytes * scale / (ms * 1e-3), PEAK["bytes"]
                        rate_s = f"{rate / 1e9:.0f} GB/s"
                    report.record(stage="ops", layer=label, dtype=dname, pass_=pass_, impl=impl, ms=ms,
                                  rate=rate, of_peak=rate / peak, max_err=err, kernels=kernels, host_us=host_us,
                                  first_call_s=first)
                    report.markdown(f"| {label} | {dname} | {pass_} | {impl} | {ms:.3f} | {rate_s} | "
                                    f"{rate / peak:.0%} | {err:.1e} | {kernels} | {host_us:.0f} | {first:.2f} |")
    report.markdown("")
    return 0


def stage_determinism(report: Report, dry: bool) -> int:
    _env_setup(dry)
    import torch

    import cnnkern
    from cnnkern import functional as CF

    device = "cpu" if dry else "cuda"
    backends = [b for b in ("triton", "cuda", "cpu", "cuda_emu") if b in cnnkern.available_backends(device)]
    shape, wshape = ((2, 16, 8, 8), (16, 16, 3, 3)) if dry else ((64, 64, 32, 32), (64, 64, 3, 3))
    gen = torch.Generator().manual_seed(0)
    x0 = torch.randn(shape, generator=gen).to(device)
    w0 = torch.randn(wshape, generator=gen).to(device)
    torch.use_deterministic_algorithms(True)
    failures = 0
    for backend in backends:
        with cnnkern.use_backend(backend):
            grads = []
            for _ in range(2):
                x, w = x0.clone().requires_grad_(), w0.clone().requires_grad_()
                y = CF.conv2d(x, w, padding=1)
                grads.append(torch.autograd.grad(y, (x, w), torch.ones_like(y)))
        same = all(torch.equal(a, b) for a, b in zip(*grads))
        failures += not same
        report.record(stage="determinism", backend=backend, bitwise_equal=same)
        report.markdown(f"- determinism, conv backward, {backend}: {'bit for bit' if same else 'DIFFERS'}")
    return int(failures > 0)


def stage_cuda_graph(report: Report, dry: bool) -> int:
    _env_setup(dry)
    import torch

    from cnnkern import models

    if dry:
        report.markdown("- cuda-graph: skipped in a dry run (no GPU)")
        return 0
    failures = 0
    for name in models.MODELS:
        model = models.build(name, layers="cnnkern").cuda()
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        x = torch.randn(32, *models.MODELS[name].input_shape, device="cuda")
        y = torch.randint(0, 10, (32,), device="cuda")

        def step():
            opt.zero_grad(set_to_none=False)
            loss = torch.nn.functional.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            return loss

        try:
            s = torch.cuda.Stream()
            s.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(s):
                for _ in range(3):  # warm-up: compiles, autotunes, allocates
                    step()
            torch.cuda.current_stream().wait_stream(s)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                step()
            graph.replay()
            torch.cuda.synchronize()
            state = "captured and replayed"
        except Exception as exc:  # noqa: BLE001  (reported, the check goes on)
            failures += 1
            state = f"FAILED: {type(exc).__name__}: {str(exc)[:200]}"
        report.record(stage="cuda-graph", model=name, status=state)
        report.markdown(f"- cuda-graph, {name}: {state}")
    return int(failures > 0)


def stage_compile(report: Report, dry: bool) -> int:
    _env_setup(dry)
    import torch

    import cnnkern
    from cnnkern import models

    device = "cpu" if dry else "cuda"
    # a dry run traces the cpu backend's ops (the interpreted Triton ones would take minutes)
    backend = "triton" if not dry and "triton" in cnnkern.available_backends(device) else "cpu"
    model = models.build("cifar-fast", layers="cnnkern").to(device)
    x = torch.randn(4 if dry else 64, 3, 32, 32, device=device)
    with cnnkern.use_backend(backend):
        eager = model(x)
        t0 = time.perf_counter()
        compiled = torch.compile(model, fullgraph=True, backend="eager" if dry else "inductor")
        out = compiled(x)
        seconds = time.perf_counter() - t0
    err = ((out - eager).abs().max() / eager.abs().max()).item()
    report.record(stage="compile", backend=backend, seconds=seconds, max_err=err)
    report.markdown(f"- torch.compile(fullgraph=True), cifar-fast on {backend}: {seconds:.1f} s, "
                    f"max err against eager {err:.1e}")
    return 0


def stage_train(report: Report, dry: bool) -> int:
    device = "cpu" if dry else "cuda"
    steps = "5" if dry else "200"
    status = 0
    shared = ROOT.parent / "shared" / "data"
    for model, dataset in (("mnist-lenet", "mnist"), ("cifar-fast", "cifar10")):
        out = report.out / f"train-{model}"
        cmd = [sys.executable, "-m", "cnnkern", "train", dataset, "--model", model, "--device", device,
               "--epochs", "1", "--max-steps", steps, "--no-download", "--quiet", "--out", str(out)]
        data = next((d for d in (ROOT / "shared" / "data" / dataset, shared / dataset) if d.is_dir()), None)
        if data is not None and (data / "to_batches.py").is_file():  # the shared CIFAR-10: converted once
            converted = report.out / "cifar10"
            if not (converted / "cifar-10-batches-py").is_dir():
                subprocess.run([sys.executable, str(data / "to_batches.py"), str(converted)], check=True)
            data = converted
        if data is not None:
            cmd += ["--data-dir", str(data)]
        elif dataset != "mnist":  # MNIST falls back to the sample cnnkern ships
            report.markdown(f"- train {model}: skipped, no {dataset} data beside the checkout")
            continue
        if dry and model == "cifar-fast":
            cmd += ["--batch-size", "8"]
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        t0 = time.perf_counter()
        rc = subprocess.run(cmd, cwd=ROOT, env=env).returncode
        seconds = time.perf_counter() - t0
        status = status or rc
        report.record(stage="train", model=model, steps=int(steps), seconds=seconds, rc=rc)
        report.markdown(f"- train {model}: {steps} steps on {device}, {seconds:.1f} s, rc {rc}")
    return status


def stage_profile(report: Report, dry: bool) -> int:
    if dry:
        report.markdown("- profile: skipped in a dry run (tests/test_triton_kernels.py runs the static profile)")
        return 0
    rc = subprocess.run([sys.executable, "scripts/gpu_profile.py", "--measure", "--no-gate", "--shapes", "resnet",
                         "--dtypes", "fp16", "bf16", "--layouts", "cl", "--json",
                         str(report.out / "gpu_profile_measured.json"), "--output",
                         str(report.out / "gpu_profile_measured.txt")], cwd=ROOT,
                        env=dict(os.environ, PYTHONPATH=str(ROOT))).returncode
    report.markdown(f"- profile (estimates beside measured times): rc {rc}, gpu_profile_measured.txt")
    return rc


def stage_tests(report: Report, dry: bool) -> int:
    if dry:
        report.markdown("- tests: skipped in a dry run (CI runs the suite itself)")
        return 0
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("TRITON_INTERPRET", None)
    log = report.out / "gpu_check_tests.log"
    with log.open("w") as f:
        rc = subprocess.run([sys.executable, "-m", "pytest", "tests", "-q", "-p", "no:cacheprovider", "-k",
                             "not cpu"], cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT).returncode
    tail = log.read_text().strip().splitlines()[-1:] or ["(no output)"]
    report.markdown(f"- tests on CUDA tensors (-k 'not cpu'): {tail[0]}")
    return rc


STAGE_FNS = {"preflight": stage_preflight, "build": stage_build, "ops": stage_ops, "determinism": stage_determinism,
             "cuda-graph": stage_cuda_graph, "compile": stage_compile, "train": stage_train, "profile": stage_profile,
             "tests": stage_tests}

if __name__ == "__main__":
    sys.exit(main())
