// Registration and shape functions of LowprecDfpConv2d and
// LowprecDfpConv2dBackpropFilter: NHWC convolutions as implicit INT16 GEMMs
// (DFP16).  Kernels live in kernels/dfp_conv_kernels.cc; the Python wrapper
// is tf_lowprec.gemm.dfp_conv (used by lp.dfp_conv2d).
#include <vector>

#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/shape_inference.h"

namespace tf_lowprec {

using ::tensorflow::Status;
using ::tensorflow::shape_inference::DimensionHandle;
using ::tensorflow::shape_inference::InferenceContext;
using ::tensorflow::shape_inference::ShapeHandle;

namespace {

// The output size of spatial axis `axis` (0: height, 1: width) of input x
// for a kernel of size k (unknown where x's size is).
Status OutputDim(InferenceContext* c, ShapeHandle x, int axis, int64_t k,
                 DimensionHandle* out) {
  std::vector<int64_t> strides, dilations, input_dilations, pads;
  TF_RETURN_IF_ERROR(c->GetAttr("strides", &strides));
  TF_RETURN_IF_ERROR(c->GetAttr("dilations", &dilations));
  TF_RETURN_IF_ERROR(c->GetAttr("input_dilations", &input_dilations));
  TF_RETURN_IF_ERROR(c->GetAttr("pads", &pads));
  const DimensionHandle size = c->Dim(x, 1 + axis);
  if (!c->ValueKnown(size) || strides.size() != 2 || dilations.size() != 2 ||
      input_dilations.size() != 2 || pads.size() != 4 || k < 1 || strides[axis] < 1) {
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

}  // namespace

#define LOWPREC_DFP_CONV_ATTRS                                  \
  Attr("strides: list(int) = [1, 1]")                           \
      .Attr("dilations: list(int) = [1, 1]")                    \
      .Attr("input_dilations: list(int) = [1, 1]")              \
      .Attr("pads: list(int) = [0, 0, 0, 0]")                   \
      .Attr("bits: int = 16")                                   \
      .Attr("extra_shift: int = 0")                             \
      .Attr("chunk_size: int = 64")                             \
      .Attr("isa: {'auto', 'portable', 'avx2', 'avx512'} = 'auto'")

REGISTER_OP("LowprecDfpConv2d")
    .Input("x: float")
    .Input("filters: float")
    .Output("y: float")
    .Output("overflowed_chunks: int64")
    .LOWPREC_DFP_CONV_ATTRS
    .SetShapeFn([](InferenceContext* c) -> Status {
      ShapeHandle x, w;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 4, &x));
      TF_RETURN_IF_ERROR(c->WithRank(c->input(1), 4, &w));
      DimensionHandle oh, ow;
      TF_RETURN_IF_ERROR(OutputDim(c, x, 0, KnownOr(c, c->Dim(w, 0)), &oh));
      TF_RETURN_IF_ERROR(OutputDim(c, x, 1, KnownOr(c, c->Dim(w, 1)), &ow));
      c->set_output(0, c->MakeShape({c->Dim(x, 0), oh, ow, c->Dim(w, 3)}));
      c->set_output(1, c->Scalar());
      return ::tensorflow::OkStatus();
    })
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
    .LOWPREC_DFP_CONV_ATTRS
    .SetShapeFn([](InferenceContext* c) -> Status {
      ShapeHandle x, dy;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 4, &x));
      TF_RETURN_IF_ERROR(c->WithRank(c->input(1), 4, &dy));
      std::vector<int64_t> k;
      TF_RETURN_IF_ERROR(c->GetAttr("filter_size", &k));
      if (k.size() != 2) {
        return ::tensorflow::errors::InvalidArgument("filter_size must be two ints (kh, kw)");
      }
      c->set_output(0, c->MakeShape({k[0], k[1], c->Dim(x, 3), c->Dim(dy, 3)}));
      c->set_output(1, c->Scalar());
      return ::tensorflow::OkStatus();
    })
    .Doc(R"doc(
The filter gradient of LowprecDfpConv2d (same geometry attributes):
dfilters = patches(x)^T @ dy as an implicit INT16 GEMM over the N*OH*OW
output pixels, x and dy quantized to DFP per tensor (nearest_even) while
packed.  dfilters: [kh, kw, C, O] for filter_size = [kh, kw].
)doc");

#undef LOWPREC_DFP_CONV_ATTRS

}  // namespace tf_lowprec
