// CPU kernel of LowprecBf16Matmul (registered in ops/bf16_gemm_ops.cc).  The
// arithmetic is in bf16_gemm_impl.h (one copy per tier); this file checks
// shapes, picks the tier and runs the GEMM on TensorFlow's intra-op thread
// pool.
#include <cstdint>
#include <string>

#include "batched_gemm_common.h"
#include "bf16_gemm.h"
#include "float_environment.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/tensor.h"
#include "tensorflow/core/lib/core/threadpool.h"

namespace tf_lowprec {

using ::tensorflow::DEVICE_CPU;
using ::tensorflow::OpKernel;
using ::tensorflow::OpKernelConstruction;
using ::tensorflow::OpKernelContext;
using ::tensorflow::Tensor;
using ::tensorflow::TensorShape;
using ::tensorflow::errors::InvalidArgument;

namespace {

class Bf16MatmulOp : public OpKernel {
 public:
  explicit Bf16MatmulOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("transpose_a", &transpose_a_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("transpose_b", &transpose_b_));
    std::string isa;
    OP_REQUIRES_OK(ctx, ctx->GetAttr("isa", &isa));
    kernels_ = bf16_gemm::SelectKernels(isa.c_str());
    OP_REQUIRES(ctx, kernels_ != nullptr,
                InvalidArgument("isa='", isa, "' is not supported by this CPU (avx2 needs "
                                "AVX2, FMA and F16C; avx512 needs AVX512_BF16); use "
                                "'auto' or 'portable'"));
  }

  void Compute(OpKernelContext* ctx) override {
    const ScopedIeeeFloatEnvironment ieee;  // float_environment.h: keep subnormals
    const Tensor& a = ctx->input(0);
    const Tensor& b = ctx->input(1);
    GemmShape shape;
    if (!CheckGemmShape(ctx, a, b, transpose_a_, transpose_b_, &shape)) return;
    Tensor* out = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({shape.batch, shape.m, shape.n}),
                                             &out));
    if (shape.batch == 0 || shape.m == 0 || shape.n == 0) return;

    bf16_gemm::Problem p;
    SetGemmOperands(shape, a.flat<float>().data(), b.flat<float>().data(), transpose_a_,
                    transpose_b_, &p);
    p.out = out->flat<float>().data();
    kernels_->gemm(p, IntraOpParallelFor(ctx, /*coarse_blocks=*/true));
  }

 private:
  bool transpose_a_ = false, transpose_b_ = false;
  const bf16_gemm::Kernels* kernels_ = nullptr;
};

}  // namespace

REGISTER_KERNEL_BUILDER(Name("LowprecBf16Matmul").Device(DEVICE_CPU), Bf16MatmulOp);

}  // namespace tf_lowprec
