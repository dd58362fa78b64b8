// AVX2 INT16 shared-exponent GEMM (vpmaddwd + vpaddd chains, tiles of 6 x
// 16: dfp_gemm_microkernel_avx2.h).  setup.py compiles this file with -mavx2
// -mfma -mf16c; it runs only where CpuSupportsAvx2() says so.
#define TF_LOWPREC_DFP_ISA avx2
#define TF_LOWPREC_DFP_ISA_NAME "avx2"
#if defined(__x86_64__)
#define TF_LOWPREC_DFP_AVX2 1
#else
// Not x86-64: the portable code (SelectKernels never returns it).
#define TF_LOWPREC_DFP_AVX2 0
#endif
#define TF_LOWPREC_DFP_VNNI 0
#include "dfp_gemm_impl.h"
