// Philox4x32-10 on AVX-512: 16 blocks (64 random words) per group.
//
// Computes exactly the words of philox.h (PhiloxBlock, PhiloxCounterAt):
// lane j of the four state vectors runs block `first_block + j`, and the
// result is transposed so that the words come out in stream order (word
// 4b + w is word w of block b), as TensorFlow's stateless ops lay them out.
// Included only by the AVX-512 translation unit.
#ifndef TF_LOWPREC_KERNELS_PHILOX_AVX512_H_
#define TF_LOWPREC_KERNELS_PHILOX_AVX512_H_

#if !defined(__AVX512F__)
#error "philox_avx512.h needs -mavx512f"
#endif

#include <immintrin.h>

#include <cstdint>

#include "philox.h"

namespace tf_lowprec {
namespace simd {

// Round keys of one Philox stream, broadcast once per kernel call.
struct PhiloxKeys16 {
  __m512i k0[10];
  __m512i k1[10];
};

inline PhiloxKeys16 MakePhiloxKeys16(const PhiloxState& state) {
  PhiloxKeys16 keys;
  uint32_t k0 = state.key[0], k1 = state.key[1];
  for (int round = 0; round < 10; ++round) {
    keys.k0[round] = _mm512_set1_epi32(static_cast<int>(k0));
    keys.k1[round] = _mm512_set1_epi32(static_cast<int>(k1));
    k0 += kPhiloxW0;
    k1 += kPhiloxW1;
  }
  return keys;
}

// High and low 32-bit halves of the 16 products m * c (all unsigned).
// _mm512_mul_epu32 multiplies the even lanes only, so the odd lanes take a
// second multiply; the halves are then gathered with lane-pair shuffles.
inline void MulHiLo16(__m512i c, __m512i m, __m512i* hi, __m512i* lo) {
  const __m512i even = _mm512_mul_epu32(c, m);                          // lanes 2i: 64-bit
  const __m512i odd = _mm512_mul_epu32(_mm512_srli_epi64(c, 32), m);  // lanes 2i+1
  // hi: lane 2i <- even[2i+1], lane 2i+1 <- odd[2i+1].
  *hi = _mm512_mask_shuffle_epi32(odd, 0x5555, even, _MM_PERM_CDAB);
  // lo: lane 2i <- even[2i], lane 2i+1 <- odd[2i].
  *lo = _mm512_mask_shuffle_epi32(even, 0xAAAA, odd, _MM_PERM_CDAB);
}

// Counters base + j (j = 0..15) as 128-bit integers, carried lane-wise;
// base is the counter of block `first_block` (philox.h, PhiloxCounterAt).
inline void PhiloxCounters16(const PhiloxState& state, uint64_t first_block, __m512i* c0,
                             __m512i* c1, __m512i* c2, __m512i* c3) {
  uint32_t base[4];
  PhiloxCounterAt(state, first_block, base);
  const __m512i iota = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  const __m512i one = _mm512_set1_epi32(1);
  const __m512i zero = _mm512_setzero_si512();
  const __m512i b1 = _mm512_set1_epi32(static_cast<int>(base[1]));
  const __m512i b2 = _mm512_set1_epi32(static_cast<int>(base[2]));
  const __m512i b3 = _mm512_set1_epi32(static_cast<int>(base[3]));
  *c0 = _mm512_add_epi32(_mm512_set1_epi32(static_cast<int>(base[0])), iota);
  __mmask16 carry = _mm512_cmplt_epu32_mask(*c0, iota);  // wrapped
  *c1 = _mm512_mask_add_epi32(b1, carry, b1, one);
  carry = _mm512_mask_cmpeq_epi32_mask(carry, *c1, zero);
  *c2 = _mm512_mask_add_epi32(b2, carry, b2, one);
  carry = _mm512_mask_cmpeq_epi32_mask(carry, *c2, zero);
  *c3 = _mm512_mask_add_epi32(b3, carry, b3, one);
}

// Transposes the four state words of 16 blocks (lane j = block j) into
// element order and stores the 64 words: eight two-source permutes (the
// unpack-and-shuffle form takes sixteen, and Philox is bound by the count
// of vector operations).
inline void StoreInElementOrder16(__m512i c0, __m512i c1, __m512i c2, __m512i c3,
                                  uint32_t* words) {
  // t0 = c0[0] c1[0] c0[1] c1[1] ... c0[7] c1[7]; t1 the same for lanes 8..15;
  // t2, t3 likewise from c2, c3.
  const __m512i low = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
  const __m512i high =
      _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
  const __m512i t0 = _mm512_permutex2var_epi32(c0, low, c1);
  const __m512i t1 = _mm512_permutex2var_epi32(c0, high, c1);
  const __m512i t2 = _mm512_permutex2var_epi32(c2, low, c3);
  const __m512i t3 = _mm512_permutex2var_epi32(c2, high, c3);
  // Then 64-bit pairs alternate: block j's words c0 c1 (from t0/t1), c2 c3
  // (from t2/t3); each output vector holds four blocks.
  const __m512i first = _mm512_setr_epi64(0, 8, 1, 9, 2, 10, 3, 11);
  const __m512i second = _mm512_setr_epi64(4, 12, 5, 13, 6, 14, 7, 15);
  _mm512_storeu_si512(words + 0, _mm512_permutex2var_epi64(t0, first, t2));
  _mm512_storeu_si512(words + 16, _mm512_permutex2var_epi64(t0, second, t2));
  _mm512_storeu_si512(words + 32, _mm512_permutex2var_epi64(t1, first, t3));
  _mm512_storeu_si512(words + 48, _mm512_permutex2var_epi64(t1, second, t3));
}

// Counters of blocks first_block .. first_block + 16 * kGroups - 1, group g
// holding blocks first_block + 16 * g + j in lane j.  The 128-bit carry is
// needed only when the counter's low word wraps inside the range (once per
// 2^32 blocks): otherwise the three high words are the same in every lane.
template <int kGroups>
inline void PhiloxCountersOfGroups(const PhiloxState& state, uint64_t first_block, __m512i* c0,
                                   __m512i* c1, __m512i* c2, __m512i* c3) {
  constexpr uint32_t kSpan = 16 * kGroups - 1;
  uint32_t base[4];
  PhiloxCounterAt(state, first_block, base);
  if (base[0] > 0xFFFFFFFFu - kSpan) {
    for (int g = 0; g < kGroups; ++g) {
      PhiloxCounters16(state, first_block + 16 * g, &c0[g], &c1[g], &c2[g], &c3[g]);
    }
    return;
  }
  const __m512i first =
      _mm512_add_epi32(_mm512_set1_epi32(static_cast<int>(base[0])),
                       _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15));
  for (int g = 0; g < kGroups; ++g) {
    c0[g] = _mm512_add_epi32(first, _mm512_set1_epi32(16 * g));
    c1[g] = _mm512_set1_epi32(static_cast<int>(base[1]));
    c2[g] = _mm512_set1_epi32(static_cast<int>(base[2]));
    c3[g] = _mm512_set1_epi32(static_cast<int>(base[3]));
  }
}

// Writes the 64 * kGroups words of blocks first_block ..
// first_block + 16 * kGroups - 1 to words[] in element order.  The groups'
// rounds are interleaved: one group alone is bound by the latency of the
// multiply -> shuffle -> xor chain.
template <int kGroups>
inline void PhiloxBlocks(const PhiloxState& state, const PhiloxKeys16& keys,
                         uint64_t first_block, uint32_t* words) {
  __m512i c0[kGroups], c1[kGroups], c2[kGroups], c3[kGroups];
  PhiloxCountersOfGroups<kGroups>(state, first_block, c0, c1, c2, c3);
  const __m512i m0 = _mm512_set1_epi32(static_cast<int>(kPhiloxM0));
  const __m512i m1 = _mm512_set1_epi32(static_cast<int>(kPhiloxM1));
  for (int round = 0; round < 10; ++round) {
    for (int g = 0; g < kGroups; ++g) {
      __m512i hi0, lo0, hi1, lo1;
      MulHiLo16(c0[g], m0, &hi0, &lo0);
      MulHiLo16(c2[g], m1, &hi1, &lo1);
      // 0x96: three-way xor.
      c0[g] = _mm512_ternarylogic_epi32(hi1, c1[g], keys.k0[round], 0x96);
      c2[g] = _mm512_ternarylogic_epi32(hi0, c3[g], keys.k1[round], 0x96);
      c1[g] = lo1;
      c3[g] = lo0;
    }
  }
  for (int g = 0; g < kGroups; ++g) {
    StoreInElementOrder16(c0[g], c1[g], c2[g], c3[g], words + 64 * g);
  }
}

}  // namespace simd
}  // namespace tf_lowprec

#endif  // TF_LOWPREC_KERNELS_PHILOX_AVX512_H_
