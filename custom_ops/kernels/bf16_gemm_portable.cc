// Portable BF16 GEMM (baseline instruction set): VDPBF16PS emulated in
// scalar FP32/FP64 code, bit-identical to the instruction.  Compiled without -ffast-math (NaN tests, no
// reassociation).
#define TF_LOWPREC_BF16_ISA portable
#define TF_LOWPREC_BF16_ISA_NAME "portable"
#define TF_LOWPREC_BF16_NATIVE 0
#include "bf16_gemm_impl.h"
