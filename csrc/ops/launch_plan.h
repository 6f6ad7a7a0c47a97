// Launch plans of the Triton launchers (cnnkern/kernels/_util.py), replayed in C++.
//
// A launcher's first eager call with given argument shapes is recorded in Python:
// the tensors it allocated or copied, in order, and the Triton launches it made.
// native_plan turns that record into a NativePlan (in a capsule, the value of the
// launcher's plans dict); a later call with the same plan_key replays it here:
// at::empty_strided for each allocation, and for each launch one call to the
// kernel's `run` with the new tensors in place. That costs a few microseconds
// where the launcher's Python costs tens, and the same whether the call comes
// from Python (_util's eager entry) or from cnnkern._C's pooling entry points.
#pragma once
#include <Python.h>

#include <vector>

namespace cnnkern {

// The plan key of a launcher call's arguments: new bytes, Py_None (an argument of a
// kind the key does not cover: not planned), or nullptr with a Python error.
PyObject* plan_key_of(PyObject* const* args, Py_ssize_t n);

// Replays the plan in `capsule` on these arguments: the launcher's outputs as a new
// reference, or nullptr with a Python error.
PyObject* replay_plan(PyObject* capsule, PyObject* const* args, Py_ssize_t n);

// launcher(*args) through its plans dict: replayed when a plan is recorded for these
// arguments and plans are enabled, else a call of the Python launcher (which records).
// Takes the references in args (a null one, from a failed conversion, fails the call).
PyObject* call_launcher(PyObject* launcher, PyObject* plans, const std::vector<PyObject*>& args);

// Module methods (python.cpp lists them).
PyObject* py_plan_key(PyObject*, PyObject* args);
PyObject* py_native_plan(PyObject*, PyObject* const* args, Py_ssize_t nargs);
PyObject* py_replay(PyObject*, PyObject* const* args, Py_ssize_t nargs);
PyObject* py_set_launch_hook(PyObject*, PyObject* hook);
PyObject* py_set_plans_enabled(PyObject*, PyObject* enabled);

}  // namespace cnnkern
