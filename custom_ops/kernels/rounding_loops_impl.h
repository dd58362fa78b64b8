// Implementation of the rounding loops; included once per instruction set
// with TF_LOWPREC_ISA defined (see rounding_loops.h).  Every function lives in
// tf_lowprec::TF_LOWPREC_ISA so that the copies compiled with different -m
// flags never merge at link time.
#ifndef TF_LOWPREC_ISA
#error "define TF_LOWPREC_ISA before including rounding_loops_impl.h"
#endif

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "philox.h"
#include "rounding.h"
#include "rounding_loops.h"

namespace tf_lowprec {
namespace TF_LOWPREC_ISA {
namespace {

// Elements handled per inner step: a multiple of 4 (one Philox block per 4
// elements) and of the widest vector.
constexpr int64_t kChunk = 256;

// Random words of elements [first, first + n), n <= kChunk, into words[0..n).
inline void FillRandomWords(const RandomStream& random, int64_t first, int64_t n,
                            uint32_t* words) {
  uint32_t block_words[kChunk + 8];
  const int64_t first_block = first >> 2;
  const int64_t last_block = (first + n - 1) >> 2;
  const int64_t blocks = last_block - first_block + 1;
  uint32_t base[4];
  PhiloxCounterAt(random.philox, static_cast<uint64_t>(first_block), base);
  // Blocks are independent: written as a flat loop over blocks so that the
  // compiler can vectorise the Philox rounds across blocks.
  const uint64_t low = static_cast<uint64_t>(base[1]) << 32 | base[0];
  for (int64_t b = 0; b < blocks; ++b) {
    uint32_t counter[4];
    const uint64_t c = low + static_cast<uint64_t>(b);
    counter[0] = static_cast<uint32_t>(c);
    counter[1] = static_cast<uint32_t>(c >> 32);
    const uint32_t carry = c < low ? 1u : 0u;
    const uint64_t high = (static_cast<uint64_t>(base[3]) << 32 | base[2]) + carry;
    counter[2] = static_cast<uint32_t>(high);
    counter[3] = static_cast<uint32_t>(high >> 32);
    PhiloxBlock(counter, random.philox.key, &block_words[4 * b]);
  }
  const int64_t offset = first & 3;
  for (int64_t i = 0; i < n; ++i) words[i] = block_words[offset + i] & random.mask;
}

template <Rounding kRounding>
void RoundFloatImpl(const float* in, float* out, int64_t n, int64_t first_index,
                    const FloatGrid& grid, const RandomStream& random) {
  uint32_t words[kChunk];
  if (kRounding != Rounding::kStochastic) std::memset(words, 0, sizeof(words));
  const FloatGrid g = grid;  // local copy: lets the compiler keep it in registers
  for (int64_t start = 0; start < n; start += kChunk) {
    const int64_t m = std::min<int64_t>(kChunk, n - start);
    if (kRounding == Rounding::kStochastic) FillRandomWords(random, first_index + start, m, words);
    const uint32_t* src = reinterpret_cast<const uint32_t*>(in + start);
    uint32_t* dst = reinterpret_cast<uint32_t*>(out + start);
    for (int64_t i = 0; i < m; ++i) {
      dst[i] = RoundToFloatFormat<kRounding>(src[i], g, words[i]);
    }
  }
}

void RoundFloat(const float* in, float* out, int64_t n, int64_t first_index,
                const FloatGrid& grid, Rounding rounding, const RandomStream& random) {
  switch (rounding) {
    case Rounding::kNearestEven:
      return RoundFloatImpl<Rounding::kNearestEven>(in, out, n, first_index, grid, random);
    case Rounding::kStochastic:
      return RoundFloatImpl<Rounding::kStochastic>(in, out, n, first_index, grid, random);
    case Rounding::kTowardZero:
      return RoundFloatImpl<Rounding::kTowardZero>(in, out, n, first_index, grid, random);
  }
}

template <Rounding kRounding>
void RoundDfpImpl(const float* in, float* out, int64_t n, int64_t first_index,
                  const int32_t* k, int64_t k_stride, const RandomStream& random) {
  uint32_t words[kChunk];
  if (kRounding != Rounding::kStochastic) std::memset(words, 0, sizeof(words));
  for (int64_t start = 0; start < n; start += kChunk) {
    const int64_t m = std::min<int64_t>(kChunk, n - start);
    if (kRounding == Rounding::kStochastic) FillRandomWords(random, first_index + start, m, words);
    const uint32_t* src = reinterpret_cast<const uint32_t*>(in + start);
    uint32_t* dst = reinterpret_cast<uint32_t*>(out + start);
    if (k_stride == 0) {
      const int32_t shared = k[0];
      for (int64_t i = 0; i < m; ++i) dst[i] = RoundToDfpGrid<kRounding>(src[i], shared, words[i]);
    } else {
      const int32_t* ks = k + start;
      for (int64_t i = 0; i < m; ++i) dst[i] = RoundToDfpGrid<kRounding>(src[i], ks[i], words[i]);
    }
  }
}

void RoundDfp(const float* in, float* out, int64_t n, int64_t first_index, const int32_t* k,
              int64_t k_stride, Rounding rounding, const RandomStream& random) {
  switch (rounding) {
    case Rounding::kNearestEven:
      return RoundDfpImpl<Rounding::kNearestEven>(in, out, n, first_index, k, k_stride, random);
    case Rounding::kStochastic:
      return RoundDfpImpl<Rounding::kStochastic>(in, out, n, first_index, k, k_stride, random);
    case Rounding::kTowardZero:
      return RoundDfpImpl<Rounding::kTowardZero>(in, out, n, first_index, k, k_stride, random);
  }
}

void MaxAbsBits(const float* in, int64_t rows, int64_t width, int64_t stride,
                uint32_t* max_bits) {
  for (int64_t r = 0; r < rows; ++r) {
    const uint32_t* row = reinterpret_cast<const uint32_t*>(in + r * stride);
    for (int64_t j = 0; j < width; ++j) {
      const uint32_t a = row[j] & kAbsMask;
      const uint32_t finite = a < kInfBits ? a : 0u;
      max_bits[j] = finite > max_bits[j] ? finite : max_bits[j];
    }
  }
}

uint32_t MaxAbsBitsAll(const float* in, int64_t n) {
  const uint32_t* src = reinterpret_cast<const uint32_t*>(in);
  uint32_t result = 0;
  for (int64_t i = 0; i < n; ++i) {
    const uint32_t a = src[i] & kAbsMask;
    const uint32_t finite = a < kInfBits ? a : 0u;
    result = finite > result ? finite : result;
  }
  return result;
}

}  // namespace

extern const RoundingLoops kRoundingLoops = {TF_LOWPREC_ISA_NAME, &RoundFloat, &RoundDfp,
                                             &MaxAbsBits, &MaxAbsBitsAll};

}  // namespace TF_LOWPREC_ISA
}  // namespace tf_lowprec
