"""Training on several processes with torch.distributed, and a synchronised fused BatchNorm.

    model = cnnkern.distributed.convert_sync_batchnorm(model)   # before DistributedDataParallel
    model = torch.nn.parallel.DistributedDataParallel(model)

SyncBatchNormReLU2d is BatchNormReLU2d with nn.SyncBatchNorm's rule: in training,
with more than one process in its group, the batch statistics are those of the
union of every process's batch, so N processes each given a part of a batch
compute what one process given the whole batch computes. Like nn.SyncBatchNorm
(which runs CUDA tensors only) it is meant for DistributedDataParallel: the
parameter gradients it returns are each process's own share, which DDP sums
(and divides by the number of processes, as it does for every parameter).

The helpers below serve `python -m cnnkern train` under torchrun: the process
group from torchrun's environment, which process is the main one, sums of
metrics over the processes.
"""
from __future__ import annotations

import contextlib
import os

import torch
import torch.distributed as dist

from . import _backend, _ops
from .modules import BatchNormAct2d, BatchNormReLU2d

__all__ = ["SyncBatchNormReLU2d", "all_reduce_sum", "broadcast_buffers", "convert_sync_batchnorm",
           "end_process_group", "is_main", "local_device", "main_first", "process_group_from_env", "rank",
           "world_size"]


# --------------------------------------------------------------------------- processes

def world_size(group=None) -> int:
    """Processes in `group` (default: all), 1 without an initialised process group."""
    return dist.get_world_size(group) if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    """This process's rank, 0 without an initialised process group."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main() -> bool:
    """Whether this process is the one that prints and writes files (rank 0)."""
    return rank() == 0


@contextlib.contextmanager
def process_group_from_env(device_type: str):
    """torchrun's process group for the duration of the block, when torchrun started more
    than one process (WORLD_SIZE > 1): gloo for CPU tensors, nccl for CUDA tensors with each
    process on cuda:LOCAL_RANK. Otherwise (one process, or a group already initialised by
    the caller) it does nothing."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        yield
        return
    if device_type == "cuda":
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
    finished = False
    try:
        yield
        finished = True
    finally:
        end_process_group(wait=finished)


def end_process_group(wait: bool = True) -> None:
    """Destroy the process group, after a barrier when `wait`. Without it a process that
    finishes first tears its group down while another still uses it (rank 0 writing its
    files), and gloo may abort the early one (SIGABRT, "terminate called without an active
    exception", seen once in CI on a loaded machine). A process that failed does not wait:
    the others would sit in the barrier until its timeout."""
    if not dist.is_initialized():
        return
    try:
        if wait:
            dist.barrier()
    finally:
        dist.destroy_process_group()


@contextlib.contextmanager
def main_first():
    """The block runs on the main process, then on the others (a download into a shared cache
    happens once). If it fails on the main process, torchrun stops the waiting others."""
    waits = world_size() > 1 and not is_main()
    if waits:
        dist.barrier()
    yield
    if world_size() > 1 and not waits:
        dist.barrier()


def local_device(device_type: str) -> torch.device:
    """This process's device of type `device_type`: its own GPU (cuda:LOCAL_RANK, made
    current by process_group_from_env) when several processes train on CUDA."""
    if device_type == "cuda" and world_size() > 1:
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device(device_type)


def all_reduce_sum(values, device: torch.device) -> list:
    """Each of `values` (numbers) summed over all processes, in float64 (a tensor on `device`
    carries them: nccl reduces CUDA tensors only). With one process: the values unchanged."""
    if world_size() == 1:
        return list(values)
    sums = torch.tensor(list(values), dtype=torch.float64, device=device)
    dist.all_reduce(sums)
    return sums.tolist()


def broadcast_buffers(module: torch.nn.Module, src: int = 0) -> None:
    """Give every process rank `src`'s buffers. DDP does this at the start of each training
    forward; a model evaluated or saved after the last step would otherwise hold each process's
    own running statistics (a BatchNorm that is not synchronised updates them from its part)."""
    if world_size() == 1:
        return
    for buffer in module.buffers():
        dist.broadcast(buffer, src)


# --------------------------------------------------------------------------- synchronised BatchNorm

def _global_moments(input: torch.Tensor, group) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """Per channel over every process's input: the mean, the biased variance, Σ(x - mean)² and
    the count M, in fp32 (fp64 for float64). Two passes, so the variance is not the difference
    of two large sums."""
    acc = _ops._stat_dtype(input)
    n, c, h, w = input.shape
    dims = (0, 2, 3)
    # The count rides with the sums in one all-reduce (exact in fp32 up to 2^24 values a channel).
    sums = torch.cat([input.sum(dims, dtype=acc), torch.full((1,), n * h * w, dtype=acc, device=input.device)])
    dist.all_reduce(sums, group=group)
    count = sums[c].item()
    if count <= 1:
        raise ValueError(f"Expected more than 1 value per channel when training, got {int(count)} over all "
                         f"processes for input size {tuple(input.shape)}")
    mean = sums[:c] / count
    squares = (input.to(acc) - mean.view(1, c, 1, 1)).square_().sum(dims)
    dist.all_reduce(squares, group=group)
    return mean, squares / count, squares, count


def _eval_backward(backend: str, grad, output, input, mean, var, weight, bias, eps, activation):
    """The op's backward in eval mode (statistics held fixed): (w·invstd·g, Σ g·x̂, Σ g) with g the
    gradient at the activation's input. The Triton op recomputes the activation from the input
    and takes which gradients to compute; the C++ ops read the ReLU mask from the output."""
    # Positional arguments: the Triton eager ops (autograd.Function.apply) take no keywords.
    ops = _ops.ops_for(backend)
    if backend == "triton":
        return ops.batch_norm_relu_backward(grad, input, mean, var, weight, bias, False, eps, [True, True, True],
                                            activation)
    return ops.batch_norm_relu_backward(grad, output, input, mean, var, weight, False, eps, bias, activation)


class _SyncBatchNormReLU(torch.autograd.Function):
    """act(batch_norm(x)) with the given global statistics, differentiated as if they came from
    x: the statistics' share of the input gradient needs the gradient sums of every process."""

    @staticmethod
    def forward(ctx, input, weight, bias, mean, var, count, eps, group, activation):
        backend = _backend.resolve(input.device)
        output, _, _ = _ops.ops_for(backend).batch_norm_relu(input, weight, bias, mean, var, None, False, None, eps,
                                                             activation)
        ctx.save_for_backward(input, output, weight, bias, mean, var)
        ctx.backend, ctx.count, ctx.eps, ctx.group, ctx.activation = backend, count, eps, group, activation
        return output

    @staticmethod
    def backward(ctx, grad):
        input, output, weight, bias, mean, var = ctx.saved_tensors
        acc, c = mean.dtype, input.shape[1]
        # A layer without affine parameters is one with weight 1 and bias 0: the ops reduce Σ g·x̂ only
        # for a weight they are given, and it is needed here whatever the layer's parameters.
        w = weight if weight is not None else torch.ones(c, dtype=acc, device=input.device)
        b = bias if bias is not None else torch.zeros(c, dtype=acc, device=input.device)
        dx, grad_weight, grad_bias = _eval_backward(ctx.backend, grad, output, input, mean, var, w, b, ctx.eps,
                                                    ctx.activation)
        sums = torch.cat([grad_weight.to(acc), grad_bias.to(acc)])
        dist.all_reduce(sums, group=ctx.group)
        sum_gx, sum_g = sums[:c], sums[c:]
        invstd = torch.rsqrt(var + ctx.eps)
        shape = (1, c, 1, 1)
        # dx = w·invstd·(g - Σg/M - x̂·Σ(g·x̂)/M); the op gave w·invstd·g (the statistics held fixed).
        # In place on fresh tensors in the input's memory format.
        correction = (input.to(acc) - mean.view(shape)).mul_(invstd.view(shape))
        correction.mul_((sum_gx / ctx.count).view(shape)).add_((sum_g / ctx.count).view(shape))
        correction.mul_((w.to(acc) * invstd).view(shape))
        dx = dx.to(acc).sub_(correction).to(input.dtype)
        # Each process's own parameter gradients, in the parameters' dtype: DDP reduces them over the processes.
        want_x, want_w, want_b = ctx.needs_input_grad[:3]
        return (dx if want_x else None, grad_weight.to(weight.dtype) if want_w else None,
                grad_bias.to(bias.dtype) if want_b else None, None, None, None, None, None, None)


class SyncBatchNormReLU2d(BatchNormReLU2d):
    """BatchNormReLU2d whose training statistics span every process of `process_group`
    (default: all), as nn.SyncBatchNorm's do: per channel, the count and Σx are all-reduced
    for the mean, then Σ(x - mean)² for the biased variance (in fp32, fp64 for float64);
    the running statistics are updated as nn.BatchNorm2d does, the unbiased variance with
    the count over all processes. In eval mode, or without a process group of more than one
    process, it is BatchNormReLU2d. Same state_dict keys as nn.BatchNorm2d."""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1, affine: bool = True,
                 track_running_stats: bool = True, process_group=None, device=None, dtype=None) -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device, dtype)
        self.process_group = process_group

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not self.training or world_size(self.process_group) == 1:
            return super().forward(input)
        self._check_input_dim(input)
        group = self.process_group or dist.group.WORLD
        with torch.no_grad():
            mean, var, squares, count = _global_moments(input, group)
            if self.track_running_stats:
                self._update_running_stats(mean, squares, count)
        return _SyncBatchNormReLU.apply(input, self.weight, self.bias, mean, var, count, self.eps, group,
                                        self.activation)

    def _update_running_stats(self, mean: torch.Tensor, squares: torch.Tensor, count: float) -> None:
        # nn.BatchNorm2d's rule (torch/nn/modules/batchnorm.py): bump the counter; the factor is the
        # momentum, or 1/num_batches_tracked for momentum=None (0 without a counter).
        factor = 0.0 if self.momentum is None else self.momentum
        if self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:
                factor = 1.0 / float(self.num_batches_tracked)
        for running, batch in ((self.running_mean, mean), (self.running_var, squares / (count - 1))):
            if running is not None:
                running.copy_(batch * factor + running.to(batch.dtype) * (1 - factor))


def convert_sync_batchnorm(module: torch.nn.Module, process_group=None) -> torch.nn.Module:
    """`module` with every fused BatchNorm in it (BatchNormAct2d, any activation, BatchNormReLU2d
    included; itself included) replaced by a SyncBatchNormReLU2d holding the same parameters,
    buffers, mode and activation, as nn.SyncBatchNorm.convert_sync_batchnorm does for torch's
    BatchNorms. Layers already synchronised are kept; other modules are left alone (a plain
    nn.BatchNorm2d keeps per-process statistics: cnnkern.convert turns them into BatchNormAct2d)."""
    converted = module
    if isinstance(module, BatchNormAct2d) and not isinstance(module, SyncBatchNormReLU2d):
        converted = SyncBatchNormReLU2d(module.num_features, module.eps, module.momentum, module.affine,
                                        module.track_running_stats, process_group)
        converted.weight, converted.bias = module.weight, module.bias
        converted.running_mean, converted.running_var = module.running_mean, module.running_var
        converted.num_batches_tracked = module.num_batches_tracked
        converted.training = module.training
        for name in ("activation", "qconfig"):
            if hasattr(module, name):
                setattr(converted, name, getattr(module, name))
    for name, child in module.named_children():
        converted.add_module(name, convert_sync_batchnorm(child, process_group))
    return converted
