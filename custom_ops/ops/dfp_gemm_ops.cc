// Registration and shape functions of LowprecDfpMatmul, LowprecDfpMatmulFused
// (INT16 shared-exponent GEMM, DFP16) and LowprecDfpGemmCounters.  Kernels
// live in kernels/dfp_gemm_kernels.cc; the Python wrappers in tf_lowprec.
#include "batched_gemm_shape.h"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/shape_inference.h"

namespace tf_lowprec {

using ::tensorflow::Status;
using ::tensorflow::shape_inference::InferenceContext;

namespace {

// The product (output 0, see BatchedGemmShape) and the overflow count.
Status DfpMatmulShape(InferenceContext* c, int b_index = 1) {
  TF_RETURN_IF_ERROR(BatchedGemmShape(c, b_index));
  c->set_output(1, c->Scalar());
  return ::tensorflow::OkStatus();
}

}  // namespace

REGISTER_OP("LowprecDfpMatmul")
    .Input("a: float")
    .Input("a_exponents: int32")
    .Input("b: float")
    .Input("b_exponents: int32")
    .Output("product: float")
    .Output("overflowed_chunks: int64")
    .Attr("transpose_a: bool = false")
    .Attr("transpose_b: bool = false")
    .Attr("block_size: int = 0")
    .Attr("chunk_size: int = 64")
    .Attr("isa: {'auto', 'portable', 'avx2', 'avx512'} = 'auto'")
    .SetShapeFn([](InferenceContext* c) -> Status {
      TF_RETURN_IF_ERROR(DfpMatmulShape(c, 2));
      return ::tensorflow::OkStatus();
    })
    .Doc(R"doc(
INT16 shared-exponent GEMM: product[i] = op(a[i]) @ op(b[i]) with a and b
holding DFP values I * 2^E (outputs of LowprecQuantizeDfp), computed with
INT16 x INT16 products in INT32 chains of chunk_size elements, exact chunk
sums, FP32 accumulation of chunks and a scale by 2^(Ea + Eb) per exponent
block (docs/dfp_gemm.md).  a_exponents: [batch_a or 1, m or 1, blocks];
b_exponents: [batch_b or 1, blocks, n or 1].  block_size 0: one block.
overflowed_chunks: how many (output, chunk) INT32 chains would have
overflowed (computed exactly all the same).
)doc");

REGISTER_OP("LowprecDfpMatmulFused")
    .Input("a: float")
    .Input("b: float")
    .Output("product: float")
    .Output("overflowed_chunks: int64")
    .Attr("bits: int = 16")
    .Attr("extra_shift: int = 0")
    .Attr("transpose_a: bool = false")
    .Attr("transpose_b: bool = false")
    .Attr("chunk_size: int = 64")
    .Attr("isa: {'auto', 'portable', 'avx2', 'avx512'} = 'auto'")
    .SetShapeFn([](InferenceContext* c) -> Status { return DfpMatmulShape(c); })
    .Doc(R"doc(
LowprecDfpMatmul of LowprecQuantizeDfp(a) and LowprecQuantizeDfp(b), each
with one exponent per tensor and nearest_even rounding, with the rounding
fused into the GEMM's packing (no quantized copies of a and b): the same
results, bit for bit.  a: [batch_a, m, k] (or [batch_a, k, m]); b:
[batch_b, k, n] (or [batch_b, n, k]).
)doc");

REGISTER_OP("LowprecDfpGemmCounters")
    .Output("counters: int64")
    .Attr("reset: bool = false")
    .SetIsStateful()
    .SetShapeFn([](InferenceContext* c) -> Status {
      c->set_output(0, c->Vector(4));
      return ::tensorflow::OkStatus();
    })
    .Doc(R"doc(
Process-wide counters of LowprecDfpMatmul since the last reset:
[gemm calls, (output, chunk) INT32 chains, chains that would have overflowed,
micro-tile chunks recomputed in INT64].  reset=true zeroes them after reading.
)doc");

}  // namespace tf_lowprec
