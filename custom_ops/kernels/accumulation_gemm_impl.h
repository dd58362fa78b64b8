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
// - RunFast with short operands (vector tiers, nearest-even, formats with at
//   most 21 mantissa bits, subnormals and no input flushing, operands whose
//   every product is a float32 value: ScanOperand's pre-scan of significand
//   widths and exponents; FP8, FP16 and BF16 operands qualify): 6 x 16
//   output tiles, CheckedStep8 per step = one FMA, the float32 sum's
//   exactness (Fast2Sum both ways) and midpoint tests or-ed into a flag, and
//   one rounding to the format (F16C for IEEE FP16, integer for BF16, float
//   addition otherwise).  A tile's chunk whose flag is set (an inexact sum on
//   a midpoint: rare) or whose sums overflowed is recomputed by the path
//   below.
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
constexpr int kMaxRows = 6;     // rows of an output tile
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
  // CheckedStep8: float32 bits below the format's step (m <= 22), the bits of
  // a midpoint there, and float32 bits of 2^min_exponent.
  __m256i midpoint_mask, midpoint_bits, tiny_bits;
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
  const int32_t below = std::max(1, 23 - g.mantissa_bits);  // the short path needs m <= 22
  c.midpoint_mask = _mm256_set1_epi32(static_cast<int>((1u << below) - 1));
  c.midpoint_bits = _mm256_set1_epi32(static_cast<int>(1u << (below - 1)));
  c.tiny_bits = _mm256_set1_epi32(static_cast<int>(PowerOfTwoBits(g.min_exponent)));
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

// Nearest-even rounding of float32 lanes to BF16 (8 significant bits, the
// exponent range of float32, subnormals, overflow to Inf) on the bits: add
// half a step minus one plus the kept lsb, clear the dropped 16 bits.  Finite
// lanes only (NaN lanes are recomputed by the caller).
inline __m256 RoundBfloat8(__m256 f) {
  const __m256i u = _mm256_castps_si256(f);
  const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
  const __m256i up = _mm256_add_epi32(_mm256_add_epi32(u, _mm256_set1_epi32(0x7FFF)), lsb);
  const __m256i keep = _mm256_set1_epi32(static_cast<int>(0xFFFF0000u));
  return _mm256_castsi256_ps(_mm256_and_si256(up, keep));
}

// How CheckedStep8 rounds its float32 sum to the format.
enum class ShortRounding { kHalf, kBfloat16, kMagic };

template <ShortRounding kRound>
inline __m256 RoundShort8(__m256 f, const Format8& c) {
  if (kRound == ShortRounding::kHalf) {
    return _mm256_cvtph_ps(_mm256_cvtps_ph(f, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  }
  if (kRound == ShortRounding::kBfloat16) return RoundBfloat8(f);
  return RoundByMagic8(f, c);
}

// CheckedStep8's tests (ShortOperands picks one per call).
constexpr int kNoCheck = 0;               // proved unnecessary (ShortOperands)
constexpr int kMidpointCheck = 1;         // inexact sums on a midpoint above 2^min_exponent
constexpr int kMidpointAndTinyCheck = 2;  // and every inexact sum below 2^min_exponent

// fmt(s + a * b) on 8 lanes, nearest-even, for operands whose products are
// float32 values (ShortOperands; s is a value of the format).
//   f = fma(a, b, s) is the float32 rounding of the exact sum s + p.
//   Where f is exact (the exact sum fits float32's 24 bits), rounding f to
//   the format (one F16C conversion, or integer/float-addition rounding) is
//   the one rounding of the exact sum.  Where it is not, rounding f still
//   gives fmt(s + p) unless f is a midpoint of the format's grid: the
//   format's midpoints are float32 values (m <= 22), so f = RN32(s + p) lies
//   in the same open interval between midpoints as s + p, or on a midpoint.
//   Lanes that are inexact *and* on a midpoint (rare: a sum more than 24
//   bits wide landing on the 100..0 pattern) are or-ed into *flag, and the
//   caller recomputes that chunk of the tile by the definition.
//   Exactness: e1 = (f - s) - p is the exact error -(s + p - f) when
//   |s| >= |p| (Fast2Sum: f - s exact), e2 = (f - p) - s when |p| >= |s|;
//   both are 0 when f is exact, so e1 | e2 (bits, sign aside) is 0 iff f is.
//   Midpoints: where |f| >= 2^min_exponent the format's step is
//   2^(E - m), so f is a midpoint iff its 23 - m low bits are 100..0; below
//   2^min_exponent every lane counts as one (kMidpointAndTinyCheck), unless
//   ShortOperands proved those sums exact (products on a grid of at least
//   2^(min_exponent - 24): a sum below 2^min_exponent then has <= 24 bits).
// kNoCheck skips both tests where ShortOperands proved them unnecessary.
// Sums that overflow or become Inf/NaN give non-finite lanes, which the
// caller finds at the chunk's end (for kMagic, values beyond the format's
// largest are or-ed into *flag: they may come back below it).
template <ShortRounding kRound, int kCheck>
inline __m256 CheckedStep8(__m256 s, __m256 a, __m256 b, const Format8& c, __m256* flag) {
  const __m256 f = _mm256_fmadd_ps(a, b, s);
  if (kCheck != kNoCheck) {
    const __m256 e1 = _mm256_fnmadd_ps(a, b, _mm256_sub_ps(f, s));
    const __m256 e2 = _mm256_sub_ps(_mm256_fnmadd_ps(a, b, f), s);
    const __m256i bits = _mm256_castps_si256(f);
    __m256i hazard =
        _mm256_cmpeq_epi32(_mm256_and_si256(bits, c.midpoint_mask), c.midpoint_bits);
    if (kCheck == kMidpointAndTinyCheck) {
      const __m256i magnitude =
          _mm256_and_si256(bits, _mm256_set1_epi32(static_cast<int>(kAbsMask)));
      hazard = _mm256_or_si256(hazard, _mm256_cmpgt_epi32(c.tiny_bits, magnitude));
    }
    *flag = _mm256_or_ps(*flag,
                         _mm256_and_ps(_mm256_or_ps(e1, e2), _mm256_castsi256_ps(hazard)));
  }
  const __m256 h = RoundShort8<kRound>(f, c);
  if (kRound == ShortRounding::kMagic) {
    const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(static_cast<int>(kAbsMask)));
    *flag = _mm256_or_ps(
        *flag,
        _mm256_or_ps(_mm256_cmp_ps(_mm256_and_ps(h, abs_mask), c.max_value, _CMP_NLE_UQ),
                     _mm256_cmp_ps(_mm256_and_ps(f, abs_mask), c.short_limit, _CMP_NLT_UQ)));
  }
  return h;
}

// Whether a flag of CheckedStep8 names any lane (sign bits aside: an exact
// sum's errors may be -0).
inline bool Flagged(__m256 flag) {
  return !_mm256_testz_si256(_mm256_castps_si256(flag),
                             _mm256_set1_epi32(static_cast<int>(kAbsMask)));
}

// Lanes holding NaN, Inf or a value beyond the format's largest.
inline __m256 BeyondFormat(__m256 x, const Format8& c) {
  const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(static_cast<int>(kAbsMask)));
  return _mm256_cmp_ps(_mm256_and_ps(x, abs_mask), c.max_value, _CMP_NLE_UQ);
}

// total <- fmt(total + x) for the chunk sums x (values of the format, so
// 1 * x is a float32 product): CheckedStep8, with the flagged and non-finite
// lanes recomputed at once by the definition (once per chunk: cheap).
template <ShortRounding kRound, int kCheck>
inline __m256 ShortTotalStep8(__m256 total, __m256 x, const Format8& c) {
  const __m256 one = _mm256_set1_ps(1.0f);
  __m256 flag = _mm256_setzero_ps();
  // Chunk sums are as wide as the format: kNoCheck's proof does not cover them.
  constexpr int kTotalCheck = kCheck == kNoCheck ? kMidpointCheck : kCheck;
  const __m256 h = CheckedStep8<kRound, kTotalCheck>(total, one, x, c, &flag);
  const __m256i flag_bits =
      _mm256_and_si256(_mm256_castps_si256(flag), _mm256_set1_epi32(static_cast<int>(kAbsMask)));
  const __m256 flagged = _mm256_castsi256_ps(_mm256_xor_si256(
      _mm256_cmpeq_epi32(flag_bits, _mm256_setzero_si256()), _mm256_set1_epi32(-1)));
  const int bad = _mm256_movemask_ps(_mm256_or_ps(flagged, BeyondFormat(h, c)));
  if (__builtin_expect(bad != 0, 0)) return FixLanes(total, one, x, h, bad, c.grid);
  return h;
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

// The vector kernels: the per-step check of FastStep8 (any float32
// operands), or CheckedStep8 for short operands with its rounding.
enum class Path { kHalf, kGeneric, kShortHalf, kShortBfloat16, kShortMagic };

constexpr bool IsShort(Path path) { return path != Path::kHalf && path != Path::kGeneric; }

constexpr ShortRounding ShortRoundingOf(Path path) {
  return path == Path::kShortHalf       ? ShortRounding::kHalf
         : path == Path::kShortBfloat16 ? ShortRounding::kBfloat16
                                        : ShortRounding::kMagic;
}

// The running sums acc[r][v] of one chunk [c0, c1) of a tile, from +0:
// FastStep8 (any operands; ties and non-finite lanes resolved per step) or
// CheckedStep8 (short operands; the returned flag names lanes it could not
// round, see CheckedStep8).
template <Path kPath, int kCheck, int kRows, int kVectors>
inline __m256 ChunkSums(const Format8& c, const float* a, int64_t a_row, int64_t a_col,
                        const float* b_panel, int64_t c0, int64_t c1,
                        __m256 (&acc)[kRows][kVectors]) {
#pragma GCC unroll 8
  for (int r = 0; r < kRows; ++r)
#pragma GCC unroll 2
    for (int v = 0; v < kVectors; ++v) acc[r][v] = _mm256_setzero_ps();
  __m256 flag = _mm256_setzero_ps();
  for (int64_t k = c0; k < c1; ++k) {
    __m256 b[kVectors];
#pragma GCC unroll 2
    for (int v = 0; v < kVectors; ++v) {
      b[v] = _mm256_loadu_ps(b_panel + k * kPanelWidth + v * kLanes);
    }
#pragma GCC unroll 8
    for (int r = 0; r < kRows; ++r) {
      const __m256 a_rk = _mm256_broadcast_ss(a + r * a_row + k * a_col);
#pragma GCC unroll 2
      for (int v = 0; v < kVectors; ++v) {
        if constexpr (IsShort(kPath)) {
          acc[r][v] = CheckedStep8<ShortRoundingOf(kPath), kCheck>(acc[r][v], a_rk, b[v], c, &flag);
        } else {
          acc[r][v] = FastStep8<kPath == Path::kHalf>(acc[r][v], a_rk, b[v], c);
        }
      }
    }
  }
  return flag;
}

// A chunk of a tile that CheckedStep8 flagged (or that overflowed), again
// with FastStep8: every lane as the definition gives it.
template <bool kHalf, int kRows, int kVectors>
__attribute__((noinline)) void ChunkSumsChecked(const Format8& c, const float* a, int64_t a_row,
                                                int64_t a_col, const float* b_panel, int64_t c0,
                                                int64_t c1, __m256 (&acc)[kRows][kVectors]) {
  ChunkSums<kHalf ? Path::kHalf : Path::kGeneric, kNoCheck, kRows, kVectors>(
      c, a, a_row, a_col, b_panel, c0, c1, acc);
}

template <Path kPath, int kCheck, int kRows, int kVectors>
void Tile(const FastJob& job, int64_t batch, int64_t i0, int64_t j0) {
  constexpr bool kShort = IsShort(kPath);
  constexpr ShortRounding kRound = ShortRoundingOf(kPath);
  const Problem& p = *job.p;
  const Format8& c = job.format;
  const Operands o = BatchOperands(p, batch);
  const float* a = o.a + i0 * o.a_row;
  const float* b_panel =
      job.b_panels + batch * job.b_panel_stride + (j0 / kPanelWidth) * p.k * kPanelWidth;
  const int64_t chunk = ChunkLength(p);
  const __m256 one = _mm256_set1_ps(1.0f);
  __m256 total[kRows][kVectors];
  __m256 acc[kRows][kVectors];
#pragma GCC unroll 8
  for (int r = 0; r < kRows; ++r)
#pragma GCC unroll 2
    for (int v = 0; v < kVectors; ++v) total[r][v] = _mm256_setzero_ps();
  for (int64_t c0 = 0; c0 < p.k; c0 += chunk) {
    const int64_t c1 = std::min(p.k, c0 + chunk);
    __m256 flag = ChunkSums<kPath, kCheck, kRows, kVectors>(c, a, o.a_row, o.a_col, b_panel,
                                                            c0, c1, acc);
    if constexpr (kShort) {
      // Flagged lanes, and sums that overflowed or became Inf/NaN on the way
      // (IEEE float32 arithmetic need not give the definition's NaN there).
#pragma GCC unroll 8
      for (int r = 0; r < kRows; ++r)
#pragma GCC unroll 2
        for (int v = 0; v < kVectors; ++v) flag = _mm256_or_ps(flag, BeyondFormat(acc[r][v], c));
      if (__builtin_expect(Flagged(flag), 0)) {
        // Into a separate array: passing acc itself would keep the running
        // sums in memory in ChunkSums above.
        __m256 redone[kRows][kVectors];
        ChunkSumsChecked<kPath == Path::kShortHalf, kRows, kVectors>(c, a, o.a_row, o.a_col,
                                                                     b_panel, c0, c1, redone);
#pragma GCC unroll 8
        for (int r = 0; r < kRows; ++r)
#pragma GCC unroll 2
          for (int v = 0; v < kVectors; ++v) acc[r][v] = redone[r][v];
      }
    }
#pragma GCC unroll 8
    for (int r = 0; r < kRows; ++r) {
#pragma GCC unroll 2
      for (int v = 0; v < kVectors; ++v) {
        // 1 * chunk sum: a product that is a float32 in either mode.
        if (c0 == 0) {
          total[r][v] = acc[r][v];
        } else if constexpr (kShort) {
          total[r][v] = ShortTotalStep8<kRound, kCheck>(total[r][v], acc[r][v], c);
        } else {
          total[r][v] = FastStep8<kPath == Path::kHalf>(total[r][v], one, acc[r][v], c);
        }
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

// Tile with the rows left from i0 (at most kMaxRows), as a template argument.
template <Path kPath, int kCheck, int kRows = kMaxRows>
void TileRows(const FastJob& job, int64_t batch, int64_t i0, int64_t j0) {
  if constexpr (kRows > 1) {
    if (job.p->m - i0 < kRows) return TileRows<kPath, kCheck, kRows - 1>(job, batch, i0, j0);
  }
  Tile<kPath, kCheck, kRows, kMaxVectors>(job, batch, i0, j0);
}

// Work unit u = ((batch * column_blocks) + column_block) * row_blocks +
// row_block: consecutive units share a b panel.
template <Path kPath, int kCheck>
void FastUnits(void* arg, int64_t begin, int64_t end) {
  const FastJob& job = *static_cast<const FastJob*>(arg);
  for (int64_t u = begin; u < end; ++u) {
    const int64_t row_block = u % job.row_blocks;
    const int64_t column_block = (u / job.row_blocks) % job.column_blocks;
    const int64_t batch = u / (job.row_blocks * job.column_blocks);
    TileRows<kPath, kCheck>(job, batch, row_block * kMaxRows, column_block * kPanelWidth);
  }
}

bool IsIeeeHalf(const FloatGrid& g) {
  return g.min_exponent == -14 && g.mantissa_bits == 10 && g.max_bits == 0x477FE000u &&
         g.subnormals && g.infinities && g.has_nan && g.negative_zero &&
         !g.flush_input_denormals && g.overflow == Overflow::kInfinity;
}

bool IsBfloat16(const FloatGrid& g) {
  return g.min_exponent == -126 && g.mantissa_bits == 7 && g.max_bits == 0x7F7F0000u &&
         g.subnormals && g.infinities && g.has_nan && g.negative_zero &&
         !g.flush_input_denormals && g.overflow == Overflow::kInfinity;
}

// What one pre-scan of an operand says about its nonzero values: all
// finite; the most significant bits of any; the smallest exponent of a last
// significant bit (every value is a multiple of 2^lowest); the largest
// floor(log2|x|).
struct OperandBits {
  bool finite = true;
  bool any = false;
  int32_t width = 0;
  int32_t lowest = 0;
  int32_t highest = 0;
};

OperandBits ScanOperand(const float* x, int64_t count) {
  OperandBits r;
  uint32_t any_bits = 0;
  int32_t width = 0, lowest = 1 << 20, highest = -(1 << 20);
  for (int64_t i = 0; i < count; ++i) {
    const uint32_t a = FloatBits(x[i]) & kAbsMask;
    if (a == 0) continue;
    if (a >= kInfBits) {
      r.finite = false;
      return r;
    }
    const uint32_t field = a >> 23;
    // a = significand * 2^scale, significand of up to 24 bits.
    const uint32_t significand = field != 0 ? (a & 0x7FFFFFu) | 0x800000u : a;
    const int32_t scale = field != 0 ? static_cast<int32_t>(field) - 150 : -149;
    const int32_t low = __builtin_ctz(significand), top = 31 - __builtin_clz(significand);
    width = std::max(width, top - low + 1);
    lowest = std::min(lowest, scale + low);
    highest = std::max(highest, scale + top);
    any_bits |= a;
  }
  r.any = any_bits != 0;
  r.width = width;
  r.lowest = r.any ? lowest : 0;
  r.highest = r.any ? highest : 0;
  return r;
}

// Whether CheckedStep8 applies: every product a * b is a float32 value
// (at most 24 significant bits, finite, a multiple of 2^-149) and every sum
// below 2^126, so that fma(a, b, s) is the float32 rounding of s + p; the
// format has at most 21 mantissa bits (RoundByMagic8; the midpoint test
// needs at most 22).  *check, the test CheckedStep8 needs:
// - kMidpointAndTinyCheck where products lie on a grid finer than
//   2^(min_exponent - 24) (a sum below 2^min_exponent may then be inexact);
// - kNoCheck where the format has m <= 10 mantissa bits and products at
//   most m - 1 significant bits (E5M2, E4M3 operands into FP16): then an
//   inexact float32 sum f = RN32(s + p) at or above 2^min_exponent is never
//   a midpoint of the format (step q = 2^(E - m) at f's binade E).  Proof:
//   x = s + p inexact needs > 24 bits, so the term with the lowest bit, S,
//   is the smaller one (the larger, B, has <= 22 bits and |x| > |B| / 2,
//   else x is exact by Sterbenz), and S's bits end below 2^(E_x - 23): with
//   w_S <= m + 1 bits, |S| < 2^(E_x - 23 + m) <= 2^(E_x - m - 1) <= q / 2
//   (m <= 10), and f = B + r, r = S rounded to float32's grid 2^(E_x - 23)
//   (B lies on it), |r| < q / 2.  If B = p: p's lowest
//   bit is at least 2^(E_x - 1 - (m - 2)) >= q, so f = r (mod q) is no
//   midpoint.  If B = s: s is a multiple of q where |s| >= 2^E; |s| < 2^E
//   with |f| >= 2^E would need |s| > 2^E - q / 2, but the format's largest
//   value below 2^E is 2^E - q / 2.  Sums below 2^min_exponent are exact.
// - kMidpointCheck otherwise.
bool ShortOperands(const OperandBits& a, const OperandBits& b, const FloatGrid& g, int* check) {
  *check = kNoCheck;
  if (!a.finite || !b.finite || g.mantissa_bits > 21) return false;
  if (!a.any || !b.any) return true;  // every product is 0
  if (a.width + b.width > 24 || a.lowest + b.lowest < -149 || a.highest + b.highest > 124) {
    return false;
  }
  if (a.lowest + b.lowest < g.min_exponent - 24) {
    *check = kMidpointAndTinyCheck;
  } else if (g.mantissa_bits > 10 || a.width + b.width > g.mantissa_bits - 1) {
    *check = kMidpointCheck;
  }
  return true;
}

template <Path kPath>
void (*UnitsFor(int check))(void*, int64_t, int64_t) {
  return check == kNoCheck         ? FastUnits<kPath, kNoCheck>
         : check == kMidpointCheck ? FastUnits<kPath, kMidpointCheck>
                                   : FastUnits<kPath, kMidpointAndTinyCheck>;
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
  int check = kMidpointCheck;
  const bool short_operands =
      ShortOperands(ScanOperand(p.a, a_batches * p.m * p.k),
                    ScanOperand(packed.data(), static_cast<int64_t>(packed.size())), p.grid,
                    &check);
  // About 1.5 (short operands), 2 (FP16, F16C) or 4 (other formats) cycles
  // per lane and step.
  const int64_t cost = kMaxRows * kMaxVectors * kLanes * std::max<int64_t>(p.k, 1) *
                       (short_operands ? 1 : half ? 2 : 4);
  void (*units)(void*, int64_t, int64_t) =
      !short_operands          ? (half ? FastUnits<Path::kHalf, kNoCheck>
                                       : FastUnits<Path::kGeneric, kNoCheck>)
      : half                   ? UnitsFor<Path::kShortHalf>(check)
      : IsBfloat16(p.grid)     ? UnitsFor<Path::kShortBfloat16>(check)
                               : UnitsFor<Path::kShortMagic>(check);
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
