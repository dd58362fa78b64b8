// A thread pool as a plain function pointer, so that the header-only kernels
// (compiled per instruction set, without TensorFlow headers) can run work on
// TensorFlow's intra-op pool; the op files supply `run`.
#ifndef TF_LOWPREC_KERNELS_PARALLEL_FOR_H_
#define TF_LOWPREC_KERNELS_PARALLEL_FOR_H_

#include <cstdint>

namespace tf_lowprec {

// Runs fn(arg, begin, end) over [0, n) on some thread pool; cost_per_unit is
// a rough count of cycles per unit (TensorFlow's ParallelFor heuristic).
struct ParallelFor {
  void* context = nullptr;
  void (*run)(void* context, int64_t n, int64_t cost_per_unit,
              void (*fn)(void* arg, int64_t begin, int64_t end), void* arg) = nullptr;
};

}  // namespace tf_lowprec

#endif  // TF_LOWPREC_KERNELS_PARALLEL_FOR_H_
