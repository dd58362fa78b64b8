// Run-time choice of the instruction set for the rounding loops.
#include <cstring>

#include "rounding_loops.h"

#ifndef TF_LOWPREC_BUILD_INFO
#define TF_LOWPREC_BUILD_INFO "{}"
#endif

// What the library was built against, as JSON after a marker.  The Python
// loader finds it in the file *before* loading the library (loading into a
// different TensorFlow can crash), see tf_lowprec/_op_library.py.
extern "C" {
__attribute__((used)) const char tf_lowprec_build_info[] =
    "TF_LOWPREC_BUILD_INFO=" TF_LOWPREC_BUILD_INFO;
}

namespace tf_lowprec {

bool CpuSupportsAvx512() {
#if defined(__x86_64__) && defined(__GNUC__)
  // __builtin_cpu_supports also checks that the OS saves the zmm state.
  static const bool supported = __builtin_cpu_supports("avx512f") &&
                                __builtin_cpu_supports("avx512bw") &&
                                __builtin_cpu_supports("avx512dq") &&
                                __builtin_cpu_supports("avx512vl");
  return supported;
#else
  return false;
#endif
}

const RoundingLoops* SelectRoundingLoops(const char* isa) {
  if (std::strcmp(isa, "portable") == 0) return &portable::kRoundingLoops;
  const bool avx512 = CpuSupportsAvx512();
  if (std::strcmp(isa, "avx512") == 0) return avx512 ? &avx512::kRoundingLoops : nullptr;
  if (std::strcmp(isa, "auto") == 0) {
    return avx512 ? &avx512::kRoundingLoops : &portable::kRoundingLoops;
  }
  return nullptr;
}

}  // namespace tf_lowprec
