// Two per-token steps of a Llama layer in one pass each: the sampler's forwards on a CPU, and the forwards of
// training (`models.train_ops`, whose backwards are `train_ops.cpp`). Eagerly each is five to seven tensor ops, and
// at the sampler's sizes (256 tokens of 128 features) every op costs more in its fixed overhead than in its
// arithmetic.
//
//   rms_norm:  out = round(w * round(x / sqrt(mean(x^2) + eps)))   the mean in float
//   rope:      out = round(round(x * cos) + roll(x, D/2) * sin)     per head, sin signed as in `llama.Rope`
//
// (round: to the tensor's dtype.) Arithmetic is float and the roundings sit where the eager ops
// (`kernels.rms_norm`, `kernels.apply_rope`) round: rope's sum is one fma, as eager addcmul's, so rope gives the
// eager bits in every dtype (autocast's bf16 x with float angles included); rms_norm a bfloat16 model's, and a
// float32 one the same math summed in another order.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <cstdint>

#include "float_math.h"

namespace {

using rlhfscale::rope_head;
using rlhfscale::rounded;
using rlhfscale::to_dtype;

constexpr int64_t kRowsPerTask = 16;  // rows handed to a thread at a time: a few microseconds of work

// out [N, D] = rms_norm of x [N, D] (row stride `row`) with weight [D].
template <typename T>
void rms_norm_rows(const T* x, const T* w, T* out, int64_t N, int64_t D, int64_t row, float eps) {
  at::parallel_for(0, N, kRowsPerTask, [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n) {
      const T* xn = x + n * row;
      float squares = 0.f;
#pragma omp simd reduction(+ : squares)
      for (int64_t d = 0; d < D; ++d) squares += static_cast<float>(xn[d]) * static_cast<float>(xn[d]);
      const float inv = 1.f / std::sqrt(squares / static_cast<float>(D) + eps);
#pragma omp simd
      for (int64_t d = 0; d < D; ++d)
        out[n * D + d] = to_dtype<T>(static_cast<float>(w[d]) * rounded<T>(static_cast<float>(xn[d]) * inv));
    }
  });
}

// out [N, heads, D] = rope of x [N, heads, D] (token row stride `row`) at the angles cos, sin [N, D]. X, C, O: the
// dtypes of x, of the angles and of out (their promotion: a bf16 x under autocast with float angles gives float).
template <typename X, typename C, typename O>
void rope_rows(const X* x, const C* cos, const C* sin, O* out, int64_t N, int64_t heads, int64_t D, int64_t row) {
  at::parallel_for(0, N, kRowsPerTask, [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n)
      for (int64_t h = 0; h < heads; ++h)
        rope_head<O>(x + n * row + h * D, cos + n * D, sin + n * D, D, out + (n * heads + h) * D);
  });
}

// x [N, D] (rows possibly strided), weight [D] -> [N, D].
at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps) {
  TORCH_CHECK(x.dim() == 2 && x.stride(1) == 1 && weight.dim() == 1 && weight.size(0) == x.size(1) &&
              weight.is_contiguous() && weight.scalar_type() == x.scalar_type(),
              "rms_norm: expected x [N, D] with contiguous rows and a weight [D] of its dtype");
  auto out = at::empty({x.size(0), x.size(1)}, x.options());
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, x.scalar_type(), "rms_norm", [&] {
    rms_norm_rows<scalar_t>(x.const_data_ptr<scalar_t>(), weight.const_data_ptr<scalar_t>(),
                            out.mutable_data_ptr<scalar_t>(), x.size(0), x.size(1), x.stride(0),
                            static_cast<float>(eps));
  });
  return out;
}

// x [N, heads, D] (token rows possibly strided, heads contiguous); cos, sin [N, D] -> [N, heads, D]: all of one
// dtype, or x bfloat16 and the angles float (out float, as eager type promotion gives).
at::Tensor rope(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
  TORCH_CHECK(x.dim() == 3 && x.stride(2) == 1 && x.stride(1) == x.size(2) && x.size(2) % 2 == 0,
              "rope: expected x [N, heads, D] with contiguous heads and D even");
  const int64_t N = x.size(0), heads = x.size(1), D = x.size(2);
  const bool mixed = x.scalar_type() == at::kBFloat16 && cos.scalar_type() == at::kFloat;
  TORCH_CHECK(cos.sizes() == at::IntArrayRef({N, D}) && sin.sizes() == cos.sizes() && cos.is_contiguous() &&
              sin.is_contiguous() && sin.scalar_type() == cos.scalar_type() &&
              (cos.scalar_type() == x.scalar_type() || mixed),
              "rope: expected contiguous cos, sin [N, D] of x's dtype (or float for a bfloat16 x)");
  auto out = at::empty({N, heads, D}, x.options().dtype(cos.scalar_type()));
  if (mixed) {
    rope_rows<c10::BFloat16, float, float>(x.const_data_ptr<c10::BFloat16>(), cos.const_data_ptr<float>(),
                                           sin.const_data_ptr<float>(), out.mutable_data_ptr<float>(), N, heads, D,
                                           x.stride(0));
    return out;
  }
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, x.scalar_type(), "rope", [&] {
    rope_rows<scalar_t, scalar_t, scalar_t>(x.const_data_ptr<scalar_t>(), cos.const_data_ptr<scalar_t>(),
                                            sin.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(), N,
                                            heads, D, x.stride(0));
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(rlhfscale, m) {
  m.def("rms_norm(Tensor x, Tensor weight, float eps) -> Tensor");
  m.def("rope(Tensor x, Tensor cos, Tensor sin) -> Tensor");
}

TORCH_LIBRARY_IMPL(rlhfscale, CPU, m) {
  m.impl("rms_norm", &rms_norm);
  m.impl("rope", &rope);
}
