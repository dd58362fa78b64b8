// INT16 shared-exponent GEMM, compiled once per instruction set.
//
// dfp_gemm_portable.cc and dfp_gemm_avx512.cc define TF_LOWPREC_DFP_ISA (the
// namespace), TF_LOWPREC_DFP_ISA_NAME and TF_LOWPREC_DFP_VNNI (0 or 1) and
// include this file with their own compiler flags.  Everything here is in
// that namespace (and no standard-library templates are instantiated), so
// the two copies never merge at link time.
//
// Structure (a packed, cache-blocked GEMM in the GotoBLAS style):
//   1. pack: a and b are converted to INT16 mantissas I = y * 2^-E (exact:
//      y comes from quantize_dfp) and laid out as K-pairs, the operand format
//      of vpdpwssd: a in panels of kMr rows, b in panels of kNr columns, each
//      panel [pairs][lanes] of int32 words (low half: even k, high: odd k).
//      Every exponent block is padded to an even length with zeros.
//   2. compute: work items of kMc rows x kNc columns run the micro-kernel over
//      K pieces of kKcPairs pairs; the micro-kernel keeps kMr x kNr INT32
//      accumulators in registers, runs one INT32 chain per chunk and adds the
//      chunk sums to an FP32 tile (acc_b in dfp_gemm.h).  At the end of an
//      exponent block the tile is scaled by 2^(Ea+Eb) and added to out.
//   3. NaN: rows of a / columns of b that held NaN or Inf make their outputs NaN.
//
// Overflow (the VNNI path): the chain of a chunk uses the saturating form
// vpdpwssds.  Each step adds a pair sum to the exact running sum, so until
// the first saturation the register holds the exact prefix sum, and the first
// saturation leaves exactly INT32_MAX or INT32_MIN.  Running max/min
// registers record whether any accumulator reached either value; if so the
// whole micro-tile chunk is recomputed exactly in INT64 (the portable code),
// so the chunk sum is exact in every case.  The portable path computes every
// chunk in INT64 directly.  Both count the (element, chunk) pairs whose INT32
// chain would have overflowed, with the same definition.
#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "dfp_gemm.h"
#include "number_formats.h"

#if TF_LOWPREC_DFP_VNNI
#include <immintrin.h>
#endif

namespace tf_lowprec {
namespace dfp_gemm {
namespace TF_LOWPREC_DFP_ISA {
namespace {

constexpr int kMr = 6;          // rows of a micro-tile
constexpr int kNv = 3;          // 16-lane vectors per micro-tile row
constexpr int kNr = 16 * kNv;   // columns of a micro-tile
constexpr int64_t kMc = 96;     // rows of a work item (multiple of kMr)
constexpr int64_t kNc = 480;    // columns of a work item (multiple of kNr)
constexpr int64_t kKcPairs = 128;  // K pairs per micro-kernel call (before rounding to chunks)

inline int64_t Min64(int64_t x, int64_t y) { return x < y ? x : y; }
inline int64_t Max64(int64_t x, int64_t y) { return x > y ? x : y; }
inline int64_t CeilDiv(int64_t x, int64_t y) { return (x + y - 1) / y; }

inline float FloatPow2(int32_t k) {  // 2^k for -126 <= k <= 127
  uint32_t bits = static_cast<uint32_t>(k + 127) << 23;
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

inline double DoublePow2(int32_t k) {  // 2^k for -1074 <= k <= 1023
  if (k < -1074) return 0.0;
  if (k > 1023) k = 1023;  // (invalid exponents are reported by the packing)
  uint64_t bits = k >= -1022 ? static_cast<uint64_t>(k + 1023) << 52
                             : uint64_t{1} << (k + 1074);
  double d;
  std::memcpy(&d, &bits, sizeof d);
  return d;
}

inline void AtomicAdd(int64_t* target, int64_t value) {
  if (value != 0) __atomic_fetch_add(target, value, __ATOMIC_RELAXED);
}

// Where the K pairs of every exponent block start in a packed panel.
struct BlockLayout {
  int64_t blocks = 0;
  int64_t block_size = 0;
  int64_t total_pairs = 0;
  int64_t k = 0;
  int64_t Start(int64_t b) const { return b * block_size; }
  int64_t Length(int64_t b) const { return Min64(block_size, k - b * block_size); }
  // Blocks before the last are full, so their pair counts are equal.
  int64_t PairOffset(int64_t b) const { return b * ((block_size + 1) / 2); }
  int64_t Pairs(int64_t b) const { return (Length(b) + 1) / 2; }
};

BlockLayout MakeLayout(int64_t k, int64_t block_size) {
  BlockLayout layout;
  layout.k = k;
  layout.block_size = Max64(1, Min64(block_size, Max64(k, 1)));
  layout.blocks = k == 0 ? 0 : CeilDiv(k, layout.block_size);
  layout.total_pairs =
      layout.blocks == 0 ? 0
                         : layout.PairOffset(layout.blocks - 1) + layout.Pairs(layout.blocks - 1);
  return layout;
}

// ---------------------------------------------------------------- packing

// Source of one operand seen as lanes (rows of a, columns of b) x K.
struct OperandView {
  const float* data;
  int64_t lane_stride, k_stride;
  const int32_t* exponents;
  int64_t e_lane_stride, e_block_stride;
};

// Mantissas: I = y * 2^-E with 2^-E = s1 * s2 (two factors so that every
// intermediate stays a normal float: |E| can exceed 126).  Exact for y from
// quantize_dfp; anything else is counted as invalid.
inline void ScaleFactors(int32_t e, float* s1, float* s2, int32_t* invalid) {
  if (e == kDfpNoScale) {  // block of zeros (and non-finite values)
    *s1 = *s2 = 1.0f;
    return;
  }
  int32_t t = -e;
  if (t < -250 || t > 250) {
    *invalid += 1;
    t = 0;
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
                          const float* s2, int64_t sstride, int16_t* out, int32_t* nonfinite) {
  int32_t invalid = 0, nf = 0;
  for (int64_t i = 0; i < n; ++i) {
    const float y = x[i * stride];
    uint32_t bits;
    std::memcpy(&bits, &y, sizeof bits);
    const int32_t finite = (bits & 0x7F800000u) != 0x7F800000u;
    const float v = finite ? (y * s1[i * sstride]) * s2[i * sstride] : 0.0f;
    const float clamped = v < -40000.0f ? -40000.0f : (v > 40000.0f ? 40000.0f : v);
    const int32_t m = static_cast<int32_t>(clamped);
    invalid += (static_cast<float>(m) != v) | (m > kMaxMantissa) | (m < -kMaxMantissa);
    nf |= 1 - finite;
    out[i] = static_cast<int16_t>(m);
  }
  *nonfinite |= nf;
  return invalid;
}

#if TF_LOWPREC_DFP_VNNI
// ConvertRun for stride 1, with AVX-512 (the compiler does not vectorize the
// plain loop well).  sstride is 0 (one scale) or 1 (one per value).
inline int32_t ConvertContiguous(const float* x, int64_t n, const float* s1, const float* s2,
                                 int64_t sstride, int16_t* out, int32_t* nonfinite) {
  int32_t invalid = 0;
  __mmask16 nf = 0;
  const __m512 lo_clamp = _mm512_set1_ps(-40000.0f), hi_clamp = _mm512_set1_ps(40000.0f);
  const __m512i max_m = _mm512_set1_epi32(kMaxMantissa);
  int64_t i = 0;
  for (; i < n; i += 16) {
    const __mmask16 live = n - i >= 16 ? 0xFFFF : static_cast<__mmask16>((1u << (n - i)) - 1);
    const __m512 y = _mm512_maskz_loadu_ps(live, x + i);
    const __m512 a = sstride ? _mm512_maskz_loadu_ps(live, s1 + i) : _mm512_set1_ps(s1[0]);
    const __m512 b = sstride ? _mm512_maskz_loadu_ps(live, s2 + i) : _mm512_set1_ps(s2[0]);
    const __mmask16 bad = _mm512_fpclass_ps_mask(y, 0x99) & live;  // NaN or Inf
    nf |= bad;
    const __m512 v = _mm512_maskz_mul_ps(static_cast<__mmask16>(~bad), _mm512_mul_ps(y, a), b);
    const __m512i m = _mm512_cvttps_epi32(_mm512_min_ps(_mm512_max_ps(v, lo_clamp), hi_clamp));
    const __mmask16 wrong = _mm512_cmp_ps_mask(_mm512_cvtepi32_ps(m), v, _CMP_NEQ_UQ) |
                            _mm512_cmpgt_epi32_mask(_mm512_abs_epi32(m), max_m);
    invalid += __builtin_popcount(static_cast<unsigned>(wrong & live));
    _mm256_mask_storeu_epi16(out + i, live, _mm512_cvtepi32_epi16(m));
  }
  *nonfinite |= nf ? 1 : 0;
  return invalid;
}
#endif

inline int32_t PairWord(int16_t lo, int16_t hi) {
  return static_cast<int32_t>(static_cast<uint32_t>(static_cast<uint16_t>(lo)) |
                              (static_cast<uint32_t>(static_cast<uint16_t>(hi)) << 16));
}

// Packs lanes [lane0, lane0 + lanes) (lanes <= width; the rest of the panel
// is zero) into panel[total_pairs][width].  Sets nonfinite[l] for lanes with
// NaN or Inf; returns the number of invalid elements.
template <int kWidth>
int64_t PackPanel(const OperandView& src, const BlockLayout& layout, int64_t lane0,
                  int64_t lanes, int32_t* panel, int32_t* pair_max, uint8_t* nonfinite) {
  int64_t invalid = 0;
  int32_t scale_invalid = 0;
  std::memset(panel, 0, sizeof(int32_t) * layout.total_pairs * kWidth);
  int32_t lane_nonfinite[kWidth] = {};
  constexpr int64_t kRun = 1024;  // K values converted at a time (even)
  alignas(64) int16_t run[kRun + 2];
  alignas(64) int16_t lo[kWidth], hi[kWidth];
  for (int64_t blk = 0; blk < layout.blocks; ++blk) {
    const int64_t k0 = layout.Start(blk), len = layout.Length(blk);
    int32_t* out = panel + layout.PairOffset(blk) * kWidth;
    float s1[kWidth], s2[kWidth];
    for (int64_t l = 0; l < kWidth; ++l) s1[l] = s2[l] = 0.0f;
    for (int64_t l = 0; l < lanes; ++l) {
      ScaleFactors(src.exponents[(lane0 + l) * src.e_lane_stride + blk * src.e_block_stride],
                   &s1[l], &s2[l], &scale_invalid);
    }
    if (src.k_stride == 1) {
      // K contiguous within a lane: convert runs of a lane, then scatter the
      // pair words (an int16 run read as int32 words is exactly the pairs).
      for (int64_t l = 0; l < lanes; ++l) {
        const float* x = src.data + (lane0 + l) * src.lane_stride + k0;
        for (int64_t r0 = 0; r0 < len; r0 += kRun) {
          const int64_t n = Min64(kRun, len - r0);
#if TF_LOWPREC_DFP_VNNI
          invalid += ConvertContiguous(x + r0, n, &s1[l], &s2[l], 0, run, &lane_nonfinite[l]);
#else
          invalid += ConvertRun(x + r0, 1, n, &s1[l], &s2[l], 0, run, &lane_nonfinite[l]);
#endif
          run[n] = 0;  // odd tail: the pair's high half is zero padding
          int32_t* o = out + (r0 / 2) * kWidth + l;
          for (int64_t q = 0; q < (n + 1) / 2; ++q) o[q * kWidth] = PairWord(run[2 * q], run[2 * q + 1]);
        }
      }
    } else {
      // Lanes contiguous for each k: convert two rows, interleave them.
      int32_t nf = 0;
      for (int64_t kk = 0; kk < len; kk += 2) {
        const float* x0 = src.data + (k0 + kk) * src.k_stride + lane0 * src.lane_stride;
#if TF_LOWPREC_DFP_VNNI
        if (src.lane_stride == 1) {
          invalid += ConvertContiguous(x0, lanes, s1, s2, 1, lo, &nf);
        } else {
          invalid += ConvertRun(x0, src.lane_stride, lanes, s1, s2, 1, lo, &nf);
        }
        if (kk + 1 < len && src.lane_stride == 1) {
          invalid += ConvertContiguous(x0 + src.k_stride, lanes, s1, s2, 1, hi, &nf);
        } else if (kk + 1 < len) {
#else
        invalid += ConvertRun(x0, src.lane_stride, lanes, s1, s2, 1, lo, &nf);
        if (kk + 1 < len) {
#endif
          invalid += ConvertRun(x0 + src.k_stride, src.lane_stride, lanes, s1, s2, 1, hi, &nf);
        } else {
          for (int64_t l = 0; l < lanes; ++l) hi[l] = 0;
        }
        int32_t* o = out + (kk / 2) * kWidth;
        for (int64_t l = 0; l < lanes; ++l) o[l] = PairWord(lo[l], hi[l]);
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
  // Largest |mantissa| of every pair (both halves, all lanes): the overflow
  // bound of the VNNI kernel.
  for (int64_t q = 0; q < layout.total_pairs; ++q) {
    const int16_t* h = reinterpret_cast<const int16_t*>(panel + q * kWidth);
    int32_t m = 0;
    for (int l = 0; l < 2 * kWidth; ++l) {
      const int32_t v = h[l] < 0 ? -h[l] : h[l];
      m = v > m ? v : m;
    }
    pair_max[q] = m;
  }
  return invalid;
}

// ------------------------------------------------------------ micro-kernels

inline int32_t LowHalf(int32_t w) { return static_cast<int16_t>(static_cast<uint32_t>(w) & 0xFFFFu); }
inline int32_t HighHalf(int32_t w) { return static_cast<int16_t>(static_cast<uint32_t>(w) >> 16); }

// Exact chunk: tile[r][c] += float(sum of the chunk's pair sums) computed in
// INT64.  Returns how many of the kMr x kNr chains would have overflowed
// INT32 (a prefix of pair sums outside [INT32_MIN, INT32_MAX]).
int64_t ExactChunk(const int32_t* ap, const int32_t* bp, int64_t pairs, float* tile) {
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

// kMr x kNr micro-kernel: INT32 chains with vpdpwssds and saturation detection.
static_assert(kMr == 6 && kNv == 3, "the VNNI micro-kernel is written for 6 x 48 tiles");

// Bounds for a micro-tile chunk from the packing's per-pair maxima of |I|
// over the tile's rows (amax) and columns (bmax): every pair sum t satisfies
// |t| <= step = max 2 amax bmax, and every running sum |S| <= total = sum of
// 2 amax bmax.  total <= INT32_MAX: no chain can overflow.
struct ChunkBounds {
  int64_t total = 0, step = 0;
};

ChunkBounds Bounds(const int32_t* amax, const int32_t* bmax, int64_t pairs) {
  ChunkBounds bounds;
  for (int64_t q = 0; q < pairs; ++q) {
    const int64_t t = int64_t{2} * amax[q] * bmax[q];
    bounds.total += t;
    bounds.step = t > bounds.step ? t : bounds.step;
  }
  return bounds;
}

// The chains of one chunk (`pairs` K pairs) of a kMr x kNr micro-tile, with
// vpdpwssds, in zmm0..zmm17, stored to sums[0..17][16].  Inline assembly:
// GCC 12 spills these 18 accumulators.  This variant is for chunks certified
// in advance (ChunkBounds): sums[18], sums[19] get INT32_MIN, INT32_MAX.
void ChainUnchecked(const int32_t* a, const int32_t* b, int64_t pairs, int32_t* sums) {
  static const int32_t kInt32MaxScalar = 0x7FFFFFFF;
  static const int32_t kInt32MinScalar = static_cast<int32_t>(0x80000000u);
  asm volatile(
      "vpxord %%zmm0, %%zmm0, %%zmm0\n\t"
      "vmovdqa64 %%zmm0, %%zmm1\n\t"
      "vmovdqa64 %%zmm0, %%zmm2\n\t"
      "vmovdqa64 %%zmm0, %%zmm3\n\t"
      "vmovdqa64 %%zmm0, %%zmm4\n\t"
      "vmovdqa64 %%zmm0, %%zmm5\n\t"
      "vmovdqa64 %%zmm0, %%zmm6\n\t"
      "vmovdqa64 %%zmm0, %%zmm7\n\t"
      "vmovdqa64 %%zmm0, %%zmm8\n\t"
      "vmovdqa64 %%zmm0, %%zmm9\n\t"
      "vmovdqa64 %%zmm0, %%zmm10\n\t"
      "vmovdqa64 %%zmm0, %%zmm11\n\t"
      "vmovdqa64 %%zmm0, %%zmm12\n\t"
      "vmovdqa64 %%zmm0, %%zmm13\n\t"
      "vmovdqa64 %%zmm0, %%zmm14\n\t"
      "vmovdqa64 %%zmm0, %%zmm15\n\t"
      "vmovdqa64 %%zmm0, %%zmm16\n\t"
      "vmovdqa64 %%zmm0, %%zmm17\n\t"
      "vpbroadcastd %[int_min], %%zmm18\n\t"
      "vpbroadcastd %[int_max], %%zmm19\n\t"
      "testq %[n], %[n]\n\t"
      "jz 2f\n\t"
      "1:\n\t"
      "vmovdqu64 0(%[b]), %%zmm26\n\t"
      "vmovdqu64 64(%[b]), %%zmm27\n\t"
      "vmovdqu64 128(%[b]), %%zmm28\n\t"
      "vpdpwssds 0(%[a])%{1to16%}, %%zmm26, %%zmm0\n\t"
      "vpdpwssds 0(%[a])%{1to16%}, %%zmm27, %%zmm1\n\t"
      "vpdpwssds 0(%[a])%{1to16%}, %%zmm28, %%zmm2\n\t"
      "vpdpwssds 4(%[a])%{1to16%}, %%zmm26, %%zmm3\n\t"
      "vpdpwssds 4(%[a])%{1to16%}, %%zmm27, %%zmm4\n\t"
      "vpdpwssds 4(%[a])%{1to16%}, %%zmm28, %%zmm5\n\t"
      "vpdpwssds 8(%[a])%{1to16%}, %%zmm26, %%zmm6\n\t"
      "vpdpwssds 8(%[a])%{1to16%}, %%zmm27, %%zmm7\n\t"
      "vpdpwssds 8(%[a])%{1to16%}, %%zmm28, %%zmm8\n\t"
      "vpdpwssds 12(%[a])%{1to16%}, %%zmm26, %%zmm9\n\t"
      "vpdpwssds 12(%[a])%{1to16%}, %%zmm27, %%zmm10\n\t"
      "vpdpwssds 12(%[a])%{1to16%}, %%zmm28, %%zmm11\n\t"
      "vpdpwssds 16(%[a])%{1to16%}, %%zmm26, %%zmm12\n\t"
      "vpdpwssds 16(%[a])%{1to16%}, %%zmm27, %%zmm13\n\t"
      "vpdpwssds 16(%[a])%{1to16%}, %%zmm28, %%zmm14\n\t"
      "vpdpwssds 20(%[a])%{1to16%}, %%zmm26, %%zmm15\n\t"
      "vpdpwssds 20(%[a])%{1to16%}, %%zmm27, %%zmm16\n\t"
      "vpdpwssds 20(%[a])%{1to16%}, %%zmm28, %%zmm17\n\t"
      "addq $24, %[a]\n\t"
      "addq $192, %[b]\n\t"
      "decq %[n]\n\t"
      "jnz 1b\n\t"
      "2:\n\t"
      "vmovdqu64 %%zmm0, 0(%[out])\n\t"
      "vmovdqu64 %%zmm1, 64(%[out])\n\t"
      "vmovdqu64 %%zmm2, 128(%[out])\n\t"
      "vmovdqu64 %%zmm3, 192(%[out])\n\t"
      "vmovdqu64 %%zmm4, 256(%[out])\n\t"
      "vmovdqu64 %%zmm5, 320(%[out])\n\t"
      "vmovdqu64 %%zmm6, 384(%[out])\n\t"
      "vmovdqu64 %%zmm7, 448(%[out])\n\t"
      "vmovdqu64 %%zmm8, 512(%[out])\n\t"
      "vmovdqu64 %%zmm9, 576(%[out])\n\t"
      "vmovdqu64 %%zmm10, 640(%[out])\n\t"
      "vmovdqu64 %%zmm11, 704(%[out])\n\t"
      "vmovdqu64 %%zmm12, 768(%[out])\n\t"
      "vmovdqu64 %%zmm13, 832(%[out])\n\t"
      "vmovdqu64 %%zmm14, 896(%[out])\n\t"
      "vmovdqu64 %%zmm15, 960(%[out])\n\t"
      "vmovdqu64 %%zmm16, 1024(%[out])\n\t"
      "vmovdqu64 %%zmm17, 1088(%[out])\n\t"
      "vmovdqu64 %%zmm18, 1152(%[out])\n\t"
      "vmovdqu64 %%zmm19, 1216(%[out])\n\t"
      : [a] "+&r"(a), [b] "+&r"(b), [n] "+&r"(pairs)
      : [out] "r"(sums), [int_min] "m"(kInt32MinScalar), [int_max] "m"(kInt32MaxScalar)
      : "memory", "cc", "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10", "xmm11", "xmm12", "xmm13", "xmm14", "xmm15", "xmm16", "xmm17", "xmm18", "xmm19", "xmm20", "xmm21", "xmm22", "xmm23", "xmm24", "xmm25", "xmm26", "xmm27", "xmm28", "xmm29", "xmm30", "xmm31");
}

// As ChainUnchecked, and sums[18] / sums[19] get the running max / min of
// every accumulator after every step: a lane equal to INT32_MAX / INT32_MIN
// means some chain may have saturated (vpdpwssds saturates exactly when the
// exact running sum leaves INT32, and holds the exact sum until then).
void ChainChecked(const int32_t* a, const int32_t* b, int64_t pairs, int32_t* sums) {
  static const int32_t kInt32MaxScalar = 0x7FFFFFFF;
  static const int32_t kInt32MinScalar = static_cast<int32_t>(0x80000000u);
  asm volatile(
      "vpxord %%zmm0, %%zmm0, %%zmm0\n\t"
      "vmovdqa64 %%zmm0, %%zmm1\n\t"
      "vmovdqa64 %%zmm0, %%zmm2\n\t"
      "vmovdqa64 %%zmm0, %%zmm3\n\t"
      "vmovdqa64 %%zmm0, %%zmm4\n\t"
      "vmovdqa64 %%zmm0, %%zmm5\n\t"
      "vmovdqa64 %%zmm0, %%zmm6\n\t"
      "vmovdqa64 %%zmm0, %%zmm7\n\t"
      "vmovdqa64 %%zmm0, %%zmm8\n\t"
      "vmovdqa64 %%zmm0, %%zmm9\n\t"
      "vmovdqa64 %%zmm0, %%zmm10\n\t"
      "vmovdqa64 %%zmm0, %%zmm11\n\t"
      "vmovdqa64 %%zmm0, %%zmm12\n\t"
      "vmovdqa64 %%zmm0, %%zmm13\n\t"
      "vmovdqa64 %%zmm0, %%zmm14\n\t"
      "vmovdqa64 %%zmm0, %%zmm15\n\t"
      "vmovdqa64 %%zmm0, %%zmm16\n\t"
      "vmovdqa64 %%zmm0, %%zmm17\n\t"
      "vpbroadcastd %[int_min], %%zmm18\n\t"
      "vpbroadcastd %[int_max], %%zmm19\n\t"
      "testq %[n], %[n]\n\t"
      "jz 2f\n\t"
      "1:\n\t"
      "vmovdqu64 0(%[b]), %%zmm26\n\t"
      "vmovdqu64 64(%[b]), %%zmm27\n\t"
      "vmovdqu64 128(%[b]), %%zmm28\n\t"
      "vpdpwssds 0(%[a])%{1to16%}, %%zmm26, %%zmm0\n\t"
      "vpdpwssds 0(%[a])%{1to16%}, %%zmm27, %%zmm1\n\t"
      "vpdpwssds 0(%[a])%{1to16%}, %%zmm28, %%zmm2\n\t"
      "vpdpwssds 4(%[a])%{1to16%}, %%zmm26, %%zmm3\n\t"
      "vpdpwssds 4(%[a])%{1to16%}, %%zmm27, %%zmm4\n\t"
      "vpdpwssds 4(%[a])%{1to16%}, %%zmm28, %%zmm5\n\t"
      "vpdpwssds 8(%[a])%{1to16%}, %%zmm26, %%zmm6\n\t"
      "vpdpwssds 8(%[a])%{1to16%}, %%zmm27, %%zmm7\n\t"
      "vpdpwssds 8(%[a])%{1to16%}, %%zmm28, %%zmm8\n\t"
      "vpdpwssds 12(%[a])%{1to16%}, %%zmm26, %%zmm9\n\t"
      "vpdpwssds 12(%[a])%{1to16%}, %%zmm27, %%zmm10\n\t"
      "vpdpwssds 12(%[a])%{1to16%}, %%zmm28, %%zmm11\n\t"
      "vpdpwssds 16(%[a])%{1to16%}, %%zmm26, %%zmm12\n\t"
      "vpdpwssds 16(%[a])%{1to16%}, %%zmm27, %%zmm13\n\t"
      "vpdpwssds 16(%[a])%{1to16%}, %%zmm28, %%zmm14\n\t"
      "vpdpwssds 20(%[a])%{1to16%}, %%zmm26, %%zmm15\n\t"
      "vpdpwssds 20(%[a])%{1to16%}, %%zmm27, %%zmm16\n\t"
      "vpdpwssds 20(%[a])%{1to16%}, %%zmm28, %%zmm17\n\t"
      "vpmaxsd %%zmm0, %%zmm1, %%zmm20\n\t"
      "vpmaxsd %%zmm2, %%zmm20, %%zmm20\n\t"
      "vpmaxsd %%zmm20, %%zmm18, %%zmm18\n\t"
      "vpmaxsd %%zmm3, %%zmm4, %%zmm21\n\t"
      "vpmaxsd %%zmm5, %%zmm21, %%zmm21\n\t"
      "vpmaxsd %%zmm21, %%zmm18, %%zmm18\n\t"
      "vpmaxsd %%zmm6, %%zmm7, %%zmm22\n\t"
      "vpmaxsd %%zmm8, %%zmm22, %%zmm22\n\t"
      "vpmaxsd %%zmm22, %%zmm18, %%zmm18\n\t"
      "vpmaxsd %%zmm9, %%zmm10, %%zmm20\n\t"
      "vpmaxsd %%zmm11, %%zmm20, %%zmm20\n\t"
      "vpmaxsd %%zmm20, %%zmm18, %%zmm18\n\t"
      "vpmaxsd %%zmm12, %%zmm13, %%zmm21\n\t"
      "vpmaxsd %%zmm14, %%zmm21, %%zmm21\n\t"
      "vpmaxsd %%zmm21, %%zmm18, %%zmm18\n\t"
      "vpmaxsd %%zmm15, %%zmm16, %%zmm22\n\t"
      "vpmaxsd %%zmm17, %%zmm22, %%zmm22\n\t"
      "vpmaxsd %%zmm22, %%zmm18, %%zmm18\n\t"
      "vpminsd %%zmm0, %%zmm1, %%zmm20\n\t"
      "vpminsd %%zmm2, %%zmm20, %%zmm20\n\t"
      "vpminsd %%zmm20, %%zmm19, %%zmm19\n\t"
      "vpminsd %%zmm3, %%zmm4, %%zmm21\n\t"
      "vpminsd %%zmm5, %%zmm21, %%zmm21\n\t"
      "vpminsd %%zmm21, %%zmm19, %%zmm19\n\t"
      "vpminsd %%zmm6, %%zmm7, %%zmm22\n\t"
      "vpminsd %%zmm8, %%zmm22, %%zmm22\n\t"
      "vpminsd %%zmm22, %%zmm19, %%zmm19\n\t"
      "vpminsd %%zmm9, %%zmm10, %%zmm20\n\t"
      "vpminsd %%zmm11, %%zmm20, %%zmm20\n\t"
      "vpminsd %%zmm20, %%zmm19, %%zmm19\n\t"
      "vpminsd %%zmm12, %%zmm13, %%zmm21\n\t"
      "vpminsd %%zmm14, %%zmm21, %%zmm21\n\t"
      "vpminsd %%zmm21, %%zmm19, %%zmm19\n\t"
      "vpminsd %%zmm15, %%zmm16, %%zmm22\n\t"
      "vpminsd %%zmm17, %%zmm22, %%zmm22\n\t"
      "vpminsd %%zmm22, %%zmm19, %%zmm19\n\t"
      "addq $24, %[a]\n\t"
      "addq $192, %[b]\n\t"
      "decq %[n]\n\t"
      "jnz 1b\n\t"
      "2:\n\t"
      "vmovdqu64 %%zmm0, 0(%[out])\n\t"
      "vmovdqu64 %%zmm1, 64(%[out])\n\t"
      "vmovdqu64 %%zmm2, 128(%[out])\n\t"
      "vmovdqu64 %%zmm3, 192(%[out])\n\t"
      "vmovdqu64 %%zmm4, 256(%[out])\n\t"
      "vmovdqu64 %%zmm5, 320(%[out])\n\t"
      "vmovdqu64 %%zmm6, 384(%[out])\n\t"
      "vmovdqu64 %%zmm7, 448(%[out])\n\t"
      "vmovdqu64 %%zmm8, 512(%[out])\n\t"
      "vmovdqu64 %%zmm9, 576(%[out])\n\t"
      "vmovdqu64 %%zmm10, 640(%[out])\n\t"
      "vmovdqu64 %%zmm11, 704(%[out])\n\t"
      "vmovdqu64 %%zmm12, 768(%[out])\n\t"
      "vmovdqu64 %%zmm13, 832(%[out])\n\t"
      "vmovdqu64 %%zmm14, 896(%[out])\n\t"
      "vmovdqu64 %%zmm15, 960(%[out])\n\t"
      "vmovdqu64 %%zmm16, 1024(%[out])\n\t"
      "vmovdqu64 %%zmm17, 1088(%[out])\n\t"
      "vmovdqu64 %%zmm18, 1152(%[out])\n\t"
      "vmovdqu64 %%zmm19, 1216(%[out])\n\t"
      : [a] "+&r"(a), [b] "+&r"(b), [n] "+&r"(pairs)
      : [out] "r"(sums), [int_min] "m"(kInt32MinScalar), [int_max] "m"(kInt32MaxScalar)
      : "memory", "cc", "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10", "xmm11", "xmm12", "xmm13", "xmm14", "xmm15", "xmm16", "xmm17", "xmm18", "xmm19", "xmm20", "xmm21", "xmm22", "xmm23", "xmm24", "xmm25", "xmm26", "xmm27", "xmm28", "xmm29", "xmm30", "xmm31");
}

// As ChainChecked, with half the tracking: the max after even steps, the
// min after odd steps, and both after the last.  A first saturation at MAX
// on an odd step s is seen at step s + 1 as a value >= INT32_MAX - |t| (t:
// that step's pair sum; likewise for MIN), so a chunk is clear when
// sums[18] < INT32_MAX - D and sums[19] > INT32_MIN + D, D >= max |t|.
void ChainAlternating(const int32_t* a, const int32_t* b, int64_t pairs, int32_t* sums) {
  static const int32_t kInt32MaxScalar = 0x7FFFFFFF;
  static const int32_t kInt32MinScalar = static_cast<int32_t>(0x80000000u);
  int64_t n = pairs;
  asm volatile(
      "vpxord %%zmm0, %%zmm0, %%zmm0\n\t"
      "vmovdqa64 %%zmm0, %%zmm1\n\t"
      "vmovdqa64 %%zmm0, %%zmm2\n\t"
      "vmovdqa64 %%zmm0, %%zmm3\n\t"
      "vmovdqa64 %%zmm0, %%zmm4\n\t"
      "vmovdqa64 %%zmm0, %%zmm5\n\t"
      "vmovdqa64 %%zmm0, %%zmm6\n\t"
      "vmovdqa64 %%zmm0, %%zmm7\n\t"
      "vmovdqa64 %%zmm0, %%zmm8\n\t"
      "vmovdqa64 %%zmm0, %%zmm9\n\t"
      "vmovdqa64 %%zmm0, %%zmm10\n\t"
      "vmovdqa64 %%zmm0, %%zmm11\n\t"
      "vmovdqa64 %%zmm0, %%zmm12\n\t"
      "vmovdqa64 %%zmm0, %%zmm13\n\t"
      "vmovdqa64 %%zmm0, %%zmm14\n\t"
      "vmovdqa64 %%zmm0, %%zmm15\n\t"
      "vmovdqa64 %%zmm0, %%zmm16\n\t"
      "vmovdqa64 %%zmm0, %%zmm17\n\t"
      "vpbroadcastd %[int_min], %%zmm18\n\t"
      "vpbroadcastd %[int_max], %%zmm19\n\t"
      "shrq $1, %[n]\n\t"
      "jz 2f\n\t"
      "1:\n\t"
      "vmovdqu64 0(%[b]), %%zmm26\n\t"
      "vmovdqu64 64(%[b]), %%zmm27\n\t"
      "vmovdqu64 128(%[b]), %%zmm28\n\t"
      "vpdpwssds 0(%[a])%{1to16%}, %%zmm26, %%zmm0\n\t"
      "vpdpwssds 0(%[a])%{1to16%}, %%zmm27, %%zmm1\n\t"
      "vpdpwssds 0(%[a])%{1to16%}, %%zmm28, %%zmm2\n\t"
      "vpdpwssds 4(%[a])%{1to16%}, %%zmm26, %%zmm3\n\t"
      "vpdpwssds 4(%[a])%{1to16%}, %%zmm27, %%zmm4\n\t"
      "vpdpwssds 4(%[a])%{1to16%}, %%zmm28, %%zmm5\n\t"
      "vpdpwssds 8(%[a])%{1to16%}, %%zmm26, %%zmm6\n\t"
      "vpdpwssds 8(%[a])%{1to16%}, %%zmm27, %%zmm7\n\t"
      "vpdpwssds 8(%[a])%{1to16%}, %%zmm28, %%zmm8\n\t"
      "vpdpwssds 12(%[a])%{1to16%}, %%zmm26, %%zmm9\n\t"
      "vpdpwssds 12(%[a])%{1to16%}, %%zmm27, %%zmm10\n\t"
      "vpdpwssds 12(%[a])%{1to16%}, %%zmm28, %%zmm11\n\t"
      "vpdpwssds 16(%[a])%{1to16%}, %%zmm26, %%zmm12\n\t"
      "vpdpwssds 16(%[a])%{1to16%}, %%zmm27, %%zmm13\n\t"
      "vpdpwssds 16(%[a])%{1to16%}, %%zmm28, %%zmm14\n\t"
      "vpdpwssds 20(%[a])%{1to16%}, %%zmm26, %%zmm15\n\t"
      "vpdpwssds 20(%[a])%{1to16%}, %%zmm27, %%zmm16\n\t"
      "vpdpwssds 20(%[a])%{1to16%}, %%zmm28, %%zmm17\n\t"
      "vpmaxsd %%zmm0, %%zmm1, %%zmm20\n\t"
      "vpmaxsd %%zmm2, %%zmm20, %%zmm20\n\t"
      "vpmaxsd %%zmm20, %%zmm18, %%zmm18\n\t"
      "vpmaxsd %%zmm3, %%zmm4, %%zmm21\n\t"
      "vpmaxsd %%zmm5, %%zmm21, %%zmm21\n\t"
      "vpmaxsd %%zmm21, %%zmm18, %%zmm18\n\t"
      "vpmaxsd %%zmm6, %%zmm7, %%zmm22\n\t"
      "vpmaxsd %%zmm8, %%zmm22, %%zmm22\n\t"
      "vpmaxsd %%zmm22, %%zmm18, %%zmm18\n\t"
      "vpmaxsd %%zmm9, %%zmm10, %%zmm20\n\t"
      "vpmaxsd %%zmm11, %%zmm20, %%zmm20\n\t"
      "vpmaxsd %%zmm20, %%zmm18, %%zmm18\n\t"
      "vpmaxsd %%zmm12, %%zmm13, %%zmm21\n\t"
      "vpmaxsd %%zmm14, %%zmm21, %%zmm21\n\t"
      "vpmaxsd %%zmm21, %%zmm18, %%zmm18\n\t"
      "vpmaxsd %%zmm15, %%zmm16, %%zmm22\n\t"
      "vpmaxsd %%zmm17, %%zmm22, %%zmm22\n\t"
      "vpmaxsd %%zmm22, %%zmm18, %%zmm18\n\t"
      "vmovdqu64 192(%[b]), %%zmm26\n\t"
      "vmovdqu64 256(%[b]), %%zmm27\n\t"
      "vmovdqu64 320(%[b]), %%zmm28\n\t"
      "vpdpwssds 24(%[a])%{1to16%}, %%zmm26, %%zmm0\n\t"
      "vpdpwssds 24(%[a])%{1to16%}, %%zmm27, %%zmm1\n\t"
      "vpdpwssds 24(%[a])%{1to16%}, %%zmm28, %%zmm2\n\t"
      "vpdpwssds 28(%[a])%{1to16%}, %%zmm26, %%zmm3\n\t"
      "vpdpwssds 28(%[a])%{1to16%}, %%zmm27, %%zmm4\n\t"
      "vpdpwssds 28(%[a])%{1to16%}, %%zmm28, %%zmm5\n\t"
      "vpdpwssds 32(%[a])%{1to16%}, %%zmm26, %%zmm6\n\t"
      "vpdpwssds 32(%[a])%{1to16%}, %%zmm27, %%zmm7\n\t"
      "vpdpwssds 32(%[a])%{1to16%}, %%zmm28, %%zmm8\n\t"
      "vpdpwssds 36(%[a])%{1to16%}, %%zmm26, %%zmm9\n\t"
      "vpdpwssds 36(%[a])%{1to16%}, %%zmm27, %%zmm10\n\t"
      "vpdpwssds 36(%[a])%{1to16%}, %%zmm28, %%zmm11\n\t"
      "vpdpwssds 40(%[a])%{1to16%}, %%zmm26, %%zmm12\n\t"
      "vpdpwssds 40(%[a])%{1to16%}, %%zmm27, %%zmm13\n\t"
      "vpdpwssds 40(%[a])%{1to16%}, %%zmm28, %%zmm14\n\t"
      "vpdpwssds 44(%[a])%{1to16%}, %%zmm26, %%zmm15\n\t"
      "vpdpwssds 44(%[a])%{1to16%}, %%zmm27, %%zmm16\n\t"
      "vpdpwssds 44(%[a])%{1to16%}, %%zmm28, %%zmm17\n\t"
      "vpminsd %%zmm0, %%zmm1, %%zmm20\n\t"
      "vpminsd %%zmm2, %%zmm20, %%zmm20\n\t"
      "vpminsd %%zmm20, %%zmm19, %%zmm19\n\t"
      "vpminsd %%zmm3, %%zmm4, %%zmm21\n\t"
      "vpminsd %%zmm5, %%zmm21, %%zmm21\n\t"
      "vpminsd %%zmm21, %%zmm19, %%zmm19\n\t"
      "vpminsd %%zmm6, %%zmm7, %%zmm22\n\t"
      "vpminsd %%zmm8, %%zmm22, %%zmm22\n\t"
      "vpminsd %%zmm22, %%zmm19, %%zmm19\n\t"
      "vpminsd %%zmm9, %%zmm10, %%zmm20\n\t"
      "vpminsd %%zmm11, %%zmm20, %%zmm20\n\t"
      "vpminsd %%zmm20, %%zmm19, %%zmm19\n\t"
      "vpminsd %%zmm12, %%zmm13, %%zmm21\n\t"
      "vpminsd %%zmm14, %%zmm21, %%zmm21\n\t"
      "vpminsd %%zmm21, %%zmm19, %%zmm19\n\t"
      "vpminsd %%zmm15, %%zmm16, %%zmm22\n\t"
      "vpminsd %%zmm17, %%zmm22, %%zmm22\n\t"
      "vpminsd %%zmm22, %%zmm19, %%zmm19\n\t"
      "addq $48, %[a]\n\t"
      "addq $384, %[b]\n\t"
      "decq %[n]\n\t"
      "jnz 1b\n\t"
      "2:\n\t"
      "testq $1, %[odd]\n\t"
      "jz 3f\n\t"
      "vmovdqu64 0(%[b]), %%zmm26\n\t"
      "vmovdqu64 64(%[b]), %%zmm27\n\t"
      "vmovdqu64 128(%[b]), %%zmm28\n\t"
      "vpdpwssds 0(%[a])%{1to16%}, %%zmm26, %%zmm0\n\t"
      "vpdpwssds 0(%[a])%{1to16%}, %%zmm27, %%zmm1\n\t"
      "vpdpwssds 0(%[a])%{1to16%}, %%zmm28, %%zmm2\n\t"
      "vpdpwssds 4(%[a])%{1to16%}, %%zmm26, %%zmm3\n\t"
      "vpdpwssds 4(%[a])%{1to16%}, %%zmm27, %%zmm4\n\t"
      "vpdpwssds 4(%[a])%{1to16%}, %%zmm28, %%zmm5\n\t"
      "vpdpwssds 8(%[a])%{1to16%}, %%zmm26, %%zmm6\n\t"
      "vpdpwssds 8(%[a])%{1to16%}, %%zmm27, %%zmm7\n\t"
      "vpdpwssds 8(%[a])%{1to16%}, %%zmm28, %%zmm8\n\t"
      "vpdpwssds 12(%[a])%{1to16%}, %%zmm26, %%zmm9\n\t"
      "vpdpwssds 12(%[a])%{1to16%}, %%zmm27, %%zmm10\n\t"
      "vpdpwssds 12(%[a])%{1to16%}, %%zmm28, %%zmm11\n\t"
      "vpdpwssds 16(%[a])%{1to16%}, %%zmm26, %%zmm12\n\t"
      "vpdpwssds 16(%[a])%{1to16%}, %%zmm27, %%zmm13\n\t"
      "vpdpwssds 16(%[a])%{1to16%}, %%zmm28, %%zmm14\n\t"
      "vpdpwssds 20(%[a])%{1to16%}, %%zmm26, %%zmm15\n\t"
      "vpdpwssds 20(%[a])%{1to16%}, %%zmm27, %%zmm16\n\t"
      "vpdpwssds 20(%[a])%{1to16%}, %%zmm28, %%zmm17\n\t"
      "vpmaxsd %%zmm0, %%zmm1, %%zmm20\n\t"
      "vpmaxsd %%zmm2, %%zmm20, %%zmm20\n\t"
      "vpmaxsd %%zmm20, %%zmm18, %%zmm18\n\t"
      "vpmaxsd %%zmm3, %%zmm4, %%zmm21\n\t"
      "vpmaxsd %%zmm5, %%zmm21, %%zmm21\n\t"
      "vpmaxsd %%zmm21, %%zmm18, %%zmm18\n\t"
      "vpmaxsd %%zmm6, %%zmm7, %%zmm22\n\t"
      "vpmaxsd %%zmm8, %%zmm22, %%zmm22\n\t"
      "vpmaxsd %%zmm22, %%zmm18, %%zmm18\n\t"
      "vpmaxsd %%zmm9, %%zmm10, %%zmm20\n\t"
      "vpmaxsd %%zmm11, %%zmm20, %%zmm20\n\t"
      "vpmaxsd %%zmm20, %%zmm18, %%zmm18\n\t"
      "vpmaxsd %%zmm12, %%zmm13, %%zmm21\n\t"
      "vpmaxsd %%zmm14, %%zmm21, %%zmm21\n\t"
      "vpmaxsd %%zmm21, %%zmm18, %%zmm18\n\t"
      "vpmaxsd %%zmm15, %%zmm16, %%zmm22\n\t"
      "vpmaxsd %%zmm17, %%zmm22, %%zmm22\n\t"
      "vpmaxsd %%zmm22, %%zmm18, %%zmm18\n\t"
      "3:\n\t"
      "vpmaxsd %%zmm0, %%zmm1, %%zmm20\n\t"
      "vpmaxsd %%zmm2, %%zmm20, %%zmm20\n\t"
      "vpmaxsd %%zmm20, %%zmm18, %%zmm18\n\t"
      "vpmaxsd %%zmm3, %%zmm4, %%zmm21\n\t"
      "vpmaxsd %%zmm5, %%zmm21, %%zmm21\n\t"
      "vpmaxsd %%zmm21, %%zmm18, %%zmm18\n\t"
      "vpmaxsd %%zmm6, %%zmm7, %%zmm22\n\t"
      "vpmaxsd %%zmm8, %%zmm22, %%zmm22\n\t"
      "vpmaxsd %%zmm22, %%zmm18, %%zmm18\n\t"
      "vpmaxsd %%zmm9, %%zmm10, %%zmm20\n\t"
      "vpmaxsd %%zmm11, %%zmm20, %%zmm20\n\t"
      "vpmaxsd %%zmm20, %%zmm18, %%zmm18\n\t"
      "vpmaxsd %%zmm12, %%zmm13, %%zmm21\n\t"
      "vpmaxsd %%zmm14, %%zmm21, %%zmm21\n\t"
      "vpmaxsd %%zmm21, %%zmm18, %%zmm18\n\t"
      "vpmaxsd %%zmm15, %%zmm16, %%zmm22\n\t"
      "vpmaxsd %%zmm17, %%zmm22, %%zmm22\n\t"
      "vpmaxsd %%zmm22, %%zmm18, %%zmm18\n\t"
      "vpminsd %%zmm0, %%zmm1, %%zmm20\n\t"
      "vpminsd %%zmm2, %%zmm20, %%zmm20\n\t"
      "vpminsd %%zmm20, %%zmm19, %%zmm19\n\t"
      "vpminsd %%zmm3, %%zmm4, %%zmm21\n\t"
      "vpminsd %%zmm5, %%zmm21, %%zmm21\n\t"
      "vpminsd %%zmm21, %%zmm19, %%zmm19\n\t"
      "vpminsd %%zmm6, %%zmm7, %%zmm22\n\t"
      "vpminsd %%zmm8, %%zmm22, %%zmm22\n\t"
      "vpminsd %%zmm22, %%zmm19, %%zmm19\n\t"
      "vpminsd %%zmm9, %%zmm10, %%zmm20\n\t"
      "vpminsd %%zmm11, %%zmm20, %%zmm20\n\t"
      "vpminsd %%zmm20, %%zmm19, %%zmm19\n\t"
      "vpminsd %%zmm12, %%zmm13, %%zmm21\n\t"
      "vpminsd %%zmm14, %%zmm21, %%zmm21\n\t"
      "vpminsd %%zmm21, %%zmm19, %%zmm19\n\t"
      "vpminsd %%zmm15, %%zmm16, %%zmm22\n\t"
      "vpminsd %%zmm17, %%zmm22, %%zmm22\n\t"
      "vpminsd %%zmm22, %%zmm19, %%zmm19\n\t"
      "vmovdqu64 %%zmm0, 0(%[out])\n\t"
      "vmovdqu64 %%zmm1, 64(%[out])\n\t"
      "vmovdqu64 %%zmm2, 128(%[out])\n\t"
      "vmovdqu64 %%zmm3, 192(%[out])\n\t"
      "vmovdqu64 %%zmm4, 256(%[out])\n\t"
      "vmovdqu64 %%zmm5, 320(%[out])\n\t"
      "vmovdqu64 %%zmm6, 384(%[out])\n\t"
      "vmovdqu64 %%zmm7, 448(%[out])\n\t"
      "vmovdqu64 %%zmm8, 512(%[out])\n\t"
      "vmovdqu64 %%zmm9, 576(%[out])\n\t"
      "vmovdqu64 %%zmm10, 640(%[out])\n\t"
      "vmovdqu64 %%zmm11, 704(%[out])\n\t"
      "vmovdqu64 %%zmm12, 768(%[out])\n\t"
      "vmovdqu64 %%zmm13, 832(%[out])\n\t"
      "vmovdqu64 %%zmm14, 896(%[out])\n\t"
      "vmovdqu64 %%zmm15, 960(%[out])\n\t"
      "vmovdqu64 %%zmm16, 1024(%[out])\n\t"
      "vmovdqu64 %%zmm17, 1088(%[out])\n\t"
      "vmovdqu64 %%zmm18, 1152(%[out])\n\t"
      "vmovdqu64 %%zmm19, 1216(%[out])\n\t"
      : [a] "+&r"(a), [b] "+&r"(b), [n] "+&r"(n)
      : [out] "r"(sums), [int_min] "m"(kInt32MinScalar), [int_max] "m"(kInt32MaxScalar), [odd] "r"(pairs)
      : "memory", "cc", "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10", "xmm11", "xmm12", "xmm13", "xmm14", "xmm15", "xmm16", "xmm17", "xmm18", "xmm19", "xmm20", "xmm21", "xmm22", "xmm23", "xmm24", "xmm25", "xmm26", "xmm27", "xmm28", "xmm29", "xmm30", "xmm31");
}

void MicroKernel(const int32_t* ap, const int32_t* bp, const int32_t* amax, const int32_t* bmax,
                 int64_t npairs, int64_t chunk_pairs, float* tile, bool first, Stats* stats) {
  if (first) std::memset(tile, 0, sizeof(float) * kMr * kNr);
  const __m512i kInt32Max = _mm512_set1_epi32(0x7FFFFFFF);
  const __m512i kInt32Min = _mm512_set1_epi32(static_cast<int32_t>(0x80000000u));
  for (int64_t q0 = 0; q0 < npairs; q0 += chunk_pairs) {
    const int64_t pairs = Min64(chunk_pairs, npairs - q0);
    const int32_t* a = ap + q0 * kMr;
    const int32_t* b = bp + q0 * kNr;
    alignas(64) int32_t sums[(kMr * kNv + 2) * 16];
    const ChunkBounds bounds = Bounds(amax + q0, bmax + q0, pairs);
    bool clear;
    if (bounds.total <= 2147483647) {
      ChainUnchecked(a, b, pairs, sums);
      clear = true;
    } else {
      ChainAlternating(a, b, pairs, sums);
      const __m512i hi = _mm512_load_si512(sums + 18 * 16), lo = _mm512_load_si512(sums + 19 * 16);
      const int64_t margin = bounds.step > 2147483647 ? 2147483647 : bounds.step;
      const __m512i hi_limit = _mm512_set1_epi32(static_cast<int32_t>(2147483647 - margin));
      const __m512i lo_limit = _mm512_set1_epi32(static_cast<int32_t>(-2147483647 + margin));
      clear = (_mm512_cmpge_epi32_mask(hi, hi_limit) | _mm512_cmple_epi32_mask(lo, lo_limit)) == 0;
      if (!clear) {  // near the limits: track every step to tell
        ChainChecked(a, b, pairs, sums);
        clear = (_mm512_cmpeq_epi32_mask(_mm512_load_si512(sums + 18 * 16), kInt32Max) |
                 _mm512_cmpeq_epi32_mask(_mm512_load_si512(sums + 19 * 16), kInt32Min)) == 0;
      }
    }
    const bool saturated = !clear;
    if (!saturated) {
      for (int e = 0; e < kMr * kNr; e += 16) {
        _mm512_storeu_ps(tile + e, _mm512_add_ps(_mm512_loadu_ps(tile + e),
                                                 _mm512_cvtepi32_ps(_mm512_load_si512(sums + e))));
      }
    } else {
      // Rare: some chain reached the INT32 limits.  Recompute exactly.
      stats->overflowed_chunks += ExactChunk(ap + q0 * kMr, bp + q0 * kNr, pairs, tile);
      stats->recomputed_tiles += 1;
    }
  }
}

#else  // portable

void MicroKernel(const int32_t* ap, const int32_t* bp, const int32_t* amax, const int32_t* bmax,
                 int64_t npairs, int64_t chunk_pairs, float* tile, bool first, Stats* stats) {
  if (first) std::memset(tile, 0, sizeof(float) * kMr * kNr);
  for (int64_t q0 = 0; q0 < npairs; q0 += chunk_pairs) {
    const int64_t pairs = Min64(chunk_pairs, npairs - q0);
    stats->overflowed_chunks += ExactChunk(ap + q0 * kMr, bp + q0 * kNr, pairs, tile);
  }
  (void)amax;
  (void)bmax;
}

#endif

// ------------------------------------------------------------------ driver

struct Plan {
  const Problem* p;
  BlockLayout layout;
  int64_t chunk_pairs, kc_pairs;
  int64_t a_batches, b_batches;
  int64_t a_panels, b_panels;  // per batch
  int64_t a_panel_words, b_panel_words;
  int32_t* packed_a;
  int32_t* packed_b;
  int32_t* a_pmax;  // [a_batches][a_panels][total_pairs]: max |I| of each pair
  int32_t* b_pmax;
  uint8_t* a_nonfinite;  // [a_batches][m]
  uint8_t* b_nonfinite;  // [b_batches][n]
  int64_t mc, nc;  // rows and columns of a work item (<= kMc, kNc)
  int64_t row_items, col_items;
  Stats* stats;
};

OperandView ViewOfA(const Problem& p, int64_t batch) {
  OperandView v;
  v.data = p.a + batch * p.a_batch_stride;
  v.lane_stride = p.transpose_a ? 1 : p.k;
  v.k_stride = p.transpose_a ? p.m : 1;
  v.exponents = p.ea + batch * p.ea_batch_stride;
  v.e_lane_stride = p.ea_row_stride;
  v.e_block_stride = p.ea_block_stride;
  return v;
}

OperandView ViewOfB(const Problem& p, int64_t batch) {
  OperandView v;
  v.data = p.b + batch * p.b_batch_stride;
  v.lane_stride = p.transpose_b ? p.k : 1;
  v.k_stride = p.transpose_b ? 1 : p.n;
  v.exponents = p.eb + batch * p.eb_batch_stride;
  v.e_lane_stride = p.eb_col_stride;
  v.e_block_stride = p.eb_block_stride;
  return v;
}

void PackA(void* arg, int64_t begin, int64_t end) {
  Plan& plan = *static_cast<Plan*>(arg);
  const Problem& p = *plan.p;
  int64_t invalid = 0;
  for (int64_t u = begin; u < end; ++u) {
    const int64_t batch = u / plan.a_panels, panel = u % plan.a_panels;
    const int64_t row0 = panel * kMr;
    invalid += PackPanel<kMr>(ViewOfA(p, batch), plan.layout, row0, Min64(kMr, p.m - row0),
                              plan.packed_a + u * plan.a_panel_words,
                              plan.a_pmax + u * plan.layout.total_pairs,
                              plan.a_nonfinite + batch * p.m + row0);
  }
  AtomicAdd(&plan.stats->invalid_inputs, invalid);
}

void PackB(void* arg, int64_t begin, int64_t end) {
  Plan& plan = *static_cast<Plan*>(arg);
  const Problem& p = *plan.p;
  int64_t invalid = 0;
  for (int64_t u = begin; u < end; ++u) {
    const int64_t batch = u / plan.b_panels, panel = u % plan.b_panels;
    const int64_t col0 = panel * kNr;
    invalid += PackPanel<kNr>(ViewOfB(p, batch), plan.layout, col0, Min64(kNr, p.n - col0),
                              plan.packed_b + u * plan.b_panel_words,
                              plan.b_pmax + u * plan.layout.total_pairs,
                              plan.b_nonfinite + batch * p.n + col0);
  }
  AtomicAdd(&plan.stats->invalid_inputs, invalid);
}

// One work item: rows [i0, i0 + mc) x columns [j0, j0 + nc) of one batch.
void ComputeItem(const Plan& plan, int64_t item, float* tiles, double* scale_a,
                 double* scale_b, Stats* stats) {
  const Problem& p = *plan.p;
  const int64_t per_batch = plan.row_items * plan.col_items;
  const int64_t batch = item / per_batch;
  const int64_t ri = (item % per_batch) / plan.col_items, ci = item % plan.col_items;
  const int64_t i0 = ri * plan.mc, i1 = Min64(p.m, i0 + plan.mc);
  const int64_t j0 = ci * plan.nc, j1 = Min64(p.n, j0 + plan.nc);
  const int64_t ab = plan.a_batches == 1 ? 0 : batch, bb = plan.b_batches == 1 ? 0 : batch;
  const int64_t ip0 = i0 / kMr, ip1 = CeilDiv(i1, kMr);
  const int64_t jp0 = j0 / kNr, jp1 = CeilDiv(j1, kNr);
  const int64_t njp = jp1 - jp0;
  const int32_t* ea = p.ea + ab * p.ea_batch_stride;
  const int32_t* eb = p.eb + bb * p.eb_batch_stride;
  float* out = p.out + batch * p.m * p.n;
  for (int64_t blk = 0; blk < plan.layout.blocks; ++blk) {
    const int64_t pair0 = plan.layout.PairOffset(blk), pairs = plan.layout.Pairs(blk);
    for (int64_t q = 0; q < pairs; q += plan.kc_pairs) {
      const int64_t np = Min64(plan.kc_pairs, pairs - q);
      for (int64_t jp = jp0; jp < jp1; ++jp) {
        const int32_t* bpanel =
            plan.packed_b + (bb * plan.b_panels + jp) * plan.b_panel_words + (pair0 + q) * kNr;
        for (int64_t ip = ip0; ip < ip1; ++ip) {
          const int32_t* apanel =
              plan.packed_a + (ab * plan.a_panels + ip) * plan.a_panel_words + (pair0 + q) * kMr;
          float* tile = tiles + ((ip - ip0) * njp + (jp - jp0)) * (kMr * kNr);
          const int64_t pair = pair0 + q;
          MicroKernel(apanel, bpanel, plan.a_pmax + (ab * plan.a_panels + ip) * plan.layout.total_pairs + pair,
                      plan.b_pmax + (bb * plan.b_panels + jp) * plan.layout.total_pairs + pair,
                      np, plan.chunk_pairs, tile, q == 0, stats);
        }
      }
    }
    // End of the exponent block: out (+)= float(acc_b * 2^Ea * 2^Eb).
    for (int64_t i = i0; i < i1; ++i) {
      scale_a[i - i0] = DoublePow2(ea[i * p.ea_row_stride + blk * p.ea_block_stride]);
    }
    for (int64_t j = j0; j < j1; ++j) {
      scale_b[j - j0] = DoublePow2(eb[blk * p.eb_block_stride + j * p.eb_col_stride]);
    }
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t ip = i / kMr, r = i % kMr;
      const double sa = scale_a[i - i0];
      float* o = out + i * p.n;
      for (int64_t jp = jp0; jp < jp1; ++jp) {
        const float* t = tiles + ((ip - ip0) * njp + (jp - jp0)) * (kMr * kNr) + r * kNr;
        const int64_t ja = jp * kNr, jb = Min64(j1, ja + kNr);
        const double* sb = scale_b + (ja - j0);
        float* oo = o + ja;
        if (blk == 0) {
          for (int64_t c = 0; c < jb - ja; ++c) {
            oo[c] = static_cast<float>((static_cast<double>(t[c]) * sa) * sb[c]);
          }
        } else {
          for (int64_t c = 0; c < jb - ja; ++c) {
            oo[c] = oo[c] + static_cast<float>((static_cast<double>(t[c]) * sa) * sb[c]);
          }
        }
      }
    }
  }
  if (plan.layout.blocks == 0) {  // k == 0: an empty sum
    for (int64_t i = i0; i < i1; ++i) {
      for (int64_t j = j0; j < j1; ++j) out[i * p.n + j] = 0.0f;
    }
  }
}

void ComputeItems(void* arg, int64_t begin, int64_t end) {
  const Plan& plan = *static_cast<Plan*>(arg);
  const int64_t tile_floats = (kMc / kMr + 1) * (kNc / kNr + 1) * kMr * kNr;
  float* tiles = static_cast<float*>(std::aligned_alloc(64, sizeof(float) * tile_floats));
  double* scale_a = static_cast<double*>(std::malloc(sizeof(double) * (kMc + kNc)));
  double* scale_b = scale_a + kMc;
  Stats stats;
  for (int64_t u = begin; u < end; ++u) ComputeItem(plan, u, tiles, scale_a, scale_b, &stats);
  std::free(scale_a);
  std::free(tiles);
  AtomicAdd(&plan.stats->overflowed_chunks, stats.overflowed_chunks);
  AtomicAdd(&plan.stats->recomputed_tiles, stats.recomputed_tiles);
}

void Gemm(const Problem& p, const ParallelFor& parallel, Stats* stats) {
  *stats = Stats();
  if (p.batch == 0 || p.m == 0 || p.n == 0) return;
  Plan plan;
  plan.p = &p;
  plan.stats = stats;
  plan.layout = MakeLayout(p.k, p.block_size);
  plan.chunk_pairs = Max64(1, p.chunk_size / 2);
  plan.kc_pairs = plan.chunk_pairs * Max64(1, kKcPairs / plan.chunk_pairs);
  plan.a_batches = p.a_batch_stride == 0 ? 1 : p.batch;
  plan.b_batches = p.b_batch_stride == 0 ? 1 : p.batch;
  plan.a_panels = CeilDiv(p.m, kMr);
  plan.b_panels = CeilDiv(p.n, kNr);
  plan.a_panel_words = plan.layout.total_pairs * kMr;
  plan.b_panel_words = plan.layout.total_pairs * kNr;
  const int64_t a_words = plan.a_batches * plan.a_panels * plan.a_panel_words;
  const int64_t b_words = plan.b_batches * plan.b_panels * plan.b_panel_words;
  auto round64 = [](int64_t bytes) { return Max64(64, (bytes + 63) / 64 * 64); };
  plan.packed_a = static_cast<int32_t*>(std::aligned_alloc(64, round64(4 * a_words)));
  plan.packed_b = static_cast<int32_t*>(std::aligned_alloc(64, round64(4 * b_words)));
  plan.a_pmax = static_cast<int32_t*>(
      std::malloc(sizeof(int32_t) * Max64(1, plan.a_batches * plan.a_panels * plan.layout.total_pairs)));
  plan.b_pmax = static_cast<int32_t*>(
      std::malloc(sizeof(int32_t) * Max64(1, plan.b_batches * plan.b_panels * plan.layout.total_pairs)));
  plan.a_nonfinite = static_cast<uint8_t*>(std::calloc(plan.a_batches * p.m, 1));
  plan.b_nonfinite = static_cast<uint8_t*>(std::calloc(plan.b_batches * p.n, 1));
  // Work items: at most kMc x kNc, made smaller until there are enough of
  // them to keep every thread of the pool busy, halving the longer side
  // (square-ish items re-read the least of the packed operands).
  constexpr int64_t kMinItems = 6;
  plan.mc = kMc;
  plan.nc = kNc;
  while (p.batch * CeilDiv(p.m, plan.mc) * CeilDiv(p.n, plan.nc) < kMinItems) {
    const bool can_m = plan.mc >= 4 * kMr && plan.mc < 2 * p.m;
    const bool can_n = plan.nc >= 2 * kNr && plan.nc < 2 * p.n;
    if (can_n && (plan.nc > 2 * plan.mc || !can_m)) {
      plan.nc = CeilDiv(plan.nc / 2, kNr) * kNr;
    } else if (can_m) {
      plan.mc = CeilDiv(plan.mc / 2, kMr) * kMr;
    } else {
      break;
    }
  }
  plan.row_items = CeilDiv(p.m, plan.mc);
  plan.col_items = CeilDiv(p.n, plan.nc);
  plan.mc = CeilDiv(CeilDiv(p.m, plan.row_items), kMr) * kMr;  // balanced
  plan.nc = CeilDiv(CeilDiv(p.n, plan.col_items), kNr) * kNr;
  plan.row_items = CeilDiv(p.m, plan.mc);
  plan.col_items = CeilDiv(p.n, plan.nc);

  const int64_t k = Max64(p.k, 1);
  parallel.run(parallel.context, plan.a_batches * plan.a_panels, 8 * kMr * k, PackA, &plan);
  parallel.run(parallel.context, plan.b_batches * plan.b_panels, 8 * kNr * k, PackB, &plan);
  parallel.run(parallel.context, p.batch * plan.row_items * plan.col_items,
               plan.mc * plan.nc * k / 16 + plan.mc * plan.nc, ComputeItems, &plan);

  // Rows of a / columns of b with NaN or Inf: their outputs are NaN.
  const float nan = __builtin_nanf("");
  for (int64_t batch = 0; batch < p.batch; ++batch) {
    float* out = p.out + batch * p.m * p.n;
    const uint8_t* rows = plan.a_nonfinite + (plan.a_batches == 1 ? 0 : batch) * p.m;
    const uint8_t* cols = plan.b_nonfinite + (plan.b_batches == 1 ? 0 : batch) * p.n;
    for (int64_t i = 0; i < p.m; ++i) {
      if (rows[i]) {
        for (int64_t j = 0; j < p.n; ++j) out[i * p.n + j] = nan;
      }
    }
    for (int64_t j = 0; j < p.n; ++j) {
      if (cols[j]) {
        for (int64_t i = 0; i < p.m; ++i) out[i * p.n + j] = nan;
      }
    }
  }
  std::free(plan.packed_a);
  std::free(plan.packed_b);
  std::free(plan.a_pmax);
  std::free(plan.b_pmax);
  std::free(plan.a_nonfinite);
  std::free(plan.b_nonfinite);
}

}  // namespace

extern const Kernels kKernels;
const Kernels kKernels = {TF_LOWPREC_DFP_ISA_NAME, &Gemm};

}  // namespace TF_LOWPREC_DFP_ISA
}  // namespace dfp_gemm
}  // namespace tf_lowprec
