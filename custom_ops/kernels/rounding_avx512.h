// rounding.h on AVX-512: the same per-element functions, 16 lanes at a time.
//
// Each function here is a lane-wise transcription of its namesake in
// rounding.h (same steps, same clamps, same selects), so both give the same
// bits for every input; tests/test_isa_equivalence.py checks that, and the
// portable loops (compiled from rounding.h) stay the reference.  The
// additions are shorter forms of the same function, valid for the lanes the
// loops route to them (RoundToFloatFormatFast16, RoundNormalRange16), which
// can also take 16-bit random draws as they are (RandomForm::kHalf).
// Included only by the AVX-512 translation unit.
#ifndef TF_LOWPREC_KERNELS_ROUNDING_AVX512_H_
#define TF_LOWPREC_KERNELS_ROUNDING_AVX512_H_

#if !defined(__AVX512F__)
#error "rounding_avx512.h needs -mavx512f"
#endif

#include <immintrin.h>

#include <algorithm>
#include <cstdint>

#include "number_formats.h"
#include "rounding.h"

namespace tf_lowprec {
namespace simd {

inline __m512i Splat(uint32_t v) { return _mm512_set1_epi32(static_cast<int>(v)); }
inline __m512i SplatInt(int32_t v) { return _mm512_set1_epi32(v); }

inline __m512i ClampInt16(__m512i v, int32_t lo, int32_t hi) {
  return _mm512_min_epi32(_mm512_max_epi32(v, SplatInt(lo)), SplatInt(hi));
}

// RoundMagnitudeToGrid (rounding.h) on 16 lanes.
template <Rounding kRounding>
inline __m512i RoundMagnitudeToGrid16(__m512i a, __m512i k, __m512i random_word) {
  const __m512i one = SplatInt(1);
  const __m512i biased = _mm512_srli_epi32(a, 23);
  const __mmask16 normal = _mm512_test_epi32_mask(biased, biased);
  // biased == 0 ? -126 : biased - 127
  const __m512i exponent = _mm512_sub_epi32(_mm512_max_epi32(biased, one), SplatInt(127));
  const __m512i dropped = _mm512_sub_epi32(k, _mm512_sub_epi32(exponent, SplatInt(23)));
  const __m512i d = ClampInt16(dropped, 1, 23);
  const __m512i fraction_in = _mm512_sllv_epi32(a, _mm512_sub_epi32(SplatInt(32), d));
  const __m512i kept_in = _mm512_sllv_epi32(_mm512_srlv_epi32(a, d), d);
  const __m512i step_in = _mm512_sllv_epi32(one, d);
  const __m512i mantissa = _mm512_and_si512(a, Splat(0x7FFFFFu));
  const __m512i significand = _mm512_mask_or_epi32(mantissa, normal, mantissa, Splat(0x800000u));
  const __m512i fraction_big = _mm512_srlv_epi32(
      _mm512_sllv_epi32(significand, ClampInt16(_mm512_sub_epi32(SplatInt(32), dropped), 0, 8)),
      ClampInt16(_mm512_sub_epi32(dropped, SplatInt(32)), 0, 31));
  const __mmask16 k_normal = _mm512_cmpge_epi32_mask(k, SplatInt(-126));
  const __m512i step_normal =
      _mm512_slli_epi32(_mm512_add_epi32(ClampInt16(k, -126, 128), SplatInt(127)), 23);
  const __m512i step_subnormal =
      _mm512_sllv_epi32(one, ClampInt16(_mm512_add_epi32(k, SplatInt(149)), 0, 31));
  const __m512i step_big = _mm512_mask_blend_epi32(k_normal, step_subnormal, step_normal);
  const __mmask16 big = _mm512_cmpgt_epi32_mask(dropped, SplatInt(23));
  const __m512i fraction = _mm512_mask_blend_epi32(big, fraction_in, fraction_big);
  const __m512i kept = _mm512_maskz_mov_epi32(static_cast<__mmask16>(~big), kept_in);
  const __m512i step = _mm512_mask_blend_epi32(big, step_in, step_big);
  __mmask16 up;
  const __m512i half = Splat(0x80000000u);
  if (kRounding == Rounding::kNearestEven) {
    // Parity of the kept multiple: bit d of the significand (rounding.h).
    const __mmask16 odd = _mm512_mask_test_epi32_mask(static_cast<__mmask16>(~big),
                                                      _mm512_srlv_epi32(significand, d), one);
    up = _mm512_cmpgt_epu32_mask(fraction, half) |
         _mm512_mask_cmpeq_epu32_mask(odd, fraction, half);
  } else if (kRounding == Rounding::kStochastic) {
    up = _mm512_cmplt_epu32_mask(_mm512_add_epi32(random_word, fraction), random_word);
  } else {
    up = 0;
  }
  const __m512i rounded = _mm512_mask_add_epi32(kept, up, kept, step);
  return _mm512_mask_blend_epi32(_mm512_cmple_epi32_mask(dropped, _mm512_setzero_si512()),
                                 rounded, a);
}

// A FloatGrid as broadcast constants, plus what the fast form needs.
struct FloatGrid16 {
  __m512i min_exponent, mantissa_bits;
  __m512i flush_input_below;   // 0x00800000 when flushing input denormals, else 0
  __m512i flush_result_below;  // min_normal_bits without subnormals, else 0
  __m512i max_bits;
  __m512i overflow_bits[3];    // per Rounding value
  bool saturates[3];           // overflow_bits[r] == max_bits: a min does the clamp
  __m512i inf_result;          // result magnitude of an infinite input
  __mmask16 keep_zero_sign;    // 0xFFFF when the format has -0
  bool plain;                  // subnormals, -0, input denormals kept
  // Normal-range form (see RoundNormalRange16).
  bool normal_ok;              // 1 <= mantissa_bits <= 22
  __m128i normal_fraction_shift;  // 32 - (23 - mantissa_bits)
  __m512i normal_keep;         // clears the dropped bits
  __m512i min_normal_bits;     // float32 bits of the format's smallest normal
  // Width of the normal form's range [min_normal, top] per rounding:
  // top = max_bits, and below 2^(104 + m) for nearest-even (by float
  // addition, whose sums must stay finite); 0 without normals.
  __m512i normal_range[3];
  __mmask16 zero_in_normal_form;  // 0xFFFF when zeros may take that form too
  // The normal form's stochastic term from a half word h (RandomForm::kHalf).
  __m128i normal_half_shift;   // |23 - mantissa_bits - 16|
  int normal_half_direction;   // sign of 23 - mantissa_bits - 16
  // Fast form (see RoundToFloatFormatFast16).
  bool fast_ok;                // mantissa_bits <= 22
  bool fast_half_left;         // mantissa_bits <= 7: d >= 16 in every lane
  __m512i fast_dropped_base;   // (min_exponent + 127) + 23 - mantissa_bits
  __m512i fast_dropped_min;    // 23 - mantissa_bits
  __m512i fast_half_base;      // fast_dropped_base - 16
  __m512i fast_half_min;       // fast_dropped_min - 16
  __m512i fast_half_keep;      // -1 << 16
  // Lanes with 0 < a <= low_lanes_max[rounding] (see FindSpecialLanes16): the
  // format's tiny magnitudes (below its subnormal step s, which the fast form
  // takes by RoundTinyMagnitude16) where low_lanes_are_tiny[rounding], else
  // the lanes that must take the full form (float32 denormals, or none).
  __m512i low_lanes_max[3];
  bool low_lanes_are_tiny[3];
  // RoundTinyMagnitude16 (only where tiny magnitudes exist: slow_biased >= 2).
  __m512i tiny_step_bits;      // float32 bits of s = 2^(min_exponent - mantissa_bits)
  __m512i tiny_half_bits;      // float32 bits of s / 2
  __m512i tiny_half_shift_base;  // slow_biased + 7
  __m512i tiny_word_shift_base;  // slow_biased - 9
  bool tiny_float_ok;          // 33 <= slow_biased <= 143 (see RoundTinyMagnitude16)
  __m512 tiny_scale_half;      // 2^16 / s
  __m512 tiny_scale_word;      // 2^32 / s
  // Nearest-even by float addition in the fast form (see RoundToFloatFormatFast16).
  bool magic_ok;               // M below is finite and the grid lies in normal float32
  __m512i magic_cap_bits;      // float32 bits of 2^max(max exponent + 1, min_exponent)
  __m512i magic_offset;        // (23 - m) << 23: scales 2^e to 2^(e + 23 - m)
};

inline FloatGrid16 MakeFloatGrid16(const FloatGrid& g) {
  FloatGrid16 c;
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
  c.keep_zero_sign = g.negative_zero ? 0xFFFF : 0;
  c.plain = g.subnormals && g.negative_zero && !g.flush_input_denormals;
  const int32_t normal_dropped = 23 - g.mantissa_bits;
  c.normal_ok = g.mantissa_bits >= 1 && g.mantissa_bits <= 22;
  c.normal_fraction_shift = _mm_cvtsi32_si128(32 - normal_dropped);
  c.normal_keep = Splat(c.normal_ok ? ~((uint32_t{1} << normal_dropped) - 1u) : 0u);
  c.min_normal_bits = Splat(g.min_normal_bits);
  const uint32_t normal_top = g.max_bits;
  // a + M, M = 2^(e + 23 - m), may round up to 2M = 2^(e + 24 - m), finite for
  // e <= 103 + m: magnitudes below 2^(104 + m).
  const uint32_t magic_top =
      std::min<uint32_t>(normal_top, (static_cast<uint32_t>(104 + 127 + g.mantissa_bits) << 23) - 1u);
  for (int r = 0; r < 3; ++r) {
    const uint32_t top = r == static_cast<int>(Rounding::kNearestEven) ? magic_top : normal_top;
    c.normal_range[r] = Splat(top >= g.min_normal_bits ? top - g.min_normal_bits + 1 : 0u);
  }
  c.zero_in_normal_form = g.negative_zero ? 0xFFFF : 0;
  c.normal_half_shift = _mm_cvtsi32_si128(normal_dropped >= 16 ? normal_dropped - 16
                                                               : 16 - normal_dropped);
  c.normal_half_direction = normal_dropped > 16 ? 1 : (normal_dropped < 16 ? -1 : 0);
  c.fast_ok = g.mantissa_bits <= 22;
  c.fast_half_left = g.mantissa_bits <= 7;
  const int32_t min_biased = g.min_exponent + 127;  // >= 1 for every valid grid
  c.fast_dropped_base = SplatInt(min_biased + 23 - g.mantissa_bits);
  c.fast_dropped_min = SplatInt(23 - g.mantissa_bits);
  c.fast_half_base = SplatInt(min_biased + 7 - g.mantissa_bits);
  c.fast_half_min = SplatInt(7 - g.mantissa_bits);
  c.fast_half_keep = Splat(0xFFFF0000u);
  // The format's subnormal step s = 2^(min_exponent - m) has biased
  // exponent slow_biased.  With slow_biased >= 2 the magnitudes in (0, s)
  // ("tiny": rounding.h's `big` case, dropped > 23) include normal float32
  // values; with slow_biased <= 1 only float32 denormals lie below s, and
  // there dropped <= 23 still (s is 2^-126 or a float32 denormal itself).
  const int32_t slow_biased = min_biased - g.mantissa_bits;
  const bool has_tiny = slow_biased >= 2;
  const uint32_t tiny_max = has_tiny ? (static_cast<uint32_t>(slow_biased) << 23) - 1u : 0u;
  c.tiny_step_bits = Splat(has_tiny ? static_cast<uint32_t>(slow_biased) << 23 : 0u);
  c.tiny_half_bits = Splat(has_tiny ? static_cast<uint32_t>(slow_biased - 1) << 23 : 0u);
  c.tiny_half_shift_base = SplatInt(slow_biased + 7);
  c.tiny_word_shift_base = SplatInt(slow_biased - 9);
  c.tiny_float_ok = slow_biased >= 33 && slow_biased <= 143;
  c.tiny_scale_half = _mm512_castsi512_ps(
      Splat(c.tiny_float_ok ? static_cast<uint32_t>(270 - slow_biased) << 23 : 0u));
  c.tiny_scale_word = _mm512_castsi512_ps(
      Splat(c.tiny_float_ok ? static_cast<uint32_t>(286 - slow_biased) << 23 : 0u));
  // At least the smallest normal's binade, which tiny magnitudes take (a
  // format with no normal numbers, e.g. exponent_bits 1 and no mantissa,
  // has max_bits below it).
  const int32_t cap_biased = std::max(static_cast<int32_t>(g.max_bits >> 23) + 1, min_biased);
  // slow_biased >= 2: every grid point is a normal float32 or zero, so the
  // float operations are exact; float32 denormals (which DAZ would read as
  // zero) take the full form.
  c.magic_ok = g.mantissa_bits <= 22 && cap_biased + 23 - g.mantissa_bits <= 254 && has_tiny;
  c.magic_cap_bits = Splat(static_cast<uint32_t>(cap_biased) << 23);
  c.magic_offset = Splat(static_cast<uint32_t>(23 - g.mantissa_bits) << 23);
  // Which low lanes the fast form cannot take.  The integer forms take b =
  // a >> 23 as the lane's binade, which is one off for float32 denormals
  // (rounding.h uses max(b, 1)): with tiny magnitudes, denormals are tiny
  // and RoundTinyMagnitude16 takes them; without, they take the full form.
  // The float form (magic) takes tiny magnitudes itself, but not denormals.
  constexpr uint32_t kDenormalMax = 0x007FFFFFu;
  for (int r = 0; r < 3; ++r) {
    const bool magic = r == static_cast<int>(Rounding::kNearestEven) && c.magic_ok;
    c.low_lanes_are_tiny[r] = has_tiny && !magic;
    c.low_lanes_max[r] = Splat(c.low_lanes_are_tiny[r] ? tiny_max : kDenormalMax);
  }
  return c;
}

// Magnitudes above the format's largest finite one become overflow_bits
// (the largest one itself when the format saturates: then a min does it).
template <Rounding kRounding>
inline __m512i ClampOverflow16(__m512i r, const FloatGrid16& c) {
  constexpr int kR = static_cast<int>(kRounding);
  if (c.saturates[kR]) return _mm512_min_epu32(r, c.max_bits);
  return _mm512_mask_mov_epi32(r, _mm512_cmpgt_epu32_mask(r, c.max_bits), c.overflow_bits[kR]);
}

// How a stochastic rounding's random bits reach the float-format forms below:
// kWord, the element's masked 32-bit word U (rounding.h); kHalf, with 16 random
// bits per element (philox.h, RandomWordOfElement), just those bits h in the
// low half of the lane, so that U = h << 16.  kHalf saves the shifts that
// would move h to the top of the lane and back down to the dropped field.
enum class RandomForm { kWord, kHalf };

// U as rounding.h takes it.
template <RandomForm kForm>
inline __m512i RandomWord16(__m512i random) {
  return kForm == RandomForm::kHalf ? _mm512_slli_epi32(random, 16) : random;
}

// Everything of RoundToFloatFormat after RoundMagnitudeToGrid.
template <Rounding kRounding>
inline __m512i FinishFloatFormat16(__m512i u, __m512i a, __m512i r, const FloatGrid16& c) {
  r = _mm512_maskz_mov_epi32(_mm512_cmpge_epu32_mask(r, c.flush_result_below), r);
  r = ClampOverflow16<kRounding>(r, c);
  r = _mm512_mask_mov_epi32(r, _mm512_cmpeq_epi32_mask(a, Splat(kInfBits)), c.inf_result);
  const __m512i sign = _mm512_and_si512(u, Splat(kSignMask));
  const __mmask16 keep_sign = _mm512_test_epi32_mask(r, r) | c.keep_zero_sign;
  const __m512i signed_r = _mm512_mask_or_epi32(r, keep_sign, r, sign);
  return _mm512_mask_or_epi32(signed_r, _mm512_cmpgt_epu32_mask(a, Splat(kInfBits)), sign,
                              Splat(kQuietNanBits));
}

// Input magnitude after the optional flush of input denormals.
inline __m512i FloatFormatMagnitude16(__m512i u, const FloatGrid16& c) {
  const __m512i a0 = _mm512_and_si512(u, Splat(kAbsMask));
  return _mm512_maskz_mov_epi32(_mm512_cmpge_epu32_mask(a0, c.flush_input_below), a0);
}

// RoundToFloatFormat (rounding.h) on 16 lanes.
template <Rounding kRounding>
inline __m512i RoundToFloatFormat16(__m512i u, const FloatGrid16& c, __m512i random_word) {
  const __m512i a = FloatFormatMagnitude16(u, c);
  const __m512i exponent =
      _mm512_sub_epi32(_mm512_max_epi32(_mm512_srli_epi32(a, 23), SplatInt(1)), SplatInt(127));
  const __m512i k =
      _mm512_sub_epi32(_mm512_max_epi32(exponent, c.min_exponent), c.mantissa_bits);
  const __m512i r = RoundMagnitudeToGrid16<kRounding>(a, k, random_word);
  return FinishFloatFormat16<kRounding>(u, a, r, c);
}

// The lanes of a vector that RoundToFloatFormatFast16 needs to know about:
// Inf and NaN (never its own), and the low lanes, 0 < a <= low_lanes_max,
// which are the format's tiny magnitudes where low_lanes_are_tiny (the fast
// form takes them) and else lanes for the full form.  Both are usually
// empty.
struct SpecialLanes16 {
  __mmask16 non_finite;
  __mmask16 low;
};

template <Rounding kRounding>
inline SpecialLanes16 FindSpecialLanes16(__m512i a, const FloatGrid16& c) {
  return {_mm512_cmpge_epu32_mask(a, Splat(kInfBits)),
          _mm512_mask_cmple_epu32_mask(_mm512_test_epi32_mask(a, a), a,
                                       c.low_lanes_max[static_cast<int>(kRounding)])};
}

// rounding.h's magnitude for tiny lanes, 0 < a < s = 2^(min_exponent - m)
// (`big` with dropped > 23): the kept multiple is 0 and the step is s, so
// the result is s or 0.
//   nearest_even  s iff a > s / 2 (a tie goes to 0, the even multiple)
//   stochastic    s iff fraction + U >= 2^32, fraction = floor(a / s * 2^32),
//                 which for a = sig * 2^(b' - 150) (b' = max(b, 1), sig the
//                 significand with its implicit bit) is sig shifted left by
//                 b' + 9 - slow_biased (at most 8; negative: right,
//                 truncating); with U = h << 16, iff (fraction >> 16) + h >=
//                 2^16, and fraction >> 16 is sig >> (slow_biased + 7 - b').
//   toward_zero   0
// The stochastic fraction also comes out of two float operations, where
// 2^-94 <= s <= 2^16 (c.tiny_float_ok; E4M3, E5M2 and FP16 all are): a * (2^32
// / s) (or 2^16 / s) only scales a by a power of two of at least 1, so for a
// normal float32 it is exact and normal (FTZ/DAZ play no part), below 2^32
// since a < s, and truncating it to an integer is the floor; for a float32
// denormal the true fraction is 0 (a * 2^32 / s < 2^-126 * 2^126), which
// the product gives too, flushed or not.
template <Rounding kRounding, RandomForm kForm>
inline __m512i RoundTinyMagnitude16(__m512i a, const FloatGrid16& c, __m512i random) {
  if (kRounding == Rounding::kNearestEven) {
    return _mm512_maskz_mov_epi32(_mm512_cmpgt_epu32_mask(a, c.tiny_half_bits), c.tiny_step_bits);
  }
  if (kRounding != Rounding::kStochastic) return _mm512_setzero_si512();
  if (c.tiny_float_ok) {
    constexpr int kExact = _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC;
    const __m512 scale = kForm == RandomForm::kHalf ? c.tiny_scale_half : c.tiny_scale_word;
    const __m512i fraction = _mm512_cvtt_roundps_epu32(
        _mm512_mul_round_ps(_mm512_castsi512_ps(a), scale, kExact), _MM_FROUND_NO_EXC);
    const __mmask16 up =
        kForm == RandomForm::kHalf
            ? _mm512_cmpge_epu32_mask(_mm512_add_epi32(fraction, random), Splat(0x10000u))
            : _mm512_cmplt_epu32_mask(_mm512_add_epi32(random, fraction), random);
    return _mm512_maskz_mov_epi32(up, c.tiny_step_bits);
  }
  const __m512i biased = _mm512_srli_epi32(a, 23);
  const __m512i biased_or_one = _mm512_max_epi32(biased, SplatInt(1));
  const __m512i mantissa = _mm512_and_si512(a, Splat(0x7FFFFFu));
  const __m512i significand =
      _mm512_mask_or_epi32(mantissa, _mm512_test_epi32_mask(biased, biased), mantissa,
                           Splat(0x800000u));
  __mmask16 up;
  if (kForm == RandomForm::kHalf) {
    const __m512i fraction_top = _mm512_srlv_epi32(
        significand, _mm512_sub_epi32(c.tiny_half_shift_base, biased_or_one));
    up = _mm512_cmpge_epu32_mask(_mm512_add_epi32(fraction_top, random), Splat(0x10000u));
  } else {
    const __m512i left = _mm512_sub_epi32(biased_or_one, c.tiny_word_shift_base);
    const __m512i zero = _mm512_setzero_si512();
    const __m512i fraction =
        _mm512_srlv_epi32(_mm512_sllv_epi32(significand, _mm512_max_epi32(left, zero)),
                          _mm512_max_epi32(_mm512_sub_epi32(zero, left), zero));
    up = _mm512_cmplt_epu32_mask(_mm512_add_epi32(random, fraction), random);
  }
  return _mm512_maskz_mov_epi32(up, c.tiny_step_bits);
}

// RoundToFloatFormat for the lanes that FindSpecialLanes16 lets through,
// given mantissa_bits <= 22 (c.fast_ok): finite lanes where rounding.h's
// `dropped` is in 1..23, zeros, and the `tiny` lanes (RoundTinyMagnitude16).
// For the others `big` is false and d == dropped in RoundMagnitudeToGrid:
//   dropped = max(min_exponent - exponent, 0) + 23 - mantissa_bits
//           = max(min_biased + 23 - m - b, 23 - m)
// with b = a >> 23 (b >= 1: denormals are tiny or take the full form), and
// the rounding is the bias-and-clear of RoundNormalRange16 with a per-lane
// d; the parity bit d may now be 23, where the significand has the implicit
// bit instead of a's exponent lsb.  A zero lane has b = 0 and rounds to zero
// whatever d: every term added is below 2^d, and the clear removes it (a
// shift by 32 or more gives 0).
//
// kPlain: the format has subnormals and -0 and keeps input denormals
// (c.plain), which makes the flush and the zero-sign steps no-ops.
//
// Stochastic: the term added to a is U >> (32 - d) (see RoundNormalRange16),
// which for U = h << 16 is h << (d - 16) when d >= 16 (c.fast_half_left);
// there the loop takes e = d - 16 directly, and the clear mask -1 << d as
// (-1 << 16) << e.
template <Rounding kRounding, bool kPlain, RandomForm kForm = RandomForm::kWord>
inline __m512i RoundToFloatFormatFast16(__m512i u, __m512i a, const FloatGrid16& c,
                                        __m512i random, __mmask16 tiny) {
  const __m512i biased = _mm512_srli_epi32(a, 23);
  __m512i r;
  if (kRounding == Rounding::kNearestEven && c.magic_ok) {
    // The same rounding in three float operations: with G = 2^g the grid
    // step's binade (g = max(e, min_exponent) for a in [2^e, 2^(e+1))) and
    // M = G * 2^(23 - m), the float32 sum a + M has the grid step as its
    // ulp, so rounding it to nearest even (embedded rounding: MXCSR's mode
    // plays no part) and subtracting M (exact) is rounding.h's
    // nearest-even.  M's lsb-free significand leaves the parity to a's kept
    // bits, and a carry into the next binade gives 2^(e+1) as the integer
    // form does; a tiny magnitude rounds to 0 or s with ties to 0, as
    // RoundTinyMagnitude16 does.  Magnitudes of 2^(max exponent + 1) and
    // more take G capped there: their result, whatever it is, exceeds
    // max_bits and saturates below.  Lanes here are zero or normal float32
    // (FindSpecialLanes16 sends denormals away), so FTZ/DAZ cannot touch a, M
    // or the result.
    const __m512i binade = _mm512_min_epu32(
        _mm512_max_epu32(_mm512_and_si512(a, Splat(0x7F800000u)), c.min_normal_bits),
        c.magic_cap_bits);
    const __m512 magic = _mm512_castsi512_ps(_mm512_add_epi32(binade, c.magic_offset));
    constexpr int kNearest = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
    const __m512 sum = _mm512_add_round_ps(_mm512_castsi512_ps(a), magic, kNearest);
    r = _mm512_castps_si512(_mm512_sub_round_ps(sum, magic, kNearest));
  } else if (kRounding == Rounding::kStochastic && kForm == RandomForm::kHalf &&
             c.fast_half_left) {
    const __m512i e = _mm512_max_epi32(_mm512_sub_epi32(c.fast_half_base, biased), c.fast_half_min);
    const __m512i keep = _mm512_sllv_epi32(c.fast_half_keep, e);
    r = _mm512_and_si512(_mm512_add_epi32(a, _mm512_sllv_epi32(random, e)), keep);
  } else {
    const __m512i d =
        _mm512_max_epi32(_mm512_sub_epi32(c.fast_dropped_base, biased), c.fast_dropped_min);
    const __m512i keep = _mm512_sllv_epi32(SplatInt(-1), d);
    __m512i biased_a;
    if (kRounding == Rounding::kNearestEven) {
      // 2^(d-1) - 1, and bit d of the significand (a with bit 23 set for normals).
      const __m512i half_minus_one = _mm512_srli_epi32(_mm512_andnot_si512(keep, SplatInt(-1)), 1);
      const __m512i significand_bits = _mm512_mask_or_epi32(
          a, _mm512_cmpge_epu32_mask(a, Splat(0x800000u)), a, Splat(0x800000u));
      const __m512i odd = _mm512_and_si512(_mm512_srlv_epi32(significand_bits, d), SplatInt(1));
      biased_a = _mm512_add_epi32(_mm512_add_epi32(a, half_minus_one), odd);
    } else if (kRounding == Rounding::kStochastic) {
      const __m512i term = _mm512_srlv_epi32(RandomWord16<kForm>(random),
                                             _mm512_sub_epi32(SplatInt(32), d));
      biased_a = _mm512_add_epi32(a, term);
    } else {
      biased_a = a;
    }
    r = _mm512_and_si512(biased_a, keep);
  }
  // Rare: tiny lanes (a branch, so that vectors without them pay nothing).
  if (tiny != 0) {
    r = _mm512_mask_mov_epi32(r, tiny, RoundTinyMagnitude16<kRounding, kForm>(a, c, random));
  }
  // The finite-input part of FinishFloatFormat16.
  if (!kPlain) r = _mm512_maskz_mov_epi32(_mm512_cmpge_epu32_mask(r, c.flush_result_below), r);
  r = ClampOverflow16<kRounding>(r, c);
  if (kPlain) return _mm512_ternarylogic_epi32(r, u, Splat(kSignMask), 0xF8);  // r | (u & sign)
  const __mmask16 keep_sign = _mm512_test_epi32_mask(r, r) | c.keep_zero_sign;
  return _mm512_mask_or_epi32(r, keep_sign, r, _mm512_and_si512(u, Splat(kSignMask)));
}

// True when every lane may take RoundNormalRange16: magnitudes (after the
// input flush) in the format's normal range [min_normal, max] (for
// nearest-even by float addition, below 2^(104 + m) too), or zero when the
// format has -0.
template <Rounding kRounding>
inline bool AllInNormalRange16(__m512i a, const FloatGrid16& c) {
  const __mmask16 normal = _mm512_cmplt_epu32_mask(
      _mm512_sub_epi32(a, c.min_normal_bits), c.normal_range[static_cast<int>(kRounding)]);
  const __mmask16 zero = _mm512_mask_testn_epi32_mask(c.zero_in_normal_form, a, a);
  return _kortestc_mask16_u8(normal, zero) != 0;
}

// RoundToFloatFormat for lanes accepted by AllInNormalRange16, given
// c.normal_ok.  For a normal magnitude of the format, rounding.h has
// exponent >= min_exponent, so k = exponent - m and dropped = d = 23 - m
// (1..22) for every lane, and `big` is false.  The result is at least
// min_normal (no flush to zero) and at most max, a point of the grid that a
// does not exceed (no overflow); inputs are finite (no Inf/NaN handling),
// and a zero input gives zero, which keeps its sign when the format has -0
// (the only case in which zeros come here).
//   nearest_even  as in RoundToFloatFormatFast16, with G = a's own binade:
//                 a + M, M = G * 2^(23 - m), has the grid step as its ulp;
//                 every operand and result is a normal float32 (a zero lane
//                 gives 0 + M - M = 0), and the sum stays finite because a
//                 is below 2^(104 + m).
//   stochastic    with f the dropped field (d bits) of a, up iff
//                 (f << (32-d)) + w >= 2^32 iff f + (w >> (32-d)) >= 2^d
//                 (the low 32-d bits of the sum are w's alone: no carry), so
//                 adding that term to a and clearing the dropped bits rounds
//                 (a carry out of the mantissa increments the exponent, as in
//                 rounding.h).  With U = h << 16 (RandomForm::kHalf),
//                 w >> (32 - d) is h shifted left by d - 16 or right by
//                 16 - d (truncating, as the shift of U does).
//   toward_zero   the clear alone.
template <Rounding kRounding, RandomForm kForm = RandomForm::kWord>
inline __m512i RoundNormalRange16(__m512i u, __m512i a, const FloatGrid16& c, __m512i random) {
  __m512i r;
  if (kRounding == Rounding::kNearestEven) {
    const __m512 magic = _mm512_castsi512_ps(
        _mm512_add_epi32(_mm512_and_si512(a, Splat(0x7F800000u)), c.magic_offset));
    constexpr int kNearest = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
    const __m512 sum = _mm512_add_round_ps(_mm512_castsi512_ps(a), magic, kNearest);
    r = _mm512_castps_si512(_mm512_sub_round_ps(sum, magic, kNearest));
  } else if (kRounding == Rounding::kStochastic) {
    __m512i term;
    if (kForm == RandomForm::kWord) {
      term = _mm512_srl_epi32(random, c.normal_fraction_shift);
    } else if (c.normal_half_direction > 0) {
      term = _mm512_sll_epi32(random, c.normal_half_shift);
    } else if (c.normal_half_direction < 0) {
      term = _mm512_srl_epi32(random, c.normal_half_shift);
    } else {
      term = random;  // bf16: 16 dropped bits, h is the term
    }
    r = _mm512_and_si512(_mm512_add_epi32(a, term), c.normal_keep);
  } else {
    r = _mm512_and_si512(a, c.normal_keep);
  }
  // sign | r  (0xF8: a | (b & c))
  return _mm512_ternarylogic_epi32(r, u, Splat(kSignMask), 0xF8);
}

// RoundToDfpGrid (rounding.h) on 16 lanes.
template <Rounding kRounding>
inline __m512i RoundToDfpGrid16(__m512i u, __m512i shared_exponent, __m512i random_word) {
  const __m512i sign = _mm512_and_si512(u, Splat(kSignMask));
  const __m512i a = _mm512_and_si512(u, Splat(kAbsMask));
  // Saturation at DfpGridMaxBits (rounding.h): FLT_MAX with its low
  // k - 104 bits cleared; a shift by 32 (k >= 128) gives 0.
  const __m512i cleared = ClampInt16(_mm512_sub_epi32(shared_exponent, SplatInt(104)), 0, 24);
  const __m512i count =
      _mm512_mask_mov_epi32(cleared, _mm512_cmpeq_epi32_mask(cleared, SplatInt(24)), SplatInt(32));
  const __m512i limit = _mm512_sllv_epi32(_mm512_srlv_epi32(Splat(0x7F7FFFFFu), count), count);
  const __m512i r = _mm512_or_si512(
      sign, _mm512_min_epu32(RoundMagnitudeToGrid16<kRounding>(a, shared_exponent, random_word),
                             limit));
  const __m512i special = _mm512_mask_or_epi32(u, _mm512_cmpgt_epu32_mask(a, Splat(kInfBits)),
                                               sign, Splat(kQuietNanBits));
  const __mmask16 passthrough =
      _mm512_cmpge_epu32_mask(a, Splat(kInfBits)) | _mm512_cmpeq_epi32_mask(a, _mm512_setzero_si512());
  return _mm512_mask_blend_epi32(passthrough, r, special);
}

// The lanes RoundToDfpGridFast16 takes, for grid exponents k: zeros, and
// 2^max(k, -126) <= a < 2^(k + 23) for -149 <= k <= 104 (as float32 bits:
// a - low < span, unsigned).  There a is a normal float32 whose grid step
// 2^k lies inside its significand (1 <= dropped <= 23 in rounding.h, with no
// max(b, 1) subtlety), and 2^(k + 23) is a normal float32.  DFP's exponents
// put every finite nonzero value of a tensor or block there but those below
// one grid step (rare) and, for k < -126, float32 denormals.
struct DfpFastRange16 {
  __m512i low, span;
};

inline DfpFastRange16 MakeDfpFastRange16(__m512i k) {
  const __mmask16 valid = _mm512_cmpge_epi32_mask(k, SplatInt(-149)) &
                          _mm512_cmple_epi32_mask(k, SplatInt(104));
  const __m512i low = _mm512_slli_epi32(
      _mm512_add_epi32(_mm512_max_epi32(k, SplatInt(-126)), SplatInt(127)), 23);
  // k + 23 >= -126 for valid lanes, so 2^(k + 23) is normal: (k + 150) << 23.
  const __m512i high = _mm512_slli_epi32(_mm512_add_epi32(k, SplatInt(150)), 23);
  return {low, _mm512_maskz_sub_epi32(valid, high, low)};
}

// True when every lane is one RoundToDfpGridFast16 takes.
inline bool AllInDfpFastRange16(__m512i a, const DfpFastRange16& range) {
  const __mmask16 inside =
      _mm512_cmplt_epu32_mask(_mm512_sub_epi32(a, range.low), range.span);
  const __mmask16 zero = _mm512_testn_epi32_mask(a, a);
  return _kortestc_mask16_u8(inside, zero) != 0;
}

// RoundToDfpGrid (rounding.h) for the lanes of AllInDfpFastRange16: with
// d = dropped = k + 150 - (a >> 23) in 1..23 the rounding is the
// bias-and-clear of RoundNormalRange16 with a per-lane d, and nearest-even
// is the float form of RoundToFloatFormatFast16 with M = 2^(k + 23), whose
// ulp is the grid step (a < M, so a + M is below 2M); the results are
// normal float32 or zero (a >= 2^-126 rounds to at least 2^-126, a
// multiple of the step), so FTZ/DAZ play no part.  A zero lane stays zero
// with its sign: M - M, or a term below 2^d that the clear removes (a shift
// by 32 or more gives 0).  `word` is U (RandomForm::kWord).
template <Rounding kRounding>
inline __m512i RoundToDfpGridFast16(__m512i u, __m512i a, __m512i k, __m512i word) {
  __m512i r;
  const __m512i k150 = _mm512_add_epi32(k, SplatInt(150));
  if (kRounding == Rounding::kNearestEven) {
    // k + 150 clamped to 1..254, a no-op where the range is valid
    // (k <= 104); elsewhere only zero lanes come here, and they need M
    // finite and normal to stay zero (2^(k + 23) would be Inf or worse).
    const __m512 magic = _mm512_castsi512_ps(_mm512_slli_epi32(ClampInt16(k150, 1, 254), 23));
    constexpr int kNearest = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
    const __m512 sum = _mm512_add_round_ps(_mm512_castsi512_ps(a), magic, kNearest);
    r = _mm512_castps_si512(_mm512_sub_round_ps(sum, magic, kNearest));
  } else {
    const __m512i d = _mm512_sub_epi32(k150, _mm512_srli_epi32(a, 23));
    const __m512i keep = _mm512_sllv_epi32(SplatInt(-1), d);
    if (kRounding == Rounding::kStochastic) {
      const __m512i term = _mm512_srlv_epi32(word, _mm512_sub_epi32(SplatInt(32), d));
      r = _mm512_and_si512(_mm512_add_epi32(a, term), keep);
    } else {
      r = _mm512_and_si512(a, keep);
    }
  }
  return _mm512_ternarylogic_epi32(r, u, Splat(kSignMask), 0xF8);  // r | (u & sign)
}

}  // namespace simd
}  // namespace tf_lowprec

#endif  // TF_LOWPREC_KERNELS_ROUNDING_AVX512_H_
