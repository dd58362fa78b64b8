// AVX2 BF16 GEMM: VDPBF16PS's arithmetic as a chain of FP32 FMAs
// (bf16_gemm_fma_impl.h has the kernel and the proof that it is bit-identical
// to the definition).  setup.py compiles this file with -mavx2 -mfma -mf16c;
// it runs only where CpuSupportsAvx2() says so.
#define TF_LOWPREC_BF16_ISA avx2
#define TF_LOWPREC_BF16_ISA_NAME "avx2"
#if defined(__x86_64__)
#include "bf16_gemm_fma_impl.h"
#else
// Not x86-64: the emulation under this name (SelectKernels never returns it).
#define TF_LOWPREC_BF16_NATIVE 0
#include "bf16_gemm_impl.h"
#endif
