// Registration and shape functions of LowprecBf16Conv2d / Conv3d and their
// BackpropFilter ops: NHWC / NDHWC convolutions as implicit BF16 GEMMs
// (the VDPBF16PS summation order of LowprecBf16Matmul).  Kernels live in
// kernels/bf16_conv_kernels.cc; the Python wrapper is tf_lowprec.gemm.bf16_conv
// (used by lp.bf16_conv2d).
#include "conv_gather_shape.h"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/shape_inference.h"

namespace tf_lowprec {

#define LOWPREC_BF16_CONV_ATTRS(ones, zeros)                    \
  Attr("strides: list(int) = " ones)                            \
      .Attr("dilations: list(int) = " ones)                     \
      .Attr("input_dilations: list(int) = " ones)               \
      .Attr("pads: list(int) = " zeros)                         \
      .Attr("isa: {'auto', 'portable', 'avx2', 'avx512'} = 'auto'")

namespace {

// ConvGatherForwardShape, with the filters [*k, O, C] read flipped and
// transposed (output channels C) when flip_filters is set.
template <int kRank>
::tensorflow::Status Bf16ConvShape(::tensorflow::shape_inference::InferenceContext* c) {
  bool flip = false;
  TF_RETURN_IF_ERROR(c->GetAttr("flip_filters", &flip));
  TF_RETURN_IF_ERROR(ConvGatherForwardShape<kRank>(c));
  if (!flip) return ::tensorflow::OkStatus();
  ::tensorflow::shape_inference::ShapeHandle y;
  TF_RETURN_IF_ERROR(
      c->ReplaceDim(c->output(0), kRank + 1, c->Dim(c->input(1), kRank), &y));
  c->set_output(0, y);
  return ::tensorflow::OkStatus();
}

}  // namespace

REGISTER_OP("LowprecBf16Conv2d")
    .Input("x: float")
    .Input("filters: float")
    .Output("y: float")
    .Attr("flip_filters: bool = false")
    .LOWPREC_BF16_CONV_ATTRS("[1, 1]", "[0, 0, 0, 0]")
    .SetShapeFn(Bf16ConvShape<2>)
    .Doc(R"doc(
NHWC conv2d as an implicit BF16 GEMM: y = patches(x) @ filters, both rounded
to BF16 and summed over (kh, kw, C) in the VDPBF16PS order, exactly as
LowprecBf16Matmul on the materialized patches, bit for bit; the patches are
gathered from x while the GEMM packs them (no im2col buffer).  x: [N, H, W,
C]; filters: [kh, kw, C, O]; y: [N, OH, OW, O].  Patch element (i, j, c) of
output (y, x) reads the input dilated by input_dilations (zeros between its
rows / columns), padded by pads (top, bottom, left, right), at (y * s + i *
d - top, ...).  flip_filters: the filters are given as [kh, kw, C', O'] of
the convolution whose input gradient this is (x: its error, O' channels),
and the GEMM uses flip(filters)^T, [kh, kw, O', C'] with the taps reversed
in both axes (y: C' channels).
)doc");

REGISTER_OP("LowprecBf16Conv2dBackpropFilter")
    .Input("x: float")
    .Input("dy: float")
    .Output("dfilters: float")
    .Attr("filter_size: list(int)")
    .LOWPREC_BF16_CONV_ATTRS("[1, 1]", "[0, 0, 0, 0]")
    .SetShapeFn(ConvGatherBackpropFilterShape<2>)
    .Doc(R"doc(
The filter gradient of LowprecBf16Conv2d (same geometry attributes):
dfilters = patches(x)^T @ dy as an implicit BF16 GEMM over the N*OH*OW output
pixels (LowprecBf16Matmul's arithmetic, patches as the transposed a).
dfilters: [kh, kw, C, O] for filter_size = [kh, kw].
)doc");

REGISTER_OP("LowprecBf16Conv3d")
    .Input("x: float")
    .Input("filters: float")
    .Output("y: float")
    .Attr("flip_filters: bool = false")
    .LOWPREC_BF16_CONV_ATTRS("[1, 1, 1]", "[0, 0, 0, 0, 0, 0]")
    .SetShapeFn(Bf16ConvShape<3>)
    .Doc(R"doc(
LowprecBf16Conv2d in three spatial axes: NDHWC x [N, D, H, W, C], filters
[kd, kh, kw, C, O], y [N, OD, OH, OW, O]; patch columns in the order (kd,
kh, kw, C); strides, dilations and input_dilations are (depth, height,
width), pads (front, back, top, bottom, left, right).  flip_filters as in
LowprecBf16Conv2d (taps reversed in all three axes).
)doc");

REGISTER_OP("LowprecBf16Conv3dBackpropFilter")
    .Input("x: float")
    .Input("dy: float")
    .Output("dfilters: float")
    .Attr("filter_size: list(int)")
    .LOWPREC_BF16_CONV_ATTRS("[1, 1, 1]", "[0, 0, 0, 0, 0, 0]")
    .SetShapeFn(ConvGatherBackpropFilterShape<3>)
    .Doc(R"doc(
The filter gradient of LowprecBf16Conv3d (same geometry attributes):
dfilters = patches(x)^T @ dy over the N*OD*OH*OW output pixels.  dfilters:
[kd, kh, kw, C, O] for filter_size = [kd, kh, kw].
)doc");

#undef LOWPREC_BF16_CONV_ATTRS

}  // namespace tf_lowprec
