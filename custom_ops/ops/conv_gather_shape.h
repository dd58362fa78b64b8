// Shape functions of the implicit-GEMM convolution ops (LowprecDfpConv2d*,
// LowprecBf16Conv2d*): output 0 from the geometry attributes (strides,
// dilations, input_dilations, pads).  The kernels check the same
// (kernels/conv_gather_attrs.h).  Included only by op files.
#ifndef TF_LOWPREC_OPS_CONV_GATHER_SHAPE_H_
#define TF_LOWPREC_OPS_CONV_GATHER_SHAPE_H_

#include <cstdint>
#include <vector>

#include "tensorflow/core/framework/shape_inference.h"

namespace tf_lowprec {

// The output size of spatial axis `axis` (0: height, 1: width) of input x
// for a kernel of size k (unknown where x's size or k is).
inline ::tensorflow::Status ConvGatherOutputDim(
    ::tensorflow::shape_inference::InferenceContext* c,
    ::tensorflow::shape_inference::ShapeHandle x, int axis, int64_t k,
    ::tensorflow::shape_inference::DimensionHandle* out) {
  std::vector<int64_t> strides, dilations, input_dilations, pads;
  TF_RETURN_IF_ERROR(c->GetAttr("strides", &strides));
  TF_RETURN_IF_ERROR(c->GetAttr("dilations", &dilations));
  TF_RETURN_IF_ERROR(c->GetAttr("input_dilations", &input_dilations));
  TF_RETURN_IF_ERROR(c->GetAttr("pads", &pads));
  const auto size = c->Dim(x, 1 + axis);
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

// Output 0 of a forward op: x [N, H, W, C] (input 0), filters [kh, kw, C,
// O] (input 1) -> y [N, OH, OW, O].
inline ::tensorflow::Status ConvGatherForwardShape(
    ::tensorflow::shape_inference::InferenceContext* c) {
  ::tensorflow::shape_inference::ShapeHandle x, w;
  TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 4, &x));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(1), 4, &w));
  auto known = [c](::tensorflow::shape_inference::DimensionHandle d) -> int64_t {
    return c->ValueKnown(d) ? c->Value(d) : -1;
  };
  ::tensorflow::shape_inference::DimensionHandle oh, ow;
  TF_RETURN_IF_ERROR(ConvGatherOutputDim(c, x, 0, known(c->Dim(w, 0)), &oh));
  TF_RETURN_IF_ERROR(ConvGatherOutputDim(c, x, 1, known(c->Dim(w, 1)), &ow));
  c->set_output(0, c->MakeShape({c->Dim(x, 0), oh, ow, c->Dim(w, 3)}));
  return ::tensorflow::OkStatus();
}

// Output 0 of a filter gradient op: x (input 0), dy [N, OH, OW, O] (input
// 1), attribute filter_size [kh, kw] -> dfilters [kh, kw, C, O].
inline ::tensorflow::Status ConvGatherBackpropFilterShape(
    ::tensorflow::shape_inference::InferenceContext* c) {
  ::tensorflow::shape_inference::ShapeHandle x, dy;
  TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 4, &x));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(1), 4, &dy));
  std::vector<int64_t> k;
  TF_RETURN_IF_ERROR(c->GetAttr("filter_size", &k));
  if (k.size() != 2) {
    return ::tensorflow::errors::InvalidArgument("filter_size must be two ints (kh, kw)");
  }
  c->set_output(0, c->MakeShape({k[0], k[1], c->Dim(x, 3), c->Dim(dy, 3)}));
  return ::tensorflow::OkStatus();
}

}  // namespace tf_lowprec

#endif  // TF_LOWPREC_OPS_CONV_GATHER_SHAPE_H_
