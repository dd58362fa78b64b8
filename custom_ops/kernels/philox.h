// Philox4x32-10 counter-based random numbers, laid out exactly like
// TensorFlow's stateless ops (`tf.random.stateless_uniform(..., dtype=uint32,
// alg="philox")`): the seed pair is scrambled into a key and a base counter
// the way TensorFlow's GenerateKey does, and word j of the stream is word
// j % 4 of Philox(base_counter + j / 4).
//
// Stochastic rounding gives element i of a tensor the random word
// RandomWordOfElement(stream, i, ...) below: 16 bits (half a stream word)
// when it uses at most 16 random bits, else a whole word.  Because the bits
// of element i depend only on (seed, i), the result is the same for any
// thread count and any sharding, and the pure-TensorFlow fallback reproduces
// the kernel's bits with stock ops.
// Header-only, no TensorFlow includes (see number_formats.h).
#ifndef TF_LOWPREC_KERNELS_PHILOX_H_
#define TF_LOWPREC_KERNELS_PHILOX_H_

#include <cstdint>

namespace tf_lowprec {

constexpr uint32_t kPhiloxM0 = 0xD2511F53u;
constexpr uint32_t kPhiloxM1 = 0xCD9E8D57u;
constexpr uint32_t kPhiloxW0 = 0x9E3779B9u;
constexpr uint32_t kPhiloxW1 = 0xBB67AE85u;

struct PhiloxState {
  uint32_t key[2];
  uint32_t counter[4];  // base counter, little-endian 128-bit integer
};

// One Philox4x32-10 block.
inline void PhiloxBlock(const uint32_t counter_in[4], const uint32_t key_in[2], uint32_t out[4]) {
  uint32_t c0 = counter_in[0], c1 = counter_in[1], c2 = counter_in[2], c3 = counter_in[3];
  uint32_t k0 = key_in[0], k1 = key_in[1];
  for (int round = 0; round < 10; ++round) {
    const uint64_t p0 = static_cast<uint64_t>(kPhiloxM0) * c0;
    const uint64_t p1 = static_cast<uint64_t>(kPhiloxM1) * c2;
    const uint32_t n0 = static_cast<uint32_t>(p1 >> 32) ^ c1 ^ k0;
    const uint32_t n2 = static_cast<uint32_t>(p0 >> 32) ^ c3 ^ k1;
    c0 = n0;
    c1 = static_cast<uint32_t>(p1);
    c2 = n2;
    c3 = static_cast<uint32_t>(p0);
    k0 += kPhiloxW0;
    k1 += kPhiloxW1;
  }
  out[0] = c0;
  out[1] = c1;
  out[2] = c2;
  out[3] = c3;
}

// TensorFlow's stateless seed scrambling (stateless_random_ops.cc, GenerateKey).
inline PhiloxState PhiloxFromSeed(uint64_t seed0, uint64_t seed1) {
  const uint32_t counter[4] = {static_cast<uint32_t>(seed0), static_cast<uint32_t>(seed0 >> 32),
                               static_cast<uint32_t>(seed1), static_cast<uint32_t>(seed1 >> 32)};
  const uint32_t key[2] = {0x3ec8f720u, 0x02461e29u};
  uint32_t mix[4];
  PhiloxBlock(counter, key, mix);
  PhiloxState state;
  state.key[0] = mix[0];
  state.key[1] = mix[1];
  state.counter[0] = 0;
  state.counter[1] = 0;
  state.counter[2] = mix[2];
  state.counter[3] = mix[3];
  return state;
}

// Counter of block `block`: base + block as a 128-bit integer.
inline void PhiloxCounterAt(const PhiloxState& state, uint64_t block, uint32_t out[4]) {
  const uint64_t low = (static_cast<uint64_t>(state.counter[1]) << 32 | state.counter[0]);
  const uint64_t sum = low + block;
  const uint64_t carry = sum < low ? 1 : 0;
  const uint64_t high = (static_cast<uint64_t>(state.counter[3]) << 32 | state.counter[2]) + carry;
  out[0] = static_cast<uint32_t>(sum);
  out[1] = static_cast<uint32_t>(sum >> 32);
  out[2] = static_cast<uint32_t>(high);
  out[3] = static_cast<uint32_t>(high >> 32);
}

// Stochastic rounding with at most this many random bits per element draws
// 16 bits per element (half the Philox work of a word per element).
constexpr int32_t kMaxHalfWordRandomBits = 16;

// The random word of element i (the rounding uses its top random_bits bits),
// given word(j), the j-th word of the stream:
//   half_words (random_bits <= 16):  (word(i / 2) >> (16 * (i % 2))) << 16,
//     i.e. the low half of word i / 2 for even i and the high half for odd
//     i, placed in the top 16 bits; on a little-endian machine this is the
//     stream viewed as an array of uint16, element i taking uint16 i.
//   else:                            word(i).
inline uint32_t RandomWordOfElement(uint32_t stream_word, int64_t element, bool half_words) {
  return half_words ? (stream_word >> (16 * (element & 1))) << 16 : stream_word;
}

}  // namespace tf_lowprec

#endif  // TF_LOWPREC_KERNELS_PHILOX_H_
