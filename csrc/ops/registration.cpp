// The one place where cnnkern's operator schemas are declared.
//
// Namespace cnnkern holds the real ops: the CPU kernels register under the CPU
// dispatch key (csrc/cpu), the CUDA kernels under CUDA (csrc/cuda).
// Namespace cnnkern_emu carries the same schemas for the "cuda_emu" backend:
// the CUDA kernel sources built as host code and run on CPU tensors (csrc/emu).
// Autograd and fake (meta) implementations are registered from Python
// (cnnkern/_ops.py), as pytorch/extension-cpp does.
#include <Python.h>
#include <torch/library.h>

namespace {

void define_schemas(torch::Library& m) {
  m.def(
      "conv2d(Tensor input, Tensor weight, Tensor? bias, int[2] stride, "
      "int[2] padding, int[2] dilation, int groups) -> Tensor");
  m.def(
      "conv2d_backward_input(Tensor grad_output, Tensor input, Tensor weight, "
      "int[2] stride, int[2] padding, int[2] dilation, int groups) -> Tensor");
  m.def(
      "conv2d_backward_weight(Tensor grad_output, Tensor input, Tensor weight, "
      "int[2] stride, int[2] padding, int[2] dilation, int groups) -> Tensor");
  m.def("conv2d_backward_bias(Tensor grad_output) -> Tensor");
}

}  // namespace

TORCH_LIBRARY(cnnkern, m) { define_schemas(m); }
TORCH_LIBRARY(cnnkern_emu, m) { define_schemas(m); }

// `import cnnkern._C` loads the library above; the module itself only says
// whether the CUDA kernels were compiled in.
PyMODINIT_FUNC PyInit__C(void) {
  static PyModuleDef def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  PyObject* mod = PyModule_Create(&def);
  if (mod == nullptr) return nullptr;
#ifdef CNNKERN_WITH_CUDA
  PyModule_AddIntConstant(mod, "with_cuda", 1);
#else
  PyModule_AddIntConstant(mod, "with_cuda", 0);
#endif
  return mod;
}
