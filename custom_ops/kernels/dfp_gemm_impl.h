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
//      y comes from quantize_dfp; or rounded to nearest even here, for the
//      fused path, Problem::round_inputs) and laid out as K-pairs, the
//      operand format of vpdpwssd: a in panels of kMr rows, b in panels of
//      16 * kNv columns, each panel [pairs][lanes] of int32 words (low half:
//      even k, high: odd k).  Every exponent block is padded to an even
//      length with zeros.  Each panel also gets its segment norms (below).
//   2. compute: work items of up to kMc rows x kNcPanels B panels run the
//      micro-kernel over K pieces of KcPairs(kNv) pairs; the micro-kernel
//      keeps kMr x 16 kNv INT32 accumulators in registers, runs one INT32
//      chain per chunk and adds the chunk sums to an FP32 tile (acc_b in
//      dfp_gemm.h).  At the end of an exponent block the tile is scaled by
//      2^(Ea+Eb) and added to out.
//   3. NaN: rows of a / columns of b that held NaN or Inf make their outputs NaN.
//
// Overflow (the VNNI path): the chain of a chunk uses the saturating form
// vpdpwssds.  Each step adds a pair sum to the exact running sum, so until
// the first saturation the register holds the exact prefix sum, and the first
// saturation leaves exactly INT32_MAX or INT32_MIN.  Most chunks are proved
// overflow-free from the operands' segment norms (Cauchy-Schwarz, with a
// max-|S| checkpoint every kSegPairs steps; see ChainCertified); the rest of
// a chunk whose proof fails runs with running max/min registers after every
// step, and a chunk where a lane reached either limit is recomputed exactly
// in INT64 (the portable code), so the chunk sum is exact in every case.
// The portable path computes every chunk in INT64 directly.  Both count the
// (element, chunk) pairs whose INT32 chain would have overflowed, with the
// same definition.
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
// Micro-tiles have 16 * kNv columns, kNv = 2, 3 or 4 (chosen from n).
constexpr int64_t kMc = 96;     // rows of a work item (multiple of kMr)
constexpr int64_t kNcPanels = 10;  // B panels (of 16 * kNv columns) per work item
// K pairs per micro-kernel call (before rounding to chunks): the B
// micro-panel (kKcPairs * 64 * kNv bytes, 24 KB) stays in L1.
constexpr int64_t KcPairs(int nv) { return 384 / nv; }
constexpr int64_t kSegPairs = 8;   // K pairs per overflow-certification segment
constexpr int64_t kMaxSegments = 64;  // proved per chunk (a multiple of 8); the rest is tracked

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

// Overflow-certification segments: every chunk is cut into segments of
// kSegPairs pairs (the last may be shorter), numbered per panel block by
// block, chunk by chunk.  A chunk never spans blocks, so a chunk holds at
// most CeilDiv(min(chunk_pairs, pairs of a full block), kSegPairs) segments.
struct SegmentLayout {
  int64_t chunk_pairs = 1, per_chunk = 1, per_block = 0, per_panel = 1;
  // Segment of the block-relative pair q (a segment start) of block blk.
  int64_t Index(int64_t blk, int64_t q) const {
    return blk * per_block + (q / chunk_pairs) * per_chunk + (q % chunk_pairs) / kSegPairs;
  }
};

SegmentLayout MakeSegments(const BlockLayout& layout, int64_t chunk_pairs) {
  SegmentLayout segs;
  segs.chunk_pairs = chunk_pairs;
  if (layout.blocks == 0) return segs;
  const int64_t block_pairs = layout.Pairs(0);  // blocks before the last are full
  segs.per_chunk = CeilDiv(Min64(chunk_pairs, block_pairs), kSegPairs);
  segs.per_block = CeilDiv(block_pairs, chunk_pairs) * segs.per_chunk;
  segs.per_panel = Max64(1, layout.blocks * segs.per_block);
  return segs;
}

// Per-segment data of one panel, from the segment of a chunk on: norm[c *
// per_chunk + j] bounds from above the Euclidean norm of every lane's
// mantissas over segment j of chunk c.
struct SegmentData {
  const double* norm;
  int64_t per_chunk;
};

// ---------------------------------------------------------------- packing

// Source of one operand seen as lanes (rows of a, columns of b) x K.
struct OperandView {
  const float* data;
  int64_t lane_stride, k_stride;
  const int32_t* exponents;
  int64_t e_lane_stride, e_block_stride;
  bool round;  // round to nearest even (Problem::round_inputs) instead of checking
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
                          const float* s2, int64_t sstride, bool round, int16_t* out,
                          int32_t* nonfinite) {
  int32_t invalid = 0, nf = 0;
  for (int64_t i = 0; i < n; ++i) {
    const float y = x[i * stride];
    uint32_t bits;
    std::memcpy(&bits, &y, sizeof bits);
    const int32_t finite = (bits & 0x7F800000u) != 0x7F800000u;
    const float v = finite ? (y * s1[i * sstride]) * s2[i * sstride] : 0.0f;
    const float clamped = v < -40000.0f ? -40000.0f : (v > 40000.0f ? 40000.0f : v);
    const int32_t m = static_cast<int32_t>(round ? __builtin_roundevenf(clamped) : clamped);
    invalid += (!round & (static_cast<float>(m) != v)) | (m > kMaxMantissa) | (m < -kMaxMantissa);
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
                                 int64_t sstride, bool round, int16_t* out, int32_t* nonfinite) {
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
    const __m512 clamped = _mm512_min_ps(_mm512_max_ps(v, lo_clamp), hi_clamp);
    const __m512i m =
        round ? _mm512_cvt_roundps_epi32(clamped, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)
              : _mm512_cvttps_epi32(clamped);
    const __mmask16 inexact =
        round ? 0 : _mm512_cmp_ps_mask(_mm512_cvtepi32_ps(m), v, _CMP_NEQ_UQ);
    const __mmask16 wrong = inexact | _mm512_cmpgt_epi32_mask(_mm512_abs_epi32(m), max_m);
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
                  int64_t lanes, int32_t* panel, uint8_t* nonfinite) {
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
          invalid += ConvertContiguous(x + r0, n, &s1[l], &s2[l], 0, src.round, run, &lane_nonfinite[l]);
#else
          invalid += ConvertRun(x + r0, 1, n, &s1[l], &s2[l], 0, src.round, run, &lane_nonfinite[l]);
#endif
          run[n] = 0;  // odd tail: the pair's high half is zero padding
          int32_t* o = out + (r0 / 2) * kWidth + l;
          for (int64_t q = 0; q < (n + 1) / 2; ++q) {
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
            std::memcpy(o + q * kWidth, run + 2 * q, 4);  // two int16 = the pair word
#else
            o[q * kWidth] = PairWord(run[2 * q], run[2 * q + 1]);
#endif
          }
        }
      }
    } else {
      // Lanes contiguous for each k: convert two rows, interleave them.
      int32_t nf = 0;
      for (int64_t kk = 0; kk < len; kk += 2) {
        const float* x0 = src.data + (k0 + kk) * src.k_stride + lane0 * src.lane_stride;
#if TF_LOWPREC_DFP_VNNI
        if (src.lane_stride == 1) {
          invalid += ConvertContiguous(x0, lanes, s1, s2, 1, src.round, lo, &nf);
        } else {
          invalid += ConvertRun(x0, src.lane_stride, lanes, s1, s2, 1, src.round, lo, &nf);
        }
        if (kk + 1 < len && src.lane_stride == 1) {
          invalid += ConvertContiguous(x0 + src.k_stride, lanes, s1, s2, 1, src.round, hi, &nf);
        } else if (kk + 1 < len) {
#else
        invalid += ConvertRun(x0, src.lane_stride, lanes, s1, s2, 1, src.round, lo, &nf);
        if (kk + 1 < len) {
#endif
          invalid += ConvertRun(x0 + src.k_stride, src.lane_stride, lanes, s1, s2, 1, src.round, hi, &nf);
        } else {
          for (int64_t l = 0; l < lanes; ++l) hi[l] = 0;
        }
        int32_t* o = out + (kk / 2) * kWidth;
#if TF_LOWPREC_DFP_VNNI
        for (int64_t l = 0; l < lanes; l += 16) {  // pair words: lo | hi << 16
          const __mmask16 live =
              lanes - l >= 16 ? 0xFFFF : static_cast<__mmask16>((1u << (lanes - l)) - 1);
          const __m512i wlo = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(live, lo + l));
          const __m512i whi = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(live, hi + l));
          _mm512_mask_storeu_epi32(o + l, live, _mm512_or_si512(wlo, _mm512_slli_epi32(whi, 16)));
        }
#else
        for (int64_t l = 0; l < lanes; ++l) o[l] = PairWord(lo[l], hi[l]);
#endif
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
  return invalid;
}

// Sum over the pairs [q0, q0 + count) of a packed panel of each lane's
// squared mantissas, lo^2 + hi^2 (exact: at most 2^31 per pair).
template <int kWidth>
inline void LaneSquares(const int32_t* words, int64_t q0, int64_t count, uint64_t* squares) {
  for (int l = 0; l < kWidth; ++l) squares[l] = 0;
#if TF_LOWPREC_DFP_VNNI
  if (kWidth == kMr && count == kSegPairs) {
    // 8 pairs of 6 lanes = 48 consecutive words = 3 vectors; vpmaddwd gives
    // every word's lo^2 + hi^2, then 6 strided sums.
    static_assert(kSegPairs * kMr == 48, "three vectors per full A segment");
    alignas(64) uint32_t sq[48];
    const int32_t* w = words + q0 * kWidth;
    for (int v = 0; v < 3; ++v) {
      const __m512i x = _mm512_loadu_si512(w + 16 * v);
      _mm512_store_si512(sq + 16 * v, _mm512_madd_epi16(x, x));
    }
    for (int q = 0; q < kSegPairs; ++q) {
      for (int l = 0; l < kWidth; ++l) squares[l] += sq[q * kWidth + l];
    }
    return;
  }
#endif
  for (int64_t q = q0; q < q0 + count; ++q) {
    for (int l = 0; l < kWidth; ++l) {
      const int32_t w = words[q * kWidth + l];
      const int32_t lo = static_cast<int16_t>(static_cast<uint32_t>(w) & 0xFFFFu);
      const int32_t hi = w >> 16;
      squares[l] += static_cast<uint32_t>(lo * lo) + static_cast<uint32_t>(hi * hi);
    }
  }
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
        uint64_t squares[kWidth];
        LaneSquares<kWidth>(words, s0, Min64(c1, s0 + kSegPairs) - s0, squares);
        uint64_t best = 0;
        for (int l = 0; l < kWidth; ++l) best = squares[l] > best ? squares[l] : best;
        norm[segs.Index(blk, s0)] = static_cast<double>(best);  // exact (< 2^53)
      }
    }
  }
  // Square roots, rounded up (slots of segments that do not exist hold 0).
  int64_t e = 0;
#if TF_LOWPREC_DFP_VNNI
  for (; e + 8 <= segs.per_panel; e += 8) {
    _mm512_storeu_pd(norm + e, _mm512_mul_pd(_mm512_sqrt_pd(_mm512_loadu_pd(norm + e)),
                                             _mm512_set1_pd(kSqrtUp)));
  }
#endif
  for (; e < segs.per_panel; ++e) norm[e] = __builtin_sqrt(norm[e]) * kSqrtUp;
}

// ------------------------------------------------------------ micro-kernels

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

// kMr x (16 * kNv) micro-kernels: INT32 chains with vpdpwssds.
static_assert(kMr == 6, "the VNNI micro-kernels are written for tiles of 6 rows");

// Assembly pieces of the micro-kernels, for tiles of 6 rows x 16 * NV
// columns (suffix _NV): accumulator of row r, vector v in zmm(NV * r + v);
// B rows loaded into the DFP_B_NV registers; the others are scratch.

// One accumulator's piece of the tile macros below: accumulator r (zmm r)
// belongs at byte offset 64 * r of the tile, which is row-major with the
// tile's 16 * NV columns.  The macros for NV = 3 and 4 extend those for 2 and
// 3: the accumulators are numbered the same way.
#define DFP_ZERO_ONE(r) "vmovdqa64 %%zmm0, %%zmm" #r "\n\t"
#define DFP_ADD_ONE(r, offset) \
  "vcvtdq2ps %%zmm" #r ", %%zmm" #r "\n\t" \
  "vaddps " #offset "(%[tile]), %%zmm" #r ", %%zmm" #r "\n\t" \
  "vmovups %%zmm" #r ", " #offset "(%[tile])\n\t"
#define DFP_STORE_ONE(r, offset) \
  "vcvtdq2ps %%zmm" #r ", %%zmm" #r "\n\t" \
  "vmovups %%zmm" #r ", " #offset "(%[tile])\n\t"

#define DFP_ZERO_ACCUMULATORS_2 \
  "vpxord %%zmm0, %%zmm0, %%zmm0\n\t" \
  DFP_ZERO_ONE(1) \
  DFP_ZERO_ONE(2) \
  DFP_ZERO_ONE(3) \
  DFP_ZERO_ONE(4) \
  DFP_ZERO_ONE(5) \
  DFP_ZERO_ONE(6) \
  DFP_ZERO_ONE(7) \
  DFP_ZERO_ONE(8) \
  DFP_ZERO_ONE(9) \
  DFP_ZERO_ONE(10) \
  DFP_ZERO_ONE(11)

// One K pair: 6 * NV vpdpwssds, A broadcast from memory.
#define DFP_VNNI_STEP_2 \
  "vmovdqu64 0(%[b]), %%zmm26\n\t" \
  "vmovdqu64 64(%[b]), %%zmm27\n\t" \
  "vpdpwssds 0(%[a])%{1to16%}, %%zmm26, %%zmm0\n\t" \
  "vpdpwssds 0(%[a])%{1to16%}, %%zmm27, %%zmm1\n\t" \
  "vpdpwssds 4(%[a])%{1to16%}, %%zmm26, %%zmm2\n\t" \
  "vpdpwssds 4(%[a])%{1to16%}, %%zmm27, %%zmm3\n\t" \
  "vpdpwssds 8(%[a])%{1to16%}, %%zmm26, %%zmm4\n\t" \
  "vpdpwssds 8(%[a])%{1to16%}, %%zmm27, %%zmm5\n\t" \
  "vpdpwssds 12(%[a])%{1to16%}, %%zmm26, %%zmm6\n\t" \
  "vpdpwssds 12(%[a])%{1to16%}, %%zmm27, %%zmm7\n\t" \
  "vpdpwssds 16(%[a])%{1to16%}, %%zmm26, %%zmm8\n\t" \
  "vpdpwssds 16(%[a])%{1to16%}, %%zmm27, %%zmm9\n\t" \
  "vpdpwssds 20(%[a])%{1to16%}, %%zmm26, %%zmm10\n\t" \
  "vpdpwssds 20(%[a])%{1to16%}, %%zmm27, %%zmm11\n\t" \
  "addq $24, %[a]\n\t" \
  "addq $128, %[b]\n\t"

// The accumulators zmm0..zmm11 as |S| folded lane-wise into zmm20, zmm21
// and zmm22: the common start of DFP_ABS_MAX_2 and DFP_ABS_MAX_3.
#define DFP_ABS_MAX_FOLD_0_11 \
  "vpabsd %%zmm0, %%zmm20\n\t" \
  "vpabsd %%zmm1, %%zmm21\n\t" \
  "vpabsd %%zmm2, %%zmm22\n\t" \
  "vpabsd %%zmm3, %%zmm23\n\t" \
  "vpmaxud %%zmm23, %%zmm20, %%zmm20\n\t" \
  "vpabsd %%zmm4, %%zmm24\n\t" \
  "vpmaxud %%zmm24, %%zmm21, %%zmm21\n\t" \
  "vpabsd %%zmm5, %%zmm25\n\t" \
  "vpmaxud %%zmm25, %%zmm22, %%zmm22\n\t" \
  "vpabsd %%zmm6, %%zmm23\n\t" \
  "vpmaxud %%zmm23, %%zmm20, %%zmm20\n\t" \
  "vpabsd %%zmm7, %%zmm24\n\t" \
  "vpmaxud %%zmm24, %%zmm21, %%zmm21\n\t" \
  "vpabsd %%zmm8, %%zmm25\n\t" \
  "vpmaxud %%zmm25, %%zmm22, %%zmm22\n\t" \
  "vpabsd %%zmm9, %%zmm23\n\t" \
  "vpmaxud %%zmm23, %%zmm20, %%zmm20\n\t" \
  "vpabsd %%zmm10, %%zmm24\n\t" \
  "vpmaxud %%zmm24, %%zmm21, %%zmm21\n\t" \
  "vpabsd %%zmm11, %%zmm25\n\t" \
  "vpmaxud %%zmm25, %%zmm22, %%zmm22\n\t"

// zmm20 = lane-wise max over the accumulators of |S| (unsigned: |INT32_MIN|
// reads as 2^31, above every threshold).
#define DFP_ABS_MAX_2 \
  DFP_ABS_MAX_FOLD_0_11 \
  "vpmaxud %%zmm21, %%zmm20, %%zmm20\n\t" \
  "vpmaxud %%zmm22, %%zmm20, %%zmm20\n\t"

// zmm18 = max(itself, every accumulator), zmm19 = min(itself, every accumulator).
#define DFP_TRACK_MAX_MIN_2 \
  "vpmaxsd %%zmm0, %%zmm1, %%zmm20\n\t" \
  "vpmaxsd %%zmm20, %%zmm18, %%zmm18\n\t" \
  "vpmaxsd %%zmm2, %%zmm3, %%zmm21\n\t" \
  "vpmaxsd %%zmm21, %%zmm18, %%zmm18\n\t" \
  "vpmaxsd %%zmm4, %%zmm5, %%zmm22\n\t" \
  "vpmaxsd %%zmm22, %%zmm18, %%zmm18\n\t" \
  "vpmaxsd %%zmm6, %%zmm7, %%zmm20\n\t" \
  "vpmaxsd %%zmm20, %%zmm18, %%zmm18\n\t" \
  "vpmaxsd %%zmm8, %%zmm9, %%zmm21\n\t" \
  "vpmaxsd %%zmm21, %%zmm18, %%zmm18\n\t" \
  "vpmaxsd %%zmm10, %%zmm11, %%zmm22\n\t" \
  "vpmaxsd %%zmm22, %%zmm18, %%zmm18\n\t" \
  "vpminsd %%zmm0, %%zmm1, %%zmm20\n\t" \
  "vpminsd %%zmm20, %%zmm19, %%zmm19\n\t" \
  "vpminsd %%zmm2, %%zmm3, %%zmm21\n\t" \
  "vpminsd %%zmm21, %%zmm19, %%zmm19\n\t" \
  "vpminsd %%zmm4, %%zmm5, %%zmm22\n\t" \
  "vpminsd %%zmm22, %%zmm19, %%zmm19\n\t" \
  "vpminsd %%zmm6, %%zmm7, %%zmm20\n\t" \
  "vpminsd %%zmm20, %%zmm19, %%zmm19\n\t" \
  "vpminsd %%zmm8, %%zmm9, %%zmm21\n\t" \
  "vpminsd %%zmm21, %%zmm19, %%zmm19\n\t" \
  "vpminsd %%zmm10, %%zmm11, %%zmm22\n\t" \
  "vpminsd %%zmm22, %%zmm19, %%zmm19\n\t"

// tile += float(accumulators) (float() rounds to nearest even).
#define DFP_ADD_TO_TILE_2 \
  DFP_ADD_ONE(0, 0) \
  DFP_ADD_ONE(1, 64) \
  DFP_ADD_ONE(2, 128) \
  DFP_ADD_ONE(3, 192) \
  DFP_ADD_ONE(4, 256) \
  DFP_ADD_ONE(5, 320) \
  DFP_ADD_ONE(6, 384) \
  DFP_ADD_ONE(7, 448) \
  DFP_ADD_ONE(8, 512) \
  DFP_ADD_ONE(9, 576) \
  DFP_ADD_ONE(10, 640) \
  DFP_ADD_ONE(11, 704)

// tile = float(accumulators).
#define DFP_STORE_TO_TILE_2 \
  DFP_STORE_ONE(0, 0) \
  DFP_STORE_ONE(1, 64) \
  DFP_STORE_ONE(2, 128) \
  DFP_STORE_ONE(3, 192) \
  DFP_STORE_ONE(4, 256) \
  DFP_STORE_ONE(5, 320) \
  DFP_STORE_ONE(6, 384) \
  DFP_STORE_ONE(7, 448) \
  DFP_STORE_ONE(8, 512) \
  DFP_STORE_ONE(9, 576) \
  DFP_STORE_ONE(10, 640) \
  DFP_STORE_ONE(11, 704)

#define DFP_ABS_REG_2 "20"
#define DFP_MAX_REG_2 "18"
#define DFP_MIN_REG_2 "19"

#define DFP_ZERO_ACCUMULATORS_3 \
  DFP_ZERO_ACCUMULATORS_2 \
  DFP_ZERO_ONE(12) \
  DFP_ZERO_ONE(13) \
  DFP_ZERO_ONE(14) \
  DFP_ZERO_ONE(15) \
  DFP_ZERO_ONE(16) \
  DFP_ZERO_ONE(17)

// One K pair: 6 * NV vpdpwssds, A broadcast from memory.
#define DFP_VNNI_STEP_3 \
  "vmovdqu64 0(%[b]), %%zmm26\n\t" \
  "vmovdqu64 64(%[b]), %%zmm27\n\t" \
  "vmovdqu64 128(%[b]), %%zmm28\n\t" \
  "vpdpwssds 0(%[a])%{1to16%}, %%zmm26, %%zmm0\n\t" \
  "vpdpwssds 0(%[a])%{1to16%}, %%zmm27, %%zmm1\n\t" \
  "vpdpwssds 0(%[a])%{1to16%}, %%zmm28, %%zmm2\n\t" \
  "vpdpwssds 4(%[a])%{1to16%}, %%zmm26, %%zmm3\n\t" \
  "vpdpwssds 4(%[a])%{1to16%}, %%zmm27, %%zmm4\n\t" \
  "vpdpwssds 4(%[a])%{1to16%}, %%zmm28, %%zmm5\n\t" \
  "vpdpwssds 8(%[a])%{1to16%}, %%zmm26, %%zmm6\n\t" \
  "vpdpwssds 8(%[a])%{1to16%}, %%zmm27, %%zmm7\n\t" \
  "vpdpwssds 8(%[a])%{1to16%}, %%zmm28, %%zmm8\n\t" \
  "vpdpwssds 12(%[a])%{1to16%}, %%zmm26, %%zmm9\n\t" \
  "vpdpwssds 12(%[a])%{1to16%}, %%zmm27, %%zmm10\n\t" \
  "vpdpwssds 12(%[a])%{1to16%}, %%zmm28, %%zmm11\n\t" \
  "vpdpwssds 16(%[a])%{1to16%}, %%zmm26, %%zmm12\n\t" \
  "vpdpwssds 16(%[a])%{1to16%}, %%zmm27, %%zmm13\n\t" \
  "vpdpwssds 16(%[a])%{1to16%}, %%zmm28, %%zmm14\n\t" \
  "vpdpwssds 20(%[a])%{1to16%}, %%zmm26, %%zmm15\n\t" \
  "vpdpwssds 20(%[a])%{1to16%}, %%zmm27, %%zmm16\n\t" \
  "vpdpwssds 20(%[a])%{1to16%}, %%zmm28, %%zmm17\n\t" \
  "addq $24, %[a]\n\t" \
  "addq $192, %[b]\n\t"

// zmm20 = lane-wise max over the accumulators of |S| (unsigned: |INT32_MIN|
// reads as 2^31, above every threshold).
#define DFP_ABS_MAX_3 \
  DFP_ABS_MAX_FOLD_0_11 \
  "vpabsd %%zmm12, %%zmm23\n\t" \
  "vpmaxud %%zmm23, %%zmm20, %%zmm20\n\t" \
  "vpabsd %%zmm13, %%zmm24\n\t" \
  "vpmaxud %%zmm24, %%zmm21, %%zmm21\n\t" \
  "vpabsd %%zmm14, %%zmm25\n\t" \
  "vpmaxud %%zmm25, %%zmm22, %%zmm22\n\t" \
  "vpabsd %%zmm15, %%zmm23\n\t" \
  "vpmaxud %%zmm23, %%zmm20, %%zmm20\n\t" \
  "vpabsd %%zmm16, %%zmm24\n\t" \
  "vpmaxud %%zmm24, %%zmm21, %%zmm21\n\t" \
  "vpabsd %%zmm17, %%zmm25\n\t" \
  "vpmaxud %%zmm25, %%zmm22, %%zmm22\n\t" \
  "vpmaxud %%zmm21, %%zmm20, %%zmm20\n\t" \
  "vpmaxud %%zmm22, %%zmm20, %%zmm20\n\t"

// zmm18 = max(itself, every accumulator), zmm19 = min(itself, every accumulator).
#define DFP_TRACK_MAX_MIN_3 \
  "vpmaxsd %%zmm0, %%zmm1, %%zmm20\n\t" \
  "vpmaxsd %%zmm2, %%zmm20, %%zmm20\n\t" \
  "vpmaxsd %%zmm20, %%zmm18, %%zmm18\n\t" \
  "vpmaxsd %%zmm3, %%zmm4, %%zmm21\n\t" \
  "vpmaxsd %%zmm5, %%zmm21, %%zmm21\n\t" \
  "vpmaxsd %%zmm21, %%zmm18, %%zmm18\n\t" \
  "vpmaxsd %%zmm6, %%zmm7, %%zmm22\n\t" \
  "vpmaxsd %%zmm8, %%zmm22, %%zmm22\n\t" \
  "vpmaxsd %%zmm22, %%zmm18, %%zmm18\n\t" \
  "vpmaxsd %%zmm9, %%zmm10, %%zmm20\n\t" \
  "vpmaxsd %%zmm11, %%zmm20, %%zmm20\n\t" \
  "vpmaxsd %%zmm20, %%zmm18, %%zmm18\n\t" \
  "vpmaxsd %%zmm12, %%zmm13, %%zmm21\n\t" \
  "vpmaxsd %%zmm14, %%zmm21, %%zmm21\n\t" \
  "vpmaxsd %%zmm21, %%zmm18, %%zmm18\n\t" \
  "vpmaxsd %%zmm15, %%zmm16, %%zmm22\n\t" \
  "vpmaxsd %%zmm17, %%zmm22, %%zmm22\n\t" \
  "vpmaxsd %%zmm22, %%zmm18, %%zmm18\n\t" \
  "vpminsd %%zmm0, %%zmm1, %%zmm20\n\t" \
  "vpminsd %%zmm2, %%zmm20, %%zmm20\n\t" \
  "vpminsd %%zmm20, %%zmm19, %%zmm19\n\t" \
  "vpminsd %%zmm3, %%zmm4, %%zmm21\n\t" \
  "vpminsd %%zmm5, %%zmm21, %%zmm21\n\t" \
  "vpminsd %%zmm21, %%zmm19, %%zmm19\n\t" \
  "vpminsd %%zmm6, %%zmm7, %%zmm22\n\t" \
  "vpminsd %%zmm8, %%zmm22, %%zmm22\n\t" \
  "vpminsd %%zmm22, %%zmm19, %%zmm19\n\t" \
  "vpminsd %%zmm9, %%zmm10, %%zmm20\n\t" \
  "vpminsd %%zmm11, %%zmm20, %%zmm20\n\t" \
  "vpminsd %%zmm20, %%zmm19, %%zmm19\n\t" \
  "vpminsd %%zmm12, %%zmm13, %%zmm21\n\t" \
  "vpminsd %%zmm14, %%zmm21, %%zmm21\n\t" \
  "vpminsd %%zmm21, %%zmm19, %%zmm19\n\t" \
  "vpminsd %%zmm15, %%zmm16, %%zmm22\n\t" \
  "vpminsd %%zmm17, %%zmm22, %%zmm22\n\t" \
  "vpminsd %%zmm22, %%zmm19, %%zmm19\n\t"

// tile += float(accumulators) (float() rounds to nearest even).
#define DFP_ADD_TO_TILE_3 \
  DFP_ADD_TO_TILE_2 \
  DFP_ADD_ONE(12, 768) \
  DFP_ADD_ONE(13, 832) \
  DFP_ADD_ONE(14, 896) \
  DFP_ADD_ONE(15, 960) \
  DFP_ADD_ONE(16, 1024) \
  DFP_ADD_ONE(17, 1088)

// tile = float(accumulators).
#define DFP_STORE_TO_TILE_3 \
  DFP_STORE_TO_TILE_2 \
  DFP_STORE_ONE(12, 768) \
  DFP_STORE_ONE(13, 832) \
  DFP_STORE_ONE(14, 896) \
  DFP_STORE_ONE(15, 960) \
  DFP_STORE_ONE(16, 1024) \
  DFP_STORE_ONE(17, 1088)

#define DFP_ABS_REG_3 "20"
#define DFP_MAX_REG_3 "18"
#define DFP_MIN_REG_3 "19"

#define DFP_ZERO_ACCUMULATORS_4 \
  DFP_ZERO_ACCUMULATORS_3 \
  DFP_ZERO_ONE(18) \
  DFP_ZERO_ONE(19) \
  DFP_ZERO_ONE(20) \
  DFP_ZERO_ONE(21) \
  DFP_ZERO_ONE(22) \
  DFP_ZERO_ONE(23)

// One K pair: 6 * NV vpdpwssds, A broadcast from memory.
#define DFP_VNNI_STEP_4 \
  "vmovdqu64 0(%[b]), %%zmm24\n\t" \
  "vmovdqu64 64(%[b]), %%zmm25\n\t" \
  "vmovdqu64 128(%[b]), %%zmm26\n\t" \
  "vmovdqu64 192(%[b]), %%zmm27\n\t" \
  "vpdpwssds 0(%[a])%{1to16%}, %%zmm24, %%zmm0\n\t" \
  "vpdpwssds 0(%[a])%{1to16%}, %%zmm25, %%zmm1\n\t" \
  "vpdpwssds 0(%[a])%{1to16%}, %%zmm26, %%zmm2\n\t" \
  "vpdpwssds 0(%[a])%{1to16%}, %%zmm27, %%zmm3\n\t" \
  "vpdpwssds 4(%[a])%{1to16%}, %%zmm24, %%zmm4\n\t" \
  "vpdpwssds 4(%[a])%{1to16%}, %%zmm25, %%zmm5\n\t" \
  "vpdpwssds 4(%[a])%{1to16%}, %%zmm26, %%zmm6\n\t" \
  "vpdpwssds 4(%[a])%{1to16%}, %%zmm27, %%zmm7\n\t" \
  "vpdpwssds 8(%[a])%{1to16%}, %%zmm24, %%zmm8\n\t" \
  "vpdpwssds 8(%[a])%{1to16%}, %%zmm25, %%zmm9\n\t" \
  "vpdpwssds 8(%[a])%{1to16%}, %%zmm26, %%zmm10\n\t" \
  "vpdpwssds 8(%[a])%{1to16%}, %%zmm27, %%zmm11\n\t" \
  "vpdpwssds 12(%[a])%{1to16%}, %%zmm24, %%zmm12\n\t" \
  "vpdpwssds 12(%[a])%{1to16%}, %%zmm25, %%zmm13\n\t" \
  "vpdpwssds 12(%[a])%{1to16%}, %%zmm26, %%zmm14\n\t" \
  "vpdpwssds 12(%[a])%{1to16%}, %%zmm27, %%zmm15\n\t" \
  "vpdpwssds 16(%[a])%{1to16%}, %%zmm24, %%zmm16\n\t" \
  "vpdpwssds 16(%[a])%{1to16%}, %%zmm25, %%zmm17\n\t" \
  "vpdpwssds 16(%[a])%{1to16%}, %%zmm26, %%zmm18\n\t" \
  "vpdpwssds 16(%[a])%{1to16%}, %%zmm27, %%zmm19\n\t" \
  "vpdpwssds 20(%[a])%{1to16%}, %%zmm24, %%zmm20\n\t" \
  "vpdpwssds 20(%[a])%{1to16%}, %%zmm25, %%zmm21\n\t" \
  "vpdpwssds 20(%[a])%{1to16%}, %%zmm26, %%zmm22\n\t" \
  "vpdpwssds 20(%[a])%{1to16%}, %%zmm27, %%zmm23\n\t" \
  "addq $24, %[a]\n\t" \
  "addq $256, %[b]\n\t"

// zmm28 = lane-wise max over the accumulators of |S| (unsigned: |INT32_MIN|
// reads as 2^31, above every threshold).
#define DFP_ABS_MAX_4 \
  "vpabsd %%zmm0, %%zmm28\n\t" \
  "vpabsd %%zmm1, %%zmm29\n\t" \
  "vpabsd %%zmm2, %%zmm30\n\t" \
  "vpmaxud %%zmm30, %%zmm28, %%zmm28\n\t" \
  "vpabsd %%zmm3, %%zmm31\n\t" \
  "vpmaxud %%zmm31, %%zmm29, %%zmm29\n\t" \
  "vpabsd %%zmm4, %%zmm30\n\t" \
  "vpmaxud %%zmm30, %%zmm28, %%zmm28\n\t" \
  "vpabsd %%zmm5, %%zmm31\n\t" \
  "vpmaxud %%zmm31, %%zmm29, %%zmm29\n\t" \
  "vpabsd %%zmm6, %%zmm30\n\t" \
  "vpmaxud %%zmm30, %%zmm28, %%zmm28\n\t" \
  "vpabsd %%zmm7, %%zmm31\n\t" \
  "vpmaxud %%zmm31, %%zmm29, %%zmm29\n\t" \
  "vpabsd %%zmm8, %%zmm30\n\t" \
  "vpmaxud %%zmm30, %%zmm28, %%zmm28\n\t" \
  "vpabsd %%zmm9, %%zmm31\n\t" \
  "vpmaxud %%zmm31, %%zmm29, %%zmm29\n\t" \
  "vpabsd %%zmm10, %%zmm30\n\t" \
  "vpmaxud %%zmm30, %%zmm28, %%zmm28\n\t" \
  "vpabsd %%zmm11, %%zmm31\n\t" \
  "vpmaxud %%zmm31, %%zmm29, %%zmm29\n\t" \
  "vpabsd %%zmm12, %%zmm30\n\t" \
  "vpmaxud %%zmm30, %%zmm28, %%zmm28\n\t" \
  "vpabsd %%zmm13, %%zmm31\n\t" \
  "vpmaxud %%zmm31, %%zmm29, %%zmm29\n\t" \
  "vpabsd %%zmm14, %%zmm30\n\t" \
  "vpmaxud %%zmm30, %%zmm28, %%zmm28\n\t" \
  "vpabsd %%zmm15, %%zmm31\n\t" \
  "vpmaxud %%zmm31, %%zmm29, %%zmm29\n\t" \
  "vpabsd %%zmm16, %%zmm30\n\t" \
  "vpmaxud %%zmm30, %%zmm28, %%zmm28\n\t" \
  "vpabsd %%zmm17, %%zmm31\n\t" \
  "vpmaxud %%zmm31, %%zmm29, %%zmm29\n\t" \
  "vpabsd %%zmm18, %%zmm30\n\t" \
  "vpmaxud %%zmm30, %%zmm28, %%zmm28\n\t" \
  "vpabsd %%zmm19, %%zmm31\n\t" \
  "vpmaxud %%zmm31, %%zmm29, %%zmm29\n\t" \
  "vpabsd %%zmm20, %%zmm30\n\t" \
  "vpmaxud %%zmm30, %%zmm28, %%zmm28\n\t" \
  "vpabsd %%zmm21, %%zmm31\n\t" \
  "vpmaxud %%zmm31, %%zmm29, %%zmm29\n\t" \
  "vpabsd %%zmm22, %%zmm30\n\t" \
  "vpmaxud %%zmm30, %%zmm28, %%zmm28\n\t" \
  "vpabsd %%zmm23, %%zmm31\n\t" \
  "vpmaxud %%zmm31, %%zmm29, %%zmm29\n\t" \
  "vpmaxud %%zmm29, %%zmm28, %%zmm28\n\t"

// zmm28 = max(itself, every accumulator), zmm29 = min(itself, every accumulator).
#define DFP_TRACK_MAX_MIN_4 \
  "vpmaxsd %%zmm0, %%zmm1, %%zmm30\n\t" \
  "vpmaxsd %%zmm2, %%zmm30, %%zmm30\n\t" \
  "vpmaxsd %%zmm3, %%zmm30, %%zmm30\n\t" \
  "vpmaxsd %%zmm30, %%zmm28, %%zmm28\n\t" \
  "vpmaxsd %%zmm4, %%zmm5, %%zmm31\n\t" \
  "vpmaxsd %%zmm6, %%zmm31, %%zmm31\n\t" \
  "vpmaxsd %%zmm7, %%zmm31, %%zmm31\n\t" \
  "vpmaxsd %%zmm31, %%zmm28, %%zmm28\n\t" \
  "vpmaxsd %%zmm8, %%zmm9, %%zmm30\n\t" \
  "vpmaxsd %%zmm10, %%zmm30, %%zmm30\n\t" \
  "vpmaxsd %%zmm11, %%zmm30, %%zmm30\n\t" \
  "vpmaxsd %%zmm30, %%zmm28, %%zmm28\n\t" \
  "vpmaxsd %%zmm12, %%zmm13, %%zmm31\n\t" \
  "vpmaxsd %%zmm14, %%zmm31, %%zmm31\n\t" \
  "vpmaxsd %%zmm15, %%zmm31, %%zmm31\n\t" \
  "vpmaxsd %%zmm31, %%zmm28, %%zmm28\n\t" \
  "vpmaxsd %%zmm16, %%zmm17, %%zmm30\n\t" \
  "vpmaxsd %%zmm18, %%zmm30, %%zmm30\n\t" \
  "vpmaxsd %%zmm19, %%zmm30, %%zmm30\n\t" \
  "vpmaxsd %%zmm30, %%zmm28, %%zmm28\n\t" \
  "vpmaxsd %%zmm20, %%zmm21, %%zmm31\n\t" \
  "vpmaxsd %%zmm22, %%zmm31, %%zmm31\n\t" \
  "vpmaxsd %%zmm23, %%zmm31, %%zmm31\n\t" \
  "vpmaxsd %%zmm31, %%zmm28, %%zmm28\n\t" \
  "vpminsd %%zmm0, %%zmm1, %%zmm30\n\t" \
  "vpminsd %%zmm2, %%zmm30, %%zmm30\n\t" \
  "vpminsd %%zmm3, %%zmm30, %%zmm30\n\t" \
  "vpminsd %%zmm30, %%zmm29, %%zmm29\n\t" \
  "vpminsd %%zmm4, %%zmm5, %%zmm31\n\t" \
  "vpminsd %%zmm6, %%zmm31, %%zmm31\n\t" \
  "vpminsd %%zmm7, %%zmm31, %%zmm31\n\t" \
  "vpminsd %%zmm31, %%zmm29, %%zmm29\n\t" \
  "vpminsd %%zmm8, %%zmm9, %%zmm30\n\t" \
  "vpminsd %%zmm10, %%zmm30, %%zmm30\n\t" \
  "vpminsd %%zmm11, %%zmm30, %%zmm30\n\t" \
  "vpminsd %%zmm30, %%zmm29, %%zmm29\n\t" \
  "vpminsd %%zmm12, %%zmm13, %%zmm31\n\t" \
  "vpminsd %%zmm14, %%zmm31, %%zmm31\n\t" \
  "vpminsd %%zmm15, %%zmm31, %%zmm31\n\t" \
  "vpminsd %%zmm31, %%zmm29, %%zmm29\n\t" \
  "vpminsd %%zmm16, %%zmm17, %%zmm30\n\t" \
  "vpminsd %%zmm18, %%zmm30, %%zmm30\n\t" \
  "vpminsd %%zmm19, %%zmm30, %%zmm30\n\t" \
  "vpminsd %%zmm30, %%zmm29, %%zmm29\n\t" \
  "vpminsd %%zmm20, %%zmm21, %%zmm31\n\t" \
  "vpminsd %%zmm22, %%zmm31, %%zmm31\n\t" \
  "vpminsd %%zmm23, %%zmm31, %%zmm31\n\t" \
  "vpminsd %%zmm31, %%zmm29, %%zmm29\n\t"

// tile += float(accumulators) (float() rounds to nearest even).
#define DFP_ADD_TO_TILE_4 \
  DFP_ADD_TO_TILE_3 \
  DFP_ADD_ONE(18, 1152) \
  DFP_ADD_ONE(19, 1216) \
  DFP_ADD_ONE(20, 1280) \
  DFP_ADD_ONE(21, 1344) \
  DFP_ADD_ONE(22, 1408) \
  DFP_ADD_ONE(23, 1472)

// tile = float(accumulators).
#define DFP_STORE_TO_TILE_4 \
  DFP_STORE_TO_TILE_3 \
  DFP_STORE_ONE(18, 1152) \
  DFP_STORE_ONE(19, 1216) \
  DFP_STORE_ONE(20, 1280) \
  DFP_STORE_ONE(21, 1344) \
  DFP_STORE_ONE(22, 1408) \
  DFP_STORE_ONE(23, 1472)

#define DFP_ABS_REG_4 "28"
#define DFP_MAX_REG_4 "28"
#define DFP_MIN_REG_4 "29"

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
// accumulators are still exact, and the rest of the chunk runs with exact
// saturation tracking after every step.
constexpr double kInt32MaxD = 2147483647.0;
constexpr double kBoundUp = 1.0 + 1.0 / (1ull << 40);  // covers the roundings of the products
constexpr double kMergeLimit = 4.6116860e18;  // < (INT32_MAX - 1)^2
static const int32_t kInt32MaxScalar = 0x7FFFFFFF;
static const int32_t kInt32MinScalar = static_cast<int32_t>(0x80000000u);

// The chains of one chunk of `pairs` >= 1 K pairs of a micro-tile, with
// vpdpwssds.  The first `proved` pairs run as a first piece of `first` >= 1
// pairs (proved without a check) and then segments of `seg` pairs; before
// the i-th of these segments every accumulator must have |S| <= thr[i].  After a failed check, or after `proved` pairs, the
// rest runs with the running max / min of every accumulator after every
// step: vpdpwssds holds the exact running sum until it first leaves INT32,
// and then holds exactly INT32_MAX or INT32_MIN.  Returns 0 when no chain
// can have left INT32: the chunk sums are then converted to FP32 and added
// to tile[0 .. 6 * 16 * kNv) (stored there if init != 0).  Otherwise returns non-zero and leaves tile untouched.
template <int kNv>
int ChainCertified(const int32_t* a, const int32_t* b, int64_t first, int64_t proved,
                   int64_t pairs, int64_t seg, const int32_t* thr, int64_t init, float* tile);

#define DFP_DEFINE_CHAIN_CERTIFIED(NV) \
template <> \
int ChainCertified<NV>(const int32_t* a, const int32_t* b, int64_t first, int64_t proved, \
                   int64_t pairs, int64_t seg, const int32_t* thr, int64_t init, float* tile) { \
  int64_t n, t, flag; \
  asm volatile( \
      DFP_ZERO_ACCUMULATORS_##NV \
      "xorl %k[flag], %k[flag]\n\t" \
      "testq %[rc], %[rc]\n\t" \
      "jz 5f\n\t" \
      "movq %[first], %[n]\n\t" \
      "jmp 3f\n\t" \
      "1:\n\t" \
      "movq %[seg], %[n]\n\t" \
      "cmpq %[rc], %[n]\n\t" \
      "cmovaq %[rc], %[n]\n\t" \
      "3:\n\t" \
      "subq %[n], %[rc]\n\t" \
      "subq %[n], %[rt]\n\t" \
      "2:\n\t" \
      "cmpq $8, %[n]\n\t" \
      "jb 12f\n\t" \
      DFP_VNNI_STEP_##NV DFP_VNNI_STEP_##NV DFP_VNNI_STEP_##NV DFP_VNNI_STEP_##NV \
      DFP_VNNI_STEP_##NV DFP_VNNI_STEP_##NV DFP_VNNI_STEP_##NV DFP_VNNI_STEP_##NV \
      "subq $8, %[n]\n\t" \
      "jnz 2b\n\t" \
      "jmp 13f\n\t" \
      "12:\n\t" \
      DFP_VNNI_STEP_##NV \
      "decq %[n]\n\t" \
      "jnz 12b\n\t" \
      "13:\n\t" \
      "testq %[rt], %[rt]\n\t" \
      "jz 7f\n\t" \
      "testq %[rc], %[rc]\n\t" \
      "jz 5f\n\t" \
      DFP_ABS_MAX_##NV \
      "vpcmpud $6, (%[thr])%{1to16%}, %%zmm" DFP_ABS_REG_##NV ", %%k1\n\t" \
      "addq $4, %[thr]\n\t" \
      "kortestw %%k1, %%k1\n\t" \
      "jz 1b\n\t" \
      "5:\n\t" \
      "vpbroadcastd %[int_min], %%zmm" DFP_MAX_REG_##NV "\n\t" \
      "vpbroadcastd %[int_max], %%zmm" DFP_MIN_REG_##NV "\n\t" \
      "6:\n\t" \
      DFP_VNNI_STEP_##NV \
      DFP_TRACK_MAX_MIN_##NV \
      "decq %[rt]\n\t" \
      "jnz 6b\n\t" \
      "vpcmpeqd %[int_max]%{1to16%}, %%zmm" DFP_MAX_REG_##NV ", %%k1\n\t" \
      "vpcmpeqd %[int_min]%{1to16%}, %%zmm" DFP_MIN_REG_##NV ", %%k2\n\t" \
      "korw %%k2, %%k1, %%k1\n\t" \
      "kmovw %%k1, %k[t]\n\t" \
      "movl %k[t], %k[flag]\n\t" \
      "testl %k[flag], %k[flag]\n\t" \
      "jnz 8f\n\t" \
      "7:\n\t" \
      "testq %[init], %[init]\n\t" \
      "jnz 9f\n\t" \
      DFP_ADD_TO_TILE_##NV \
      "jmp 8f\n\t" \
      "9:\n\t" \
      DFP_STORE_TO_TILE_##NV \
      "8:\n\t" \
      : [a] "+&r"(a), [b] "+&r"(b), [rc] "+&r"(proved), [rt] "+&r"(pairs), [thr] "+&r"(thr), \
        [n] "=&r"(n), [t] "=&r"(t), [flag] "=&r"(flag) \
      : [seg] "r"(seg), [first] "r"(first), [tile] "r"(tile), [init] "r"(init), [int_min] "m"(kInt32MinScalar), \
        [int_max] "m"(kInt32MaxScalar) \
      : "memory", "cc", "k1", "k2", "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10", "xmm11", "xmm12", "xmm13", "xmm14", "xmm15", "xmm16", "xmm17", "xmm18", "xmm19", "xmm20", "xmm21", "xmm22", "xmm23", "xmm24", "xmm25", "xmm26", "xmm27", "xmm28", "xmm29", "xmm30", "xmm31"); \
  return static_cast<int>(flag); \
}
DFP_DEFINE_CHAIN_CERTIFIED(2)
DFP_DEFINE_CHAIN_CERTIFIED(3)
DFP_DEFINE_CHAIN_CERTIFIED(4)

template <int kNv>
void MicroKernel(const int32_t* ap, const int32_t* bp, const SegmentData& sa,
                 const SegmentData& sb, int64_t npairs, int64_t chunk_pairs, float* tile,
                 bool first_call, Stats* stats) {
  constexpr int kNr = 16 * kNv;
  int64_t c = 0;
  for (int64_t q0 = 0; q0 < npairs; q0 += chunk_pairs, ++c) {
    const int64_t pairs = Min64(chunk_pairs, npairs - q0);
    const int32_t* a = ap + q0 * kMr;
    const int32_t* b = bp + q0 * kNr;
    const double* an = sa.norm + c * sa.per_chunk;
    const double* bn = sb.norm + c * sb.per_chunk;
    const int64_t nseg = Min64(CeilDiv(pairs, kSegPairs), kMaxSegments);
    // The first piece: segments [0, first) merged while their joint bound
    // sqrt(sum na_j^2) * sqrt(sum nb_j^2) stays <= INT32_MAX - 1 (no check
    // needed: the sums start at 0).  Then single segments with checks.
    int64_t first = 0;
    double a2 = 0.0, b2 = 0.0;
    while (first < nseg) {
      a2 += an[first] * an[first];
      b2 += bn[first] * bn[first];
      if (!(a2 * b2 * kBoundUp <= kMergeLimit)) break;
      ++first;
    }
    int64_t good = first;  // segments [0, good) proved (first piece, then checked ones)
    alignas(64) int32_t thr[kMaxSegments];
    if (first > 0 && first < nseg) {
      // thr[j] = floor(INT32_MAX - B_j) - 1; bit j of `single`: B_j <= INT32_MAX - 1.
      uint64_t single = 0;
      for (int64_t j = 0; j < nseg; j += 8) {
        const __mmask8 live =
            static_cast<__mmask8>(nseg - j >= 8 ? 0xFF : (1u << (nseg - j)) - 1);
        const __m512d bound = _mm512_mul_pd(_mm512_mul_pd(_mm512_maskz_loadu_pd(live, an + j),
                                                          _mm512_maskz_loadu_pd(live, bn + j)),
                                            _mm512_set1_pd(kBoundUp));
        const __m512d room = _mm512_sub_pd(_mm512_set1_pd(kInt32MaxD), bound);
        const __mmask8 ok = _mm512_mask_cmp_pd_mask(live, room, _mm512_set1_pd(1.0), _CMP_GE_OQ);
        _mm256_store_si256(reinterpret_cast<__m256i*>(thr + j),
                           _mm256_sub_epi32(_mm512_cvttpd_epi32(room), _mm256_set1_epi32(1)));
        single |= static_cast<uint64_t>(ok) << j;
      }
      const uint64_t after = ~(single >> first);  // first < nseg <= 64
      good = Min64(nseg, first + (after == 0 ? 64 : __builtin_ctzll(after)));
    }
    const int64_t proved = Min64(pairs, good * kSegPairs);
    const bool init = first_call && c == 0;  // the tile holds nothing yet
    if (ChainCertified<kNv>(a, b, Min64(pairs, first * kSegPairs), proved, pairs, kSegPairs,
                            thr + first, init, tile) != 0) {
      if (init) std::memset(tile, 0, sizeof(float) * kMr * kNr);
      // Rare: some chain reached the INT32 limits.  Recompute exactly.
      stats->overflowed_chunks += ExactChunkVector<kNv>(a, b, pairs, tile);
      stats->recomputed_tiles += 1;
    }
  }
}

#else  // portable

template <int kNv>
void MicroKernel(const int32_t* ap, const int32_t* bp, const SegmentData& sa,
                 const SegmentData& sb, int64_t npairs, int64_t chunk_pairs, float* tile,
                 bool first, Stats* stats) {
  constexpr int kNr = 16 * kNv;
  if (first) std::memset(tile, 0, sizeof(float) * kMr * kNr);
  for (int64_t q0 = 0; q0 < npairs; q0 += chunk_pairs) {
    const int64_t pairs = Min64(chunk_pairs, npairs - q0);
    stats->overflowed_chunks += ExactChunk<kNv>(ap + q0 * kMr, bp + q0 * kNr, pairs, tile);
  }
  (void)sa;
  (void)sb;
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
  SegmentLayout segs;
  // Every A panel is used by one work item only (one column item, A not
  // broadcast over the batch): the items pack their own A panels, into a
  // per-thread buffer that stays in cache, instead of a packing pass.
  bool pack_a_in_items;
  int32_t* packed_a;
  int32_t* packed_b;
  double* a_norm;  // [a_batches][a_panels][segs.per_panel] (SegmentData)
  double* b_norm;
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
  v.round = p.round_inputs;
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
  v.round = p.round_inputs;
  return v;
}

// Packs A panel `panel` of batch `batch` into out (and its segment norms
// into norm); returns the number of invalid elements.
int64_t PackAPanel(const Plan& plan, int64_t batch, int64_t panel, int32_t* out, double* norm) {
  const Problem& p = *plan.p;
  const int64_t row0 = panel * kMr;
  const int64_t invalid = PackPanel<kMr>(ViewOfA(p, batch), plan.layout, row0,
                                         Min64(kMr, p.m - row0), out,
                                         plan.a_nonfinite + batch * p.m + row0);
#if TF_LOWPREC_DFP_VNNI
  MeasureSegments<kMr>(out, plan.layout, plan.segs, norm);
#else
  (void)norm;
#endif
  return invalid;
}

void PackA(void* arg, int64_t begin, int64_t end) {
  Plan& plan = *static_cast<Plan*>(arg);
  int64_t invalid = 0;
  for (int64_t u = begin; u < end; ++u) {
    invalid += PackAPanel(plan, u / plan.a_panels, u % plan.a_panels,
                          plan.packed_a + u * plan.a_panel_words,
                          plan.a_norm + u * plan.segs.per_panel);
  }
  AtomicAdd(&plan.stats->invalid_inputs, invalid);
}

template <int kNv>
void PackB(void* arg, int64_t begin, int64_t end) {
  constexpr int kNr = 16 * kNv;
  Plan& plan = *static_cast<Plan*>(arg);
  const Problem& p = *plan.p;
  int64_t invalid = 0;
  for (int64_t u = begin; u < end; ++u) {
    const int64_t batch = u / plan.b_panels;
    const int64_t col0 = (u % plan.b_panels) * kNr;
    int32_t* panel = plan.packed_b + u * plan.b_panel_words;
    invalid += PackPanel<kNr>(ViewOfB(p, batch), plan.layout, col0, Min64(kNr, p.n - col0),
                              panel, plan.b_nonfinite + batch * p.n + col0);
#if TF_LOWPREC_DFP_VNNI
    MeasureSegments<kNr>(panel, plan.layout, plan.segs, plan.b_norm + u * plan.segs.per_panel);
#endif
  }
  AtomicAdd(&plan.stats->invalid_inputs, invalid);
}

// Units [0, B panels) pack B, the rest pack A.
template <int kNv>
void PackBoth(void* arg, int64_t begin, int64_t end) {
  const Plan& plan = *static_cast<Plan*>(arg);
  const int64_t b_units = plan.b_batches * plan.b_panels;
  if (begin < b_units) PackB<kNv>(arg, begin, Min64(end, b_units));
  if (end > b_units) PackA(arg, Max64(begin, b_units) - b_units, end - b_units);  // (none if in items)
}

// One work item: rows [i0, i0 + mc) x columns [j0, j0 + nc) of one batch.
template <int kNv>
void ComputeItem(const Plan& plan, int64_t item, float* tiles, double* scale_a,
                 double* scale_b, int32_t* local_a, double* local_a_norm, Stats* stats) {
  constexpr int kNr = 16 * kNv;
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
  // A panel ip is at a_words + (ip - a_first) * a_panel_words (norms likewise).
  const int32_t* a_words = plan.packed_a + ab * plan.a_panels * plan.a_panel_words;
  const double* a_norms = plan.a_norm + ab * plan.a_panels * plan.segs.per_panel;
  int64_t a_first = 0;
  if (plan.pack_a_in_items) {
    int64_t invalid = 0;
    for (int64_t ip = ip0; ip < ip1; ++ip) {
      invalid += PackAPanel(plan, ab, ip, local_a + (ip - ip0) * plan.a_panel_words,
                            local_a_norm + (ip - ip0) * plan.segs.per_panel);
    }
    stats->invalid_inputs += invalid;
    a_words = local_a;
    a_norms = local_a_norm;
    a_first = ip0;
  }
  for (int64_t blk = 0; blk < plan.layout.blocks; ++blk) {
    const int64_t pair0 = plan.layout.PairOffset(blk), pairs = plan.layout.Pairs(blk);
    for (int64_t q = 0; q < pairs; q += plan.kc_pairs) {
      const int64_t np = Min64(plan.kc_pairs, pairs - q);
      for (int64_t jp = jp0; jp < jp1; ++jp) {
        const int32_t* bpanel =
            plan.packed_b + (bb * plan.b_panels + jp) * plan.b_panel_words + (pair0 + q) * kNr;
        for (int64_t ip = ip0; ip < ip1; ++ip) {
          const int32_t* apanel =
              a_words + (ip - a_first) * plan.a_panel_words + (pair0 + q) * kMr;
          float* tile = tiles + ((ip - ip0) * njp + (jp - jp0)) * (kMr * kNr);
          const int64_t ub = bb * plan.b_panels + jp;
          const int64_t seg = plan.segs.Index(blk, q);
          const SegmentData sa = {a_norms + (ip - a_first) * plan.segs.per_panel + seg,
                                  plan.segs.per_chunk};
          const SegmentData sb = {plan.b_norm + ub * plan.segs.per_panel + seg,
                                  plan.segs.per_chunk};
          MicroKernel<kNv>(apanel, bpanel, sa, sb, np, plan.chunk_pairs, tile, q == 0, stats);
        }
      }
    }
    // End of the exponent block: out (+)= float(acc_b * 2^Ea * 2^Eb).
    if (p.ea_row_stride == 0 && p.eb_col_stride == 0) {
      // One exponent pair for the whole block: acc_b (0 or an integer of
      // magnitude in [1, 2^(32 + bit length of K))) times 2^s is a normal
      // float for s in [-126, kMaxShift]: exact in FP32, so the same value
      // as the double product rounded once.
      const int64_t s = int64_t{ea[blk * p.ea_block_stride]} + eb[blk * p.eb_block_stride];
      const int64_t max_shift = 126 - 32 - (64 - __builtin_clzll(static_cast<uint64_t>(p.k) | 1));
      if (s >= -126 && s <= max_shift) {
        const float scale = FloatPow2(static_cast<int32_t>(s));
        for (int64_t i = i0; i < i1; ++i) {
          const int64_t ip = i / kMr, r = i % kMr;
          float* o = out + i * p.n;
          for (int64_t jp = jp0; jp < jp1; ++jp) {
            const float* t = tiles + ((ip - ip0) * njp + (jp - jp0)) * (kMr * kNr) + r * kNr;
            const int64_t ja = jp * kNr, jb = Min64(j1, ja + kNr);
            float* oo = o + ja;
            if (blk == 0) {
              for (int64_t c = 0; c < jb - ja; ++c) oo[c] = t[c] * scale;
            } else {
              for (int64_t c = 0; c < jb - ja; ++c) oo[c] = oo[c] + t[c] * scale;
            }
          }
        }
        continue;
      }
    }
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

template <int kNv>
void ComputeItems(void* arg, int64_t begin, int64_t end) {
  constexpr int kNr = 16 * kNv;
  constexpr int64_t kNc = kNcPanels * kNr;
  const Plan& plan = *static_cast<Plan*>(arg);
  const int64_t tile_floats = (kMc / kMr + 1) * (kNc / kNr + 1) * kMr * kNr;
  // Per thread: the FP32 tiles, the scales, and (pack_a_in_items) the item's
  // A panels and their norms.
  const int64_t item_panels = plan.pack_a_in_items ? CeilDiv(plan.mc, kMr) : 0;
  const int64_t a_bytes = 4 * item_panels * plan.a_panel_words;
  const int64_t tile_bytes = (sizeof(float) * tile_floats + 63) / 64 * 64;
  const int64_t scale_bytes = sizeof(double) * (kMc + kNc);
  const int64_t norm_bytes = sizeof(double) * item_panels * plan.segs.per_panel;
  int64_t capacity = 0;
  char* block = static_cast<char*>(
      AcquireWorkspace(tile_bytes + (a_bytes + 63) / 64 * 64 + scale_bytes + norm_bytes, &capacity));
  float* tiles = reinterpret_cast<float*>(block);
  int32_t* local_a = reinterpret_cast<int32_t*>(block + tile_bytes);
  double* scale_a = reinterpret_cast<double*>(block + tile_bytes + (a_bytes + 63) / 64 * 64);
  double* scale_b = scale_a + kMc;
  double* local_a_norm = scale_a + kMc + kNc;
  Stats stats;
  for (int64_t u = begin; u < end; ++u) {
    ComputeItem<kNv>(plan, u, tiles, scale_a, scale_b, local_a, local_a_norm, &stats);
  }
  ReleaseWorkspace(block, capacity);
  AtomicAdd(&plan.stats->invalid_inputs, stats.invalid_inputs);
  AtomicAdd(&plan.stats->overflowed_chunks, stats.overflowed_chunks);
  AtomicAdd(&plan.stats->recomputed_tiles, stats.recomputed_tiles);
}

template <int kNv>
void GemmWith(const Problem& p, const ParallelFor& parallel, Stats* stats) {
  constexpr int kNr = 16 * kNv;
  constexpr int64_t kNc = kNcPanels * kNr;
  Plan plan;
  plan.p = &p;
  plan.stats = stats;
  plan.layout = MakeLayout(p.k, p.block_size);
  plan.chunk_pairs = Max64(1, p.chunk_size / 2);
  plan.kc_pairs = plan.chunk_pairs * Max64(1, KcPairs(kNv) / plan.chunk_pairs);
  plan.a_batches = p.a_batch_stride == 0 ? 1 : p.batch;
  plan.b_batches = p.b_batch_stride == 0 ? 1 : p.batch;
  plan.a_panels = CeilDiv(p.m, kMr);
  plan.b_panels = CeilDiv(p.n, kNr);
  plan.a_panel_words = plan.layout.total_pairs * kMr;
  plan.b_panel_words = plan.layout.total_pairs * kNr;
  // Work items: at most kMc x kNc (and no larger than the matrix), made
  // smaller until there are enough of them to keep every thread of the pool
  // busy.  More row items re-read B, more column items re-read A: split the
  // side whose extra re-reads are smaller (columns when m < n), and for a
  // square matrix the longer side of the item.
  constexpr int64_t kMinItems = 6;
  plan.mc = Min64(kMc, CeilDiv(p.m, kMr) * kMr);
  plan.nc = Min64(kNc, CeilDiv(p.n, kNr) * kNr);
  while (p.batch * CeilDiv(p.m, plan.mc) * CeilDiv(p.n, plan.nc) < kMinItems) {
    const bool can_m = plan.mc >= 4 * kMr;
    const bool can_n = plan.nc >= 2 * kNr;
    const bool prefer_n = p.m != p.n ? p.m < p.n : plan.nc > 2 * plan.mc;
    if (can_n && (prefer_n || !can_m)) {
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

  plan.pack_a_in_items = plan.col_items == 1 && (plan.a_batches == p.batch);
  plan.segs = MakeSegments(plan.layout, plan.chunk_pairs);
  // A panels packed by the packing pass (none when the items pack their own).
  const int64_t a_units = plan.pack_a_in_items ? 0 : plan.a_batches * plan.a_panels;
  const int64_t b_units = plan.b_batches * plan.b_panels;
  // One workspace for everything, cut into 64-byte aligned pieces.
  int64_t bytes = 0;
  auto piece = [&bytes](int64_t size) {
    const int64_t at = bytes;
    bytes += (size + 63) / 64 * 64;
    return at;
  };
  const int64_t at_packed_a = piece(4 * a_units * plan.a_panel_words);
  const int64_t at_packed_b = piece(4 * b_units * plan.b_panel_words);
  const int64_t at_a_norm = piece(8 * a_units * plan.segs.per_panel);
  const int64_t at_b_norm = piece(8 * b_units * plan.segs.per_panel);
  const int64_t at_a_nonfinite = piece(plan.a_batches * p.m);
  const int64_t at_b_nonfinite = piece(plan.b_batches * p.n);
  int64_t capacity = 0;
  char* workspace = static_cast<char*>(AcquireWorkspace(bytes, &capacity));
  plan.packed_a = reinterpret_cast<int32_t*>(workspace + at_packed_a);
  plan.packed_b = reinterpret_cast<int32_t*>(workspace + at_packed_b);
  plan.a_norm = reinterpret_cast<double*>(workspace + at_a_norm);
  plan.b_norm = reinterpret_cast<double*>(workspace + at_b_norm);
  plan.a_nonfinite = reinterpret_cast<uint8_t*>(workspace + at_a_nonfinite);
  plan.b_nonfinite = reinterpret_cast<uint8_t*>(workspace + at_b_nonfinite);
  std::memset(plan.a_nonfinite, 0, at_b_nonfinite - at_a_nonfinite + plan.b_batches * p.n);
  const int64_t k = Max64(p.k, 1);
  // One parallel region packs both (B's wider panels first, so that the
  // pool's dynamic scheduling evens out the unequal unit costs).
  parallel.run(parallel.context, b_units + a_units,
               8 * k * (kNr * b_units + kMr * a_units) / Max64(1, b_units + a_units),
               PackBoth<kNv>, &plan);
  parallel.run(parallel.context, p.batch * plan.row_items * plan.col_items,
               plan.mc * plan.nc * k / 16 + plan.mc * plan.nc, ComputeItems<kNv>, &plan);

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
  ReleaseWorkspace(workspace, capacity);
}

// The tile width: the narrowest padding of n to whole micro-panels, and 48
// columns for wide matrices (the tuned case; 64-column tiles would need a
// shorter K piece to keep the B micro-panel in L1).
void Gemm(const Problem& p, const ParallelFor& parallel, Stats* stats) {
  *stats = Stats();
  if (p.batch == 0 || p.m == 0 || p.n == 0) return;
  const int64_t padded2 = CeilDiv(p.n, 32) * 32, padded3 = CeilDiv(p.n, 48) * 48,
                padded4 = CeilDiv(p.n, 64) * 64;
  if (p.n <= 256 && padded4 < padded3 && padded4 <= padded2) {
    GemmWith<4>(p, parallel, stats);
  } else if (p.n <= 256 && padded2 < padded3) {
    GemmWith<2>(p, parallel, stats);
  } else {
    GemmWith<3>(p, parallel, stats);
  }
}

}  // namespace

extern const Kernels kKernels;
const Kernels kKernels = {TF_LOWPREC_DFP_ISA_NAME, &Gemm};

}  // namespace TF_LOWPREC_DFP_ISA
}  // namespace dfp_gemm
}  // namespace tf_lowprec
