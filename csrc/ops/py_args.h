// Reading plain Python arguments in C++: what the pooling entry points (python.cpp)
// and the launch-plan key (launch_plan.cpp) accept as an int.
#pragma once
#include <Python.h>

#include <cstdint>

namespace cnnkern {

// An exact int (not bool, float or a numpy int) that fits int64_t, into *out.
inline bool exact_int(PyObject* o, int64_t* out) {
  if (!PyLong_CheckExact(o)) return false;
  int overflow = 0;
  *out = PyLong_AsLongLongAndOverflow(o, &overflow);
  if (overflow == 0 && !(*out == -1 && PyErr_Occurred())) return true;
  PyErr_Clear();
  return false;
}

}  // namespace cnnkern
