// INT16 DFP GEMM: the portable micro-kernel (every chunk in INT64).
// Part of dfp_gemm_impl.h (compiled once per tier, inside the tier's
// namespace TF_LOWPREC_DFP_ISA; see there).
#ifndef TF_LOWPREC_KERNELS_DFP_GEMM_MICROKERNEL_PORTABLE_H_
#define TF_LOWPREC_KERNELS_DFP_GEMM_MICROKERNEL_PORTABLE_H_

#include <cstdint>
#include <cstring>

#include "dfp_gemm.h"
#include "dfp_gemm_exact.h"
#include "dfp_gemm_layout.h"

namespace tf_lowprec {
namespace dfp_gemm {
namespace TF_LOWPREC_DFP_ISA {
namespace {

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

}  // namespace
}  // namespace TF_LOWPREC_DFP_ISA
}  // namespace dfp_gemm
}  // namespace tf_lowprec

#endif  // TF_LOWPREC_KERNELS_DFP_GEMM_MICROKERNEL_PORTABLE_H_
