// AVX2 rounding loops.  setup.py compiles this file alone with -mavx2 -mfma
// -mf16c; it runs only where CpuSupportsAvx2() says so.  The loops use
// explicit intrinsics (rounding_avx2.h, philox_avx2.h), bit-identical to the
// portable ones (tests/test_isa_equivalence.py).
#define TF_LOWPREC_ISA avx2
#define TF_LOWPREC_ISA_NAME "avx2"
#if defined(__AVX2__)
#define TF_LOWPREC_AVX2_INTRINSICS 1
#endif
#include "rounding_loops_impl.h"
