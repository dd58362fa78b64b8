// AVX512_BF16 GEMM (vdpbf16ps).  setup.py compiles this file with -mavx512f
// -mavx512bw -mavx512dq -mavx512vl; AVX512_BF16 is enabled here for this file
// only.  It runs only where CpuSupportsAvx512Bf16() says so.
#if defined(__x86_64__)
#pragma GCC target("avx512bf16")
// GCC 12 warns spuriously inside the intrinsics headers (their __Y = __Y idiom).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#define TF_LOWPREC_BF16_NATIVE 1
#else
// Not x86-64: the emulation under this name (SelectKernels never returns it).
#define TF_LOWPREC_BF16_NATIVE 0
#endif
#define TF_LOWPREC_BF16_ISA avx512bf16
#define TF_LOWPREC_BF16_ISA_NAME "avx512"
#include "bf16_gemm_impl.h"
