// One step of a low-precision accumulation, exactly: acc <- fmt(acc + p).
//
// Header-only, no TensorFlow includes (see number_formats.h).  The GEMM of
// LowprecAccumulationMatmul (accumulation_gemm.h) sums the exact products
// a * b of float32 operands into a running sum held in a FloatFormat, and
// rounds the *exact* sum acc + p to the format at every addition: one
// rounding, never two.  This file is that step, for any format, rounding mode
// and input, written in scalar double arithmetic:
//
//   1. p = double(a) * double(b) is exact: two 24-bit significands give at
//      most 48 bits, and the exponents (-298 .. 256) lie inside double's
//      normal range.
//   2. s = acc + p rounded to double, and TwoSum's error e = (acc + p) - s,
//      exact (Knuth; no overflow: |acc + p| < 2^257).
//   3. s is turned into the round-to-odd value of acc + p at 53 bits: where
//      e != 0 and s's last significand bit is even, s moves one ulp toward
//      acc + p (to the odd neighbour).  Rounding the round-to-odd value to a
//      format of at most 51 significand bits gives the same result as
//      rounding acc + p itself (Boldo & Melquiond 2008, "Emulation of FMA and
//      correctly rounded sums: proved algorithms using rounding to odd"), for
//      nearest-even and toward-zero; for stochastic rounding, whose decision
//      reads the top 32 bits of the dropped fraction (of which at most 16 are
//      compared with random bits here), the round-to-odd value and the exact
//      sum share those 16 bits whenever at least 17 bits are dropped, i.e.
//      for every format of at most 24 significand bits (>= 29 bits dropped).
//   4. RoundDoubleToFloatFormat rounds it to the format with rounding.h's
//      rules (grid 2^k with k = max(floor(log2|x|), min_exponent) -
//      mantissa_bits, flush after rounding without subnormals, overflow per
//      the format), reading the double's bits.
//
// NaN results are the canonical quiet NaN 0x7FC00000 (a GEMM's NaN has no
// meaningful sign); signed zeros follow IEEE addition (+0 unless both terms
// are -0) and the format's negative_zero flag.
//
// Compiled without FP contraction (setup.py builds with -std=c++17, where
// GCC's default is -ffp-contract=off): TwoSum needs each operation rounded.
#ifndef TF_LOWPREC_KERNELS_ACCUMULATION_STEP_H_
#define TF_LOWPREC_KERNELS_ACCUMULATION_STEP_H_

#include <cstdint>
#include <cstring>

#include "number_formats.h"
#include "philox.h"
#include "rounding.h"

namespace tf_lowprec {
namespace accumulation {
// Internal linkage: each tier's translation unit keeps its own copy,
// compiled with its own instruction set (no copy shared across tiers).
namespace {

inline uint64_t DoubleBits(double x) {
  uint64_t u;
  std::memcpy(&u, &x, sizeof(u));
  return u;
}
inline double BitsDouble(uint64_t u) {
  double x;
  std::memcpy(&x, &u, sizeof(x));
  return x;
}

constexpr uint64_t kDoubleSign = uint64_t{1} << 63;
constexpr uint64_t kDoubleAbs = ~kDoubleSign;
constexpr uint64_t kDoubleInf = uint64_t{0x7FF} << 52;

// acc + p rounded to odd at double precision (step 3 above); non-finite sums
// pass through.
inline double SumRoundedToOdd(double acc, double p) {
  const double s = acc + p;
  const double p_part = s - acc;
  const double e = (acc - (s - p_part)) + (p - p_part);
  const uint64_t bits = DoubleBits(s);
  // Without branches (the conditions are data dependent, about even odds):
  // adjust where s is finite, inexact and even; one ulp up in magnitude
  // where e has the sign of s (the exact sum is larger), else down.
  const uint64_t adjust = static_cast<uint64_t>((bits & kDoubleAbs) < kDoubleInf) &
                          static_cast<uint64_t>(e != 0.0) & (~bits & 1u);
  const uint64_t away = static_cast<uint64_t>(((DoubleBits(e) ^ bits) & kDoubleSign) == 0);
  return BitsDouble(bits + adjust * (2 * away - 1));
}

// Rounds the double x onto the float format `grid` (float32 bits of the
// result).  The same decisions as RoundToFloatFormat (rounding.h) on a
// 53-bit significand; random_word is the element's word (top bits used).
template <Rounding kRounding>
inline uint32_t RoundDoubleToFloatFormat(double x, const FloatGrid& grid, uint32_t random_word) {
  const uint64_t u = DoubleBits(x);
  const uint32_t sign = (u & kDoubleSign) != 0 ? kSignMask : 0u;
  uint64_t a = u & kDoubleAbs;
  if (a > kDoubleInf) return kQuietNanBits;
  if (a == kDoubleInf) {
    const uint32_t r = grid.infinities
                           ? kInfBits
                           : (grid.overflow == Overflow::kNan ? kQuietNanBits : grid.max_bits);
    return r == kQuietNanBits ? r : (sign | r);
  }
  // Below float32's smallest normal: zero when the format flushes inputs.
  if (grid.flush_input_denormals && a < (uint64_t{1023 - 126} << 52)) a = 0;
  uint32_t r = 0;
  if (a != 0) {
    // Doubles here are normal (|x| >= 2^-298 or 0): a = sig * 2^(exponent - 52).
    const int32_t exponent = static_cast<int32_t>(a >> 52) - 1023;
    const uint64_t significand = (a & ((uint64_t{1} << 52) - 1)) | (uint64_t{1} << 52);
    const int32_t k =
        (exponent > grid.min_exponent ? exponent : grid.min_exponent) - grid.mantissa_bits;
    const int32_t dropped = k - (exponent - 52);  // >= 29 for every valid format
    uint64_t kept, fraction;                      // fraction: 0.64 of one step
    if (dropped <= 63) {
      kept = significand >> dropped;
      fraction = significand << (64 - dropped);
    } else {
      kept = 0;
      fraction = dropped - 64 < 64 ? significand >> (dropped - 64) : 0;
    }
    bool up;
    if (kRounding == Rounding::kNearestEven) {
      constexpr uint64_t kHalf = uint64_t{1} << 63;
      up = (fraction > kHalf) | ((fraction == kHalf) & ((kept & 1u) != 0));
    } else if (kRounding == Rounding::kStochastic) {
      const uint32_t fraction32 = static_cast<uint32_t>(fraction >> 32);
      up = static_cast<uint32_t>(random_word + fraction32) < random_word;
    } else {
      up = false;
    }
    const uint64_t multiple = kept + (up ? 1u : 0u);
    // multiple * 2^k: at most 25 bits times a power of two with
    // k >= -149 - 23; exact in double, compared with the format's largest
    // value before it becomes a float32.
    const double magnitude = static_cast<double>(multiple) * BitsDouble(
        static_cast<uint64_t>(k + 1023) << 52);
    const double max_value = static_cast<double>(BitsFloat(grid.max_bits));
    if (magnitude > max_value) {
      const bool saturate =
          kRounding == Rounding::kTowardZero || grid.overflow == Overflow::kSaturate;
      r = saturate ? grid.max_bits
                   : (grid.overflow == Overflow::kInfinity ? kInfBits : kQuietNanBits);
      if (r == kQuietNanBits) return r;
    } else {
      r = FloatBits(static_cast<float>(magnitude));  // exact: a value of the format
      if (!grid.subnormals && r < grid.min_normal_bits) r = 0;  // flush after rounding
    }
  }
  return (r == 0 && !grid.negative_zero) ? 0u : (sign | r);
}

// fmt(acc + p) with one rounding.
template <Rounding kRounding>
inline float AccumulateStep(float acc, double p, const FloatGrid& grid, uint32_t random_word) {
  return BitsFloat(
      RoundDoubleToFloatFormat<kRounding>(SumRoundedToOdd(acc, p), grid, random_word));
}

// The random words of stochastic accumulation.  Output element e (row-major
// index in [batch, m, n]) makes `steps` = K + chunks - 1 rounded additions:
// step t < K adds product t (in k order), step K + c - 1 adds the sum of
// chunk c >= 1 to the total.  Step t of element e draws element e * steps + t
// of the rounding ops' stream with 16 random bits per element (philox.h:
// half a Philox word each), so the bits depend only on (seed, e, t): the
// same for any thread count, tiling or tier.
class StepRandom {
 public:
  explicit StepRandom(const PhiloxState& philox) : philox_(philox) {}

  uint32_t Word(uint64_t index) {
    const uint64_t word = index >> 1;
    const uint64_t block = word >> 2;
    if (block != block_) {
      uint32_t counter[4];
      PhiloxCounterAt(philox_, block, counter);
      PhiloxBlock(counter, philox_.key, words_);
      block_ = block;
    }
    return RandomWordOfElement(words_[word & 3], static_cast<int64_t>(index), true);
  }

 private:
  PhiloxState philox_;
  uint64_t block_ = ~uint64_t{0};
  uint32_t words_[4] = {0, 0, 0, 0};
};

}  // namespace
}  // namespace accumulation
}  // namespace tf_lowprec

#endif  // TF_LOWPREC_KERNELS_ACCUMULATION_STEP_H_
