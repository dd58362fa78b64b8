// Portable BF16 GEMM (baseline instruction set): VDPBF16PS emulated in
// scalar FP32/FP64 code, bit-identical to the instruction.  Also the run-time
// choice of the kernel.  Compiled without -ffast-math (NaN tests, no
// reassociation).
#define TF_LOWPREC_BF16_ISA portable
#define TF_LOWPREC_BF16_ISA_NAME "portable"
#define TF_LOWPREC_BF16_NATIVE 0
#include "bf16_gemm_impl.h"

#include <cstring>

namespace tf_lowprec {
namespace bf16_gemm {

bool CpuSupportsAvx512Bf16() {
#if defined(__x86_64__) && defined(__GNUC__)
  // __builtin_cpu_supports also checks that the OS saves the zmm state.
  static const bool supported =
      __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl") &&
      __builtin_cpu_supports("avx512bf16");
  return supported;
#else
  return false;
#endif
}

const Kernels* SelectKernels(const char* isa) {
  if (std::strcmp(isa, "portable") == 0) return &portable::kKernels;
#if defined(__x86_64__)
  const bool native = CpuSupportsAvx512Bf16();
  if (std::strcmp(isa, "avx512") == 0) return native ? &avx512bf16::kKernels : nullptr;
  if (std::strcmp(isa, "auto") == 0) return native ? &avx512bf16::kKernels : &portable::kKernels;
#else
  if (std::strcmp(isa, "auto") == 0) return &portable::kKernels;
#endif
  return nullptr;
}

}  // namespace bf16_gemm
}  // namespace tf_lowprec
