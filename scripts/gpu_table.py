"""Per backend and op on a GPU: max relative error against torch (float64 on
the CPU as reference) and mean time per call (CUDA-synchronised) for forward
and forward+backward, cnnkern beside torch, fp16 and fp32."""
import time

import torch
import torch.nn.functional as F

import cnnkern
from cnnkern import functional as CF


def timed(fn, reps=20):
    fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(reps):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / reps * 1e3


def cases(dtype):
    """(name, input shape, cnnkern fn, torch fn) on the layer shapes of the MNIST and CIFAR networks."""
    w5 = torch.randn(20, 10, 5, 5, device="cuda", dtype=dtype) / 250 ** 0.5
    w3 = torch.randn(128, 64, 3, 3, device="cuda", dtype=dtype) / 576 ** 0.5
    bw, bb = torch.rand(64, device="cuda") + 0.5, torch.randn(64, device="cuda")
    return [
        ("conv 10->20 5x5", (64, 10, 12, 12), lambda x: CF.conv2d(x, w5), lambda x: F.conv2d(x, w5)),
        ("conv 64->128 3x3", (256, 64, 32, 32), lambda x: CF.conv2d(x, w3, padding=1),
         lambda x: F.conv2d(x, w3, padding=1)),
        ("maxpool 2", (256, 64, 32, 32), lambda x: CF.max_pool2d(x, 2), lambda x: F.max_pool2d(x, 2)),
        ("avgpool 3/2", (256, 64, 32, 32), lambda x: CF.avg_pool2d(x, 3, 2, 1), lambda x: F.avg_pool2d(x, 3, 2, 1)),
        ("bn+relu train", (256, 64, 32, 32),
         lambda x: CF.batch_norm_relu(x, None, None, bw, bb, training=True),
         # the float64 reference needs float64 parameters; fp16/fp32 use fp32 ones, as cnnkern does
         lambda x: F.relu(F.batch_norm(x, None, None, *(p.to(x.dtype) if x.dtype == torch.float64 else p
                                                          for p in (bw, bb)), training=True))),
    ]


def main():
    assert torch.cuda.is_available(), "gpu_table.py needs a GPU"
    print(f"{torch.cuda.get_device_name()} | torch {torch.__version__} | allow_tf32={torch.backends.cudnn.allow_tf32}")
    print(f"{'op':<18} {'dtype':<8} {'backend':<8} {'rel err':>9} {'fwd ms':>8} {'torch':>8} {'f+b ms':>8} {'torch':>8}")
    for dtype in (torch.float16, torch.float32):
        for name, shape, ours, ref in cases(dtype):
            x = torch.randn(shape, device="cuda", dtype=dtype, requires_grad=True)
            expected = ref(x.detach().double()).cpu()
            t_fwd = timed(lambda: ref(x))
            t_all = timed(lambda: ref(x).float().sum().backward())
            for backend in cnnkern.available_backends("cuda"):
                with cnnkern.use_backend(backend):
                    got = ours(x)
                    err = ((got.double().cpu() - expected).abs().max() / expected.abs().max()).item()
                    fwd = timed(lambda: ours(x))
                    both = timed(lambda: ours(x).float().sum().backward())
                print(f"{name:<18} {str(dtype)[6:]:<8} {backend:<8} {err:>9.2e} {fwd:>8.3f} {t_fwd:>8.3f} "
                      f"{both:>8.3f} {t_all:>8.3f}")


if __name__ == "__main__":
    main()
