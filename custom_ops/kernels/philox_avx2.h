// Philox4x32-10 on AVX2: 8 blocks (32 random words) per group.
//
// Computes exactly the words of philox.h (PhiloxBlock, PhiloxCounterAt), in
// stream order (word 4b + w is word w of block b), as philox_avx512.h does
// with 16 blocks.  AVX2 has no masked shuffles and no two-source permutes,
// so two things differ from the AVX-512 version:
//   - the high and low halves of the 32x32->64 products are gathered with
//     64-bit shifts and immediate blends (MulHiLo8);
//   - lane j of a group does not run block j but block kLaneBlock[j]
//     (0, 2, 4, 6, 1, 3, 5, 7), chosen so that the in-lane 4x4 transpose
//     of the state (unpack, eight operations) already leaves the blocks in
//     stream order: no lane-crossing permutes are needed.
// Included only by the AVX2 translation unit.
#ifndef TF_LOWPREC_KERNELS_PHILOX_AVX2_H_
#define TF_LOWPREC_KERNELS_PHILOX_AVX2_H_

#if !defined(__AVX2__)
#error "philox_avx2.h needs -mavx2"
#endif

#include <immintrin.h>

#include <cstdint>

#include "philox.h"

namespace tf_lowprec {
// Not `simd` (rounding_avx512.h's namespace): the helpers of the two tiers
// have the same names and argument types, and must not merge at link time.
namespace simd_avx2 {

// Round keys of one Philox stream, broadcast once per kernel call.
struct PhiloxKeys8 {
  __m256i k0[10];
  __m256i k1[10];
};

inline PhiloxKeys8 MakePhiloxKeys8(const PhiloxState& state) {
  PhiloxKeys8 keys;
  uint32_t k0 = state.key[0], k1 = state.key[1];
  for (int round = 0; round < 10; ++round) {
    keys.k0[round] = _mm256_set1_epi32(static_cast<int>(k0));
    keys.k1[round] = _mm256_set1_epi32(static_cast<int>(k1));
    k0 += kPhiloxW0;
    k1 += kPhiloxW1;
  }
  return keys;
}

// Block offset of lane j within a group (see the file comment).
inline __m256i LaneBlockOffsets8() { return _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7); }

// High and low 32-bit halves of the 8 products m * c (all unsigned).
// _mm256_mul_epu32 multiplies the even lanes only, so the odd lanes take a
// second multiply of c shifted down; the halves are then put in place by
// shifting one product of each pair across its 64-bit lane and blending.
inline void MulHiLo8(__m256i c, __m256i m, __m256i* hi, __m256i* lo) {
  const __m256i even = _mm256_mul_epu32(c, m);                          // lanes 2i: 64-bit
  const __m256i odd = _mm256_mul_epu32(_mm256_srli_epi64(c, 32), m);  // lanes 2i+1
  // hi: lane 2i <- even[2i+1], lane 2i+1 <- odd[2i+1].
  *hi = _mm256_blend_epi32(_mm256_srli_epi64(even, 32), odd, 0xAA);
  // lo: lane 2i <- even[2i], lane 2i+1 <- odd[2i].
  *lo = _mm256_blend_epi32(even, _mm256_slli_epi64(odd, 32), 0xAA);
}

// Counters base + offset_j as 128-bit integers, carried lane-wise; base is
// the counter of block `first_block` (philox.h, PhiloxCounterAt).
inline void PhiloxCounters8(const PhiloxState& state, uint64_t first_block, __m256i* c0,
                            __m256i* c1, __m256i* c2, __m256i* c3) {
  uint32_t base[4];
  PhiloxCounterAt(state, first_block, base);
  const __m256i offsets = LaneBlockOffsets8();
  const __m256i sign = _mm256_set1_epi32(static_cast<int>(0x80000000u));
  const __m256i zero = _mm256_setzero_si256();
  *c0 = _mm256_add_epi32(_mm256_set1_epi32(static_cast<int>(base[0])), offsets);
  // Wrapped lanes: c0 < offset, unsigned (compared with the sign bits flipped).
  // A carry mask is -1 in its lanes, so subtracting it adds the carry.
  __m256i carry = _mm256_cmpgt_epi32(_mm256_xor_si256(offsets, sign),
                                     _mm256_xor_si256(*c0, sign));
  *c1 = _mm256_sub_epi32(_mm256_set1_epi32(static_cast<int>(base[1])), carry);
  carry = _mm256_and_si256(carry, _mm256_cmpeq_epi32(*c1, zero));
  *c2 = _mm256_sub_epi32(_mm256_set1_epi32(static_cast<int>(base[2])), carry);
  carry = _mm256_and_si256(carry, _mm256_cmpeq_epi32(*c2, zero));
  *c3 = _mm256_sub_epi32(_mm256_set1_epi32(static_cast<int>(base[3])), carry);
}

// Transposes the four state words of a group and stores its 32 words in
// stream order.  unpack works within 128-bit halves: after the two steps,
// output vector q holds lane q (low half) then lane q + 4 (high half), which
// run blocks 2q and 2q + 1.
inline void StoreInElementOrder8(__m256i c0, __m256i c1, __m256i c2, __m256i c3,
                                 uint32_t* words) {
  const __m256i t0 = _mm256_unpacklo_epi32(c0, c1);  // c0[0] c1[0] c0[1] c1[1] | lanes 4, 5
  const __m256i t1 = _mm256_unpackhi_epi32(c0, c1);  // lanes 2, 3 | lanes 6, 7
  const __m256i t2 = _mm256_unpacklo_epi32(c2, c3);
  const __m256i t3 = _mm256_unpackhi_epi32(c2, c3);
  auto* out = reinterpret_cast<__m256i*>(words);
  _mm256_storeu_si256(out + 0, _mm256_unpacklo_epi64(t0, t2));  // lanes 0 | 4
  _mm256_storeu_si256(out + 1, _mm256_unpackhi_epi64(t0, t2));  // lanes 1 | 5
  _mm256_storeu_si256(out + 2, _mm256_unpacklo_epi64(t1, t3));  // lanes 2 | 6
  _mm256_storeu_si256(out + 3, _mm256_unpackhi_epi64(t1, t3));  // lanes 3 | 7
}

// Counters of blocks first_block .. first_block + 8 * kGroups - 1.  The
// 128-bit carry is needed only when the counter's low word wraps inside the
// range (once per 2^32 blocks): otherwise the three high words are the same
// in every lane.
template <int kGroups>
inline void PhiloxCountersOfGroups8(const PhiloxState& state, uint64_t first_block,
                                    __m256i* c0, __m256i* c1, __m256i* c2, __m256i* c3) {
  constexpr uint32_t kSpan = 8 * kGroups - 1;
  uint32_t base[4];
  PhiloxCounterAt(state, first_block, base);
  if (base[0] > 0xFFFFFFFFu - kSpan) {
    for (int g = 0; g < kGroups; ++g) {
      PhiloxCounters8(state, first_block + 8 * g, &c0[g], &c1[g], &c2[g], &c3[g]);
    }
    return;
  }
  const __m256i first =
      _mm256_add_epi32(_mm256_set1_epi32(static_cast<int>(base[0])), LaneBlockOffsets8());
  for (int g = 0; g < kGroups; ++g) {
    c0[g] = _mm256_add_epi32(first, _mm256_set1_epi32(8 * g));
    c1[g] = _mm256_set1_epi32(static_cast<int>(base[1]));
    c2[g] = _mm256_set1_epi32(static_cast<int>(base[2]));
    c3[g] = _mm256_set1_epi32(static_cast<int>(base[3]));
  }
}

// Writes the 32 * kGroups words of blocks first_block ..
// first_block + 8 * kGroups - 1 to words[] in stream order.  The groups'
// rounds are interleaved to hide the multiply -> blend -> xor latency; two
// groups keep the state (8 registers) and temporaries within AVX2's 16.
template <int kGroups>
inline void PhiloxBlocks8(const PhiloxState& state, const PhiloxKeys8& keys,
                          uint64_t first_block, uint32_t* words) {
  __m256i c0[kGroups], c1[kGroups], c2[kGroups], c3[kGroups];
  PhiloxCountersOfGroups8<kGroups>(state, first_block, c0, c1, c2, c3);
  const __m256i m0 = _mm256_set1_epi32(static_cast<int>(kPhiloxM0));
  const __m256i m1 = _mm256_set1_epi32(static_cast<int>(kPhiloxM1));
  for (int round = 0; round < 10; ++round) {
    for (int g = 0; g < kGroups; ++g) {
      __m256i hi0, lo0, hi1, lo1;
      MulHiLo8(c0[g], m0, &hi0, &lo0);
      MulHiLo8(c2[g], m1, &hi1, &lo1);
      c0[g] = _mm256_xor_si256(_mm256_xor_si256(hi1, c1[g]), keys.k0[round]);
      c2[g] = _mm256_xor_si256(_mm256_xor_si256(hi0, c3[g]), keys.k1[round]);
      c1[g] = lo1;
      c3[g] = lo0;
    }
  }
  for (int g = 0; g < kGroups; ++g) {
    StoreInElementOrder8(c0[g], c1[g], c2[g], c3[g], words + 32 * g);
  }
}

}  // namespace simd_avx2
}  // namespace tf_lowprec

#endif  // TF_LOWPREC_KERNELS_PHILOX_AVX2_H_
