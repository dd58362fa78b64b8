// INT16 DFP GEMM: the driver (work items, packing pass, micro-kernel calls,
// block scaling, NaN rows and columns).
// Part of dfp_gemm_impl.h (compiled once per tier, inside the tier's
// namespace TF_LOWPREC_DFP_ISA; see there).
// Expects the tier's MicroKernel<kNv> to be defined before it.
#ifndef TF_LOWPREC_KERNELS_DFP_GEMM_DRIVER_H_
#define TF_LOWPREC_KERNELS_DFP_GEMM_DRIVER_H_

#include <cstdint>
#include <cstring>

#if TF_LOWPREC_DFP_AVX2
#include <immintrin.h>
#endif

#include "dfp_gemm.h"
#include "dfp_gemm_certify.h"
#include "dfp_gemm_conv_pack.h"
#include "dfp_gemm_layout.h"
#include "dfp_gemm_pack.h"

namespace tf_lowprec {
namespace dfp_gemm {
namespace TF_LOWPREC_DFP_ISA {
namespace {

struct Plan {
  const Problem* p;
  BlockLayout layout;
  int64_t chunk_pairs, kc_pairs;
  int64_t a_batches, b_batches;
  int64_t a_panels, b_panels;  // per batch
  int64_t b_groups;  // per batch: groups of b_group_panels B panels, packed together
  int64_t b_group_panels;  // <= BGroup(kNv)
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
  // One exponent block and an output of 8 MB or more (well past the L2
  // caches, so not read back from them by the next op): whole output lines
  // are written with streaming stores (AVX2, AVX-512).
  bool stream_out;
  int64_t row_items, col_items;
  // K slices of the packing pass (1: none; PackSlices): slice_pairs pairs
  // each (whole chunks), the last shorter.
  int64_t k_slices, slice_pairs;
  // The mantissas of a forward convolution's whole input, in its layout,
  // whose runs its patch rows copy (WantsInputImage); null: the rows are
  // converted from the floats.
  const int16_t* a_image;
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
  const int64_t invalid =
      p.a_patches != nullptr  // (dfp_gemm_conv_pack.h)
          ? PackPatchRows<kMr>(*p.a_patches, ViewOfA(p, batch), plan.layout, row0,
                               Min64(kMr, p.m - row0), out, plan.a_nonfinite + row0,
                               plan.a_image)
          : PackPanel<kMr>(ViewOfA(p, batch), plan.layout, row0, Min64(kMr, p.m - row0), out,
                           plan.a_nonfinite + batch * p.m + row0);
#if TF_LOWPREC_DFP_VNNI || TF_LOWPREC_DFP_AVX2  // (the INT32 chains are certified)
  MeasureSegments<kMr>(out, plan.layout, plan.segs, norm);
#else
  (void)norm;
#endif
  return invalid;
}

// The transposed patch matrix (a filter gradient patches^T @ dy,
// dfp_gemm_conv_pack.h): with fewer than kFewChannels input channels each
// lane (patch column) is gathered along the pixels, one panel at a time;
// else the panels' columns of a patch row are runs of channels, gathered
// per pixel pair for kPatchGroup panels at a time.
constexpr int64_t kFewChannels = 8;
constexpr int kPatchGroup = 8;
inline int64_t TransposedPatchGroup(const ConvGather& g) {
  return g.channels < kFewChannels ? 1 : kPatchGroup;
}

// A panels [panel0, panel0 + count) of the transposed patch matrix, K pairs
// [q0, q1) only (whole chunks of its one exponent block: a K slice), into
// out (panel panel0's start; a_panel_words apart) and their segment norms'
// slots of those chunks into norm; NaN / Inf lanes flagged in nonfinite
// (rows from panel0 * kMr on).  Returns the number of invalid elements.
int64_t PackTransposedPatchPanels(const Plan& plan, int64_t panel0, int64_t count, int64_t q0,
                                  int64_t q1, int32_t* out, double* norm, uint8_t* nonfinite) {
  const Problem& p = *plan.p;
  const ConvGather& g = *p.a_patches;
  if (plan.layout.blocks == 0) {  // k == 0: every panel is zeros
    std::memset(out, 0, sizeof(int32_t) * count * plan.a_panel_words);
    return 0;
  }
  const int64_t k0 = 2 * q0, len = Min64(p.k, 2 * q1) - k0;
  const BlockLayout slice = MakeLayout(len, len);
  const int64_t group = TransposedPatchGroup(g);
  int64_t invalid = 0;
  for (int64_t i = 0; i < count; i += group) {
    const int64_t panels = Min64(group, count - i);
    const int64_t row0 = (panel0 + i) * kMr, lanes = Min64(panels * kMr, p.m - row0);
    int32_t* o = out + i * plan.a_panel_words;
    invalid += group == 1
                   ? PackPatchColumnsAlongPixels<kMr>(g, ViewOfA(p, 0), slice, row0, lanes,
                                                      o + q0 * kMr, nonfinite + i * kMr, k0)
#if TF_LOWPREC_DFP_VNNI
                   : PackPatchColumnsDirect<kMr, kPatchGroup>(g, ViewOfA(p, 0), slice, row0,
                                                              lanes, o + q0 * kMr,
                                                              plan.a_panel_words,
                                                              nonfinite + i * kMr, k0,
                                                              plan.a_image);
#else
                   : PackPatchColumns<kMr, kPatchGroup>(g, ViewOfA(p, 0), slice, row0, lanes,
                                                        o + q0 * kMr, plan.a_panel_words,
                                                        nonfinite + i * kMr, k0);
#endif
#if TF_LOWPREC_DFP_VNNI || TF_LOWPREC_DFP_AVX2  // (the INT32 chains are certified)
    for (int64_t j = 0; j < panels; ++j) {
      MeasureChunkSegments<kMr>(o + j * plan.a_panel_words, plan.layout, plan.segs,
                                q0 / plan.chunk_pairs, CeilDiv(q1, plan.chunk_pairs),
                                norm + (i + j) * plan.segs.per_panel);
    }
#endif
  }
  return invalid;
}

// A panels [panel0, panel0 + count) of batch `batch` into out (a_panel_words
// apart), their norms into norm; returns the number of invalid elements.  A
// stored transposed (lanes contiguous for each k) is packed 8 panels at a
// time, as B's groups of panels: its k rows are m floats apart, and one panel
// at a time read 6 floats of a new page for every k.
int64_t PackAPanels(const Plan& plan, int64_t batch, int64_t panel0, int64_t count, int32_t* out,
                    double* norm) {
  const Problem& p = *plan.p;
  int64_t invalid = 0;
  if (p.a_patches != nullptr && p.transpose_a) {
    return PackTransposedPatchPanels(plan, panel0, count, 0, plan.layout.total_pairs, out, norm,
                                     plan.a_nonfinite + panel0 * kMr);
  }
  if (p.a_patches != nullptr || !p.transpose_a) {
    for (int64_t i = 0; i < count; ++i) {
      invalid += PackAPanel(plan, batch, panel0 + i, out + i * plan.a_panel_words,
                            norm + i * plan.segs.per_panel);
    }
    return invalid;
  }
  constexpr int kAGroup = 8;
  for (int64_t g = 0; g < count; g += kAGroup) {
    const int64_t panels = Min64(kAGroup, count - g), row0 = (panel0 + g) * kMr;
    int32_t* o = out + g * plan.a_panel_words;
    invalid += PackPanels<kMr, kAGroup>(ViewOfA(p, batch), plan.layout, row0,
                                        Min64(panels * kMr, p.m - row0), o, plan.a_panel_words,
                                        plan.a_nonfinite + batch * p.m + row0);
#if TF_LOWPREC_DFP_VNNI || TF_LOWPREC_DFP_AVX2  // (the INT32 chains are certified)
    for (int64_t j = 0; j < panels; ++j) {
      MeasureSegments<kMr>(o + j * plan.a_panel_words, plan.layout, plan.segs,
                           norm + (g + j) * plan.segs.per_panel);
    }
#endif
  }
  return invalid;
}

void PackA(void* arg, int64_t begin, int64_t end) {
  Plan& plan = *static_cast<Plan*>(arg);
  int64_t invalid = 0;
  for (int64_t u = begin; u < end;) {  // runs of panels of one batch
    const int64_t panels = Min64(end - u, plan.a_panels - u % plan.a_panels);
    invalid += PackAPanels(plan, u / plan.a_panels, u % plan.a_panels, panels,
                           plan.packed_a + u * plan.a_panel_words,
                           plan.a_norm + u * plan.segs.per_panel);
    u += panels;
  }
  AtomicAdd(&plan.stats->invalid_inputs, invalid);
}

// Unit u packs group u % b_groups of batch u / b_groups: b_group_panels B
// panels (fewer in the last group).
template <int kNv>
void PackB(void* arg, int64_t begin, int64_t end) {
  constexpr int kNr = 16 * kNv;
  constexpr int kGroup = BGroup(kNv);
  Plan& plan = *static_cast<Plan*>(arg);
  const Problem& p = *plan.p;
  int64_t invalid = 0;
  for (int64_t u = begin; u < end; ++u) {
    const int64_t batch = u / plan.b_groups;
    const int64_t first = (u % plan.b_groups) * plan.b_group_panels;  // panel
    const int64_t col0 = first * kNr;
    const int64_t ub = batch * plan.b_panels + first;
    int32_t* panel = plan.packed_b + ub * plan.b_panel_words;
    const int64_t lanes = Min64(plan.b_group_panels * kNr, p.n - col0);
    invalid += p.b_patches != nullptr  // (dfp_gemm_conv_pack.h)
                   ? PackPatchColumns<kNr, kGroup>(*p.b_patches, ViewOfB(p, batch), plan.layout,
                                                   col0, lanes, panel, plan.b_panel_words,
                                                   plan.b_nonfinite + col0)
                   : PackPanels<kNr, kGroup>(ViewOfB(p, batch), plan.layout, col0, lanes, panel,
                                             plan.b_panel_words,
                                             plan.b_nonfinite + batch * p.n + col0);
#if TF_LOWPREC_DFP_VNNI || TF_LOWPREC_DFP_AVX2
    for (int64_t j = 0; j < Min64(plan.b_group_panels, plan.b_panels - first); ++j) {
      MeasureSegments<kNr>(panel + j * plan.b_panel_words, plan.layout, plan.segs,
                           plan.b_norm + (ub + j) * plan.segs.per_panel);
    }
#endif
  }
  AtomicAdd(&plan.stats->invalid_inputs, invalid);
}

// Units [0, B groups) pack B, the rest pack A.
template <int kNv>
void PackBoth(void* arg, int64_t begin, int64_t end) {
  const Plan& plan = *static_cast<Plan*>(arg);
  const int64_t b_units = plan.b_batches * plan.b_groups;
  if (begin < b_units) PackB<kNv>(arg, begin, Min64(end, b_units));
  if (end > b_units) PackA(arg, Max64(begin, b_units) - b_units, end - b_units);  // (none if in items)
}

// Flags the lanes set in local (count of them) in nonfinite, which other
// threads packing other K slices of the same lanes may set too: only ones
// are stored, atomically.
inline void FlagLanes(const uint8_t* local, int64_t count, uint8_t* nonfinite) {
  for (int64_t l = 0; l < count; ++l) {
    if (local[l]) __atomic_store_n(nonfinite + l, static_cast<uint8_t>(1), __ATOMIC_RELAXED);
  }
}

// The packing pass in K slices (a filter gradient patches^T @ dy: batch 1,
// one exponent block, few panels and a long K): unit u packs slice u %
// k_slices of B group u / k_slices (the units past B's: of the A panel
// group, TransposedPatchGroup panels, that follows), with the segment
// norms of the slice's chunks.  The panels are the same words as packed
// whole: K slices only split who writes them.
template <int kNv>
void PackSlices(void* arg, int64_t begin, int64_t end) {
  constexpr int kNr = 16 * kNv;
  constexpr int kGroup = BGroup(kNv);
  Plan& plan = *static_cast<Plan*>(arg);
  const Problem& p = *plan.p;
  const int64_t b_units = plan.b_groups * plan.k_slices;
  int64_t invalid = 0;
  for (int64_t u = begin; u < end; ++u) {
    const int64_t slice = u % plan.k_slices;
    const int64_t q0 = slice * plan.slice_pairs;
    const int64_t q1 = Min64(plan.layout.total_pairs, q0 + plan.slice_pairs);
    if (u < b_units) {
      const int64_t first = (u / plan.k_slices) * plan.b_group_panels;  // panel
      const int64_t col0 = first * kNr, lanes = Min64(plan.b_group_panels * kNr, p.n - col0);
      const int64_t k0 = 2 * q0, len = Min64(p.k, 2 * q1) - k0;
      OperandView view = ViewOfB(p, 0);
      view.data += k0 * view.k_stride;
      int32_t* panel = plan.packed_b + first * plan.b_panel_words;
      uint8_t local[kGroup * kNr] = {};
      invalid += PackPanels<kNr, kGroup>(view, MakeLayout(len, len), col0, lanes,
                                         panel + q0 * kNr, plan.b_panel_words, local);
      FlagLanes(local, lanes, plan.b_nonfinite + col0);
#if TF_LOWPREC_DFP_VNNI || TF_LOWPREC_DFP_AVX2
      const int64_t c0 = q0 / plan.chunk_pairs, c1 = CeilDiv(q1, plan.chunk_pairs);
      for (int64_t j = 0; j < Min64(plan.b_group_panels, plan.b_panels - first); ++j) {
        MeasureChunkSegments<kNr>(panel + j * plan.b_panel_words, plan.layout, plan.segs, c0, c1,
                                  plan.b_norm + (first + j) * plan.segs.per_panel);
      }
#endif
    } else {
      const int64_t group = TransposedPatchGroup(*p.a_patches);
      const int64_t panel0 = ((u - b_units) / plan.k_slices) * group;
      const int64_t count = Min64(group, plan.a_panels - panel0);
      uint8_t local[kPatchGroup * kMr] = {};
      invalid += PackTransposedPatchPanels(plan, panel0, count, q0, q1,
                                           plan.packed_a + panel0 * plan.a_panel_words,
                                           plan.a_norm + panel0 * plan.segs.per_panel, local);
      FlagLanes(local, Min64(count * kMr, p.m - panel0 * kMr), plan.a_nonfinite + panel0 * kMr);
    }
  }
  AtomicAdd(&plan.stats->invalid_inputs, invalid);
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
    stats->invalid_inputs += PackAPanels(plan, ab, ip0, ip1 - ip0, local_a, local_a_norm);
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
          const double* an = a_norms + (ip - a_first) * plan.segs.per_panel;
          const double* bn = plan.b_norm + ub * plan.segs.per_panel;
          const int64_t chunk = plan.segs.ChunkSlot(seg);
          const SegmentData sa = {an + seg, plan.segs.per_chunk, an + chunk};
          const SegmentData sb = {bn + seg, plan.segs.per_chunk, bn + chunk};
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
#if TF_LOWPREC_DFP_AVX2
              // The only write of a whole, aligned 64-byte line of out
              // (one exponent block): streamed, without reading the line
              // into the cache first (out is written once and not read here).
              if (plan.stream_out && jb - ja == 16 &&
                  reinterpret_cast<uintptr_t>(oo) % 32 == 0) {
                const __m256 f = _mm256_set1_ps(scale);
                _mm256_stream_ps(oo, _mm256_mul_ps(_mm256_loadu_ps(t), f));
                _mm256_stream_ps(oo + 8, _mm256_mul_ps(_mm256_loadu_ps(t + 8), f));
                continue;
              }
#elif TF_LOWPREC_DFP_VNNI
              // The same at 512 bits, a whole tile row (2 to 4 lines) at once
              // (the conv2 forward of the CNN: 8 % of its micro-kernel's
              // samples on these stores before).
              if (plan.stream_out && jb - ja == kNr &&
                  reinterpret_cast<uintptr_t>(oo) % 64 == 0) {
                const __m512 f = _mm512_set1_ps(scale);
                for (int v = 0; v < kNv; ++v) {
                  _mm512_stream_ps(oo + 16 * v, _mm512_mul_ps(_mm512_loadu_ps(t + 16 * v), f));
                }
                continue;
              }
#endif
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
#if TF_LOWPREC_DFP_AVX2 || TF_LOWPREC_DFP_VNNI
  _mm_sfence();  // the streamed stores of out, before the caller reads it
#endif
  ReleaseWorkspace(block, capacity);
  AtomicAdd(&plan.stats->invalid_inputs, stats.invalid_inputs);
  AtomicAdd(&plan.stats->overflowed_chunks, stats.overflowed_chunks);
  AtomicAdd(&plan.stats->recomputed_tiles, stats.recomputed_tiles);
}

// A forward convolution whose patch rows are long (the long-K path of
// PackPatchRows), or a filter gradient's transposed patch matrix of runs of
// channels (PackPatchColumnsDirect), whose windows overlap reads every input value once per
// kernel tap that covers it (9 times for a 3 x 3 filter at stride 1): the
// CNN's second layer converted each value 9 times, most of its packing
// time.  The whole input is converted once instead, into an int16 image in
// its own layout, whose runs the packing copies.  Only where the image
// gives the same packed words and counts: fused rounding, one exponent, no
// NaN / Inf and no invalid value in the input (checked by the image pass
// itself: otherwise the packing converts from the floats, as before).
inline bool WantsInputImage(const Problem& p, const BlockLayout& layout) {
  if (p.a_patches == nullptr || !p.round_inputs || p.batch != 1 || layout.blocks != 1) {
    return false;
  }
  const ConvGather& g = *p.a_patches;
  if (g.kd * g.kh * g.kw <= g.sd * g.sh * g.sw) return false;  // windows do not overlap
  if (p.transpose_a) {
    // A filter gradient's transposed patch matrix: the VNNI packer of runs
    // of channels (PackPatchColumnsDirect) reads the image too.
    return TF_LOWPREC_DFP_VNNI && g.channels >= kFewChannels;
  }
  return kMr * (p.k + p.k % 2) > kPatchRunValues;  // the long-K path
}

inline int64_t InputElements(const ConvGather& g) {
  return g.batch * g.depth * g.height * g.width * g.channels;
}

struct ImageJob {
  const float* x;
  int16_t* out;
  int64_t n;
  float s1, s2, bound;
  int64_t rejected;  // invalid or non-finite values (atomic)
};

constexpr int64_t kImageUnit = 32768;  // values per unit of the image pass

void ConvertImage(void* arg, int64_t begin, int64_t end) {
  ImageJob& job = *static_cast<ImageJob*>(arg);
  int64_t rejected = 0;
  for (int64_t u = begin; u < end; ++u) {
    const int64_t i = u * kImageUnit, n = Min64(kImageUnit, job.n - i);
    int32_t nf = 0;
    rejected += ConvertValues(job.x + i, n, &job.s1, &job.s2, &job.bound, true, job.out + i, &nf);
    rejected += nf;
  }
  AtomicAdd(&job.rejected, rejected);
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
  plan.b_group_panels = BGroupPanels(kNv, plan.b_panels);
  plan.b_groups = CeilDiv(plan.b_panels, plan.b_group_panels);
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
  // A transposed patch matrix (a filter gradient) may be split down to one
  // A panel per item: the CNN's first layer has 2 (9 patch columns), 1 B
  // panel and K = 43264, all in one item otherwise.
  const bool transposed_patches = p.a_patches != nullptr && p.transpose_a;
  while (p.batch * CeilDiv(p.m, plan.mc) * CeilDiv(p.n, plan.nc) < kMinItems) {
    const bool can_m = plan.mc >= (transposed_patches ? 2 : 4) * kMr;
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

  // (A transposed patch matrix is packed in the packing pass, beside B and
  // in K slices (below): every item streams its A panels once either way,
  // and the items would pack theirs one thread each.)
  plan.pack_a_in_items = plan.col_items == 1 && (plan.a_batches == p.batch) && !transposed_patches;
  plan.stream_out = plan.layout.blocks == 1 && p.batch * p.m * p.n >= (int64_t{1} << 21);
  plan.segs = MakeSegments(plan.layout, plan.chunk_pairs);
  // A filter gradient patches^T @ dy has few panels (the CNN's first layer:
  // 2 A panels of its 9 patch columns, 1 B panel of its 32 channels) and a
  // long K (36864 pixels): its packing pass would have a unit or two per
  // thread, one of them most of the work.  Its K is cut into slices of
  // whole chunks, at least kMinSlicePairs pairs each, for about
  // kSlicedUnits units.
  plan.k_slices = 1;
  plan.slice_pairs = plan.layout.total_pairs;
  if (transposed_patches && p.b_patches == nullptr && p.batch == 1 && plan.layout.blocks == 1) {
    constexpr int64_t kMinSlicePairs = 1024, kSlicedUnits = 16;
    const int64_t groups =
        plan.b_groups + CeilDiv(plan.a_panels, TransposedPatchGroup(*p.a_patches));
    const int64_t slices = Min64(CeilDiv(kSlicedUnits, groups),
                                 plan.layout.total_pairs / kMinSlicePairs);
    if (slices > 1) {
      plan.slice_pairs = CeilDiv(CeilDiv(plan.layout.total_pairs, slices), plan.chunk_pairs) *
                         plan.chunk_pairs;
      plan.k_slices = CeilDiv(plan.layout.total_pairs, plan.slice_pairs);
    }
  }
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
  const bool image = WantsInputImage(p, plan.layout);
  const int64_t at_image = piece(image ? 2 * InputElements(*p.a_patches) : 0);
  int64_t capacity = 0;
  char* workspace = static_cast<char*>(AcquireWorkspace(bytes, &capacity));
  plan.packed_a = reinterpret_cast<int32_t*>(workspace + at_packed_a);
  plan.packed_b = reinterpret_cast<int32_t*>(workspace + at_packed_b);
  plan.a_norm = reinterpret_cast<double*>(workspace + at_a_norm);
  plan.b_norm = reinterpret_cast<double*>(workspace + at_b_norm);
  plan.a_nonfinite = reinterpret_cast<uint8_t*>(workspace + at_a_nonfinite);
  plan.b_nonfinite = reinterpret_cast<uint8_t*>(workspace + at_b_nonfinite);
  std::memset(plan.a_nonfinite, 0, at_b_nonfinite - at_a_nonfinite + plan.b_batches * p.n);
  plan.a_image = nullptr;
  if (image) {
    ImageJob job;
    job.x = p.a_patches->input;
    job.out = reinterpret_cast<int16_t*>(workspace + at_image);
    job.n = InputElements(*p.a_patches);
    int32_t scale_invalid = 0;
    ScaleFactors(p.ea[0], &job.s1, &job.s2, &job.bound, &scale_invalid);
    job.rejected = scale_invalid;
    parallel.run(parallel.context, CeilDiv(job.n, kImageUnit), 4 * kImageUnit, ConvertImage, &job);
    if (job.rejected == 0) plan.a_image = job.out;
  }
  const int64_t k = Max64(p.k, 1);
  // One parallel region packs both (B's wider panels first, so that the
  // pool's dynamic scheduling evens out the unequal unit costs).
  const int64_t b_group_units = plan.b_batches * plan.b_groups;
  if (plan.k_slices > 1) {
    const int64_t a_groups =
        a_units == 0 ? 0 : CeilDiv(plan.a_panels, TransposedPatchGroup(*p.a_patches));
    const int64_t units = (b_group_units + a_groups) * plan.k_slices;
    parallel.run(parallel.context, units, 8 * k * (kNr * b_units + kMr * a_units) / units,
                 PackSlices<kNv>, &plan);
  } else {
    parallel.run(parallel.context, b_group_units + a_units,
                 8 * k * (kNr * b_units + kMr * a_units) / Max64(1, b_group_units + a_units),
                 PackBoth<kNv>, &plan);
  }
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

// The tile width: 16 columns for AVX2; for the others the narrowest padding
// of n to whole micro-panels, and 48 columns for wide matrices (the tuned
// case; 64-column tiles would need a shorter K piece to keep the B
// micro-panel in L1).
void Gemm(const Problem& p, const ParallelFor& parallel, Stats* stats) {
  *stats = Stats();
  if (p.batch == 0 || p.m == 0 || p.n == 0) return;
#if TF_LOWPREC_DFP_AVX2
  GemmWith<1>(p, parallel, stats);  // tiles of 6 x 16: 12 of the 16 ymm registers
#else
  const int64_t padded2 = CeilDiv(p.n, 32) * 32, padded3 = CeilDiv(p.n, 48) * 48,
                padded4 = CeilDiv(p.n, 64) * 64;
  if (p.n <= 256 && padded4 < padded3 && padded4 <= padded2) {
    GemmWith<4>(p, parallel, stats);
  } else if (p.n <= 256 && padded2 < padded3) {
    GemmWith<2>(p, parallel, stats);
  } else {
    GemmWith<3>(p, parallel, stats);
  }
#endif
}

}  // namespace
}  // namespace TF_LOWPREC_DFP_ISA
}  // namespace dfp_gemm
}  // namespace tf_lowprec

#endif  // TF_LOWPREC_KERNELS_DFP_GEMM_DRIVER_H_
