// Registration and shape function of LowprecBf16Matmul (BF16 GEMM with the
// VDPBF16PS summation order).  The kernel lives in
// kernels/bf16_gemm_kernels.cc; the Python wrapper in tf_lowprec.
#include "batched_gemm_shape.h"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/shape_inference.h"

namespace tf_lowprec {

using ::tensorflow::Status;
using ::tensorflow::shape_inference::InferenceContext;

REGISTER_OP("LowprecBf16Matmul")
    .Input("a: float")
    .Input("b: float")
    .Output("product: float")
    .Attr("transpose_a: bool = false")
    .Attr("transpose_b: bool = false")
    .Attr("isa: {'auto', 'portable', 'avx2', 'avx512'} = 'auto'")
    .SetShapeFn([](InferenceContext* c) -> Status { return BatchedGemmShape(c, 1); })
    .Doc(R"doc(
BF16 GEMM with a defined summation order: product[i] = op(a[i]) @ op(b[i])
with both operands rounded to BF16 (nearest even; subnormals then count as
zero) and every output accumulated in FP32 over K-pairs exactly as one lane
of VDPBF16PS does (odd element first; DAZ, FTZ, nearest even).  The
AVX512_BF16 kernel runs the instruction, the portable kernel emulates it
bit for bit (docs/bf16_gemm.md).  batch_a and batch_b are equal or 1.
)doc");

}  // namespace tf_lowprec
