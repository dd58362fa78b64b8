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
// vpaddd wraps instead of saturating, so the tracked part of a chunk tests
// every step for signed overflow: s + t overflows exactly when s and t have
// the same sign and the sum has the other one.  The accumulators are exact
// up to the first overflow of a chain, so the first step at which some
// prefix leaves INT32 is the first step the test fires: the chains it fired
// for are the overflowed chains of the portable definition.  Each firing
// also records the wrap (+-2^32), so the exact sum of every chain comes out
// of the same pass, without an INT64 recomputation.
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

// Longest tracked piece for Avx2TrackedSteps's coarse sums: n (2^16 - 1) <
// 2^32 identifies the exact sum, and |C| <= n 2^15 fits INT32.
constexpr int64_t kCoarsePairs = 65535;

// The rest of a chunk, n <= kCoarsePairs pairs from a and b, from sums[2
// kMr] (exact: the chunk's proved part), row by row with the overflow test
// after every step (a lane overflows at the first step at which its prefix
// leaves INT32: the sums are exact until then, so the test is exact there).
// The exact sum comes from a coarse sum beside the wrapping one: C = sum of
// floor(t / 2^16) over the steps, so that S = s0 + 2^16 C + R with R = sum of
// (t mod 2^16) in [0, n (2^16 - 1)] < 2^32; the wrapped sum W = S mod 2^32,
// hence R = (W - s0 - 2^16 C) mod 2^32.  Two vector instructions per step
// instead of the five of counting wraps (Avx2TrackedStepsWide).  Adds
// float(exact sum) to the tile (stores it: init) and returns how many chains
// overflowed.
inline int64_t Avx2TrackedSteps(const int32_t* a, const int32_t* b, int64_t n,
                                const __m256i* sums, bool init, float* tile) {
  int64_t overflowed = 0;
  for (int r = 0; r < kMr; ++r) {
    __m256i s[2] = {sums[2 * r], sums[2 * r + 1]};
    __m256i flag[2] = {_mm256_setzero_si256(), _mm256_setzero_si256()};
    __m256i coarse[2] = {_mm256_setzero_si256(), _mm256_setzero_si256()};
    for (int64_t q = 0; q < n; ++q) {
      const __m256i ar = _mm256_set1_epi32(a[q * kMr + r]);
#pragma GCC unroll 2
      for (int h = 0; h < 2; ++h) {
        const __m256i t = _mm256_madd_epi16(
            ar, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + q * 16 + 8 * h)));
        const __m256i sum = _mm256_add_epi32(s[h], t);
        // Sign bit set where s and t have equal signs and the sum another one.
        flag[h] = _mm256_or_si256(flag[h], _mm256_andnot_si256(_mm256_xor_si256(s[h], t),
                                                               _mm256_xor_si256(s[h], sum)));
        coarse[h] = _mm256_add_epi32(coarse[h], _mm256_srai_epi32(t, 16));
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
    // Every lane's exact sum s0 + 2^16 C + R in double (exact: |S| < 2^53;
    // R as unsigned: (R - 2^31 as int32) + 2^31), then rounded once to FP32,
    // as float(int64) rounds it.
    const __m128i sign = _mm_set1_epi32(INT32_MIN);
    const __m256d two31 = _mm256_set1_pd(2147483648.0), two16 = _mm256_set1_pd(65536.0);
    for (int h = 0; h < 2; ++h) {
      const __m256i rest =
          _mm256_sub_epi32(s[h], _mm256_add_epi32(sums[2 * r + h], _mm256_slli_epi32(coarse[h], 16)));
      for (int half = 0; half < 2; ++half) {
        const auto part = [half](__m256i v) {
          return half ? _mm256_extracti128_si256(v, 1) : _mm256_castsi256_si128(v);
        };
        const __m256d base = _mm256_add_pd(_mm256_cvtepi32_pd(part(sums[2 * r + h])),
                                           _mm256_mul_pd(_mm256_cvtepi32_pd(part(coarse[h])), two16));
        const __m256d r_d =
            _mm256_add_pd(_mm256_cvtepi32_pd(_mm_xor_si128(part(rest), sign)), two31);
        const __m128 v = _mm256_cvtpd_ps(_mm256_add_pd(base, r_d));
        float* t = row + 8 * h + 4 * half;
        _mm_storeu_ps(t, init ? v : _mm_add_ps(_mm_loadu_ps(t), v));
      }
    }
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
