// INT16 DFP GEMM: tile sizes and where things lie in the packed operands
// (exponent blocks, K pairs, overflow-certification segments).
// Part of dfp_gemm_impl.h (compiled once per tier, inside the tier's
// namespace TF_LOWPREC_DFP_ISA; see there).
#ifndef TF_LOWPREC_KERNELS_DFP_GEMM_LAYOUT_H_
#define TF_LOWPREC_KERNELS_DFP_GEMM_LAYOUT_H_

#include <cstdint>
#include <cstring>

#include "dfp_gemm.h"

namespace tf_lowprec {
namespace dfp_gemm {
namespace TF_LOWPREC_DFP_ISA {
namespace {

constexpr int kMr = 6;          // rows of a micro-tile
// Micro-tiles have 16 * kNv columns, kNv = 2, 3 or 4 (chosen from n).
constexpr int64_t kMc = 96;     // rows of a work item (multiple of kMr)
constexpr int64_t kNcPanels = 10;  // B panels (of 16 * kNv columns) per work item
// K pairs per micro-kernel call (before rounding to chunks): the B
// micro-panel (KcPairs * 64 * kNv bytes, 24 KB) stays in L1.  For the 16
// columns of AVX2, 16 KB: with the A panel streamed beside it (6 KB) it
// fits a 32 KB L1.
constexpr int64_t KcPairs(int nv) { return nv == 1 ? 256 : 384 / nv; }
// B panels packed together (PackPanels): 128 columns or more per group, at
// most BGroup(nv) panels.  AVX2 takes up to 32 panels (512 columns, 2 KB of
// each row of b read at a time) where b is wide enough to leave 4 groups for
// the threads: the rows of b are pages apart, and the packing of 2048^2 at 8
// panels per group spent most of its time on the loads that start a page.
constexpr int BGroup(int nv) { return nv == 1 ? 32 : nv == 2 ? 4 : 2; }
constexpr int64_t BGroupPanels(int nv, int64_t panels) {
  return nv == 1 ? (panels / 4 < 8 ? 8 : panels / 4 > 32 ? 32 : panels / 4) : BGroup(nv);
}
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
// A panel's slots: seg_slots segment norms, then one per chunk (in the same
// order): the sum of the squares of the chunk's segment norms (whole-chunk
// proofs, MeasureSegments), so that the micro-kernel does not redo these
// sums for every tile.
struct SegmentLayout {
  int64_t chunk_pairs = 1, per_chunk = 1, per_block = 0, seg_slots = 1, per_panel = 2;
  // Segment of the block-relative pair q (a segment start) of block blk.
  int64_t Index(int64_t blk, int64_t q) const {
    return blk * per_block + (q / chunk_pairs) * per_chunk + (q % chunk_pairs) / kSegPairs;
  }
  // The chunk-sum slot of the chunk that starts at segment seg.
  int64_t ChunkSlot(int64_t seg) const { return seg_slots + seg / per_chunk; }
};

SegmentLayout MakeSegments(const BlockLayout& layout, int64_t chunk_pairs) {
  SegmentLayout segs;
  segs.chunk_pairs = chunk_pairs;
  if (layout.blocks == 0) return segs;
  const int64_t block_pairs = layout.Pairs(0);  // blocks before the last are full
  segs.per_chunk = CeilDiv(Min64(chunk_pairs, block_pairs), kSegPairs);
  segs.per_block = CeilDiv(block_pairs, chunk_pairs) * segs.per_chunk;
  segs.seg_slots = Max64(1, layout.blocks * segs.per_block);
  segs.per_panel = segs.seg_slots + CeilDiv(segs.seg_slots, segs.per_chunk);
  return segs;
}

// Per-segment data of one panel, from the segment of a chunk on: norm[c *
// per_chunk + j] bounds from above the Euclidean norm of every lane's
// mantissas over segment j of chunk c; chunk_sq[c] is the sum of the
// squares of chunk c's norms (in j order).
struct SegmentData {
  const double* norm;
  int64_t per_chunk;
  const double* chunk_sq;
};

}  // namespace
}  // namespace TF_LOWPREC_DFP_ISA
}  // namespace dfp_gemm
}  // namespace tf_lowprec

#endif  // TF_LOWPREC_KERNELS_DFP_GEMM_LAYOUT_H_
