// BF16 GEMM with a defined FP32 summation order: interface.
//
// Header-only declarations, free of TensorFlow includes: the per-ISA
// translation units (bf16_gemm_portable.cc, bf16_gemm_avx512.cc) include
// bf16_gemm_impl.h with their own compiler flags, and the TensorFlow kernel
// (custom_ops/kernels/bf16_gemm_kernels.cc) picks one at run time.
//
// What is computed (docs/bf16_gemm.md has the full statement and the probe
// that established it): both operands are rounded to BF16 (nearest even,
// NaN -> quiet NaN with its sign, as round_to_format(x, BF16)); BF16
// subnormals then count as zero with their sign (DAZ).  K is padded to an
// even length with zeros, and for every output element
//     acc = +0
//     for p in 0 .. K/2 - 1:
//       acc = step(acc, a[2p+1], b[2p+1])
//       acc = step(acc, a[2p],   b[2p])
// where step(acc, x, y) = acc + x * y with one rounding to nearest even
// (x * y is exact), results whose 24-bit rounding (exponent unbounded) lies
// below 2^-126 in magnitude flushed to zero with their sign (FTZ), and NaN
// results taken from x, else y, else acc (quiet), else the default NaN
// 0xFFC00000 (Inf * 0, Inf - Inf).  This is what one lane of VDPBF16PS does
// on the CPUs probed (benchmarks/vdpbf16ps_probe/), so the AVX512_BF16 kernel
// runs the instruction and the portable kernel emulates it, bit-identically.
#ifndef TF_LOWPREC_KERNELS_BF16_GEMM_H_
#define TF_LOWPREC_KERNELS_BF16_GEMM_H_

#include <cstdint>

#include "batched_gemm_operands.h"
#include "conv_gather.h"
#include "cpu_features.h"
#include "parallel_for.h"

namespace tf_lowprec {
namespace bf16_gemm {

// One (batched) GEMM out[batch] = op(a[batch]) @ op(b[batch]).
struct Problem : BatchedGemmOperands {
  // Implicit-GEMM convolution (batch 1): a is the patch matrix *a_patches,
  // [pixels, kh*kw*C], gathered from its input while packing and rounded as
  // a materialized a would be; a itself is then not read.  Not transposed,
  // it is the forward GEMM's a [m, k]; transposed ([k, m]: K runs over the
  // pixels), the filter gradient's.
  const ConvGather* a_patches = nullptr;
  float* out = nullptr;  // [batch, m, n] row-major
};

struct Kernels {
  const char* isa;
  void (*gemm)(const Problem& problem, const ParallelFor& parallel);
};

namespace portable {
extern const Kernels kKernels;
}
namespace avx2 {
extern const Kernels kKernels;
}
namespace avx512bf16 {
extern const Kernels kKernels;
}

// "portable", "avx2", "avx512" (the VDPBF16PS kernel) or "auto" (the fastest the CPU
// runs); nullptr for an unknown or unsupported name.  Defined in
// cpu_dispatch.cc (cpu_features.h).
const Kernels* SelectKernels(const char* isa);

}  // namespace bf16_gemm
}  // namespace tf_lowprec

#endif  // TF_LOWPREC_KERNELS_BF16_GEMM_H_
