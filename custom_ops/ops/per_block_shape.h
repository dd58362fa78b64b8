// Shape of a per-block output (DFP shared exponents, block scales): the
// input's shape with the blocked axis divided into blocks.  Shared by
// LowprecQuantizeDfp and LowprecQuantizeBlockScaled.  Included only by op files.
#ifndef TF_LOWPREC_OPS_PER_BLOCK_SHAPE_H_
#define TF_LOWPREC_OPS_PER_BLOCK_SHAPE_H_

#include <string>
#include <vector>

#include "tensorflow/core/framework/shape_inference.h"

namespace tf_lowprec {

// Sets output `output` to input 0's shape with dimension `axis` (negative:
// from the end) replaced by ceil(length / block_size), its number of blocks.
// Unknown rank gives an unknown shape; `axis` out of range an error.
inline absl::Status SetPerBlockShape(::tensorflow::shape_inference::InferenceContext* c,
                                     int output, int64_t block_size, int axis) {
  using ::tensorflow::shape_inference::DimensionHandle;
  using ::tensorflow::shape_inference::ShapeHandle;
  ShapeHandle x = c->input(0);
  if (!c->RankKnown(x)) {
    c->set_output(output, c->UnknownShape());
    return absl::OkStatus();
  }
  const int rank = c->Rank(x);
  if (axis < -rank || axis >= rank) {
    return absl::InvalidArgumentError("axis must be in [" + std::to_string(-rank) + ", " +
                                      std::to_string(rank) + ") for x of rank " +
                                      std::to_string(rank) + ", got " + std::to_string(axis));
  }
  if (axis < 0) axis += rank;
  std::vector<DimensionHandle> dims;
  for (int i = 0; i < rank; ++i) {
    DimensionHandle d = c->Dim(x, i);
    if (i == axis) {
      if (c->ValueKnown(d)) {
        const int64_t length = c->Value(d);  // ceil(length / block_size), no overflow
        d = c->MakeDim(length == 0 ? 0 : 1 + (length - 1) / block_size);
      } else {
        d = c->UnknownDim();
      }
    }
    dims.push_back(d);
  }
  c->set_output(output, c->MakeShape(dims));
  return absl::OkStatus();
}

}  // namespace tf_lowprec

#endif  // TF_LOWPREC_OPS_PER_BLOCK_SHAPE_H_
