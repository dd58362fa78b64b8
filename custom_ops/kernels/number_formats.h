// Number formats of tf_lowprec: the C++ side of the one format definition.
//
// Header-only and free of TensorFlow includes, so that the per-ISA kernel
// translation units (compiled with different -m flags) can include it without
// mixing instruction sets into TensorFlow's inline functions.
//
// The Python class `tf_lowprec.FloatFormat` passes its raw fields (exponent
// bits, mantissa bits, bias, flags) as op attributes; `DeriveFloatGrid` here
// validates them and derives what the kernels need.  The Python side derives
// the same quantities in `tf_lowprec/formats.py`; tests/test_formats.py checks
// that both agree for every preset and for all exponent/mantissa pairs.
#ifndef TF_LOWPREC_KERNELS_NUMBER_FORMATS_H_
#define TF_LOWPREC_KERNELS_NUMBER_FORMATS_H_

#include <algorithm>
#include <cstdint>
#include <string>

namespace tf_lowprec {

enum class Rounding : int32_t { kNearestEven = 0, kStochastic = 1, kTowardZero = 2 };
enum class Overflow : int32_t { kSaturate = 0, kInfinity = 1, kNan = 2 };
// How the format encodes NaN (and whether it has infinities):
//   kIeee         top exponent code reserved for Inf and NaN (IEEE 754 style)
//   kAllOnes      no Inf; only the all-ones code S.1..1.1..1 is NaN (OCP "fn")
//   kNegativeZero no Inf; the code of -0 is NaN, so there is no -0 ("fnuz")
//   kNone         no Inf, no NaN: every code is a finite number
enum class NanEncoding : int32_t { kIeee = 0, kAllOnes = 1, kNegativeZero = 2, kNone = 3 };

struct FloatFormatSpec {
  int32_t exponent_bits = 8;
  int32_t mantissa_bits = 7;
  int32_t exponent_bias = 127;
  bool subnormals = true;
  NanEncoding nan_encoding = NanEncoding::kIeee;
  Overflow overflow = Overflow::kInfinity;
  bool flush_input_denormals = false;
};

// What the rounding kernels need, derived once per op instance.
struct FloatGrid {
  int32_t min_exponent = -126;  // exponent of the smallest normal, 1 - bias
  int32_t mantissa_bits = 7;
  uint32_t max_bits = 0;         // float32 bits of the largest finite magnitude
  uint32_t min_normal_bits = 0;  // float32 bits of 2^min_exponent
  bool subnormals = true;
  bool infinities = true;
  bool has_nan = true;
  bool negative_zero = true;
  bool flush_input_denormals = false;
  Overflow overflow = Overflow::kInfinity;
};

// float32 bits of 2^k for -149 <= k <= 127.
inline uint32_t PowerOfTwoBits(int32_t k) {
  return k >= -126 ? static_cast<uint32_t>(k + 127) << 23
                   : uint32_t{1} << (k + 149);
}

// Validates `spec` and fills `grid`.  Returns "" on success, else a message
// naming the offending argument and the allowed values.
inline std::string DeriveFloatGrid(const FloatFormatSpec& spec, FloatGrid* grid) {
  const int32_t e = spec.exponent_bits, m = spec.mantissa_bits;
  if (e < 1 || e > 8) {
    return "exponent_bits must be in 1..8, got " + std::to_string(e);
  }
  if (m < 0 || m > 23) {
    return "mantissa_bits must be in 0..23, got " + std::to_string(m);
  }
  const bool infinities = spec.nan_encoding == NanEncoding::kIeee;
  if (spec.overflow == Overflow::kInfinity && !infinities) {
    return "overflow='infinity' needs a format with infinities "
           "(nan_encoding='ieee'); use 'saturate' or 'nan'";
  }
  if (spec.overflow == Overflow::kNan && spec.nan_encoding == NanEncoding::kNone) {
    return "overflow='nan' needs a format with a NaN encoding; use 'saturate'";
  }
  // The same range as lp.FloatFormat's (formats.py), checked first so that
  // the exponent arithmetic below cannot overflow.
  constexpr int32_t kMaxAbsBias = 1 << 20;
  if (spec.exponent_bias < -kMaxAbsBias || spec.exponent_bias > kMaxAbsBias) {
    return "exponent_bias must be an integer in -1048576..1048576, got " +
           std::to_string(spec.exponent_bias);
  }
  const int32_t min_exponent = 1 - spec.exponent_bias;
  if (min_exponent < -126) {
    return "exponent_bias too large: the smallest normal 2^" +
           std::to_string(min_exponent) +
           " is below float32's smallest normal 2^-126 (exponent_bias must be <= 127)";
  }
  // Largest finite code: top exponent code and mantissa field.
  int32_t top_code = (1 << e) - 1;
  int32_t top_mantissa = (1 << m) - 1;
  switch (spec.nan_encoding) {
    case NanEncoding::kIeee:
      top_code -= 1;
      break;
    case NanEncoding::kAllOnes:
      if (m == 0) {
        top_code -= 1;
      } else {
        top_mantissa -= 1;
      }
      break;
    case NanEncoding::kNegativeZero:
    case NanEncoding::kNone:
      break;
  }
  // As lp.FloatFormat.max_exponent: the exponent of the top finite code, at
  // least that of the smallest normal, must be a float32 exponent (also
  // where the format has no finite non-zero value, so that the op and the
  // Python class accept the same formats).
  const int32_t max_exponent = std::max(top_code, 1) - spec.exponent_bias;
  if (max_exponent > 127) {
    return "exponent_bias too small: the largest finite value 2^" +
           std::to_string(max_exponent) + " exceeds float32's range (exponent_bias must be "
           "at least " + std::to_string(std::max(top_code, 1) - 127) + ")";
  }
  // Value of the largest finite code as (integer significand) * 2^scale.
  int64_t significand;
  int32_t scale;
  if (top_code >= 1) {
    significand = (int64_t{1} << m) + top_mantissa;
    scale = top_code - spec.exponent_bias - m;
  } else {  // only subnormal codes are finite (exponent_bits == 1, IEEE style)
    significand = spec.subnormals ? top_mantissa : 0;
    scale = min_exponent - m;
  }
  uint32_t max_bits = 0;
  if (significand > 0) {
    // Normalise significand to 24 bits and build float32 bits.
    int32_t msb = 63 - __builtin_clzll(static_cast<uint64_t>(significand));
    int32_t exponent = scale + msb;  // value in [2^exponent, 2^(exponent+1))
    if (exponent > 127) {
      return "exponent_bias too small: the largest finite value 2^" +
             std::to_string(exponent) + " exceeds float32's range";
    }
    uint64_t mant = static_cast<uint64_t>(significand) << (23 - msb);
    if (exponent >= -126) {
      max_bits = static_cast<uint32_t>(exponent + 127) << 23 |
                 static_cast<uint32_t>(mant & 0x7FFFFF);
    } else {
      max_bits = static_cast<uint32_t>(mant >> (-126 - exponent));
    }
  }
  grid->min_exponent = min_exponent;
  grid->mantissa_bits = m;
  grid->max_bits = max_bits;
  grid->min_normal_bits = PowerOfTwoBits(min_exponent);
  grid->subnormals = spec.subnormals;
  grid->infinities = infinities;
  grid->has_nan = spec.nan_encoding != NanEncoding::kNone;
  grid->negative_zero = spec.nan_encoding != NanEncoding::kNegativeZero;
  grid->flush_input_denormals = spec.flush_input_denormals;
  grid->overflow = spec.overflow;
  return "";
}

// Dynamic fixed point: `bits`-bit two's complement mantissas (used
// symmetrically, |I| <= 2^(bits-1) - 1) with one shared exponent per block.
struct DfpSpec {
  int32_t bits = 16;
  int32_t extra_shift = 0;  // extra right shift of the mantissas (headroom)
};

inline std::string ValidateDfpSpec(const DfpSpec& spec) {
  if (spec.bits < 2 || spec.bits > 24) {
    return "bits must be in 2..24, got " + std::to_string(spec.bits);
  }
  if (spec.extra_shift < 0 || spec.extra_shift > spec.bits - 2) {
    return "extra_shift must be in 0..bits-2, got " + std::to_string(spec.extra_shift);
  }
  return "";
}

// Shared exponent E_s of a block whose largest finite magnitude has float32
// bits `max_abs_bits` (0 for an all-zero or all-non-finite block):
//   E_s = floor(log2 max|x|) - (bits - 2) + extra_shift
// and, when extra_shift == 0 and max|x| > (2^(bits-1) - 1) * 2^E_s (so that
// rounding could carry the largest mantissa to 2^(bits-1)), E_s + 1.
// The mantissas x / 2^E_s are then at most 2^(bits-1) - 1 in magnitude for
// every rounding mode.  Returns kDfpNoScale for a block with nothing to
// scale (its elements are zeros or non-finite, which pass through unchanged).
constexpr int32_t kDfpNoScale = -1024;

inline int32_t DfpSharedExponent(uint32_t max_abs_bits, const DfpSpec& spec) {
  if (max_abs_bits == 0) return kDfpNoScale;
  int32_t biased = static_cast<int32_t>(max_abs_bits >> 23);
  uint32_t sig24;
  int32_t exponent;
  if (biased != 0) {
    sig24 = (max_abs_bits & 0x7FFFFF) | 0x800000;
    exponent = biased - 127;
  } else {  // float32 subnormal: normalise
    int32_t msb = 31 - __builtin_clz(max_abs_bits);
    sig24 = max_abs_bits << (23 - msb);
    exponent = msb - 149;
  }
  int32_t shared = exponent - (spec.bits - 2) + spec.extra_shift;
  if (spec.extra_shift == 0 &&
      sig24 > (uint32_t{1} << 24) - (uint32_t{1} << (25 - spec.bits))) {
    shared += 1;
  }
  return shared;
}

}  // namespace tf_lowprec

#endif  // TF_LOWPREC_KERNELS_NUMBER_FORMATS_H_
