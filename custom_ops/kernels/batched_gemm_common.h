// What the GEMM kernels (LowprecDfpMatmul*, LowprecBf16Matmul) share on the
// TensorFlow side: the checks of the [batch, rows, cols] operand convention
// (ops/batched_gemm_shape.h is its shape function), and the bridge from the
// header-only kernels' ParallelFor to the op's intra-op thread pool.
// Included only by the *_kernels.cc files.
#ifndef TF_LOWPREC_KERNELS_BATCHED_GEMM_COMMON_H_
#define TF_LOWPREC_KERNELS_BATCHED_GEMM_COMMON_H_

#include <cstdint>

#include "float_environment.h"
#include "parallel_for.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/tensor.h"
#include "tensorflow/core/lib/core/threadpool.h"
#include "tensorflow/core/util/overflow.h"

namespace tf_lowprec {

// m, n, k and the batches of a GEMM of a ([batch_a, m, k] or transposed) and
// b ([batch_b, k, n] or transposed).
struct GemmShape {
  int64_t batch_a, batch_b, batch, m, n, k;
};

// Fills *shape; false (with the op's error set) if the operands do not fit.
inline bool CheckGemmShape(::tensorflow::OpKernelContext* ctx, const ::tensorflow::Tensor& a,
                           const ::tensorflow::Tensor& b, bool transpose_a, bool transpose_b,
                           GemmShape* shape) {
  using ::tensorflow::errors::InvalidArgument;
  if (a.dims() != 3 || b.dims() != 3) {
    ctx->CtxFailure(InvalidArgument("a and b must have rank 3 [batch, rows, cols], got shapes ",
                                    a.shape().DebugString(), " and ", b.shape().DebugString()));
    return false;
  }
  shape->batch_a = a.dim_size(0);
  shape->batch_b = b.dim_size(0);
  shape->m = a.dim_size(transpose_a ? 2 : 1);
  shape->k = a.dim_size(transpose_a ? 1 : 2);
  const int64_t kb = b.dim_size(transpose_b ? 2 : 1);
  shape->n = b.dim_size(transpose_b ? 1 : 2);
  if (shape->k != kb) {
    ctx->CtxFailure(InvalidArgument("inner dimensions differ: a ", a.shape().DebugString(),
                                    " (transpose_a=", transpose_a, ") and b ",
                                    b.shape().DebugString(), " (transpose_b=", transpose_b, ")"));
    return false;
  }
  if (!(shape->batch_a == shape->batch_b || shape->batch_a == 1 || shape->batch_b == 1)) {
    ctx->CtxFailure(InvalidArgument("batch dimensions ", shape->batch_a, " and ", shape->batch_b,
                                    " must be equal or 1"));
    return false;
  }
  shape->batch = shape->batch_a == 1 ? shape->batch_b : shape->batch_a;
  // With k = 0 the operands hold no elements whatever m and n are, so the
  // output's element count can exceed int64 (TensorShape would abort the
  // process): refuse it.
  if (::tensorflow::MultiplyWithoutOverflow(shape->batch, shape->m) < 0 ||
      ::tensorflow::MultiplyWithoutOverflow(shape->batch * shape->m, shape->n) < 0) {
    ctx->CtxFailure(InvalidArgument("the product would have ", shape->batch, " x ", shape->m,
                                    " x ", shape->n, " elements, more than int64 can count"));
    return false;
  }
  return true;
}

// The operand fields that the kernels' Problem structs (dfp_gemm.h,
// bf16_gemm.h) share: sizes, the row-major data of a and b (the tensors' or
// copies of them), batch strides (0 broadcasts a batch of 1) and transposes.
template <typename Problem>
void SetGemmOperands(const GemmShape& shape, const float* a, const float* b, bool transpose_a,
                     bool transpose_b, Problem* p) {
  p->batch = shape.batch;
  p->m = shape.m;
  p->n = shape.n;
  p->k = shape.k;
  p->a = a;
  p->a_batch_stride = shape.batch_a == 1 ? 0 : shape.m * shape.k;
  p->transpose_a = transpose_a;
  p->b = b;
  p->b_batch_stride = shape.batch_b == 1 ? 0 : shape.k * shape.n;
  p->transpose_b = transpose_b;
}

// ParallelFor::run on the intra-op pool of the OpKernelContext `context`.
// With coarse_blocks, work of cost_per_unit >= kCoarseUnitCycles (GEMM work
// items of uneven cost) goes out in about four blocks per thread, handed out
// as threads become free, which balances better than the cost model's even
// split.
constexpr int64_t kCoarseUnitCycles = 100000;

template <bool kCoarseBlocks>
void RunOnIntraOpPool(void* context, int64_t n, int64_t cost_per_unit,
                      void (*fn)(void* arg, int64_t begin, int64_t end), void* arg) {
  auto* ctx = static_cast<::tensorflow::OpKernelContext*>(context);
  auto* pool = ctx->device()->tensorflow_cpu_worker_threads()->workers;
  auto run = [fn, arg](int64_t begin, int64_t end) {
    const ScopedIeeeFloatEnvironment ieee;  // the pool threads flush denormals
    fn(arg, begin, end);
  };
  if (kCoarseBlocks && cost_per_unit >= kCoarseUnitCycles) {
    const int64_t blocks = 4 * (pool->NumThreads() + 1);
    const int64_t block_size = (n + blocks - 1) / blocks;
    pool->ParallelFor(n, ::tensorflow::thread::ThreadPool::SchedulingParams::Fixed(block_size),
                      run);
  } else {
    pool->ParallelFor(n, cost_per_unit, run);
  }
}

inline ParallelFor IntraOpParallelFor(::tensorflow::OpKernelContext* ctx, bool coarse_blocks) {
  ParallelFor parallel;
  parallel.context = ctx;
  parallel.run = coarse_blocks ? RunOnIntraOpPool<true> : RunOnIntraOpPool<false>;
  return parallel;
}

}  // namespace tf_lowprec

#endif  // TF_LOWPREC_KERNELS_BATCHED_GEMM_COMMON_H_
