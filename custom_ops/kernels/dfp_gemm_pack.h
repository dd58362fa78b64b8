// INT16 DFP GEMM: packing of a and b into K-pair panels of INT16 mantissas
// (checking them, or rounding them for the fused path).
// Part of dfp_gemm_impl.h (compiled once per tier, inside the tier's
// namespace TF_LOWPREC_DFP_ISA; see there).
#ifndef TF_LOWPREC_KERNELS_DFP_GEMM_PACK_H_
#define TF_LOWPREC_KERNELS_DFP_GEMM_PACK_H_

#include <cstdint>
#include <cstring>

#include "dfp_gemm.h"
#include "dfp_gemm_layout.h"
#include "number_formats.h"

#if TF_LOWPREC_DFP_VNNI || TF_LOWPREC_DFP_AVX2
#include <immintrin.h>
#endif

// Whether the tier has a vectorized ConvertContiguous.
#define DFP_CONVERT_CONTIGUOUS (TF_LOWPREC_DFP_VNNI || TF_LOWPREC_DFP_AVX2)

namespace tf_lowprec {
namespace dfp_gemm {
namespace TF_LOWPREC_DFP_ISA {
namespace {

// Source of one operand seen as lanes (rows of a, columns of b) x K.
struct OperandView {
  const float* data;
  int64_t lane_stride, k_stride;
  const int32_t* exponents;
  int64_t e_lane_stride, e_block_stride;
  bool round;  // round to nearest even (Problem::round_inputs) instead of checking
};

// Mantissas: I = y * 2^-E with 2^-E = s1 * s2 (two factors so that every
// intermediate stays a normal float: |E| can exceed 126).  Exact for y from
// quantize_dfp; anything else is counted as invalid.  |I| is clamped to
// *bound before the conversion: 40000 (above kMaxMantissa, so that larger
// values still count as invalid) or, where 2^E exceeds float32's ulp at
// FLT_MAX (E > 104), the largest mantissa whose value is at most FLT_MAX:
// the fused path's rounding then saturates exactly as quantize_dfp does
// (DfpGridMaxBits in rounding.h), since rounding to nearest even commutes
// with clamping to an integer bound.
inline void ScaleFactors(int32_t e, float* s1, float* s2, float* bound, int32_t* invalid) {
  *bound = 40000.0f;
  if (e == kDfpNoScale) {  // block of zeros (and non-finite values)
    *s1 = *s2 = 1.0f;
    return;
  }
  if (e > 104) {  // (2^24 - 1) >> (e - 104); 0 from e = 128 on
    *bound = e >= 128 ? 0.0f : static_cast<float>(Min64(40000, ((1 << 24) - 1) >> (e - 104)));
  }
  // Range first: -e overflows for e = INT32_MIN (a raw op's exponent input).
  int32_t t = 0;
  if (e < -250 || e > 250) {
    *invalid += 1;
  } else {
    t = -e;
  }
  int32_t h = t / 2;
  *s1 = FloatPow2(t - h);
  *s2 = FloatPow2(h);
}

// Mantissas of n values x[i * stride] into out[i]; per-value scale factors
// s1[i * sstride], s2[i * sstride].  Written as one plain loop with local
// reductions so that the compiler vectorizes it.  Returns the number of
// invalid values; *nonfinite |= 1 if any value is NaN or Inf.
inline int32_t ConvertRun(const float* x, int64_t stride, int64_t n, const float* s1,
                          const float* s2, const float* bound, int64_t sstride, bool round,
                          int16_t* out, int32_t* nonfinite) {
  int32_t invalid = 0, nf = 0;
  for (int64_t i = 0; i < n; ++i) {
    const float y = x[i * stride];
    uint32_t bits;
    std::memcpy(&bits, &y, sizeof bits);
    const int32_t finite = (bits & 0x7F800000u) != 0x7F800000u;
    const float v = finite ? (y * s1[i * sstride]) * s2[i * sstride] : 0.0f;
    const float c = bound[i * sstride];
    const float clamped = v < -c ? -c : (v > c ? c : v);
    const int32_t m = static_cast<int32_t>(round ? __builtin_roundevenf(clamped) : clamped);
    invalid += (!round & (static_cast<float>(m) != v)) | (m > kMaxMantissa) | (m < -kMaxMantissa);
    nf |= 1 - finite;
    out[i] = static_cast<int16_t>(m);
  }
  *nonfinite |= nf;
  return invalid;
}

#if TF_LOWPREC_DFP_VNNI
// ConvertRun's arithmetic on 16 values, shared by every AVX-512 packer: the
// scale factors and clamp bound as vectors (one scale broadcast, or one per
// value), and whether to round to nearest even or to check exactness.
struct MantissaScale {
  __m512 s1, s2, hi, lo;
  bool round;
  MantissaScale(__m512 f1, __m512 f2, __m512 bound, bool r)
      : s1(f1), s2(f2), hi(bound), lo(_mm512_sub_ps(_mm512_setzero_ps(), bound)), round(r) {}
  MantissaScale(float f1, float f2, float bound, bool r)
      : MantissaScale(_mm512_set1_ps(f1), _mm512_set1_ps(f2), _mm512_set1_ps(bound), r) {}
};

// The INT32 mantissas of the live lanes of y (0 in the others); *bad: the
// live lanes holding NaN or Inf (mantissa 0); *wrong: the invalid live
// lanes (not exact when checking, or above kMaxMantissa in magnitude).
inline __m512i Mantissas(__m512 y, __mmask16 live, const MantissaScale& sc, __mmask16* bad,
                         __mmask16* wrong) {
  *bad = _mm512_fpclass_ps_mask(y, 0x99) & live;  // NaN or Inf
  const __m512 v =
      _mm512_maskz_mul_ps(static_cast<__mmask16>(~*bad), _mm512_mul_ps(y, sc.s1), sc.s2);
  const __m512 clamped = _mm512_min_ps(_mm512_max_ps(v, sc.lo), sc.hi);
  const __m512i m =
      sc.round ? _mm512_cvt_roundps_epi32(clamped, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)
               : _mm512_cvttps_epi32(clamped);
  const __mmask16 inexact =
      sc.round ? 0 : _mm512_cmp_ps_mask(_mm512_cvtepi32_ps(m), v, _CMP_NEQ_UQ);
  *wrong = (inexact | _mm512_cmpgt_epi32_mask(_mm512_abs_epi32(m), _mm512_set1_epi32(kMaxMantissa))) &
           live;
  return m;
}

// ConvertRun for stride 1, with AVX-512 (the compiler does not vectorize the
// plain loop well).  sstride is 0 (one scale) or 1 (one per value).
inline int32_t ConvertContiguous(const float* x, int64_t n, const float* s1, const float* s2,
                                 const float* bound, int64_t sstride, bool round, int16_t* out,
                                 int32_t* nonfinite) {
  int32_t invalid = 0;
  __mmask16 nf = 0;
  int64_t i = 0;
  for (; i < n; i += 16) {
    const __mmask16 live = n - i >= 16 ? 0xFFFF : static_cast<__mmask16>((1u << (n - i)) - 1);
    const MantissaScale sc =
        sstride ? MantissaScale(_mm512_maskz_loadu_ps(live, s1 + i),
                                _mm512_maskz_loadu_ps(live, s2 + i),
                                _mm512_maskz_loadu_ps(live, bound + i), round)
                : MantissaScale(s1[0], s2[0], bound[0], round);
    __mmask16 bad, wrong;
    const __m512i m = Mantissas(_mm512_maskz_loadu_ps(live, x + i), live, sc, &bad, &wrong);
    nf |= bad;
    invalid += __builtin_popcount(static_cast<unsigned>(wrong));
    _mm256_mask_storeu_epi16(out + i, live, _mm512_cvtepi32_epi16(m));
  }
  *nonfinite |= nf ? 1 : 0;
  return invalid;
}
#elif TF_LOWPREC_DFP_AVX2
// ConvertRun for stride 1, with AVX2 (the same values and counts; the
// compiler does not vectorize the plain loop well).  sstride is 0 (one
// scale) or 1 (one per value).
inline int32_t ConvertContiguous(const float* x, int64_t n, const float* s1, const float* s2,
                                 const float* bound, int64_t sstride, bool round, int16_t* out,
                                 int32_t* nonfinite) {
  int32_t invalid = 0;
  __m256i nf = _mm256_setzero_si256();
  const __m256i max_m = _mm256_set1_epi32(kMaxMantissa);
  const __m256i exponent = _mm256_set1_epi32(0x7F800000);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 y = _mm256_loadu_ps(x + i);
    const __m256 a = sstride ? _mm256_loadu_ps(s1 + i) : _mm256_set1_ps(s1[0]);
    const __m256 b = sstride ? _mm256_loadu_ps(s2 + i) : _mm256_set1_ps(s2[0]);
    const __m256 hi_clamp = sstride ? _mm256_loadu_ps(bound + i) : _mm256_set1_ps(bound[0]);
    const __m256 lo_clamp = _mm256_sub_ps(_mm256_setzero_ps(), hi_clamp);
    const __m256i bad =  // NaN or Inf: all exponent bits set
        _mm256_cmpeq_epi32(_mm256_and_si256(_mm256_castps_si256(y), exponent), exponent);
    nf = _mm256_or_si256(nf, bad);
    const __m256 v = _mm256_andnot_ps(_mm256_castsi256_ps(bad), _mm256_mul_ps(_mm256_mul_ps(y, a), b));
    const __m256 clamped = _mm256_min_ps(_mm256_max_ps(v, lo_clamp), hi_clamp);
    // vroundps with an explicit mode: nearest even whatever MXCSR says.
    const __m256i m = _mm256_cvttps_epi32(
        round ? _mm256_round_ps(clamped, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC) : clamped);
    const __m256i inexact =
        round ? _mm256_setzero_si256()
              : _mm256_castps_si256(_mm256_cmp_ps(_mm256_cvtepi32_ps(m), v, _CMP_NEQ_UQ));
    const __m256i wrong = _mm256_or_si256(inexact, _mm256_cmpgt_epi32(_mm256_abs_epi32(m), max_m));
    invalid += __builtin_popcount(static_cast<unsigned>(_mm256_movemask_ps(_mm256_castsi256_ps(wrong))));
    // int16: the low halves (as the scalar cast), packed within 128-bit
    // lanes, then the two lanes' first quarters joined.
    const __m256i low = _mm256_srai_epi32(_mm256_slli_epi32(m, 16), 16);
    const __m256i packed = _mm256_permute4x64_epi64(_mm256_packs_epi32(low, low), 0x08);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + i), _mm256_castsi256_si128(packed));
  }
  *nonfinite |= _mm256_testz_si256(nf, nf) ? 0 : 1;
  if (i < n) {
    invalid += ConvertRun(x + i, 1, n - i, s1 + (sstride ? i : 0), s2 + (sstride ? i : 0),
                          bound + (sstride ? i : 0), sstride, round, out + i, nonfinite);
  }
  return invalid;
}
#endif

inline int32_t PairWord(int16_t lo, int16_t hi) {
  return static_cast<int32_t>(static_cast<uint32_t>(static_cast<uint16_t>(lo)) |
                              (static_cast<uint32_t>(static_cast<uint16_t>(hi)) << 16));
}

// out[l] = PairWord(lo[l], hi[l]) for l < n: the pair words of two K rows'
// mantissas (the even K in the low halves).
inline void JoinPairWords(const int16_t* lo, const int16_t* hi, int64_t n, int32_t* out) {
#if TF_LOWPREC_DFP_VNNI
  for (int64_t l = 0; l < n; l += 16) {
    const __mmask16 live = n - l >= 16 ? 0xFFFF : static_cast<__mmask16>((1u << (n - l)) - 1);
    const __m512i wlo = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(live, lo + l));
    const __m512i whi = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(live, hi + l));
    _mm512_mask_storeu_epi32(out + l, live, _mm512_or_si512(wlo, _mm512_slli_epi32(whi, 16)));
  }
#else
  int64_t l = 0;
#if TF_LOWPREC_DFP_AVX2
  for (; l + 8 <= n; l += 8) {
    const __m128i wlo = _mm_loadu_si128(reinterpret_cast<const __m128i*>(lo + l));
    const __m128i whi = _mm_loadu_si128(reinterpret_cast<const __m128i*>(hi + l));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + l), _mm_unpacklo_epi16(wlo, whi));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + l + 4), _mm_unpackhi_epi16(wlo, whi));
  }
#endif
  for (; l < n; ++l) out[l] = PairWord(lo[l], hi[l]);
#endif
}

#if TF_LOWPREC_DFP_VNNI
// r[i] = column i of the 16 x 16 matrix of INT32 words whose rows were r[i].
inline void Transpose16x16(__m512i* r) {
  __m512i t[16];
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
  }
  for (int i = 0; i < 4; ++i) {
    r[4 * i] = _mm512_unpacklo_epi64(t[4 * i], t[4 * i + 2]);
    r[4 * i + 1] = _mm512_unpackhi_epi64(t[4 * i], t[4 * i + 2]);
    r[4 * i + 2] = _mm512_unpacklo_epi64(t[4 * i + 1], t[4 * i + 3]);
    r[4 * i + 3] = _mm512_unpackhi_epi64(t[4 * i + 1], t[4 * i + 3]);
  }
  for (int i = 0; i < 2; ++i) {
    for (int j = 0; j < 4; ++j) {
      t[8 * i + j] = _mm512_shuffle_i32x4(r[8 * i + j], r[8 * i + 4 + j], 0x88);
      t[8 * i + 4 + j] = _mm512_shuffle_i32x4(r[8 * i + j], r[8 * i + 4 + j], 0xdd);
    }
  }
  for (int j = 0; j < 8; ++j) {
    r[j] = _mm512_shuffle_i32x4(t[j], t[8 + j], 0x88);
    r[8 + j] = _mm512_shuffle_i32x4(t[j], t[8 + j], 0xdd);
  }
}

// One exponent block of lanes whose K values are contiguous (a row-major a,
// a transposed b): PackPanels' values, pair words, NaN lanes and invalid
// counts, 16 pairs of up to 16 lanes at a time.  Each lane's 32 values are
// converted as ConvertContiguous does and narrowed to 16 pair words in one
// register (a word permute of the two vectors' low halves), the 16 x 16
// words are transposed in registers, and each pair's lanes are stored with
// one masked store.  Before: the lanes' runs converted one by one and every
// pair word stored alone with a stride of the panel width (a quarter of a
// dense layer's d(x) GEMM, whose b is transposed, on Zen 4).  Lanes go 16 at
// a time within a panel of 32, 48 or 64 lanes, 6 at a time (one panel) for
// the A panels.  s1, s2, bound: the lanes' scale factors, from lane0.
template <int kWidth>
int64_t PackLaneRuns(const OperandView& src, const BlockLayout& layout, int64_t blk,
                     int64_t lane0, int64_t lanes, const float* s1, const float* s2,
                     const float* bound, int32_t* panel, int64_t panel_words,
                     int32_t* lane_nonfinite) {
  constexpr int kGroupLanes = kWidth % 16 == 0 ? 16 : kWidth;
  static_assert(kGroupLanes <= 16, "lanes of one group: one transposed block");
  const int64_t k0 = layout.Start(blk), len = layout.Length(blk);
  const int64_t pair0 = layout.PairOffset(blk);
  const __m512i low_words = _mm512_set_epi16(
      62, 60, 58, 56, 54, 52, 50, 48, 46, 44, 42, 40, 38, 36, 34, 32,
      30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
  int64_t invalid = 0;
  for (int64_t g = 0; g < lanes; g += kGroupLanes) {
    const int nl = static_cast<int>(Min64(kGroupLanes, lanes - g));
    const __mmask16 lane_mask = static_cast<__mmask16>((1u << nl) - 1);
    int32_t* base = panel + (g / kWidth) * panel_words + pair0 * kWidth + g % kWidth;
    for (int64_t kk = 0; kk < len; kk += 32) {
      const int64_t nk = Min64(32, len - kk);
      const __mmask16 live0 = nk >= 16 ? 0xFFFF : static_cast<__mmask16>((1u << nk) - 1);
      const __mmask16 live1 = nk >= 32   ? 0xFFFF
                              : nk > 16 ? static_cast<__mmask16>((1u << (nk - 16)) - 1)
                                        : 0;
      __m512i words[16];
      for (int l = 0; l < 16; ++l) {
        if (l >= nl) {
          words[l] = _mm512_setzero_si512();
          continue;
        }
        const float* x = src.data + (lane0 + g + l) * src.lane_stride + k0 + kk;
        const MantissaScale sc(s1[g + l], s2[g + l], bound[g + l], src.round);
        __mmask16 bad_any = 0;
        __m512i m[2];
        for (int h = 0; h < 2; ++h) {
          const __mmask16 live = h == 0 ? live0 : live1;
          __mmask16 bad, wrong;
          m[h] = Mantissas(_mm512_maskz_loadu_ps(live, x + 16 * h), live, sc, &bad, &wrong);
          bad_any |= bad;
          invalid += __builtin_popcount(static_cast<unsigned>(wrong));
        }
        lane_nonfinite[g + l] |= bad_any != 0;
        // Pair word q: the mantissas of K values 2q (low half) and 2q + 1;
        // past the block's end (an odd length's last pair) zeros.
        words[l] = _mm512_permutex2var_epi16(m[0], low_words, m[1]);
      }
      Transpose16x16(words);
      const int64_t pairs = (nk + 1) / 2;
      int32_t* o = base + (kk / 2) * kWidth;
      for (int64_t q = 0; q < pairs; ++q) {
        _mm512_mask_storeu_epi32(o + q * kWidth, lane_mask, words[q]);
      }
    }
  }
  return invalid;
}
#endif  // TF_LOWPREC_DFP_VNNI

// Packs lanes [lane0, lane0 + lanes) into consecutive panels of kWidth lanes
// each, panel p at panel + p * panel_words, as [total_pairs][kWidth] (lanes
// <= kGroup * kWidth; lanes past `lanes` are zero).  Sets nonfinite[l] for
// lanes with NaN or Inf; returns the number of invalid elements.  Where the
// lanes are contiguous in memory (b not transposed), a group of panels reads
// kGroup * kWidth consecutive floats per k instead of kWidth: the rows of a
// wide b are pages apart, and one panel at a time touched a new page (a TLB
// miss) for every 64 bytes.
template <int kWidth, int kGroup = 1>
int64_t PackPanels(const OperandView& src, const BlockLayout& layout, int64_t lane0,
                   int64_t lanes, int32_t* panel, int64_t panel_words, uint8_t* nonfinite) {
  constexpr int kLanes = kWidth * kGroup;
  const int64_t panels = CeilDiv(lanes, kWidth);
  int64_t invalid = 0;
  int32_t scale_invalid = 0;
  // Every pair word of the lanes is written below (odd block lengths get a
  // zero high half); only a partial last panel needs its other lanes zeroed.
  if (lanes % kWidth != 0) {
    std::memset(panel + (panels - 1) * panel_words, 0,
                sizeof(int32_t) * layout.total_pairs * kWidth);
  }
  int32_t lane_nonfinite[kLanes] = {};
  constexpr int64_t kRun = 1024;  // K values converted at a time (even)
  alignas(64) int16_t run[kRun + 2];
  alignas(64) int16_t lo[kLanes], hi[kLanes];
  for (int64_t blk = 0; blk < layout.blocks; ++blk) {
    const int64_t k0 = layout.Start(blk), len = layout.Length(blk);
    float s1[kLanes], s2[kLanes], bound[kLanes];
    for (int64_t l = 0; l < kLanes; ++l) s1[l] = s2[l] = bound[l] = 0.0f;
    for (int64_t l = 0; l < lanes; ++l) {
      ScaleFactors(src.exponents[(lane0 + l) * src.e_lane_stride + blk * src.e_block_stride],
                   &s1[l], &s2[l], &bound[l], &scale_invalid);
    }
    if (src.k_stride == 1 && src.lane_stride == len && src.e_lane_stride == 0 &&
        lanes * len <= kRun) {
      // Short K, one exponent for all lanes, and the lanes' rows back to back
      // (a row-major a with one exponent block): one run converts them all,
      // instead of one short run per lane (the CNN shapes: K = 27 .. 170).
      const float* x = src.data + lane0 * src.lane_stride + k0;
      int32_t nf = 0;
#if DFP_CONVERT_CONTIGUOUS
      invalid += ConvertContiguous(x, lanes * len, s1, s2, bound, 0, src.round, run, &nf);
#else
      invalid += ConvertRun(x, 1, lanes * len, s1, s2, bound, 0, src.round, run, &nf);
#endif
      for (int64_t l = 0; l < lanes; ++l) {
        const int16_t* values = run + l * len;
        int32_t* o = panel + (l / kWidth) * panel_words + layout.PairOffset(blk) * kWidth +
                     l % kWidth;
        for (int64_t q = 0; q < len / 2; ++q) {
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
          std::memcpy(o + q * kWidth, values + 2 * q, 4);  // two int16 = the pair word
#else
          o[q * kWidth] = PairWord(values[2 * q], values[2 * q + 1]);
#endif
        }
        if (len % 2 != 0) o[(len / 2) * kWidth] = PairWord(values[len - 1], 0);  // zero padding
        if (nf) {  // rare: find which lanes
          for (int64_t i = 0; i < len; ++i) {
            uint32_t bits;
            std::memcpy(&bits, x + l * len + i, 4);
            lane_nonfinite[l] |= (bits & 0x7F800000u) == 0x7F800000u;
          }
        }
      }
    } else if (src.k_stride == 1) {
#if TF_LOWPREC_DFP_VNNI
      invalid += PackLaneRuns<kWidth>(src, layout, blk, lane0, lanes, s1, s2, bound, panel,
                                      panel_words, lane_nonfinite);
#else
      // K contiguous within a lane: convert runs of a lane, then scatter the
      // pair words (an int16 run read as int32 words is exactly the pairs).
      for (int64_t l = 0; l < lanes; ++l) {
        const float* x = src.data + (lane0 + l) * src.lane_stride + k0;
        int32_t* out = panel + (l / kWidth) * panel_words + layout.PairOffset(blk) * kWidth;
        for (int64_t r0 = 0; r0 < len; r0 += kRun) {
          const int64_t n = Min64(kRun, len - r0);
#if DFP_CONVERT_CONTIGUOUS
          invalid += ConvertContiguous(x + r0, n, &s1[l], &s2[l], &bound[l], 0, src.round, run, &lane_nonfinite[l]);
#else
          invalid += ConvertRun(x + r0, 1, n, &s1[l], &s2[l], &bound[l], 0, src.round, run, &lane_nonfinite[l]);
#endif
          run[n] = 0;  // odd tail: the pair's high half is zero padding
          int32_t* o = out + (r0 / 2) * kWidth + l % kWidth;
          for (int64_t q = 0; q < (n + 1) / 2; ++q) {
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
            std::memcpy(o + q * kWidth, run + 2 * q, 4);  // two int16 = the pair word
#else
            o[q * kWidth] = PairWord(run[2 * q], run[2 * q + 1]);
#endif
          }
        }
      }
#endif  // TF_LOWPREC_DFP_VNNI
#if TF_LOWPREC_DFP_VNNI
    } else if (kWidth % 16 == 0 && src.lane_stride == 1 && src.e_lane_stride == 0) {
      // Lanes contiguous for each k, one exponent for all of them (a
      // row-major b with per-tensor or per-block exponents: the filter
      // gradient's dy [pixels, O]): each pair word made in registers from
      // the two rows' int32 mantissas, 16 lanes at a time (a vector never
      // straddles panels of 16 * kNv lanes), with Mantissas
      // (the same values and counts as ConvertContiguous), and
      // the NaN / Inf lanes gathered as masks.  The int16 rows stored and
      // reloaded by the general path below took most of the d(filters)
      // packing of the CNN's first layer.
      const MantissaScale sc(s1[0], s2[0], bound[0], src.round);
      const __m512i low_half = _mm512_set1_epi32(0xFFFF);
      __mmask16 nf_lanes[(kLanes + 15) / 16] = {};
      auto convert = [&](__m512 y, __mmask16 live, int64_t v) {
        __mmask16 bad, wrong;
        const __m512i m = Mantissas(y, live, sc, &bad, &wrong);
        nf_lanes[v] |= bad;
        invalid += __builtin_popcount(static_cast<unsigned>(wrong));
        return m;
      };
      for (int64_t kk = 0; kk < len; kk += 2) {
        const float* x0 = src.data + (k0 + kk) * src.k_stride + lane0;
        const bool second = kk + 1 < len;
        for (int64_t l = 0; l < lanes; l += 16) {
          const __mmask16 live =
              lanes - l >= 16 ? 0xFFFF : static_cast<__mmask16>((1u << (lanes - l)) - 1);
          const __m512i lo_m = convert(_mm512_maskz_loadu_ps(live, x0 + l), live, l / 16);
          const __m512i hi_m = second ? convert(_mm512_maskz_loadu_ps(live, x0 + src.k_stride + l),
                                                live, l / 16)
                                      : _mm512_setzero_si512();  // odd K: zero high halves
          int32_t* o = panel + (l / kWidth) * panel_words +
                       (layout.PairOffset(blk) + kk / 2) * kWidth + l % kWidth;
          _mm512_mask_storeu_epi32(
              o, live, _mm512_or_si512(_mm512_and_si512(lo_m, low_half), _mm512_slli_epi32(hi_m, 16)));
        }
      }
      for (int64_t l = 0; l < lanes; ++l) lane_nonfinite[l] |= (nf_lanes[l / 16] >> (l % 16)) & 1;
#endif
    } else {
      // Lanes contiguous for each k: convert two rows, interleave them.
      int32_t nf = 0;
      for (int64_t kk = 0; kk < len; kk += 2) {
        const float* x0 = src.data + (k0 + kk) * src.k_stride + lane0 * src.lane_stride;
#if DFP_CONVERT_CONTIGUOUS
        if (src.lane_stride == 1) {
          invalid += ConvertContiguous(x0, lanes, s1, s2, bound, 1, src.round, lo, &nf);
        } else {
          invalid += ConvertRun(x0, src.lane_stride, lanes, s1, s2, bound, 1, src.round, lo, &nf);
        }
        if (kk + 1 < len && src.lane_stride == 1) {
          invalid += ConvertContiguous(x0 + src.k_stride, lanes, s1, s2, bound, 1, src.round, hi, &nf);
        } else if (kk + 1 < len) {
#else
        invalid += ConvertRun(x0, src.lane_stride, lanes, s1, s2, bound, 1, src.round, lo, &nf);
        if (kk + 1 < len) {
#endif
          invalid += ConvertRun(x0 + src.k_stride, src.lane_stride, lanes, s1, s2, bound, 1, src.round, hi, &nf);
        } else {
          for (int64_t l = 0; l < lanes; ++l) hi[l] = 0;
        }
        for (int64_t p = 0; p < panels; ++p) {
          int32_t* o = panel + p * panel_words + (layout.PairOffset(blk) + kk / 2) * kWidth;
          const int16_t* plo = lo + p * kWidth;
          const int16_t* phi = hi + p * kWidth;
          const int64_t plane = Min64(kWidth, lanes - p * kWidth);
          JoinPairWords(plo, phi, plane, o);
        }
        if (nf) {  // rare: find which lanes
          for (int64_t l = 0; l < lanes; ++l) {
            const float v0 = x0[l * src.lane_stride];
            const float v1 = kk + 1 < len ? x0[src.k_stride + l * src.lane_stride] : 0.0f;
            uint32_t b0, b1;
            std::memcpy(&b0, &v0, 4);
            std::memcpy(&b1, &v1, 4);
            lane_nonfinite[l] |= ((b0 & 0x7F800000u) == 0x7F800000u) |
                                 ((b1 & 0x7F800000u) == 0x7F800000u);
          }
          nf = 0;
        }
      }
    }
  }
  invalid += scale_invalid;
  for (int64_t l = 0; l < lanes; ++l) nonfinite[l] |= lane_nonfinite[l] ? 1 : 0;
  return invalid;
}

// One panel: lanes [lane0, lane0 + lanes), lanes <= kWidth.
template <int kWidth>
int64_t PackPanel(const OperandView& src, const BlockLayout& layout, int64_t lane0,
                  int64_t lanes, int32_t* panel, uint8_t* nonfinite) {
  return PackPanels<kWidth>(src, layout, lane0, lanes, panel, 0, nonfinite);
}

}  // namespace
}  // namespace TF_LOWPREC_DFP_ISA
}  // namespace dfp_gemm
}  // namespace tf_lowprec

#undef DFP_CONVERT_CONTIGUOUS

#endif  // TF_LOWPREC_KERNELS_DFP_GEMM_PACK_H_
