// Autograd of the C++ ops, in C++: one Autograd-key kernel per forward op, for
// both namespaces (cnnkern: CPU and CUDA kernels; cnnkern_emu: the emulated CUDA
// kernels). Conv2d and BatchNorm+ReLU are torch::autograd::Functions; pooling,
// where the kernel is as cheap as the bookkeeping, has plain graph Nodes as
// torch's generated ones are. Every backward calls its own namespace's backward
// ops through the dispatcher, so a backward pass never leaves the backend its
// forward ran on, and a module call costs one dispatcher call and one C++ graph
// node, as a native torch op does (the Python torch.library autograd layer this
// replaces cost ~100 µs per call). Fake tensors stay registered from Python
// (cnnkern/_ops.py); torch.compile traces these kernels like any native op's.
#include <torch/csrc/autograd/custom_function.h>
#include <torch/csrc/autograd/functions/utils.h>
#include <torch/csrc/autograd/saved_variable.h>
#include <torch/library.h>

#include <array>
#include <mutex>
#include <type_traits>
#include <vector>

#include "batch_norm_common.h"
#include "graph_node.h"
#include "op_handles.h"

namespace cnnkern {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::Node;
using torch::autograd::SavedVariable;
using torch::autograd::variable_list;

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
// Pooling's graph nodes are plain autograd Nodes, as torch's generated ones are
// (MaxPool2DWithIndicesBackward0 ...): a torch::autograd::Function costs ~2 µs
// more per call (its context, boxed saved data and output wrapping), which on a
// small CPU tensor is as much as the kernel.

// A backward op called from a graph node: below autograd unless the backward pass
// itself records (create_graph=True), where the dispatcher's fallback marks the
// result as not differentiable twice rather than silently constant.
template <typename Call>
Tensor backward_call(Call&& call) {
  if (at::GradMode::is_enabled()) return call();
  at::AutoDispatchBelowADInplaceOrView guard;
  return call();
}

using Pair = std::array<int64_t, 2>;
Pair pair(IntArrayRef v) { return {v[0], v[1]}; }

template <int NS>
struct MaxPool2dBackward : Node {
  SavedVariable input_, indices_;
  Pair kernel{}, stride{}, padding{}, dilation{};
  bool ceil_mode = false;

  std::string name() const override { return "CnnkernMaxPool2DBackward"; }
  void release_variables() override {
    std::lock_guard<std::mutex> lock(mutex_);
    input_.reset_data();
    indices_.reset_data();
  }
  variable_list apply(variable_list&& grads) override {
    Tensor dx;
    if (grads[0].defined() && task_should_compute_output(0)) {
      const auto self = getptr();
      const Tensor input = input_.unpack(self), indices = indices_.unpack(self);
      dx = backward_call([&] {
        return Ops<NS>::get().max_pool2d_backward.call(grads[0], input, indices, kernel, stride, padding, dilation,
                                                       ceil_mode);
      });
    }
    return {dx};
  }
};

template <int NS>
std::tuple<Tensor, Tensor> max_pool2d_autograd(const Tensor& input, IntArrayRef kernel, IntArrayRef stride,
                                               IntArrayRef padding, IntArrayRef dilation, bool ceil_mode) {
  std::tuple<Tensor, Tensor> out;
  {
    at::AutoDispatchBelowADInplaceOrView guard;
    out = Ops<NS>::get().max_pool2d.call(input, kernel, stride, padding, dilation, ceil_mode);
  }
  if (records({&input})) {
    auto node = make_node<MaxPool2dBackward<NS>>();
    auto* n = static_cast<MaxPool2dBackward<NS>*>(node.get());
    n->kernel = pair(kernel), n->stride = pair(stride), n->padding = pair(padding), n->dilation = pair(dilation);
    n->ceil_mode = ceil_mode;
    n->input_ = SavedVariable(input, false);
    n->indices_ = SavedVariable(std::get<1>(out), false);
    attach(node, input, std::get<0>(out));  // the indices are not differentiable
  }
  return out;
}

template <int NS>
struct AvgPool2dBackward : Node {
  SavedVariable input_;
  Pair kernel{}, stride{}, padding{};
  bool ceil_mode = false, count_include_pad = true;
  std::optional<int64_t> divisor_override;

  std::string name() const override { return "CnnkernAvgPool2DBackward"; }
  void release_variables() override {
    std::lock_guard<std::mutex> lock(mutex_);
    input_.reset_data();
  }
  variable_list apply(variable_list&& grads) override {
    Tensor dx;
    if (grads[0].defined() && task_should_compute_output(0)) {
      const Tensor input = input_.unpack(getptr());
      dx = backward_call([&] {
        return Ops<NS>::get().avg_pool2d_backward.call(grads[0], input, kernel, stride, padding, ceil_mode,
                                                       count_include_pad, divisor_override);
      });
    }
    return {dx};
  }
};

template <int NS>
Tensor avg_pool2d_autograd(const Tensor& input, IntArrayRef kernel, IntArrayRef stride, IntArrayRef padding,
                           bool ceil_mode, bool count_include_pad, std::optional<int64_t> divisor_override) {
  Tensor out;
  {
    at::AutoDispatchBelowADInplaceOrView guard;
    out = Ops<NS>::get().avg_pool2d.call(input, kernel, stride, padding, ceil_mode, count_include_pad,
                                         divisor_override);
  }
  if (records({&input})) {
    auto node = make_node<AvgPool2dBackward<NS>>();
    auto* n = static_cast<AvgPool2dBackward<NS>*>(node.get());
    n->kernel = pair(kernel), n->stride = pair(stride), n->padding = pair(padding);
    n->ceil_mode = ceil_mode, n->count_include_pad = count_include_pad, n->divisor_override = divisor_override;
    n->input_ = SavedVariable(input, false);
    attach(node, input, out);
  }
  return out;
}

template <int NS>
struct AdaptiveAvgPool2dBackward : Node {
  SavedVariable input_;

  std::string name() const override { return "CnnkernAdaptiveAvgPool2DBackward"; }
  void release_variables() override {
    std::lock_guard<std::mutex> lock(mutex_);
    input_.reset_data();
  }
  variable_list apply(variable_list&& grads) override {
    Tensor dx;
    if (grads[0].defined() && task_should_compute_output(0)) {
      const Tensor input = input_.unpack(getptr());
      dx = backward_call([&] { return Ops<NS>::get().adaptive_avg_pool2d_backward.call(grads[0], input); });
    }
    return {dx};
  }
};

template <int NS>
Tensor adaptive_avg_pool2d_autograd(const Tensor& input, IntArrayRef output_size) {
  Tensor out;
  {
    at::AutoDispatchBelowADInplaceOrView guard;
    out = Ops<NS>::get().adaptive_avg_pool2d.call(input, output_size);
  }
  if (records({&input})) {
    auto node = make_node<AdaptiveAvgPool2dBackward<NS>>();
    static_cast<AdaptiveAvgPool2dBackward<NS>*>(node.get())->input_ = SavedVariable(input, false);
    attach(node, input, out);
  }
  return out;
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
                                                         std::optional<double> momentum, double eps,
                                                         c10::string_view activation) {
  at::AutoDispatchBelowADInplaceOrView guard;
  auto out = Ops<NS>::get().batch_norm_relu.call(input, weight, bias, running_mean, running_var, num_batches_tracked,
                                                 training, momentum, eps, activation);
  for (const OptTensor* t : {&running_mean, &running_var, &num_batches_tracked})
    if (t->has_value() && training) (*t)->unsafeGetTensorImpl()->bump_version();
  return out;
}

template <int NS>
struct BatchNormReluFn : torch::autograd::Function<BatchNormReluFn<NS>> {
  static variable_list forward(AutogradContext* ctx, const Tensor& input, const OptTensor& weight,
                               const OptTensor& bias, const OptTensor& running_mean, const OptTensor& running_var,
                               const OptTensor& num_batches_tracked, bool training, std::optional<double> momentum,
                               double eps, c10::string_view activation) {
    auto [y, mean, var] = batch_norm_relu_below<NS>(input, weight, bias, running_mean, running_var,
                                                    num_batches_tracked, training, momentum, eps, activation);
    // y is kept only where the backward reads it (ReLU, ReLU6: activation.h): a SiLU's, a
    // Hardswish's or a plain BatchNorm's output may then be changed in place, as torch allows
    // (efficientnet's `result += input`).
    const bool keep_y = grad_from_output_of(parse_activation(activation));
    ctx->save_for_backward({input, keep_y ? y : Tensor(), mean, var, weight.value_or(Tensor()), bias.value_or(Tensor())});
    ctx->saved_data["training"] = training;
    ctx->saved_data["eps"] = eps;
    ctx->saved_data["activation"] = std::string(activation);
    ctx->mark_non_differentiable({mean, var});
    ctx->set_materialize_grads(false);  // no zero-filled gradients for mean and var
    return {y, mean, var};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    variable_list out(10);
    if (!grads[0].defined()) return out;  // y unused
    const auto saved = ctx->get_saved_variables();
    const Tensor &input = saved[0], &weight = saved[4], &bias = saved[5];
    const Tensor& y = saved[1].defined() ? saved[1] : input;  // not read by this activation's backward
    const OptTensor w = weight.defined() ? OptTensor(weight) : std::nullopt;
    const OptTensor b = bias.defined() ? OptTensor(bias) : std::nullopt;
    auto [dx, dw, db] = Ops<NS>::get().batch_norm_relu_backward.call(
        grads[0], y, input, saved[2], saved[3], w, ctx->saved_data["training"].toBool(),
        ctx->saved_data["eps"].toDouble(), b, ctx->saved_data["activation"].toStringRef());
    // The kernels reduce the parameter gradients in fp32 (fp64 for double): cast to the parameters' dtype.
    const auto param_dtype = weight.defined() ? weight.scalar_type() : input.scalar_type();
    if (ctx->needs_input_grad(0)) out[0] = dx;
    if (weight.defined() && ctx->needs_input_grad(1)) out[1] = dw.to(param_dtype);
    if (bias.defined() && ctx->needs_input_grad(2)) out[2] = db.to(param_dtype);
    return out;
  }
};

template <int NS>
std::tuple<Tensor, Tensor, Tensor> batch_norm_relu_autograd(const Tensor& input, const OptTensor& weight,
                                                            const OptTensor& bias, const OptTensor& running_mean,
                                                            const OptTensor& running_var,
                                                            const OptTensor& num_batches_tracked, bool training,
                                                            std::optional<double> momentum, double eps,
                                                            c10::string_view activation) {
  if (!records({&input}, {&weight, &bias}))
    return batch_norm_relu_below<NS>(input, weight, bias, running_mean, running_var, num_batches_tracked, training,
                                     momentum, eps, activation);
  auto out = BatchNormReluFn<NS>::apply(input, weight, bias, running_mean, running_var, num_batches_tracked, training,
                                        momentum, eps, activation);
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
