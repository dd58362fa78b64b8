// CPU kernel of LowprecAccumulationMatmul (registered in
// ops/accumulation_gemm_ops.cc).  The arithmetic is in
// accumulation_gemm_impl.h (one copy per tier); this file reads the format,
// checks shapes, picks the tier and runs the GEMM on TensorFlow's intra-op
// thread pool.
#include <cstdint>
#include <string>

#include "accumulation_gemm.h"
#include "batched_gemm_common.h"
#include "float_environment.h"
#include "float_format_attrs.h"
#include "number_formats.h"
#include "philox.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/tensor.h"
#include "tensorflow/core/util/overflow.h"

namespace tf_lowprec {

using ::tensorflow::DEVICE_CPU;
using ::tensorflow::OpKernel;
using ::tensorflow::OpKernelConstruction;
using ::tensorflow::OpKernelContext;
using ::tensorflow::Tensor;
using ::tensorflow::TensorShape;
using ::tensorflow::errors::InvalidArgument;

namespace {

class AccumulationMatmulOp : public OpKernel {
 public:
  explicit AccumulationMatmulOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    FloatFormatSpec spec;
    std::string rounding, isa;
    OP_REQUIRES_OK(ctx, GetFloatFormatAttrs(ctx, &spec));
    const std::string error = DeriveFloatGrid(spec, &grid_);
    OP_REQUIRES(ctx, error.empty(), InvalidArgument(error));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("chunk_size", &chunk_size_));
    OP_REQUIRES(ctx, chunk_size_ >= 0,
                InvalidArgument("chunk_size must be >= 0 (0: the whole K), got ", chunk_size_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("rounding", &rounding));
    rounding_ = rounding == "stochastic"    ? Rounding::kStochastic
                : rounding == "toward_zero" ? Rounding::kTowardZero
                                            : Rounding::kNearestEven;
    OP_REQUIRES_OK(ctx, ctx->GetAttr("transpose_a", &transpose_a_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("transpose_b", &transpose_b_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("isa", &isa));
    kernels_ = accumulation_gemm::SelectKernels(isa.c_str());
    OP_REQUIRES(ctx, kernels_ != nullptr,
                InvalidArgument("isa='", isa, "' is not supported by this CPU (avx2 needs "
                                "AVX2, FMA and F16C; avx512 needs AVX-512 F/BW/DQ/VL); use "
                                "'auto' or 'portable'"));
  }

  void Compute(OpKernelContext* ctx) override {
    const ScopedIeeeFloatEnvironment ieee;  // float_environment.h: keep subnormals
    const Tensor& a = ctx->input(0);
    const Tensor& b = ctx->input(1);
    const Tensor& seed = ctx->input(2);
    OP_REQUIRES(ctx, seed.dims() == 1 && seed.dim_size(0) == 2,
                InvalidArgument("seed must be an int64 tensor of shape [2], got shape ",
                                seed.shape().DebugString()));
    GemmShape shape;
    if (!CheckGemmShape(ctx, a, b, transpose_a_, transpose_b_, &shape)) return;
    // Stochastic rounding numbers the steps of all elements in one int64.
    const int64_t steps = accumulation_gemm::StepsPerElement(shape.k, chunk_size_);
    const int64_t elements = shape.batch * shape.m * shape.n;  // checked by CheckGemmShape
    OP_REQUIRES(ctx, ::tensorflow::MultiplyWithoutOverflow(elements, steps) >= 0,
                InvalidArgument("the product has ", elements, " elements of ", steps,
                                " rounded additions each, more than int64 can count"));
    Tensor* out = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({shape.batch, shape.m, shape.n}),
                                             &out));
    if (elements == 0) return;

    accumulation_gemm::Problem p;
    SetGemmOperands(shape, a.flat<float>().data(), b.flat<float>().data(), transpose_a_,
                    transpose_b_, &p);
    p.out = out->flat<float>().data();
    p.grid = grid_;
    p.rounding = rounding_;
    p.chunk_size = chunk_size_;
    auto s = seed.flat<int64_t>();
    p.philox = PhiloxFromSeed(static_cast<uint64_t>(s(0)), static_cast<uint64_t>(s(1)));
    kernels_->gemm(p, IntraOpParallelFor(ctx, /*coarse_blocks=*/true));
  }

 private:
  FloatGrid grid_;
  int64_t chunk_size_ = 0;
  Rounding rounding_ = Rounding::kNearestEven;
  bool transpose_a_ = false, transpose_b_ = false;
  const accumulation_gemm::Kernels* kernels_ = nullptr;
};

}  // namespace

REGISTER_KERNEL_BUILDER(Name("LowprecAccumulationMatmul").Device(DEVICE_CPU),
                        AccumulationMatmulOp);

}  // namespace tf_lowprec
