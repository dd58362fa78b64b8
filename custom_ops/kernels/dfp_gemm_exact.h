// INT16 DFP GEMM: exact chunk sums in INT64, with the count of the INT32
// chains that would have overflowed (the portable micro-kernel, and the
// VNNI kernel's recomputation of the chunks where a chain saturated).
// Part of dfp_gemm_impl.h (compiled once per tier, inside the tier's
// namespace TF_LOWPREC_DFP_ISA; see there).
#ifndef TF_LOWPREC_KERNELS_DFP_GEMM_EXACT_H_
#define TF_LOWPREC_KERNELS_DFP_GEMM_EXACT_H_

#include <cstdint>
#include <cstring>

#include "dfp_gemm_layout.h"

#if TF_LOWPREC_DFP_VNNI
#include <immintrin.h>
#endif

namespace tf_lowprec {
namespace dfp_gemm {
namespace TF_LOWPREC_DFP_ISA {
namespace {

inline int32_t LowHalf(int32_t w) { return static_cast<int16_t>(static_cast<uint32_t>(w) & 0xFFFFu); }
inline int32_t HighHalf(int32_t w) { return static_cast<int16_t>(static_cast<uint32_t>(w) >> 16); }

// Exact chunk: tile[r][c] += float(sum of the chunk's pair sums) computed in
// INT64.  Returns how many of the kMr x kNr chains would have overflowed
// INT32 (a prefix of pair sums outside [INT32_MIN, INT32_MAX]).
template <int kNv>
int64_t ExactChunk(const int32_t* ap, const int32_t* bp, int64_t pairs, float* tile) {
  constexpr int kNr = 16 * kNv;
  int64_t sums[kMr * kNr];
  uint8_t overflow[kMr * kNr];
  std::memset(sums, 0, sizeof sums);
  std::memset(overflow, 0, sizeof overflow);
  for (int64_t q = 0; q < pairs; ++q) {
    const int32_t* a = ap + q * kMr;
    const int32_t* b = bp + q * kNr;
    int32_t b0[kNr], b1[kNr];
    for (int c = 0; c < kNr; ++c) {
      b0[c] = LowHalf(b[c]);
      b1[c] = HighHalf(b[c]);
    }
    for (int r = 0; r < kMr; ++r) {
      const int64_t a0 = LowHalf(a[r]), a1 = HighHalf(a[r]);
      int64_t* s = sums + r * kNr;
      uint8_t* o = overflow + r * kNr;
      for (int c = 0; c < kNr; ++c) {
        int64_t v = s[c] + a0 * b0[c] + a1 * b1[c];
        s[c] = v;
        // Outside [-2^31, 2^31 - 1] exactly when v + 2^31 does not fit 32 bits.
        o[c] |= static_cast<uint64_t>(v + 2147483648LL) > 0xFFFFFFFFull;
      }
    }
  }
  int64_t count = 0;
  for (int e = 0; e < kMr * kNr; ++e) {
    tile[e] = tile[e] + static_cast<float>(sums[e]);
    count += overflow[e];
  }
  return count;
}

#if TF_LOWPREC_DFP_VNNI

// ExactChunk with AVX-512 (the same results and counts): per row, the pair
// sums of vpmaddwd (exact in INT32: |t| <= 2 * 32767^2 < 2^31) are widened
// and added to INT64 running sums; a lane whose running sum leaves
// [INT32_MIN, INT32_MAX] after some step is counted.  ~10x the scalar speed,
// for data where many chains overflow.
template <int kNv>
int64_t ExactChunkVector(const int32_t* ap, const int32_t* bp, int64_t pairs, float* tile) {
  constexpr int kNr = 16 * kNv;
  const __m512i bias = _mm512_set1_epi64(int64_t{1} << 31);  // s + 2^31 in [0, 2^32)
  const __m512i limit = _mm512_set1_epi64(0xFFFFFFFFll);
  int64_t count = 0;
  for (int r = 0; r < kMr; ++r) {
    __m512i lo[kNv], hi[kNv];  // INT64 sums of lanes 0..7 and 8..15 of each vector
    __mmask8 out_lo[kNv], out_hi[kNv];
    for (int v = 0; v < kNv; ++v) {
      lo[v] = hi[v] = _mm512_setzero_si512();
      out_lo[v] = out_hi[v] = 0;
    }
    for (int64_t q = 0; q < pairs; ++q) {
      const __m512i a = _mm512_set1_epi32(ap[q * kMr + r]);
      for (int v = 0; v < kNv; ++v) {
        const __m512i t = _mm512_madd_epi16(a, _mm512_loadu_si512(bp + q * kNr + 16 * v));
        lo[v] = _mm512_add_epi64(lo[v], _mm512_cvtepi32_epi64(_mm512_castsi512_si256(t)));
        hi[v] = _mm512_add_epi64(hi[v], _mm512_cvtepi32_epi64(_mm512_extracti64x4_epi64(t, 1)));
        out_lo[v] |= _mm512_cmpgt_epu64_mask(_mm512_add_epi64(lo[v], bias), limit);
        out_hi[v] |= _mm512_cmpgt_epu64_mask(_mm512_add_epi64(hi[v], bias), limit);
      }
    }
    for (int v = 0; v < kNv; ++v) {
      float* t = tile + r * kNr + 16 * v;
      const __m512 sums = _mm512_insertf32x8(_mm512_castps256_ps512(_mm512_cvtepi64_ps(lo[v])),
                                             _mm512_cvtepi64_ps(hi[v]), 1);
      _mm512_storeu_ps(t, _mm512_add_ps(_mm512_loadu_ps(t), sums));
      count += __builtin_popcount(out_lo[v]) + __builtin_popcount(out_hi[v]);
    }
  }
  return count;
}

#endif  // TF_LOWPREC_DFP_VNNI

}  // namespace
}  // namespace TF_LOWPREC_DFP_ISA
}  // namespace dfp_gemm
}  // namespace tf_lowprec

#endif  // TF_LOWPREC_KERNELS_DFP_GEMM_EXACT_H_
