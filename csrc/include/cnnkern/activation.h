// The activations the fused BatchNorm can end in, written once for the CPU,
// CUDA and emulation builds (kernels/batch_norm.py has the same formulas in
// Triton). Each kernel takes the activation as a template argument, so a
// pass pays only for its own formula.
//
// The backward needs the activation's derivative at the pre-activation z. For
// ReLU and ReLU6 it is a mask that the saved output y gives exactly (y > 0,
// 0 < y < 6: y is clamped exactly where z is), so those backward passes read y
// and do not recompute z. SiLU and Hardswish are not invertible from y (SiLU
// is not monotonic below z = -1.28), so their backward recomputes z from x and
// the statistics, rounded to the activations' dtype (as an unfused BatchNorm2d's
// output z would be).
// Identity (plain BatchNorm2d) needs neither. The derivatives, boundaries
// included, are torch's (threshold_backward, hardtanh_backward, silu_backward,
// hardswish_backward: 0 at z = -3 and 1 at z = 3).
#pragma once
#include <cmath>
#include <type_traits>

#include "cnnkern/macros.h"

namespace cnnkern {

// Op argument strings, in this order: "relu", "relu6", "silu", "hardswish", "identity".
enum class Act : int { Relu = 0, Relu6 = 1, Silu = 2, Hardswish = 3, Identity = 4 };

// Which saved value a backward pass reads to differentiate the activation.
template <Act kAct>
constexpr bool grad_from_output = kAct == Act::Relu || kAct == Act::Relu6;
template <Act kAct>
constexpr bool grad_from_pre_activation = kAct == Act::Silu || kAct == Act::Hardswish;

// The same, for a runtime value (the op layer decides what to save).
constexpr bool grad_from_output_of(Act a) { return a == Act::Relu || a == Act::Relu6; }

template <typename A>
CNNKERN_HD A sigmoid(A z) {
  using std::exp;
  return A(1) / (A(1) + exp(-z));
}

// y = act(z). ReLU and ReLU6 keep NaN, as torch's do.
template <Act kAct, typename A>
CNNKERN_HD A activate(A z) {
  if constexpr (kAct == Act::Relu) {
    return z <= A(0) ? A(0) : z;
  } else if constexpr (kAct == Act::Relu6) {
    return z <= A(0) ? A(0) : (z >= A(6) ? A(6) : z);
  } else if constexpr (kAct == Act::Silu) {
    return z * sigmoid(z);
  } else if constexpr (kAct == Act::Hardswish) {
    return z <= A(-3) ? A(0) : (z >= A(3) ? z : z * (z + A(3)) / A(6));
  } else {
    return z;
  }
}

// dL/dz from dL/dy = g and v: the output y when grad_from_output, the
// pre-activation z when grad_from_pre_activation, unused for Identity.
template <Act kAct, typename A>
CNNKERN_HD A activation_grad(A v, A g) {
  if constexpr (kAct == Act::Relu) {
    return v > A(0) ? g : A(0);
  } else if constexpr (kAct == Act::Relu6) {
    return v > A(0) && v < A(6) ? g : A(0);
  } else if constexpr (kAct == Act::Silu) {
    const A s = sigmoid(v);
    return g * s * (A(1) + v * (A(1) - s));
  } else if constexpr (kAct == Act::Hardswish) {
    return v <= A(-3) ? A(0) : (v < A(3) ? g * (v / A(3) + A(0.5)) : g);
  } else {
    return g;
  }
}

// Calls go(std::integral_constant<Act, a>{}) for the runtime value a: the one
// place a runtime activation becomes a template argument.
template <typename Go>
void with_activation(Act a, Go&& go) {
  switch (a) {
    case Act::Relu: go(std::integral_constant<Act, Act::Relu>{}); return;
    case Act::Relu6: go(std::integral_constant<Act, Act::Relu6>{}); return;
    case Act::Silu: go(std::integral_constant<Act, Act::Silu>{}); return;
    case Act::Hardswish: go(std::integral_constant<Act, Act::Hardswish>{}); return;
    case Act::Identity: go(std::integral_constant<Act, Act::Identity>{}); return;
  }
}

}  // namespace cnnkern
