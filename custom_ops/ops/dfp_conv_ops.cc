// Registration and shape functions of LowprecDfpConv2d / LowprecDfpConv3d
// and their BackpropFilter ops: NHWC / NDHWC convolutions as implicit INT16
// GEMMs (DFP16).  Kernels live in kernels/dfp_conv_kernels.cc (one kernel
// per spatial rank, one patch gather); the Python wrapper is
// tf_lowprec.gemm.dfp_conv (used by lp.dfp_conv2d and lp.dfp_conv3d).
#include "conv_gather_shape.h"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/shape_inference.h"

namespace tf_lowprec {

using ::tensorflow::Status;
using ::tensorflow::shape_inference::InferenceContext;

// ones / zeros: the default attribute lists of the op's spatial rank.
#define LOWPREC_DFP_CONV_ATTRS(ones, zeros)                     \
  Attr("strides: list(int) = " ones)                            \
      .Attr("dilations: list(int) = " ones)                     \
      .Attr("input_dilations: list(int) = " ones)               \
      .Attr("pads: list(int) = " zeros)                         \
      .Attr("bits: int = 16")                                   \
      .Attr("extra_shift: int = 0")                             \
      .Attr("chunk_size: int = 64")                             \
      .Attr("isa: {'auto', 'portable', 'avx2', 'avx512'} = 'auto'")

namespace {

// ConvGatherForwardShape, with the filters [*k, O, C] read flipped and
// transposed (output channels C) when flip_filters is set; output 1 is the
// overflow counter.
template <int kRank>
Status DfpConvShape(InferenceContext* c) {
  bool flip = false;
  TF_RETURN_IF_ERROR(c->GetAttr("flip_filters", &flip));
  TF_RETURN_IF_ERROR(ConvGatherForwardShape<kRank>(c));
  c->set_output(1, c->Scalar());
  if (!flip) return ::tensorflow::OkStatus();
  ::tensorflow::shape_inference::ShapeHandle y;
  TF_RETURN_IF_ERROR(c->ReplaceDim(c->output(0), kRank + 1, c->Dim(c->input(1), kRank), &y));
  c->set_output(0, y);
  return ::tensorflow::OkStatus();
}

}  // namespace

REGISTER_OP("LowprecDfpConv2d")
    .Input("x: float")
    .Input("filters: float")
    .Output("y: float")
    .Output("overflowed_chunks: int64")
    .LOWPREC_DFP_CONV_ATTRS("[1, 1]", "[0, 0, 0, 0]")
    .Attr("flip_filters: bool = false")
    .SetShapeFn(DfpConvShape<2>)
    .Doc(R"doc(
NHWC conv2d as an implicit INT16 GEMM: y = patches(x) @ filters with x and
filters quantized to DFP (bits, extra_shift; one exponent per tensor from its
largest finite magnitude, nearest_even), the patches gathered from x while
the GEMM packs them (no im2col buffer).  x: [N, H, W, C]; filters: [kh, kw,
C, O]; y: [N, OH, OW, O].  Patch element (i, j, c) of output (y, x) reads
the input dilated by input_dilations (zeros between its rows / columns),
padded by pads (top, bottom, left, right), at (y * s + i * d - top, ...).
Arithmetic as LowprecDfpMatmulFused on the materialized patches, bit for bit.
flip_filters: the filters are given as [kh, kw, C', O'] of the convolution
whose input gradient this is (x: its error, O' channels), and the GEMM uses
flip(filters)^T, [kh, kw, O', C'] with the taps reversed in both axes (y: C'
channels), the same bits as passing those filters.
)doc");

REGISTER_OP("LowprecDfpConv2dBackpropFilter")
    .Input("x: float")
    .Input("dy: float")
    .Output("dfilters: float")
    .Output("overflowed_chunks: int64")
    .Attr("filter_size: list(int)")
    .LOWPREC_DFP_CONV_ATTRS("[1, 1]", "[0, 0, 0, 0]")
    .Attr("gemm_a: {'auto', 'patches', 'dy'} = 'auto'")
    .SetShapeFn([](InferenceContext* c) -> Status {
      TF_RETURN_IF_ERROR(ConvGatherBackpropFilterShape<2>(c));
      c->set_output(1, c->Scalar());
      return ::tensorflow::OkStatus();
    })
    .Doc(R"doc(
The filter gradient of LowprecDfpConv2d (same geometry attributes):
dfilters = patches(x)^T @ dy as an implicit INT16 GEMM over the N*OH*OW
output pixels, x and dy quantized to DFP per tensor (nearest_even) while
packed.  dfilters: [kh, kw, C, O] for filter_size = [kh, kw].
gemm_a: the GEMM's a operand.  'patches': patches(x)^T [kh*kw*C, pixels]
times dy [pixels, O], gathered while packing (fast for few patch columns);
'dy': dy^T [O, pixels] times patches(x) [pixels, kh*kw*C], then the result
transposed; 'auto' picks one (docs/dfp_gemm.md).  The same products summed
in the same pixel order: the same bits and overflow count either way.
)doc");

REGISTER_OP("LowprecDfpConv3d")
    .Input("x: float")
    .Input("filters: float")
    .Output("y: float")
    .Output("overflowed_chunks: int64")
    .LOWPREC_DFP_CONV_ATTRS("[1, 1, 1]", "[0, 0, 0, 0, 0, 0]")
    .Attr("flip_filters: bool = false")
    .SetShapeFn(DfpConvShape<3>)
    .Doc(R"doc(
LowprecDfpConv2d in three spatial axes: NDHWC x [N, D, H, W, C], filters
[kd, kh, kw, C, O], y [N, OD, OH, OW, O]; patch columns in the order (kd,
kh, kw, C); strides, dilations and input_dilations are (depth, height,
width), pads (front, back, top, bottom, left, right).  flip_filters as in
LowprecDfpConv2d (taps reversed in all three axes).
)doc");

REGISTER_OP("LowprecDfpConv3dBackpropFilter")
    .Input("x: float")
    .Input("dy: float")
    .Output("dfilters: float")
    .Output("overflowed_chunks: int64")
    .Attr("filter_size: list(int)")
    .LOWPREC_DFP_CONV_ATTRS("[1, 1, 1]", "[0, 0, 0, 0, 0, 0]")
    .Attr("gemm_a: {'auto', 'patches', 'dy'} = 'auto'")
    .SetShapeFn([](InferenceContext* c) -> Status {
      TF_RETURN_IF_ERROR(ConvGatherBackpropFilterShape<3>(c));
      c->set_output(1, c->Scalar());
      return ::tensorflow::OkStatus();
    })
    .Doc(R"doc(
The filter gradient of LowprecDfpConv3d (same geometry attributes):
dfilters = patches(x)^T @ dy over the N*OD*OH*OW output pixels.  dfilters:
[kd, kh, kw, C, O] for filter_size = [kd, kh, kw].  gemm_a as in
LowprecDfpConv2dBackpropFilter.
)doc");

#undef LOWPREC_DFP_CONV_ATTRS

}  // namespace tf_lowprec
