// The attention of whole sequences on a CPU, forward and backward: the differentiated forwards of training and the
// reference model's (`models.seq_attention`). Query row b reads the keys of a shared prefix, row idx[b] of k1, v1,
// then its own, k2, v2 (either part may be empty): the n responses of a prompt read its keys where they sit, with
// no copy per response. For query head h (key/value head g = h / (H / Hkv)), query r of row b, key c:
//
//   s_rc = scale · q_r · k_c + mask_rc                          (mask: 0 where r may read c, -inf elsewhere)
//   p_rc = exp(s_rc - lse_r),  lse_r = log sum_c exp(s_rc)      out_r = round(sum_c p_rc v_c)
//
// and for the gradient dout of out (dp_rc = dout_r · v_c, ds_rc = p_rc (dp_rc - sum_c' p_rc' dp_rc')):
//
//   dq_r = round(scale sum_c ds_rc k_c)    dk_c = round(scale sum_{b,h,r} ds_rc q_r)    dv_c = round(sum p_rc dout_r)
//
// All arithmetic is float and each result is rounded to the inputs' dtype once (round), as torch's math kernel
// computes bf16 inputs on a CPU. The forward keeps lse per query for the backward, which recomputes the
// probabilities (FlashAttention's recipe). The vector lanes are 16 queries of one head: every product, the softmax
// and its exponentials run down the lanes, with no horizontal sums and no transposed copy of the keys. Tensors are
// token-major, as the layers make them: q [B, R, H, D], k1, v1 [U, S1, Hkv, D], k2, v2 [B, S2, Hkv, D].
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "float_math.h"

namespace {

using rlhfscale::to_dtype;

using rlhfscale::exp_nonpositive;
using rlhfscale::kLanes;
using rlhfscale::load;
using rlhfscale::store;
using rlhfscale::Vec;

struct Dims {
  int64_t B, U, H, Hkv, R, S1, S2, D;
  float scale;
  int64_t S() const { return S1 + S2; }
  int64_t blocks() const { return (R + kLanes - 1) / kLanes; }
};

// One task's keys and values, (row b, key/value head g): the prefix's S1, then the row's own S2, as float [S, D].
template <typename T>
void load_keys(const T* k1, const T* v1, const T* k2, const T* v2, int64_t u, int64_t b, int64_t g, const Dims& n,
               float* kf, float* vf) {
  for (int64_t c = 0; c < n.S(); ++c) {
    const bool own = c >= n.S1;
    const int64_t at = own ? ((b * n.S2 + c - n.S1) * n.Hkv + g) * n.D : ((u * n.S1 + c) * n.Hkv + g) * n.D;
    const T* k = (own ? k2 : k1) + at;
    const T* v = (own ? v2 : v1) + at;
#pragma omp simd
    for (int64_t d = 0; d < n.D; ++d) {
      kf[c * n.D + d] = static_cast<float>(k[d]);
      vf[c * n.D + d] = static_cast<float>(v[d]);
    }
  }
}

// A block of up to 16 queries (head h of row b, from query r0): x (q or dout) transposed to xt [D][16], times
// `scale`; lanes past R are zero.
template <typename T>
void load_lanes(const T* x, int64_t b, int64_t h, int64_t r0, const Dims& n, float scale, float* xt) {
  std::fill(xt, xt + n.D * kLanes, 0.f);
  for (int64_t l = 0; l < std::min(kLanes, n.R - r0); ++l) {
    const T* row = x + ((b * n.R + r0 + l) * n.H + h) * n.D;
    for (int64_t d = 0; d < n.D; ++d) xt[d * kLanes + l] = static_cast<float>(row[d]) * scale;
  }
}

// out[c] (16 lanes) = init[c] + sum_d xt[d] m[c][d] for c < S (init: the mask's column c, or none): the scores,
// or dp. Four keys at a time: four independent chains of multiply-adds.
inline void lane_products(const float* xt, const float* m, const float* init, int64_t init_stride, const Dims& n,
                          Vec* out) {
  const int64_t S = n.S(), D = n.D;
  auto start = [&](int64_t c) { return init ? load(init + c * init_stride) : Vec{}; };
  int64_t c = 0;
  for (; c + 4 <= S; c += 4) {
    Vec a0 = start(c), a1 = start(c + 1), a2 = start(c + 2), a3 = start(c + 3);
    const float* m0 = m + c * D;
    for (int64_t d = 0; d < D; ++d) {
      const Vec x = load(xt + d * kLanes);
      a0 += x * m0[d];
      a1 += x * m0[D + d];
      a2 += x * m0[2 * D + d];
      a3 += x * m0[3 * D + d];
    }
    out[c] = a0, out[c + 1] = a1, out[c + 2] = a2, out[c + 3] = a3;
  }
  for (; c < S; ++c) {
    Vec a = start(c);
    for (int64_t d = 0; d < D; ++d) a += load(xt + d * kLanes) * m[c * D + d];
    out[c] = a;
  }
}

// xt[d] (16 lanes) = sum_c w[c] m[c][d]: a weighted sum of key or value rows for each query. Four features at a
// time (D is a multiple of 16).
inline void weighted(const Vec* w, const float* m, const Dims& n, float* xt) {
  for (int64_t d = 0; d < n.D; d += 4) {
    Vec a0{}, a1{}, a2{}, a3{};
    for (int64_t c = 0; c < n.S(); ++c) {
      const float* row = m + c * n.D + d;
      a0 += w[c] * row[0];
      a1 += w[c] * row[1];
      a2 += w[c] * row[2];
      a3 += w[c] * row[3];
    }
    store(xt + d * kLanes, a0), store(xt + (d + 1) * kLanes, a1);
    store(xt + (d + 2) * kLanes, a2), store(xt + (d + 3) * kLanes, a3);
  }
}

template <typename T>
void forward_heads(const T* q, const T* k1, const T* v1, const int64_t* idx, const T* k2, const T* v2,
                   const float* mask, T* out, float* lse, const Dims& n) {
  const int64_t group = n.H / n.Hkv;
  at::parallel_for(0, n.B * n.Hkv, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> kf(n.S() * n.D), vf(n.S() * n.D), qt(n.D * kLanes), ot(n.D * kLanes);
    std::vector<Vec> s(n.S());
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / n.Hkv, g = task % n.Hkv;
      load_keys(k1, v1, k2, v2, idx[b], b, g, n, kf.data(), vf.data());
      for (int64_t h = g * group; h < (g + 1) * group; ++h) {
        for (int64_t r0 = 0; r0 < n.R; r0 += kLanes) {
          load_lanes(q, b, h, r0, n, n.scale, qt.data());
          const float* m = mask + (b * n.S()) * n.blocks() * kLanes + r0;  // [S, R]: column c at c · R
          lane_products(qt.data(), kf.data(), m, n.blocks() * kLanes, n, s.data());
          Vec top = Vec{} - std::numeric_limits<float>::infinity(), sum = Vec{};
          for (int64_t c = 0; c < n.S(); ++c) top = top > s[c] ? top : s[c];
          const Vec shift = top == -std::numeric_limits<float>::infinity() ? Vec{} : top;  // no open key: all 0
          for (int64_t c = 0; c < n.S(); ++c) sum += (s[c] = exp_nonpositive(s[c] - shift));
          weighted(s.data(), vf.data(), n, ot.data());
          for (int64_t l = 0; l < std::min(kLanes, n.R - r0); ++l) {
            const float inv = sum[l] > 0.f ? 1.f / sum[l] : 0.f;
            T* row = out + ((b * n.R + r0 + l) * n.H + h) * n.D;
            for (int64_t d = 0; d < n.D; ++d) row[d] = to_dtype<T>(ot[d * kLanes + l] * inv);
            lse[(b * n.H + h) * n.R + r0 + l] =
                sum[l] > 0.f ? shift[l] + std::log(sum[l]) : std::numeric_limits<float>::infinity();
          }
        }
      }
    }
  });
}

// dk, dv of one task's keys (float [S, D]) += the block's sum over its queries: m[c][:] += sum_l w[c][l] x[l][:],
// x row by row, xr [16][D]. Two keys by up to 64 features at a time are summed over the lanes in registers (up to
// eight independent chains), then stored once.
inline void outer_rows(const Vec* w, const float* xr, const Dims& n, int64_t lanes, float* m) {
  constexpr int64_t kChunk = 4;  // registers of features per key
  const int64_t S = n.S(), D = n.D;
  for (int64_t c = 0; c < S; c += 2) {
    const int64_t keys = std::min<int64_t>(2, S - c);
    for (int64_t d0 = 0; d0 < D; d0 += kChunk * kLanes) {
      const int64_t regs = std::min(kChunk, (D - d0) / kLanes);
      Vec a[2][kChunk] = {};
      for (int64_t k = 0; k < keys; ++k)
        for (int64_t j = 0; j < regs; ++j) a[k][j] = load(m + (c + k) * D + d0 + j * kLanes);
      for (int64_t l = 0; l < lanes; ++l) {
        const float w0 = w[c][l], w1 = keys > 1 ? w[c + 1][l] : 0.f;
        for (int64_t j = 0; j < regs; ++j) {
          const Vec x = load(xr + l * D + d0 + j * kLanes);
          a[0][j] += w0 * x;
          a[1][j] += w1 * x;
        }
      }
      for (int64_t k = 0; k < keys; ++k)
        for (int64_t j = 0; j < regs; ++j) store(m + (c + k) * D + d0 + j * kLanes, a[k][j]);
    }
  }
}

// The rows of xt [D][16] one by one: xr [16][D].
inline void rows_of(const float* xt, const Dims& n, float* xr) {
  for (int64_t l = 0; l < kLanes; ++l)
    for (int64_t d = 0; d < n.D; ++d) xr[l * n.D + d] = xt[d * kLanes + l];
}

template <typename T>
void backward_heads(const T* dout, const T* q, const T* k1, const T* v1, const int64_t* idx, const T* k2,
                    const T* v2, const float* mask, const float* lse, T* dq, float* dk1, float* dv1, T* dk2, T* dv2,
                    const Dims& n) {
  const int64_t group = n.H / n.Hkv;
  at::parallel_for(0, n.B * n.Hkv, 1, [&](int64_t begin, int64_t end) {
    const int64_t S = n.S(), D = n.D;
    std::vector<float> kf(S * D), vf(S * D), dkf(S * D), dvf(S * D), qt(D * kLanes), dot(D * kLanes), dqt(D * kLanes),
        qr(kLanes * D), dor(kLanes * D);
    std::vector<Vec> p(S), ds(S);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / n.Hkv, g = task % n.Hkv;
      load_keys(k1, v1, k2, v2, idx[b], b, g, n, kf.data(), vf.data());
      std::fill(dkf.begin(), dkf.end(), 0.f);
      std::fill(dvf.begin(), dvf.end(), 0.f);
      for (int64_t h = g * group; h < (g + 1) * group; ++h) {
        for (int64_t r0 = 0; r0 < n.R; r0 += kLanes) {
          const int64_t lanes = std::min(kLanes, n.R - r0);
          load_lanes(q, b, h, r0, n, n.scale, qt.data());
          load_lanes(dout, b, h, r0, n, 1.f, dot.data());
          Vec lse_r = Vec{} + std::numeric_limits<float>::infinity();
          for (int64_t l = 0; l < lanes; ++l) lse_r[l] = lse[(b * n.H + h) * n.R + r0 + l];
          lane_products(qt.data(), kf.data(), mask + (b * S) * n.blocks() * kLanes + r0, n.blocks() * kLanes, n,
                        p.data());
          lane_products(dot.data(), vf.data(), nullptr, 0, n, ds.data());  // dp
          Vec expected = Vec{};  // sum_c p_c dp_c, per query
          for (int64_t c = 0; c < S; ++c) {
            p[c] = exp_nonpositive(p[c] - lse_r);
            expected += p[c] * ds[c];
          }
          for (int64_t c = 0; c < S; ++c) ds[c] = p[c] * (ds[c] - expected);
          weighted(ds.data(), kf.data(), n, dqt.data());
          rows_of(qt.data(), n, qr.data());
          rows_of(dot.data(), n, dor.data());
          outer_rows(ds.data(), qr.data(), n, lanes, dkf.data());  // q carries the scale
          outer_rows(p.data(), dor.data(), n, lanes, dvf.data());
          for (int64_t l = 0; l < lanes; ++l) {
            T* row = dq + ((b * n.R + r0 + l) * n.H + h) * D;
            for (int64_t d = 0; d < D; ++d) row[d] = to_dtype<T>(dqt[d * kLanes + l] * n.scale);
          }
        }
      }
      for (int64_t c = 0; c < n.S1; ++c) {  // the prefix's part per row, in float: summed over its rows after
        const int64_t at = ((b * n.S1 + c) * n.Hkv + g) * D;
        std::copy(dkf.data() + c * D, dkf.data() + (c + 1) * D, dk1 + at);
        std::copy(dvf.data() + c * D, dvf.data() + (c + 1) * D, dv1 + at);
      }
      for (int64_t c = n.S1; c < S; ++c) {  // the row's own, rounded
        const int64_t at = ((b * n.S2 + c - n.S1) * n.Hkv + g) * D;
#pragma omp simd
        for (int64_t d = 0; d < D; ++d) {
          dk2[at + d] = to_dtype<T>(dkf[c * D + d]);
          dv2[at + d] = to_dtype<T>(dvf[c * D + d]);
        }
      }
    }
  });
}

Dims dims_of(const at::Tensor& q, const at::Tensor& k1, const at::Tensor& idx, const at::Tensor& k2,
             const at::Tensor& mask, double scale) {
  TORCH_CHECK(q.dim() == 4 && k1.dim() == 4 && k2.dim() == 4 && idx.dim() == 1 && idx.size(0) == q.size(0) &&
              idx.scalar_type() == at::kLong && k2.size(0) == q.size(0) && k1.size(2) == k2.size(2) &&
              k1.size(3) == q.size(3) && k2.size(3) == q.size(3) && k1.size(2) > 0 && q.size(2) % k1.size(2) == 0 &&
              q.size(3) % kLanes == 0,
              "seq_attention: expected q [B, R, H, D], k1 [U, S1, Hkv, D], idx [B] (int64), k2 [B, S2, Hkv, D], "
              "D a multiple of 16");
  TORCH_CHECK(q.is_contiguous() && k1.is_contiguous() && k2.is_contiguous() && idx.is_contiguous() &&
              k1.scalar_type() == q.scalar_type() && k2.scalar_type() == q.scalar_type(),
              "seq_attention: expected contiguous q, k, v of one dtype");
  const int64_t S = k1.size(1) + k2.size(1), R = q.size(1);
  TORCH_CHECK(mask.scalar_type() == at::kFloat && mask.is_contiguous() && mask.dim() == 3 &&
              mask.size(0) == q.size(0) && mask.size(1) == S && mask.size(2) == (R + kLanes - 1) / kLanes * kLanes,
              "seq_attention: expected a float mask [B, S, R rounded up to 16] (0: read, -inf: not)");
  return {q.size(0), k1.size(0), q.size(2), k1.size(2), R, k1.size(1), k2.size(1), q.size(3),
          static_cast<float>(scale)};
}

std::tuple<at::Tensor, at::Tensor> forward(const at::Tensor& q, const at::Tensor& k1, const at::Tensor& v1,
                                           const at::Tensor& idx, const at::Tensor& k2, const at::Tensor& v2,
                                           const at::Tensor& mask, double scale) {
  const Dims n = dims_of(q, k1, idx, k2, mask, scale);
  TORCH_CHECK(v1.sizes() == k1.sizes() && v2.sizes() == k2.sizes() && v1.is_contiguous() && v2.is_contiguous() &&
              v1.scalar_type() == q.scalar_type() && v2.scalar_type() == q.scalar_type(),
              "seq_attention: expected v1, v2 shaped and typed as k1, k2");
  auto out = at::empty_like(q);
  auto lse = at::empty({n.B, n.H, n.R}, q.options().dtype(at::kFloat));
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, q.scalar_type(), "seq_attention_forward", [&] {
    forward_heads<scalar_t>(q.const_data_ptr<scalar_t>(), k1.const_data_ptr<scalar_t>(), v1.const_data_ptr<scalar_t>(),
                            idx.const_data_ptr<int64_t>(), k2.const_data_ptr<scalar_t>(),
                            v2.const_data_ptr<scalar_t>(), mask.const_data_ptr<float>(),
                            out.mutable_data_ptr<scalar_t>(), lse.mutable_data_ptr<float>(), n);
  });
  return {out, lse};
}

// dq, dk1, dv1, dk2, dv2: the prefix's gradients summed over the rows that read it (in float, rounded once).
std::vector<at::Tensor> backward(const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k1,
                                 const at::Tensor& v1, const at::Tensor& idx, const at::Tensor& k2,
                                 const at::Tensor& v2, const at::Tensor& mask, const at::Tensor& lse, double scale) {
  const Dims n = dims_of(q, k1, idx, k2, mask, scale);
  TORCH_CHECK(dout.sizes() == q.sizes() && dout.is_contiguous() && dout.scalar_type() == q.scalar_type() &&
              lse.scalar_type() == at::kFloat && lse.is_contiguous() && lse.numel() == n.B * n.H * n.R,
              "seq_attention: expected dout shaped and typed as q, and the forward's lse");
  auto dq = at::empty_like(q), dk2 = at::empty_like(k2), dv2 = at::empty_like(v2);
  auto rows = q.options().dtype(at::kFloat);
  auto dk1_rows = at::empty({n.B, n.S1, n.Hkv, n.D}, rows), dv1_rows = at::empty({n.B, n.S1, n.Hkv, n.D}, rows);
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, q.scalar_type(), "seq_attention_backward", [&] {
    backward_heads<scalar_t>(dout.const_data_ptr<scalar_t>(), q.const_data_ptr<scalar_t>(),
                             k1.const_data_ptr<scalar_t>(), v1.const_data_ptr<scalar_t>(),
                             idx.const_data_ptr<int64_t>(), k2.const_data_ptr<scalar_t>(),
                             v2.const_data_ptr<scalar_t>(), mask.const_data_ptr<float>(), lse.const_data_ptr<float>(),
                             dq.mutable_data_ptr<scalar_t>(), dk1_rows.mutable_data_ptr<float>(),
                             dv1_rows.mutable_data_ptr<float>(), dk2.mutable_data_ptr<scalar_t>(),
                             dv2.mutable_data_ptr<scalar_t>(), n);
  });
  auto sum = [&](const at::Tensor& per_row) {
    return at::zeros({n.U, n.S1, n.Hkv, n.D}, rows).index_add_(0, idx, per_row).to(q.scalar_type());
  };
  return {dq, sum(dk1_rows), sum(dv1_rows), dk2, dv2};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(rlhfscale, m) {
  m.def("seq_attention(Tensor q, Tensor k1, Tensor v1, Tensor idx, Tensor k2, Tensor v2, Tensor mask, float scale) "
        "-> (Tensor, Tensor)");
  m.def("seq_attention_backward(Tensor dout, Tensor q, Tensor k1, Tensor v1, Tensor idx, Tensor k2, Tensor v2, "
        "Tensor mask, Tensor lse, float scale) -> Tensor[]");
}

TORCH_LIBRARY_IMPL(rlhfscale, CPU, m) {
  m.impl("seq_attention", &forward);
  m.impl("seq_attention_backward", &backward);
}
