// Registration and shape functions of LowprecDfpConv2d / LowprecDfpConv3d
// and their BackpropFilter ops: NHWC / NDHWC convolutions as implicit INT16
// GEMMs (DFP16).  Kernels live in kernels/dfp_conv_kernels.cc (one kernel
// per spatial rank, one patch gather); the Python wrapper is
// tf_lowprec.gemm.dfp_conv (used by lp.dfp_conv2d and lp.dfp_conv3d).
#include <vector>

#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/shape_inference.h"

namespace tf_lowprec {

using ::tensorflow::Status;
using ::tensorflow::shape_inference::DimensionHandle;
using ::tensorflow::shape_inference::InferenceContext;
using ::tensorflow::shape_inference::ShapeHandle;

namespace {

// The output size of spatial axis `axis` (of `rank`) of input x for a
// kernel of size k (unknown where x's size is).
Status OutputDim(InferenceContext* c, ShapeHandle x, int rank, int axis, int64_t k,
                 DimensionHandle* out) {
  std::vector<int64_t> strides, dilations, input_dilations, pads;
  TF_RETURN_IF_ERROR(c->GetAttr("strides", &strides));
  TF_RETURN_IF_ERROR(c->GetAttr("dilations", &dilations));
  TF_RETURN_IF_ERROR(c->GetAttr("input_dilations", &input_dilations));
  TF_RETURN_IF_ERROR(c->GetAttr("pads", &pads));
  const size_t n_axes = static_cast<size_t>(rank);
  const DimensionHandle size = c->Dim(x, 1 + axis);
  if (!c->ValueKnown(size) || strides.size() != n_axes || dilations.size() != n_axes ||
      input_dilations.size() != n_axes || pads.size() != 2 * n_axes || k < 1 ||
      strides[axis] < 1) {
    *out = c->UnknownDim();  // (bad attributes: the kernel says what is wrong)
    return ::tensorflow::OkStatus();
  }
  const int64_t n = c->Value(size);
  const int64_t extent = n == 0 ? 0 : (n - 1) * input_dilations[axis] + 1;
  const int64_t room =
      extent + pads[2 * axis] + pads[2 * axis + 1] - ((k - 1) * dilations[axis] + 1);
  *out = c->MakeDim(room < 0 ? 0 : room / strides[axis] + 1);
  return ::tensorflow::OkStatus();
}

int64_t KnownOr(InferenceContext* c, DimensionHandle d) {
  return c->ValueKnown(d) ? c->Value(d) : -1;
}

// y: [N, *out, O] for x [N, *spatial, C] and filters [*k, C, O].
template <int kRank>
Status ConvShape(InferenceContext* c) {
  ShapeHandle x, w;
  TF_RETURN_IF_ERROR(c->WithRank(c->input(0), kRank + 2, &x));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(1), kRank + 2, &w));
  std::vector<DimensionHandle> dims = {c->Dim(x, 0)};
  for (int a = 0; a < kRank; ++a) {
    DimensionHandle d;
    TF_RETURN_IF_ERROR(OutputDim(c, x, kRank, a, KnownOr(c, c->Dim(w, a)), &d));
    dims.push_back(d);
  }
  dims.push_back(c->Dim(w, kRank + 1));
  c->set_output(0, c->MakeShape(dims));
  c->set_output(1, c->Scalar());
  return ::tensorflow::OkStatus();
}

// dfilters: [*filter_size, C, O] for x [N, *spatial, C] and dy [N, *out, O].
template <int kRank>
Status BackpropFilterShape(InferenceContext* c) {
  ShapeHandle x, dy;
  TF_RETURN_IF_ERROR(c->WithRank(c->input(0), kRank + 2, &x));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(1), kRank + 2, &dy));
  std::vector<int64_t> k;
  TF_RETURN_IF_ERROR(c->GetAttr("filter_size", &k));
  if (k.size() != static_cast<size_t>(kRank)) {
    return ::tensorflow::errors::InvalidArgument("filter_size must be ", kRank,
                                                 " ints (the kernel's spatial sizes)");
  }
  std::vector<DimensionHandle> dims;
  for (int64_t v : k) dims.push_back(c->MakeDim(v));
  dims.push_back(c->Dim(x, kRank + 1));
  dims.push_back(c->Dim(dy, kRank + 1));
  c->set_output(0, c->MakeShape(dims));
  c->set_output(1, c->Scalar());
  return ::tensorflow::OkStatus();
}

}  // namespace

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

REGISTER_OP("LowprecDfpConv2d")
    .Input("x: float")
    .Input("filters: float")
    .Output("y: float")
    .Output("overflowed_chunks: int64")
    .LOWPREC_DFP_CONV_ATTRS("[1, 1]", "[0, 0, 0, 0]")
    .SetShapeFn(ConvShape<2>)
    .Doc(R"doc(
NHWC conv2d as an implicit INT16 GEMM: y = patches(x) @ filters with x and
filters quantized to DFP (bits, extra_shift; one exponent per tensor from its
largest finite magnitude, nearest_even), the patches gathered from x while
the GEMM packs them (no im2col buffer).  x: [N, H, W, C]; filters: [kh, kw,
C, O]; y: [N, OH, OW, O].  Patch element (i, j, c) of output (y, x) reads
the input dilated by input_dilations (zeros between its rows / columns),
padded by pads (top, bottom, left, right), at (y * s + i * d - top, ...).
Arithmetic as LowprecDfpMatmulFused on the materialized patches, bit for bit.
)doc");

REGISTER_OP("LowprecDfpConv2dBackpropFilter")
    .Input("x: float")
    .Input("dy: float")
    .Output("dfilters: float")
    .Output("overflowed_chunks: int64")
    .Attr("filter_size: list(int)")
    .LOWPREC_DFP_CONV_ATTRS("[1, 1]", "[0, 0, 0, 0]")
    .SetShapeFn(BackpropFilterShape<2>)
    .Doc(R"doc(
The filter gradient of LowprecDfpConv2d (same geometry attributes):
dfilters = patches(x)^T @ dy as an implicit INT16 GEMM over the N*OH*OW
output pixels, x and dy quantized to DFP per tensor (nearest_even) while
packed.  dfilters: [kh, kw, C, O] for filter_size = [kh, kw].
)doc");

REGISTER_OP("LowprecDfpConv3d")
    .Input("x: float")
    .Input("filters: float")
    .Output("y: float")
    .Output("overflowed_chunks: int64")
    .LOWPREC_DFP_CONV_ATTRS("[1, 1, 1]", "[0, 0, 0, 0, 0, 0]")
    .SetShapeFn(ConvShape<3>)
    .Doc(R"doc(
LowprecDfpConv2d in three spatial axes: NDHWC x [N, D, H, W, C], filters
[kd, kh, kw, C, O], y [N, OD, OH, OW, O]; patch columns in the order (kd,
kh, kw, C); strides, dilations and input_dilations are (depth, height,
width), pads (front, back, top, bottom, left, right).
)doc");

REGISTER_OP("LowprecDfpConv3dBackpropFilter")
    .Input("x: float")
    .Input("dy: float")
    .Output("dfilters: float")
    .Output("overflowed_chunks: int64")
    .Attr("filter_size: list(int)")
    .LOWPREC_DFP_CONV_ATTRS("[1, 1, 1]", "[0, 0, 0, 0, 0, 0]")
    .SetShapeFn(BackpropFilterShape<3>)
    .Doc(R"doc(
The filter gradient of LowprecDfpConv3d (same geometry attributes):
dfilters = patches(x)^T @ dy over the N*OD*OH*OW output pixels.  dfilters:
[kd, kh, kw, C, O] for filter_size = [kd, kh, kw].
)doc");

#undef LOWPREC_DFP_CONV_ATTRS

}  // namespace tf_lowprec
