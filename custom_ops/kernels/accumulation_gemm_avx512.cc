// AVX-512 tier of the low-precision-accumulation GEMM.  setup.py compiles this
// file with -mavx512f -mavx512bw -mavx512dq -mavx512vl (FMA and F16C enabled
// here: GCC's -mavx512f does not imply them); it runs only where
// CpuSupportsAvx512() says so.  It is the 8-lane kernel of the AVX2 tier
// compiled with AVX-512 encodings (no 16-lane kernel yet).
#if defined(__x86_64__)
#pragma GCC target("fma,f16c")
#define TF_LOWPREC_ACC_VECTOR 1
#else
#define TF_LOWPREC_ACC_VECTOR 0  // not x86-64: never selected
#endif
#define TF_LOWPREC_ACC_ISA avx512
#define TF_LOWPREC_ACC_ISA_NAME "avx512"
#include "accumulation_gemm_impl.h"
