// The attention over a KV cache on a CPU, fused. A decoding step: it stores the new token's key and value in column
// t - 1 of the cache, and each query row reads only the t columns written so far. The prompts' prefill
// (`prefill_attention`): every prompt token stored in its column, then read as a decoding step at that column.
// `decode_attention_rope` is the decoding step on q and k before RoPE, which it applies as it reads them (the
// sampler's prepared step, `models.decode_plan`).
//
// For query head h of row b (key/value head g = h / (H / Hkv)), with keys stored transposed in tiles of kTile
// columns, [C / kTile, D, kTile] (kt_dc: element d of column c):
//
//   s_c = round(round(sum_d q_d kt_dc) * scale) + mask_c      for c < t   (round: to the cache dtype)
//   p_c = round(exp(s_c - max s) / sum_c' exp(s_c' - max s))
//   out = round(sum_c p_c v_c)
//
// Sums and products are float. The roundings sit where the eager step (`models.decode_attention.eager`: batched
// matmul, scale, mask, float softmax cast back, batched matmul, each in the cache dtype) rounds, so a bfloat16
// cache gets the eager numerics and a float32 cache the same math in another summation order. Both products run
// along a contiguous row (a tile's columns, v's features), so they vectorize without horizontal sums. The tiles
// keep the t columns read dense: with keys [D, C] a step read D rows of t columns at a stride of C, and a float32
// `micro` step whose cache is not in the CPU's caches took 1.8-2.5x the time of one on a cache of C = t.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <initializer_list>
#include <limits>
#include <vector>

#include "float_math.h"

namespace {

using rlhfscale::Ints;
using rlhfscale::kLanes;
using rlhfscale::load;
using rlhfscale::load_as_float;
using rlhfscale::rope_head;
using rlhfscale::rounded;
using rlhfscale::store;
using rlhfscale::store_as;
using rlhfscale::to_dtype;
using rlhfscale::Vec;

constexpr int64_t kTile = 16;  // key columns per tile, kept in one register while the head dimension is summed
constexpr int64_t kGroup = 4;  // tiles summed side by side: independent chains of fused multiply-adds

// s[c] = sum_d q[d] kt[d][c] for the columns of the kNb tiles from `tile` on (of one head's keys, tiles
// [C / kTile, D, kTile]), summed side by side so that each multiply-add does not wait for the one before it. The
// columns of a tile past t are computed and dropped.
template <typename T, int64_t kD, int64_t kNb>
inline void score_tiles(const float* q, const T* kt, int64_t D, int64_t t, int64_t tile, float* s) {
  const int64_t dims = kD ? kD : D;
  const T* first = kt + tile * dims * kTile;
  float acc[kNb][kTile] = {}, odd[kNb][kTile] = {};  // even and odd d apart: twice the independent chains
  int64_t d = 0;
  for (; d + 1 < dims; d += 2) {
    for (int64_t b = 0; b < kNb; ++b) {
      const T* row = first + (b * dims + d) * kTile;
#pragma omp simd
      for (int64_t j = 0; j < kTile; ++j) {
        acc[b][j] += q[d] * static_cast<float>(row[j]);
        odd[b][j] += q[d + 1] * static_cast<float>(row[kTile + j]);
      }
    }
  }
  for (; d < dims; ++d) {
    for (int64_t b = 0; b < kNb; ++b) {
      const T* row = first + (b * dims + d) * kTile;
#pragma omp simd
      for (int64_t j = 0; j < kTile; ++j) acc[b][j] += q[d] * static_cast<float>(row[j]);
    }
  }
  for (int64_t b = 0; b < kNb; ++b) {
    const int64_t c0 = (tile + b) * kTile;
    for (int64_t c = c0; c < std::min(c0 + kTile, t); ++c) s[c] = acc[b][c - c0] + odd[b][c - c0];
  }
}

// s[c] = sum_d q[d] kt[d][c] for c < t: the tiles holding those columns, kGroup at a time.
template <typename T, int64_t kD>
inline void scores_of(const float* q, const T* kt, int64_t D, int64_t t, float* s) {
  const int64_t tiles = (t + kTile - 1) / kTile;
  for (int64_t tile = 0; tile < tiles; tile += kGroup) {
    switch (std::min(kGroup, tiles - tile)) {
      case 1: score_tiles<T, kD, 1>(q, kt, D, t, tile, s); break;
      case 2: score_tiles<T, kD, 2>(q, kt, D, t, tile, s); break;
      case 3: score_tiles<T, kD, 3>(q, kt, D, t, tile, s); break;
      default: score_tiles<T, kD, kGroup>(q, kt, D, t, tile, s);
    }
  }
}

// Where column c's key element d sits in one head's key tiles [C / kTile, D, kTile].
inline int64_t key_at(int64_t c, int64_t d, int64_t D) { return (c / kTile * D + d) * kTile + c % kTile; }

// o[d] = sum_c p[c] v[c][d] for c < t, for any head size D: one chain.
template <typename T>
inline void weighted_values_any(const float* p, const T* v, int64_t D, int64_t t, float* o) {
  std::fill(o, o + D, 0.f);
  for (int64_t c = 0; c < t; ++c) {
    const T* row = v + c * D;
#pragma omp simd
    for (int64_t d = 0; d < D; ++d) o[d] += p[c] * static_cast<float>(row[d]);
  }
}

// The same for a head size kD known at compile time: even and odd columns summed apart (two independent chains
// held in registers), then added.
template <typename T, int64_t kD>
inline void weighted_values(const float* p, const T* v, int64_t t, float* o) {
  float even[kD] = {}, odd[kD] = {};
  int64_t c = 0;
  for (; c + 1 < t; c += 2) {
    const T* r0 = v + c * kD;
    const T* r1 = r0 + kD;
#pragma omp simd
    for (int64_t d = 0; d < kD; ++d) {
      even[d] += p[c] * static_cast<float>(r0[d]);
      odd[d] += p[c + 1] * static_cast<float>(r1[d]);
    }
  }
  if (c < t) {
#pragma omp simd
    for (int64_t d = 0; d < kD; ++d) even[d] += p[c] * static_cast<float>(v[c * kD + d]);
  }
  for (int64_t d = 0; d < kD; ++d) o[d] = even[d] + odd[d];
}

// One layer's step: the new token's keys and values, the cache they go into, the queries that read it. (For a
// prefill, q, k_new, v_new and out hold the N prompt tokens in place of the B rows, and t is unused.)
template <typename T>
struct Step {
  const T* q;      // [B, H, D], row stride `q_row`
  const T* k_new;  // [B, Hkv, D], row stride `k_row`
  const T* v_new;  // [B, Hkv, D], row stride `v_row`
  T* kt;           // [B, Hkv, C / kTile, D, kTile], row stride `cache_row`
  T* v;            // [B, Hkv, C, D], row stride `cache_row`
  const T* mask;   // [B, C], row stride `mask_row`
  T* out;          // [B, H, D]
  int64_t B, H, Hkv, C, D, t, cache_row, mask_row, q_row, k_row, v_row;
  float scale;
  // Where set (a decoding step only): q and k_new come before RoPE, which the step applies at row b's position
  // pos[b], from the tables cos, sin [positions, D] (`llama.Rope`).
  const T* cos = nullptr;
  const T* sin = nullptr;
  const int64_t* pos = nullptr;
};

// Head x [D] of row b as floats into out: after RoPE where the step applies it.
template <typename T>
inline void load_head(const Step<T>& a, int64_t b, const T* x, int64_t D, float* out) {
  if (a.cos != nullptr) return rope_head<T>(x, a.cos + a.pos[b] * D, a.sin + a.pos[b] * D, D, out);  // `row_ops`' bits
  for (int64_t d = 0; d < D; ++d) out[d] = static_cast<float>(x[d]);
}

// Floats of scratch for the scores of t columns: t rounded up to whole vectors.
inline int64_t score_room(int64_t t) { return (t + kLanes - 1) / kLanes * kLanes; }

// One query q (float [D]) over the first t columns of one key/value head, key tiles kt [C / kTile, D, kTile] and
// v [C, D], mask [C]: the scores, their softmax, the weighted sum of values into out [D]. s (score_room(t) floats)
// and o ([D]) are scratch.
template <typename T, int64_t kD>
void attend_one(const float* q, const T* kt, const T* v, const T* m, int64_t D, int64_t t, float scale, float* s,
                float* o, T* out) {
  const int64_t dims = kD ? kD : D;
  scores_of<T, kD>(q, kt, dims, t, s);
  // s = round(round(round(s) * scale) + mask), 16 columns at a time; the lanes past t get -inf (weight 0)
  constexpr float kNegInf = -std::numeric_limits<float>::infinity();
  const Ints lane = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
  Vec tops = Vec{} + kNegInf;
  for (int64_t c = 0; c < t; c += kLanes) {
    const int64_t n = std::min(kLanes, t - c);
    Vec x = rounded<T>(rounded<T>(rounded<T>(load(s + c)) * scale) + load_as_float(m + c, n));
    x = lane < static_cast<int32_t>(n) ? x : Vec{} + kNegInf;
    store(s + c, x);
    tops = x > tops ? x : tops;
  }
  float top = kNegInf;
  for (int64_t i = 0; i < kLanes; ++i) top = std::max(top, tops[i]);
  Vec sum{};
  for (int64_t c = 0; c < t; c += kLanes) {
    const Vec w = rlhfscale::exp_nonpositive(load(s + c) - top);
    store(s + c, w);
    sum += w;
  }
  float total = 0.f;
  for (int64_t i = 0; i < kLanes; ++i) total += sum[i];
  const float inv = 1.f / total;
  for (int64_t c = 0; c < t; c += kLanes) store(s + c, rounded<T>(load(s + c) * inv));  // p_c
  if constexpr (kD > 0) {
    weighted_values<T, kD>(s, v, t, o);
  } else {
    weighted_values_any<T>(s, v, dims, t, o);
  }
  for (int64_t d = 0; d < dims; d += kLanes) {
    const int64_t n = std::min(kLanes, dims - d);
    store_as(out + d, n == kLanes ? load(o + d) : load_as_float(o + d, n), n);
  }
}

// Query head h of row b over the t columns written so far.
template <typename T, int64_t kD>
void attend_head(const Step<T>& a, int64_t b, int64_t g, int64_t h, float* s, float* qf, float* o) {
  const int64_t dims = kD ? kD : a.D, i = b * a.H + h;
  load_head<T>(a, b, a.q + b * a.q_row + h * dims, dims, qf);
  attend_one<T, kD>(qf, a.kt + b * a.cache_row + g * dims * a.C, a.v + b * a.cache_row + g * a.C * dims,
                    a.mask + b * a.mask_row, dims, a.t, a.scale, s, o, a.out + i * dims);
}

// Per key/value head g of row b: store the new token in column t - 1, then attend each query head that reads g.
// Writing just before reading keeps the strided key column's cache lines for the read.
template <typename T, int64_t kD>
void step(const Step<T>& a) {
  const int64_t group = a.H / a.Hkv, dims = kD ? kD : a.D, col = a.t - 1;
  at::parallel_for(0, a.B * a.Hkv, 4, [&](int64_t begin, int64_t end) {
    std::vector<float> s(score_room(a.t)), qf(dims), o(dims), kf(dims);
    for (int64_t j = begin; j < end; ++j) {
      const int64_t b = j / a.Hkv, g = j % a.Hkv;
      T* kt_head = a.kt + b * a.cache_row + g * dims * a.C;
      T* v_head = a.v + b * a.cache_row + g * a.C * dims;
      load_head<T>(a, b, a.k_new + b * a.k_row + g * dims, dims, kf.data());
      for (int64_t d = 0; d < dims; ++d) {
        kt_head[key_at(col, d, dims)] = to_dtype<T>(kf[d]);  // a value of T already: the same bits
        v_head[col * dims + d] = a.v_new[b * a.v_row + g * dims + d];
      }
      for (int64_t h = g * group; h < (g + 1) * group; ++h) {
        attend_head<T, kD>(a, b, g, h, s.data(), qf.data(), o.data());
      }
    }
  });
}

// The head sizes of common models get a loop of known length, unrolled into registers.
template <typename T>
void step_of(const Step<T>& a) {
  switch (a.D) {
    case 32: return step<T, 32>(a);
    case 64: return step<T, 64>(a);
    case 128: return step<T, 128>(a);
    default: return step<T, 0>(a);
  }
}

// Whether the strides of x's last dimensions are `strides`, those of dimensions of size 1 aside (they never step).
bool strides_are(const at::Tensor& x, std::initializer_list<int64_t> strides) {
  int64_t dim = x.dim() - static_cast<int64_t>(strides.size());
  for (const int64_t stride : strides) {
    if (x.size(dim) != 1 && x.stride(dim) != stride) return false;
    ++dim;
  }
  return true;
}

// The columns C of a cache layer's keys kt [B, Hkv, C / kTile, D, kTile] and values v_cache [B, Hkv, C, D], both
// with their heads packed in a row and rows at the same stride; `op` names the caller in the message.
int64_t cache_columns(const at::Tensor& kt, const at::Tensor& v_cache, int64_t D, const char* op) {
  TORCH_CHECK(kt.dim() == 5 && kt.size(4) == kTile && kt.size(3) == D && v_cache.dim() == 4, op, ": expected keys "
              "[B, Hkv, C / ", kTile, ", D, ", kTile, "] and values [B, Hkv, C, D]");
  const int64_t B = kt.size(0), Hkv = kt.size(1), C = kt.size(2) * kTile;
  TORCH_CHECK(v_cache.sizes() == at::IntArrayRef({B, Hkv, C, D}), op, ": keys and values do not match");
  TORCH_CHECK(strides_are(kt, {C * D, D * kTile, kTile, 1}) && strides_are(v_cache, {C * D, D, 1}) &&
              (B == 1 || v_cache.stride(0) == kt.stride(0)), op, ": expected contiguous heads");
  return C;
}

// q [B, H, D]; k, v [B, Hkv, D]: the new token's (rows possibly strided, as slices of one product's output), stored
// in column t - 1 of the cache layer kt [B, Hkv, C / kTile, D, kTile], v_cache [B, Hkv, C, D] (rows possibly
// strided); mask [B, C] additive (0 or -inf). Returns [B, H * D].
at::Tensor decode_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& kt,
                            const at::Tensor& v_cache, const at::Tensor& mask, int64_t t, double scale) {
  TORCH_CHECK(q.dim() == 3 && mask.dim() == 2, "decode_attention: expected q [B, H, D], mask [B, C]");
  const int64_t B = q.size(0), H = q.size(1), D = q.size(2), Hkv = kt.size(1);
  const int64_t C = cache_columns(kt, v_cache, D, "decode_attention");
  TORCH_CHECK(kt.size(0) == B && k.sizes() == at::IntArrayRef({B, Hkv, D}) && v.sizes() == k.sizes() &&
              mask.size(0) == B && mask.size(1) >= t && 0 < t && t <= C && H % Hkv == 0,
              "decode_attention: sizes do not match");
  // k and v: a row's heads side by side (the rows themselves may be strided)
  TORCH_CHECK(q.is_contiguous() && strides_are(k, {D, 1}) && strides_are(v, {D, 1}) && mask.stride(1) == 1,
              "decode_attention: expected contiguous heads");
  for (const auto* x : {&k, &v, &kt, &v_cache, &mask})
    TORCH_CHECK(x->scalar_type() == q.scalar_type(), "decode_attention: expected one dtype");
  auto out = at::empty({B, H * D}, q.options());
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, q.scalar_type(), "decode_attention", [&] {
    using T = scalar_t;
    step_of<T>({q.const_data_ptr<T>(), k.const_data_ptr<T>(), v.const_data_ptr<T>(), kt.mutable_data_ptr<T>(),
                v_cache.mutable_data_ptr<T>(), mask.const_data_ptr<T>(), out.mutable_data_ptr<T>(), B, H, Hkv, C, D,
                t, kt.stride(0), mask.stride(0), H * D, k.stride(0), v.stride(0), static_cast<float>(scale)});
  });
  return out;
}

// The decoding step of one layer straight from its q, k, v product: qkv [B, (H + 2 Hkv) D] (rows possibly strided)
// holds each row's query heads, then its key heads, then its value heads, q and k before RoPE; the step applies
// RoPE at row b's position positions[b] (int64 [B]) from the tables cos, sin [P, D] of the cache dtype
// (`llama.Rope`), then runs as `decode_attention`. Returns [B, H * D].
at::Tensor decode_attention_rope(const at::Tensor& qkv, int64_t H, const at::Tensor& cos, const at::Tensor& sin,
                                 const at::Tensor& positions, const at::Tensor& kt, const at::Tensor& v_cache,
                                 const at::Tensor& mask, int64_t t, double scale) {
  TORCH_CHECK(qkv.dim() == 2 && qkv.stride(1) == 1 && mask.dim() == 2 && cos.dim() == 2,
              "decode_attention_rope: expected qkv [B, (H + 2 Hkv) D] with contiguous rows, cos [P, D], mask [B, C]");
  const int64_t B = qkv.size(0), Hkv = kt.size(1), D = kt.size(3);
  const int64_t C = cache_columns(kt, v_cache, D, "decode_attention_rope");
  TORCH_CHECK(H > 0 && H % Hkv == 0 && D % 2 == 0 && qkv.size(1) == (H + 2 * Hkv) * D && kt.size(0) == B &&
              mask.size(0) == B && mask.size(1) >= t && 0 < t && t <= C && cos.size(1) == D &&
              sin.sizes() == cos.sizes() && positions.sizes() == at::IntArrayRef({B}),
              "decode_attention_rope: sizes do not match");
  TORCH_CHECK(cos.is_contiguous() && sin.is_contiguous() && positions.is_contiguous() && mask.stride(1) == 1 &&
              positions.scalar_type() == at::kLong, "decode_attention_rope: expected contiguous tables, int64 "
              "positions");
  for (const auto* x : {&cos, &sin, &kt, &v_cache, &mask})
    TORCH_CHECK(x->scalar_type() == qkv.scalar_type(), "decode_attention_rope: expected one dtype");
  const int64_t* pos = positions.const_data_ptr<int64_t>();
  for (int64_t b = 0; b < B; ++b)
    TORCH_CHECK(0 <= pos[b] && pos[b] < cos.size(0), "decode_attention_rope: row ", b, " at position ", pos[b],
                ", outside the tables' ", cos.size(0));
  auto out = at::empty({B, H * D}, qkv.options());
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, qkv.scalar_type(), "decode_attention_rope", [&] {
    using T = scalar_t;
    const T* q = qkv.const_data_ptr<T>();
    const int64_t row = qkv.stride(0);
    step_of<T>({q, q + H * D, q + (H + Hkv) * D, kt.mutable_data_ptr<T>(), v_cache.mutable_data_ptr<T>(),
                mask.const_data_ptr<T>(), out.mutable_data_ptr<T>(), B, H, Hkv, C, D, t, kt.stride(0),
                mask.stride(0), row, row, row, static_cast<float>(scale), cos.const_data_ptr<T>(),
                sin.const_data_ptr<T>(), pos});
  });
  return out;
}

// The prompts' attention (`kv_cache.prefill`), fused: N prompt tokens, token i in column cols[i] of cache row rows[i],
// sorted by row, then column; starts[j] is the first token of the j-th row. Per key/value head of a row: store every
// token's key and value in its column, then attend each token to the columns up to its own, the prompt's pads among
// them masked: a decoding step's math (`attend_one`) with t = cols[i] + 1, the keys read from the cache.
template <typename T, int64_t kD>
void prefill(const Step<T>& a, const int64_t* rows, const int64_t* cols, const std::vector<int64_t>& starts) {
  const int64_t group = a.H / a.Hkv, dims = kD ? kD : a.D, segments = static_cast<int64_t>(starts.size()) - 1;
  at::parallel_for(0, segments * a.Hkv, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> s(score_room(a.C)), qf(dims), o(dims);
    for (int64_t j = begin; j < end; ++j) {
      const int64_t first = starts[j / a.Hkv], last = starts[j / a.Hkv + 1], g = j % a.Hkv, b = rows[first];
      T* kt_head = a.kt + b * a.cache_row + g * dims * a.C;
      T* v_head = a.v + b * a.cache_row + g * a.C * dims;
      for (int64_t i = first; i < last; ++i) {
        for (int64_t d = 0; d < dims; ++d) {
          kt_head[key_at(cols[i], d, dims)] = a.k_new[(i * a.Hkv + g) * dims + d];
          v_head[cols[i] * dims + d] = a.v_new[(i * a.Hkv + g) * dims + d];
        }
      }
      for (int64_t i = first; i < last; ++i) {
        for (int64_t h = g * group; h < (g + 1) * group; ++h) {
          const int64_t at = (i * a.H + h) * dims;
          for (int64_t d = 0; d < dims; ++d) qf[d] = static_cast<float>(a.q[at + d]);
          attend_one<T, kD>(qf.data(), kt_head, v_head, a.mask + b * a.mask_row, dims, cols[i] + 1, a.scale, s.data(),
                            o.data(), a.out + at);
        }
      }
    }
  });
}

// The first token of each row's run in rows [N] (then N), checking that tokens come sorted by row, then column.
std::vector<int64_t> row_starts(const int64_t* rows, const int64_t* cols, int64_t N, int64_t B, int64_t C) {
  std::vector<int64_t> starts;
  for (int64_t i = 0; i < N; ++i) {
    TORCH_CHECK(0 <= rows[i] && rows[i] < B && 0 <= cols[i] && cols[i] < C, "prefill_attention: token ", i,
                " at row ", rows[i], ", column ", cols[i], ": outside the cache [", B, ", ", C, "]");
    const bool new_row = i == 0 || rows[i] != rows[i - 1];
    TORCH_CHECK(new_row ? i == 0 || rows[i] > rows[i - 1] : cols[i] > cols[i - 1], "prefill_attention: expected "
                "tokens sorted by row, then column; token ", i, " is not");
    if (new_row) starts.push_back(i);
  }
  starts.push_back(N);
  return starts;
}

// q [N, H, D]; k, v [N, Hkv, D] of the prompt tokens, stored in their cache columns (rows, cols [N], int64) of the
// cache layer kt [B, Hkv, C / kTile, D, kTile], v_cache [B, Hkv, C, D]; mask [B, C] additive. Returns [N, H * D].
at::Tensor prefill_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& kt,
                             const at::Tensor& v_cache, const at::Tensor& mask, const at::Tensor& rows,
                             const at::Tensor& cols, double scale) {
  TORCH_CHECK(q.dim() == 3 && k.dim() == 3 && mask.dim() == 2, "prefill_attention: expected q [N, H, D], "
              "k [N, Hkv, D], mask [B, C]");
  const int64_t N = q.size(0), H = q.size(1), D = q.size(2), B = kt.size(0), Hkv = kt.size(1);
  const int64_t C = cache_columns(kt, v_cache, D, "prefill_attention");
  TORCH_CHECK(k.sizes() == at::IntArrayRef({N, Hkv, D}) && v.sizes() == k.sizes() && mask.size(0) == B &&
              mask.size(1) >= C && H % Hkv == 0 && rows.numel() == N && cols.numel() == N,
              "prefill_attention: sizes do not match");
  TORCH_CHECK(q.is_contiguous() && k.is_contiguous() && v.is_contiguous() && mask.stride(1) == 1 &&
              rows.is_contiguous() && cols.is_contiguous(), "prefill_attention: expected contiguous heads");
  TORCH_CHECK(rows.scalar_type() == at::kLong && cols.scalar_type() == at::kLong, "prefill_attention: expected "
              "int64 rows and cols");
  for (const auto* x : {&k, &v, &kt, &v_cache, &mask})
    TORCH_CHECK(x->scalar_type() == q.scalar_type(), "prefill_attention: expected one dtype");
  const auto starts = row_starts(rows.const_data_ptr<int64_t>(), cols.const_data_ptr<int64_t>(), N, B, C);
  auto out = at::empty({N, H * D}, q.options());
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, q.scalar_type(), "prefill_attention", [&] {
    using T = scalar_t;
    const Step<T> a{q.const_data_ptr<T>(), k.const_data_ptr<T>(), v.const_data_ptr<T>(), kt.mutable_data_ptr<T>(),
                    v_cache.mutable_data_ptr<T>(), mask.const_data_ptr<T>(), out.mutable_data_ptr<T>(), N, H, Hkv, C,
                    D, 0, kt.stride(0), mask.stride(0), H * D, Hkv * D, Hkv * D, static_cast<float>(scale)};
    const int64_t* r = rows.const_data_ptr<int64_t>();
    const int64_t* c = cols.const_data_ptr<int64_t>();
    switch (D) {
      case 32: return prefill<T, 32>(a, r, c, starts);
      case 64: return prefill<T, 64>(a, r, c, starts);
      case 128: return prefill<T, 128>(a, r, c, starts);
      default: return prefill<T, 0>(a, r, c, starts);
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY(rlhfscale, m) {
  m.def("decode_attention(Tensor q, Tensor k, Tensor v, Tensor(a!) kt, Tensor(b!) v_cache, Tensor mask, int t, "
        "float scale) -> Tensor");
  m.def("decode_attention_rope(Tensor qkv, int heads, Tensor cos, Tensor sin, Tensor positions, Tensor(a!) kt, "
        "Tensor(b!) v_cache, Tensor mask, int t, float scale) -> Tensor");
  m.def("prefill_attention(Tensor q, Tensor k, Tensor v, Tensor(a!) kt, Tensor(b!) v_cache, Tensor mask, "
        "Tensor rows, Tensor cols, float scale) -> Tensor");
}

TORCH_LIBRARY_IMPL(rlhfscale, CPU, m) {
  m.impl("decode_attention", &decode_attention);
  m.impl("decode_attention_rope", &decode_attention_rope);
  m.impl("prefill_attention", &prefill_attention);
}
