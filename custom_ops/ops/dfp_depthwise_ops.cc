// Registration and shape functions of LowprecDfpDepthwiseConv2d and
// LowprecDfpDepthwiseConv2dBackpropFilter: NHWC depthwise convolutions on
// INT16 mantissas (DFP16), computed directly (no GEMM, no patch matrix).
// Kernels in kernels/dfp_depthwise_kernels.cc; the Python wrapper is
// tf_lowprec.gemm.dfp_depthwise (used by lp.dfp_conv2d with groups equal to
// the input channels, and so by keras DepthwiseConv2D / DepthwiseConv1D /
// SeparableConv under a dfp16 policy).
#include <cstdint>
#include <vector>

#include "conv_gather_shape.h"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/shape_inference.h"

namespace tf_lowprec {

using ::tensorflow::Status;
using ::tensorflow::shape_inference::DimensionHandle;
using ::tensorflow::shape_inference::InferenceContext;
using ::tensorflow::shape_inference::ShapeHandle;

#define LOWPREC_DFP_DEPTHWISE_ATTRS                        \
  Attr("strides: list(int) = [1, 1]")                      \
      .Attr("dilations: list(int) = [1, 1]")               \
      .Attr("input_dilations: list(int) = [1, 1]")         \
      .Attr("pads: list(int) = [0, 0, 0, 0]")              \
      .Attr("bits: int = 16")                              \
      .Attr("extra_shift: int = 0")                        \
      .Attr("chunk_size: int = 64")                        \
      .Attr("isa: {'auto', 'portable', 'avx2', 'avx512'} = 'auto'")

REGISTER_OP("LowprecDfpDepthwiseConv2d")
    .Input("x: float")
    .Input("filters: float")
    .Output("y: float")
    .Attr("reduce_multiplier: bool = false")
    .LOWPREC_DFP_DEPTHWISE_ATTRS
    .SetShapeFn([](InferenceContext* c) -> Status {
      ShapeHandle x, w;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 4, &x));
      TF_RETURN_IF_ERROR(c->WithRank(c->input(1), 4, &w));
      bool reduce = false;
      TF_RETURN_IF_ERROR(c->GetAttr("reduce_multiplier", &reduce));
      std::vector<DimensionHandle> dims = {c->Dim(x, 0)};
      for (int a = 0; a < 2; ++a) {
        const auto k = c->Dim(w, a);
        DimensionHandle d;
        TF_RETURN_IF_ERROR(
            ConvGatherOutputDim(c, x, 2, a, c->ValueKnown(k) ? c->Value(k) : -1, &d));
        dims.push_back(d);
      }
      DimensionHandle last = c->Dim(w, 2);
      if (!reduce) TF_RETURN_IF_ERROR(c->Multiply(c->Dim(w, 2), c->Dim(w, 3), &last));
      dims.push_back(last);
      c->set_output(0, c->MakeShape(dims));
      return ::tensorflow::OkStatus();
    })
    .Doc(R"doc(
NHWC depthwise conv2d on INT16 mantissas (DFP16), computed directly: x and
filters are quantized to DFP (bits, extra_shift; one exponent per tensor from
its largest finite magnitude, nearest_even, as quantize_dfp), the products
I_x * I_w summed exactly per chunk of chunk_size K indices, the chunk sums
added in FP32 in K order, the total scaled by 2^(E_x + E_w).
filters: [kh, kw, C, M].  reduce_multiplier false: x [N, H, W, C], y [N, OH,
OW, C * M], y[.., c * M + m] = sum over the taps (i, j) (K = kh * kw, in
row-major order) of x-patch(c) * filters[i, j, c, m]: bit for bit the
grouped INT16 GEMM (groups = C) of the patches.  reduce_multiplier true (the
input gradient, on the error dilated by the strides with flipped filters):
x [N, H, W, C * M], y [N, OH, OW, C], y[.., c] = sum over (i, j, m) (K =
kh * kw * M) of x-patch(c * M + m) * filters[i, j, c, m].  Tap (i, j) of
output (oy, ox) reads the input dilated by input_dilations, padded by pads
(top, bottom, left, right), at (oy * s + i * d - top, ...).  A NaN or Inf in
an output's patch or filter column makes it NaN.
)doc");

REGISTER_OP("LowprecDfpDepthwiseConv2dBackpropFilter")
    .Input("x: float")
    .Input("dy: float")
    .Output("dfilters: float")
    .Attr("filter_size: list(int)")
    .LOWPREC_DFP_DEPTHWISE_ATTRS
    .SetShapeFn([](InferenceContext* c) -> Status {
      ShapeHandle x, dy;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 4, &x));
      TF_RETURN_IF_ERROR(c->WithRank(c->input(1), 4, &dy));
      std::vector<int64_t> k;
      TF_RETURN_IF_ERROR(c->GetAttr("filter_size", &k));
      if (k.size() != 2) {
        return ::tensorflow::errors::InvalidArgument(
            "filter_size must be 2 ints (kernel height, width), got ", k.size());
      }
      DimensionHandle m = c->UnknownDim();
      const DimensionHandle channels = c->Dim(x, 3), out_channels = c->Dim(dy, 3);
      if (c->ValueKnown(channels) && c->ValueKnown(out_channels) && c->Value(channels) > 0 &&
          c->Value(out_channels) % c->Value(channels) == 0) {
        m = c->MakeDim(c->Value(out_channels) / c->Value(channels));
      }
      c->set_output(0, c->MakeShape({c->MakeDim(k[0]), c->MakeDim(k[1]), channels, m}));
      return ::tensorflow::OkStatus();
    })
    .Doc(R"doc(
The filter gradient of LowprecDfpDepthwiseConv2d (reduce_multiplier false;
same geometry attributes): dfilters[i, j, c, m] = sum over the output pixels
(b, oy, ox) in that order (K = N * OH * OW, chunks of chunk_size) of
x-patch(i, j, c) * dy[.., c * M + m], x and dy quantized to DFP per tensor
(nearest_even): bit for bit the grouped INT16 GEMM patches^T @ dy.
x: [N, H, W, C]; dy: [N, OH, OW, C * M]; dfilters: [kh, kw, C, M] for
filter_size = [kh, kw].
)doc");

#undef LOWPREC_DFP_DEPTHWISE_ATTRS

}  // namespace tf_lowprec
