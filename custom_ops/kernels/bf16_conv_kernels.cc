// CPU kernels of LowprecBf16Conv2d / Conv3d and their BackpropFilter ops
// (registered in ops/bf16_conv_ops.cc): NHWC / NDHWC convolutions as
// implicit BF16 GEMMs, one kernel template per op, on the spatial rank.  The patch matrix is never materialized: the GEMM's packing gathers
// it from the input (Problem::a_patches, ConvGather in conv_gather.h) and
// rounds it to BF16 with the conversion it applies to a materialized a, so
// the bits are those of LowprecBf16Matmul on the im2col patches.
#include <cstdint>
#include <string>
#include <vector>

#include "batched_gemm_common.h"
#include "bf16_gemm.h"
#include "conv_gather_attrs.h"
#include "float_environment.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/tensor.h"

namespace tf_lowprec {

using ::tensorflow::DEVICE_CPU;
using ::tensorflow::OpKernel;
using ::tensorflow::OpKernelConstruction;
using ::tensorflow::OpKernelContext;
using ::tensorflow::Tensor;
using ::tensorflow::TensorShape;
using ::tensorflow::errors::InvalidArgument;

namespace {

// The kernel tier named by the op's isa attribute (nullptr, with the
// construction failed, if the CPU lacks it).
const bf16_gemm::Kernels* SelectConvKernels(OpKernelConstruction* ctx) {
  std::string isa;
  auto status = ctx->GetAttr("isa", &isa);
  if (!status.ok()) {
    ctx->CtxFailure(status);
    return nullptr;
  }
  const bf16_gemm::Kernels* kernels = bf16_gemm::SelectKernels(isa.c_str());
  if (kernels == nullptr) {
    ctx->CtxFailure(InvalidArgument("isa='", isa, "' is not supported by this CPU (avx2 "
                                    "needs AVX2, FMA and F16C; avx512 needs AVX512_BF16); "
                                    "use 'auto' or 'portable'"));
  }
  return kernels;
}

// y = conv(x, filters) with kRank (2 or 3) spatial axes: the GEMM
// patches(x) [N*OH*OW (*OD), k*C] @ filters [k*C, O] (k the taps, kh*kw or
// kd*kh*kw), patches gathered while packing.  With flip_filters, the GEMM's
// b is flip(filters)^T (the input gradient's filters: taps reversed in every
// spatial axis, the last two axes swapped).
template <int kRank>
class Bf16ConvOp : public OpKernel {
 public:
  explicit Bf16ConvOp(OpKernelConstruction* ctx)
      : OpKernel(ctx), geometry_(ctx, kRank), kernels_(SelectConvKernels(ctx)) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("flip_filters", &flip_filters_));
  }

  void Compute(OpKernelContext* ctx) override {
    const ScopedIeeeFloatEnvironment ieee;  // float_environment.h: keep subnormals
    const Tensor& x = ctx->input(0);
    const Tensor& filters = ctx->input(1);
    const float* b = nullptr;
    Tensor flipped;
    if (!flip_filters_) {
      if (!CheckConvForwardOperands(ctx, x, filters, kRank)) return;
      b = filters.flat<float>().data();  // [k*C, O] row-major
    } else {
      // The input gradient of a convolution with these filters [*k, C, O]
      // (x: its error, O channels): b = flip(filters)^T [*k, O, C].
      if (!FlipFilters<kRank>(ctx, x, filters, &flipped)) return;
      b = flipped.flat<float>().data();
    }
    const Tensor& b_shape = flip_filters_ ? flipped : filters;
    int64_t k[kRank];
    for (int a = 0; a < kRank; ++a) k[a] = b_shape.dim_size(a);
    ConvGather g = geometry_.Gather(x, k);
    const int64_t channels_out = b_shape.dim_size(kRank + 1);
    Tensor* out = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, geometry_.OutputShape(g, channels_out), &out));
    if (out->NumElements() == 0) return;
    g.input = x.flat<float>().data();
    bf16_gemm::Problem p;
    p.batch = 1;
    p.m = g.Rows();
    p.k = g.Columns();
    p.n = channels_out;
    p.a = g.input;  // (not read: a_patches)
    p.a_patches = &g;
    p.b = b;
    p.out = out->flat<float>().data();
    kernels_->gemm(p, IntraOpParallelFor(ctx, /*coarse_blocks=*/true));
  }

 private:
  ConvGatherAttrs geometry_;
  const bf16_gemm::Kernels* kernels_;
  bool flip_filters_ = false;
};

// d(filters) = patches(x)^T @ dy: the patch matrix is the GEMM's transposed
// a ([k = pixels, m = taps*C]), so every product is taken with the patch
// value as the first operand (whose NaN wins), as bf16_matmul(patches, dy,
// transpose_a=True) takes it, and the output is [*k, C, O] as it is.
template <int kRank>
class Bf16ConvBackpropFilterOp : public OpKernel {
 public:
  explicit Bf16ConvBackpropFilterOp(OpKernelConstruction* ctx)
      : OpKernel(ctx), geometry_(ctx, kRank), kernels_(SelectConvKernels(ctx)) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("filter_size", &filter_size_));
    bool ok = filter_size_.size() == static_cast<size_t>(kRank);
    for (int64_t v : filter_size_) ok = ok && v >= 1;
    OP_REQUIRES(ctx, ok,
                InvalidArgument("filter_size must be ", kRank, " positive ints ",
                                ConvAxisNames(kRank)));
  }

  void Compute(OpKernelContext* ctx) override {
    const ScopedIeeeFloatEnvironment ieee;
    const Tensor& x = ctx->input(0);
    const Tensor& dy = ctx->input(1);
    if (!CheckConvRank(ctx, x, kRank + 2, "x", ConvInputLayout(kRank))) return;
    ConvGather g = geometry_.Gather(x, filter_size_.data());
    if (!CheckConvErrorShape(ctx, geometry_, g, dy)) return;
    const int64_t channels_out = dy.dim_size(kRank + 1);
    TensorShape shape;
    for (int64_t v : filter_size_) shape.AddDim(v);
    shape.AddDim(g.channels);
    shape.AddDim(channels_out);
    Tensor* out = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, shape, &out));
    if (out->NumElements() == 0) return;
    g.input = x.flat<float>().data();
    bf16_gemm::Problem p;
    p.batch = 1;
    p.m = g.Columns();
    p.k = g.Rows();  // may be 0 (an empty batch): the GEMM then writes zeros
    p.n = channels_out;
    p.a = g.input;  // (not read: a_patches)
    p.a_patches = &g;
    p.transpose_a = true;
    p.b = dy.flat<float>().data();  // [pixels, O] row-major
    p.out = out->flat<float>().data();
    kernels_->gemm(p, IntraOpParallelFor(ctx, /*coarse_blocks=*/true));
  }

 private:
  ConvGatherAttrs geometry_;
  const bf16_gemm::Kernels* kernels_;
  std::vector<int64_t> filter_size_;
};

}  // namespace

REGISTER_KERNEL_BUILDER(Name("LowprecBf16Conv2d").Device(DEVICE_CPU), Bf16ConvOp<2>);
REGISTER_KERNEL_BUILDER(Name("LowprecBf16Conv2dBackpropFilter").Device(DEVICE_CPU),
                        Bf16ConvBackpropFilterOp<2>);
REGISTER_KERNEL_BUILDER(Name("LowprecBf16Conv3d").Device(DEVICE_CPU), Bf16ConvOp<3>);
REGISTER_KERNEL_BUILDER(Name("LowprecBf16Conv3dBackpropFilter").Device(DEVICE_CPU),
                        Bf16ConvBackpropFilterOp<3>);

}  // namespace tf_lowprec
