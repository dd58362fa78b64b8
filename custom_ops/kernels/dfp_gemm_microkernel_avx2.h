// INT16 DFP GEMM: the AVX2 micro-kernel (vpmaddwd + vpaddd chains,
// certified or tracked; see dfp_gemm_impl.h, "Overflow").
// Part of dfp_gemm_impl.h (compiled once per tier, inside the tier's
// namespace TF_LOWPREC_DFP_ISA; see there).
//
// Tiles of 6 rows x 16 columns: 12 ymm accumulators of 8 INT32 lanes, the
// two B vectors of the current K pair, the broadcast A word and one product
// register fill the 16 ymm registers.  One K pair costs 2 B loads, 6
// broadcasts from memory and 12 x (vpmaddwd + vpaddd); the B micro-panel
// (KcPairs(1) pairs x 64 bytes = 16 KB) stays in L1.  The operands are the
// packing's K-pair words (low half: even k, high half: odd k), so vpmaddwd
// of a broadcast A word with a B vector gives each lane's pair sum
// I_a[2q] I_b[2q] + I_a[2q+1] I_b[2q+1], exact in INT32 (|t| <= 2 * 32767^2).
//
// vpaddd wraps instead of saturating, so the tracked part of a chunk (where
// the proof fails) must see every step: it keeps, beside the wrapping sums,
// coarse sums A (the sums of floor(t / 2^16), which never overflow) and
// their running maximum and minimum.  Every prefix lies in [2^16 A, 2^16 A +
// (n + 1) (2^16 - 1)] for its A, which decides for nearly every chain whether
// some prefix left INT32 and gives the exact sum from the wrapped one; rows
// with a chain
// too close to a limit to decide are recomputed with the exact per-step
// sign test (Avx2TrackedRowExact).  No INT64 recomputation.
#ifndef TF_LOWPREC_KERNELS_DFP_GEMM_MICROKERNEL_AVX2_H_
#define TF_LOWPREC_KERNELS_DFP_GEMM_MICROKERNEL_AVX2_H_

#include <immintrin.h>

#include <cstdint>
#include <cstring>

#include "dfp_gemm.h"
#include "dfp_gemm_certify.h"
#include "dfp_gemm_layout.h"

namespace tf_lowprec {
namespace dfp_gemm {
namespace TF_LOWPREC_DFP_ISA {
namespace {

static_assert(kMr == 6, "the AVX2 micro-kernel is written for tiles of 6 rows");

#define DFP_AVX2_INLINE inline __attribute__((always_inline))

// The tile's accumulators: row r, columns 8h .. 8h + 7 in acc[2r + h].
using Avx2Accumulators = __m256i[2 * kMr];

// n K pairs of the chains: acc += the pair sums; a and b advance.
DFP_AVX2_INLINE void Avx2Steps(const int32_t*& a, const int32_t*& b, int64_t n,
                               Avx2Accumulators& acc) {
#pragma GCC unroll 2
  for (int64_t q = 0; q < n; ++q) {
    const __m256i b0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b));
    const __m256i b1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + 8));
#pragma GCC unroll 6
    for (int r = 0; r < kMr; ++r) {
      const __m256i ar = _mm256_set1_epi32(a[r]);
      acc[2 * r] = _mm256_add_epi32(acc[2 * r], _mm256_madd_epi16(ar, b0));
      acc[2 * r + 1] = _mm256_add_epi32(acc[2 * r + 1], _mm256_madd_epi16(ar, b1));
    }
    a += kMr;
    b += 16;
  }
}

// Whether some accumulator has |S| > threshold (a failed checkpoint).  The
// accumulators are exact and |S| <= INT32_MAX here, so vpabsd and the
// signed comparison are exact.
DFP_AVX2_INLINE bool Avx2AnyAbove(const Avx2Accumulators& acc, int32_t threshold) {
  __m256i m0 = _mm256_abs_epi32(acc[0]), m1 = _mm256_abs_epi32(acc[1]);
#pragma GCC unroll 5
  for (int i = 1; i < kMr; ++i) {
    m0 = _mm256_max_epi32(m0, _mm256_abs_epi32(acc[2 * i]));
    m1 = _mm256_max_epi32(m1, _mm256_abs_epi32(acc[2 * i + 1]));
  }
  const __m256i above = _mm256_cmpgt_epi32(_mm256_max_epi32(m0, m1), _mm256_set1_epi32(threshold));
  return !_mm256_testz_si256(above, above);
}

// tile = float(S) (init) or tile = tile + float(S); float() rounds to nearest even.
DFP_AVX2_INLINE void Avx2AddToTile(const __m256i* sums, bool init, float* tile) {
#pragma GCC unroll 12
  for (int i = 0; i < 2 * kMr; ++i) {
    const __m256 s = _mm256_cvtepi32_ps(sums[i]);
    float* t = tile + 8 * i;
    _mm256_storeu_ps(t, init ? s : _mm256_add_ps(_mm256_loadu_ps(t), s));
  }
}

// Longest tracked piece for the coarse sums below: (n + 1) (2^16 - 1) <
// 2^32 identifies the exact sum, and |A| < 2^15 + n (2^15 - 2) fits INT32
// (|t| <= 2 * 32767^2, so floor(t / 2^16) lies in [-2^15 + 2, 2^15 - 3]).
constexpr int64_t kCoarsePairs = 65535;

// The exact sums of one row's 16 lanes: P = 2^16 A + R, where A = floor(s0 /
// 2^16) + sum of floor(t / 2^16) (the coarse sums, exact in INT32) and R =
// (s0 mod 2^16) + sum of (t mod 2^16) in [0, (n + 1) (2^16 - 1)] < 2^32, so R =
// (W - 2^16 A) mod 2^32 for the wrapped sum W; assembled in double (exact:
// |P| < 2^53), rounded once to FP32 (as float(int64) rounds it) and added to
// the row of the tile (stored there: init).
DFP_AVX2_INLINE void Avx2StoreCoarseSums(const __m256i* wrapped, const __m256i* coarse, bool init,
                                         float* row) {
  const __m128i sign = _mm_set1_epi32(INT32_MIN);
  const __m256d two31 = _mm256_set1_pd(2147483648.0), two16 = _mm256_set1_pd(65536.0);
  for (int h = 0; h < 2; ++h) {
    const __m256i rest = _mm256_sub_epi32(wrapped[h], _mm256_slli_epi32(coarse[h], 16));
    for (int half = 0; half < 2; ++half) {
      const auto part = [half](__m256i v) {
        return half ? _mm256_extracti128_si256(v, 1) : _mm256_castsi256_si128(v);
      };
      const __m256d high = _mm256_mul_pd(_mm256_cvtepi32_pd(part(coarse[h])), two16);
      // R as unsigned: (R - 2^31 as int32) + 2^31.
      const __m256d r_d =
          _mm256_add_pd(_mm256_cvtepi32_pd(_mm_xor_si128(part(rest), sign)), two31);
      const __m128 v = _mm256_cvtpd_ps(_mm256_add_pd(high, r_d));
      float* t = row + 8 * h + 4 * half;
      _mm_storeu_ps(t, init ? v : _mm_add_ps(_mm_loadu_ps(t), v));
    }
  }
}

// Row r of the rest of a chunk, n <= kCoarsePairs pairs from a and b, from
// its exact sums s0[2] (the chunk's proved part), with the exact overflow
// test after every step: a lane overflows at the first step at which its
// prefix leaves INT32, and the sums are exact until then, so the test is
// exact there.  s + t overflowed exactly when (s > s + t, wrapped) differs
// from (t < 0): the sign bit of cmpgt(s, s + t) ^ t.  Adds float(exact sum)
// to the row of the tile (stores it: init) and returns how many lanes
// overflowed.  (The reference for Avx2TrackedRow, which falls back to it.)
inline int64_t Avx2TrackedRowExact(const int32_t* a, const int32_t* b, int64_t n,
                                   const __m256i* s0, bool init, float* row) {
  __m256i s[2] = {s0[0], s0[1]};
  __m256i flag[2] = {_mm256_setzero_si256(), _mm256_setzero_si256()};
  __m256i coarse[2] = {_mm256_srai_epi32(s0[0], 16), _mm256_srai_epi32(s0[1], 16)};
  for (int64_t q = 0; q < n; ++q) {
    const __m256i ar = _mm256_set1_epi32(a[q * kMr]);
#pragma GCC unroll 2
    for (int h = 0; h < 2; ++h) {
      const __m256i t = _mm256_madd_epi16(
          ar, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + q * 16 + 8 * h)));
      const __m256i sum = _mm256_add_epi32(s[h], t);
      flag[h] = _mm256_or_si256(flag[h], _mm256_xor_si256(_mm256_cmpgt_epi32(s[h], sum), t));
      coarse[h] = _mm256_add_epi32(coarse[h], _mm256_srai_epi32(t, 16));
      s[h] = sum;
    }
  }
  const int mask0 = _mm256_movemask_ps(_mm256_castsi256_ps(flag[0]));
  const int mask1 = _mm256_movemask_ps(_mm256_castsi256_ps(flag[1]));
  if ((mask0 | mask1) == 0) {  // exact in INT32
    for (int h = 0; h < 2; ++h) {
      const __m256 v = _mm256_cvtepi32_ps(s[h]);
      _mm256_storeu_ps(row + 8 * h, init ? v : _mm256_add_ps(_mm256_loadu_ps(row + 8 * h), v));
    }
    return 0;
  }
  Avx2StoreCoarseSums(s, coarse, init, row);
  return __builtin_popcount(static_cast<unsigned>(mask0)) +
         __builtin_popcount(static_cast<unsigned>(mask1));
}

// The coarse pass of three rows r0 .. r0 + 2 of one half h of a tile (8
// lanes each), n pairs: per row, the wrapped sums s (from the exact sums
// s0), the coarse sums A = floor(s0 / 2^16) + sum of floor(t / 2^16) and
// their running maximum and minimum (hi, lo), 6 vector instructions per
// vector and step; the three rows share the load of the B half-vector and
// keep their 12 registers of state in the 16 ymm registers.  v[i][0..3] =
// s, A, hi, lo of row r0 + i.
DFP_AVX2_INLINE void Avx2CoarseRows3(const int32_t* a, const int32_t* b, int64_t n,
                                     const __m256i* s0, __m256i (*v)[4]) {
  __m256i s_0 = s0[0], s_1 = s0[2], s_2 = s0[4];
  __m256i c_0 = _mm256_srai_epi32(s_0, 16), c_1 = _mm256_srai_epi32(s_1, 16),
          c_2 = _mm256_srai_epi32(s_2, 16);
  __m256i hi_0 = c_0, hi_1 = c_1, hi_2 = c_2, lo_0 = c_0, lo_1 = c_1, lo_2 = c_2;
  for (int64_t q = 0; q < n; ++q) {
    const __m256i bh = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + q * 16));
    const int32_t* aq = a + q * kMr;
    __m256i t = _mm256_madd_epi16(_mm256_set1_epi32(aq[0]), bh);
    s_0 = _mm256_add_epi32(s_0, t);
    t = _mm256_srai_epi32(t, 16);
    c_0 = _mm256_add_epi32(t, c_0);
    hi_0 = _mm256_max_epi32(c_0, hi_0);
    lo_0 = _mm256_min_epi32(c_0, lo_0);
    t = _mm256_madd_epi16(_mm256_set1_epi32(aq[1]), bh);
    s_1 = _mm256_add_epi32(s_1, t);
    t = _mm256_srai_epi32(t, 16);
    c_1 = _mm256_add_epi32(t, c_1);
    hi_1 = _mm256_max_epi32(c_1, hi_1);
    lo_1 = _mm256_min_epi32(c_1, lo_1);
    t = _mm256_madd_epi16(_mm256_set1_epi32(aq[2]), bh);
    s_2 = _mm256_add_epi32(s_2, t);
    t = _mm256_srai_epi32(t, 16);
    c_2 = _mm256_add_epi32(t, c_2);
    hi_2 = _mm256_max_epi32(c_2, hi_2);
    lo_2 = _mm256_min_epi32(c_2, lo_2);
  }
  v[0][0] = s_0, v[0][1] = c_0, v[0][2] = hi_0, v[0][3] = lo_0;
  v[1][0] = s_1, v[1][1] = c_1, v[1][2] = hi_1, v[1][3] = lo_1;
  v[2][0] = s_2, v[2][1] = c_2, v[2][2] = hi_2, v[2][3] = lo_2;
}

// The rest of a chunk, n <= kCoarsePairs pairs, from sums[2 kMr] (exact:
// the chunk's proved part); adds float(exact sum) to the tile (stores it:
// init) and returns how many chains overflowed.  The coarse pass
// (Avx2CoarseRows3) replaces the per-step sign test: since P - 2^16 A lies
// in [0, Rmax], Rmax = (n + 1) (2^16 - 1), at every step, a lane certainly
// overflowed if max A >= 2^15 or 2^16 min A + Rmax < -2^31, and certainly
// did not if 2^16 max A + Rmax <= INT32_MAX and min A >= -2^15.  A row with
// a lane between these (a prefix within Rmax of a limit) is recomputed by
// Avx2TrackedRowExact, so the counts are exact.
inline int64_t Avx2TrackedSteps(const int32_t* a, const int32_t* b, int64_t n,
                                const __m256i* sums, bool init, float* tile) {
  __m256i v[2 * kMr][4];  // [2 r + h]: s, A, hi, lo
  __m256i part[3][4];
  for (int h = 0; h < 2; ++h) {
    for (int r0 = 0; r0 < kMr; r0 += 3) {
      Avx2CoarseRows3(a + r0, b + 8 * h, n, sums + 2 * r0 + h, part);
      for (int i = 0; i < 3; ++i) {
        for (int j = 0; j < 4; ++j) v[2 * (r0 + i) + h][j] = part[i][j];
      }
    }
  }
  // Thresholds on A (floor divisions of exact integers, in 64 bits).
  const int64_t r_max = (n + 1) * 65535;
  const int64_t no_up = (int64_t{INT32_MAX} - r_max) >> 16;  // max A <= no_up: no upper exit
  const int64_t low_sure = (int64_t{INT32_MIN} - 1 - r_max) >> 16;  // min A <= it: lower exit
  const __m256i up_v = _mm256_set1_epi32(32767);
  const __m256i no_up_v = _mm256_set1_epi32(static_cast<int32_t>(no_up));
  const __m256i low_v = _mm256_set1_epi32(-32769);
  const __m256i low_sure_v = _mm256_set1_epi32(static_cast<int32_t>(low_sure + 1));
  int64_t overflowed = 0;
  for (int r = 0; r < kMr; ++r) {
    float* row = tile + r * 16;
    int over_mask = 0, clean_mask = 0;
    for (int h = 0; h < 2; ++h) {
      const __m256i hi = v[2 * r + h][2], lo = v[2 * r + h][3];
      const __m256i over = _mm256_or_si256(_mm256_cmpgt_epi32(hi, up_v),        // >= 2^15
                                           _mm256_cmpgt_epi32(low_sure_v, lo));  // <= low_sure
      const __m256i clean = _mm256_andnot_si256(_mm256_cmpgt_epi32(hi, no_up_v),  // <= no_up
                                                _mm256_cmpgt_epi32(lo, low_v));    // >= -2^15
      over_mask |= _mm256_movemask_ps(_mm256_castsi256_ps(over)) << (8 * h);
      clean_mask |= _mm256_movemask_ps(_mm256_castsi256_ps(clean)) << (8 * h);
    }
    if ((over_mask | clean_mask) != 0xFFFF) {  // undecided lanes: the exact test
      overflowed += Avx2TrackedRowExact(a + r, b, n, sums + 2 * r, init, row);
      continue;
    }
    const __m256i s[2] = {v[2 * r][0], v[2 * r + 1][0]};
    if (over_mask == 0) {  // exact in INT32
      for (int h = 0; h < 2; ++h) {
        const __m256 f = _mm256_cvtepi32_ps(s[h]);
        _mm256_storeu_ps(row + 8 * h, init ? f : _mm256_add_ps(_mm256_loadu_ps(row + 8 * h), f));
      }
      continue;
    }
    const __m256i coarse[2] = {v[2 * r][1], v[2 * r + 1][1]};
    Avx2StoreCoarseSums(s, coarse, init, row);
    overflowed += __builtin_popcount(static_cast<unsigned>(over_mask));
  }
  return overflowed;
}

// Avx2TrackedSteps for any n (chunks longer than kCoarsePairs pairs): the
// same overflow test and a count of wraps per lane: a step that overflows
// wrapped the sum by 2^32, downwards when the pair sum t > 0 and upwards
// when t < 0, so the exact sum is the wrapped one plus 2^32 times the count.
inline int64_t Avx2TrackedStepsWide(const int32_t* a, const int32_t* b, int64_t n,
                                    const __m256i* sums, bool init, float* tile) {
  const __m256i one = _mm256_set1_epi32(1);
  int64_t overflowed = 0;
  for (int r = 0; r < kMr; ++r) {
    __m256i s[2] = {sums[2 * r], sums[2 * r + 1]};
    __m256i flag[2] = {_mm256_setzero_si256(), _mm256_setzero_si256()};
    __m256i wraps[2] = {_mm256_setzero_si256(), _mm256_setzero_si256()};
    for (int64_t q = 0; q < n; ++q) {
      const __m256i ar = _mm256_set1_epi32(a[q * kMr + r]);
      for (int h = 0; h < 2; ++h) {
        const __m256i t = _mm256_madd_epi16(
            ar, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + q * 16 + 8 * h)));
        const __m256i sum = _mm256_add_epi32(s[h], t);
        // Sign bit set where s and t have equal signs and the sum another one.
        const __m256i over = _mm256_andnot_si256(_mm256_xor_si256(s[h], t),
                                                 _mm256_xor_si256(s[h], sum));
        const __m256i direction = _mm256_or_si256(_mm256_srai_epi32(t, 31), one);  // +-1
        wraps[h] = _mm256_add_epi32(wraps[h],
                                    _mm256_and_si256(_mm256_srai_epi32(over, 31), direction));
        flag[h] = _mm256_or_si256(flag[h], over);
        s[h] = sum;
      }
    }
    float* row = tile + r * 16;
    const int mask0 = _mm256_movemask_ps(_mm256_castsi256_ps(flag[0]));
    const int mask1 = _mm256_movemask_ps(_mm256_castsi256_ps(flag[1]));
    if ((mask0 | mask1) == 0) {  // exact in INT32
      for (int h = 0; h < 2; ++h) {
        const __m256 v = _mm256_cvtepi32_ps(s[h]);
        _mm256_storeu_ps(row + 8 * h, init ? v : _mm256_add_ps(_mm256_loadu_ps(row + 8 * h), v));
      }
      continue;
    }
    overflowed += __builtin_popcount(static_cast<unsigned>(mask0)) +
                  __builtin_popcount(static_cast<unsigned>(mask1));
    alignas(32) int32_t low[16], count[16];
    for (int h = 0; h < 2; ++h) {
      _mm256_store_si256(reinterpret_cast<__m256i*>(low + 8 * h), s[h]);
      _mm256_store_si256(reinterpret_cast<__m256i*>(count + 8 * h), wraps[h]);
    }
    for (int c = 0; c < 16; ++c) {
      const int64_t exact = int64_t{low[c]} + static_cast<int64_t>(
                                                  static_cast<uint64_t>(int64_t{count[c]}) << 32);
      row[c] = init ? static_cast<float>(exact) : row[c] + static_cast<float>(exact);
    }
  }
  return overflowed;
}

// The micro-kernel: npairs K pairs of an A panel (ap) and a B panel (bp),
// chunk by chunk; each chunk's sums are added to the FP32 tile (stored
// there for the first chunk of the first call of a K sweep).
template <int kNv>
void MicroKernel(const int32_t* ap, const int32_t* bp, const SegmentData& sa,
                 const SegmentData& sb, int64_t npairs, int64_t chunk_pairs, float* tile,
                 bool first_call, Stats* stats) {
  static_assert(kNv == 1, "the AVX2 tier uses tiles of 16 columns");
  constexpr int kNr = 16;
  int64_t c = 0;
  for (int64_t q0 = 0; q0 < npairs; q0 += chunk_pairs, ++c) {
    const int64_t pairs = Min64(chunk_pairs, npairs - q0);
    const int32_t* a = ap + q0 * kMr;
    const int32_t* b = bp + q0 * kNr;
    const int64_t nseg = Min64(CeilDiv(pairs, kSegPairs), kMaxSegments);
    int32_t thr[kMaxSegments];
    int64_t good = nseg, first = nseg;
    // Whether the whole chunk merges into one proved piece (the common case):
    // PlanChunkProof's merge test on the sums of the squares of all the
    // chunk's segment norms, summed once per panel by MeasureSegments.
    if (!(sa.chunk_sq[c] * sb.chunk_sq[c] * kBoundUp <= kMergeLimit)) {
      first = PlanChunkProof(sa.norm + c * sa.per_chunk, sb.norm + c * sb.per_chunk, nseg, thr,
                             &good);
    }
    const bool init = first_call && c == 0;  // the tile holds nothing yet
    Avx2Accumulators acc;
    for (int i = 0; i < 2 * kMr; ++i) acc[i] = _mm256_setzero_si256();
    const int32_t* a_at = a;
    const int32_t* b_at = b;
    // The first piece, then one checkpoint per proved segment.
    int64_t done = Min64(pairs, first * kSegPairs);
    Avx2Steps(a_at, b_at, done, acc);
    const int64_t proved = Min64(pairs, good * kSegPairs);
    for (int64_t j = first; done < proved; ++j) {
      if (Avx2AnyAbove(acc, thr[j])) break;
      const int64_t n = Min64(kSegPairs, pairs - done);
      Avx2Steps(a_at, b_at, n, acc);
      done += n;
    }
    if (done == pairs) {
      Avx2AddToTile(acc, init, tile);
      continue;
    }
    __m256i sums[2 * kMr];  // (a copy: acc stays in registers)
    for (int i = 0; i < 2 * kMr; ++i) sums[i] = acc[i];
    stats->overflowed_chunks +=
        pairs - done <= kCoarsePairs
            ? Avx2TrackedSteps(a_at, b_at, pairs - done, sums, init, tile)
            : Avx2TrackedStepsWide(a_at, b_at, pairs - done, sums, init, tile);
  }
}

#undef DFP_AVX2_INLINE

}  // namespace
}  // namespace TF_LOWPREC_DFP_ISA
}  // namespace dfp_gemm
}  // namespace tf_lowprec

#endif  // TF_LOWPREC_KERNELS_DFP_GEMM_MICROKERNEL_AVX2_H_
