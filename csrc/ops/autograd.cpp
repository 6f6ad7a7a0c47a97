// Autograd of the C++ ops, in C++: one Autograd-key kernel per forward op, for
// both namespaces (cnnkern: CPU and CUDA kernels; cnnkern_emu: the emulated CUDA
// kernels). Each is a torch::autograd::Function whose backward calls its own
// namespace's backward ops through the dispatcher, so a backward pass never
// leaves the backend its forward ran on, and a module call costs one dispatcher
// call and one C++ graph node, as a native torch op does (the Python
// torch.library autograd layer this replaces cost ~100 µs per call). Fake
// tensors stay registered from Python (cnnkern/_ops.py); torch.compile traces
// these kernels like any native op's autograd.
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include <optional>
#include <string>
#include <tuple>
#include <vector>

namespace cnnkern {
namespace {

using at::IntArrayRef;
using at::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
using OptTensor = std::optional<Tensor>;

// The namespaces, as template arguments: 0 = cnnkern, 1 = cnnkern_emu.
constexpr const char* kNamespace[] = {"cnnkern", "cnnkern_emu"};

template <int NS, typename Sig>
c10::TypedOperatorHandle<Sig> op(const char* name) {
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
                                                        std::optional<double>, double);
using BatchNormGradSig = std::tuple<Tensor, Tensor, Tensor>(const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                                                            const Tensor&, const OptTensor&, bool, double);

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

std::vector<int64_t> ints(const c10::IValue& v) { return v.toIntVector(); }

// Whether a call records a graph node: without one the op is called straight
// below autograd, skipping the Function machinery (~6 µs a call on a CPU).
bool records(std::initializer_list<const Tensor*> tensors, std::initializer_list<const OptTensor*> optional = {}) {
  if (!at::GradMode::is_enabled()) return false;
  for (const Tensor* t : tensors)
    if (t->requires_grad()) return true;
  for (const OptTensor* t : optional)
    if (t->has_value() && (*t)->requires_grad()) return true;
  return false;
}

// ---------------------------------------------------------------------------- conv2d

template <int NS>
struct Conv2dFn : torch::autograd::Function<Conv2dFn<NS>> {
  static Tensor forward(AutogradContext* ctx, const Tensor& input, const Tensor& weight, const OptTensor& bias,
                        IntArrayRef stride, IntArrayRef padding, IntArrayRef dilation, int64_t groups) {
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->save_for_backward({input, weight});
    ctx->saved_data["stride"] = stride.vec();
    ctx->saved_data["padding"] = padding.vec();
    ctx->saved_data["dilation"] = dilation.vec();
    ctx->saved_data["groups"] = groups;
    ctx->saved_data["has_bias"] = bias.has_value();
    return Ops<NS>::get().conv2d.call(input, weight, bias, stride, padding, dilation, groups);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const Tensor& grad = grads[0];
    const auto stride = ints(ctx->saved_data["stride"]), padding = ints(ctx->saved_data["padding"]),
               dilation = ints(ctx->saved_data["dilation"]);
    const int64_t groups = ctx->saved_data["groups"].toInt();
    const auto& ops = Ops<NS>::get();
    Tensor dx, dw, db;
    if (grad.defined()) {
      if (ctx->needs_input_grad(0))
        dx = ops.conv2d_backward_input.call(grad, saved[0], saved[1], stride, padding, dilation, groups);
      if (ctx->needs_input_grad(1))
        dw = ops.conv2d_backward_weight.call(grad, saved[0], saved[1], stride, padding, dilation, groups);
      if (ctx->saved_data["has_bias"].toBool() && ctx->needs_input_grad(2)) db = ops.conv2d_backward_bias.call(grad);
    }
    return {dx, dw, db, Tensor(), Tensor(), Tensor(), Tensor()};
  }
};

template <int NS>
Tensor conv2d_autograd(const Tensor& input, const Tensor& weight, const OptTensor& bias, IntArrayRef stride,
                       IntArrayRef padding, IntArrayRef dilation, int64_t groups) {
  if (!records({&input, &weight}, {&bias})) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return Ops<NS>::get().conv2d.call(input, weight, bias, stride, padding, dilation, groups);
  }
  return Conv2dFn<NS>::apply(input, weight, bias, stride, padding, dilation, groups);
}

// ---------------------------------------------------------------------------- pooling

template <int NS>
struct MaxPool2dFn : torch::autograd::Function<MaxPool2dFn<NS>> {
  static variable_list forward(AutogradContext* ctx, const Tensor& input, IntArrayRef kernel, IntArrayRef stride,
                               IntArrayRef padding, IntArrayRef dilation, bool ceil_mode) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [y, indices] = Ops<NS>::get().max_pool2d.call(input, kernel, stride, padding, dilation, ceil_mode);
    ctx->save_for_backward({input, indices});
    ctx->saved_data["kernel"] = kernel.vec();
    ctx->saved_data["stride"] = stride.vec();
    ctx->saved_data["padding"] = padding.vec();
    ctx->saved_data["dilation"] = dilation.vec();
    ctx->saved_data["ceil_mode"] = ceil_mode;
    ctx->mark_non_differentiable({indices});
    ctx->set_materialize_grads(false);  // no zero-filled gradient for the indices: one launch fewer
    return {y, indices};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    Tensor dx;
    if (grads[0].defined() && ctx->needs_input_grad(0))
      dx = Ops<NS>::get().max_pool2d_backward.call(
          grads[0], saved[0], saved[1], ints(ctx->saved_data["kernel"]), ints(ctx->saved_data["stride"]),
          ints(ctx->saved_data["padding"]), ints(ctx->saved_data["dilation"]), ctx->saved_data["ceil_mode"].toBool());
    return {dx, Tensor(), Tensor(), Tensor(), Tensor(), Tensor()};
  }
};

template <int NS>
std::tuple<Tensor, Tensor> max_pool2d_autograd(const Tensor& input, IntArrayRef kernel, IntArrayRef stride,
                                               IntArrayRef padding, IntArrayRef dilation, bool ceil_mode) {
  if (!records({&input})) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return Ops<NS>::get().max_pool2d.call(input, kernel, stride, padding, dilation, ceil_mode);
  }
  auto out = MaxPool2dFn<NS>::apply(input, kernel, stride, padding, dilation, ceil_mode);
  return {out[0], out[1]};
}

template <int NS>
struct AvgPool2dFn : torch::autograd::Function<AvgPool2dFn<NS>> {
  static Tensor forward(AutogradContext* ctx, const Tensor& input, IntArrayRef kernel, IntArrayRef stride,
                        IntArrayRef padding, bool ceil_mode, bool count_include_pad,
                        std::optional<int64_t> divisor_override) {
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->save_for_backward({input});
    ctx->saved_data["kernel"] = kernel.vec();
    ctx->saved_data["stride"] = stride.vec();
    ctx->saved_data["padding"] = padding.vec();
    ctx->saved_data["ceil_mode"] = ceil_mode;
    ctx->saved_data["count_include_pad"] = count_include_pad;
    ctx->saved_data["divisor_override"] = divisor_override;
    return Ops<NS>::get().avg_pool2d.call(input, kernel, stride, padding, ceil_mode, count_include_pad,
                                          divisor_override);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    Tensor dx;
    if (grads[0].defined() && ctx->needs_input_grad(0)) {
      const auto& divisor = ctx->saved_data["divisor_override"];
      dx = Ops<NS>::get().avg_pool2d_backward.call(
          grads[0], saved[0], ints(ctx->saved_data["kernel"]), ints(ctx->saved_data["stride"]),
          ints(ctx->saved_data["padding"]), ctx->saved_data["ceil_mode"].toBool(),
          ctx->saved_data["count_include_pad"].toBool(),
          divisor.isNone() ? std::nullopt : std::optional<int64_t>(divisor.toInt()));
    }
    return {dx, Tensor(), Tensor(), Tensor(), Tensor(), Tensor(), Tensor()};
  }
};

template <int NS>
Tensor avg_pool2d_autograd(const Tensor& input, IntArrayRef kernel, IntArrayRef stride, IntArrayRef padding,
                           bool ceil_mode, bool count_include_pad, std::optional<int64_t> divisor_override) {
  if (!records({&input})) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return Ops<NS>::get().avg_pool2d.call(input, kernel, stride, padding, ceil_mode, count_include_pad,
                                          divisor_override);
  }
  return AvgPool2dFn<NS>::apply(input, kernel, stride, padding, ceil_mode, count_include_pad, divisor_override);
}

template <int NS>
struct AdaptiveAvgPool2dFn : torch::autograd::Function<AdaptiveAvgPool2dFn<NS>> {
  static Tensor forward(AutogradContext* ctx, const Tensor& input, IntArrayRef output_size) {
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->save_for_backward({input});
    return Ops<NS>::get().adaptive_avg_pool2d.call(input, output_size);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    Tensor dx;
    if (grads[0].defined() && ctx->needs_input_grad(0))
      dx = Ops<NS>::get().adaptive_avg_pool2d_backward.call(grads[0], ctx->get_saved_variables()[0]);
    return {dx, Tensor()};
  }
};

template <int NS>
Tensor adaptive_avg_pool2d_autograd(const Tensor& input, IntArrayRef output_size) {
  if (!records({&input})) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return Ops<NS>::get().adaptive_avg_pool2d.call(input, output_size);
  }
  return AdaptiveAvgPool2dFn<NS>::apply(input, output_size);
}

// ---------------------------------------------------------------------------- batch_norm_relu
// The op updates running_mean, running_var and num_batches_tracked in place;
// they never require grad. Their version counters are bumped here, as the
// ADInplaceOrView kernel of a native in-place op would, so a tensor saved
// elsewhere and then overwritten by this op is caught by autograd.

template <int NS>
std::tuple<Tensor, Tensor, Tensor> batch_norm_relu_below(const Tensor& input, const OptTensor& weight,
                                                         const OptTensor& bias, const OptTensor& running_mean,
                                                         const OptTensor& running_var,
                                                         const OptTensor& num_batches_tracked, bool training,
                                                         std::optional<double> momentum, double eps) {
  at::AutoDispatchBelowADInplaceOrView guard;
  auto out = Ops<NS>::get().batch_norm_relu.call(input, weight, bias, running_mean, running_var, num_batches_tracked,
                                                 training, momentum, eps);
  for (const OptTensor* t : {&running_mean, &running_var, &num_batches_tracked})
    if (t->has_value() && training) (*t)->unsafeGetTensorImpl()->bump_version();
  return out;
}

template <int NS>
struct BatchNormReluFn : torch::autograd::Function<BatchNormReluFn<NS>> {
  static variable_list forward(AutogradContext* ctx, const Tensor& input, const OptTensor& weight,
                               const OptTensor& bias, const OptTensor& running_mean, const OptTensor& running_var,
                               const OptTensor& num_batches_tracked, bool training, std::optional<double> momentum,
                               double eps) {
    auto [y, mean, var] = batch_norm_relu_below<NS>(input, weight, bias, running_mean, running_var,
                                                    num_batches_tracked, training, momentum, eps);
    ctx->save_for_backward({input, y, mean, var, weight.value_or(Tensor())});
    ctx->saved_data["training"] = training;
    ctx->saved_data["eps"] = eps;
    ctx->saved_data["has_bias"] = bias.has_value();
    ctx->mark_non_differentiable({mean, var});
    ctx->set_materialize_grads(false);  // no zero-filled gradients for mean and var
    return {y, mean, var};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    variable_list out(9);
    if (!grads[0].defined()) return out;  // y unused
    const auto saved = ctx->get_saved_variables();
    const Tensor &input = saved[0], &y = saved[1], &weight = saved[4];
    const OptTensor w = weight.defined() ? OptTensor(weight) : std::nullopt;
    auto [dx, dw, db] = Ops<NS>::get().batch_norm_relu_backward.call(
        grads[0], y, input, saved[2], saved[3], w, ctx->saved_data["training"].toBool(),
        ctx->saved_data["eps"].toDouble());
    // The kernels reduce the parameter gradients in fp32 (fp64 for double): cast to the parameters' dtype.
    const auto param_dtype = weight.defined() ? weight.scalar_type() : input.scalar_type();
    if (ctx->needs_input_grad(0)) out[0] = dx;
    if (weight.defined() && ctx->needs_input_grad(1)) out[1] = dw.to(param_dtype);
    if (ctx->saved_data["has_bias"].toBool() && ctx->needs_input_grad(2)) out[2] = db.to(param_dtype);
    return out;
  }
};

template <int NS>
std::tuple<Tensor, Tensor, Tensor> batch_norm_relu_autograd(const Tensor& input, const OptTensor& weight,
                                                            const OptTensor& bias, const OptTensor& running_mean,
                                                            const OptTensor& running_var,
                                                            const OptTensor& num_batches_tracked, bool training,
                                                            std::optional<double> momentum, double eps) {
  if (!records({&input}, {&weight, &bias}))
    return batch_norm_relu_below<NS>(input, weight, bias, running_mean, running_var, num_batches_tracked, training,
                                     momentum, eps);
  auto out = BatchNormReluFn<NS>::apply(input, weight, bias, running_mean, running_var, num_batches_tracked, training,
                                        momentum, eps);
  return {out[0], out[1], out[2]};
}

template <int NS>
void register_autograd(torch::Library& m) {
  m.impl("conv2d", &conv2d_autograd<NS>);
  m.impl("max_pool2d", &max_pool2d_autograd<NS>);
  m.impl("avg_pool2d", &avg_pool2d_autograd<NS>);
  m.impl("adaptive_avg_pool2d", &adaptive_avg_pool2d_autograd<NS>);
  m.impl("batch_norm_relu", &batch_norm_relu_autograd<NS>);
}

}  // namespace

TORCH_LIBRARY_IMPL(cnnkern, Autograd, m) { register_autograd<0>(m); }
TORCH_LIBRARY_IMPL(cnnkern_emu, Autograd, m) { register_autograd<1>(m); }

}  // namespace cnnkern
