// Registration and shape function of the block-scaled conversion (OCP MX,
// NVFP4).  The kernel lives in kernels/block_scaled_kernels.cc; the Python
// wrapper is tf_lowprec/numerics/rounding.py::quantize_block_scaled.
#include "float_format_op_def.h"
#include "per_block_shape.h"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/shape_inference.h"

namespace tf_lowprec {

using ::tensorflow::shape_inference::InferenceContext;

REGISTER_OP("LowprecQuantizeBlockScaled")
    .Input("x: float")
    .Input("seed: int64")
    .Output("y: float")
    .Output("scales: float")
    TF_LOWPREC_FLOAT_FORMAT_ATTRS
    .Attr("block_size: int = 32")
    .Attr("axis: int = -1")
    .Attr("scale_kind: {'e8m0', 'float'} = 'e8m0'")
    .Attr("scale_exponent_bits: int = 8")
    .Attr("scale_mantissa_bits: int = 0")
    .Attr("scale_exponent_bias: int = 127")
    .Attr("scale_subnormals: bool = false")
    .Attr("scale_nan_encoding: {'ieee', 'all_ones', 'negative_zero', 'none'} = 'all_ones'")
    .Attr("scale_flush_input_denormals: bool = false")
    .Attr("tensor_scale: bool = false")
    .Attr("nonfinite_blocks: {'nan', 'pass_through'} = 'nan'")
    .Attr("rounding: {'nearest_even', 'stochastic', 'toward_zero'} = 'nearest_even'")
    .Attr("random_bits: int = 32")
    .Attr("isa: {'auto', 'portable', 'avx2', 'avx512'} = 'auto'")
    .SetShapeFn([](InferenceContext* c) {
      TF_RETURN_IF_ERROR(CheckSeedShape(c, 1));
      c->set_output(0, c->input(0));
      int block_size, axis;
      TF_RETURN_IF_ERROR(c->GetAttr("block_size", &block_size));
      TF_RETURN_IF_ERROR(c->GetAttr("axis", &axis));
      if (block_size < 1) {
        return absl::InvalidArgumentError("block_size must be >= 1, got " +
                                          std::to_string(block_size));
      }
      if (c->RankKnown(c->input(0)) && c->Rank(c->input(0)) < 1) {
        return absl::InvalidArgumentError(
            "x must have rank >= 1 (blocks run along axis), got a scalar");
      }
      return SetPerBlockShape(c, 1, block_size, axis);
    })
    .Doc(R"doc(
Converts float32 values to a block-scaled format (OCP MX, NVFP4) and back.

Blocks of `block_size` consecutive elements along `axis` share one scale:
a power of two (scale_kind 'e8m0', the MX formats) or a value of the scale
float format (scale_kind 'float', with an optional per-tensor FP32 scale:
NVFP4).  Each element is rounded to the element float format given by the
format attributes.  `y` holds the decoded values, `scales` the decoded block
scales (x's shape with `axis` replaced by the number of blocks; NaN for a
block that became NaN).  The steps are those of docs/block_formats.md.
`seed` (int64[2]) keys the Philox stream of stochastic rounding, element i
of x (row-major) drawing the same bits as in LowprecRoundToFloatFormat.
)doc");

}  // namespace tf_lowprec
