// BF16 GEMM with the VDPBF16PS summation order, compiled once per
// instruction set.
//
// bf16_gemm_portable.cc and bf16_gemm_avx512.cc define TF_LOWPREC_BF16_ISA
// (the namespace), TF_LOWPREC_BF16_ISA_NAME and TF_LOWPREC_BF16_NATIVE (1:
// run VDPBF16PS; 0: emulate it in scalar code) and include this file with
// their own compiler flags.  Everything here is in that namespace, so the
// two copies never merge at link time.
//
// Structure (a packed, cache-blocked GEMM in the GotoBLAS style):
//   1. pack: a and b are rounded to BF16 (then DAZ) and laid out as K-pairs,
//      the operand format of VDPBF16PS: 32-bit words, low half even k, high
//      half odd k, zeros past K and past the last row/column.  (A patch
//      matrix, Problem::a_patches, is gathered into a buffer first and then
//      converted as a materialized a: the same words.)  b is packed
//      once, in parallel, into panels of kNr columns, [pairs][kNr] words.
//      A transposed a ([k, m]) is packed once too, pair by pair (whole rows
//      read), into panels of kMr of its columns, [pairs][kMr] words.
//      When a is not transposed (k contiguous), its rows are only converted,
//      [rows][pairs], and the micro-kernel reads kMr rows side by side: no
//      transposition; converted once when several column blocks share them.
//   2. compute: work items of `mc` rows x `nc` columns run the micro-kernel
//      over K pieces of kKcPairs pairs, in K order.  With one column block
//      (tall a), each item converts its rows of a for the piece first (they
//      then stay in L2 and never go through memory).  The micro-kernel keeps a
//      kMr x kNr FP32 tile (registers on the native path); between K pieces
//      the tile is stored to `out` and loaded back, which changes nothing:
//      the accumulator is an FP32 value either way.  Every output element
//      therefore sees exactly the step sequence of bf16_gemm.h, whatever the
//      blocking and the number of threads (no split-K).
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "bf16_gemm.h"
#include "bf16_gemm_step.h"  // ToBf16Daz, Step, StepFinite, ...
#include "conv_gather.h"  // GatherPatchRow (a_patches)
#include "rounding.h"  // FloatBits, BitsFloat

#if TF_LOWPREC_BF16_NATIVE
#include <immintrin.h>
#endif

namespace tf_lowprec {
namespace bf16_gemm {
namespace TF_LOWPREC_BF16_ISA {
namespace {

constexpr int kMr = 12;              // rows of a micro-tile
constexpr int kNv = 2;               // 16-lane vectors per micro-tile row
constexpr int kNr = 16 * kNv;        // columns of a micro-tile
constexpr int64_t kKcPairs = 512;    // K pairs per micro-kernel call (b piece 64 KiB, a block 400 KiB: L2)
constexpr int64_t kMcPanels = 16;    // largest work item: 16 * kMr rows ...
constexpr int64_t kNcPanels = 16;    // ... by 16 * kNr columns
constexpr int64_t kMinWorkItems = 8;  // smaller work items below this many
constexpr double kInlineMacs = 1 << 23;  // fewer multiply-adds: no thread pool (~60 us)
constexpr int64_t kStreamOutBytes = int64_t{8} << 20;  // streaming stores from 8 MiB of output


// Panels of kR lanes: x(lane, k) = src[lane * lane_stride + k * k_stride]
// for lane < lanes, k < k_total; the panel is [pairs][kR] words.
template <int kR>
void PackPanelScalar(const float* src, int64_t lane_stride, int64_t k_stride, int64_t lanes,
                     int64_t k_total, int64_t pairs, uint32_t* out) {
  std::memset(out, 0, sizeof(uint32_t) * pairs * kR);
  if (k_stride == 1) {  // k contiguous: walk each lane along k
    for (int64_t l = 0; l < lanes; ++l) {
      const float* row = src + l * lane_stride;
      for (int64_t k = 0; k < k_total; ++k) {
        const uint32_t h = ToBf16Daz(FloatBits(row[k]));
        out[(k >> 1) * kR + l] |= h << (16 * (k & 1));
      }
    }
  } else {  // lanes contiguous (or both strided): walk k, then the lanes
    for (int64_t k = 0; k < k_total; ++k) {
      const float* col = src + k * k_stride;
      uint32_t* dst = out + (k >> 1) * kR;
      const int shift = 16 * static_cast<int>(k & 1);
      for (int64_t l = 0; l < lanes; ++l) dst[l] |= ToBf16Daz(FloatBits(col[l * lane_stride])) << shift;
    }
  }
}

// One row of a with k contiguous, as `pairs` words (zeros past K).
inline void PackRowScalar(const float* src, int64_t k_total, int64_t pairs, uint32_t* out) {
  for (int64_t p = 0; p < pairs; ++p) {
    const uint32_t lo = ToBf16Daz(FloatBits(src[2 * p]));
    const uint32_t hi = 2 * p + 1 < k_total ? ToBf16Daz(FloatBits(src[2 * p + 1])) : 0u;
    out[p] = lo | (hi << 16);
  }
}

#if TF_LOWPREC_BF16_NATIVE

// ToBf16Daz on 16 lanes (the result in the low half of each 32-bit lane).
inline __m512i ToBf16DazVec(__m512i u) {
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
  __m512i r = _mm512_srli_epi32(
      _mm512_add_epi32(_mm512_add_epi32(u, _mm512_set1_epi32(0x7FFF)), lsb), 16);
  const __mmask16 nan = _mm512_cmpgt_epu32_mask(
      _mm512_and_si512(u, _mm512_set1_epi32(0x7FFFFFFF)), _mm512_set1_epi32(0x7F800000));
  const __m512i quiet = _mm512_or_si512(
      _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(0x8000)),
      _mm512_set1_epi32(0x7FC0));
  r = _mm512_mask_mov_epi32(r, nan, quiet);
  const __mmask16 tiny = _mm512_testn_epi32_mask(r, _mm512_set1_epi32(0x7F80));
  return _mm512_mask_and_epi32(r, tiny, r, _mm512_set1_epi32(0x8000));
}

inline __mmask16 LaneMask(int64_t count) {  // the first min(count, 16) lanes
  return count >= 16 ? __mmask16(0xFFFF) : count <= 0 ? __mmask16(0)
                                                       : __mmask16((1u << count) - 1);
}

template <int kR>
void PackPanel(const float* src, int64_t lane_stride, int64_t k_stride, int64_t lanes,
               int64_t k_total, int64_t pairs, uint32_t* out) {
  const int64_t full_pairs = k_total / 2;  // pairs with both halves inside K
  if (lane_stride == 1) {
    // Lanes contiguous: two rows of 16 lanes make 16 words.
    for (int64_t p = 0; p < pairs; ++p) {
      const float* even = src + 2 * p * k_stride;
      const float* odd = even + k_stride;
      for (int g = 0; g < kR; g += 16) {
        const __mmask16 load = LaneMask(lanes - g);
        const __mmask16 store = LaneMask(kR - g);
        const __m512i lo =
            ToBf16DazVec(_mm512_maskz_loadu_epi32(load, reinterpret_cast<const int*>(even + g)));
        const __m512i hi = p < full_pairs
            ? ToBf16DazVec(_mm512_maskz_loadu_epi32(load, reinterpret_cast<const int*>(odd + g)))
            : _mm512_setzero_si512();
        _mm512_mask_storeu_epi32(out + p * kR + g, store,
                                 _mm512_or_si512(lo, _mm512_slli_epi32(hi, 16)));
      }
    }
    return;
  }
  if (k_stride != 1) {
    PackPanelScalar<kR>(src, lane_stride, k_stride, lanes, k_total, pairs, out);
    return;
  }
  // K contiguous: gather the (even, odd) float pair of 8 lanes as 64 bits.
  for (int g = 0; g < kR; g += 8) {
    const int64_t valid = lanes - g;
    const __mmask8 load = valid >= 8 ? __mmask8(0xFF) : valid <= 0 ? __mmask8(0)
                                                                   : __mmask8((1u << valid) - 1);
    const __mmask8 store = (kR - g) >= 8 ? __mmask8(0xFF) : __mmask8((1u << (kR - g)) - 1);
    const __m512i lane_index = _mm512_mullo_epi64(
        _mm512_add_epi64(_mm512_set1_epi64(g), _mm512_set_epi64(7, 6, 5, 4, 3, 2, 1, 0)),
        _mm512_set1_epi64(lane_stride));
    for (int64_t p = 0; p < full_pairs; ++p) {
      const __m512i index = _mm512_add_epi64(lane_index, _mm512_set1_epi64(2 * p));
      const __m512i pair = _mm512_mask_i64gather_epi64(_mm512_setzero_si512(), load, index,
                                                       src, 4);
      const __m512i r = ToBf16DazVec(pair);  // even in bits 0..15, odd in bits 32..47
      const __m512i word = _mm512_or_si512(r, _mm512_srli_epi64(r, 16));
      _mm256_mask_storeu_epi32(out + p * kR + g, store, _mm512_cvtepi64_epi32(word));
    }
  }
  for (int64_t p = full_pairs; p < pairs; ++p) {  // odd K: the last even element alone
    for (int l = 0; l < kR; ++l) {
      out[p * kR + l] = l < lanes ? ToBf16Daz(FloatBits(src[l * lane_stride + 2 * p])) : 0u;
    }
  }
}

inline void PackRow(const float* src, int64_t k_total, int64_t pairs, uint32_t* out) {
  for (int64_t p = 0; p < pairs; p += 16) {
    // 32 floats -> 32 BF16 halves -> 16 words (element 2j in the low half).
    const int64_t k0 = 2 * p;
    const __m512i lo = ToBf16DazVec(_mm512_maskz_loadu_epi32(
        LaneMask(k_total - k0), reinterpret_cast<const int*>(src + k0)));
    const __m512i hi = ToBf16DazVec(_mm512_maskz_loadu_epi32(
        LaneMask(k_total - k0 - 16), reinterpret_cast<const int*>(src + k0 + 16)));
    const __m512i words = _mm512_inserti64x4(
        _mm512_castsi256_si512(_mm512_cvtepi32_epi16(lo)), _mm512_cvtepi32_epi16(hi), 1);
    _mm512_mask_storeu_epi32(out + p, LaneMask(pairs - p), words);
  }
}

// out[rows x cols] (+)= the pairs [0, pairs) of a kMr x kNr tile.  a's word
// for (row i, pair p) is at ap[i * a_row_step + p * kAPairStep].
template <int64_t kAPairStep>
void Tile(const uint32_t* ap, int64_t a_row_step, const uint32_t* bp, int64_t pairs, float* c,
          int64_t ldc, int rows, int cols, bool load_c, bool stream_out) {
  __m512 acc[kMr][kNv];
  __mmask16 col_mask[kNv];
  for (int v = 0; v < kNv; ++v) col_mask[v] = LaneMask(cols - 16 * v);
  for (int i = 0; i < kMr; ++i) {
    for (int v = 0; v < kNv; ++v) {
      acc[i][v] = load_c && i < rows ? _mm512_maskz_loadu_ps(col_mask[v], c + i * ldc + 16 * v)
                                     : _mm512_setzero_ps();
    }
  }
  for (int64_t p = 0; p < pairs; ++p) {
    __m512bh b[kNv];
    for (int v = 0; v < kNv; ++v) {
      b[v] = (__m512bh)_mm512_load_si512(bp + p * kNr + 16 * v);
    }
    const uint32_t* a = ap + p * kAPairStep;
    for (int i = 0; i < kMr; ++i) {
      // a is the instruction's first source: its NaN wins over b's.
      const __m512bh x = (__m512bh)_mm512_set1_epi32(static_cast<int>(a[i * a_row_step]));
      for (int v = 0; v < kNv; ++v) acc[i][v] = _mm512_dpbf16_ps(acc[i][v], x, b[v]);
    }
  }
  // The last K piece of a large output, in whole aligned cache lines:
  // streaming stores (no read of the old line: when K is small the GEMM is
  // bound by writing `out`).
  const bool stream = stream_out && cols == kNr &&
                      ((reinterpret_cast<uintptr_t>(c) | (ldc * 4)) % 64) == 0;
  if (stream) {
    for (int i = 0; i < rows; ++i) {
      for (int v = 0; v < kNv; ++v) _mm512_stream_ps(c + i * ldc + 16 * v, acc[i][v]);
    }
    return;
  }
  for (int i = 0; i < rows; ++i) {
    for (int v = 0; v < kNv; ++v) _mm512_mask_storeu_ps(c + i * ldc + 16 * v, col_mask[v], acc[i][v]);
  }
}

#else  // !TF_LOWPREC_BF16_NATIVE

template <int kR>
void PackPanel(const float* src, int64_t lane_stride, int64_t k_stride, int64_t lanes,
               int64_t k_total, int64_t pairs, uint32_t* out) {
  PackPanelScalar<kR>(src, lane_stride, k_stride, lanes, k_total, pairs, out);
}

inline void PackRow(const float* src, int64_t k_total, int64_t pairs, uint32_t* out) {
  PackRowScalar(src, k_total, pairs, out);
}

template <int64_t kAPairStep>
void Tile(const uint32_t* ap, int64_t a_row_step, const uint32_t* bp, int64_t pairs, float* c,
          int64_t ldc, int rows, int cols, bool load_c, bool /*stream_out*/) {
  float acc[kMr][kNr];
  for (int i = 0; i < kMr; ++i) {
    for (int j = 0; j < kNr; ++j) acc[i][j] = load_c && i < rows && j < cols ? c[i * ldc + j] : 0.0f;
  }
  double b_odd[kNr], b_even[kNr];
  float before[kNr];
  for (int64_t p = 0; p < pairs; ++p) {
    const uint32_t* a = ap + p * kAPairStep;
    const uint32_t* b = bp + p * kNr;
    for (int j = 0; j < kNr; ++j) {
      b_odd[j] = BitsFloat(b[j] & 0xFFFF0000u);
      b_even[j] = BitsFloat(b[j] << 16);
    }
    for (int i = 0; i < rows; ++i) {
      const uint32_t word = a[i * a_row_step];
      const double x_odd = BitsFloat(word & 0xFFFF0000u), x_even = BitsFloat(word << 16);
      float* row = acc[i];
      std::memcpy(before, row, sizeof(before));
      int nan = 0;
      for (int j = 0; j < kNr; ++j) {
        const float r = StepFinite(StepFinite(row[j], x_odd, b_odd[j]), x_even, b_even[j]);
        nan |= r != r;
        row[j] = r;
      }
      if (nan) {  // rare: redo the row with the NaN rule
        for (int j = 0; j < kNr; ++j) {
          row[j] = Step(Step(before[j], word >> 16, b[j] >> 16), word & 0xFFFFu, b[j] & 0xFFFFu);
        }
      }
    }
  }
  for (int i = 0; i < rows; ++i) {
    for (int j = 0; j < cols; ++j) c[i * ldc + j] = acc[i][j];
  }
}

#endif  // TF_LOWPREC_BF16_NATIVE

// Words per row of an a block in the row layout: at least `pairs`, and an
// odd number of cache lines, so that the kMr rows the micro-kernel reads side
// by side never crowd into one L1 set.
inline int64_t RowWords(int64_t pairs) {
  int64_t words = CeilDiv(pairs, 16) * 16;
  if ((words / 16) % 2 == 0) words += 16;
  return words;
}

// Elements [k0, k0 + k_len) (k0 even) of row `row` of a patch matrix with
// an even channel count, as `pairs` words converted straight from the input
// (conv_gather.h's ForEachPatchRun, without GatherPatchColumns' buffer):
// every run of contiguous channels then starts on a pair boundary and has an
// even length, so PackRow gives each run the words it gives the gathered row
// there.  The CNN's forward and d(x) GEMMs (32 and 64 channels) spent about a
// third of their packing time copying runs into the buffer.
void PackEvenChannelPatchRow(const ConvGather& g, int64_t row, int64_t k0, int64_t k_len,
                             int64_t pairs, uint32_t* out) {
  ForEachPatchRun(g, PixelOfRow(g, row), ColumnOf(g, k0), k_len,
                  [&](int64_t done, const float* src, int64_t len) {
                    const int64_t words = CeilDiv(len, 2);
                    if (src != nullptr) {
                      PackRow(src, len, words, out + done / 2);
                    } else {
                      std::memset(out + done / 2, 0, sizeof(uint32_t) * words);  // +0 padding
                    }
                  });
  const int64_t written = CeilDiv(k_len, 2);
  if (pairs > written) std::memset(out + written, 0, sizeof(uint32_t) * (pairs - written));
}

// Elements [k0, k0 + k_len) of row `row` of a (not transposed) as `pairs`
// words.  A patch matrix (p.a_patches) with an even channel count is converted
// straight from the input; otherwise it is gathered first, in runs of an even
// length, into a buffer that PackRow converts exactly as it converts the
// materialized matrix: the same words.
void PackARow(const Problem& p, const float* a, int64_t row, int64_t k0, int64_t k_len,
              int64_t pairs, uint32_t* out) {
  if (p.a_patches == nullptr) {
    PackRow(a + row * p.k + k0, k_len, pairs, out);
    return;
  }
  if (p.a_patches->channels % 2 == 0 && k0 % 2 == 0) {
    PackEvenChannelPatchRow(*p.a_patches, row, k0, k_len, pairs, out);
    return;
  }
  constexpr int64_t kRun = 2 * kKcPairs;  // one K piece in one run
  alignas(64) float run[kRun];
  for (int64_t r = 0; r < k_len; r += kRun) {
    const int64_t n = Min64(kRun, k_len - r);
    GatherPatchRow(*p.a_patches, row, k0 + r, n, run);
    PackRow(run, n, Min64(CeilDiv(n, 2), pairs - r / 2), out + r / 2);
  }
}

struct Plan {
  const Problem* p;
  int64_t pairs;
  int64_t a_panels, b_panels;        // per batch
  int64_t a_batches, b_batches;      // 1 when broadcast
  // a packed once for all work items (else each item converts its rows per
  // K piece): when transposed ([k, m]: rows of a are lanes of the panels),
  // pair by pair, reading whole rows, [a_batches][a_panels][pairs][kMr];
  // when not transposed but needed by several column blocks, as rows,
  // [a_batches][a_panels * kMr][a_row_words].
  uint32_t* packed_a;
  int64_t a_row_words;
  int64_t a_pack_units, a_pairs_per_unit;
  uint32_t* packed_b;                // [b_batches][b_panels][pairs][kNr]
  int64_t mc_panels, nc_panels;      // work item size, in panels
  int64_t row_blocks, col_blocks;
  bool stream_out;                   // out is written with streaming stores
};

void PackRange(void* arg, int64_t begin, int64_t end) {
  const Plan& plan = *static_cast<const Plan*>(arg);
  const Problem& p = *plan.p;
  for (int64_t u = begin; u < end; ++u) {
    if (u < plan.a_pack_units && !p.transpose_a) {
      // a as rows: one panel of kMr rows of one batch.
      const int64_t batch = u / plan.a_panels, q = u % plan.a_panels;
      const float* a = p.a + batch * p.a_batch_stride;
      uint32_t* out = plan.packed_a + (batch * plan.a_panels + q) * kMr * plan.a_row_words;
      for (int64_t i = 0; i < kMr; ++i) {
        if (q * kMr + i < p.m) {
          PackARow(p, a, q * kMr + i, 0, p.k, plan.pairs, out + i * plan.a_row_words);
        } else {
          std::memset(out + i * plan.a_row_words, 0, sizeof(uint32_t) * plan.pairs);
        }
      }
      continue;
    }
    if (u < plan.a_pack_units) {
      // Transposed a: pairs [p0, p1) of one batch, every panel.
      const int64_t per_batch = CeilDiv(plan.pairs, plan.a_pairs_per_unit);
      const int64_t batch = u / per_batch;
      const int64_t p0 = (u % per_batch) * plan.a_pairs_per_unit;
      const int64_t p1 = Min64(p0 + plan.a_pairs_per_unit, plan.pairs);
      const float* a = p.a + batch * p.a_batch_stride;
      uint32_t* out = plan.packed_a + batch * plan.a_panels * plan.pairs * kMr;
      // A patch matrix: the pair's two rows gathered whole, then packed as
      // the two rows of a materialized [k, m] a are.
      float* gathered = p.a_patches == nullptr ? nullptr
                                               : static_cast<float*>(AlignedAlloc(8 * p.m));
      PatchPixel px = gathered != nullptr ? PixelOfRow(*p.a_patches, 2 * p0) : PatchPixel();
      for (int64_t pp = p0; pp < p1; ++pp) {
        const float* rows = a + 2 * pp * p.m;
        if (gathered != nullptr) {
          GatherPatchColumns(*p.a_patches, px, PatchColumn(), p.m, gathered);
          Advance(*p.a_patches, &px);
          if (2 * pp + 1 < p.k) {
            GatherPatchColumns(*p.a_patches, px, PatchColumn(), p.m, gathered + p.m);
            Advance(*p.a_patches, &px);
          }
          rows = gathered;
        }
        for (int64_t q = 0; q < plan.a_panels; ++q) {
          PackPanel<kMr>(rows + q * kMr, 1, p.m, Min64(kMr, p.m - q * kMr),
                         Min64(2, p.k - 2 * pp), 1, out + (q * plan.pairs + pp) * kMr);
        }
      }
      std::free(gathered);
      continue;
    }
    const int64_t v = u - plan.a_pack_units;
    const int64_t batch = v / plan.b_panels, q = v % plan.b_panels;
    const float* b = p.b + batch * p.b_batch_stride;
    // b is [k, n], or [n, k] when transposed; lanes are its columns.
    const float* src = p.transpose_b ? b + q * kNr * p.k : b + q * kNr;
    PackPanel<kNr>(src, p.transpose_b ? p.k : 1, p.transpose_b ? 1 : p.n,
                   Min64(kNr, p.n - q * kNr), p.k, plan.pairs,
                   plan.packed_b + v * plan.pairs * kNr);
  }
}

// Converts pairs [pc, pc + kc) of a's row panels [q0, q1) into `block`, for
// a not transposed (k contiguous): its rows as they are, [rows][RowWords(kc)].
void PackABlock(const Problem& p, const float* a, int64_t q0, int64_t q1, int64_t pc,
                int64_t kc, uint32_t* block) {
  const int64_t k0 = 2 * pc, k_len = Min64(p.k - k0, 2 * kc);
  const int64_t row_words = RowWords(kc);
  for (int64_t q = q0; q < q1; ++q) {
    const int64_t rows = Min64(kMr, p.m - q * kMr);
    uint32_t* out = block + (q - q0) * kMr * row_words;
    for (int64_t i = 0; i < kMr; ++i) {
      if (i < rows) {
        PackARow(p, a, q * kMr + i, k0, k_len, kc, out + i * row_words);
      } else {
        std::memset(out + i * row_words, 0, sizeof(uint32_t) * kc);
      }
    }
  }
}

// Converts pairs [pc, pc + kc) of the transposed patch matrix (p.a_patches,
// K running over the pixels) for the panels [q0, q1) of its columns into
// `block`, [panel][kc][kMr] words: per pixel pair, the panels' columns of
// the two patch rows gathered into `rows` (2 * (q1 - q0) * kMr floats),
// then packed exactly as PackRange packs them for a global packed a.  A
// work item packing its own piece keeps it in L2: the CNN's d(filters) GEMM
// (K = 36864 pixels) otherwise wrote a 21 MiB packed a and read it back.
#if TF_LOWPREC_BF16_NATIVE
// Where patch row `px` reads its columns from `col` on: the input's address
// of each run of contiguous channels (nullptr: padding), src[r] for the r-th
// run (the runs' lengths follow from the channel count).  ForEachPatchRun,
// as GatherPatchColumns gathers, without the copying.
inline void PatchRunSources(const ConvGather& g, const PatchPixel& px, PatchColumn col,
                            int64_t n, const float** src) {
  int64_t run = 0;
  ForEachPatchRun(g, px, col, n, [&](int64_t, const float* source, int64_t) {
    src[run++] = source;
  });
}

// PackATransposedPatchBlock for the native tier: the pair's two patch rows
// converted straight from the input, 16 columns at a time (even pixel in the
// low halves, odd in the high: the words PackPanel makes), into `words`
// (one per column), then copied to the panels; no float copy of the rows.
void PackATransposedPatchBlockDirect(const Problem& p, int64_t q0, int64_t q1, int64_t pc,
                                     int64_t kc, uint32_t* words, const float** sources,
                                     uint32_t* block) {
  const ConvGather& g = *p.a_patches;
  const int64_t col0 = q0 * kMr, cols = Min64(q1 * kMr, p.m) - col0;
  const PatchColumn first_column = ColumnOf(g, col0);
  const int64_t runs = CeilDiv(first_column.c + cols, g.channels);
  const float** even_src = sources;
  const float** odd_src = sources + runs;
  PatchPixel px = PixelOfRow(g, 2 * pc);
  for (int64_t pp = 0; pp < kc; ++pp) {
    const bool has_odd = 2 * (pc + pp) + 1 < p.k;
    PatchRunSources(g, px, first_column, cols, even_src);
    Advance(g, &px);
    if (has_odd) {
      PatchRunSources(g, px, first_column, cols, odd_src);
      Advance(g, &px);
    }
    int64_t c0 = first_column.c;
    for (int64_t done = 0, run = 0; done < cols; ++run) {
      const int64_t len = Min64(g.channels - c0, cols - done);
      const float* e = even_src[run];
      const float* o = has_odd ? odd_src[run] : nullptr;
      for (int64_t v = 0; v < len; v += 16) {
        const __mmask16 m = LaneMask(len - v);
        const __m512i lo = e == nullptr ? _mm512_setzero_si512()
            : ToBf16DazVec(_mm512_maskz_loadu_epi32(m, reinterpret_cast<const int*>(e + v)));
        const __m512i hi = o == nullptr ? _mm512_setzero_si512()
            : ToBf16DazVec(_mm512_maskz_loadu_epi32(m, reinterpret_cast<const int*>(o + v)));
        _mm512_mask_storeu_epi32(words + done + v, m,
                                 _mm512_or_si512(lo, _mm512_slli_epi32(hi, 16)));
      }
      done += len;
      c0 = 0;
    }
    for (int64_t q = q0; q < q1; ++q) {
      const int64_t lanes = Min64(kMr, p.m - q * kMr);
      const __mmask16 m = LaneMask(lanes);
      const __m512i w = _mm512_maskz_loadu_epi32(m, words + (q - q0) * kMr);
      _mm512_mask_storeu_epi32(block + ((q - q0) * kc + pp) * kMr, LaneMask(kMr), w);
    }
  }
}
#endif  // TF_LOWPREC_BF16_NATIVE

void PackATransposedPatchBlock(const Problem& p, int64_t q0, int64_t q1, int64_t pc,
                               int64_t kc, float* rows, uint32_t* block) {
  const ConvGather& g = *p.a_patches;
  const int64_t col0 = q0 * kMr, cols = Min64(q1 * kMr, p.m) - col0;
#if TF_LOWPREC_BF16_NATIVE
  {
    // rows (2 * cols floats) holds the words, then the run sources.
    const int64_t runs = CeilDiv(ColumnOf(g, col0).c + cols, g.channels);
    uint32_t* words = reinterpret_cast<uint32_t*>(rows);
    const float** sources = static_cast<const float**>(
        AlignedAlloc(static_cast<int64_t>(sizeof(const float*)) * 2 * runs));
    PackATransposedPatchBlockDirect(p, q0, q1, pc, kc, words, sources, block);
    std::free(sources);
    return;
  }
#endif
  const PatchColumn first_column = ColumnOf(g, col0);
  PatchPixel px = PixelOfRow(g, 2 * pc);
  for (int64_t pp = 0; pp < kc; ++pp) {
    const int64_t k_here = Min64(2, p.k - 2 * (pc + pp));
    GatherPatchColumns(g, px, first_column, cols, rows);
    Advance(g, &px);
    if (k_here == 2) {
      GatherPatchColumns(g, px, first_column, cols, rows + cols);
      Advance(g, &px);
    }
    for (int64_t q = q0; q < q1; ++q) {
      PackPanel<kMr>(rows + (q - q0) * kMr, 1, cols, Min64(kMr, p.m - q * kMr), k_here, 1,
                     block + ((q - q0) * kc + pp) * kMr);
    }
  }
}

void ComputeRange(void* arg, int64_t begin, int64_t end) {
  const Plan& plan = *static_cast<const Plan*>(arg);
  const Problem& p = *plan.p;
  const int64_t blocks = plan.row_blocks * plan.col_blocks;
  // One a block (mc rows x one K piece), packed just before use: it stays in
  // L2 while the column panels of the work item pass over it.
  uint32_t* a_block = plan.packed_a != nullptr ? nullptr : static_cast<uint32_t*>(
      AlignedAlloc(4 * plan.mc_panels * kMr * RowWords(kKcPairs)));
  const bool transposed_block = plan.packed_a == nullptr && p.transpose_a;
  float* patch_rows = transposed_block
                          ? static_cast<float*>(AlignedAlloc(8 * plan.mc_panels * kMr))
                          : nullptr;
  for (int64_t u = begin; u < end; ++u) {
    const int64_t batch = u / blocks;
    const int64_t rb = (u % blocks) / plan.col_blocks, cb = u % plan.col_blocks;
    const float* a = p.a + batch * p.a_batch_stride;
    const int64_t a_batch_words = p.transpose_a ? plan.a_panels * plan.pairs * kMr
                                                : plan.a_panels * kMr * plan.a_row_words;
    const uint32_t* pa = plan.packed_a == nullptr
                             ? nullptr
                             : plan.packed_a + (plan.a_batches == 1 ? 0 : batch) * a_batch_words;
    const uint32_t* pb =
        plan.packed_b + (plan.b_batches == 1 ? 0 : batch) * plan.b_panels * plan.pairs * kNr;
    float* out = p.out + batch * p.m * p.n;
    const int64_t q0 = rb * plan.mc_panels, q1 = Min64(q0 + plan.mc_panels, plan.a_panels);
    const int64_t r0 = cb * plan.nc_panels, r1 = Min64(r0 + plan.nc_panels, plan.b_panels);
    // K pieces outermost, in K order: the order of every output's steps.
    int64_t pc = 0;
    do {
      const int64_t kc = Min64(kKcPairs, plan.pairs - pc);
      if (kc > 0 && transposed_block) {
        PackATransposedPatchBlock(p, q0, q1, pc, kc, patch_rows, a_block);
      } else if (kc > 0 && pa == nullptr) {
        PackABlock(p, a, q0, q1, pc, kc, a_block);
      }
      const int64_t row_words = RowWords(kc);
      const bool last = pc + kc >= plan.pairs;
      const bool stream = last && plan.stream_out;
      for (int64_t r = r0; r < r1; ++r) {
        const uint32_t* b_piece = pb + (r * plan.pairs + pc) * kNr;
        const int cols = static_cast<int>(Min64(kNr, p.n - r * kNr));
        for (int64_t q = q0; q < q1; ++q) {
          const int rows = static_cast<int>(Min64(kMr, p.m - q * kMr));
          float* c = out + q * kMr * p.n + r * kNr;
          if (transposed_block) {
            Tile<kMr>(a_block + ((q - q0) * kc) * kMr, 1, b_piece, kc, c, p.n, rows, cols,
                      pc > 0, stream);
          } else if (pa == nullptr) {
            Tile<1>(a_block + (q - q0) * kMr * row_words, row_words, b_piece, kc, c, p.n, rows,
                    cols, pc > 0, stream);
          } else if (!p.transpose_a) {
            Tile<1>(pa + q * kMr * plan.a_row_words + pc, plan.a_row_words, b_piece, kc, c, p.n,
                    rows, cols, pc > 0, stream);
          } else {
            Tile<kMr>(pa + (q * plan.pairs + pc) * kMr, 1, b_piece, kc, c, p.n, rows, cols,
                      pc > 0, stream);
          }
        }
      }
      pc += kc;
    } while (pc < plan.pairs);
  }
  std::free(a_block);
  std::free(patch_rows);
#if TF_LOWPREC_BF16_NATIVE
  _mm_sfence();  // streaming stores visible before the pool reports the work done
#endif
}

void Gemm(const Problem& p, const ParallelFor& parallel) {
  if (p.batch == 0 || p.m == 0 || p.n == 0) return;
  Plan plan;
  plan.p = &p;
  plan.pairs = CeilDiv(p.k, 2);
  plan.a_panels = CeilDiv(p.m, kMr);
  plan.b_panels = CeilDiv(p.n, kNr);
  // Outputs beyond a few MiB would not stay in cache for their consumer
  // anyway; smaller ones are written through the cache.
  plan.stream_out = p.batch * p.m * p.n * 4 >= kStreamOutBytes;
  plan.a_batches = p.a_batch_stride == 0 ? 1 : p.batch;
  plan.b_batches = p.b_batch_stride == 0 ? 1 : p.batch;
  plan.packed_b = static_cast<uint32_t*>(
      AllocatePacked(4 * plan.b_batches * plan.b_panels * plan.pairs * kNr));
  // Work items: at most kMcPanels x kNcPanels panels, split further (the
  // larger side first) until there are enough items to share among threads.
  plan.mc_panels = Min64(kMcPanels, plan.a_panels);
  plan.nc_panels = Min64(kNcPanels, plan.b_panels);
  // A transposed patch matrix (a convolution's d(filters)) with several row
  // panels: every work item gathers and packs its own rows per K piece
  // (PackATransposedPatchBlock), so the items split the rows only (each
  // column block would gather the same patches again).
  const bool transposed_patch_blocks =
      p.transpose_a && p.a_patches != nullptr && plan.a_panels >= 2;
  if (transposed_patch_blocks) {
    plan.mc_panels = Min64(kMcPanels, CeilDiv(plan.a_panels, Min64(kMinWorkItems,
                                                                    plan.a_panels)));
  }
  for (;;) {
    if (transposed_patch_blocks) {
      plan.row_blocks = CeilDiv(plan.a_panels, plan.mc_panels);
      plan.col_blocks = CeilDiv(plan.b_panels, plan.nc_panels);
      break;
    }
    plan.row_blocks = CeilDiv(plan.a_panels, plan.mc_panels);
    plan.col_blocks = CeilDiv(plan.b_panels, plan.nc_panels);
    if (p.batch * plan.row_blocks * plan.col_blocks >= kMinWorkItems) break;
    if (plan.mc_panels * kMr >= plan.nc_panels * kNr && plan.mc_panels > 1) {
      plan.mc_panels = CeilDiv(plan.mc_panels, 2);
    } else if (plan.nc_panels > 1) {
      plan.nc_panels = CeilDiv(plan.nc_panels, 2);
    } else if (plan.mc_panels > 1) {
      plan.mc_panels = CeilDiv(plan.mc_panels, 2);
    } else {
      break;
    }
  }
  plan.packed_a = nullptr;
  plan.a_row_words = RowWords(plan.pairs);
  plan.a_pack_units = 0;
  plan.a_pairs_per_unit = 64;
  if (transposed_patch_blocks) {
    // (packed per work item)
  } else if (p.transpose_a) {
    plan.packed_a = static_cast<uint32_t*>(
        AllocatePacked(4 * plan.a_batches * plan.a_panels * plan.pairs * kMr));
    plan.a_pack_units = plan.a_batches * CeilDiv(plan.pairs, plan.a_pairs_per_unit);
  } else if (plan.col_blocks > 1) {  // rows shared by several items: convert once
    plan.packed_a = static_cast<uint32_t*>(
        AllocatePacked(4 * plan.a_batches * plan.a_panels * kMr * plan.a_row_words));
    plan.a_pack_units = plan.a_batches * plan.a_panels;
  }
  const int64_t pack_units = plan.pairs > 0 ? plan.a_pack_units + plan.b_batches * plan.b_panels : 0;
  const int64_t items = p.batch * plan.row_blocks * plan.col_blocks;
  // Small GEMMs run on the calling thread: handing them to the pool costs
  // more latency than the second core saves.
  const double macs = static_cast<double>(p.batch) * p.m * p.n * (2 * plan.pairs);
  if (macs < kInlineMacs) {
    PackRange(&plan, 0, pack_units);
    ComputeRange(&plan, 0, items);
  } else {
    // a's units first (panels of rows, or ranges of pairs), then b's panels.
    if (pack_units > 0) {
      parallel.run(parallel.context, pack_units, 8 * plan.pairs * kNr, PackRange, &plan);
    }
    const int64_t cost = plan.mc_panels * plan.nc_panels * (plan.pairs + 1) * kMr * kNr / 8;
    parallel.run(parallel.context, items, cost, ComputeRange, &plan);
  }
  std::free(plan.packed_a);
  std::free(plan.packed_b);
}

}  // namespace

extern const Kernels kKernels;
const Kernels kKernels = {TF_LOWPREC_BF16_ISA_NAME, &Gemm};

}  // namespace TF_LOWPREC_BF16_ISA
}  // namespace bf16_gemm
}  // namespace tf_lowprec
