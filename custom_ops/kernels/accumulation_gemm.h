// GEMM with a low-precision accumulator: interface.
//
// Header-only declarations, free of TensorFlow includes: the per-ISA
// translation units (accumulation_gemm_portable.cc, _avx2.cc, _avx512.cc)
// include accumulation_gemm_impl.h with their own compiler flags, and the
// TensorFlow kernel (accumulation_gemm_kernels.cc) picks one at run time
// (cpu_dispatch.cc).
//
// What is computed, for every output element (b, i, j) (docs/accumulation.md):
//   products p_k = a[b, i, k] * b[b, k, j], exact;
//   K is cut into chunks of chunk_size consecutive k (one chunk when
//   chunk_size is 0); within a chunk the running sum starts at +0 and
//   acc <- fmt(acc + p_k) for each k in order, one rounding of the exact sum
//   (accumulation_step.h);
//   the result is the first chunk's sum, then total <- fmt(total + chunk_c)
//   for the chunks c = 1, 2, ... in order, again one rounding each.
// Every tier gives the same bits; stochastic rounding draws its bits per
// (element, step) (accumulation_step.h: StepRandom).
#ifndef TF_LOWPREC_KERNELS_ACCUMULATION_GEMM_H_
#define TF_LOWPREC_KERNELS_ACCUMULATION_GEMM_H_

#include <cstdint>

#include "batched_gemm_operands.h"
#include "cpu_features.h"
#include "number_formats.h"
#include "parallel_for.h"
#include "philox.h"

namespace tf_lowprec {
namespace accumulation_gemm {

struct Problem : BatchedGemmOperands {
  float* out = nullptr;  // [batch, m, n] row-major
  FloatGrid grid;
  Rounding rounding = Rounding::kNearestEven;
  int64_t chunk_size = 0;  // 0: the whole K is one chunk
  PhiloxState philox = {};  // stochastic rounding only
};

// Rounded additions per output element: K + chunks - 1 (0 when K is 0).
inline int64_t StepsPerElement(int64_t k, int64_t chunk_size) {
  if (k == 0) return 0;
  const int64_t chunk = chunk_size > 0 && chunk_size < k ? chunk_size : k;
  return k + (k + chunk - 1) / chunk - 1;
}

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
namespace avx512 {
extern const Kernels kKernels;
}

// "portable", "avx2", "avx512" or "auto"; nullptr for an unknown or
// unsupported name.  Defined in cpu_dispatch.cc (cpu_features.h).
const Kernels* SelectKernels(const char* isa);

}  // namespace accumulation_gemm
}  // namespace tf_lowprec

#endif  // TF_LOWPREC_KERNELS_ACCUMULATION_GEMM_H_
