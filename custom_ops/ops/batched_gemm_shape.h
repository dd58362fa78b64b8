// Shape function of the GEMM ops (LowprecDfpMatmul*, LowprecBf16Matmul): the
// [batch, rows, cols] operand convention.  The kernels check the same
// (kernels/batched_gemm_common.h: CheckGemmShape).  Included only by op files.
#ifndef TF_LOWPREC_OPS_BATCHED_GEMM_SHAPE_H_
#define TF_LOWPREC_OPS_BATCHED_GEMM_SHAPE_H_

#include "tensorflow/core/framework/shape_inference.h"

namespace tf_lowprec {

// Output 0 of a GEMM op: a (input 0) is [batch_a, m, k] (or [batch_a, k, m]
// with transpose_a), b (input b_index) is [batch_b, k, n] (or [batch_b, n, k]
// with transpose_b); batch_a and batch_b are equal or 1.
inline ::tensorflow::Status BatchedGemmShape(::tensorflow::shape_inference::InferenceContext* c,
                                             int b_index) {
  using ::tensorflow::shape_inference::DimensionHandle;
  using ::tensorflow::shape_inference::ShapeHandle;
  ShapeHandle a, b;
  TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 3, &a));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(b_index), 3, &b));
  bool ta, tb;
  TF_RETURN_IF_ERROR(c->GetAttr("transpose_a", &ta));
  TF_RETURN_IF_ERROR(c->GetAttr("transpose_b", &tb));
  DimensionHandle m = c->Dim(a, ta ? 2 : 1), ka = c->Dim(a, ta ? 1 : 2);
  DimensionHandle kb = c->Dim(b, tb ? 2 : 1), n = c->Dim(b, tb ? 1 : 2);
  DimensionHandle k;
  TF_RETURN_IF_ERROR(c->Merge(ka, kb, &k));
  DimensionHandle batch = c->Dim(a, 0);
  if (c->ValueKnown(batch) && c->Value(batch) == 1) batch = c->Dim(b, 0);
  // Checked like the kernel (CheckGemmShape): Multiply fails on overflow.
  DimensionHandle elements;
  TF_RETURN_IF_ERROR(c->Multiply(batch, m, &elements));
  TF_RETURN_IF_ERROR(c->Multiply(elements, n, &elements));
  c->set_output(0, c->MakeShape({batch, m, n}));
  return ::tensorflow::OkStatus();
}

}  // namespace tf_lowprec

#endif  // TF_LOWPREC_OPS_BATCHED_GEMM_SHAPE_H_
