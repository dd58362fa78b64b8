// AVX2 tier of the low-precision-accumulation GEMM: 8 output columns per
// vector with F16C rounding for FP16 (accumulation_gemm_impl.h).  setup.py
// compiles this file with -mavx2 -mfma -mf16c; it runs only where
// CpuSupportsAvx2() says so.
#define TF_LOWPREC_ACC_ISA avx2
#define TF_LOWPREC_ACC_ISA_NAME "avx2"
#if defined(__x86_64__)
#define TF_LOWPREC_ACC_VECTOR 1
#else
#define TF_LOWPREC_ACC_VECTOR 0  // not x86-64: never selected
#endif
#include "accumulation_gemm_impl.h"
