// Block-scaled formats (OCP MX v1.0, NVFP4): the per-block and per-element
// steps of docs/block_formats.md, as scalar functions on float32 bit
// patterns.  The loops (block_scaled_loops_impl.h, one copy per instruction
// set) are built on them; the NumPy reference
// (tf_lowprec/numerics/reference.py::quantize_block_scaled) computes the same
// numbers from the definitions, and the tests compare their bits.
//
// Header-only, no TensorFlow includes (see number_formats.h).
//
// Power-of-two (E8M0) scales never divide: x is rounded directly onto the
// element grid shifted by the block's shared exponent s (step
// 2^(max(floor(log2 |x|), emin_elem + s) - m), largest value
// element.max * 2^s), in integer arithmetic, so that the result is the same
// with or without flush-to-zero / denormals-are-zero (TensorFlow's threads
// run with both set).  Float scales (NVFP4) follow the float64 steps of the
// document; their loops run inside ScopedIeeeFloatEnvironment so that
// float32 subnormals survive the conversions.
#ifndef TF_LOWPREC_KERNELS_BLOCK_SCALING_H_
#define TF_LOWPREC_KERNELS_BLOCK_SCALING_H_

#include <cmath>
#include <cstdint>
#include <string>

#include "number_formats.h"
#include "philox.h"
#include "rounding.h"

namespace tf_lowprec {

// E8M0's exponent range (its NaN code is not a scale).
constexpr int32_t kE8m0MinExponent = -127;
constexpr int32_t kE8m0MaxExponent = 127;

// What the loops need of a block-scaled format, derived once per op.
struct BlockScaledSpec {
  FloatGrid element;
  int32_t element_max_exponent = 0;  // emax_elem: exponent of the element's largest value
  int32_t block_size = 32;
  bool float_scale = false;  // false: E8M0 (power-of-two) scales
  FloatGrid scale;           // the scale format (float_scale only)
  double element_max = 0.0;  // E: the element's largest value
  double scale_max = 0.0;    // S: the scale format's largest value (float_scale only)
  bool tensor_scale = false;
  bool nan_blocks = true;    // nonfinite_blocks == "nan" (else "pass_through")
};

// Exactly the value of float32 bits `a` (a finite magnitude) as a double,
// without float arithmetic on a subnormal (which denormals-are-zero would
// read as 0).
inline double Float32MagnitudeToDouble(uint32_t a) {
  const uint32_t biased = a >> 23;
  if (biased == 0) return std::ldexp(static_cast<double>(a), -149);
  return std::ldexp(static_cast<double>((a & 0x7FFFFFu) | 0x800000u),
                    static_cast<int>(biased) - 150);
}

// floor(log2 a) of a finite non-zero float32 magnitude, subnormals included.
inline int32_t FloorLog2Bits(uint32_t a) {
  const int32_t biased = static_cast<int32_t>(a >> 23);
  if (biased != 0) return biased - 127;
  return (31 - __builtin_clz(a)) - 149;
}

// Validates the element and scale formats of a BlockScaledSpec and fills
// the derived fields.  Returns "" or a message naming the attribute.
inline std::string DeriveBlockScaledSpec(const FloatFormatSpec& element,
                                         const FloatFormatSpec* scale, int64_t block_size,
                                         bool tensor_scale, bool nan_blocks,
                                         BlockScaledSpec* spec) {
  std::string error = DeriveFloatGrid(element, &spec->element);
  if (!error.empty()) return "element format: " + error;
  if (element.overflow != Overflow::kSaturate) {
    return "overflow (of the element format) must be 'saturate': MX clamps values beyond "
           "the element's largest normal";
  }
  const FloatGrid& g = spec->element;
  if (g.max_bits == 0) return "the element format has no finite non-zero value";
  // Smallest element value 2^(min_exponent - mantissa_bits) >= 2^-22 keeps
  // every shifted grid step a float32 (>= 2^-149) for E8M0 scales >= 2^-127.
  if (g.min_exponent - g.mantissa_bits < -22) {
    return "the element format's smallest value must be at least 2^-22, got 2^" +
           std::to_string(g.min_exponent - g.mantissa_bits) +
           " (exponent_bias or mantissa_bits too large)";
  }
  if (block_size < 1) return "block_size must be >= 1, got " + std::to_string(block_size);
  if (block_size > (int64_t{1} << 30)) {
    return "block_size must be at most 2^30, got " + std::to_string(block_size);
  }
  spec->block_size = static_cast<int32_t>(block_size);
  // As lp.FloatFormat.max_exponent: the exponent of the top finite code, at
  // least that of the smallest normal.
  const int32_t top = FloorLog2Bits(g.max_bits);
  spec->element_max_exponent = top > g.min_exponent ? top : g.min_exponent;
  spec->element_max = Float32MagnitudeToDouble(g.max_bits);
  spec->float_scale = scale != nullptr;
  spec->tensor_scale = tensor_scale;
  spec->nan_blocks = nan_blocks;
  if (tensor_scale && scale == nullptr) {
    return "tensor_scale=true needs scale_kind='float' (an E8M0 scale spans float32's "
           "range already)";
  }
  if (scale != nullptr) {
    error = DeriveFloatGrid(*scale, &spec->scale);
    if (!error.empty()) return "scale format: " + error;
    if (spec->scale.max_bits == 0) return "the scale format has no finite non-zero value";
    spec->scale_max = Float32MagnitudeToDouble(spec->scale.max_bits);
  }
  return "";
}

// ---- Power-of-two (E8M0) scales ----

// Shared exponent s of a block whose largest finite magnitude has bits
// `amax_bits`: floor(log2 amax) - emax_elem within E8M0's range; -127 for a
// block without a non-zero finite value (microxcaling's choice).
inline int32_t MxSharedExponent(uint32_t amax_bits, int32_t element_max_exponent) {
  if (amax_bits == 0) return kE8m0MinExponent;
  return ClampInt(FloorLog2Bits(amax_bits) - element_max_exponent, kE8m0MinExponent,
                  kE8m0MaxExponent);
}

// The element grid shifted by 2^s, as the loops use it: the smallest grid
// exponent k_min = emin_elem + s - m (>= -149), and the bits of the largest
// value element.max * 2^s (exact: the element's significand has at most 24
// bits and the product lies in [2^-149, 2^128)).
struct ShiftedElementGrid {
  int32_t k_min;
  uint32_t limit_bits;
};

inline uint32_t ScaleBitsByPowerOfTwo(uint32_t a, int32_t s) {
  // a normal, the result exact (callers guarantee it).
  const int32_t exponent = static_cast<int32_t>(a >> 23) - 127 + s;
  const uint32_t significand = (a & 0x7FFFFFu) | 0x800000u;
  if (exponent >= -126) return static_cast<uint32_t>(exponent + 127) << 23 | (a & 0x7FFFFFu);
  return significand >> (-126 - exponent);
}

inline ShiftedElementGrid MakeShiftedElementGrid(const BlockScaledSpec& spec, int32_t s) {
  return {spec.element.min_exponent + s - spec.element.mantissa_bits,
          ScaleBitsByPowerOfTwo(spec.element.max_bits, s)};
}

// Rounds finite float32 `u` (bits) onto the element grid shifted by 2^s
// (given as `k_min` and `limit_bits`): the value round(x / 2^s) * 2^s of
// docs/block_formats.md, saturating; `random_word` masked (stochastic only).
template <Rounding kRounding>
inline uint32_t RoundToShiftedElement(uint32_t u, int32_t k_min, uint32_t limit_bits,
                                      const FloatGrid& element, uint32_t random_word) {
  const uint32_t sign = u & kSignMask;
  const uint32_t a = u & kAbsMask;
  const int32_t exponent = a == 0 ? k_min : FloorLog2Bits(a) - element.mantissa_bits;
  const int32_t k = exponent > k_min ? exponent : k_min;
  uint32_t r = RoundMagnitudeToGrid<kRounding>(a, k, random_word);
  r = r < limit_bits ? r : limit_bits;
  if (!element.subnormals) {
    // Flush after rounding below the shifted smallest normal 2^(k_min + m).
    r = r < PowerOfTwoBits(k_min + element.mantissa_bits) ? 0u : r;
  }
  return (r == 0 && !element.negative_zero) ? 0u : (sign | r);
}

// ---- Float scales (NVFP4) ----
// These use float64 arithmetic and conversions to float32 that must keep
// subnormals: call them inside ScopedIeeeFloatEnvironment.

// The tensor encode scale enc = f32(min(E * S / amax_tensor, FLT_MAX)), or 1.
inline double TensorEncodeScale(const BlockScaledSpec& spec, uint32_t tensor_amax_bits) {
  if (!spec.float_scale || !spec.tensor_scale || tensor_amax_bits == 0) return 1.0;
  const double ratio = spec.element_max * spec.scale_max /
                       Float32MagnitudeToDouble(tensor_amax_bits);
  const double flt_max = 3.4028234663852886e38;
  return static_cast<double>(static_cast<float>(ratio < flt_max ? ratio : flt_max));
}

// One block's float scale: s_b (0 for a zero block), the element encode
// factor e_b, and the decoded scale f32(s_b / enc) the op returns.
struct FloatBlockScale {
  double scale;           // s_b, in the scale format; 0: the block is zero
  float element_encode;   // e_b = f32(min(enc / s_b, FLT_MAX))
  float decoded;          // f32(s_b / enc), 0 for a zero block
};

inline FloatBlockScale MakeFloatBlockScale(const BlockScaledSpec& spec, uint32_t amax_bits,
                                           double encode) {
  const double decode = (Float32MagnitudeToDouble(amax_bits) / spec.element_max) * encode;
  const uint32_t decode_bits = FloatBits(static_cast<float>(decode));
  const uint32_t scale_bits =
      RoundToFloatFormat<Rounding::kNearestEven>(decode_bits, spec.scale, 0u);
  const double scale = Float32MagnitudeToDouble(scale_bits & kAbsMask);
  if (amax_bits == 0 || scale == 0.0) return {0.0, 1.0f, 0.0f};
  const double flt_max = 3.4028234663852886e38;
  const double e = encode / scale;
  return {scale, static_cast<float>(e < flt_max ? e : flt_max),
          static_cast<float>(scale / encode)};
}

// One finite element of a non-zero block: P = element(f32(x * e_b)), then
// f32(P * s_b / enc).  x * e_b is exact in float64, so the float32 product
// is f32 of it.
template <Rounding kRounding>
inline uint32_t RoundFloatScaledElement(uint32_t u, float element_encode, double scale,
                                        double encode, const FloatGrid& element,
                                        uint32_t random_word) {
  const float scaled = BitsFloat(u) * element_encode;
  const uint32_t p = RoundToFloatFormat<kRounding>(FloatBits(scaled), element, random_word);
  return FloatBits(static_cast<float>((static_cast<double>(BitsFloat(p)) * scale) / encode));
}

// ---- Non-finite values ----

// Output of a non-finite element passed through: NaN made quiet, Inf kept.
inline uint32_t PassThroughNonFinite(uint32_t u) {
  return (u & kAbsMask) > kInfBits ? ((u & kSignMask) | kQuietNanBits) : u;
}

// Output of any element of a block that becomes NaN: a quiet NaN with the
// element's sign.
inline uint32_t NanBlockElement(uint32_t u) { return (u & kSignMask) | kQuietNanBits; }

}  // namespace tf_lowprec

#endif  // TF_LOWPREC_KERNELS_BLOCK_SCALING_H_
