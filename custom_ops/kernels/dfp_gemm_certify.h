// INT16 DFP GEMM: overflow certification of the INT32 chains from the
// segment norms of the packed panels (Cauchy-Schwarz).
// Part of dfp_gemm_impl.h (compiled once per tier, inside the tier's
// namespace TF_LOWPREC_DFP_ISA; see there).
#ifndef TF_LOWPREC_KERNELS_DFP_GEMM_CERTIFY_H_
#define TF_LOWPREC_KERNELS_DFP_GEMM_CERTIFY_H_

#include <cstdint>
#include <cstring>

#include "dfp_gemm_layout.h"

#if TF_LOWPREC_DFP_VNNI || TF_LOWPREC_DFP_AVX2
#include <immintrin.h>
#endif

namespace tf_lowprec {
namespace dfp_gemm {
namespace TF_LOWPREC_DFP_ISA {
namespace {

// The largest over the lanes of a packed panel of the sum over the pairs
// [q0, q0 + count) of the lane's squared mantissas, lo^2 + hi^2 (exact: at
// most 2^31 per pair).  The maximum is taken in registers: storing the lane
// sums and reading them back as scalars stalled on store forwarding (29 %
// of MeasureSegments' samples on Zen 4).
#if TF_LOWPREC_DFP_AVX2
// Lane-wise maximum of non-negative 64-bit values (AVX2 has no vpmaxuq; the
// sums are < 2^63, so the signed comparison orders them).
inline __m256i MaxNonNegative64(__m256i a, __m256i b) {
  return _mm256_blendv_epi8(b, a, _mm256_cmpgt_epi64(a, b));
}
inline __m128i MaxNonNegative64(__m128i a, __m128i b) {
  return _mm_blendv_epi8(b, a, _mm_cmpgt_epi64(a, b));
}
inline uint64_t LargestOfTwo64(__m128i a) {
  const uint64_t x = static_cast<uint64_t>(_mm_cvtsi128_si64(a));
  const uint64_t y = static_cast<uint64_t>(_mm_extract_epi64(a, 1));
  return x > y ? x : y;
}
#endif
template <int kWidth>
inline uint64_t LargestLaneSquares(const int32_t* words, int64_t q0, int64_t count) {
  // vpmaddwd gives every word's lo^2 + hi^2 as an unsigned 32-bit value
  // (at most 2^31: only (-2^15)^2 * 2 reaches it, read as unsigned it is
  // exact); the per-lane sums are widened to 64 bits before adding, so they
  // are exact, as in the scalar loop at the end.
#if TF_LOWPREC_DFP_VNNI
  if (kWidth == kMr && count <= kSegPairs) {
    // 8 pairs of 6 lanes = 48 consecutive words = 3 vectors = 6 vectors of
    // 8 widened squares; word i belongs to lane i mod 6.  Vectors u and
    // u + 3 (24 words apart) have the same lanes: adding them leaves 24
    // sums s[0..24), and lane l's total is s[l] + s[l+6] + s[l+12] + s[l+18],
    // gathered with permutes into positions 0..5.  A shorter segment (a
    // short K: K = 9 is 5 pairs) reads zeros past its count * 6 words.
    static_assert(kSegPairs * kMr == 48, "three vectors per full A segment");
    const int32_t* w = words + q0 * kWidth;
    const int64_t live_words = count * kWidth;
    __m512i s[3] = {_mm512_setzero_si512(), _mm512_setzero_si512(), _mm512_setzero_si512()};
    for (int v = 0; v < 3; ++v) {
      const int64_t live = live_words - 16 * v;
      const __m512i x =
          live >= 16 ? _mm512_loadu_si512(w + 16 * v)
                     : _mm512_maskz_loadu_epi32(
                           live > 0 ? static_cast<__mmask16>((1u << live) - 1) : 0, w + 16 * v);
      const __m512i sq = _mm512_madd_epi16(x, x);
      // Widened halves: 8-word groups 2v and 2v + 1 of the 6.
      s[(2 * v) % 3] = _mm512_add_epi64(
          s[(2 * v) % 3], _mm512_cvtepu32_epi64(_mm512_castsi512_si256(sq)));
      s[(2 * v + 1) % 3] = _mm512_add_epi64(
          s[(2 * v + 1) % 3], _mm512_cvtepu32_epi64(_mm512_extracti64x4_epi64(sq, 1)));
    }
    // s[0] = sums 0..7, s[1] = 8..15, s[2] = 16..23.
    const __m512i i6 = _mm512_setr_epi64(6, 7, 8, 9, 10, 11, 0, 0);   // of (s0, s1)
    const __m512i i12 = _mm512_setr_epi64(4, 5, 6, 7, 8, 9, 0, 0);   // of (s1, s2)
    const __m512i i18 = _mm512_setr_epi64(2, 3, 4, 5, 6, 7, 0, 0);   // of s2
    __m512i t = _mm512_add_epi64(s[0], _mm512_permutex2var_epi64(s[0], i6, s[1]));
    t = _mm512_add_epi64(t, _mm512_permutex2var_epi64(s[1], i12, s[2]));
    t = _mm512_add_epi64(t, _mm512_permutexvar_epi64(i18, s[2]));
    return _mm512_mask_reduce_max_epu64(static_cast<__mmask8>((1u << kMr) - 1), t);
  }
  if constexpr (kWidth % 16 == 0) {
    // B panels: kWidth lanes per pair, 16 per vector: per-lane 64-bit sums.
    __m512i acc[kWidth / 8];
    for (int v = 0; v < kWidth / 8; ++v) acc[v] = _mm512_setzero_si512();
    for (int64_t q = q0; q < q0 + count; ++q) {
      for (int v = 0; v < kWidth / 16; ++v) {
        const __m512i x = _mm512_loadu_si512(words + q * kWidth + 16 * v);
        const __m512i sq = _mm512_madd_epi16(x, x);
        acc[2 * v] = _mm512_add_epi64(acc[2 * v], _mm512_cvtepu32_epi64(_mm512_castsi512_si256(sq)));
        acc[2 * v + 1] = _mm512_add_epi64(acc[2 * v + 1],
                                          _mm512_cvtepu32_epi64(_mm512_extracti64x4_epi64(sq, 1)));
      }
    }
    __m512i largest = acc[0];
    for (int v = 1; v < kWidth / 8; ++v) largest = _mm512_max_epu64(largest, acc[v]);
    return _mm512_reduce_max_epu64(largest);
  }
#elif TF_LOWPREC_DFP_AVX2
  if (kWidth == kMr && count == kSegPairs) {
    // 48 words = 6 vectors = 12 vectors of 4 widened squares; word i belongs
    // to lane i mod 6, so vectors u and u + 3 (12 words apart) have the same
    // lanes: adding them leaves 12 sums s[0..12) in a, b, c, and lane l's
    // total is s[l] + s[l+6]: lanes 0..3 = a + (b2, b3, c0, c1), lanes 4, 5 =
    // (b0, b1) + (c2, c3).
    static_assert(kSegPairs * kMr == 48, "six vectors per full A segment");
    const int32_t* w = words + q0 * kWidth;
    __m256i s[3] = {_mm256_setzero_si256(), _mm256_setzero_si256(), _mm256_setzero_si256()};
    for (int v = 0; v < 6; ++v) {
      const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + 8 * v));
      const __m256i sq = _mm256_madd_epi16(x, x);
      s[(2 * v) % 3] = _mm256_add_epi64(
          s[(2 * v) % 3], _mm256_cvtepu32_epi64(_mm256_castsi256_si128(sq)));
      s[(2 * v + 1) % 3] = _mm256_add_epi64(
          s[(2 * v + 1) % 3], _mm256_cvtepu32_epi64(_mm256_extracti128_si256(sq, 1)));
    }
    const __m256i lanes0to3 = _mm256_add_epi64(s[0], _mm256_permute2x128_si256(s[1], s[2], 0x21));
    const __m128i lanes4to5 =
        _mm_add_epi64(_mm256_castsi256_si128(s[1]), _mm256_extracti128_si256(s[2], 1));
    const __m128i largest =
        MaxNonNegative64(MaxNonNegative64(_mm256_castsi256_si128(lanes0to3),
                                          _mm256_extracti128_si256(lanes0to3, 1)),
                         lanes4to5);
    return LargestOfTwo64(largest);
  }
  if constexpr (kWidth % 8 == 0) {
    // B panels: kWidth lanes per pair, 8 per vector: per-lane 64-bit sums.
    __m256i acc[kWidth / 4];
    for (int v = 0; v < kWidth / 4; ++v) acc[v] = _mm256_setzero_si256();
    for (int64_t q = q0; q < q0 + count; ++q) {
      for (int v = 0; v < kWidth / 8; ++v) {
        const __m256i x =
            _mm256_loadu_si256(reinterpret_cast<const __m256i*>(words + q * kWidth + 8 * v));
        const __m256i sq = _mm256_madd_epi16(x, x);
        acc[2 * v] = _mm256_add_epi64(acc[2 * v], _mm256_cvtepu32_epi64(_mm256_castsi256_si128(sq)));
        acc[2 * v + 1] = _mm256_add_epi64(acc[2 * v + 1],
                                          _mm256_cvtepu32_epi64(_mm256_extracti128_si256(sq, 1)));
      }
    }
    __m256i largest = acc[0];
    for (int v = 1; v < kWidth / 4; ++v) largest = MaxNonNegative64(largest, acc[v]);
    return LargestOfTwo64(MaxNonNegative64(_mm256_castsi256_si128(largest),
                                           _mm256_extracti128_si256(largest, 1)));
  }
#endif
  uint64_t squares[kWidth];
  for (int l = 0; l < kWidth; ++l) squares[l] = 0;
  for (int64_t q = q0; q < q0 + count; ++q) {
    for (int l = 0; l < kWidth; ++l) {
      const int32_t w = words[q * kWidth + l];
      const int32_t lo = static_cast<int16_t>(static_cast<uint32_t>(w) & 0xFFFFu);
      const int32_t hi = w >> 16;
      squares[l] += static_cast<uint32_t>(lo * lo) + static_cast<uint32_t>(hi * hi);
    }
  }
  uint64_t best = 0;
  for (int l = 0; l < kWidth; ++l) best = squares[l] > best ? squares[l] : best;
  return best;
}

// The segment norms of a packed panel (SegmentData::norm): per segment, an
// upper bound of the square root of the largest sum of squares of one
// lane's mantissas (the sums are exact, in 64 bits).
template <int kWidth>
void MeasureSegments(const int32_t* panel, const BlockLayout& layout, const SegmentLayout& segs,
                     double* norm) {
  constexpr double kSqrtUp = 1.0 + 1.0 / (1ull << 50);  // sqrt is correctly rounded
  std::memset(norm, 0, sizeof(double) * segs.per_panel);
  for (int64_t blk = 0; blk < layout.blocks; ++blk) {
    const int32_t* words = panel + layout.PairOffset(blk) * kWidth;
    const int64_t pairs = layout.Pairs(blk);
    for (int64_t c0 = 0; c0 < pairs; c0 += segs.chunk_pairs) {
      const int64_t c1 = Min64(pairs, c0 + segs.chunk_pairs);
      for (int64_t s0 = c0; s0 < c1; s0 += kSegPairs) {
        const uint64_t best =
            LargestLaneSquares<kWidth>(words, s0, Min64(c1, s0 + kSegPairs) - s0);
        norm[segs.Index(blk, s0)] = static_cast<double>(best);  // exact (< 2^53)
      }
    }
  }
  // Square roots, rounded up (slots of segments that do not exist hold 0).
  int64_t e = 0;
#if TF_LOWPREC_DFP_VNNI
  for (; e + 8 <= segs.seg_slots; e += 8) {
    _mm512_storeu_pd(norm + e, _mm512_mul_pd(_mm512_sqrt_pd(_mm512_loadu_pd(norm + e)),
                                             _mm512_set1_pd(kSqrtUp)));
  }
#elif TF_LOWPREC_DFP_AVX2
  for (; e + 4 <= segs.seg_slots; e += 4) {
    _mm256_storeu_pd(norm + e, _mm256_mul_pd(_mm256_sqrt_pd(_mm256_loadu_pd(norm + e)),
                                             _mm256_set1_pd(kSqrtUp)));
  }
#endif
  for (; e < segs.seg_slots; ++e) norm[e] = __builtin_sqrt(norm[e]) * kSqrtUp;
  // Per chunk, the sum of the squares of its (at most kMaxSegments proved)
  // segment norms; the slots of segments that do not exist add 0.
  const int64_t nseg = Min64(segs.per_chunk, kMaxSegments);
  for (int64_t c = 0; c * segs.per_chunk < segs.seg_slots; ++c) {
    const double* n = norm + c * segs.per_chunk;
    double sq = 0.0;
    for (int64_t j = 0; j < nseg; ++j) sq += n[j] * n[j];
    norm[segs.seg_slots + c] = sq;
  }
}

// MeasureSegments' slots of chunks [c0, c1) only, for a panel of one
// exponent block (the slots of other chunks untouched): the same values,
// so that a panel packed in K slices by several threads is measured slice
// by slice.
template <int kWidth>
void MeasureChunkSegments(const int32_t* panel, const BlockLayout& layout,
                          const SegmentLayout& segs, int64_t c0, int64_t c1, double* norm) {
  constexpr double kSqrtUp = 1.0 + 1.0 / (1ull << 50);  // sqrt is correctly rounded
  const int64_t e0 = c0 * segs.per_chunk, e1 = c1 * segs.per_chunk;
  std::memset(norm + e0, 0, sizeof(double) * (e1 - e0));
  const int64_t pairs = layout.Pairs(0);
  for (int64_t c = c0; c < c1; ++c) {
    const int64_t p0 = c * segs.chunk_pairs, p1 = Min64(pairs, p0 + segs.chunk_pairs);
    for (int64_t s0 = p0; s0 < p1; s0 += kSegPairs) {
      const uint64_t best = LargestLaneSquares<kWidth>(panel, s0, Min64(p1, s0 + kSegPairs) - s0);
      norm[segs.Index(0, s0)] = static_cast<double>(best);  // exact (< 2^53)
    }
  }
  int64_t e = e0;
#if TF_LOWPREC_DFP_VNNI
  for (; e + 8 <= e1; e += 8) {
    _mm512_storeu_pd(norm + e, _mm512_mul_pd(_mm512_sqrt_pd(_mm512_loadu_pd(norm + e)),
                                             _mm512_set1_pd(kSqrtUp)));
  }
#elif TF_LOWPREC_DFP_AVX2
  for (; e + 4 <= e1; e += 4) {
    _mm256_storeu_pd(norm + e, _mm256_mul_pd(_mm256_sqrt_pd(_mm256_loadu_pd(norm + e)),
                                             _mm256_set1_pd(kSqrtUp)));
  }
#endif
  for (; e < e1; ++e) norm[e] = __builtin_sqrt(norm[e]) * kSqrtUp;
  const int64_t nseg = Min64(segs.per_chunk, kMaxSegments);
  for (int64_t c = c0; c < c1; ++c) {
    const double* n = norm + c * segs.per_chunk;
    double sq = 0.0;
    for (int64_t j = 0; j < nseg; ++j) sq += n[j] * n[j];
    norm[segs.seg_slots + c] = sq;
  }
}

// Overflow proof by segments (Cauchy-Schwarz).  The packing records, for
// every segment of kSegPairs K pairs of every panel (segments start at each
// chunk start), an upper bound on the largest Euclidean norm of one lane's
// mantissas over the segment (SegmentData::norm).  For a micro-tile chunk,
// B_j = norm_a[j] * norm_b[j] bounds |sum of I_a * I_b| over every prefix of
// segment j, for every (row, column) of the tile.  So if B_0 <= INT32_MAX no
// chain leaves INT32 in segment 0, and if after segment j - 1 every
// accumulator has |S| <= INT32_MAX - B_j, none leaves it in segment j: one
// max-|S| reduction per segment boundary (a checkpoint) proves the chunk
// overflow-free, instead of tracking every step.  Where a checkpoint fails
// (~7 % of Gaussian full-scale chunks of 64, mostly at the last one) the
// accumulators are still exact, and the rest of the chunk runs with an exact
// overflow test after every step (saturation for VNNI, sign tests for AVX2).
constexpr double kInt32MaxD = 2147483647.0;
constexpr double kBoundUp = 1.0 + 1.0 / (1ull << 40);  // covers the roundings of the products
constexpr double kMergeLimit = 4.6116860e18;  // < (INT32_MAX - 1)^2


// The proof of one chunk of nseg segments, from its segment norms an, bn
// (SegmentData): returns `first`, the segments [0, first) merged into a
// first piece while their joint bound sqrt(sum an_j^2) * sqrt(sum bn_j^2)
// stays <= INT32_MAX - 1 (no check needed: the sums start at 0); sets
// *good >= first, the end of the run of segments after it that are proved
// one at a time, and for those thr[j] = floor(INT32_MAX - B_j) - 1, the
// largest |S| that may enter segment j.  (The VNNI micro-kernel computes
// the same with AVX-512.)
inline int64_t PlanChunkProof(const double* an, const double* bn, int64_t nseg, int32_t* thr,
                              int64_t* good) {
  int64_t first = 0;
  double a2 = 0.0, b2 = 0.0;
  while (first < nseg) {
    a2 += an[first] * an[first];
    b2 += bn[first] * bn[first];
    if (!(a2 * b2 * kBoundUp <= kMergeLimit)) break;
    ++first;
  }
  int64_t j = first;
  if (first > 0) {
    for (; j < nseg; ++j) {
      const double room = kInt32MaxD - (an[j] * bn[j]) * kBoundUp;
      if (!(room >= 1.0)) break;
      thr[j] = static_cast<int32_t>(room) - 1;
    }
  }
  *good = j;
  return first;
}

}  // namespace
}  // namespace TF_LOWPREC_DFP_ISA
}  // namespace dfp_gemm
}  // namespace tf_lowprec

#endif  // TF_LOWPREC_KERNELS_DFP_GEMM_CERTIFY_H_
