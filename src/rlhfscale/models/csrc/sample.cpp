// The sampler's draw of the next token of each row from softmax(logits / temperature), without truncation, in one
// pass over each row of logits on a CPU.
//
// Inverse-CDF sampling: with u uniform in [0, 1) and w_i = exp((l_i - m) / T), m the row's largest logit, the
// token is the first i whose running sum w_0 + ... + w_i exceeds u * sum_j w_j, so token i comes with probability
// w_i / sum_j w_j. One uniform a row, where Gumbel-max (the eager path, `rollout.sampler.next_tokens`) draws one for
// every vocabulary entry and takes two logs of each. A token of weight 0 is never drawn. Its log-prob is
// (l_i - m) / T - log(sum_j w_j), the log-softmax, in float.
// Each pass over a row goes 16 entries at a time (`micro`'s 256 rows of 106 logits: 23 µs a call, where one entry at a
// time took 76).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <tuple>
#include <vector>

#include "float_math.h"

namespace {

constexpr int64_t kRowsPerTask = 8;

// Row b of logits [B, V] (row stride `row`), uniform u[b] -> token[b], logprob[b]; w: scratch of V floats rounded up
// to whole vectors. The max, the weights and their sum run kLanes entries at a time; the running sum then adds whole
// vectors' sums until it would pass u * total, and goes entry by entry inside that vector only.
template <typename T>
void draw_row(const T* l, float u, float inv_t, int64_t V, float* w, int64_t* token, float* logprob) {
  using rlhfscale::kLanes;
  using rlhfscale::load;
  using rlhfscale::load_as_float;
  using rlhfscale::Vec;
  const rlhfscale::Ints lane = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
  Vec tops = Vec{} - INFINITY;
  for (int64_t i = 0; i < V; i += kLanes) {
    const int64_t n = std::min(kLanes, V - i);
    const Vec x = load_as_float(l + i, n);
    tops = lane < static_cast<int32_t>(n) && x > tops ? x : tops;
  }
  float top = -INFINITY;
  for (int64_t j = 0; j < kLanes; ++j) top = std::max(top, tops[j]);
  Vec sums{};
  for (int64_t i = 0; i < V; i += kLanes) {  // lanes past V: weight 0
    const int64_t n = std::min(kLanes, V - i);
    const Vec x = lane < static_cast<int32_t>(n) ? (load_as_float(l + i, n) - top) * inv_t : Vec{} - INFINITY;
    const Vec e = rlhfscale::exp_nonpositive(x);
    rlhfscale::store(w + i, e);
    sums += e;
  }
  float total = 0.f;
  for (int64_t j = 0; j < kLanes; ++j) total += sums[j];
  const float target = u * total;
  float running = 0.f;
  int64_t chosen = -1, last = 0;  // last: the last token of weight > 0, in case rounding leaves target at total
  for (int64_t i = 0; i < V && chosen < 0; i += kLanes) {
    const Vec e = load(w + i);
    float block = 0.f;
    for (int64_t j = 0; j < kLanes; ++j) block += e[j];
    if (running + block <= target && i + kLanes < V) {  // not in this vector (the last one is always searched)
      running += block;
      for (int64_t j = 0; j < kLanes; ++j) last = e[j] > 0.f ? i + j : last;
      continue;
    }
    for (int64_t j = 0; j < std::min(kLanes, V - i) && chosen < 0; ++j) {
      running += e[j];
      if (e[j] > 0.f) last = i + j;
      if (running > target) chosen = i + j;
    }
  }
  chosen = chosen < 0 ? last : chosen;
  *token = chosen;
  *logprob = (static_cast<float>(l[chosen]) - top) * inv_t - std::log(total);
}

// logits [B, V] (float or bfloat16, rows contiguous), u [B] (float, in [0, 1)) -> tokens [B] (int64) and their
// log-probs [B] (float) under softmax(logits * inv_temperature).
std::tuple<at::Tensor, at::Tensor> sample_next(const at::Tensor& logits, const at::Tensor& u, double inv_temperature) {
  TORCH_CHECK(logits.dim() == 2 && logits.stride(1) == 1 && logits.size(1) > 0 && u.dim() == 1 &&
              u.size(0) == logits.size(0) && u.is_contiguous() && u.scalar_type() == at::kFloat &&
              inv_temperature > 0, "sample_next: expected logits [B, V] with contiguous rows, float u [B], "
              "inv_temperature > 0");
  const int64_t B = logits.size(0), V = logits.size(1), row = logits.stride(0);
  auto tokens = at::empty({B}, logits.options().dtype(at::kLong));
  auto logprobs = at::empty({B}, logits.options().dtype(at::kFloat));
  int64_t* tok = tokens.mutable_data_ptr<int64_t>();
  float* lp = logprobs.mutable_data_ptr<float>();
  const float* us = u.const_data_ptr<float>();
  const float inv_t = static_cast<float>(inv_temperature);
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, logits.scalar_type(), "sample_next", [&] {
    const scalar_t* l = logits.const_data_ptr<scalar_t>();
    at::parallel_for(0, B, kRowsPerTask, [&](int64_t begin, int64_t end) {
      std::vector<float> w((V + rlhfscale::kLanes - 1) / rlhfscale::kLanes * rlhfscale::kLanes);
      for (int64_t b = begin; b < end; ++b) draw_row<scalar_t>(l + b * row, us[b], inv_t, V, w.data(), tok + b, lp + b);
    });
  });
  return {tokens, logprobs};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(rlhfscale, m) {
  m.def("sample_next(Tensor logits, Tensor u, float inv_temperature) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(rlhfscale, CPU, m) { m.impl("sample_next", &sample_next); }
