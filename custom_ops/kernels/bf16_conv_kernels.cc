// CPU kernels of LowprecBf16Conv2d and LowprecBf16Conv2dBackpropFilter
// (registered in ops/bf16_conv_ops.cc): NHWC convolutions as implicit BF16
// GEMMs.  The patch matrix is never materialized: the GEMM's packing gathers
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

// y = conv2d(x, filters): the GEMM patches(x) [N*OH*OW, kh*kw*C] @ filters
// [kh*kw*C, O], patches gathered while packing.  With flip_filters, the
// GEMM's b is flip(filters)^T (the input gradient's filters).
class Bf16Conv2dOp : public OpKernel {
 public:
  explicit Bf16Conv2dOp(OpKernelConstruction* ctx)
      : OpKernel(ctx), geometry_(ctx, /*rank=*/2), kernels_(SelectConvKernels(ctx)) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("flip_filters", &flip_filters_));
  }

  void Compute(OpKernelContext* ctx) override {
    const ScopedIeeeFloatEnvironment ieee;  // float_environment.h: keep subnormals
    const Tensor& x = ctx->input(0);
    const Tensor& filters = ctx->input(1);
    const float* b = nullptr;
    Tensor flipped;
    if (!flip_filters_) {
      if (!CheckConvForwardOperands(ctx, x, filters)) return;
      b = filters.flat<float>().data();  // [kh*kw*C, O] row-major
    } else {
      // The input gradient of a convolution with these filters [kh, kw, C,
      // O] (x: its error, O channels): b = flip(filters)^T [kh, kw, O, C],
      // written here (a few KiB) instead of by ReverseV2 and Transpose ops.
      if (!CheckConvRank4(ctx, x, "x", "[batch, height, width, channels]") ||
          !CheckConvRank4(ctx, filters, "filters", "[kh, kw, out_channels, channels]")) {
        return;
      }
      OP_REQUIRES(ctx, filters.dim_size(3) == x.dim_size(3),
                  InvalidArgument("x has ", x.dim_size(3), " channels but flipped filters "
                                  "expect ", filters.dim_size(3), " (their last dimension)"));
      OP_REQUIRES(ctx, filters.dim_size(0) >= 1 && filters.dim_size(1) >= 1,
                  InvalidArgument("filters must have spatial sizes >= 1, got ",
                                  filters.shape().DebugString()));
      const int64_t kh = filters.dim_size(0), kw = filters.dim_size(1);
      const int64_t c_out = filters.dim_size(2), c_in = filters.dim_size(3);
      OP_REQUIRES_OK(ctx, ctx->allocate_temp(::tensorflow::DT_FLOAT,
                                             TensorShape({kh, kw, c_in, c_out}), &flipped));
      const float* w = filters.flat<float>().data();
      float* f = flipped.flat<float>().data();
      const int64_t taps = kh * kw;
      for (int64_t t = 0; t < taps; ++t) {  // tap t of the flip is tap taps-1-t of w
        const float* src = w + (taps - 1 - t) * c_out * c_in;  // [c_out][c_in]
        float* dst = f + t * c_in * c_out;                     // [c_in][c_out]
        for (int64_t o = 0; o < c_in; ++o) {
          for (int64_t c = 0; c < c_out; ++c) dst[o * c_out + c] = src[c * c_in + o];
        }
      }
      b = f;
    }
    const Tensor& b_shape = flip_filters_ ? flipped : filters;
    ConvGather g = geometry_.Gather(x, b_shape.dim_size(0), b_shape.dim_size(1));
    const int64_t channels_out = b_shape.dim_size(3);
    Tensor* out = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(
                            0, TensorShape({g.batch, g.out_h, g.out_w, channels_out}), &out));
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
// a ([k = N*OH*OW, m = kh*kw*C]), so every product is taken with the patch
// value as the first operand (whose NaN wins), as bf16_matmul(patches, dy,
// transpose_a=True) takes it, and the output is [kh, kw, C, O] as it is.
class Bf16Conv2dBackpropFilterOp : public OpKernel {
 public:
  explicit Bf16Conv2dBackpropFilterOp(OpKernelConstruction* ctx)
      : OpKernel(ctx), geometry_(ctx, /*rank=*/2), kernels_(SelectConvKernels(ctx)) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("filter_size", &filter_size_));
    OP_REQUIRES(ctx, filter_size_.size() == 2 && filter_size_[0] >= 1 && filter_size_[1] >= 1,
                InvalidArgument("filter_size must be two positive ints (kh, kw)"));
  }

  void Compute(OpKernelContext* ctx) override {
    const ScopedIeeeFloatEnvironment ieee;
    const Tensor& x = ctx->input(0);
    const Tensor& dy = ctx->input(1);
    if (!CheckConvRank4(ctx, x, "x", "[batch, height, width, channels]")) return;
    ConvGather g = geometry_.Gather(x, filter_size_[0], filter_size_[1]);
    if (!CheckConvErrorShape(ctx, geometry_, g, dy)) return;
    const int64_t channels_out = dy.dim_size(3);
    Tensor* out = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({g.kh, g.kw, g.channels,
                                                             channels_out}), &out));
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
    p.b = dy.flat<float>().data();  // [N*OH*OW, O] row-major
    p.out = out->flat<float>().data();
    kernels_->gemm(p, IntraOpParallelFor(ctx, /*coarse_blocks=*/true));
  }

 private:
  ConvGatherAttrs geometry_;
  const bf16_gemm::Kernels* kernels_;
  std::vector<int64_t> filter_size_;
};

}  // namespace

REGISTER_KERNEL_BUILDER(Name("LowprecBf16Conv2d").Device(DEVICE_CPU), Bf16Conv2dOp);
REGISTER_KERNEL_BUILDER(Name("LowprecBf16Conv2dBackpropFilter").Device(DEVICE_CPU),
                        Bf16Conv2dBackpropFilterOp);

}  // namespace tf_lowprec
