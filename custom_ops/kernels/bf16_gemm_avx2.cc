// AVX2 BF16 GEMM: VDPBF16PS's arithmetic emulated bit for bit.  setup.py
// compiles this file with -mavx2 -mfma -mf16c; it runs only where
// CpuSupportsAvx2() says so.
#define TF_LOWPREC_BF16_ISA avx2
#define TF_LOWPREC_BF16_ISA_NAME "avx2"
#define TF_LOWPREC_BF16_NATIVE 0
#include "bf16_gemm_impl.h"
