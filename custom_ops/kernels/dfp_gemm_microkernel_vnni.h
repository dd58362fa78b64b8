// INT16 DFP GEMM: the AVX-512 VNNI micro-kernel (vpdpwssds chains in inline
// assembly, certified or tracked; see dfp_gemm_impl.h, "Overflow").
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

}  // namespace
}  // namespace TF_LOWPREC_DFP_ISA
}  // namespace dfp_gemm
}  // namespace tf_lowprec

#endif  // TF_LOWPREC_KERNELS_DFP_GEMM_MICROKERNEL_VNNI_H_
