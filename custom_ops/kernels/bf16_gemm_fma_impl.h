// BF16 GEMM with the VDPBF16PS summation order on AVX2 + FMA: a register-
// blocked FP32 GEMM whose every step is one `vfmadd231ps`, proved equal to
// the definition (bf16_gemm.h, docs/bf16_gemm.md) on the outputs it is used
// for; the others are recomputed with the scalar definition (bf16_gemm_step.h).
//
// bf16_gemm_avx2.cc defines TF_LOWPREC_BF16_ISA and TF_LOWPREC_BF16_ISA_NAME
// and includes this file with -mavx2 -mfma.
//
// Why one FMA is one step.  A step is acc + x * y (x, y BF16 values, DAZ
// applied by the packing) rounded once to FP32, nearest even, overflow to
// ±Inf, then FTZ, then the NaN rule.  vfmadd231ps computes x * y + acc
// exactly and rounds once in the MXCSR rounding mode, which the kernel sets
// to nearest even (below).  (The intrinsics are plain vfmadd instructions:
// no -ffast-math, so no contraction or reassociation; the compiler may
// interleave the FMAs of different accumulators, never two of one.)  So the
// two agree except possibly where
//   (a) the definition flushes: the sum, rounded to 24 bits with unbounded
//       exponent, is below 2^-126 (a nonzero "tiny" sum), and where the CPU
//       would see a subnormal operand or produce one;
//   (b) the result is NaN: x86 propagates NaN payloads by operand position,
//       not by the definition's x, then y, then acc rule.
// The packing rules out both, per output element, by two facts it records
// for every row of a and every column of b:
//   * nonfinite: the row (column) holds an Inf or NaN.  With finite operands
//     no step gives NaN: the exact product of two finite values is finite, so
//     an invalid operation would need acc = ±Inf and an infinite product;
//     and once acc has overflowed to ±Inf it stays so (Inf + finite = Inf), in
//     both.
//   * min_exponent: the least biased exponent field of the row's (column's)
//     nonzero operands (255 if none).  Write a nonzero BF16 value as
//     M * 2^(E - 7), M an integer in [128, 255]: x * y is an integer multiple
//     of Q = 2^(Ea + Eb - 14), Ea, Eb the least exponents of the row of a and
//     the column of b (a zero product too).  Every accumulator is then a
//     multiple of Q (or ±Inf): true for the initial +0; the exact sum
//     s = acc + x * y is a multiple of Q; if ulp(s) >= Q, s rounds to a
//     multiple of ulp(s) (or to the next power of two), itself a multiple of
//     Q; if ulp(s) < Q, s is a multiple of ulp(s), so exact in FP32: not
//     rounded.  Hence when Q >= 2^-126, i.e. Ea + Eb >= -112, i.e. the
//     exponent fields add up to >= 142 (kSafeExponentSum), every nonzero sum
//     is at least 2^-126 in magnitude: no tiny sum, before or after rounding,
//     so FTZ never acts, in the definition or in the CPU, and no subnormal is
//     ever produced or consumed (the accumulator reloaded from `out` between K
//     pieces is an earlier result): MXCSR's FTZ and DAZ bits make no
//     difference.  Signed zeros follow IEEE 754 in both (+0 for an exact
//     cancellation in nearest even, -0 only from -0 + -0), and overflow gives
//     ±Inf in both.
// So an output (i, j) whose row of a and column of b are finite and whose
// exponent fields add up to >= 142 is exactly the FMA chain.  The kernel runs
// all outputs through the FMAs (NaN and tiny sums there are harmless garbage)
// and then recomputes the others with bf16_gemm_step.h (the portable
// kernel's arithmetic).  Data whose nonzero magnitudes are all above 2^-56
// never takes that path; rows or columns with Inf, NaN or tiny values run at
// the portable kernel's speed.
//
// MXCSR: the compute and fix-up ranges run with MXCSR = 0x1F80 (nearest
// even, all exceptions masked, FTZ and DAZ off) and restore the caller's
// register, flags included, on every thread that runs them.  Under
// TensorFlow this changes nothing (it runs every kernel with nearest even,
// FTZ and DAZ), but the proof above needs only nearest even, and no caller's
// rounding mode can leak in.

// Structure (GotoBLAS / BLIS style, 6 x 16 FP32 micro-tile):
//   (A patch matrix, Problem::a_patches, is gathered into a buffer by each
//   work item and then converted as a materialized a: the same values.)
//   1. pack, in parallel: every element of a and b is rounded to BF16 and
//      DAZ'd, and stored as the FP32 value it is (BF16 bits in the high
//      half).  a goes to rows ([m][lda], K padded to even with +0 and rows
//      to a multiple of 6 with zeros), b to panels of 16 columns ([kp][16]);
//      transposed operands through 8 x 8 register transposes.  The row and
//      column facts above are taken from the packed values.
//   2. compute, in parallel: work items of mc rows x nc columns run the
//      micro-kernel over K pieces of kKc elements, in K order; per piece the
//      16-column b panel stays in L1 while the a rows (L2) pass under it.  The
//      micro-kernel keeps 6 x 16 accumulators in 12 ymm registers and, per K
//      pair, issues the odd element's 12 FMAs and then the even element's
//      (VDPBF16PS's order).  Between K pieces the tile goes to `out` and back,
//      which changes nothing (the accumulator is an FP32 value either way).
//   3. fix up, in parallel over rows: the outputs not proved above, from the
//      packed operands, with the portable kernel's step loop.
#include <immintrin.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "bf16_gemm.h"
#include "bf16_gemm_step.h"  // ToBf16Daz, Step, StepFinite, Min64, CeilDiv, AlignedAlloc, AllocatePacked
#include "conv_gather.h"  // GatherPatchRow (a_patches)
#include "float_environment.h"  // ScopedIeeeFloatEnvironment

namespace tf_lowprec {
namespace bf16_gemm {
namespace TF_LOWPREC_BF16_ISA {
namespace {

constexpr int kMr = 6;                 // rows of a micro-tile
constexpr int kNr = 16;                // columns of a micro-tile (two ymm)
constexpr int64_t kKc = 256;           // K elements per piece: the b panel piece is 16 KiB (L1)
constexpr int64_t kMcPanels = 28;      // largest work item: 168 rows (a block 168 KiB: L2) ...
constexpr int64_t kNcPanels = 16;      // ... by 256 columns
constexpr int64_t kMinWorkItems = 8;   // smaller work items below this many
constexpr double kInlineMacs = 1 << 22;  // fewer multiply-adds: no thread pool
// Exponent fields of the row of a and the column of b adding up to at least
// this: the FMA chain is exact (the proof at the top).
constexpr int kSafeExponentSum = 142;



// ToBf16Daz on 8 lanes, as FP32 bits (the BF16 value; low half zero).
inline __m256i ToBf16DazFp32(__m256i u) {
  const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
  __m256i r = _mm256_and_si256(
      _mm256_add_epi32(_mm256_add_epi32(u, _mm256_set1_epi32(0x7FFF)), lsb),
      _mm256_set1_epi32(static_cast<int>(0xFFFF0000u)));
  const __m256i sign = _mm256_and_si256(u, _mm256_set1_epi32(static_cast<int>(0x80000000u)));
  // |u| > Inf as signed 32-bit integers (both non-negative): NaN.
  const __m256i nan = _mm256_cmpgt_epi32(_mm256_andnot_si256(sign, u),
                                         _mm256_set1_epi32(0x7F800000));
  r = _mm256_blendv_epi8(r, _mm256_or_si256(sign, _mm256_set1_epi32(0x7FC00000)), nan);
  // DAZ: exponent field 0 (a BF16 subnormal, or zero) -> zero with the sign.
  const __m256i tiny = _mm256_cmpeq_epi32(_mm256_and_si256(r, _mm256_set1_epi32(0x7F800000)),
                                          _mm256_setzero_si256());
  return _mm256_blendv_epi8(r, _mm256_and_si256(r, sign), tiny);
}

inline float ToBf16DazFp32(float x) { return BitsFloat(ToBf16Daz(FloatBits(x)) << 16); }

inline __m256i LaneMask8(int64_t count) {  // the first min(max(count, 0), 8) lanes
  const __m256i index = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  const int c = static_cast<int>(count < 0 ? 0 : count > 8 ? 8 : count);
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(c), index);
}

inline __m256i LoadConvert(const float* src, int64_t valid) {
  const __m256i u = valid >= 8 ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src))
                               : _mm256_castps_si256(_mm256_maskload_ps(src, LaneMask8(valid)));
  return ToBf16DazFp32(u);
}

// The row / column facts of the proof, accumulated over packed values:
// least (exponent field - 1) as unsigned (zero: 0xFFFFFFFF, ignored) and
// greatest exponent field (255: Inf or NaN).
struct ExponentRange {
  __m256i min_field_minus_1 = _mm256_set1_epi32(-1);
  __m256i max_field = _mm256_setzero_si256();
  void Add(__m256i bits) {
    const __m256i field = _mm256_and_si256(_mm256_srli_epi32(bits, 23), _mm256_set1_epi32(0xFF));
    min_field_minus_1 =
        _mm256_min_epu32(min_field_minus_1, _mm256_sub_epi32(field, _mm256_set1_epi32(1)));
    max_field = _mm256_max_epu32(max_field, field);
  }
};

// Per row of a / column of b: least exponent field of its nonzero operands
// (255 if none) and whether it holds Inf or NaN.
struct OperandFacts {
  uint8_t min_exponent;
  uint8_t nonfinite;
};

inline OperandFacts FactsFromLanes(uint32_t min_field_minus_1, uint32_t max_field) {
  const uint32_t min_field = min_field_minus_1 >= 254u ? 255u : min_field_minus_1 + 1;
  return {static_cast<uint8_t>(min_field), static_cast<uint8_t>(max_field == 255u)};
}

// Per lane of an ExponentRange (columns of a b panel).
inline void LaneFacts(const ExponentRange& range, OperandFacts* out, int lanes) {
  alignas(32) uint32_t lo[8], hi[8];
  _mm256_store_si256(reinterpret_cast<__m256i*>(lo), range.min_field_minus_1);
  _mm256_store_si256(reinterpret_cast<__m256i*>(hi), range.max_field);
  for (int l = 0; l < lanes; ++l) out[l] = FactsFromLanes(lo[l], hi[l]);
}

// Over all lanes (one row of a).
inline OperandFacts ReducedFacts(const ExponentRange& range) {
  alignas(32) uint32_t lo[8], hi[8];
  _mm256_store_si256(reinterpret_cast<__m256i*>(lo), range.min_field_minus_1);
  _mm256_store_si256(reinterpret_cast<__m256i*>(hi), range.max_field);
  uint32_t min_lo = lo[0], max_hi = hi[0];
  for (int l = 1; l < 8; ++l) {
    min_lo = lo[l] < min_lo ? lo[l] : min_lo;
    max_hi = hi[l] > max_hi ? hi[l] : max_hi;
  }
  return FactsFromLanes(min_lo, max_hi);
}

// 8 x 8 transpose of 32-bit lanes.
inline void Transpose8x8(__m256i r[8]) {
  __m256 t[8], u[8];
  for (int i = 0; i < 8; ++i) t[i] = _mm256_castsi256_ps(r[i]);
  for (int i = 0; i < 8; i += 2) {
    u[i] = _mm256_unpacklo_ps(t[i], t[i + 1]);
    u[i + 1] = _mm256_unpackhi_ps(t[i], t[i + 1]);
  }
  for (int i = 0; i < 8; i += 4) {
    t[i] = _mm256_shuffle_ps(u[i], u[i + 2], 0x44);
    t[i + 1] = _mm256_shuffle_ps(u[i], u[i + 2], 0xEE);
    t[i + 2] = _mm256_shuffle_ps(u[i + 1], u[i + 3], 0x44);
    t[i + 3] = _mm256_shuffle_ps(u[i + 1], u[i + 3], 0xEE);
  }
  // t[0..3]: columns 0, 1, 2, 3 of rows 0-3 (low 128) and 4-7 ... of the first
  // four rows; t[4..7] the same for rows 4-7.
  r[0] = _mm256_castps_si256(_mm256_permute2f128_ps(t[0], t[4], 0x20));
  r[1] = _mm256_castps_si256(_mm256_permute2f128_ps(t[1], t[5], 0x20));
  r[2] = _mm256_castps_si256(_mm256_permute2f128_ps(t[2], t[6], 0x20));
  r[3] = _mm256_castps_si256(_mm256_permute2f128_ps(t[3], t[7], 0x20));
  r[4] = _mm256_castps_si256(_mm256_permute2f128_ps(t[0], t[4], 0x31));
  r[5] = _mm256_castps_si256(_mm256_permute2f128_ps(t[1], t[5], 0x31));
  r[6] = _mm256_castps_si256(_mm256_permute2f128_ps(t[2], t[6], 0x31));
  r[7] = _mm256_castps_si256(_mm256_permute2f128_ps(t[3], t[7], 0x31));
}

// dst[c * dst_stride + r] = convert(src[r * src_stride + c]) for r < 8 and
// c < stores (at most 8); zeros where r >= rows or c >= cols.
inline void TransposeConvert8x8(const float* src, int64_t src_stride, int64_t rows, int64_t cols,
                                float* dst, int64_t dst_stride, int64_t stores) {
  __m256i r[8];
  if (rows >= 8 && cols >= 8) {
    for (int i = 0; i < 8; ++i) {
      r[i] = ToBf16DazFp32(
          _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + i * src_stride)));
    }
  } else {
    for (int i = 0; i < 8; ++i) {
      r[i] = i < rows ? LoadConvert(src + i * src_stride, cols) : _mm256_setzero_si256();
    }
  }
  Transpose8x8(r);
  for (int c = 0; c < 8 && c < stores; ++c) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + c * dst_stride), r[c]);
  }
}

// Floats per packed row of a: at least kp (rounded up to 8 for the
// transposes), and an odd number of cache lines, so that the 6 rows the
// micro-kernel reads side by side never crowd into one L1 set.
inline int64_t RowFloats(int64_t kp) {
  int64_t floats = CeilDiv(kp + 8, 16) * 16;
  if ((floats / 16) % 2 == 0) floats += 16;
  return floats;
}

// out[rows x cols] (+)= a kMr x kNr tile over K elements [0, kc) (kc even):
// a(i, k) = ap[i * lda + k], b(k, j) = bp[k * kNr + j].  Per pair, the odd
// element's FMAs go first, then the even element's: VDPBF16PS's order.  The
// 12 accumulators are named variables (an array of them was kept in memory
// by GCC 12, a store per FMA).
void Tile(const float* ap, int64_t lda, const float* bp, int64_t kc, float* c, int64_t ldc,
          int rows, int cols, bool load_c) {
  const bool full = rows == kMr && cols == kNr;
  // A partial tile goes through `edge` (zeros outside rows x cols).
  alignas(32) float edge[kMr * kNr];
  float* tile = full ? c : edge;
  const int64_t ld = full ? ldc : kNr;
  if (load_c && !full) {
    std::memset(edge, 0, sizeof(edge));
    for (int i = 0; i < rows; ++i) std::memcpy(edge + i * kNr, c + i * ldc, sizeof(float) * cols);
  }
#define TF_LOWPREC_BF16_ACC_INIT(i)                                                  \
  __m256 acc##i##0 = load_c ? _mm256_loadu_ps(tile + (i) * ld) : _mm256_setzero_ps(); \
  __m256 acc##i##1 = load_c ? _mm256_loadu_ps(tile + (i) * ld + 8) : _mm256_setzero_ps();
  TF_LOWPREC_BF16_ACC_INIT(0)
  TF_LOWPREC_BF16_ACC_INIT(1)
  TF_LOWPREC_BF16_ACC_INIT(2)
  TF_LOWPREC_BF16_ACC_INIT(3)
  TF_LOWPREC_BF16_ACC_INIT(4)
  TF_LOWPREC_BF16_ACC_INIT(5)
#undef TF_LOWPREC_BF16_ACC_INIT
  const float* a0 = ap;
  const float* a1 = ap + lda;
  const float* a2 = ap + 2 * lda;
  const float* a3 = ap + 3 * lda;
  const float* a4 = ap + 4 * lda;
  const float* a5 = ap + 5 * lda;
#define TF_LOWPREC_BF16_FMA_ROW(i, kk)                       \
  {                                                          \
    const __m256 x = _mm256_broadcast_ss(a##i + (kk));       \
    acc##i##0 = _mm256_fmadd_ps(x, b0, acc##i##0);           \
    acc##i##1 = _mm256_fmadd_ps(x, b1, acc##i##1);           \
  }
#define TF_LOWPREC_BF16_FMA_STEP(kk)                         \
  {                                                          \
    const __m256 b0 = _mm256_load_ps(bp + (kk) * kNr);       \
    const __m256 b1 = _mm256_load_ps(bp + (kk) * kNr + 8);   \
    TF_LOWPREC_BF16_FMA_ROW(0, kk)                           \
    TF_LOWPREC_BF16_FMA_ROW(1, kk)                           \
    TF_LOWPREC_BF16_FMA_ROW(2, kk)                           \
    TF_LOWPREC_BF16_FMA_ROW(3, kk)                           \
    TF_LOWPREC_BF16_FMA_ROW(4, kk)                           \
    TF_LOWPREC_BF16_FMA_ROW(5, kk)                           \
  }
  for (int64_t k = 0; k < kc; k += 2) {
    TF_LOWPREC_BF16_FMA_STEP(k + 1)  // the odd element of the pair
    TF_LOWPREC_BF16_FMA_STEP(k)      // then the even one
  }
#undef TF_LOWPREC_BF16_FMA_STEP
#undef TF_LOWPREC_BF16_FMA_ROW
#define TF_LOWPREC_BF16_ACC_STORE(i)                \
  _mm256_storeu_ps(tile + (i) * ld, acc##i##0);     \
  _mm256_storeu_ps(tile + (i) * ld + 8, acc##i##1);
  TF_LOWPREC_BF16_ACC_STORE(0)
  TF_LOWPREC_BF16_ACC_STORE(1)
  TF_LOWPREC_BF16_ACC_STORE(2)
  TF_LOWPREC_BF16_ACC_STORE(3)
  TF_LOWPREC_BF16_ACC_STORE(4)
  TF_LOWPREC_BF16_ACC_STORE(5)
#undef TF_LOWPREC_BF16_ACC_STORE
  if (!full) {
    for (int i = 0; i < rows; ++i) std::memcpy(c + i * ldc, edge + i * kNr, sizeof(float) * cols);
  }
}

struct Plan {
  const Problem* p;
  int64_t kp;                     // K padded to even
  int64_t lda;                    // floats per packed row of a
  int64_t a_rows;                 // rows per batch of packed a (a multiple of kMr)
  int64_t b_panels;               // per batch
  int64_t a_batches, b_batches;   // 1 when broadcast
  // a converted once for all work items, [a_batches][a_rows][lda]; or, when
  // every row belongs to one work item (one column block, a not broadcast),
  // nullptr: each item converts its rows K piece by K piece into a block
  // that stays in L2 (no round trip of a through memory).
  float* packed_a;
  float* packed_b;                // [b_batches][b_panels][kp][kNr]
  OperandFacts* a_facts;          // [a_batches][m]
  OperandFacts* b_facts;          // [b_batches][b_panels * kNr]
  int64_t a_pack_units;           // groups of 8 rows of a
  int64_t mc_panels, nc_panels;   // work item size, in micro-tiles
  int64_t row_blocks, col_blocks;
  // Fix-up: per batch of b, the least min_exponent over its columns and
  // whether any column is nonfinite.
  uint8_t* b_min_exponent;        // [b_batches]
  uint8_t* b_any_nonfinite;       // [b_batches]
};

// ConvertARows for a patch matrix (p.a_patches): the values gathered into a
// buffer first, then converted, transposed and measured exactly as those of
// the materialized matrix, so the packed rows and their facts are the same.
// Not transposed, rows are pixels (any number of them, one gather per row
// and K piece); transposed, rows are patch columns (any number: 8 pixels'
// patch rows gathered over all of them at a time, then 8 x 8 transposes).
void ConvertPatchRows(const Problem& p, int64_t r0, int64_t rows, int64_t k0, int64_t kc,
                      float* dst, int64_t ld, ExponentRange* ranges) {
  const ConvGather& g = *p.a_patches;
  if (!p.transpose_a) {
    alignas(32) float run[kKc];  // kKc: a multiple of 8
    for (int64_t c0 = 0; c0 < kc; c0 += kKc) {
      const int64_t n = Min64(kKc, kc - c0);
      const int64_t valid = Min64(n, p.k - k0 - c0);  // the rest: zeros past K
      const PatchColumn col = valid > 0 ? ColumnOf(g, k0 + c0) : PatchColumn();
      PatchPixel px = PixelOfRow(g, r0);
      for (int64_t i = 0; i < rows; ++i, Advance(g, &px)) {
        if (valid > 0) GatherPatchColumns(g, px, col, valid, run);
        float* out = dst + i * ld + c0;
        for (int64_t k = 0; k < n; k += 8) {
          const __m256i r = LoadConvert(run + k, valid - k);
          ranges[i].Add(r);
          _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + k), r);
        }
      }
    }
    return;
  }
  constexpr int64_t kSpan = kMcPanels * kMr;  // a multiple of 8
  alignas(32) float block[8 * kSpan];
  for (int64_t c0 = 0; c0 < rows; c0 += kSpan) {
    const int64_t span = Min64(kSpan, rows - c0);
    const PatchColumn col = ColumnOf(g, r0 + c0);
    PatchPixel px = PixelOfRow(g, k0);
    for (int64_t k = 0; k < kc; k += 8) {
      const int64_t pixels = Min64(8, p.k - k0 - k);  // <= 0: all zeros past K
      for (int64_t t = 0; t < pixels; ++t, Advance(g, &px)) {
        GatherPatchColumns(g, px, col, span, block + t * kSpan);
      }
      for (int64_t c = 0; c < span; c += 8) {
        const int64_t cols = Min64(8, span - c);
        TransposeConvert8x8(block + c, kSpan, pixels, cols, dst + (c0 + c) * ld + k, ld, cols);
      }
    }
  }
  for (int64_t i = 0; i < rows; ++i) {
    for (int64_t k = 0; k < kc; k += 8) {
      ranges[i].Add(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(dst + i * ld + k)));
    }
  }
}

// Rows [r0, r0 + rows) (rows <= 8) of a (one batch, at `a`), K elements
// [k0, k0 + kc), converted into dst[i * ld + k] (i < rows; up to kc rounded
// up to 8 written, zeros past K), the exponent facts added to ranges[i].
void ConvertARows(const Problem& p, const float* a, int64_t r0, int64_t rows, int64_t k0,
                  int64_t kc, float* dst, int64_t ld, ExponentRange* ranges) {
  if (p.a_patches != nullptr) {
    ConvertPatchRows(p, r0, rows, k0, kc, dst, ld, ranges);
    return;
  }
  if (!p.transpose_a) {  // [m, k]: each row converted along k
    for (int64_t i = 0; i < rows; ++i) {
      const float* src = a + (r0 + i) * p.k + k0;
      float* out = dst + i * ld;
      ExponentRange range = ranges[i];
      for (int64_t k = 0; k < kc; k += 8) {
        const __m256i r = LoadConvert(src + k, p.k - k0 - k);
        range.Add(r);
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + k), r);
      }
      ranges[i] = range;
    }
    return;
  }
  // [k, m]: 8 x 8 blocks transposed into the rows.
  for (int64_t k = 0; k < kc; k += 8) {
    TransposeConvert8x8(a + (k0 + k) * p.m + r0, p.m, p.k - k0 - k, rows, dst + k, ld, rows);
  }
  for (int64_t i = 0; i < rows; ++i) {
    for (int64_t k = 0; k < kc; k += 8) {
      ranges[i].Add(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(dst + i * ld + k)));
    }
  }
}

// Rows [r0, r0 + 8) of one batch of a into packed_a, with their facts.
void PackARows(const Plan& plan, int64_t batch, int64_t r0) {
  const Problem& p = *plan.p;
  float* out = plan.packed_a + batch * plan.a_rows * plan.lda;
  const int64_t rows = Min64(8, p.m - r0);
  ExponentRange ranges[8];
  ConvertARows(p, p.a + batch * p.a_batch_stride, r0, rows, 0, plan.kp, out + r0 * plan.lda,
               plan.lda, ranges);
  for (int64_t i = 0; i < rows; ++i) plan.a_facts[batch * p.m + r0 + i] = ReducedFacts(ranges[i]);
  // Rows past m in the last group of a multiple of kMr: zeros.
  if (r0 + 8 >= p.m) {
    for (int64_t i = p.m; i < plan.a_rows; ++i) {
      std::memset(out + i * plan.lda, 0, sizeof(float) * plan.lda);
    }
  }
}

// Panel q (columns [16 q, 16 q + 16)) of one batch of b, with its facts.
void PackBPanel(const Plan& plan, int64_t batch, int64_t q) {
  const Problem& p = *plan.p;
  const float* b = p.b + batch * p.b_batch_stride;
  float* out = plan.packed_b + (batch * plan.b_panels + q) * plan.kp * kNr;
  const int64_t j0 = q * kNr, cols = Min64(kNr, p.n - j0);
  ExponentRange range[2];
  if (!p.transpose_b) {  // [k, n]: 16 columns of each row
    for (int64_t k = 0; k < plan.kp; ++k) {
      for (int v = 0; v < 2; ++v) {
        const __m256i r = k < p.k ? LoadConvert(b + k * p.n + j0 + 8 * v, cols - 8 * v)
                                  : _mm256_setzero_si256();
        range[v].Add(r);
        _mm256_store_si256(reinterpret_cast<__m256i*>(out + k * kNr + 8 * v), r);
      }
    }
  } else {  // [n, k]: columns are rows of b; 8 x 8 blocks transposed
    for (int64_t k = 0; k < plan.kp; k += 8) {
      for (int v = 0; v < 2; ++v) {
        TransposeConvert8x8(b + (j0 + 8 * v) * p.k + k, p.k, cols - 8 * v, p.k - k,
                            out + k * kNr + 8 * v, kNr, plan.kp - k);
      }
    }
    for (int64_t k = 0; k < plan.kp; ++k) {
      for (int v = 0; v < 2; ++v) {
        range[v].Add(_mm256_load_si256(reinterpret_cast<const __m256i*>(out + k * kNr + 8 * v)));
      }
    }
  }
  OperandFacts* facts = plan.b_facts + batch * plan.b_panels * kNr + j0;
  LaneFacts(range[0], facts, 8);
  LaneFacts(range[1], facts + 8, 8);
}

void PackRange(void* arg, int64_t begin, int64_t end) {
  const Plan& plan = *static_cast<const Plan*>(arg);
  const int64_t a_groups = CeilDiv(plan.p->m, 8);
  for (int64_t u = begin; u < end; ++u) {
    if (u < plan.a_pack_units) {
      PackARows(plan, u / a_groups, (u % a_groups) * 8);
    } else {
      const int64_t v = u - plan.a_pack_units;
      PackBPanel(plan, v / plan.b_panels, v % plan.b_panels);
    }
  }
}

void ComputeRange(void* arg, int64_t begin, int64_t end) {
  const Plan& plan = *static_cast<const Plan*>(arg);
  const Problem& p = *plan.p;
  const ScopedIeeeFloatEnvironment ieee;  // MXCSR 0x1F80 on this thread
  const int64_t blocks = plan.row_blocks * plan.col_blocks;
  const int64_t a_panels = plan.a_rows / kMr;
  // Without packed_a: the item's rows for one K piece, and their facts.
  const int64_t block_ld = RowFloats(kKc);
  float* a_block = nullptr;
  ExponentRange* ranges = nullptr;
  if (plan.packed_a == nullptr) {
    a_block = static_cast<float*>(AlignedAlloc(4 * plan.mc_panels * kMr * block_ld));
    ranges = new ExponentRange[plan.mc_panels * kMr];
  }
  for (int64_t u = begin; u < end; ++u) {
    const int64_t batch = u / blocks;
    const int64_t rb = (u % blocks) / plan.col_blocks, cb = u % plan.col_blocks;
    const float* pb =
        plan.packed_b + (plan.b_batches == 1 ? 0 : batch) * plan.b_panels * plan.kp * kNr;
    float* out = p.out + batch * p.m * p.n;
    const int64_t q0 = rb * plan.mc_panels, q1 = Min64(q0 + plan.mc_panels, a_panels);
    const int64_t r0 = cb * plan.nc_panels, r1 = Min64(r0 + plan.nc_panels, plan.b_panels);
    const int64_t row0 = q0 * kMr, row_end = Min64(q1 * kMr, p.m);
    if (a_block != nullptr) {
      for (int64_t i = 0; i < row_end - row0; ++i) ranges[i] = ExponentRange();
    }
    // K pieces outermost, in K order: the order of every output's steps.
    int64_t k0 = 0;
    do {
      const int64_t kc = Min64(kKc, plan.kp - k0);
      const float* a_piece;
      int64_t lda;
      if (a_block != nullptr) {
        // A patch matrix: all the item's rows at once (fewer, longer gathers).
        const int64_t group = p.a_patches != nullptr ? row_end - row0 : 8;
        for (int64_t r = row0; r < row_end; r += group) {
          ConvertARows(p, p.a + batch * p.a_batch_stride, r, Min64(group, row_end - r), k0,
                       kc, a_block + (r - row0) * block_ld, block_ld, ranges + (r - row0));
        }
        for (int64_t r = row_end; r < q1 * kMr; ++r) {  // rows past m: zeros
          std::memset(a_block + (r - row0) * block_ld, 0, sizeof(float) * block_ld);
        }
        a_piece = a_block;
        lda = block_ld;
      } else {
        a_piece = plan.packed_a + (plan.a_batches == 1 ? 0 : batch) * plan.a_rows * plan.lda +
                  row0 * plan.lda + k0;
        lda = plan.lda;
      }
      for (int64_t r = r0; r < r1; ++r) {
        const float* b_piece = pb + (r * plan.kp + k0) * kNr;
        const int cols = static_cast<int>(Min64(kNr, p.n - r * kNr));
        for (int64_t q = q0; q < q1; ++q) {
          const int rows = static_cast<int>(Min64(kMr, p.m - q * kMr));
          Tile(a_piece + (q - q0) * kMr * lda, lda, b_piece, kc, out + q * kMr * p.n + r * kNr,
               p.n, rows, cols, k0 > 0);
        }
      }
      k0 += kc;
    } while (k0 < plan.kp);
    // This item owns its rows (the first column block, where a patch matrix
    // is converted again by every column block): their facts are complete.
    if (a_block != nullptr && cb == 0) {
      for (int64_t i = 0; i < row_end - row0; ++i) {
        plan.a_facts[batch * p.m + row0 + i] = ReducedFacts(ranges[i]);
      }
    }
  }
  std::free(a_block);
  delete[] ranges;
}

inline bool Unproved(OperandFacts a, OperandFacts b) {
  return a.nonfinite || b.nonfinite || a.min_exponent + b.min_exponent < kSafeExponentSum;
}

// out[j0 .. j0 + cols) of one row by the definition: a row of packed a times
// a packed b panel, 16 lanes in step (the portable kernel's loop: the NaN
// rule only for pairs that produced a NaN).
void ExactRowPanel(const float* a_row, const float* panel, int64_t kp, float* out, int cols) {
  float acc[kNr] = {};
  float before[kNr];
  for (int64_t k = 0; k < kp; k += 2) {
    const float* b_odd = panel + (k + 1) * kNr;
    const float* b_even = panel + k * kNr;
    const double x_odd = a_row[k + 1], x_even = a_row[k];
    std::memcpy(before, acc, sizeof(acc));
    int nan = 0;
    for (int j = 0; j < kNr; ++j) {
      const float r = StepFinite(StepFinite(acc[j], x_odd, b_odd[j]), x_even, b_even[j]);
      nan |= r != r;
      acc[j] = r;
    }
    if (nan) {
      const uint32_t xo = FloatBits(a_row[k + 1]) >> 16, xe = FloatBits(a_row[k]) >> 16;
      for (int j = 0; j < kNr; ++j) {
        acc[j] = Step(Step(before[j], xo, FloatBits(b_odd[j]) >> 16), xe,
                      FloatBits(b_even[j]) >> 16);
      }
    }
  }
  std::memcpy(out, acc, sizeof(float) * cols);
}

// One output by the definition (lane j of a packed b panel).
float ExactOutput(const float* a_row, const float* panel, int j, int64_t kp) {
  float acc = 0.0f;
  for (int64_t k = 0; k < kp; k += 2) {
    acc = Step(acc, FloatBits(a_row[k + 1]) >> 16, FloatBits(panel[(k + 1) * kNr + j]) >> 16);
    acc = Step(acc, FloatBits(a_row[k]) >> 16, FloatBits(panel[k * kNr + j]) >> 16);
  }
  return acc;
}

// Recomputes, for rows [begin, end) of all batches (u = batch * m + i), the
// outputs the FMA chain is not proved exact on.
void FixUpRange(void* arg, int64_t begin, int64_t end) {
  const Plan& plan = *static_cast<const Plan*>(arg);
  const Problem& p = *plan.p;
  const ScopedIeeeFloatEnvironment ieee;  // MXCSR 0x1F80 on this thread
  float* row_buffer =
      plan.packed_a == nullptr ? static_cast<float*>(AlignedAlloc(4 * plan.lda)) : nullptr;
  for (int64_t u = begin; u < end; ++u) {
    const int64_t batch = u / p.m, i = u % p.m;
    const int64_t ab = plan.a_batches == 1 ? 0 : batch, bb = plan.b_batches == 1 ? 0 : batch;
    const OperandFacts a = plan.a_facts[ab * p.m + i];
    const bool row_unproved =
        a.nonfinite || a.min_exponent + plan.b_min_exponent[bb] < kSafeExponentSum;
    if (!row_unproved && !plan.b_any_nonfinite[bb]) continue;
    const float* a_row;
    if (row_buffer != nullptr) {  // converted again (rare: rows not proved)
      ExponentRange unused;
      ConvertARows(p, p.a + ab * p.a_batch_stride, i, 1, 0, plan.kp, row_buffer, plan.lda,
                   &unused);
      a_row = row_buffer;
    } else {
      a_row = plan.packed_a + (ab * plan.a_rows + i) * plan.lda;
    }
    const OperandFacts* b_facts = plan.b_facts + bb * plan.b_panels * kNr;
    float* out = p.out + (batch * p.m + i) * p.n;
    for (int64_t q = 0; q < plan.b_panels; ++q) {
      const float* panel = plan.packed_b + (bb * plan.b_panels + q) * plan.kp * kNr;
      const int cols = static_cast<int>(Min64(kNr, p.n - q * kNr));
      int unproved = 0;
      for (int j = 0; j < cols; ++j) unproved += Unproved(a, b_facts[q * kNr + j]);
      if (unproved == 0) continue;
      if (unproved > 2) {
        ExactRowPanel(a_row, panel, plan.kp, out + q * kNr, cols);
      } else {
        for (int j = 0; j < cols; ++j) {
          if (Unproved(a, b_facts[q * kNr + j])) {
            out[q * kNr + j] = ExactOutput(a_row, panel, j, plan.kp);
          }
        }
      }
    }
  }
  std::free(row_buffer);
}

void Gemm(const Problem& p, const ParallelFor& parallel) {
  if (p.batch == 0 || p.m == 0 || p.n == 0) return;
  Plan plan;
  plan.p = &p;
  plan.kp = 2 * CeilDiv(p.k, 2);
  plan.lda = RowFloats(plan.kp);
  const int64_t a_panels = CeilDiv(p.m, kMr);
  plan.a_rows = a_panels * kMr;
  plan.b_panels = CeilDiv(p.n, kNr);
  plan.a_batches = p.a_batch_stride == 0 ? 1 : p.batch;
  plan.b_batches = p.b_batch_stride == 0 ? 1 : p.batch;
  // Work items: at most kMcPanels x kNcPanels tiles, split further (the
  // larger side first) until there are enough items to share among threads.
  plan.mc_panels = Min64(kMcPanels, a_panels);
  plan.nc_panels = Min64(kNcPanels, plan.b_panels);
  for (;;) {
    plan.row_blocks = CeilDiv(a_panels, plan.mc_panels);
    plan.col_blocks = CeilDiv(plan.b_panels, plan.nc_panels);
    if (p.batch * plan.row_blocks * plan.col_blocks >= kMinWorkItems) break;
    // Rows first while there is one column block: items then own their rows
    // (a converted per item, below).
    if (plan.mc_panels > 1 &&
        (plan.col_blocks == 1 || plan.mc_panels * kMr >= plan.nc_panels * kNr)) {
      plan.mc_panels = CeilDiv(plan.mc_panels, 2);
    } else if (plan.nc_panels > 1) {
      plan.nc_panels = CeilDiv(plan.nc_panels, 2);
    } else if (plan.mc_panels > 1) {
      plan.mc_panels = CeilDiv(plan.mc_panels, 2);
    } else {
      break;
    }
  }
  // a is converted once when several work items share its rows; otherwise
  // (tall a, narrow b: the im2col GEMMs) each item converts its own.  So is a
  // patch matrix always (gathered per item: no packed copy of it at all).
  const bool a_per_item =
      (plan.col_blocks == 1 && plan.a_batches == p.batch) || p.a_patches != nullptr;
  plan.packed_a = a_per_item ? nullptr : static_cast<float*>(AllocatePacked(
      4 * plan.a_batches * plan.a_rows * plan.lda));
  plan.a_pack_units = a_per_item ? 0 : plan.a_batches * CeilDiv(p.m, 8);
  plan.packed_b =
      static_cast<float*>(AllocatePacked(4 * plan.b_batches * plan.b_panels * plan.kp * kNr));
  plan.a_facts = static_cast<OperandFacts*>(
      AlignedAlloc(sizeof(OperandFacts) * plan.a_batches * p.m));
  plan.b_facts = static_cast<OperandFacts*>(
      AlignedAlloc(sizeof(OperandFacts) * plan.b_batches * plan.b_panels * kNr));
  plan.b_min_exponent = static_cast<uint8_t*>(AlignedAlloc(plan.b_batches));
  plan.b_any_nonfinite = static_cast<uint8_t*>(AlignedAlloc(plan.b_batches));
  const int64_t pack_units = plan.a_pack_units + plan.b_batches * plan.b_panels;
  const int64_t items = p.batch * plan.row_blocks * plan.col_blocks;
  // Small GEMMs run on the calling thread: handing them to the pool costs
  // more latency than the second core saves.
  const double macs = static_cast<double>(p.batch) * p.m * p.n * plan.kp;
  const bool inline_run = macs < kInlineMacs;
  const int64_t cost = plan.mc_panels * plan.nc_panels * (plan.kp + 2) * kMr * kNr / 16;
  if (inline_run) {
    PackRange(&plan, 0, pack_units);
    ComputeRange(&plan, 0, items);
  } else {
    parallel.run(parallel.context, pack_units, 4 * plan.kp * kNr, PackRange, &plan);
    parallel.run(parallel.context, items, cost, ComputeRange, &plan);
  }
  // The outputs to recompute: any at all?  (Per batch of b: its least
  // exponent and whether it has a nonfinite column; rows are tested against
  // that least exponent, columns one by one in FixUpRange.)
  bool any_unproved = false;
  for (int64_t bb = 0; bb < plan.b_batches; ++bb) {
    const OperandFacts* facts = plan.b_facts + bb * plan.b_panels * kNr;
    uint8_t min_exponent = 255, nonfinite = 0;
    for (int64_t j = 0; j < p.n; ++j) {
      min_exponent = facts[j].min_exponent < min_exponent ? facts[j].min_exponent : min_exponent;
      nonfinite |= facts[j].nonfinite;
    }
    plan.b_min_exponent[bb] = min_exponent;
    plan.b_any_nonfinite[bb] = nonfinite;
    any_unproved |= nonfinite != 0;
    for (int64_t i = 0; i < plan.a_batches * p.m && !any_unproved; ++i) {
      any_unproved = Unproved(plan.a_facts[i], {min_exponent, 0});
    }
  }
  if (any_unproved) {
    if (inline_run) {
      FixUpRange(&plan, 0, p.batch * p.m);
    } else {
      parallel.run(parallel.context, p.batch * p.m, 4 * p.n * plan.kp, FixUpRange, &plan);
    }
  }
  std::free(plan.packed_a);
  std::free(plan.packed_b);
  std::free(plan.a_facts);
  std::free(plan.b_facts);
  std::free(plan.b_min_exponent);
  std::free(plan.b_any_nonfinite);
}

}  // namespace

extern const Kernels kKernels;
const Kernels kKernels = {TF_LOWPREC_BF16_ISA_NAME, &Gemm};

}  // namespace TF_LOWPREC_BF16_ISA
}  // namespace bf16_gemm
}  // namespace tf_lowprec
