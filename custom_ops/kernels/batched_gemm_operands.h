// The operands of one (batched) float GEMM, as every GEMM kernel of the
// library takes them: out[batch] = op(a[batch]) @ op(b[batch]).  Each
// kernel's Problem adds what is its own (formats, exponents, rounding);
// batched_gemm_common.h's SetGemmOperands fills these fields from checked
// shapes.  Header-only, no TensorFlow: the tiers include it.
#ifndef TF_LOWPREC_KERNELS_BATCHED_GEMM_OPERANDS_H_
#define TF_LOWPREC_KERNELS_BATCHED_GEMM_OPERANDS_H_

#include <cstdint>

namespace tf_lowprec {

struct BatchedGemmOperands {
  int64_t batch = 1, m = 0, n = 0, k = 0;
  // a: per batch [m, k] row-major, or [k, m] when transpose_a.  A batch
  // stride of 0 broadcasts one matrix over the batch.
  const float* a = nullptr;
  int64_t a_batch_stride = 0;
  bool transpose_a = false;
  // b: per batch [k, n] row-major, or [n, k] when transpose_b.
  const float* b = nullptr;
  int64_t b_batch_stride = 0;
  bool transpose_b = false;
};

}  // namespace tf_lowprec

#endif  // TF_LOWPREC_KERNELS_BATCHED_GEMM_OPERANDS_H_
