// The Python module cnnkern._C: whether the CUDA kernels are compiled in, and
// direct entry points for the pooling layers.
//
// A pooling layer's kernel on a small CPU tensor takes about a microsecond, so a
// call through torch.ops (argument parsing against the schema, ~1.6 µs) and
// Python argument checks (~2 µs) would make it cost twice torch.nn's. The entry
// points here take a call exactly as cnnkern.functional receives it, and when
// every argument is in its plain form (exact ints or tuples/lists of exact ints,
// a plain Tensor, no torch-function mode) and valid by torch's rules, run the op
// through the dispatcher (autograd, profiler, Python modes included) on the
// backend cnnkern._backend has chosen for the tensor's device. Anything else
// returns NotImplemented and cnnkern.functional takes its Python path, which
// raises torch's exceptions with torch's messages: this file only has to know
// what is valid, never how to say what is not.
//
// Triton: once cnnkern._ops has loaded the Triton backend it hands this module
// each pooling op's eager launcher (set_triton). A plain, valid call on the
// Triton backend then costs one Python call into the launcher, which replays its
// launch plan (cnnkern/kernels/_util.py), and one C++ graph node whose backward
// calls the backward launcher: functional's Python checks and an
// autograd.Function cost twice torch.nn's whole call.
#include <torch/csrc/Exceptions.h>
#include <torch/csrc/autograd/functions/basic_ops.h>
#include <torch/csrc/autograd/python_variable.h>
#include <torch/csrc/autograd/saved_variable.h>
#include <ATen/PythonTorchFunctionTLS.h>
#include <ATen/core/Tensor.h>

#include <Python.h>

#include <array>
#include <mutex>
#include <optional>
#include <vector>

#include "cnnkern/pool2d_index.h"
#include "graph_node.h"
#include "launch_plan.h"
#include "op_handles.h"
#include "py_args.h"

namespace cnnkern {
namespace {

// cnnkern._backend.BACKENDS' order; -1: no override (the device's default)
enum Backend : int { kDefault = -1, kTriton = 0, kCuda = 1, kCpu = 2, kCudaEmu = 3 };
int g_backend = kDefault;  // mirrored by _backend.use_backend (set_backend below); read under the GIL

#ifdef CNNKERN_WITH_CUDA
constexpr bool kWithCuda = true;
#else
constexpr bool kWithCuda = false;
#endif

// The Triton launchers (set_triton), strong references kept for the process, and where
// the Triton backend runs here (CPU tensors only under the interpreter).
enum TritonFn { kMaxFwd, kMaxBwd, kAvgFwd, kAvgBwd, kAdaptiveFwd, kAdaptiveBwd, kTritonFns };
PyObject* g_triton[kTritonFns] = {};
PyObject* g_triton_plans[kTritonFns] = {};  // each launcher's plans dict (cnnkern/kernels/_util.py)
bool g_triton_cpu = false, g_triton_cuda = false;
constexpr int kTritonNs = 2;

// What runs `t` here: 0 = the cnnkern namespace, 1 = cnnkern_emu, kTritonNs = the Triton
// launchers, -1 = the Python path decides (Triton not loaded yet, or a backend that
// cannot run the tensor: it raises).
int namespace_for(const at::Tensor& t) {
  const bool cpu = t.device().is_cpu(), cuda = t.device().is_cuda();
  switch (g_backend) {
    case kDefault:
      if (cuda) return g_triton_cuda ? kTritonNs : -1;
      return cpu ? 0 : -1;
    case kCpu:
      return cpu ? 0 : -1;
    case kCudaEmu:
      return cpu ? 1 : -1;
    case kCuda:
      return cuda && kWithCuda ? 0 : -1;
    case kTriton:
      return (cpu && g_triton_cpu) || (cuda && g_triton_cuda) ? kTritonNs : -1;
    default:
      return -1;
  }
}

// An int, or a tuple/list of one or two exact ints (one stands for both), as torch's int[2].
// empty_ok: None or an empty sequence gives {0, 0} and *empty = true (pooling's stride);
// one_ok = false: a sequence must hold two (adaptive pooling's output_size).
bool int_pair(PyObject* o, std::array<int64_t, 2>& out, bool empty_ok = false, bool* empty = nullptr,
              bool one_ok = true) {
  if (empty) *empty = false;
  if (exact_int(o, &out[0])) {
    out[1] = out[0];
    return true;
  }
  const bool tuple = PyTuple_CheckExact(o), list = PyList_CheckExact(o);
  if (!tuple && !list) {
    if (empty_ok && o == Py_None) return *empty = true;
    return false;
  }
  const Py_ssize_t n = tuple ? PyTuple_GET_SIZE(o) : PyList_GET_SIZE(o);
  if (n == 0 && empty_ok) return *empty = true;
  if (n != 2 && !(n == 1 && one_ok)) return false;
  for (Py_ssize_t i = 0; i < n; ++i)
    if (!exact_int(tuple ? PyTuple_GET_ITEM(o, i) : PyList_GET_ITEM(o, i), &out[i])) return false;
  if (n == 1) out[1] = out[0];
  return true;
}

bool exact_bool(PyObject* o, bool* out) {
  if (!PyBool_Check(o)) return false;
  *out = o == Py_True;
  return true;
}

// A plain tensor a cnnkern pooling kernel takes: 3-D or 4-D, non-empty but for the
// batch, floating point, with no __torch_function__ to honour.
const at::Tensor* plain_input(PyObject* o) {
  if (!THPVariable_CheckExact(o) || at::impl::torch_function_mode_enabled()) return nullptr;
  const at::Tensor& t = THPVariable_Unpack(o);
  const int64_t dim = t.dim();
  if (dim != 3 && dim != 4) return nullptr;
  for (int64_t d = dim - 3; d < dim; ++d)
    if (t.size(d) == 0) return nullptr;
  switch (t.scalar_type()) {
    case at::kHalf:
    case at::kBFloat16:
    case at::kFloat:
    case at::kDouble:
      return &t;
    default:
      return nullptr;
  }
}

// torch's pooling shape rules (aten's pool2d_shape_check and pooling_output_shape;
// cnnkern.functional._pool_geometry_checked says them in torch's words).
bool valid_window(const at::Tensor& t, const std::array<int64_t, 2>& k, const std::array<int64_t, 2>& s,
                  const std::array<int64_t, 2>& p, const std::array<int64_t, 2>& d, bool ceil_mode) {
  for (int i = 0; i < 2; ++i) {
    if (k[i] <= 0 || s[i] <= 0 || d[i] <= 0 || p[i] < 0 || p[i] > k[i] / 2) return false;
    if (p[i] > ((k[i] - 1) * d[i] + 1) / 2) return false;
    if (pool_out_size(t.size(t.dim() - 2 + i), k[i], s[i], p[i], d[i], ceil_mode) < 1) return false;
  }
  return true;
}

// Runs fn on a 4-D view of a 3-D (unbatched) input, as torch accepts both.
template <typename Fn>
auto batched(const at::Tensor& input, Fn&& fn) {
  return input.dim() == 3 ? fn(input.unsqueeze(0)) : fn(input);
}
at::Tensor unbatched(const at::Tensor& input, at::Tensor out) {
  return input.dim() == 3 ? out.squeeze(0) : out;
}

PyObject* not_implemented() { Py_RETURN_NOTIMPLEMENTED; }

// ---------------------------------------------------------------------------- Triton

using Pair = std::array<int64_t, 2>;
using torch::autograd::SavedVariable;

PyObject* pair_tuple(const Pair& v) {
  return Py_BuildValue("(LL)", static_cast<long long>(v[0]), static_cast<long long>(v[1]));
}
PyObject* py_bool(bool v) { return PyBool_FromLong(v); }

// launcher fn(*args) through its launch plans, taking the references in args
PyObject* call_python(TritonFn fn, const std::vector<PyObject*>& args) {
  return call_launcher(g_triton[fn], g_triton_plans[fn], args);
}

PyObject* new_ref(PyObject* o) {
  Py_INCREF(o);
  return o;
}

bool records(const at::Tensor& input) { return at::GradMode::is_enabled() && input.requires_grad(); }

// The backward of a Triton pooling call: its backward launcher, called under the GIL.
struct TritonPoolBackward : torch::autograd::Node {
  TritonFn fn = kMaxBwd;
  SavedVariable input_, taps_;  // taps_: max pooling's winning taps
  Pair kernel{}, stride{}, padding{}, dilation{};
  bool ceil_mode = false, count_include_pad = true;
  std::optional<int64_t> divisor_override;

  std::string name() const override {
    return fn == kMaxBwd ? "CnnkernTritonMaxPool2DBackward"
           : fn == kAvgBwd ? "CnnkernTritonAvgPool2DBackward" : "CnnkernTritonAdaptiveAvgPool2DBackward";
  }
  void release_variables() override {
    std::lock_guard<std::mutex> lock(mutex_);
    input_.reset_data();
    taps_.reset_data();
  }
  torch::autograd::variable_list apply(torch::autograd::variable_list&& grads) override {
    at::Tensor dx;
    if (!grads[0].defined() || !task_should_compute_output(0)) return {dx};
    const auto self = getptr();
    const at::Tensor input = input_.unpack(self), taps = fn == kMaxBwd ? taps_.unpack(self) : at::Tensor();
    {
      pybind11::gil_scoped_acquire gil;
      std::vector<PyObject*> args{THPVariable_Wrap(grads[0]), THPVariable_Wrap(input)};  // adaptive: all
      if (fn == kMaxBwd) {
        args.insert(args.end(), {THPVariable_Wrap(taps), pair_tuple(kernel), pair_tuple(stride), pair_tuple(padding),
                                 pair_tuple(dilation), py_bool(ceil_mode)});
      } else if (fn == kAvgBwd) {
        args.insert(args.end(), {pair_tuple(kernel), pair_tuple(stride), pair_tuple(padding), py_bool(ceil_mode),
                                 py_bool(count_include_pad),
                                 divisor_override ? PyLong_FromLongLong(*divisor_override) : new_ref(Py_None)});
      }
      PyObject* out = call_python(fn, args);
      if (!out) {
        python_error err;
        err.persist();
        throw std::move(err);
      }
      dx = THPVariable_Unpack(out);
      Py_DECREF(out);
    }
    // The launchers are not differentiable: under create_graph=True a second backward
    // through dx says so instead of treating it as a constant.
    if (at::GradMode::is_enabled() && grads[0].requires_grad())
      torch::autograd::set_history(dx, make_node<torch::autograd::NotImplemented>(
                                           name(), torch::autograd::collect_next_edges(grads[0])));
    return {dx};
  }
};

// Calls the forward launcher `fn` on the input (as 4-D) and the rest of its arguments, taking
// their references; attaches a node whose backward is fn + 1. Returns, as a new reference, the
// output with the input's rank (max pooling: with the indices when return_indices).
template <typename Setup>
PyObject* triton_pool(TritonFn fn, PyObject* input_obj, const at::Tensor& input, bool max_pool, bool return_indices,
                      std::initializer_list<PyObject*> rest, Setup&& setup) {
  const bool unbatched_input = input.dim() == 3;
  const at::Tensor x = unbatched_input ? input.unsqueeze(0) : input;
  PyObject* x_obj = unbatched_input ? THPVariable_Wrap(x) : new_ref(input_obj);
  std::vector<PyObject*> args{x_obj};
  args.insert(args.end(), rest.begin(), rest.end());
  PyObject* out = call_python(fn, args);
  if (!out) return nullptr;
  const at::Tensor y = THPVariable_Unpack(max_pool ? PyTuple_GET_ITEM(out, 0) : out);
  if (records(x)) {
    auto node = make_node<TritonPoolBackward>();
    auto* n = static_cast<TritonPoolBackward*>(node.get());
    n->fn = static_cast<TritonFn>(fn + 1);
    n->input_ = SavedVariable(x, false);
    if (max_pool) n->taps_ = SavedVariable(THPVariable_Unpack(PyTuple_GET_ITEM(out, 1)), false);
    setup(*n);
    attach(node, x, y);  // max pooling's taps are not differentiable
  }
  if (!unbatched_input && (!max_pool || return_indices)) return out;
  if (!return_indices) {  // the output alone
    PyObject* only = THPVariable_Wrap(unbatched(input, y));
    Py_DECREF(out);
    return only;
  }
  PyObject* pair = PyTuple_New(2);
  if (pair) {
    PyTuple_SET_ITEM(pair, 0, THPVariable_Wrap(unbatched(input, y)));
    PyTuple_SET_ITEM(pair, 1, THPVariable_Wrap(unbatched(input, THPVariable_Unpack(PyTuple_GET_ITEM(out, 1)))));
  }
  Py_DECREF(out);
  return pair;
}

template <int NS>
std::tuple<at::Tensor, at::Tensor> run_max_pool2d(const at::Tensor& x, const std::array<int64_t, 2>& k,
                                                  const std::array<int64_t, 2>& s, const std::array<int64_t, 2>& p,
                                                  const std::array<int64_t, 2>& d, bool ceil_mode) {
  pybind11::gil_scoped_release no_gil;
  return Ops<NS>::get().max_pool2d.call(x, k, s, p, d, ceil_mode);
}

// max_pool2d(input, kernel_size, stride, padding, dilation, ceil_mode, return_indices)
PyObject* max_pool2d(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  HANDLE_TH_ERRORS
  if (nargs != 7) return not_implemented();
  const at::Tensor* input = plain_input(args[0]);
  std::array<int64_t, 2> k{}, s{}, p{}, d{};
  bool stride_empty = false, ceil_mode = false, return_indices = false;
  if (!input || !int_pair(args[1], k) || !int_pair(args[2], s, true, &stride_empty) || !int_pair(args[3], p) ||
      !int_pair(args[4], d) || !exact_bool(args[5], &ceil_mode) || !exact_bool(args[6], &return_indices))
    return not_implemented();
  if (stride_empty) s = k;
  const int ns = namespace_for(*input);
  if (ns < 0 || !valid_window(*input, k, s, p, d, ceil_mode)) return not_implemented();
  if (ns == kTritonNs)
    return triton_pool(kMaxFwd, args[0], *input, true, return_indices,
                       {pair_tuple(k), pair_tuple(s), pair_tuple(p), pair_tuple(d), py_bool(ceil_mode),
                        py_bool(return_indices)},
                       [&](TritonPoolBackward& n) {
                         n.kernel = k, n.stride = s, n.padding = p, n.dilation = d, n.ceil_mode = ceil_mode;
                       });
  auto [y, indices] = batched(*input, [&](const at::Tensor& x) {
    return ns == 0 ? run_max_pool2d<0>(x, k, s, p, d, ceil_mode) : run_max_pool2d<1>(x, k, s, p, d, ceil_mode);
  });
  if (!return_indices) return THPVariable_Wrap(unbatched(*input, std::move(y)));
  PyObject* out = PyTuple_New(2);
  if (!out) return nullptr;
  PyTuple_SET_ITEM(out, 0, THPVariable_Wrap(unbatched(*input, std::move(y))));
  PyTuple_SET_ITEM(out, 1, THPVariable_Wrap(unbatched(*input, std::move(indices))));
  return out;
  END_HANDLE_TH_ERRORS
}

template <int NS>
at::Tensor run_avg_pool2d(const at::Tensor& x, const std::array<int64_t, 2>& k, const std::array<int64_t, 2>& s,
                          const std::array<int64_t, 2>& p, bool ceil_mode, bool count_include_pad,
                          std::optional<int64_t> divisor) {
  pybind11::gil_scoped_release no_gil;
  return Ops<NS>::get().avg_pool2d.call(x, k, s, p, ceil_mode, count_include_pad, divisor);
}

// avg_pool2d(input, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override)
PyObject* avg_pool2d(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  HANDLE_TH_ERRORS
  if (nargs != 7) return not_implemented();
  const at::Tensor* input = plain_input(args[0]);
  std::array<int64_t, 2> k{}, s{}, p{};
  bool stride_empty = false, ceil_mode = false, count_include_pad = true;
  std::optional<int64_t> divisor;
  if (!input || !int_pair(args[1], k) || !int_pair(args[2], s, true, &stride_empty) || !int_pair(args[3], p) ||
      !exact_bool(args[4], &ceil_mode) || !exact_bool(args[5], &count_include_pad))
    return not_implemented();
  if (args[6] != Py_None) {
    int64_t v = 0;
    if (!exact_int(args[6], &v) || v == 0) return not_implemented();
    divisor = v;
  }
  if (stride_empty) s = k;
  const int ns = namespace_for(*input);
  if (ns < 0 || !valid_window(*input, k, s, p, {1, 1}, ceil_mode)) return not_implemented();
  if (ns == kTritonNs)
    return triton_pool(kAvgFwd, args[0], *input, false, false,
                       {pair_tuple(k), pair_tuple(s), pair_tuple(p), py_bool(ceil_mode), py_bool(count_include_pad),
                        new_ref(args[6])},
                       [&](TritonPoolBackward& n) {
                         n.kernel = k, n.stride = s, n.padding = p, n.ceil_mode = ceil_mode;
                         n.count_include_pad = count_include_pad, n.divisor_override = divisor;
                       });
  at::Tensor y = batched(*input, [&](const at::Tensor& x) {
    return ns == 0 ? run_avg_pool2d<0>(x, k, s, p, ceil_mode, count_include_pad, divisor)
                   : run_avg_pool2d<1>(x, k, s, p, ceil_mode, count_include_pad, divisor);
  });
  return THPVariable_Wrap(unbatched(*input, std::move(y)));
  END_HANDLE_TH_ERRORS
}

template <int NS>
at::Tensor run_adaptive_avg_pool2d(const at::Tensor& x, const std::array<int64_t, 2>& size) {
  pybind11::gil_scoped_release no_gil;
  return Ops<NS>::get().adaptive_avg_pool2d.call(x, size);
}

// adaptive_avg_pool2d(input, output_size): positive sizes only (None and 0 take the Python path)
PyObject* adaptive_avg_pool2d(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  HANDLE_TH_ERRORS
  if (nargs != 2) return not_implemented();
  const at::Tensor* input = plain_input(args[0]);
  std::array<int64_t, 2> size{};
  if (!input || !int_pair(args[1], size, false, nullptr, false) || size[0] <= 0 || size[1] <= 0) return not_implemented();
  const int ns = namespace_for(*input);
  if (ns < 0) return not_implemented();
  if (ns == kTritonNs)
    return triton_pool(kAdaptiveFwd, args[0], *input, false, false, {pair_tuple(size)},
                       [](TritonPoolBackward&) {});
  at::Tensor y = batched(*input, [&](const at::Tensor& x) {
    return ns == 0 ? run_adaptive_avg_pool2d<0>(x, size) : run_adaptive_avg_pool2d<1>(x, size);
  });
  return THPVariable_Wrap(unbatched(*input, std::move(y)));
  END_HANDLE_TH_ERRORS
}

// set_triton(launchers, on_cpu, on_cuda): the six pooling launchers in TritonFn's order, and
// whether the Triton backend can run CPU / CUDA tensors in this process
PyObject* set_triton(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  if (nargs != 3 || !PyTuple_Check(args[0]) || PyTuple_GET_SIZE(args[0]) != kTritonFns) {
    PyErr_SetString(PyExc_TypeError, "set_triton(launchers: tuple of 6, on_cpu: bool, on_cuda: bool)");
    return nullptr;
  }
  for (int i = 0; i < kTritonFns; ++i) {
    PyObject* fn = PyTuple_GET_ITEM(args[0], i);
    PyObject* plans = PyObject_GetAttrString(fn, "plans");
    if (!plans) return nullptr;
    if (!PyDict_Check(plans)) {
      Py_DECREF(plans);
      PyErr_SetString(PyExc_TypeError, "set_triton: a launcher's plans must be a dict");
      return nullptr;
    }
    Py_XDECREF(g_triton[i]);
    Py_XDECREF(g_triton_plans[i]);
    g_triton[i] = new_ref(fn);
    g_triton_plans[i] = plans;
  }
  g_triton_cpu = PyObject_IsTrue(args[1]) == 1;
  g_triton_cuda = PyObject_IsTrue(args[2]) == 1;
  Py_RETURN_NONE;
}

// set_backend(code): cnnkern._backend's override, as an index into BACKENDS (-1: none)
PyObject* set_backend(PyObject*, PyObject* code) {
  const long v = PyLong_AsLong(code);
  if (v == -1 && PyErr_Occurred()) return nullptr;
  g_backend = static_cast<int>(v);
  Py_RETURN_NONE;
}

PyMethodDef kMethods[] = {
    {"max_pool2d", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(&max_pool2d)), METH_FASTCALL,
     "max_pool2d on the C++ backends for plain, valid arguments, else NotImplemented"},
    {"avg_pool2d", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(&avg_pool2d)), METH_FASTCALL,
     "avg_pool2d on the C++ backends for plain, valid arguments, else NotImplemented"},
    {"adaptive_avg_pool2d", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(&adaptive_avg_pool2d)),
     METH_FASTCALL, "adaptive_avg_pool2d on the C++ backends for plain, valid arguments, else NotImplemented"},
    {"set_backend", &set_backend, METH_O, "mirror cnnkern._backend's override (index into BACKENDS, -1: none)"},
    {"plan_key", &py_plan_key, METH_O, "the launch-plan key of a Triton launcher call's arguments, or None"},
    {"native_plan", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(&py_native_plan)), METH_FASTCALL,
     "a recorded launch plan, for replay: native_plan(nargs, steps, launches, outputs, single, cuda_index)"},
    {"replay", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(&py_replay)), METH_FASTCALL,
     "replay(plan, args): a launcher's outputs from its recorded plan"},
    {"set_launch_hook", &py_set_launch_hook, METH_O, "hook(kernel, grid, args, kwargs) in place of replayed launches"},
    {"set_plans_enabled", &py_set_plans_enabled, METH_O, "replay launch plans from the pooling entry points or not"},
    {"set_triton", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(&set_triton)), METH_FASTCALL,
     "take the Triton pooling launchers: set_triton(launchers, on_cpu, on_cuda)"},
    {nullptr, nullptr, 0, nullptr}};

PyModuleDef kModule = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, kMethods};

}  // namespace
}  // namespace cnnkern

// `import cnnkern._C` also loads the op schemas and kernels (registration.cpp, csrc/cpu, ...).
PyMODINIT_FUNC PyInit__C(void) {
  PyObject* mod = PyModule_Create(&cnnkern::kModule);
  if (mod == nullptr) return nullptr;
  PyModule_AddIntConstant(mod, "with_cuda", cnnkern::kWithCuda ? 1 : 0);
  return mod;
}
