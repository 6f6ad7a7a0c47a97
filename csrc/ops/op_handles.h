// Typed dispatcher handles of cnnkern's ops, one set per namespace, looked up
// once: what the autograd kernels (autograd.cpp) and the Python entry points
// (python.cpp) call. A call through a handle is a full dispatcher call (every
// dispatch key, profiler and Python modes included) without a schema lookup.
#pragma once
#include <ATen/core/dispatch/Dispatcher.h>

#include <optional>
#include <string>
#include <tuple>

namespace cnnkern {

using at::IntArrayRef;
using at::Tensor;
using OptTensor = std::optional<Tensor>;

// The namespaces, as template arguments: 0 = cnnkern, 1 = cnnkern_emu.
constexpr const char* kNamespace[] = {"cnnkern", "cnnkern_emu"};

template <int NS, typename Sig>
inline c10::TypedOperatorHandle<Sig> op(const char* name) {
  return c10::Dispatcher::singleton()
      .findSchemaOrThrow((std::string(kNamespace[NS]) + "::" + name).c_str(), "")
      .template typed<Sig>();
}

using ConvSig = Tensor(const Tensor&, const Tensor&, const OptTensor&, IntArrayRef, IntArrayRef, IntArrayRef, int64_t);
using ConvGradSig = Tensor(const Tensor&, const Tensor&, const Tensor&, IntArrayRef, IntArrayRef, IntArrayRef, int64_t);
using MaxPoolSig = std::tuple<Tensor, Tensor>(const Tensor&, IntArrayRef, IntArrayRef, IntArrayRef, IntArrayRef, bool);
using MaxPoolGradSig = Tensor(const Tensor&, const Tensor&, const Tensor&, IntArrayRef, IntArrayRef, IntArrayRef,
                              IntArrayRef, bool);
using AvgPoolSig = Tensor(const Tensor&, IntArrayRef, IntArrayRef, IntArrayRef, bool, bool, std::optional<int64_t>);
using AvgPoolGradSig = Tensor(const Tensor&, const Tensor&, IntArrayRef, IntArrayRef, IntArrayRef, bool, bool,
                              std::optional<int64_t>);
using AdaptiveSig = Tensor(const Tensor&, IntArrayRef);
using AdaptiveGradSig = Tensor(const Tensor&, const Tensor&);
using BatchNormSig = std::tuple<Tensor, Tensor, Tensor>(const Tensor&, const OptTensor&, const OptTensor&,
                                                        const OptTensor&, const OptTensor&, const OptTensor&, bool,
                                                        std::optional<double>, double, c10::string_view);
using BatchNormGradSig = std::tuple<Tensor, Tensor, Tensor>(const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                                                            const Tensor&, const OptTensor&, bool, double,
                                                            const OptTensor&, c10::string_view);

// Handles looked up once per namespace, on first use (the schemas are defined by then).
template <int NS>
struct Ops {
  static const Ops& get() {
    static const Ops ops;
    return ops;
  }
  c10::TypedOperatorHandle<ConvSig> conv2d = op<NS, ConvSig>("conv2d");
  c10::TypedOperatorHandle<ConvGradSig> conv2d_backward_input = op<NS, ConvGradSig>("conv2d_backward_input");
  c10::TypedOperatorHandle<ConvGradSig> conv2d_backward_weight = op<NS, ConvGradSig>("conv2d_backward_weight");
  c10::TypedOperatorHandle<Tensor(const Tensor&)> conv2d_backward_bias =
      op<NS, Tensor(const Tensor&)>("conv2d_backward_bias");
  c10::TypedOperatorHandle<MaxPoolSig> max_pool2d = op<NS, MaxPoolSig>("max_pool2d");
  c10::TypedOperatorHandle<MaxPoolGradSig> max_pool2d_backward = op<NS, MaxPoolGradSig>("max_pool2d_backward");
  c10::TypedOperatorHandle<AvgPoolSig> avg_pool2d = op<NS, AvgPoolSig>("avg_pool2d");
  c10::TypedOperatorHandle<AvgPoolGradSig> avg_pool2d_backward = op<NS, AvgPoolGradSig>("avg_pool2d_backward");
  c10::TypedOperatorHandle<AdaptiveSig> adaptive_avg_pool2d = op<NS, AdaptiveSig>("adaptive_avg_pool2d");
  c10::TypedOperatorHandle<AdaptiveGradSig> adaptive_avg_pool2d_backward =
      op<NS, AdaptiveGradSig>("adaptive_avg_pool2d_backward");
  c10::TypedOperatorHandle<BatchNormSig> batch_norm_relu = op<NS, BatchNormSig>("batch_norm_relu");
  c10::TypedOperatorHandle<BatchNormGradSig> batch_norm_relu_backward =
      op<NS, BatchNormGradSig>("batch_norm_relu_backward");
};

}  // namespace cnnkern
