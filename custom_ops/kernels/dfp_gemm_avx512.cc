// AVX-512 VNNI INT16 shared-exponent GEMM (vpdpwssds).  setup.py compiles
// this file with -mavx512f -mavx512bw -mavx512dq -mavx512vl; VNNI is enabled
// here for this file only.  It runs only where CpuSupportsAvx512Vnni() says so.
#if defined(__x86_64__)
#pragma GCC target("avx512vnni")
// GCC 12 warns spuriously inside the intrinsics headers (their __Y = __Y idiom).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#define TF_LOWPREC_DFP_ISA avx512vnni
#define TF_LOWPREC_DFP_ISA_NAME "avx512"
#define TF_LOWPREC_DFP_AVX2 0
#define TF_LOWPREC_DFP_VNNI 1
#include "dfp_gemm_impl.h"
#else
// Not x86-64: no VNNI kernel (SelectKernels never returns it).
#define TF_LOWPREC_DFP_ISA avx512vnni
#define TF_LOWPREC_DFP_ISA_NAME "avx512"
#define TF_LOWPREC_DFP_AVX2 0
#define TF_LOWPREC_DFP_VNNI 0
#include "dfp_gemm_impl.h"
#endif
