// GEMM with a low-precision accumulator, compiled once per tier.
//
// Included by accumulation_gemm_{portable,avx2,avx512}.cc, which define
// TF_LOWPREC_ACC_ISA (the namespace of this copy), TF_LOWPREC_ACC_ISA_NAME
// and TF_LOWPREC_ACC_VECTOR (1: the AVX2/F16C/FMA kernel below is compiled).
//
// Three ways to compute the same bits (accumulation_gemm.h states them):
//
// - ExactRows: every step by accumulation_step.h (double arithmetic, four
//   output elements at a time).  All rounding modes; every tier has it, and
//   it is the whole portable tier.
// - RunFast with short operands (vector tiers, nearest-even, formats of at
//   most 21 mantissa bits with subnormals and without input flushing, every
//   operand 0 or within 2^+-60 with at most 12 significant bits, so that
//   every product is a float32): ShortStepDeferred8 rounds the float32 sum to
//   odd (TwoSum) and then to the format by float addition; lanes that
//   overflow or are not finite make the tile's chunk be recomputed by the
//   definition.
// - RunFast otherwise (vector tiers, nearest-even, formats with subnormals
//   and without input flushing): 8 output columns per vector, each lane's
//   running sum a float32 register holding a value of the format:
//       f  = fma(a, b, acc)          round-to-nearest float32 of acc + a*b
//       h  = fmt(f)                  F16C for IEEE FP16, else integer code
//   fmt(f) equals fmt(acc + a*b) unless f is a midpoint of the format's grid
//   (then the float32 rounding may have decided the tie) or the step
//   overflows (the exact sum may lie below float32's overflow but f is Inf).
//   Midpoints are found without knowing the grid: with t = f - h (exact),
//   f is a midpoint iff t != 0 and f + t (the other neighbour, exact) is a
//   value of the format.  Midpoints the FMA computed exactly are kept; the
//   others, and lanes whose f or h is not a finite value of the format, are
//   recomputed by AccumulateStep: the result is accumulation_step.h's in
//   every lane.  (The format's grid is at least twice as fine as float32's
//   wherever it rounds, so its midpoints are float32 values: a midpoint
//   cannot be missed.)
#ifndef TF_LOWPREC_ACC_ISA
#error "define TF_LOWPREC_ACC_ISA before including accumulation_gemm_impl.h"
#endif

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "accumulation_gemm.h"
#include "accumulation_step.h"
#include "number_formats.h"
#include "rounding.h"

#if TF_LOWPREC_ACC_VECTOR
#include <immintrin.h>
#endif

namespace tf_lowprec {
namespace accumulation_gemm {
namespace TF_LOWPREC_ACC_ISA {
namespace {

using accumulation::AccumulateStep;
using accumulation::StepRandom;

// a(i, k) = a[i * a_row + k * a_col], b(k, j) = b[k * b_row + j * b_col].
struct Operands {
  const float* a;
  int64_t a_row, a_col;
  const float* b;
  int64_t b_row, b_col;
};

Operands BatchOperands(const Problem& p, int64_t batch) {
  Operands o;
  o.a = p.a + batch * p.a_batch_stride;
  o.a_row = p.transpose_a ? 1 : p.k;
  o.a_col = p.transpose_a ? p.m : 1;
  o.b = p.b + batch * p.b_batch_stride;
  o.b_row = p.transpose_b ? 1 : p.n;
  o.b_col = p.transpose_b ? p.k : 1;
  return o;
}

int64_t ChunkLength(const Problem& p) {
  return p.chunk_size > 0 && p.chunk_size < p.k ? p.chunk_size : p.k;
}

// kGroup output elements (i, j .. j + kGroup - 1) by the definition; element
// j + g's step t draws random word first[g] + t.  Several independent sums
// at once let the CPU overlap their dependent chains of double operations.
template <Rounding kRounding, int kGroup>
void ExactElements(const Problem& p, const Operands& o, int64_t i, int64_t j,
                   const uint64_t* first, StepRandom* random, float* out) {
  const int64_t k_total = p.k;
  const int64_t chunk = ChunkLength(p);
  float total[kGroup], acc[kGroup];
  for (int g = 0; g < kGroup; ++g) total[g] = 0.0f;
  int64_t chunk_index = 0;
  for (int64_t c0 = 0; c0 < k_total; c0 += chunk, ++chunk_index) {
    const int64_t c1 = std::min(k_total, c0 + chunk);
    for (int g = 0; g < kGroup; ++g) acc[g] = 0.0f;
    for (int64_t k = c0; k < c1; ++k) {
      const double a = static_cast<double>(o.a[i * o.a_row + k * o.a_col]);
      for (int g = 0; g < kGroup; ++g) {
        const double product = a * static_cast<double>(o.b[k * o.b_row + (j + g) * o.b_col]);
        const uint32_t word =
            kRounding == Rounding::kStochastic ? random[g].Word(first[g] + k) : 0u;
        acc[g] = AccumulateStep<kRounding>(acc[g], product, p.grid, word);
      }
    }
    for (int g = 0; g < kGroup; ++g) {
      if (chunk_index == 0) {
        total[g] = acc[g];
      } else {
        const uint32_t word = kRounding == Rounding::kStochastic
                                  ? random[g].Word(first[g] + k_total + chunk_index - 1)
                                  : 0u;
        total[g] = AccumulateStep<kRounding>(total[g], static_cast<double>(acc[g]), p.grid,
                                             word);
      }
    }
  }
  for (int g = 0; g < kGroup; ++g) out[g] = total[g];
}

struct ExactJob {
  const Problem* p;
  int64_t steps;
};

// Output rows [begin, end) of the flattened [batch * m] rows.
template <Rounding kRounding>
void ExactRows(void* arg, int64_t begin, int64_t end) {
  const ExactJob& job = *static_cast<const ExactJob*>(arg);
  const Problem& p = *job.p;
  constexpr int kGroup = 4;
  StepRandom random[kGroup] = {StepRandom(p.philox), StepRandom(p.philox),
                               StepRandom(p.philox), StepRandom(p.philox)};
  for (int64_t row = begin; row < end; ++row) {
    const Operands o = BatchOperands(p, row / p.m);
    const int64_t i = row % p.m;
    float* out = p.out + row * p.n;
    uint64_t first[kGroup];
    int64_t j = 0;
    for (; j + kGroup <= p.n; j += kGroup) {
      for (int g = 0; g < kGroup; ++g) {
        first[g] = static_cast<uint64_t>(row * p.n + j + g) * static_cast<uint64_t>(job.steps);
      }
      ExactElements<kRounding, kGroup>(p, o, i, j, first, random, out + j);
    }
    for (; j < p.n; ++j) {
      first[0] = static_cast<uint64_t>(row * p.n + j) * static_cast<uint64_t>(job.steps);
      ExactElements<kRounding, 1>(p, o, i, j, first, random, out + j);
    }
  }
}

// Copies of a as [m, k] and b as [n, k] (k contiguous for both, as
// ExactElements reads them), where the operands are laid out otherwise.
struct KContiguous {
  std::vector<float> a, b;
};

Problem WithKContiguousOperands(const Problem& p, KContiguous* copies) {
  Problem q = p;
  if (p.transpose_a) {
    const int64_t batches = p.a_batch_stride == 0 ? 1 : p.batch;
    copies->a.resize(static_cast<size_t>(batches * p.m * p.k));
    for (int64_t batch = 0; batch < batches; ++batch) {
      const float* src = p.a + batch * p.a_batch_stride;  // [k, m]
      float* dst = copies->a.data() + batch * p.m * p.k;
      for (int64_t k = 0; k < p.k; ++k)
        for (int64_t i = 0; i < p.m; ++i) dst[i * p.k + k] = src[k * p.m + i];
    }
    q.a = copies->a.data();
    q.a_batch_stride = p.a_batch_stride == 0 ? 0 : p.m * p.k;
    q.transpose_a = false;
  }
  if (!p.transpose_b) {
    const int64_t batches = p.b_batch_stride == 0 ? 1 : p.batch;
    copies->b.resize(static_cast<size_t>(batches * p.n * p.k));
    for (int64_t batch = 0; batch < batches; ++batch) {
      const float* src = p.b + batch * p.b_batch_stride;  // [k, n]
      float* dst = copies->b.data() + batch * p.n * p.k;
      for (int64_t k = 0; k < p.k; ++k)
        for (int64_t j = 0; j < p.n; ++j) dst[j * p.k + k] = src[k * p.n + j];
    }
    q.b = copies->b.data();
    q.b_batch_stride = p.b_batch_stride == 0 ? 0 : p.n * p.k;
    q.transpose_b = true;
  }
  return q;
}

void RunExact(const Problem& problem, const ParallelFor& parallel) {
  KContiguous copies;
  const Problem p = WithKContiguousOperands(problem, &copies);
  ExactJob job{&p, StepsPerElement(p.k, p.chunk_size)};
  void (*fn)(void*, int64_t, int64_t) =
      p.rounding == Rounding::kStochastic   ? ExactRows<Rounding::kStochastic>
      : p.rounding == Rounding::kTowardZero ? ExactRows<Rounding::kTowardZero>
                                            : ExactRows<Rounding::kNearestEven>;
  // About 60 cycles per step and element (double arithmetic, branches).
  const int64_t cost = std::max<int64_t>(1, p.n * std::max<int64_t>(p.k, 1) * 60);
  parallel.run(parallel.context, p.batch * p.m, cost, fn, &job);
}

#if TF_LOWPREC_ACC_VECTOR

constexpr int kLanes = 8;
constexpr int kMaxRows = 4;     // rows of an output tile
constexpr int kMaxVectors = 2;  // vectors of 8 columns of an output tile
constexpr int kPanelWidth = kMaxVectors * kLanes;

// The format's constants as vectors, for the generic nearest-even rounding.
struct Format8 {
  __m256i min_exponent, mantissa_bits, max_bits, overflow_bits, keep_zero_sign;
  __m256 max_value, infinity, zero;
  // ShortStep8's rounding by float addition (RoundByMagic8).
  __m256i magic_min_bits;   // float32 exponent field of 2^min_exponent
  __m256i magic_offset;     // (23 - mantissa_bits) << 23, plus the 0.5 of 1.5
  __m256i zero_sign_mask;   // the sign bit where the format has -0, else 0
  __m256 short_limit;       // sums at or above it take the definition's path
  FloatGrid grid;
};

Format8 MakeFormat8(const FloatGrid& g) {
  Format8 c;
  c.min_exponent = _mm256_set1_epi32(g.min_exponent);
  c.mantissa_bits = _mm256_set1_epi32(g.mantissa_bits);
  c.max_bits = _mm256_set1_epi32(static_cast<int>(g.max_bits));
  const uint32_t overflow = g.overflow == Overflow::kSaturate ? g.max_bits
                            : g.overflow == Overflow::kInfinity ? kInfBits
                                                                : kQuietNanBits;
  c.overflow_bits = _mm256_set1_epi32(static_cast<int>(overflow));
  c.keep_zero_sign = _mm256_set1_epi32(g.negative_zero ? -1 : 0);
  c.max_value = _mm256_set1_ps(BitsFloat(g.max_bits));
  c.infinity = _mm256_set1_ps(BitsFloat(kInfBits));
  c.zero = _mm256_setzero_ps();
  c.magic_min_bits = _mm256_set1_epi32((g.min_exponent + 127) << 23);
  c.magic_offset = _mm256_set1_epi32(((23 - g.mantissa_bits) << 23) | 0x400000);
  c.zero_sign_mask = _mm256_set1_epi32(g.negative_zero ? static_cast<int>(kSignMask) : 0);
  // RoundByMagic8's constant 1.5 * 2^(e + 23 - m) must be finite: e + 23 - m <= 127.
  const int32_t limit_exponent = std::min(128, 127 - (23 - g.mantissa_bits));
  c.short_limit = _mm256_set1_ps(limit_exponent >= 128 ? BitsFloat(kInfBits)
                                                       : std::ldexp(1.0f, limit_exponent));
  c.grid = g;
  return c;
}

// Nearest-even rounding of finite float32 lanes onto a format with
// subnormals and without input flushing (rounding.h's RoundToFloatFormat;
// lanes holding Inf or NaN give unspecified values, which the caller
// recomputes).
inline __m256 RoundGeneric8(__m256 f, const Format8& c) {
  const __m256i u = _mm256_castps_si256(f);
  const __m256i sign = _mm256_and_si256(u, _mm256_set1_epi32(static_cast<int>(kSignMask)));
  const __m256i a = _mm256_and_si256(u, _mm256_set1_epi32(static_cast<int>(kAbsMask)));
  const __m256i biased = _mm256_srli_epi32(a, 23);
  const __m256i exponent =
      _mm256_sub_epi32(_mm256_max_epi32(biased, _mm256_set1_epi32(1)), _mm256_set1_epi32(127));
  const __m256i k = _mm256_sub_epi32(_mm256_max_epi32(exponent, c.min_exponent), c.mantissa_bits);
  // Significand bits below the grid step: >= 0 for every valid format.
  const __m256i dropped = _mm256_sub_epi32(k, _mm256_sub_epi32(exponent, _mm256_set1_epi32(23)));
  const __m256i one = _mm256_set1_epi32(1);
  // 1 <= dropped <= 23: add half a step minus one plus the kept lsb, clear.
  const __m256i normal_lanes = _mm256_cmpgt_epi32(biased, _mm256_setzero_si256());
  const __m256i parity_source =
      _mm256_or_si256(a, _mm256_and_si256(normal_lanes, _mm256_set1_epi32(0x800000)));
  const __m256i lsb = _mm256_and_si256(_mm256_srlv_epi32(parity_source, dropped), one);
  const __m256i half_minus_one =
      _mm256_sub_epi32(_mm256_sllv_epi32(one, _mm256_sub_epi32(dropped, one)), one);
  const __m256i keep = _mm256_sub_epi32(_mm256_setzero_si256(), _mm256_sllv_epi32(one, dropped));
  const __m256i rounded_in = _mm256_and_si256(
      _mm256_add_epi32(_mm256_add_epi32(a, half_minus_one), lsb), keep);
  // dropped >= 24: a < 2^k; the neighbours are 0 and 2^k (k >= -148 here),
  // up iff a > 2^(k-1) (the tie goes to the even 0).
  const __m256i k_minus_one = _mm256_sub_epi32(k, one);
  const __m256i normal_k = _mm256_cmpgt_epi32(k, _mm256_set1_epi32(-127));
  const __m256i step_bits = _mm256_blendv_epi8(
      _mm256_sllv_epi32(one, _mm256_add_epi32(k, _mm256_set1_epi32(149))),
      _mm256_slli_epi32(_mm256_add_epi32(k, _mm256_set1_epi32(127)), 23), normal_k);
  const __m256i normal_half = _mm256_cmpgt_epi32(k_minus_one, _mm256_set1_epi32(-127));
  const __m256i half_bits = _mm256_blendv_epi8(
      _mm256_sllv_epi32(one, _mm256_add_epi32(k_minus_one, _mm256_set1_epi32(149))),
      _mm256_slli_epi32(_mm256_add_epi32(k_minus_one, _mm256_set1_epi32(127)), 23), normal_half);
  const __m256i rounded_big =
      _mm256_and_si256(_mm256_cmpgt_epi32(a, half_bits), step_bits);
  const __m256i big = _mm256_cmpgt_epi32(dropped, _mm256_set1_epi32(23));
  const __m256i none = _mm256_cmpeq_epi32(dropped, _mm256_setzero_si256());
  __m256i r = _mm256_blendv_epi8(_mm256_blendv_epi8(rounded_in, rounded_big, big), a, none);
  r = _mm256_blendv_epi8(r, c.overflow_bits, _mm256_cmpgt_epi32(r, c.max_bits));
  // -0 only where the format has it.
  const __m256i zero_result = _mm256_cmpeq_epi32(r, _mm256_setzero_si256());
  const __m256i signed_r = _mm256_or_si256(
      r, _mm256_andnot_si256(_mm256_andnot_si256(c.keep_zero_sign, zero_result), sign));
  return _mm256_castsi256_ps(signed_r);
}

template <bool kHalf>
inline __m256 RoundFormat8(__m256 f, const Format8& c) {
  if (kHalf) {
    return _mm256_cvtph_ps(_mm256_cvtps_ph(f, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  }
  return RoundGeneric8(f, c);
}

// The lanes in `bad` recomputed by the definition (rare: ties of the
// float32 rounding, overflow, NaN/Inf).
__attribute__((noinline)) __m256 FixLanes(__m256 acc, __m256 a, __m256 b, __m256 h, int bad,
                                          const FloatGrid& grid) {
  alignas(32) float acc_lanes[kLanes], a_lanes[kLanes], b_lanes[kLanes], h_lanes[kLanes];
  _mm256_store_ps(acc_lanes, acc);
  _mm256_store_ps(a_lanes, a);
  _mm256_store_ps(b_lanes, b);
  _mm256_store_ps(h_lanes, h);
  for (int lane = 0; lane < kLanes; ++lane) {
    if ((bad >> lane) & 1) {
      const double product =
          static_cast<double>(a_lanes[lane]) * static_cast<double>(b_lanes[lane]);
      h_lanes[lane] = AccumulateStep<Rounding::kNearestEven>(acc_lanes[lane], product, grid, 0u);
    }
  }
  return _mm256_load_ps(h_lanes);
}

// The lanes of FastStep8 that need a second look: `tie` (f is a midpoint)
// and `not_finite` lanes.  A tie is what the format's rounding of f says
// when f is the exact sum (then h, nearest-even of the exact midpoint, is
// right): exact where the product a * b is a float32 (its FMA error
// fma(a, b, -p) is 0, the product not so small that the error could
// underflow) and TwoSum's error of acc + p is 0.  Operands with short
// significands (FP8, BF16) make exact ties common.  Other lanes are
// recomputed by the definition.
__attribute__((noinline)) __m256 ResolveLanes(__m256 acc, __m256 a, __m256 b, __m256 h,
                                              __m256 tie, __m256 not_finite,
                                              const FloatGrid& grid) {
  const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(static_cast<int>(kAbsMask)));
  const __m256 zero = _mm256_setzero_ps();
  const __m256 p = _mm256_mul_ps(a, b);
  const __m256 p_error = _mm256_fmsub_ps(a, b, p);
  const __m256 s = _mm256_add_ps(acc, p);
  const __m256 p_part = _mm256_sub_ps(s, acc);
  const __m256 s_error = _mm256_add_ps(_mm256_sub_ps(acc, _mm256_sub_ps(s, p_part)),
                                       _mm256_sub_ps(p, p_part));
  const __m256 product_zero =
      _mm256_or_ps(_mm256_cmp_ps(a, zero, _CMP_EQ_OQ), _mm256_cmp_ps(b, zero, _CMP_EQ_OQ));
  const __m256 product_large = _mm256_cmp_ps(_mm256_and_ps(p, abs_mask),
                                             _mm256_set1_ps(0x1p-100f), _CMP_GE_OQ);
  const __m256 exact = _mm256_and_ps(
      _mm256_and_ps(_mm256_cmp_ps(p_error, zero, _CMP_EQ_OQ),
                    _mm256_cmp_ps(s_error, zero, _CMP_EQ_OQ)),
      _mm256_or_ps(product_zero, product_large));
  const int bad = _mm256_movemask_ps(_mm256_or_ps(_mm256_andnot_ps(exact, tie), not_finite));
  return bad == 0 ? h : FixLanes(acc, a, b, h, bad, grid);
}

// fmt(acc + a * b) on 8 lanes, nearest-even (see the top of this file).
template <bool kHalf>
inline __m256 FastStep8(__m256 acc, __m256 a, __m256 b, const Format8& c) {
  const __m256 f = _mm256_fmadd_ps(a, b, acc);
  const __m256 h = RoundFormat8<kHalf>(f, c);
  const __m256 t = _mm256_sub_ps(f, h);
  const __m256 g = _mm256_add_ps(f, t);
  const __m256 tie = _mm256_and_ps(_mm256_cmp_ps(t, c.zero, _CMP_NEQ_OQ),
                                   _mm256_cmp_ps(g, RoundFormat8<kHalf>(g, c), _CMP_EQ_OQ));
  const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(static_cast<int>(kAbsMask)));
  const __m256 not_finite_value =
      _mm256_or_ps(_mm256_cmp_ps(_mm256_and_ps(h, abs_mask), c.max_value, _CMP_NLE_UQ),
                   _mm256_cmp_ps(_mm256_and_ps(f, abs_mask), c.infinity, _CMP_NLT_UQ));
  const int look = _mm256_movemask_ps(_mm256_or_ps(tie, not_finite_value));
  if (__builtin_expect(look != 0, 0)) {
    return ResolveLanes(acc, a, b, h, tie, not_finite_value, c.grid);
  }
  return h;
}

// acc + a * b rounded to odd at float32 precision, for products that are
// float32 values: TwoSum's error e says whether, and on which side, the
// float32 sum s is inexact; where it is and s is even, s moves one ulp
// toward the exact sum.  The callers round `odd` to the format and check
// `s` for overflow and NaN.
struct OddSum8 {
  __m256 s, odd;  // the float32 sum, and that sum rounded to odd
};

inline OddSum8 SumRoundedToOdd8(__m256 acc, __m256 a, __m256 b, const Format8& c) {
  const __m256 p = _mm256_mul_ps(a, b);
  const __m256 s = _mm256_add_ps(acc, p);
  const __m256 p_part = _mm256_sub_ps(s, acc);
  const __m256 e = _mm256_add_ps(_mm256_sub_ps(acc, _mm256_sub_ps(s, p_part)),
                                 _mm256_sub_ps(p, p_part));
  const __m256i s_bits = _mm256_castps_si256(s);
  const __m256i one = _mm256_set1_epi32(1);
  const __m256i even = _mm256_cmpeq_epi32(_mm256_and_si256(s_bits, one), _mm256_setzero_si256());
  const __m256i inexact = _mm256_castps_si256(_mm256_cmp_ps(e, c.zero, _CMP_NEQ_UQ));
  // +1 where e has the sign of s (the exact sum is larger in magnitude), else -1.
  const __m256i direction = _mm256_or_si256(
      _mm256_srai_epi32(_mm256_xor_si256(s_bits, _mm256_castps_si256(e)), 31), one);
  const __m256 odd = _mm256_castsi256_ps(_mm256_add_epi32(
      s_bits, _mm256_and_si256(_mm256_and_si256(even, inexact), direction)));
  return {s, odd};
}

// fmt(acc + a * b) on 8 lanes, nearest-even, for operands whose products
// are float32 values (ShortOperands): the sum acc + p is rounded to odd at
// 24 bits (TwoSum's error says whether, and on which side, the float32 sum
// s is inexact; where it is and s is even, s moves one ulp toward the exact
// sum), and rounding that to a format of at most 22 significand bits is
// rounding the exact sum (accumulation_step.h's argument at float32
// precision; RoundToOddApplies states the conditions).  No ties to look at.
template <bool kHalf>
inline __m256 ShortStep8(__m256 acc, __m256 a, __m256 b, const Format8& c) {
  const OddSum8 sum = SumRoundedToOdd8(acc, a, b, c);
  const __m256 s = sum.s;
  const __m256 h = RoundFormat8<kHalf>(sum.odd, c);
  const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(static_cast<int>(kAbsMask)));
  // Overflow and NaN/Inf lanes (s or e not finite, h beyond the format's
  // finite values) are recomputed by the definition.
  const __m256 not_finite_value =
      _mm256_or_ps(_mm256_cmp_ps(_mm256_and_ps(h, abs_mask), c.max_value, _CMP_NLE_UQ),
                   _mm256_cmp_ps(_mm256_and_ps(s, abs_mask), c.infinity, _CMP_NLT_UQ));
  const int bad = _mm256_movemask_ps(not_finite_value);
  if (__builtin_expect(bad != 0, 0)) return FixLanes(acc, a, b, h, bad, c.grid);
  return h;
}

// Nearest-even rounding of x onto a format with at most 21 mantissa bits and
// subnormals, by float addition: with E = max(floor(log2|x|), min_exponent)
// and C = 1.5 * 2^(E + 23 - m), x + C lies in C's binade, whose float32 ulp
// is the format's step 2^(E - m) at x, so (x + C) - C is x rounded to that
// step, nearest-even (MXCSR's mode: the kernels run in round-to-nearest,
// float_environment.h).  Zero results take x's sign where the format has
// -0.  Valid for |x| below c.short_limit (C finite); results beyond the
// format's largest value are left to the caller's check.
inline __m256 RoundByMagic8(__m256 x, const Format8& c) {
  const __m256i bits = _mm256_castps_si256(x);
  const __m256i exponent_field =
      _mm256_max_epi32(_mm256_and_si256(bits, _mm256_set1_epi32(0x7F800000)), c.magic_min_bits);
  const __m256 magic = _mm256_castsi256_ps(_mm256_add_epi32(exponent_field, c.magic_offset));
  const __m256 rounded = _mm256_sub_ps(_mm256_add_ps(x, magic), magic);
  return _mm256_or_ps(rounded, _mm256_and_ps(x, _mm256_castsi256_ps(c.zero_sign_mask)));
}

// ShortStep8 without the per-step test: lanes whose sum is not finite,
// reaches c.short_limit or rounds beyond the format's finite values are
// or-ed into *bad, and the caller recomputes the whole chunk of those
// tiles by the definition (ShortChunkFallback).
inline __m256 ShortStepDeferred8(__m256 acc, __m256 a, __m256 b, const Format8& c,
                                 __m256* bad) {
  const OddSum8 sum = SumRoundedToOdd8(acc, a, b, c);
  const __m256 s = sum.s;
  const __m256 h = RoundByMagic8(sum.odd, c);
  const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(static_cast<int>(kAbsMask)));
  *bad = _mm256_or_ps(
      *bad, _mm256_or_ps(_mm256_cmp_ps(_mm256_and_ps(h, abs_mask), c.max_value, _CMP_NLE_UQ),
                         _mm256_cmp_ps(_mm256_and_ps(s, abs_mask), c.short_limit, _CMP_NLT_UQ)));
  return h;
}

template <bool kHalf, bool kShort>
inline __m256 Step8(__m256 acc, __m256 a, __m256 b, const Format8& c) {
  return kShort ? ShortStep8<kHalf>(acc, a, b, c) : FastStep8<kHalf>(acc, a, b, c);
}

struct FastJob {
  const Problem* p;
  // Per distinct b batch, [column_blocks, k, kPanelWidth]: each 16-column
  // panel contiguous (zero columns beyond n, whose sums are discarded).
  const float* b_panels;
  int64_t b_panel_stride;    // 0 when one b serves every batch
  int64_t row_blocks, column_blocks;
  Format8 format;
};

// The chunk sums [c0, c1) of a tile by the definition (every lane), into
// acc[rows][vectors]: where ShortStepDeferred8 reported a lane it cannot
// round (overflow, Inf, NaN: rare), the chunk is recomputed from its +0.
__attribute__((noinline)) void ChunkByDefinition(const FastJob& job, const Operands& o,
                                                 const float* b_panel, int64_t i0, int64_t j0,
                                                 int rows, int vectors, int64_t c0, int64_t c1,
                                                 __m256* acc) {
  const Problem& p = *job.p;
  for (int r = 0; r < rows; ++r) {
    for (int v = 0; v < vectors; ++v) {
      alignas(32) float lanes[kLanes];
      for (int lane = 0; lane < kLanes; ++lane) {
        const int64_t column = j0 + v * kLanes + lane - (j0 / kPanelWidth) * kPanelWidth;
        float sum = 0.0f;
        for (int64_t k = c0; k < c1; ++k) {
          const double product = static_cast<double>(o.a[(i0 + r) * o.a_row + k * o.a_col]) *
                                 static_cast<double>(b_panel[k * kPanelWidth + column]);
          sum = AccumulateStep<Rounding::kNearestEven>(sum, product, p.grid, 0u);
        }
        lanes[lane] = sum;
      }
      acc[r * vectors + v] = _mm256_load_ps(lanes);
    }
  }
}

template <bool kHalf, bool kShort, int kRows, int kVectors>
void Tile(const FastJob& job, int64_t batch, int64_t i0, int64_t j0) {
  const Problem& p = *job.p;
  const Format8& c = job.format;
  const Operands o = BatchOperands(p, batch);
  const float* b_panel =
      job.b_panels + batch * job.b_panel_stride + (j0 / kPanelWidth) * p.k * kPanelWidth;
  const int64_t chunk = ChunkLength(p);
  const __m256 one = _mm256_set1_ps(1.0f);
  __m256 total[kRows][kVectors];
  __m256 acc[kRows][kVectors];
#pragma GCC unroll 4
  for (int r = 0; r < kRows; ++r)
#pragma GCC unroll 2
    for (int v = 0; v < kVectors; ++v) total[r][v] = _mm256_setzero_ps();
  for (int64_t c0 = 0; c0 < p.k; c0 += chunk) {
    const int64_t c1 = std::min(p.k, c0 + chunk);
#pragma GCC unroll 4
    for (int r = 0; r < kRows; ++r)
#pragma GCC unroll 2
      for (int v = 0; v < kVectors; ++v) acc[r][v] = _mm256_setzero_ps();
    __m256 bad = _mm256_setzero_ps();
    for (int64_t k = c0; k < c1; ++k) {
      __m256 b[kVectors];
#pragma GCC unroll 2
      for (int v = 0; v < kVectors; ++v) {
        b[v] = _mm256_loadu_ps(b_panel + k * kPanelWidth + v * kLanes);
      }
#pragma GCC unroll 4
      for (int r = 0; r < kRows; ++r) {
        const __m256 a = _mm256_broadcast_ss(o.a + (i0 + r) * o.a_row + k * o.a_col);
#pragma GCC unroll 2
        for (int v = 0; v < kVectors; ++v) {
          acc[r][v] = kShort ? ShortStepDeferred8(acc[r][v], a, b[v], c, &bad)
                             : Step8<kHalf, kShort>(acc[r][v], a, b[v], c);
        }
      }
    }
    if (kShort && __builtin_expect(_mm256_movemask_ps(bad) != 0, 0)) {
      ChunkByDefinition(job, o, b_panel, i0, j0, kRows, kVectors, c0, c1, &acc[0][0]);
    }
#pragma GCC unroll 4
    for (int r = 0; r < kRows; ++r) {
#pragma GCC unroll 2
      for (int v = 0; v < kVectors; ++v) {
        // 1 * chunk sum: a product that is a float32 in either mode.
        total[r][v] =
            c0 == 0 ? acc[r][v] : Step8<kHalf, kShort>(total[r][v], one, acc[r][v], c);
      }
    }
  }
  for (int r = 0; r < kRows; ++r) {
    float* out = p.out + (batch * p.m + i0 + r) * p.n;
    for (int v = 0; v < kVectors; ++v) {
      const int64_t j = j0 + v * kLanes;
      if (j + kLanes <= p.n) {
        _mm256_storeu_ps(out + j, total[r][v]);
      } else if (j < p.n) {
        alignas(32) float lanes[kLanes];
        _mm256_store_ps(lanes, total[r][v]);
        std::memcpy(out + j, lanes, sizeof(float) * (p.n - j));
      }
    }
  }
}

template <bool kHalf, bool kShort, int kVectors>
void TileRows(const FastJob& job, int64_t batch, int64_t i0, int64_t j0) {
  switch (std::min<int64_t>(kMaxRows, job.p->m - i0)) {
    case 4: return Tile<kHalf, kShort, 4, kVectors>(job, batch, i0, j0);
    case 3: return Tile<kHalf, kShort, 3, kVectors>(job, batch, i0, j0);
    case 2: return Tile<kHalf, kShort, 2, kVectors>(job, batch, i0, j0);
    default: return Tile<kHalf, kShort, 1, kVectors>(job, batch, i0, j0);
  }
}

// Work unit u = ((batch * column_blocks) + column_block) * row_blocks +
// row_block: consecutive units share a b panel.
template <bool kHalf, bool kShort>
void FastUnits(void* arg, int64_t begin, int64_t end) {
  const FastJob& job = *static_cast<const FastJob*>(arg);
  for (int64_t u = begin; u < end; ++u) {
    const int64_t row_block = u % job.row_blocks;
    const int64_t column_block = (u / job.row_blocks) % job.column_blocks;
    const int64_t batch = u / (job.row_blocks * job.column_blocks);
    const int64_t i0 = row_block * kMaxRows;
    TileRows<kHalf, kShort, kMaxVectors>(job, batch, i0, column_block * kPanelWidth);
  }
}

bool IsIeeeHalf(const FloatGrid& g) {
  return g.min_exponent == -14 && g.mantissa_bits == 10 && g.max_bits == 0x477FE000u &&
         g.subnormals && g.infinities && g.has_nan && g.negative_zero &&
         !g.flush_input_denormals && g.overflow == Overflow::kInfinity;
}

// Whether every element of the n values at x (stride 1) has at most 12
// significant bits and is 0 or within [2^-60, 2^60]: then every product of
// two of them is a normal float32 (at most 24 bits), i.e. exact.  FP8,
// FP16 and BF16 operands (what policies pass) qualify.
bool ShortValues(const float* x, int64_t count) {
  for (int64_t i = 0; i < count; ++i) {
    const uint32_t a = FloatBits(x[i]) & kAbsMask;
    if (a == 0) continue;
    if (a < 0x1D800000u || a > 0x5D800000u) return false;  // 2^-60 .. 2^60
    if ((a & 0x7FFu) != 0) return false;  // more than 12 significant bits
  }
  return true;
}

// The conditions of ShortStep8: round-to-odd at 24 bits, then nearest-even
// to the format, is nearest-even of the exact value when the format has at
// most 22 significand bits wherever it rounds (Boldo & Melquiond: 24 >=
// 22 + 2), also in float32's subnormal range (the format's smallest step at
// least 2^-147, four float32 subnormal steps).
bool RoundToOddApplies(const FloatGrid& g) {
  return g.mantissa_bits <= 21 && g.min_exponent - g.mantissa_bits >= -147;
}

void RunFast(const Problem& p, const ParallelFor& parallel) {
  const int64_t column_blocks = (p.n + kPanelWidth - 1) / kPanelWidth;
  const int64_t b_batches = p.b_batch_stride == 0 ? 1 : p.batch;
  const int64_t batch_panels = column_blocks * p.k * kPanelWidth;
  std::vector<float> packed(static_cast<size_t>(b_batches * batch_panels), 0.0f);
  for (int64_t batch = 0; batch < b_batches; ++batch) {
    const Operands o = BatchOperands(p, batch);
    for (int64_t block = 0; block < column_blocks; ++block) {
      float* panel = packed.data() + batch * batch_panels + block * p.k * kPanelWidth;
      const int64_t width = std::min<int64_t>(kPanelWidth, p.n - block * kPanelWidth);
      for (int64_t k = 0; k < p.k; ++k) {
        for (int64_t j = 0; j < width; ++j) {
          panel[k * kPanelWidth + j] = o.b[k * o.b_row + (block * kPanelWidth + j) * o.b_col];
        }
      }
    }
  }
  FastJob job;
  job.p = &p;
  job.b_panels = packed.data();
  job.b_panel_stride = p.b_batch_stride == 0 ? 0 : batch_panels;
  job.row_blocks = (p.m + kMaxRows - 1) / kMaxRows;
  job.column_blocks = column_blocks;
  job.format = MakeFormat8(p.grid);
  const bool half = IsIeeeHalf(p.grid);
  const int64_t a_batches = p.a_batch_stride == 0 ? 1 : p.batch;
  const bool short_operands =
      RoundToOddApplies(p.grid) && ShortValues(p.a, a_batches * p.m * p.k) &&
      ShortValues(packed.data(), static_cast<int64_t>(packed.size()));
  // About 1.5 (FP16, F16C) or 4 (other formats) cycles per lane and step.
  const int64_t cost = kMaxRows * kMaxVectors * kLanes * std::max<int64_t>(p.k, 1) * (half ? 2 : 4);
  void (*units)(void*, int64_t, int64_t) =
      half ? (short_operands ? FastUnits<true, true> : FastUnits<true, false>)
           : (short_operands ? FastUnits<false, true> : FastUnits<false, false>);
  parallel.run(parallel.context, p.batch * job.column_blocks * job.row_blocks, cost, units,
               &job);
}

bool FastApplies(const Problem& p) {
  return p.rounding == Rounding::kNearestEven && p.grid.subnormals &&
         !p.grid.flush_input_denormals && p.k > 0;
}

#endif  // TF_LOWPREC_ACC_VECTOR

void Gemm(const Problem& p, const ParallelFor& parallel) {
  if (p.batch == 0 || p.m == 0 || p.n == 0) return;
#if TF_LOWPREC_ACC_VECTOR
  if (FastApplies(p)) {
    RunFast(p, parallel);
    return;
  }
#endif
  RunExact(p, parallel);
}

}  // namespace

extern const Kernels kKernels;
const Kernels kKernels = {TF_LOWPREC_ACC_ISA_NAME, Gemm};

}  // namespace TF_LOWPREC_ACC_ISA
}  // namespace accumulation_gemm
}  // namespace tf_lowprec
