"""cnnkern.convert: swap torch.nn layers for cnnkern's and back.

cnnkern's layers subclass their torch.nn counterparts and add no state, so a
conversion changes a module's class and nothing else: parameters, buffers,
hooks, train/eval mode, device and dtype stay as they were, and the state_dict
keys are unchanged. Only modules whose type is exactly a torch.nn class are
converted (a user subclass may override forward, so it is left alone).

Fusion: a BatchNorm2d whose output goes only into a ReLU becomes one
BatchNormReLU2d; into a ReLU6, SiLU or Hardswish, one BatchNormAct2d with that
activation. Every other BatchNorm2d becomes a BatchNormAct2d with
activation="identity" (cnnkern's kernels, nothing fused), and the report says
why it was not fused.
- Inside an nn.Sequential, the activation's slot then holds a FusedActivation
  placeholder (FusedReLU for a ReLU), so the indices, and therefore the
  state_dict keys, do not move.
- In any other module, its forward() is traced with torch.fx (its children as
  opaque calls), so a ReLU called there as a module (`self.relu`, shared or
  not) or as a function (F.relu, torch.relu, x.relu(), F.relu6, F.silu,
  F.hardswish) is found too. The module then runs that graph, with the
  activation calls after fused BatchNorms taken out and
  its functional pooling (F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d, a
  mean over H and W) routed to cnnkern's ops: an instance attribute `forward`
  runs the code fx generates from the rewritten graph, with the module as
  `self`. Class, attributes, children and state_dict stay the module's own. A forward() that torch.fx cannot trace,
  that traces differently in train and eval mode, or that reads its own
  parameters or constants is left as it is, and the report says so.
  A graph freezes the Python-level choices forward() made while it was traced
  (e.g. `if self.downsample is not None`): convert again after changing a
  module's structure. nn.DataParallel replicas would still call the original
  children through it; DistributedDataParallel, which does not replicate, is
  unaffected.
Converting back restores the torch.nn modules and forward() exactly.

convert(model, report=True) also returns a ConversionReport: what was swapped,
fused and routed, and what was left on torch and why.
"""
from __future__ import annotations

import collections
import copy
import dataclasses
import importlib
import types

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from . import functional as CF
from . import modules as K


class FusedActivation(nn.Identity):
    """Placeholder left where an activation module was fused into the BatchNorm before it."""

    def __init__(self, activation: str, inplace: bool = False):
        super().__init__()
        self.activation, self.inplace = activation, inplace


class FusedReLU(FusedActivation):
    """Placeholder left where a ReLU was fused into the BatchNormReLU2d before it."""

    def __init__(self, inplace: bool = False):
        super().__init__("relu", inplace)


# The activations cnnkern fuses: the torch.nn module and functions of each.
_ACT_MODULES = {"relu": nn.ReLU, "relu6": nn.ReLU6, "silu": nn.SiLU, "hardswish": nn.Hardswish}
_ACT_OF_MODULE = {cls: name for name, cls in _ACT_MODULES.items()}
_ACT_OF_FUNCTION = {F.relu: "relu", torch.relu: "relu", torch.relu_: "relu", F.relu_: "relu", F.relu6: "relu6",
                    F.silu: "silu", F.hardswish: "hardswish"}
_ACT_OF_METHOD = {"relu": "relu", "relu_": "relu"}
_ACT_FUNCTIONS = {"relu": F.relu, "relu6": F.relu6, "silu": F.silu, "hardswish": F.hardswish}
# activations a BatchNorm is often followed by, not fused: named in the report
_OTHER_ACTIVATIONS = {nn.GELU: "GELU", F.gelu: "GELU"}


class BatchNorm2dAct(nn.BatchNorm2d):
    """act(nn.BatchNorm2d(x)) with torch's kernels: what a BatchNormAct2d that has no
    FusedActivation placeholder after it converts back to."""

    activation = "relu"

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return _ACT_FUNCTIONS[self.activation](super().forward(input))


class BatchNorm2dReLU(BatchNorm2dAct):
    """relu(nn.BatchNorm2d(x)) with torch's kernels: what a BatchNormReLU2d that
    has no FusedReLU placeholder after it converts back to."""


_TO_CNNKERN = {
    nn.Conv2d: K.Conv2d,
    nn.MaxPool2d: K.MaxPool2d,
    nn.AvgPool2d: K.AvgPool2d,
    nn.AdaptiveAvgPool2d: K.AdaptiveAvgPool2d,
    BatchNorm2dReLU: K.BatchNormReLU2d,
    BatchNorm2dAct: K.BatchNormAct2d,
}
_TO_TORCH = {v: k for k, v in _TO_CNNKERN.items()}


def _recast(module: nn.Module, cls: type) -> nn.Module:
    module.__class__ = cls
    return module


def _fuse(bn: nn.BatchNorm2d, activation: str) -> nn.Module:
    """bn as cnnkern's fused BatchNorm ending in activation."""
    if activation == "relu":
        return _recast(bn, K.BatchNormReLU2d)
    _recast(bn, K.BatchNormAct2d).activation = activation
    return bn


def _unfuse(bn: nn.Module) -> nn.Module:
    """A fused BatchNorm as the plain nn.BatchNorm2d it came from (the activation is restored elsewhere)."""
    bn.__dict__.pop("activation", None)
    return _recast(bn, nn.BatchNorm2d)


def _placeholder(activation: str, inplace: bool) -> FusedActivation:
    return FusedReLU(inplace) if activation == "relu" else FusedActivation(activation, inplace)


def _fuse_sequential(seq: nn.Sequential) -> tuple:
    """Fuses seq's BatchNorm2d -> activation neighbours; returns (name, activation) of the fused
    and (name, why) of the other BatchNorm2d."""
    names, fused, alone = list(seq._modules), [], []
    for a, b in zip(names, names[1:] + [None]):
        bn, after = seq._modules[a], seq._modules[b] if b is not None else None
        if type(bn) is not nn.BatchNorm2d:
            continue
        activation = _ACT_OF_MODULE.get(type(after))
        if activation is not None:
            seq._modules[a] = _fuse(bn, activation)
            seq._modules[b] = _placeholder(activation, after.inplace)
            fused.append((a, activation))
        else:
            what = _OTHER_ACTIVATIONS.get(type(after), type(after).__name__)
            alone.append((a, f"followed by {what} in its nn.Sequential" if after is not None
                          else "last in its nn.Sequential (what its output goes to is not seen)"))
    return fused, alone


def _unfuse_sequential(seq: nn.Sequential) -> None:
    names = list(seq._modules)
    for a, b in zip(names, names[1:]):
        bn, placeholder = seq._modules[a], seq._modules[b]
        if isinstance(bn, K.BatchNormAct2d) and isinstance(placeholder, FusedActivation):
            seq._modules[b] = _ACT_MODULES[bn.activation](placeholder.inplace)
            seq._modules[a] = _unfuse(bn)


# ---- forward() graphs -----------------------------------------------------------

_POOL_FUNCTIONS = {F.max_pool2d: CF.max_pool2d, F.max_pool2d_with_indices: CF.max_pool2d,
                   F.avg_pool2d: CF.avg_pool2d, F.adaptive_avg_pool2d: CF.adaptive_avg_pool2d}
_HW_DIMS = ({2, 3}, {-2, -1}, {2, -1}, {-2, 3})


def spatial_mean(input: torch.Tensor, dim, keepdim: bool = False) -> torch.Tensor:
    """input.mean(dim, keepdim) where convert() found a mean over H and W (global average pooling,
    as in shufflenet and mnasnet): cnnkern's adaptive average pool for a 4-D floating-point input,
    torch.mean otherwise."""
    if input.dim() == 4 and input.is_floating_point() and {d % 4 for d in dim} == {2, 3}:
        out = CF.adaptive_avg_pool2d(input, 1)
        return out if keepdim else out.flatten(1)
    return torch.mean(input, dim, keepdim=keepdim)


class _ChildrenAsCalls(fx.Tracer):
    """Traces one module's own forward(): every submodule call stays one call_module node."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return True


def _trace(module: nn.Module):
    """module's forward() as an fx graph, or (None, why not)."""
    was = module.training
    graphs = []
    try:
        for mode in (True, False):  # only this module's flag: its children are not run
            module.training = mode
            graphs.append(_ChildrenAsCalls().trace(module))
    except Exception as e:  # noqa: BLE001 - any failure to trace means "leave forward() alone"
        first = (str(e).strip().splitlines() or [""])[0][:120]
        return None, f"forward() does not trace with torch.fx ({type(e).__name__}: {first})"
    finally:
        module.training = was
    if str(graphs[0]) != str(graphs[1]):
        return None, "forward() differs between train and eval mode"
    if any(n.op == "get_attr" for n in graphs[0].nodes):
        return None, "forward() reads its own parameters, buffers or constants"
    return graphs[0], None


def _activation_node(module: nn.Module, node: fx.Node) -> str | None:
    """The activation node computes from its first argument and nothing else, or None."""
    if node.op == "call_module" and len(node.args) == 1 and not node.kwargs:
        return _ACT_OF_MODULE.get(type(module.get_submodule(node.target)))
    if node.op == "call_function" and len(node.args) == 1 and set(node.kwargs) <= {"inplace"}:
        try:
            return _ACT_OF_FUNCTION.get(node.target)
        except TypeError:  # an unhashable target is no activation of ours
            return None
    if node.op == "call_method" and len(node.args) == 1 and not node.kwargs:
        return _ACT_OF_METHOD.get(node.target)
    return None


def _describe(module: nn.Module, node: fx.Node) -> str:
    if node.op == "call_module":
        child = type(module.get_submodule(node.target))
        return _OTHER_ACTIVATIONS.get(child, child.__name__)
    if node.op == "call_function":
        return _OTHER_ACTIVATIONS.get(node.target, getattr(node.target, "__name__", str(node.target)))
    return f"{node.op} {node.target}"


def _rewrite_forward(module: nn.Module, path: str, report: "ConversionReport") -> None:
    """Fuse module's BatchNorm2d -> activation pairs and route its functional pools, through its fx graph."""
    bn_sites = collections.defaultdict(list)
    for child_name, child in module.named_children():
        if type(child) is nn.BatchNorm2d:
            bn_sites[child_name] = []
    graph, why = _trace(module)
    if graph is None:
        for name in bn_sites:
            report.alone.append((_join(path, name), why))
        if bn_sites:
            report.untraced.append((path or "(top)", type(module).__name__, why))
        return
    for node in graph.nodes:
        if node.op == "call_module" and node.target in bn_sites:
            bn_sites[node.target].append(node)
    changed = False
    for name, sites in bn_sites.items():
        if not sites:
            report.alone.append((_join(path, name), "not called by forward()"))
            continue
        users = [list(n.users) for n in sites]
        acts = {_activation_node(module, u[0]) if len(u) == 1 and u[0].args[0] is n else None
                for u, n in zip(users, sites)}
        if len(acts) != 1 or None in acts:
            after = sorted({_describe(module, u) for us in users for u in us} or {"the output"})
            report.alone.append((_join(path, name), f"its output goes to {', '.join(after)}, "
                                 "not only to one activation"))
            continue
        (activation,) = acts
        for bn_node, (act,) in zip(sites, users):
            act.replace_all_uses_with(bn_node)
            graph.erase_node(act)
        _fuse(module.get_submodule(name), activation)
        report.fused.append((_join(path, name), "forward()", activation))
        changed = True
    for node in graph.nodes:
        if node.op == "call_function" and node.target in _POOL_FUNCTIONS:
            report.routed.append((path or "(top)", _qualname(node.target)))
            node.target = _POOL_FUNCTIONS[node.target]
            changed = True
        elif (node.op, node.target) in (("call_method", "mean"), ("call_function", torch.mean)):
            dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
            extra = set(node.kwargs) - {"dim", "keepdim"}
            if isinstance(dim, (list, tuple)) and set(dim) in _HW_DIMS and not extra and len(node.args) <= 3:
                report.routed.append((path or "(top)", "mean over H and W"))
                node.op, node.target = "call_function", spatial_mean
                node.args = (node.args[0], tuple(dim), *node.args[2:])
                node.kwargs = {k: v for k, v in node.kwargs.items() if k != "dim"}
                changed = True
    if changed:
        graph.lint()
        # an instance attribute, not a submodule: nn.Module.__setattr__ would register it
        object.__setattr__(module, "forward", _GraphForward(module, graph))


class _GraphForward:
    """A module's forward() as the Python code torch.fx generates from its rewritten graph, run with
    the module itself as `self` (so its children, hooks and state are the module's own). Deep-copies
    and pickles with the module: the code is kept as source and compiled again, with no retrace."""

    def __init__(self, module: nn.Module, graph: fx.Graph):
        code = graph.python_code(root_module="self")
        self.module, self.code = module, code.src
        self._globals = dict(code.globals)
        self._compile()

    def _compile(self) -> None:
        namespace = dict(self._globals)
        exec(compile(self.code, f"<cnnkern.convert: {type(self.module).__name__}.forward>", "exec"), namespace)
        self._fn = namespace["forward"]

    def __call__(self, *args, **kwargs):
        return self._fn(self.module, *args, **kwargs)

    def __getstate__(self):
        names = {k: ("module", v.__name__) for k, v in self._globals.items() if isinstance(v, types.ModuleType)}
        return {"module": self.module, "code": self.code, "modules": names,
                "globals": {k: v for k, v in self._globals.items() if k not in names}}

    def __setstate__(self, state):
        self.module, self.code = state["module"], state["code"]
        self._globals = dict(state["globals"])
        self._globals.update({k: importlib.import_module(name) for k, (_, name) in state["modules"].items()})
        self._compile()

    def __deepcopy__(self, memo):
        new = _GraphForward.__new__(_GraphForward)
        memo[id(self)] = new
        new.module = copy.deepcopy(self.module, memo)
        new.code, new._globals, new._fn = self.code, self._globals, self._fn
        return new


def _restore_forward(module: nn.Module) -> None:
    if isinstance(module.__dict__.get("forward"), _GraphForward):
        del module.__dict__["forward"]
        for child in module.children():
            if isinstance(child, K.BatchNormAct2d):  # its activation is in forward() again
                _unfuse(child)


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _qualname(fn) -> str:
    return f"{fn.__module__.replace('torch._C._nn', 'torch.nn.functional')}.{fn.__name__}"


@dataclasses.dataclass
class ConversionReport:
    """What convert() did to a model (module paths as in named_modules())."""
    swapped: list = dataclasses.field(default_factory=list)   # (path, torch class, cnnkern class)
    fused: list = dataclasses.field(default_factory=list)     # (BatchNorm path, "nn.Sequential" or "forward()",
    #                                                            activation)
    alone: list = dataclasses.field(default_factory=list)     # (BatchNorm path, why nothing was fused into it)
    routed: list = dataclasses.field(default_factory=list)    # (module path, function)
    left: list = dataclasses.field(default_factory=list)      # (path, class, why): still torch's
    untraced: list = dataclasses.field(default_factory=list)  # (module path, class, why)

    def counts(self) -> dict:
        swapped = collections.Counter(cls for _, cls, _ in self.swapped)
        left = collections.Counter(cls for _, cls, _ in self.left)
        fused = collections.Counter(act for _, _, act in self.fused)
        return {"swapped": dict(swapped), "fused": dict(fused), "alone": len(self.alone),
                "routed": len(self.routed), "left": dict(left)}

    def __str__(self) -> str:
        c = self.counts()
        fused = ", ".join(f"{n} {act}" for act, n in sorted(c["fused"].items())) or "none"
        lines = ["cnnkern.convert: " + ", ".join(f"{n} {k}" for k, n in sorted(c["swapped"].items())) + " swapped; "
                 f"BatchNorm2d+activation fused: {fused}; {c['alone']} BatchNorm2d alone; "
                 f"{c['routed']} functional pools routed"]
        if self.alone:
            lines.append("BatchNorm2d with nothing fused (run as BatchNormAct2d(activation='identity')):")
            why = collections.Counter(reason for _, reason in self.alone)
            lines += [f"  {n} x {reason}" for reason, n in why.most_common()]
        if self.left:
            lines.append("left on torch:")
            why = collections.Counter((cls, reason) for _, cls, reason in self.left)
            lines += [f"  {n} x {cls}: {reason}" for (cls, reason), n in why.most_common()]
        return "\n".join(lines)


_KERNEL_LAYERS = (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.BatchNorm2d)


def _own_forward(module: nn.Module) -> bool:
    """Whether module is a user's (or a model zoo's) module with children and a forward() of its own:
    torch.nn's modules and containers are not traced (nothing of theirs to fuse or route)."""
    cls = type(module)
    return (cls.forward is not nn.Module.forward and not cls.__module__.startswith("torch.")
            and cls not in _TO_TORCH and not isinstance(module, fx.GraphModule)
            and any(True for _ in module.children()))


def _convert(module: nn.Module, to: str, path: str, report: ConversionReport) -> nn.Module:
    if to == "cnnkern":
        if isinstance(module, nn.Sequential):
            fused, alone = _fuse_sequential(module)
            report.fused += [(_join(path, name), "nn.Sequential", act) for name, act in fused]
            report.alone += [(_join(path, name), why) for name, why in alone]
        elif _own_forward(module):
            _rewrite_forward(module, path, report)
    else:
        if isinstance(module, nn.Sequential):
            _unfuse_sequential(module)
        _restore_forward(module)
    for name, child in list(module._modules.items()):
        if child is not None:
            module._modules[name] = _convert(child, to, _join(path, name), report)
    if to == "cnnkern" and type(module) is nn.BatchNorm2d:  # nothing fused into it (report.alone says why)
        report.swapped.append((path, "BatchNorm2d", "BatchNormAct2d"))
        return _fuse(module, "identity")
    if to == "torch" and type(module) is K.BatchNormAct2d and module.activation == "identity":
        report.swapped.append((path, "BatchNormAct2d", "BatchNorm2d"))
        return _unfuse(module)
    table = _TO_CNNKERN if to == "cnnkern" else _TO_TORCH
    cls = table.get(type(module))
    if cls is not None:
        report.swapped.append((path, type(module).__name__, cls.__name__))
        return _recast(module, cls)
    if isinstance(module, _KERNEL_LAYERS) and type(module) not in _TO_TORCH:
        report.left.append((path, type(module).__name__, "a subclass of a torch.nn layer (its forward may differ)"))
    return module


def convert(module: nn.Module, to: str = "cnnkern", *, inplace: bool = False, report: bool = False,
            sync_bn: bool = False, process_group=None):
    """Return `module` with its convolution, pooling and BatchNorm+ReLU layers
    computed by cnnkern (to="cnnkern") or by torch.nn again (to="torch").

    Weights are kept; with inplace=False (the default) the module is deep-copied
    first, as torch.ao's conversions do. report=True returns (module,
    ConversionReport) instead: print it for a summary. sync_bn=True also makes every fused
    BatchNorm a cnnkern.distributed.SyncBatchNormReLU2d (statistics over `process_group`, default
    all processes, as nn.SyncBatchNorm).
    """
    if to not in ("cnnkern", "torch"):
        raise ValueError(f"to must be 'cnnkern' or 'torch', got {to!r}")
    if not isinstance(module, nn.Module):
        raise TypeError(f"convert expects an nn.Module, got {type(module).__name__}")
    if not inplace:
        module = copy.deepcopy(module)
    if sync_bn and to != "cnnkern":
        raise ValueError("sync_bn=True needs to='cnnkern'")
    summary = ConversionReport()
    out = _convert(module, to, "", summary)
    if sync_bn:
        from .distributed import convert_sync_batchnorm

        out = convert_sync_batchnorm(out, process_group)
    if to == "cnnkern":  # BatchNorms outside any traced forward() or nn.Sequential
        reported = {p for p, _ in summary.alone} | {p for p, _, _ in summary.fused}
        summary.alone += [(path, "its parent's forward() is not traced (a torch.nn container or the top)")
                          for path, m in out.named_modules()
                          if isinstance(m, K.BatchNormAct2d) and m.activation == "identity" and path not in reported]
    return (out, summary) if report else out
