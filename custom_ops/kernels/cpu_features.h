// CPU detection and the run-time choice of kernel tier, for every op.
//
// Each op (rounding loops, DFP16 GEMM, BF16 GEMM, accumulation GEMM) is
// compiled once per tier, in translation units of its own with that tier's
// compiler flags (setup.py):
//   portable  baseline instruction set of the target (SSE2 on x86-64)
//   avx2      AVX2 + FMA + F16C (Intel Haswell and later, AMD Zen 1-3, ...)
//   avx512    AVX-512 F/BW/DQ/VL plus what the op needs (VNNI for the DFP16
//             GEMM, AVX512_BF16 for the BF16 GEMM)
// All tiers give the same bits (tests/test_isa_equivalence.py and the ops'
// own tests).  "auto" picks the fastest tier the CPU and the OS support.
// cpu_dispatch.cc is the one place that detects features and selects kernels.
#ifndef TF_LOWPREC_KERNELS_CPU_FEATURES_H_
#define TF_LOWPREC_KERNELS_CPU_FEATURES_H_

#include <cstring>

namespace tf_lowprec {

// Feature sets, each checked with the OS's support for the register state
// (__builtin_cpu_supports does both).
bool CpuSupportsAvx2();          // AVX2, FMA, F16C
bool CpuSupportsAvx512();        // AVX-512 F, BW, DQ, VL
bool CpuSupportsAvx512Vnni();    // the above and AVX512_VNNI
bool CpuSupportsAvx512Bf16();    // the above and AVX512_BF16

// The tiers of one op, fastest last.  `avx512_supported` says whether this
// CPU runs the op's avx512 tier (the features differ per op).
template <typename Table>
struct Tiers {
  const Table* portable;
  const Table* avx2;
  const Table* avx512;
  bool avx512_supported;
};

// The table named by `isa` ("auto", "portable", "avx2" or "avx512"), or
// nullptr when the name is unknown or the CPU lacks the tier.
template <typename Table>
const Table* SelectTier(const char* isa, const Tiers<Table>& tiers) {
  const bool avx2 = CpuSupportsAvx2();
  if (std::strcmp(isa, "portable") == 0) return tiers.portable;
  if (std::strcmp(isa, "avx2") == 0) return avx2 ? tiers.avx2 : nullptr;
  if (std::strcmp(isa, "avx512") == 0) return tiers.avx512_supported ? tiers.avx512 : nullptr;
  if (std::strcmp(isa, "auto") == 0) {
    if (tiers.avx512_supported) return tiers.avx512;
    return avx2 ? tiers.avx2 : tiers.portable;
  }
  return nullptr;
}

}  // namespace tf_lowprec

#endif  // TF_LOWPREC_KERNELS_CPU_FEATURES_H_
