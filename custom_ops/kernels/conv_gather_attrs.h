// What the implicit-GEMM convolution kernels (dfp_conv_kernels.cc,
// bf16_conv_kernels.cc) share on the TensorFlow side: the geometry
// attributes (strides, dilations, input_dilations, pads) of a spatial rank
// (2: NHWC, 3: NDHWC), checked, turned into the ConvGather of
// conv_gather.h, and the rank and shape checks of their operands.
// Included only by those *_kernels.cc files.
#ifndef TF_LOWPREC_KERNELS_CONV_GATHER_ATTRS_H_
#define TF_LOWPREC_KERNELS_CONV_GATHER_ATTRS_H_

#include <cstdint>
#include <vector>

#include "conv_gather.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/tensor.h"
#include "tensorflow/core/framework/tensor_shape.h"

namespace tf_lowprec {

// Output size of one spatial axis: the dilated input (size - 1) * l + 1,
// padded, covered by windows of (k - 1) * d + 1 every s.  0 if none fits.
inline int64_t ConvOutputSize(int64_t size, int64_t k, int64_t s, int64_t d, int64_t l,
                              int64_t before, int64_t after) {
  const int64_t extent = size == 0 ? 0 : (size - 1) * l + 1;
  const int64_t room = extent + before + after - ((k - 1) * d + 1);
  return room < 0 ? 0 : room / s + 1;
}

// The spatial axes' names, for messages: "(height, width)" or "(depth,
// height, width)".
inline const char* ConvAxisNames(int rank) {
  return rank == 3 ? "(depth, height, width)" : "(height, width)";
}

// Layout of x, for messages, by spatial rank.
inline const char* ConvInputLayout(int rank) {
  return rank == 3 ? "[batch, depth, height, width, channels]"
                   : "[batch, height, width, channels]";
}

// The geometry attributes of an implicit-GEMM convolution op with `rank`
// (2 or 3) spatial axes, checked at construction (an error names the
// attribute and what it must be).
class ConvGatherAttrs {
 public:
  ConvGatherAttrs(::tensorflow::OpKernelConstruction* ctx, int rank) : rank_(rank) {
    using ::tensorflow::errors::InvalidArgument;
    OP_REQUIRES_OK(ctx, ctx->GetAttr("strides", &strides_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("dilations", &dilations_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("input_dilations", &input_dilations_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("pads", &pads_));
    auto positive = [&](const std::vector<int64_t>& v, const char* name) {
      bool ok = v.size() == static_cast<size_t>(rank);
      for (int64_t e : v) ok = ok && e >= 1;
      OP_REQUIRES(ctx, ok,
                  InvalidArgument(name, " must be ", rank, " positive ints ",
                                  ConvAxisNames(rank), ", got ", v.size(), " values"));
    };
    positive(strides_, "strides");
    positive(dilations_, "dilations");
    positive(input_dilations_, "input_dilations");
    bool pads_ok = pads_.size() == 2 * static_cast<size_t>(rank);
    for (int64_t e : pads_) pads_ok = pads_ok && e >= 0;
    OP_REQUIRES(ctx, pads_ok,
                InvalidArgument("pads must be ", 2 * rank, " ints >= 0 (before, after per axis ",
                                ConvAxisNames(rank), "), got ", pads_.size(), " values"));
  }

  // The gather of x's patches for filters of spatial sizes k (rank() of
  // them; input left null).  A 2-D convolution is the 3-D one of depth 1:
  // the gather's leading axes that x lacks keep size, kernel, stride and
  // dilation 1.
  ConvGather Gather(const ::tensorflow::Tensor& x, const int64_t* k) const {
    int64_t size[3] = {1, 1, 1}, ks[3] = {1, 1, 1}, s[3] = {1, 1, 1}, d[3] = {1, 1, 1};
    int64_t l[3] = {1, 1, 1}, before[3] = {0, 0, 0}, after[3] = {0, 0, 0}, out[3];
    const int skip = 3 - rank_;
    for (int a = 0; a < rank_; ++a) {
      size[skip + a] = x.dim_size(1 + a);
      ks[skip + a] = k[a];
      s[skip + a] = strides_[a];
      d[skip + a] = dilations_[a];
      l[skip + a] = input_dilations_[a];
      before[skip + a] = pads_[2 * a];
      after[skip + a] = pads_[2 * a + 1];
    }
    for (int a = 0; a < 3; ++a) {
      out[a] = ConvOutputSize(size[a], ks[a], s[a], d[a], l[a], before[a], after[a]);
    }
    ConvGather g;
    g.batch = x.dim_size(0);
    g.depth = size[0];
    g.height = size[1];
    g.width = size[2];
    g.channels = x.dim_size(rank_ + 1);
    g.kd = ks[0];
    g.kh = ks[1];
    g.kw = ks[2];
    g.sd = s[0];
    g.sh = s[1];
    g.sw = s[2];
    g.dd = d[0];
    g.dh = d[1];
    g.dw = d[2];
    g.ld = l[0];
    g.lh = l[1];
    g.lw = l[2];
    g.pad_front = before[0];
    g.pad_top = before[1];
    g.pad_left = before[2];
    g.out_d = out[0];
    g.out_h = out[1];
    g.out_w = out[2];
    return g;
  }

  // The 2-D gather for kh x kw filters (rank() == 2).
  ConvGather Gather(const ::tensorflow::Tensor& x, int64_t kh, int64_t kw) const {
    const int64_t k[2] = {kh, kw};
    return Gather(x, k);
  }

  // The output grid [N, *out] of g (rank() spatial sizes) followed by last.
  ::tensorflow::TensorShape OutputShape(const ConvGather& g, int64_t last) const {
    ::tensorflow::TensorShape shape({g.batch});
    if (rank_ == 3) shape.AddDim(g.out_d);
    shape.AddDim(g.out_h);
    shape.AddDim(g.out_w);
    shape.AddDim(last);
    return shape;
  }

  int rank() const { return rank_; }

 private:
  int rank_;
  std::vector<int64_t> strides_, dilations_, input_dilations_, pads_;
};

inline bool CheckConvRank(::tensorflow::OpKernelContext* ctx, const ::tensorflow::Tensor& t,
                          int rank, const char* name, const char* layout) {
  if (t.dims() == rank) return true;
  ctx->CtxFailure(::tensorflow::errors::InvalidArgument(
      name, " must have rank ", rank, " ", layout, ", got shape ", t.shape().DebugString()));
  return false;
}

inline bool CheckConvRank4(::tensorflow::OpKernelContext* ctx, const ::tensorflow::Tensor& t,
                           const char* name, const char* layout) {
  return CheckConvRank(ctx, t, 4, name, layout);
}

// The forward op's operands for `rank` spatial axes: x [N, *spatial, C]
// and filters [*k, C, O] with every k >= 1.
inline bool CheckConvForwardOperands(::tensorflow::OpKernelContext* ctx,
                                     const ::tensorflow::Tensor& x,
                                     const ::tensorflow::Tensor& filters, int rank = 2) {
  using ::tensorflow::errors::InvalidArgument;
  if (!CheckConvRank(ctx, x, rank + 2, "x", ConvInputLayout(rank))) return false;
  if (!CheckConvRank(ctx, filters, rank + 2, "filters",
                     rank == 3 ? "[kd, kh, kw, channels, out_channels]"
                               : "[kh, kw, channels, out_channels]")) {
    return false;
  }
  if (filters.dim_size(rank) != x.dim_size(rank + 1)) {
    ctx->CtxFailure(InvalidArgument("x has ", x.dim_size(rank + 1),
                                    " channels but filters expect ", filters.dim_size(rank)));
    return false;
  }
  for (int a = 0; a < rank; ++a) {
    if (filters.dim_size(a) < 1) {
      ctx->CtxFailure(InvalidArgument("filters must have spatial sizes >= 1, got ",
                                      filters.shape().DebugString()));
      return false;
    }
  }
  return true;
}

// The filter gradient op's dy: [N, *out, O] for the gather g of x
// (attrs' spatial rank).
inline bool CheckConvErrorShape(::tensorflow::OpKernelContext* ctx, const ConvGatherAttrs& attrs,
                                const ConvGather& g, const ::tensorflow::Tensor& dy) {
  const int rank = attrs.rank();
  if (!CheckConvRank(ctx, dy, rank + 2, "dy",
                     rank == 3 ? "[batch, out_depth, out_height, out_width, out_channels]"
                               : "[batch, out_height, out_width, out_channels]")) {
    return false;
  }
  const ::tensorflow::TensorShape want = attrs.OutputShape(g, dy.dim_size(rank + 1));
  if (dy.shape() == want) return true;
  ctx->CtxFailure(::tensorflow::errors::InvalidArgument(
      "dy must have shape ", want.DebugString(), " for this x and geometry, got ",
      dy.shape().DebugString()));
  return false;
}

// flipped [*k, C, O] = flip(filters)^T for filters [*k, O, C] (kRank
// spatial axes): the taps reversed in every spatial axis, the last two axes
// swapped: the filters of a convolution's input gradient.  Fails the op
// (false) on a bad rank, empty spatial axes, or filters whose last
// dimension is not x's channel count.  Shared by the INT16 and BF16 conv
// ops' flip_filters (a few KiB, instead of ReverseV2 and Transpose ops).
template <int kRank>
bool FlipFilters(::tensorflow::OpKernelContext* ctx, const ::tensorflow::Tensor& x,
                 const ::tensorflow::Tensor& filters, ::tensorflow::Tensor* flipped) {
  using ::tensorflow::errors::InvalidArgument;
  if (!CheckConvRank(ctx, x, kRank + 2, "x", ConvInputLayout(kRank)) ||
      !CheckConvRank(ctx, filters, kRank + 2, "filters",
                     kRank == 3 ? "[kd, kh, kw, out_channels, channels]"
                                : "[kh, kw, out_channels, channels]")) {
    return false;
  }
  if (filters.dim_size(kRank + 1) != x.dim_size(kRank + 1)) {
    ctx->CtxFailure(InvalidArgument("x has ", x.dim_size(kRank + 1), " channels but flipped "
                                    "filters expect ", filters.dim_size(kRank + 1),
                                    " (their last dimension)"));
    return false;
  }
  ::tensorflow::TensorShape shape;
  int64_t taps = 1;
  for (int a = 0; a < kRank; ++a) {
    if (filters.dim_size(a) < 1) {
      ctx->CtxFailure(InvalidArgument("filters must have spatial sizes >= 1, got ",
                                      filters.shape().DebugString()));
      return false;
    }
    shape.AddDim(filters.dim_size(a));
    taps *= filters.dim_size(a);
  }
  const int64_t c_out = filters.dim_size(kRank), c_in = filters.dim_size(kRank + 1);
  shape.AddDim(c_in);
  shape.AddDim(c_out);
  auto status = ctx->allocate_temp(::tensorflow::DT_FLOAT, shape, flipped);
  if (!status.ok()) {
    ctx->CtxFailure(status);
    return false;
  }
  const float* w = filters.flat<float>().data();
  float* f = flipped->flat<float>().data();
  // Reversing the flattened tap index reverses every spatial axis.
  for (int64_t t = 0; t < taps; ++t) {
    const float* src = w + (taps - 1 - t) * c_out * c_in;  // [c_out][c_in]
    float* dst = f + t * c_in * c_out;                     // [c_in][c_out]
    for (int64_t o = 0; o < c_in; ++o) {
      for (int64_t c = 0; c < c_out; ++c) dst[o * c_out + c] = src[c * c_in + o];
    }
  }
  return true;
}

}  // namespace tf_lowprec

#endif  // TF_LOWPREC_KERNELS_CONV_GATHER_ATTRS_H_
