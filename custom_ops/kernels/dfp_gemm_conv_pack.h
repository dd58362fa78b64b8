// INT16 DFP GEMM: packing a convolution's patch matrix (ConvGather,
// conv_gather.h) straight from its NHWC / NDHWC input: the implicit-GEMM
// convolution.
// No im2col matrix is written: each panel's values are gathered into a
// small buffer (zeros for padding and for an input dilation's holes) and
// converted with dfp_gemm_pack.h's own conversion, so the mantissas, pair
// words, NaN lanes and invalid counts are those of PackPanels on the
// materialized patch matrix, bit for bit.  One exponent block (the
// convolution ops quantize every tensor with one shared exponent).
// Part of dfp_gemm_impl.h (compiled once per tier, inside the tier's
// namespace TF_LOWPREC_DFP_ISA; see there).
#ifndef TF_LOWPREC_KERNELS_DFP_GEMM_CONV_PACK_H_
#define TF_LOWPREC_KERNELS_DFP_GEMM_CONV_PACK_H_

#include <cstdint>
#include <cstring>

#include "conv_gather.h"  // ConvGather, GatherPatchRow
#include "dfp_gemm.h"
#include "dfp_gemm_layout.h"
#include "dfp_gemm_pack.h"

namespace tf_lowprec {
namespace dfp_gemm {
namespace TF_LOWPREC_DFP_ISA {
namespace {

// Mantissas of n contiguous values with one exponent (ConvertContiguous
// where the tier has it, else ConvertRun: the same results).
inline int32_t ConvertValues(const float* x, int64_t n, const float* s1, const float* s2,
                             const float* bound, bool round, int16_t* out, int32_t* nonfinite) {
#if TF_LOWPREC_DFP_VNNI || TF_LOWPREC_DFP_AVX2
  return ConvertContiguous(x, n, s1, s2, bound, 0, round, out, nonfinite);
#else
  return ConvertRun(x, 1, n, s1, s2, bound, 0, round, out, nonfinite);
#endif
}

inline bool NonFinite(float v) {
  uint32_t bits;
  std::memcpy(&bits, &v, sizeof bits);
  return (bits & 0x7F800000u) == 0x7F800000u;
}

// Pair words of n mantissas v (n odd: the last pair's high half is zero)
// into o[q * kWidth], q = 0 .. ceil(n / 2) - 1: an int16 run read as int32
// words is exactly the pairs (little-endian), one load and one store a word.
template <int kWidth>
inline void ScatterPairs(const int16_t* v, int64_t n, int32_t* o) {
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
  for (int64_t q = 0; q < n / 2; ++q) std::memcpy(o + q * kWidth, v + 2 * q, 4);
#else
  for (int64_t q = 0; q < n / 2; ++q) o[q * kWidth] = PairWord(v[2 * q], v[2 * q + 1]);
#endif
  if (n % 2 != 0) o[(n / 2) * kWidth] = PairWord(v[n - 1], 0);  // zero padding
}

// PackPanel<kWidth> of rows [lane0, lane0 + lanes) of the patch matrix g
// (the operand a of a forward convolution: lanes are output pixels, K is
// (t, i, j, c)).  src gives the exponent and the rounding only.
template <int kWidth>
int64_t PackPatchRows(const ConvGather& g, const OperandView& src, const BlockLayout& layout,
                      int64_t lane0, int64_t lanes, int32_t* panel, uint8_t* nonfinite) {
  if (lanes % kWidth != 0) {
    std::memset(panel, 0, sizeof(int32_t) * layout.total_pairs * kWidth);
  }
  if (layout.blocks == 0) return 0;
  int32_t scale_invalid = 0;
  float s1, s2, bound;
  ScaleFactors(src.exponents[0], &s1, &s2, &bound, &scale_invalid);
  const int64_t k = layout.k;
  int64_t invalid = 0;
  constexpr int64_t kRun = 1024;  // values converted at a time (even)
  alignas(64) int16_t run[kRun + 2];
  if (lanes * k <= kRun) {
    // Short K (a CNN's first layers: K = 9 .. 300, runs of 1 .. 3
    // channels): all lanes gathered, then converted in one run.
    alignas(64) float values[kRun];
    for (int64_t l = 0; l < lanes; ++l) GatherPatchRow(g, lane0 + l, 0, k, values + l * k);
    int32_t nf = 0;
    invalid += ConvertValues(values, lanes * k, &s1, &s2, &bound, src.round, run, &nf);
    for (int64_t l = 0; l < lanes; ++l) {
      ScatterPairs<kWidth>(run + l * k, k, panel + l);
      if (nf) {  // rare: find which lanes
        for (int64_t i = 0; i < k; ++i) nonfinite[l] |= NonFinite(values[l * k + i]) ? 1 : 0;
      }
    }
    return invalid + scale_invalid;
  }
  // Long K: each run of contiguous channels converted straight from x into
  // the lane's mantissas (no float copy of the patch row), padding as zero
  // mantissas.  Runs shorter than a vector take the scalar conversion (the
  // same values).
  PatchPixel px = PixelOfRow(g, lane0);
  for (int64_t l = 0; l < lanes; ++l, Advance(g, &px)) {
    int32_t nf = 0;
    for (int64_t r0 = 0; r0 < k; r0 += kRun) {
      const int64_t n = Min64(kRun, k - r0);
      ForEachPatchRun(g, px, ColumnOf(g, r0), n,
                      [&](int64_t offset, const float* x, int64_t len) {
                        if (x == nullptr) {
                          std::memset(run + offset, 0, sizeof(int16_t) * len);
                        } else if (len < 8) {
                          invalid += ConvertRun(x, 1, len, &s1, &s2, &bound, 0, src.round,
                                                run + offset, &nf);
                        } else {
                          invalid += ConvertValues(x, len, &s1, &s2, &bound, src.round,
                                                   run + offset, &nf);
                        }
                      });
      ScatterPairs<kWidth>(run, n, panel + (r0 / 2) * kWidth + l);
    }
    nonfinite[l] |= nf ? 1 : 0;
  }
  return invalid + scale_invalid;
}

// PackPanels<kWidth, kGroup> of columns [lane0, lane0 + lanes) of the patch
// matrix g (the operand b of a filter gradient: lanes are (t, i, j, c), K the
// output pixels): two patch rows gathered, converted and interleaved into
// pair words per K pair.
template <int kWidth, int kGroup>
int64_t PackPatchColumns(const ConvGather& g, const OperandView& src, const BlockLayout& layout,
                         int64_t lane0, int64_t lanes, int32_t* panel, int64_t panel_words,
                         uint8_t* nonfinite) {
  constexpr int kLanes = kWidth * kGroup;
  const int64_t panels = CeilDiv(lanes, kWidth);
  if (lanes % kWidth != 0) {
    std::memset(panel + (panels - 1) * panel_words, 0,
                sizeof(int32_t) * layout.total_pairs * kWidth);
  }
  if (layout.blocks == 0) return 0;
  int32_t scale_invalid = 0;
  float s1, s2, bound;
  ScaleFactors(src.exponents[0], &s1, &s2, &bound, &scale_invalid);
  const int64_t k = layout.k;
  int64_t invalid = 0;
  alignas(64) float f0[kLanes], f1[kLanes];
  alignas(64) int16_t lo[kLanes], hi[kLanes];
  for (int64_t l = 0; l < kLanes; ++l) hi[l] = 0;
  for (int64_t kk = 0; kk < k; kk += 2) {
    int32_t nf = 0;
    GatherPatchRow(g, kk, lane0, lanes, f0);
    invalid += ConvertValues(f0, lanes, &s1, &s2, &bound, src.round, lo, &nf);
    const bool second = kk + 1 < k;
    if (second) {
      GatherPatchRow(g, kk + 1, lane0, lanes, f1);
      invalid += ConvertValues(f1, lanes, &s1, &s2, &bound, src.round, hi, &nf);
    } else {
      for (int64_t l = 0; l < lanes; ++l) hi[l] = 0;  // odd K: zero high halves
    }
    for (int64_t p = 0; p < panels; ++p) {
      int32_t* o = panel + p * panel_words + (kk / 2) * kWidth;
      const int64_t plane = Min64(kWidth, lanes - p * kWidth);
      for (int64_t l = 0; l < plane; ++l) o[l] = PairWord(lo[p * kWidth + l], hi[p * kWidth + l]);
    }
    if (nf) {  // rare: find which lanes
      for (int64_t l = 0; l < lanes; ++l) {
        nonfinite[l] |= (NonFinite(f0[l]) || (second && NonFinite(f1[l]))) ? 1 : 0;
      }
    }
  }
  return invalid + scale_invalid;
}

}  // namespace
}  // namespace TF_LOWPREC_DFP_ISA
}  // namespace dfp_gemm
}  // namespace tf_lowprec

#endif  // TF_LOWPREC_KERNELS_DFP_GEMM_CONV_PACK_H_
