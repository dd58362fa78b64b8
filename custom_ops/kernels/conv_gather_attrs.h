// What the implicit-GEMM convolution kernels (dfp_conv_kernels.cc,
// bf16_conv_kernels.cc) share on the TensorFlow side: the geometry
// attributes (strides, dilations, input_dilations, pads), checked, turned
// into the ConvGather of conv_gather.h, and the rank and shape checks of
// their operands.  Included only by those *_kernels.cc files.
#ifndef TF_LOWPREC_KERNELS_CONV_GATHER_ATTRS_H_
#define TF_LOWPREC_KERNELS_CONV_GATHER_ATTRS_H_

#include <cstdint>
#include <vector>

#include "conv_gather.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/tensor.h"

namespace tf_lowprec {

// Output size of one spatial axis: the dilated input (size - 1) * l + 1,
// padded, covered by windows of (k - 1) * d + 1 every s.  0 if none fits.
inline int64_t ConvOutputSize(int64_t size, int64_t k, int64_t s, int64_t d, int64_t l,
                              int64_t before, int64_t after) {
  const int64_t extent = size == 0 ? 0 : (size - 1) * l + 1;
  const int64_t room = extent + before + after - ((k - 1) * d + 1);
  return room < 0 ? 0 : room / s + 1;
}

// The geometry attributes of an implicit-GEMM convolution op, checked at
// construction (an error names the attribute and what it must be).
class ConvGatherAttrs {
 public:
  explicit ConvGatherAttrs(::tensorflow::OpKernelConstruction* ctx) {
    using ::tensorflow::errors::InvalidArgument;
    OP_REQUIRES_OK(ctx, ctx->GetAttr("strides", &strides_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("dilations", &dilations_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("input_dilations", &input_dilations_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("pads", &pads_));
    auto positive_pair = [&](const std::vector<int64_t>& v, const char* name) {
      OP_REQUIRES(ctx, v.size() == 2 && v[0] >= 1 && v[1] >= 1,
                  InvalidArgument(name, " must be two positive ints (height, width), got ",
                                  v.size(), " values"));
    };
    positive_pair(strides_, "strides");
    positive_pair(dilations_, "dilations");
    positive_pair(input_dilations_, "input_dilations");
    OP_REQUIRES(ctx, pads_.size() == 4 && pads_[0] >= 0 && pads_[1] >= 0 && pads_[2] >= 0 &&
                         pads_[3] >= 0,
                InvalidArgument("pads must be four ints >= 0 (top, bottom, left, right)"));
  }

  // The gather of x's patches for kh x kw filters (input left null).
  ConvGather Gather(const ::tensorflow::Tensor& x, int64_t kh, int64_t kw) const {
    ConvGather g;
    g.batch = x.dim_size(0);
    g.height = x.dim_size(1);
    g.width = x.dim_size(2);
    g.channels = x.dim_size(3);
    g.kh = kh;
    g.kw = kw;
    g.sh = strides_[0];
    g.sw = strides_[1];
    g.dh = dilations_[0];
    g.dw = dilations_[1];
    g.lh = input_dilations_[0];
    g.lw = input_dilations_[1];
    g.pad_top = pads_[0];
    g.pad_left = pads_[2];
    g.out_h = ConvOutputSize(g.height, kh, g.sh, g.dh, g.lh, pads_[0], pads_[1]);
    g.out_w = ConvOutputSize(g.width, kw, g.sw, g.dw, g.lw, pads_[2], pads_[3]);
    return g;
  }

 private:
  std::vector<int64_t> strides_, dilations_, input_dilations_, pads_;
};

inline bool CheckConvRank4(::tensorflow::OpKernelContext* ctx, const ::tensorflow::Tensor& t,
                           const char* name, const char* layout) {
  if (t.dims() == 4) return true;
  ctx->CtxFailure(::tensorflow::errors::InvalidArgument(
      name, " must have rank 4 ", layout, ", got shape ", t.shape().DebugString()));
  return false;
}

// The forward op's operands: x [N, H, W, C] and filters [kh, kw, C, O].
inline bool CheckConvForwardOperands(::tensorflow::OpKernelContext* ctx,
                                     const ::tensorflow::Tensor& x,
                                     const ::tensorflow::Tensor& filters) {
  using ::tensorflow::errors::InvalidArgument;
  if (!CheckConvRank4(ctx, x, "x", "[batch, height, width, channels]")) return false;
  if (!CheckConvRank4(ctx, filters, "filters", "[kh, kw, channels, out_channels]")) {
    return false;
  }
  if (filters.dim_size(2) != x.dim_size(3)) {
    ctx->CtxFailure(InvalidArgument("x has ", x.dim_size(3), " channels but filters expect ",
                                    filters.dim_size(2)));
    return false;
  }
  if (filters.dim_size(0) < 1 || filters.dim_size(1) < 1) {
    ctx->CtxFailure(InvalidArgument("filters must have kh, kw >= 1, got ",
                                    filters.shape().DebugString()));
    return false;
  }
  return true;
}

// The filter gradient op's dy: [N, OH, OW, O] for the gather g of x.
inline bool CheckConvErrorShape(::tensorflow::OpKernelContext* ctx, const ConvGather& g,
                                const ::tensorflow::Tensor& dy) {
  if (!CheckConvRank4(ctx, dy, "dy", "[batch, out_height, out_width, out_channels]")) {
    return false;
  }
  if (dy.dim_size(0) == g.batch && dy.dim_size(1) == g.out_h && dy.dim_size(2) == g.out_w) {
    return true;
  }
  ctx->CtxFailure(::tensorflow::errors::InvalidArgument(
      "dy must have shape [", g.batch, ", ", g.out_h, ", ", g.out_w,
      ", out_channels] for this x and geometry, got ", dy.shape().DebugString()));
  return false;
}

}  // namespace tf_lowprec

#endif  // TF_LOWPREC_KERNELS_CONV_GATHER_ATTRS_H_
