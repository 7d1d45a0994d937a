// The sampler's draw of the next token of each row from softmax(logits / temperature), without truncation, in one
// pass over each row of logits on a CPU.
//
// Inverse-CDF sampling: with u uniform in [0, 1) and w_i = exp((l_i - m) / T), m the row's largest logit, the
// token is the first i whose running sum w_0 + ... + w_i exceeds u * sum_j w_j, so token i comes with probability
// w_i / sum_j w_j. One uniform a row, where Gumbel-max (the eager path, `rollout.sampler.next_tokens`) draws one for
// every vocabulary entry and takes two logs of each. A token of weight 0 is never drawn. Its log-prob is
// (l_i - m) / T - log(sum_j w_j), the log-softmax, in float.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <cstdint>
#include <tuple>
#include <vector>

#include "float_math.h"

namespace {

constexpr int64_t kRowsPerTask = 8;

// Row b of logits [B, V] (row stride `row`), uniform u[b] -> token[b], logprob[b]; w: scratch of V floats.
template <typename T>
void draw_row(const T* l, float u, float inv_t, int64_t V, float* w, int64_t* token, float* logprob) {
  float top = -INFINITY;
  for (int64_t i = 0; i < V; ++i) top = std::max(top, static_cast<float>(l[i]));
  float total = 0.f;
  for (int64_t i = 0; i < V; ++i) {
    w[i] = rlhfscale::exp_nonpositive((static_cast<float>(l[i]) - top) * inv_t);
    total += w[i];
  }
  const float target = u * total;
  float running = 0.f;
  int64_t chosen = -1, last = 0;  // last: the last token of weight > 0, in case rounding leaves target at total
  for (int64_t i = 0; i < V && chosen < 0; ++i) {
    running += w[i];
    if (w[i] > 0.f) last = i;
    if (running > target) chosen = i;
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
      std::vector<float> w(V);
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
