// INT16 DFP GEMM: the AVX-512 VNNI micro-kernel (vpdpwssds chains in inline
// assembly, certified or tracked; chunks with an unprovable first segment on
// split chains or coarse sums; see dfp_gemm_impl.h, "Overflow", and
// docs/dfp_gemm.md, "Unprovable first segments").
// Part of dfp_gemm_impl.h (compiled once per tier, inside the tier's
// namespace TF_LOWPREC_DFP_ISA; see there).
#ifndef TF_LOWPREC_KERNELS_DFP_GEMM_MICROKERNEL_VNNI_H_
#define TF_LOWPREC_KERNELS_DFP_GEMM_MICROKERNEL_VNNI_H_

#include <cstdint>
#include <cstring>
#include <immintrin.h>

#include "dfp_gemm.h"
#include "dfp_gemm_certify.h"
#include "dfp_gemm_exact.h"
#include "dfp_gemm_layout.h"

namespace tf_lowprec {
namespace dfp_gemm {
namespace TF_LOWPREC_DFP_ISA {
namespace {

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

// The INT32 limits, as memory operands of the assembly.
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

// ---------------------------------------------------------------------------
// Chunks whose first segment cannot be proved (B_0 > INT32_MAX: full-scale
// operands such as ReLU outputs or pixels, where many chains of 64 really
// overflow).  Tracking them with the saturating chains and recomputing every
// micro-tile chunk where some chain saturated computed nearly every chunk of
// such a GEMM twice, the second time in INT64 (about 4x the proved path's
// time).  They run instead, from the start, the coarse-sum scheme of the AVX2
// tier at 512 bits: per lane the wrapped sum s (vpmaddwd pair sums t, vpaddd),
// the coarse sum A = sum of floor(t / 2^16) (vpsrad, vpaddd; never overflows)
// and the running maximum and minimum of A.  Every prefix P lies in
// [2^16 A, 2^16 A + Rmax], Rmax = (n + 1) (2^16 - 1) for n pairs, which decides
// for nearly every chain whether some prefix left INT32 and gives the exact
// sum S = 2^16 A + R, R = (s - 2^16 A) mod 2^32 in [0, Rmax].  A (row, vector)
// with an undecided lane (a prefix within Rmax of a limit) is recomputed in
// INT64 (ExactRowVector), so the sums and the overflow counts stay exact.

// Longest chunk for the coarse sums: (n + 1) (2^16 - 1) < 2^32 identifies the
// exact sum, and |A| <= n 2^15 fits INT32.
constexpr int64_t kVnniCoarsePairs = 65535;

#define DFP_VNNI_INLINE inline __attribute__((always_inline))

// Lanes v * 16 .. v * 16 + 15 of row r of a micro-tile chunk (a: the A panel
// at row r, b: the B panel at vector v; kNr words per pair), exactly in
// INT64: row[0..16) += float(S) (stored there: init); returns how many of the
// 16 chains have a prefix outside INT32.
template <int kNr>
int64_t ExactRowVector(const int32_t* a, const int32_t* b, int64_t pairs, bool init, float* row) {
  const __m512i bias = _mm512_set1_epi64(int64_t{1} << 31);  // s + 2^31 in [0, 2^32)
  const __m512i limit = _mm512_set1_epi64(0xFFFFFFFFll);
  __m512i lo = _mm512_setzero_si512(), hi = _mm512_setzero_si512();
  __mmask8 out_lo = 0, out_hi = 0;
  for (int64_t q = 0; q < pairs; ++q) {
    const __m512i t = _mm512_madd_epi16(_mm512_set1_epi32(a[q * kMr]), _mm512_loadu_si512(b + q * kNr));
    lo = _mm512_add_epi64(lo, _mm512_cvtepi32_epi64(_mm512_castsi512_si256(t)));
    hi = _mm512_add_epi64(hi, _mm512_cvtepi32_epi64(_mm512_extracti64x4_epi64(t, 1)));
    out_lo |= _mm512_cmpgt_epu64_mask(_mm512_add_epi64(lo, bias), limit);
    out_hi |= _mm512_cmpgt_epu64_mask(_mm512_add_epi64(hi, bias), limit);
  }
  const __m512 sums = _mm512_insertf32x8(_mm512_castps256_ps512(_mm512_cvtepi64_ps(lo)),
                                         _mm512_cvtepi64_ps(hi), 1);
  _mm512_storeu_ps(row, init ? sums : _mm512_add_ps(_mm512_loadu_ps(row), sums));
  return __builtin_popcount(out_lo) + __builtin_popcount(out_hi);
}

// The coarse pass of the 6 rows of one vector of a micro-tile chunk, n pairs
// from the start of the chunk: per row the wrapped sums s, the coarse sums A
// and their running maximum and minimum (hi, lo): 6 instructions per vector
// and step, the 24 registers of state and the B vector in the 32 zmm.
// v[r][0..3] = s, A, hi, lo of row r.
template <int kNr>
DFP_VNNI_INLINE void VnniCoarseRows6(const int32_t* a, const int32_t* b, int64_t n,
                                     __m512i (*v)[4]) {
  __m512i s[kMr], c[kMr], hi[kMr], lo[kMr];
#pragma GCC unroll 6
  for (int r = 0; r < kMr; ++r) s[r] = c[r] = hi[r] = lo[r] = _mm512_setzero_si512();
  for (int64_t q = 0; q < n; ++q) {
    const __m512i bq = _mm512_loadu_si512(b + q * kNr);
    const int32_t* aq = a + q * kMr;
#pragma GCC unroll 6
    for (int r = 0; r < kMr; ++r) {
      __m512i t = _mm512_madd_epi16(_mm512_set1_epi32(aq[r]), bq);
      s[r] = _mm512_add_epi32(s[r], t);
      t = _mm512_srai_epi32(t, 16);
      c[r] = _mm512_add_epi32(t, c[r]);
      hi[r] = _mm512_max_epi32(c[r], hi[r]);
      lo[r] = _mm512_min_epi32(c[r], lo[r]);
    }
  }
#pragma GCC unroll 6
  for (int r = 0; r < kMr; ++r) {
    v[r][0] = s[r];
    v[r][1] = c[r];
    v[r][2] = hi[r];
    v[r][3] = lo[r];
  }
}

// One chunk of n <= kVnniCoarsePairs pairs by the coarse sums (above): adds
// float(exact sum) to the tile (stores it: init) and returns how many chains
// overflowed; counts the (row, vector) pieces recomputed in INT64 as
// recomputed micro-tile chunks (at most one per chunk).
template <int kNv>
int64_t VnniCoarseChunk(const int32_t* a, const int32_t* b, int64_t n, bool init, float* tile,
                        Stats* stats) {
  constexpr int kNr = 16 * kNv;
  // Thresholds on A (floor divisions of exact integers, in 64 bits), as in
  // Avx2TrackedSteps: max A >= 2^15 or min A <= low_sure: some prefix left
  // INT32; max A <= no_up and min A >= -2^15: none did.
  const int64_t r_max = (n + 1) * 65535;
  const int64_t no_up = (int64_t{INT32_MAX} - r_max) >> 16;
  const int64_t low_sure = (int64_t{INT32_MIN} - 1 - r_max) >> 16;
  const __m512i up_v = _mm512_set1_epi32(32767);
  const __m512i no_up_v = _mm512_set1_epi32(static_cast<int32_t>(no_up));
  const __m512i low_v = _mm512_set1_epi32(-32769);
  const __m512i low_sure_v = _mm512_set1_epi32(static_cast<int32_t>(low_sure + 1));
  const __m512i sign = _mm512_set1_epi32(INT32_MIN);
  const __m512d two31 = _mm512_set1_pd(2147483648.0), two16 = _mm512_set1_pd(65536.0);
  int64_t overflowed = 0;
  bool recomputed = false;
  for (int vec = 0; vec < kNv; ++vec) {
    __m512i v[kMr][4];
    VnniCoarseRows6<kNr>(a, b + 16 * vec, n, v);
    for (int r = 0; r < kMr; ++r) {
      float* out = tile + r * kNr + 16 * vec;
      const __m512i hi = v[r][2], lo = v[r][3];
      const __mmask16 over = _mm512_cmpgt_epi32_mask(hi, up_v) |       // max A >= 2^15
                             _mm512_cmpgt_epi32_mask(low_sure_v, lo);  // min A <= low_sure
      const __mmask16 clean = _mm512_cmple_epi32_mask(hi, no_up_v) &   // max A <= no_up
                              _mm512_cmpgt_epi32_mask(lo, low_v);      // min A >= -2^15
      if (static_cast<__mmask16>(over | clean) != 0xFFFF) {  // undecided lanes
        overflowed += ExactRowVector<kNr>(a + r, b + 16 * vec, n, init, out);
        recomputed = true;
        continue;
      }
      const __m512i s = v[r][0];
      if (over == 0) {  // exact in INT32
        const __m512 f = _mm512_cvtepi32_ps(s);
        _mm512_storeu_ps(out, init ? f : _mm512_add_ps(_mm512_loadu_ps(out), f));
        continue;
      }
      // S = 2^16 A + R, R = (s - 2^16 A) mod 2^32 read as unsigned, in double
      // (exact: |S| < 2^53), rounded once to FP32.
      const __m512i coarse = v[r][1];
      const __m512i rest = _mm512_xor_si512(_mm512_sub_epi32(s, _mm512_slli_epi32(coarse, 16)), sign);
      const __m256 low8 = _mm512_cvtpd_ps(_mm512_add_pd(
          _mm512_mul_pd(_mm512_cvtepi32_pd(_mm512_castsi512_si256(coarse)), two16),
          _mm512_add_pd(_mm512_cvtepi32_pd(_mm512_castsi512_si256(rest)), two31)));
      const __m256 high8 = _mm512_cvtpd_ps(_mm512_add_pd(
          _mm512_mul_pd(_mm512_cvtepi32_pd(_mm512_extracti64x4_epi64(coarse, 1)), two16),
          _mm512_add_pd(_mm512_cvtepi32_pd(_mm512_extracti64x4_epi64(rest, 1)), two31)));
      const __m512 f = _mm512_insertf32x8(_mm512_castps256_ps512(low8), high8, 1);
      _mm512_storeu_ps(out, init ? f : _mm512_add_ps(_mm512_loadu_ps(out), f));
      overflowed += __builtin_popcount(static_cast<unsigned>(over));
    }
  }
  if (recomputed) stats->recomputed_tiles += 1;
  return overflowed;
}

// The split scheme: 4 instructions per vector and step instead of the coarse
// sums' 6, for chunks of at most kVnniSplitPairs pairs.  Every A mantissa is
// a = 4 (a >> 2) + (a & 3), 0 <= a & 3 <= 3, so every prefix of a chain is
// P = 4 Q + L with Q the prefix of the chain of the mantissas a >> 2 and
// |L| <= Lmax = n * 2 * 3 * 32767 for n pairs.  Per lane: the wrapped chain W
// of a (vpdpwssd: P mod 2^32), the saturating chain Q (vpdpwssds on a >> 2,
// shifted per chunk into a small buffer) and the running maximum and minimum
// of Q.  Q is exact until it would leave INT32 (|P| above about 2^33), which
// the maximum and minimum show (they reach INT32_MAX / INT32_MIN).  Then some
// prefix certainly left INT32 if 4 max Q - Lmax > INT32_MAX or 4 min Q + Lmax
// < INT32_MIN, and certainly none did if 4 max Q + Lmax <= INT32_MAX and 4 min
// Q - Lmax >= INT32_MIN; the exact sum is S = 4 Q - Lmax + R, R = (W - 4 Q +
// Lmax) mod 2^32 in [0, 2 Lmax] (2 Lmax < 2^32).  A (row, vector) with a lane
// in neither case or a saturated Q is recomputed in INT64 (ExactRowVector).
constexpr int64_t kVnniSplitPairs = 512;
constexpr int64_t kSplitPairBound = 2 * 3 * 32767;  // |pair sum of (a & 3) b|

// Undecided lanes of a (row, vector) recomputed one by one (ExactChain), up
// to this many; more: the whole (row, vector) with ExactRowVector.
constexpr int kExactLanesMax = 4;

// One chain of a micro-tile chunk exactly (a: the A panel at its row, b: the
// B panel at its column, stride words between pairs): the chunk sum in
// INT64; *left = whether some prefix of pair sums left INT32.
inline int64_t ExactChain(const int32_t* a, const int32_t* b, int64_t pairs, int64_t stride,
                          bool* left) {
  int64_t sum = 0;
  bool out = false;
  for (int64_t q = 0; q < pairs; ++q) {
    const int32_t x = a[q * kMr], y = b[q * stride];
    sum += int64_t{LowHalf(x)} * LowHalf(y) + int64_t{HighHalf(x)} * HighHalf(y);
    out |= static_cast<uint64_t>(sum + 2147483648LL) > 0xFFFFFFFFull;
  }
  *left = out;
  return sum;
}

// The split pass of the 6 rows of one vector of a micro-tile chunk, n >= 1
// pairs from the start of the chunk (a: the A panel, ash: its mantissas >> 2,
// b: the B panel at the vector, stride_bytes between pairs), in inline
// assembly (the intrinsics version copied the saturating chains around):
// per K pair one B load and 6 x (vpdpwssd, vpdpwssds with A broadcast from
// memory, vpmaxsd, vpminsd).  out (64-byte aligned) = W of rows 0..5, then
// Q, max Q and min Q of rows 0..5.  (Asm operands cannot name the 24
// registers: at most 30 operands, in-out ones counting twice.)
inline void VnniSplitRows6(const int32_t* a, const int32_t* ash, const int32_t* b, int64_t n,
                           int64_t stride_bytes, __m512i* out) {
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
      "vmovdqa64 %%zmm0, %%zmm18\n\t"
      "vmovdqa64 %%zmm0, %%zmm19\n\t"
      "vmovdqa64 %%zmm0, %%zmm20\n\t"
      "vmovdqa64 %%zmm0, %%zmm21\n\t"
      "vmovdqa64 %%zmm0, %%zmm22\n\t"
      "vmovdqa64 %%zmm0, %%zmm23\n\t"
      "1:\n\t"
      "vmovdqu64 (%[b]), %%zmm24\n\t"
      "vpdpwssd 0(%[a])%{1to16%}, %%zmm24, %%zmm0\n\t"
      "vpdpwssds 0(%[ash])%{1to16%}, %%zmm24, %%zmm6\n\t"
      "vpmaxsd %%zmm6, %%zmm12, %%zmm12\n\t"
      "vpminsd %%zmm6, %%zmm18, %%zmm18\n\t"
      "vpdpwssd 4(%[a])%{1to16%}, %%zmm24, %%zmm1\n\t"
      "vpdpwssds 4(%[ash])%{1to16%}, %%zmm24, %%zmm7\n\t"
      "vpmaxsd %%zmm7, %%zmm13, %%zmm13\n\t"
      "vpminsd %%zmm7, %%zmm19, %%zmm19\n\t"
      "vpdpwssd 8(%[a])%{1to16%}, %%zmm24, %%zmm2\n\t"
      "vpdpwssds 8(%[ash])%{1to16%}, %%zmm24, %%zmm8\n\t"
      "vpmaxsd %%zmm8, %%zmm14, %%zmm14\n\t"
      "vpminsd %%zmm8, %%zmm20, %%zmm20\n\t"
      "vpdpwssd 12(%[a])%{1to16%}, %%zmm24, %%zmm3\n\t"
      "vpdpwssds 12(%[ash])%{1to16%}, %%zmm24, %%zmm9\n\t"
      "vpmaxsd %%zmm9, %%zmm15, %%zmm15\n\t"
      "vpminsd %%zmm9, %%zmm21, %%zmm21\n\t"
      "vpdpwssd 16(%[a])%{1to16%}, %%zmm24, %%zmm4\n\t"
      "vpdpwssds 16(%[ash])%{1to16%}, %%zmm24, %%zmm10\n\t"
      "vpmaxsd %%zmm10, %%zmm16, %%zmm16\n\t"
      "vpminsd %%zmm10, %%zmm22, %%zmm22\n\t"
      "vpdpwssd 20(%[a])%{1to16%}, %%zmm24, %%zmm5\n\t"
      "vpdpwssds 20(%[ash])%{1to16%}, %%zmm24, %%zmm11\n\t"
      "vpmaxsd %%zmm11, %%zmm17, %%zmm17\n\t"
      "vpminsd %%zmm11, %%zmm23, %%zmm23\n\t"
      "addq $24, %[a]\n\t"
      "addq $24, %[ash]\n\t"
      "addq %[stride], %[b]\n\t"
      "decq %[n]\n\t"
      "jnz 1b\n\t"
      "vmovdqa64 %%zmm0, 0(%[out])\n\t"
      "vmovdqa64 %%zmm1, 64(%[out])\n\t"
      "vmovdqa64 %%zmm2, 128(%[out])\n\t"
      "vmovdqa64 %%zmm3, 192(%[out])\n\t"
      "vmovdqa64 %%zmm4, 256(%[out])\n\t"
      "vmovdqa64 %%zmm5, 320(%[out])\n\t"
      "vmovdqa64 %%zmm6, 384(%[out])\n\t"
      "vmovdqa64 %%zmm7, 448(%[out])\n\t"
      "vmovdqa64 %%zmm8, 512(%[out])\n\t"
      "vmovdqa64 %%zmm9, 576(%[out])\n\t"
      "vmovdqa64 %%zmm10, 640(%[out])\n\t"
      "vmovdqa64 %%zmm11, 704(%[out])\n\t"
      "vmovdqa64 %%zmm12, 768(%[out])\n\t"
      "vmovdqa64 %%zmm13, 832(%[out])\n\t"
      "vmovdqa64 %%zmm14, 896(%[out])\n\t"
      "vmovdqa64 %%zmm15, 960(%[out])\n\t"
      "vmovdqa64 %%zmm16, 1024(%[out])\n\t"
      "vmovdqa64 %%zmm17, 1088(%[out])\n\t"
      "vmovdqa64 %%zmm18, 1152(%[out])\n\t"
      "vmovdqa64 %%zmm19, 1216(%[out])\n\t"
      "vmovdqa64 %%zmm20, 1280(%[out])\n\t"
      "vmovdqa64 %%zmm21, 1344(%[out])\n\t"
      "vmovdqa64 %%zmm22, 1408(%[out])\n\t"
      "vmovdqa64 %%zmm23, 1472(%[out])\n\t"
      : [a] "+&r"(a), [ash] "+&r"(ash), [b] "+&r"(b), [n] "+&r"(n)
      : [stride] "r"(stride_bytes), [out] "r"(out)
      : "memory", "cc", "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10", "xmm11", "xmm12", "xmm13", "xmm14", "xmm15", "xmm16", "xmm17", "xmm18", "xmm19", "xmm20", "xmm21", "xmm22", "xmm23", "xmm24");
}

// Chunks with Lmax < kVnniSplitFloatLimit (at least 84 pairs) take their
// FP32 sums without double: S = 2^18 Qh + (W - 2^18 Qh), Qh = Q >> 16, where
// the second term (4 (Q mod 2^16) + S - 4 Q, below 2^18 + Lmax <= 2^24 in
// magnitude) and 2^18 Qh are exact floats, so one FMA rounds S once.
constexpr int64_t kVnniSplitFloatLimit = (int64_t{1} << 24) - (int64_t{1} << 18);

// One chunk of n <= kVnniSplitPairs pairs by the split scheme (above): adds
// float(exact sum) to the tile (stores it: init) and returns how many chains
// overflowed; counts a chunk with (row, vector) pieces recomputed in INT64
// as one recomputed micro-tile chunk.
template <int kNv>
int64_t VnniSplitChunk(const int32_t* a, const int32_t* b, int64_t n, double b_chunk_sq,
                       bool init, float* tile, Stats* stats) {
  constexpr int kNr = 16 * kNv;
  alignas(64) int32_t ash[kVnniSplitPairs * kMr];
  {
    const int64_t words = n * kMr;
    int64_t i = 0;
    for (; i + 16 <= words; i += 16) {
      _mm512_store_si512(ash + i, _mm512_srai_epi16(_mm512_loadu_si512(a + i), 2));
    }
    const __mmask16 tail = static_cast<__mmask16>((1u << (words - i)) - 1);
    _mm512_mask_storeu_epi32(ash + i, tail,
                             _mm512_srai_epi16(_mm512_maskz_loadu_epi32(tail, a + i), 2));
  }
  // Lmax: |L| <= 3 * (sum of |b| over the chunk) <= 3 sqrt(2 n) ||b||, with
  // ||b||^2 <= b_chunk_sq (the chunk's sum of squared segment norms of the B
  // panel, an upper bound for every lane): about half the worst case n * 2 *
  // 3 * 32767 on typical data, so fewer lanes are left undecided.
  const double b_bound =
      3.0 * __builtin_sqrt(2.0 * static_cast<double>(n) * b_chunk_sq) * kBoundUp + 1.0;
  const int64_t l_max = b_bound < static_cast<double>(n * kSplitPairBound)
                            ? static_cast<int64_t>(b_bound)
                            : n * kSplitPairBound;
  // Thresholds on Q (exact integer divisions in 64 bits; l_max < 2^31).
  const int64_t two31 = int64_t{1} << 31;
  const __m512i over_up = _mm512_set1_epi32(static_cast<int32_t>((two31 - 1 + l_max) >> 2));
  const __m512i over_down = _mm512_set1_epi32(static_cast<int32_t>(-((two31 + l_max) >> 2)));
  const __m512i no_up = _mm512_set1_epi32(static_cast<int32_t>((two31 - 1 - l_max) >> 2));
  const __m512i no_down = _mm512_set1_epi32(static_cast<int32_t>(-((two31 - l_max) >> 2)));
  const __m512i int_max = _mm512_set1_epi32(INT32_MAX), int_min = _mm512_set1_epi32(INT32_MIN);
  const bool in_float = l_max < kVnniSplitFloatLimit;
  __m512i counts = _mm512_setzero_si512();  // overflowed decided chains per lane
  int64_t overflowed_lanes = 0;              // overflowed undecided chains
  bool recomputed = false;
  for (int vec = 0; vec < kNv; ++vec) {
    __m512i state[4 * kMr];  // W, Q, max Q, min Q of each row
    VnniSplitRows6(a, ash, b + 16 * vec, n, 4 * kNr, state);
    const __m512i* w = state;
    const __m512i* q = state + kMr;
    const __m512i* hi = state + 2 * kMr;
    const __m512i* lo = state + 3 * kMr;
    for (int r = 0; r < kMr; ++r) {
      float* out = tile + r * kNr + 16 * vec;
      const __mmask16 saturated =
          _mm512_cmpeq_epi32_mask(hi[r], int_max) | _mm512_cmpeq_epi32_mask(lo[r], int_min);
      const __mmask16 over = static_cast<__mmask16>(
          (_mm512_cmpgt_epi32_mask(hi[r], over_up) | _mm512_cmpgt_epi32_mask(over_down, lo[r])) &
          ~saturated);
      const __mmask16 clean =
          _mm512_cmple_epi32_mask(hi[r], no_up) & _mm512_cmpge_epi32_mask(lo[r], no_down);
      const __mmask16 undecided = static_cast<__mmask16>(~(over | clean));
      if (__builtin_expect(__builtin_popcount(undecided) > kExactLanesMax, 0)) {
        // Many undecided lanes (adversarial data): the whole (row, vector) in INT64.
        overflowed_lanes += ExactRowVector<kNr>(a + r, b + 16 * vec, n, init, out);
        recomputed = true;
        continue;
      }
      counts = _mm512_mask_sub_epi32(counts, over, counts, _mm512_set1_epi32(-1));
      // The exact sum S = 4 Q + d, d = W - 4 Q (mod 2^32; |d| <= Lmax < 2^31),
      // rounded once to FP32.
      __m512 f;
      if (in_float) {
        const __m512i qh = _mm512_srai_epi32(q[r], 16);
        const __m512i low = _mm512_sub_epi32(w[r], _mm512_slli_epi32(qh, 18));
        f = _mm512_fmadd_ps(_mm512_cvtepi32_ps(qh), _mm512_set1_ps(262144.0f),
                            _mm512_cvtepi32_ps(low));
      } else {
        const __m512i d = _mm512_sub_epi32(w[r], _mm512_slli_epi32(q[r], 2));
        const __m512d four = _mm512_set1_pd(4.0);
        const __m256 low8 = _mm512_cvtpd_ps(_mm512_fmadd_pd(
            _mm512_cvtepi32_pd(_mm512_castsi512_si256(q[r])), four,
            _mm512_cvtepi32_pd(_mm512_castsi512_si256(d))));
        const __m256 high8 = _mm512_cvtpd_ps(_mm512_fmadd_pd(
            _mm512_cvtepi32_pd(_mm512_extracti64x4_epi64(q[r], 1)), four,
            _mm512_cvtepi32_pd(_mm512_extracti64x4_epi64(d, 1))));
        f = _mm512_insertf32x8(_mm512_castps256_ps512(low8), high8, 1);
      }
      if (__builtin_expect(undecided != 0, 0)) {
        // Lanes with a prefix near a limit or a saturated Q: their exact sums
        // and overflow tests in INT64, lane by lane (usually one lane).
        alignas(64) float sums[16];
        _mm512_store_ps(sums, f);
        for (unsigned m = undecided; m != 0; m &= m - 1) {
          const int l = __builtin_ctz(m);
          bool left = false;
          sums[l] = static_cast<float>(ExactChain(a + r, b + 16 * vec + l, n, kNr, &left));
          overflowed_lanes += left;
        }
        f = _mm512_load_ps(sums);
        recomputed = true;
      }
      _mm512_storeu_ps(out, init ? f : _mm512_add_ps(_mm512_loadu_ps(out), f));
    }
  }
  if (recomputed) stats->recomputed_tiles += 1;
  alignas(64) int32_t lane_counts[16];
  _mm512_store_si512(lane_counts, counts);
  int64_t overflowed = overflowed_lanes;
  for (int l = 0; l < 16; ++l) overflowed += lane_counts[l];
  return overflowed;
}

#undef DFP_VNNI_INLINE

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
    const bool init = first_call && c == 0;  // the tile holds nothing yet
    if (first == 0 && pairs <= kVnniCoarsePairs) {
      // Not even the first segment is proved: the split chains or the coarse
      // sums from the start.
      stats->overflowed_chunks += pairs <= kVnniSplitPairs
                                      ? VnniSplitChunk<kNv>(a, b, pairs, sb.chunk_sq[c], init, tile, stats)
                                      : VnniCoarseChunk<kNv>(a, b, pairs, init, tile, stats);
      continue;
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
    if (ChainCertified<kNv>(a, b, Min64(pairs, first * kSegPairs), proved, pairs, kSegPairs,
                            thr + first, init, tile) != 0) {
      // Some chain reached the INT32 limits: the chunk again, exactly.  On
      // the split chains (4 instructions per vector and step; exact sums and
      // overflow counts for every lane) rather than in INT64 (about 12): on
      // full-scale data such as a dense layer's ReLU inputs a sixth to a
      // quarter of the micro-tile chunks end here.  Counted once.
      const int64_t recomputed = stats->recomputed_tiles;
      if (pairs <= kVnniSplitPairs) {
        stats->overflowed_chunks +=
            VnniSplitChunk<kNv>(a, b, pairs, sb.chunk_sq[c], init, tile, stats);
      } else {
        if (init) std::memset(tile, 0, sizeof(float) * kMr * kNr);
        stats->overflowed_chunks += ExactChunkVector<kNv>(a, b, pairs, tile);
      }
      stats->recomputed_tiles = recomputed + 1;
    }
  }
}

}  // namespace
}  // namespace TF_LOWPREC_DFP_ISA
}  // namespace dfp_gemm
}  // namespace tf_lowprec

#endif  // TF_LOWPREC_KERNELS_DFP_GEMM_MICROKERNEL_VNNI_H_
