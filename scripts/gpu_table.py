"""Per backend and op on a GPU: max relative error against torch (float64 on
the CPU as reference) and mean time per call (CUDA-synchronised), fp16 and fp32."""
import time

import torch
import torch.nn.functional as F

import cnnkern

SHAPES = {  # name: (input NCHW, out channels, kernel, padding)
    "mnist conv2": ((64, 10, 12, 12), 20, 5, 0),
    "cifar 3x3": ((256, 64, 32, 32), 128, 3, 1),
}


def timed(fn, reps=20):
    fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(reps):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / reps * 1e3


def main():
    assert torch.cuda.is_available(), "gpu_table.py needs a GPU"
    print(f"{torch.cuda.get_device_name()} | torch {torch.__version__} | allow_tf32={torch.backends.cudnn.allow_tf32}")
    print(f"{'shape':<12} {'dtype':<8} {'backend':<8} {'fwd err':>9} {'fwd ms':>8} {'torch ms':>9} "
          f"{'fwd+bwd ms':>10} {'torch ms':>9}")
    for name, (xs, k, r, pad) in SHAPES.items():
        for dtype in (torch.float16, torch.float32):
            x = torch.randn(xs, device="cuda", dtype=dtype, requires_grad=True)
            w = torch.randn(k, xs[1], r, r, device="cuda", dtype=dtype, requires_grad=True) / (xs[1] * r * r) ** 0.5
            ref = F.conv2d(x.double().cpu(), w.double().cpu(), padding=pad)
            t_fwd = timed(lambda: F.conv2d(x, w, padding=pad))
            t_all = timed(lambda: F.conv2d(x, w, padding=pad).sum().backward())
            for backend in cnnkern.available_backends("cuda"):
                with cnnkern.use_backend(backend):
                    y = cnnkern.functional.conv2d(x, w, padding=pad)
                    err = ((y.double().cpu() - ref).abs().max() / ref.abs().max()).item()
                    f = timed(lambda: cnnkern.functional.conv2d(x, w, padding=pad))
                    a = timed(lambda: cnnkern.functional.conv2d(x, w, padding=pad).sum().backward())
                print(f"{name:<12} {str(dtype)[6:]:<8} {backend:<8} {err:>9.2e} {f:>8.3f} {t_fwd:>9.3f} "
                      f"{a:>10.3f} {t_all:>9.3f}")


if __name__ == "__main__":
    main()
