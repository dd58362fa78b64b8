// What the DFP GEMM op kernels share (dfp_gemm_kernels.cc defines it; the
// convolution kernels in dfp_conv_kernels.cc use it): running a GEMM with
// its counters (LowprecDfpGemmCounters), the chunk-size / isa checks, and
// quantize_dfp's per-tensor shared exponents.
#ifndef TF_LOWPREC_KERNELS_DFP_GEMM_OP_COMMON_H_
#define TF_LOWPREC_KERNELS_DFP_GEMM_OP_COMMON_H_

#include <cstdint>
#include <string>

#include "dfp_gemm.h"
#include "number_formats.h"
#include "rounding_loops.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/tensor.h"

namespace tf_lowprec {

// Runs the GEMM p (out and exponents set), fails the op on invalid inputs,
// writes the overflow count and adds to the process-wide counters;
// chains_per_output: INT32 chains of one output element.
void RunDfpGemm(::tensorflow::OpKernelContext* ctx, const dfp_gemm::Kernels* kernels,
                dfp_gemm::Problem& p, int64_t chains_per_output, ::tensorflow::Tensor* overflow);

// Adds to the process-wide counters (LowprecDfpGemmCounters) for INT16
// products computed outside the GEMM (the direct depthwise convolution,
// dfp_depthwise_kernels.cc): `calls` operations, `chains` (output, chunk)
// chunk sums, `overflowed` of them whose INT32 chain would have overflowed.
void AddDfpGemmCounters(int64_t calls, int64_t chains, int64_t overflowed);

// The attributes every DFP GEMM op has: the overflow-check chunk size, and
// the kernel set named by `isa`.
::tensorflow::Status CheckChunkSizeAndSelectKernels(int64_t chunk_size, const std::string& isa,
                                                    const dfp_gemm::Kernels** kernels);

// quantize_dfp's per-tensor exponents of x and y (spec's bits and shift),
// from their largest finite magnitudes: one parallel pass over both.
void DfpSharedExponents(::tensorflow::OpKernelContext* ctx, const RoundingLoops* loops,
                        const DfpSpec& spec, const float* x, int64_t nx, const float* y,
                        int64_t ny, int32_t* ex, int32_t* ey);

}  // namespace tf_lowprec

#endif  // TF_LOWPREC_KERNELS_DFP_GEMM_OP_COMMON_H_
