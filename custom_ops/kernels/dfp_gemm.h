// INT16 shared-exponent GEMM (DFP16, Das et al. 2018): interface.
//
// Header-only declarations, free of TensorFlow includes: the per-ISA
// translation units (dfp_gemm_portable.cc, dfp_gemm_avx2.cc,
// dfp_gemm_avx512.cc) include dfp_gemm_impl.h with their own compiler flags,
// and the TensorFlow kernel (custom_ops/kernels/dfp_gemm_kernels.cc) picks one
// at run time (SelectKernels).
//
// What is computed (docs/dfp_gemm.md has the full statement):
//   a, b hold DFP values I * 2^E as produced by quantize_dfp (|I| <= 32767).
//   The reduction axis K is cut into exponent blocks (one block when the
//   exponents are per tensor) and every block into chunks of `chunk_size`
//   elements (the last chunk of a block may be shorter).  For one output:
//     S_c   = exact integer sum over the chunk of I_a * I_b
//     acc_b = FP32 sum, in chunk order, of float(S_c)   (acc_b starts at +0)
//     v_b   = float(acc_b * 2^(Ea_b + Eb_b))            (exact product, one rounding)
//     out   = v_0, then out = out + v_b in FP32 for b = 1, 2, ...
//   float(S) rounds to nearest even.  S_c is exact whatever its size: the
//   INT32 chain that computes it is proved or checked overflow-free, and
//   where it would have overflowed it is recomputed in INT64 (VNNI) or its
//   wraps are counted (AVX2); the portable kernel sums in INT64.
//   A row of a (or column of b) with a NaN or Inf anywhere along K makes its
//   whole output row (column) NaN.
#ifndef TF_LOWPREC_KERNELS_DFP_GEMM_H_
#define TF_LOWPREC_KERNELS_DFP_GEMM_H_

#include <cstdint>

#include "batched_gemm_operands.h"
#include "conv_gather.h"
#include "cpu_features.h"
#include "parallel_for.h"

namespace tf_lowprec {
namespace dfp_gemm {

constexpr int32_t kMaxMantissa = 32767;

// The patch matrix of an implicit-GEMM convolution (conv_gather.h).
using ::tf_lowprec::ConvGather;

// One (batched) GEMM out[batch] = op(a[batch]) @ op(b[batch]).
struct Problem : BatchedGemmOperands {
  // Shared exponents: ea[batch, row, block] and eb[batch, block, col], given
  // by strides (0 broadcasts).  Blocks have block_size elements along K.
  const int32_t* ea = nullptr;
  int64_t ea_batch_stride = 0, ea_row_stride = 0, ea_block_stride = 0;
  const int32_t* eb = nullptr;
  int64_t eb_batch_stride = 0, eb_block_stride = 0, eb_col_stride = 0;
  int64_t block_size = 0;  // >= 1; k (or more) for one exponent per tensor
  int64_t chunk_size = 64;  // even, >= 2
  // false: a and b must be DFP values I * 2^E (quantize_dfp outputs), checked.
  // true: a and b are any floats, rounded to I = round_half_even(y * 2^-E)
  // while packing: quantize_dfp's nearest_even rounding fused into the GEMM.
  // Exact only where y * 2^-E is computed exactly: -125 <= E <= 125 (or E =
  // kDfpNoScale), which the caller checks (FusedRoundingIsExact).
  bool round_inputs = false;
  // Implicit-GEMM convolution (batch 1, one exponent block): a is the patch
  // matrix *a_patches [m, k] (transpose_a false) or its transpose [m =
  // columns, k = pixels] (transpose_a true: a filter gradient patches^T @
  // dy), or b is *b_patches [k, n] (transpose_b false), gathered from its
  // input while packing; the operand's pointer (a or b) is then not read.
  const ConvGather* a_patches = nullptr;
  const ConvGather* b_patches = nullptr;
  float* out = nullptr;     // [batch, m, n] row-major
};

// Whether Problem::round_inputs reproduces quantize_dfp's nearest_even
// mantissas for the shared exponent e: the scaled values y * 2^-e that can
// round to a non-zero mantissa are then normal floats, computed exactly (and
// untouched by flush-to-zero / denormals-are-zero).
inline bool FusedRoundingIsExact(int32_t e) { return e == -1024 || (e >= -125 && e <= 125); }

struct Stats {
  // (output element, chunk) pairs whose plain INT32 chain would have
  // overflowed (some prefix of its pair sums left the INT32 range).
  int64_t overflowed_chunks = 0;
  // Micro-tile chunks computed a second time after a detection (split
  // chains or INT64; VNNI only), or with some chains recomputed in INT64.
  int64_t recomputed_tiles = 0;
  // Input elements that are not I * 2^E with an integer |I| <= 32767.
  int64_t invalid_inputs = 0;
};

using ::tf_lowprec::ParallelFor;  // parallel_for.h

struct Kernels {
  const char* isa;
  void (*gemm)(const Problem& problem, const ParallelFor& parallel, Stats* stats);
};

namespace portable {
extern const Kernels kKernels;
}
namespace avx2 {
extern const Kernels kKernels;
}
namespace avx512vnni {
extern const Kernels kKernels;
}

// Scratch memory (64-byte aligned) for the packed operands, kept between
// calls: fresh multi-megabyte buffers would be page-faulted in on every call
// (~10 % of a 2048^3 GEMM).  A few released blocks are cached (at most
// kWorkspaceCacheBytes in all); *capacity receives the block's size, to be
// passed back to ReleaseWorkspace.  Thread-safe.
constexpr int64_t kWorkspaceCacheBytes = int64_t{512} << 20;
void* AcquireWorkspace(int64_t bytes, int64_t* capacity);
void ReleaseWorkspace(void* block, int64_t capacity);

// "portable", "avx2", "avx512" (the VNNI kernel) or "auto" (the fastest the CPU
// runs); nullptr for an unknown or unsupported name.  Defined in
// cpu_dispatch.cc (cpu_features.h).
const Kernels* SelectKernels(const char* isa);

}  // namespace dfp_gemm
}  // namespace tf_lowprec

#endif  // TF_LOWPREC_KERNELS_DFP_GEMM_H_
