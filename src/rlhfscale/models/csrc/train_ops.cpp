// For the forwards that train on a CPU (`models.train_ops`), in one pass each: the backwards of RoPE and RMSNorm
// (their forwards are `row_ops.cpp`'s), and SwiGLU's gate both ways. Eagerly the backward of RoPE is four tensor
// ops, that of RMSNorm about eight and SwiGLU's gate three forward and three backward, every one a pass over
// memory. Here (round: to the tensor's dtype; arithmetic in float):
//
//   rope_backward:      dx = round(round(g * cos) + roll(round(g * sin), -D/2))   per head, sin signed
//   rms_norm_backward:  dx = r (dn - n mean(dn n)),  dw = Σ_rows g round(n);  n = x r, dn = g w,
//                       r = 1 / sqrt(mean(x²) + eps)
//   swiglu:             out = round(round(silu(a)) * b)
//   swiglu_backward:    da = round(round(g * b) * σ(a) (1 + a (1 - σ(a)))),  db = round(g * round(silu(a)))
//
// rope_backward rounds where autograd's backward of the eager `kernels.apply_rope` rounds: the same bits.
// rms_norm_backward sums in its own order (dw over blocks of rows in a fixed order, whatever the threads), and
// swiglu takes its own exp (`float_math.h`): within a float rounding of the eager ops.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <tuple>
#include <vector>

#include "float_math.h"

namespace {

using rlhfscale::kLanes;
using rlhfscale::load_as_float;
using rlhfscale::rounded;
using rlhfscale::store_as;
using rlhfscale::to_dtype;
using rlhfscale::Vec;

constexpr int64_t kRowsPerTask = 16;  // token rows handed to a thread at a time
constexpr int64_t kChunk = 4096;      // the fewest elements of an elementwise op handed to a thread

#pragma GCC push_options
#pragma GCC optimize("fp-contract=off")  // a product and a sum round apart, as the eager ops
// dx [N, heads, D] (dtype X) of the rope of x at cos, sin [N, D] (dtype C), from the gradient g of its output
// (dtype O, contiguous).
template <typename X, typename C, typename O>
void rope_backward_rows(const O* g, const C* cos, const C* sin, X* dx, int64_t N, int64_t heads, int64_t D) {
  const int64_t half = D / 2;
  at::parallel_for(0, N, kRowsPerTask, [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n) {
      const C* c = cos + n * D;
      const C* s = sin + n * D;
      for (int64_t h = 0; h < heads; ++h) {
        const O* gh = g + (n * heads + h) * D;
        X* out = dx + (n * heads + h) * D;
#pragma omp simd
        for (int64_t j = 0; j < half; ++j) {  // x[j] went to out[j] (times cos) and out[j + D/2] (times sin)
          const float direct = rounded<X>(static_cast<float>(gh[j]) * static_cast<float>(c[j]));
          out[j] = to_dtype<X>(direct + rounded<X>(static_cast<float>(gh[j + half]) * static_cast<float>(s[j + half])));
        }
#pragma omp simd
        for (int64_t j = half; j < D; ++j) {
          const float direct = rounded<X>(static_cast<float>(gh[j]) * static_cast<float>(c[j]));
          out[j] = to_dtype<X>(direct + rounded<X>(static_cast<float>(gh[j - half]) * static_cast<float>(s[j - half])));
        }
      }
    }
  });
}
#pragma GCC pop_options

// σ(a) in every lane from an exp of a non-positive argument only (no overflow): 1 / (1 + e^-a) for a >= 0,
// e^a / (1 + e^a) below.
inline Vec sigmoid(Vec a) {
  const Vec e = rlhfscale::exp_nonpositive(a < 0.f ? a : -a);
  return (a < 0.f ? e : Vec{} + 1.f) / (1.f + e);
}

// out = round(round(silu(a)) * b) over n elements.
template <typename T>
void swiglu_range(const T* a, const T* b, T* out, int64_t n) {
  for (int64_t i = 0; i < n; i += kLanes) {
    const int64_t m = std::min(kLanes, n - i);
    const Vec x = load_as_float(a + i, m);
    store_as(out + i, rounded<T>(x * sigmoid(x)) * load_as_float(b + i, m), m);
  }
}

// da, db of out = round(round(silu(a)) * b) from its gradient g, over n elements.
template <typename T>
void swiglu_backward_range(const T* g, const T* a, const T* b, T* da, T* db, int64_t n) {
  for (int64_t i = 0; i < n; i += kLanes) {
    const int64_t m = std::min(kLanes, n - i);
    const Vec x = load_as_float(a + i, m), gi = load_as_float(g + i, m), sig = sigmoid(x);
    store_as(da + i, rounded<T>(gi * load_as_float(b + i, m)) * sig * (1.f + x * (1.f - sig)), m);
    store_as(db + i, gi * rounded<T>(x * sig), m);
  }
}

// dx [N, D] and the per-block partial weight gradients partial [ceil(N / kRowsPerTask), D] of out = w round(n).
template <typename T>
void rms_norm_backward_rows(const T* g, const T* x, const T* w, T* dx, float* partial, int64_t N, int64_t D,
                            float eps) {
  at::parallel_for(0, (N + kRowsPerTask - 1) / kRowsPerTask, 1, [&](int64_t begin, int64_t end) {
    for (int64_t block = begin; block < end; ++block) {
      float* dw = partial + block * D;
      for (int64_t d = 0; d < D; ++d) dw[d] = 0.f;
      for (int64_t r = block * kRowsPerTask; r < std::min(N, (block + 1) * kRowsPerTask); ++r) {
        const T* xr = x + r * D;
        const T* gr = g + r * D;
        float squares = 0.f, dot = 0.f;
#pragma omp simd reduction(+ : squares, dot)
        for (int64_t d = 0; d < D; ++d) {
          const float xd = static_cast<float>(xr[d]);
          squares += xd * xd;
          dot += static_cast<float>(gr[d]) * static_cast<float>(w[d]) * xd;
        }
        const float inv = 1.f / std::sqrt(squares / static_cast<float>(D) + eps);
        const float mean = dot * inv / static_cast<float>(D);  // mean(dn n)
#pragma omp simd
        for (int64_t d = 0; d < D; ++d) {
          const float xd = static_cast<float>(xr[d]), gd = static_cast<float>(gr[d]);
          dx[r * D + d] = to_dtype<T>(inv * (gd * static_cast<float>(w[d]) - xd * inv * mean));
          dw[d] += gd * rounded<T>(xd * inv);
        }
      }
    }
  });
}

at::Tensor rope_backward(const at::Tensor& grad, const at::Tensor& cos, const at::Tensor& sin,
                         at::ScalarType x_dtype) {
  TORCH_CHECK(grad.dim() == 3 && grad.is_contiguous() && grad.size(2) % 2 == 0,
              "rope_backward: expected a contiguous gradient [N, heads, D], D even");
  const int64_t N = grad.size(0), heads = grad.size(1), D = grad.size(2);
  TORCH_CHECK(cos.sizes() == at::IntArrayRef({N, D}) && sin.sizes() == cos.sizes() && cos.is_contiguous() &&
              sin.is_contiguous() && sin.scalar_type() == cos.scalar_type() &&
              grad.scalar_type() == cos.scalar_type(),
              "rope_backward: expected contiguous cos, sin [N, D] of the gradient's dtype");
  auto dx = at::empty({N, heads, D}, grad.options().dtype(x_dtype));
  if (x_dtype == at::kBFloat16 && cos.scalar_type() == at::kFloat) {
    rope_backward_rows<c10::BFloat16, float, float>(grad.const_data_ptr<float>(), cos.const_data_ptr<float>(),
                                                    sin.const_data_ptr<float>(), dx.mutable_data_ptr<c10::BFloat16>(),
                                                    N, heads, D);
    return dx;
  }
  TORCH_CHECK(x_dtype == cos.scalar_type(), "rope_backward: expected x of the angles' dtype, or bfloat16 for float");
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, x_dtype, "rope_backward", [&] {
    rope_backward_rows<scalar_t, scalar_t, scalar_t>(grad.const_data_ptr<scalar_t>(), cos.const_data_ptr<scalar_t>(),
                                                     sin.const_data_ptr<scalar_t>(), dx.mutable_data_ptr<scalar_t>(),
                                                     N, heads, D);
  });
  return dx;
}

void check_elementwise(const char* op, std::initializer_list<at::Tensor> tensors) {
  const at::Tensor& first = *tensors.begin();
  for (const auto& t : tensors)
    TORCH_CHECK(t.is_contiguous() && t.sizes() == first.sizes() && t.scalar_type() == first.scalar_type() &&
                    (t.scalar_type() == at::kFloat || t.scalar_type() == at::kBFloat16),
                op, ": expected contiguous float or bfloat16 tensors of one shape and dtype");
}

at::Tensor swiglu(const at::Tensor& a, const at::Tensor& b) {
  check_elementwise("swiglu", {a, b});
  auto out = at::empty_like(a);
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, a.scalar_type(), "swiglu", [&] {
    const scalar_t *pa = a.const_data_ptr<scalar_t>(), *pb = b.const_data_ptr<scalar_t>();
    scalar_t* po = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, a.numel(), kChunk, [&](int64_t begin, int64_t end) {
      swiglu_range(pa + begin, pb + begin, po + begin, end - begin);
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> swiglu_backward(const at::Tensor& grad, const at::Tensor& a, const at::Tensor& b) {
  check_elementwise("swiglu_backward", {grad, a, b});
  auto da = at::empty_like(a), db = at::empty_like(b);
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, a.scalar_type(), "swiglu_backward", [&] {
    const scalar_t *pg = grad.const_data_ptr<scalar_t>(), *pa = a.const_data_ptr<scalar_t>(),
                   *pb = b.const_data_ptr<scalar_t>();
    scalar_t *pda = da.mutable_data_ptr<scalar_t>(), *pdb = db.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, a.numel(), kChunk, [&](int64_t begin, int64_t end) {
      swiglu_backward_range(pg + begin, pa + begin, pb + begin, pda + begin, pdb + begin, end - begin);
    });
  });
  return {da, db};
}

// grad, x [N, D], weight [D], all of one dtype -> dx [N, D], dweight [D] (summed in float over blocks of rows in
// a fixed order: the same bits whatever the threads).
std::tuple<at::Tensor, at::Tensor> rms_norm_backward(const at::Tensor& grad, const at::Tensor& x,
                                                     const at::Tensor& weight, double eps) {
  check_elementwise("rms_norm_backward", {grad, x});
  TORCH_CHECK(x.dim() == 2 && weight.dim() == 1 && weight.size(0) == x.size(1) && weight.is_contiguous() &&
              weight.scalar_type() == x.scalar_type(),
              "rms_norm_backward: expected x [N, D] and a contiguous weight [D] of its dtype");
  const int64_t N = x.size(0), D = x.size(1);
  auto dx = at::empty_like(x);
  auto partial = at::empty({(N + kRowsPerTask - 1) / kRowsPerTask, D}, x.options().dtype(at::kFloat));
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, x.scalar_type(), "rms_norm_backward", [&] {
    rms_norm_backward_rows<scalar_t>(grad.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(),
                                     weight.const_data_ptr<scalar_t>(), dx.mutable_data_ptr<scalar_t>(),
                                     partial.mutable_data_ptr<float>(), N, D, static_cast<float>(eps));
  });
  std::vector<float> sum(D, 0.f);
  const float* p = partial.const_data_ptr<float>();
  for (int64_t block = 0; block < partial.size(0); ++block)
    for (int64_t d = 0; d < D; ++d) sum[d] += p[block * D + d];
  auto dweight = at::empty({D}, x.options());
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, x.scalar_type(), "rms_norm_backward_weight", [&] {
    scalar_t* out = dweight.mutable_data_ptr<scalar_t>();
    for (int64_t d = 0; d < D; ++d) out[d] = to_dtype<scalar_t>(sum[d]);
  });
  return {dx, dweight};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(rlhfscale, m) {
  m.def("rope_backward(Tensor grad, Tensor cos, Tensor sin, ScalarType x_dtype) -> Tensor");
  m.def("swiglu(Tensor a, Tensor b) -> Tensor");
  m.def("swiglu_backward(Tensor grad, Tensor a, Tensor b) -> (Tensor, Tensor)");
  m.def("rms_norm_backward(Tensor grad, Tensor x, Tensor weight, float eps) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(rlhfscale, CPU, m) {
  m.impl("rope_backward", &rope_backward);
  m.impl("swiglu", &swiglu);
  m.impl("swiglu_backward", &swiglu_backward);
  m.impl("rms_norm_backward", &rms_norm_backward);
}
