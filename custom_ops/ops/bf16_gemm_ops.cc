// LowprecBf16Matmul: BF16 GEMM with the VDPBF16PS summation order.
//
// Registration and CPU kernel in one translation unit (TensorFlow headers
// compile slowly).  The arithmetic is in custom_ops/kernels/bf16_gemm_impl.h;
// this file checks shapes, picks the instruction set and runs the GEMM on
// TensorFlow's intra-op thread pool.
#include <cstdint>
#include <string>

#include "bf16_gemm.h"
#include "tensorflow/core/framework/common_shape_fns.h"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"
#include "tensorflow/core/framework/tensor.h"
#include "tensorflow/core/lib/core/threadpool.h"

namespace tf_lowprec {

using ::tensorflow::DEVICE_CPU;
using ::tensorflow::OpKernel;
using ::tensorflow::OpKernelConstruction;
using ::tensorflow::OpKernelContext;
using ::tensorflow::Status;
using ::tensorflow::Tensor;
using ::tensorflow::TensorShape;
using ::tensorflow::errors::InvalidArgument;
using ::tensorflow::shape_inference::DimensionHandle;
using ::tensorflow::shape_inference::InferenceContext;
using ::tensorflow::shape_inference::ShapeHandle;

REGISTER_OP("LowprecBf16Matmul")
    .Input("a: float")
    .Input("b: float")
    .Output("product: float")
    .Attr("transpose_a: bool = false")
    .Attr("transpose_b: bool = false")
    .Attr("isa: {'auto', 'portable', 'avx512'} = 'auto'")
    .SetShapeFn([](InferenceContext* c) -> Status {
      // a: [batch_a, m, k] (or [batch_a, k, m]); b: [batch_b, k, n] (or
      // [batch_b, n, k]); batch_a and batch_b are equal or 1.
      ShapeHandle a, b;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 3, &a));
      TF_RETURN_IF_ERROR(c->WithRank(c->input(1), 3, &b));
      bool ta, tb;
      TF_RETURN_IF_ERROR(c->GetAttr("transpose_a", &ta));
      TF_RETURN_IF_ERROR(c->GetAttr("transpose_b", &tb));
      DimensionHandle m = c->Dim(a, ta ? 2 : 1), ka = c->Dim(a, ta ? 1 : 2);
      DimensionHandle kb = c->Dim(b, tb ? 2 : 1), n = c->Dim(b, tb ? 1 : 2);
      DimensionHandle k;
      TF_RETURN_IF_ERROR(c->Merge(ka, kb, &k));
      DimensionHandle batch = c->Dim(a, 0);
      if (c->ValueKnown(batch) && c->Value(batch) == 1) batch = c->Dim(b, 0);
      c->set_output(0, c->MakeShape({batch, m, n}));
      return ::tensorflow::OkStatus();
    })
    .Doc(R"doc(
BF16 GEMM with a defined summation order: product[i] = op(a[i]) @ op(b[i])
with both operands rounded to BF16 (nearest even; subnormals then count as
zero) and every output accumulated in FP32 over K-pairs exactly as one lane
of VDPBF16PS does (odd element first; DAZ, FTZ, nearest even).  The
AVX512_BF16 kernel runs the instruction, the portable kernel emulates it
bit for bit (docs/bf16_gemm.md).  batch_a and batch_b are equal or 1.
)doc");

namespace {

constexpr int64_t kCoarseUnitCycles = 100000;

void RunOnPool(void* context, int64_t n, int64_t cost_per_unit,
               void (*fn)(void* arg, int64_t begin, int64_t end), void* arg) {
  auto* ctx = static_cast<OpKernelContext*>(context);
  auto* pool = ctx->device()->tensorflow_cpu_worker_threads()->workers;
  auto run = [fn, arg](int64_t begin, int64_t end) { fn(arg, begin, end); };
  if (cost_per_unit >= kCoarseUnitCycles) {
    // Large units of uneven cost (GEMM work items): about four blocks per
    // thread, handed out as threads become free, balance better than the
    // cost model's even split.
    const int64_t blocks = 4 * (pool->NumThreads() + 1);
    const int64_t block_size = (n + blocks - 1) / blocks;
    pool->ParallelFor(n, ::tensorflow::thread::ThreadPool::SchedulingParams::Fixed(block_size), run);
  } else {
    pool->ParallelFor(n, cost_per_unit, run);
  }
}

class Bf16MatmulOp : public OpKernel {
 public:
  explicit Bf16MatmulOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("transpose_a", &transpose_a_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("transpose_b", &transpose_b_));
    std::string isa;
    OP_REQUIRES_OK(ctx, ctx->GetAttr("isa", &isa));
    kernels_ = bf16_gemm::SelectKernels(isa.c_str());
    OP_REQUIRES(ctx, kernels_ != nullptr,
                InvalidArgument("isa='", isa, "' is not supported by this CPU (the avx512 "
                                "kernel needs AVX512_BF16); use 'auto' or 'portable'"));
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& a = ctx->input(0);
    const Tensor& b = ctx->input(1);
    OP_REQUIRES(ctx, a.dims() == 3 && b.dims() == 3,
                InvalidArgument("a and b must have rank 3 [batch, rows, cols], got shapes ",
                                a.shape().DebugString(), " and ", b.shape().DebugString()));
    const int64_t batch_a = a.dim_size(0), batch_b = b.dim_size(0);
    const int64_t m = a.dim_size(transpose_a_ ? 2 : 1), k = a.dim_size(transpose_a_ ? 1 : 2);
    const int64_t kb = b.dim_size(transpose_b_ ? 2 : 1), n = b.dim_size(transpose_b_ ? 1 : 2);
    OP_REQUIRES(ctx, k == kb,
                InvalidArgument("inner dimensions differ: a ", a.shape().DebugString(),
                                " (transpose_a=", transpose_a_, ") and b ",
                                b.shape().DebugString(), " (transpose_b=", transpose_b_, ")"));
    OP_REQUIRES(ctx, batch_a == batch_b || batch_a == 1 || batch_b == 1,
                InvalidArgument("batch dimensions ", batch_a, " and ", batch_b,
                                " must be equal or 1"));
    const int64_t batch = batch_a == 1 ? batch_b : batch_a;
    Tensor* out = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({batch, m, n}), &out));
    if (batch == 0 || m == 0 || n == 0) return;

    bf16_gemm::Problem p;
    p.batch = batch;
    p.m = m;
    p.n = n;
    p.k = k;
    p.a = a.flat<float>().data();
    p.a_batch_stride = batch_a == 1 ? 0 : m * k;
    p.transpose_a = transpose_a_;
    p.b = b.flat<float>().data();
    p.b_batch_stride = batch_b == 1 ? 0 : k * n;
    p.transpose_b = transpose_b_;
    p.out = out->flat<float>().data();
    ParallelFor parallel;
    parallel.context = ctx;
    parallel.run = RunOnPool;
    kernels_->gemm(p, parallel);
  }

 private:
  bool transpose_a_ = false, transpose_b_ = false;
  const bf16_gemm::Kernels* kernels_ = nullptr;
};

}  // namespace

REGISTER_KERNEL_BUILDER(Name("LowprecBf16Matmul").Device(DEVICE_CPU), Bf16MatmulOp);

}  // namespace tf_lowprec
