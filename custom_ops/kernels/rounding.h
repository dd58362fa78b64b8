// Element-wise rounding of float32 values onto low-precision grids.
//
// Header-only, no TensorFlow includes (see number_formats.h).  Everything is
// integer arithmetic on float32 bit patterns: TensorFlow's worker threads run
// with flush-to-zero / denormals-are-zero set in MXCSR, so floating-point
// arithmetic would silently lose subnormals.
//
// The core operation rounds a finite magnitude onto the grid of spacing 2^k.
// A float format picks k per element (k = max(exponent(x), e_min) - mantissa
// bits); dynamic fixed point uses one k (the shared exponent) per block.
//
// Rounding decisions use the dropped part of the significand as a 0.32
// fixed-point fraction F of one grid step:
//   nearest_even  up iff F > 1/2, or F == 1/2 and the kept lsb is odd
//   toward_zero   never up
//   stochastic    up iff F + U >= 1, U = (random word with its low
//                 32 - random_bits bits cleared) / 2^32
// so stochastic rounding is exactly unbiased whenever the dropped field has
// at most `random_bits` bits, and otherwise rounds F down to a multiple of
// 2^-random_bits (bias below 2^-random_bits of a grid step).
#ifndef TF_LOWPREC_KERNELS_ROUNDING_H_
#define TF_LOWPREC_KERNELS_ROUNDING_H_

#include <cstdint>
#include <cstring>

#include "number_formats.h"

namespace tf_lowprec {

constexpr uint32_t kSignMask = 0x80000000u;
constexpr uint32_t kAbsMask = 0x7FFFFFFFu;
constexpr uint32_t kInfBits = 0x7F800000u;
constexpr uint32_t kQuietNanBits = 0x7FC00000u;

inline uint32_t FloatBits(float x) {
  uint32_t u;
  std::memcpy(&u, &x, sizeof(u));
  return u;
}
inline float BitsFloat(uint32_t u) {
  float x;
  std::memcpy(&x, &u, sizeof(x));
  return x;
}

// Exponent of the float32 ulp of a finite magnitude, plus 23: the unbiased
// exponent for normals, -126 for subnormals and zero.
inline int32_t Float32Exponent(uint32_t magnitude) {
  int32_t biased = static_cast<int32_t>(magnitude >> 23);
  return biased == 0 ? -126 : biased - 127;
}

inline int32_t ClampInt(int32_t v, int32_t lo, int32_t hi) {
  return v < lo ? lo : (v > hi ? hi : v);
}

// Rounds the finite float32 magnitude `a` onto the grid {n * 2^k}.
// `random_word` (stochastic rounding only) must already be masked to its
// top random_bits bits.  Requires -149 <= k <= 128 whenever `a` needs
// rounding, which holds for every valid float format and for DFP (see
// callers).
//
// Written without data-dependent branches (every shift count clamped to a
// defined range, both cases computed and selected) so that compilers
// vectorise the loops that call it; the kernels in rounding_loops.h rely on
// that.
template <Rounding kRounding>
inline uint32_t RoundMagnitudeToGrid(uint32_t a, int32_t k, uint32_t random_word) {
  const uint32_t biased = a >> 23;
  const int32_t exponent = biased == 0 ? -126 : static_cast<int32_t>(biased) - 127;
  // Number of significand bits below the grid step.
  const int32_t dropped = k - (exponent - 23);
  // Case 1 <= dropped <= 23: the dropped bits lie inside the mantissa field.
  // Clearing them rounds toward zero, and adding 2^dropped to the bit pattern
  // moves one grid step up, carrying into the exponent field when needed.
  const int32_t d = ClampInt(dropped, 1, 23);
  const uint32_t fraction_in = a << (32 - d);  // 0.32 fraction of a grid step
  const uint32_t kept_in = (a >> d) << d;
  const uint32_t step_in = uint32_t{1} << d;
  // Case dropped >= 24: the grid step exceeds a, the neighbours are 0 and 2^k.
  const uint32_t significand = (a & 0x7FFFFFu) | (biased != 0 ? 0x800000u : 0u);
  const uint32_t fraction_big = (significand << ClampInt(32 - dropped, 0, 8)) >>
                                ClampInt(dropped - 32, 0, 31);
  // k == 128 (DFP with bits == 2 and a block maximum above 2^127) gives the
  // bits of +Inf: one step of 2^128 overflows float32.
  const uint32_t step_big =
      k >= -126 ? static_cast<uint32_t>(ClampInt(k, -126, 128) + 127) << 23
                : uint32_t{1} << ClampInt(k + 149, 0, 31);
  const bool big = dropped > 23;
  const uint32_t fraction = big ? fraction_big : fraction_in;
  const uint32_t kept = big ? 0u : kept_in;
  const uint32_t step = big ? step_big : step_in;
  bool up;
  if (kRounding == Rounding::kNearestEven) {
    // Parity of the kept multiple of the grid step: bit d of the significand
    // (for d == 23 that is the implicit bit, not the exponent field's lsb).
    const bool odd = !big && ((significand >> d) & 1u) != 0;
    up = fraction > 0x80000000u || (fraction == 0x80000000u && odd);
  } else if (kRounding == Rounding::kStochastic) {
    up = static_cast<uint32_t>(random_word + fraction) < random_word;  // carry out
  } else {
    up = false;
  }
  const uint32_t rounded = kept + (up ? step : 0u);
  return dropped <= 0 ? a : rounded;
}

// Rounds one float32 value (as bits) to a float format.
template <Rounding kRounding>
inline uint32_t RoundToFloatFormat(uint32_t u, const FloatGrid& grid, uint32_t random_word) {
  const uint32_t sign = u & kSignMask;
  const uint32_t a0 = u & kAbsMask;
  const uint32_t a = (grid.flush_input_denormals && a0 < 0x00800000u) ? 0u : a0;
  const int32_t exponent = Float32Exponent(a);
  const int32_t k =
      (exponent > grid.min_exponent ? exponent : grid.min_exponent) - grid.mantissa_bits;
  uint32_t r = RoundMagnitudeToGrid<kRounding>(a, k, random_word);
  if (!grid.subnormals) r = r < grid.min_normal_bits ? 0u : r;  // flush after rounding
  // Overflow: toward_zero never rounds away from zero, so it saturates (IEEE).
  const bool saturate =
      kRounding == Rounding::kTowardZero || grid.overflow == Overflow::kSaturate;
  const uint32_t overflow_bits =
      saturate ? grid.max_bits
               : (grid.overflow == Overflow::kInfinity ? kInfBits : kQuietNanBits);
  // Inputs that are Inf in a format without infinities follow the overflow
  // mode too; a finite input never reaches here as Inf (r <= 0x7F800000).
  r = r > grid.max_bits ? overflow_bits : r;
  if (a == kInfBits) {
    r = grid.infinities ? kInfBits
                        : (grid.overflow == Overflow::kNan ? kQuietNanBits : grid.max_bits);
  }
  const uint32_t signed_r = (r == 0 && !grid.negative_zero) ? 0u : (sign | r);
  return a > kInfBits ? (sign | kQuietNanBits) : signed_r;  // NaN stays NaN, sign kept
}

// float32 bits of the largest multiple of 2^k that is at most FLT_MAX =
// (2^24 - 1) * 2^104: FLT_MAX itself for k <= 104, FLT_MAX with its low
// k - 104 significand bits cleared for 105 <= k <= 127, and 0 for k >= 128
// (the grid's next value, 2^128, is not a float32).
inline uint32_t DfpGridMaxBits(int32_t k) {
  constexpr uint32_t kMaxFiniteBits = 0x7F7FFFFFu;
  const int32_t cleared = ClampInt(k - 104, 0, 24);
  return cleared >= 24 ? 0u : (kMaxFiniteBits >> cleared) << cleared;
}

// Rounds one float32 value (as bits) onto a DFP block grid of spacing
// 2^shared_exponent.  Non-finite values pass through (NaN made quiet); the
// shared exponent guarantees the result's mantissa fits (number_formats.h).
// Saturation: a finite value never becomes Inf.  Where rounding would carry
// it past FLT_MAX (a block maximum near FLT_MAX, whose grid step exceeds
// float32's ulp there), the result is the largest grid value <= FLT_MAX,
// DfpGridMaxBits(shared_exponent), with the value's sign.
template <Rounding kRounding>
inline uint32_t RoundToDfpGrid(uint32_t u, int32_t shared_exponent, uint32_t random_word) {
  const uint32_t sign = u & kSignMask;
  const uint32_t a = u & kAbsMask;
  const uint32_t rounded = RoundMagnitudeToGrid<kRounding>(a, shared_exponent, random_word);
  const uint32_t limit = DfpGridMaxBits(shared_exponent);
  const uint32_t r = sign | (rounded < limit ? rounded : limit);
  const uint32_t special = a > kInfBits ? (sign | kQuietNanBits) : u;
  return (a >= kInfBits || a == 0) ? special : r;
}

// Top `random_bits` bits set.
inline uint32_t RandomMask(int32_t random_bits) {
  return random_bits >= 32 ? 0xFFFFFFFFu : ~(0xFFFFFFFFu >> random_bits);
}

}  // namespace tf_lowprec

#endif  // TF_LOWPREC_KERNELS_ROUNDING_H_
