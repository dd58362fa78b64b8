// INT16 shared-exponent GEMM, compiled once per instruction set.
//
// dfp_gemm_portable.cc, dfp_gemm_avx2.cc and dfp_gemm_avx512.cc define
// TF_LOWPREC_DFP_ISA (the namespace), TF_LOWPREC_DFP_ISA_NAME,
// TF_LOWPREC_DFP_AVX2 and TF_LOWPREC_DFP_VNNI (0 or 1: which micro-kernel) and
// include this file with their own compiler flags.  Everything in it and in the headers it includes is in that
// namespace (and no standard-library templates are instantiated), so the
// copies never merge at link time.
//
// The parts, one concept each:
//   dfp_gemm_layout.h      tile sizes; exponent blocks, K pairs and
//                          certification segments in the packed panels
//   dfp_gemm_pack.h        packing a and b into INT16 K-pair panels
//   dfp_gemm_conv_pack.h   the same for a convolution's patch matrix,
//                          gathered from its input (implicit GEMM)
//   dfp_gemm_certify.h     segment norms and the overflow proof
//   dfp_gemm_exact.h       exact INT64 chunk sums and overflow counts
//   dfp_gemm_microkernel_{portable,avx2,vnni}.h   the tier's MicroKernel<kNv>
//   dfp_gemm_driver.h      work items, block scaling, NaN rows / columns
//
// Structure (a packed, cache-blocked GEMM in the GotoBLAS style):
//   1. pack: a and b are converted to INT16 mantissas I = y * 2^-E (exact:
//      y comes from quantize_dfp; or rounded to nearest even here, for the
//      fused path, Problem::round_inputs) and laid out as K-pairs, the
//      operand format of vpdpwssd and vpmaddwd: a in panels of kMr rows, b in panels of
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
// Chunks whose first segment cannot be proved run split chains instead
// (W of a and a saturating chain of a >> 2 with its extremes; VnniSplitChunk).
// The AVX2 path (vpmaddwd + vpaddd, which wraps) uses the same proof; its
// tracked steps test every step for signed overflow and count the wraps, so
// the exact sums come out of the tracked pass itself
// (dfp_gemm_microkernel_avx2.h).  The portable path computes every chunk in
// INT64 directly.  All count the (element, chunk) pairs whose INT32 chain
// would have overflowed, with the same definition.
#include <cstdint>
#include "dfp_gemm.h"
#include "dfp_gemm_certify.h"
#include "dfp_gemm_conv_pack.h"
#include "dfp_gemm_exact.h"
#include "dfp_gemm_layout.h"
#include "dfp_gemm_pack.h"

#if TF_LOWPREC_DFP_VNNI
#include "dfp_gemm_microkernel_vnni.h"
#elif TF_LOWPREC_DFP_AVX2
#include "dfp_gemm_microkernel_avx2.h"
#else
#include "dfp_gemm_microkernel_portable.h"
#endif

#include "dfp_gemm_driver.h"

namespace tf_lowprec {
namespace dfp_gemm {
namespace TF_LOWPREC_DFP_ISA {

extern const Kernels kKernels;
const Kernels kKernels = {TF_LOWPREC_DFP_ISA_NAME, &Gemm};

}  // namespace TF_LOWPREC_DFP_ISA
}  // namespace dfp_gemm
}  // namespace tf_lowprec
