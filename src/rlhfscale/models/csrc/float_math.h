// Float helpers shared by the extension's kernels: a rounding to a tensor dtype, RoPE of one head, and an exp for
// their softmaxes.
#pragma once

#include <c10/util/BFloat16.h>

#include <cstdint>
#include <type_traits>

namespace rlhfscale {

// x as the dtype T. For bfloat16, c10's rounding (to nearest, ties to even; NaN a quiet NaN) in integer arithmetic
// without a branch, so that a loop of them vectorizes (c10's conversion stays scalar): the same bits.
template <typename T>
inline T to_dtype(float x) {
  if constexpr (std::is_same_v<T, c10::BFloat16>) {
    uint32_t bits;
    __builtin_memcpy(&bits, &x, sizeof bits);
    const uint16_t nearest = static_cast<uint16_t>((bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16);
    return c10::BFloat16(x != x ? uint16_t{0x7FC0} : nearest, c10::BFloat16::from_bits());
  } else {
    return static_cast<T>(x);
  }
}

// x rounded to the dtype T and back to float: where an eager op on T-typed tensors would round.
template <typename T>
inline float rounded(float x) { return static_cast<float>(to_dtype<T>(x)); }

#pragma GCC push_options
#pragma GCC optimize("fp-contract=off")  // x cos rounds before the sum; the sum is one fma, as eager addcmul's
// out [D] = RoPE of one head x [D] at the angles c, s [D] (s signed as in `llama.Rope`), rounded where the eager ops
// on an O-typed result round: round(round(x cos) + roll(x, D/2) sin). Out is O, or float holding O's values.
template <typename O, typename X, typename C, typename Out>
inline void rope_head(const X* x, const C* c, const C* s, int64_t D, Out* out) {
  const auto put = [](float v) {
    if constexpr (std::is_same_v<Out, float>) return rounded<O>(v);
    else return to_dtype<O>(v);
  };
  const int64_t half = D / 2;
#pragma omp simd
  for (int64_t j = 0; j < half; ++j) {  // first half: its partner is x[j + D/2]
    const float a = rounded<O>(static_cast<float>(x[j]) * static_cast<float>(c[j]));
    out[j] = put(__builtin_fmaf(static_cast<float>(x[j + half]), static_cast<float>(s[j]), a));
  }
#pragma omp simd
  for (int64_t j = half; j < D; ++j) {  // second half: x[j - D/2]
    const float a = rounded<O>(static_cast<float>(x[j]) * static_cast<float>(c[j]));
    out[j] = put(__builtin_fmaf(static_cast<float>(x[j - half]), static_cast<float>(s[j]), a));
  }
}
#pragma GCC pop_options

// e^r for r = x - n ln2, |r| <= ln2 / 2 (n the nearest integer to x / ln2): Cephes' expf polynomial of degree 6, for
// a float or a GCC vector of floats (`Vec` below), ln2 split in two so r keeps its low bits.
template <typename F>
inline F exp_reduced(F x, F n) {
  const F r = x - n * 0.693359375f + n * 2.12194440e-4f;
  F p = r * 1.9875691500e-4f + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  return p * r * r + r + 1.f;
}

// exp(x) for x <= 0, as every softmax argument x - max is (`exp_reduced` scaled by 2^n); about 1 ulp, and exactly
// 0 below -87.3 (masked columns: -inf). Written to vectorize.
inline float exp_nonpositive(float x) {
  const float n = __builtin_floorf(x * 1.44269504088896341f + 0.5f);
  const float p = exp_reduced(x, n);
  const int32_t bits = (static_cast<int32_t>(x < -87.3f ? 0.f : n) + 127) << 23;
  return x < -87.3f ? 0.f : p * __builtin_bit_cast(float, bits);
}

// A GCC vector of 16 floats (one AVX-512 register, or two AVX2 ones), its loads and stores from unaligned memory,
// and exp_nonpositive on every lane.
constexpr int64_t kLanes = 16;
using Vec = float __attribute__((vector_size(kLanes * sizeof(float))));
using Ints = int32_t __attribute__((vector_size(kLanes * sizeof(int32_t))));
using Bits = uint32_t __attribute__((vector_size(kLanes * sizeof(uint32_t))));
using Halves = uint16_t __attribute__((vector_size(kLanes * sizeof(uint16_t))));

inline Vec load(const float* p) {
  Vec v;
  __builtin_memcpy(&v, p, sizeof v);
  return v;
}

inline void store(float* p, Vec v) { __builtin_memcpy(p, &v, sizeof v); }

// The bfloat16 bits of every lane of x, to nearest, ties to even, NaN a quiet NaN (`to_dtype`'s, in the high half).
inline Bits bfloat16_bits(Vec x) {
  Bits bits;
  __builtin_memcpy(&bits, &x, sizeof bits);
  const Bits nearest = (bits + 0x7FFFu + ((bits >> 16) & 1u)) & 0xFFFF0000u;
  return x != x ? Bits{} + 0x7FC00000u : nearest;
}

// `rounded` in every lane: x rounded to the dtype T and back to float.
template <typename T>
inline Vec rounded(Vec x) {
  if constexpr (std::is_same_v<T, c10::BFloat16>) {
    const Bits bits = bfloat16_bits(x);
    __builtin_memcpy(&x, &bits, sizeof x);
  } else {
    for (int64_t i = 0; i < kLanes; ++i) x[i] = rounded<T>(x[i]);
  }
  return x;
}

// The first n (<= kLanes) values of p as floats; the other lanes 0.
template <typename T>
inline Vec load_as_float(const T* p, int64_t n) {
  if constexpr (std::is_same_v<T, float>) {
    if (n == kLanes) return load(p);
  }
  if constexpr (std::is_same_v<T, c10::BFloat16>) {
    if (n == kLanes) {
      Halves h;
      __builtin_memcpy(&h, p, sizeof h);
      const Bits bits = __builtin_convertvector(h, Bits) << 16;
      Vec x;
      __builtin_memcpy(&x, &bits, sizeof x);
      return x;
    }
  }
  Vec x{};
  for (int64_t i = 0; i < n; ++i) x[i] = static_cast<float>(p[i]);
  return x;
}

// x[0, n) stored as T (`to_dtype`), n <= kLanes.
template <typename T>
inline void store_as(T* p, Vec x, int64_t n) {
  if constexpr (std::is_same_v<T, float>) {
    if (n == kLanes) return store(p, x);
  }
  if constexpr (std::is_same_v<T, c10::BFloat16>) {
    if (n == kLanes) {
      const Halves h = __builtin_convertvector(bfloat16_bits(x) >> 16, Halves);
      __builtin_memcpy(static_cast<void*>(p), &h, sizeof h);
      return;
    }
  }
  for (int64_t i = 0; i < n; ++i) p[i] = to_dtype<T>(x[i]);
}

// exp(x) for x <= 0 in every lane (exp_reduced scaled by 2^n, as the scalar exp_nonpositive; the same bits);
// exactly 0 below -87.3, -inf included.
inline Vec exp_nonpositive(Vec x) {
  const Ints tiny = x < -87.3f;
  x = x < -87.3f ? Vec{} - 87.3f : x;
  constexpr float kRound = 12582912.f;  // 1.5 · 2^23: adding and taking it away rounds to the nearest integer
  const Vec n = (x * 1.44269504088896341f + kRound) - kRound;
  Vec p = exp_reduced(x, n);
  const Ints bits = (__builtin_convertvector(n, Ints) + 127) << 23;
  Vec scale;
  __builtin_memcpy(&scale, &bits, sizeof scale);
  const Ints out = reinterpret_cast<const Ints&>(p *= scale) & ~tiny;
  return reinterpret_cast<const Vec&>(out);
}

}  // namespace rlhfscale
