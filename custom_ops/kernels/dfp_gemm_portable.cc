// Portable INT16 shared-exponent GEMM (baseline instruction set): every chunk
// sum is computed in INT64.  Also the run-time choice of the kernel.
#define TF_LOWPREC_DFP_ISA portable
#define TF_LOWPREC_DFP_ISA_NAME "portable"
#define TF_LOWPREC_DFP_VNNI 0
#include "dfp_gemm_impl.h"

#include <cstring>

namespace tf_lowprec {
namespace dfp_gemm {

bool CpuSupportsAvx512Vnni() {
#if defined(__x86_64__) && defined(__GNUC__)
  // __builtin_cpu_supports also checks that the OS saves the zmm state.
  static const bool supported =
      __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl") &&
      __builtin_cpu_supports("avx512vnni");
  return supported;
#else
  return false;
#endif
}

const Kernels* SelectKernels(const char* isa) {
  if (std::strcmp(isa, "portable") == 0) return &portable::kKernels;
#if defined(__x86_64__)
  const bool vnni = CpuSupportsAvx512Vnni();
  if (std::strcmp(isa, "avx512") == 0) return vnni ? &avx512vnni::kKernels : nullptr;
  if (std::strcmp(isa, "auto") == 0) return vnni ? &avx512vnni::kKernels : &portable::kKernels;
#else
  if (std::strcmp(isa, "auto") == 0) return &portable::kKernels;
#endif
  return nullptr;
}

}  // namespace dfp_gemm
}  // namespace tf_lowprec
