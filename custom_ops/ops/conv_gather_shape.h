// Shape functions of the implicit-GEMM convolution ops (LowprecDfpConv2d*,
// LowprecDfpConv3d*, LowprecBf16Conv2d*), templated on the spatial rank
// (2: NHWC, 3: NDHWC): output 0 from the geometry attributes (strides,
// dilations, input_dilations, pads).  The kernels check the same
// (kernels/conv_gather_attrs.h).  Included only by op files.
#ifndef TF_LOWPREC_OPS_CONV_GATHER_SHAPE_H_
#define TF_LOWPREC_OPS_CONV_GATHER_SHAPE_H_

#include <cstdint>
#include <vector>

#include "tensorflow/core/framework/shape_inference.h"

namespace tf_lowprec {

// The output size of spatial axis `axis` (of `rank`) of input x for a
// kernel of size k (unknown where x's size or k is).
inline ::tensorflow::Status ConvGatherOutputDim(
    ::tensorflow::shape_inference::InferenceContext* c,
    ::tensorflow::shape_inference::ShapeHandle x, int rank, int axis, int64_t k,
    ::tensorflow::shape_inference::DimensionHandle* out) {
  std::vector<int64_t> strides, dilations, input_dilations, pads;
  TF_RETURN_IF_ERROR(c->GetAttr("strides", &strides));
  TF_RETURN_IF_ERROR(c->GetAttr("dilations", &dilations));
  TF_RETURN_IF_ERROR(c->GetAttr("input_dilations", &input_dilations));
  TF_RETURN_IF_ERROR(c->GetAttr("pads", &pads));
  const size_t n_axes = static_cast<size_t>(rank);
  const auto size = c->Dim(x, 1 + axis);
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

// Output 0 of a forward op with kRank spatial axes: x [N, *spatial, C]
// (input 0), filters [*k, C, O] (input 1) -> y [N, *out, O].
template <int kRank>
::tensorflow::Status ConvGatherForwardShape(::tensorflow::shape_inference::InferenceContext* c) {
  ::tensorflow::shape_inference::ShapeHandle x, w;
  TF_RETURN_IF_ERROR(c->WithRank(c->input(0), kRank + 2, &x));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(1), kRank + 2, &w));
  std::vector<::tensorflow::shape_inference::DimensionHandle> dims = {c->Dim(x, 0)};
  for (int a = 0; a < kRank; ++a) {
    const auto k = c->Dim(w, a);
    ::tensorflow::shape_inference::DimensionHandle d;
    TF_RETURN_IF_ERROR(
        ConvGatherOutputDim(c, x, kRank, a, c->ValueKnown(k) ? c->Value(k) : -1, &d));
    dims.push_back(d);
  }
  dims.push_back(c->Dim(w, kRank + 1));
  c->set_output(0, c->MakeShape(dims));
  return ::tensorflow::OkStatus();
}

// Output 0 of a filter gradient op with kRank spatial axes: x (input 0), dy
// [N, *out, O] (input 1), attribute filter_size [*k] -> dfilters [*k, C, O].
template <int kRank>
::tensorflow::Status ConvGatherBackpropFilterShape(
    ::tensorflow::shape_inference::InferenceContext* c) {
  ::tensorflow::shape_inference::ShapeHandle x, dy;
  TF_RETURN_IF_ERROR(c->WithRank(c->input(0), kRank + 2, &x));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(1), kRank + 2, &dy));
  std::vector<int64_t> k;
  TF_RETURN_IF_ERROR(c->GetAttr("filter_size", &k));
  if (k.size() != static_cast<size_t>(kRank)) {
    return ::tensorflow::errors::InvalidArgument("filter_size must be ", kRank,
                                                 " ints (the kernel's spatial sizes)");
  }
  std::vector<::tensorflow::shape_inference::DimensionHandle> dims;
  for (int64_t v : k) dims.push_back(c->MakeDim(v));
  dims.push_back(c->Dim(x, kRank + 1));
  dims.push_back(c->Dim(dy, kRank + 1));
  c->set_output(0, c->MakeShape(dims));
  return ::tensorflow::OkStatus();
}

}  // namespace tf_lowprec

#endif  // TF_LOWPREC_OPS_CONV_GATHER_SHAPE_H_
