// Registration and shape functions of the rounding ops.  Kernels live in
// kernels/rounding_kernels.cc; the Python wrappers in tf_lowprec/numerics/rounding.py.
#include "float_format_op_def.h"
#include "per_block_shape.h"
#include "tensorflow/core/framework/common_shape_fns.h"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/shape_inference.h"

namespace tf_lowprec {

using ::tensorflow::shape_inference::DimensionHandle;
using ::tensorflow::shape_inference::InferenceContext;
using ::tensorflow::shape_inference::ShapeHandle;

REGISTER_OP("LowprecRoundToFloatFormat")
    .Input("x: float")
    .Input("seed: int64")
    .Output("y: float")
    TF_LOWPREC_FLOAT_FORMAT_ATTRS
    .Attr("rounding: {'nearest_even', 'stochastic', 'toward_zero'} = 'nearest_even'")
    .Attr("random_bits: int = 32")
    .Attr("isa: {'auto', 'portable', 'avx2', 'avx512'} = 'auto'")
    .SetShapeFn([](InferenceContext* c) {
      TF_RETURN_IF_ERROR(CheckSeedShape(c, 1));
      c->set_output(0, c->input(0));
      return absl::OkStatus();
    })
    .Doc(R"doc(
Rounds float32 values onto the grid of a low-precision float format.

Output holds float32 values exactly representable in the format described by
the attributes (see tf_lowprec.FloatFormat).  `seed` (int64[2]) keys the
Philox stream of stochastic rounding; it is ignored by the other modes.
)doc");

REGISTER_OP("LowprecQuantizeDfp")
    .Input("x: float")
    .Input("seed: int64")
    .Output("y: float")
    .Output("shared_exponents: int32")
    .Attr("bits: int = 16")
    .Attr("extra_shift: int = 0")
    .Attr("block_size: int = 0")
    .Attr("axis: int = -1")
    .Attr("rounding: {'nearest_even', 'stochastic', 'toward_zero'} = 'nearest_even'")
    .Attr("random_bits: int = 32")
    .Attr("isa: {'auto', 'portable', 'avx2', 'avx512'} = 'auto'")
    .SetShapeFn([](InferenceContext* c) {
      TF_RETURN_IF_ERROR(CheckSeedShape(c, 1));
      c->set_output(0, c->input(0));
      int block_size, axis;
      TF_RETURN_IF_ERROR(c->GetAttr("block_size", &block_size));
      TF_RETURN_IF_ERROR(c->GetAttr("axis", &axis));
      if (block_size < 0) {
        return absl::InvalidArgumentError(
            "block_size must be 0 (one exponent per tensor) or positive");
      }
      if (block_size > 0) return SetPerBlockShape(c, 1, block_size, axis);
      ShapeHandle x = c->input(0);  // one exponent per tensor, kept with rank
      if (!c->RankKnown(x)) {
        c->set_output(1, c->UnknownShape());
        return absl::OkStatus();
      }
      std::vector<DimensionHandle> ones(c->Rank(x), c->MakeDim(1));
      c->set_output(1, c->MakeShape(ones));
      return absl::OkStatus();
    })
    .Doc(R"doc(
Quantizes float32 values to dynamic fixed point with shared exponents.

`y` holds I * 2^E: I a `bits`-bit integer mantissa, |I| <= 2^(bits-1) - 1,
E the shared exponent of the element's block (`shared_exponents`, shaped like
x with the blocked axis divided by block_size, or all ones for block_size 0).
Blocks whose elements are all zero or non-finite get exponent -1024.
)doc");

}  // namespace tf_lowprec
