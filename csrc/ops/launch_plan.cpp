// See launch_plan.h. Everything here runs under the GIL.
#include "launch_plan.h"

#include "py_args.h"

#include <torch/csrc/Device.h>
#include <torch/csrc/Dtype.h>
#include <torch/csrc/Exceptions.h>
#include <torch/csrc/MemoryFormat.h>
#include <torch/csrc/autograd/python_variable.h>
#include <ATen/ops/empty_strided.h>
#include <c10/core/DeviceGuard.h>

#include <cstring>
#include <optional>
#include <string>
#include <utility>

namespace cnnkern {
namespace {

PyObject* g_launch_hook = nullptr;  // _util.intercept_launches: hook(kernel, grid, args, kwargs) instead of run
bool g_plans_enabled = true;        // off while _util.planning_for plans for another GPU

bool int_vector(PyObject* o, std::vector<int64_t>& out) {
  if (!PyTuple_Check(o)) return false;  // torch.Size is a tuple
  out.resize(PyTuple_GET_SIZE(o));
  for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(o); ++i)
    if (!exact_int(PyTuple_GET_ITEM(o, i), &out[i])) return false;
  return true;
}

// One step: an allocation (empty_strided) or a copy of an earlier slot in another memory format.
struct Step {
  bool alloc = true;
  std::vector<int64_t> sizes, strides;
  at::TensorOptions options;
  int source = -1;
  at::MemoryFormat format = at::MemoryFormat::Contiguous;
};

struct Launch {
  PyObject* kernel = nullptr;      // the JITFunction (its `run` is looked up at each launch: stubs see it)
  PyObject* grid = nullptr;        // a tuple
  PyObject* kwargs = nullptr;      // the launch's keyword arguments (what a hook sees)
  PyObject* run_kwargs = nullptr;  // kwargs + grid and warmup=False (what run takes)
  PyObject* templ = nullptr;       // positional arguments, tensors left as None
  std::vector<std::pair<int, int>> subs;  // (position, slot)
};

struct NativePlan {
  Py_ssize_t nargs = 0;
  std::vector<Step> steps;
  std::vector<Launch> launches;
  std::vector<int> outputs;
  bool single = true;
  std::optional<at::Device> device;  // the first tensor's CUDA device: made current around the launches

  ~NativePlan() {
    for (Launch& l : launches)
      for (PyObject* o : {l.kernel, l.grid, l.kwargs, l.run_kwargs, l.templ}) Py_XDECREF(o);
  }
};

const char* const kCapsule = "cnnkern.NativePlan";

void delete_plan(PyObject* capsule) {
  delete static_cast<NativePlan*>(PyCapsule_GetPointer(capsule, kCapsule));
}

PyObject* type_error(const char* what) {
  PyErr_SetString(PyExc_TypeError, what);
  return nullptr;
}

}  // namespace

PyObject* plan_key_of(PyObject* const* args, Py_ssize_t n) {
  std::string key;
  key.reserve(256);
  auto put = [&key](int64_t v) { key.append(reinterpret_cast<const char*>(&v), sizeof v); };
  auto put_scalar = [&](PyObject* o) {
    int64_t v = 0;
    if (o == Py_None) {
      put('N');
    } else if (PyBool_Check(o)) {
      put(o == Py_True ? 'T' : 'F');
    } else if (exact_int(o, &v)) {
      put('I'), put(v);
    } else if (PyFloat_CheckExact(o)) {
      const double d = PyFloat_AS_DOUBLE(o);
      std::memcpy(&v, &d, sizeof v);
      put('D'), put(v);
    } else if (PyUnicode_CheckExact(o)) {  // e.g. batch_norm_relu's activation
      Py_ssize_t len = 0;
      const char* s = PyUnicode_AsUTF8AndSize(o, &len);
      if (s == nullptr) return PyErr_Clear(), false;
      put('U'), put(len), key.append(s, static_cast<size_t>(len));
    } else {
      return false;
    }
    return true;
  };
  for (Py_ssize_t i = 0; i < n; ++i) {
    PyObject* o = args[i];
    if (THPVariable_Check(o)) {
      const at::Tensor& t = THPVariable_Unpack(o);
      put('X'), put(t.dim());
      for (const int64_t v : t.sizes()) put(v);
      for (const int64_t v : t.strides()) put(v);
      put(static_cast<int64_t>(t.scalar_type()));
      put(static_cast<int64_t>(t.device().type())), put(t.device().index());
    } else if (PyTuple_CheckExact(o) || PyList_CheckExact(o)) {
      const bool tuple = PyTuple_CheckExact(o);
      const Py_ssize_t len = tuple ? PyTuple_GET_SIZE(o) : PyList_GET_SIZE(o);
      put('S'), put(len);
      for (Py_ssize_t j = 0; j < len; ++j) {
        PyObject* item = tuple ? PyTuple_GET_ITEM(o, j) : PyList_GET_ITEM(o, j);
        if (item == Py_None || PyFloat_CheckExact(item) || !put_scalar(item)) Py_RETURN_NONE;
      }
    } else if (!put_scalar(o)) {
      Py_RETURN_NONE;
    }
  }
  return PyBytes_FromStringAndSize(key.data(), static_cast<Py_ssize_t>(key.size()));
}

PyObject* replay_plan(PyObject* capsule, PyObject* const* args, Py_ssize_t n) {
  auto* plan = static_cast<NativePlan*>(PyCapsule_GetPointer(capsule, kCapsule));
  if (!plan) return nullptr;
  if (n != plan->nargs) return type_error("a launch plan replayed with another number of arguments");
  HANDLE_TH_ERRORS
  // slots: the arguments (borrowed), then what the steps made (owned)
  std::vector<PyObject*> slots(args, args + n);
  struct Owned {
    std::vector<PyObject*>& slots;
    Py_ssize_t first;
    ~Owned() {
      for (size_t i = first; i < slots.size(); ++i) Py_XDECREF(slots[i]);
    }
  } owned{slots, n};
  for (const Step& step : plan->steps) {
    at::Tensor t = step.alloc ? at::empty_strided(step.sizes, step.strides, step.options)
                              : THPVariable_Unpack(slots[step.source]).contiguous(step.format);
    PyObject* o = THPVariable_Wrap(std::move(t));
    if (!o) return nullptr;
    slots.push_back(o);
  }
  std::optional<c10::DeviceGuard> guard;
  if (plan->device) guard.emplace(*plan->device);
  for (const Launch& l : plan->launches) {
    const Py_ssize_t len = PyTuple_GET_SIZE(l.templ);
    PyObject* values = PyTuple_New(len);
    if (!values) return nullptr;
    for (Py_ssize_t i = 0; i < len; ++i) {
      PyObject* v = PyTuple_GET_ITEM(l.templ, i);
      Py_INCREF(v);
      PyTuple_SET_ITEM(values, i, v);
    }
    for (const auto& [position, slot] : l.subs) {
      Py_DECREF(PyTuple_GET_ITEM(values, position));
      Py_INCREF(slots[slot]);
      PyTuple_SET_ITEM(values, position, slots[slot]);
    }
    PyObject* result = nullptr;
    if (PyObject* hook = g_launch_hook) {  // held: the hook may replace itself
      Py_INCREF(hook);
      result = PyObject_CallFunctionObjArgs(hook, l.kernel, l.grid, values, l.kwargs, nullptr);
      Py_DECREF(hook);
    } else if (PyObject* run = PyObject_GetAttrString(l.kernel, "run")) {
      result = PyObject_Call(run, values, l.run_kwargs);
      Py_DECREF(run);
    }
    Py_DECREF(values);
    if (!result) return nullptr;
    Py_DECREF(result);
  }
  if (plan->single) {
    Py_INCREF(slots[plan->outputs[0]]);
    return slots[plan->outputs[0]];
  }
  PyObject* out = PyTuple_New(static_cast<Py_ssize_t>(plan->outputs.size()));
  if (!out) return nullptr;
  for (size_t i = 0; i < plan->outputs.size(); ++i) {
    Py_INCREF(slots[plan->outputs[i]]);
    PyTuple_SET_ITEM(out, static_cast<Py_ssize_t>(i), slots[plan->outputs[i]]);
  }
  return out;
  END_HANDLE_TH_ERRORS
}

PyObject* call_launcher(PyObject* launcher, PyObject* plans, const std::vector<PyObject*>& args) {
  struct Release {
    const std::vector<PyObject*>& args;
    ~Release() {
      for (PyObject* a : args) Py_XDECREF(a);
    }
  } release{args};
  for (PyObject* a : args)
    if (!a) return nullptr;
  const auto n = static_cast<Py_ssize_t>(args.size());
  if (g_plans_enabled && plans) {
    PyObject* key = plan_key_of(args.data(), n);
    if (!key) return nullptr;
    PyObject* plan = key == Py_None ? nullptr : PyDict_GetItemWithError(plans, key);  // borrowed
    Py_DECREF(key);
    if (plan && plan != Py_None) {
      Py_INCREF(plan);  // a launch runs Python, which may clear the plans dict
      PyObject* out = replay_plan(plan, args.data(), n);
      Py_DECREF(plan);
      return out;
    }
    if (PyErr_Occurred()) return nullptr;
  }
  return PyObject_Vectorcall(launcher, args.data(), static_cast<size_t>(n), nullptr);
}

// ---------------------------------------------------------------------------- module methods

PyObject* py_plan_key(PyObject*, PyObject* args) {
  if (!PyTuple_Check(args)) return type_error("plan_key(args: tuple)");
  return plan_key_of(&PyTuple_GET_ITEM(args, 0), PyTuple_GET_SIZE(args));
}

// native_plan(nargs, steps, launches, outputs, single, cuda_index): steps are ("alloc", sizes,
// strides, dtype, device) or ("copy", slot, memory_format); launches (kernel, grid, template,
// subs, kwargs); outputs a tuple of slots; cuda_index -1 when the tensors are not on a GPU.
PyObject* py_native_plan(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  const char* usage = "native_plan(nargs, steps, launches, outputs, single, cuda_index)";
  if (nargs != 6 || !PyTuple_Check(args[1]) || !PyTuple_Check(args[2]) || !PyTuple_Check(args[3]))
    return type_error(usage);
  auto plan = std::make_unique<NativePlan>();
  int64_t v = 0;
  if (!exact_int(args[0], &v)) return type_error(usage);
  plan->nargs = v;
  for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(args[1]); ++i) {
    PyObject* s = PyTuple_GET_ITEM(args[1], i);
    Step step;
    if (PyTuple_Check(s) && PyTuple_GET_SIZE(s) == 5) {
      PyObject *dtype = PyTuple_GET_ITEM(s, 3), *device = PyTuple_GET_ITEM(s, 4);
      if (!int_vector(PyTuple_GET_ITEM(s, 1), step.sizes) || !int_vector(PyTuple_GET_ITEM(s, 2), step.strides) ||
          !THPDtype_Check(dtype) || !THPDevice_Check(device))
        return type_error("native_plan: an allocation step is (\"alloc\", sizes, strides, dtype, device)");
      step.options = at::TensorOptions()
                         .dtype(reinterpret_cast<THPDtype*>(dtype)->scalar_type)
                         .device(reinterpret_cast<THPDevice*>(device)->device);
    } else if (PyTuple_Check(s) && PyTuple_GET_SIZE(s) == 3 && exact_int(PyTuple_GET_ITEM(s, 1), &v) &&
               THPMemoryFormat_Check(PyTuple_GET_ITEM(s, 2))) {
      step.alloc = false;
      step.source = static_cast<int>(v);
      step.format = reinterpret_cast<THPMemoryFormat*>(PyTuple_GET_ITEM(s, 2))->memory_format;
    } else {
      return type_error("native_plan: a step is (\"alloc\", sizes, strides, dtype, device) or (\"copy\", slot, format)");
    }
    plan->steps.push_back(std::move(step));
  }
  for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(args[2]); ++i) {
    PyObject* l = PyTuple_GET_ITEM(args[2], i);
    if (!PyTuple_Check(l) || PyTuple_GET_SIZE(l) != 5 || !PyTuple_Check(PyTuple_GET_ITEM(l, 2)) ||
        !PyTuple_Check(PyTuple_GET_ITEM(l, 3)) || !PyDict_Check(PyTuple_GET_ITEM(l, 4)))
      return type_error("native_plan: a launch is (kernel, grid, template, subs, kwargs)");
    Launch launch;
    PyObject* subs = PyTuple_GET_ITEM(l, 3);
    for (Py_ssize_t j = 0; j < PyTuple_GET_SIZE(subs); ++j) {
      PyObject* sub = PyTuple_GET_ITEM(subs, j);
      int64_t position = 0, slot = 0;
      if (!PyTuple_Check(sub) || PyTuple_GET_SIZE(sub) != 2 || !exact_int(PyTuple_GET_ITEM(sub, 0), &position) ||
          !exact_int(PyTuple_GET_ITEM(sub, 1), &slot))
        return type_error("native_plan: a substitution is (position, slot)");
      launch.subs.emplace_back(static_cast<int>(position), static_cast<int>(slot));
    }
    PyObject* run_kwargs = PyDict_Copy(PyTuple_GET_ITEM(l, 4));
    if (!run_kwargs || PyDict_SetItemString(run_kwargs, "grid", PyTuple_GET_ITEM(l, 1)) < 0 ||
        PyDict_SetItemString(run_kwargs, "warmup", Py_False) < 0) {
      Py_XDECREF(run_kwargs);
      return nullptr;
    }
    launch.run_kwargs = run_kwargs;
    for (auto [field, index] : {std::pair{&launch.kernel, 0}, {&launch.grid, 1}, {&launch.templ, 2},
                                {&launch.kwargs, 4}}) {
      *field = PyTuple_GET_ITEM(l, index);
      Py_INCREF(*field);
    }
    plan->launches.push_back(std::move(launch));
  }
  for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(args[3]); ++i) {
    if (!exact_int(PyTuple_GET_ITEM(args[3], i), &v)) return type_error("native_plan: outputs are slots");
    plan->outputs.push_back(static_cast<int>(v));
  }
  plan->single = PyObject_IsTrue(args[4]) == 1;
  if (!exact_int(args[5], &v)) return type_error(usage);
  if (v >= 0) plan->device = at::Device(at::kCUDA, static_cast<c10::DeviceIndex>(v));
  PyObject* capsule = PyCapsule_New(plan.get(), kCapsule, &delete_plan);
  if (capsule) plan.release();
  return capsule;
}

// replay(plan, args): the launcher's outputs for args, from its recorded plan
PyObject* py_replay(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  if (nargs != 2 || !PyTuple_Check(args[1])) return type_error("replay(plan, args: tuple)");
  return replay_plan(args[0], &PyTuple_GET_ITEM(args[1], 0), PyTuple_GET_SIZE(args[1]));
}

PyObject* py_set_launch_hook(PyObject*, PyObject* hook) {
  Py_XDECREF(g_launch_hook);
  g_launch_hook = hook == Py_None ? nullptr : (Py_INCREF(hook), hook);
  Py_RETURN_NONE;
}

PyObject* py_set_plans_enabled(PyObject*, PyObject* enabled) {
  g_plans_enabled = PyObject_IsTrue(enabled) == 1;
  Py_RETURN_NONE;
}

}  // namespace cnnkern
