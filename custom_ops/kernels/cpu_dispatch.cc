// CPU feature detection and kernel selection for all ops (cpu_features.h),
// plus what the library reports about itself to Python without TensorFlow
// headers: its build record and the tier each op runs.
#include <cstdio>
#include <string>

#include "accumulation_gemm.h"
#include "bf16_gemm.h"
#include "cpu_features.h"
#include "dfp_gemm.h"
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

#if defined(__x86_64__) && defined(__GNUC__)
bool CpuSupportsAvx2() {
  static const bool supported = __builtin_cpu_supports("avx2") &&
                                __builtin_cpu_supports("fma") &&
                                __builtin_cpu_supports("f16c");
  return supported;
}
bool CpuSupportsAvx512() {
  static const bool supported =
      __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl");
  return supported;
}
bool CpuSupportsAvx512Vnni() {
  static const bool supported = CpuSupportsAvx512() && __builtin_cpu_supports("avx512vnni");
  return supported;
}
bool CpuSupportsAvx512Bf16() {
  static const bool supported = CpuSupportsAvx512() && __builtin_cpu_supports("avx512bf16");
  return supported;
}
#else
// Not x86-64: only the portable tier exists (the other tiers' translation
// units compile the portable code under their names, never selected).
bool CpuSupportsAvx2() { return false; }
bool CpuSupportsAvx512() { return false; }
bool CpuSupportsAvx512Vnni() { return false; }
bool CpuSupportsAvx512Bf16() { return false; }
#endif

const RoundingLoops* SelectRoundingLoops(const char* isa) {
  return SelectTier<RoundingLoops>(
      isa, {&portable::kRoundingLoops, &avx2::kRoundingLoops, &avx512::kRoundingLoops,
            CpuSupportsAvx512()});
}

namespace dfp_gemm {
const Kernels* SelectKernels(const char* isa) {
  return SelectTier<Kernels>(
      isa, {&portable::kKernels, &avx2::kKernels, &avx512vnni::kKernels, CpuSupportsAvx512Vnni()});
}
}  // namespace dfp_gemm

namespace bf16_gemm {
const Kernels* SelectKernels(const char* isa) {
  return SelectTier<Kernels>(
      isa, {&portable::kKernels, &avx2::kKernels, &avx512bf16::kKernels, CpuSupportsAvx512Bf16()});
}
}  // namespace bf16_gemm

namespace accumulation_gemm {
const Kernels* SelectKernels(const char* isa) {
  return SelectTier<Kernels>(
      isa, {&portable::kKernels, &avx2::kKernels, &avx512::kKernels, CpuSupportsAvx512()});
}
}  // namespace accumulation_gemm

namespace {

template <typename Table, typename Select>
std::string OpTiers(Select select) {
  std::string json = "{\"auto\": \"";
  json += select("auto")->isa;
  json += "\", \"available\": [";
  const char* names[] = {"portable", "avx2", "avx512"};
  bool first = true;
  for (const char* name : names) {
    if (select(name) == nullptr) continue;
    json += first ? "\"" : ", \"";
    json += name;
    json += "\"";
    first = false;
  }
  return json + "]}";
}

std::string KernelTiersJson() {
  std::string json = "{\"cpu\": {";
  json += std::string("\"avx2\": ") + (CpuSupportsAvx2() ? "true" : "false");
  json += std::string(", \"avx512\": ") + (CpuSupportsAvx512() ? "true" : "false");
  json += std::string(", \"avx512_vnni\": ") + (CpuSupportsAvx512Vnni() ? "true" : "false");
  json += std::string(", \"avx512_bf16\": ") + (CpuSupportsAvx512Bf16() ? "true" : "false");
  json += "}, \"rounding\": " + OpTiers<RoundingLoops>(SelectRoundingLoops);
  json += ", \"dfp_gemm\": " + OpTiers<dfp_gemm::Kernels>(dfp_gemm::SelectKernels);
  json += ", \"bf16_gemm\": " + OpTiers<bf16_gemm::Kernels>(bf16_gemm::SelectKernels);
  json += ", \"accumulation_gemm\": " +
          OpTiers<accumulation_gemm::Kernels>(accumulation_gemm::SelectKernels);
  return json + "}";
}

}  // namespace
}  // namespace tf_lowprec

// For Python (ctypes, after tf.load_op_library has loaded the library): the
// CPU's features and, per op, the tier "auto" runs and the tiers available,
// as JSON.  The string lives as long as the library.
extern "C" __attribute__((visibility("default"))) const char* tf_lowprec_kernel_tiers() {
  static const std::string json = tf_lowprec::KernelTiersJson();
  return json.c_str();
}
