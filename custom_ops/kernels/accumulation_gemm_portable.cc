// Portable tier of the low-precision-accumulation GEMM: every step by the
// double-arithmetic definition (accumulation_step.h), baseline instruction set.
#define TF_LOWPREC_ACC_ISA portable
#define TF_LOWPREC_ACC_ISA_NAME "portable"
#define TF_LOWPREC_ACC_VECTOR 0
#include "accumulation_gemm_impl.h"
