// Conv2d on the CPU: im2col + GEMM over chunks of the batch.
//
// Forward: for each chunk of images and each group, the receptive fields are
// gathered into a row-major column matrix col[(n,p,q)][(c,r,s)] (rows in
// parallel), and one GEMM col · w_gᵀ yields the outputs in (n,p,q) × k order,
// which is channels_last; it is copied into y through y's strides.
// Input gradient: dcol = dy_g · w_g, then every input pixel *gathers* the dcol
// entries that read it (conv_out_coord), so rows run in parallel with no
// scatter and no races. Weight gradient: dw_g += dy_gᵀ · col, chunk by chunk.
// Chunks keep col near 32 MiB, so memory stays flat for any batch size.
// Half and bfloat16 are widened to fp32 as they are gathered and the GEMMs run
// in fp32 (double stays double): the only BLAS call is at::mm on our columns.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>

#include "../ops/conv2d_common.h"

namespace cnnkern::cpu {
namespace {

constexpr int64_t kColumnBudgetBytes = int64_t{32} << 20;


int64_t images_per_chunk(const Conv2dShape& s, int64_t elem_bytes) {
  const int64_t per_image = std::max<int64_t>(s.P * s.Q * s.c_per_group() * s.R * s.S * elem_bytes, 1);
  return std::clamp<int64_t>(kColumnBudgetBytes / per_image, 1, std::max<int64_t>(s.N, 1));
}

// col[(n - n0, p, q)][(c, r, s)] for images [n0, n0 + nb) of group g.
template <typename T, typename A>
void im2col(const T* x, const Conv2dShape& s, int64_t n0, int64_t nb, int64_t g, A* col) {
  const int64_t Cg = s.c_per_group(), PQ = s.P * s.Q, row_len = Cg * s.R * s.S;
  at::parallel_for(0, nb * PQ, 16, [&](int64_t begin, int64_t end) {
    for (int64_t m = begin; m < end; ++m) {
      const int64_t n = n0 + m / PQ, p = (m % PQ) / s.Q, q = m % s.Q;
      const T* xn = x + n * s.x_stride[0] + g * Cg * s.x_stride[1];
      A* out = col + m * row_len;
      for (int64_t c = 0; c < Cg; ++c) {
        for (int64_t r = 0; r < s.R; ++r) {
          const int64_t ih = conv_in_coord(p, r, s.stride_h, s.pad_h, s.dil_h);
          const bool row_in = ih >= 0 && ih < s.H;
          for (int64_t t = 0; t < s.S; ++t) {
            const int64_t iw = conv_in_coord(q, t, s.stride_w, s.pad_w, s.dil_w);
            *out++ = (row_in && iw >= 0 && iw < s.W)
                         ? static_cast<A>(xn[c * s.x_stride[1] + ih * s.x_stride[2] + iw * s.x_stride[3]])
                         : A(0);
          }
        }
      }
    }
  });
}

// dx[n][g*Cg + c][h][w] = sum of the dcol entries whose receptive field reads (h, w).
template <typename T, typename A>
void col2im_gather(const A* dcol, const Conv2dShape& s, int64_t n0, int64_t nb, int64_t g, T* dx) {
  const int64_t Cg = s.c_per_group(), row_len = Cg * s.R * s.S;
  at::parallel_for(0, nb * Cg * s.H, 4, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t nl = i / (Cg * s.H), c = (i / s.H) % Cg, h = i % s.H;
      T* dst = dx + (n0 + nl) * s.x_stride[0] + (g * Cg + c) * s.x_stride[1] + h * s.x_stride[2];
      for (int64_t w = 0; w < s.W; ++w) {
        A sum = 0;
        for (int64_t r = 0; r < s.R; ++r) {
          int64_t p;
          if (!conv_out_coord(h, r, s.stride_h, s.pad_h, s.dil_h, s.P, &p)) continue;
          for (int64_t t = 0; t < s.S; ++t) {
            int64_t q;
            if (!conv_out_coord(w, t, s.stride_w, s.pad_w, s.dil_w, s.Q, &q)) continue;
            sum += dcol[((nl * s.P + p) * s.Q + q) * row_len + (c * s.R + r) * s.S + t];
          }
        }
        dst[w * s.x_stride[3]] = static_cast<T>(sum);
      }
    }
  });
}

// Rows (n, p, q) × the group's output channels of dy, widened to the accumulator type.
at::Tensor grad_rows(const at::Tensor& grad_output, const Conv2dShape& s, int64_t n0, int64_t nb, int64_t g) {
  const int64_t Kg = s.k_per_group();
  return grad_output.narrow(0, n0, nb)
      .narrow(1, g * Kg, Kg)
      .permute({0, 2, 3, 1})
      .to(acc_dtype(grad_output.scalar_type()))
      .reshape({nb * s.P * s.Q, Kg});
}

at::Tensor conv2d_forward(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                          at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups) {
  Conv2dShape s = conv2d_shape(input, weight, stride, padding, dilation, groups);
  check_bias(bias, weight);
  at::Tensor y = at::empty({s.N, s.K, s.P, s.Q}, input.options().memory_format(conv2d_memory_format(input, weight)));
  if (y.numel() == 0) return y;
  if (weight.numel() == 0) return bias.has_value() ? y.copy_(bias->view({1, s.K, 1, 1}).expand_as(y)) : y.zero_();

  const auto acc = acc_dtype(input.scalar_type());
  const int64_t Kg = s.k_per_group(), Cg = s.c_per_group(), PQ = s.P * s.Q;
  const at::Tensor w_rows = weight.to(acc).contiguous().view({groups, Kg, Cg * s.R * s.S});
  const std::optional<at::Tensor> b_acc = bias.has_value() ? std::optional(bias->to(acc)) : std::nullopt;
  const at::Tensor y_nhwc = y.permute({0, 2, 3, 1});
  const int64_t chunk = images_per_chunk(s, at::elementSize(acc));
  at::Tensor col = at::empty({chunk * PQ, Cg * s.R * s.S}, input.options().dtype(acc));

  CNNKERN_DISPATCH_FLOATS(input.scalar_type(), "cnnkern_conv2d_cpu", [&] {
    using A = acc_t<scalar_t>;
    for (int64_t n0 = 0; n0 < s.N; n0 += chunk) {
      const int64_t nb = std::min(chunk, s.N - n0);
      const at::Tensor cols = col.narrow(0, 0, nb * PQ);
      for (int64_t g = 0; g < groups; ++g) {
        im2col(input.const_data_ptr<scalar_t>(), s, n0, nb, g, cols.data_ptr<A>());
        at::Tensor out = at::mm(cols, w_rows[g].t());
        if (b_acc.has_value()) out.add_(b_acc->narrow(0, g * Kg, Kg));
        y_nhwc.narrow(0, n0, nb).narrow(3, g * Kg, Kg).copy_(out.view({nb, s.P, s.Q, Kg}));
      }
    }
  });
  return y;
}

at::Tensor conv2d_backward_input(const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight,
                                 at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                                 int64_t groups) {
  Conv2dShape s = conv2d_shape(input, weight, stride, padding, dilation, groups);
  check_grad_output(grad_output, input, s);
  at::Tensor dx = at::empty(input.sizes(), input.options().memory_format(conv2d_memory_format(input, weight)));
  if (dx.numel() == 0) return dx;
  if (grad_output.numel() == 0) return dx.zero_();
  fill_strides(s.x_stride, dx);

  const auto acc = acc_dtype(input.scalar_type());
  const int64_t Kg = s.k_per_group(), Cg = s.c_per_group();
  const at::Tensor w_rows = weight.to(acc).contiguous().view({groups, Kg, Cg * s.R * s.S});
  const int64_t chunk = images_per_chunk(s, at::elementSize(acc));

  CNNKERN_DISPATCH_FLOATS(input.scalar_type(), "cnnkern_conv2d_dgrad_cpu", [&] {
    using A = acc_t<scalar_t>;
    for (int64_t n0 = 0; n0 < s.N; n0 += chunk) {
      const int64_t nb = std::min(chunk, s.N - n0);
      for (int64_t g = 0; g < groups; ++g) {
        const at::Tensor dcol = at::mm(grad_rows(grad_output, s, n0, nb, g), w_rows[g]);
        col2im_gather(dcol.const_data_ptr<A>(), s, n0, nb, g, dx.data_ptr<scalar_t>());
      }
    }
  });
  return dx;
}

at::Tensor conv2d_backward_weight(const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight,
                                  at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                                  int64_t groups) {
  Conv2dShape s = conv2d_shape(input, weight, stride, padding, dilation, groups);
  check_grad_output(grad_output, input, s);
  const auto acc = acc_dtype(input.scalar_type());
  const int64_t Kg = s.k_per_group(), Cg = s.c_per_group(), PQ = s.P * s.Q;
  at::Tensor dw_rows = at::zeros({groups, Kg, Cg * s.R * s.S}, input.options().dtype(acc));
  if (s.N > 0 && weight.numel() > 0) {
    const int64_t chunk = images_per_chunk(s, at::elementSize(acc));
    at::Tensor col = at::empty({chunk * PQ, Cg * s.R * s.S}, input.options().dtype(acc));
    CNNKERN_DISPATCH_FLOATS(input.scalar_type(), "cnnkern_conv2d_wgrad_cpu", [&] {
      using A = acc_t<scalar_t>;
      for (int64_t n0 = 0; n0 < s.N; n0 += chunk) {
        const int64_t nb = std::min(chunk, s.N - n0);
        const at::Tensor cols = col.narrow(0, 0, nb * PQ);
        for (int64_t g = 0; g < groups; ++g) {
          im2col(input.const_data_ptr<scalar_t>(), s, n0, nb, g, cols.data_ptr<A>());
          dw_rows[g].addmm_(grad_rows(grad_output, s, n0, nb, g).t(), cols);
        }
      }
    });
  }
  at::Tensor dw = at::empty(weight.sizes(), weight.options().memory_format(weight.suggest_memory_format()));
  return dw.copy_(dw_rows.view(weight.sizes()));
}

at::Tensor conv2d_backward_bias(const at::Tensor& grad_output) {
  TORCH_CHECK(grad_output.dim() == 4, "cnnkern conv2d_backward_bias: expected a 4-D grad_output");
  const int64_t N = grad_output.size(0), K = grad_output.size(1), P = grad_output.size(2), Q = grad_output.size(3);
  at::Tensor db = at::empty({K}, grad_output.options());
  CNNKERN_DISPATCH_FLOATS(grad_output.scalar_type(), "cnnkern_conv2d_bgrad_cpu", [&] {
    using A = acc_t<scalar_t>;
    const scalar_t* dy = grad_output.const_data_ptr<scalar_t>();
    const auto st = grad_output.strides();
    scalar_t* out = db.data_ptr<scalar_t>();
    at::parallel_for(0, K, 1, [&](int64_t begin, int64_t end) {
      for (int64_t k = begin; k < end; ++k) {
        A sum = 0;
        for (int64_t n = 0; n < N; ++n)
          for (int64_t p = 0; p < P; ++p)
            for (int64_t q = 0; q < Q; ++q) sum += static_cast<A>(dy[n * st[0] + k * st[1] + p * st[2] + q * st[3]]);
        out[k] = static_cast<scalar_t>(sum);
      }
    });
  });
  return db;
}

}  // namespace

TORCH_LIBRARY_IMPL(cnnkern, CPU, m) {
  m.impl("conv2d", &conv2d_forward);
  m.impl("conv2d_backward_input", &conv2d_backward_input);
  m.impl("conv2d_backward_weight", &conv2d_backward_weight);
  m.impl("conv2d_backward_bias", &conv2d_backward_bias);
}

}  // namespace cnnkern::cpu
