// Float helpers shared by the extension's kernels: a rounding to a tensor dtype, and an exp for their softmaxes.
#pragma once

#include <cstdint>

namespace rlhfscale {

// x rounded to the dtype T and back to float: where an eager op on T-typed tensors would round.
template <typename T>
inline float rounded(float x) { return static_cast<float>(static_cast<T>(x)); }

// exp(x) for x <= 0, as every softmax argument x - max is (Cephes' expf: x = n ln2 + r, |r| <= ln2 / 2, a degree-6
// polynomial in r, scaled by 2^n); about 1 ulp, and exactly 0 below -87.3 (masked columns: -inf).
// Written to vectorize.
inline float exp_nonpositive(float x) {
  const float n = __builtin_floorf(x * 1.44269504088896341f + 0.5f);
  const float r = x - n * 0.693359375f + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.f;
  const int32_t bits = (static_cast<int32_t>(x < -87.3f ? 0.f : n) + 127) << 23;
  return x < -87.3f ? 0.f : p * __builtin_bit_cast(float, bits);
}

}  // namespace rlhfscale
