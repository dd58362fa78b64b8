// Op-definition pieces shared by every op that takes a float format (the
// rounding op, the low-precision accumulation GEMM): one spelling of the
// format's attributes and their defaults, read back by
// kernels/float_format_attrs.h.
#ifndef TF_LOWPREC_OPS_FLOAT_FORMAT_OP_DEF_H_
#define TF_LOWPREC_OPS_FLOAT_FORMAT_OP_DEF_H_

#include "tensorflow/core/framework/shape_inference.h"

// The attributes of a FloatFormatSpec (number_formats.h), to chain into a
// REGISTER_OP: REGISTER_OP("X").Input(...) TF_LOWPREC_FLOAT_FORMAT_ATTRS ...
#define TF_LOWPREC_FLOAT_FORMAT_ATTRS                                         \
  .Attr("exponent_bits: int")                                                \
      .Attr("mantissa_bits: int")                                            \
      .Attr("exponent_bias: int")                                            \
      .Attr("subnormals: bool = true")                                       \
      .Attr("nan_encoding: {'ieee', 'all_ones', 'negative_zero', 'none'} = 'ieee'") \
      .Attr("overflow: {'saturate', 'infinity', 'nan'} = 'infinity'")        \
      .Attr("flush_input_denormals: bool = false")

namespace tf_lowprec {

// A stateless seed is a pair of int64, like TensorFlow's stateless random ops.
inline absl::Status CheckSeedShape(::tensorflow::shape_inference::InferenceContext* c,
                                   int input) {
  ::tensorflow::shape_inference::ShapeHandle seed;
  TF_RETURN_IF_ERROR(c->WithRank(c->input(input), 1, &seed));
  ::tensorflow::shape_inference::DimensionHandle unused;
  return c->WithValue(c->Dim(seed, 0), 2, &unused);
}

}  // namespace tf_lowprec

#endif  // TF_LOWPREC_OPS_FLOAT_FORMAT_OP_DEF_H_
