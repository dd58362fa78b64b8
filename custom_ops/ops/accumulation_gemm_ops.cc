// Registration and shape function of LowprecAccumulationMatmul (GEMM whose
// sums are rounded to a float format at every addition).  The kernel lives in
// kernels/accumulation_gemm_kernels.cc; the Python wrapper in
// tf_lowprec/gemm/accumulation.py.
#include "batched_gemm_shape.h"
#include "float_format_op_def.h"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/shape_inference.h"

namespace tf_lowprec {

using ::tensorflow::Status;
using ::tensorflow::shape_inference::InferenceContext;

REGISTER_OP("LowprecAccumulationMatmul")
    .Input("a: float")
    .Input("b: float")
    .Input("seed: int64")
    .Output("product: float")
    TF_LOWPREC_FLOAT_FORMAT_ATTRS
    .Attr("chunk_size: int = 0")
    .Attr("rounding: {'nearest_even', 'stochastic', 'toward_zero'} = 'nearest_even'")
    .Attr("transpose_a: bool = false")
    .Attr("transpose_b: bool = false")
    .Attr("isa: {'auto', 'portable', 'avx2', 'avx512'} = 'auto'")
    .SetShapeFn([](InferenceContext* c) -> Status {
      TF_RETURN_IF_ERROR(CheckSeedShape(c, 2));
      return BatchedGemmShape(c, 1);
    })
    .Doc(R"doc(
GEMM with a low-precision accumulator: product[i] = op(a[i]) @ op(b[i]) where
every output element sums the exact products in k order into a running sum
rounded to the float format of the attributes after every addition (one
rounding of the exact sum), within chunks of chunk_size consecutive k (0: one
chunk), and then sums the chunk sums in order, rounded likewise.  seed
(int64[2]) keys stochastic rounding (16 random bits per step).  batch_a and
batch_b are equal or 1.  docs/accumulation.md has the definition.
)doc");

}  // namespace tf_lowprec
