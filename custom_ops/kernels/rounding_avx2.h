// rounding.h on AVX2: the same per-element functions, 8 lanes at a time.
//
// The forms are those of rounding_avx512.h (docs/rounding_kernels.md): a
// lane-wise transcription of rounding.h for any lane (RoundToFloatFormat8,
// RoundToDfpGrid8), and shorter forms valid for the lanes the loops route to
// them.  AVX2 has no mask registers: a lane mask here is a vector whose
// lanes are all ones or all zeros (compare results), selects are blends, and
// "every lane" tests are movemask.  It has signed 32-bit compares only;
// magnitudes (|x| as bits, below 2^31) compare correctly as signed, and the
// few unsigned compares flip the sign bits or offset a range to start at
// INT32_MIN.
//
// Nearest-even by float addition (RoundNormalRange8, the fast forms) rounds
// with MXCSR's rounding mode, as AVX2 has no embedded rounding: the loops
// run it inside a ScopedRoundToNearest (float_environment.h), which sets round-to-nearest for the
// duration of the call where the caller's thread has another mode.
// (TensorFlow's threads keep the default mode and change only FTZ/DAZ, which
// cannot change these forms' results, see MakeFloatGrid8; so the scope
// normally costs one MXCSR read.)
// Included only by the AVX2 translation unit.
#ifndef TF_LOWPREC_KERNELS_ROUNDING_AVX2_H_
#define TF_LOWPREC_KERNELS_ROUNDING_AVX2_H_

#if !defined(__AVX2__)
#error "rounding_avx2.h needs -mavx2"
#endif

#include <immintrin.h>

#include <algorithm>
#include <cstdint>

#include "number_formats.h"
#include "rounding.h"

namespace tf_lowprec {
namespace simd_avx2 {

inline __m256i Splat(uint32_t v) { return _mm256_set1_epi32(static_cast<int>(v)); }
inline __m256i SplatInt(int32_t v) { return _mm256_set1_epi32(v); }

inline __m256i ClampInt8(__m256i v, int32_t lo, int32_t hi) {
  return _mm256_min_epi32(_mm256_max_epi32(v, SplatInt(lo)), SplatInt(hi));
}

// mask ? a : b, lane-wise (mask lanes all ones or all zeros).
inline __m256i Select8(__m256i mask, __m256i a, __m256i b) {
  return _mm256_blendv_epi8(b, a, mask);
}

// a > b as unsigned 32-bit integers.
inline __m256i GreaterUnsigned8(__m256i a, __m256i b) {
  const __m256i sign = Splat(0x80000000u);
  return _mm256_cmpgt_epi32(_mm256_xor_si256(a, sign), _mm256_xor_si256(b, sign));
}

// One bit per lane (bit j: lane j's top bit).
inline int LaneBits8(__m256i mask) { return _mm256_movemask_ps(_mm256_castsi256_ps(mask)); }

// a + M - M in float32, rounded to nearest even inside a ScopedRoundToNearest (float_environment.h).
inline __m256i AddSubtractMagic8(__m256i a, __m256i magic_bits) {
  const __m256 magic = _mm256_castsi256_ps(magic_bits);
  return _mm256_castps_si256(
      _mm256_sub_ps(_mm256_add_ps(_mm256_castsi256_ps(a), magic), magic));
}

// Integer nearest-even of a onto multiples of 2^d, given keep = -1 << d,
// for lanes whose bit 23 of `significand_bits` is the significand's own bit
// 23 (a | 0x800000 for a normal a): adds 2^(d-1) - 1 plus the kept lsb, then
// clears the dropped bits (rounding.h's decision: up iff the dropped
// fraction exceeds one half, or equals it with an odd kept multiple).
inline __m256i NearestEvenByBias8(__m256i a, __m256i significand_bits, __m256i d,
                                  __m256i keep) {
  const __m256i half_minus_one =
      _mm256_srli_epi32(_mm256_andnot_si256(keep, SplatInt(-1)), 1);
  const __m256i odd = _mm256_and_si256(_mm256_srlv_epi32(significand_bits, d), SplatInt(1));
  return _mm256_and_si256(_mm256_add_epi32(_mm256_add_epi32(a, half_minus_one), odd), keep);
}

// RoundMagnitudeToGrid (rounding.h) on 8 lanes.
template <Rounding kRounding>
inline __m256i RoundMagnitudeToGrid8(__m256i a, __m256i k, __m256i random_word) {
  const __m256i one = SplatInt(1);
  const __m256i zero = _mm256_setzero_si256();
  const __m256i biased = _mm256_srli_epi32(a, 23);
  const __m256i normal = _mm256_cmpgt_epi32(biased, zero);
  // biased == 0 ? -126 : biased - 127
  const __m256i exponent = _mm256_sub_epi32(_mm256_max_epi32(biased, one), SplatInt(127));
  const __m256i dropped = _mm256_sub_epi32(k, _mm256_sub_epi32(exponent, SplatInt(23)));
  const __m256i d = ClampInt8(dropped, 1, 23);
  const __m256i fraction_in = _mm256_sllv_epi32(a, _mm256_sub_epi32(SplatInt(32), d));
  const __m256i kept_in = _mm256_sllv_epi32(_mm256_srlv_epi32(a, d), d);
  const __m256i step_in = _mm256_sllv_epi32(one, d);
  const __m256i significand = _mm256_or_si256(_mm256_and_si256(a, Splat(0x7FFFFFu)),
                                              _mm256_and_si256(normal, Splat(0x800000u)));
  const __m256i fraction_big = _mm256_srlv_epi32(
      _mm256_sllv_epi32(significand, ClampInt8(_mm256_sub_epi32(SplatInt(32), dropped), 0, 8)),
      ClampInt8(_mm256_sub_epi32(dropped, SplatInt(32)), 0, 31));
  const __m256i k_normal = _mm256_cmpgt_epi32(k, SplatInt(-127));  // k >= -126
  const __m256i step_normal =
      _mm256_slli_epi32(_mm256_add_epi32(ClampInt8(k, -126, 128), SplatInt(127)), 23);
  const __m256i step_subnormal =
      _mm256_sllv_epi32(one, ClampInt8(_mm256_add_epi32(k, SplatInt(149)), 0, 31));
  const __m256i step_big = Select8(k_normal, step_normal, step_subnormal);
  const __m256i big = _mm256_cmpgt_epi32(dropped, SplatInt(23));
  const __m256i fraction = Select8(big, fraction_big, fraction_in);
  const __m256i kept = _mm256_andnot_si256(big, kept_in);
  const __m256i step = Select8(big, step_big, step_in);
  __m256i up;
  const __m256i half = Splat(0x80000000u);
  if (kRounding == Rounding::kNearestEven) {
    // Parity of the kept multiple: bit d of the significand (rounding.h).
    const __m256i odd = _mm256_andnot_si256(
        big, _mm256_cmpeq_epi32(_mm256_and_si256(_mm256_srlv_epi32(significand, d), one), one));
    // fraction > 2^31 unsigned: fraction ^ 2^31 > 0 signed.
    up = _mm256_or_si256(_mm256_cmpgt_epi32(_mm256_xor_si256(fraction, half), zero),
                         _mm256_and_si256(_mm256_cmpeq_epi32(fraction, half), odd));
  } else if (kRounding == Rounding::kStochastic) {
    // Carry out of random_word + fraction: the sum wrapped below random_word.
    up = GreaterUnsigned8(random_word, _mm256_add_epi32(random_word, fraction));
  } else {
    up = zero;
  }
  const __m256i rounded = _mm256_add_epi32(kept, _mm256_and_si256(up, step));
  return Select8(_mm256_cmpgt_epi32(one, dropped), a, rounded);  // dropped <= 0: a
}

// A FloatGrid as broadcast constants, plus what the shorter forms need
// (the fields of rounding_avx512.h's FloatGrid16, with lane masks as vectors).
struct FloatGrid8 {
  __m256i min_exponent, mantissa_bits;
  __m256i flush_input_below;   // 0x00800000 when flushing input denormals, else 0
  __m256i flush_result_below;  // min_normal_bits without subnormals, else 0
  __m256i max_bits;
  __m256i overflow_bits[3];    // per Rounding value
  bool saturates[3];           // overflow_bits[r] == max_bits: a min does the clamp
  __m256i inf_result;          // result magnitude of an infinite input
  __m256i keep_zero_sign;      // all ones when the format has -0
  bool plain;                  // subnormals, -0, input denormals kept
  // Normal-range form (see RoundNormalRange8).
  bool normal_ok;              // 1 <= mantissa_bits <= 22
  int normal_dropped;          // 23 - mantissa_bits
  __m256i normal_keep;         // clears the dropped bits
  // Magnitudes a of the normal form: a + normal_offset < normal_limit as
  // signed integers, i.e. a in [min_normal, top] (the offset moves
  // min_normal to INT32_MIN), per rounding: top = max_bits, and below
  // 2^(104 + m) for nearest-even by float addition; an empty range without
  // normals.
  __m256i normal_offset;
  __m256i normal_limit[3];
  bool zero_in_normal_form;    // the format has -0: zeros may take the normal form
  // Fast form (see RoundToFloatFormatFast8).
  bool fast_ok;                // mantissa_bits <= 22
  bool fast_half_left;         // mantissa_bits <= 7: d >= 16 in every lane
  __m256i fast_dropped_base;   // (min_exponent + 127) + 23 - mantissa_bits
  __m256i fast_dropped_min;    // 23 - mantissa_bits
  __m256i fast_half_base;      // fast_dropped_base - 16
  __m256i fast_half_min;       // fast_dropped_min - 16
  // Lanes with 0 < a <= low_lanes_max[rounding] (FindSpecialLanes8): the
  // format's tiny magnitudes (below its subnormal step s) where
  // low_lanes_are_tiny[rounding], else the lanes that must take the full
  // form (float32 denormals, or none).  As a signed range test:
  // a + kLowOffset < low_lanes_limit, kLowOffset = INT32_MAX (zero maps to
  // INT32_MAX, a >= 1 to INT32_MIN + a - 1).
  __m256i low_lanes_limit[3];
  bool has_low_lanes[3];       // low_lanes_max[rounding] > 0
  bool low_lanes_are_tiny[3];
  // RoundTinyMagnitude8 (only where tiny magnitudes exist: slow_biased >= 2).
  __m256i tiny_step_bits;      // float32 bits of s = 2^(min_exponent - mantissa_bits)
  __m256i tiny_half_bits;      // float32 bits of s / 2
  __m256i tiny_half_shift_base;  // slow_biased + 7
  __m256i tiny_word_shift_base;  // slow_biased - 9
  bool tiny_float_ok;          // 33 <= slow_biased <= 143 (see RoundTinyMagnitude8)
  __m256 tiny_scale_half;      // 2^16 / s
  // Nearest-even by float addition in the fast form.
  bool magic_ok;               // M is finite and the grid lies in normal float32
  __m256i magic_cap_bits;      // float32 bits of 2^max(max exponent + 1, min_exponent)
  __m256i magic_offset;        // (23 - m) << 23: scales 2^e to 2^(e + 23 - m)
  __m256i min_normal_bits;     // float32 bits of the format's smallest normal
};

constexpr uint32_t kLowOffset = 0x7FFFFFFFu;

inline FloatGrid8 MakeFloatGrid8(const FloatGrid& g) {
  FloatGrid8 c;
  c.min_exponent = SplatInt(g.min_exponent);
  c.mantissa_bits = SplatInt(g.mantissa_bits);
  c.flush_input_below = Splat(g.flush_input_denormals ? 0x00800000u : 0u);
  c.flush_result_below = Splat(g.subnormals ? 0u : g.min_normal_bits);
  c.max_bits = Splat(g.max_bits);
  const uint32_t unsaturated =
      g.overflow == Overflow::kSaturate
          ? g.max_bits
          : (g.overflow == Overflow::kInfinity ? kInfBits : kQuietNanBits);
  c.overflow_bits[static_cast<int>(Rounding::kNearestEven)] = Splat(unsaturated);
  c.overflow_bits[static_cast<int>(Rounding::kStochastic)] = Splat(unsaturated);
  c.overflow_bits[static_cast<int>(Rounding::kTowardZero)] = Splat(g.max_bits);
  c.saturates[static_cast<int>(Rounding::kNearestEven)] = unsaturated == g.max_bits;
  c.saturates[static_cast<int>(Rounding::kStochastic)] = unsaturated == g.max_bits;
  c.saturates[static_cast<int>(Rounding::kTowardZero)] = true;
  c.inf_result = Splat(g.infinities ? kInfBits
                                    : (g.overflow == Overflow::kNan ? kQuietNanBits : g.max_bits));
  c.keep_zero_sign = Splat(g.negative_zero ? 0xFFFFFFFFu : 0u);
  c.plain = g.subnormals && g.negative_zero && !g.flush_input_denormals;
  const int32_t normal_dropped = 23 - g.mantissa_bits;
  c.normal_ok = g.mantissa_bits >= 1 && g.mantissa_bits <= 22;
  c.normal_dropped = normal_dropped;
  c.normal_keep = Splat(c.normal_ok ? ~((uint32_t{1} << normal_dropped) - 1u) : 0u);
  c.min_normal_bits = Splat(g.min_normal_bits);
  const uint32_t normal_top = g.max_bits;
  // a + M, M = 2^(e + 23 - m), may round up to 2M = 2^(e + 24 - m), finite for
  // e <= 103 + m: magnitudes below 2^(104 + m).
  const uint32_t magic_top = std::min<uint32_t>(
      normal_top, (static_cast<uint32_t>(104 + 127 + g.mantissa_bits) << 23) - 1u);
  c.normal_offset = Splat(0x80000000u - g.min_normal_bits);
  for (int r = 0; r < 3; ++r) {
    const uint32_t top = r == static_cast<int>(Rounding::kNearestEven) ? magic_top : normal_top;
    const uint32_t width = top >= g.min_normal_bits ? top - g.min_normal_bits + 1 : 0u;
    c.normal_limit[r] = Splat(0x80000000u + width);
  }
  c.zero_in_normal_form = g.negative_zero;
  c.fast_ok = g.mantissa_bits <= 22;
  c.fast_half_left = g.mantissa_bits <= 7;
  const int32_t min_biased = g.min_exponent + 127;  // >= 1 for every valid grid
  c.fast_dropped_base = SplatInt(min_biased + 23 - g.mantissa_bits);
  c.fast_dropped_min = SplatInt(23 - g.mantissa_bits);
  c.fast_half_base = SplatInt(min_biased + 7 - g.mantissa_bits);
  c.fast_half_min = SplatInt(7 - g.mantissa_bits);
  // The format's subnormal step s = 2^(min_exponent - m) has biased exponent
  // slow_biased; with slow_biased >= 2 the magnitudes in (0, s) ("tiny":
  // rounding.h's `big` case) include normal float32 values; with
  // slow_biased <= 1 only float32 denormals lie below s, and there
  // dropped <= 23 still (rounding_avx512.h).
  const int32_t slow_biased = min_biased - g.mantissa_bits;
  const bool has_tiny = slow_biased >= 2;
  const uint32_t tiny_max = has_tiny ? (static_cast<uint32_t>(slow_biased) << 23) - 1u : 0u;
  c.tiny_step_bits = Splat(has_tiny ? static_cast<uint32_t>(slow_biased) << 23 : 0u);
  c.tiny_half_bits = Splat(has_tiny ? static_cast<uint32_t>(slow_biased - 1) << 23 : 0u);
  c.tiny_half_shift_base = SplatInt(slow_biased + 7);
  c.tiny_word_shift_base = SplatInt(slow_biased - 9);
  c.tiny_float_ok = slow_biased >= 33 && slow_biased <= 143;
  c.tiny_scale_half = _mm256_castsi256_ps(
      Splat(c.tiny_float_ok ? static_cast<uint32_t>(270 - slow_biased) << 23 : 0u));
  const int32_t cap_biased = std::max(static_cast<int32_t>(g.max_bits >> 23) + 1, min_biased);
  c.magic_ok = g.mantissa_bits <= 22 &&
               cap_biased + 23 - g.mantissa_bits <= 254 && has_tiny;
  c.magic_cap_bits = Splat(static_cast<uint32_t>(cap_biased) << 23);
  c.magic_offset = Splat(static_cast<uint32_t>(23 - g.mantissa_bits) << 23);
  // Which low lanes the fast form cannot take.  The integer forms take
  // b = a >> 23 as the lane's binade, one off for float32 denormals
  // (rounding.h uses max(b, 1)): with tiny magnitudes, denormals are tiny
  // and RoundTinyMagnitude8 takes them; without, they take the full form.
  // The float form takes tiny magnitudes and denormals alike: with
  // slow_biased >= 2, a denormal is below s / 2, so a + M rounds to M
  // whether DAZ reads a as 0 or not, and the result is 0 as in rounding.h.
  constexpr uint32_t kDenormalMax = 0x007FFFFFu;
  for (int r = 0; r < 3; ++r) {
    const bool magic = r == static_cast<int>(Rounding::kNearestEven) && c.magic_ok;
    c.low_lanes_are_tiny[r] = has_tiny && !magic;
    const uint32_t low_max = magic ? 0u : (c.low_lanes_are_tiny[r] ? tiny_max : kDenormalMax);
    c.low_lanes_limit[r] = Splat(0x80000000u + low_max);
    c.has_low_lanes[r] = low_max != 0;
  }
  return c;
}

// Magnitudes above the format's largest finite one become overflow_bits
// (the largest one itself when the format saturates: then a min does it).
// r is a magnitude (below 2^31) wherever the result is used.
template <Rounding kRounding>
inline __m256i ClampOverflow8(__m256i r, const FloatGrid8& c) {
  constexpr int kR = static_cast<int>(kRounding);
  if (c.saturates[kR]) return _mm256_min_epu32(r, c.max_bits);
  return Select8(_mm256_cmpgt_epi32(r, c.max_bits), c.overflow_bits[kR], r);
}

// How a stochastic rounding's random bits reach the float-format forms
// (rounding_avx512.h's RandomForm): kWord, the element's masked 32-bit word
// U; kHalf, with 16 random bits per element, those bits h in the low half
// of the lane (U = h << 16).
enum class RandomForm { kWord, kHalf };

template <RandomForm kForm>
inline __m256i RandomWord8(__m256i random) {
  return kForm == RandomForm::kHalf ? _mm256_slli_epi32(random, 16) : random;
}

// Everything of RoundToFloatFormat after RoundMagnitudeToGrid.
template <Rounding kRounding>
inline __m256i FinishFloatFormat8(__m256i u, __m256i a, __m256i r, const FloatGrid8& c) {
  r = _mm256_andnot_si256(_mm256_cmpgt_epi32(c.flush_result_below, r), r);
  r = ClampOverflow8<kRounding>(r, c);
  r = Select8(_mm256_cmpeq_epi32(a, Splat(kInfBits)), c.inf_result, r);
  const __m256i sign = _mm256_and_si256(u, Splat(kSignMask));
  const __m256i zero = _mm256_setzero_si256();
  const __m256i drop_sign =
      _mm256_andnot_si256(c.keep_zero_sign, _mm256_cmpeq_epi32(r, zero));
  const __m256i signed_r = _mm256_or_si256(r, _mm256_andnot_si256(drop_sign, sign));
  return Select8(_mm256_cmpgt_epi32(a, Splat(kInfBits)),
                 _mm256_or_si256(sign, Splat(kQuietNanBits)), signed_r);
}

// Input magnitude after the optional flush of input denormals.
inline __m256i FloatFormatMagnitude8(__m256i u, const FloatGrid8& c) {
  const __m256i a0 = _mm256_and_si256(u, Splat(kAbsMask));
  return _mm256_andnot_si256(_mm256_cmpgt_epi32(c.flush_input_below, a0), a0);
}

// RoundToFloatFormat (rounding.h) on 8 lanes.
template <Rounding kRounding>
inline __m256i RoundToFloatFormat8(__m256i u, const FloatGrid8& c, __m256i random_word) {
  const __m256i a = FloatFormatMagnitude8(u, c);
  const __m256i exponent = _mm256_sub_epi32(
      _mm256_max_epi32(_mm256_srli_epi32(a, 23), SplatInt(1)), SplatInt(127));
  const __m256i k =
      _mm256_sub_epi32(_mm256_max_epi32(exponent, c.min_exponent), c.mantissa_bits);
  const __m256i r = RoundMagnitudeToGrid8<kRounding>(a, k, random_word);
  return FinishFloatFormat8<kRounding>(u, a, r, c);
}

// The lanes of a vector that RoundToFloatFormatFast8 needs to know about, as
// lane bits: Inf and NaN (never its own), and the low lanes,
// 0 < a <= low_lanes_max (see FloatGrid8).  Both are usually empty.
struct SpecialLanes8 {
  int non_finite;
  int low;
  __m256i low_mask;
};

template <Rounding kRounding>
inline SpecialLanes8 FindSpecialLanes8(__m256i a, const FloatGrid8& c) {
  const __m256i non_finite = _mm256_cmpgt_epi32(a, Splat(kInfBits - 1u));
  const __m256i low = _mm256_cmpgt_epi32(c.low_lanes_limit[static_cast<int>(kRounding)],
                                         _mm256_add_epi32(a, Splat(kLowOffset)));
  return {LaneBits8(non_finite), LaneBits8(low), low};
}

// Nonzero when FindSpecialLanes8 would report any lane: the hot loop's one
// test (one movemask; no low-lane compare where there are none, as for
// nearest-even by float addition).
template <Rounding kRounding>
inline int AnySpecialLanes8(__m256i a, const FloatGrid8& c) {
  constexpr int kR = static_cast<int>(kRounding);
  const __m256i non_finite = _mm256_cmpgt_epi32(a, Splat(kInfBits - 1u));
  if (!c.has_low_lanes[kR]) return LaneBits8(non_finite);
  const __m256i low =
      _mm256_cmpgt_epi32(c.low_lanes_limit[kR], _mm256_add_epi32(a, Splat(kLowOffset)));
  return LaneBits8(_mm256_or_si256(non_finite, low));
}

// rounding.h's magnitude for tiny lanes, 0 < a < s = 2^(min_exponent - m):
// s or 0, as in rounding_avx512.h's RoundTinyMagnitude16.  The stochastic
// fraction with half words comes from the exact float product a * 2^16 / s
// truncated (c.tiny_float_ok: E4M3, E5M2, FP16), below 2^16 so that the
// signed conversion holds it; with words (up to 2^32, beyond the signed
// conversion) it takes the integer shift.
template <Rounding kRounding, RandomForm kForm>
inline __m256i RoundTinyMagnitude8(__m256i a, const FloatGrid8& c, __m256i random) {
  if (kRounding == Rounding::kNearestEven) {
    return _mm256_and_si256(_mm256_cmpgt_epi32(a, c.tiny_half_bits), c.tiny_step_bits);
  }
  if (kRounding != Rounding::kStochastic) return _mm256_setzero_si256();
  if (kForm == RandomForm::kHalf && c.tiny_float_ok) {
    // Truncation toward zero whatever MXCSR says (cvtt).
    const __m256i fraction =
        _mm256_cvttps_epi32(_mm256_mul_ps(_mm256_castsi256_ps(a), c.tiny_scale_half));
    const __m256i up =
        _mm256_cmpgt_epi32(_mm256_add_epi32(fraction, random), SplatInt(0xFFFF));
    return _mm256_and_si256(up, c.tiny_step_bits);
  }
  const __m256i biased = _mm256_srli_epi32(a, 23);
  const __m256i biased_or_one = _mm256_max_epi32(biased, SplatInt(1));
  const __m256i significand = _mm256_or_si256(
      _mm256_and_si256(a, Splat(0x7FFFFFu)),
      _mm256_and_si256(_mm256_cmpgt_epi32(biased, _mm256_setzero_si256()), Splat(0x800000u)));
  __m256i up;
  if (kForm == RandomForm::kHalf) {
    const __m256i fraction_top = _mm256_srlv_epi32(
        significand, _mm256_sub_epi32(c.tiny_half_shift_base, biased_or_one));
    up = _mm256_cmpgt_epi32(_mm256_add_epi32(fraction_top, random), SplatInt(0xFFFF));
  } else {
    const __m256i left = _mm256_sub_epi32(biased_or_one, c.tiny_word_shift_base);
    const __m256i zero = _mm256_setzero_si256();
    const __m256i fraction =
        _mm256_srlv_epi32(_mm256_sllv_epi32(significand, _mm256_max_epi32(left, zero)),
                          _mm256_max_epi32(_mm256_sub_epi32(zero, left), zero));
    up = GreaterUnsigned8(random, _mm256_add_epi32(random, fraction));
  }
  return _mm256_and_si256(up, c.tiny_step_bits);
}

// RoundToFloatFormat for the lanes that FindSpecialLanes8 lets through,
// given mantissa_bits <= 22 (c.fast_ok): rounding_avx512.h's
// RoundToFloatFormatFast16 (finite lanes with `dropped` in 1..23, zeros,
// tiny lanes in `tiny_mask`; the comments there give the derivations).
// The float form also takes float32 denormals here (see MakeFloatGrid8).
// Integer nearest-even reads the parity bit d from a | 0x800000: for a
// normal lane that is the significand with its implicit bit; a zero lane
// rounds to zero whatever it adds (less than 2^d, cleared), and tiny lanes
// are replaced.
template <Rounding kRounding, bool kPlain, RandomForm kForm = RandomForm::kWord>
inline __m256i RoundToFloatFormatFast8(__m256i u, __m256i a, const FloatGrid8& c,
                                       __m256i random, int tiny, __m256i tiny_mask) {
  const __m256i biased = _mm256_srli_epi32(a, 23);
  __m256i r;
  if (kRounding == Rounding::kNearestEven && c.magic_ok) {
    const __m256i binade = _mm256_min_epu32(
        _mm256_max_epu32(_mm256_and_si256(a, Splat(0x7F800000u)), c.min_normal_bits),
        c.magic_cap_bits);
    r = AddSubtractMagic8(a, _mm256_add_epi32(binade, c.magic_offset));
  } else if (kRounding == Rounding::kStochastic && kForm == RandomForm::kHalf &&
             c.fast_half_left) {
    const __m256i e =
        _mm256_max_epi32(_mm256_sub_epi32(c.fast_half_base, biased), c.fast_half_min);
    const __m256i keep = _mm256_sllv_epi32(Splat(0xFFFF0000u), e);
    r = _mm256_and_si256(_mm256_add_epi32(a, _mm256_sllv_epi32(random, e)), keep);
  } else {
    const __m256i d =
        _mm256_max_epi32(_mm256_sub_epi32(c.fast_dropped_base, biased), c.fast_dropped_min);
    const __m256i keep = _mm256_sllv_epi32(SplatInt(-1), d);
    if (kRounding == Rounding::kNearestEven) {
      r = NearestEvenByBias8(a, _mm256_or_si256(a, Splat(0x800000u)), d, keep);
    } else if (kRounding == Rounding::kStochastic) {
      const __m256i term = _mm256_srlv_epi32(RandomWord8<kForm>(random),
                                             _mm256_sub_epi32(SplatInt(32), d));
      r = _mm256_and_si256(_mm256_add_epi32(a, term), keep);
    } else {
      r = _mm256_and_si256(a, keep);
    }
  }
  // Rare: tiny lanes (a branch, so that vectors without them pay nothing).
  if (tiny != 0) {
    r = Select8(tiny_mask, RoundTinyMagnitude8<kRounding, kForm>(a, c, random), r);
  }
  // The finite-input part of FinishFloatFormat8.
  if (!kPlain) r = _mm256_andnot_si256(_mm256_cmpgt_epi32(c.flush_result_below, r), r);
  r = ClampOverflow8<kRounding>(r, c);
  const __m256i sign = _mm256_and_si256(u, Splat(kSignMask));
  if (kPlain) return _mm256_or_si256(r, sign);
  const __m256i drop_sign = _mm256_andnot_si256(
      c.keep_zero_sign, _mm256_cmpeq_epi32(r, _mm256_setzero_si256()));
  return _mm256_or_si256(r, _mm256_andnot_si256(drop_sign, sign));
}

// True when every lane may take RoundNormalRange8: magnitudes (after the
// input flush) in the format's normal range (see FloatGrid8), or zero when
// the format has -0.
template <Rounding kRounding>
inline bool AllInNormalRange8(__m256i a, const FloatGrid8& c) {
  __m256i inside = _mm256_cmpgt_epi32(c.normal_limit[static_cast<int>(kRounding)],
                                      _mm256_add_epi32(a, c.normal_offset));
  if (c.zero_in_normal_form) {
    inside = _mm256_or_si256(inside, _mm256_cmpeq_epi32(a, _mm256_setzero_si256()));
  }
  return LaneBits8(inside) == 0xFF;
}

// RoundToFloatFormat for lanes accepted by AllInNormalRange8, given
// c.normal_ok: rounding_avx512.h's RoundNormalRange16 (dropped = 23 - m in
// every lane, no flush, no overflow, no specials), nearest-even by float
// addition.
template <Rounding kRounding, RandomForm kForm = RandomForm::kWord>
inline __m256i RoundNormalRange8(__m256i u, __m256i a, const FloatGrid8& c, __m256i random) {
  __m256i r;
  if (kRounding == Rounding::kNearestEven) {
    r = AddSubtractMagic8(
        a, _mm256_add_epi32(_mm256_and_si256(a, Splat(0x7F800000u)), c.magic_offset));
  } else if (kRounding == Rounding::kStochastic) {
    // The term U >> (32 - d): with U = h << 16, h shifted by d - 16.
    __m256i term;
    if (kForm == RandomForm::kWord) {
      term = _mm256_srl_epi32(random, _mm_cvtsi32_si128(32 - c.normal_dropped));
    } else if (c.normal_dropped > 16) {
      term = _mm256_sll_epi32(random, _mm_cvtsi32_si128(c.normal_dropped - 16));
    } else if (c.normal_dropped < 16) {
      term = _mm256_srl_epi32(random, _mm_cvtsi32_si128(16 - c.normal_dropped));
    } else {
      term = random;  // bf16: 16 dropped bits, h is the term
    }
    r = _mm256_and_si256(_mm256_add_epi32(a, term), c.normal_keep);
  } else {
    r = _mm256_and_si256(a, c.normal_keep);
  }
  return _mm256_or_si256(r, _mm256_and_si256(u, Splat(kSignMask)));
}

// RoundToDfpGrid (rounding.h) on 8 lanes.
template <Rounding kRounding>
inline __m256i RoundToDfpGrid8(__m256i u, __m256i shared_exponent, __m256i random_word) {
  const __m256i sign = _mm256_and_si256(u, Splat(kSignMask));
  const __m256i a = _mm256_and_si256(u, Splat(kAbsMask));
  // Saturation at DfpGridMaxBits (rounding.h): FLT_MAX with its low
  // k - 104 bits cleared; a shift by 32 (k >= 128) gives 0.
  const __m256i cleared = ClampInt8(_mm256_sub_epi32(shared_exponent, SplatInt(104)), 0, 24);
  const __m256i count = _mm256_add_epi32(
      cleared, _mm256_and_si256(_mm256_cmpeq_epi32(cleared, SplatInt(24)), SplatInt(8)));
  const __m256i limit = _mm256_sllv_epi32(_mm256_srlv_epi32(Splat(0x7F7FFFFFu), count), count);
  const __m256i r = _mm256_or_si256(
      sign, _mm256_min_epu32(RoundMagnitudeToGrid8<kRounding>(a, shared_exponent, random_word),
                             limit));
  const __m256i nan = _mm256_cmpgt_epi32(a, Splat(kInfBits));
  const __m256i special = Select8(nan, _mm256_or_si256(sign, Splat(kQuietNanBits)), u);
  const __m256i passthrough = _mm256_or_si256(_mm256_cmpgt_epi32(a, Splat(kInfBits - 1u)),
                                              _mm256_cmpeq_epi32(a, _mm256_setzero_si256()));
  return Select8(passthrough, special, r);
}

// The lanes RoundToDfpGridFast8 takes, for grid exponents k (as in
// rounding_avx512.h's DfpFastRange16): zeros, and 2^max(k, -126) <= a <
// 2^(k + 23) for -149 <= k <= 104, tested as a + offset < limit (signed),
// the offset moving 2^max(k, -126) to INT32_MIN.
struct DfpFastRange8 {
  __m256i offset, limit;
};

inline DfpFastRange8 MakeDfpFastRange8(__m256i k) {
  const __m256i valid = _mm256_andnot_si256(
      _mm256_or_si256(_mm256_cmpgt_epi32(SplatInt(-149), k), _mm256_cmpgt_epi32(k, SplatInt(104))),
      SplatInt(-1));
  const __m256i low = _mm256_slli_epi32(
      _mm256_add_epi32(_mm256_max_epi32(k, SplatInt(-126)), SplatInt(127)), 23);
  // k + 23 >= -126 for valid lanes, so 2^(k + 23) is normal: (k + 150) << 23.
  const __m256i high = _mm256_slli_epi32(_mm256_add_epi32(k, SplatInt(150)), 23);
  const __m256i span = _mm256_and_si256(valid, _mm256_sub_epi32(high, low));
  const __m256i int_min = Splat(0x80000000u);
  return {_mm256_sub_epi32(int_min, low), _mm256_add_epi32(int_min, span)};
}

// True when every lane is one RoundToDfpGridFast8 takes.
inline bool AllInDfpFastRange8(__m256i a, const DfpFastRange8& range) {
  const __m256i inside =
      _mm256_cmpgt_epi32(range.limit, _mm256_add_epi32(a, range.offset));
  const __m256i zero = _mm256_cmpeq_epi32(a, _mm256_setzero_si256());
  return LaneBits8(_mm256_or_si256(inside, zero)) == 0xFF;
}

// RoundToDfpGrid (rounding.h) for the lanes of AllInDfpFastRange8
// (rounding_avx512.h's RoundToDfpGridFast16): with d = k + 150 - (a >> 23) in
// 1..23, the bias-and-clear; nearest-even by float addition of
// M = 2^(k + 23).  `word` is U.
template <Rounding kRounding>
inline __m256i RoundToDfpGridFast8(__m256i u, __m256i a, __m256i k, __m256i word) {
  __m256i r;
  const __m256i k150 = _mm256_add_epi32(k, SplatInt(150));
  if (kRounding == Rounding::kNearestEven) {
    // k + 150 clamped to 1..254, a no-op where the range is valid
    // (k <= 104); elsewhere only zero lanes come here, and they need M
    // finite and normal to stay zero (2^(k + 23) would be Inf or worse).
    r = AddSubtractMagic8(a, _mm256_slli_epi32(ClampInt8(k150, 1, 254), 23));
  } else {
    const __m256i d = _mm256_sub_epi32(k150, _mm256_srli_epi32(a, 23));
    const __m256i keep = _mm256_sllv_epi32(SplatInt(-1), d);
    if (kRounding == Rounding::kStochastic) {
      const __m256i term = _mm256_srlv_epi32(word, _mm256_sub_epi32(SplatInt(32), d));
      r = _mm256_and_si256(_mm256_add_epi32(a, term), keep);
    } else {
      r = _mm256_and_si256(a, keep);
    }
  }
  return _mm256_or_si256(r, _mm256_and_si256(u, Splat(kSignMask)));
}

}  // namespace simd_avx2
}  // namespace tf_lowprec

#endif  // TF_LOWPREC_KERNELS_ROUNDING_AVX2_H_
