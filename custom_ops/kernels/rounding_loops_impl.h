// Implementation of the rounding loops; included once per instruction set
// with TF_LOWPREC_ISA defined (see rounding_loops.h).  Every function lives in
// tf_lowprec::TF_LOWPREC_ISA so that the copies compiled with different -m
// flags never merge at link time.
//
// The scalar loops below, written on rounding.h's per-element functions,
// are the reference.  With TF_LOWPREC_AVX512_INTRINSICS defined (the AVX-512
// translation unit) the same loops run on 16 lanes with explicit intrinsics
// instead (rounding_avx512.h, philox_avx512.h), and with
// TF_LOWPREC_AVX2_INTRINSICS (the AVX2 one) on 8 lanes (rounding_avx2.h,
// philox_avx2.h): compilers do not vectorise the scalar form well (Philox's
// 32x32->64 products, the shift-count selects), and the intrinsics are 5-30
// times faster.  All are bit-identical (tests/test_isa_equivalence.py).
#ifndef TF_LOWPREC_ISA
#error "define TF_LOWPREC_ISA before including rounding_loops_impl.h"
#endif

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <memory>
#include <vector>

#include "block_scaling.h"
#include "float_environment.h"
#include "philox.h"
#include "rounding.h"
#include "rounding_loops.h"

#if defined(TF_LOWPREC_AVX512_INTRINSICS)
#include "philox_avx512.h"
#include "rounding_avx512.h"
#elif defined(TF_LOWPREC_AVX2_INTRINSICS)
#include "philox_avx2.h"
#include "rounding_avx2.h"
#endif

namespace tf_lowprec {
namespace TF_LOWPREC_ISA {
namespace {

#if defined(TF_LOWPREC_AVX512_INTRINSICS) || defined(TF_LOWPREC_AVX2_INTRINSICS)
// ---- Chunking shared by the vector loops below ----

// Elements per chunk of the vector loops: those of 64 Philox blocks (256
// stream words: one PhiloxBlocks<4> call of the AVX-512 loops, four
// PhiloxBlocks8<2> calls of the AVX2 ones).  Chunks are aligned to multiples of this size in global element
// index, so every chunk but the first and the last of a call takes exactly
// those 64 blocks.
template <bool kHalfWords>
constexpr int64_t ChunkElements() {
  return kHalfWords ? 512 : 256;
}
// Stream words of a buffer: a chunk lies inside one aligned run of 64
// blocks, and the fill functions take whole groups of 16 (AVX-512) or 8
// (AVX2) blocks from the chunk's first block, which stay inside that run.
constexpr int64_t kWordBuffer = 4 * 64;

// End (local index) of the chunk that starts at local index `start`.
inline int64_t ChunkEnd(int64_t first_index, int64_t start, int64_t n, int64_t chunk) {
  const int64_t global = first_index + start;
  return std::min(n, (global / chunk + 1) * chunk - first_index);
}
#endif

#if !defined(TF_LOWPREC_AVX512_INTRINSICS) && !defined(TF_LOWPREC_AVX2_INTRINSICS)

// ---- Scalar reference loops (rounding.h, philox.h) ----

// Elements handled per inner step (random words drawn per step).
constexpr int64_t kChunk = 256;

// Random words of elements [first, first + n), n <= kChunk, into words[0..n):
// RandomWordOfElement (philox.h) of each element's stream word, masked.
inline void FillRandomWords(const RandomStream& random, int64_t first, int64_t n,
                            uint32_t* words) {
  uint32_t block_words[kChunk + 8];
  const bool halves = random.half_words;
  const int64_t first_word = halves ? first >> 1 : first;
  const int64_t last_word = halves ? (first + n - 1) >> 1 : first + n - 1;
  const int64_t first_block = first_word >> 2;
  const int64_t blocks = (last_word >> 2) - first_block + 1;
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
  const int64_t base_word = 4 * first_block;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t element = first + i;
    const int64_t word = (halves ? element >> 1 : element) - base_word;
    words[i] = RandomWordOfElement(block_words[word], element, halves) & random.mask;
  }
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
  // Column maxima of rows of 16 (MaxAbsBits), then their maximum: compilers
  // vectorise the column loop with baseline SSE2 (compare and select), but
  // not a single running maximum (SSE2 has no 32-bit max to reduce with).
  constexpr int64_t kWidth = 16;
  uint32_t columns[kWidth] = {};
  const int64_t rows = n / kWidth;
  MaxAbsBits(in, rows, kWidth, kWidth, columns);
  MaxAbsBits(in + rows * kWidth, 1, n - rows * kWidth, 0, columns);
  uint32_t result = 0;
  for (const uint32_t m : columns) result = m > result ? m : result;
  return result;
}
#elif defined(TF_LOWPREC_AVX512_INTRINSICS)

// ---- The same loops on 16 lanes (rounding_avx512.h, philox_avx512.h) ----


// The random words of elements [first, first + n) (within one chunk) as
// they lie in `buffer` (kWordBuffer words, 64-byte aligned) after
// FillRandomWords16: uint32 or (kHalfWords) uint16 i is element first + i's,
// masked to its top random_bits bits.  Masking the buffer here, only when
// random_bits asks for it, keeps the mask out of the per-vector loads.
template <bool kHalfWords>
inline const uint8_t* FillRandomWords16(const RandomStream& random,
                                        const simd::PhiloxKeys16& keys, int64_t first,
                                        int64_t n, uint32_t* buffer) {
  const int64_t first_word = kHalfWords ? first >> 1 : first;
  const int64_t last_word = kHalfWords ? (first + n - 1) >> 1 : first + n - 1;
  const int64_t first_block = first_word >> 2;
  const int64_t blocks = (last_word >> 2) - first_block + 1;
  int64_t b = 0;
  for (; b + 64 <= blocks; b += 64) {
    simd::PhiloxBlocks<4>(random.philox, keys, static_cast<uint64_t>(first_block + b),
                          buffer + 4 * b);
  }
  for (; b < blocks; b += 16) {
    simd::PhiloxBlocks<1>(random.philox, keys, static_cast<uint64_t>(first_block + b),
                          buffer + 4 * b);
  }
  // Both halves of a stream word take the 16-bit mask.
  const uint32_t mask = kHalfWords ? (random.mask >> 16) * 0x10001u : random.mask;
  if (mask != 0xFFFFFFFFu) {
    for (int64_t w = 0; w < 4 * b; w += 16) {
      _mm512_store_si512(buffer + w, _mm512_and_si512(_mm512_load_si512(buffer + w),
                                                      simd::Splat(mask)));
    }
  }
  // Element first's uint32 or uint16 in the buffer, which starts at the
  // first word of first_block.
  const int64_t skipped = first - (kHalfWords ? 8 : 4) * first_block;
  return reinterpret_cast<const uint8_t*>(buffer) + (kHalfWords ? 2 : 4) * skipped;
}

// RandomWordOfElement (philox.h), masked, for the 16 elements from `i` on
// (`lanes` of them) of a FillRandomWords16 result: U (RandomForm::kWord);
// with half words and RandomForm::kHalf, h = U >> 16 instead.
template <bool kHalfWords, simd::RandomForm kForm = simd::RandomForm::kWord>
inline __m512i LoadRandomWords16(const uint8_t* words, int64_t i, __mmask16 lanes) {
  if (kHalfWords) {
    const __m512i h = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(lanes, words + 2 * i));
    return kForm == simd::RandomForm::kHalf ? h : _mm512_slli_epi32(h, 16);
  }
  return _mm512_maskz_loadu_epi32(lanes, words + 4 * i);
}

inline __mmask16 TailMask(int64_t lanes) {
  return lanes >= 16 ? static_cast<__mmask16>(0xFFFF)
                     : static_cast<__mmask16>((1u << lanes) - 1u);
}

// Lanes the shorter forms do not cover (rare: Inf, NaN, some float32
// denormals): the full transcription of rounding.h, out of line so that the
// hot loop keeps its constants in registers.
template <Rounding kRounding, simd::RandomForm kForm>
__attribute__((noinline)) __m512i RoundFloatVectorFull(__m512i u, const simd::FloatGrid16& c,
                                                      __m512i random) {
  return simd::RoundToFloatFormat16<kRounding>(u, c, simd::RandomWord16<kForm>(random));
}

// Vectors with special lanes (simd::FindSpecialLanes16), out of line: the
// fast form with its tiny-lane step when only tiny lanes are special, else
// the full form.  (The lanes are found again here: passing them would cost
// the hot loop the moves of the masks into call registers.)
template <Rounding kRounding, bool kPlain, simd::RandomForm kForm>
__attribute__((noinline)) __m512i RoundFloatVectorSpecial(__m512i u, __m512i a,
                                                         const simd::FloatGrid16& c,
                                                         __m512i random) {
  const simd::SpecialLanes16 lanes = simd::FindSpecialLanes16<kRounding>(a, c);
  if (c.low_lanes_are_tiny[static_cast<int>(kRounding)] && lanes.non_finite == 0) {
    return simd::RoundToFloatFormatFast16<kRounding, kPlain, kForm>(u, a, c, random, lanes.low);
  }
  return RoundFloatVectorFull<kRounding, kForm>(u, c, random);
}

// One vector by the per-lane fast form where it covers every lane (one test
// and branch for the common case), else out of line.
template <Rounding kRounding, bool kPlain, simd::RandomForm kForm>
inline __m512i RoundFloatVectorPerLane(__m512i u, __m512i a, const simd::FloatGrid16& c,
                                       __m512i random) {
  if (c.fast_ok) {
    const simd::SpecialLanes16 lanes = simd::FindSpecialLanes16<kRounding>(a, c);
    if (_kortestz_mask16_u8(lanes.low, lanes.non_finite) != 0) {
      return simd::RoundToFloatFormatFast16<kRounding, kPlain, kForm>(u, a, c, random, 0);
    }
    return RoundFloatVectorSpecial<kRounding, kPlain, kForm>(u, a, c, random);
  }
  return RoundFloatVectorFull<kRounding, kForm>(u, c, random);
}

// The same, out of line: the normal-form loop's rare misses.
template <Rounding kRounding, bool kPlain, simd::RandomForm kForm>
__attribute__((noinline)) __m512i RoundFloatVectorMiss(__m512i u, __m512i a,
                                                      const simd::FloatGrid16& c,
                                                      __m512i random) {
  return RoundFloatVectorPerLane<kRounding, kPlain, kForm>(u, a, c, random);
}

// One vector, by the shortest form valid for all of its lanes.  With
// kTryNormalForm the loop expects whole vectors in the format's normal range
// (bf16, fp16 on most data) and tests for that first, keeping the other
// forms out of line so that the hot loop stays small; without, it goes
// straight to the per-lane form (fp8 formats, whose subnormal range holds a
// few percent of typical values: a per-vector choice there would mispredict
// often).  All give the same bits.
template <Rounding kRounding, bool kPlain, bool kTryNormalForm, simd::RandomForm kForm>
inline __m512i RoundFloatVector(__m512i u, const simd::FloatGrid16& c, __m512i random,
                                int64_t* misses) {
  const __m512i a = kPlain ? _mm512_and_si512(u, simd::Splat(kAbsMask))
                           : simd::FloatFormatMagnitude16(u, c);
  if (kTryNormalForm) {
    if (simd::AllInNormalRange16<kRounding>(a, c)) {
      return simd::RoundNormalRange16<kRounding, kForm>(u, a, c, random);
    }
    ++*misses;
    return RoundFloatVectorMiss<kRounding, kPlain, kForm>(u, a, c, random);
  }
  return RoundFloatVectorPerLane<kRounding, kPlain, kForm>(u, a, c, random);
}

// Rounds one chunk of m elements; returns how many vectors missed the
// normal form (only counted with kTryNormalForm).  Half words reach the
// rounding as RandomForm::kHalf.
template <Rounding kRounding, bool kPlain, bool kTryNormalForm, bool kHalfWords>
inline int64_t RoundFloatChunk(const uint32_t* src, uint32_t* dst, int64_t m,
                               const uint8_t* words, const simd::FloatGrid16& c) {
  constexpr simd::RandomForm kForm = kHalfWords ? simd::RandomForm::kHalf
                                                : simd::RandomForm::kWord;
  int64_t misses = 0;
  int64_t i = 0;
  for (; i + 16 <= m; i += 16) {
    const __m512i u = _mm512_loadu_si512(src + i);
    const __m512i random = kRounding == Rounding::kStochastic
                               ? LoadRandomWords16<kHalfWords, kForm>(
                                     words, i, static_cast<__mmask16>(0xFFFF))
                               : _mm512_setzero_si512();
    _mm512_storeu_si512(
        dst + i, RoundFloatVector<kRounding, kPlain, kTryNormalForm, kForm>(u, c, random, &misses));
  }
  if (i < m) {
    const __mmask16 lanes = TailMask(m - i);
    const __m512i u = _mm512_maskz_loadu_epi32(lanes, src + i);
    const __m512i random = kRounding == Rounding::kStochastic
                               ? LoadRandomWords16<kHalfWords, kForm>(words, i, lanes)
                               : _mm512_setzero_si512();
    _mm512_mask_storeu_epi32(
        dst + i, lanes,
        RoundFloatVector<kRounding, kPlain, kTryNormalForm, kForm>(u, c, random, &misses));
  }
  return misses;
}

template <Rounding kRounding, bool kPlain, bool kHalfWords>
void RoundFloatLoop(const float* in, float* out, int64_t n, int64_t first_index,
                    const simd::FloatGrid16& c, const RandomStream& random) {
  const simd::PhiloxKeys16 keys = kRounding == Rounding::kStochastic
                                      ? simd::MakePhiloxKeys16(random.philox)
                                      : simd::PhiloxKeys16{};
  alignas(64) uint32_t buffer[kWordBuffer];
  // Which loop the next chunk takes: the normal-form one while chunks are
  // (nearly) all normal; after a chunk with several misses, the per-lane
  // one for a while, then try again.
  constexpr int64_t kRetryChunks = 16;
  int64_t per_lane_chunks = 0;
  for (int64_t start = 0, end; start < n; start = end) {
    end = ChunkEnd(first_index, start, n, ChunkElements<kHalfWords>());
    const int64_t m = end - start;
    const uint8_t* words = nullptr;
    if (kRounding == Rounding::kStochastic) {
      words = FillRandomWords16<kHalfWords>(random, keys, first_index + start, m, buffer);
    }
    const uint32_t* src = reinterpret_cast<const uint32_t*>(in + start);
    uint32_t* dst = reinterpret_cast<uint32_t*>(out + start);
    if (c.normal_ok && per_lane_chunks == 0) {
      const int64_t misses = RoundFloatChunk<kRounding, kPlain, true, kHalfWords>(
          src, dst, m, words, c);
      if (misses > 1) per_lane_chunks = kRetryChunks;
    } else {
      RoundFloatChunk<kRounding, kPlain, false, kHalfWords>(src, dst, m, words, c);
      if (per_lane_chunks > 0) --per_lane_chunks;
    }
  }
}

template <Rounding kRounding, bool kHalfWords>
void RoundFloatWith(const float* in, float* out, int64_t n, int64_t first_index,
                    const simd::FloatGrid16& c, const RandomStream& random) {
  if (c.plain) {
    return RoundFloatLoop<kRounding, true, kHalfWords>(in, out, n, first_index, c, random);
  }
  RoundFloatLoop<kRounding, false, kHalfWords>(in, out, n, first_index, c, random);
}

template <Rounding kRounding>
void RoundFloatImpl(const float* in, float* out, int64_t n, int64_t first_index,
                    const FloatGrid& grid, const RandomStream& random) {
  const simd::FloatGrid16 c = simd::MakeFloatGrid16(grid);
  if (kRounding == Rounding::kStochastic && random.half_words) {
    return RoundFloatWith<kRounding, true>(in, out, n, first_index, c, random);
  }
  RoundFloatWith<kRounding, false>(in, out, n, first_index, c, random);
}

// Vectors of RoundDfpLoop that the fast form does not cover (Inf, NaN,
// magnitudes below one grid step, float32 denormals), out of line.
template <Rounding kRounding>
__attribute__((noinline)) __m512i RoundDfpVectorFull(__m512i u, __m512i k, __m512i word) {
  return simd::RoundToDfpGrid16<kRounding>(u, k, word);
}

// One vector of DFP rounding, by the shortest form valid for all its lanes.
template <Rounding kRounding>
inline __m512i RoundDfpVector(__m512i u, __m512i k, const simd::DfpFastRange16& range,
                              __m512i word) {
  const __m512i a = _mm512_and_si512(u, simd::Splat(kAbsMask));
  if (simd::AllInDfpFastRange16(a, range)) {
    return simd::RoundToDfpGridFast16<kRounding>(u, a, k, word);
  }
  return RoundDfpVectorFull<kRounding>(u, k, word);
}

template <Rounding kRounding, bool kHalfWords>
void RoundDfpLoop(const float* in, float* out, int64_t n, int64_t first_index,
                  const int32_t* k, int64_t k_stride, const RandomStream& random) {
  const simd::PhiloxKeys16 keys = kRounding == Rounding::kStochastic
                                      ? simd::MakePhiloxKeys16(random.philox)
                                      : simd::PhiloxKeys16{};
  const __m512i shared = simd::SplatInt(k[0]);
  const simd::DfpFastRange16 shared_range = simd::MakeDfpFastRange16(shared);
  alignas(64) uint32_t buffer[kWordBuffer];
  for (int64_t start = 0, end; start < n; start = end) {
    end = ChunkEnd(first_index, start, n, ChunkElements<kHalfWords>());
    const int64_t m = end - start;
    const uint8_t* words = nullptr;
    if (kRounding == Rounding::kStochastic) {
      words = FillRandomWords16<kHalfWords>(random, keys, first_index + start, m, buffer);
    }
    const uint32_t* src = reinterpret_cast<const uint32_t*>(in + start);
    uint32_t* dst = reinterpret_cast<uint32_t*>(out + start);
    const int32_t* ks = k + start;
    for (int64_t i = 0; i < m; i += 16) {
      const __mmask16 lanes = TailMask(m - i);
      const __m512i u = _mm512_maskz_loadu_epi32(lanes, src + i);
      const __m512i word = kRounding == Rounding::kStochastic
                               ? LoadRandomWords16<kHalfWords>(words, i, lanes)
                               : _mm512_setzero_si512();
      __m512i r;
      if (k_stride == 0) {
        r = RoundDfpVector<kRounding>(u, shared, shared_range, word);
      } else {
        const __m512i exponent = _mm512_maskz_loadu_epi32(lanes, ks + i);
        r = RoundDfpVector<kRounding>(u, exponent, simd::MakeDfpFastRange16(exponent), word);
      }
      _mm512_mask_storeu_epi32(dst + i, lanes, r);
    }
  }
}

template <Rounding kRounding>
void RoundDfpImpl(const float* in, float* out, int64_t n, int64_t first_index,
                  const int32_t* k, int64_t k_stride, const RandomStream& random) {
  if (kRounding == Rounding::kStochastic && random.half_words) {
    return RoundDfpLoop<kRounding, true>(in, out, n, first_index, k, k_stride, random);
  }
  RoundDfpLoop<kRounding, false>(in, out, n, first_index, k, k_stride, random);
}

// |x| bits with NaN and Inf mapped to 0.
inline __m512i FiniteMagnitude16(__m512i u) {
  const __m512i a = _mm512_and_si512(u, simd::Splat(kAbsMask));
  return _mm512_maskz_mov_epi32(_mm512_cmplt_epu32_mask(a, simd::Splat(kInfBits)), a);
}

void MaxAbsBits(const float* in, int64_t rows, int64_t width, int64_t stride,
                uint32_t* max_bits) {
  for (int64_t r = 0; r < rows; ++r) {
    const uint32_t* row = reinterpret_cast<const uint32_t*>(in + r * stride);
    for (int64_t j = 0; j < width; j += 16) {
      const __mmask16 lanes = TailMask(width - j);
      const __m512i a = FiniteMagnitude16(_mm512_maskz_loadu_epi32(lanes, row + j));
      const __m512i current = _mm512_maskz_loadu_epi32(lanes, max_bits + j);
      _mm512_mask_storeu_epi32(max_bits + j, lanes, _mm512_max_epu32(a, current));
    }
  }
}

uint32_t MaxAbsBitsAll(const float* in, int64_t n) {
  const uint32_t* src = reinterpret_cast<const uint32_t*>(in);
  // Four accumulators hide the latency of the max.
  __m512i m0 = _mm512_setzero_si512(), m1 = m0, m2 = m0, m3 = m0;
  int64_t i = 0;
  for (; i + 64 <= n; i += 64) {
    m0 = _mm512_max_epu32(m0, FiniteMagnitude16(_mm512_loadu_si512(src + i)));
    m1 = _mm512_max_epu32(m1, FiniteMagnitude16(_mm512_loadu_si512(src + i + 16)));
    m2 = _mm512_max_epu32(m2, FiniteMagnitude16(_mm512_loadu_si512(src + i + 32)));
    m3 = _mm512_max_epu32(m3, FiniteMagnitude16(_mm512_loadu_si512(src + i + 48)));
  }
  for (; i < n; i += 16) {
    m0 = _mm512_max_epu32(m0, FiniteMagnitude16(_mm512_maskz_loadu_epi32(TailMask(n - i), src + i)));
  }
  return _mm512_reduce_max_epu32(_mm512_max_epu32(_mm512_max_epu32(m0, m1),
                                                  _mm512_max_epu32(m2, m3)));
}

#else  // TF_LOWPREC_AVX2_INTRINSICS

// ---- The same loops on 8 lanes (rounding_avx2.h, philox_avx2.h) ----

// The random words of elements [first, first + n) (within one chunk) as
// they lie in `buffer` (kWordBuffer words, 32-byte aligned): uint32 or
// (kHalfWords) uint16 i is element first + i's, masked to its top
// random_bits bits (see the AVX-512 loops).
template <bool kHalfWords>
inline const uint8_t* FillRandomWords8(const RandomStream& random,
                                       const simd_avx2::PhiloxKeys8& keys, int64_t first,
                                       int64_t n, uint32_t* buffer) {
  const int64_t first_word = kHalfWords ? first >> 1 : first;
  const int64_t last_word = kHalfWords ? (first + n - 1) >> 1 : first + n - 1;
  const int64_t first_block = first_word >> 2;
  const int64_t blocks = (last_word >> 2) - first_block + 1;
  int64_t b = 0;
  for (; b + 16 <= blocks; b += 16) {
    simd_avx2::PhiloxBlocks8<2>(random.philox, keys, static_cast<uint64_t>(first_block + b),
                                buffer + 4 * b);
  }
  for (; b < blocks; b += 8) {
    simd_avx2::PhiloxBlocks8<1>(random.philox, keys, static_cast<uint64_t>(first_block + b),
                                buffer + 4 * b);
  }
  // Both halves of a stream word take the 16-bit mask.
  const uint32_t mask = kHalfWords ? (random.mask >> 16) * 0x10001u : random.mask;
  if (mask != 0xFFFFFFFFu) {
    for (int64_t w = 0; w < 4 * b; w += 8) {
      auto* p = reinterpret_cast<__m256i*>(buffer + w);
      _mm256_store_si256(p, _mm256_and_si256(_mm256_load_si256(p), simd_avx2::Splat(mask)));
    }
  }
  const int64_t skipped = first - (kHalfWords ? 8 : 4) * first_block;
  return reinterpret_cast<const uint8_t*>(buffer) + (kHalfWords ? 2 : 4) * skipped;
}

// RandomWordOfElement (philox.h), masked, for the 8 elements from `i` on of
// a FillRandomWords8 result: U (RandomForm::kWord); with half words and
// RandomForm::kHalf, h = U >> 16 instead.
template <bool kHalfWords, simd_avx2::RandomForm kForm = simd_avx2::RandomForm::kWord>
inline __m256i LoadRandomWords8(const uint8_t* words, int64_t i) {
  if (kHalfWords) {
    const __m256i h = _mm256_cvtepu16_epi32(
        _mm_loadu_si128(reinterpret_cast<const __m128i*>(words + 2 * i)));
    return kForm == simd_avx2::RandomForm::kHalf ? h : _mm256_slli_epi32(h, 16);
  }
  return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(words + 4 * i));
}

// The last `lanes` < 8 elements of a run go through a zero-padded copy of 8
// (AVX2 has masked loads of 32-bit lanes only, and the random words may be
// 16-bit): `Tail8` copies them in and out around `round(u, random)`.
template <bool kHalfWords, Rounding kRounding, typename Round>
inline void Tail8(const uint32_t* src, uint32_t* dst, int64_t lanes, const uint8_t* words,
                  const Round& round) {
  alignas(32) uint32_t in[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  alignas(32) uint32_t out[8];
  alignas(32) uint32_t random[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  std::memcpy(in, src, 4 * lanes);
  if (kRounding == Rounding::kStochastic) {
    std::memcpy(random, words, (kHalfWords ? 2 : 4) * lanes);
  }
  const uint8_t* padded = reinterpret_cast<const uint8_t*>(random);
  _mm256_store_si256(reinterpret_cast<__m256i*>(out),
                     round(_mm256_load_si256(reinterpret_cast<const __m256i*>(in)), padded));
  std::memcpy(dst, out, 4 * lanes);
}

// Lanes the shorter forms do not cover (rare: Inf, NaN, some float32
// denormals): the full transcription of rounding.h, out of line so that the
// hot loop keeps its constants in registers.
template <Rounding kRounding, simd_avx2::RandomForm kForm>
__attribute__((noinline)) __m256i RoundFloatVectorFull(__m256i u, const simd_avx2::FloatGrid8& c,
                                                      __m256i random) {
  return simd_avx2::RoundToFloatFormat8<kRounding>(u, c, simd_avx2::RandomWord8<kForm>(random));
}

// Vectors with special lanes (FindSpecialLanes8), out of line: the fast form
// with its tiny-lane step when only tiny lanes are special, else the full
// form.
template <Rounding kRounding, bool kPlain, simd_avx2::RandomForm kForm>
__attribute__((noinline)) __m256i RoundFloatVectorSpecial(__m256i u, __m256i a,
                                                         const simd_avx2::FloatGrid8& c,
                                                         __m256i random) {
  const simd_avx2::SpecialLanes8 lanes = simd_avx2::FindSpecialLanes8<kRounding>(a, c);
  if (c.low_lanes_are_tiny[static_cast<int>(kRounding)] && lanes.non_finite == 0) {
    return simd_avx2::RoundToFloatFormatFast8<kRounding, kPlain, kForm>(u, a, c, random,
                                                                       lanes.low, lanes.low_mask);
  }
  return RoundFloatVectorFull<kRounding, kForm>(u, c, random);
}

// One vector by the per-lane fast form where it covers every lane, else out
// of line.
template <Rounding kRounding, bool kPlain, simd_avx2::RandomForm kForm>
inline __m256i RoundFloatVectorPerLane(__m256i u, __m256i a, const simd_avx2::FloatGrid8& c,
                                       __m256i random) {
  if (c.fast_ok) {
    if (simd_avx2::AnySpecialLanes8<kRounding>(a, c) == 0) {
      return simd_avx2::RoundToFloatFormatFast8<kRounding, kPlain, kForm>(
          u, a, c, random, 0, _mm256_setzero_si256());
    }
    return RoundFloatVectorSpecial<kRounding, kPlain, kForm>(u, a, c, random);
  }
  return RoundFloatVectorFull<kRounding, kForm>(u, c, random);
}

// The same, out of line: the normal-form loop's rare misses.
template <Rounding kRounding, bool kPlain, simd_avx2::RandomForm kForm>
__attribute__((noinline)) __m256i RoundFloatVectorMiss(__m256i u, __m256i a,
                                                      const simd_avx2::FloatGrid8& c,
                                                      __m256i random) {
  return RoundFloatVectorPerLane<kRounding, kPlain, kForm>(u, a, c, random);
}

// One vector, by the shortest form valid for all of its lanes (the choice
// between the normal-range and the per-lane loops is the AVX-512 loops').
template <Rounding kRounding, bool kPlain, bool kTryNormalForm, simd_avx2::RandomForm kForm>
inline __m256i RoundFloatVector(__m256i u, const simd_avx2::FloatGrid8& c, __m256i random,
                                int64_t* misses) {
  const __m256i a = kPlain ? _mm256_and_si256(u, simd_avx2::Splat(kAbsMask))
                           : simd_avx2::FloatFormatMagnitude8(u, c);
  if (kTryNormalForm) {
    if (simd_avx2::AllInNormalRange8<kRounding>(a, c)) {
      return simd_avx2::RoundNormalRange8<kRounding, kForm>(u, a, c, random);
    }
    ++*misses;
    return RoundFloatVectorMiss<kRounding, kPlain, kForm>(u, a, c, random);
  }
  return RoundFloatVectorPerLane<kRounding, kPlain, kForm>(u, a, c, random);
}

// Rounds one chunk of m elements; returns how many vectors missed the
// normal form (only counted with kTryNormalForm).
template <Rounding kRounding, bool kPlain, bool kTryNormalForm, bool kHalfWords>
inline int64_t RoundFloatChunk(const uint32_t* src, uint32_t* dst, int64_t m,
                               const uint8_t* words, const simd_avx2::FloatGrid8& c) {
  constexpr simd_avx2::RandomForm kForm = kHalfWords ? simd_avx2::RandomForm::kHalf
                                                     : simd_avx2::RandomForm::kWord;
  int64_t misses = 0;
  const auto round = [&](__m256i u, const uint8_t* w, int64_t i) {
    const __m256i random = kRounding == Rounding::kStochastic
                               ? LoadRandomWords8<kHalfWords, kForm>(w, i)
                               : _mm256_setzero_si256();
    return RoundFloatVector<kRounding, kPlain, kTryNormalForm, kForm>(u, c, random, &misses);
  };
  int64_t i = 0;
  for (; i + 8 <= m; i += 8) {
    const __m256i u = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + i));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + i), round(u, words, i));
  }
  if (i < m) {
    const uint8_t* tail_words =
        kRounding == Rounding::kStochastic ? words + (kHalfWords ? 2 : 4) * i : nullptr;
    Tail8<kHalfWords, kRounding>(src + i, dst + i, m - i, tail_words,
                                 [&](__m256i u, const uint8_t* w) { return round(u, w, 0); });
  }
  return misses;
}

template <Rounding kRounding, bool kPlain, bool kHalfWords>
void RoundFloatLoop(const float* in, float* out, int64_t n, int64_t first_index,
                    const simd_avx2::FloatGrid8& c, const RandomStream& random) {
  const simd_avx2::PhiloxKeys8 keys = kRounding == Rounding::kStochastic
                                          ? simd_avx2::MakePhiloxKeys8(random.philox)
                                          : simd_avx2::PhiloxKeys8{};
  alignas(32) uint32_t buffer[kWordBuffer];
  // Which loop the next chunk takes: the normal-form one while chunks are
  // (nearly) all normal; after a chunk with several misses, the per-lane
  // one for a while, then try again.
  constexpr int64_t kRetryChunks = 16;
  int64_t per_lane_chunks = 0;
  for (int64_t start = 0, end; start < n; start = end) {
    end = ChunkEnd(first_index, start, n, ChunkElements<kHalfWords>());
    const int64_t m = end - start;
    const uint8_t* words = nullptr;
    if (kRounding == Rounding::kStochastic) {
      words = FillRandomWords8<kHalfWords>(random, keys, first_index + start, m, buffer);
    }
    const uint32_t* src = reinterpret_cast<const uint32_t*>(in + start);
    uint32_t* dst = reinterpret_cast<uint32_t*>(out + start);
    if (c.normal_ok && per_lane_chunks == 0) {
      const int64_t misses =
          RoundFloatChunk<kRounding, kPlain, true, kHalfWords>(src, dst, m, words, c);
      if (misses > 1) per_lane_chunks = kRetryChunks;
    } else {
      RoundFloatChunk<kRounding, kPlain, false, kHalfWords>(src, dst, m, words, c);
      if (per_lane_chunks > 0) --per_lane_chunks;
    }
  }
}

template <Rounding kRounding, bool kHalfWords>
void RoundFloatWith(const float* in, float* out, int64_t n, int64_t first_index,
                    const simd_avx2::FloatGrid8& c, const RandomStream& random) {
  if (c.plain) {
    return RoundFloatLoop<kRounding, true, kHalfWords>(in, out, n, first_index, c, random);
  }
  RoundFloatLoop<kRounding, false, kHalfWords>(in, out, n, first_index, c, random);
}

template <Rounding kRounding>
void RoundFloatImpl(const float* in, float* out, int64_t n, int64_t first_index,
                    const FloatGrid& grid, const RandomStream& random) {
  const simd_avx2::FloatGrid8 c = simd_avx2::MakeFloatGrid8(grid);
  // Nearest-even rounds by float addition (rounding_avx2.h).
  const ScopedRoundToNearest round_to_nearest;  // float_environment.h
  if (kRounding == Rounding::kStochastic && random.half_words) {
    return RoundFloatWith<kRounding, true>(in, out, n, first_index, c, random);
  }
  RoundFloatWith<kRounding, false>(in, out, n, first_index, c, random);
}

// Vectors of RoundDfpLoop that the fast form does not cover (Inf, NaN,
// magnitudes below one grid step, float32 denormals), out of line.
template <Rounding kRounding>
__attribute__((noinline)) __m256i RoundDfpVectorFull(__m256i u, __m256i k, __m256i word) {
  return simd_avx2::RoundToDfpGrid8<kRounding>(u, k, word);
}

// One vector of DFP rounding, by the shortest form valid for all its lanes.
template <Rounding kRounding>
inline __m256i RoundDfpVector(__m256i u, __m256i k, const simd_avx2::DfpFastRange8& range,
                              __m256i word) {
  const __m256i a = _mm256_and_si256(u, simd_avx2::Splat(kAbsMask));
  if (simd_avx2::AllInDfpFastRange8(a, range)) {
    return simd_avx2::RoundToDfpGridFast8<kRounding>(u, a, k, word);
  }
  return RoundDfpVectorFull<kRounding>(u, k, word);
}

template <Rounding kRounding, bool kHalfWords>
void RoundDfpLoop(const float* in, float* out, int64_t n, int64_t first_index,
                  const int32_t* k, int64_t k_stride, const RandomStream& random) {
  const simd_avx2::PhiloxKeys8 keys = kRounding == Rounding::kStochastic
                                          ? simd_avx2::MakePhiloxKeys8(random.philox)
                                          : simd_avx2::PhiloxKeys8{};
  const __m256i shared = simd_avx2::SplatInt(k[0]);
  const simd_avx2::DfpFastRange8 shared_range = simd_avx2::MakeDfpFastRange8(shared);
  alignas(32) uint32_t buffer[kWordBuffer];
  const auto round = [&](__m256i u, const uint8_t* w, int64_t i, const int32_t* ks) {
    const __m256i word = kRounding == Rounding::kStochastic
                             ? LoadRandomWords8<kHalfWords>(w, i)
                             : _mm256_setzero_si256();
    if (k_stride == 0) {
      return RoundDfpVector<kRounding>(u, shared, shared_range, word);
    }
    const __m256i exponent = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(ks + i));
    return RoundDfpVector<kRounding>(u, exponent, simd_avx2::MakeDfpFastRange8(exponent), word);
  };
  for (int64_t start = 0, end; start < n; start = end) {
    end = ChunkEnd(first_index, start, n, ChunkElements<kHalfWords>());
    const int64_t m = end - start;
    const uint8_t* words = nullptr;
    if (kRounding == Rounding::kStochastic) {
      words = FillRandomWords8<kHalfWords>(random, keys, first_index + start, m, buffer);
    }
    const uint32_t* src = reinterpret_cast<const uint32_t*>(in + start);
    uint32_t* dst = reinterpret_cast<uint32_t*>(out + start);
    const int32_t* ks = k + start;
    int64_t i = 0;
    for (; i + 8 <= m; i += 8) {
      const __m256i u = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + i));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + i), round(u, words, i, ks));
    }
    if (i < m) {
      // Exponents of the tail, padded (only read with k_stride 1).
      alignas(32) int32_t tail_k[8] = {0, 0, 0, 0, 0, 0, 0, 0};
      if (k_stride != 0) std::memcpy(tail_k, ks + i, 4 * (m - i));
      const uint8_t* tail_words =
          kRounding == Rounding::kStochastic ? words + (kHalfWords ? 2 : 4) * i : nullptr;
      Tail8<kHalfWords, kRounding>(
          src + i, dst + i, m - i, tail_words,
          [&](__m256i u, const uint8_t* w) { return round(u, w, 0, tail_k); });
    }
  }
}

template <Rounding kRounding>
void RoundDfpImpl(const float* in, float* out, int64_t n, int64_t first_index,
                  const int32_t* k, int64_t k_stride, const RandomStream& random) {
  // Nearest-even rounds by float addition (rounding_avx2.h).
  const ScopedRoundToNearest round_to_nearest;  // float_environment.h
  if (kRounding == Rounding::kStochastic && random.half_words) {
    return RoundDfpLoop<kRounding, true>(in, out, n, first_index, k, k_stride, random);
  }
  RoundDfpLoop<kRounding, false>(in, out, n, first_index, k, k_stride, random);
}

// |x| bits with NaN and Inf mapped to 0.
inline __m256i FiniteMagnitude8(__m256i u) {
  const __m256i a = _mm256_and_si256(u, simd_avx2::Splat(kAbsMask));
  return _mm256_and_si256(_mm256_cmpgt_epi32(simd_avx2::Splat(kInfBits), a), a);
}

// Lanes j < lanes of a masked load or store (vpmaskmovd).
inline __m256i TailMask8(int64_t lanes) {
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(std::min<int64_t>(lanes, 8))),
                            _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

void MaxAbsBits(const float* in, int64_t rows, int64_t width, int64_t stride,
                uint32_t* max_bits) {
  const int64_t whole = width - width % 8;
  const __m256i tail = TailMask8(width - whole);
  for (int64_t r = 0; r < rows; ++r) {
    const uint32_t* row = reinterpret_cast<const uint32_t*>(in + r * stride);
    for (int64_t j = 0; j < whole; j += 8) {
      auto* current = reinterpret_cast<__m256i*>(max_bits + j);
      const __m256i a =
          FiniteMagnitude8(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + j)));
      _mm256_storeu_si256(current, _mm256_max_epi32(a, _mm256_loadu_si256(current)));
    }
    if (whole < width) {
      auto* current = reinterpret_cast<int*>(max_bits + whole);
      const __m256i a = FiniteMagnitude8(
          _mm256_maskload_epi32(reinterpret_cast<const int*>(row + whole), tail));
      _mm256_maskstore_epi32(current, tail,
                             _mm256_max_epi32(a, _mm256_maskload_epi32(current, tail)));
    }
  }
}

uint32_t MaxAbsBitsAll(const float* in, int64_t n) {
  const uint32_t* src = reinterpret_cast<const uint32_t*>(in);
  const auto load = [src](int64_t i) {
    return FiniteMagnitude8(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + i)));
  };
  // Four accumulators hide the latency of the max; magnitudes are below
  // 2^31, so the signed max is the unsigned one.
  __m256i m0 = _mm256_setzero_si256(), m1 = m0, m2 = m0, m3 = m0;
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    m0 = _mm256_max_epi32(m0, load(i));
    m1 = _mm256_max_epi32(m1, load(i + 8));
    m2 = _mm256_max_epi32(m2, load(i + 16));
    m3 = _mm256_max_epi32(m3, load(i + 24));
  }
  for (; i + 8 <= n; i += 8) m0 = _mm256_max_epi32(m0, load(i));
  if (i < n) {
    m1 = _mm256_max_epi32(m1, FiniteMagnitude8(_mm256_maskload_epi32(
                                  reinterpret_cast<const int*>(src + i), TailMask8(n - i))));
  }
  const __m256i m = _mm256_max_epi32(_mm256_max_epi32(m0, m1), _mm256_max_epi32(m2, m3));
  __m128i h = _mm_max_epi32(_mm256_castsi256_si128(m), _mm256_extracti128_si256(m, 1));
  h = _mm_max_epi32(h, _mm_shuffle_epi32(h, _MM_SHUFFLE(1, 0, 3, 2)));
  h = _mm_max_epi32(h, _mm_shuffle_epi32(h, _MM_SHUFFLE(2, 3, 0, 1)));
  return static_cast<uint32_t>(_mm_cvtsi128_si32(h));
}

#endif  // TF_LOWPREC_AVX512_INTRINSICS / TF_LOWPREC_AVX2_INTRINSICS

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

// Block-scaled formats: their loops use this file's random-word helpers.
#include "block_scaled_loops_impl.h"

}  // namespace

extern const RoundingLoops kRoundingLoops = {TF_LOWPREC_ISA_NAME, &RoundFloat, &RoundDfp,
                                             &MaxAbsBits, &MaxAbsBitsAll,
                                             &QuantizeBlockScaled};

}  // namespace TF_LOWPREC_ISA
}  // namespace tf_lowprec
