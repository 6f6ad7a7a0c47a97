// Making and attaching autograd graph nodes of our own (autograd.cpp's pooling
// nodes, python.cpp's Triton nodes) on the torch versions cnnkern builds against.
#pragma once
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/functions/utils.h>

#include <memory>
#include <type_traits>
#include <utility>

namespace cnnkern {

// torch's graph nodes went from std::shared_ptr to c10::intrusive_ptr (torch 2.14;
// the GPU check's image has 2.11): whichever Node::getptr() returns is the handle.
using NodePtr = decltype(std::declval<torch::autograd::Node&>().getptr());

template <typename T, typename... Args>
NodePtr make_node(Args&&... args) {
  if constexpr (std::is_same_v<NodePtr, std::shared_ptr<torch::autograd::Node>>) {
    // deleteNode is found by argument-dependent lookup (T derives from Node), so this
    // branch compiles only where it is taken
    return std::shared_ptr<T>(new T(std::forward<Args>(args)...), [](T* p) { deleteNode(p); });
  } else {
    return c10::make_intrusive<T>(std::forward<Args>(args)...);
  }
}

namespace detail {
template <typename P>
auto fire_creation_hooks(const P& node, int) -> decltype(fire_node_creation_hooks(node), void()) {
  fire_node_creation_hooks(node);
}
template <typename P>
void fire_creation_hooks(const P&, long) {}
}  // namespace detail

// torch.autograd.graph's node-creation hooks, once a node is attached (where this torch
// has them; found by argument-dependent lookup).
inline void node_attached(const NodePtr& node) { detail::fire_creation_hooks(node, 0); }

// The input's gradient edge goes to `node`, `output` gets `node` as its grad_fn (once the
// node holds what it saves: creation hooks see it whole).
inline void attach(const NodePtr& node, const at::Tensor& input, const at::Tensor& output) {
  node->set_next_edges(torch::autograd::collect_next_edges(input));
  torch::autograd::set_history(output, node);
  node_attached(node);
}

}  // namespace cnnkern
