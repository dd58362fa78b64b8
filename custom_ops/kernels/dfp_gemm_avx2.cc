// AVX2 INT16 shared-exponent GEMM.  setup.py compiles this file with -mavx2
// -mfma -mf16c; it runs only where CpuSupportsAvx2() says so.
#define TF_LOWPREC_DFP_ISA avx2
#define TF_LOWPREC_DFP_ISA_NAME "avx2"
#define TF_LOWPREC_DFP_VNNI 0
#include "dfp_gemm_impl.h"
